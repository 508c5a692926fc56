//! The operators' listener: `/metrics` (OpenMetrics text for Prometheus), `/status` (a live page)
//! and `/status.json` (the same for scripts and `juggler status`), and taking a backend out of
//! rotation at run time (`POST /backends/{address}/drain`, `/undrain`, bearer token required).
//!
//! It shares nothing with client traffic: it runs on a thread and runtime of its own, reads the
//! pools' state and counters without waiting on them, and never queues behind a pool, so it
//! answers while every pool is saturated and every worker is busy.

pub mod report;
pub mod token;

mod exposition;
mod fleet;
mod history;
mod process;

pub use fleet::{report_fleet, FleetBackendReport, FleetReport};
pub use process::{report_allocator, AllocatorStats};

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::backend::pool::Drain;
use crate::metrics::ListenerKind;
use crate::proxy::Proxy;
use history::History;

/// The status page, served from the binary (no CDN, no build step).
const STATUS_PAGE: &str = include_str!("status.html");

/// Admin connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// How long [`AdminServer::finish`] gives the requests in flight.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

/// The admin listener, running on its own thread until finished or dropped.
#[derive(Debug)]
pub struct AdminServer {
    /// `true` while it should not accept (a successor process accepts on the same socket); the
    /// connections open then are closed once their request in flight is answered.
    paused: watch::Sender<bool>,
    /// Dropping it stops the thread.
    stop: oneshot::Sender<()>,
    /// Sent when the thread is done: its connections closed, or given up on.
    finished: oneshot::Receiver<()>,
}

/// What every admin request reads.
struct State {
    proxy: Arc<Proxy>,
    token: String,
    /// The client listeners' addresses, for the report.
    listeners: Vec<(ListenerKind, String)>,
    history: History,
    registry: Registry,
}

impl AdminServer {
    /// Serves `listener` on a thread of its own. `token` is what the mutating endpoints require;
    /// `listeners` the client listeners' addresses the report shows.
    pub fn start(
        listener: TcpListener,
        proxy: Arc<Proxy>,
        token: String,
        listeners: Vec<(ListenerKind, String)>,
    ) -> io::Result<AdminServer> {
        let listener = listener.into_std()?;
        let (paused, paused_rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<()>();
        let state = Arc::new(State {
            history: History::new(proxy.pools.len()),
            registry: exposition::registry(Arc::clone(&proxy)),
            proxy,
            token,
            listeners,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("juggler-admin".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "admin listener unusable");
                            return;
                        }
                    };
                    let sampler = Arc::clone(&state);
                    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                    tokio::select! {
                        _ = stopped => {}
                        () = sampler.history.sample_every_second(&sampler.proxy) => {}
                        () = accept_loop(listener, state, paused_rx, Arc::clone(&slots)) => {}
                    }
                    // Every connection holds a slot until it is closed: all back means all done.
                    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
                    let _ = tokio::time::timeout(FINISH_WITHIN, slots.acquire_many(all)).await;
                    let _ = done.send(());
                });
            })?;
        Ok(AdminServer {
            paused,
            stop,
            finished,
        })
    }

    /// Stops accepting (another process accepts on the same socket while it takes over) or
    /// starts again. Pausing also closes the connections open: each after answering its request
    /// in flight, so that a dashboard or scraper on a keep-alive connection reconnects, and
    /// reaches the process that accepts, rather than reading this one's state until it exits.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Stops the listener: its requests in flight are answered (for up to [`FINISH_WITHIN`]) and
    /// its connections closed, before the process goes on to exit.
    pub async fn finish(self) {
        let AdminServer {
            paused,
            stop,
            finished,
        } = self;
        paused.send_replace(true);
        drop(stop);
        let _ = tokio::time::timeout(FINISH_WITHIN * 2, finished).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut paused: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    loop {
        if *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = paused.changed() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let closing = paused.clone();
        tokio::spawn(async move {
            serve_connection(stream, state, closing).await;
            drop(permit);
        });
    }
}

/// Serves one admin connection until the client closes it, or until the listener is paused or
/// gone: then it is closed once it has answered a request, so that a client that connected just
/// before the pause (its first request on its way) still gets its answer.
async fn serve_connection(
    stream: TcpStream,
    state: Arc<State>,
    mut closing: watch::Receiver<bool>,
) {
    let (answered_tx, mut answered) = watch::channel(false);
    let service = service_fn(move |request| {
        let answer = answer(&state, request);
        answered_tx.send_replace(true);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closed = false;
    let served = loop {
        tokio::select! {
            served = conn.as_mut() => break served,
            // Paused, or the server gone (an error): either way, time to close.
            () = async {
                drop(closing.wait_for(|paused| *paused).await);
                drop(answered.wait_for(|answered| *answered).await);
            }, if !closed => {
                conn.as_mut().graceful_shutdown();
                closed = true;
            }
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn answer(state: &State, request: Request<Incoming>) -> AdminResponse {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET | &Method::HEAD, "/") => redirect("/status"),
        (&Method::GET | &Method::HEAD, "/metrics") => respond(
            StatusCode::OK,
            exposition::CONTENT_TYPE,
            exposition::render(&state.registry),
        ),
        (&Method::GET | &Method::HEAD, "/status") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE)
        }
        (&Method::GET | &Method::HEAD, "/status.json") => json(
            StatusCode::OK,
            &report::build(&state.proxy, &state.history, &state.listeners),
        ),
        (_, "/" | "/metrics" | "/status" | "/status.json") => not_allowed("GET, HEAD"),
        _ => match drain_request(path) {
            Some(_) if request.method() != Method::POST => not_allowed("POST"),
            Some((address, change)) => drain(state, &request, &address, change),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `/backends/{address}/drain` or `/undrain`: the backend's address, percent-decoded, and what
/// to do.
fn drain_request(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/backends/")?;
    let (address, action) = rest.rsplit_once('/')?;
    let drain = match action {
        "drain" => true,
        "undrain" => false,
        _ => return None,
    };
    Some((percent_decode(address)?, drain))
}

fn drain(state: &State, request: &Request<Incoming>, address: &str, drain: bool) -> AdminResponse {
    if !authorized(request, &state.token) {
        let mut response = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"juggler admin\""),
        );
        return response;
    }
    let Some((index, pool)) = state
        .proxy
        .pools
        .iter()
        .enumerate()
        .find(|(_, pool)| pool.spec.address == address)
    else {
        return text(StatusCode::NOT_FOUND, "no such backend\n");
    };
    let close = request
        .uri()
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "close=true"));
    let change = match (drain, close) {
        (false, _) => Drain::Off,
        (true, false) => Drain::KeepConnections,
        (true, true) => Drain::CloseConnections,
    };
    pool.set_drain(change);
    tracing::warn!(backend = address, state = ?change, "admin: backend drain state changed");
    let index = u16::try_from(index).unwrap_or(u16::MAX);
    json(
        StatusCode::OK,
        &report::backend_report(pool, &state.history, index),
    )
}

fn authorized(request: &Request<Incoming>, token: &str) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| token::matches(given.trim_ascii(), token.as_bytes()))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    respond(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> AdminResponse {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(error) => {
            tracing::error!(%error, "admin: cannot encode a report");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the report\n",
            )
        }
    }
}

fn redirect(to: &'static str) -> AdminResponse {
    let mut response = text(StatusCode::FOUND, "");
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

fn not_allowed(allow: &'static str) -> AdminResponse {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths_name_a_percent_encoded_backend_and_an_action() {
        assert_eq!(
            drain_request("/backends/localhost%3A6901/drain"),
            Some(("localhost:6901".to_owned(), true))
        );
        assert_eq!(
            drain_request("/backends/10.0.0.1:80/undrain"),
            Some(("10.0.0.1:80".to_owned(), false))
        );
        assert_eq!(drain_request("/backends/x/explode"), None);
        assert_eq!(drain_request("/backends/%zz/drain"), None);
        assert_eq!(drain_request("/status"), None);
    }
}
