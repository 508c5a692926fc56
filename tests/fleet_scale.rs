//! What a fleet costs etcd at the size issue 19 designs for (item 8): 100 instances in front of
//! 1,000 backends, each instance a real fleet coordinator ([`Fleet::start`]) with its own etcd
//! client, lease and watch, all in this one process against a real etcd.
//!
//! Measured from outside the coordinators: an observer watches the fleet's prefix (every
//! instance's watch receives the same events, so its count is the events per instance), and
//! etcd's own `/metrics` count the reads, transactions and lease renewals it served. Phases:
//! join (100 instances register), steady state, and one instance's demand rising on ten
//! backends until the shares have moved to it.
//!
//! The 99 idle instances share one set of 1,000 pools (the coordinators only set caps on them
//! and read their demand, which stays 0): 99,000 pools of their own would change nothing that
//! etcd sees. The loaded instance has pools of its own, whose requests queue for real
//! connections to a listener in this process.
//!
//! A measurement, not a check run on every build: it loads the CPU for a minute or two.
//! `nice -n 19 cargo nextest run --run-ignored only -E 'binary(fleet_scale)' --no-capture`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use juggler::backend::pool::BackendPool;
use juggler::fleet::Fleet;
use juggler::table::{BackendSpec, FleetSettings, Priority, Settings, UpstreamId};
use juggler_testkit::etcd::Etcd;
use tokio::time::Instant;

/// The fleet's size: `FLEET_SCALE=INSTANCESxBACKENDS`, 100x1000 unless set. Every instance
/// recomputes its targets for every backend at each change of any record, so one process
/// simulating k instances does k times one instance's work: an unoptimised test build on a
/// shared two-core machine does not get 100x1000 through its join in minutes (100x100 and
/// 10x1000 do, and show the two dimensions apart).
fn size() -> (usize, usize) {
    let spec = std::env::var("FLEET_SCALE").unwrap_or_else(|_| "100x1000".to_owned());
    let (instances, backends) = spec
        .split_once('x')
        .expect("FLEET_SCALE=INSTANCESxBACKENDS");
    (instances.parse().unwrap(), backends.parse().unwrap())
}
/// Backends whose demand rises at the loaded instance.
const LOADED_BACKENDS: usize = 10;
/// Time allowed for the join (all instances registered and the writes settled).
const JOIN_WITHIN: Duration = Duration::from_secs(300);
/// Requests kept busy or queued per loaded backend.
const REQUESTS_PER_BACKEND: usize = 40;
const PREFIX: &str = "/juggler/fleet-scale";

/// What the observer's watch saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Events delivered, as every instance's watch delivers them.
    events: u64,
    /// Transactions written (each bumps the version key once).
    writes: u64,
    /// Bytes of the keys and values written by those transactions.
    bytes: u64,
    /// Lease expiries and revokes.
    deletes: u64,
    last_event: Option<Instant>,
}

impl Seen {
    fn since(&self, before: &Seen) -> Seen {
        Seen {
            events: self.events - before.events,
            writes: self.writes - before.writes,
            bytes: self.bytes - before.bytes,
            deletes: self.deletes - before.deletes,
            last_event: self.last_event,
        }
    }
}

async fn observe(endpoint: String, seen: Arc<Mutex<Seen>>) {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let options = etcd_client::WatchOptions::new().with_prefix();
    let mut stream = client
        .watch(format!("{PREFIX}/"), Some(options))
        .await
        .unwrap();
    let version = format!("{PREFIX}/version");
    while let Ok(Some(response)) = stream.message().await {
        let mut seen = seen.lock().unwrap();
        for event in response.events() {
            seen.events += 1;
            seen.last_event = Some(Instant::now());
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                etcd_client::EventType::Delete => seen.deletes += 1,
                etcd_client::EventType::Put => {
                    seen.bytes += (kv.key().len() + kv.value().len()) as u64;
                    if kv.key() == version.as_bytes() {
                        seen.writes += 1;
                    }
                }
            }
        }
    }
}

/// etcd's counters of interest, summed over their labels; gRPC calls by method as
/// `grpc:<method>` (a `Range` is a read; a transaction's compare counts in
/// `etcd_mvcc_range_total` too, so that one also counts transactions that lost their race).
fn etcd_counters(endpoint: &str) -> BTreeMap<String, f64> {
    const NAMES: [&str; 5] = [
        "etcd_mvcc_range_total",
        "etcd_mvcc_txn_total",
        "etcd_mvcc_put_total",
        "etcd_debugging_lease_renewed_total",
        "etcd_network_client_grpc_sent_bytes_total",
    ];
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // HTTP/1.0: the answer comes unchunked and ends with the connection.
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let mut counters = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if NAMES.contains(&name) {
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0);
            *counters.entry(name.to_owned()).or_insert(0.0) += value;
        }
        if name == "grpc_server_started_total" {
            let method = line
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default();
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(0.0);
            *counters.entry(format!("grpc:{method}")).or_insert(0.0) += value;
        }
    }
    counters
}

async fn counters(endpoint: &str) -> BTreeMap<String, f64> {
    let endpoint = endpoint.to_owned();
    tokio::task::spawn_blocking(move || etcd_counters(&endpoint))
        .await
        .unwrap()
}

/// Waits (up to `within`) until nothing was written for `quiet`.
async fn settle(seen: &Mutex<Seen>, quiet: Duration, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let last = seen.lock().unwrap().last_event;
        let now = Instant::now();
        if last.is_none_or(|last| now - last >= quiet) || now - started >= within {
            return now - started;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints one phase: the observer's counts and etcd's, per second of `took`.
fn report(
    phase: &str,
    took: Duration,
    seen: &Seen,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) {
    let secs = took.as_secs_f64();
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let per_write = seen.bytes.checked_div(seen.writes).unwrap_or(0);
    println!(
        "{phase}: {secs:.1} s; writes {} ({:.2}/s), bytes/write {per_write}, watch events per instance {} ({:.2}/s), expiries {}",
        seen.writes,
        seen.writes as f64 / secs,
        seen.events,
        seen.events as f64 / secs,
        seen.deletes,
    );
    println!(
        "{phase}: etcd served: Range calls {:.0}, Txn calls {:.0} ({:.2}/s), mvcc ranges {:.0} ({:.2}/s), write txns {:.0} ({:.2}/s), lease renewals {:.0} ({:.1}/s), grpc bytes sent {:.0} ({:.0}/s)",
        delta("grpc:Range"),
        delta("grpc:Txn"),
        delta("grpc:Txn") / secs,
        delta("etcd_mvcc_range_total"),
        delta("etcd_mvcc_range_total") / secs,
        delta("etcd_mvcc_txn_total"),
        delta("etcd_mvcc_txn_total") / secs,
        delta("etcd_debugging_lease_renewed_total"),
        delta("etcd_debugging_lease_renewed_total") / secs,
        delta("etcd_network_client_grpc_sent_bytes_total"),
        delta("etcd_network_client_grpc_sent_bytes_total") / secs,
    );
}

fn pools(address: &'static str, settings: &Settings, n: usize) -> Vec<Arc<BackendPool>> {
    let (_, backends) = size();
    (0..backends)
        .map(|_| {
            let spec: &'static BackendSpec = Box::leak(Box::new(BackendSpec {
                address,
                pool_size: n,
                upstream: UpstreamId(0),
                weight: 1,
            }));
            Arc::new(BackendPool::new(spec, settings))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that loads the CPU for a minute or two; run it by name"]
async fn a_fleet_of_100_instances_and_1000_backends_at_rest_and_under_a_shift() {
    let (instances, backends) = size();
    // Connections per backend for the whole fleet: 2 per instance at rest.
    let n = 2 * instances;
    println!("fleet of {instances} instances x {backends} backends, n = {n}");
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let observer = tokio::spawn(observe(endpoint.clone(), Arc::clone(&seen)));

    // The loaded instance's backends: one listener that accepts and holds every connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: &'static str =
        Box::leak(listener.local_addr().unwrap().to_string().into_boxed_str());
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });

    let settings = Settings::DEFAULT;
    let fleet_settings: &'static FleetSettings = Box::leak(Box::new(FleetSettings {
        etcd: Box::leak(vec![&*Box::leak(endpoint.clone().into_boxed_str())].into_boxed_slice()),
        lease: FleetSettings::DEFAULT_LEASE,
        fallback_lease: FleetSettings::DEFAULT_FALLBACK_LEASE,
        fallback_share: FleetSettings::DEFAULT_FALLBACK_SHARE,
        prefix: Some(PREFIX),
    }));
    let loaded_pools = pools(address, &settings, n);
    let idle_pools = pools(address, &settings, n);

    // Join: all at once, as a fleet deployed in one go would.
    let before = counters(&endpoint).await;
    let started = Instant::now();
    let mut fleets = Vec::new();
    for index in 0..instances {
        let pools = if index == 0 {
            loaded_pools.clone()
        } else {
            idle_pools.clone()
        };
        let name = format!("i{index:03}");
        fleets.push(Fleet::start(
            fleet_settings,
            PREFIX.to_owned(),
            name,
            pools,
            false,
        ));
    }
    for (index, fleet) in fleets.iter().enumerate() {
        let left = JOIN_WITHIN.saturating_sub(started.elapsed());
        assert!(
            fleet.wait_registered(left).await,
            "instance {index} did not register within {JOIN_WITHIN:?}"
        );
    }
    let registered = started.elapsed();
    settle(&seen, Duration::from_secs(3), JOIN_WITHIN).await;
    let joined = seen.lock().unwrap().clone();
    report(
        "join",
        started.elapsed(),
        &joined,
        &before,
        &counters(&endpoint).await,
    );
    println!(
        "join: all {instances} registered after {:.1} s",
        registered.as_secs_f64()
    );

    // Steady state: nobody's demand moves.
    let before = counters(&endpoint).await;
    let steady_from = seen.lock().unwrap().clone();
    let steady_for = Duration::from_secs(15);
    tokio::time::sleep(steady_for).await;
    let steady = seen.lock().unwrap().since(&steady_from);
    let after = counters(&endpoint).await;
    report("steady", steady_for, &steady, &before, &after);
    let reads = after.get("grpc:Range").unwrap_or(&0.0) - before.get("grpc:Range").unwrap_or(&0.0);
    assert_eq!(
        reads, 0.0,
        "a fleet at rest reads nothing: the watch feeds it"
    );

    // One instance's demand rises on ten backends.
    let before = counters(&endpoint).await;
    let shift_from = seen.lock().unwrap().clone();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for pool in loaded_pools.iter().take(LOADED_BACKENDS) {
        for _ in 0..REQUESTS_PER_BACKEND {
            let (pool, stop) = (Arc::clone(pool), Arc::clone(&stop));
            load.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(conn) = pool.checkout(Priority::Normal).await {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        drop(conn);
                    }
                }
            });
        }
    }
    let loaded_share = || {
        fleets[0].report().backends[..LOADED_BACKENDS]
            .iter()
            .map(|backend| backend.share)
            .min()
            .unwrap_or(0)
    };
    // The loaded instance may take all but the others' floors of 1.
    let wanted = n - (instances - 1);
    while loaded_share() < wanted && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = started.elapsed();
    let grown_to = loaded_share();
    settle(&seen, Duration::from_secs(3), Duration::from_secs(60)).await;
    let took = started.elapsed();
    let shift = seen.lock().unwrap().since(&shift_from);
    report("shift", took, &shift, &before, &counters(&endpoint).await);
    println!(
        "shift: the loaded instance held >= {grown_to} of {n} slots on each of its {LOADED_BACKENDS} loaded backends after {:.1} s ({}; {} instances seen)",
        grown.as_secs_f64(),
        fleets[0].report().state,
        fleets[0].report().instances_seen,
    );
    stop.store(true, Ordering::Relaxed);
    load.abort_all();
    assert!(
        grown_to >= wanted,
        "the loaded instance holds {grown_to} slots, wanted {wanted}"
    );

    // Bounded: instances that fail to give up in time expire with their lease anyway.
    let leaving: Vec<_> = fleets
        .into_iter()
        .map(|fleet| tokio::spawn(fleet.leave()))
        .collect();
    for leave in leaving {
        let _ = tokio::time::timeout(Duration::from_secs(10), leave).await;
    }
    observer.abort();
    acceptor.abort();
}
