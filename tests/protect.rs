//! Backend protection end to end, against real `test_server` processes: a backend `SIGSTOP`ped
//! under load is found by the health checks and marked down, later clients see no error and no
//! stall, and after `SIGCONT` it comes back through slow start; a backend answering only `500` is
//! ejected and comes back when healthy; the checks ride on pooled connections and the bound `n`
//! holds throughout (sampled from the backends' own open sockets).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use juggler::table::{BalancePolicy, HealthCheck, Protection, Settings};
use juggler_testkit::*;

/// Connections per backend in these tests.
const N: usize = 4;

/// A `test_server` child process serving a root with `/healthz` and `/x`; killed on drop.
struct Server {
    process: TestServerProcess,
    addr: SocketAddr,
    _root: TempDir,
}

impl Server {
    fn start(flags: &[&str]) -> Server {
        Server::start_on(0, flags)
    }

    fn start_on(port: u16, flags: &[&str]) -> Server {
        let root = TempDir::new("protect");
        std::fs::write(root.file("healthz"), "ok\n").unwrap();
        std::fs::write(root.file("x"), "x\n").unwrap();
        let binary = env!("CARGO_BIN_EXE_test_server");
        let process = TestServerProcess::start(binary, &root.file(""), port, flags);
        Server {
            addr: process.addr,
            process,
            _root: root,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        self.process.signal(signal);
    }
}

fn servers(addrs: &[SocketAddr]) -> Vec<(SocketAddr, u32)> {
    addrs.iter().map(|addr| (*addr, 1)).collect()
}

/// One answer seen by the load: when its request started (since the load began), how long it
/// took, and its status (0: the connection failed).
#[derive(Debug, Clone, Copy)]
struct Seen {
    started: Duration,
    took: Duration,
    status: u16,
}

/// `clients` connections sending `GET /x` one after another until `stop` (or `each` answers
/// each, if given); every answer is recorded.
fn load(
    addr: SocketAddr,
    clients: usize,
    each: Option<usize>,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Vec<Seen>>>,
    epoch: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            let seen = Arc::clone(seen);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && each.is_none_or(|each| sent < each) {
                    sent += 1;
                    let started = epoch.elapsed();
                    let status = match client.get("/x").await {
                        Ok(answer) => answer.status.as_u16(),
                        Err(_) => {
                            client = Client::connect(addr).await;
                            0
                        }
                    };
                    let took = epoch.elapsed() - started;
                    seen.lock().unwrap().push(Seen {
                        started,
                        took,
                        status,
                    });
                }
            })
        })
        .collect()
}

/// Samples every 5 ms the connections this process (Juggler, in the test's runtime) holds open to
/// each backend, until `stop`; the most seen per backend. Counted on Juggler's side (see
/// [`HeldSockets`]): a backend's side of a closed connection stays ESTABLISHED until the FIN
/// arrives, which under load can follow the replacement's handshake.
fn sample_connections(
    servers: Vec<Arc<Server>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut most = vec![0; servers.len()];
        while !stop.load(Ordering::Relaxed) {
            let held = HeldSockets::of(&[std::process::id()]);
            for (most, server) in most.iter_mut().zip(&servers) {
                *most = (*most).max(held.established_toward(server.addr.port()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        most
    })
}

#[juggler_testkit::test]
async fn a_stopped_backend_is_marked_down_and_comes_back_through_slow_start() {
    let check = HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        ..HealthCheck::at("/healthz")
    };
    let slow_start = Duration::from_secs(2);
    let backends: Vec<Arc<Server>> = (0..3).map(|_| Arc::new(Server::start(&[]))).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|server| server.addr).collect();
    let settings = settings_with(|settings| {
        settings.limits.backend_timeout = Duration::from_secs(5);
    });
    let protection = Protection {
        health_check: Some(check),
        slow_start,
        ..Protection::OFF
    };
    let juggler = TestJuggler::start(protected_table(
        &servers(&addrs),
        N,
        BalancePolicy::RoundRobin,
        protection,
        settings,
    ))
    .await;
    let pool = Arc::clone(&juggler.proxy.pools[2]);
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_connections(backends.clone(), Arc::clone(&sampling));

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients = load(juggler.addr, 12, None, &stop, &seen, epoch);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pool.is_down());

    backends[2].signal(libc::SIGSTOP);
    let stopped = epoch.elapsed();
    let found = wait_for(Duration::from_secs(5), || pool.is_down()).await;
    let bound = check.interval * check.fails + check.timeout;
    println!(
        "SIGSTOP: marked down after {found:?} (bound interval × fails + timeout = {bound:?}), last check {:?}",
        pool.protection.last_check()
    );
    let found = found.expect("the stopped backend was never marked down");
    // Scheduling slack on a loaded two-core machine: one more interval.
    assert!(found <= bound + check.interval * 2, "found after {found:?}");
    let down_at = epoch.elapsed();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after: Vec<Seen> = seen
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|seen| seen.started > down_at)
        .collect();
    let slowest = after.iter().map(|seen| seen.took).max().unwrap_or_default();
    let errors = after.iter().filter(|seen| seen.status != 200).count();
    println!(
        "while down: {} requests started after it was marked down, {errors} errors, slowest {slowest:?}",
        after.len()
    );
    assert!(after.len() > 100, "the load stalled: {}", after.len());
    assert_eq!(errors, 0);
    assert!(slowest < Duration::from_millis(500), "a stall: {slowest:?}");

    backends[2].signal(libc::SIGCONT);
    let back = wait_for(Duration::from_secs(8), || !pool.is_down())
        .await
        .expect("the backend never came back after SIGCONT");
    // The ramp, sampled: limit and requests in flight (slots busy) every 20 ms.
    let mut ramp = Vec::new();
    let ramp_started = Instant::now();
    while ramp_started.elapsed() < slow_start + Duration::from_millis(500) {
        ramp.push((pool.limit(), pool.busy_slots()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits: Vec<usize> = ramp.iter().map(|(limit, _)| *limit).collect();
    let mut steps = limits.clone();
    steps.dedup();
    println!("SIGCONT: back after {back:?}; slow start limits {steps:?}");
    assert_eq!(limits.first(), Some(&1), "slow start begins at one slot");
    assert_eq!(limits.last(), Some(&N), "slow start ends at n");
    assert!(steps.windows(2).all(|pair| pair[0] < pair[1]), "{steps:?}");
    assert!(
        ramp.iter().all(|(limit, busy)| busy <= limit),
        "more requests in flight than the ramp allows: {ramp:?}"
    );

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    sampling.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let failed = seen.iter().filter(|seen| seen.status != 200).count();
    println!(
        "{} answers in all, {failed} not 200 (stopped at {stopped:?}); most connections per \
         backend {most:?} (n = {N})",
        seen.len()
    );
    // At least one: a sampler that reads nothing would pass the bound.
    assert!(most.iter().all(|&most| (1..=N).contains(&most)), "{most:?}");
    assert!(pool.protection.checks_failed() >= u64::from(check.fails));
    juggler.shutdown().await.unwrap();
}

/// Share of non-200 answers of `total` requests sent by 12 clients through a fresh Juggler.
async fn share_of_errors(
    addrs: &[SocketAddr],
    balance: BalancePolicy,
    protection: Protection,
    total: usize,
) -> (f64, u64) {
    let juggler = TestJuggler::start(protected_table(
        &servers(addrs),
        N,
        balance,
        protection,
        Settings::DEFAULT,
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients = 12;
    for client in load(
        juggler.addr,
        clients,
        Some(total / clients),
        &stop,
        &seen,
        Instant::now(),
    ) {
        client.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let errors = seen.iter().filter(|seen| seen.status != 200).count();
    let ejections = juggler.proxy.pools[0].protection.ejections();
    juggler.shutdown().await.unwrap();
    (errors as f64 / seen.len() as f64, ejections)
}

#[juggler_testkit::test]
async fn a_backend_answering_only_500_is_ejected_under_every_policy() {
    let failing = Server::start(&["--fail-rate", "1"]);
    let good = [Server::start(&[]), Server::start(&[])];
    let addrs = [failing.addr, good[0].addr, good[1].addr];
    let eject = Protection {
        eject_after_5xx: 5,
        ..Protection::OFF
    };
    let total = 2400;
    for balance in [BalancePolicy::RoundRobin, BalancePolicy::LeastQueued] {
        let (without, _) = share_of_errors(&addrs, balance, Protection::OFF, total).await;
        let (with, ejections) = share_of_errors(&addrs, balance, eject, total).await;
        println!(
            "{balance:?}, one backend of 3 answering only 500, {total} requests: 5xx {:.1} % without \
             ejection, {:.2} % with eject_after_5xx = 5 ({ejections} ejection)",
            without * 100.0,
            with * 100.0
        );
        assert!(with * (total as f64) <= 5.0 + 2.0 * N as f64, "{with}");
        assert_eq!(ejections, 1);
        match balance {
            BalancePolicy::RoundRobin => assert!(without > 0.25, "{without}"),
            // A 5xx counts as a slow answer: the fast-failing backend is no black hole.
            // Less than its round-robin third (the issue measured 38 %: a black hole).
            BalancePolicy::LeastQueued => assert!(without < 0.3, "{without}"),
        }
    }
}

#[juggler_testkit::test]
async fn an_ejected_backend_returns_after_its_time_when_healthy() {
    let failing = Server::start(&["--fail-rate", "1"]);
    let port = failing.addr.port();
    let good = Server::start(&[]);
    let protection = Protection {
        eject_after_5xx: 3,
        slow_start: Duration::from_millis(500),
        ..Protection::OFF
    };
    let juggler = TestJuggler::start(protected_table(
        &servers(&[failing.addr, good.addr]),
        N,
        BalancePolicy::RoundRobin,
        protection,
        Settings::DEFAULT,
    ))
    .await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    let mut client = Client::connect(juggler.addr).await;
    for _ in 0..10 {
        client.get("/x").await.unwrap();
    }
    assert!(pool.is_down(), "not ejected after 3 server errors in a row");
    let ejected_at = Instant::now();
    let left = pool.protection.ejected_for().unwrap();
    println!("ejected for {left:?}");
    // The backend is fixed meanwhile: the same port, now answering 200.
    drop(failing);
    let fixed = Server::start_on(port, &[]);
    let before = pool.counters.snapshot().responses;
    for _ in 0..20 {
        assert_eq!(client.get("/x").await.unwrap().status, 200);
    }
    assert_eq!(
        pool.counters.snapshot().responses,
        before,
        "an ejected backend got requests"
    );
    let back = wait_for(Duration::from_secs(15), || !pool.is_down())
        .await
        .expect("never came back");
    let out_for = ejected_at.elapsed();
    println!("back in rotation after {out_for:?} (ejection 10 s)");
    assert!(
        out_for >= Duration::from_millis(9500),
        "{out_for:?} {back:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..40 {
        assert_eq!(client.get("/x").await.unwrap().status, 200);
    }
    let served = pool.counters.snapshot().responses[1] - before[1];
    println!("after its return it answered {served} of 40 requests with 2xx");
    assert!(served >= 10, "{served}");
    drop(fixed);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn the_last_backend_in_rotation_is_never_ejected() {
    let backend = TestBackend::start("only").await;
    let protection = Protection {
        eject_after_5xx: 2,
        ..Protection::OFF
    };
    let juggler = TestJuggler::start(protected_table(
        &servers(&[backend.addr]),
        2,
        BalancePolicy::RoundRobin,
        protection,
        Settings::DEFAULT,
    ))
    .await;
    let mut client = Client::connect(juggler.addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("/status/500").await.unwrap().status, 500);
    }
    let pool = &juggler.proxy.pools[0];
    assert!(!pool.is_down());
    assert_eq!(pool.protection.ejections(), 0);
    assert_eq!(client.get("/fine").await.unwrap().status, 200);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn checks_ride_on_pooled_connections_and_failing_ones_mark_the_backend_down() {
    // The test backend answers `/status/503` with a 503: a check that fails every time.
    let check = |path| HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        ..HealthCheck::at(path)
    };
    let backend = TestBackend::start("checked").await;
    let juggler = TestJuggler::start_with_admin(
        protected_table(
            &servers(&[backend.addr]),
            2,
            BalancePolicy::RoundRobin,
            Protection {
                health_check: Some(check("/status/503")),
                ..Protection::OFF
            },
            Settings::DEFAULT,
        ),
        "test-token-0123456789",
    )
    .await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    let down = wait_for(Duration::from_secs(3), || pool.is_down()).await;
    println!(
        "check answering 503: down after {down:?}; {} checks failed, {} connections accepted",
        pool.protection.checks_failed(),
        backend.accepted()
    );
    assert!(down.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checks = backend
        .stats
        .paths()
        .iter()
        .filter(|path| *path == "/status/503")
        .count();
    assert!(checks >= 5, "{checks}");
    assert_eq!(
        backend.accepted(),
        2,
        "checks opened connections beyond the pool"
    );
    let answer = get(juggler.addr, "/x").await.unwrap();
    assert_eq!(answer.status, 503, "the only backend is down");

    // What an operator sees: the reason and the last check in /status.json, the counts in /metrics.
    let admin = |path: &'static str| {
        let request = http::Request::get(path)
            .header("host", "admin")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        send(juggler.admin_addr(), request)
    };
    let report: juggler::admin::report::StatusReport =
        serde_json::from_slice(&admin("/status.json").await.unwrap().body).unwrap();
    let shown = &report.upstreams[0].backends[0];
    println!(
        "/status.json: state {}, down_reason {:?}, last_check {:?}, checks {} passed / {} failed",
        shown.state, shown.down_reason, shown.last_check, shown.checks_passed, shown.checks_failed
    );
    assert_eq!(shown.state, "down");
    assert_eq!(shown.down_reason.as_deref(), Some("health checks failing"));
    assert_eq!(shown.last_check.as_deref(), Some("503"));
    assert!(shown.checks_failed >= 5);
    let metrics = admin("/metrics").await.unwrap().text();
    let failed = metrics
        .lines()
        .find(|line| {
            line.starts_with("juggler_backend_health_checks_total{") && line.contains("failed")
        })
        .expect("no failed-check counter in /metrics");
    println!("/metrics: {failed}");
    assert!(metrics.contains("juggler_backend_ejections_total{"));
    assert!(metrics.contains("juggler_backend_limit{"));
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn queued_requests_of_a_backend_that_goes_down_move_to_another() {
    // Backend 0 holds every request (`/hold`) until released; backend 1 answers at once. With
    // one slot each and round robin, requests pile up in backend 0's queue; its one slot stays
    // busy with nothing sent for longer than the check timeout, so it counts as hung and goes
    // down, and its queued requests move to backend 1.
    let stuck = TestBackend::start("stuck").await;
    let fine = TestBackend::start("fine").await;
    fine.stats.released.send_replace(true);
    let juggler = TestJuggler::start(protected_table(
        &servers(&[stuck.addr, fine.addr]),
        1,
        BalancePolicy::RoundRobin,
        Protection {
            health_check: Some(HealthCheck {
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(200),
                fails: 1,
                ..HealthCheck::at("/hold")
            }),
            ..Protection::OFF
        },
        Settings::DEFAULT,
    ))
    .await;
    let pool = Arc::clone(&juggler.proxy.pools[0]);
    let answered = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let answered = Arc::clone(&answered);
            let addr = juggler.addr;
            tokio::spawn(async move {
                let answer = get(addr, "/hold").await.unwrap();
                answered.fetch_add(1, Ordering::Relaxed);
                answer.text()
            })
        })
        .collect();
    let down = wait_for(Duration::from_secs(3), || pool.is_down()).await;
    println!(
        "held backend down after {down:?}; queued then: {}",
        pool.queued()
    );
    assert!(down.is_some());
    let finished = wait_for(Duration::from_secs(3), || {
        answered.load(Ordering::Relaxed) >= 5
    })
    .await;
    println!(
        "{} of 6 answered by backend 1 or moved there; backend 0 still holds {}",
        answered.load(Ordering::Relaxed),
        pool.busy_slots()
    );
    assert!(
        finished.is_some(),
        "queued requests stayed with the down backend"
    );
    assert_eq!(pool.queued(), 0);
    stuck.stats.released.send_replace(true);
    for request in requests {
        request.await.unwrap();
    }
    juggler.shutdown().await.unwrap();
}

/// p99 of the answers to requests started after `settle`, with 32 clients for `settle + measure`
/// against `backend` through a pool of `pool` (adaptive from `min` if given); the limits sampled
/// every 50 ms while measuring.
async fn capacity_run(
    backend: SocketAddr,
    pool: usize,
    min: Option<usize>,
    settle: Duration,
    measure: Duration,
) -> (Duration, usize, Vec<usize>) {
    let protection = Protection {
        adaptive_min: min,
        ..Protection::OFF
    };
    let juggler = TestJuggler::start(protected_table(
        &servers(&[backend]),
        pool,
        BalancePolicy::RoundRobin,
        protection,
        settings_with(|settings| settings.queue.timeout = Duration::from_secs(30)),
    ))
    .await;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients = load(juggler.addr, 32, None, &stop, &seen, epoch);
    tokio::time::sleep(settle).await;
    let mut limits = Vec::new();
    while epoch.elapsed() < settle + measure {
        limits.push(juggler.proxy.pools[0].limit());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut took: Vec<Duration> = seen
        .iter()
        .filter(|seen| seen.started >= settle && seen.started < settle + measure)
        .map(|seen| seen.took)
        .collect();
    assert!(seen.iter().all(|seen| seen.status == 200));
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    juggler.shutdown().await.unwrap();
    (p99, took.len(), limits)
}

#[juggler_testkit::test]
async fn the_adaptive_limit_settles_near_the_backends_capacity() {
    let backend = Server::start(&["--capacity", "6", "--delay", "5ms"]);
    let (settle, measure) = (Duration::from_secs(2), Duration::from_millis(1500));
    let mut p99s = Vec::new();
    for (pool, min) in [(6, None), (32, None), (32, Some(1))] {
        let (p99, answers, limits) = capacity_run(backend.addr, pool, min, settle, measure).await;
        let mut sorted = limits.clone();
        sorted.sort();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let name = match min {
            Some(min) => format!("{{ min = {min}, max = {pool} }}"),
            None => format!("n = {pool}"),
        };
        println!(
            "capacity 6, 32 clients, {name}: p99 {p99:?} over {answers} answers; limit median \
             {median}, sampled {limits:?}"
        );
        if min.is_some() {
            // Near 6, with room for a debug build on a shared, loaded machine (its own scheduling
            // delays count as the backend's response time).
            assert!(
                (3..=9).contains(&median),
                "did not settle near 6: {limits:?}"
            );
        }
        p99s.push(p99);
    }
    let (fixed_6, fixed_32, adaptive) = (p99s[0], p99s[1], p99s[2]);
    println!(
        "p99 adaptive / best fixed (n = 6): {:.2}; n = 32 / n = 6: {:.2}",
        adaptive.as_secs_f64() / fixed_6.as_secs_f64(),
        fixed_32.as_secs_f64() / fixed_6.as_secs_f64()
    );
    assert!(adaptive < fixed_32, "adaptive no better than n = 32");
}
