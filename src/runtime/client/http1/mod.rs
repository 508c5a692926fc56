//! HTTP/1.1 toward clients, served by Juggler itself: one read buffer per connection, the head
//! parsed in place (`head`), the body decoded as the proxy reads it (`body`), the response head
//! written from the proxy's fields with the first of its body in the same write (`write`).
//!
//! A request is read, handed to the connection's service, answered, and the next one read: one
//! at a time, in order (pipelined requests wait in the buffer). While the service works and the
//! body is read, the connection still reads its socket, so a client that goes away is noticed and
//! its request dropped (a queued request leaves its queue). The connection's owner (`conn`)
//! keeps the timers: it asks, through [`Http1Connection`], for the connection to close, to hand
//! its socket back for parking, or to answer `408`, and the connection does so when no request is
//! in progress.

mod body;
mod head;
mod write;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::io::poll_read_buf;

pub(crate) use body::ClientBody;
use body::{BodyError, BodyFeed, Fed};
use head::ParsedHead;
pub(crate) use head::SentHead;
use write::{Exchange, Framing};

use super::activity::{ConnActivity, WatchedIo};
use super::response::TrackedBody;
use crate::proxy::request::RequestHead;
use crate::socket_read::poll_read_draining;

/// A client stream as the connection reads it: into its buffer, a plain socket without the read
/// that only finds it empty (`socket_read`); a TLS stream as any reader (its records are read
/// and decrypted in its own buffer first).
pub(crate) trait BufferedRead: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn poll_read_buffered(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        poll_read_buf(Pin::new(self), cx, buf)
    }
}

impl BufferedRead for TcpStream {
    fn poll_read_buffered(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        poll_read_draining(self, buf, cx)
    }
}

impl BufferedRead for Box<TlsStream<TcpStream>> {}

/// Reads take at least this much room in the buffer.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes sent in the same write as the response head, when the body has them ready.
const COALESCE: usize = 16 * 1024;
/// How long a connection being closed may take to say so (TLS `close_notify`, a last answer).
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the owner asks of the connection, acted on while no request is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Asked {
    Serve = 0,
    /// Close (draining).
    Close = 1,
    /// Hand the socket and any bytes of the next head back (parking).
    Idle = 2,
    /// Answer `408` and close: a request head took too long.
    TimedOut = 3,
}

/// How a connection's serving ended.
#[derive(Debug)]
enum Left<S> {
    Closed,
    /// Idle, as asked: the socket and what the client already sent of its next request.
    Idle(S, Bytes),
}

/// One HTTP/1.1 connection being served; a future that ends when the connection closes or goes
/// idle as asked.
pub(super) struct Http1Connection<S> {
    serving: Pin<Box<dyn Future<Output = Left<S>> + Send>>,
    asked: Arc<AtomicU8>,
    left: Option<Left<S>>,
}

impl<S: BufferedRead> Http1Connection<S> {
    /// Serves `stream`, whose client already sent `unread`, with `service` (a request's head and
    /// body in, the future of its response out); `max_head`: the most bytes a request head may
    /// take.
    pub(super) fn new<Svc, Answer>(
        stream: S,
        unread: Bytes,
        activity: Arc<ConnActivity>,
        service: Svc,
        max_head: usize,
    ) -> Http1Connection<S>
    where
        Svc: Fn(SentHead, ClientBody) -> Answer + Send + 'static,
        Answer: Future<Output = Result<Response<TrackedBody>, Infallible>> + Send + 'static,
    {
        let asked = Arc::new(AtomicU8::new(Asked::Serve as u8));
        let connection = Connection {
            io: WatchedIo::new(stream, activity),
            buf: BytesMut::from(&unread[..]),
            asked: Arc::clone(&asked),
            max_head,
        };
        Http1Connection {
            serving: Box::pin(connection.serve(service)),
            asked,
            left: None,
        }
    }

    /// The socket and the bytes of the next request head already read, once no request is in
    /// progress; `None` if the connection closed first.
    pub(super) async fn into_idle(mut self) -> Option<(S, Bytes)> {
        self.asked.store(Asked::Idle as u8, Ordering::Relaxed);
        match self.finish().await {
            Left::Idle(stream, unread) => Some((stream, unread)),
            Left::Closed => None,
        }
    }

    /// Answers `408` to a client whose request head took too long, and closes.
    pub(super) async fn answer_request_timeout(mut self) {
        self.asked.store(Asked::TimedOut as u8, Ordering::Relaxed);
        let _ = self.finish().await;
    }

    async fn finish(&mut self) -> Left<S> {
        if let Some(left) = self.left.take() {
            return left;
        }
        self.serving.as_mut().await
    }
}

impl<S> Http1Connection<S> {
    /// Closes the connection once no request is in progress (the one in progress is answered
    /// with `Connection: close`).
    pub(super) fn graceful_shutdown(&self) {
        let _ = self.asked.compare_exchange(
            Asked::Serve as u8,
            Asked::Close as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl<S: Unpin> Future for Http1Connection<S> {
    type Output = Result<(), Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.left.is_some() {
            return Poll::Ready(Ok(()));
        }
        let left = std::task::ready!(self.serving.as_mut().poll(cx));
        self.left = Some(left);
        Poll::Ready(Ok(()))
    }
}

/// The serving task's own state.
struct Connection<S> {
    io: WatchedIo<S>,
    /// What the client sent that has not been handled yet.
    buf: BytesMut,
    asked: Arc<AtomicU8>,
    max_head: usize,
}

/// What waiting for more of a request head came to.
enum Waited {
    /// More bytes are in the buffer.
    Bytes,
    Asked(Asked),
    /// The client closed (or the socket failed) before a complete head.
    Gone,
}

impl<S: BufferedRead> Connection<S> {
    async fn serve<Svc, Answer>(mut self, service: Svc) -> Left<S>
    where
        Svc: Fn(SentHead, ClientBody) -> Answer,
        Answer: Future<Output = Result<Response<TrackedBody>, Infallible>>,
    {
        let mut out = Vec::new();
        loop {
            // Parsed here, and only the wait for more bytes awaited: a head returned from an
            // `async fn` was copied three more times on its way out.
            let head = match head::parse(&mut self.buf, self.max_head) {
                Ok(Some(head)) => head,
                Ok(None) => match self.more_head().await {
                    Waited::Bytes => continue,
                    Waited::Asked(Asked::Idle) => {
                        // A copy (usually empty): a slice, even an empty one, would keep the
                        // whole read buffer alive while the connection is parked.
                        let unread = Bytes::copy_from_slice(&self.buf);
                        return Left::Idle(self.io.into_inner(), unread);
                    }
                    Waited::Asked(Asked::TimedOut) => {
                        self.close_with(StatusCode::REQUEST_TIMEOUT).await;
                        return Left::Closed;
                    }
                    Waited::Asked(_) => {
                        self.close().await;
                        return Left::Closed;
                    }
                    Waited::Gone => return Left::Closed,
                },
                Err(error) => {
                    let status = error.status();
                    tracing::debug!(%status, "refused a malformed request head");
                    self.close_with(status).await;
                    return Left::Closed;
                }
            };
            let ParsedHead {
                head,
                framing,
                keep_alive,
                expects_continue,
            } = head;
            let mut exchange = Exchange {
                version: head.version(),
                is_head: head.method() == Method::HEAD,
                keep_alive,
            };
            let (body, mut feed) = body::body(framing, expects_continue);
            let response = {
                let responding = pin!(service(head, body));
                self.respond(responding, &mut feed).await
            };
            let Some(response) = response else {
                return Left::Closed;
            };
            // A body the proxy did not read (it answered first) is skipped if the client already
            // sent all of it; otherwise the next request cannot be found and the connection ends.
            let body_read = feed
                .as_mut()
                .is_none_or(|feed| feed.is_done() || feed.skip_buffered(&mut self.buf));
            exchange.keep_alive &= body_read && self.asked() == Asked::Serve;
            match self.write_response(response, exchange, &mut out).await {
                Ok(true) => {}
                Ok(false) => {
                    self.close().await;
                    return Left::Closed;
                }
                Err(error) => {
                    tracing::debug!(%error, "writing a response to the client failed");
                    return Left::Closed;
                }
            }
        }
    }

    fn asked(&self) -> Asked {
        match self.asked.load(Ordering::Relaxed) {
            0 => Asked::Serve,
            1 => Asked::Close,
            2 => Asked::Idle,
            _ => Asked::TimedOut,
        }
    }

    /// Reads more of a request head, which the buffer does not yet hold whole; the only place
    /// where the owner's requests are acted on (no request is in progress here).
    async fn more_head(&mut self) -> Waited {
        let read = poll_fn(|cx| match self.asked() {
            Asked::Serve => self.poll_read(cx, 0).map(Some),
            // A close waits for a head already arriving; parking and 408 do not.
            Asked::Close if !self.buf.is_empty() => self.poll_read(cx, 0).map(Some),
            _ => Poll::Ready(None),
        })
        .await;
        match read {
            None => Waited::Asked(self.asked()),
            Some(Ok(0) | Err(_)) => Waited::Gone,
            Some(Ok(_)) => Waited::Bytes,
        }
    }

    /// Reads what the socket has, with room for at least `READ_CHUNK`, or for `expected` bytes
    /// (the rest of a body) up to the read-ahead limit: one read, not several, for a body that
    /// is already there.
    fn poll_read(&mut self, cx: &mut Context<'_>, expected: u64) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        let wanted = usize::try_from(expected)
            .unwrap_or(usize::MAX)
            .min(self.read_ahead());
        if spare < 1024 || spare < wanted {
            self.buf.reserve(wanted.max(READ_CHUNK));
        }
        self.io.poll_read_buffered(cx, &mut self.buf)
    }

    /// How far the buffer reads ahead of what is being handled.
    fn read_ahead(&self) -> usize {
        self.max_head.max(READ_CHUNK)
    }

    /// Drives the service to its response while feeding it the request body and watching the
    /// socket; `None` when the client went away first (the request is dropped with it).
    async fn respond<F>(
        &mut self,
        mut responding: Pin<&mut F>,
        feed: &mut Option<BodyFeed>,
    ) -> Option<Response<TrackedBody>>
    where
        F: Future<Output = Result<Response<TrackedBody>, Infallible>>,
    {
        // Read ahead of a pipelining client only this far while a request is in progress.
        let read_ahead = self.read_ahead();
        let mut interim: &'static [u8] = b"";
        poll_fn(|cx| loop {
            if let Poll::Ready(Ok(response)) = responding.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            if feed.as_mut().is_some_and(BodyFeed::take_continue) {
                interim = b"HTTP/1.1 100 Continue\r\n\r\n";
            }
            while !interim.is_empty() {
                match Pin::new(&mut self.io).poll_write(cx, interim) {
                    Poll::Ready(Ok(written)) if written > 0 => interim = &interim[written..],
                    Poll::Ready(_) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let fed = match feed.as_mut() {
                Some(body) => body.feed(&mut self.buf),
                None => Fed::Done,
            };
            match fed {
                // Polled again: the service may take what was handed over.
                Fed::Progress => continue,
                // The service is busy elsewhere; it is woken by what it waits for.
                Fed::Full => return Poll::Pending,
                Fed::Done if self.buf.len() >= read_ahead => return Poll::Pending,
                Fed::NeedMore | Fed::Done => {}
            }
            let expected = feed.as_ref().map_or(0, BodyFeed::expected);
            match std::task::ready!(self.poll_read(cx, expected)) {
                Ok(0) if fed == Fed::NeedMore => {
                    if let Some(body) = feed.as_mut() {
                        body.fail(BodyError::Incomplete);
                    }
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return Poll::Ready(None),
                Ok(_) => {}
            }
        })
        .await
    }

    /// Writes `response`; whether the connection stays open for another request.
    async fn write_response(
        &mut self,
        response: Response<TrackedBody>,
        exchange: Exchange,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        out.clear();
        let (framing, keep_alive) =
            write::encode_head(&parts, body.forwarded(), &body.size_hint(), exchange, out);
        drop(parts);
        // `out` holds the head, and with it what the body had ready, until `head_sent`.
        let mut head_sent = false;
        let mut sent = 0u64;
        let mut body_left = framing != Framing::None;
        while body_left {
            let frame = if head_sent {
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            } else {
                // Only what the body has ready now: the head does not wait for the rest.
                match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        self.io.write_all(out).await?;
                        self.io.flush().await?;
                        head_sent = true;
                        continue;
                    }
                }
            };
            let data = match frame {
                None => {
                    body_left = false;
                    continue;
                }
                Some(Err(error)) => return Err(io::Error::other(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    // Trailers are not forwarded on HTTP/1.1; empty data says nothing.
                    _ => continue,
                },
            };
            sent += data.len() as u64;
            if matches!(framing, Framing::Length(len) if sent > len) {
                return Err(io::Error::other("response body longer than its length"));
            }
            let chunked = framing == Framing::Chunked;
            if head_sent {
                out.clear();
            }
            if chunked {
                write::chunk_size_line(data.len(), out);
            }
            if !head_sent && out.len() + data.len() <= COALESCE {
                out.extend_from_slice(&data);
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            self.io.write_all(out).await?;
            self.io.write_all(&data).await?;
            if chunked {
                self.io.write_all(b"\r\n").await?;
            }
            // A streamed body reaches the client as it comes (TLS holds records until flushed).
            self.io.flush().await?;
            head_sent = true;
        }
        if head_sent {
            out.clear();
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            self.io.write_all(out).await?;
        }
        self.io.flush().await?;
        if matches!(framing, Framing::Length(len) if sent != len) {
            return Err(io::Error::other("response body shorter than its length"));
        }
        // The request ends here (its in-flight guard goes with the body).
        drop(body);
        Ok(keep_alive)
    }

    /// Answers `status` (a refused or timed-out head) and closes.
    async fn close_with(&mut self, status: StatusCode) {
        let mut answer = Vec::with_capacity(128);
        let (parts, ()) = Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, "0")
            .body(())
            .unwrap_or_default()
            .into_parts();
        let exchange = Exchange {
            version: http::Version::HTTP_11,
            is_head: false,
            keep_alive: false,
        };
        write::encode_head(
            &parts,
            None,
            &http_body::SizeHint::with_exact(0),
            exchange,
            &mut answer,
        );
        let io = &mut self.io;
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            io.write_all(&answer).await?;
            io.shutdown().await
        })
        .await;
    }

    /// Closes the connection, telling the client (FIN, or TLS `close_notify`).
    async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.io.shutdown()).await;
    }
}

/// The head parser, for the fuzz targets and the differential test against hyper
/// (`crate::fuzzing`).
pub(crate) use head::{parse as parse_head, BodyFraming};
