//! The checked configuration: everything `generate` needs, with every default filled in and the
//! `file:line` each entry came from.

use std::time::Duration;

pub use juggler_config::network::IpNetwork;
pub use juggler_config::router::{MethodSet, METHOD_NAMES};
use juggler_config::schema::{Kind, SectionSpec, SettingSpec};
pub use juggler_config::table::{BalancePolicy, LogFormat, Named, Priority, TlsMode};
use juggler_config::table::{Settings as RuntimeSettings, SPECIFIED_SETTINGS};

use crate::pattern::PathKind;
use crate::units::{format_duration, format_size};

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
    /// `file:line` of the `connections` or `connections_per_server` that set the pool size;
    /// `None`: the default.
    pub pool_source: Option<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Share of the upstream's requests relative to its other servers (1-1000).
    pub weight: u32,
    /// `file:line` of the server entry.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Indices into [`Config::backends`], in round-robin order.
    pub backends: Vec<usize>,
    pub balance: BalancePolicy,
    /// `file:line` of the `balance` key; `None`: the default.
    pub balance_source: Option<String>,
    /// `file:line` of the `[upstreams.<name>]` header.
    pub source: String,
    pub health_check: Option<HealthCheck>,
    /// `ZERO`: off.
    pub slow_start: Duration,
    /// 0: off.
    pub eject_after_5xx: u32,
    /// `connections_per_server = { min, max }`: the adaptive limit's floor (the pool size is max).
    pub adaptive_min: Option<usize>,
    /// `reserved`: slots per server for high-priority routes (0: none).
    pub reserved: usize,
    /// `pipeline = true`: a waiting request may ride behind the one a busy connection carries.
    pub pipeline: bool,
}

/// An upstream's `health_check`, every default filled in.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Inclusive range of passing statuses.
    pub expect: (u16, u16),
    pub fails: u32,
    pub passes: u32,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub methods: MethodSet,
    pub paths: Vec<RoutePath>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub retry_non_idempotent: bool,
    pub priority: Priority,
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

/// One scalar setting (`[queue]`, `[limits]`, `[proxy]`): its value and where it came from.
#[derive(Debug, Clone)]
pub struct Setting {
    pub section: &'static SectionSpec,
    pub spec: &'static SettingSpec,
    /// In the unit of the spec's kind: bytes, milliseconds, a count, or 0/1.
    pub value: u64,
    /// How the operator wrote it and where; `None`: the documented default.
    pub written: Option<Written>,
}

/// A value as it stands in the file, for comments in the generated code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The TOML value as written: `"60s"`, `16384`, `"16KiB"`, `true`.
    pub text: String,
    /// `file:line`.
    pub source: String,
}

impl Setting {
    /// The value as a duration (meaningful for [`Kind::Duration`] settings).
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.value)
    }

    /// The value the way an operator would write it: as written, or the default formatted.
    pub fn shown(&self) -> String {
        if let Some(written) = &self.written {
            return written.text.clone();
        }
        match self.spec.kind {
            Kind::Size => format!("\"{}\"", format_size(self.value)),
            Kind::Duration => format!("\"{}\"", format_duration(self.duration())),
            Kind::Count => self.value.to_string(),
            Kind::Bool => (self.value != 0).to_string(),
        }
    }
}

/// Mirror of `juggler::table::Settings`: `[listen]`, `[admin]` and `[log]` by hand, the scalar
/// sections from the schema.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Listen,
    /// Every scalar setting (`[log]`'s buffering keys included), in [`SPECIFIED_SETTINGS`] order.
    pub scalars: Vec<Setting>,
    pub admin: Admin,
    pub log: Log,
    /// `None`: no `[fleet]`.
    pub fleet: Option<Fleet>,
}

/// `[fleet]`'s defaults, the runtime's own.
pub const DEFAULT_LEASE: Duration = juggler_config::table::FleetSettings::DEFAULT_LEASE;
pub const DEFAULT_FALLBACK_LEASE: Duration =
    juggler_config::table::FleetSettings::DEFAULT_FALLBACK_LEASE;
pub const DEFAULT_FALLBACK_SHARE: usize =
    juggler_config::table::FleetSettings::DEFAULT_FALLBACK_SHARE;

/// `[fleet]`, with its defaults filled in.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub etcd: Vec<String>,
    pub lease: Duration,
    pub fallback_lease: Duration,
    pub fallback_share: usize,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub http: Option<String>,
    pub https: Option<String>,
    pub tls: TlsMode,
    pub tls_cert: String,
    pub tls_key: String,
    pub redirect_http_to_https: bool,
    pub proxy_protocol_from: Vec<IpNetwork>,
}

/// `[admin]`: the operators' listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `None`: `"off"`.
    pub listen: Option<String>,
    pub token_file: String,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    /// `file:line` of the `format` key; `None`: the default.
    pub format_source: Option<String>,
}

/// A default file of the runtime's `Settings::DEFAULT` (which names the shipped
/// `juggler_config/`), moved into `config_dir`.
fn in_config_dir(config_dir: &str, path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    format!("{config_dir}/{file}")
}

impl Listen {
    /// `juggler_config::table::Settings::DEFAULT.listen`, with the certificate and key moved into
    /// `config_dir`.
    fn defaults(config_dir: &str) -> Listen {
        let listen = &RuntimeSettings::DEFAULT.listen;
        Listen {
            http: listen.http.map(str::to_string),
            https: listen.https.map(str::to_string),
            tls: listen.tls,
            tls_cert: in_config_dir(config_dir, listen.tls_cert),
            tls_key: in_config_dir(config_dir, listen.tls_key),
            redirect_http_to_https: listen.redirect_http_to_https,
            proxy_protocol_from: listen.proxy_protocol_from.to_vec(),
        }
    }
}

impl Admin {
    /// `juggler_config::table::Settings::DEFAULT.admin`, with the token file moved into `config_dir`.
    fn defaults(config_dir: &str) -> Admin {
        let admin = &RuntimeSettings::DEFAULT.admin;
        Admin {
            listen: admin.listen.map(str::to_string),
            token_file: in_config_dir(config_dir, admin.token_file),
        }
    }
}

impl Settings {
    /// The documented defaults; they equal `juggler::table::Settings::DEFAULT` when the config
    /// directory is `juggler_config` (the certificate, key and admin token default to files
    /// inside it).
    pub fn defaults(config_dir: &str) -> Settings {
        let scalars = SPECIFIED_SETTINGS
            .iter()
            .copied()
            .flat_map(|section| {
                section.settings.iter().map(move |spec| Setting {
                    section,
                    spec,
                    value: spec.default,
                    written: None,
                })
            })
            .collect();
        Settings {
            listen: Listen::defaults(config_dir),
            scalars,
            admin: Admin::defaults(config_dir),
            log: Log {
                format: RuntimeSettings::DEFAULT.log.format,
                format_source: None,
            },
            fleet: None,
        }
    }

    /// The scalar setting `section.key`, e.g. `("limits", "max_body_bytes")`.
    pub fn scalar(&self, section: &str, key: &str) -> Option<&Setting> {
        self.scalars
            .iter()
            .find(|setting| setting.section.name == section && setting.spec.key == key)
    }
}
