//! What Juggler counts for operators, on the request path: per backend (answers by status class,
//! refusals, re-sends, connect failures, bytes, queue wait and response time) and per client
//! listener (connections, requests, TLS handshakes). Gauges that already exist as state (pool
//! occupancy, queue length, health) are not counted here but read at scrape time.
//!
//! Counting must not cost throughput, so every counter set is [`Sharded`]: a worker thread adds
//! to its own copy, on cache lines no other core writes, and a scrape adds the copies up. With
//! counting off (`[admin] listen = "off"`) every record is one predictable branch.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::sharded::Sharded;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use http::{StatusCode, Version};

mod histogram;

use histogram::HistogramCells;
pub use histogram::{Histogram, BUCKET_BOUNDS_MICROS};

/// Whether anything is counted: only while someone can read the counts (the admin listener is
/// on).
pub fn counting_enabled(settings: &crate::table::Settings) -> bool {
    settings.admin.listen.is_some()
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Relaxed);
}

/// The status classes counted, `1xx` to `5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// One backend's counters; its pool owns them.
#[derive(Debug)]
pub struct BackendCounters {
    enabled: bool,
    cells: Sharded<BackendCells>,
}

#[derive(Debug, Default)]
struct BackendCells {
    responses: [AtomicU64; 5],
    queue_full: AtomicU64,
    queue_timeouts: AtomicU64,
    resends: AtomicU64,
    pipelined: AtomicU64,
    pipeline_lost: AtomicU64,
    connect_failures: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    queue_wait: HistogramCells,
    response_time: HistogramCells,
}

/// A backend's counters summed over the shards at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BackendSnapshot {
    /// Answers the clients got for requests this backend took, by status class (`1xx` first),
    /// Juggler's own `502`/`504` for its failures included.
    pub responses: [u64; 5],
    /// Requests that found this backend's queue full when choosing where to send them.
    pub queue_full: u64,
    /// Requests that waited in its queue until the queue timeout.
    pub queue_timeouts: u64,
    /// Requests re-sent elsewhere after a pooled connection to it failed before answering.
    pub resends: u64,
    /// Requests written behind another on a busy connection that then carried their answer
    /// (`pipeline = true`).
    pub pipelined: u64,
    /// Requests written behind another whose connection ended first; they were sent again.
    pub pipeline_lost: u64,
    /// Failed attempts to open a pooled connection to it.
    pub connect_failures: u64,
    /// Request bytes (heads and bodies) written to it.
    pub bytes_sent: u64,
    /// Response body bytes read from it, where the length was known when the answer was handed on.
    pub bytes_received: u64,
    /// Time requests waited for one of its pooled connections.
    pub queue_wait: Histogram,
    /// Time from sending a request to it until its answer was in hand.
    pub response_time: Histogram,
}

impl BackendSnapshot {
    /// Every answer counted, whatever its class.
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum()
    }
}

impl BackendCounters {
    pub fn new(enabled: bool) -> BackendCounters {
        BackendCounters {
            enabled,
            cells: Sharded::new(),
        }
    }

    /// A request this backend took was answered with `status`.
    pub(crate) fn answered(&self, status: StatusCode) {
        self.bump(|cells| &cells.responses[class_index(status)]);
    }

    /// Response body bytes from this backend went on to a client.
    pub(crate) fn relayed(&self, bytes: u64) {
        if self.enabled {
            add(&self.cells.local().bytes_received, bytes);
        }
    }

    /// A request was written to the backend and its answer (or failure) came back after `took`.
    pub(crate) fn exchanged(&self, queued_for: Duration, took: Duration, bytes_sent: u64) {
        if self.enabled {
            let cells = self.cells.local();
            cells.queue_wait.observe(queued_for);
            cells.response_time.observe(took);
            add(&cells.bytes_sent, bytes_sent);
        }
    }

    pub(crate) fn queue_full(&self) {
        self.bump(|cells| &cells.queue_full);
    }

    pub(crate) fn queue_timeout(&self) {
        self.bump(|cells| &cells.queue_timeouts);
    }

    pub(crate) fn resend(&self) {
        self.bump(|cells| &cells.resends);
    }

    pub(crate) fn pipelined(&self) {
        self.bump(|cells| &cells.pipelined);
    }

    pub(crate) fn pipeline_lost(&self) {
        self.bump(|cells| &cells.pipeline_lost);
    }

    pub(crate) fn connect_failure(&self) {
        self.bump(|cells| &cells.connect_failures);
    }

    fn bump(&self, counter: impl Fn(&BackendCells) -> &AtomicU64) {
        if self.enabled {
            add(counter(self.cells.local()), 1);
        }
    }

    pub fn snapshot(&self) -> BackendSnapshot {
        let mut sum = BackendSnapshot::default();
        for cells in self.cells.each() {
            for (total, cell) in sum.responses.iter_mut().zip(&cells.responses) {
                *total += cell.load(Relaxed);
            }
            sum.queue_full += cells.queue_full.load(Relaxed);
            sum.queue_timeouts += cells.queue_timeouts.load(Relaxed);
            sum.resends += cells.resends.load(Relaxed);
            sum.pipelined += cells.pipelined.load(Relaxed);
            sum.pipeline_lost += cells.pipeline_lost.load(Relaxed);
            sum.connect_failures += cells.connect_failures.load(Relaxed);
            sum.bytes_sent += cells.bytes_sent.load(Relaxed);
            sum.bytes_received += cells.bytes_received.load(Relaxed);
            cells.queue_wait.add_to(&mut sum.queue_wait);
            cells.response_time.add_to(&mut sum.response_time);
        }
        sum
    }
}

/// Which client listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    Https,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 2] = [ListenerKind::Http, ListenerKind::Https];

    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }
}

/// One client listener's counters.
#[derive(Debug)]
pub struct ListenerCounters {
    enabled: bool,
    cells: Sharded<ListenerCells>,
}

#[derive(Debug, Default)]
struct ListenerCells {
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    /// HTTP/1.x, HTTP/2.
    requests: [AtomicU64; 2],
    responses: [AtomicU64; 5],
    tls_handshakes: AtomicU64,
    tls_handshake_failures: AtomicU64,
    /// By [`ProxyRefusal`].
    proxy_refused: [AtomicU64; 3],
}

/// A listener's counters summed over the shards at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Requests by protocol: HTTP/1.x, HTTP/2.
    pub requests: [u64; 2],
    /// Every answer to a client, by status class (`1xx` first), Juggler's own included.
    pub responses: [u64; 5],
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
    /// Connections closed over their PROXY-protocol header, by [`PROXY_REFUSALS`] reason.
    pub proxy_refused: [u64; 3],
}

/// Why a connection was closed over the PROXY protocol (`listen.proxy_protocol_from`) before any
/// request: what an operator needs to tell an attack or a misconfigured L4 balancer apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// A PROXY header from a peer not trusted to send one (a spoofed client address).
    Untrusted,
    /// A trusted peer's header did not parse.
    Malformed,
    /// A trusted peer sent no whole header within the header read timeout.
    Timeout,
}

/// The `reason` labels of [`ListenerSnapshot::proxy_refused`], in [`ProxyRefusal`] order.
pub const PROXY_REFUSALS: [&str; 3] = ["untrusted", "malformed", "timeout"];

/// The protocols requests are counted by, in [`ListenerSnapshot::requests`] order.
pub const PROTOCOLS: [&str; 2] = ["http1", "http2"];

/// A TLS client connection counted as open until dropped (a TLS connection lives in one task;
/// plain ones park outside any task, so their count comes from the connection cap instead).
#[derive(Debug)]
pub struct OpenConnection<'a>(Option<&'a ListenerCounters>);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        if let Some(counters) = self.0 {
            add(&counters.cells.local().connections_closed, 1);
        }
    }
}

impl ListenerCounters {
    fn new(enabled: bool) -> ListenerCounters {
        ListenerCounters {
            enabled,
            cells: Sharded::new(),
        }
    }

    /// Counts an accepted connection, and keeps counting it as open until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> OpenConnection<'_> {
        if !self.enabled {
            return OpenConnection(None);
        }
        add(&self.cells.local().connections_opened, 1);
        OpenConnection(Some(self))
    }

    /// Counts an accepted connection whose open count comes from elsewhere.
    pub(crate) fn connection_accepted(&self) {
        if self.enabled {
            add(&self.cells.local().connections_opened, 1);
            add(&self.cells.local().connections_closed, 1);
        }
    }

    pub(crate) fn handshake(&self, succeeded: bool) {
        if self.enabled {
            let cells = self.cells.local();
            add(&cells.tls_handshakes, 1);
            if !succeeded {
                add(&cells.tls_handshake_failures, 1);
            }
        }
    }

    pub(crate) fn proxy_refused(&self, reason: ProxyRefusal) {
        if self.enabled {
            add(&self.cells.local().proxy_refused[reason as usize], 1);
        }
    }

    pub(crate) fn answered(&self, version: Version, status: StatusCode) {
        if self.enabled {
            let cells = self.cells.local();
            add(&cells.requests[usize::from(version == Version::HTTP_2)], 1);
            add(&cells.responses[class_index(status)], 1);
        }
    }

    fn snapshot(&self) -> ListenerSnapshot {
        let mut sum = ListenerSnapshot::default();
        let mut closed = 0;
        for cells in self.cells.each() {
            sum.connections_total += cells.connections_opened.load(Relaxed);
            closed += cells.connections_closed.load(Relaxed);
            for (total, cell) in sum.requests.iter_mut().zip(&cells.requests) {
                *total += cell.load(Relaxed);
            }
            for (total, cell) in sum.responses.iter_mut().zip(&cells.responses) {
                *total += cell.load(Relaxed);
            }
            sum.tls_handshakes += cells.tls_handshakes.load(Relaxed);
            sum.tls_handshake_failures += cells.tls_handshake_failures.load(Relaxed);
            for (total, cell) in sum.proxy_refused.iter_mut().zip(&cells.proxy_refused) {
                *total += cell.load(Relaxed);
            }
        }
        sum.connections_open = sum.connections_total.saturating_sub(closed);
        sum
    }
}

/// The process-wide part: the client listeners' counters and when counting began.
#[derive(Debug)]
pub struct Metrics {
    pub enabled: bool,
    pub started: SystemTime,
    http: ListenerCounters,
    https: ListenerCounters,
    /// The client side's connection cap (`max_client_connections` permits, one per open
    /// connection of either listener) and its size: the exact count of open connections,
    /// parked ones included.
    connection_cap: OnceLock<(Arc<Semaphore>, usize)>,
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        Metrics {
            enabled,
            started: SystemTime::now(),
            http: ListenerCounters::new(enabled),
            https: ListenerCounters::new(enabled),
            connection_cap: OnceLock::new(),
        }
    }

    pub(crate) fn listener(&self, kind: ListenerKind) -> &ListenerCounters {
        match kind {
            ListenerKind::Http => &self.http,
            ListenerKind::Https => &self.https,
        }
    }

    /// Where open connections are counted from: the client side's connection cap.
    pub(crate) fn count_connections_by(&self, cap: Arc<Semaphore>, size: usize) {
        let _ = self.connection_cap.set((cap, size));
    }

    /// A listener's counters summed at this moment.
    pub fn listener_snapshot(&self, kind: ListenerKind) -> ListenerSnapshot {
        let mut counted = self.listener(kind).snapshot();
        if kind == ListenerKind::Http {
            let held = self.connection_cap.get().map_or(0, |(cap, size)| {
                size.saturating_sub(cap.available_permits())
            });
            let tls_open = self.https.snapshot().connections_open;
            counted.connections_open = (held as u64).saturating_sub(tls_open);
        }
        counted
    }
}
