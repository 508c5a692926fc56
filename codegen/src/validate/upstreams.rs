//! `[upstreams.<name>]`: servers, their addresses, pool sizes and weights, and the balancing
//! policy; a server belongs to one upstream.

use std::collections::HashMap;

use toml::Spanned;

use super::{Checker, MAX_IDS};
use crate::address::{check_address, PortZero};
use juggler_config::table::{BackendSpec, BalancePolicy, Named};

use crate::model::{Backend, HealthCheck, Upstream};
use crate::raw::{RawHealthCheck, RawPoolSize, RawServer, RawUpstream};
use crate::units::{parse_duration, DURATION_HELP};
use juggler_config::table::HealthCheck as Defaults;

/// `slow_start` above this is refused: a ramp of an hour is a typo for minutes.
const MAX_SLOW_START: std::time::Duration = std::time::Duration::from_secs(3600);
/// `eject_after_5xx` above this is refused: ejection would practically never happen.
const MAX_EJECT_AFTER: i64 = 10_000;

impl Checker<'_> {
    pub(super) fn upstreams(&mut self, raw: &[RawUpstream]) -> (Vec<Upstream>, Vec<Backend>) {
        if raw.is_empty() {
            self.file_error(
                "no upstreams are defined".to_string(),
                "add `[upstreams.default]` with `servers = [\"localhost:6901\"]`",
            );
        }
        let mut upstreams = Vec::new();
        let mut backends = Vec::new();
        // Lower-cased address → (upstream name, location), to find a server listed twice.
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for (index, upstream) in raw.iter().enumerate() {
            let name = upstream.name.get_ref();
            let body = &upstream.section.value;
            let (pool, adaptive_min) = match &body.connections_per_server {
                Some(raw) => match raw.get_ref() {
                    RawPoolSize::Fixed(size) => {
                        let size = Spanned::new(raw.span(), *size);
                        let pool = self.pool(&size, "connections_per_server");
                        (pool.unwrap_or(Pool::DEFAULT), None)
                    }
                    RawPoolSize::Adaptive { min, max } => {
                        match self.adaptive(raw.span(), min.as_ref(), max.as_ref()) {
                            Some((pool, min)) => (pool, Some(min)),
                            None => (Pool::DEFAULT, None),
                        }
                    }
                },
                None => (Pool::DEFAULT, None),
            };
            let (balance, balance_source) = match &body.balance {
                Some(raw) => match self.named(
                    raw,
                    "balance",
                    "a balancing policy",
                    "\"round_robin\" (in turn, the default) or \"least_queued\" (the backend \
                     with a free connection or the shortest queue)",
                ) {
                    Some(policy) => (policy, Some(self.location(&raw.span()))),
                    None => (BalancePolicy::DEFAULT, None),
                },
                None => (BalancePolicy::DEFAULT, None),
            };
            let servers = body.servers.as_ref();
            let missing = servers.is_none() && !upstream.section.reported("servers");
            if missing || servers.is_some_and(|servers| servers.get_ref().is_empty()) {
                let span = servers.map_or(upstream.name.span(), Spanned::span);
                self.error(
                    span,
                    format!("upstream `{name}` has no servers"),
                    "list its servers: `servers = [\"localhost:6901\", \"localhost:6902\"]`",
                );
            }
            let mut members = Vec::new();
            for server in servers
                .map(|servers| servers.get_ref().as_slice())
                .unwrap_or_default()
            {
                let Some((address, pool, weight)) = self.server(server, &pool) else {
                    continue;
                };
                let location = self.location(&server.span());
                match seen.get(&address.to_ascii_lowercase()) {
                    Some((other, first)) if other == name => self.error(
                        server.span(),
                        format!("server `{address}` is listed twice in upstream `{name}` (first at {first})"),
                        "list it once; give it `connections = n` for a bigger pool",
                    ),
                    Some((other, first)) => self.error(
                        server.span(),
                        format!("server `{address}` is in upstream `{other}` ({first}) and in `{name}`"),
                        "a server belongs to one upstream (Juggler holds one fixed pool per server): remove it from one",
                    ),
                    None => {
                        seen.insert(address.to_ascii_lowercase(), (name.clone(), location.clone()));
                    }
                }
                members.push(backends.len());
                backends.push(Backend {
                    address,
                    pool_size: pool.size,
                    pool_source: pool.source,
                    upstream: index,
                    weight,
                    source: location,
                });
            }
            let health_check = body
                .health_check
                .as_ref()
                .and_then(|raw| self.health_check(raw.get_ref()));
            let slow_start = body
                .slow_start
                .as_ref()
                .and_then(|raw| self.bounded_duration(raw, "slow_start", MAX_SLOW_START))
                .unwrap_or_default();
            let eject_after_5xx = body
                .eject_after_5xx
                .as_ref()
                .and_then(|raw| {
                    self.count(
                        raw,
                        "eject_after_5xx",
                        0,
                        MAX_EJECT_AFTER,
                        "0 turns ejection off; 5 ejects a backend after five 5xx answers in a row",
                    )
                })
                .unwrap_or(0);
            let reserved = body
                .reserved
                .as_ref()
                .and_then(|raw| self.reserved(raw, &backends, &members))
                .unwrap_or(0);
            let pipeline = body
                .pipeline
                .as_ref()
                .is_some_and(|raw| self.pipeline(raw, reserved, adaptive_min.is_some()));
            upstreams.push(Upstream {
                name: name.clone(),
                backends: members,
                balance,
                balance_source,
                source: self.location(&upstream.name.span()),
                health_check,
                slow_start,
                eject_after_5xx,
                adaptive_min,
                reserved,
                pipeline,
            });
        }
        if backends.len() > MAX_IDS || upstreams.len() > MAX_IDS {
            self.file_error(
                format!(
                    "{} servers in {} upstreams are too many",
                    backends.len(),
                    upstreams.len()
                ),
                format!("Juggler supports up to {MAX_IDS} of each"),
            );
        }
        (upstreams, backends)
    }

    /// Address, pool and weight of one `servers` entry; `None` if it is unusable.
    fn server(
        &mut self,
        server: &Spanned<RawServer>,
        upstream_pool: &Pool,
    ) -> Option<(String, Pool, u32)> {
        let (address, span, pool, weight) = match server.get_ref() {
            RawServer::Address(address) => (
                address.clone(),
                server.span(),
                upstream_pool.clone(),
                BackendSpec::DEFAULT_WEIGHT,
            ),
            RawServer::Table { address: None, .. } => {
                self.error(
                    server.span(),
                    "server has no `address`".to_string(),
                    "write `{ address = \"host:port\", connections = 8 }`",
                );
                return None;
            }
            RawServer::Table {
                address: Some(address),
                connections,
                weight,
            } => {
                // Both checked before giving up, so one build reports both mistakes.
                let pool = match connections {
                    Some(raw) => self.pool(raw, "connections"),
                    None => Some(upstream_pool.clone()),
                };
                let weight = match weight {
                    Some(raw) => self.weight(raw),
                    None => Some(BackendSpec::DEFAULT_WEIGHT),
                };
                (address.get_ref().clone(), address.span(), pool?, weight?)
            }
        };
        if let Err(error) = check_address(&address, PortZero::Refused) {
            self.error(
                span,
                format!("bad server address: {}", error.message),
                error.help,
            );
            return None;
        }
        Some((address, pool, weight))
    }

    /// `connections_per_server = { min, max }`: the pool of `max` connections and `min`.
    fn adaptive(
        &mut self,
        span: std::ops::Range<usize>,
        min: Option<&Spanned<i64>>,
        max: Option<&Spanned<i64>>,
    ) -> Option<(Pool, usize)> {
        let (Some(min), Some(max)) = (min, max) else {
            self.error(
                span,
                "an adaptive pool size needs both `min` and `max`".to_string(),
                "write `connections_per_server = { min = 2, max = 16 }`, or one number for a fixed size",
            );
            return None;
        };
        let low = self.pool(min, "min");
        let high = self.pool(max, "max");
        let (low, high) = (low?, high?);
        if low.size > high.size {
            self.error(
                span,
                format!(
                    "adaptive pool size with min {} above max {}",
                    low.size, high.size
                ),
                "the limit moves between min and max: write min <= max",
            );
            return None;
        }
        Some((high, low.size))
    }

    /// An upstream's `health_check`, the defaults filled in; `None` if any key is unusable.
    fn health_check(&mut self, raw: &RawHealthCheck) -> Option<HealthCheck> {
        let path = match &raw.path {
            Some(path) if !path.get_ref().starts_with('/') || path.get_ref().contains(' ') => {
                self.error(
                    path.span(),
                    format!(
                        "health check path `{}` is not a request path",
                        path.get_ref()
                    ),
                    "write an absolute path without spaces, e.g. \"/healthz\"",
                );
                None
            }
            Some(path) => Some(path.get_ref().clone()),
            None => Some(Defaults::DEFAULT_PATH.to_string()),
        };
        let interval = match &raw.interval {
            Some(raw) => self.nonzero_duration(raw, "interval", "the time between two checks"),
            None => Some(Defaults::DEFAULT_INTERVAL),
        };
        let timeout = match &raw.timeout {
            Some(raw) => {
                self.nonzero_duration(raw, "timeout", "how long a check waits for its answer")
            }
            None => Some(Defaults::DEFAULT_TIMEOUT),
        };
        let expect = match &raw.expect {
            Some(raw) => self.expect(raw),
            None => Some(Defaults::DEFAULT_EXPECT),
        };
        let max = i64::from(Defaults::MAX_COUNT);
        let mut count = |raw: &Option<Spanned<i64>>, key, default| match raw {
            Some(raw) => self.count(raw, key, 1, max, "checks in a row, e.g. 2"),
            None => Some(default),
        };
        let fails = count(&raw.fails, "fails", Defaults::DEFAULT_FAILS);
        let passes = count(&raw.passes, "passes", Defaults::DEFAULT_PASSES);
        Some(HealthCheck {
            path: path?,
            interval: interval?,
            timeout: timeout?,
            expect: expect?,
            fails: fails?,
            passes: passes?,
        })
    }

    /// A check's `interval` or `timeout`: above zero, at most a day.
    fn nonzero_duration(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        what: &str,
    ) -> Option<std::time::Duration> {
        const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
        let duration = self.bounded_duration(raw, key, DAY)?;
        if duration.is_zero() {
            self.error(
                raw.span(),
                format!("a health check `{key}` of 0 cannot work"),
                format!("write {what}, e.g. \"1s\""),
            );
            return None;
        }
        Some(duration)
    }

    /// `"2xx"` (a class) or `"204"` (one status) as an inclusive range.
    fn expect(&mut self, raw: &Spanned<String>) -> Option<(u16, u16)> {
        let text = raw.get_ref().trim();
        let class = text
            .strip_suffix("xx")
            .and_then(|digit| digit.parse::<u16>().ok())
            .filter(|digit| (1..=5).contains(digit))
            .map(|digit| (digit * 100, digit * 100 + 99));
        let one = text
            .parse::<u16>()
            .ok()
            .filter(|status| (100..=599).contains(status))
            .map(|status| (status, status));
        let range = class.or(one);
        if range.is_none() {
            self.error(
                raw.span(),
                format!("`expect = \"{text}\"` is not a status or a status class"),
                "write a class such as \"2xx\" or one status such as \"204\"",
            );
        }
        range
    }

    /// A duration no longer than `max`.
    fn bounded_duration(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        max: std::time::Duration,
    ) -> Option<std::time::Duration> {
        match parse_duration(raw.get_ref()).filter(|duration| *duration <= max) {
            Some(duration) => Some(duration),
            None => {
                self.error(
                    raw.span(),
                    format!("`{key} = \"{}\"` is not a usable duration", raw.get_ref()),
                    format!(
                        "{DURATION_HELP}, at most {}",
                        crate::units::format_duration(max)
                    ),
                );
                None
            }
        }
    }

    /// A whole number from `min` to `max`.
    /// `reserved`: fewer than every server's pool size, so normal traffic keeps at least one slot.
    fn reserved(
        &mut self,
        raw: &Spanned<i64>,
        backends: &[Backend],
        members: &[usize],
    ) -> Option<usize> {
        let reserved = self.count(
            raw,
            "reserved",
            0,
            BackendSpec::MAX_POOL_SIZE as i64 - 1,
            "0 reserves nothing; 1 keeps one slot of each server for `priority = \"high\"` routes",
        )? as usize;
        let smallest = members
            .iter()
            .map(|&member| &backends[member])
            .min_by_key(|backend| backend.pool_size)?;
        if reserved >= smallest.pool_size {
            self.error(
                raw.span(),
                format!(
                    "`reserved = {reserved}` leaves no slot for normal traffic on `{}`, whose pool has {}",
                    smallest.address, smallest.pool_size
                ),
                format!("reserve 0 to {} slots", smallest.pool_size - 1),
            );
            return None;
        }
        Some(reserved)
    }

    /// `pipeline`: not with `reserved`, whose slots a riding request could otherwise inherit from
    /// a high-priority one, nor with an adaptive pool size, which reads response times that a
    /// request waiting behind another's answer would distort.
    fn pipeline(&mut self, raw: &Spanned<bool>, reserved: usize, adaptive: bool) -> bool {
        let pipeline = *raw.get_ref();
        let conflict = if !pipeline {
            None
        } else if reserved > 0 {
            Some((
                "`reserved`",
                "a request sent behind another takes over its slot, reserved or not: drop one of the two",
            ))
        } else if adaptive {
            Some((
                "an adaptive `connections_per_server`",
                "the adaptive limit follows response times, which waiting behind another answer distorts: use a fixed pool size",
            ))
        } else {
            None
        };
        if let Some((other, help)) = conflict {
            self.error(
                raw.span(),
                format!("`pipeline = true` cannot be combined with {other}"),
                help,
            );
            return false;
        }
        pipeline
    }

    fn count(
        &mut self,
        raw: &Spanned<i64>,
        key: &str,
        min: i64,
        max: i64,
        meaning: &str,
    ) -> Option<u32> {
        let value = *raw.get_ref();
        if (min..=max).contains(&value) {
            return u32::try_from(value).ok();
        }
        self.error(
            raw.span(),
            format!("`{key} = {value}` is out of range"),
            format!("write {min} to {max} ({meaning})"),
        );
        None
    }

    fn weight(&mut self, raw: &Spanned<i64>) -> Option<u32> {
        let weight = *raw.get_ref();
        if let Some(weight) = u32::try_from(weight)
            .ok()
            .filter(|weight| (1..=BackendSpec::MAX_WEIGHT).contains(weight))
        {
            return Some(weight);
        }
        let why = if weight < 1 {
            "to take a server out of rotation, remove it from `servers`"
        } else {
            "weights are relative: 3 and 1 send three of every four requests to the first"
        };
        self.error(
            raw.span(),
            format!("`weight = {weight}` is not a usable weight"),
            format!("write 1 to {} ({why})", BackendSpec::MAX_WEIGHT),
        );
        None
    }

    fn pool(&mut self, raw: &Spanned<i64>, key: &str) -> Option<Pool> {
        let size = *raw.get_ref();
        if let Some(size) = usize::try_from(size)
            .ok()
            .filter(|size| (1..=BackendSpec::MAX_POOL_SIZE).contains(size))
        {
            return Some(Pool {
                size,
                source: Some(self.location(&raw.span())),
            });
        }
        let why = if size < 1 {
            "a backend needs at least one connection"
        } else {
            "more would likely exhaust file descriptors or the backend"
        };
        self.error(
            raw.span(),
            format!("`{key} = {size}` is not a usable pool size"),
            format!("write 1 to {} ({why})", BackendSpec::MAX_POOL_SIZE),
        );
        None
    }
}

/// A pool size and the `file:line` that set it (`None`: the default).
#[derive(Clone)]
struct Pool {
    size: usize,
    source: Option<String>,
}

impl Pool {
    const DEFAULT: Pool = Pool {
        size: BackendSpec::DEFAULT_POOL_SIZE,
        source: None,
    };
}
