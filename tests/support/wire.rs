//! Exact reading of responses on a raw keep-alive connection: one response at a time, framed the
//! way a strict client frames it, so a stray body byte (after `HEAD`, `204`, `304`) shows up as
//! garbage where the next response should start, or as bytes where there should be silence.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw connection with the bytes read but not yet consumed.
pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// One response as it came off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of header `name` (lower case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// Each read waits at most this long before the test fails.
const READ_BOUND: Duration = Duration::from_secs(10);

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        Wire {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; panics if the peer closed or nothing came within the bound.
    async fn fill(&mut self) {
        let read = tokio::time::timeout(READ_BOUND, self.stream.read_buf(&mut self.buf))
            .await
            .expect("no response bytes within the read bound")
            .unwrap();
        assert!(
            read > 0,
            "connection closed mid-response; had {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Reads exactly one response. `request_was_head` says the response has no body whatever its
    /// headers say; `204`, `304` and `1xx` never have one either.
    pub async fn read_response(&mut self, request_was_head: bool) -> RawResponse {
        let (head_len, status, headers) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut fields);
            match response.parse(&self.buf).unwrap() {
                httparse::Status::Complete(len) => {
                    let headers: Vec<(String, String)> = response
                        .headers
                        .iter()
                        .map(|field| {
                            (
                                field.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(field.value).into_owned(),
                            )
                        })
                        .collect();
                    break (len, response.code.unwrap(), headers);
                }
                httparse::Status::Partial => self.fill().await,
            }
        };
        self.buf.advance(head_len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if request_was_head || status == 204 || status == 304 || status < 200 {
            return response;
        }
        if response.header("transfer-encoding").is_some() {
            response.body = self.read_chunked().await;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().unwrap();
            while self.buf.len() < len {
                self.fill().await;
            }
            response.body = self.buf.split_to(len).to_vec();
        } else {
            response.body = self.read_to_close().await;
        }
        response
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf).unwrap() {
                    httparse::Status::Complete(parsed) => break parsed,
                    httparse::Status::Partial => self.fill().await,
                }
            };
            self.buf.advance(consumed);
            if size == 0 {
                // No trailers from Juggler: the empty line ends the body.
                while self.buf.len() < 2 {
                    self.fill().await;
                }
                assert_eq!(&self.buf[..2], b"\r\n", "unexpected trailer section");
                self.buf.advance(2);
                return body;
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.fill().await;
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }

    async fn read_to_close(&mut self) -> Vec<u8> {
        loop {
            let read = tokio::time::timeout(READ_BOUND, self.stream.read_buf(&mut self.buf))
                .await
                .expect("close-delimited body did not end within the read bound");
            if matches!(read, Ok(0) | Err(_)) {
                return self.buf.split().to_vec();
            }
        }
    }

    /// What arrives within `wait` beyond the responses already read, and whether the peer closed
    /// the connection (EOF or reset) in that time.
    pub async fn rest(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (self.buf.split().to_vec(), true),
                Ok(Ok(_)) => {}
                Err(_) => return (self.buf.split().to_vec(), false),
            }
        }
    }
}
