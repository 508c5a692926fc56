//! Issue 12, part 5: HTTP/2 abuse. Each attack comes from a raw client over real TLS (ALPN `h2`,
//! frames written by hand, or hyper's client where only the body or the window matters) and must
//! end with `GOAWAY` or a stream reset within bounded time, while another client on its own
//! connection keeps getting answers and the backends never see the attack.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use juggler::table::{RouteTable, Settings};
use juggler_testkit::tls::*;
use juggler_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

// Frame types and flags (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame on the wire.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block for `GET https://localhost<path>`: static-table indexes for the
/// method and scheme, literals (never Huffman, never indexed) for the path and authority.
fn get_block(path: &str) -> Vec<u8> {
    assert!(path.len() < 127);
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.extend_from_slice(&[0x04, path.len() as u8]); // :path, literal value
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]); // :authority, literal value
    block.extend_from_slice(b"localhost");
    block
}

/// Stream `id` opened (`GET /rapid`, HEADERS with END_STREAM) and cancelled at once.
fn reset_pair(id: u32) -> Vec<u8> {
    let mut bytes = frame(HEADERS, END_STREAM | END_HEADERS, id, &get_block("/rapid"));
    bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    bytes
}

/// What a raw client read back from Juggler until the connection closed or the deadline passed.
#[derive(Debug, Default)]
struct Seen {
    /// Error code and last stream id of the first GOAWAY.
    goaway: Option<(u32, u32)>,
    /// When the GOAWAY (or, without one, the close) came, from the start of the attack.
    ended_after: Option<Duration>,
    /// The connection ended: EOF, or an error such as a TCP reset.
    closed: bool,
    /// The read error that ended it, if it was one (a reset reads as an error).
    read_error: Option<String>,
    resets: usize,
    headers: usize,
    settings_acks: usize,
    ping_acks: usize,
    bytes: usize,
}

impl Seen {
    /// How the connection ended, for the test's report.
    fn ending(&self) -> String {
        format!(
            "ended after {:?} with GOAWAY {:?} (code, last stream), closed {}, read error {:?}",
            self.ended_after, self.goaway, self.closed, self.read_error
        )
    }
}

/// What the reader tells the flood. The reader never waits on the writer: a writer blocked by a
/// server that waits for its own writes to be read would deadlock it.
#[derive(Default)]
struct Back {
    /// PING acknowledgements owed to Juggler (as any client must send, so a graceful close can
    /// complete); the flood sends them with its next write.
    owed: std::sync::Mutex<Vec<u8>>,
    /// A GOAWAY arrived: the flood stops and only acknowledges from then on, as a client that
    /// heeds GOAWAY does.
    goaway: std::sync::atomic::AtomicBool,
}

type Acks = Arc<Back>;

/// Reads frames until the connection closes or `deadline` passes.
async fn read_frames(
    mut read: ReadHalf<TlsClientStream>,
    acks: Acks,
    started: Instant,
    deadline: Duration,
) -> Seen {
    let mut seen = Seen::default();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let until = started + deadline;
    loop {
        let n = match tokio::time::timeout_at(until, read.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                seen.closed = true;
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(error)) => {
                seen.closed = true;
                seen.read_error = Some(error.to_string());
                break;
            }
        };
        seen.bytes += n;
        buffer.extend_from_slice(&chunk[..n]);
        while buffer.len() >= 9 {
            let len = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
            if buffer.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buffer[3], buffer[4]);
            let payload = &buffer[9..9 + len];
            match kind {
                GOAWAY if seen.goaway.is_none() => {
                    let last = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
                    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                    seen.goaway = Some((code, last));
                    acks.goaway.store(true, std::sync::atomic::Ordering::SeqCst);
                    seen.ended_after = Some(started.elapsed());
                }
                RST_STREAM => seen.resets += 1,
                HEADERS => seen.headers += 1,
                SETTINGS if flags & ACK != 0 => seen.settings_acks += 1,
                PING if flags & ACK != 0 => seen.ping_acks += 1,
                PING => {
                    let ack = frame(PING, ACK, 0, payload);
                    acks.owed.lock().unwrap().extend(ack);
                }
                _ => {}
            }
            buffer.drain(..9 + len);
        }
    }
    if seen.closed && seen.ended_after.is_none() {
        seen.ended_after = Some(started.elapsed());
    }
    seen
}

/// A TLS connection to Juggler's HTTPS listener with ALPN `h2`, split for a writer that floods
/// and a reader that watches. The preface and an empty SETTINGS are already written.
async fn raw_h2(
    juggler: &TestJuggler,
    cert: &TestCert,
) -> (ReadHalf<TlsClientStream>, WriteHalf<TlsClientStream>) {
    let stream = tls_connect_trusting(juggler.https_addr(), cert, ALPN_H2).await;
    assert_eq!(alpn_of(&stream).as_deref(), Some(&b"h2"[..]));
    let (read, mut write) = tokio::io::split(stream);
    write.write_all(PREFACE).await.unwrap();
    write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    (read, write)
}

/// Writes `batch(n)` for n = 0, 1, … until `count` batches went out, a GOAWAY came, the
/// connection refused more, or `run` has passed; returns the batches written.
fn flood(
    mut write: WriteHalf<TlsClientStream>,
    acks: Acks,
    count: usize,
    run: Duration,
    mut batch: impl FnMut(usize) -> Vec<u8> + Send + 'static,
) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let until = Instant::now() + run;
        let mut sent = 0;
        while sent < count && !acks.goaway.load(std::sync::atomic::Ordering::SeqCst) {
            let mut bytes = std::mem::take(&mut *acks.owed.lock().unwrap());
            bytes.extend(batch(sent));
            match tokio::time::timeout_at(until, write.write_all(&bytes)).await {
                Ok(Ok(())) => sent += 1,
                _ => return sent,
            }
        }
        // Keep the write half open (and keep acknowledging) so the reader sees how Juggler
        // ends the connection.
        while Instant::now() < until {
            let owed = std::mem::take(&mut *acks.owed.lock().unwrap());
            if write.write_all(&owed).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    })
}

/// What one attack came to: what was read back, and what the bystanders saw meanwhile.
struct Attack {
    seen: Seen,
    /// Batches the flood wrote.
    batches: usize,
    /// The other client's slowest answer.
    slowest: Duration,
    rss_before: usize,
    rss_after: usize,
}

impl Attack {
    /// What the other client and this process's memory saw, for the test's report.
    fn bystanders(&self) -> String {
        format!(
            "other client's slowest answer {:?}; RSS {} -> {} KiB",
            self.slowest, self.rss_before, self.rss_after
        )
    }

    fn assert_rss_grew_less_than_64_mib(&self) {
        assert!(
            self.rss_after < self.rss_before + 64 * 1024,
            "RSS grew by over 64 MiB"
        );
    }
}

/// [`attack_for`] 10 s, with the other client asking for the first 2 s.
async fn attack(
    s: &Setup,
    count: usize,
    batch: impl FnMut(usize) -> Vec<u8> + Send + 'static,
) -> Attack {
    attack_for(
        s,
        Duration::from_secs(2),
        count,
        Duration::from_secs(10),
        batch,
    )
    .await
}

/// A raw h2 connection ([`raw_h2`]) flooded by `batch` ([`flood`]) while what comes back is read
/// ([`read_frames`]), both for `run`, with another client ([`other_client`]) asking on a
/// connection of its own for `other_for`.
async fn attack_for(
    s: &Setup,
    other_for: Duration,
    count: usize,
    run: Duration,
    batch: impl FnMut(usize) -> Vec<u8> + Send + 'static,
) -> Attack {
    let other = other_client(&s.juggler, &s.cert, other_for);
    let rss_before = rss_kib();
    let (read, write) = raw_h2(&s.juggler, &s.cert).await;
    let acks = Acks::default();
    let started = Instant::now();
    let writer = flood(write, Arc::clone(&acks), count, run, batch);
    let seen = read_frames(read, acks, started, run).await;
    let batches = writer.await.unwrap();
    let slowest = other.await.unwrap();
    Attack {
        seen,
        batches,
        slowest,
        rss_before,
        rss_after: rss_kib(),
    }
}

/// A well-behaved HTTP/2 client on a connection of its own: GETs one after another for `run`,
/// each answered `200` within 2 s; returns the slowest.
fn other_client(
    juggler: &TestJuggler,
    cert: &Arc<TestCert>,
    run: Duration,
) -> JoinHandle<Duration> {
    let (addr, cert) = (juggler.https_addr(), Arc::clone(cert));
    tokio::spawn(async move {
        let client = H2Client::connect(addr, &cert).await;
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        while started.elapsed() < run {
            let sent = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(2), client.get("/other"))
                .await
                .expect("another client got no answer within 2 s")
                .unwrap();
            assert_eq!(answer.status, 200);
            slowest = slowest.max(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    })
}

/// Requests the backend received whose path starts with `prefix` (the other client's `/other`
/// requests reach it too).
fn reached_backend(s: &Setup, prefix: &str) -> usize {
    let paths = s.backend.stats.paths();
    paths.iter().filter(|path| path.starts_with(prefix)).count()
}

struct Setup {
    backend: TestBackend,
    juggler: TestJuggler,
    cert: Arc<TestCert>,
    /// Keeps the certificate files alive for as long as Juggler may reload them.
    _files: CertFiles,
}

async fn setup(name: &str, settings: Settings) -> Setup {
    let backend = TestBackend::start("server 1").await;
    let cert = TestCert::generate();
    let files = CertFiles::new(name, &cert);
    let table: &'static RouteTable = table(&[backend.addr], 2, settings);
    let juggler = TestJuggler::start_https(table, &files).await;
    Setup {
        backend,
        juggler,
        cert: Arc::new(cert),
        _files: files,
    }
}

#[juggler_testkit::test]
async fn rapid_reset_flood_ends_the_connection_and_reaches_no_backend() {
    const PAIRS: usize = 100_000;
    let s = setup("rapid-reset", Settings::DEFAULT).await;
    // Each batch: 10 streams opened (HEADERS with END_STREAM) and cancelled at once.
    let attack = attack(&s, PAIRS / 10, |batch| {
        (0..10)
            .flat_map(|i| reset_pair(((batch * 10 + i) * 2 + 1) as u32))
            .collect()
    })
    .await;
    let (seen, sent) = (&attack.seen, attack.batches * 10);
    println!(
        "rapid reset: {sent} of {PAIRS} HEADERS+RST_STREAM pairs written before the \
         connection refused more; {}; {} HEADERS back; backend saw {} requests; {}",
        seen.ending(),
        seen.headers,
        reached_backend(&s, "/rapid"),
        attack.bystanders(),
    );
    assert!(sent < PAIRS, "the flood was never stopped");
    assert!(seen.closed, "the connection was left open");
    let (code, _) = seen.goaway.expect("rapid reset ended without GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    // Streams the server accepted before their reset arrived may be forwarded; the flood
    // as a whole must not be.
    assert!(reached_backend(&s, "/rapid") <= 300);
    attack.assert_rss_grew_less_than_64_mib();
}

#[juggler_testkit::test]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    const FRAMES: usize = 1_000_000;
    let s = setup("continuation", Settings::DEFAULT).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATIONs of
    // one small literal header each (small, so the count limit acts before the size limit).
    let attack = attack(&s, FRAMES / 100, |batch| {
        let mut bytes = Vec::new();
        if batch == 0 {
            bytes.extend(frame(HEADERS, END_STREAM, 1, &get_block("/continued")));
        }
        let field = [0x00, 1, b'x', 1, b'y']; // literal "x: y", not indexed
        bytes.extend((0..100).flat_map(|_| frame(CONTINUATION, 0, 1, &field)));
        bytes
    })
    .await;
    let (seen, sent) = (&attack.seen, attack.batches * 100);
    println!(
        "CONTINUATION flood: {sent} of {FRAMES} frames written; {}; backend saw {} requests; {}",
        seen.ending(),
        reached_backend(&s, "/continued"),
        attack.bystanders(),
    );
    assert!(sent < FRAMES, "the flood was never stopped");
    let (code, _) = seen.goaway.expect("no GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(seen.closed);
    assert_eq!(reached_backend(&s, "/continued"), 0);
}

/// A flood of `kind` frames (SETTINGS or PING) with no request at all: Juggler acknowledges them
/// one at a time, so a client that does not read stalls only itself, and the connection (which
/// never opens a stream) is closed with GOAWAY at the idle timeout.
async fn control_frame_flood(kind: u8, name: &str) {
    const IDLE: Duration = Duration::from_secs(2);
    const FRAMES: usize = 1_000_000_000; // more than 8 s can carry: the flood lasts the whole run
    let mut settings = Settings::DEFAULT;
    settings.limits.client_idle_timeout = IDLE;
    let s = setup(name, settings).await;
    let attack = attack_for(
        &s,
        Duration::from_secs(3),
        FRAMES / 1000,
        Duration::from_secs(8),
        move |batch| {
            (0..1000u64)
                .flat_map(|i| {
                    let payload = match kind {
                        PING => ((batch as u64) << 10 | i).to_be_bytes().to_vec(),
                        _ => [0x0, 0x3, 0, 0, 0, 100].to_vec(), // SETTINGS_MAX_CONCURRENT_STREAMS = 100
                    };
                    frame(kind, 0, 0, &payload)
                })
                .collect()
        },
    )
    .await;
    let (seen, sent) = (&attack.seen, attack.batches * 1000);
    println!(
        "{name} flood: {sent} frames written in {:?}; {} SETTINGS ACKs and {} PING ACKs read; \
         {}; {}",
        seen.ended_after.unwrap_or_default(),
        seen.settings_acks,
        seen.ping_acks,
        seen.ending(),
        attack.bystanders(),
    );
    let (code, _) = seen.goaway.expect("no GOAWAY");
    assert_eq!(code, 0, "idle close is a NO_ERROR GOAWAY");
    let ended = seen.ended_after.unwrap();
    assert!(ended >= IDLE && ended < IDLE * 3, "ended after {ended:?}");
    assert!(seen.closed);
    assert_eq!(reached_backend(&s, "/"), reached_backend(&s, "/other"));
    attack.assert_rss_grew_less_than_64_mib();
}

#[juggler_testkit::test]
async fn settings_flood_is_acknowledged_in_step_and_closed_when_idle() {
    control_frame_flood(SETTINGS, "SETTINGS").await;
}

#[juggler_testkit::test]
async fn ping_flood_is_acknowledged_in_step_and_closed_when_idle() {
    control_frame_flood(PING, "PING").await;
}

/// A client that never writes after its preface, so never acknowledges the PING of Juggler's
/// graceful close: the close must not wait for it, and the connection ends shortly after the idle
/// timeout's GOAWAY rather than at the next keep-alive timeout.
#[juggler_testkit::test]
async fn client_that_never_acknowledges_is_closed_soon_after_its_idle_goaway() {
    const IDLE: Duration = Duration::from_secs(1);
    let mut settings = Settings::DEFAULT;
    settings.limits.client_idle_timeout = IDLE;
    let s = setup("silent", settings).await;
    let (read, _write) = raw_h2(&s.juggler, &s.cert).await;
    let started = Instant::now();
    let seen = read_frames(read, Acks::default(), started, Duration::from_secs(10)).await;
    let closed_after = started.elapsed();
    println!(
        "silent client: {}; closed after {closed_after:?}",
        seen.ending()
    );
    let (code, _) = seen.goaway.expect("no GOAWAY");
    assert_eq!(code, 0, "idle close is a NO_ERROR GOAWAY");
    assert!(seen.closed, "the connection was left open");
    assert!(closed_after < IDLE * 6, "closed after {closed_after:?}");
}

/// A request body that announces 10 bytes and never sends one.
struct NeverEnds;

impl Body for NeverEnds {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(10)
    }
}

#[juggler_testkit::test]
async fn stream_that_never_sends_its_body_gets_408_and_a_reset() {
    const BODY_TIMEOUT: Duration = Duration::from_secs(1);
    let mut settings = Settings::DEFAULT;
    settings.limits.body_read_timeout = BODY_TIMEOUT;
    let s = setup("stalled-body", settings).await;
    let stream = tls_connect_trusting(s.juggler.https_addr(), &s.cert, ALPN_H2).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // Many stalled streams on one connection: each is answered on its own.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let request = Request::post("https://localhost/upload")
            .header("content-length", "10")
            .body(NeverEnds)
            .unwrap();
        sender.ready().await.unwrap();
        stalled.push(sender.send_request(request));
    }
    let other = other_client(&s.juggler, &s.cert, Duration::from_secs(2));
    let mut statuses = Vec::new();
    for response in stalled {
        statuses.push(response.await.unwrap().status().as_u16());
    }
    let answered = started.elapsed();
    let slowest = other.await.unwrap();
    println!(
        "50 stalled bodies on one connection: answered {:?} after {answered:?}; backend saw \
         {} requests; other client's slowest answer {slowest:?}",
        tally(
            statuses
                .iter()
                .map(|s| if *s == 408 { "408" } else { "other" })
        ),
        reached_backend(&s, "/echo"),
    );
    assert!(statuses.iter().all(|status| *status == 408));
    assert!(answered >= BODY_TIMEOUT && answered < BODY_TIMEOUT * 4);
    assert_eq!(reached_backend(&s, "/upload"), 0);
    conn.abort();
}

/// An HTTP/2 connection whose client opens no receive window (`SETTINGS_INITIAL_WINDOW_SIZE`
/// 0) and asks for `streams` echoes of `body_len` bytes; returns it (kept open) once every
/// response head has arrived.
async fn starved_streams(
    s: &Setup,
    streams: usize,
    body_len: usize,
) -> (Vec<hyper::Response<hyper::body::Incoming>>, JoinHandle<()>) {
    let stream = tls_connect_trusting(s.juggler.https_addr(), &s.cert, ALPN_H2).await;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = Bytes::from(vec![b'w'; body_len]);
    let mut responses = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        sender.ready().await.unwrap();
        let request = Request::post("https://localhost/echo")
            .body(Full::new(body.clone()))
            .unwrap();
        // The head comes (HEADERS carry no flow control); the body cannot.
        responses.push(sender.send_request(request).await.unwrap());
    }
    (responses, conn)
}

#[juggler_testkit::test]
async fn window_starved_buffered_responses_hold_no_backend_connection() {
    // Pool of 2 to the one backend; 20 starved streams of 256 KiB each (buffered whole,
    // below response_buffer_bytes) must leave both pooled connections free.
    let s = setup("starved", Settings::DEFAULT).await;
    let rss_before = rss_kib();
    let (responses, conn) = starved_streams(&s, 20, 256 * 1024).await;
    let other = other_client(&s.juggler, &s.cert, Duration::from_secs(2));
    let slowest = other.await.unwrap();
    let rss_after = rss_kib();
    println!(
        "window starvation, 20 x 256 KiB buffered responses never read: backend saw {} \
         requests; pool open {:?}; other client's slowest answer \
         {slowest:?}; RSS {rss_before} -> {rss_after} KiB",
        reached_backend(&s, "/echo"),
        s.juggler.open_connections(),
    );
    assert_eq!(responses.len(), 20);
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(s.juggler.open_connections(), vec![2]);
    drop(responses);
    conn.abort();
}

#[juggler_testkit::test]
async fn window_starved_streamed_response_does_not_hold_the_pool_forever() {
    let s = setup("starved-stream", Settings::DEFAULT).await;
    // Two 4 MiB responses (above response_buffer_bytes: spooled to disk, so they no longer hold
    // the pooled connections while their client never opens its window).
    let (_responses, conn) = starved_streams(&s, 2, 4 * 1024 * 1024).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(40), async {
        let client = H2Client::connect(s.juggler.https_addr(), &s.cert).await;
        client.get("/other").await.unwrap()
    })
    .await;
    println!(
        "other client while 2 streamed responses are starved: {:?} after {:?}",
        answer.as_ref().map(|a| a.status),
        started.elapsed()
    );
    assert_eq!(answer.expect("no answer in 40 s").status, 200);
    conn.abort();
}

#[juggler_testkit::test]
async fn rapid_reset_one_pair_per_write_is_bounded_too() {
    const PAIRS: usize = 5_000;
    let s = setup("rapid-reset-slow", Settings::DEFAULT).await;
    // One pair per TLS record and write: the server may accept each stream before its reset.
    let attack = attack(&s, PAIRS, |n| reset_pair((n * 2 + 1) as u32)).await;
    let (seen, sent) = (&attack.seen, attack.batches);
    println!(
        "rapid reset, one pair per write: {sent} of {PAIRS} pairs written; {}; {} HEADERS and \
         {} RST_STREAM back; backend saw {} of them; {}",
        seen.ending(),
        seen.headers,
        seen.resets,
        reached_backend(&s, "/rapid"),
        attack.bystanders(),
    );
    assert!(sent < PAIRS, "the flood was never stopped");
    assert!(seen.closed, "the connection was left open");
    assert_eq!(seen.goaway.expect("no GOAWAY").0, ENHANCE_YOUR_CALM);
    assert!(reached_backend(&s, "/rapid") <= 300);
}
