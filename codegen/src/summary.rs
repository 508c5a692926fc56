//! The overview `juggler-routes` (and `make routes`) prints: what the generated table contains.

use std::fmt::Write;

use crate::model::{Config, Named, Setting, TlsMode};
use crate::pattern::PathKind;

/// Upstreams with their servers and pool sizes, total backend connections, routes in priority
/// order, listeners (the admin one too), the log format and the config hash.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    // `write!` to a `String` cannot fail.
    let _ = writeln!(
        out,
        "Config {} from {}",
        config.config_hash,
        config.sources.join(" and ")
    );
    let _ = writeln!(out, "\nUpstreams:");
    for upstream in &config.upstreams {
        let connections: usize = upstream
            .backends
            .iter()
            .map(|id| config.backends[*id].pool_size)
            .sum();
        let balance = match &upstream.balance_source {
            Some(source) => format!("{} at {source}", upstream.balance.name()),
            None => format!("{} (default)", upstream.balance.name()),
        };
        let _ = writeln!(
            out,
            "  {}  ({}, {connections} connections, balance {balance}; {})",
            upstream.name,
            count(upstream.backends.len(), "server"),
            upstream.source
        );
        for id in &upstream.backends {
            let backend = &config.backends[*id];
            let _ = writeln!(
                out,
                "    {:<28} pool {:>4}  weight {:>4}  ({})",
                backend.address, backend.pool_size, backend.weight, backend.source
            );
        }
    }
    let total: usize = config
        .backends
        .iter()
        .map(|backend| backend.pool_size)
        .sum();
    let _ = writeln!(
        out,
        "  total: {}, {total} backend connections",
        count(config.backends.len(), "server")
    );
    let _ = writeln!(
        out,
        "\nRoutes (exact paths first, then wildcards in this order; first match wins):"
    );
    for (index, route) in config.routes.iter().enumerate() {
        let paths = route
            .paths
            .iter()
            .map(|path| match path.kind {
                PathKind::Exact => format!("{} (exact)", path.text),
                PathKind::Wildcard(_) => path.text.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let retry = if route.retry_non_idempotent {
            ", retries POST/PATCH"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {index}. [{:?}] {paths} -> {}{retry}  ({})",
            route.methods, config.upstreams[route.upstream].name, route.source
        );
    }
    let listen = &config.settings.listen;
    let https = match (&listen.https, listen.tls) {
        (None, _) | (_, TlsMode::Off) => "off".to_string(),
        (Some(address), TlsMode::On) => format!(
            "{address} (cert {}, key {})",
            listen.tls_cert, listen.tls_key
        ),
        (Some(address), TlsMode::Auto) => format!(
            "{address} when {} and {} exist at start-up",
            listen.tls_cert, listen.tls_key
        ),
    };
    let _ = writeln!(
        out,
        "\nListen: http {}; https {https}",
        listen.http.as_deref().unwrap_or("off")
    );
    let admin = &config.settings.admin;
    match &admin.listen {
        Some(address) => {
            let _ = writeln!(
                out,
                "Admin: {address} (metrics, status, drain; token in {})",
                admin.token_file
            );
        }
        None => {
            let _ = writeln!(out, "Admin: off (no metrics, status page or drain API)");
        }
    }
    let log = &config.settings.log;
    let origin = match &log.format_source {
        Some(source) => format!("at {source}"),
        None => "(default)".to_string(),
    };
    let buffering = ["buffer", "flush"].map(|key| {
        config
            .settings
            .scalar("log", key)
            .map_or_else(String::new, Setting::shown)
    });
    let _ = writeln!(
        out,
        "Log: {} {origin}, buffer {}, flush {}",
        log.format.name(),
        buffering[0],
        buffering[1]
    );
    if let Some(fleet) = &config.settings.fleet {
        let _ = writeln!(
            out,
            "Fleet: pool sizes are fleet-wide, shared through etcd {} (lease {} s, fallback {} per server for {} s, prefix {})",
            fleet.etcd.join(", "),
            fleet.lease.as_secs(),
            fleet.fallback_share,
            fleet.fallback_lease.as_secs(),
            fleet.prefix.as_deref().unwrap_or("from the config hash")
        );
    }
    out
}

/// `1 server`, `3 servers`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
