//! One request and its response on a checked-out pooled connection: write the request, read the
//! response head within the backend timeout, then read the body whole (small responses: the
//! connection goes back to the pool at once) or hand the connection to a body that streams the
//! rest to the client. Every failure comes back as a [`ProxyError`] naming the backend.

use bytes::{Bytes, BytesMut};
use juggler_config::table::Limits;

use super::body::{ResponseBody, StreamingBody};
use super::conn::{BodyError, BodyState, Framing, HeadError, ResponseHead};
use super::pool::PooledConn;
use crate::error::ProxyError;

/// The request as it goes to a backend, encoded once and re-sent as is.
#[derive(Debug)]
pub struct OutgoingRequest<'a> {
    /// Request line and headers, with the body appended when it is small.
    pub head: &'a [u8],
    /// The body when it is sent in a write of its own.
    pub body: &'a Bytes,
    /// A `HEAD` request: the response has no body whatever its headers say.
    pub is_head: bool,
}

/// Sends `request` on `slot` and reads the answer. The slot goes back to its pool when the body
/// has been read: here for a buffered body, at the end of the stream for a streamed one.
pub async fn exchange(
    mut slot: PooledConn,
    request: &OutgoingRequest<'_>,
    limits: &Limits,
) -> Result<(ResponseHead, ResponseBody), ProxyError> {
    let backend = slot.backend().address;
    let reused = slot.from_idle;
    let timed_out = || ProxyError::BackendTimeout { backend };
    let conn = slot.conn();
    conn.write_request(request.head, request.body)
        .await
        .map_err(|source| ProxyError::BackendGone {
            backend,
            reused,
            source,
        })?;
    let head = tokio::time::timeout(limits.backend_timeout, conn.read_head(request.is_head))
        .await
        .map_err(|_| timed_out())?
        .map_err(|error| head_failure(backend, reused, error))?;

    let buffer_limit = limits.response_buffer_bytes as u64;
    let read = read_or_start_streaming(&mut slot, head.framing, buffer_limit);
    let body = match tokio::time::timeout(limits.backend_timeout, read).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(error)) => return Err(body_failure(backend, error)),
        Ok(Ok(Buffered::Whole(bytes))) => {
            slot.response_complete(head.keep_alive);
            ResponseBody::full(bytes)
        }
        Ok(Ok(Buffered::TooLarge { prefix, state })) => {
            let keep_alive = head.framing != Framing::UntilClose;
            let stall_timeout = limits.backend_timeout;
            ResponseBody::streaming(StreamingBody::new(
                slot,
                state,
                prefix,
                keep_alive,
                stall_timeout,
            ))
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
