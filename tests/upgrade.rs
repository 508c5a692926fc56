//! Zero-downtime upgrade (issue 11), two Juggler instances in one test process over real sockets:
//! the successor takes over the listeners, the idle keep-alive clients and the pooled backend
//! connections of the running instance, which then exits. Under load nothing fails, no POST is
//! sent twice, and no backend ever sees more than `n` connections from both together.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use juggler::proxy::Proxy;
use juggler::table::{RouteId, RouteMatch, RouteTable, Settings};
use juggler::upgrade;
use juggler::Listeners;
use juggler_testkit::certs::TempDir;
use juggler_testkit::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Table B answers `/only-b`; table A does not (404). Everything else goes to the one upstream.
fn routes_a(method: &Method, path: &str) -> RouteMatch {
    if path == "/only-b" {
        return RouteMatch::NotFound;
    }
    test_routes(method, path)
}

fn routes_b(_method: &Method, _path: &str) -> RouteMatch {
    RouteMatch::Found(RouteId(0))
}

fn tables(
    addrs: &[std::net::SocketAddr],
    pool: usize,
) -> (&'static RouteTable, &'static RouteTable) {
    let base = table(addrs, pool, Settings::DEFAULT);
    let variant = |match_route, config_hash| -> &'static RouteTable {
        Box::leak(Box::new(RouteTable {
            backends: base.backends,
            upstreams: base.upstreams,
            routes: base.routes,
            match_route,
            settings: Settings::DEFAULT,
            config_hash,
            sources: base.sources,
        }))
    };
    (variant(routes_a, "tableaaa"), variant(routes_b, "tablebbb"))
}

/// One running instance: its serve task and the way to stop it.
struct Instance {
    proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Instance {
    fn spawn(
        listeners: Listeners,
        table: &'static RouteTable,
        control: PathBuf,
        predecessor: Option<upgrade::Predecessor>,
    ) -> Instance {
        let proxy = Arc::new(Proxy::new(table));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&proxy);
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            upgrade::serve(listeners, serving, shutdown, &control, predecessor).await
        });
        Instance {
            proxy,
            stop: Some(stop),
            task,
        }
    }

    /// Waits for the instance to exit by itself (after handing everything over).
    async fn exited(mut self, within: Duration) {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the predecessor did not exit after the takeover")
            .unwrap()
            .unwrap();
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Takes over from the instance on `control` with `table`.
async fn take_over(table: &'static RouteTable, control: &Path, http: &str) -> Instance {
    let mut predecessor = upgrade::connect(control, table.config_hash).await.unwrap();
    let listeners = Listeners {
        http: Some(predecessor.take_listener("http", http).unwrap()),
        https: None,
    };
    Instance::spawn(listeners, table, control.to_owned(), Some(predecessor))
}

#[juggler_testkit::test]
async fn five_takeovers_under_load_fail_nothing_and_keep_the_backend_bound() {
    const POOL: usize = 3;
    const CLIENTS: usize = 64;
    // The phase log lines (handed over: clients, backend connections) show in --nocapture runs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("juggler=info,juggler::access=off")
        .with_test_writer()
        .try_init();
    let backends = Arc::new(three_backends().await);
    let (table_a, table_b) = tables(&addrs_of(&backends[..]), POOL);
    let dir = TempDir::new("upgrade-load");
    let control = dir.file("juggler.sock");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = addr.to_string();
    let listeners = Listeners {
        http: Some(listener),
        https: None,
    };
    let mut current = Instance::spawn(listeners, table_a, control.clone(), None);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Every millisecond: the most connections any backend has open from Juggler.
    let running = Arc::new(AtomicBool::new(true));
    let most_open = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let backends = Arc::clone(&backends);
        let (running, most_open) = (Arc::clone(&running), Arc::clone(&most_open));
        async move {
            while running.load(Ordering::Relaxed) {
                for backend in backends.iter() {
                    most_open.fetch_max(backend.open(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    // 64 keep-alive clients, GETs and POSTs back to back, each POST with its own id.
    let failures = Arc::new(AtomicUsize::new(0));
    let posts_sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client_index in 0..CLIENTS {
        let (running, failures, posts_sent) = (
            Arc::clone(&running),
            Arc::clone(&failures),
            Arc::clone(&posts_sent),
        );
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut sent = 0usize;
            while running.load(Ordering::Relaxed) {
                let get = client.get("/get").await;
                let path = format!("/post-{client_index}-{sent}");
                let post = client.send(post(&path, Bytes::from_static(b"body"))).await;
                posts_sent.fetch_add(1, Ordering::Relaxed);
                sent += 1;
                for answer in [get, post] {
                    if !matches!(answer, Ok(ref answer) if answer.status == 200) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        println!("client {client_index}: {answer:?}");
                        client = Client::connect(addr).await;
                    }
                }
            }
            sent
        }));
    }

    let mut seen_b = 0;
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = if round % 2 == 0 { table_b } else { table_a };
        let successor = take_over(next, &control, &http).await;
        current.exited(Duration::from_secs(10)).await;
        current = successor;
        let probe = get(addr, "/only-b").await.unwrap().status;
        let expected = if next.config_hash == "tablebbb" {
            200
        } else {
            404
        };
        assert_eq!(probe, expected, "round {round}: answered by the new table");
        seen_b += usize::from(probe == 200);
        println!(
            "takeover {round}: now {}, backends accepted {:?}, open {:?}",
            next.config_hash,
            backends.iter().map(|b| b.accepted()).collect::<Vec<_>>(),
            backends.iter().map(|b| b.open()).collect::<Vec<_>>(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    let mut requests = 0;
    for client in clients {
        requests += client.await.unwrap() * 2;
    }
    sampler.await.unwrap();

    let posts: Vec<String> = backends
        .iter()
        .flat_map(|b| b.stats.paths())
        .filter(|path| path.starts_with("/post-"))
        .collect();
    let distinct: std::collections::HashSet<&String> = posts.iter().collect();
    let most = most_open.load(Ordering::Relaxed);
    println!(
        "{requests} requests, {} failed, {} POSTs received ({} distinct), most open per \
         backend {most}, takeovers to table B {seen_b}",
        failures.load(Ordering::Relaxed),
        posts.len(),
        distinct.len()
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert_eq!(
        posts.len(),
        distinct.len(),
        "a POST reached a backend twice"
    );
    assert_eq!(posts.len(), posts_sent.load(Ordering::Relaxed));
    assert!(
        most <= POOL,
        "a backend saw {most} connections, pool {POOL}"
    );
    assert_eq!(seen_b, 3);
    // The pools moved across all five takeovers: no backend ever had to accept a new one.
    for backend in backends.iter() {
        assert_eq!(backend.accepted(), POOL);
    }
    assert_eq!(current.proxy.pools.len(), 3);
    current.stop().await;
}

#[juggler_testkit::test]
async fn a_successor_that_never_accepts_leaves_the_running_instance_untouched() {
    let backend = TestBackend::start("server").await;
    let (table_a, _) = tables(&[backend.addr], 2);
    let dir = TempDir::new("upgrade-abandoned");
    let control = dir.file("juggler.sock");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listeners = Listeners {
        http: Some(listener),
        https: None,
    };
    let running = Instance::spawn(listeners, table_a, control.clone(), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = Client::connect(addr).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);

    // A new binary that fails after receiving the listeners (say, a broken certificate):
    // it exits without ever saying it accepts.
    let predecessor = upgrade::connect(&control, "broken").await.unwrap();
    drop(predecessor);
    for _ in 0..20 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
        assert_eq!(get(addr, "/").await.unwrap().status, 200);
    }
    // And the running instance can still be taken over afterwards.
    let http = addr.to_string();
    let successor = take_over(table_a, &control, &http).await;
    running.exited(Duration::from_secs(10)).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(backend.accepted(), 2);
    successor.stop().await;
}

#[juggler_testkit::test(current_thread)]
async fn upgrade_with_nothing_to_take_over_says_so() {
    let dir = TempDir::new("upgrade-nothing");
    let error = upgrade::connect(&dir.file("juggler.sock"), "x")
        .await
        .unwrap_err();
    println!("{error}");
    assert!(error
        .to_string()
        .contains("no running Juggler to take over"));
}
