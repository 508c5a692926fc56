//! The checked configuration: everything `generate` needs, with every default filled in and the
//! `file:line` each entry came from.

use std::time::Duration;

use crate::pattern::PathKind;

/// The methods a route may name, in the order `Allow` lists them.
///
/// Must equal `juggler::router::METHOD_NAMES` (this crate cannot depend on the crate it generates
/// code for; `tests/codegen.rs` checks the two lists are the same).
pub const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Pool sizes above this are refused: a backend rarely serves more keep-alive connections from
/// one client well, and a typo such as `50000` would exhaust file descriptors at start-up.
pub const MAX_POOL_SIZE: i64 = 1024;

/// Pool size of every server of an upstream that does not set `connections_per_server`.
pub const DEFAULT_POOL_SIZE: usize = 5;

/// A validated configuration, ready for [`crate::generate`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Display names of the input files, `routes.toml` first.
    pub sources: Vec<String>,
    /// Short hash of the input files' bytes (shown by `juggler --version`).
    pub config_hash: String,
    /// All servers of all upstreams, upstream by upstream in file order; index = `BackendId`.
    pub backends: Vec<Backend>,
    pub upstreams: Vec<Upstream>,
    /// In priority order; index = `RouteId`.
    pub routes: Vec<Route>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub address: String,
    pub pool_size: usize,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// `file:line` of the server entry.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Indices into [`Config::backends`], in round-robin order.
    pub backends: Vec<usize>,
    /// `file:line` of the `[upstreams.<name>]` header.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub methods: MethodSet,
    pub paths: Vec<RoutePath>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub retry_non_idempotent: bool,
    /// `file:line` of the `[[route]]` header.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct RoutePath {
    /// As written (`/static/*`).
    pub text: String,
    pub kind: PathKind,
    /// `file:line` of the path.
    pub source: String,
}

/// Bit set of [`METHOD_NAMES`], the same bits as `juggler::router::MethodSet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(pub u16);

impl MethodSet {
    pub const ANY: MethodSet = MethodSet((1 << METHOD_NAMES.len()) - 1);

    pub fn from_name(name: &str) -> Option<MethodSet> {
        METHOD_NAMES
            .iter()
            .position(|known| *known == name)
            .map(|index| MethodSet(1 << index))
    }

    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    pub fn contains_all(self, other: MethodSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        METHOD_NAMES
            .iter()
            .enumerate()
            .filter(move |(index, _)| self.0 & (1 << index) != 0)
            .map(|(_, name)| *name)
    }

    /// `*` or `GET, HEAD`, for summaries and messages.
    pub fn describe(self) -> String {
        if self == Self::ANY {
            "*".to_string()
        } else {
            self.names().collect::<Vec<_>>().join(", ")
        }
    }
}

/// A setting's value and where it was set (`None`: the documented default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Option<String>,
}

impl<T> Setting<T> {
    pub fn default(value: T) -> Self {
        Setting {
            value,
            source: None,
        }
    }
}

/// Mirror of `juggler::table::Settings`, field for field.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Listen,
    pub max_queued_per_server: Setting<usize>,
    pub queue_timeout: Setting<Duration>,
    pub max_header_bytes: Setting<usize>,
    pub max_body_bytes: Setting<usize>,
    pub header_read_timeout: Setting<Duration>,
    pub body_read_timeout: Setting<Duration>,
    pub client_idle_timeout: Setting<Duration>,
    pub backend_timeout: Setting<Duration>,
    pub connect_timeout: Setting<Duration>,
    pub response_buffer_bytes: Setting<usize>,
    pub max_client_connections: Setting<usize>,
    pub tls_handshake_timeout: Setting<Duration>,
    pub drain_timeout: Setting<Duration>,
    pub forwarded_headers: Setting<bool>,
    pub max_retries: Setting<u32>,
    pub down_after_failures: Setting<u32>,
    pub worker_threads: Setting<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    Auto,
    On,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub tls: TlsMode,
    pub tls_cert: String,
    pub tls_key: String,
    pub redirect_http_to_https: bool,
}

impl Settings {
    /// The documented defaults; they equal `juggler::table::Settings::DEFAULT` when the config
    /// directory is `juggler_config` (the certificate and key default to files inside it).
    pub fn defaults(config_dir: &str) -> Settings {
        let secs = |seconds| Setting::default(Duration::from_secs(seconds));
        Settings {
            listen: Listen {
                http: Some("0.0.0.0:8080".to_string()),
                https: Some("0.0.0.0:8443".to_string()),
                tls: TlsMode::Auto,
                tls_cert: format!("{config_dir}/server.crt"),
                tls_key: format!("{config_dir}/server.key"),
                redirect_http_to_https: false,
            },
            max_queued_per_server: Setting::default(1024),
            queue_timeout: secs(10),
            max_header_bytes: Setting::default(16 * 1024),
            max_body_bytes: Setting::default(16 * 1024 * 1024),
            header_read_timeout: secs(10),
            body_read_timeout: secs(30),
            client_idle_timeout: secs(60),
            backend_timeout: secs(30),
            connect_timeout: secs(3),
            response_buffer_bytes: Setting::default(1024 * 1024),
            max_client_connections: Setting::default(10_000),
            tls_handshake_timeout: secs(10),
            drain_timeout: secs(30),
            forwarded_headers: Setting::default(false),
            max_retries: Setting::default(1),
            down_after_failures: Setting::default(3),
            worker_threads: Setting::default(0),
        }
    }
}
