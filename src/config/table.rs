//! Plain data the runtime works on.
//!
//! `build.rs` generates one instance of [`RouteTable`] (`distributer::TABLE`) from `routes.toml` and
//! `juggler_config/`; tests build their own by hand. Every field is public and every type is plain
//! `'static` data so that a generated `static` can name it without any code running at start-up.

use std::time::Duration;

// Re-exported: generated tables name it through `::juggler::table`.
pub use crate::network::IpNetwork;
use crate::router::MethodSet;
use crate::schema::{settings_section, SectionSpec, GIB, KIB, MIB, TIB};

/// Index of a backend server in [`RouteTable::backends`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u16);

impl BackendSpec {
    /// Pool size of every server of an upstream that does not set `connections_per_server`.
    pub const DEFAULT_POOL_SIZE: usize = 5;
    /// Pool sizes above this are refused: a backend rarely serves more keep-alive connections
    /// from one client well, and a typo such as `50000` would exhaust file descriptors at start-up.
    pub const MAX_POOL_SIZE: usize = 1024;
    /// Weight of every server that does not set `weight`: all servers share alike.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// Weights above this are refused: a ratio of 1000:1 already sends the light server one
    /// request in a thousand, and a small bound keeps the weighted arithmetic far from overflow.
    pub const MAX_WEIGHT: u32 = 1000;
}

/// Index of an upstream in [`RouteTable::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(pub u16);

/// Index of a route in [`RouteTable::routes`], in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u16);

/// One backend server and the size of Juggler's fixed connection pool to it.
#[derive(Debug)]
pub struct BackendSpec {
    /// `host:port` as written in the config; resolved when a pooled connection is opened.
    pub address: &'static str,
    /// The fixed number of keep-alive connections Juggler holds to this server: never more.
    pub pool_size: usize,
    /// The upstream this server belongs to (a server belongs to exactly one).
    pub upstream: UpstreamId,
    /// Its share of the upstream's requests relative to the other servers (1-1000): with weights
    /// 3 and 1, three of every four requests go to the first.
    pub weight: u32,
}

/// A named group of backends that requests are spread over, request by request, by its policy.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    /// Round-robin order: request 1 goes to `backends[0]`, request 2 to `backends[1]`, ...
    pub backends: &'static [BackendId],
    /// How each request picks one of `backends`.
    pub balance: BalancePolicy,
    /// How its backends are watched and spared when they fail or come back.
    pub protection: Protection,
    /// `pipeline = true`: a request that would wait for a connection may instead be written
    /// behind the request a busy connection carries (idempotent, body-less requests only), and
    /// takes over that connection's slot once the answer before it is read.
    pub pipeline: bool,
}

/// An upstream's backend protection: active checks, ejection on `5xx`, slow start. All off by
/// default ([`Protection::OFF`]), as before these settings existed.
#[derive(Debug, Clone, Copy)]
pub struct Protection {
    /// `health_check = { ... }`: an HTTP check sent over an idle pooled connection.
    pub health_check: Option<HealthCheck>,
    /// `slow_start`: how long a backend that comes back takes to ramp from 1 usable slot to `n`
    /// (`ZERO`: at once).
    pub slow_start: Duration,
    /// `eject_after_5xx`: consecutive `5xx` answers that take a backend out of rotation for a
    /// while (0: never).
    pub eject_after_5xx: u32,
    /// `connections_per_server = { min, max }`: the usable slots move between `min` and the pool
    /// size (`max`) with measured response times; `None`: a fixed `n`.
    pub adaptive_min: Option<usize>,
    /// `reserved`: slots of each server's pool that only `priority = "high"` routes may take
    /// (0: none; always below the pool size).
    pub reserved: usize,
}

impl Protection {
    pub const OFF: Protection = Protection {
        health_check: None,
        slow_start: Duration::ZERO,
        eject_after_5xx: 0,
        adaptive_min: None,
        reserved: 0,
    };
}

/// `health_check = { path = "/healthz", interval = "2s", timeout = "1s", expect = "2xx", fails = 2,
/// passes = 2 }`.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// Path (and query) of the `GET` sent to each backend.
    pub path: &'static str,
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// Time a check waits for its answer; also how long every pooled connection may wait for a
    /// response before a backend whose slots are all busy counts as hung.
    pub timeout: Duration,
    /// Statuses that pass, inclusive (`"2xx"`: 200-299, `"204"`: 204-204).
    pub expect: (u16, u16),
    /// Failed checks in a row that mark a backend down.
    pub fails: u32,
    /// Passed checks in a row that bring it back.
    pub passes: u32,
}

impl HealthCheck {
    pub const DEFAULT_PATH: &'static str = "/healthz";
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_EXPECT: (u16, u16) = (200, 299);
    pub const DEFAULT_FAILS: u32 = 2;
    pub const DEFAULT_PASSES: u32 = 2;
    /// `fails` and `passes` above this are refused: at a 2 s interval 100 checks are minutes.
    pub const MAX_COUNT: u32 = 100;

    /// The defaults with `path`, for tests and the code generator.
    pub const fn at(path: &'static str) -> HealthCheck {
        HealthCheck {
            path,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            expect: Self::DEFAULT_EXPECT,
            fails: Self::DEFAULT_FAILS,
            passes: Self::DEFAULT_PASSES,
        }
    }

    /// Whether a check answered with `status` passes.
    pub fn passes_with(&self, status: u16) -> bool {
        (self.expect.0..=self.expect.1).contains(&status)
    }
}

/// A setting whose value is one of a few names (`balance = "least_queued"`, `tls = "auto"`): one
/// table per setting serves the config check, the code generator and every place that prints it.
pub trait Named: Copy + PartialEq + 'static {
    /// Every value by the name the config gives it, the default first.
    const NAMES: &'static [(&'static str, Self)];

    /// The value when the config does not set one.
    const DEFAULT: Self = Self::NAMES[0].1;

    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, value)| *value)
    }

    /// The name the config uses for this value.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, value)| *value == self)
            .map_or("?", |(name, _)| name)
    }
}

/// How an upstream picks the backend for a request (`balance = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancePolicy {
    /// `"round_robin"`: smooth weighted round robin, request by request; with equal weights
    /// request k goes to backend k mod m. Blind to load: fair when backends are equally fast.
    RoundRobin,
    /// `"least_queued"`: a backend with a free pooled connection if there is one (in turn), else
    /// the one whose queue frees up first (fewest waiting per connection, weight-adjusted).
    LeastQueued,
}

impl Named for BalancePolicy {
    const NAMES: &'static [(&'static str, BalancePolicy)] = &[
        ("round_robin", BalancePolicy::RoundRobin),
        ("least_queued", BalancePolicy::LeastQueued),
    ];
}

/// One `[[route]]` of `routes.toml`, kept for `--print-routes` and per-route policy.
#[derive(Debug)]
pub struct Route {
    pub methods: MethodSet,
    /// The path patterns as written (`/api/users`, `/static/*`, `/wild/*/hello/*`).
    pub paths: &'static [&'static str],
    pub upstream: UpstreamId,
    /// Whether a POST/PATCH may be re-sent after a pooled connection failed before any response byte.
    pub retry_non_idempotent: bool,
    /// `priority = "high" | "normal" | "low"`: which of a backend's slots and queue places its
    /// requests may take (see [`Priority`]).
    pub priority: Priority,
    /// `file:line` of the route in its source, for logs and `--print-routes`.
    pub source: &'static str,
}

/// A route's claim on a saturated backend (`priority = "..."`). Only `high` requests may take the
/// slots an upstream's `reserved` keeps back; `low` requests are the first refused when the queue
/// fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `"high"`: may use every slot, reserved ones included, and never waits behind normal or
    /// low traffic for them.
    High,
    /// `"normal"`: the default.
    Normal,
    /// `"low"`: like normal, but may queue only while the queue is less than half full.
    Low,
}

impl Named for Priority {
    const NAMES: &'static [(&'static str, Priority)] = &[
        ("normal", Priority::Normal),
        ("high", Priority::High),
        ("low", Priority::Low),
    ];
}

/// What the route matcher says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    Found(RouteId),
    /// Some route matches the path but none the method: answer `405` with these in `Allow`.
    MethodNotAllowed(MethodSet),
    NotFound,
}

/// Whether the HTTPS listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    /// On when both the certificate and the key file exist at start-up.
    Auto,
    /// Required: a missing or broken certificate is a start-up error.
    On,
}

impl Named for TlsMode {
    const NAMES: &'static [(&'static str, TlsMode)] = &[
        ("auto", TlsMode::Auto),
        ("on", TlsMode::On),
        ("off", TlsMode::Off),
    ];
}

#[derive(Debug)]
pub struct ListenSettings {
    /// Plain HTTP listen address; `None` disables the plain listener.
    pub http: Option<&'static str>,
    /// HTTPS listen address; `None` disables the TLS listener whatever `tls` says.
    pub https: Option<&'static str>,
    pub tls: TlsMode,
    /// PEM certificate chain, read at start-up and on SIGHUP (relative to the working directory).
    pub tls_cert: &'static str,
    /// PEM private key, read at start-up and on SIGHUP; never compiled in.
    pub tls_key: &'static str,
    /// Answer every plain-HTTP request with a `308` to the HTTPS listener.
    pub redirect_http_to_https: bool,
    /// Peers whose connections start with a PROXY protocol header (v1 or v2) naming the real
    /// client: an L4 balancer in front of Juggler. Empty: no PROXY headers are accepted.
    pub proxy_protocol_from: &'static [IpNetwork],
}

/// `[admin]`: the operators' listener (metrics, status page, drain API).
#[derive(Debug)]
pub struct AdminSettings {
    /// Listen address; `None` ("off") disables the admin listener and with it metric counting.
    pub listen: Option<&'static str>,
    /// File holding the bearer token the mutating admin endpoints require (relative to the working directory).
    pub token_file: &'static str,
}

/// How log events are written to stderr (`[log] format = "..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `"text"`: one human-readable line per event, coloured on a terminal.
    Text,
    /// `"json"`: one JSON object per line with the event's fields at the top level, for log shippers.
    Json,
}

impl Named for LogFormat {
    const NAMES: &'static [(&'static str, LogFormat)] =
        &[("text", LogFormat::Text), ("json", LogFormat::Json)];
}

/// `[fleet]`: several Juggler instances share each backend's `n` through etcd. With it,
/// `connections_per_server` (and a server's `connections`) is the total for the whole fleet, and
/// each instance opens connections only within the share of it recorded in etcd under its lease.
#[derive(Debug)]
pub struct FleetSettings {
    /// etcd client endpoints, e.g. `"http://10.0.0.5:2379"`.
    pub etcd: &'static [&'static str],
    /// An instance that cannot renew its lease for this long is gone: its shares (above its
    /// fallback) go to the others.
    pub lease: Duration,
    /// How long the fallback slots of an instance that stopped renewing stay reserved for it:
    /// a partitioned instance keeps serving on them this long before it goes down to nothing.
    pub fallback_lease: Duration,
    /// Slots per backend a partitioned instance keeps (recorded under the longer `fallback_lease`).
    pub fallback_share: usize,
    /// The etcd key prefix of this fleet; `None`: `/juggler/<config hash>`, so instances of one
    /// build find each other and a different config is a different fleet.
    pub prefix: Option<&'static str>,
}

impl FleetSettings {
    /// `[fleet]`'s defaults for the keys an operator leaves out (`etcd` has none).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
    /// Six leases: long enough to ride out an etcd election or a short partition.
    pub const DEFAULT_FALLBACK_LEASE: Duration = Duration::from_secs(30);
    pub const DEFAULT_FALLBACK_SHARE: usize = 1;
}

/// `[log]`: how Juggler writes its log, the access log included.
#[derive(Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `buffer` and `flush`, checked and emitted like the scalar sections' keys.
    pub buffering: LogBuffering,
}

settings_section! {
    /// The scalar keys of `[log]`: lines are gathered per thread and written in batches, as nginx's
    /// `access_log ... buffer= flush=`, so the access log costs one `write(2)` per batch rather
    /// than one per request. Warnings and errors are written at once, with what came before them.
    pub struct LogBuffering in "log" {
        /// Log bytes each thread gathers before writing them in one go; `0` writes every line at once.
        buffer: usize = size(64 * KIB, 0, 16 * MIB),
        /// Longest a gathered line waits before it is written, however quiet the traffic.
        flush: Duration = timeout(Duration::from_secs(1)),
    }
}

settings_section! {
    /// `[queue]`: waiting for a pooled connection.
    pub struct QueueSettings in "queue" {
        /// Requests that may wait for one backend's pool before that backend counts as full.
        max_queued_per_server: usize = count(1024, 0, 1_000_000),
        /// How long a request may wait for a pooled connection before the client gets `503`.
        timeout: Duration = timeout(Duration::from_secs(10)),
    }
}

settings_section! {
    /// `[limits]`: what clients may send and how long Juggler waits for clients and backends.
    pub struct Limits in "limits" {
        /// Request line plus headers; beyond it the client gets `431`.
        max_header_bytes: usize = size(16 * KIB, KIB, MIB),
        /// Request body; beyond it the client gets `413` and the connection is closed.
        max_body_bytes: usize = size(16 * MIB, 1, TIB),
        /// Time a client has to send a complete header block (`408` after it).
        header_read_timeout: Duration = timeout(Duration::from_secs(10)),
        /// Time a client has to send the complete body once the headers are in (`408` after it).
        body_read_timeout: Duration = timeout(Duration::from_secs(30)),
        /// Keep-alive client connections idle longer than this are closed.
        client_idle_timeout: Duration = timeout(Duration::from_secs(60)),
        /// Time from sending a request to a backend until its response head arrives (`504` after it).
        backend_timeout: Duration = timeout(Duration::from_secs(30)),
        /// Time to open one pooled TCP connection.
        connect_timeout: Duration = timeout(Duration::from_secs(3)),
        /// Responses up to this size are read whole so the pooled connection is freed at once.
        response_buffer_bytes: usize = size(MIB, 1, GIB),
        /// Bytes of each request body kept in memory; the rest spills to an unlinked temporary file.
        body_memory_bytes: usize = size(64 * KIB, KIB, GIB),
        /// In-memory request body bytes of all requests together; past it, uploads wait (TCP backpressure).
        body_memory_budget: usize = size(128 * MIB, MIB, TIB),
        /// Spilled request bodies and spooled responses on disk, all together; past it, uploads wait and responses stream.
        spool_budget: usize = size(4 * GIB, 0, TIB),
        /// Largest response spooled to disk (freeing the pooled connection); larger ones stream.
        response_spool_max_bytes: usize = size(256 * MIB, 0, TIB),
        /// Concurrent client connections; beyond it new connections wait in the accept backlog.
        max_client_connections: usize = count(10_000, 1, 1_000_000),
        /// Time a TLS client has to finish its handshake.
        tls_handshake_timeout: Duration = timeout(Duration::from_secs(10)),
        /// On SIGINT/SIGTERM, time given to accepted and queued requests to finish (`"0s"`: none).
        drain_timeout: Duration = duration(Duration::from_secs(30)),
    }
}

settings_section! {
    /// `[proxy]`: how requests are forwarded.
    pub struct ProxySettings in "proxy" {
        /// Add `X-Forwarded-For` / `X-Forwarded-Proto` toward backends (off, as in the original).
        forwarded_headers: bool = flag(false),
        /// Send each request's id (the access log's `request_id`) to its backend as `X-Request-Id`.
        request_id_header: bool = flag(false),
        /// Re-sends of one request after a pooled connection failed before any response byte.
        max_retries: u32 = count(1, 0, 10),
        /// Consecutive failed connects after which a backend is marked down and skipped.
        down_after_failures: u32 = count(3, 1, 1000),
        /// Serving threads, a single-threaded runtime each; `0` means one per core.
        worker_threads: usize = count(0, 0, 1024),
    }
}

/// Every section whose keys the codegen crate checks against a [`crate::schema::SettingSpec`]: the
/// scalar sections, then `[log]`'s buffering keys. The one list of specs: the codegen crate tells
/// sections and settings apart by address, so every use goes through it.
pub static SPECIFIED_SETTINGS: [&SectionSpec; 4] = [
    &QueueSettings::SPEC,
    &Limits::SPEC,
    &ProxySettings::SPEC,
    &LogBuffering::SPEC,
];

/// The scalar sections of [`Settings`], in field order: what the codegen crate parses, checks and
/// emits generically (`[listen]`, `[admin]` and `[log]` hold addresses, paths and names, and are
/// handled by hand).
pub static SCALAR_SECTIONS: &[&SectionSpec] = SPECIFIED_SETTINGS.split_at(3).0;

/// `[log]`'s `buffer` and `flush`: read, checked and emitted like a scalar section's keys, inside
/// the hand-written `[log]`.
pub static LOG_BUFFERING: &SectionSpec = SPECIFIED_SETTINGS[3];

/// The scalar section whose TOML table is `name`.
pub fn scalar_section(name: &str) -> Option<&'static SectionSpec> {
    SCALAR_SECTIONS
        .iter()
        .copied()
        .find(|section| section.name == name)
}

#[derive(Debug)]
pub struct Settings {
    pub listen: ListenSettings,
    pub queue: QueueSettings,
    pub limits: Limits,
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    /// `None`: no `[fleet]`, each instance uses `n` on its own.
    pub fleet: Option<FleetSettings>,
}

/// Everything Juggler needs to run: backends, upstreams, routes, the matcher and settings.
#[derive(Debug)]
pub struct RouteTable {
    pub backends: &'static [BackendSpec],
    pub upstreams: &'static [Upstream],
    pub routes: &'static [Route],
    /// Maps method + path (without query) to a route; generated as a `match` by `build.rs`.
    pub match_route: fn(&http::Method, &str) -> RouteMatch,
    pub settings: Settings,
    /// Short hash of the config files this table was built from (shown by `--version`).
    pub config_hash: &'static str,
    /// The config files this table was built from.
    pub sources: &'static [&'static str],
}

impl RouteTable {
    pub fn backend(&self, id: BackendId) -> &BackendSpec {
        &self.backends[usize::from(id.0)]
    }

    pub fn upstream(&self, id: UpstreamId) -> &Upstream {
        &self.upstreams[usize::from(id.0)]
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[usize::from(id.0)]
    }
}

impl Settings {
    /// The documented defaults of every setting, for tables written by hand in tests.
    pub const DEFAULT: Settings = Settings {
        listen: ListenSettings {
            http: Some("0.0.0.0:8080"),
            https: Some("0.0.0.0:8443"),
            tls: TlsMode::DEFAULT,
            tls_cert: "juggler_config/server.crt",
            tls_key: "juggler_config/server.key",
            redirect_http_to_https: false,
            proxy_protocol_from: &[],
        },
        queue: QueueSettings::DEFAULT,
        limits: Limits::DEFAULT,
        proxy: ProxySettings::DEFAULT,
        admin: AdminSettings {
            listen: Some("127.0.0.1:9901"),
            token_file: "juggler_config/admin.token",
        },
        log: LogSettings {
            format: LogFormat::DEFAULT,
            buffering: LogBuffering::DEFAULT,
        },
        fleet: None,
    };
}
