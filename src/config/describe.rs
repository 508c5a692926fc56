//! The human-readable view of a compiled table, printed by `juggler --print-routes`.

use std::fmt::Write;

use crate::table::{Named, RouteTable, TlsMode};

/// Describes listeners (the admin one too), upstreams with their servers and pool sizes, routes in
/// priority order, the queue, the log format and its buffering.
pub fn describe(table: &RouteTable) -> String {
    let mut out = String::new();
    let settings = &table.settings;
    let _ = writeln!(
        out,
        "Juggler route table (config {}, built from {})",
        table.config_hash,
        table.sources.join(", ")
    );
    let listen = &settings.listen;
    let _ = writeln!(out, "listen:");
    let _ = writeln!(out, "  http   {}", listen.http.unwrap_or("off"));
    let tls = match listen.tls {
        TlsMode::Off => "off",
        TlsMode::Auto => "auto: on when the certificate and key exist",
        TlsMode::On => "on",
    };
    let _ = writeln!(
        out,
        "  https  {} (tls {tls}; cert {}, key {})",
        listen.https.unwrap_or("off"),
        listen.tls_cert,
        listen.tls_key
    );
    let admin = &settings.admin;
    match admin.listen {
        Some(address) => {
            let _ = writeln!(out, "  admin  {address} (token file {})", admin.token_file);
        }
        None => {
            let _ = writeln!(out, "  admin  off");
        }
    }
    if let Some(fleet) = &settings.fleet {
        let _ = writeln!(
            out,
            "fleet: pool sizes are fleet-wide totals, shared through etcd {} (lease {} s, fallback {} slot(s) per backend for {} s)",
            fleet.etcd.join(", "),
            fleet.lease.as_secs(),
            fleet.fallback_share,
            fleet.fallback_lease.as_secs()
        );
    }
    for upstream in table.upstreams {
        let total: usize = upstream
            .backends
            .iter()
            .map(|&id| table.backend(id).pool_size)
            .sum();
        let _ = writeln!(
            out,
            "upstream {}: {} servers, {} backend connections in all, balance {}{}",
            upstream.name,
            upstream.backends.len(),
            total,
            upstream.balance.name(),
            if upstream.pipeline { ", pipeline" } else { "" }
        );
        for &id in upstream.backends {
            let backend = table.backend(id);
            let _ = writeln!(
                out,
                "  {:<24} pool {}  weight {}",
                backend.address, backend.pool_size, backend.weight
            );
        }
    }
    let _ = writeln!(
        out,
        "routes (exact paths first, then wildcards in this order):"
    );
    for (index, route) in table.routes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {:?} {} -> {}{}  ({})",
            index + 1,
            route.methods,
            route.paths.join(" "),
            table.upstream(route.upstream).name,
            if route.retry_non_idempotent {
                " [retry_non_idempotent]"
            } else {
                ""
            },
            route.source
        );
    }
    let queue = &settings.queue;
    let _ = writeln!(
        out,
        "queue: {} per server, timeout {:?}",
        queue.max_queued_per_server, queue.timeout
    );
    let log = &settings.log;
    let _ = match log.buffering.buffer {
        0 => writeln!(out, "log: {}, unbuffered", log.format.name()),
        bytes => writeln!(
            out,
            "log: {}, buffered {bytes} bytes per thread, flushed every {:?}",
            log.format.name(),
            log.buffering.flush
        ),
    };
    out
}
