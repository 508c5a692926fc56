//! One pooled HTTP/1.1 connection to a backend, and the exchange of one request on it.
//!
//! Juggler speaks to backends itself instead of through a general HTTP client: the client's task
//! writes the request and reads the response straight off the socket (no task hop per request), it
//! knows exactly whether any response byte has arrived (which decides whether a retry is safe), and
//! response bodies come out as zero-copy slices of the read buffer.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderMap;
use http::StatusCode;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::chunked::{ChunkedDecoder, Decoded};
use super::head::{self, ForwardedFields, KnownNames, Parsed, MAX_RESPONSE_HEADERS};
use super::spool::RequestBody;
use crate::socket_read::poll_read_draining;
use crate::threads;

/// The largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How much the read buffer grows by per read.
const READ_CHUNK: usize = 8 * 1024;
/// The most one `sendfile` call is asked to send, so one large body does not monopolise a worker.
const SENDFILE_MAX: usize = 1024 * 1024;

/// How a request write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Complete,
    /// The backend answered (or closed) before the whole request was written.
    AnsweredEarly,
}

/// How much of a request (and of the one written behind it) has been written.
#[derive(Debug, Default)]
struct WriteProgress {
    head: usize,
    memory: usize,
    file: u64,
    behind: usize,
}

/// An open keep-alive connection to one backend.
#[derive(Debug)]
pub struct BackendConn {
    stream: TcpStream,
    read_buf: BytesMut,
    /// Set when the backend announced `Keep-Alive: timeout=N`: the connection is retired before the
    /// backend would close it under us.
    retire_at: Option<Instant>,
    /// The field names of the last response, in order (see [`head::KnownNames`]).
    known_names: KnownNames,
    /// The serving thread whose reactor the socket is registered with (see `crate::threads`).
    home: usize,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// No length and not chunked: the body runs until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The end-to-end fields, when they were not asked for as they came (see `read_head`).
    pub headers: HeaderMap,
    /// The end-to-end fields as the backend sent them, when asked for (then `headers` is empty).
    pub forwarded: Option<ForwardedFields>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// How a response head's end-to-end fields are handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldsWanted {
    /// As a header map (an HTTP/2 client; Juggler's own checks).
    HeaderMap,
    /// As the backend sent them ([`ResponseHead::forwarded`]): an HTTP/1.1 client.
    AsSent,
}

impl ResponseHead {
    /// Whether the response has a field named `name`, however its fields are held.
    pub fn has_field(&self, name: &http::HeaderName) -> bool {
        match &self.forwarded {
            Some(fields) => fields.contains(name.as_str()),
            None => self.headers.contains_key(name),
        }
    }
}

/// Why reading a response head failed, split by whether the backend had started answering.
#[derive(Debug)]
pub enum HeadError {
    /// Not a single response byte arrived: EOF or reset before the status line.
    NothingReceived(io::Error),
    /// Something arrived but it was not a valid response head.
    Invalid(&'static str),
    /// The connection failed part-way through the head.
    Io(io::Error),
}

/// Why reading a response body failed.
#[derive(Debug)]
pub enum BodyError {
    Truncated,
    Invalid(&'static str),
    Io(io::Error),
}

impl BackendConn {
    /// Opens a connection with `TCP_NODELAY` (requests and responses are small, complete writes that
    /// Nagle's algorithm would only delay).
    pub async fn connect(address: &str, timeout: Duration) -> io::Result<BackendConn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(BackendConn {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            retire_at: None,
            known_names: KnownNames::default(),
            home: threads::current(),
        })
    }

    /// The idle connection's socket and how long it may still be used, for another Juggler
    /// process to adopt ([`BackendConn::adopt`]). Only a connection that finished its last
    /// response cleanly is handed over, so no buffered byte is lost.
    pub(crate) fn into_socket(self) -> io::Result<(std::os::fd::OwnedFd, Option<Duration>)> {
        debug_assert!(self.read_buf.is_empty());
        let retire_in = self
            .retire_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        Ok((self.stream.into_std()?.into(), retire_in))
    }

    /// A connection another Juggler process opened and handed over.
    pub(crate) fn adopt(
        socket: std::os::fd::OwnedFd,
        retire_in: Option<Duration>,
    ) -> io::Result<BackendConn> {
        let stream = std::net::TcpStream::from(socket);
        stream.set_nonblocking(true)?;
        Ok(BackendConn {
            stream: TcpStream::from_std(stream)?,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            retire_at: retire_in.map(|rest| Instant::now() + rest),
            known_names: KnownNames::default(),
            home: threads::current(),
        })
    }

    /// Whether the socket is registered with the reactor of the thread the caller runs on.
    pub(crate) fn is_at_home(&self) -> bool {
        self.home == threads::current()
    }

    /// The idle connection registered with the reactor of the thread the caller runs on, so that
    /// its readiness wakes the caller's task directly rather than through another thread's epoll
    /// (two `epoll_ctl` calls, only when it moves).
    pub(crate) fn settle(self) -> io::Result<BackendConn> {
        if self.is_at_home() {
            return Ok(self);
        }
        let BackendConn {
            stream,
            read_buf,
            retire_at,
            known_names,
            home: _,
        } = self;
        Ok(BackendConn {
            stream: TcpStream::from_std(stream.into_std()?)?,
            read_buf,
            retire_at,
            known_names,
            home: threads::current(),
        })
    }

    /// Whether this idle connection can carry another request: not past its retirement, and not
    /// closed by the backend while it sat in the pool. The check costs no system call in the common
    /// case: tokio only reads when the socket has been reported readable, which an idle connection
    /// is only when the backend closed it (or sent stray bytes, which also disqualifies it).
    pub fn is_usable(&mut self) -> bool {
        if self.retire_at.is_some_and(|at| Instant::now() >= at) {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes one request: the head (with the body appended when small), then the body's
    /// in-memory part, then its spilled part straight from the file (`sendfile`: the kernel copies
    /// page cache to socket, no buffer here), then `behind`: a body-less request pipelined behind
    /// this one (see `pipeline`), in the same system call when the body is in memory.
    ///
    /// While writing it watches for the backend answering early (a `413` or `405` before it read
    /// the body, often followed by a close): once a final response head is in, writing stops and
    /// [`Sent::AnsweredEarly`] says the connection cannot carry another request, since the backend
    /// still expects the rest of a body it will not get.
    pub async fn write_request(
        &mut self,
        head: &[u8],
        body: &RequestBody,
        behind: &[u8],
    ) -> io::Result<Sent> {
        let mut progress = WriteProgress::default();
        poll_fn(|cx| loop {
            match self.poll_write_progress(cx, &mut progress, head, body, behind) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Sent::Complete)),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {}
            }
            match self.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                // The backend closed or reset: the head read that follows tells which.
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ok(Sent::AnsweredEarly)),
                Poll::Ready(Ok(_)) => {
                    if self.final_head_buffered() {
                        return Poll::Ready(Ok(Sent::AnsweredEarly));
                    }
                }
            }
        })
        .await
    }

    /// Writes as much of the request as the socket takes; `Ready(Ok)` once all of it is out.
    fn poll_write_progress(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut WriteProgress,
        head: &[u8],
        body: &RequestBody,
        behind: &[u8],
    ) -> Poll<io::Result<()>> {
        let memory = body.in_memory();
        let (file, file_len) = match body.spilled() {
            Some((file, len)) => (Some(file), len),
            None => (None, 0),
        };
        loop {
            let result = if progress.head < head.len() {
                // The head, the body's in-memory part and (unless a file part comes between)
                // the request behind in one system call, without copying them together first.
                let behind_now = match file {
                    None => &behind[progress.behind..],
                    Some(_) => &[],
                };
                let parts = [
                    IoSlice::new(&head[progress.head..]),
                    IoSlice::new(&memory[progress.memory..]),
                    IoSlice::new(behind_now),
                ];
                let parts = if behind_now.is_empty() {
                    &parts[..2]
                } else {
                    &parts[..]
                };
                self.try_write_ready(cx, parts).map_ok(|n| {
                    let into_head = n.min(head.len() - progress.head);
                    progress.head += into_head;
                    let into_memory = (n - into_head).min(memory.len() - progress.memory);
                    progress.memory += into_memory;
                    progress.behind += n - into_head - into_memory;
                })
            } else if progress.memory < memory.len() {
                self.try_write_ready(cx, &[IoSlice::new(&memory[progress.memory..])])
                    .map_ok(|n| progress.memory += n)
            } else if let (Some(file), true) = (file, progress.file < file_len) {
                let count = usize::try_from(file_len - progress.file)
                    .unwrap_or(usize::MAX)
                    .min(SENDFILE_MAX);
                ready!(self.stream.poll_write_ready(cx))?;
                let stream = &self.stream;
                let mut offset = progress.file;
                match stream.try_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(stream, file, Some(&mut offset), count).map_err(Into::into)
                }) {
                    Ok(0) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "spill file shorter than the body",
                        )))
                    }
                    Ok(_) => {
                        progress.file = offset;
                        Poll::Ready(Ok(()))
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => Poll::Ready(Err(error)),
                }
            } else if progress.behind < behind.len() {
                self.try_write_ready(cx, &[IoSlice::new(&behind[progress.behind..])])
                    .map_ok(|n| progress.behind += n)
            } else {
                return Poll::Ready(Ok(()));
            };
            match result {
                Poll::Ready(Ok(())) => continue,
                other => return other,
            }
        }
    }

    /// One non-blocking (vectored) write of `parts` once the socket is writable.
    fn try_write_ready(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(parts) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                result => return Poll::Ready(result),
            }
        }
    }

    /// Whether the read buffer holds a complete final response head (interim `1xx` responses in
    /// front of it are dropped), or something that will never become one (then the head read
    /// reports it).
    fn final_head_buffered(&mut self) -> bool {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(&self.read_buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = response.code.unwrap_or(0);
                    if (100..200).contains(&code) && code != 101 {
                        let _ = self.read_buf.split_to(len);
                        continue;
                    }
                    return true;
                }
                Ok(httparse::Status::Partial) => return self.read_buf.len() >= MAX_RESPONSE_HEAD,
                Err(_) => return true,
            }
        }
    }

    /// Reads the final response head, skipping `1xx` interim responses; its fields as `fields`.
    pub async fn read_head(
        &mut self,
        request_was_head: bool,
        fields: FieldsWanted,
    ) -> Result<ResponseHead, HeadError> {
        let mut received_any = false;
        loop {
            // A match, not `?` on the `Option`: `?` moved the head through two more temporaries
            // (two more copies of it per response).
            match self.parse_head(request_was_head, fields) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(error) => return Err(error),
            }
            if self.read_buf.len() >= MAX_RESPONSE_HEAD {
                return Err(HeadError::Invalid("response head too large"));
            }
            let read = poll_fn(|cx| self.poll_fill(cx)).await;
            match read {
                Ok(0) if !received_any && self.read_buf.is_empty() => {
                    return Err(HeadError::NothingReceived(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(0) => {
                    return Err(HeadError::Invalid(
                        "connection closed inside the response head",
                    ))
                }
                Ok(_) => received_any = true,
                Err(error) if !received_any && self.read_buf.is_empty() => {
                    return Err(HeadError::NothingReceived(error))
                }
                Err(error) => return Err(HeadError::Io(error)),
            }
        }
    }

    /// Parses a complete head from the front of the read buffer, if one is there.
    fn parse_head(
        &mut self,
        request_was_head: bool,
        fields: FieldsWanted,
    ) -> Result<Option<ResponseHead>, HeadError> {
        loop {
            let mut head = match head::parse(&self.read_buf, request_was_head)? {
                Parsed::Partial => return Ok(None),
                Parsed::Interim(len) => {
                    let _ = self.read_buf.split_to(len);
                    continue;
                }
                Parsed::Final(head) => head,
            };
            if let Some(seconds) = head.keep_alive_timeout {
                let timeout = Duration::from_secs(seconds);
                let margin = (timeout / 2).min(Duration::from_secs(1));
                self.retire_at = Some(Instant::now() + timeout - margin);
            }
            let head_bytes = self.read_buf.split_to(head.len).freeze();
            let (headers, forwarded) = match fields {
                FieldsWanted::HeaderMap => {
                    (head.headers(&head_bytes, &mut self.known_names)?, None)
                }
                FieldsWanted::AsSent => (HeaderMap::new(), Some(head.forwarded(head_bytes))),
            };
            return Ok(Some(ResponseHead {
                status: head.status,
                headers,
                forwarded,
                framing: head.framing,
                keep_alive: head.keep_alive,
            }));
        }
    }

    /// Reads a body of known length `len` whole, as one zero-copy buffer.
    ///
    /// A body larger than a read chunk gets a buffer of its own, freed with the response. Grown
    /// inside the connection's read buffer, its allocation would stay with the pooled connection
    /// for good (a `BytesMut` takes the whole allocation back once the body's bytes are freed),
    /// and every connection would hold its largest response at rest.
    pub async fn read_exact_body(&mut self, len: usize) -> Result<Bytes, BodyError> {
        if len <= READ_CHUNK || self.read_buf.len() >= len {
            while self.read_buf.len() < len {
                self.read_buf.reserve(len - self.read_buf.len());
                body_progress(poll_fn(|cx| self.poll_fill(cx)).await)?;
            }
            return Ok(self.read_buf.split_to(len).freeze());
        }
        let mut body = BytesMut::with_capacity(len);
        body.extend_from_slice(&self.read_buf);
        self.read_buf.clear();
        while body.len() < len {
            // Never past the body's end: what follows belongs to the connection, not the body.
            let room = len - body.len();
            let mut rest = (&mut body).limit(room);
            body_progress(poll_fn(|cx| poll_read_draining(&self.stream, &mut rest, cx)).await)?;
        }
        Ok(body.freeze())
    }

    /// The next piece of a body, `None` at its end. Used for chunked and close-delimited bodies
    /// and for bodies streamed to the client.
    pub(crate) fn poll_body_chunk(
        &mut self,
        state: &mut BodyState,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, BodyError>> {
        loop {
            match state {
                BodyState::Done => return Poll::Ready(Ok(None)),
                BodyState::Length(remaining) => {
                    if *remaining == 0 {
                        *state = BodyState::Done;
                        continue;
                    }
                    if !self.read_buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(self.read_buf.len());
                        *remaining -= take as u64;
                        return Poll::Ready(Ok(Some(self.read_buf.split_to(take).freeze())));
                    }
                    if ready!(self.poll_fill(cx)).map_err(BodyError::Io)? == 0 {
                        return Poll::Ready(Err(BodyError::Truncated));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut self.read_buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Ok(Some(data))),
                    Ok(Decoded::Done) => *state = BodyState::Done,
                    Ok(Decoded::NeedMore) => {
                        if ready!(self.poll_fill(cx)).map_err(BodyError::Io)? == 0 {
                            return Poll::Ready(Err(BodyError::Truncated));
                        }
                    }
                    Err(error) => return Poll::Ready(Err(BodyError::Invalid(error.0))),
                },
                BodyState::UntilClose => {
                    if !self.read_buf.is_empty() {
                        return Poll::Ready(Ok(Some(self.read_buf.split().freeze())));
                    }
                    if ready!(self.poll_fill(cx)).map_err(BodyError::Io)? == 0 {
                        *state = BodyState::Done;
                    }
                }
            }
        }
    }

    /// Whether the backend sent nothing beyond the response just read (anything more would be a
    /// desynchronised stream, and the connection must not be reused).
    pub fn finished_cleanly(&self) -> bool {
        self.read_buf.is_empty()
    }

    /// Reads whatever the socket has into the read buffer; `Ok(0)` means the backend closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(READ_CHUNK);
        }
        poll_read_draining(&self.stream, &mut self.read_buf, cx)
    }
}

/// A read in the middle of a body: the backend closing before its end truncates it.
fn body_progress(read: io::Result<usize>) -> Result<(), BodyError> {
    match read {
        Ok(0) => Err(BodyError::Truncated),
        Ok(_) => Ok(()),
        Err(error) => Err(BodyError::Io(error)),
    }
}

/// Where a body being read stands.
#[derive(Debug)]
pub(crate) enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyState {
    pub fn new(framing: Framing) -> BodyState {
        match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(len) => BodyState::Length(len),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large body is read into a buffer of its own: once it is freed, the pooled connection
    /// holds a read chunk again, not the largest response it ever carried.
    #[tokio::test]
    async fn a_large_body_does_not_stay_in_the_connection_buffer() {
        use tokio::io::AsyncWriteExt;
        const LARGE: usize = 900_000;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let backend = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut answers =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {LARGE}\r\n\r\n").into_bytes();
            answers.extend(std::iter::repeat_n(b'x', LARGE));
            answers.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            socket.write_all(&answers).await.unwrap();
            socket
        });
        let mut conn = BackendConn::connect(&address, Duration::from_secs(5))
            .await
            .unwrap();
        for expected in [vec![b'x'; LARGE], b"ok".to_vec()] {
            let head = conn
                .read_head(false, FieldsWanted::HeaderMap)
                .await
                .unwrap();
            assert_eq!(head.framing, Framing::Length(expected.len() as u64));
            let body = conn.read_exact_body(expected.len()).await.unwrap();
            assert!(body == expected, "a body of {} B changed", expected.len());
        }
        let _socket = backend.await.unwrap();
        assert!(
            conn.read_buf.capacity() <= 4 * READ_CHUNK,
            "the connection kept a {} B read buffer",
            conn.read_buf.capacity()
        );
    }

    /// A connection opened on one serving thread and checked out on another is moved to the
    /// second one's reactor: it still works after the first thread's runtime is gone, which a
    /// connection left registered there would not.
    #[tokio::test]
    async fn a_settled_connection_works_on_its_new_thread_after_the_old_one_is_gone() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let backend = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let read = socket.read(&mut request).await.unwrap();
            assert!(request[..read].starts_with(b"GET /moved HTTP/1.1\r\n"));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            socket
        });
        let opened_elsewhere = std::thread::spawn(move || {
            crate::threads::set_current(usize::MAX);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // The runtime, and its reactor, are dropped when this thread ends.
            runtime.block_on(BackendConn::connect(&address, Duration::from_secs(5)))
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(!opened_elsewhere.is_at_home());
        let mut conn = opened_elsewhere.settle().unwrap();
        assert!(conn.is_at_home());
        let request = b"GET /moved HTTP/1.1\r\nhost: backend\r\n\r\n";
        let sent = conn
            .write_request(request, &RequestBody::default(), &[])
            .await
            .unwrap();
        assert_eq!(sent, Sent::Complete);
        let head = conn
            .read_head(false, FieldsWanted::HeaderMap)
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(&conn.read_exact_body(2).await.unwrap()[..], b"ok");
        drop(backend.await.unwrap());
    }
}
