//! Listeners: accept client connections (up to the connection cap, backing off when accept
//! fails), give each its own task (`conn`), and on shutdown stop accepting and drain.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::conn::{serve_stream, DrainSignal, Shared};
use super::tls::TlsAcceptor;
use crate::proxy::Proxy;
use crate::table::RouteTable;

/// The sockets Juggler serves, bound by the caller (so tests can bind `127.0.0.1:0`).
#[derive(Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<(TcpListener, Arc<TlsAcceptor>)>,
}

/// Serves `listeners` with `table` until `shutdown` completes, then stops accepting, lets accepted
/// and queued requests finish (up to the drain timeout) and returns.
pub async fn run(
    listeners: Listeners,
    table: &'static RouteTable,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let proxy = Arc::new(Proxy::new(table));
    run_with(listeners, proxy, shutdown).await
}

/// [`run`] with a proxy the caller already holds (tests read its pools).
pub async fn run_with(
    listeners: Listeners,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let table = proxy.table;
    let limits = &table.settings.limits;
    let mut pool_upkeep = proxy.maintain_pools();
    let redirect_to_https_port = listeners
        .https
        .as_ref()
        .filter(|_| table.settings.listen.redirect_http_to_https)
        .and_then(|(listener, _)| listener.local_addr().ok())
        .map(|address| address.port());
    let shared = Arc::new(Shared {
        proxy,
        connection_slots: Arc::new(Semaphore::new(limits.max_client_connections)),
        redirect_to_https_port,
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    if let Some(listener) = listeners.http {
        accept_loops.spawn(accept_loop(
            listener,
            None,
            Arc::clone(&shared),
            drain_rx.clone(),
        ));
    }
    if let Some((listener, tls)) = listeners.https {
        let tls = Some(tls);
        accept_loops.spawn(accept_loop(
            listener,
            tls,
            Arc::clone(&shared),
            drain_rx.clone(),
        ));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining accepted requests");
    let _ = drain_tx.send(true);
    while accept_loops.join_next().await.is_some() {}
    let all = u32::try_from(limits.max_client_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(
        limits.drain_timeout,
        shared.connection_slots.acquire_many(all),
    )
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached with requests still in progress; closing them");
    }
    pool_upkeep.shutdown().await;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    shared: Arc<Shared>,
    mut drain: DrainSignal,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        // At the connection cap, stop accepting: new clients wait in the kernel's backlog instead
        // of costing file descriptors and memory here.
        let permit = tokio::select! {
            permit = Arc::clone(&shared.connection_slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = drain.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(error) => {
                // EMFILE/ENFILE and friends: wait instead of spinning on a failing accept.
                let delay = backoff.next_delay();
                tracing::warn!(%error, ?delay, "accept failed; pausing");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let drain = drain.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            serve_stream(stream, peer, tls, &shared, drain).await;
            drop(permit);
        });
    }
}

/// Pauses between failing accepts, doubling up to one second.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = (self.failures + 1).min(7);
        Duration::from_millis(10 << self.failures).min(Duration::from_secs(1))
    }
}
