//! Reading a TCP socket into a buffer without the read that only finds it empty.
//!
//! tokio remembers that a socket is readable until a read fails with `WouldBlock`, so after a read
//! that took everything the socket had, the next one is a system call that returns `EAGAIN`: one
//! per request on each side of the proxy (strace: 1 of 5 calls per request). A read that did not
//! fill the room it was given took everything there was, so it is reported to tokio as
//! `WouldBlock` (the bytes are kept) and tokio forgets the readiness, and the next read waits for
//! the next event instead. tokio forgets it only if no event arrived since it sampled the readiness
//! before the read (its tick), so bytes (or a close) that come in after the read always wake the
//! reader again; a close that came with the bytes stays remembered (tokio never clears it).

use std::io;
use std::task::{ready, Context, Poll};

use bytes::BufMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads whatever `stream` has into `buf`, as far as `buf` takes; `Ok(0)` means the peer closed.
pub(crate) fn poll_read_draining<B: BufMut>(
    stream: &TcpStream,
    buf: &mut B,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let room = buf.chunk_mut().len();
        let mut read = 0;
        let outcome = stream.try_io(Interest::READABLE, || {
            read = stream.try_read_buf(buf)?;
            if read > 0 && read < room {
                // Drained: tokio forgets the readiness (see the module doc).
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(read)
        });
        match outcome {
            Ok(read) => return Poll::Ready(Ok(read)),
            Err(_) if read > 0 => return Poll::Ready(Ok(read)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// Both ends of a fresh loopback connection: (client, server).
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Whether tokio still holds `stream` readable: `try_io` runs its closure only then.
    fn held_readable(stream: &TcpStream) -> bool {
        let mut ran = false;
        let _ = stream.try_io(Interest::READABLE, || {
            ran = true;
            Err::<(), _>(io::ErrorKind::Other.into())
        });
        ran
    }

    /// The read after a draining one waits for the next bytes, and gets them (and then the close)
    /// however they arrive: right after the read, or later.
    #[tokio::test]
    async fn a_drained_socket_still_wakes_for_what_comes_next() {
        let (mut client, server) = connected().await;
        let mut buf = BytesMut::with_capacity(1024);
        client.write_all(b"first").await.unwrap();
        let read = poll_fn(|cx| poll_read_draining(&server, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!((read, &buf[..]), (5, &b"first"[..]));
        // The point: tokio forgot the readiness, so the next read makes no system call.
        assert!(
            !held_readable(&server),
            "a draining read left the socket readable"
        );
        // Nothing more yet: the next read is pending, not an error.
        let pending = tokio::time::timeout(
            Duration::from_millis(50),
            poll_fn(|cx| poll_read_draining(&server, &mut buf, cx)),
        )
        .await;
        assert!(pending.is_err(), "{pending:?}");
        client.write_all(b" second").await.unwrap();
        let read = poll_fn(|cx| poll_read_draining(&server, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!((read, &buf[..]), (7, &b"first second"[..]));
        client.write_all(b" last").await.unwrap();
        client.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let read = poll_fn(|cx| poll_read_draining(&server, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!(read, 5);
        let read = poll_fn(|cx| poll_read_draining(&server, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!(
            read, 0,
            "the close is not forgotten with the bytes it came with"
        );
    }

    /// A read that fills the buffer leaves the readiness: there may be more.
    #[tokio::test]
    async fn a_full_read_reads_again() {
        let (mut client, server) = connected().await;
        client.write_all(&[7; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut total = 0;
        while total < 100 {
            let mut piece = BytesMut::with_capacity(40).limit(40);
            let read = poll_fn(|cx| poll_read_draining(&server, &mut piece, cx));
            let read = tokio::time::timeout(Duration::from_secs(2), read)
                .await
                .expect("a full read keeps the socket readable")
                .unwrap();
            total += read;
            if read == 40 {
                assert!(held_readable(&server), "a full read gave the readiness up");
            }
        }
        assert_eq!(total, 100);
    }
}
