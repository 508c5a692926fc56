//! Graceful shutdown end to end: what is in flight or queued when shutdown starts still completes,
//! idle clients do not hold the drain up, the drain deadline bounds it, and nothing new gets in.

mod support;

use std::time::Duration;

use juggler::table::Settings;
use support::wire::Wire;
use support::*;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Waits (bounded) until `condition` holds, polling every 5 ms.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `count` requests for `path`, each on its own client connection.
fn start_requests(addr: std::net::SocketAddr, path: &'static str, count: usize) -> JoinSet<u16> {
    let mut requests = JoinSet::new();
    for _ in 0..count {
        requests.spawn(async move {
            match get(addr, path).await {
                Ok(answer) => answer.status.as_u16(),
                // 0: the connection failed; the assertions below report it.
                Err(_) => 0,
            }
        });
    }
    requests
}

async fn statuses(mut requests: JoinSet<u16>) -> Vec<u16> {
    let mut statuses = Vec::new();
    while let Some(status) = requests.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_and_new_connections_are_refused() {
    bounded(async {
        const IN_FLIGHT: usize = 4;
        let backend = TestBackend::start("server").await;
        let juggler =
            TestJuggler::start(table(&[backend.addr], IN_FLIGHT, Settings::DEFAULT)).await;
        let addr = juggler.addr;
        // An idle keep-alive client and a connection that never sent a byte must not hold the
        // drain up until their idle timeout.
        let mut idle_client = Client::connect(addr).await;
        assert_eq!(idle_client.get("/x").await.unwrap().status, 200);
        let mut silent = Wire::connect(addr).await;

        let requests = start_requests(addr, "/sleep/500", IN_FLIGHT);
        until("every request to reach the backend", || {
            backend
                .stats
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst)
                == IN_FLIGHT
        })
        .await;
        let started = Instant::now();
        let result = juggler.shutdown().await;
        let drained_in = started.elapsed();
        let statuses = statuses(requests).await;
        let (_, silent_closed) = silent.rest(Duration::from_secs(1)).await;
        let refused = tokio::net::TcpStream::connect(addr).await;
        println!(
            "shutdown returned {result:?} after {drained_in:?}; in-flight statuses {statuses:?}; \
             silent connection closed {silent_closed}; new connection after shutdown: {:?}",
            refused
                .as_ref()
                .map(|_| "accepted")
                .map_err(|error| error.kind())
        );
        assert!(result.is_ok());
        assert_eq!(statuses, [200; IN_FLIGHT]);
        assert!(
            drained_in >= Duration::from_millis(300),
            "shutdown did not wait for requests"
        );
        assert!(
            drained_in < Duration::from_secs(5),
            "idle connections held the drain up"
        );
        assert!(silent_closed);
        assert!(refused.is_err(), "a connection was accepted after shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_complete_during_shutdown() {
    bounded(async {
        const REQUESTS: usize = 4;
        let backend = TestBackend::start("server").await;
        let mut settings = Settings::DEFAULT;
        // A queue that holds exactly the waiting requests: "full" then means all of them wait.
        settings.queue.max_queued_per_server = REQUESTS - 1;
        let juggler = TestJuggler::start(table(&[backend.addr], 1, settings)).await;
        let requests = start_requests(juggler.addr, "/sleep/300", REQUESTS);
        let pool = std::sync::Arc::clone(&juggler.proxy.pools[0]);
        until("one request on the connection and the rest queued", || {
            pool.is_full()
        })
        .await;
        assert!(backend.stats.requests() <= 1, "the pool has one connection");
        let started = Instant::now();
        let result = juggler.shutdown().await;
        let drained_in = started.elapsed();
        let statuses = statuses(requests).await;
        println!(
            "shutdown returned {result:?} after {drained_in:?}; statuses {statuses:?}; backend \
             requests {}, max in flight {}",
            backend.stats.requests(),
            backend.stats.max_in_flight()
        );
        assert!(result.is_ok());
        assert_eq!(statuses, [200; REQUESTS]);
        assert_eq!(backend.stats.requests(), REQUESTS);
        assert_eq!(backend.stats.max_in_flight(), 1);
        assert!(
            drained_in >= Duration::from_millis(700),
            "shutdown did not wait for the queue"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_bounds_shutdown() {
    bounded(async {
        let backend = TestBackend::start("server").await;
        let mut settings = Settings::DEFAULT;
        settings.limits.drain_timeout = Duration::from_millis(300);
        let juggler = TestJuggler::start(table(&[backend.addr], 1, settings)).await;
        let requests = start_requests(juggler.addr, "/sleep/5000", 1);
        until("the request to reach the backend", || {
            backend.stats.requests() == 1
        })
        .await;
        let started = Instant::now();
        let result = juggler.shutdown().await;
        let drained_in = started.elapsed();
        println!("request of 5 s in flight, drain timeout 300 ms: shutdown returned {result:?} after {drained_in:?}");
        assert!(result.is_ok());
        assert!(drained_in >= Duration::from_millis(250) && drained_in < Duration::from_secs(2));
        // The request outlived the drain deadline; its task goes with the test.
        drop(requests);
    })
    .await;
}
