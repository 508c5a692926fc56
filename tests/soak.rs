//! Chaos soak (issue 12, part 7). The release Juggler built from `tests/soak/` runs as a process of
//! its own, so the RSS and open descriptors read from `/proc/<pid>` are Juggler's alone. Mixed load
//! (GET and POST with bodies from 0 B to 8 MiB, over HTTP/1.1, HTTPS and HTTP/2; slow senders and
//! readers; clients vanishing mid-request) runs for `SOAK_SECONDS` while a chaos driver kills,
//! restarts, hangs and slows the three backends at random. Then it checks what must hold:
//!
//! - every request a client finished sending was answered: 2xx, or 502/503/504 as the README's
//!   failure table says (a 2xx must carry the client's own request id and body figures);
//! - no POST reached a backend twice, and no request whose client vanished mid-body reached one;
//! - no backend ever had more than `n` connections open, and Juggler never held more than `n`
//!   sockets to one backend; afterwards every pool is back at `n`;
//! - Juggler's RSS at rest at the end is at most 50 % above the larger of its readings after warm-up
//!   and halfway through (a gross leak; see `RSS_GROWTH_BOUND` for why no finer bound holds), open
//!   descriptors within 5 % of their warm-up count, and live bytes by jemalloc's own count (from
//!   `/metrics`) at most 5 % + 512 KiB more at the end than halfway (all read at rest: no clients,
//!   chaos over, pools refilled).
//!
//! Everything runs inside a private network namespace this test creates (`unshare(CLONE_NEWNET)`,
//! root only), so the compiled-in fixed ports collide with nothing and no byte leaves loopback.
//!
//! Run it with `make soak` (`SOAK_SECONDS`, default 600), which builds the Juggler variant with
//! `JUGGLER_CONFIG=tests/soak`. A plain `#[test]`, not `#[juggler_testkit::test]`: that bounds a
//! test to 60 s, this one bounds itself to `SOAK_SECONDS` plus four minutes.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fs;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use juggler_testkit::certs::{CertFiles, TestCert};
use juggler_testkit::tcp_table::{HeldSockets, TcpSocket};
use juggler_testkit::tls::{client_config, tls_connect, ALPN_H2, ALPN_HTTP11};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout, Instant, Sleep};

/// Where the soak variant listens and what it balances over (`tests/soak/load_balancer.toml`).
const JUGGLER_HTTP: &str = "127.0.0.1:18080";
const JUGGLER_HTTPS: &str = "127.0.0.1:18443";
/// The admin listener (shipped default): `/metrics` carries jemalloc's count of live bytes.
const ADMIN: &str = "127.0.0.1:9901";
const BACKEND_PORTS: [u16; 3] = [17001, 17002, 17003];
/// `connections_per_server` of the soak variant.
const POOL: usize = 4;

/// Statuses the README's failure table allows besides 2xx under this chaos: 502 (a POST on a
/// connection that died, a backend closing mid-response), 503 (every backend down or its queue
/// full, `queue.timeout`), 504 (`backend_timeout` against a hung backend).
const ALLOWED_ERRORS: [u16; 3] = [502, 503, 504];
/// Longest a finished request may wait for its answer: queue timeout (4 s) + backend timeout (2 s)
/// per attempt + a slow body, with room to spare.
const ANSWER_BOUND: Duration = Duration::from_secs(25);
/// Descriptors at the end may differ from their warm-up count, and live bytes at rest at the end
/// may exceed their reading halfway through the load (a leak grows over both halves of the load,
/// as traffic does), by this fraction (live bytes: plus `LIVE_SLACK_KIB`).
const TOLERANCE: f64 = 0.05;
/// Live bytes at rest move by a few hundred KiB with the run's history (caches sized by what the
/// run met: 2,554 → 2,827 → 2,589 KiB in a 5-minute run, 2,535 → 2,520 → 2,809 KiB in a
/// 10-minute one), none growing with its length. A leak of some 30 B per request over the second
/// half of a 10-minute run (18,000 requests) still shows.
const LIVE_SLACK_KIB: u64 = 512;
/// RSS at rest at the end may exceed the larger of its readings after warm-up and halfway through
/// by this fraction. RSS at rest on this 10-16 MiB process depends on the run's history by more
/// than any small leak would add: three 5-minute runs read 11,280 → 14,084 → 14,064 KiB,
/// 13,248 → 10,504 → 11,996 KiB and 14,916 → 10,428 → 15,472 KiB (warm-up, halfway, end), and no
/// run grew with its length (10-minute runs ended -2.9 % and -7.3 % from warm-up). Against the
/// larger of two readings the swings stay far below this bound; a leak raises both later
/// readings, so what this catches is a gross one: some 6 MiB over half a run. Finer leaks need
/// the allocator's own count of live bytes, not the resident set.
const RSS_GROWTH_BOUND: f64 = 0.50;
/// jemalloc settings for the Juggler under test: freed pages go back to the kernel after 1 s
/// instead of 10 s, by a background thread rather than only when Juggler next allocates. An idle
/// Juggler otherwise keeps whatever its last seconds freed, and a reading at rest swung by ±25 %
/// from run to run; with these, RSS at rest is what Juggler holds (live memory and fragmentation).
const MALLOC_CONF: &str = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000";
/// Longest Juggler rests before RSS and descriptors are read; the reading is taken once RSS has
/// stayed within 1 % for three seconds, and not before `REST_AT_LEAST`: tokio's blocking threads
/// (spill-file I/O) exit after 10 s idle, taking their stacks and allocator caches with them.
const REST: Duration = Duration::from_secs(25);
const REST_AT_LEAST: Duration = Duration::from_secs(12);
/// Largest POST body; larger than `body_memory_bytes`, so it spills to disk inside Juggler.
const MAX_BODY: usize = 8 << 20;
/// Largest GET response: under `response_buffer_bytes` (1 MiB), so a response is read whole and a
/// backend dying mid-response is a clean 502, never a truncated 200.
const MAX_RESPONSE: usize = 768 << 10;

/// Client workers of each kind. Two cores are shared by Juggler, the backends and these.
const PLAIN_WORKERS: usize = 8;
const HTTPS_WORKERS: usize = 4;
/// HTTP/2 connections, each carrying `H2_STREAMS` requests at a time.
const H2_CONNECTIONS: usize = 2;
const H2_STREAMS: usize = 4;
const VANISHING_WORKERS: usize = 2;

#[test]
#[ignore = "minutes long and needs root: run with `make soak` (SOAK_SECONDS)"]
fn chaos_soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|value| {
            value
                .parse()
                .expect("SOAK_SECONDS must be a number of seconds")
        })
        .unwrap_or(600);
    assert!(seconds >= 20, "SOAK_SECONDS must be at least 20");
    enter_private_network();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the soak's runtime");
    let bound = Duration::from_secs(seconds + 240);
    runtime.block_on(async {
        timeout(bound, soak(Duration::from_secs(seconds)))
            .await
            .unwrap_or_else(|_| panic!("the soak did not finish within {bound:?}"))
    });
}

/// Moves this thread (and every thread and process it starts from now on) into a new network
/// namespace with only a loopback interface, and brings that up.
fn enter_private_network() {
    // SAFETY: unshare(2) takes no pointers; it only changes this thread's network namespace.
    let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert!(
        result == 0,
        "unshare(CLONE_NEWNET) failed: {} (the soak runs in a private network namespace and needs root)",
        io::Error::last_os_error()
    );
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("running `ip link set lo up` (package iproute2)");
    assert!(status.success(), "`ip link set lo up` failed: {status}");
}

async fn soak(duration: Duration) {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let warm_up = (duration / 10).clamp(Duration::from_secs(10), Duration::from_secs(60));
    println!(
        "soak: {} s of load ({} s warm-up), seed {seed}",
        duration.as_secs(),
        warm_up.as_secs()
    );

    let ledger = Arc::new(Ledger::default());
    let mut backends = Vec::new();
    for port in BACKEND_PORTS {
        backends.push(ChaosBackend::start(port, Arc::clone(&ledger)).await);
    }
    let cert = TestCert::generate();
    let files = CertFiles::new("soak", &cert);
    let mut juggler = JugglerProcess::start(&files);
    let cert = Arc::new(cert);
    let mut checks = Checks::default();

    // Warm-up, then rest: the figures every later reading is held against.
    let tally = Arc::new(Tally::default());
    let chaos = Arc::new(ChaosCounts::default());
    let mut most = Most::default();
    let mut rng = Rng(seed);
    backends = run_phase(
        warm_up, backends, &juggler, &cert, &tally, &chaos, &mut most, &mut rng,
    )
    .await;
    let pools_warm = wait_for_full_pools(&backends, &juggler).await;
    let (rss_warm, fds_warm) = (juggler.rss_kib(), juggler.open_fds());
    let live_warm = juggler.allocated_kib().await;
    println!(
        "after warm-up: RSS {rss_warm} KiB, live {live_warm:?} KiB, {fds_warm} open fds, pools {pools_warm:?}"
    );

    // Two equal halves with a reading at rest between them: a leak grows in both (printed, to
    // tell a leak's slope from the history-dependent swings of RSS at rest).
    let half = (duration - warm_up) / 2;
    backends = run_phase(
        half, backends, &juggler, &cert, &tally, &chaos, &mut most, &mut rng,
    )
    .await;
    wait_for_full_pools(&backends, &juggler).await;
    let rss_mid = juggler.rss_kib();
    let live_mid = juggler.allocated_kib().await;
    println!("halfway: RSS {rss_mid} KiB, live {live_mid:?} KiB");
    backends = run_phase(
        half, backends, &juggler, &cert, &tally, &chaos, &mut most, &mut rng,
    )
    .await;
    let pools_end = wait_for_full_pools(&backends, &juggler).await;
    let (rss_end, fds_end) = (juggler.rss_kib(), juggler.open_fds());
    let live_end = juggler.allocated_kib().await;

    let most_settled = backends.each(|state| state.most_settled.load(Ordering::SeqCst));
    let most_at_accept = backends.each(|state| state.most_at_accept.load(Ordering::SeqCst));
    let status = juggler.stop();
    let log = juggler.log();
    for mut backend in backends {
        backend.kill().await;
    }

    // ---- figures ----
    let t = &tally;
    let sent = t.sent.load(Ordering::Relaxed);
    let statuses = t.statuses.lock().unwrap().clone();
    let count = |code: u16| statuses.get(&code).copied().unwrap_or(0);
    let ok: u64 = statuses
        .iter()
        .filter(|(code, _)| (200..300).contains(*code))
        .map(|(_, n)| n)
        .sum();
    let other: Vec<_> = statuses
        .iter()
        .filter(|(code, _)| !(200..300).contains(*code) && !ALLOWED_ERRORS.contains(code))
        .collect();
    let no_answer = t.no_answer.load(Ordering::Relaxed);
    let wrong = t.wrong.load(Ordering::Relaxed);
    println!("\n==== soak figures ====");
    println!(
        "requests finished sending: {sent} (GET {}, POST {}, of them slow {}; HTTP/1.1 {}, HTTPS {}, HTTP/2 {}; POST bytes {} MiB)",
        t.gets.load(Ordering::Relaxed),
        t.posts.load(Ordering::Relaxed),
        t.slow.load(Ordering::Relaxed),
        t.plain.load(Ordering::Relaxed),
        t.https.load(Ordering::Relaxed),
        t.h2.load(Ordering::Relaxed),
        t.post_bytes.load(Ordering::Relaxed) >> 20,
    );
    println!(
        "answers: 2xx {ok}, 502 {}, 503 {}, 504 {}, other {other:?}; no answer {no_answer}; wrong answer {wrong}",
        count(502),
        count(503),
        count(504)
    );
    println!(
        "vanished clients: {} mid-body (reached a backend: {}), {} after sending",
        t.vanished_mid_body.load(Ordering::Relaxed),
        ledger.vanished_reached(),
        t.vanished_after.load(Ordering::Relaxed),
    );
    println!(
        "chaos: {} kills (+ restarts), {} hangs, {} slow spells",
        chaos.kills.load(Ordering::Relaxed),
        chaos.hangs.load(Ordering::Relaxed),
        chaos.slows.load(Ordering::Relaxed)
    );
    let twice = ledger.posts_twice();
    println!(
        "backends received: {} GETs, {} POSTs ({} distinct ids), POSTs received twice: {}",
        ledger.gets.load(Ordering::Relaxed),
        ledger.post_arrivals(),
        ledger.posts.lock().unwrap().len(),
        twice.len()
    );
    println!(
        "most connections open at a backend (n = {POOL}): {:?} settled, {:?} at accept; most Juggler held to a backend: {:?}",
        most_settled, most_at_accept, most.juggler_held
    );
    for excess in &most.excess {
        println!("  Juggler held more than n: {excess}");
    }
    println!(
        "sockets /proc/<pid>/net/tcp listed twice in one reading (counted once): {}",
        most.listed_twice
    );
    println!("pools at rest: after warm-up {pools_warm:?}, at the end {pools_end:?}");
    println!(
        "Juggler RSS: {rss_warm} KiB after warm-up, {rss_mid} KiB halfway ({:+.1} %), {rss_end} KiB at \
         the end ({:+.1} % over the second half, {:+.1} % in all), most {} KiB under load",
        percent(rss_warm, rss_mid),
        percent(rss_mid, rss_end),
        percent(rss_warm, rss_end),
        most.rss_kib
    );
    println!(
        "Juggler live bytes (jemalloc): {live_warm:?} KiB after warm-up, {live_mid:?} KiB halfway, \
         {live_end:?} KiB at the end"
    );
    println!(
        "Juggler open fds: {fds_warm} after warm-up, {fds_end} at the end ({:+.1} %), most {} under load",
        percent(fds_warm as u64, fds_end as u64),
        most.fds
    );
    let warnings = log.lines().filter(|line| line.contains(" WARN ")).count();
    let errors: Vec<_> = log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .collect();
    let kept = kept_log_path();
    let _ = fs::write(&kept, &log);
    println!(
        "Juggler exit after SIGTERM: {status:?}; {warnings} warnings and {} errors in its log (kept in {})",
        errors.len(),
        kept.display()
    );
    for error in errors.iter().take(10) {
        println!("  {error}");
    }
    for sample in t.samples.lock().unwrap().iter() {
        println!("  failure: {sample}");
    }

    // ---- checks ----
    // Failed now and then until 235d278 (see the README's Hardening section): Juggler's stall
    // guard closed HTTP/2 connections with streams in flight ("bug: a client connection keeps
    // running without socket progress"), and those streams got no answer.
    let stall_guard = errors
        .iter()
        .any(|line| line.contains("without socket progress"));
    checks.expect(
        no_answer == 0,
        format!(
            "{no_answer} requests got no answer{}",
            if stall_guard {
                " (JUGGLER BUG, not the soak's: its stall guard closed client connections with \
                 requests in flight; fixed for HTTP/2 in 235d278, see the README's Hardening section)"
            } else {
                ""
            }
        ),
    );
    checks.expect(
        wrong == 0,
        format!("{wrong} 2xx answers did not match their request"),
    );
    checks.expect(
        other.is_empty(),
        format!("statuses outside 2xx/502/503/504: {other:?}"),
    );
    checks.expect(
        t.connect_failures.load(Ordering::Relaxed) == 0,
        format!(
            "{} client connects to Juggler failed",
            t.connect_failures.load(Ordering::Relaxed)
        ),
    );
    checks.expect(
        twice.is_empty(),
        format!("POSTs that reached a backend twice: {twice:?}"),
    );
    checks.expect(
        ledger.vanished_reached() == 0,
        "a request whose client vanished mid-body reached a backend".to_owned(),
    );
    checks.expect(
        ledger.bad_framing.load(Ordering::Relaxed) == 0,
        "a backend received a request without a usable Content-Length".to_owned(),
    );
    checks.expect(
        most_settled.iter().all(|&open| open <= POOL),
        format!("a backend had more than n = {POOL} connections open"),
    );
    checks.expect(
        most.juggler_held.iter().all(|&held| held <= POOL),
        format!("Juggler held more than n = {POOL} sockets to a backend"),
    );
    checks.expect(
        pools_end == [POOL; 3] && pools_warm == [POOL; 3],
        format!("pools not back at n = {POOL}: {pools_warm:?} / {pools_end:?}"),
    );
    // Growth is what a leak looks like; less at the end is allocator state given back.
    let rss_before = rss_warm.max(rss_mid);
    checks.expect(
        percent(rss_before, rss_end) <= RSS_GROWTH_BOUND * 100.0,
        format!(
            "RSS at rest grew from {rss_warm} KiB after warm-up and {rss_mid} KiB halfway to \
             {rss_end} KiB"
        ),
    );
    match (live_mid, live_end) {
        (Some(mid), Some(end)) => checks.expect(
            end as f64 <= mid as f64 * (1.0 + TOLERANCE) + LIVE_SLACK_KIB as f64,
            format!("live bytes at rest grew over the second half: {mid} KiB to {end} KiB"),
        ),
        _ => checks.expect(
            false,
            "Juggler's /metrics gave no juggler_allocator_allocated_bytes".to_owned(),
        ),
    }
    checks.expect(
        percent(fds_warm as u64, fds_end as u64).abs() <= TOLERANCE * 100.0,
        format!("open fds moved from {fds_warm} to {fds_end}"),
    );
    checks.expect(
        status.is_some_and(|status| status.success()),
        format!("Juggler did not exit 0 after SIGTERM: {status:?}"),
    );
    checks.expect(
        errors.is_empty(),
        format!(
            "Juggler logged {} errors (each a bug by its own account)",
            errors.len()
        ),
    );
    checks.expect(sent > 0 && ok > 0, "no request was answered 2xx".to_owned());
    if !checks.failed.is_empty() {
        panic!("soak failed:\n  {}", checks.failed.join("\n  "));
    }
    println!("soak: every check held");
}

/// Where Juggler's log of the last soak stays for reading afterwards.
fn kept_log_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-juggler.log")
}

fn percent(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.0;
    }
    (to as f64 - from as f64) * 100.0 / from as f64
}

/// The checks that failed, reported together after the figures.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn expect(&mut self, holds: bool, otherwise: String) {
        if !holds {
            self.failed.push(otherwise);
        }
    }
}

/// One stretch of load with chaos, ending at rest: clients finished, every backend up and
/// answering normally. Returns the backends (restarted where the chaos left one killed).
#[allow(clippy::too_many_arguments)]
async fn run_phase(
    length: Duration,
    backends: Vec<ChaosBackend>,
    juggler: &JugglerProcess,
    cert: &Arc<TestCert>,
    tally: &Arc<Tally>,
    chaos: &Arc<ChaosCounts>,
    most: &mut Most,
    rng: &mut Rng,
) -> Vec<ChaosBackend> {
    let until = Instant::now() + length;
    let mut clients = JoinSet::new();
    for worker in 0..PLAIN_WORKERS + HTTPS_WORKERS {
        let kind = if worker < PLAIN_WORKERS {
            Kind::Plain
        } else {
            Kind::Https
        };
        let (tally, cert, seed) = (Arc::clone(tally), Arc::clone(cert), rng.next());
        clients.spawn(h1_worker(kind, until, cert, tally, Rng(seed)));
    }
    for _ in 0..H2_CONNECTIONS {
        let (tally, cert, seed) = (Arc::clone(tally), Arc::clone(cert), rng.next());
        clients.spawn(h2_worker(until, cert, tally, Rng(seed)));
    }
    for _ in 0..VANISHING_WORKERS {
        let (tally, cert, seed) = (Arc::clone(tally), Arc::clone(cert), rng.next());
        clients.spawn(vanishing_worker(until, cert, tally, Rng(seed)));
    }
    let backend_states: Vec<_> = backends.iter().map(|b| Arc::clone(&b.state)).collect();
    let started = Instant::now();
    let mut drivers = JoinSet::new();
    for backend in backends {
        let (chaos, seed) = (Arc::clone(chaos), rng.next());
        drivers.spawn(chaos_driver(backend, until, chaos, Rng(seed)));
    }
    // Sample while the load runs: Juggler's sockets per backend every 100 ms, RSS and fds every s.
    let mut tick = 0u64;
    while Instant::now() < until {
        sleep(Duration::from_millis(100)).await;
        let (states, listed_twice) = juggler.backend_socket_states();
        most.listed_twice += listed_twice;
        for (index, held) in states.iter().enumerate() {
            most.juggler_held[index] = most.juggler_held[index].max(held.len());
            if held.len() > POOL && most.excess.len() < 10 {
                let mut counted: Vec<String> = Vec::new();
                for state in [
                    "ESTABLISHED",
                    "SYN_SENT",
                    "CLOSE_WAIT",
                    "CLOSE",
                    "FIN_WAIT1",
                    "other",
                ] {
                    let n = held.iter().filter(|socket| socket.state == state).count();
                    if n > 0 {
                        counted.push(format!("{n} {state}"));
                    }
                }
                let state = &backend_states[index];
                // Juggler's sockets the backend does not hold open: in its accept backlog, or
                // closed on its side without Juggler noticing yet.
                let peers = state.peers.lock().unwrap().clone();
                let unknown: Vec<String> = held
                    .iter()
                    .filter(|socket| !peers.contains(&socket.local_port))
                    .map(|socket| {
                        format!(
                            "{} {} tx:rx {}",
                            socket.local_port, socket.state, socket.queues
                        )
                    })
                    .collect();
                most.excess.push(format!(
                    "port {}: {} ({}) at {:.1} s of a phase; backend {} in mode {}, {} open by its count; \
                     not open at the backend: {unknown:?}",
                    BACKEND_PORTS[index],
                    held.len(),
                    counted.join(", "),
                    started.elapsed().as_secs_f64(),
                    if state.up.load(Ordering::SeqCst) { "up" } else { "down" },
                    ["normal", "slow", "hang"][state.mode.load(Ordering::SeqCst) as usize],
                    state.open.load(Ordering::SeqCst),
                ));
            }
        }
        tick += 1;
        if tick % 10 == 0 {
            most.rss_kib = most.rss_kib.max(juggler.rss_kib());
            most.fds = most.fds.max(juggler.open_fds());
        }
    }
    while let Some(joined) = clients.join_next().await {
        joined.expect("a client worker panicked");
    }
    let mut backends = Vec::new();
    while let Some(joined) = drivers.join_next().await {
        backends.push(joined.expect("a chaos driver panicked"));
    }
    backends.sort_by_key(|backend| backend.port);
    backends
}

/// Waits (up to 15 s) until every backend has `n` connections open and Juggler holds `n` sockets
/// to each, then [`REST`]; returns what the backends count then.
async fn wait_for_full_pools(backends: &[ChaosBackend], juggler: &JugglerProcess) -> [usize; 3] {
    let started = Instant::now();
    let open = || {
        let mut open = [0; 3];
        for (slot, backend) in open.iter_mut().zip(backends) {
            *slot = backend.state.open.load(Ordering::SeqCst);
        }
        open
    };
    while started.elapsed() < Duration::from_secs(15) {
        if open() == [POOL; 3] && juggler.backend_sockets() == [POOL; 3] {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    // The same last traffic before every reading: small GETs from as many clients as there are
    // pooled connections, so each connection's last exchange was a small one whatever the chaos
    // left behind (a connection may keep buffers sized by its last response).
    let mut small = JoinSet::new();
    for client in 0..3 * POOL {
        small.spawn(async move {
            let Ok(mut sender) = h1_connect(Kind::Plain, &TestCert::generate()).await else {
                return;
            };
            for round in 0..8 {
                let id = format!("rest-{client}-{round}");
                let op = Op {
                    id,
                    method: Method::GET,
                    response_size: 16,
                    body: Bytes::new(),
                    body_sum: 0,
                    slow: false,
                };
                if sender.ready().await.is_err() {
                    return;
                }
                let _ = exchange(&op, sender.send_request(op.request(Kind::Plain))).await;
            }
        });
    }
    while small.join_next().await.is_some() {}
    // At rest, memory is read once jemalloc (1 s decay here) has returned the pages finished
    // requests freed; sooner, RSS depends on how much traffic the last seconds happened to carry.
    let mut readings: Vec<u64> = Vec::new();
    let rest_started = Instant::now();
    while rest_started.elapsed() < REST {
        sleep(Duration::from_secs(1)).await;
        readings.push(juggler.rss_kib());
        if let [.., a, b, c] = readings[..] {
            let steady = a.abs_diff(c) * 100 <= a && b.abs_diff(c) * 100 <= b;
            if steady && rest_started.elapsed() >= REST_AT_LEAST {
                break;
            }
        }
    }
    println!(
        "at rest, RSS each second (KiB): {readings:?}; {} threads",
        juggler.threads()
    );
    open()
}

// ---------------------------------------------------------------------------------------------
// Juggler as a process

/// The soak variant of `bin/juggler`, started in a directory holding its certificate, killed
/// when dropped.
struct JugglerProcess {
    child: Child,
    pid: u32,
    log_path: std::path::PathBuf,
}

impl JugglerProcess {
    fn start(files: &CertFiles) -> JugglerProcess {
        let binary = env!("CARGO_BIN_EXE_juggler");
        let routes = Command::new(binary)
            .arg("--print-routes")
            .output()
            .expect("running juggler --print-routes");
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(
            routes.contains("tests/soak/load_balancer.toml")
                && routes.contains(JUGGLER_HTTP)
                && BACKEND_PORTS
                    .iter()
                    .all(|port| routes.contains(&format!("127.0.0.1:{port}"))),
            "{binary} is not the soak variant; build and run it with `make soak` \
             (JUGGLER_CONFIG=tests/soak JUGGLER_ROUTES=tests/soak/routes.toml). It says:\n{routes}"
        );
        let log_path = files.dir.file("juggler.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(binary)
            .current_dir(files.dir.path())
            .env("RUST_LOG", "warn")
            .env("_RJEM_MALLOC_CONF", MALLOC_CONF)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting juggler");
        let pid = child.id();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(JUGGLER_HTTP).is_err()
            || std::net::TcpStream::connect(JUGGLER_HTTPS).is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "juggler did not listen within 10 s: {}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        JugglerProcess {
            child,
            pid,
            log_path,
        }
    }

    /// Live bytes by jemalloc's own count, from the admin listener's `/metrics`
    /// (`juggler_allocator_allocated_bytes`), in KiB; `None` if it cannot be read.
    async fn allocated_kib(&self) -> Option<u64> {
        let mut stream = TcpStream::connect(ADMIN).await.ok()?;
        let request = b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n";
        stream.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        let bytes: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("juggler_allocator_allocated_bytes "))?
            .trim()
            .parse()
            .ok()?;
        Some(bytes as u64 / 1024)
    }

    /// Resident memory (`VmRSS` of `/proc/<pid>/status`).
    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// `Threads` of `/proc/<pid>/status`.
    fn threads(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Entries of `/proc/<pid>/fd`.
    fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// How many sockets Juggler holds to each backend.
    fn backend_sockets(&self) -> [usize; 3] {
        self.backend_socket_states().0.map(|states| states.len())
    }

    /// Juggler's sockets to each backend in any state (one it has closed leaves its descriptor
    /// table), and how many entries the kernel's table listed twice (see [`HeldSockets`]).
    fn backend_socket_states(&self) -> ([Vec<TcpSocket>; 3], usize) {
        let held = HeldSockets::of(&[self.pid]);
        let toward = |port| held.toward(port).cloned().collect();
        (BACKEND_PORTS.map(toward), held.listed_twice)
    }

    /// SIGTERM, then the exit status (None if it did not exit within 15 s).
    fn stop(&mut self) -> Option<ExitStatus> {
        // SAFETY: kill(2) with a pid this test started and still owns (not yet reaped).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for JugglerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Backends that record request ids and can be killed, restarted, hung and slowed

/// What every backend received, together: a POST re-sent to another backend is caught too.
#[derive(Default)]
struct Ledger {
    /// POST request ids and how often each arrived (whole).
    posts: Mutex<HashMap<String, u32>>,
    gets: AtomicU64,
    /// Requests without a Content-Length Juggler should have set (or with chunked framing).
    bad_framing: AtomicU64,
}

impl Ledger {
    fn record(&self, method: &str, id: &str) {
        if method == "POST" {
            *self.posts.lock().unwrap().entry(id.to_owned()).or_insert(0) += 1;
        } else {
            self.gets.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn posts_twice(&self) -> Vec<(String, u32)> {
        let posts = self.posts.lock().unwrap();
        let mut twice: Vec<_> = posts
            .iter()
            .filter(|(_, &count)| count > 1)
            .map(|(id, &count)| (id.clone(), count))
            .collect();
        twice.sort();
        twice.truncate(20);
        twice
    }

    fn post_arrivals(&self) -> u64 {
        self.posts.lock().unwrap().values().map(|&n| n as u64).sum()
    }

    /// Requests of clients that vanished mid-body which a backend received anyway.
    fn vanished_reached(&self) -> usize {
        let posts = self.posts.lock().unwrap();
        posts.keys().filter(|id| id.starts_with("vanish-")).count()
    }
}

const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const HANG: u8 = 2;

/// One backend's state across kills and restarts.
struct BackendState {
    /// NORMAL, SLOW (answers after 100-1500 ms) or HANG (answers only once back to NORMAL).
    mode: AtomicU8,
    /// Listening (false between a kill and its restart).
    up: std::sync::atomic::AtomicBool,
    /// Connections open now (from accept until the handler sees EOF or is killed).
    open: AtomicUsize,
    /// Most open right after an accept, and most still open 100 ms after such a peak: Juggler
    /// closing a connection and opening its replacement can cross the backend noticing the EOF.
    most_at_accept: AtomicUsize,
    most_settled: AtomicUsize,
    /// The peer (Juggler's local) ports of the connections open now.
    peers: Mutex<HashSet<u16>>,
}

/// Counts a connection open while its handler lives, also when the handler is aborted.
struct OpenGuard(Arc<BackendState>, u16);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.peers.lock().unwrap().remove(&self.1);
    }
}

struct ChaosBackend {
    port: u16,
    state: Arc<BackendState>,
    ledger: Arc<Ledger>,
    /// The accept loop; it owns every connection task, so aborting it closes them all.
    task: Option<JoinHandle<()>>,
}

impl ChaosBackend {
    async fn start(port: u16, ledger: Arc<Ledger>) -> ChaosBackend {
        let state = Arc::new(BackendState {
            mode: AtomicU8::new(NORMAL),
            up: std::sync::atomic::AtomicBool::new(false),
            open: AtomicUsize::new(0),
            most_at_accept: AtomicUsize::new(0),
            most_settled: AtomicUsize::new(0),
            peers: Mutex::new(HashSet::new()),
        });
        let mut backend = ChaosBackend {
            port,
            state,
            ledger,
            task: None,
        };
        backend.restart().await;
        backend
    }

    /// Listens again on its port (the kernel may hold it for a moment after a kill).
    async fn restart(&mut self) {
        let address: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(error) => {
                    attempts += 1;
                    assert!(attempts < 100, "cannot listen on {address}: {error}");
                    sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let (state, ledger) = (Arc::clone(&self.state), Arc::clone(&self.ledger));
        self.task = Some(tokio::spawn(accept_loop(listener, state, ledger)));
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Closes the listener and every connection at once, as a crashed backend would, and waits
    /// until every connection's guard has dropped.
    async fn kill(&mut self) {
        self.state.up.store(false, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        for _ in 0..200 {
            if self.state.open.load(Ordering::SeqCst) == 0 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<BackendState>, ledger: Arc<Ledger>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, peer)) => (stream, peer.port()),
            Err(_) => {
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
        state.peers.lock().unwrap().insert(peer);
        let guard = OpenGuard(Arc::clone(&state), peer);
        state.most_at_accept.fetch_max(open, Ordering::SeqCst);
        if open > POOL {
            let state = Arc::clone(&state);
            connections.spawn(async move {
                sleep(Duration::from_millis(100)).await;
                let still = state.open.load(Ordering::SeqCst);
                state.most_settled.fetch_max(still, Ordering::SeqCst);
            });
        } else {
            state.most_settled.fetch_max(open, Ordering::SeqCst);
        }
        let (state, ledger) = (Arc::clone(&state), Arc::clone(&ledger));
        connections.spawn(async move {
            let _ = serve_connection(stream, &state, &ledger).await;
            drop(guard);
        });
        while connections.try_join_next().is_some() {}
    }
}

/// One request as the backend read it.
struct Received {
    method: String,
    path: String,
    id: String,
    body_len: usize,
    body_sum: u64,
}

/// HTTP/1.1 keep-alive, one request at a time (as Juggler sends them), bodies by Content-Length.
async fn serve_connection(
    mut stream: TcpStream,
    state: &BackendState,
    ledger: &Ledger,
) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(16 << 10);
    loop {
        let Some(request) = read_request(&mut stream, &mut buffer, ledger).await? else {
            return Ok(());
        };
        ledger.record(&request.method, &request.id);
        // Slow or hung: hold the answer, but notice Juggler giving up (EOF) at once.
        let slow_until =
            Instant::now() + Duration::from_millis(100 + fastish_random(&request.id) % 1400);
        loop {
            let mode = state.mode.load(Ordering::SeqCst);
            let waiting = match mode {
                HANG => true,
                SLOW => Instant::now() < slow_until,
                _ => false,
            };
            if !waiting {
                break;
            }
            let mut probe = [0u8; 1024];
            tokio::select! {
                read = stream.read(&mut probe) => match read? {
                    0 => return Ok(()),
                    n => buffer.extend_from_slice(&probe[..n]),
                },
                _ = sleep(Duration::from_millis(20)) => {}
            }
        }
        let body = if request.method == "GET" {
            let size = request
                .path
                .strip_prefix("/get/")
                .and_then(|size| size.parse::<usize>().ok())
                .unwrap_or(0)
                .min(MAX_RESPONSE);
            pattern().slice(..size)
        } else {
            Bytes::from_static(b"ok\n")
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-request-id: {}\r\nx-body-len: {}\r\nx-body-sum: {}\r\n\r\n",
            body.len(),
            request.id,
            request.body_len,
            request.body_sum
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
    }
}

/// Reads one request (head and Content-Length body) into `buffer`; `None` on a clean EOF.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    ledger: &Ledger,
) -> io::Result<Option<Received>> {
    let mut chunk = vec![0u8; 64 << 10];
    let (head_len, method, path, id, content_length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = request
            .parse(buffer)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?
        {
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case(name))
                    .map(|header| String::from_utf8_lossy(header.value).into_owned())
            };
            let length = header("content-length").and_then(|value| value.parse::<usize>().ok());
            if header("transfer-encoding").is_some()
                || (length.is_none() && request.method != Some("GET"))
            {
                ledger.bad_framing.fetch_add(1, Ordering::Relaxed);
            }
            break (
                head_len,
                request.method.unwrap_or("").to_owned(),
                request.path.unwrap_or("").to_owned(),
                header("x-request-id").unwrap_or_default(),
                length.unwrap_or(0),
            );
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    buffer.drain(..head_len);
    let mut body_len = 0;
    let mut body_sum = 0u64;
    while body_len < content_length {
        if buffer.is_empty() {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None); // a body cut short never counts as received
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let take = buffer.len().min(content_length - body_len);
        body_sum = buffer[..take]
            .iter()
            .fold(body_sum, |sum, &byte| sum.wrapping_add(byte as u64));
        body_len += take;
        buffer.drain(..take);
    }
    Ok(Some(Received {
        method,
        path,
        id,
        body_len,
        body_sum,
    }))
}

/// A cheap per-request number from its id, for the slow mode's delay.
fn fastish_random(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[derive(Default)]
struct ChaosCounts {
    kills: AtomicU64,
    hangs: AtomicU64,
    slows: AtomicU64,
}

/// Until `until`: every 1-6 s, kill (down 0.3-3 s, then restarted on its port), hang (1-5 s) or
/// slow (2-8 s) this backend. Returns it running and answering normally.
async fn chaos_driver(
    mut backend: ChaosBackend,
    until: Instant,
    counts: Arc<ChaosCounts>,
    mut rng: Rng,
) -> ChaosBackend {
    // At most until + 8 s: every step is bounded and the loop stops starting new ones at `until`.
    while Instant::now() + Duration::from_secs(1) < until {
        sleep(rng.duration(1000, 6000)).await;
        if Instant::now() >= until {
            break;
        }
        match rng.below(10) {
            0..=3 => {
                counts.kills.fetch_add(1, Ordering::Relaxed);
                backend.kill().await;
                sleep(rng.duration(300, 3000)).await;
                backend.restart().await;
            }
            4..=6 => {
                counts.hangs.fetch_add(1, Ordering::Relaxed);
                backend.set_mode(HANG);
                sleep(rng.duration(1000, 5000)).await;
                backend.set_mode(NORMAL);
            }
            _ => {
                counts.slows.fetch_add(1, Ordering::Relaxed);
                backend.set_mode(SLOW);
                sleep(rng.duration(2000, 8000)).await;
                backend.set_mode(NORMAL);
            }
        }
    }
    backend
}

// ---------------------------------------------------------------------------------------------
// Clients

/// 9 MiB of varied bytes; request bodies and responses are slices of it.
fn pattern() -> Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN
        .get_or_init(|| {
            let mut rng = Rng(0x5eed);
            Bytes::from(
                (0..MAX_BODY + (1 << 20))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .clone()
}

/// What the clients saw, over the whole soak.
#[derive(Default)]
struct Tally {
    /// Requests whose client finished sending them (vanishing clients excluded).
    sent: AtomicU64,
    gets: AtomicU64,
    posts: AtomicU64,
    slow: AtomicU64,
    plain: AtomicU64,
    https: AtomicU64,
    h2: AtomicU64,
    post_bytes: AtomicU64,
    statuses: Mutex<HashMap<u16, u64>>,
    no_answer: AtomicU64,
    wrong: AtomicU64,
    connect_failures: AtomicU64,
    vanished_mid_body: AtomicU64,
    vanished_after: AtomicU64,
    /// The first few failures, described.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn sample(&self, what: String) {
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 20 {
            samples.push(what);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Plain,
    Https,
    H2,
}

/// One request a worker sends.
struct Op {
    id: String,
    method: Method,
    /// GET: the response size asked for.
    response_size: usize,
    body: Bytes,
    body_sum: u64,
    /// Trickles its body and reads its answer slowly.
    slow: bool,
}

impl Op {
    fn random(id: String, rng: &mut Rng) -> Op {
        let slow = rng.below(10) == 0;
        if rng.below(100) < 55 {
            let response_size = if slow {
                rng.range(64 << 10, 256 << 10)
            } else {
                random_size(rng, MAX_RESPONSE)
            };
            return Op {
                id,
                method: Method::GET,
                response_size,
                body: Bytes::new(),
                body_sum: 0,
                slow,
            };
        }
        let len = if slow {
            rng.range(8 << 10, 64 << 10)
        } else {
            random_size(rng, MAX_BODY)
        };
        let start = rng.below((pattern().len() - len) as u64) as usize;
        let body = pattern().slice(start..start + len);
        let body_sum = body
            .iter()
            .fold(0u64, |sum, &byte| sum.wrapping_add(byte as u64));
        Op {
            id,
            method: Method::POST,
            response_size: 0,
            body,
            body_sum,
            slow,
        }
    }

    fn request(&self, kind: Kind) -> Request<Trickle> {
        let path = if self.method == Method::GET {
            format!("/get/{}", self.response_size)
        } else {
            "/post".to_owned()
        };
        let builder = match kind {
            Kind::H2 => Request::builder().uri(format!("https://localhost{path}")),
            Kind::Plain | Kind::Https => Request::builder().uri(path).header("host", "localhost"),
        };
        let body = if self.slow {
            Trickle::new(
                self.body.clone(),
                self.body.len().div_ceil(8).max(1),
                Some(Duration::from_millis(200)),
            )
        } else {
            Trickle::new(self.body.clone(), 256 << 10, None)
        };
        builder
            .method(self.method.clone())
            .header("x-request-id", &self.id)
            .body(body)
            .unwrap()
    }

    /// Whether a 2xx answer is the one to this request.
    async fn check(&self, response: Response<Incoming>) -> Result<u16, Outcome> {
        let status = response.status().as_u16();
        let (parts, mut body) = response.into_parts();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| Outcome::NoAnswer(format!("body: {error}")))?;
            if let Some(data) = frame.data_ref() {
                received += data.len();
            }
            if self.slow {
                sleep(Duration::from_millis(20)).await;
            }
        }
        if !(200..300).contains(&status) {
            return Ok(status);
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let mut wrong = Vec::new();
        if header("x-request-id") != self.id {
            wrong.push(format!("answer for {:?}", header("x-request-id")));
        }
        if self.method == Method::GET && received != self.response_size {
            wrong.push(format!("{received} of {} bytes", self.response_size));
        }
        if self.method == Method::POST
            && (header("x-body-len") != self.body.len().to_string()
                || header("x-body-sum") != self.body_sum.to_string())
        {
            wrong.push(format!(
                "backend got {} bytes (sum {}), sent {} (sum {})",
                header("x-body-len"),
                header("x-body-sum"),
                self.body.len(),
                self.body_sum
            ));
        }
        if wrong.is_empty() {
            Ok(status)
        } else {
            Err(Outcome::Wrong(wrong.join(", ")))
        }
    }
}

/// Mostly small, sometimes up to `max`: 10 % empty, 50 % up to 16 KiB, 25 % up to 512 KiB, the
/// rest up to `max` (`max` itself included).
fn random_size(rng: &mut Rng, max: usize) -> usize {
    match rng.below(100) {
        0..=9 => 0,
        10..=59 => rng.range(1, 16 << 10),
        60..=84 => rng.range(16 << 10, (512 << 10).min(max)),
        85 => max,
        _ => rng.range((512 << 10).min(max), max),
    }
}

enum Outcome {
    NoAnswer(String),
    Wrong(String),
}

/// Records one finished exchange.
fn record(tally: &Tally, op: &Op, kind: Kind, result: Result<u16, Outcome>) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    match op.method {
        Method::GET => tally.gets.fetch_add(1, Ordering::Relaxed),
        _ => {
            tally
                .post_bytes
                .fetch_add(op.body.len() as u64, Ordering::Relaxed);
            tally.posts.fetch_add(1, Ordering::Relaxed)
        }
    };
    if op.slow {
        tally.slow.fetch_add(1, Ordering::Relaxed);
    }
    match kind {
        Kind::Plain => tally.plain.fetch_add(1, Ordering::Relaxed),
        Kind::Https => tally.https.fetch_add(1, Ordering::Relaxed),
        Kind::H2 => tally.h2.fetch_add(1, Ordering::Relaxed),
    };
    match result {
        Ok(status) => *tally.statuses.lock().unwrap().entry(status).or_insert(0) += 1,
        Err(Outcome::NoAnswer(why)) => {
            tally.no_answer.fetch_add(1, Ordering::Relaxed);
            tally.sample(format!(
                "{kind:?} {} {} ({} B): no answer: {why}",
                op.method,
                op.id,
                op.body.len()
            ));
        }
        Err(Outcome::Wrong(why)) => {
            tally.wrong.fetch_add(1, Ordering::Relaxed);
            tally.sample(format!(
                "{kind:?} {} {}: wrong answer: {why}",
                op.method, op.id
            ));
        }
    }
}

fn juggler_addr(kind: Kind) -> SocketAddr {
    match kind {
        Kind::Plain => JUGGLER_HTTP.parse().unwrap(),
        Kind::Https | Kind::H2 => JUGGLER_HTTPS.parse().unwrap(),
    }
}

/// A TLS connection to Juggler offering `alpn`.
async fn connect_tls(
    cert: &TestCert,
    alpn: &[&[u8]],
) -> io::Result<juggler_testkit::tls::TlsClientStream> {
    tls_connect(
        juggler_addr(Kind::Https),
        client_config(&[&cert.der], alpn),
        "localhost",
    )
    .await
}

async fn h1_connect(kind: Kind, cert: &TestCert) -> io::Result<http1::SendRequest<Trickle>> {
    async fn handshake<IO>(io: IO) -> io::Result<http1::SendRequest<Trickle>>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }
    match kind {
        Kind::Plain => handshake(TcpStream::connect(juggler_addr(kind)).await?).await,
        _ => handshake(connect_tls(cert, ALPN_HTTP11).await?).await,
    }
}

/// One keep-alive HTTP/1.1 connection (plain or TLS) sending requests back to back, reconnecting
/// when Juggler closes it between requests.
async fn h1_worker(
    kind: Kind,
    until: Instant,
    cert: Arc<TestCert>,
    tally: Arc<Tally>,
    mut rng: Rng,
) {
    let worker = rng.next() % 1_000_000;
    let mut sender: Option<http1::SendRequest<Trickle>> = None;
    let mut sequence = 0u64;
    while Instant::now() < until {
        let mut ready = match sender.take() {
            Some(existing) => existing,
            _ => match h1_connect(kind, &cert).await {
                Ok(new) => new,
                Err(error) => {
                    tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                    tally.sample(format!("{kind:?} connect: {error}"));
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if ready.ready().await.is_err() {
            continue;
        }
        sequence += 1;
        let op = Op::random(format!("{kind:?}-{worker}-{sequence}"), &mut rng);
        let result = exchange(&op, ready.send_request(op.request(kind))).await;
        record(&tally, &op, kind, result);
        sender = Some(ready);
    }
}

/// Sends one request and checks its answer, within [`ANSWER_BOUND`].
async fn exchange(
    op: &Op,
    sent: impl Future<Output = hyper::Result<Response<Incoming>>>,
) -> Result<u16, Outcome> {
    let answered = timeout(ANSWER_BOUND, async {
        let response = sent
            .await
            .map_err(|error| Outcome::NoAnswer(format!("{error:?}")))?;
        op.check(response).await
    })
    .await;
    answered.unwrap_or_else(|_| Err(Outcome::NoAnswer(format!("none within {ANSWER_BOUND:?}"))))
}

/// One HTTP/2 connection carrying `H2_STREAMS` requests at a time.
async fn h2_worker(until: Instant, cert: Arc<TestCert>, tally: Arc<Tally>, mut rng: Rng) {
    let worker = rng.next() % 1_000_000;
    let mut sender: Option<http2::SendRequest<Trickle>> = None;
    let mut sequence = 0u64;
    while Instant::now() < until {
        let mut ready = match sender.take() {
            Some(existing) => existing,
            _ => {
                let connected = async {
                    let stream = connect_tls(&cert, ALPN_H2).await?;
                    let (sender, conn) =
                        http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                            .await
                            .map_err(io::Error::other)?;
                    tokio::spawn(conn);
                    io::Result::Ok(sender)
                };
                match connected.await {
                    Ok(new) => new,
                    Err(error) => {
                        tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                        tally.sample(format!("H2 connect: {error}"));
                        sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        if ready.ready().await.is_err() {
            continue;
        }
        let mut streams = JoinSet::new();
        for _ in 0..H2_STREAMS {
            sequence += 1;
            let op = Op::random(format!("H2-{worker}-{sequence}"), &mut rng);
            let (mut stream_sender, tally) = (ready.clone(), Arc::clone(&tally));
            streams.spawn(async move {
                let result = exchange(&op, stream_sender.send_request(op.request(Kind::H2))).await;
                record(&tally, &op, Kind::H2, result);
            });
        }
        while let Some(joined) = streams.join_next().await {
            joined.expect("an HTTP/2 stream task panicked");
        }
        sender = Some(ready);
    }
}

/// Clients that go away: half a POST body then gone (must never reach a backend), or a whole GET
/// and gone before the answer. Plain and TLS by turns.
async fn vanishing_worker(until: Instant, cert: Arc<TestCert>, tally: Arc<Tally>, mut rng: Rng) {
    let worker = rng.next() % 1_000_000;
    let mut sequence = 0u64;
    while Instant::now() < until {
        sequence += 1;
        let mid_body = rng.below(2) == 0;
        let request = if mid_body {
            let len = rng.range(1 << 10, 1 << 20);
            let mut request = format!(
                "POST /post HTTP/1.1\r\nhost: localhost\r\nx-request-id: vanish-{worker}-{sequence}\r\ncontent-length: {len}\r\n\r\n"
            )
            .into_bytes();
            request.extend_from_slice(&pattern()[..len / 2]);
            request
        } else {
            format!("GET /get/100 HTTP/1.1\r\nhost: localhost\r\nx-request-id: gone-{worker}-{sequence}\r\n\r\n")
                .into_bytes()
        };
        let linger = rng.duration(0, 300);
        let gone = async {
            if sequence % 2 == 0 {
                let mut stream = TcpStream::connect(juggler_addr(Kind::Plain)).await?;
                stream.write_all(&request).await?;
                sleep(linger).await;
            } else {
                let mut stream = connect_tls(&cert, ALPN_HTTP11).await?;
                stream.write_all(&request).await?;
                stream.flush().await?;
                sleep(linger).await;
            }
            io::Result::Ok(())
        };
        match timeout(Duration::from_secs(10), gone).await {
            Ok(Ok(())) if mid_body => {
                tally.vanished_mid_body.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(())) => {
                tally.vanished_after.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                tally.sample("vanishing client could not connect and write".to_owned());
            }
        }
        sleep(rng.duration(20, 200)).await;
    }
}

/// A request body sent in `chunk`-sized frames, with `pause` between frames (a slow client);
/// its exact length is known up front, so it goes out with a Content-Length.
struct Trickle {
    rest: Bytes,
    chunk: usize,
    pause: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Trickle {
    fn new(body: Bytes, chunk: usize, pause: Option<Duration>) -> Trickle {
        Trickle {
            rest: body,
            chunk,
            pause,
            sleep: None,
        }
    }
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let frame = this.rest.split_to(this.chunk.min(this.rest.len()));
        if let Some(pause) = this.pause {
            this.sleep = Some(Box::pin(sleep(pause)));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Figures and randomness

/// The most seen while the load ran.
#[derive(Default)]
struct Most {
    juggler_held: [usize; 3],
    /// Samples where Juggler held more than `n` sockets to a backend, with their TCP states.
    excess: Vec<String>,
    /// Juggler's sockets `/proc/<pid>/net/tcp` listed a second time in one reading (not counted).
    listed_twice: usize,
    rss_kib: u64,
    fds: usize,
}

/// A figure read off each of the three backends' state.
trait EachBackend {
    fn each(&self, read: impl Fn(&BackendState) -> usize) -> [usize; 3];
}

impl EachBackend for Vec<ChaosBackend> {
    fn each(&self, read: impl Fn(&BackendState) -> usize) -> [usize; 3] {
        let mut figures = [0; 3];
        for (figure, backend) in figures.iter_mut().zip(self) {
            *figure = read(&backend.state);
        }
        figures
    }
}

/// xorshift64*: enough randomness for load and chaos choices, seeded from `SOAK_SEED` or the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// A number in `low..high` (`low` if the range is empty).
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high.saturating_sub(low) as u64) as usize
    }

    fn duration(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.below(high_ms - low_ms))
    }
}
