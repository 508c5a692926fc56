//! The last minute of every backend, sampled once a second: queue length and request rate for the
//! status page's sparklines, and the latency histograms' state a minute ago, so the page's
//! p50/p99 describe the last minute rather than everything since start.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::report::BackendHistory;
use crate::metrics::{BackendSnapshot, Histogram};
use crate::proxy::Proxy;

/// Samples kept per backend: a minute, plus the one the first difference starts from.
const KEPT: usize = 61;

pub(super) struct History {
    /// Indexed by `BackendId`.
    backends: Vec<Mutex<VecDeque<Sample>>>,
}

struct Sample {
    at: Instant,
    queued: u64,
    requests: u64,
    queue_wait: Histogram,
    response_time: Histogram,
}

/// A backend's last minute.
pub(super) struct Window {
    pub(super) queue_wait: Histogram,
    pub(super) response_time: Histogram,
    pub(super) series: BackendHistory,
}

impl History {
    pub(super) fn new(backends: usize) -> History {
        History {
            backends: (0..backends)
                .map(|_| Mutex::new(VecDeque::with_capacity(KEPT)))
                .collect(),
        }
    }

    /// Samples every backend of `proxy` once a second, for as long as the admin listener runs.
    pub(super) async fn sample_every_second(&self, proxy: &Proxy) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sample(proxy);
        }
    }

    fn sample(&self, proxy: &Proxy) {
        let at = Instant::now();
        for (samples, pool) in self.backends.iter().zip(&proxy.pools) {
            let counted = pool.counters.snapshot();
            let sample = Sample {
                at,
                queued: pool.queued() as u64,
                requests: counted.requests(),
                queue_wait: counted.queue_wait,
                response_time: counted.response_time,
            };
            let mut samples = samples.lock().unwrap_or_else(PoisonError::into_inner);
            if samples.len() == KEPT {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    /// Backend `index`'s last minute, ending with `now` (its counters read just before).
    pub(super) fn last_minute(&self, index: u16, now: &BackendSnapshot) -> Window {
        let samples = self.backends[usize::from(index)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (queue_wait, response_time) = match samples.front() {
            Some(oldest) => (
                now.queue_wait.since(&oldest.queue_wait),
                now.response_time.since(&oldest.response_time),
            ),
            None => (now.queue_wait.clone(), now.response_time.clone()),
        };
        let queued = samples.iter().skip(1).map(|sample| sample.queued).collect();
        let requests_per_second = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(before, after)| {
                let seconds = after.at.duration_since(before.at).as_secs_f64().max(0.001);
                after.requests.saturating_sub(before.requests) as f64 / seconds
            })
            .collect();
        Window {
            queue_wait,
            response_time,
            series: BackendHistory {
                queued,
                requests_per_second,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_kept_and_rates_are_per_second() {
        let history = History::new(1);
        let start = Instant::now();
        for second in 0..70u64 {
            let mut samples = history.backends[0].lock().unwrap();
            if samples.len() == KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at: start + Duration::from_secs(second),
                queued: second,
                requests: second * 10,
                queue_wait: Histogram::default(),
                response_time: Histogram::default(),
            });
        }
        let window = history.last_minute(0, &BackendSnapshot::default());
        assert_eq!(window.series.queued.len(), 60);
        assert_eq!(window.series.queued.last(), Some(&69));
        assert_eq!(window.series.requests_per_second, vec![10.0; 60]);
    }
}
