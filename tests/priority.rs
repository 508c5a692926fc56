//! Reserved slots and route priorities (`reserved = r`, `priority = "high" | "normal" | "low"`):
//! with a backend's pool saturated by slow normal requests, a high-priority request is answered at
//! once from the reserved slot, low requests are refused before normal ones when the queue fills,
//! queued requests are served high before normal before low (reserved slots or not), clients that
//! go away while queued leave every count exact, and least_queued sends a normal request where a
//! slot it may take is free, not where only a reserved one is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use juggler::backend::pool::BackendPool;
use juggler::router::MethodSet;
use juggler::table::{
    BalancePolicy, Priority, Protection, Route, RouteId, RouteMatch, RouteTable, UpstreamId,
};
use juggler_testkit::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const POOL: usize = 3;
const RESERVED: usize = 1;
const MAX_QUEUED: usize = 4;

/// By method, so that every priority can reach the backend's `/hold`: `PUT` takes the high route,
/// `DELETE` the low one, everything else the normal one.
fn priority_routes(method: &Method, _path: &str) -> RouteMatch {
    let route = match *method {
        Method::PUT => 1,
        Method::DELETE => 2,
        _ => 0,
    };
    RouteMatch::Found(RouteId(route))
}

const HIGH: Method = Method::PUT;
const NORMAL: Method = Method::GET;
const LOW: Method = Method::DELETE;

/// `method path` on a fresh connection.
async fn request(addr: SocketAddr, method: Method, path: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "juggler.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, request).await.unwrap()
}

/// One backend with `n = pool` of which `reserved` are kept for high routes, a queue of 4 and a
/// queue timeout long enough that nothing times out while the test holds the backend.
fn priority_table(backend: SocketAddr, pool: usize, reserved: usize) -> &'static RouteTable {
    let settings = || {
        settings_with(|settings| {
            settings.queue.max_queued_per_server = MAX_QUEUED;
            settings.queue.timeout = Duration::from_secs(30);
        })
    };
    let protection = Protection {
        reserved,
        ..Protection::OFF
    };
    let base = protected_table(
        &[(backend, 1)],
        pool,
        BalancePolicy::RoundRobin,
        protection,
        settings(),
    );
    let route = |priority, source| Route {
        methods: MethodSet::ANY,
        paths: &["/*"],
        upstream: UpstreamId(0),
        retry_non_idempotent: false,
        priority,
        source,
    };
    let routes = vec![
        route(Priority::Normal, "test:1"),
        route(Priority::High, "test:2"),
        route(Priority::Low, "test:3"),
    ];
    Box::leak(Box::new(RouteTable {
        backends: base.backends,
        upstreams: base.upstreams,
        routes: Box::leak(routes.into_boxed_slice()),
        match_route: priority_routes,
        settings: settings(),
        config_hash: "test",
        sources: &[],
    }))
}

fn spawn(addr: SocketAddr, method: Method, path: &'static str) -> JoinHandle<u16> {
    tokio::spawn(async move { request(addr, method, path).await.status.as_u16() })
}

/// Waits (bounded) until `pool` holds `busy` slots with `queued` requests waiting.
async fn settle(pool: &BackendPool, busy: usize, queued: usize) {
    let settled = wait_for(Duration::from_secs(5), || {
        pool.busy_slots() == busy && pool.queued() == queued
    })
    .await;
    assert!(
        settled.is_some(),
        "expected {busy} busy and {queued} queued, found {} busy and {} queued",
        pool.busy_slots(),
        pool.queued()
    );
}

#[juggler_testkit::test]
async fn a_high_request_takes_the_reserved_slot_while_normal_ones_queue_and_low_ones_go_first() {
    let backend = TestBackend::start("a").await;
    let juggler = TestJuggler::start(priority_table(backend.addr, POOL, RESERVED)).await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    assert_eq!(pool.reserved(), RESERVED);

    // Four slow normal requests: two hold the unreserved slots, two queue.
    let normal: Vec<JoinHandle<u16>> = (0..4)
        .map(|_| spawn(juggler.addr, NORMAL, "/hold"))
        .collect();
    settle(&pool, POOL - RESERVED, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        backend.stats.in_flight.get(),
        POOL - RESERVED,
        "normal traffic took a reserved slot"
    );

    // A high request is answered at once from the reserved slot.
    let started = Instant::now();
    let high = tokio::time::timeout(Duration::from_secs(2), request(juggler.addr, HIGH, "/now"))
        .await
        .expect("the high request waited behind normal traffic");
    let high_took = started.elapsed();
    println!("high request answered in {high_took:?} with 2 normal requests held, 2 queued");
    assert_eq!(high.status, 200);
    assert_eq!(high.text(), "a");

    // The queue is half full: a low request is refused while a normal one still queues.
    let low = request(juggler.addr, LOW, "/later").await;
    assert_eq!(low.status, 503, "a low request queued in a half-full queue");
    assert_eq!(
        pool.queued(),
        2,
        "the refused low request left the queue count alone"
    );
    let fifth = spawn(juggler.addr, NORMAL, "/hold");
    settle(&pool, POOL - RESERVED, 3).await;

    // A client that goes away while queued gives its place back.
    let mut gone = TcpStream::connect(juggler.addr).await.unwrap();
    gone.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    settle(&pool, POOL - RESERVED, 4).await;
    drop(gone);
    settle(&pool, POOL - RESERVED, 3).await;
    assert!(backend.open() <= POOL, "{} connections", backend.open());

    backend.stats.released.send_replace(true);
    for request in normal.into_iter().chain([fifth]) {
        assert_eq!(request.await.unwrap(), 200);
    }
    settle(&pool, 0, 0).await;
    assert!(backend.open() <= POOL);
    assert!(backend.stats.max_in_flight.get() <= POOL);

    // Every share came back: the same split holds again.
    backend.stats.released.send_replace(false);
    let again: Vec<JoinHandle<u16>> = (0..3)
        .map(|_| spawn(juggler.addr, NORMAL, "/hold"))
        .collect();
    settle(&pool, POOL - RESERVED, 1).await;
    let high = tokio::time::timeout(
        Duration::from_secs(2),
        request(juggler.addr, HIGH, "/again"),
    )
    .await
    .expect("a share leaked: the high request waited");
    assert_eq!(high.status, 200);
    backend.stats.released.send_replace(true);
    for request in again {
        assert_eq!(request.await.unwrap(), 200);
    }
    settle(&pool, 0, 0).await;
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn high_requests_may_use_every_slot_and_wait_only_for_each_other() {
    let backend = TestBackend::start("a").await;
    let juggler = TestJuggler::start(priority_table(backend.addr, POOL, RESERVED)).await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);

    // Three held high requests take all three slots, the reserved one included.
    let high: Vec<JoinHandle<u16>> = (0..POOL)
        .map(|_| spawn(juggler.addr, HIGH, "/hold"))
        .collect();
    settle(&pool, POOL, 0).await;
    // A normal request queues (behind its share, which is free, then for a slot) and so does a
    // fourth high one; the backend never sees more than `n`.
    let normal = spawn(juggler.addr, NORMAL, "/hold");
    settle(&pool, POOL, 1).await;
    let fourth = spawn(juggler.addr, HIGH, "/hold");
    settle(&pool, POOL, 2).await;
    assert_eq!(backend.stats.in_flight.get(), POOL);
    backend.stats.released.send_replace(true);
    for request in high.into_iter().chain([normal, fourth]) {
        assert_eq!(request.await.unwrap(), 200);
    }
    settle(&pool, 0, 0).await;
    assert!(backend.stats.max_in_flight.get() <= POOL);
    assert!(backend.open() <= POOL);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn least_queued_counts_only_the_slots_a_request_may_take() {
    // Two backends, n = 2 with 1 reserved: a normal request may take one slot of each.
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let protection = Protection {
        reserved: RESERVED,
        ..Protection::OFF
    };
    let settings = settings_with(|settings| settings.queue.timeout = Duration::from_secs(30));
    let table = protected_table(
        &[(a.addr, 1), (b.addr, 1)],
        2,
        BalancePolicy::LeastQueued,
        protection,
        settings,
    );
    let juggler = TestJuggler::start(table).await;
    let pools = [
        Arc::clone(&juggler.proxy.pools[0]),
        Arc::clone(&juggler.proxy.pools[1]),
    ];

    // Equally free backends take turns: a slow request goes to one, a quick one to the other.
    let first = spawn(juggler.addr, NORMAL, "/hold");
    let held = wait_for(Duration::from_secs(5), || {
        pools.iter().map(|pool| pool.busy_slots()).sum::<usize>() == 1
    })
    .await;
    assert!(held.is_some(), "the first request never reached a backend");
    assert_eq!(request(juggler.addr, NORMAL, "/now").await.status, 200);

    // The turn is back at the busy backend, whose one free slot is reserved: a normal request
    // must go to the other one rather than queue for a share.
    let second = spawn(juggler.addr, NORMAL, "/hold");
    let spread = wait_for(Duration::from_secs(5), || {
        pools.iter().all(|pool| pool.busy_slots() == 1)
    })
    .await;
    let queued: Vec<usize> = pools.iter().map(|pool| pool.queued()).collect();
    println!("after the second slow request: queued {queued:?}");
    assert!(
        spread.is_some(),
        "both slow requests on one backend: queued {queued:?}"
    );
    assert_eq!(queued, [0, 0]);

    a.stats.released.send_replace(true);
    b.stats.released.send_replace(true);
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn without_reserved_slots_the_queue_still_serves_high_then_normal_then_low() {
    let backend = TestBackend::start("a").await;
    let juggler = TestJuggler::start(priority_table(backend.addr, 1, 0)).await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    assert_eq!(pool.reserved(), 0);

    // A slow normal request holds the only slot; then low, normal and high queue, in that order.
    let held = spawn(juggler.addr, NORMAL, "/hold");
    settle(&pool, 1, 0).await;
    let mut queued = Vec::new();
    for (count, (method, path)) in [(LOW, "/low"), (NORMAL, "/normal"), (HIGH, "/high")]
        .into_iter()
        .enumerate()
    {
        queued.push(spawn(juggler.addr, method, path));
        settle(&pool, 1, count + 1).await;
    }

    backend.stats.released.send_replace(true);
    assert_eq!(held.await.unwrap(), 200);
    for request in queued {
        assert_eq!(request.await.unwrap(), 200);
    }
    let served = backend.stats.paths();
    println!("served in this order: {served:?}");
    assert_eq!(served, ["/hold", "/high", "/normal", "/low"]);
    settle(&pool, 0, 0).await;
    assert!(backend.stats.max_in_flight.get() <= 1);
    juggler.shutdown().await.unwrap();
}
