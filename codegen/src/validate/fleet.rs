//! `[fleet]`: the etcd endpoints through which several instances share each backend's `n`, and
//! the lease timings that decide how fast a dead instance's slots go to the others.
//!
//! etcd counts lease TTLs in whole seconds, so both leases must be whole seconds; the fallback
//! lease must outlast the lease by at least one lease, or a partitioned instance would have no
//! time on its fallback share before it has to stop (see `src/runtime/fleet/`).

use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::address::{check_address, PortZero};
use crate::model::Fleet;
use crate::raw::RawFleet;
use crate::units::parse_duration;

/// etcd refuses shorter TTLs than its election timeout allows; 2 s is safe with its defaults.
const MIN_LEASE: Duration = Duration::from_secs(2);
const MAX_LEASE: Duration = Duration::from_secs(3600);
const MAX_FALLBACK_SHARE: i64 = 10_000;

impl Checker<'_> {
    /// The checked `[fleet]`; `None` if it has a mistake (reported).
    pub(super) fn fleet(&mut self, raw: &Spanned<RawFleet>) -> Option<Fleet> {
        let mut ok = true;
        let fleet = raw.get_ref();
        let mut etcd = Vec::new();
        match &fleet.etcd {
            None => {
                self.error(
                    raw.span(),
                    "[fleet] has no `etcd` endpoints".to_string(),
                    "add `etcd = [\"http://127.0.0.1:2379\"]`, or remove [fleet] to run without a fleet",
                );
                ok = false;
            }
            Some(list) if list.get_ref().is_empty() => {
                self.error(
                    list.span(),
                    "`etcd` in [fleet] is empty".to_string(),
                    "name at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
                );
                ok = false;
            }
            Some(list) => {
                for endpoint in list.get_ref() {
                    ok &= self.etcd_endpoint(endpoint);
                    etcd.push(endpoint.get_ref().clone());
                }
            }
        }
        let lease = self.lease(
            &fleet.lease,
            "lease",
            crate::model::DEFAULT_LEASE,
            MIN_LEASE,
        );
        let fallback_minimum = lease.map_or(MIN_LEASE, |lease| lease * 2);
        let fallback_lease = self.lease(
            &fleet.fallback_lease,
            "fallback_lease",
            crate::model::DEFAULT_FALLBACK_LEASE.max(fallback_minimum),
            fallback_minimum,
        );
        let fallback_share = match &fleet.fallback_share {
            None => Some(crate::model::DEFAULT_FALLBACK_SHARE),
            Some(share) if (0..=MAX_FALLBACK_SHARE).contains(share.get_ref()) => {
                usize::try_from(*share.get_ref()).ok()
            }
            Some(share) => {
                self.error(
                    share.span(),
                    format!("`fallback_share = {}` is out of range", share.get_ref()),
                    format!("write a count of slots per backend from 0 to {MAX_FALLBACK_SHARE} (default 1)"),
                );
                None
            }
        };
        let prefix = fleet.prefix.as_ref().and_then(|prefix| self.prefix(prefix));
        if fleet.prefix.is_some() && prefix.is_none() {
            ok = false;
        }
        Some(Fleet {
            etcd,
            lease: lease?,
            fallback_lease: fallback_lease?,
            fallback_share: fallback_share?,
            prefix,
        })
        .filter(|_| ok)
    }

    /// `http://host:port`: the client speaks plain gRPC (no TLS built in).
    fn etcd_endpoint(&mut self, endpoint: &Spanned<String>) -> bool {
        let text = endpoint.get_ref();
        let Some(address) = text.strip_prefix("http://") else {
            self.error(
                endpoint.span(),
                format!("etcd endpoint `{text}` does not start with http://"),
                "write \"http://host:port\", e.g. \"http://10.0.0.5:2379\" (TLS to etcd is not supported)",
            );
            return false;
        };
        if let Err(error) = check_address(address, PortZero::Refused) {
            self.error(
                endpoint.span(),
                format!("bad etcd endpoint `{text}`: {}", error.message),
                format!("{}, after http://", error.help),
            );
            return false;
        }
        true
    }

    /// A lease duration of whole seconds, at least `minimum`; the default when absent.
    fn lease(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        minimum: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let help = format!(
            "write whole seconds from \"{}s\" to \"{}s\", e.g. \"{}s\"",
            minimum.as_secs(),
            MAX_LEASE.as_secs(),
            default.as_secs()
        );
        match parse_duration(raw.get_ref()) {
            Some(value) if value.subsec_nanos() == 0 && (minimum..=MAX_LEASE).contains(&value) => {
                Some(value)
            }
            Some(_) => {
                let why = if key == "fallback_lease" {
                    " (etcd counts whole seconds, and it must be at least twice `lease`)"
                } else {
                    " (etcd counts whole seconds)"
                };
                self.error(
                    raw.span(),
                    format!("`{key} = \"{}\"` is out of range{why}", raw.get_ref()),
                    help,
                );
                None
            }
            None => {
                self.error(
                    raw.span(),
                    format!("`{key} = \"{}\"` is not a duration", raw.get_ref()),
                    help,
                );
                None
            }
        }
    }

    /// An etcd key prefix: starts with `/`, no trailing `/`, no spaces.
    fn prefix(&mut self, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        let fine = text.len() > 1
            && text.starts_with('/')
            && !text.ends_with('/')
            && !text.chars().any(|c| c.is_whitespace() || c.is_control());
        if fine {
            return Some(text.clone());
        }
        self.error(
            raw.span(),
            format!("`prefix = \"{text}\"` is not an etcd key prefix"),
            "write a path starting with / and not ending with one, e.g. \"/juggler/shop\"; leave it out to derive it from the config hash",
        );
        None
    }
}
