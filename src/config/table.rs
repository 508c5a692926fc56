//! Plain data the runtime works on.
//!
//! `build.rs` generates one instance of [`RouteTable`] (`distributer::TABLE`) from `routes.toml` and
//! `juggler_config/`; tests build their own by hand. Every field is public and every type is plain
//! `'static` data so that a generated `static` can name it without any code running at start-up.

use std::time::Duration;

use crate::router::MethodSet;

/// Index of a backend server in [`RouteTable::backends`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u16);

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
}

/// A named group of backends that requests are spread over by per-request round robin.
#[derive(Debug)]
pub struct Upstream {
    pub name: &'static str,
    /// Round-robin order: request 1 goes to `backends[0]`, request 2 to `backends[1]`, ...
    pub backends: &'static [BackendId],
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
    /// `file:line` of the route in its source, for logs and `--print-routes`.
    pub source: &'static str,
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
}

#[derive(Debug)]
pub struct QueueSettings {
    /// Requests that may wait for one backend's pool before that backend counts as full.
    pub max_queued_per_server: usize,
    /// How long a request may wait for a pooled connection before the client gets `503`.
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Limits {
    /// Request line plus headers; beyond it the client gets `431`.
    pub max_header_bytes: usize,
    /// Request body; beyond it the client gets `413` and the connection is closed.
    pub max_body_bytes: usize,
    /// Time a client has to send a complete header block (`408` after it).
    pub header_read_timeout: Duration,
    /// Time a client has to send the complete body once the headers are in (`408` after it).
    pub body_read_timeout: Duration,
    /// Keep-alive client connections idle longer than this are closed.
    pub client_idle_timeout: Duration,
    /// Time from sending a request to a backend until its response head arrives (`504` after it).
    pub backend_timeout: Duration,
    /// Time to open one pooled TCP connection.
    pub connect_timeout: Duration,
    /// Responses up to this size are read whole so the pooled connection is freed at once.
    pub response_buffer_bytes: usize,
    /// Concurrent client connections; beyond it new connections wait in the accept backlog.
    pub max_client_connections: usize,
    /// Time a TLS client has to finish its handshake.
    pub tls_handshake_timeout: Duration,
    /// On SIGINT/SIGTERM, time given to accepted and queued requests to finish.
    pub drain_timeout: Duration,
}

#[derive(Debug)]
pub struct ProxySettings {
    /// Add `X-Forwarded-For` / `X-Forwarded-Proto` toward backends (off, as in the original).
    pub forwarded_headers: bool,
    /// Re-sends of one request after a pooled connection failed before any response byte.
    pub max_retries: u32,
    /// Consecutive failed connects after which a backend is marked down and skipped.
    pub down_after_failures: u32,
    /// Runtime worker threads; `0` means one per core.
    pub worker_threads: usize,
}

#[derive(Debug)]
pub struct Settings {
    pub listen: ListenSettings,
    pub queue: QueueSettings,
    pub limits: Limits,
    pub proxy: ProxySettings,
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
            tls: TlsMode::Auto,
            tls_cert: "juggler_config/server.crt",
            tls_key: "juggler_config/server.key",
            redirect_http_to_https: false,
        },
        queue: QueueSettings {
            max_queued_per_server: 1024,
            timeout: Duration::from_secs(10),
        },
        limits: Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(60),
            backend_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            response_buffer_bytes: 1024 * 1024,
            max_client_connections: 10_000,
            tls_handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        },
        proxy: ProxySettings {
            forwarded_headers: false,
            max_retries: 1,
            down_after_failures: 3,
            worker_threads: 0,
        },
    };
}
