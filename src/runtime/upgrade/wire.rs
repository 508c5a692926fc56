//! Framing of the upgrade control connection: a Unix stream socket carrying one short text line
//! per message (`LISTENER http 0.0.0.0:8080`), each optionally with file descriptors attached
//! (`SCM_RIGHTS`). A frame is a 4-byte big-endian length and the line; its descriptors travel
//! with the length prefix, so they arrive with the first `recvmsg` of the frame.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt, Interest};
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

/// Sends `line` with `fds` attached.
pub async fn send(stream: &UnixStream, line: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    debug_assert!(line.len() <= MAX_LINE && fds.len() <= MAX_FDS && !line.contains('\n'));
    let length = (line.len() as u32).to_be_bytes();
    let mut sent = 0;
    let frame = [&length[..], line.as_bytes()].concat();
    while sent < frame.len() {
        // Descriptors go with the first bytes only.
        let attach: &[_] = if sent == 0 { fds } else { &[] };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        sent += stream
            .async_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !attach.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(attach));
                }
                let iov = [IoSlice::new(&frame[sent..])];
                Ok(rustix::net::sendmsg(
                    stream,
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
pub async fn recv(stream: &mut UnixStream) -> io::Result<Option<Frame>> {
    let mut length = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < length.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let received = stream
            .async_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(&mut length[got..])];
                let message = rustix::net::recvmsg(
                    &*stream,
                    &mut iov,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for ancillary in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = ancillary {
                        fds.extend(rights);
                    }
                }
                Ok(message.bytes)
            })
            .await?;
        if received == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += received;
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upgrade message too long",
        ));
    }
    let mut line = vec![0u8; length];
    stream.read_exact(&mut line).await?;
    let line = String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "upgrade message not UTF-8"))?;
    Ok(Some(Frame {
        words: line.split_whitespace().map(str::to_owned).collect(),
        fds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn frames_carry_words_and_working_descriptors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        send(&a, "HELLO 1 abc", &[]).await.unwrap();
        send(&a, "PASS one", &[right.as_fd()]).await.unwrap();
        drop(right);
        drop(a);

        let hello = recv(&mut b).await.unwrap().unwrap();
        assert_eq!(hello.words, ["HELLO", "1", "abc"]);
        assert!(hello.fds.is_empty());
        let pass = recv(&mut b).await.unwrap().unwrap();
        assert_eq!(pass.word(1).unwrap(), "one");
        assert_eq!(pass.fds.len(), 1);
        // The received descriptor is the same socket: bytes written to it reach `left`.
        let mut passed = std::os::unix::net::UnixStream::from(pass.fds.into_iter().next().unwrap());
        passed.write_all(b"ping").unwrap();
        drop(passed);
        let mut text = String::new();
        left.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ping");
        assert!(recv(&mut b).await.unwrap().is_none());
    }
}
