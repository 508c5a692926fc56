//! Listeners: accept client connections on every serving thread (`crate::threads`; up to the
//! connection cap, backing off when accept fails) and serve each as a task of its own (`conn`);
//! on shutdown stop accepting and drain; during a binary upgrade, stop accepting and hand idle
//! connections to the successor (`upgrade`).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::conn::{serve_adopted, serve_plain, serve_tls, PhaseSignal, Shared};
use super::park::ParkingLot;
use super::tls::TlsAcceptor;
use crate::proxy::Proxy;
use crate::table::RouteTable;
use crate::threads::ServingThreads;

/// The sockets Juggler serves, bound by the caller (so tests can bind `127.0.0.1:0`).
#[derive(Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<(TcpListener, Arc<TlsAcceptor>)>,
}

/// An idle plain client connection on its way to the successor process, with the address its
/// requests are attributed to: the one its PROXY header named (that header came at the start of
/// the connection and was read here) or its peer's.
#[derive(Debug)]
pub(crate) struct HandedOver {
    pub(crate) socket: OwnedFd,
    pub(crate) client_ip: IpAddr,
    /// Its place under the connection cap, travelling with it: the connection counts as open
    /// ([`Server::open_connections`]) until this is dropped, after the successor was sent the
    /// socket. The predecessor says DONE, and exits, when nothing counts; had the count dropped
    /// when the connection entered the channel, a connection that went idle just after the
    /// channel was last emptied was left in it, and closed with the process under the request
    /// its client was sending (`ConnectionReset`).
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the client side is doing, as every accept loop and connection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// A successor process accepts on the same listeners: accept nothing, hand idle plain
    /// HTTP/1.1 connections over, close the others after their current request. Back to
    /// `Serving` if the successor goes away first.
    HandingOver,
    /// Shutting down: accept nothing, finish what was accepted, close.
    Draining,
}

/// The client side of a running Juggler: its accept loops and connections.
pub(crate) struct Server {
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    accept_loops: JoinSet<()>,
    pool_upkeep: JoinSet<()>,
    /// Where the connections are served; dropping the server ends them.
    threads: ServingThreads,
}

impl Server {
    /// Starts the serving threads and accepts on `listeners`; idle plain connections go to
    /// `handed_over` while handing over.
    pub(crate) fn start(
        listeners: Listeners,
        proxy: Arc<Proxy>,
        handed_over: mpsc::UnboundedSender<HandedOver>,
    ) -> io::Result<Server> {
        let table = proxy.table;
        let limits = &table.settings.limits;
        let (threads, dealer) = ServingThreads::start(table.settings.proxy.worker_threads)?;
        let pool_upkeep = proxy.maintain_pools();
        let redirect_to_https_port = listeners
            .https
            .as_ref()
            .filter(|_| table.settings.listen.redirect_http_to_https)
            .and_then(|(listener, _)| listener.local_addr().ok())
            .map(|address| address.port());
        let connection_slots = Arc::new(Semaphore::new(limits.max_client_connections));
        proxy
            .metrics
            .count_connections_by(Arc::clone(&connection_slots), limits.max_client_connections);
        let shared = Arc::new(Shared {
            proxy,
            connection_slots: Arc::clone(&connection_slots),
            redirect_to_https_port,
            handed_over,
            parking: ParkingLot::new(),
            dealer,
        });
        let (phase, phase_rx) = watch::channel(Phase::Serving);
        // One accept loop per listener on every serving thread, each on its own descriptor of the
        // listening socket: the kernel wakes them all for a new connection, one takes it.
        let mut accept_loops = JoinSet::new();
        let listening = [
            listeners.http.map(|listener| (listener, None)),
            listeners.https.map(|(listener, tls)| (listener, Some(tls))),
        ];
        for (listener, tls) in listening.into_iter().flatten() {
            let listener = listener.into_std()?;
            for runtime in shared.dealer.runtimes() {
                let accepting = accept_loop(
                    listener.try_clone()?,
                    tls.clone(),
                    Arc::clone(&shared),
                    phase_rx.clone(),
                );
                accept_loops.spawn_on(accepting, runtime);
            }
        }
        Ok(Server {
            shared,
            phase,
            accept_loops,
            pool_upkeep,
            threads,
        })
    }

    pub(crate) fn proxy(&self) -> &Arc<Proxy> {
        &self.shared.proxy
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Serves a plain HTTP/1.1 client connection another process handed over.
    /// `client_ip`: the address the previous process attributed the connection's requests to
    /// (`None` from a predecessor that did not say: its peer's).
    pub(crate) fn adopt_client(&self, socket: OwnedFd, client_ip: Option<IpAddr>) {
        let Ok(permit) = Arc::clone(&self.shared.connection_slots).try_acquire_owned() else {
            tracing::warn!("connection cap reached: closing a handed-over client connection");
            return;
        };
        let stream = std::net::TcpStream::from(socket);
        let peer = match stream
            .set_nonblocking(true)
            .and_then(|()| stream.peer_addr())
        {
            Ok(peer) => peer,
            Err(error) => {
                tracing::debug!(%error, "handed-over client connection unusable");
                return;
            }
        };
        let shared = Arc::clone(&self.shared);
        let phase = self.phase.subscribe();
        let client_ip = client_ip.unwrap_or(peer.ip());
        self.shared.dealer.deal(stream, move |stream| {
            serve_adopted(stream, client_ip, shared, phase, permit)
        });
    }

    /// Client connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        let limits = &self.shared.proxy.table.settings.limits;
        limits.max_client_connections - self.shared.connection_slots.available_permits()
    }

    /// Stops accepting, lets accepted and queued requests finish (up to the drain timeout), and
    /// stops the pools' upkeep.
    pub(crate) async fn drain(mut self) {
        let limits = &self.shared.proxy.table.settings.limits;
        self.set_phase(Phase::Draining);
        while self.accept_loops.join_next().await.is_some() {}
        let all = u32::try_from(limits.max_client_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            limits.drain_timeout,
            self.shared.connection_slots.acquire_many(all),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached with requests still in progress; closing them");
        }
        self.pool_upkeep.shutdown().await;
        self.threads.stop().await;
    }
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
    // Nobody takes connections over: a connection that would be handed over is closed.
    let (handed_over, _) = mpsc::unbounded_channel();
    let server = Server::start(listeners, proxy, handed_over)?;
    shutdown.await;
    tracing::info!("shutting down: no new connections, draining accepted requests");
    server.drain().await;
    Ok(())
}

/// Accepts on one serving thread (`listener` is registered with its reactor here) and serves
/// what it accepts there (see [`crate::threads::Dealer::serve_here`]).
async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    shared: Arc<Shared>,
    mut phase: PhaseSignal,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "a serving thread cannot accept on a listener");
            return;
        }
    };
    let mut backoff = AcceptBackoff::default();
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::Serving => {}
            Phase::Draining => return,
            // Keep the listener (a successor that fails hands the work back) but accept nothing.
            Phase::HandingOver => {
                if phase.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        // At the connection cap, stop accepting: new clients wait in the kernel's backlog instead
        // of costing file descriptors and memory here.
        let permit = tokio::select! {
            permit = Arc::clone(&shared.connection_slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = phase.changed() => continue,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.changed() => continue,
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
        let shared_here = Arc::clone(&shared);
        let phase = phase.clone();
        // Each kind its own task: a task is as large as its future's largest state.
        match &tls {
            Some(tls) => {
                let tls = Arc::clone(tls);
                shared.dealer.serve_here(stream, move |stream| {
                    serve_tls(stream, peer, tls, shared_here, phase, permit)
                })
            }
            None => shared.dealer.serve_here(stream, move |stream| {
                serve_plain(stream, peer, shared_here, phase, permit)
            }),
        }
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

#[cfg(test)]
mod tests {
    //! One idle connection handed over inside one process: the predecessor's [`Server`] puts it in
    //! the channel, the test takes it out as the upgrade's control loop would, and a successor's
    //! [`Server`] adopts it.

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::client::park::PARK_AFTER;
    use crate::table::{RouteMatch, Settings};

    /// No backends and no routes: the proxy answers every request `404` itself.
    static NO_ROUTES: RouteTable = RouteTable {
        backends: &[],
        upstreams: &[],
        routes: &[],
        match_route: |_, _| RouteMatch::NotFound,
        settings: Settings::DEFAULT,
        config_hash: "test",
        sources: &[],
    };

    const BOUND: Duration = Duration::from_secs(5);

    async fn server(http: Option<TcpListener>) -> (Server, mpsc::UnboundedReceiver<HandedOver>) {
        let (handed_over, channel) = mpsc::unbounded_channel();
        let listeners = Listeners { http, https: None };
        let proxy = Arc::new(Proxy::new(&NO_ROUTES));
        (
            Server::start(listeners, proxy, handed_over).unwrap(),
            channel,
        )
    }

    /// Sends a GET and reads its answer's status line (the answer is read whole, by its length).
    async fn get(client: &mut TcpStream) -> String {
        client
            .write_all(b"GET /anything HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 1024];
                let read = client.read(&mut chunk).await.unwrap();
                assert!(read > 0, "connection closed: {answer:?}");
                answer.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&answer).into_owned();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let length: usize = text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |length| length.trim().parse().unwrap());
                if answer.len() >= end + 4 + length {
                    return text.lines().next().unwrap_or_default().to_owned();
                }
            }
        };
        tokio::time::timeout(BOUND, read).await.expect("no answer")
    }

    /// A keep-alive client's connection, idle for `idle` (long enough to be parked, or not),
    /// goes to the successor; the client sends its next request while the connection is on its
    /// way, and the successor answers it. The predecessor must count the connection as open until
    /// the successor has it: it exits once nothing counts, and a connection still in the channel
    /// then was closed under its client's request (`ConnectionReset`, the request lost).
    async fn hand_over_one_connection(idle: Duration) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let (predecessor, mut channel) = server(Some(listener)).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        assert!(get(&mut client).await.starts_with("HTTP/1.1 404"));
        tokio::time::sleep(idle).await;

        predecessor.set_phase(Phase::HandingOver);
        let handed = tokio::time::timeout(BOUND, channel.recv())
            .await
            .expect("the idle connection was not handed over")
            .unwrap();
        let sending = tokio::spawn(async move {
            let status = get(&mut client).await;
            (status, client)
        });
        // Given time to uncount itself, wrongly: nothing may, while the socket is in transit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(predecessor.open_connections(), 1, "in transit, still open");

        let (successor, _) = server(None).await;
        let HandedOver {
            socket,
            client_ip,
            permit,
        } = handed;
        successor.adopt_client(socket, Some(client_ip));
        drop(permit);
        assert_eq!(predecessor.open_connections(), 0);
        let (status, client) = tokio::time::timeout(BOUND, sending).await.unwrap().unwrap();
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
        assert_eq!(successor.open_connections(), 1);
        drop(client);
        for server in [predecessor, successor] {
            tokio::time::timeout(BOUND, server.drain()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_going_idle_during_the_handover_counts_until_the_successor_has_it() {
        hand_over_one_connection(Duration::ZERO).await;
    }

    #[tokio::test]
    async fn a_parked_connection_counts_until_the_successor_has_it() {
        hand_over_one_connection(PARK_AFTER * 4).await;
    }
}
