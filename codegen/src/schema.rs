//! The scalar settings of `load_balancer.toml` (`[queue]`, `[limits]`, `[proxy]`), described once.
//!
//! Raw parsing (which keys exist, what type each value has), validation (ranges), the defaults and
//! the generated `TABLE` fields are all read from [`SCALAR_SECTIONS`], so a new setting is one
//! entry here plus its field in `juggler::table`. `[listen]` and `[upstreams]` are not scalars: they
//! have their own code in `validate/`.

/// How a setting is written in the config and emitted in the generated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes: `16384` or `"16KiB"`; a `usize` field. Values are bytes.
    Size,
    /// `"250ms"`, `"10s"`, `"2m"`, `"1h"`; a `Duration` field. Values are milliseconds.
    Duration,
    /// A whole number; a `usize` or `u32` field.
    Count,
    /// `true` or `false`; a `bool` field. Values are 0 and 1.
    Bool,
}

/// One key of a scalar section. Numbers are in the kind's unit (bytes, milliseconds, 0/1).
#[derive(Debug)]
pub struct SettingSpec {
    /// The key in the TOML section, which is also the field name in the runtime struct.
    pub key: &'static str,
    pub kind: Kind,
    pub default: u64,
    /// Smallest accepted value; for a duration, `1` means "not zero".
    pub min: u64,
    pub max: u64,
    /// What the setting does, one line.
    pub doc: &'static str,
}

/// One scalar section: a TOML table and the runtime struct it becomes.
#[derive(Debug)]
pub struct SectionSpec {
    /// The TOML table name, which is also the field name in `juggler::table::Settings`.
    pub name: &'static str,
    /// The type of that field in `juggler::table`.
    pub rust_type: &'static str,
    pub settings: &'static [SettingSpec],
}

impl SectionSpec {
    /// The keys of this section, in schema order (for "did you mean").
    pub fn keys(&self) -> Vec<&'static str> {
        self.settings.iter().map(|setting| setting.key).collect()
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const SECOND: u64 = 1000;

/// A size or a count from `min` to `max`.
const fn ranged(
    key: &'static str,
    kind: Kind,
    default: u64,
    [min, max]: [u64; 2],
    doc: &'static str,
) -> SettingSpec {
    SettingSpec {
        key,
        kind,
        default,
        min,
        max,
        doc,
    }
}

/// A timeout that must not be zero (a zero timeout would fail every request).
const fn timeout(key: &'static str, default_seconds: u64, doc: &'static str) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Duration,
        default: default_seconds * SECOND,
        min: 1,
        max: u64::MAX,
        doc,
    }
}

const fn flag(key: &'static str, default: bool, doc: &'static str) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Bool,
        default: default as u64,
        min: 0,
        max: 1,
        doc,
    }
}

/// Every scalar section, in the order of `juggler::table::Settings`.
pub static SCALAR_SECTIONS: [SectionSpec; 3] = [
    SectionSpec {
        name: "queue",
        rust_type: "QueueSettings",
        settings: &[
            ranged(
                "max_queued_per_server",
                Kind::Count,
                1024,
                [0, 1_000_000],
                "Requests that may wait for one backend's pool before that backend counts as full.",
            ),
            timeout(
                "timeout",
                10,
                "How long a request may wait for a pooled connection before the client gets `503`.",
            ),
        ],
    },
    SectionSpec {
        name: "limits",
        rust_type: "Limits",
        settings: &[
            ranged(
                "max_header_bytes",
                Kind::Size,
                16 * KIB,
                [KIB, MIB],
                "Request line plus headers; beyond it the client gets `431`.",
            ),
            ranged(
                "max_body_bytes",
                Kind::Size,
                16 * MIB,
                [1, 1 << 40],
                "Request body; beyond it the client gets `413` and the connection is closed.",
            ),
            timeout(
                "header_read_timeout",
                10,
                "Time a client has to send a complete header block (`408` after it).",
            ),
            timeout(
                "body_read_timeout",
                30,
                "Time a client has to send the complete body once the headers are in (`408` after it).",
            ),
            timeout(
                "client_idle_timeout",
                60,
                "Keep-alive client connections idle longer than this are closed.",
            ),
            timeout(
                "backend_timeout",
                30,
                "Time from sending a request to a backend until its response head arrives (`504` after it).",
            ),
            timeout(
                "connect_timeout",
                3,
                "Time to open one pooled TCP connection.",
            ),
            ranged(
                "response_buffer_bytes",
                Kind::Size,
                MIB,
                [1, 1 << 30],
                "Responses up to this size are read whole so the pooled connection is freed at once.",
            ),
            ranged(
                "max_client_connections",
                Kind::Count,
                10_000,
                [1, 1_000_000],
                "Concurrent client connections; beyond it new connections wait in the accept backlog.",
            ),
            timeout(
                "tls_handshake_timeout",
                10,
                "Time a TLS client has to finish its handshake.",
            ),
            // Zero is meaningful here: stop at once without waiting for requests in flight.
            SettingSpec {
                key: "drain_timeout",
                kind: Kind::Duration,
                default: 30 * SECOND,
                min: 0,
                max: u64::MAX,
                doc: "On SIGINT/SIGTERM, time given to accepted and queued requests to finish.",
            },
        ],
    },
    SectionSpec {
        name: "proxy",
        rust_type: "ProxySettings",
        settings: &[
            flag(
                "forwarded_headers",
                false,
                "Add `X-Forwarded-For` / `X-Forwarded-Proto` toward backends.",
            ),
            ranged(
                "max_retries",
                Kind::Count,
                1,
                [0, 10],
                "Re-sends of one request after a pooled connection failed before any response byte.",
            ),
            ranged(
                "down_after_failures",
                Kind::Count,
                3,
                [1, 1000],
                "Consecutive failed connects after which a backend is marked down and skipped.",
            ),
            ranged(
                "worker_threads",
                Kind::Count,
                0,
                [0, 1024],
                "Runtime worker threads; `0` means one per core.",
            ),
        ],
    },
];

/// The scalar section called `name`.
pub fn section(name: &str) -> Option<&'static SectionSpec> {
    SCALAR_SECTIONS.iter().find(|section| section.name == name)
}
