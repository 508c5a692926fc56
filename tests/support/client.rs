//! Plain HTTP/1.1 clients built on hyper's connection API: one keep-alive connection per
//! [`Client`], every response read whole into an [`Answer`].

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Reads `response`'s body to the end.
    pub async fn read(response: Response<Incoming>) -> hyper::Result<Answer> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client connection (one connection for all its requests).
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    /// A client over a new TCP connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// A client over an established connection (plain TCP or TLS).
    pub async fn over<IO>(io: IO) -> Client
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
        self.sender.ready().await?;
        Answer::read(self.sender.send_request(request).await?).await
    }

    /// `GET path` with `Host: juggler.test`.
    pub async fn get(&mut self, path: &str) -> hyper::Result<Answer> {
        self.send(
            Request::get(path)
                .header("host", "juggler.test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> hyper::Result<Answer> {
    Client::connect(addr).await.get(path).await
}

/// `request` on a fresh connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
    Client::connect(addr).await.send(request).await
}

/// `count` GETs of `path` at once, each on a fresh connection; how many were answered `200`.
pub async fn gets_at_once(addr: SocketAddr, path: &'static str, count: usize) -> usize {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..count {
        requests.spawn(async move { get(addr, path).await.unwrap().status });
    }
    let mut ok = 0;
    while let Some(status) = requests.join_next().await {
        if status.unwrap() == 200 {
            ok += 1;
        }
    }
    ok
}

/// `POST path` with `body` and `Host: juggler.test`.
pub fn post(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "juggler.test")
        .body(Full::new(body))
        .unwrap()
}

/// Counts of each distinct body text, for round-robin checks.
pub fn tally<'a>(texts: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for text in texts {
        *counts.entry(text.to_owned()).or_insert(0) += 1;
    }
    counts
}
