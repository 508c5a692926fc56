//! Juggler itself inside the test's runtime, on 127.0.0.1:0: plain HTTP only, or plain HTTP and
//! HTTPS at once; and the hand-written route table tests give it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Method;
use juggler::admin::AdminServer;
use juggler::metrics::ListenerKind;
use juggler::proxy::Proxy;
use juggler::router::MethodSet;
use juggler::table::{
    BackendId, BackendSpec, BalancePolicy, Priority, Protection, Route, RouteId, RouteMatch,
    RouteTable, Settings, Upstream, UpstreamId,
};
use juggler::tls::{self, ReloadableCert};
use juggler::Listeners;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::bind_local;
use crate::certs::CertFiles;
use crate::hyper_backend::TestBackend;

/// The HTTPS side of a [`TestJuggler`] started with [`TestJuggler::start_https`].
pub struct HttpsListener {
    pub addr: SocketAddr,
    /// The certificate Juggler's acceptor resolves per handshake; what SIGHUP reloads.
    pub certs: Arc<ReloadableCert>,
}

/// Juggler serving a table inside the test's runtime.
pub struct TestJuggler {
    /// The plain HTTP listener.
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// The HTTPS listener, if started with one.
    pub https: Option<HttpsListener>,
    /// The admin listener's address and server, if started with one.
    admin: Option<(SocketAddr, AdminServer)>,
    /// Starts the graceful shutdown `run_with` waits for.
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl TestJuggler {
    /// Plain HTTP only.
    pub async fn start(table: &'static RouteTable) -> TestJuggler {
        Self::launch(table, None).await
    }

    /// Plain HTTP with the admin listener (`/metrics`, `/status`, the drain API requiring
    /// `token`) on a port of its own.
    pub async fn start_with_admin(table: &'static RouteTable, token: &str) -> TestJuggler {
        let mut juggler = Self::launch(table, None).await;
        let listener = bind_local().await;
        let addr = listener.local_addr().unwrap();
        let clients = vec![(ListenerKind::Http, juggler.addr.to_string())];
        let server = AdminServer::start(
            listener,
            Arc::clone(&juggler.proxy),
            token.to_owned(),
            clients,
        )
        .unwrap();
        juggler.admin = Some((addr, server));
        juggler
    }

    /// The admin listener's address; panics if Juggler was started without one.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .as_ref()
            .expect("Juggler was started without the admin listener (use start_with_admin)")
            .0
    }

    /// Plain HTTP and HTTPS at once, the certificate read from `files` (and reloaded from them).
    pub async fn start_https(table: &'static RouteTable, files: &CertFiles) -> TestJuggler {
        let (acceptor, certs) = tls::from_files(&files.cert, &files.key).unwrap();
        Self::launch(table, Some((acceptor, certs))).await
    }

    async fn launch(
        table: &'static RouteTable,
        tls: Option<(tls::TlsAcceptor, Arc<ReloadableCert>)>,
    ) -> TestJuggler {
        let http = bind_local().await;
        let addr = http.local_addr().unwrap();
        let (https_listener, https) = match tls {
            Some((acceptor, certs)) => {
                let listener = bind_local().await;
                let addr = listener.local_addr().unwrap();
                (
                    Some((listener, Arc::new(acceptor))),
                    Some(HttpsListener { addr, certs }),
                )
            }
            None => (None, None),
        };
        let proxy = Arc::new(Proxy::new(table));
        let (shutdown, signal) = oneshot::channel::<()>();
        let listeners = Listeners {
            http: Some(http),
            https: https_listener,
        };
        let task = tokio::spawn(juggler::run_with(listeners, Arc::clone(&proxy), async {
            let _ = signal.await;
        }));
        TestJuggler {
            addr,
            proxy,
            https,
            admin: None,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// The HTTPS listener's address; panics if Juggler was started without one.
    pub fn https_addr(&self) -> SocketAddr {
        self.tls().addr
    }

    /// The certificate HTTPS serves; panics if Juggler was started without HTTPS.
    pub fn certs(&self) -> &Arc<ReloadableCert> {
        &self.tls().certs
    }

    fn tls(&self) -> &HttpsListener {
        self.https
            .as_ref()
            .expect("Juggler was started without HTTPS (use start_https)")
    }

    /// Open pooled connections per backend, as Juggler counts them.
    pub fn open_connections(&self) -> Vec<usize> {
        open_connections(&self.proxy)
    }

    /// Starts a graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

impl Drop for TestJuggler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The setup most tests share: one hyper backend named `name` behind Juggler, with `pool`
/// connections to it.
pub async fn start_one_backend(
    name: &str,
    pool: usize,
    settings: Settings,
) -> (TestBackend, TestJuggler) {
    let backend = TestBackend::start(name).await;
    let juggler = TestJuggler::start(table(&[backend.addr], pool, settings)).await;
    (backend, juggler)
}

/// `Settings::DEFAULT` with `adjust` applied: the limit or timeout a test is about.
pub fn settings_with(adjust: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = Settings::DEFAULT;
    adjust(&mut settings);
    settings
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
    let servers: Vec<(SocketAddr, u32)> = addresses.iter().map(|addr| (*addr, 1)).collect();
    balanced_table(&servers, pool_size, BalancePolicy::RoundRobin, settings)
}

/// Like [`table`], with a weight for each server and the upstream's balancing policy.
pub fn balanced_table(
    servers: &[(SocketAddr, u32)],
    pool_size: usize,
    balance: BalancePolicy,
    settings: Settings,
) -> &'static RouteTable {
    protected_table(servers, pool_size, balance, Protection::OFF, settings)
}

/// Like [`table`], with the upstream's `pipeline = true`.
pub fn pipelined_table(
    addresses: &[SocketAddr],
    pool_size: usize,
    settings: Settings,
) -> &'static RouteTable {
    let servers: Vec<(SocketAddr, u32)> = addresses.iter().map(|addr| (*addr, 1)).collect();
    upstream_table(
        &servers,
        pool_size,
        BalancePolicy::RoundRobin,
        Protection::OFF,
        true,
        settings,
    )
}

/// Like [`balanced_table`], with the upstream's backend protection (checks, ejection, slow start).
pub fn protected_table(
    servers: &[(SocketAddr, u32)],
    pool_size: usize,
    balance: BalancePolicy,
    protection: Protection,
    settings: Settings,
) -> &'static RouteTable {
    upstream_table(servers, pool_size, balance, protection, false, settings)
}

fn upstream_table(
    servers: &[(SocketAddr, u32)],
    pool_size: usize,
    balance: BalancePolicy,
    protection: Protection,
    pipeline: bool,
    settings: Settings,
) -> &'static RouteTable {
    let backends: Vec<BackendSpec> = servers
        .iter()
        .map(|(addr, weight)| BackendSpec {
            address: Box::leak(addr.to_string().into_boxed_str()),
            pool_size,
            upstream: UpstreamId(0),
            weight: *weight,
        })
        .collect();
    let ids: Vec<BackendId> = (0..servers.len()).map(|i| BackendId(i as u16)).collect();
    let upstreams = vec![Upstream {
        name: "test",
        backends: Box::leak(ids.into_boxed_slice()),
        balance,
        protection,
        pipeline,
    }];
    let routes = vec![
        Route {
            methods: MethodSet::ANY,
            paths: &["/*"],
            upstream: UpstreamId(0),
            retry_non_idempotent: false,
            priority: Priority::Normal,
            source: "test:1",
        },
        Route {
            methods: MethodSet::GET.union(MethodSet::HEAD),
            paths: &["/get-only"],
            upstream: UpstreamId(0),
            retry_non_idempotent: false,
            priority: Priority::Normal,
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

/// Open pooled connections per backend, as `proxy` counts them.
pub fn open_connections(proxy: &Proxy) -> Vec<usize> {
    proxy
        .pools
        .iter()
        .map(|pool| pool.open_connections())
        .collect()
}
