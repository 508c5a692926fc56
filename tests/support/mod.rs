//! Test support: real hyper backends on 127.0.0.1:0 that count what they see, a hand-written route
//! table, and Juggler itself started on port 0 inside the test's runtime.
#![allow(dead_code)]

pub mod bodies;
pub mod faulty;
pub mod https;
pub mod raw;
pub mod raw_backend;
pub mod wire;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use juggler::proxy::Proxy;
use juggler::router::MethodSet;
use juggler::table::{
    BackendId, BackendSpec, Route, RouteId, RouteMatch, RouteTable, Settings, Upstream, UpstreamId,
};
use juggler::Listeners;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every test gives up after this long rather than hang.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a test backend has seen.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// TCP connections accepted over the backend's life.
    pub connections_accepted: AtomicUsize,
    /// TCP connections open right now.
    pub connections_open: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
    /// Requests being handled right now, and the most ever at once.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Headers of the most recent request, as received.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Request paths received, in order.
    pub paths: Mutex<Vec<String>>,
}

impl BackendStats {
    pub fn accepted(&self) -> usize {
        self.connections_accepted.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> usize {
        self.connections_open.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
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

/// A real hyper HTTP/1.1 backend. Paths it understands:
/// - `/echo`: answers with the request body; `x-body-len` header with its length;
/// - `/status/NNN`: answers with that status (and a body unless 204/304);
/// - `/sleep/MS`: sleeps MS milliseconds, then answers with its name;
/// - anything else: answers with its name.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_with(Behaviour {
            name: name.to_owned(),
            delay: Duration::ZERO,
        })
        .await
    }

    pub async fn start_with(behaviour: Behaviour) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, behaviour)
    }

    /// Serves on an already-bound listener (to restart a backend on the same port).
    pub fn serve_on(listener: TcpListener, behaviour: Behaviour) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(BackendStats::default());
        let (stop, mut stopped) = oneshot::channel();
        let task_stats = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                task_stats
                    .connections_accepted
                    .fetch_add(1, Ordering::SeqCst);
                task_stats.connections_open.fetch_add(1, Ordering::SeqCst);
                let stats = Arc::clone(&task_stats);
                let behaviour = behaviour.clone();
                connections.spawn(async move {
                    let service_stats = Arc::clone(&stats);
                    let service = service_fn(move |request| {
                        answer(request, behaviour.clone(), Arc::clone(&service_stats))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    stats.connections_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            // Dropping the set aborts every connection: the backend is gone.
            connections.shutdown().await;
        });
        TestBackend {
            addr,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Stops accepting and closes every connection, as a crashed backend would.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    behaviour: Behaviour,
    stats: Arc<BackendStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
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
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(behaviour.name.clone())))
            .unwrap()
    };
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

/// Routes used by hand-written tables: `/get-only` accepts GET and HEAD (so other methods get
/// `405`), `/nowhere/...` matches nothing (`404`), everything else goes to route 0.
pub fn test_routes(method: &Method, path: &str) -> RouteMatch {
    const GET_ONLY: MethodSet = MethodSet::GET.union(MethodSet::HEAD);
    if path.starts_with("/nowhere") {
        return RouteMatch::NotFound;
    }
    if path == "/get-only" {
        return if GET_ONLY.contains(method) {
            RouteMatch::Found(RouteId(1))
        } else {
            RouteMatch::MethodNotAllowed(GET_ONLY)
        };
    }
    RouteMatch::Found(RouteId(0))
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// A table with one upstream `test` over `addresses`, each with `pool_size` connections, routed by
/// [`test_routes`]. Tests adjust `settings` before building.
pub fn table(
    addresses: &[SocketAddr],
    pool_size: usize,
    settings: Settings,
) -> &'static RouteTable {
    let backends: Vec<BackendSpec> = addresses
        .iter()
        .map(|addr| BackendSpec {
            address: Box::leak(addr.to_string().into_boxed_str()),
            pool_size,
            upstream: UpstreamId(0),
        })
        .collect();
    let ids: Vec<BackendId> = (0..addresses.len()).map(|i| BackendId(i as u16)).collect();
    let upstreams = vec![Upstream {
        name: "test",
        backends: Box::leak(ids.into_boxed_slice()),
    }];
    let routes = vec![
        Route {
            methods: MethodSet::ANY,
            paths: &["/*"],
            upstream: UpstreamId(0),
            retry_non_idempotent: false,
            source: "test:1",
        },
        Route {
            methods: MethodSet::GET.union(MethodSet::HEAD),
            paths: &["/get-only"],
            upstream: UpstreamId(0),
            retry_non_idempotent: false,
            source: "test:2",
        },
    ];
    leak(RouteTable {
        backends: Box::leak(backends.into_boxed_slice()),
        upstreams: Box::leak(upstreams.into_boxed_slice()),
        routes: Box::leak(routes.into_boxed_slice()),
        match_route: test_routes,
        settings,
        config_hash: "test",
        sources: &[],
    })
}

/// Juggler serving a table on 127.0.0.1:0 inside the test's runtime.
pub struct TestJuggler {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestJuggler {
    pub async fn start(table: &'static RouteTable) -> TestJuggler {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(Proxy::new(table));
        let (shutdown, signal) = oneshot::channel::<()>();
        let listeners = Listeners {
            http: Some(listener),
            https: None,
        };
        let task = tokio::spawn(juggler::run_with(listeners, Arc::clone(&proxy), async {
            let _ = signal.await;
        }));
        TestJuggler {
            addr,
            proxy,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Open pooled connections per backend, as Juggler counts them.
    pub fn open_connections(&self) -> Vec<usize> {
        self.proxy
            .pools
            .iter()
            .map(|pool| pool.open_connections())
            .collect()
    }

    /// Starts a graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestJuggler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A keep-alive HTTP/1.1 client connection to `addr` (one TCP connection for all its requests).
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

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

/// Counts of each distinct body text, for round-robin checks.
pub fn tally<'a>(texts: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for text in texts {
        *counts.entry(text.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Runs `future` with the suite-wide time bound.
pub async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test exceeded its time bound")
}
