//! A real hyper HTTP/1.1 backend that counts what it sees and answers by path.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::backend::{bind_local, Backend, Count};

/// What a test backend has seen (connections: [`Backend::accepted`] and [`Backend::open`]).
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests received.
    pub requests: Count,
    /// Requests being handled right now, and the most ever at once.
    pub in_flight: Count,
    pub max_in_flight: Count,
    /// Headers of the most recent request, as received.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Request paths received, in order.
    pub paths: Mutex<Vec<String>>,
    /// `/hold` requests are answered once this is `true` (the test decides when, not a clock).
    pub released: tokio::sync::watch::Sender<bool>,
}

impl BackendStats {
    /// Headers of the most recent request; panics if there was none.
    pub fn last_headers(&self) -> HeaderMap {
        let headers = self.last_headers.lock().unwrap();
        headers.clone().expect("backend saw no request")
    }
    /// Request paths received so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// How a test backend answers.
#[derive(Clone)]
pub struct Behaviour {
    /// Text body of every `GET /...` answer (`server N`).
    pub name: String,
    /// Delay before answering each request.
    pub delay: Duration,
}

impl Behaviour {
    /// Answers at once with body `name`.
    pub fn named(name: &str) -> Behaviour {
        Behaviour {
            name: name.to_owned(),
            delay: Duration::ZERO,
        }
    }
}

/// A real hyper HTTP/1.1 backend. Paths it understands:
/// - `/echo`: answers with the request body; `x-body-len` header with its length;
/// - `/status/NNN`: answers with that status (and a body unless 204/304);
/// - `/sleep/MS`: sleeps MS milliseconds, then answers with its name;
/// - `/hold`: answers with its name once the test sets [`BackendStats::released`];
/// - anything else: answers with its name.
pub type TestBackend = Backend<BackendStats>;

impl Backend<BackendStats> {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_with(Behaviour::named(name)).await
    }

    pub async fn start_with(behaviour: Behaviour) -> TestBackend {
        Self::serve_on(bind_local().await, behaviour)
    }

    /// Serves on an already-bound listener (to restart a backend on the same port).
    pub fn serve_on(listener: TcpListener, behaviour: Behaviour) -> TestBackend {
        Backend::serve(listener, BackendStats::default(), move |stream, stats| {
            serve_http1(stream, behaviour.clone(), stats)
        })
    }
}

/// Three backends answering `server 1`, `server 2` and `server 3`.
pub async fn three_backends() -> [TestBackend; 3] {
    [
        TestBackend::start("server 1").await,
        TestBackend::start("server 2").await,
        TestBackend::start("server 3").await,
    ]
}

/// The addresses of `backends`, in order.
pub fn addrs_of<S>(backends: &[Backend<S>]) -> Vec<std::net::SocketAddr> {
    backends.iter().map(|backend| backend.addr).collect()
}

async fn serve_http1(stream: TcpStream, behaviour: Behaviour, stats: Arc<BackendStats>) {
    let service = service_fn(move |request| answer(request, behaviour.clone(), Arc::clone(&stats)));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    behaviour: Behaviour,
    stats: Arc<BackendStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats.requests.bump();
    stats.max_in_flight.raise_to(stats.in_flight.bump());
    *stats.last_headers.lock().unwrap() = Some(request.headers().clone());
    let path = request.uri().path().to_owned();
    stats.paths.lock().unwrap().push(path.clone());
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let response = if path == "/echo" {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::builder()
            .header("x-body-len", body.len().to_string())
            .body(Full::new(body))
            .unwrap()
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Bytes::new()
        } else {
            Bytes::from(format!("status {code}\n"))
        };
        Response::builder()
            .status(status)
            .body(Full::new(body))
            .unwrap()
    } else {
        if let Some(ms) = path.strip_prefix("/sleep/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        if path == "/hold" {
            let _ = stats
                .released
                .subscribe()
                .wait_for(|released| *released)
                .await;
        }
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(behaviour.name.clone())))
            .unwrap()
    };
    stats.in_flight.drop_one();
    Ok(response)
}
