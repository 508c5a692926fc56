//! Issue 13: the admin listener. Its counters equal what happened (read with a real exposition
//! parser), it answers while every pool is saturated, and draining a backend at run time moves
//! traffic off it without failing a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use juggler::admin::report::StatusReport;
use juggler::table::Settings;
use juggler_testkit::raw_backend::RawBackend;
use juggler_testkit::*;
use prometheus_parse::{Sample, Scrape, Value};

const TOKEN: &str = "test-token-0123456789";

/// One admin request on a fresh connection.
async fn admin(juggler: &TestJuggler, method: &str, path: &str, token: Option<&str>) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    send(juggler.admin_addr(), request).await.unwrap()
}

async fn status(juggler: &TestJuggler) -> StatusReport {
    let answer = admin(juggler, "GET", "/status.json", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    serde_json::from_slice(&answer.body).expect("status.json parses into the report types")
}

async fn scrape(juggler: &TestJuggler) -> Vec<Sample> {
    let answer = admin(juggler, "GET", "/metrics", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = answer.text();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    Scrape::parse(lines).expect("/metrics parses").samples
}

/// The sum of `metric` over the samples whose labels include all of `labels`.
fn total(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// An address nothing listens on: a socket bound to it (so no other listener of this or another
/// test takes the port) that never listens, so connects are refused.
fn dead_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Waits (at most 5 s) until `done` holds for the report.
async fn until(juggler: &TestJuggler, done: impl Fn(&StatusReport) -> bool) -> StatusReport {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = status(juggler).await;
        if done(&report) || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[juggler_testkit::test]
async fn metrics_count_exactly_what_happened() {
    let backends = three_backends().await;
    let mut addresses = addrs_of(&backends);
    let (_reserved, dead) = dead_address();
    addresses.push(dead);
    let settings = settings_with(|settings| {
        settings.queue.max_queued_per_server = 0;
        settings.proxy.down_after_failures = 1;
    });
    let juggler = TestJuggler::start_with_admin(table(&addresses, 1, settings), TOKEN).await;
    let dead = dead.to_string();
    let report = until(&juggler, |report| {
        let backends = &report.upstreams[0].backends;
        backends
            .iter()
            .any(|b| b.address == dead && b.state == "down")
            && backends
                .iter()
                .filter(|b| b.state == "up")
                .all(|b| b.open == 1)
    })
    .await;
    assert!(
        report.upstreams[0]
            .backends
            .iter()
            .any(|b| b.address == dead && b.state == "down"),
        "the backend nobody listens on is reported down: {report:?}"
    );

    // 30 GETs one after another, one 404, then three slow requests that take every pool's only
    // connection and a fourth that finds every queue full.
    let mut client = Client::connect(juggler.addr).await;
    for _ in 0..30 {
        assert_eq!(client.get("/").await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        client.get("/nowhere").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    // One at a time, so the k-th slow request finds k - 1 queues full: 0 + 1 + 2 refusals, then
    // 3 for the request that finds them all full.
    let mut slow = Vec::new();
    for taken in 1..=3 {
        slow.push(tokio::spawn(get(juggler.addr, "/sleep/700")));
        until(&juggler, |report| {
            let busy = report.upstreams[0].backends.iter().filter(|b| b.busy == 1);
            busy.count() == taken
        })
        .await;
    }
    let refused = get(juggler.addr, "/").await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    for slow in slow {
        assert_eq!(slow.await.unwrap().unwrap().status, StatusCode::OK);
    }

    let samples = scrape(&juggler).await;
    let seen: Vec<usize> = backends.iter().map(|b| b.stats.requests.get()).collect();
    assert_eq!(
        seen.iter().sum::<usize>(),
        33,
        "the backends saw 30 GETs and 3 slow ones"
    );
    for (backend, seen) in backends.iter().zip(&seen) {
        let labels = [("backend", &*backend.addr.to_string()), ("class", "2xx")];
        let counted = total(&samples, "juggler_backend_responses_total", &labels);
        assert_eq!(counted, *seen as f64, "2xx counted for {}", backend.addr);
        let labels = [("backend", &*backend.addr.to_string())];
        assert!(total(&samples, "juggler_backend_queue_full_total", &labels) >= 1.0);
        assert_eq!(total(&samples, "juggler_backend_pool_size", &labels), 1.0);
        let state = [labels[0], ("state", "up")];
        assert_eq!(total(&samples, "juggler_backend_state", &state), 1.0);
    }
    let dead_labels = [("backend", dead.as_str())];
    assert_eq!(
        total(
            &samples,
            "juggler_backend_state",
            &[dead_labels[0], ("state", "down")]
        ),
        1.0
    );
    assert!(
        total(
            &samples,
            "juggler_backend_connect_failures_total",
            &dead_labels
        ) >= 1.0
    );
    assert_eq!(
        total(&samples, "juggler_backend_responses_total", &dead_labels),
        0.0
    );
    assert_eq!(
        total(&samples, "juggler_backend_queue_full_total", &dead_labels),
        0.0
    );
    assert_eq!(
        total(&samples, "juggler_backend_queue_full_total", &[]),
        6.0
    );
    // Histograms: one queue wait and one response time per request a backend took.
    assert_eq!(
        total(&samples, "juggler_backend_response_seconds", &[]),
        33.0
    );
    assert_eq!(
        total(&samples, "juggler_backend_queue_wait_seconds", &[]),
        33.0
    );
    let http1 = [("listener", "http"), ("protocol", "http1")];
    assert_eq!(
        total(&samples, "juggler_client_requests_total", &http1),
        35.0
    );
    let classes: HashMap<&str, f64> = ["2xx", "4xx", "5xx"]
        .into_iter()
        .map(|class| {
            let labels = [("listener", "http"), ("class", class)];
            (
                class,
                total(&samples, "juggler_client_responses_total", &labels),
            )
        })
        .collect();
    assert_eq!(
        classes,
        HashMap::from([("2xx", 33.0), ("4xx", 1.0), ("5xx", 1.0)])
    );
    assert!(
        total(
            &samples,
            "juggler_client_connections_open",
            &[("listener", "http")]
        ) >= 1.0
    );
    let info = samples
        .iter()
        .find(|sample| sample.metric.starts_with("juggler_build_info"))
        .expect("a build info metric");
    assert_eq!(info.labels.get("config_hash"), Some("test"));
    assert!(total(&samples, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(total(&samples, "process_open_fds", &[]) > 0.0);

    let report = status(&juggler).await;
    let requests: u64 = report.upstreams[0]
        .backends
        .iter()
        .map(|b| b.requests)
        .sum();
    assert_eq!(requests, 33);
    assert_eq!(report.listeners[0].requests, 35);
}

/// What the binary's allocator reader says reaches `/metrics` (the real jemalloc reader is in
/// `src/main.rs`; the soak reads it from the real binary). Without a reader there is no sample.
#[juggler_testkit::test]
async fn allocator_figures_appear_once_the_binary_reports_them() {
    let backends = three_backends().await;
    let juggler =
        TestJuggler::start_with_admin(table(&addrs_of(&backends), 1, Settings::DEFAULT), TOKEN)
            .await;
    let before = scrape(&juggler).await;
    assert_eq!(
        total(&before, "juggler_allocator_allocated_bytes", &[]),
        0.0
    );
    juggler::admin::report_allocator(|| {
        Some(juggler::admin::AllocatorStats {
            allocated: 5_000_000,
            resident: 7_000_000,
        })
    });
    let after = scrape(&juggler).await;
    assert_eq!(
        total(&after, "juggler_allocator_allocated_bytes", &[]),
        5_000_000.0
    );
    assert_eq!(
        total(&after, "juggler_allocator_resident_bytes", &[]),
        7_000_000.0
    );
    juggler.shutdown().await.unwrap();
}

/// Response body bytes are counted for every kind of response: known length (buffered or too
/// large to buffer) and chunked or close-delimited ones too large to buffer, streamed or spooled.
#[juggler_testkit::test]
async fn relayed_bytes_count_every_kind_of_response_body() {
    let backend = RawBackend::start().await;
    let settings = settings_with(|settings| settings.limits.response_buffer_bytes = 1024);
    let juggler = TestJuggler::start_with_admin(table(&[backend.addr], 1, settings), TOKEN).await;
    let upload = Bytes::from(vec![b'x'; 20_000]);
    let mut relayed = Vec::new();
    for path in ["/chunked-echo", "/until-close"] {
        let request = Request::post(path)
            .header("host", "juggler.test")
            .body(Full::new(upload.clone()))
            .unwrap();
        let answer = send(juggler.addr, request).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.body, upload, "{path}");
        relayed.push((path, answer.body.len()));
    }
    for path in ["/big-length", "/short-head-echo"] {
        let answer = get(juggler.addr, path).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        relayed.push((path, answer.body.len()));
    }
    let expected: usize = relayed.iter().map(|(_, len)| len).sum();
    let samples = scrape(&juggler).await;
    let counted = total(&samples, "juggler_backend_received_bytes_total", &[]);
    println!("bodies relayed {relayed:?}: {expected} B; counted {counted}");
    assert_eq!(counted, expected as f64);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn admin_answers_within_50ms_while_every_pool_is_saturated() {
    let backend = TestBackend::start("slow").await;
    let settings = settings_with(|settings| settings.queue.max_queued_per_server = 500);
    let juggler = TestJuggler::start_with_admin(table(&[backend.addr], 2, settings), TOKEN).await;
    // 1,000 clients against a backend that holds every request until the end: 2 are served,
    // 500 wait, the rest get 503.
    let clients: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(get(juggler.addr, "/hold")))
        .collect();
    let saturated = until(&juggler, |report| {
        report.upstreams[0].backends[0].queued == 500
    })
    .await;
    assert_eq!(
        saturated.upstreams[0].backends[0].queued, 500,
        "the queue filled"
    );
    assert_eq!(saturated.upstreams[0].backends[0].busy, 2);
    let mut took = Vec::new();
    for path in ["/status.json", "/metrics", "/status"]
        .into_iter()
        .cycle()
        .take(21)
    {
        let started = Instant::now();
        let answer = admin(&juggler, "GET", path, None).await;
        took.push(started.elapsed());
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    took.sort();
    println!(
        "admin answers while saturated: median {:?}, slowest {:?}",
        took[10], took[20]
    );
    // The median, not the slowest: the test shares two cores with the 1,000 clients and with
    // other tests, and a single descheduling is not the admin listener waiting on a pool.
    assert!(
        took[10] < Duration::from_millis(50),
        "median {:?}",
        took[10]
    );
    assert!(took[20] < Duration::from_secs(1), "slowest {:?}", took[20]);
    backend.stats.released.send_replace(true);
    for client in clients {
        client.abort();
    }
}

/// Four clients asking in a loop until `stop`; counts answers that were not `200`.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match client.get("/").await {
                        Ok(answer) if answer.status == StatusCode::OK => {}
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

#[juggler_testkit::test]
async fn draining_a_backend_under_load_sends_it_nothing_new_and_fails_nothing() {
    let backends = three_backends().await;
    let juggler =
        TestJuggler::start_with_admin(table(&addrs_of(&backends), 2, Settings::DEFAULT), TOKEN)
            .await;
    let (stop, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = load(juggler.addr, Arc::clone(&stop), Arc::clone(&failed));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drained = &backends[1];
    let path = format!("/backends/{}/drain?close=true", drained.addr);
    let answer = admin(&juggler, "POST", &path, Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let entry: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(entry["state"], "draining");
    // Requests it had already been given may still arrive: at most one per pooled connection.
    let at_drain = drained.stats.requests.get();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = drained.stats.requests.get();
    assert!(
        after <= at_drain + 2,
        "drained backend got {} new requests",
        after - at_drain
    );
    let others: usize = [&backends[0], &backends[2]]
        .iter()
        .map(|b| b.stats.requests.get())
        .sum();
    assert!(others > 50, "the others carried the load ({others})");
    let report = until(&juggler, |report| report.upstreams[0].backends[1].open == 0).await;
    assert_eq!(report.upstreams[0].backends[1].state, "draining");
    assert_eq!(
        report.upstreams[0].backends[1].open, 0,
        "close=true closed its pool"
    );

    let path = format!("/backends/{}/undrain", drained.addr);
    assert_eq!(
        admin(&juggler, "POST", &path, Some(TOKEN)).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        drained.stats.requests.get() > after + 10,
        "undrained backend is back in rotation"
    );
    let report = until(&juggler, |report| report.upstreams[0].backends[1].open == 2).await;
    assert_eq!(report.upstreams[0].backends[1].state, "up");
    assert_eq!(
        report.upstreams[0].backends[1].open, 2,
        "its pool refilled to n"
    );
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across drain and undrain"
    );
}

#[juggler_testkit::test]
async fn drain_needs_the_token_and_a_known_backend() {
    let backend = TestBackend::start("one").await;
    let juggler =
        TestJuggler::start_with_admin(table(&[backend.addr], 1, Settings::DEFAULT), TOKEN).await;
    let path = format!("/backends/{}/drain", backend.addr);
    let anonymous = admin(&juggler, "POST", &path, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers.contains_key("www-authenticate"));
    assert_eq!(
        admin(&juggler, "POST", &path, Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&juggler).await.upstreams[0].backends[0].state,
        "up",
        "nothing changed"
    );
    let unknown = admin(&juggler, "POST", "/backends/10.9.9.9:1/drain", Some(TOKEN)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let encoded = path.replace(':', "%3A");
    assert_eq!(
        admin(&juggler, "POST", &encoded, Some(TOKEN)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        status(&juggler).await.upstreams[0].backends[0].state,
        "draining"
    );
    assert_eq!(
        admin(&juggler, "GET", &path, Some(TOKEN)).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        admin(&juggler, "POST", "/metrics", None).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // A drained upstream with no other backend answers 503 rather than queueing.
    assert_eq!(
        get(juggler.addr, "/").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
