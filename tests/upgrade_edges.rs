//! Upgrade edge cases (issue 11): pool sizes that change across a takeover, TLS and HTTP/2
//! clients that cannot move, and the old side going away mid-takeover.

use std::sync::Arc;
use std::time::Duration;

use juggler::table::{RouteMatch, RouteTable, Settings};
use juggler::upgrade::{Predecessor, UpgradeError};
use juggler_testkit::tls::{https_client, H2Client};
use juggler_testkit::upgrade::{posts_received, variant, Instance, Load, MostOpen};
use juggler_testkit::*;

/// One backend with a pool of 3, and a running instance for it (with an admin listener when
/// `with_admin`) with its control socket in a directory of its own (kept alive by the caller).
async fn one_backend_instance(
    label: &str,
    with_admin: bool,
) -> (TestBackend, &'static RouteTable, TempDir, Instance) {
    let backend = TestBackend::start("server").await;
    let base = table(&[backend.addr], 3, Settings::DEFAULT);
    let dir = TempDir::new(label);
    let control = dir.file("juggler.sock");
    let instance = match with_admin {
        true => Instance::start_with_admin(base, &control).await,
        false => Instance::start(base, &control, None).await,
    };
    (backend, base, dir, instance)
}

/// Waits until every backend has exactly `n` connections open, or fails after three seconds.
async fn settle_at(backends: &[Backend<BackendStats>], n: usize) {
    for _ in 0..300 {
        if backends.iter().all(|backend| backend.open() == n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open: Vec<usize> = backends.iter().map(|backend| backend.open()).collect();
    panic!("backends never settled at {n} connections each: {open:?}");
}

/// `from` replaced by an instance for `table`, whose pools settle at `pool`; returns it and the
/// most connections any backend had open from the start of the takeover until then.
async fn replaced_watching(
    backends: &Arc<[Backend<BackendStats>; 3]>,
    from: Instance,
    table: &'static RouteTable,
    pool: usize,
) -> (Instance, usize) {
    let most = MostOpen::sample(Arc::clone(backends));
    let successor = from.replaced_by(table).await;
    settle_at(&backends[..], pool).await;
    (successor, most.most())
}

#[juggler_testkit::test]
async fn pool_sizes_grow_and_shrink_across_takeovers_within_the_larger_bound() {
    let backends = Arc::new(three_backends().await);
    let addrs = addrs_of(&backends[..]);
    let five = table(&addrs, 5, Settings::DEFAULT);
    let eight = table(&addrs, 8, Settings::DEFAULT);
    let three = table(&addrs, 3, Settings::DEFAULT);
    let dir = TempDir::new("upgrade-pool-sizes");
    let first = Instance::start(five, &dir.file("juggler.sock"), None).await;
    settle_at(&backends[..], 5).await;
    let load = Load::start(first.http, 16);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (second, grow_most) = replaced_watching(&backends, first, eight, 8).await;
    let (third, shrink_most) = replaced_watching(&backends, second, three, 3).await;

    let result = load.finish().await;
    let (posts, distinct) = posts_received(&backends[..]);
    println!(
        "5 → 8: most open per backend {grow_most}; 8 → 3: {shrink_most}; {result:?}, \
         {posts} POSTs ({distinct} distinct); pools now {:?}",
        third.open_connections()
    );
    assert!(grow_most <= 8, "5 → 8 saw {grow_most}");
    assert!(shrink_most <= 8, "8 → 3 saw {shrink_most}");
    assert_eq!(result.failures, 0);
    assert_eq!((posts, distinct), (result.posts_sent, result.posts_sent));
    assert_eq!(third.open_connections(), [3, 3, 3]);
    // Growing opened exactly the three extra per backend; shrinking opened none.
    for backend in backends.iter() {
        assert_eq!(backend.accepted(), 8);
    }
    third.stop().await;
}

fn routes_b(_: &http::Method, _: &str) -> RouteMatch {
    RouteMatch::Found(juggler::table::RouteId(0))
}

#[juggler_testkit::test]
async fn tls_clients_finish_in_flight_work_then_move_to_the_successor() {
    let backend = TestBackend::start("server").await;
    let base = table(&[backend.addr], 4, Settings::DEFAULT);
    let next = variant(base, routes_b, "tablebbb");
    let (cert, files) = CertFiles::generate("upgrade-tls");
    let dir = TempDir::new("upgrade-tls");
    let first = Instance::start(base, &dir.file("juggler.sock"), Some(&files)).await;
    let https = first.https.unwrap();

    // HTTP/2: ten streams in flight on one connection while the takeover happens.
    let h2 = H2Client::connect(https, &cert).await;
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let h2 = h2.clone();
            tokio::spawn(async move { h2.get("/sleep/300").await })
        })
        .collect();
    // HTTP/1.1 over TLS: one request now, one after the takeover began.
    let mut h1 = https_client(https, &cert).await;
    assert_eq!(h1.get("/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let second = first.take_over(next, Some(&files)).await;
    for stream in streams {
        assert_eq!(
            stream.await.unwrap().unwrap().status,
            200,
            "stream in flight"
        );
    }
    // The old connection got GOAWAY and, its streams done, closed: new streams need a new
    // connection, to the new table. Waited for, not probed with a request: one sent just as the
    // client took the close in was, about 1 run in 200 under load, neither answered nor failed
    // (the test hung to its bound), held in hyper's client dispatch without reaching h2.
    let closed = wait_for(Duration::from_secs(5), || h2.is_closed()).await;
    assert!(closed.is_some(), "old HTTP/2 connection still open");
    assert!(
        h2.get("/only-b").await.is_err(),
        "a stream on a closed connection"
    );
    let fresh = H2Client::connect(https, &cert).await;
    assert_eq!(fresh.get("/only-b").await.unwrap().status, 200);
    // The TLS HTTP/1.1 client's next response closes its connection; it then reconnects.
    let last = h1.get("/").await.unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(
        last.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    let mut again = https_client(https, &cert).await;
    assert_eq!(again.get("/only-b").await.unwrap().status, 200);
    first.exited(Duration::from_secs(10)).await;
    println!(
        "backend accepted {} connections for a pool of 4",
        backend.accepted()
    );
    // The late TLS request went to the successor, whose pool served it: no extra connection.
    assert_eq!(backend.accepted(), 4);
    second.stop().await;
}

/// The new side dies right after it started accepting: the old one accepts again and serves on
/// with the connections it still holds.
#[juggler_testkit::test]
async fn the_old_side_serves_on_when_the_new_one_dies_mid_takeover() {
    let (_backend, base, _dir, first) = one_backend_instance("upgrade-new-dies", false).await;
    let mut client = Client::connect(first.http).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);

    // The new process says hello and dies before it accepts. (Starting a real successor and
    // killing it raced with the takeover: on a loaded machine the successor sometimes finished
    // taking everything over first, the old side rightly exited, and the test saw a refused port.)
    let predecessor = juggler::upgrade::connect(
        &first.control,
        base.config_hash,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    drop(predecessor);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        assert_eq!(get(first.http, "/").await.unwrap().status, 200);
    }
    assert_eq!(first.open_connections(), [3]);
    // And it can still be taken over by a successor that lives.
    let third = first.replaced_by(base).await;
    assert_eq!(get(third.http, "/").await.unwrap().status, 200);
    third.stop().await;
}

/// The old side dies mid-takeover: the new one stops waiting for its connections and opens its
/// own.
#[juggler_testkit::test]
async fn the_new_side_serves_alone_when_the_old_one_dies_mid_takeover() {
    let (_backend, base, _dir, first) = one_backend_instance("upgrade-old-dies", false).await;
    let http = first.http;
    let predecessor =
        juggler::upgrade::connect(&first.control, "next", std::time::Duration::from_secs(60))
            .await
            .unwrap();
    let second = first.successor(predecessor, base, None);
    first.kill().await;
    for _ in 0..20 {
        assert_eq!(get(http, "/").await.unwrap().status, 200);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(second.open_connections(), [3]);
    second.stop().await;
}

/// A successor that knocks while the running instance still receives from its own predecessor
/// waits until that one has handed everything over, so nothing the first instance hands over is
/// left unread in a link the second closes, and the first does not serve on beside the third.
#[juggler_testkit::test]
async fn a_takeover_waits_until_the_one_before_it_is_done() {
    let (backend, base, _dir, first) = one_backend_instance("upgrade-chain", false).await;
    let http = first.http;
    // A request the backend answers only when told keeps its client at the first instance.
    let mut client = Client::connect(http).await;
    let held = tokio::spawn(async move {
        let answer = client.get("/hold").await.map(|answer| answer.status);
        (client, answer)
    });
    for _ in 0..300 {
        if backend.stats.in_flight.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        backend.stats.in_flight.get(),
        1,
        "the held request never arrived"
    );

    let before = control_socket(&first.control);
    let second = first.take_over(base, None).await;
    // The second instance's control socket, not the first's still at the path until it binds.
    for _ in 0..300 {
        if control_socket(&second.control).is_some_and(|now| Some(now) != before) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(
        control_socket(&second.control),
        before,
        "the second never bound its own"
    );
    let stats = Arc::clone(&backend.stats);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stats.released.send_replace(true);
    });
    // Only once the first instance has handed over the held client, after its answer.
    let predecessor = connect_when_listening(&second.control, base.config_hash).await;
    let third = second.successor(predecessor, base, None);
    assert!(
        *backend.stats.released.borrow(),
        "the third instance took over before the first was done"
    );
    release.await.unwrap();
    first.exited(Duration::from_secs(10)).await;
    second.exited(Duration::from_secs(10)).await;
    let (mut client, answer) = held.await.unwrap();
    assert_eq!(answer.unwrap(), 200);
    // The same keep-alive connection, moved from the first instance to the third.
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(get(http, "/").await.unwrap().status, 200);
    println!(
        "backend accepted {} connections for a pool of 3",
        backend.accepted()
    );
    // The pool moved along the chain too: no instance had to open a connection of its own.
    assert_eq!(backend.accepted(), 3);
    third.stop().await;
}

/// The instance at `control`, as soon as its control socket listens: between binding the path
/// and listening on it, a connection is refused.
async fn connect_when_listening(control: &std::path::Path, config_hash: &str) -> Predecessor {
    for _ in 0..300 {
        match juggler::upgrade::connect(control, config_hash, std::time::Duration::from_secs(60))
            .await
        {
            Ok(predecessor) => return predecessor,
            Err(UpgradeError::NoPredecessor { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("takeover failed: {error}"),
        }
    }
    panic!("nothing listened on {}", control.display());
}

/// Which socket file is at `path` (its inode), if any.
fn control_socket(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(std::fs::metadata(path).ok()?.ino())
}

/// The config hash the admin listener on `addr` reports.
async fn admin_config_hash(addr: std::net::SocketAddr) -> Option<String> {
    let answer = tokio::time::timeout(Duration::from_secs(2), get(addr, "/status.json"))
        .await
        .ok()?
        .ok()?;
    let report: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    Some(report["config_hash"].as_str()?.to_owned())
}

#[juggler_testkit::test]
async fn the_admin_listener_moves_to_the_successor_and_answers_throughout() {
    let (_backend, base, _dir, instance) = one_backend_instance("upgrade-admin", true).await;
    let admin = instance.admin.unwrap();
    assert_eq!(
        admin_config_hash(admin).await.as_deref(),
        Some(base.config_hash)
    );
    // An operator's dashboard polling all the way through the takeover.
    let polling = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen.push(admin_config_hash(admin).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    });
    let successor = instance
        .replaced_by(variant(base, test_routes, "new"))
        .await;
    assert_eq!(successor.admin, Some(admin), "same address");
    assert_eq!(admin_config_hash(admin).await.as_deref(), Some("new"));
    let seen = polling.await.unwrap();
    assert!(
        seen.iter().all(Option::is_some),
        "every poll was answered: {seen:?}"
    );
    successor.stop().await;
}

/// A dashboard or scraper on a keep-alive admin connection is not left reading the old process
/// until it exits: once a successor says HELLO, the predecessor closes its admin connections
/// (each after its request in flight), and the client's next connection reaches the process that
/// accepts.
#[juggler_testkit::test]
async fn keep_alive_admin_connections_close_once_a_successor_says_hello() {
    use tokio::io::AsyncReadExt;

    let (_backend, base, _dir, instance) =
        one_backend_instance("upgrade-admin-keep-alive", true).await;
    let admin = instance.admin.unwrap();
    let mut dashboard = juggler_testkit::wire::Wire::connect(admin).await;
    dashboard
        .send(b"GET /status.json HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let answer = dashboard.read_response(false).await;
    assert_eq!(answer.status, 200);
    assert_ne!(answer.header("connection"), Some("close"), "kept alive");

    // A successor says HELLO and takes the listeners, and does not accept yet.
    let predecessor = juggler::upgrade::connect(&instance.control, "new", Duration::from_secs(60))
        .await
        .unwrap();
    let mut rest = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), dashboard.stream.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the predecessor closes the idle admin connection: {read:?}"
    );

    let successor = instance.successor(predecessor, variant(base, test_routes, "new"), None);
    instance.exited(Duration::from_secs(10)).await;
    assert_eq!(admin_config_hash(admin).await.as_deref(), Some("new"));
    successor.stop().await;
}
