//! Two Juggler instances in one test process for upgrade tests: a running [`Instance`] on a
//! control socket, a successor that takes it over ([`Instance::take_over`]), keep-alive load that
//! counts failures and POST ids ([`Load`]), and a sampler of the most connections any backend had
//! open at once ([`MostOpen`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use juggler::proxy::Proxy;
use juggler::table::RouteTable;
use juggler::tls::{self, TlsAcceptor};
use juggler::upgrade::{self, Predecessor};
use juggler::Listeners;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::{bind_local, Backend};
use crate::certs::CertFiles;
use crate::client::{post, Client};
use crate::hyper_backend::BackendStats;
use crate::launcher::open_connections;

/// A table like `base` with another route matcher and config hash (two "builds" of one config).
pub fn variant(
    base: &'static RouteTable,
    match_route: fn(&http::Method, &str) -> juggler::table::RouteMatch,
    config_hash: &'static str,
) -> &'static RouteTable {
    Box::leak(Box::new(RouteTable {
        backends: base.backends,
        upstreams: base.upstreams,
        routes: base.routes,
        match_route,
        settings: juggler::table::Settings::DEFAULT,
        config_hash,
        sources: base.sources,
    }))
}

/// One running Juggler serving through `upgrade::serve`.
pub struct Instance {
    pub proxy: Arc<Proxy>,
    /// The plain listener's address (the same across takeovers).
    pub http: SocketAddr,
    /// The HTTPS listener's address, if it has one.
    pub https: Option<SocketAddr>,
    /// The admin listener's address, if it has one (its drain token is [`ADMIN_TOKEN`]).
    pub admin: Option<SocketAddr>,
    pub control: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// The bearer token of every instance's admin listener.
pub const ADMIN_TOKEN: &str = "upgrade-test-token";

impl Instance {
    /// A fresh instance on new listeners (HTTPS too when `certs` is given), its control socket
    /// at `control`.
    pub async fn start(
        table: &'static RouteTable,
        control: &Path,
        certs: Option<&CertFiles>,
    ) -> Instance {
        Self::start_on(table, control, certs, false).await
    }

    /// Like [`Instance::start`] without HTTPS, with an admin listener.
    pub async fn start_with_admin(table: &'static RouteTable, control: &Path) -> Instance {
        Self::start_on(table, control, None, true).await
    }

    async fn start_on(
        table: &'static RouteTable,
        control: &Path,
        certs: Option<&CertFiles>,
        with_admin: bool,
    ) -> Instance {
        let admin = match with_admin {
            true => Some(bind_local().await),
            false => None,
        };
        let http = bind_local().await;
        let https = match certs {
            Some(files) => Some((bind_local().await, acceptor(files))),
            None => None,
        };
        let (http_addr, https_addr) = (
            http.local_addr().unwrap(),
            https.as_ref().map(|(l, _)| l.local_addr().unwrap()),
        );
        let listeners = Listeners {
            http: Some(http),
            https,
        };
        let instance = Instance::spawn(
            listeners,
            admin,
            table,
            (http_addr, https_addr),
            control.to_owned(),
            None,
        );
        // Serving (its control socket bound) before anyone connects; a loaded machine may take a
        // while to run the task.
        for _ in 0..2000 {
            if tokio::net::UnixStream::connect(control).await.is_ok() {
                return instance;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "the instance never bound its control socket {}",
            control.display()
        );
    }

    /// A successor with `table` taking over from the instance on `self`'s control socket.
    pub async fn take_over(
        &self,
        table: &'static RouteTable,
        certs: Option<&CertFiles>,
    ) -> Instance {
        let predecessor = upgrade::connect(
            &self.control,
            table.config_hash,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
        self.successor(predecessor, table, certs)
    }

    /// A successor built from an already received `predecessor`.
    pub fn successor(
        &self,
        mut predecessor: Predecessor,
        table: &'static RouteTable,
        certs: Option<&CertFiles>,
    ) -> Instance {
        let http = predecessor
            .take_listener("http", &self.http.to_string())
            .unwrap();
        let https = self.https.map(|addr| {
            let listener = predecessor
                .take_listener("https", &addr.to_string())
                .unwrap();
            (
                listener,
                acceptor(certs.expect("an HTTPS instance needs certificates")),
            )
        });
        let listeners = Listeners {
            http: Some(http),
            https,
        };
        let admin = self.admin.map(|addr| {
            predecessor
                .take_listener("admin", &addr.to_string())
                .unwrap()
        });
        let addrs = (self.http, self.https);
        Instance::spawn(
            listeners,
            admin,
            table,
            addrs,
            self.control.clone(),
            Some(predecessor),
        )
    }

    fn spawn(
        listeners: Listeners,
        admin: Option<tokio::net::TcpListener>,
        table: &'static RouteTable,
        (http, https): (SocketAddr, Option<SocketAddr>),
        control: PathBuf,
        predecessor: Option<Predecessor>,
    ) -> Instance {
        let proxy = Arc::new(Proxy::new(table));
        let admin_addr = admin
            .as_ref()
            .map(|listener| listener.local_addr().unwrap());
        let admin = admin.map(|listener| (listener, ADMIN_TOKEN.to_owned()));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&proxy);
        let socket = control.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            upgrade::serve(listeners, admin, serving, shutdown, &socket, predecessor).await
        });
        Instance {
            proxy,
            http,
            https,
            admin: admin_addr,
            control,
            stop: Some(stop),
            task,
        }
    }

    /// A successor with `table` (and no certificates) taking over from `self`, once `self` has
    /// exited (within 10 s).
    pub async fn replaced_by(self, table: &'static RouteTable) -> Instance {
        let successor = self.take_over(table, None).await;
        self.exited(Duration::from_secs(10)).await;
        successor
    }

    /// Waits for the instance to exit by itself (after handing everything over).
    pub async fn exited(mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the predecessor did not exit after the takeover")
            .unwrap()
            .unwrap();
    }

    /// Open pooled connections per backend, as this instance counts them.
    pub fn open_connections(&self) -> Vec<usize> {
        open_connections(&self.proxy)
    }

    /// Ends the instance at once, as `kill -9` would end a process: its control connection,
    /// listeners and pools close without a word (its detached connection tasks, which a real
    /// kill would also end, are the one difference).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Shuts the instance down gracefully.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn acceptor(files: &CertFiles) -> Arc<TlsAcceptor> {
    Arc::new(tls::from_files(&files.cert, &files.key).unwrap().0)
}

/// Samples, every millisecond until dropped, the most connections any of `backends` had open.
pub struct MostOpen {
    most: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl MostOpen {
    pub fn sample(backends: Arc<[Backend<BackendStats>; 3]>) -> MostOpen {
        let most = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&most);
        let task = tokio::spawn(async move {
            loop {
                for backend in backends.iter() {
                    seen.fetch_max(backend.open(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        MostOpen { most, task }
    }

    pub fn most(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for MostOpen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keep-alive clients sending a GET and a POST (with its own id in the path) back to back.
pub struct Load {
    running: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    clients: Vec<JoinHandle<usize>>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadResult {
    pub requests: usize,
    pub failures: usize,
    pub posts_sent: usize,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let failures = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|index| {
                let (running, failures) = (Arc::clone(&running), Arc::clone(&failures));
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    let mut rounds = 0usize;
                    while running.load(Ordering::Relaxed) {
                        let get = client.get("/get").await;
                        let path = format!("/post-{index}-{rounds}");
                        let post = client.send(post(&path, Bytes::from_static(b"body"))).await;
                        rounds += 1;
                        for answer in [get, post] {
                            if !matches!(answer, Ok(ref answer) if answer.status == 200) {
                                failures.fetch_add(1, Ordering::Relaxed);
                                println!("client {index}: {answer:?}");
                                client = Client::connect(addr).await;
                            }
                        }
                    }
                    rounds
                })
            })
            .collect();
        Load {
            running,
            failures,
            clients,
        }
    }

    pub async fn finish(self) -> LoadResult {
        self.running.store(false, Ordering::Relaxed);
        let mut rounds = 0;
        for client in self.clients {
            rounds += client.await.unwrap();
        }
        LoadResult {
            requests: rounds * 2,
            failures: self.failures.load(Ordering::Relaxed),
            posts_sent: rounds,
        }
    }
}

/// The POST paths `backends` received, and how many distinct ones.
pub fn posts_received(backends: &[Backend<BackendStats>]) -> (usize, usize) {
    let posts: Vec<String> = backends
        .iter()
        .flat_map(|backend| backend.stats.paths())
        .filter(|path| path.starts_with("/post-"))
        .collect();
    let distinct = posts.iter().collect::<HashSet<_>>().len();
    (posts.len(), distinct)
}
