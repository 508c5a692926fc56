//! One bound for the whole fleet (issue 19): Juggler instances, each a process of its own, share
//! each backend's `n` through a real etcd. The backends live in this test process and count their
//! open connections exactly; a sampler reads them every 2 ms, so "never more than `n`" is checked
//! for the fleet as a whole, through every step.
//!
//! Each instance is this test binary run again in the role of [`fleet_instance`] (the runtime,
//! a hand-written table with `[fleet]`, a real listener, SIGTERM and `kill -9` like the real
//! binary), so the tests need no second build of `juggler` with another compiled-in config.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use juggler::fleet::shares::MemberRecord;
use juggler::table::{FleetSettings, Settings};
use juggler_testkit::etcd::Etcd;
use juggler_testkit::{table, Client, HeldSockets, TestBackend};

/// Connections per backend for the whole fleet.
const N: usize = 6;
const LEASE: Duration = Duration::from_secs(2);
const PREFIX: &str = "/juggler/fleet-test";

// ---------------------------------------------------------------------------------------------
// An instance as a process

/// The role of a fleet instance, when `FLEET_INSTANCE` names one; a no-op otherwise.
#[test]
#[ignore = "a fleet instance, started as a child process by the other tests"]
fn fleet_instance() {
    let Ok(spec) = std::env::var("FLEET_INSTANCE") else {
        return;
    };
    if let Ok(filter) = std::env::var("FLEET_INSTANCE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // name;etcd endpoint;fallback lease secs;backend,backend,...;control socket;upgrade
    let parts: Vec<&str> = spec.split(';').collect();
    let control = std::path::PathBuf::from(parts[4]);
    let upgrading = parts[5] == "upgrade";
    let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
    let (name, endpoint) = (parts[0].to_owned(), leak(parts[1]));
    let fallback_lease = Duration::from_secs(parts[2].parse().unwrap());
    let backends: Vec<SocketAddr> = parts[3].split(',').map(|a| a.parse().unwrap()).collect();
    let mut settings = Settings::DEFAULT;
    settings.fleet = Some(FleetSettings {
        etcd: Box::leak(vec![endpoint].into_boxed_slice()),
        lease: LEASE,
        fallback_lease,
        fallback_share: 1,
        prefix: Some(PREFIX),
    });
    let table = table(&backends, N, settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let fleet_settings = table.settings.fleet.as_ref().unwrap();
        // As main.rs does: an upgrade receives the listeners first, takes the fleet shares over
        // before it accepts, then serves.
        let mut predecessor = None;
        let (listener, admin) = if upgrading {
            let mut found = juggler::upgrade::connect(
                &control,
                table.config_hash,
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
            let (http, admin) = (parts[6], parts[7]);
            let listeners = (
                found.take_listener("http", http).unwrap(),
                found.take_listener("admin", admin).unwrap(),
            );
            predecessor = Some(found);
            listeners
        } else {
            (
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            )
        };
        let proxy = Arc::new(juggler::proxy::Proxy::new(table));
        let fleet = juggler::fleet::Fleet::start(
            fleet_settings,
            PREFIX.to_owned(),
            name,
            proxy.pools.clone(),
            upgrading,
        );
        if upgrading {
            assert!(fleet.wait_registered(Duration::from_secs(10)).await);
        }
        println!("ADMIN {}", admin.local_addr().unwrap());
        println!("LISTENING {}", listener.local_addr().unwrap());
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let listeners = juggler::Listeners {
            http: Some(listener),
            https: None,
        };
        juggler::upgrade::serve(
            listeners,
            Some((admin, "fleet-test-token".to_owned())),
            proxy,
            async move {
                terminate.recv().await;
            },
            &control,
            predecessor,
        )
        .await
        .unwrap();
        fleet.leave().await;
    });
}

/// A running instance; killed (SIGKILL) when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
    /// The admin listener: /status.json and /metrics show the fleet.
    admin: SocketAddr,
}

impl Instance {
    fn start(name: &str, etcd: &Etcd, fallback_lease: u64, backends: &[SocketAddr]) -> Instance {
        Self::spawn(name, etcd, fallback_lease, backends, "fresh")
    }

    /// A new process of this instance (same name) that takes it over with `--upgrade`.
    fn upgrade(
        &self,
        name: &str,
        etcd: &Etcd,
        fallback_lease: u64,
        backends: &[SocketAddr],
    ) -> Instance {
        let how = format!("upgrade;{};{}", self.addr, self.admin);
        Self::spawn(name, etcd, fallback_lease, backends, &how)
    }

    fn spawn(
        name: &str,
        etcd: &Etcd,
        fallback_lease: u64,
        backends: &[SocketAddr],
        how: &str,
    ) -> Instance {
        let backends: Vec<String> = backends.iter().map(ToString::to_string).collect();
        // Beside etcd's data, removed with it when the test ends (a static would never be dropped).
        let control = etcd.file(&format!("{name}.sock"));
        let spec = format!(
            "{name};{};{fallback_lease};{};{};{how}",
            etcd.endpoint(),
            backends.join(","),
            control.display()
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fleet_instance", "--exact", "--ignored", "--nocapture"])
            .env("FLEET_INSTANCE", spec)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        PIDS.lock().unwrap().push(child.id());
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut admin = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("the instance exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("ADMIN ") {
                admin = Some(addr.parse().unwrap());
            }
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                break addr.parse().unwrap();
            }
        };
        let admin = admin.expect("the instance printed no admin address");
        // Keep reading what it prints, so that it never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Instance { child, addr, admin }
    }

    /// Waits up to `within` for the process to exit on its own; whether it did.
    fn exits_within(&mut self, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill_9();
    }
}

// ---------------------------------------------------------------------------------------------
// Load, the bound, the shares

/// Keep-alive clients sending `GET /sleep/20` to one instance; `level` of them are active.
struct Load {
    level: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

const CLIENTS: usize = 16;

impl Load {
    fn start(addr: SocketAddr, level: usize) -> Load {
        let load = Load {
            level: Arc::new(AtomicUsize::new(level)),
            ok: Arc::default(),
            failed: Arc::default(),
            stop: Arc::default(),
        };
        for index in 0..CLIENTS {
            let (level, ok, failed, stop) = (
                Arc::clone(&load.level),
                Arc::clone(&load.ok),
                Arc::clone(&load.failed),
                Arc::clone(&load.stop),
            );
            tokio::spawn(async move {
                let mut client = None;
                while !stop.load(Ordering::Relaxed) {
                    if index >= level.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    if client.is_none() {
                        client = Some(Client::connect(addr).await);
                    }
                    let Some(connected) = client.as_mut() else {
                        continue;
                    };
                    match connected.get("/sleep/20").await {
                        Ok(answer) if answer.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(answer) => {
                            eprintln!("load: {} from {addr}", answer.status);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            client = None;
                        }
                    }
                }
            });
        }
        load
    }

    fn set(&self, level: usize) {
        self.level.store(level, Ordering::Relaxed);
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The most connections any backend had open at once, sampled every 2 ms.
struct MostOpen {
    most: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl MostOpen {
    /// Samples the kernel's count: TCP sockets of the instances' processes in ESTABLISHED toward
    /// each backend ([`HeldSockets`]), i.e. the connections the instances hold. A backend's own count of its connection tasks lags a
    /// close by however long its runtime takes to run the closed connection's task, which on a
    /// loaded machine overlapped a new connection from another instance; the kernel's state
    /// changes at the close itself. Only the instances' sockets count: other tests on the machine
    /// share the table.
    fn watch(backends: &[Arc<TestBackend>]) -> MostOpen {
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ports: Vec<u16> = backends.iter().map(|backend| backend.addr.port()).collect();
        let (seen, done) = (Arc::clone(&most), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let held = HeldSockets::of(&PIDS.lock().unwrap().clone());
                for port in &ports {
                    seen.fetch_max(held.established_toward(*port), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        MostOpen { most, stop }
    }

    /// The backends' own count of their open connections, sampled every 2 ms: printed beside
    /// the kernel's, not asserted (see [`MostOpen::watch`]).
    fn watch_backend_counts(backends: &[Arc<TestBackend>]) -> MostOpen {
        let most = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, done, backends) = (Arc::clone(&most), Arc::clone(&stop), backends.to_vec());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for backend in &backends {
                    seen.fetch_max(backend.open(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        MostOpen { most, stop }
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }

    /// Starts counting afresh; returns the most seen so far.
    fn reset(&self) -> usize {
        self.most.swap(0, Ordering::Relaxed)
    }
}

impl Drop for MostOpen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Process ids of the instances started so far (gone ones simply have no descriptors).
static PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The members' recorded shares, by instance name, read from etcd.
async fn shares(etcd: &Etcd) -> BTreeMap<String, Vec<usize>> {
    let Ok(mut client) = etcd_client::Client::connect([etcd.endpoint()], None).await else {
        return BTreeMap::new();
    };
    let members = format!("{PREFIX}/members/");
    let options = etcd_client::GetOptions::new().with_prefix();
    let Ok(response) = client.get(members.clone(), Some(options)).await else {
        return BTreeMap::new();
    };
    response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(&members)?.to_owned();
            let record: MemberRecord = serde_json::from_slice(kv.value()).ok()?;
            Some((name, record.shares))
        })
        .collect()
}

/// Waits up to `within` for the recorded shares to satisfy `done`; returns them and how long
/// it took, or panics with what they were.
async fn until_shares(
    etcd: &Etcd,
    within: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, Vec<usize>>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = shares(etcd).await;
        if done(&now) {
            println!("{what}: after {:?}: {now:?}", started.elapsed());
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; shares {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn total(shares: &BTreeMap<String, Vec<usize>>, backend: usize) -> usize {
    shares.values().map(|shares| shares[backend]).sum()
}

async fn two_backends() -> Vec<Arc<TestBackend>> {
    vec![
        Arc::new(TestBackend::start("server 1").await),
        Arc::new(TestBackend::start("server 2").await),
    ]
}

// ---------------------------------------------------------------------------------------------
// The tests

/// Three instances under load: the fleet never holds more than `n` to a backend, the shares at
/// rest add up to exactly `n`, follow the load to one instance, survive a `kill -9` (the others
/// take its slots after its lease, its floor after its fallback lease) and make room for a
/// fourth instance that joins under load.
#[juggler_testkit::test]
async fn the_fleet_shares_n_through_load_kill_and_join() {
    let etcd = Etcd::start();
    let backends = two_backends().await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let most = MostOpen::watch(&backends);
    let fallback_lease = 4;
    let mut instances: Vec<Instance> = ["a", "b", "c"]
        .iter()
        .map(|name| Instance::start(name, &etcd, fallback_lease, &addrs))
        .collect();

    // At rest: three members, shares adding up to exactly n, everyone with a floor.
    until_shares(&etcd, Duration::from_secs(10), "at rest", |shares| {
        shares.len() == 3
            && (0..2).all(|b| total(shares, b) == N)
            && shares.values().all(|s| s.iter().all(|&share| share >= 1))
    })
    .await;

    // Load everywhere, then on one instance only.
    let loads: Vec<Load> = instances.iter().map(|i| Load::start(i.addr, 8)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    loads[1].set(0);
    loads[2].set(0);
    loads[0].set(CLIENTS);
    let took = until_shares(&etcd, Duration::from_secs(5), "all load on a", |shares| {
        (0..2).all(|b| shares.get("a").is_some_and(|a| a[b] >= N - 2))
    })
    .await;
    println!("a held >= n - (k - 1) after {took:?}");

    // kill -9 of c with load on a and b: a and b get n - floor after the lease, n after the
    // floor's lease.
    loads[1].set(8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    instances[2].kill_9();
    let killed = Instant::now();
    until_shares(
        &etcd,
        LEASE + Duration::from_secs(2),
        "a and b hold n - c's floor",
        |shares| !shares.contains_key("c") && (0..2).all(|b| total(shares, b) >= N - 1),
    )
    .await;
    println!("survivors hold n - 1 {:?} after the kill", killed.elapsed());
    until_shares(
        &etcd,
        Duration::from_secs(fallback_lease + 3).saturating_sub(killed.elapsed()),
        "a and b hold n",
        |shares| (0..2).all(|b| total(shares, b) == N),
    )
    .await;
    println!("survivors hold n {:?} after the kill", killed.elapsed());

    // A fourth instance joins under load and gets a share.
    let d = Instance::start("d", &etcd, fallback_lease, &addrs);
    let load_d = Load::start(d.addr, 8);
    until_shares(&etcd, Duration::from_secs(8), "d joined", |shares| {
        shares
            .get("d")
            .is_some_and(|d| d.iter().all(|&share| share >= 1))
            && (0..2).all(|b| total(shares, b) <= N)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    instances.push(d);

    // What operators see: /status.json's fleet and the juggler_fleet_* metrics.
    let status = juggler_testkit::get(instances[0].admin, "/status.json")
        .await
        .unwrap();
    let report: juggler::admin::report::StatusReport =
        serde_json::from_slice(&status.body).unwrap();
    let fleet = report.fleet.expect("/status.json has no fleet");
    println!("a's fleet report: {fleet:?}");
    assert_eq!(fleet.instance, "a");
    assert_eq!(fleet.state, "registered");
    assert_eq!(fleet.instances_seen, 3);
    assert!(fleet
        .backends
        .iter()
        .all(|b| b.share >= 1 && b.fleet_total <= N && b.pool_size == N));
    let metrics = juggler_testkit::get(instances[0].admin, "/metrics")
        .await
        .unwrap()
        .text();
    for family in [
        "juggler_fleet_registered{instance=\"a\"} 1",
        "juggler_fleet_instances 3",
        "juggler_fleet_share{backend=",
        "juggler_fleet_limit{backend=",
        "juggler_fleet_total{backend=",
        "juggler_fleet_last_etcd_contact_seconds ",
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family}");
    }

    let (served, failed_at_survivors) = (
        loads.iter().map(Load::ok).sum::<usize>() + load_d.ok(),
        loads[0].failed() + loads[1].failed() + load_d.failed(),
    );
    println!(
        "requests served {served}, failed at the survivors {failed_at_survivors}, failed at the killed one {}; most connections to one backend {} (n = {N})",
        loads[2].failed(),
        most.most()
    );
    // At least one: a sampler that reads nothing would pass the bound.
    assert!(
        (1..=N).contains(&most.most()),
        "a backend saw {} connections",
        most.most()
    );
    assert_eq!(failed_at_survivors, 0);
    assert!(served > 100);
    drop(loads);
    drop(load_d);
    drop(instances);
    drop(etcd);
}

/// etcd stopped under load: every instance keeps serving on its fallback share, nobody grows,
/// the bound holds; etcd back, the shares are the recorded ones again and add up to `n`.
#[juggler_testkit::test]
async fn etcd_away_the_fleet_falls_back_and_keeps_the_bound() {
    let mut etcd = Etcd::start();
    let backends = two_backends().await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let most = MostOpen::watch(&backends);
    let instances: Vec<Instance> = ["a", "b", "c"]
        .iter()
        .map(|name| Instance::start(name, &etcd, 12, &addrs))
        .collect();
    until_shares(&etcd, Duration::from_secs(10), "at rest", |shares| {
        shares.len() == 3
            && (0..2).all(|b| total(shares, b) == N)
            && shares.values().all(|s| s.iter().all(|&share| share >= 1))
    })
    .await;
    let loads: Vec<Load> = instances.iter().map(|i| Load::start(i.addr, 6)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    etcd.stop();
    let before = loads.iter().map(Load::ok).sum::<usize>();
    // Half a lease after its last renewal every instance is down to its floor (renewals every
    // quarter lease, plus time for requests in progress to end); from then until etcd is back,
    // each backend sees at most one connection per instance.
    tokio::time::sleep(LEASE / 2 + LEASE / 4 + Duration::from_millis(300)).await;
    let most_before_floor = most.reset();
    tokio::time::sleep(LEASE * 2).await;
    let on_floors = most.reset();
    let during = loads.iter().map(Load::ok).sum::<usize>() - before;
    etcd.restart();
    until_shares(&etcd, Duration::from_secs(10), "etcd back", |shares| {
        shares.len() == 3 && (0..2).all(|b| total(shares, b) == N)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed: usize = loads.iter().map(Load::failed).sum();
    println!(
        "served while etcd was away: {during}; failed: {failed}; most connections to one backend: {most_before_floor} before the floor, {on_floors} on the floors, {} after (n = {N})",
        most.most()
    );
    assert!(
        most_before_floor <= N && on_floors <= 3,
        "the floors did not hold"
    );
    assert!(during > 20, "clients were not served while etcd was away");
    assert_eq!(failed, 0);
    assert!(
        most.most() <= N,
        "a backend saw {} connections",
        most.most()
    );
    drop(loads);
    drop(instances);
}

/// `--upgrade` of one instance under load, same instance name: the successor takes the shares
/// over with the pooled connections, the predecessor exits, no request fails and the bound holds.
#[juggler_testkit::test]
async fn an_upgrade_hands_the_shares_over_with_no_failed_request() {
    let etcd = Etcd::start();
    let backends = two_backends().await;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let most = MostOpen::watch(&backends);
    let counted = MostOpen::watch_backend_counts(&backends);
    let mut instances: Vec<Instance> = ["a", "b", "c"]
        .iter()
        .map(|name| Instance::start(name, &etcd, 4, &addrs))
        .collect();
    until_shares(&etcd, Duration::from_secs(10), "at rest", |shares| {
        shares.len() == 3 && shares.values().all(|s| s.iter().all(|&share| share >= 1))
    })
    .await;
    let loads: Vec<Load> = instances.iter().map(|i| Load::start(i.addr, 8)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = shares(&etcd).await;

    let successor = instances[0].upgrade("a", &etcd, 4, &addrs);
    assert_eq!(
        successor.addr, instances[0].addr,
        "the listener is handed over"
    );
    let exited = tokio::task::block_in_place(|| instances[0].exits_within(Duration::from_secs(20)));
    assert!(exited, "the predecessor did not exit after handing over");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = shares(&etcd).await;
    let status = juggler_testkit::get(successor.admin, "/status.json")
        .await
        .unwrap();
    let report: juggler::admin::report::StatusReport =
        serde_json::from_slice(&status.body).unwrap();
    let fleet = report.fleet.expect("/status.json has no fleet");
    let failed: usize = loads.iter().map(Load::failed).sum();
    println!(
        "shares before {before:?}, after {after:?}; successor {}; failed {failed}; most connections to one backend {} (kernel), {} (the backend's count) (n = {N})",
        fleet.state,
        most.most(),
        counted.most()
    );
    assert_eq!(fleet.state, "registered");
    assert!(after.contains_key("a") && (0..2).all(|b| total(&after, b) <= N));
    assert_eq!(failed, 0);
    assert!(
        most.most() <= N,
        "a backend saw {} connections",
        most.most()
    );
    instances[0] = successor;
    drop(loads);
    drop(instances);
}
