//! Zero-downtime upgrade (issue 11), two Juggler instances in one test process over real sockets:
//! the successor takes over the listeners, the idle keep-alive clients and the pooled backend
//! connections of the running instance, which then exits. Under load nothing fails, no POST is
//! sent twice, and no backend ever sees more than `n` connections from both together.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use juggler::table::{RouteId, RouteMatch, Settings};
use juggler::upgrade;
use juggler_testkit::upgrade::{posts_received, variant, Instance, Load, MostOpen};
use juggler_testkit::*;

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

#[juggler_testkit::test]
async fn five_takeovers_under_load_fail_nothing_and_keep_the_backend_bound() {
    const POOL: usize = 3;
    // The phase log lines (handed over: clients, backend connections) show in --nocapture runs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("juggler=info,juggler::access=off")
        .with_test_writer()
        .try_init();
    let backends = Arc::new(three_backends().await);
    let base = table(&addrs_of(&backends[..]), POOL, Settings::DEFAULT);
    let (table_a, table_b) = (
        variant(base, routes_a, "tableaaa"),
        variant(base, routes_b, "tablebbb"),
    );
    let dir = TempDir::new("upgrade-load");
    let mut current = Instance::start(table_a, &dir.file("juggler.sock"), None).await;
    let addr = current.http;
    let most = MostOpen::sample(Arc::clone(&backends));
    let load = Load::start(addr, 64);

    let mut seen_b = 0;
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = if round % 2 == 0 { table_b } else { table_a };
        current = current.replaced_by(next).await;
        let probe = get(addr, "/only-b").await.unwrap().status;
        let expected = if next.config_hash == "tablebbb" {
            200
        } else {
            404
        };
        assert_eq!(probe, expected, "round {round}: answered by the new table");
        seen_b += usize::from(probe == 200);
        let accepted: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
        let open: Vec<usize> = backends.iter().map(|b| b.open()).collect();
        println!(
            "takeover {round}: now {}, backends accepted {accepted:?}, open {open:?}",
            next.config_hash
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let result = load.finish().await;
    let (posts, distinct) = posts_received(&backends[..]);
    let most = most.most();
    println!(
        "{} requests, {} failed, {posts} POSTs received ({distinct} distinct), most open per \
         backend {most}, takeovers to table B {seen_b}",
        result.requests, result.failures
    );
    assert_eq!(result.failures, 0);
    assert_eq!(posts, distinct, "a POST reached a backend twice");
    assert_eq!(posts, result.posts_sent);
    assert!(
        most <= POOL,
        "a backend saw {most} connections, pool {POOL}"
    );
    assert_eq!(seen_b, 3);
    // The pools moved across all five takeovers: no backend ever had to accept a new one.
    for backend in backends.iter() {
        assert_eq!(backend.accepted(), POOL);
    }
    current.stop().await;
}

#[juggler_testkit::test]
async fn a_successor_that_never_accepts_leaves_the_running_instance_untouched() {
    let backend = TestBackend::start("server").await;
    let base = table(&[backend.addr], 2, Settings::DEFAULT);
    let dir = TempDir::new("upgrade-abandoned");
    let running = Instance::start(base, &dir.file("juggler.sock"), None).await;
    let mode = std::fs::metadata(&running.control)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    let mut client = Client::connect(running.http).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);

    // A new binary that fails after receiving the listeners (say, a broken certificate): it
    // exits without ever saying it accepts.
    let predecessor = upgrade::connect(
        &running.control,
        "broken",
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    drop(predecessor);
    for _ in 0..20 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
        assert_eq!(get(running.http, "/").await.unwrap().status, 200);
    }
    // And the running instance can still be taken over afterwards.
    let successor = running.replaced_by(base).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(backend.accepted(), 2);
    successor.stop().await;
}

/// A running process that does not answer HELLO (it is still taking over from the one before it,
/// or hung) is waited for at most the patience given, then the upgrade says why it gave up.
#[juggler_testkit::test(current_thread)]
async fn upgrade_gives_up_on_a_running_juggler_that_does_not_answer() {
    let dir = TempDir::new("upgrade-silent");
    let path = dir.file("juggler.sock");
    let control = tokio::net::UnixListener::bind(&path).unwrap();
    let holder = tokio::spawn(async move {
        // Accepted and read from, never answered.
        let (mut stream, _) = control.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
    });
    let started = std::time::Instant::now();
    let patience = std::time::Duration::from_millis(1500);
    let error = upgrade::connect(&path, "x", patience).await.unwrap_err();
    let waited = started.elapsed();
    println!("{error} after {waited:?}");
    assert!(error.to_string().contains("still taking over"), "{error}");
    assert!(
        waited >= patience && waited < patience + std::time::Duration::from_secs(5),
        "gave up after {waited:?}"
    );
    holder.abort();
}

#[juggler_testkit::test(current_thread)]
async fn upgrade_with_nothing_to_take_over_says_so() {
    let dir = TempDir::new("upgrade-nothing");
    let error = upgrade::connect(
        &dir.file("juggler.sock"),
        "x",
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    println!("{error}");
    assert!(error
        .to_string()
        .contains("no running Juggler to take over"));
}
