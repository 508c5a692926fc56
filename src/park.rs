//! Parking idle keep-alive connections.
//!
//! hyper keeps a read buffer (8 KiB and up), a write buffer and its connection state for as long
//! as a connection lives. Most keep-alive clients are idle most of the time, so a plain HTTP/1.1
//! connection that has been idle for [`PARK_AFTER`] is handed back by hyper, and only the socket is
//! kept until the client sends again; then a fresh hyper connection takes over. Bytes hyper had
//! already read are replayed to the new connection by [`Prefixed`], so nothing is lost in between.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Idle time after which a connection is parked. Long enough that a client sending requests back
/// to back never pays for re-creating its HTTP state, short enough that thousands of idle clients
/// do not hold hyper's buffers.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// A stream that first yields `prefix` (bytes read from it earlier), then reads from `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }

    /// The stream and whatever of the prefix has not been read yet.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..take]);
            self.prefix.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Joins what was left of an old prefix with the bytes hyper had buffered but not used. The
/// result is always a fresh copy (usually empty): a slice of hyper's buffer, even an empty one,
/// would keep its whole 8 KiB allocation alive while the connection is parked.
pub fn carry_over(unread_prefix: &[u8], hyper_buffered: &[u8]) -> Bytes {
    if unread_prefix.is_empty() && hyper_buffered.is_empty() {
        return Bytes::new();
    }
    [unread_prefix, hyper_buffered].concat().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefix_is_read_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello world");
        assert_eq!(carry_over(b"a", b"b"), Bytes::from_static(b"ab"));
        assert!(carry_over(b"", b"").is_empty());
    }
}
