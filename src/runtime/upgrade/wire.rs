//! Framing of the upgrade control connection: a Unix stream socket carrying one short text line
//! per message (`LISTENER http 0.0.0.0:8080`), each optionally with file descriptors attached
//! (`SCM_RIGHTS`). A frame is a 4-byte big-endian length and the line; its descriptors travel
//! with the length prefix, so they arrive with the first `recvmsg` of the frame. [`Link`] keeps a
//! frame received in part, so a receive may be dropped at any point without losing any of it.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The longest line accepted: messages are a few words.
const MAX_LINE: usize = 4096;
/// The most descriptors one frame carries.
const MAX_FDS: usize = 4;

/// One message: its words and the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    pub words: Vec<String>,
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// The word at `index`, or an error naming the malformed message.
    pub fn word(&self, index: usize) -> io::Result<&str> {
        self.words
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| malformed(&self.words))
    }
}

pub fn malformed(words: &[String]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed upgrade message: {words:?}"),
    )
}

/// One end of the control connection. It owns the frame being received (the bytes and the
/// descriptors read so far), not the future receiving it: a receive dropped half-way, as a
/// `select!` drops the branch that lost, leaves them here for the next receive, so no
/// descriptor is closed unseen and the stream stays in step.
#[derive(Debug)]
pub struct Link {
    stream: UnixStream,
    /// The frame received so far: its length prefix, then its line.
    partial: Vec<u8>,
    /// The descriptors that came with the first bytes of `partial`.
    fds: Vec<OwnedFd>,
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Link {
    pub fn new(stream: UnixStream) -> Link {
        Link {
            stream,
            partial: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Sends `line` with `fds` attached. Not cancel-safe: a send dropped half-way leaves part of
    /// a frame on the stream. So no `select!` races it: every caller awaits it to the end (in
    /// `transfer`, inside the branch that won, not as a branch), or drops the link with it (the
    /// greeting's timeout).
    pub async fn send(&self, line: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        debug_assert!(line.len() <= MAX_LINE && fds.len() <= MAX_FDS && !line.contains('\n'));
        let length = (line.len() as u32).to_be_bytes();
        let mut sent = 0;
        let frame = [&length[..], line.as_bytes()].concat();
        while sent < frame.len() {
            // Descriptors go with the first bytes only.
            let attach: &[_] = if sent == 0 { fds } else { &[] };
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            sent += self
                .stream
                .async_io(Interest::WRITABLE, || {
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    if !attach.is_empty() {
                        control.push(SendAncillaryMessage::ScmRights(attach));
                    }
                    let iov = [IoSlice::new(&frame[sent..])];
                    Ok(rustix::net::sendmsg(
                        &self.stream,
                        &iov,
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )?)
                })
                .await?;
        }
        Ok(())
    }

    /// Receives one frame; `Ok(None)` when the peer closed the connection between frames.
    /// Cancel-safe: what a dropped call had read stays in `self` for the next.
    pub async fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let wanted = self.wanted()?;
            if wanted == 0 {
                return self.take().map(Some);
            }
            let Link {
                stream,
                partial,
                fds,
            } = self;
            // The only await: its closure keeps what `recvmsg` returned in `self` before the
            // future completes, in the same poll, so no byte or descriptor lives in the future.
            let received = stream
                .async_io(Interest::READABLE, || {
                    let start = partial.len();
                    partial.resize(start + wanted, 0);
                    let mut space =
                        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                    let mut control = RecvAncillaryBuffer::new(&mut space);
                    // No further than this frame's end: the next frame's descriptors come with
                    // its first bytes, and must not be taken for this one's.
                    let mut iov = [IoSliceMut::new(&mut partial[start..])];
                    let message = rustix::net::recvmsg(
                        &*stream,
                        &mut iov,
                        &mut control,
                        RecvFlags::CMSG_CLOEXEC,
                    );
                    let bytes = message.as_ref().map_or(0, |message| message.bytes);
                    partial.truncate(start + bytes);
                    for ancillary in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(rights) = ancillary {
                            fds.extend(rights);
                        }
                    }
                    Ok(message?.bytes)
                })
                .await?;
            if received == 0 {
                return match self.partial.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// How many bytes the frame being received still lacks: of its length prefix until that is
    /// whole, then of its line.
    fn wanted(&self) -> io::Result<usize> {
        let Some(prefix) = self.partial.first_chunk::<4>() else {
            return Ok(4 - self.partial.len());
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade message too long",
            ));
        }
        Ok(4 + length - self.partial.len())
    }

    /// The frame received whole, leaving `self` empty for the next.
    fn take(&mut self) -> io::Result<Frame> {
        let fds = std::mem::take(&mut self.fds);
        let bytes = std::mem::take(&mut self.partial);
        let line = std::str::from_utf8(&bytes[4..])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "upgrade message not UTF-8"))?;
        Ok(Frame {
            words: line.split_whitespace().map(str::to_owned).collect(),
            fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[tokio::test]
    async fn frames_carry_words_and_working_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, mut b) = (Link::new(a), Link::new(b));
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send("HELLO 1 abc", &[]).await.unwrap();
        a.send("PASS one", &[right.as_fd()]).await.unwrap();
        drop(right);
        drop(a);

        let hello = b.recv().await.unwrap().unwrap();
        assert_eq!(hello.words, ["HELLO", "1", "abc"]);
        assert!(hello.fds.is_empty());
        let pass = b.recv().await.unwrap().unwrap();
        assert_eq!(pass.word(1).unwrap(), "one");
        assert_eq!(pass.fds.len(), 1);
        // The received descriptor is the same socket: bytes written to it reach `left`.
        let mut passed = std::os::unix::net::UnixStream::from(pass.fds.into_iter().next().unwrap());
        passed.write_all(b"ping").unwrap();
        drop(passed);
        let mut text = String::new();
        left.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ping");
        assert!(b.recv().await.unwrap().is_none());
    }

    /// Sends `bytes` as they are, `fds` attached: part of a frame, as a sender whose socket
    /// buffer filled up mid-frame would.
    fn send_part(link: &Link, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let sent = rustix::net::sendmsg(
            link,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, bytes.len());
    }

    /// A receive dropped after it read part of a frame (as a `select!` drops the branch that lost
    /// the race) leaves the frame and its descriptor to the next receive, wherever the frame was
    /// cut: in its length or in its line.
    #[tokio::test]
    async fn a_receive_dropped_mid_frame_loses_neither_bytes_nor_descriptors() {
        let line = "CLIENT 192.0.2.7";
        let frame = [&(line.len() as u32).to_be_bytes()[..], line.as_bytes()].concat();
        for cut in 1..frame.len() {
            let (a, b) = UnixStream::pair().unwrap();
            let (a, mut b) = (Link::new(a), Link::new(b));
            let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
            send_part(&a, &frame[..cut], &[right.as_fd()]);
            drop(right);
            b.stream.readable().await.unwrap();
            {
                let mut receive = std::pin::pin!(b.recv());
                let polled =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(receive.as_mut().poll(cx)))
                        .await;
                assert!(
                    polled.is_pending(),
                    "cut at {cut}: half a frame received whole"
                );
            }
            // The dropped receive did read the first part: nothing of it is left in the socket.
            let peeked =
                rustix::net::recv(&b, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT);
            assert_eq!(
                peeked.unwrap_err(),
                rustix::io::Errno::AGAIN,
                "cut at {cut}"
            );
            send_part(&a, &frame[cut..], &[]);
            a.send("DONE", &[]).await.unwrap();

            let within = Duration::from_secs(5);
            let client = tokio::time::timeout(within, b.recv()).await.unwrap();
            let client = client
                .unwrap_or_else(|error| panic!("cut at {cut}: {error}"))
                .unwrap();
            assert_eq!(client.words, ["CLIENT", "192.0.2.7"], "cut at {cut}");
            assert_eq!(client.fds.len(), 1, "cut at {cut}: descriptor lost");
            let mut passed =
                std::os::unix::net::UnixStream::from(client.fds.into_iter().next().unwrap());
            passed.write_all(b"ping").unwrap();
            drop(passed);
            let mut text = String::new();
            left.read_to_string(&mut text).unwrap();
            assert_eq!(text, "ping", "cut at {cut}");
            let done = tokio::time::timeout(within, b.recv()).await.unwrap();
            assert_eq!(done.unwrap().unwrap().words, ["DONE"], "cut at {cut}");
        }
        println!(
            "a frame cut at each of {} places arrived whole",
            frame.len() - 1
        );
    }
}
