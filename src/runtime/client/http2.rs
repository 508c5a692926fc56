//! HTTP/2 toward clients: the `h2` crate's connection (framing, HPACK, flow control, and the
//! limits that hold off abuse), with every stream answered on the connection's own task.
//!
//! Not hyper's HTTP/2 server, which sits between `h2` and its user and does per-stream work
//! Juggler has no use for (issue 18: 7 % of the instructions of a 12-byte HTTP/2 request): it
//! hands each stream to an executor (a queue under a mutex, then a box), reserves send capacity
//! and waits for it even for a body already whole in memory, removes seven connection fields from
//! every response (a backend's arrive without them: `backend::head`), and records every frame for
//! its keep-alive pings under another mutex. Here a stream's last piece of body is sent at once,
//! a response is searched once for fields HTTP/2 forbids, and keep-alive is one timer per
//! connection.
//!
//! The streams run on the connection's task, as nginx runs them: proxying a stream is waiting on a
//! backend, not work worth another core, and a stream on another worker thread would wake its
//! connection across cores. A stream still left when the connection ends is dropped with it: `h2`
//! ends a connection after its streams (a graceful shutdown waits for them), or when the client is
//! gone, which leaves a stream nothing to answer; dropping a request's future is what a client
//! going away always does to it.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Builder, Connection, Handshake, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE};
use http::request::Parts;
use http::Response;
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::hop_by_hop::{self, ConnectionNamed};

/// Streams one connection may have open at once (what a browser opens is far fewer).
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long a connection with streams open may go without opening another before it is asked for
/// a PING (answering one costs a client nothing).
pub(super) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the answer to that PING may take before the connection is closed: a client that
/// stops acknowledging is not kept, nor are its streams' backend slots, for long.
pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection settings every client gets, with `max_header_bytes` as the bound on a request's
/// header list.
pub(super) fn settings(max_header_bytes: usize) -> Builder {
    let mut builder = Builder::new();
    builder
        // hyper's server defaults: 1 MiB windows rather than the spec's 64 KiB, so a client's
        // upload is not held to a round trip per 64 KiB.
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Rapid reset (CVE-2023-44487): streams reset before they were accepted count against
        // this; past it the connection gets GOAWAY ENHANCE_YOUR_CALM (tests/h2_abuse.rs).
        .max_pending_accept_reset_streams(20)
        // Streams Juggler itself had to reset for protocol errors, same answer past the limit.
        .max_local_error_reset_streams(Some(1024));
    builder
}

/// Why a connection ended other than by closing normally.
#[derive(Debug)]
pub(super) enum Http2Error {
    Protocol(h2::Error),
    /// Streams were open, the client was silent, and it did not answer a PING in time.
    KeepAliveTimedOut,
}

impl fmt::Display for Http2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http2Error::Protocol(error) => write!(f, "HTTP/2: {error}"),
            Http2Error::KeepAliveTimedOut => f.write_str("HTTP/2: PING not answered in time"),
        }
    }
}

impl From<h2::Error> for Http2Error {
    fn from(error: h2::Error) -> Http2Error {
        Http2Error::Protocol(error)
    }
}

/// One client's HTTP/2 connection over `S`. `answer` makes each stream's response future `F`
/// from its request; the response's body `B` is then sent as the client's window allows.
pub(super) struct Http2Connection<S, A, F, B> {
    /// Until the client's preface and settings are through.
    handshake: Option<Handshake<S, Bytes>>,
    conn: Option<Connection<S, Bytes>>,
    /// Asked to finish while still handshaking: done as soon as there is a connection to tell.
    shut_down_early: bool,
    /// The waker `h2` and the keep-alive get, which notes that they asked for a poll.
    conn_wake: ConnWake,
    answer: A,
    streams: FuturesUnordered<Answered<F, B>>,
    /// Streams accepted so far: whether the client has been heard from since the last look.
    accepted: u64,
    keep_alive: KeepAlive,
}

impl<S, A, F, B> Http2Connection<S, A, F, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(
        stream: S,
        settings: &Builder,
        answer: A,
        keep_alive: (Duration, Duration),
    ) -> Http2Connection<S, A, F, B> {
        Http2Connection {
            handshake: Some(settings.handshake(stream)),
            conn: None,
            shut_down_early: false,
            conn_wake: ConnWake::new(Waker::noop()),
            answer,
            streams: FuturesUnordered::new(),
            accepted: 0,
            keep_alive: KeepAlive::new(keep_alive.0, keep_alive.1),
        }
    }

    /// Finish the streams in flight (GOAWAY tells the client to open no more), then close.
    pub(super) fn graceful_shutdown(&mut self) {
        self.conn_wake.ask();
        match &mut self.conn {
            Some(conn) => conn.graceful_shutdown(),
            None => self.shut_down_early = true,
        }
    }
}

impl<S, A, F, B> Future for Http2Connection<S, A, F, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: FnMut(Parts, RequestBody) -> F + Unpin,
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    type Output = Result<(), Http2Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.conn_wake.follow(cx.waker());
        let conn_cx = &mut Context::from_waker(&this.conn_wake.waker);
        let mut asked = this.conn_wake.take_ask();
        if let Some(handshake) = &mut this.handshake {
            let mut conn = ready!(Pin::new(handshake).poll(conn_cx))?;
            this.handshake = None;
            this.keep_alive.ping_pong = conn.ping_pong();
            if this.shut_down_early {
                conn.graceful_shutdown();
            }
            this.conn = Some(conn);
        }
        let Some(conn) = &mut this.conn else {
            return Poll::Ready(Ok(()));
        };
        // Streams first: a response they finish queues frames the connection's poll then writes.
        poll_streams(&mut this.streams, cx);
        // A turn only streams asked for (a slot freed, a backend answered) that left `h2` nothing
        // to do ends here: `h2` asks through its waker for everything a stream's handle gives it
        // (frames, window, a stream dropped), as it must when streams run on other tasks, and
        // its socket's readiness and the keep-alive's timer arrive the same way. At a full pool
        // about one turn in four is such a turn (0.45 a request under 10 x 10 streams), each a
        // poll of `h2`'s framing and TLS that found nothing to do.
        asked |= this.conn_wake.take_ask();
        if !asked {
            return Poll::Pending;
        }
        let accepted_before = this.accepted;
        loop {
            match conn.poll_accept(conn_cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    this.accepted += 1;
                    let (head, body) = request.into_parts();
                    let answering = (this.answer)(head, RequestBody(body));
                    this.streams.push(Answered {
                        respond,
                        answering: Some(answering),
                        sending: None,
                    });
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        // Streams accepted in that poll start now.
        if this.accepted != accepted_before {
            poll_streams(&mut this.streams, cx);
        }
        if !this
            .keep_alive
            .poll(conn_cx, !this.streams.is_empty(), this.accepted)
        {
            conn.abrupt_shutdown(Reason::NO_ERROR);
            return Poll::Ready(Err(Http2Error::KeepAliveTimedOut));
        }
        Poll::Pending
    }
}

/// The waker for `h2`'s connection and the keep-alive: wakes the connection's task, and notes
/// that the connection itself asked, so that turns nobody but streams asked for can skip it.
struct ConnWake {
    shared: Arc<ConnAsked>,
    waker: Waker,
}

struct ConnAsked {
    asked: AtomicBool,
    task: Waker,
}

impl Wake for ConnAsked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Noted before the task is woken, so the turn that wake starts sees it.
        self.asked.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl ConnWake {
    /// Asked from the start: the first turn polls the connection.
    fn new(task: &Waker) -> ConnWake {
        let shared = Arc::new(ConnAsked {
            asked: AtomicBool::new(true),
            task: task.clone(),
        });
        let waker = Waker::from(Arc::clone(&shared));
        ConnWake { shared, waker }
    }

    /// Wakes `task` from here on. A task's waker does not change, so this is a comparison on
    /// every turn but the first; a new waker is asked from the start, since what the old one was
    /// given may not reach this task.
    fn follow(&mut self, task: &Waker) {
        if !self.shared.task.will_wake(task) {
            *self = ConnWake::new(task);
        }
    }

    fn ask(&self) {
        self.shared.asked.store(true, Ordering::Release);
    }

    /// Whether the connection asked for a poll since the last call.
    fn take_ask(&self) -> bool {
        self.shared.asked.swap(false, Ordering::AcqRel)
    }
}

/// Polls the streams that were woken until none is ready; finished ones leave the set.
fn poll_streams<F: Future<Output = ()>>(streams: &mut FuturesUnordered<F>, cx: &mut Context<'_>) {
    while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
}

/// A stream's request body as the proxy reads it. Each piece taken is given back to the client's
/// window at once: the proxy reads the whole body (within its limit) before it forwards any.
pub(super) struct RequestBody(RecvStream);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let stream = &mut self.get_mut().0;
        match ready!(stream.poll_data(cx)) {
            Some(Ok(data)) => {
                // Fails only if the stream is gone, which the next poll reports.
                let _ = stream.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// One stream: its response being made, then its body being sent.
struct Answered<F, B> {
    respond: SendResponse<Bytes>,
    answering: Option<F>,
    sending: Option<SendBody<B>>,
}

impl<F, B> Future for Answered<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(answering) = &mut this.answering {
            let Poll::Ready(answered) = Pin::new(answering).poll(cx) else {
                // The client may cancel the stream meanwhile (RST_STREAM): the answer is dropped,
                // as a closed HTTP/1.1 connection drops its request's.
                return match this.respond.poll_reset(cx) {
                    Poll::Ready(_) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                };
            };
            this.answering = None;
            let (mut parts, body) = answered.unwrap_or_else(|never| match never {}).into_parts();
            fit_for_http2(&mut parts.headers, &body);
            let ends_here = body.is_end_stream();
            match this
                .respond
                .send_response(Response::from_parts(parts, ()), ends_here)
            {
                Ok(send) if !ends_here => {
                    this.sending = Some(SendBody {
                        send,
                        body,
                        waiting: None,
                    });
                }
                Ok(_) => return Poll::Ready(()),
                Err(error) => {
                    tracing::debug!(%error, "HTTP/2 response head not sent");
                    return Poll::Ready(());
                }
            }
        }
        match &mut this.sending {
            Some(sending) => sending.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// A response body on its way out, within the client's flow-control window.
struct SendBody<B> {
    send: SendStream<Bytes>,
    body: B,
    /// A piece taken from the body, waiting for the stream to have room for it.
    waiting: Option<Bytes>,
}

impl<B> SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(piece) = self.waiting.take() {
                // Sent once the stream has room for some of it; `h2` keeps the rest until the
                // client's window opens, so at most one piece waits beyond the window and a slow
                // client never makes Juggler hold more of a streamed body than that.
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Pending => {
                            self.waiting = Some(piece);
                            return self.pending_unless_reset(cx);
                        }
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        // The stream was reset or the connection is gone.
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                if self.send.send_data(piece, false).is_err() {
                    return Poll::Ready(());
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return self.pending_unless_reset(cx),
                Poll::Ready(None) => {
                    let _ = self.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "response body failed; stream reset");
                    self.send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                // The last piece goes at once, whatever the window: it is in memory already, and
                // waiting for room first would cost every small response a reservation.
                Ok(piece) if self.body.is_end_stream() => {
                    let _ = self.send.send_data(piece, true);
                    return Poll::Ready(());
                }
                Ok(piece) if piece.is_empty() => {}
                Ok(piece) => {
                    // A claim of one byte, not the piece's length: `h2` raises it to what is
                    // buffered as the piece is sent, and a large claim held while waiting would
                    // take the connection's window from the other streams.
                    self.send.reserve_capacity(1);
                    self.waiting = Some(piece);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = self.send.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            }
        }
    }

    /// Waiting for the body or for room: a reset by the client ends the stream meanwhile.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.send.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Makes a response's fields fit for HTTP/2: no connection-specific field (`h2` refuses a head
/// with one; Juggler's own answers may say `Connection: close`, meant for HTTP/1.1), a `Date`
/// when the response has none, and a `Content-Length` when the body's length is known. One pass
/// over the names finds all three (a map lookup each cost more).
fn fit_for_http2<B: Body>(headers: &mut HeaderMap, body: &B) {
    let (mut connection_specific, mut dated, mut has_length) = (false, false, false);
    for name in headers.keys() {
        if *name == DATE {
            dated = true;
        } else if *name == CONTENT_LENGTH {
            has_length = true;
        } else if hop_by_hop::kind(name.as_str().as_bytes()).is_some() {
            connection_specific = true;
        }
    }
    if connection_specific {
        remove_hop_by_hop(headers);
    }
    if !dated {
        headers.insert(DATE, super::date::now());
    }
    if !has_length && !body.is_end_stream() {
        if let Some(len) = body.size_hint().exact() {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
}

/// Removes the fixed hop-by-hop fields and those `Connection` names. Rare: only Juggler's own
/// answers carry any.
#[cold]
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = {
        let mut named = ConnectionNamed::default();
        for line in headers.get_all(CONNECTION) {
            named.add_line(line.as_bytes());
        }
        headers
            .keys()
            .filter(|name| named.is_hop_by_hop(name.as_str().as_bytes()))
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
}

/// Keep-alive: a connection with streams open whose client has opened no new stream for the
/// interval gets a PING, and is closed if the answer takes longer than the timeout. A phone gone
/// out of range mid-request is found out, and its streams' waits end, in seconds.
struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    /// The connection's PING sender; `None` until the handshake is through.
    ping_pong: Option<PingPong>,
    timer: LookedAtTimer,
    ping: PingState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingState {
    /// No PING out; `accepted`: the stream count when the timer was set.
    Quiet {
        accepted: u64,
    },
    Sent,
}

impl KeepAlive {
    fn new(interval: Duration, timeout: Duration) -> KeepAlive {
        KeepAlive {
            interval,
            timeout,
            ping_pong: None,
            timer: LookedAtTimer::new(interval),
            ping: PingState::Quiet { accepted: 0 },
        }
    }

    /// One look on a connection turn: `busy` whether streams are open, `accepted` streams so far.
    /// `false` when the client left a PING unanswered past the timeout.
    fn poll(&mut self, cx: &mut Context<'_>, busy: bool, accepted: u64) -> bool {
        let Some(ping_pong) = &mut self.ping_pong else {
            return true;
        };
        loop {
            match self.ping {
                PingState::Quiet { accepted: then } => {
                    if !self.timer.elapsed(cx) {
                        return true;
                    }
                    if busy && accepted == then && ping_pong.send_ping(Ping::opaque()).is_ok() {
                        self.ping = PingState::Sent;
                        self.timer.rearm(self.timeout);
                    } else {
                        // Idle (the connection's idle timeout is for that) or heard from.
                        self.ping = PingState::Quiet { accepted };
                        self.timer.rearm(self.interval);
                    }
                }
                PingState::Sent => match ping_pong.poll_pong(cx) {
                    Poll::Ready(_) => {
                        // Answered (an error is the connection's, which its poll reports).
                        self.ping = PingState::Quiet { accepted };
                        self.timer.rearm(self.interval);
                    }
                    Poll::Pending => return !self.timer.elapsed(cx),
                },
            }
        }
    }
}

/// A timer polled once after each reset, so that it holds the task's waker, and then only looked
/// at: a connection's turns are many, its keep-alive timer's moves few.
struct LookedAtTimer {
    sleep: Pin<Box<Sleep>>,
    polled: bool,
}

impl LookedAtTimer {
    fn new(after: Duration) -> LookedAtTimer {
        LookedAtTimer {
            sleep: Box::pin(tokio::time::sleep(after)),
            polled: false,
        }
    }

    fn elapsed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.polled {
            self.sleep.is_elapsed()
        } else {
            self.polled = true;
            self.sleep.as_mut().poll(cx).is_ready()
        }
    }

    fn rearm(&mut self, after: Duration) {
        self.sleep.as_mut().reset(Instant::now() + after);
        self.polled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::stream;
    use http_body_util::{Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    type Answer<B> = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    /// A server connection on one end of an in-memory pipe, answering with `answer`, run on its
    /// own task; the other end for the client.
    fn serve<B>(
        answer: impl FnMut(Parts, RequestBody) -> Answer<B> + Unpin + Send + 'static,
        keep_alive: (Duration, Duration),
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<(), Http2Error>>,
    )
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: fmt::Display,
    {
        let (client, server) = tokio::io::duplex(1 << 20);
        let conn = Http2Connection::new(server, &settings(16 * 1024), answer, keep_alive);
        (client, tokio::spawn(conn))
    }

    const LONG: (Duration, Duration) = (KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT);

    /// A client on `io`, once its handshake is through: within 5 s, so a server that stops
    /// polling its connection fails the test rather than hanging it.
    async fn client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
        let (send, conn) = tokio::time::timeout(Duration::from_secs(5), h2::client::handshake(io))
            .await
            .expect("the server took part in the handshake")
            .unwrap();
        tokio::spawn(conn);
        send
    }

    fn get() -> http::Request<()> {
        http::Request::get("http://test/").body(()).unwrap()
    }

    /// Juggler's own answers may carry HTTP/1.1's connection fields; an HTTP/2 client gets the
    /// response without them (and without what `Connection` names), dated and with its length.
    #[tokio::test]
    async fn a_response_loses_connection_fields_and_gains_date_and_length() {
        let (io, _server) = serve(
            |_, _| {
                Box::pin(async {
                    let response = Response::builder()
                        .header("connection", "close, x-secret")
                        .header("keep-alive", "timeout=5")
                        .header("x-secret", "1")
                        .header("x-kept", "2")
                        .body(Full::new(Bytes::from_static(b"hello")))
                        .unwrap();
                    Ok(response)
                })
            },
            LONG,
        );
        let mut send = client(io).await;
        let (response, _) = send.send_request(get(), true).unwrap();
        let response = response.await.unwrap();
        let headers = response.headers();
        for gone in ["connection", "keep-alive", "x-secret"] {
            assert!(!headers.contains_key(gone), "{gone}: {headers:?}");
        }
        assert_eq!(headers["x-kept"], "2");
        assert_eq!(headers["content-length"], "5");
        assert!(headers.contains_key("date"), "{headers:?}");
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            got.extend_from_slice(&data.unwrap());
        }
        assert_eq!(got, b"hello");
    }

    /// A streamed body goes out as the client's window allows: while the client reads nothing,
    /// the body is not drained into memory beyond a piece past the window; once it reads, all
    /// of it arrives.
    #[tokio::test]
    async fn a_streamed_body_is_taken_only_as_the_clients_window_opens() {
        const PIECE: usize = 4096;
        const PIECES: usize = 16;
        let taken = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&taken);
        let (io, _server) = serve(
            move |_, _| {
                let counted = Arc::clone(&counted);
                Box::pin(async move {
                    let pieces = stream::iter(0..PIECES).map(move |_| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; PIECE])))
                    });
                    Ok(Response::new(StreamBody::new(pieces)))
                })
            },
            LONG,
        );
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, Bytes>(io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (response, _) = send.send_request(get(), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let early = taken.load(Ordering::SeqCst);
        assert!(early <= 2, "{early} pieces taken for a 1 KiB window");
        let mut received = 0;
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            received += data.len();
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        assert_eq!(received, PIECE * PIECES);
    }

    /// A stream the client resets while its answer is being made drops that answer at once.
    #[tokio::test]
    async fn a_reset_stream_drops_its_answer() {
        struct Dropped(tokio::sync::mpsc::UnboundedSender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
        let (io, _server) = serve(
            move |_, _| {
                let guard = Dropped(dropped_tx.clone());
                Box::pin(async move {
                    std::future::pending::<()>().await;
                    drop(guard);
                    Ok(Response::new(Full::new(Bytes::new())))
                })
            },
            LONG,
        );
        let mut send = client(io).await;
        let (_response, mut stream) = send.send_request(get(), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.send_reset(Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(5), dropped.recv())
            .await
            .expect("the answer is dropped after the reset")
            .unwrap();
    }

    /// A client that answers PINGs keeps its connection however long its stream waits: here
    /// through a PING every 50 ms, each answered well within its timeout (generous, so that a
    /// loaded machine pausing the test does not count as a silent client).
    #[tokio::test]
    async fn a_client_answering_pings_keeps_its_connection_through_a_long_wait() {
        let short = (Duration::from_millis(50), Duration::from_millis(500));
        let (io, server) = serve(
            |_, _| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(2000)).await;
                    Ok(Response::new(Full::new(Bytes::from_static(b"late"))))
                })
            },
            short,
        );
        let mut send = client(io).await;
        let (response, _) = send.send_request(get(), true).unwrap();
        let response = response.await.expect("answered after several PINGs");
        assert_eq!(response.status(), 200);
        assert!(!server.is_finished());
    }

    /// A client that stops answering while a stream is open is closed within interval + timeout.
    /// The client here is a few raw frames: a preface, SETTINGS, one GET, then silence.
    #[tokio::test]
    async fn a_silent_client_with_a_stream_open_is_closed_after_an_unanswered_ping() {
        let short = (Duration::from_millis(100), Duration::from_millis(100));
        let (mut io, server) = serve(
            |_, _| {
                Box::pin(async {
                    std::future::pending::<()>().await;
                    Ok(Response::new(Full::new(Bytes::new())))
                })
            },
            short,
        );
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        // HEADERS, END_STREAM | END_HEADERS, stream 1: :method GET, :scheme http, :path / (the
        // static table's entries 2, 6 and 4).
        hello.extend_from_slice(&[0, 0, 3, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        io.write_all(&hello).await.unwrap();
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("closed")
            .unwrap();
        assert!(
            matches!(ended, Err(Http2Error::KeepAliveTimedOut)),
            "{ended:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        let mut sent = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), io.read_to_end(&mut sent)).await;
        let mut frame_types = Vec::new();
        let mut rest = &sent[..];
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            frame_types.push((rest[3], rest[4]));
            rest = &rest[(9 + len).min(rest.len())..];
        }
        const PING: (u8, u8) = (0x6, 0);
        assert!(frame_types.contains(&PING), "no PING in {frame_types:?}");
    }

    type Pieces =
        Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

    /// Answers the test makes by hand: each stream sends the test a way to start its response,
    /// whose body is then the pieces the test sends.
    fn answered_by_hand(
        started: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<Pieces>>,
    ) -> impl FnMut(Parts, RequestBody) -> Answer<StreamBody<Pieces>> + Unpin + Send + 'static {
        move |_, _| {
            let (start, started_here) = tokio::sync::oneshot::channel();
            started.send(start).unwrap();
            Box::pin(async move { Ok(Response::new(StreamBody::new(started_here.await.unwrap()))) })
        }
    }

    /// The pieces sent on `pieces`, as a response body ending when the sender is dropped.
    fn pieces_from(pieces: tokio::sync::mpsc::UnboundedReceiver<Bytes>) -> Pieces {
        Box::pin(stream::unfold(pieces, |mut pieces| async move {
            let piece = pieces.recv().await?;
            Some((Ok(Frame::data(piece)), pieces))
        }))
    }

    /// A response head, its pieces and its end, each made on a turn that only its stream was
    /// woken for (nothing from the client in between), reach the client: what a stream hands
    /// `h2` gets the connection polled.
    #[tokio::test]
    async fn what_streams_hand_over_on_turns_of_their_own_reaches_the_client() {
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let (io, _server) = serve(answered_by_hand(started), LONG);
        let mut send = client(io).await;
        let mut responses = Vec::new();
        for _ in 0..3 {
            let (response, _) = send.send_request(get(), true).unwrap();
            responses.push(response);
        }
        let within = Duration::from_secs(5);
        let mut bodies = Vec::new();
        for response in responses {
            let start = tokio::time::timeout(within, starts.recv())
                .await
                .unwrap()
                .unwrap();
            let (pieces, body) = tokio::sync::mpsc::unbounded_channel();
            let _ = start.send(pieces_from(body));
            let response = tokio::time::timeout(within, response)
                .await
                .expect("the head made on the stream's own turn arrives")
                .unwrap();
            bodies.push((pieces, response.into_body()));
        }
        for (pieces, mut body) in bodies {
            for piece in [&b"one"[..], b"two"] {
                pieces.send(Bytes::from_static(piece)).unwrap();
                let got = tokio::time::timeout(within, body.data())
                    .await
                    .expect("each piece arrives as it is made")
                    .unwrap()
                    .unwrap();
                assert_eq!(got, piece);
                body.flow_control().release_capacity(got.len()).unwrap();
            }
            drop(pieces);
            // The end is an empty DATA frame that ends the stream.
            let rest = tokio::time::timeout(within, body.data())
                .await
                .expect("the end arrives");
            assert!(
                matches!(&rest, Some(Ok(rest)) if rest.is_empty()),
                "{rest:?}"
            );
            assert!(body.is_end_stream());
        }
    }

    /// A connection asked to finish ends once its last stream does, when that stream ends on a
    /// turn of its own: its end is what lets the connection close.
    #[tokio::test]
    async fn a_finishing_connection_ends_when_its_last_stream_does() {
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let (io, server) = tokio::io::duplex(1 << 20);
        let mut conn = Http2Connection::new(
            server,
            &settings(16 * 1024),
            answered_by_hand(started),
            LONG,
        );
        let (finish, mut finish_asked) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(std::future::poll_fn(move |cx| {
            if !finish_asked.is_terminated() && Pin::new(&mut finish_asked).poll(cx).is_ready() {
                conn.graceful_shutdown();
            }
            Pin::new(&mut conn).poll(cx)
        }));
        let mut send = client(io).await;
        let (response, _) = send.send_request(get(), true).unwrap();
        let within = Duration::from_secs(5);
        let start = tokio::time::timeout(within, starts.recv())
            .await
            .unwrap()
            .unwrap();
        finish.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "ended with its stream still open");
        let (pieces, body) = tokio::sync::mpsc::unbounded_channel();
        start.send(pieces_from(body)).ok().unwrap();
        pieces.send(Bytes::from_static(b"last")).unwrap();
        drop(pieces);
        let mut body = tokio::time::timeout(within, response)
            .await
            .unwrap()
            .unwrap()
            .into_body();
        assert_eq!(body.data().await.unwrap().unwrap(), &b"last"[..]);
        let ended = tokio::time::timeout(within, server)
            .await
            .expect("the connection ends after its last stream")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }
}
