//! `/status.json`: the state of every listener, upstream and backend at one moment, with the last
//! minute's history. The page (`status.html`) and `juggler status` read the same document.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::history::History;
use super::process;
use crate::backend::health::CheckOutcome;
use crate::backend::pool::{BackendPool, Drain};
use crate::metrics::ListenerKind;
use crate::proxy::Proxy;
use crate::table::Named;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub config_hash: String,
    pub started_at_unix: u64,
    pub uptime_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub listeners: Vec<ListenerReport>,
    pub upstreams: Vec<UpstreamReport>,
    /// This instance's place in the fleet (`[fleet]`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::FleetReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerReport {
    /// `http` or `https`.
    pub name: String,
    pub address: String,
    /// Client connections open now.
    pub connections: u64,
    /// Requests answered since start.
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamReport {
    pub name: String,
    /// `round_robin` or `least_queued`.
    pub balance: String,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReport {
    pub address: String,
    /// `up`, `down` or `draining`.
    pub state: String,
    /// Why it is down: `connects failing`, `health checks failing` or `ejected`; `null` when up.
    #[serde(default)]
    pub down_reason: Option<String>,
    /// `n`: the connections Juggler keeps to it, never more.
    pub pool_size: usize,
    /// Slots it may use now: `n`, or less during slow start (or a fleet share).
    #[serde(default)]
    pub limit: usize,
    /// Slots of `limit` only high-priority routes may take (`reserved`; 0: none).
    #[serde(default)]
    pub reserved: usize,
    /// How the last health check ended (`200`, `timeout`, `failed`, `hung`); `null` without
    /// checks or before the first.
    #[serde(default)]
    pub last_check: Option<String>,
    #[serde(default)]
    pub checks_passed: u64,
    #[serde(default)]
    pub checks_failed: u64,
    /// Times it was ejected after `eject_after_5xx` server errors in a row.
    #[serde(default)]
    pub ejections: u64,
    /// Seconds left of the ejection in force.
    #[serde(default)]
    pub ejected_seconds: Option<f64>,
    pub open: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub max_queued: usize,
    /// Requests it answered since start (Juggler's own 502/504 for its failures included).
    pub requests: u64,
    pub responses: Responses,
    pub queue_full: u64,
    pub queue_timeouts: u64,
    pub resends: u64,
    /// Requests that rode behind another on a busy connection, and those whose ride was lost.
    pub pipelined: u64,
    pub pipeline_lost: u64,
    pub connect_failures: u64,
    /// Over the last minute; `null` when nothing was measured.
    pub wait_p50_ms: Option<f64>,
    pub wait_p99_ms: Option<f64>,
    pub response_p50_ms: Option<f64>,
    pub response_p99_ms: Option<f64>,
    pub history: BackendHistory,
}

/// Answers by status class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Responses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl From<[u64; 5]> for Responses {
    fn from(classes: [u64; 5]) -> Responses {
        let [informational, success, redirection, client_error, server_error] = classes;
        Responses {
            informational,
            success,
            redirection,
            client_error,
            server_error,
        }
    }
}

/// One value per second, oldest first, up to a minute.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendHistory {
    pub queued: Vec<u64>,
    pub requests_per_second: Vec<f64>,
}

/// A backend's state word: drained by an operator first, then passive health.
pub fn state_name(pool: &BackendPool) -> &'static str {
    if pool.drain_state() != Drain::Off {
        "draining"
    } else if pool.is_down() {
        "down"
    } else {
        "up"
    }
}

/// Why `pool`'s backend is out of rotation, if it is.
pub fn down_reason(pool: &BackendPool) -> Option<&'static str> {
    if pool.connects_failing() {
        Some("connects failing")
    } else if pool.protection.is_check_down() {
        Some("health checks failing")
    } else if pool.protection.is_ejected() {
        Some("ejected")
    } else {
        None
    }
}

/// The last health check's outcome as `/status` shows it.
fn last_check(pool: &BackendPool) -> Option<String> {
    match pool.protection.last_check() {
        CheckOutcome::None => None,
        CheckOutcome::Status(status) => Some(status.to_string()),
        CheckOutcome::Timeout => Some("timeout".to_owned()),
        CheckOutcome::Failed => Some("failed".to_owned()),
        CheckOutcome::Hung => Some("hung".to_owned()),
    }
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|duration| duration.as_secs_f64() * 1000.0)
}

/// The report for `proxy` now; `listeners` are the client listeners' addresses by kind.
pub(super) fn build(
    proxy: &Proxy,
    history: &History,
    listeners: &[(ListenerKind, String)],
) -> StatusReport {
    let table = proxy.table;
    let started = proxy.metrics.started;
    let upstreams = table
        .upstreams
        .iter()
        .map(|upstream| UpstreamReport {
            name: upstream.name.to_owned(),
            balance: upstream.balance.name().to_owned(),
            backends: upstream
                .backends
                .iter()
                .map(|&id| backend_report(&proxy.pools[usize::from(id.0)], history, id.0))
                .collect(),
        })
        .collect();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_hash: table.config_hash.to_owned(),
        started_at_unix: started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        uptime_seconds: SystemTime::now()
            .duration_since(started)
            .unwrap_or_default()
            .as_secs_f64(),
        resident_bytes: process::resident_bytes(),
        open_fds: process::open_fds(),
        listeners: listeners
            .iter()
            .map(|(kind, address)| {
                let counted = proxy.metrics.listener_snapshot(*kind);
                ListenerReport {
                    name: kind.name().to_owned(),
                    address: address.clone(),
                    connections: counted.connections_open,
                    requests: counted.requests.iter().sum(),
                }
            })
            .collect(),
        upstreams,
        fleet: super::fleet::fleet(),
    }
}

/// One backend's entry of the report (also the answer to a drain request).
pub(super) fn backend_report(pool: &BackendPool, history: &History, index: u16) -> BackendReport {
    let counted = pool.counters.snapshot();
    let window = history.last_minute(index, &counted);
    let open = pool.open_connections();
    let idle = pool.idle_connections().min(open);
    BackendReport {
        address: pool.spec.address.to_owned(),
        state: state_name(pool).to_owned(),
        down_reason: down_reason(pool).map(str::to_owned),
        pool_size: pool.spec.pool_size,
        limit: pool.limit(),
        reserved: pool.reserved(),
        last_check: last_check(pool),
        checks_passed: pool.protection.checks_passed(),
        checks_failed: pool.protection.checks_failed(),
        ejections: pool.protection.ejections(),
        ejected_seconds: pool.protection.ejected_for().map(|left| left.as_secs_f64()),
        open,
        busy: pool.busy_slots(),
        idle,
        queued: pool.queued(),
        max_queued: pool.max_queued(),
        requests: counted.requests(),
        responses: Responses::from(counted.responses),
        queue_full: counted.queue_full,
        queue_timeouts: counted.queue_timeouts,
        resends: counted.resends,
        pipelined: counted.pipelined,
        pipeline_lost: counted.pipeline_lost,
        connect_failures: counted.connect_failures,
        wait_p50_ms: millis(window.queue_wait.quantile(0.5)),
        wait_p99_ms: millis(window.queue_wait.quantile(0.99)),
        response_p50_ms: millis(window.response_time.quantile(0.5)),
        response_p99_ms: millis(window.response_time.quantile(0.99)),
        history: window.series,
    }
}
