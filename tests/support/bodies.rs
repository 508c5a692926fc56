//! Request bodies for integrity tests: reproducible pseudo-random bytes, and a body sent in several
//! frames with no declared length (so hyper's client sends it `Transfer-Encoding: chunked`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body::{Body, Frame};
use hyper_util::rt::TokioIo;

use crate::client::Answer;

/// `len` bytes from a xorshift64 generator seeded with `seed`: the same bytes on every run, and no
/// repeating pattern that could hide a misplaced or duplicated piece.
pub fn random_body(len: usize, seed: u64) -> Bytes {
    // xorshift must not start at 0 (it would stay there).
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = BytesMut::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.freeze()
}

/// FNV-1a, to print a short fingerprint of large bodies instead of the bodies themselves.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A request body yielded as several frames of uneven sizes, with no size hint: hyper's client
/// frames it `Transfer-Encoding: chunked`, one chunk per frame.
pub struct Frames {
    frames: VecDeque<Bytes>,
}

impl Frames {
    /// Splits `body` into at most `count` frames, the first ones smaller than the last ones.
    pub fn split(body: &Bytes, count: usize) -> Frames {
        let mut frames = VecDeque::new();
        let mut rest = body.clone();
        for index in 1..count {
            // Frame i takes roughly i / (count * (count + 1) / 2) of the body: uneven on purpose.
            let share = body.len() * index / (count * (count + 1) / 2);
            if share == 0 || share >= rest.len() {
                continue;
            }
            frames.push_back(rest.split_to(share));
        }
        if !rest.is_empty() {
            frames.push_back(rest);
        }
        Frames { frames }
    }

    pub fn count(&self) -> usize {
        self.frames.len()
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(|data| Ok(Frame::data(data))))
    }
}

/// Sends `request` with a [`Frames`] body on a fresh connection and reads the response whole.
pub async fn send_frames(addr: SocketAddr, request: Request<Frames>) -> hyper::Result<Answer> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let answer = Answer::read(sender.send_request(request).await?).await;
    driver.abort();
    answer
}
