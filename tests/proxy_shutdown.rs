//! Graceful shutdown end to end: what is in flight or queued when shutdown starts still completes,
//! idle clients do not hold the drain up, the drain deadline bounds it, and nothing new gets in.

use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::wire::Wire;
use juggler_testkit::*;
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

#[juggler_testkit::test]
async fn in_flight_requests_complete_and_new_connections_are_refused() {
    const IN_FLIGHT: usize = 4;
    let (backend, juggler) = start_one_backend("server", IN_FLIGHT, Settings::DEFAULT).await;
    let addr = juggler.addr;
    // An idle keep-alive client and a connection that never sent a byte must not hold the
    // drain up until their idle timeout.
    let mut idle_client = Client::connect(addr).await;
    assert_eq!(idle_client.get("/x").await.unwrap().status, 200);
    let mut silent = Wire::connect(addr).await;

    let requests = start_requests(addr, "/sleep/500", IN_FLIGHT);
    until("every request to reach the backend", || {
        backend.stats.in_flight.get() == IN_FLIGHT
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
}

#[juggler_testkit::test]
async fn queued_requests_complete_during_shutdown() {
    const REQUESTS: usize = 4;
    // A queue that holds exactly the waiting requests: "full" then means all of them wait.
    let settings = settings_with(|s| s.queue.max_queued_per_server = REQUESTS - 1);
    let (backend, juggler) = start_one_backend("server", 1, settings).await;
    // The refill task holds the pool's one slot while it opens the connection: a request arriving
    // then counts as one more waiting, and the last would find the queue full.
    until("the pool's connection open", || {
        juggler.open_connections() == [1]
    })
    .await;
    let requests = start_requests(juggler.addr, "/sleep/300", REQUESTS);
    let pool = std::sync::Arc::clone(&juggler.proxy.pools[0]);
    until("one request on the connection and the rest queued", || {
        pool.is_full()
    })
    .await;
    assert!(
        backend.stats.requests.get() <= 1,
        "the pool has one connection"
    );
    let started = Instant::now();
    let result = juggler.shutdown().await;
    let drained_in = started.elapsed();
    let statuses = statuses(requests).await;
    println!(
        "shutdown returned {result:?} after {drained_in:?}; statuses {statuses:?}; backend \
         requests {}, max in flight {}",
        backend.stats.requests.get(),
        backend.stats.max_in_flight.get()
    );
    assert!(result.is_ok());
    assert_eq!(statuses, [200; REQUESTS]);
    assert_eq!(backend.stats.requests.get(), REQUESTS);
    assert_eq!(backend.stats.max_in_flight.get(), 1);
    assert!(
        drained_in >= Duration::from_millis(700),
        "shutdown did not wait for the queue"
    );
}

#[juggler_testkit::test]
async fn drain_deadline_bounds_shutdown() {
    let settings = settings_with(|s| s.limits.drain_timeout = Duration::from_millis(300));
    let (backend, juggler) = start_one_backend("server", 1, settings).await;
    let requests = start_requests(juggler.addr, "/sleep/5000", 1);
    until("the request to reach the backend", || {
        backend.stats.requests.get() == 1
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
}

#[juggler_testkit::test]
async fn request_still_uploading_its_body_completes_during_shutdown() {
    let (_backend, juggler) = start_one_backend("echo", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(juggler.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the upload"
    );
    wire.send(b"56789").await;
    let response = wire.read_response(false).await;
    let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
    let result = shutdown.await.unwrap();
    println!(
        "body finished 200 ms into shutdown: {} {:?}, then {} bytes, closed {closed}; \
         shutdown {result:?} after {:?}",
        response.status,
        String::from_utf8_lossy(&response.body),
        rest.len(),
        started.elapsed()
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"0123456789");
    assert!(
        rest.is_empty() && closed,
        "connection kept open after the drain"
    );
    assert!(result.is_ok());
}

#[juggler_testkit::test]
async fn streaming_response_completes_during_shutdown() {
    use http_body_util::BodyExt;

    let (_backend, juggler) = start_one_backend("echo", 1, Settings::DEFAULT).await;
    let body = bodies::random_body(4 * 1024 * 1024, 11);
    let stream = tokio::net::TcpStream::connect(juggler.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let request = http::Request::post("/echo")
        .header("host", "juggler.test")
        .body(http_body_util::Full::new(body.clone()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // The head is in; the 4 MiB body (four times the response buffer) is still streaming.
    let started = Instant::now();
    let shutdown = tokio::spawn(juggler.shutdown());
    let mut received = Vec::with_capacity(body.len());
    let mut frames = 0;
    let mut incoming = response.into_body();
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
        }
        frames += 1;
        // A slow reader, so that shutdown overlaps most of the body.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_for = started.elapsed();
    let result = shutdown.await.unwrap();
    println!(
        "read {} B in {frames} frames over {read_for:?} while shutting down; shutdown \
         {result:?} after {:?}",
        received.len(),
        started.elapsed()
    );
    assert!(received == body, "streamed body changed during shutdown");
    assert!(result.is_ok());
    driver.abort();
}
