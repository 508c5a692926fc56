//! Parking idle keep-alive connections.
//!
//! hyper keeps a read buffer (8 KiB and up), a write buffer and its connection state for as long
//! as a connection lives. Most keep-alive clients are idle most of the time, so an HTTP/1.1
//! connection (plain or TLS) that has been idle for [`PARK_AFTER`] is handed back by hyper, and only
//! the stream is kept until the client sends again; then a fresh hyper connection takes over. Bytes
//! hyper had already read are replayed to the new connection (`WatchedIo::replaying`), so nothing
//! is lost: they are the start of a pipelined request head, which goes on at once under the
//! header timeout (`ConnActivity::head_carried_over`) rather than being parked again.

use std::time::Duration;

use bytes::Bytes;

/// Idle time after which a connection is parked. Long enough that a client sending requests back
/// to back never pays for re-creating its HTTP state, short enough that thousands of idle clients
/// do not hold hyper's buffers.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(50);

/// Joins what was left of an old prefix with the bytes hyper had buffered but not used. The
/// result is always a fresh copy (usually empty): a slice of hyper's buffer, even an empty one,
/// would keep its whole 8 KiB allocation alive while the connection is parked.
pub(crate) fn carry_over(unread_prefix: &[u8], hyper_buffered: &[u8]) -> Bytes {
    if unread_prefix.is_empty() && hyper_buffered.is_empty() {
        return Bytes::new();
    }
    [unread_prefix, hyper_buffered].concat().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_bytes_are_a_fresh_copy() {
        assert_eq!(carry_over(b"a", b"b"), Bytes::from_static(b"ab"));
        assert!(carry_over(b"", b"").is_empty());
    }
}
