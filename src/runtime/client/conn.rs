//! One client connection: HTTP/1.1 (plain or TLS, Juggler's own) or HTTP/2 by ALPN (on the `h2`
//! crate), served under Juggler's own header, idle and drain timers, with idle HTTP/1.1
//! connections parked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use super::activity::{ConnActivity, InFlight, StallGuard, Verdict};
use super::http1::{BufferedRead, Http1Connection};
use super::http2::{self, Http2Connection, Http2Error};
use super::listener::{HandedOver, Phase};
use super::park::{ParkingLot, PARK_AFTER};
use super::phase::PhaseFollower;
use super::proxy_protocol;
use super::response::TrackedBody;
use super::tls::TlsAcceptor;
use crate::backend::ResponseBody;
use crate::metrics::ListenerKind;
use crate::proxy::headers::ClientInfo;
use crate::proxy::request::RequestHead;
use crate::proxy::Proxy;
use crate::threads::Dealer;
use juggler_config::network::any_contains;

/// The client side's phase (serving, handing over, draining), as each connection watches it.
pub(super) type PhaseSignal = watch::Receiver<Phase>;

/// What every connection task shares.
pub(super) struct Shared {
    pub(super) proxy: Arc<Proxy>,
    /// One permit per open client connection: the cap on concurrent connections, and on shutdown
    /// the way to wait for all of them to finish.
    pub(super) connection_slots: Arc<Semaphore>,
    /// The bound HTTPS port plain-HTTP requests are redirected to, when `redirect_http_to_https`
    /// is on and the HTTPS listener actually runs.
    pub(super) redirect_to_https_port: Option<u16>,
    /// Where idle plain connections go while handing over to a successor process.
    pub(super) handed_over: mpsc::UnboundedSender<HandedOver>,
    /// Where idle plain connections wait, outside any task, for their client's next request.
    pub(super) parking: ParkingLot,
    /// Gives each connection to a serving thread: accepted, handed over, or woken from parking.
    pub(super) dealer: Dealer,
}

/// A client stream as the connection code needs it; plain TCP can be handed to another process,
/// TLS cannot (its session state lives in this one).
pub(super) trait ClientStream: BufferedRead + Sized {
    /// Whether [`ClientStream::into_socket`] can hand this kind of stream over.
    const MOVABLE: bool;
    /// The socket, to hand to another process.
    fn into_socket(self) -> Option<OwnedFd>;
    /// The plain TCP stream, to park in the [`ParkingLot`]; `Err(self)` for a stream whose state
    /// lives in its task (TLS).
    fn into_tcp(self) -> Result<TcpStream, Self>;
}

impl ClientStream for TcpStream {
    const MOVABLE: bool = true;

    fn into_socket(self) -> Option<OwnedFd> {
        self.into_std().ok().map(OwnedFd::from)
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

/// Boxed: its session state (1,216 B) would otherwise be inline in every state of the
/// connection's future that holds the stream, and so in the task of every idle TLS connection.
impl ClientStream for Box<TlsStream<TcpStream>> {
    const MOVABLE: bool = false;

    fn into_socket(self) -> Option<OwnedFd> {
        None
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Err(self)
    }
}

/// Serves a plain client connection from its first byte; `permit` is its place under the
/// connection cap, given back when it closes.
pub(super) async fn serve_plain(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    phase: PhaseSignal,
    permit: OwnedSemaphorePermit,
) {
    plain_connection_accepted(&stream, &shared);
    let Some(ip) = client_address(&mut stream, peer, &shared, &phase, ListenerKind::Http).await
    else {
        return;
    };
    let client = ClientInfo { ip, https: false };
    serve_plain_http1(stream, client, shared, phase, permit, Bytes::new()).await;
}

/// Serves a plain connection the previous process handed over, idle between requests. A PROXY
/// header, if its balancer sent one, came at the connection's start and was read there:
/// `client_ip` is the address it named (or the peer's).
pub(super) async fn serve_adopted(
    stream: TcpStream,
    client_ip: IpAddr,
    shared: Arc<Shared>,
    phase: PhaseSignal,
    permit: OwnedSemaphorePermit,
) {
    plain_connection_accepted(&stream, &shared);
    let client = ClientInfo {
        ip: client_ip,
        https: false,
    };
    serve_plain_http1(stream, client, shared, phase, permit, Bytes::new()).await;
}

/// What every plain connection gets first, new or handed over: no Nagle (responses are complete
/// writes; it would only hold back their last segment), and a count.
fn plain_connection_accepted(stream: &TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    shared
        .proxy
        .metrics
        .listener(ListenerKind::Http)
        .connection_accepted();
}

/// Serves a plain HTTP/1.1 connection; `unread`: what its client already sent (the first bytes of a
/// connection woken in the parking lot).
pub(super) async fn serve_plain_http1(
    stream: TcpStream,
    client: ClientInfo,
    shared: Arc<Shared>,
    phase: PhaseSignal,
    permit: OwnedSemaphorePermit,
    unread: Bytes,
) {
    let redirect_port = shared.redirect_to_https_port;
    serve_http1(
        stream,
        client,
        &shared,
        phase,
        redirect_port,
        permit,
        unread,
    )
    .await;
}

/// Serves a TLS client connection from its first byte, like [`serve_plain`]. An idle TLS
/// connection stays in its task (its session state cannot leave it), so this future is what each
/// one costs besides rustls: the handshake's large state lives in its own box, freed when it
/// ends, and only the boxed stream and the HTTP/1.1 loop remain.
pub(super) async fn serve_tls(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<TlsAcceptor>,
    shared: Arc<Shared>,
    phase: PhaseSignal,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let _open = shared
        .proxy
        .metrics
        .listener(ListenerKind::Https)
        .connection_opened();
    // The PROXY header comes before the TLS handshake.
    let Some(ip) = client_address(&mut stream, peer, &shared, &phase, ListenerKind::Https).await
    else {
        return;
    };
    let Some(stream) = Box::pin(handshake(stream, peer, &tls, &shared)).await else {
        return;
    };
    let client = ClientInfo { ip, https: true };
    if super::tls::is_h2(&stream) {
        Box::pin(serve_http2(stream, client, &shared, phase)).await;
    } else {
        serve_http1(stream, client, &shared, phase, None, permit, Bytes::new()).await;
    }
}

/// The client's address: the peer's, or the one named by the PROXY header a trusted peer
/// (`listen.proxy_protocol_from`) must open with; `None` when the connection is to be closed: a
/// malformed, late or missing header from a trusted peer, a PROXY header from any other peer, or
/// the listener draining meanwhile.
async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    phase: &PhaseSignal,
    kind: ListenerKind,
) -> Option<IpAddr> {
    let trusted = shared.proxy.table.settings.listen.proxy_protocol_from;
    if trusted.is_empty() {
        return Some(peer.ip());
    }
    let limits = &shared.proxy.table.settings.limits;
    let mut phase = phase.clone();
    let resolved = if any_contains(trusted, peer.ip()) {
        tokio::select! {
            header = proxy_protocol::read_header(stream, limits.header_read_timeout) => header,
            _ = phase.wait_for(|phase| *phase == Phase::Draining) => return None,
        }
    } else {
        tokio::select! {
            checked = proxy_protocol::refuse_spoofed(stream, limits.client_idle_timeout) => checked.map(|()| None),
            _ = phase.wait_for(|phase| *phase == Phase::Draining) => return None,
        }
    };
    match resolved {
        Ok(source) => Some(source.unwrap_or(peer.ip())),
        Err(error) => {
            tracing::debug!(%peer, %error, "closing a connection before its first request");
            if let Some(reason) = error.counted_as() {
                shared.proxy.metrics.listener(kind).proxy_refused(reason);
            }
            None
        }
    }
}

/// The server side of the TLS handshake under its deadline, counted; the stream comes back boxed
/// (see [`ClientStream`]).
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsAcceptor,
    shared: &Shared,
) -> Option<Box<TlsStream<TcpStream>>> {
    let limits = &shared.proxy.table.settings.limits;
    let accepted = tls.accept(stream, limits.tls_handshake_timeout).await;
    let counters = shared.proxy.metrics.listener(ListenerKind::Https);
    counters.handshake(accepted.is_ok());
    match accepted {
        Ok(stream) => Some(Box::new(stream)),
        Err(error) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
    }
}

/// One HTTP/1.1 client connection, plain or over TLS: served by hyper while active, parked (only
/// the stream kept, see `park`) while idle, served again when the client sends its next request.
/// `unread`: bytes the client already sent, the start of its next request head.
async fn serve_http1<S: ClientStream>(
    stream: S,
    client: ClientInfo,
    shared: &Arc<Shared>,
    mut phase: PhaseSignal,
    redirect_port: Option<u16>,
    permit: OwnedSemaphorePermit,
    mut unread: Bytes,
) {
    let limits = &shared.proxy.table.settings.limits;
    let activity = ConnActivity::new();
    if !unread.is_empty() {
        // Its header timeout runs from now.
        activity.bytes_arrived();
    }
    let closes_on_handover = (!S::MOVABLE).then(|| phase.clone());
    let answerer = Answerer::new(shared, client, &activity, redirect_port, closes_on_handover);
    let service = move |head, body| answerer.answer(head, body);
    // Every park must follow bytes moving on the socket: parking again over the same bytes is
    // a loop that never waits.
    let mut parks = StallGuard::new(0);
    let mut stream = stream;
    loop {
        let conn = Http1Connection::new(
            stream,
            unread,
            Arc::clone(&activity),
            service.clone(),
            limits.max_header_bytes,
        );
        // Boxed: the timer loop's state exists only while serving, not while parked.
        let serving = drive(
            Box::pin(conn),
            &activity,
            shared,
            client,
            phase.clone(),
            Parking::Park {
                after: PARK_AFTER,
                movable: S::MOVABLE,
            },
        );
        let conn = match Box::pin(serving).await {
            Ended::Finished => return,
            Ended::HeadTooSlow(conn) => {
                return Pin::into_inner(conn).answer_request_timeout().await
            }
            Ended::Park(conn) => conn,
        };
        if parks.turn(&activity, "park").is_err() {
            return;
        }
        // Nothing is in flight: the connection hands the stream back with what it read of the
        // next request head.
        let Some((socket, carried)) = Pin::into_inner(conn).into_idle().await else {
            return;
        };
        unread = carried;
        stream = socket;
        if !unread.is_empty() {
            // A pipelining client had already sent part of its next request head: serve it at
            // once, under the header timeout like any head.
            activity.head_carried_over();
            continue;
        }
        let idle_deadline = activity.idle_deadline(limits.client_idle_timeout);
        if S::MOVABLE {
            if let Some(lot) = shared.parking.lot(shared, &phase) {
                match stream.into_tcp() {
                    Ok(tcp) => {
                        lot.park(tcp, client, idle_deadline, permit, shared, &phase);
                        return;
                    }
                    Err(same) => stream = same,
                }
            }
        }
        let first = loop {
            if *phase.borrow_and_update() == Phase::HandingOver && S::MOVABLE {
                // Idle, nothing buffered: the successor serves this client's next request.
                if let Some(socket) = stream.into_socket() {
                    let client_ip = client.ip;
                    let handed = HandedOver {
                        socket,
                        client_ip,
                        permit,
                    };
                    let _ = shared.handed_over.send(handed);
                }
                return;
            }
            tokio::select! {
                first = read_first_byte(&mut stream) => break first,
                _ = tokio::time::sleep_until(idle_deadline) => return,
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Draining {
                        return;
                    }
                }
            }
        };
        // The next request head is arriving: its header timeout runs from now.
        let Some(byte) = first else {
            return;
        };
        unread = byte;
        activity.bytes_arrived();
    }
}

/// Waits, holding no buffer, for a parked connection's next byte; `None` when the client closed.
/// One byte is read rather than waiting for readiness so that a TLS stream, whose decrypted bytes
/// may already sit in its own buffer with nothing left on the socket, is woken the same way.
async fn read_first_byte<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Bytes> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(1) => Some(Bytes::copy_from_slice(&byte)),
        _ => None,
    }
}

/// One HTTP/2 client connection: every stream goes through the same routing, queues and pools.
async fn serve_http2<S>(stream: S, client: ClientInfo, shared: &Shared, phase: PhaseSignal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Streams are counted like HTTP/1.1 requests, so an HTTP/2 connection with no stream for the
    // idle timeout is closed too (with GOAWAY). Request heads arrive in frames `h2` has already
    // bounded, so no byte-level watch is needed here.
    let activity = ConnActivity::new();
    let answerer = Answerer::new(shared, client, &activity, None, None);
    let conn = Http2Connection::new(
        stream,
        &http2::settings(shared.proxy.table.settings.limits.max_header_bytes),
        move |head, body| answerer.answer(head, body),
        (http2::KEEP_ALIVE_INTERVAL, http2::KEEP_ALIVE_TIMEOUT),
    );
    drive(
        Box::pin(conn),
        &activity,
        shared,
        client,
        phase,
        Parking::Never,
    )
    .await;
}

/// The response being made: the proxy's future, or a redirect's.
type Responding = Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send>>;

/// A response on its way to the client, finished as [`Answerer`] says once it is ready. A
/// future of its own, not an `async` block around the proxy's: awaiting that one inside a block
/// moved its kilobytes of state into the block's on the first poll. One pointer and two handles
/// wide, so an HTTP/2 stream holds it as it is.
struct Answering {
    responding: Responding,
    // Taken by the response's body when it is ready.
    in_flight: Option<InFlight>,
    closes_on_handover: Option<PhaseSignal>,
}

impl Future for Answering {
    type Output = Result<http::Response<TrackedBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = std::task::ready!(this.responding.as_mut().poll(cx));
        if this
            .closes_on_handover
            .as_ref()
            .is_some_and(|phase| *phase.borrow() != Phase::Serving)
        {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let in_flight = this
            .in_flight
            .take()
            .expect("an answer is not polled again once ready");
        Poll::Ready(Ok(response.map(|body| TrackedBody::new(body, in_flight))))
    }
}

/// What answering a request on one connection takes: proxy the request (or redirect it to HTTPS),
/// and tie the request's end to the response body so the connection's timers know when it is
/// idle. `closes_on_handover`: the connection's phase, for an HTTP/1.1 connection that cannot move
/// to a successor (TLS): while handing over, each of its responses says `Connection: close`, so the
/// client learns it at the end of a response rather than finding an idle connection closed under
/// a request it is sending.
#[derive(Clone)]
struct Answerer {
    proxy: Arc<Proxy>,
    activity: Arc<ConnActivity>,
    client: ClientInfo,
    redirect_port: Option<u16>,
    closes_on_handover: Option<PhaseSignal>,
}

impl Answerer {
    fn new(
        shared: &Shared,
        client: ClientInfo,
        activity: &Arc<ConnActivity>,
        redirect_port: Option<u16>,
        closes_on_handover: Option<PhaseSignal>,
    ) -> Answerer {
        Answerer {
            proxy: Arc::clone(&shared.proxy),
            activity: Arc::clone(activity),
            client,
            redirect_port,
            closes_on_handover,
        }
    }

    /// The answer to the request `head` with `body`. The proxy's future is the request's whole
    /// state machine (routing, queueing, the exchange): kilobytes, so it is boxed here and the
    /// answer around it stays small, whether the HTTP/1.1 connection keeps it in place or the
    /// HTTP/2 one moves it into a stream.
    fn answer<H, B>(&self, head: H, body: B) -> Answering
    where
        H: RequestHead + Send + Sync + 'static,
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // Boxed where it is made, either way: the proxy's future is kilobytes, and each move of
        // it on the way into the connection's (or an HTTP/2 stream's) state was a copy of all
        // of it; a redirect's ready response is a few hundred bytes, rare, and boxed alike so the
        // answer stays one pointer wide.
        let responding: Responding = match self.redirect_port {
            Some(port) => Box::pin(std::future::ready(super::redirect::https_redirect(
                &head, port,
            ))),
            None => Box::pin(Arc::clone(&self.proxy).handle(head, body, self.client)),
        };
        Answering {
            responding,
            in_flight: Some(self.activity.request_started()),
            closes_on_handover: self.closes_on_handover.clone(),
        }
    }
}

/// A connection [`drive`] serves: HTTP/1.1 or HTTP/2.
trait Served: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    /// Finish what is in flight, then close.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<S: Unpin> Served for Http1Connection<S> {
    type Error = std::convert::Infallible;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        Http1Connection::graceful_shutdown(&self);
    }
}

impl<S, A, F, B> Served for Http2Connection<S, A, F, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Http2Connection<S, A, F, B>: Future<Output = Result<(), Http2Error>> + Unpin,
{
    type Error = Http2Error;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }
}

/// How a connection's serving ended.
enum Ended<C> {
    Finished,
    /// A request head took longer than the header timeout; the caller answers `408`.
    HeadTooSlow(C),
    /// Idle for the park delay; the caller takes the socket back from hyper.
    Park(C),
}

/// What one poll of a served connection came to.
enum Polled<E> {
    Ended(Result<(), E>),
    /// The stall guard tripped (see [`StallGuard`]).
    Stalled,
    /// Still open, and its last request in flight ended during the poll.
    WentIdle,
}

/// Whether a connection is parked when idle (HTTP/1.1), and whether it can then move to another
/// process.
#[derive(Debug, Clone, Copy)]
enum Parking {
    Never,
    Park { after: Duration, movable: bool },
}

/// How long a connection that is closing with nothing in flight may take over the close
/// handshake (HTTP/2: GOAWAY, a PING round trip, the final GOAWAY) before it is dropped, so a
/// client that never acknowledges cannot keep it open.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Polls a connection to its end while enforcing the client timeouts and the phase (draining,
/// handing over), and hands it back when it should be parked.
async fn drive<C>(
    mut conn: Pin<Box<C>>,
    activity: &ConnActivity,
    shared: &Shared,
    client: ClientInfo,
    phase: PhaseSignal,
    parking: Parking,
) -> Ended<Pin<Box<C>>>
where
    C: Served,
{
    let limits = &shared.proxy.table.settings.limits;
    let mut closing = false;
    // While closing with nothing in flight: when the connection is dropped if still open.
    let mut quiet_close_deadline = None;
    // Far more polls than any real HTTP/1.1 exchange needs between two socket reads or writes.
    // Not for HTTP/2: its socket is not watched byte by byte (`h2` bounds its frames), and its
    // streams wake the connection for flow control and stream data without any socket IO of its
    // own, so a busy connection legitimately goes far past any such budget.
    let mut polls = matches!(parking, Parking::Park { .. }).then(|| StallGuard::new(10_000));
    // One timer for the session, moved to each turn's `wake_at` rather than a new one per turn:
    // tokio moves an armed timer to a later deadline with one atomic operation (re-inserting it
    // in its wheel only if the old deadline fires first), where a new timer cost a wheel
    // insertion and removal per request (issue 18). Its first deadline is replaced before the
    // first poll.
    let mut timer = std::pin::pin!(tokio::time::sleep(limits.client_idle_timeout));
    // Whether the timer holds this task's waker (it does from its first poll until it is reset
    // or fires; a task's waker never changes): then it is only looked at, not polled. Polled on
    // every wake-up (three a request), it cost more than the turn's other checks together.
    let mut timer_polled = false;
    let mut phase = PhaseFollower::new(phase);
    loop {
        // The sender gone: the process is going away, as when draining.
        let now = phase.current().unwrap_or(Phase::Draining);
        let park_after = match (parking, now) {
            (Parking::Never, _) => None,
            // Handing over: park the moment the connection is idle, so it moves at once.
            (Parking::Park { movable: true, .. }, Phase::HandingOver) => Some(Duration::ZERO),
            (Parking::Park { after, .. }, _) => Some(after),
        };
        // Handing over: HTTP/2 sends GOAWAY and finishes its streams. HTTP/1.1 stays open: a
        // plain connection moves to the successor when idle, a TLS one closes with its next
        // response (see `Answerer`), never while a request may be on its way.
        let must_close = match now {
            Phase::Serving => false,
            Phase::Draining => true,
            Phase::HandingOver => matches!(parking, Parking::Never),
        };
        if must_close && !closing {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        let verdict = activity.verdict(
            limits.header_read_timeout,
            limits.client_idle_timeout,
            park_after,
        );
        let mut wake_at = match verdict {
            Verdict::CheckAt(at) => Some(at),
            Verdict::HeadTooSlow => return Ended::HeadTooSlow(conn),
            Verdict::Park if !closing => return Ended::Park(conn),
            Verdict::IdleTooLong | Verdict::Park if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                None
            }
            Verdict::IdleTooLong | Verdict::Park => None,
        };
        if closing && activity.is_quiet() {
            let deadline = *quiet_close_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_GRACE);
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(client = %client.ip, "closing connection did not finish its close in time");
                return Ended::Finished;
            }
            wake_at = Some(wake_at.map_or(deadline, |at| at.min(deadline)));
        } else {
            quiet_close_deadline = None;
        }
        if let Some(at) = wake_at.filter(|at| *at != timer.deadline()) {
            timer.as_mut().reset(at);
            timer_polled = false;
        }
        // An HTTP/1.1 request ends inside hyper's poll of the connection (its response body is
        // dropped there), so a poll that ends the last one is seen right after it, with no
        // wake-up to arrange.
        let went_idle_before = activity.times_went_idle();
        let polled = std::future::poll_fn(|cx| {
            if let Some(Err(_)) = polls.as_mut().map(|polls| polls.turn(activity, "poll")) {
                return Poll::Ready(Some(Polled::Stalled));
            }
            match conn.as_mut().poll(cx) {
                Poll::Ready(result) => return Poll::Ready(Some(Polled::Ended(result))),
                // Re-decide as soon as the last request ends: parking becomes possible.
                Poll::Pending
                    if park_after.is_some() && activity.times_went_idle() != went_idle_before =>
                {
                    return Poll::Ready(Some(Polled::WentIdle));
                }
                Poll::Pending => {}
            }
            if wake_at.is_some() {
                let fired = if timer_polled {
                    timer.is_elapsed()
                } else {
                    timer_polled = true;
                    timer.as_mut().poll(cx).is_ready()
                };
                if fired {
                    return Poll::Ready(None);
                }
            }
            // A change of phase is re-decided at the top of the loop, as a timer's wake-up is.
            if !closing && phase.poll_changed(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match polled {
            None | Some(Polled::WentIdle) => {}
            Some(Polled::Ended(Err(error))) => {
                tracing::debug!(client = %client.ip, %error, "client connection ended with an error");
                return Ended::Finished;
            }
            Some(Polled::Ended(Ok(())) | Polled::Stalled) => return Ended::Finished,
        }
    }
}
