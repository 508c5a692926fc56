//! `/metrics`: Juggler's counters and gauges in the OpenMetrics text format (which Prometheus
//! scrapes), written by `prometheus-client` from a collector that reads the sharded counters and
//! the pools' state at scrape time.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process;
use super::report::state_name;
use crate::backend::pool::BackendPool;
use crate::metrics::{
    BackendSnapshot, Histogram, ListenerKind, ListenerSnapshot, BUCKET_BOUNDS_MICROS, PROTOCOLS,
    PROXY_REFUSALS, STATUS_CLASSES,
};
use crate::proxy::Proxy;

/// The content type of [`render`]'s text.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything there is to scrape, as text.
pub(super) fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; an encoder error would be a bug in a label value.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

pub(super) fn registry(proxy: Arc<Proxy>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector { proxy }));
    registry
}

#[derive(Debug)]
struct ProxyCollector {
    proxy: Arc<Proxy>,
}

/// One sample value and the labels it is written with.
type Labelled<'a, T> = (Vec<(&'static str, &'a str)>, T);

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.encode_process(&mut encoder)?;
        self.encode_listeners(&mut encoder)?;
        self.encode_backends(&mut encoder)?;
        encode_fleet(&mut encoder)
    }
}

/// `juggler_fleet_*`: this instance's place in the fleet, when it is part of one.
fn encode_fleet(encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let Some(fleet) = super::fleet::fleet() else {
        return Ok(());
    };
    let registered = if fleet.state == "registered" {
        1.0
    } else {
        0.0
    };
    gauge(
        encoder,
        "juggler_fleet_registered",
        "1 while this instance holds recorded shares with etcd reachable; 0 unregistered, on its \
         fallback share or stopped (see /status.json's fleet.state)",
        &[(vec![("instance", fleet.instance.as_str())], registered)],
    )?;
    gauge(
        encoder,
        "juggler_fleet_instances",
        "Live instances of the fleet at the last read of etcd",
        &[(vec![], fleet.instances_seen as f64)],
    )?;
    if let Some(contact) = fleet.last_etcd_contact_unix {
        gauge(
            encoder,
            "juggler_fleet_last_etcd_contact_seconds",
            "When etcd last answered, Unix time",
            &[(vec![], contact)],
        )?;
    }
    let per_backend = |value: fn(&super::FleetBackendReport) -> usize| -> Vec<Labelled<'_, f64>> {
        fleet
            .backends
            .iter()
            .map(|backend| {
                (
                    vec![("backend", backend.address.as_str())],
                    value(backend) as f64,
                )
            })
            .collect()
    };
    gauge(
        encoder,
        "juggler_fleet_share",
        "This instance's share of the backend's fleet-wide n, as recorded in etcd",
        &per_backend(|backend| backend.share),
    )?;
    gauge(
        encoder,
        "juggler_fleet_limit",
        "Connections this instance may hold to the backend now (below the share while giving \
         slots up or cut off from etcd)",
        &per_backend(|backend| backend.limit),
    )?;
    gauge(
        encoder,
        "juggler_fleet_total",
        "Slots of the backend recorded across the fleet at the last read (never above n)",
        &per_backend(|backend| backend.fleet_total),
    )
}

impl ProxyCollector {
    fn encode_process(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let table = self.proxy.table;
        let info = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("config_hash", table.config_hash),
        ];
        encoder
            .encode_descriptor(
                "juggler_build",
                "Juggler's version and the hash of its compiled-in config",
                None,
                MetricType::Info,
            )?
            .encode_info(&info)?;
        let started = self
            .proxy
            .metrics
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        gauge(
            encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch",
            &[(vec![], started)],
        )?;
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory size",
            &[(vec![], process::resident_bytes() as f64)],
        )?;
        gauge(
            encoder,
            "process_open_fds",
            "Open file descriptors",
            &[(vec![], process::open_fds() as f64)],
        )?;
        let Some(allocator) = process::allocator() else {
            return Ok(());
        };
        gauge(
            encoder,
            "juggler_allocator_allocated_bytes",
            "Bytes allocated and not freed, by the allocator's count (live data, without \
             fragmentation or cached pages)",
            &[(vec![], allocator.allocated as f64)],
        )?;
        gauge(
            encoder,
            "juggler_allocator_resident_bytes",
            "Resident bytes in pages the allocator has mapped, its metadata included",
            &[(vec![], allocator.resident as f64)],
        )
    }

    fn encode_listeners(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let listeners: Vec<(&'static str, ListenerSnapshot)> = ListenerKind::ALL
            .iter()
            .map(|&kind| (kind.name(), self.proxy.metrics.listener_snapshot(kind)))
            .collect();
        let each = |value: fn(&ListenerSnapshot) -> u64| -> Vec<Labelled<'_, u64>> {
            listeners
                .iter()
                .map(|(name, counted)| (vec![("listener", *name)], value(counted)))
                .collect()
        };
        gauge(
            encoder,
            "juggler_client_connections_open",
            "Client connections open now",
            &each(|counted| counted.connections_open)
                .iter()
                .map(|(labels, value)| (labels.clone(), *value as f64))
                .collect::<Vec<_>>(),
        )?;
        counter(
            encoder,
            "juggler_client_connections",
            "Client connections accepted",
            &each(|counted| counted.connections_total),
        )?;
        // One sample per listener and name, labelled `key="name"`.
        let by = |key: &'static str,
                  names: &'static [&'static str],
                  value: fn(&ListenerSnapshot) -> &[u64]| {
            listeners
                .iter()
                .flat_map(|(name, counted)| {
                    names.iter().zip(value(counted)).map(move |(label, count)| {
                        (vec![("listener", *name), (key, *label)], *count)
                    })
                })
                .collect::<Vec<_>>()
        };
        let requests = by("protocol", &PROTOCOLS, |counted| &counted.requests);
        counter(
            encoder,
            "juggler_client_requests",
            "Requests answered, by listener and protocol",
            &requests,
        )?;
        let responses = by("class", &STATUS_CLASSES, |counted| &counted.responses);
        counter(
            encoder,
            "juggler_client_responses",
            "Answers to clients by status class, Juggler's own included",
            &responses,
        )?;
        counter(
            encoder,
            "juggler_tls_handshakes",
            "TLS handshakes attempted",
            &each(|counted| counted.tls_handshakes),
        )?;
        counter(
            encoder,
            "juggler_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            &each(|counted| counted.tls_handshake_failures),
        )?;
        let refused = by("reason", &PROXY_REFUSALS, |counted| &counted.proxy_refused);
        counter(
            encoder,
            "juggler_proxy_protocol_refused",
            "Client connections closed over their PROXY-protocol header, by listener and reason",
            &refused,
        )
    }

    fn encode_backends(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let table = self.proxy.table;
        let backends: Vec<(&BackendPool, &'static str, BackendSnapshot)> = self
            .proxy
            .pools
            .iter()
            .map(|pool| {
                let upstream = table.upstream(pool.spec.upstream).name;
                (pool.as_ref(), upstream, pool.counters.snapshot())
            })
            .collect();
        let labels = |pool: &BackendPool, upstream: &'static str| {
            vec![("upstream", upstream), ("backend", pool.spec.address)]
        };
        let gauges = |value: fn(&BackendPool) -> usize| -> Vec<Labelled<'_, f64>> {
            backends
                .iter()
                .map(|(pool, upstream, _)| (labels(pool, upstream), value(pool) as f64))
                .collect()
        };
        gauge(
            encoder,
            "juggler_backend_pool_size",
            "Connections Juggler keeps to the backend: never more",
            &gauges(|pool| pool.spec.pool_size),
        )?;
        gauge(
            encoder,
            "juggler_backend_reserved",
            "Slots kept for high-priority routes (reserved)",
            &gauges(BackendPool::reserved),
        )?;
        gauge(
            encoder,
            "juggler_backend_connections_open",
            "Pooled connections open now",
            &gauges(BackendPool::open_connections),
        )?;
        gauge(
            encoder,
            "juggler_backend_connections_busy",
            "Pool slots carrying a request now",
            &gauges(|pool| pool.busy_slots()),
        )?;
        gauge(
            encoder,
            "juggler_backend_connections_idle",
            "Pooled connections open and idle now",
            &gauges(BackendPool::idle_connections),
        )?;
        gauge(
            encoder,
            "juggler_backend_queued",
            "Requests waiting for one of the backend's connections now",
            &gauges(BackendPool::queued),
        )?;
        gauge(
            encoder,
            "juggler_backend_limit",
            "Pool slots the backend may use now: the pool size, or less during slow start",
            &gauges(BackendPool::limit),
        )?;
        let checks: Vec<Labelled<'_, u64>> = backends
            .iter()
            .filter(|(pool, _, _)| pool.protection.config.health_check.is_some())
            .flat_map(|(pool, upstream, _)| {
                let protection = &pool.protection;
                [
                    ("passed", protection.checks_passed()),
                    ("failed", protection.checks_failed()),
                ]
                .into_iter()
                .map(move |(result, count)| {
                    let mut labelled = labels(pool, upstream);
                    labelled.push(("result", result));
                    (labelled, count)
                })
            })
            .collect();
        counter(
            encoder,
            "juggler_backend_health_checks",
            "Active health checks by result (a backend found hung counts as failed)",
            &checks,
        )?;
        let ejections: Vec<Labelled<'_, u64>> = backends
            .iter()
            .map(|(pool, upstream, _)| (labels(pool, upstream), pool.protection.ejections()))
            .collect();
        counter(encoder, "juggler_backend_ejections", "Times the backend was taken out of rotation after eject_after_5xx server errors in a row", &ejections)?;
        let states: Vec<Labelled<'_, f64>> = backends
            .iter()
            .flat_map(|(pool, upstream, _)| {
                let now = state_name(pool);
                ["up", "down", "draining"].into_iter().map(move |state| {
                    let mut labelled = labels(pool, upstream);
                    labelled.push(("state", state));
                    (labelled, f64::from(u8::from(state == now)))
                })
            })
            .collect();
        gauge(encoder, "juggler_backend_state", "1 for the backend's state: up, down (connects failing, health checks failing or ejected after server errors) or draining (taken out by an operator)", &states)?;
        let counts = |value: fn(&BackendSnapshot) -> u64| -> Vec<Labelled<'_, u64>> {
            backends
                .iter()
                .map(|(pool, upstream, counted)| (labels(pool, upstream), value(counted)))
                .collect()
        };
        let responses: Vec<Labelled<'_, u64>> = backends
            .iter()
            .flat_map(|(pool, upstream, counted)| {
                STATUS_CLASSES
                    .iter()
                    .zip(counted.responses)
                    .map(move |(&class, count)| {
                        let mut labelled = labels(pool, upstream);
                        labelled.push(("class", class));
                        (labelled, count)
                    })
            })
            .collect();
        counter(encoder, "juggler_backend_responses", "Answers to requests the backend took, by status class (Juggler's 502/504 for its failures included)", &responses)?;
        counter(
            encoder,
            "juggler_backend_queue_full",
            "Requests that found the backend's queue full when choosing where to send them",
            &counts(|counted| counted.queue_full),
        )?;
        counter(
            encoder,
            "juggler_backend_queue_timeouts",
            "Requests that waited for a connection until the queue timeout",
            &counts(|counted| counted.queue_timeouts),
        )?;
        counter(encoder, "juggler_backend_resends", "Requests re-sent elsewhere after a pooled connection failed before answering (keep-alive race)", &counts(|counted| counted.resends))?;
        counter(
            encoder,
            "juggler_backend_pipelined",
            "Requests written behind another on a busy connection that carried their answer (pipeline = true)",
            &counts(|counted| counted.pipelined),
        )?;
        counter(
            encoder,
            "juggler_backend_pipeline_lost",
            "Requests written behind another whose connection ended before their answer; sent again",
            &counts(|counted| counted.pipeline_lost),
        )?;
        counter(
            encoder,
            "juggler_backend_connect_failures",
            "Failed attempts to open a pooled connection",
            &counts(|counted| counted.connect_failures),
        )?;
        counter(
            encoder,
            "juggler_backend_sent_bytes",
            "Request bytes written to the backend",
            &counts(|counted| counted.bytes_sent),
        )?;
        counter(
            encoder,
            "juggler_backend_received_bytes",
            "Response body bytes relayed from the backend to clients",
            &counts(|counted| counted.bytes_received),
        )?;
        let histograms =
            |value: fn(&BackendSnapshot) -> &Histogram| -> Vec<Labelled<'_, &Histogram>> {
                backends
                    .iter()
                    .map(|(pool, upstream, counted)| (labels(pool, upstream), value(counted)))
                    .collect()
            };
        histogram(
            encoder,
            "juggler_backend_queue_wait_seconds",
            "Time requests waited for one of the backend's pooled connections",
            &histograms(|counted| &counted.queue_wait),
        )?;
        histogram(
            encoder,
            "juggler_backend_response_seconds",
            "Time from sending a request to the backend until its answer was in hand",
            &histograms(|counted| &counted.response_time),
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[Labelled<'_, f64>],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Gauge,
        samples,
        |metric, value| metric.encode_gauge(value),
    )
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[Labelled<'_, u64>],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Counter,
        samples,
        |metric, value| metric.encode_counter::<Vec<(&str, &str)>, u64, f64>(value, None),
    )
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[Labelled<'_, &Histogram>],
) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        name,
        help,
        MetricType::Histogram,
        samples,
        |metric, histogram| {
            // Per-bucket counts: the encoder writes them cumulative.
            let bounds = BUCKET_BOUNDS_MICROS.iter().map(|&bound| bound as f64 / 1e6);
            let buckets: Vec<(f64, u64)> = bounds
                .chain([f64::INFINITY])
                .zip(histogram.buckets)
                .collect();
            metric.encode_histogram::<Vec<(&str, &str)>>(
                histogram.sum_micros as f64 / 1e6,
                histogram.count(),
                &buckets,
                None,
            )
        },
    )
}

/// One metric family: its descriptor, then each sample with its labels.
fn family<T>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[Labelled<'_, T>],
    encode: impl Fn(&mut MetricEncoder<'_>, &T) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        // Without labels, no `{}`: not every scraper accepts an empty set.
        match labels.is_empty() {
            true => encode(&mut metric, value)?,
            false => encode(&mut metric.encode_family(labels)?, value)?,
        }
    }
    Ok(())
}
