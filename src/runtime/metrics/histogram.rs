//! Latency histograms with fixed buckets: counted per shard without locks, summed at scrape time,
//! and subtracted from an earlier sum for the quantiles of a recent window.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (10 µs to 10 s: a wait for a free connection
/// takes microseconds, which a coarser first bucket would report as tens of them); one more
/// bucket counts what is slower than the last.
pub const BUCKET_BOUNDS_MICROS: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = BUCKET_BOUNDS_MICROS.len() + 1;

/// One shard's cells.
#[derive(Debug, Default)]
pub(super) struct HistogramCells {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl HistogramCells {
    pub(super) fn observe(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub(super) fn add_to(&self, sum: &mut Histogram) {
        for (total, cell) in sum.buckets.iter_mut().zip(&self.buckets) {
            *total += cell.load(Relaxed);
        }
        sum.sum_micros += self.sum_micros.load(Relaxed);
    }
}

/// A histogram's counts at one moment: how many observations fell in each bucket (not
/// cumulative), and their sum.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum_micros: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was observed after `earlier` (a snapshot of the same histogram taken before).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut buckets = self.buckets;
        for (bucket, before) in buckets.iter_mut().zip(&earlier.buckets) {
            *bucket = bucket.saturating_sub(*before);
        }
        Histogram {
            buckets,
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// `(upper bound in microseconds, observations at or below it)` for every bucket but the
    /// last, which is the total [`Self::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        BUCKET_BOUNDS_MICROS
            .iter()
            .zip(&self.buckets)
            .scan(0, |below, (&bound, &count)| {
                *below += count;
                Some((bound, *below))
            })
    }

    /// The `q` quantile (0-1), interpolated linearly inside its bucket; `None` without
    /// observations. Past the last bound it is the last bound: slower than 10 s.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * count as f64).max(1.0);
        let mut below = 0u64;
        let mut lower = 0u64;
        for (index, &in_bucket) in self.buckets.iter().enumerate() {
            let Some(&upper) = BUCKET_BOUNDS_MICROS.get(index) else {
                break;
            };
            if in_bucket > 0 && (below + in_bucket) as f64 >= rank {
                let share = (rank - below as f64) / in_bucket as f64;
                let micros = lower as f64 + share * (upper - lower) as f64;
                return Some(Duration::from_micros(micros.round() as u64));
            }
            below += in_bucket;
            lower = upper;
        }
        Some(Duration::from_micros(lower))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(values_micros: &[u64]) -> Histogram {
        let cells = HistogramCells::default();
        for &micros in values_micros {
            cells.observe(Duration::from_micros(micros));
        }
        let mut sum = Histogram::default();
        cells.add_to(&mut sum);
        sum
    }

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let histogram = observed(&[0, 100, 101, 10_000_000, 20_000_000]);
        assert_eq!(histogram.buckets[0], 1, "0 µs is at or below 10 µs");
        assert_eq!(histogram.buckets[3], 1, "100 µs is at or below 100 µs");
        assert_eq!(histogram.buckets[4], 1);
        assert_eq!(histogram.buckets[18], 1, "10 s is the last bound");
        assert_eq!(histogram.buckets[19], 1, "beyond 10 s");
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.sum_micros, 30_000_201);
        let cumulative: Vec<(u64, u64)> = histogram.cumulative().collect();
        assert_eq!(cumulative[3], (100, 2));
        assert_eq!(cumulative[18], (10_000_000, 4));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_and_windows_subtract() {
        // 100 observations between 1 and 2.5 ms: the median is half way through that bucket.
        let earlier = observed(&[50; 10]);
        let mut values = vec![50; 10];
        values.extend([2_000; 100]);
        let now = observed(&values);
        let window = now.since(&earlier);
        assert_eq!(window.count(), 100);
        assert_eq!(window.quantile(0.5), Some(Duration::from_micros(1_750)));
        assert_eq!(window.quantile(1.0), Some(Duration::from_micros(2_500)));
        assert_eq!(Histogram::default().quantile(0.99), None);
        assert_eq!(
            observed(&[60_000_000]).quantile(0.5),
            Some(Duration::from_secs(10))
        );
    }
}
