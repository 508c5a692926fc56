//! A hand-rolled HTTP/1.1 backend that misbehaves on purpose: it closes idle keep-alive
//! connections on its own timer (racing the balancer's reuse), hangs, answers garbage, cuts its
//! response short, or answers before reading the request body. hyper's server would not do any of
//! this, so requests are parsed minimally with httparse.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backend::{bind_local, Backend, Count};

/// What the backend does with one request, chosen from its method and path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with this body; the connection stays open (subject to the idle policy).
    Ok(&'static str),
    /// Writes these bytes, then closes the connection.
    RawThenClose(&'static [u8]),
    /// Never answers; keeps the connection open until the balancer closes it.
    Hang,
    /// Answers `200` as soon as the head is in, without reading the body, then closes.
    BeforeBody,
    /// Reads nothing after the head, answers nothing, keeps the connection open: a large
    /// request body fills the socket buffers and its writer stalls.
    Stall,
}

/// How the backend treats a keep-alive connection between requests.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Closes a connection this long after its last response.
    pub close_after: Duration,
    /// Announce `Keep-Alive: timeout=N` (whole seconds of `close_after`) on every response.
    pub announce: bool,
    /// Requests arriving within this window before the close are dropped unread and the
    /// connection closed: the close timer "fired" while the request was on the wire. This makes
    /// the keep-alive race happen on every request in the window instead of once in a blue moon.
    pub race_window: Duration,
}

/// What the backend has seen (connections: [`Backend::accepted`] and [`Backend::open`]).
#[derive(Debug, Default)]
pub struct FaultyStats {
    /// Requests parsed and acted on (answered, hung on or faulted), per method below.
    pub requests: Count,
    /// Requests that arrived inside the race window and were dropped unread.
    pub dropped_in_race: Count,
    /// Connections closed by the idle timer.
    pub idle_closes: Count,
    /// `METHOD path` of each request acted on, in order.
    pub seen: Mutex<Vec<String>>,
}

impl FaultyStats {
    /// How many requests acted on had this `METHOD path`.
    pub fn count(&self, request_line: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|line| *line == request_line).count()
    }
}

pub type FaultyBackend = Backend<FaultyStats>;

impl Backend<FaultyStats> {
    /// Starts on 127.0.0.1:0. `decide(method, path)` picks each reply; `idle` (if any) closes
    /// keep-alive connections on a timer.
    pub async fn start(
        decide: impl Fn(&str, &str) -> Reply + Send + Sync + 'static,
        idle: Option<IdlePolicy>,
    ) -> FaultyBackend {
        let decide = Arc::new(decide);
        Backend::serve(
            bind_local().await,
            FaultyStats::default(),
            move |stream, stats| {
                let decide = Arc::clone(&decide);
                async move { serve(stream, &*decide, idle, &stats).await }
            },
        )
    }
}

/// One parsed request head: method, path, body length, and how many bytes the head took.
struct Head {
    method: String,
    path: String,
    body_len: usize,
    head_len: usize,
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    let body_len = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(Head {
        method: request.method.unwrap_or("").to_owned(),
        path: request.path.unwrap_or("").to_owned(),
        body_len,
        head_len,
    })
}

async fn serve(
    mut stream: TcpStream,
    decide: &(dyn Fn(&str, &str) -> Reply + Send + Sync),
    idle: Option<IdlePolicy>,
    stats: &FaultyStats,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut last_response = Instant::now();
    loop {
        // Wait for the next complete head, or for the idle timer to close the connection.
        let head = loop {
            if let Some(head) = parse_head(&buf) {
                break head;
            }
            let read = match idle {
                Some(policy) => {
                    let close_at = last_response + policy.close_after;
                    match tokio::time::timeout_at(close_at, stream.read(&mut chunk)).await {
                        Ok(read) => read,
                        Err(_) => {
                            stats.idle_closes.bump();
                            return;
                        }
                    }
                }
                None => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some(policy) = idle {
                        let race_from = last_response + policy.close_after - policy.race_window;
                        if buf.is_empty() && Instant::now() >= race_from {
                            // The timer "fired" with this request on the wire: close unread.
                            stats.dropped_in_race.bump();
                            return;
                        }
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let reply = decide(&head.method, &head.path);
        stats.requests.bump();
        stats
            .seen
            .lock()
            .unwrap()
            .push(format!("{} {}", head.method, head.path));
        if let Reply::Stall = reply {
            std::future::pending::<()>().await;
        }
        if let Reply::BeforeBody = reply {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
                )
                .await;
            return;
        }
        // Read the body before answering.
        let total = head.head_len + head.body_len;
        while buf.len() < total {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..total);
        match reply {
            Reply::Ok(body) => {
                let keep_alive = match idle {
                    Some(policy) if policy.announce => format!(
                        "keep-alive: timeout={}\r\n",
                        policy.close_after.as_secs().max(1)
                    ),
                    _ => String::new(),
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{keep_alive}\r\n{body}",
                    body.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                last_response = Instant::now();
            }
            Reply::RawThenClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
            Reply::Hang => {
                // Until the balancer gives up and closes its end.
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                }
                return;
            }
            Reply::BeforeBody | Reply::Stall => unreachable!("answered above"),
        }
    }
}
