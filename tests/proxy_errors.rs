//! What clients see when backends are full, slow or gone.

use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::*;

#[juggler_testkit::test]
async fn full_queue_answers_503_with_retry_after() {
    let settings = settings_with(|s| s.queue.max_queued_per_server = 1);
    let (backend, juggler) = start_one_backend("slow", 1, settings).await;
    // One request holds the only connection, one waits in the queue, the rest find it full.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let addr = juggler.addr;
        requests.spawn(async move { get(addr, "/sleep/400").await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ok = 0;
    let mut unavailable = 0;
    while let Some(answer) = requests.join_next().await {
        let answer = answer.unwrap();
        match answer.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(answer.headers["retry-after"], "1");
                unavailable += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    println!("ok {ok}, 503 {unavailable}");
    assert_eq!(ok, 2);
    assert_eq!(unavailable, 4);
    assert_eq!(backend.stats.requests.get(), 2);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn queue_timeout_answers_503() {
    let settings = settings_with(|s| s.queue.timeout = Duration::from_millis(150));
    let (backend, juggler) = start_one_backend("slow", 1, settings).await;
    let addr = juggler.addr;
    let holder = tokio::spawn(async move { get(addr, "/hold").await.unwrap().status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let waiting = get(juggler.addr, "/x").await.unwrap();
    let waited = started.elapsed();
    println!("queued request: {} after {waited:?}", waiting.status);
    assert_eq!(waiting.status, 503);
    assert_eq!(waiting.headers["retry-after"], "1");
    assert!(waited >= Duration::from_millis(140) && waited < Duration::from_millis(900));
    backend.stats.released.send_replace(true);
    assert_eq!(holder.await.unwrap(), 200);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn slow_backend_answers_504_and_pool_recovers() {
    let settings = settings_with(|s| s.limits.backend_timeout = Duration::from_millis(200));
    let (backend, juggler) = start_one_backend("slow", 2, settings).await;
    let started = tokio::time::Instant::now();
    let answer = get(juggler.addr, "/sleep/2000").await.unwrap();
    println!(
        "hung backend: {} after {:?}",
        answer.status,
        started.elapsed()
    );
    assert_eq!(answer.status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));
    // The timed-out connection is replaced, never reused mid-response; the pool is back at 2.
    let fresh = get(juggler.addr, "/x").await.unwrap();
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    println!(
        "pool after: {:?}; backend open {}",
        juggler.open_connections(),
        backend.open()
    );
    assert_eq!(juggler.open_connections(), [2]);
    assert_eq!(backend.open(), 2);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn refusing_backend_is_skipped_and_alone_gives_502() {
    let alive = TestBackend::start("alive").await;
    // A port that was bound and released: connects are refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let juggler = TestJuggler::start(table(&[alive.addr, dead], 2, Settings::DEFAULT)).await;
    for _ in 0..6 {
        let answer = get(juggler.addr, "/x").await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "alive");
    }
    println!("6/6 served by the live backend while the other refuses");
    juggler.shutdown().await.unwrap();

    let alone = TestJuggler::start(table(&[dead], 2, Settings::DEFAULT)).await;
    let answer = get(alone.addr, "/x").await.unwrap();
    println!("only backend refusing: {}", answer.status);
    assert!(answer.status == 502 || answer.status == 503);
    alone.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn clients_vanishing_mid_request_leave_the_pool_at_n() {
    const POOL: usize = 3;
    let (backend, juggler) = start_one_backend("b", POOL, Settings::DEFAULT).await;
    // Clients that send a request whose answer takes a while, then hang up: some are waiting
    // for the backend, some are queued, some may catch a connection being replaced.
    for _ in 0..5 {
        let mut vanishing = Vec::new();
        for _ in 0..20 {
            let request = b"GET /sleep/200 HTTP/1.1\r\nhost: t\r\n\r\n";
            let mut stream = tokio::net::TcpStream::connect(juggler.addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, request)
                .await
                .unwrap();
            vanishing.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(vanishing);
    }
    // The refill task runs at least once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pool = juggler.open_connections();
    let answers: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(get(juggler.addr, "/x").await.unwrap().status.as_u16());
        }
        statuses
    };
    println!(
        "after 100 vanished clients: pool {pool:?}, backend open {}, accepted {}, next answers {answers:?}",
        backend.open(),
        backend.accepted()
    );
    assert_eq!(pool, [POOL]);
    assert_eq!(backend.open(), POOL);
    assert!(answers.iter().all(|&status| status == 200));
    juggler.shutdown().await.unwrap();
}
