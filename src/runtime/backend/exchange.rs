//! One request and its response on a checked-out pooled connection: write the request and read
//! the response head, each within the backend timeout, then read the body whole (small responses: the
//! connection goes back to the pool at once), spool it to a file at the backend's pace (large
//! ones, see `spool`), or, when the spool budget is full, hand the connection to a body that
//! streams the rest to the client. Every failure comes back as a [`ProxyError`] naming the backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use juggler_config::table::Limits;

use super::body::{ResponseBody, StreamingBody};
use super::conn::{BodyError, BodyState, FieldsWanted, Framing, HeadError, ResponseHead, Sent};
use super::pool::PooledConn;
use super::spool::{spool_response, Budget, RequestBody, SpoolJob};
use crate::deadline::within;
use crate::error::ProxyError;

/// The request as it goes to a backend, encoded once and re-sent as is.
#[derive(Debug)]
pub struct OutgoingRequest<'a> {
    /// Request line and headers.
    pub head: &'a [u8],
    /// The body (in memory, or partly in a spill file).
    pub body: &'a RequestBody,
    /// A `HEAD` request: the response has no body whatever its headers say.
    pub is_head: bool,
    /// How the client wants the response's fields: an HTTP/1.1 client takes them as the backend
    /// sent them.
    pub fields: FieldsWanted,
}

/// Sends `request` on `slot` and reads the answer. The slot goes back to its pool when the body
/// has been read: here for a buffered body, when the spooling task has read it for a spooled one,
/// at the end of the stream for a streamed one.
pub async fn exchange(
    mut slot: PooledConn,
    request: &OutgoingRequest<'_>,
    limits: &Limits,
    budget: &Arc<Budget>,
) -> Result<(ResponseHead, ResponseBody), ProxyError> {
    let backend = slot.backend().address;
    let reused = slot.from_idle;
    let timed_out = || ProxyError::BackendTimeout { backend };
    // A request waiting to ride goes out behind this one (see `pipeline`), unless a spilled body
    // would stand between them.
    let behind = match request.body.spilled() {
        None => slot.take_rider(),
        Some(_) => None,
    };
    let behind = behind.as_deref().unwrap_or_default();
    let (sent, write_error, head_timeout) = if slot.sent_at.is_some() {
        // This request rode: it is on the connection already, only the one behind is not.
        if !behind.is_empty() {
            let nothing = RequestBody::default();
            let write = slot.conn().write_request(behind, &nothing, &[]);
            let written = within(limits.backend_timeout, write).await;
            if !matches!(written, Some(Ok(Sent::Complete))) {
                slot.lose_rider();
            }
        }
        (Sent::Complete, None, limits.backend_timeout)
    } else {
        // A failed write is not the end: a backend that refuses a body (413, 405) often answers
        // and closes before reading it, and that answer is what the client should see. A backend
        // that stops reading without closing gets the backend timeout for the write too (or a
        // slot would be held forever); an answer it already sent is still relayed.
        // Each step is bounded by `within`: most finish on their first poll and then cost no
        // timer.
        let write = slot
            .conn()
            .write_request(request.head, request.body, behind);
        match within(limits.backend_timeout, write).await {
            Some(Ok(sent)) => (sent, None, limits.backend_timeout),
            Some(Err(error)) => (Sent::AnsweredEarly, Some(error), limits.backend_timeout),
            None => (
                Sent::AnsweredEarly,
                Some(std::io::ErrorKind::TimedOut.into()),
                Duration::ZERO,
            ),
        }
    };
    let conn = slot.conn();
    let read_head = conn.read_head(request.is_head, request.fields);
    let mut head = match within(head_timeout, read_head).await {
        None => return Err(timed_out()),
        Some(Ok(head)) => head,
        Some(Err(HeadError::NothingReceived(source))) => {
            return Err(ProxyError::BackendGone {
                backend,
                reused,
                source: write_error.unwrap_or(source),
            })
        }
        Some(Err(error)) => return Err(head_failure(backend, reused, error)),
    };
    if sent == Sent::AnsweredEarly {
        tracing::info!(
            backend,
            status = head.status.as_u16(),
            "backend answered before reading the whole request body; relayed, connection closed"
        );
        head.keep_alive = false;
    }

    let buffer_limit = limits.response_buffer_bytes as u64;
    let read = read_or_start_streaming(&mut slot, head.framing, buffer_limit);
    let body = match within(limits.backend_timeout, read).await {
        None => return Err(timed_out()),
        Some(Err(error)) => return Err(body_failure(backend, error)),
        Some(Ok(Buffered::Whole(bytes))) => {
            slot.response_complete(head.keep_alive);
            ResponseBody::full(bytes)
        }
        Some(Ok(Buffered::TooLarge { prefix, state })) => {
            // Read at the spool's or the client's pace: a rider behind it does not wait for that.
            slot.lose_rider();
            let job = SpoolJob {
                slot,
                state,
                prefix,
                keep_alive: head.framing != Framing::UntilClose && head.keep_alive,
                len: match head.framing {
                    Framing::Length(len) => Some(len),
                    _ => None,
                },
                stall_timeout: limits.backend_timeout,
            };
            // Boxed: a large response's path, and its future would otherwise set the size of
            // this one and of every future around it, each copied whole at every `.await` that
            // starts it, on every request.
            match Box::pin(spool_response(budget, job)).await {
                Ok(spooled) => ResponseBody::spooled(spooled),
                Err(job) => ResponseBody::streaming(StreamingBody::new(
                    job.slot,
                    job.state,
                    job.prefix,
                    job.keep_alive,
                    job.stall_timeout,
                )),
            }
        }
    };
    Ok((head, body))
}

enum Buffered {
    Whole(Bytes),
    TooLarge { prefix: Bytes, state: BodyState },
}

/// Reads the body until it ends or outgrows `limit`. A body whose `Content-Length` already says
/// it fits is read in one piece.
async fn read_or_start_streaming(
    slot: &mut PooledConn,
    framing: Framing,
    limit: u64,
) -> Result<Buffered, BodyError> {
    match framing {
        Framing::Empty => return Ok(Buffered::Whole(Bytes::new())),
        Framing::Length(len) if len <= limit => {
            return slot
                .conn()
                .read_exact_body(len as usize)
                .await
                .map(Buffered::Whole)
        }
        _ => {}
    }
    let mut state = BodyState::new(framing);
    let mut collected = BytesMut::new();
    loop {
        let conn = slot.conn();
        match std::future::poll_fn(|cx| conn.poll_body_chunk(&mut state, cx)).await? {
            None => return Ok(Buffered::Whole(collected.freeze())),
            Some(chunk) => {
                collected.extend_from_slice(&chunk);
                if collected.len() as u64 > limit {
                    return Ok(Buffered::TooLarge {
                        prefix: collected.freeze(),
                        state,
                    });
                }
            }
        }
    }
}

fn head_failure(backend: &'static str, reused: bool, error: HeadError) -> ProxyError {
    match error {
        HeadError::NothingReceived(source) => ProxyError::BackendGone {
            backend,
            reused,
            source,
        },
        HeadError::Invalid(reason) => ProxyError::InvalidResponse { backend, reason },
        HeadError::Io(_) => ProxyError::InvalidResponse {
            backend,
            reason: "connection failed inside the response head",
        },
    }
}

fn body_failure(backend: &'static str, error: BodyError) -> ProxyError {
    match error {
        BodyError::Truncated | BodyError::Io(_) => ProxyError::Truncated { backend },
        BodyError::Invalid(reason) => ProxyError::InvalidResponse { backend, reason },
    }
}
