//! The one body type of every response Juggler sends: a buffered backend response, a body spooled
//! to a file (see `spool`), a body streamed from a pooled connection, or a short text of Juggler's
//! own.
//!
//! hyper polls it on the client side; when the body is streamed, that poll reads from the pooled
//! connection directly (no task or channel in between), so the client's pace is the backend's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::conn::{BodyError, BodyState};
use super::head::ForwardedFields;
use super::pool::{BackendPool, PooledConn};
use super::spool::{SpoolRead, SpooledBody};

/// A response body.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// The backend whose relayed-bytes counter each data frame goes to as it passes: set for a
    /// body whose length was not known when it was handed on (see [`ResponseBody::count_relayed`]).
    relayed_from: Option<Arc<BackendPool>>,
    /// The backend's end-to-end fields as it sent them, for an HTTP/1.1 client, which writes them
    /// ahead of the response's header map: they travel with the body so the head needs no map
    /// of its own for them (see `conn::FieldsWanted`).
    forwarded: Option<ForwardedFields>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Spooled(Box<SpooledBody>),
    Streaming(Box<StreamingBody>),
}

/// A response too large for the response buffer, read from the backend as the client takes it:
/// the pooled connection stays checked out (and backpressure reaches the backend) until the end.
#[derive(Debug)]
pub(super) struct StreamingBody {
    /// `None` once the body ended: the slot went back to the pool at that moment.
    slot: Option<PooledConn>,
    state: BodyState,
    /// Bytes already read while deciding the body is too large to buffer.
    prefix: Option<Bytes>,
    /// Whether the backend allows another request on the connection after this response.
    keep_alive: bool,
    /// Bytes still to come (prefix included), when the backend sent a `Content-Length`.
    remaining: Option<u64>,
    /// A backend that stalls mid-body for this long ends the response (and the client connection).
    stall_timeout: Duration,
    stall: Pin<Box<Sleep>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody::of(Kind::Full(Some(bytes)))
    }

    pub(super) fn streaming(body: StreamingBody) -> ResponseBody {
        ResponseBody::of(Kind::Streaming(Box::new(body)))
    }

    pub(super) fn spooled(body: SpooledBody) -> ResponseBody {
        ResponseBody::of(Kind::Spooled(Box::new(body)))
    }

    fn of(kind: Kind) -> ResponseBody {
        ResponseBody {
            kind,
            relayed_from: None,
            forwarded: None,
        }
    }

    /// This body with the backend's fields as it sent them (see the field).
    pub(crate) fn with_forwarded(mut self, fields: Option<ForwardedFields>) -> ResponseBody {
        self.forwarded = fields;
        self
    }

    /// The backend's end-to-end fields as it sent them, if they came that way.
    pub(crate) fn forwarded(&self) -> Option<&ForwardedFields> {
        self.forwarded.as_ref()
    }

    /// Counts this body's bytes as relayed from `pool`'s backend: all at once when its length is
    /// known now, otherwise frame by frame as the client takes them (a chunked or close-delimited
    /// response too large to buffer), so streamed responses are counted too.
    pub fn count_relayed(&mut self, pool: &Arc<BackendPool>) {
        match self.size_hint().exact() {
            Some(len) => pool.counters.relayed(len),
            None => self.relayed_from = Some(Arc::clone(pool)),
        }
    }

    /// The next frame of whichever kind of body this is.
    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Spooled(body) => match ready!(body.poll_read(cx)) {
                SpoolRead::Data(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                SpoolRead::End => Poll::Ready(None),
                SpoolRead::Failed(error) => Poll::Ready(Some(Err(error))),
                SpoolRead::Stream(rest) => {
                    self.kind = Kind::Streaming(rest);
                    self.poll_kind(cx)
                }
            },
            Kind::Streaming(body) => body
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|result| result.map(Frame::data))),
        }
    }
}

impl StreamingBody {
    /// Streams the rest of a response whose first `prefix` bytes were read while deciding it was
    /// too large to buffer.
    pub(super) fn new(
        slot: PooledConn,
        state: BodyState,
        prefix: Bytes,
        keep_alive: bool,
        stall_timeout: Duration,
    ) -> StreamingBody {
        let remaining = match &state {
            BodyState::Length(remaining) => Some(*remaining),
            _ => None,
        };
        StreamingBody {
            slot: Some(slot),
            state,
            remaining: remaining.map(|rest| rest + prefix.len() as u64),
            prefix: (!prefix.is_empty()).then_some(prefix),
            keep_alive,
            stall_timeout,
            stall: Box::pin(tokio::time::sleep(stall_timeout)),
        }
    }

    /// The last bytes of a body whose connection is already back in its pool.
    pub(super) fn finished(rest: Bytes) -> StreamingBody {
        StreamingBody {
            slot: None,
            state: BodyState::Done,
            remaining: Some(rest.len() as u64),
            prefix: (!rest.is_empty()).then_some(rest),
            keep_alive: false,
            stall_timeout: Duration::ZERO,
            stall: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// The next piece of the body, keeping `remaining` (and so the size hint) current.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let polled = self.poll_next_piece(cx);
        if let (Poll::Ready(Some(Ok(chunk))), Some(remaining)) = (&polled, &mut self.remaining) {
            *remaining = remaining.saturating_sub(chunk.len() as u64);
        }
        polled
    }

    fn poll_next_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(prefix)));
        }
        let Some(slot) = self.slot.as_mut() else {
            return Poll::Ready(None);
        };
        match slot.conn().poll_body_chunk(&mut self.state, cx) {
            Poll::Ready(Ok(Some(chunk))) => {
                let deadline = tokio::time::Instant::now() + self.stall_timeout;
                self.stall.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Ok(None)) => {
                slot.response_complete(self.keep_alive);
                self.slot = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(error)) => {
                let backend = slot.backend().address;
                tracing::warn!(backend, ?error, "backend response cut off while streaming");
                self.slot = None;
                Poll::Ready(Some(Err(body_error_to_io(error))))
            }
            Poll::Pending => {
                if self.stall.as_mut().poll(cx).is_ready() {
                    let backend = slot.backend().address;
                    tracing::warn!(backend, "backend stalled while streaming a response");
                    self.slot = None;
                    return Poll::Ready(Some(Err(io::ErrorKind::TimedOut.into())));
                }
                Poll::Pending
            }
        }
    }
}

fn body_error_to_io(error: BodyError) -> io::Error {
    match error {
        BodyError::Truncated => io::ErrorKind::UnexpectedEof.into(),
        BodyError::Invalid(reason) => io::Error::new(io::ErrorKind::InvalidData, reason),
        BodyError::Io(error) => error,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = this.poll_kind(cx);
        if let (Some(pool), Poll::Ready(Some(Ok(frame)))) = (&this.relayed_from, &polled) {
            if let Some(data) = frame.data_ref() {
                pool.counters.relayed(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Kind::Spooled(body) => body.is_end(),
            Kind::Streaming(body) => body.slot.is_none() && body.prefix.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Spooled(body) => match body.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
            Kind::Streaming(body) => match body.remaining {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
        }
    }
}
