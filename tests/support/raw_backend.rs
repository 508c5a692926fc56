//! A backend written on raw TCP, for what a hyper backend cannot show or will not send: the exact
//! bytes of each request head Juggler sent (header order and case included), responses carrying
//! hop-by-hop headers, chunked responses with extensions and trailers, and close-delimited ones.

use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{bind_local, Backend};

/// The response to `/hop-by-hop`: every kind of hop-by-hop header next to end-to-end ones
/// (`x-kept` twice, `set-cookie` twice) that must reach the client in order.
pub const HOP_BY_HOP_RESPONSE: &str = "HTTP/1.1 200 OK\r\n\
    Connection: x-foo, keep-alive\r\n\
    X-Foo: connection-specific\r\n\
    Keep-Alive: timeout=30\r\n\
    Proxy-Connection: keep-alive\r\n\
    Upgrade: h2c\r\n\
    Trailer: x-checksum\r\n\
    X-Kept: 1\r\n\
    Set-Cookie: a=1\r\n\
    X-Kept: 2\r\n\
    Set-Cookie: b=2\r\n\
    Content-Type: text/plain\r\n\
    Content-Length: 2\r\n\
    \r\n\
    ok";

/// Headers in [`HOP_BY_HOP_RESPONSE`] that must not reach the client.
pub const HOP_BY_HOP_RESPONSE_HEADERS: [&str; 6] = [
    "connection",
    "x-foo",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "trailer",
];

/// The `Content-Length` of `/big-length`: several times the response buffer.
pub const BIG_LENGTH: usize = 5_000_000;

/// What the raw backend has seen (connections: [`Backend::accepted`] and [`Backend::open`]).
#[derive(Debug, Default)]
pub struct RawStats {
    /// Every request head received, in order, byte for byte (as text).
    pub heads: Mutex<Vec<String>>,
}

/// A raw HTTP/1.1 backend on 127.0.0.1:0. Paths:
/// - `/hop-by-hop`: answers [`HOP_BY_HOP_RESPONSE`];
/// - `/chunked-echo`: answers the request body `Transfer-Encoding: chunked` in several chunks, the
///   first with a chunk extension, and a trailer section;
/// - `/until-close`: answers the request body with no length and closes the connection;
/// - `/early-hints`: sends `103 Early Hints` and `100 Continue` before a `200` with body `final`;
/// - `/big-length`: answers [`BIG_LENGTH`] zero bytes (only the head to `HEAD`);
/// - anything else: answers the request head exactly as received, as `text/plain` (only the
///   response head to `HEAD`).
pub type RawBackend = Backend<RawStats>;

impl Backend<RawStats> {
    pub async fn start() -> RawBackend {
        Backend::serve(
            bind_local().await,
            RawStats::default(),
            |stream, stats| async move { serve(stream, &stats.heads).await },
        )
    }

    /// The most recent request head received.
    pub fn last_head(&self) -> Option<String> {
        self.stats.heads.lock().unwrap().last().cloned()
    }
}

/// One request read off the wire.
struct RawRequest {
    head: String,
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Serves requests on one connection until the peer closes it or sends something unexpected.
async fn serve(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        heads.lock().unwrap().push(request.head.clone());
        let keep_open = match request.path.as_str() {
            "/hop-by-hop" => write(&mut stream, HOP_BY_HOP_RESPONSE.as_bytes()).await,
            "/chunked-echo" => write_chunked(&mut stream, &request.body).await,
            "/early-hints" => {
                let interim = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                               HTTP/1.1 100 Continue\r\n\r\n";
                let last = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal";
                write(&mut stream, interim.as_bytes()).await
                    && write(&mut stream, last.as_bytes()).await
            }
            "/big-length" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_LENGTH}\r\n\r\n");
                write(&mut stream, head.as_bytes()).await
                    && (request.method == "HEAD" || write(&mut stream, &vec![0; BIG_LENGTH]).await)
            }
            "/until-close" => {
                let head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n";
                let _ = write(&mut stream, head.as_bytes()).await;
                let _ = write(&mut stream, &request.body).await;
                let _ = stream.shutdown().await;
                false
            }
            _ => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    request.head.len()
                );
                write(&mut stream, head.as_bytes()).await
                    && (request.method == "HEAD"
                        || write(&mut stream, request.head.as_bytes()).await)
            }
        };
        if !keep_open {
            return;
        }
    }
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok()
}

/// `body` as a chunked response: up to four chunks, an extension on the first, a trailer at the end.
async fn write_chunked(stream: &mut TcpStream, body: &[u8]) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                Transfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n";
    if !write(stream, head.as_bytes()).await {
        return false;
    }
    let chunk_len = body.len().div_ceil(4).max(1);
    for (index, chunk) in body.chunks(chunk_len).enumerate() {
        let size_line = if index == 0 {
            format!("{:x};ext=first\r\n", chunk.len())
        } else {
            format!("{:X}\r\n", chunk.len())
        };
        if !(write(stream, size_line.as_bytes()).await
            && write(stream, chunk).await
            && write(stream, b"\r\n").await)
        {
            return false;
        }
    }
    write(stream, b"0\r\nx-checksum: whatever\r\n\r\n").await
}

/// Reads one request with a `Content-Length` body (Juggler frames every request that way).
/// `None` when the peer closed or sent something this backend does not understand.
async fn read_request(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<RawRequest> {
    let (head_len, method, path, body_len) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut body_len = 0;
                for field in request.headers.iter() {
                    if field.name.eq_ignore_ascii_case("transfer-encoding") {
                        return None;
                    }
                    if field.name.eq_ignore_ascii_case("content-length") {
                        body_len = std::str::from_utf8(field.value).ok()?.parse().ok()?;
                    }
                }
                break (
                    head_len,
                    request.method?.to_owned(),
                    request.path?.to_owned(),
                    body_len,
                );
            }
            Ok(httparse::Status::Partial) => {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.advance(head_len);
    while buf.len() < body_len {
        buf.reserve(body_len - buf.len());
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    let body = buf.split_to(body_len).to_vec();
    Some(RawRequest {
        head,
        method,
        path,
        body,
    })
}
