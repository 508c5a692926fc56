//! Issue 9: a client that pipelines part of a second request behind its first one must cost
//! Juggler nothing but a socket until the header timeout answers it `408` — it must never spin
//! its task and starve every other client (which it once did: a parked connection with carried
//! over bytes was parked again at once, forever, without yielding).

use std::net::SocketAddr;
use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::raw::read_until_close;
use juggler_testkit::tls::{client_config, tls_connect, ALPN_HTTP11};
use juggler_testkit::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

/// One complete request followed by the first bytes of a second one, in a single write.
const PIPELINED_PARTIAL: &[u8] = b"GET /test.txt HTTP/1.1\r\nHost: x\r\n\r\naaaaaaa";

fn settings() -> Settings {
    settings_with(|s| s.limits.header_read_timeout = HEADER_TIMEOUT)
}

/// CPU time (user + system) this test process has used so far. nextest runs each test in a
/// process of its own, so this is Juggler's CPU plus the test's own clients.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// Fresh-connection GETs, one every 20 ms for `run`; returns each one's latency. Each must
/// succeed: the whole point is that nobody else is refused service.
async fn others_latencies(addr: SocketAddr, run: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < run {
        let sent = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(2), get(addr, "/other"))
            .await
            .expect("another client got no answer within 2 s")
            .unwrap();
        assert_eq!(answer.status, 200);
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

/// Measures other clients for `run` ([`others_latencies`]) and asserts the figures the issue asks
/// for: every other client answered, 95 % within 100 ms (a shared, noisy CI machine gets the
/// remaining 5 %).
async fn assert_others_served(addr: SocketAddr, run: Duration) {
    let mut latencies = others_latencies(addr, run).await;
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    let max = *latencies.last().unwrap();
    println!(
        "other clients: {} GETs, p95 {p95:?}, max {max:?}",
        latencies.len()
    );
    assert!(p95 < Duration::from_millis(100), "p95 {p95:?}");
}

/// Reads what a stalled connection receives until Juggler closes it; asserts the first answer,
/// then `408`, then the close, at the header timeout.
async fn assert_answered_then_408<S: AsyncRead + Unpin>(stream: &mut S, sent: Instant) {
    let (text, closed) = read_until_close(stream, HEADER_TIMEOUT * 4).await;
    let lasted = sent.elapsed();
    assert!(closed, "the stalled connection was never closed: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let second = text
        .match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(at, _)| &text[at..]);
    assert!(
        second.is_some_and(|second| second.starts_with("HTTP/1.1 408")),
        "expected a 408 after the first answer: {text:?}"
    );
    assert!(
        lasted >= HEADER_TIMEOUT && lasted < HEADER_TIMEOUT + Duration::from_secs(1),
        "closed after {lasted:?}, header timeout {HEADER_TIMEOUT:?}"
    );
}

async fn send_pipelined_partial<S: AsyncWrite + Unpin>(stream: &mut S) -> Instant {
    stream.write_all(PIPELINED_PARTIAL).await.unwrap();
    stream.flush().await.unwrap();
    Instant::now()
}

#[juggler_testkit::test]
async fn pipelined_partial_request_gets_408_and_stalls_no_one() {
    let (_backend, juggler) = start_one_backend("server", 2, settings()).await;
    let mut stalled = TcpStream::connect(juggler.addr).await.unwrap();
    let sent = send_pipelined_partial(&mut stalled).await;

    // Held, unread, well past the park delay: Juggler must sit still meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = process_cpu();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = process_cpu() - cpu_before;
    println!("CPU while the connection is held idle: {cpu:?} over 500 ms");
    assert!(cpu < Duration::from_millis(100), "{cpu:?} of CPU in 500 ms");

    assert_others_served(juggler.addr, Duration::from_millis(500)).await;
    assert_answered_then_408(&mut stalled, sent).await;
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn fifty_pipelined_partial_requests_stall_no_one() {
    let (_backend, juggler) = start_one_backend("server", 4, settings()).await;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(juggler.addr).await.unwrap();
        let sent = send_pipelined_partial(&mut stream).await;
        stalled.push((stream, sent));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_others_served(juggler.addr, Duration::from_millis(800)).await;
    let ends = stalled.into_iter().map(|(mut stream, sent)| {
        tokio::spawn(async move { assert_answered_then_408(&mut stream, sent).await })
    });
    for end in ends.collect::<Vec<_>>() {
        end.await.unwrap();
    }
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn pipelined_partial_request_over_tls_gets_408_and_stalls_no_one() {
    let backend = TestBackend::start("server").await;
    let (cert, files) = CertFiles::generate("pipelined-partial");
    let juggler = TestJuggler::start_https(table(&[backend.addr], 2, settings()), &files).await;
    let config = client_config(&[&cert.der], ALPN_HTTP11);
    let mut stalled = tls_connect(juggler.https_addr(), config, "localhost")
        .await
        .unwrap();
    let sent = send_pipelined_partial(&mut stalled).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_others_served(juggler.addr, Duration::from_millis(500)).await;
    assert_answered_then_408(&mut stalled, sent).await;
    juggler.shutdown().await.unwrap();
}

/// Complete pipelined requests, then the start of one more that is finished only after the
/// connection has gone idle (and been parked with those bytes carried over): every answer
/// arrives, in order.
#[juggler_testkit::test]
async fn pipelined_requests_finished_after_a_park_are_answered_in_order() {
    let (_backend, juggler) = start_one_backend("server", 2, settings()).await;
    let mut wire = wire::Wire::connect(juggler.addr).await;
    wire.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo\
          POST /echo HTTP/1.1\r\nHost: x\r\nCont",
    )
    .await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        bodies.push(wire.read_response(false).await.body);
    }
    // Well past the park delay, well within the header timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wire.send(b"ent-Length: 5\r\n\r\nthree").await;
    bodies.push(wire.read_response(false).await.body);
    assert_eq!(bodies, [&b"one"[..], b"two", b"three"]);
    juggler.shutdown().await.unwrap();
}

/// A task that blocks its worker thread (as a buggy connection task would) must not stop the
/// rest of Juggler: new clients are still accepted and answered by the other worker.
#[juggler_testkit::test]
async fn a_blocked_worker_does_not_stop_accepting() {
    let (_backend, juggler) = start_one_backend("server", 2, settings()).await;
    // Warm up: the accept loop and the pool have run on the workers.
    assert_eq!(get(juggler.addr, "/").await.unwrap().status, 200);
    let blocker = tokio::spawn(async {
        std::thread::sleep(Duration::from_millis(1500));
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_others_served(juggler.addr, Duration::from_millis(800)).await;
    blocker.await.unwrap();
    juggler.shutdown().await.unwrap();
}
