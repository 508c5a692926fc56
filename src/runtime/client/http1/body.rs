//! A request body as the proxy reads it: the connection decodes it from its socket
//! (`Content-Length` or chunked) and hands it over a piece at a time, one piece outstanding, so an
//! upload the proxy is not reading yet waits in the socket (TCP backpressure), not in memory.
//!
//! Both ends live in the connection's task: the connection polls the request's future, then
//! feeds the body, then polls the future again when it handed something over. So neither end
//! needs a waker; the pipe between them is a lock nobody else takes.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::head::BodyFraming;
use crate::backend::chunked::{ChunkedDecoder, ChunkedError, Decoded};

/// Why a request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
    #[error("client closed the connection inside the request body")]
    Incomplete,
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

/// What the body's two ends share.
#[derive(Debug, Default)]
struct Pipe {
    /// Decoded bytes the reader has not taken yet.
    piece: Option<Bytes>,
    end: End,
    /// The reader asked for the body at least once (when to send `100 Continue`).
    wanted: bool,
}

/// How far the body has come.
#[derive(Debug, Default)]
enum End {
    #[default]
    Open,
    Whole,
    /// Broken; the error until the reader has taken it.
    Failed(Option<BodyError>),
}

/// The reading end, attached to the request the proxy handles.
#[derive(Debug)]
pub(crate) struct ClientBody {
    /// `None`: a request without a body.
    pipe: Option<Arc<Mutex<Pipe>>>,
    /// `Content-Length`, when declared.
    declared: Option<u64>,
}

/// The connection's end: decodes body bytes out of its read buffer into the pipe.
#[derive(Debug)]
pub(crate) struct BodyFeed {
    pipe: Arc<Mutex<Pipe>>,
    decoder: Decoder,
    /// `100 Continue` still to be sent once the reader asks for the body.
    owes_continue: bool,
}

#[derive(Debug)]
enum Decoder {
    /// Bytes of the body still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

/// What one step of feeding came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// A piece (or the end) was handed over: the reader may go on.
    Progress,
    /// The reader has not taken the last piece yet.
    Full,
    /// The read buffer holds nothing more of the body: read from the socket.
    NeedMore,
    /// The whole body was handed over.
    Done,
}

/// The two ends of a request's body; no feed for a request without one.
pub(crate) fn body(framing: BodyFraming, expects_continue: bool) -> (ClientBody, Option<BodyFeed>) {
    let (decoder, declared) = match framing {
        BodyFraming::Empty => {
            let empty = ClientBody {
                pipe: None,
                declared: None,
            };
            return (empty, None);
        }
        BodyFraming::Length(len) => (Decoder::Length(len), Some(len)),
        BodyFraming::Chunked => (Decoder::Chunked(ChunkedDecoder::default()), None),
    };
    let pipe = Arc::new(Mutex::new(Pipe::default()));
    let feed = BodyFeed {
        pipe: Arc::clone(&pipe),
        decoder,
        owes_continue: expects_continue,
    };
    let body = ClientBody {
        pipe: Some(pipe),
        declared,
    };
    (body, Some(feed))
}

fn lock(pipe: &Mutex<Pipe>) -> MutexGuard<'_, Pipe> {
    pipe.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BodyFeed {
    /// Hands the next piece of the body in `buf` over, if the reader took the last one.
    pub(crate) fn feed(&mut self, buf: &mut BytesMut) -> Fed {
        let mut pipe = lock(&self.pipe);
        if pipe.piece.is_some() {
            return Fed::Full;
        }
        match self.decoder.decode(buf) {
            Ok(Decoded::Data(piece)) => {
                pipe.piece = Some(piece);
                Fed::Progress
            }
            Ok(Decoded::NeedMore) => Fed::NeedMore,
            Ok(Decoded::Done) if !matches!(pipe.end, End::Open) => Fed::Done,
            Ok(Decoded::Done) => {
                pipe.end = End::Whole;
                Fed::Progress
            }
            Err(error) => {
                self.decoder = Decoder::Done;
                pipe.end = End::Failed(Some(error.into()));
                Fed::Progress
            }
        }
    }

    /// How many more bytes of the body the socket should bring, as far as known (a chunked body
    /// says nothing: 0).
    pub(crate) fn expected(&self) -> u64 {
        match self.decoder {
            Decoder::Length(left) => left,
            Decoder::Chunked(_) | Decoder::Done => 0,
        }
    }

    /// The socket failed or closed before the body's end.
    pub(crate) fn fail(&mut self, error: BodyError) {
        self.decoder = Decoder::Done;
        lock(&self.pipe).end = End::Failed(Some(error));
    }

    /// Whether `100 Continue` is due now (and from now on no longer owed).
    pub(crate) fn take_continue(&mut self) -> bool {
        if self.owes_continue && lock(&self.pipe).wanted {
            self.owes_continue = false;
            return true;
        }
        false
    }

    /// Whether the request's body was read to its end by the connection (so the next request
    /// starts right after it).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.decoder, Decoder::Done) && matches!(lock(&self.pipe).end, End::Whole)
    }

    /// Consumes the rest of a body the proxy did not read (it answered first), if all of it is
    /// already in `buf`; `false` when it is not (the connection then cannot find the next request
    /// and must close).
    pub(crate) fn skip_buffered(&mut self, buf: &mut BytesMut) -> bool {
        if self.owes_continue {
            // The client waits for `100 Continue` before sending a body never asked for.
            return false;
        }
        loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(_)) => {}
                Ok(Decoded::Done) => return true,
                Ok(Decoded::NeedMore) | Err(_) => return false,
            }
        }
    }
}

impl Decoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        match self {
            Decoder::Done => Ok(Decoded::Done),
            Decoder::Length(0) => {
                *self = Decoder::Done;
                Ok(Decoded::Done)
            }
            Decoder::Length(_) if buf.is_empty() => Ok(Decoded::NeedMore),
            Decoder::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(decoder) => {
                let decoded = decoder.decode(buf)?;
                if decoded == Decoded::Done {
                    *self = Decoder::Done;
                }
                Ok(decoded)
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(pipe) = &self.pipe else {
            return Poll::Ready(None);
        };
        let mut pipe = lock(pipe);
        if let Some(piece) = pipe.piece.take() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match &mut pipe.end {
            End::Whole | End::Failed(None) => Poll::Ready(None),
            End::Failed(error) => Poll::Ready(error.take().map(Err)),
            // The connection polls the request again after feeding (module doc): no waker.
            End::Open => {
                pipe.wanted = true;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pipe.as_ref().is_none_or(|pipe| {
            let pipe = lock(pipe);
            pipe.piece.is_none() && matches!(pipe.end, End::Whole)
        })
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.pipe, self.declared) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(len)) => SizeHint::with_exact(len),
            (Some(_), None) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn poll_frame(body: &mut ClientBody) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let waker = std::task::Waker::noop();
        Pin::new(body).poll_frame(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_length_body_is_handed_over_piece_by_piece_one_at_a_time() {
        let (mut body, feed) = body(BodyFraming::Length(5), false);
        let mut feed = feed.unwrap();
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert!(poll_frame(&mut body).is_pending());
        assert_eq!(feed.feed(&mut buf), Fed::Progress);
        buf.extend_from_slice(b"deGET");
        assert_eq!(feed.feed(&mut buf), Fed::Full, "one piece outstanding");
        let Poll::Ready(Some(Ok(frame))) = poll_frame(&mut body) else {
            panic!()
        };
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(feed.feed(&mut buf), Fed::Progress);
        assert_eq!(&buf[..], b"GET", "the next request stays");
        let Poll::Ready(Some(Ok(frame))) = poll_frame(&mut body) else {
            panic!()
        };
        assert_eq!(frame.into_data().unwrap(), "de");
        assert_eq!(feed.feed(&mut buf), Fed::Progress);
        assert!(body.is_end_stream());
        assert!(matches!(poll_frame(&mut body), Poll::Ready(None)));
        assert_eq!(feed.feed(&mut buf), Fed::Done);
        assert!(feed.is_done());
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_and_a_broken_one_fails_the_reader() {
        let (body, feed) = body(BodyFraming::Chunked, false);
        let mut feed = feed.unwrap();
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        let mut collected = Vec::new();
        let mut body = body;
        loop {
            match feed.feed(&mut buf) {
                Fed::Done => break,
                Fed::NeedMore => panic!("all of it is buffered"),
                _ => {}
            }
            while let Poll::Ready(Some(Ok(frame))) = poll_frame(&mut body) {
                collected.extend_from_slice(&frame.into_data().unwrap());
            }
        }
        assert_eq!(collected, b"abc");

        let (body, feed) = super::body(BodyFraming::Chunked, false);
        let mut feed = feed.unwrap();
        assert_eq!(
            feed.feed(&mut BytesMut::from(&b"zz\r\n"[..])),
            Fed::Progress
        );
        assert!(body.collect().await.is_err());
    }

    #[test]
    fn continue_is_owed_only_once_the_body_is_asked_for() {
        let (mut body, feed) = body(BodyFraming::Length(1), true);
        let mut feed = feed.unwrap();
        assert!(!feed.take_continue());
        assert!(
            !feed.skip_buffered(&mut BytesMut::new()),
            "a body never asked for never comes"
        );
        let _ = poll_frame(&mut body);
        assert!(feed.take_continue());
        assert!(!feed.take_continue());
    }

    #[test]
    fn an_unread_body_is_skipped_only_when_all_of_it_is_buffered() {
        let (_body, feed) = body(BodyFraming::Length(4), false);
        let mut feed = feed.unwrap();
        assert!(!feed.skip_buffered(&mut BytesMut::from(&b"ab"[..])));
        let (_body, feed) = body(BodyFraming::Length(4), false);
        let mut buf = BytesMut::from(&b"abcdGET"[..]);
        assert!(feed.unwrap().skip_buffered(&mut buf));
        assert_eq!(&buf[..], b"GET");
    }
}
