//! `connections_per_server = { min, max }`: how many of a backend's `max` slots it may use, moved
//! by measured response times (a Vegas-style limit).
//!
//! Every [`WINDOW`] the limit looks at the response times of the answers in that window: their
//! average against the least ever seen (the backend's time without queueing, allowed to drift up
//! slowly so a backend that became slower for good is followed). Near that least time (within
//! [`GROW_BELOW`]×) and with every usable slot busy, the backend has room: the limit grows by an
//! eighth (at least 1). Well above it ([`SHRINK_ABOVE`]×), requests are queueing inside the backend:
//! the limit shrinks by a quarter of the excess share (at least 1), and does not grow again for 1 s
//! (each probe above the capacity slows every request of its window). In between, or without enough
//! answers to judge, it stays. The limit starts at `min`, so a backend that was just deployed
//! is never hit with `max` at once. Only successful answers count: failures are ejection's business.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How often the limit moves.
pub const WINDOW: Duration = Duration::from_millis(250);
/// Answers a window needs before the limit moves on its evidence.
const MIN_SAMPLES: u64 = 5;
/// Average within this factor of the least time: room to grow.
const GROW_BELOW: f64 = 2.0;
/// Average beyond this factor: the backend queues internally, shrink.
const SHRINK_ABOVE: f64 = 3.0;
/// Windows without growth after a shrink: each probe above the backend's capacity costs every
/// request of that window the backend's queueing, so it probes once a second, not constantly.
const PAUSE_AFTER_SHRINK: u32 = 4;
/// How fast the least time may drift up per window (0.5 %: +13 % in 6 s), so a lasting change in
/// the backend's speed is followed.
const DRIFT: f64 = 1.005;

/// One backend's adaptive limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    min: usize,
    max: usize,
    /// The limit in force, read by the pool's protection task.
    current: AtomicUsize,
    /// This window's answers: sum and count of response times (µs), the least, and the most
    /// slots busy at once when one came back.
    sum_micros: AtomicU64,
    count: AtomicU64,
    least_micros: AtomicU64,
    peak_busy: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The limit with its fraction, so small steps add up.
    limit: f64,
    /// The backend's response time without queueing, µs; 0 until known.
    no_load_micros: f64,
    /// Windows left before the limit may grow again (after a shrink).
    pause: u32,
}

impl AdaptiveLimit {
    pub fn new(min: usize, max: usize) -> AdaptiveLimit {
        let min = min.clamp(1, max.max(1));
        AdaptiveLimit {
            min,
            max,
            current: AtomicUsize::new(min),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
            least_micros: AtomicU64::new(u64::MAX),
            peak_busy: AtomicUsize::new(0),
            state: Mutex::new(State {
                limit: min as f64,
                no_load_micros: 0.0,
                pause: 0,
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// A successful answer that took `took`, with `busy` slots held when it came back.
    pub fn record(&self, took: Duration, busy: usize) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.least_micros.fetch_min(micros, Ordering::Relaxed);
        self.peak_busy.fetch_max(busy, Ordering::Relaxed);
    }

    /// Ends a window: moves the limit on its answers and returns it.
    pub fn update(&self) -> usize {
        let count = self.count.swap(0, Ordering::Relaxed);
        let sum = self.sum_micros.swap(0, Ordering::Relaxed);
        let least = self.least_micros.swap(u64::MAX, Ordering::Relaxed);
        let peak = self.peak_busy.swap(0, Ordering::Relaxed);
        if count < MIN_SAMPLES {
            return self.limit();
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let average = sum as f64 / count as f64;
        state.no_load_micros = if state.no_load_micros == 0.0 {
            least as f64
        } else {
            (state.no_load_micros * DRIFT).min(least as f64)
        };
        let ratio = average / state.no_load_micros.max(1.0);
        let limit = state.limit;
        // The answer that came back had given its slot back already: `peak + 1` were busy.
        let saturated = peak + 1 >= limit.floor() as usize;
        if ratio > SHRINK_ABOVE {
            let excess = limit * (1.0 - GROW_BELOW / ratio) / 4.0;
            state.limit = limit - excess.max(1.0);
            state.pause = PAUSE_AFTER_SHRINK;
        } else if state.pause > 0 {
            state.pause -= 1;
        } else if ratio <= GROW_BELOW && saturated {
            state.limit = limit + (limit / 8.0).max(1.0);
        }
        state.limit = state.limit.clamp(self.min as f64, self.max as f64);
        let current = state.limit.floor() as usize;
        self.current.store(current, Ordering::Relaxed);
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers in 5 ms up to `capacity` at once and 20 ms slower per request beyond.
    fn window(limit: &AdaptiveLimit, capacity: usize) -> usize {
        let at_once = limit.limit();
        let took = Duration::from_millis(5 + 20 * at_once.saturating_sub(capacity) as u64);
        for _ in 0..20 {
            limit.record(took, at_once - 1);
        }
        limit.update()
    }

    #[test]
    fn grows_from_min_to_the_capacity_and_hovers_there() {
        let limit = AdaptiveLimit::new(1, 32);
        let path: Vec<usize> = (0..40).map(|_| window(&limit, 6)).collect();
        println!("capacity 6, min 1, max 32: {path:?}");
        assert!(
            path[..8].contains(&6),
            "reached 6 within 8 windows: {path:?}"
        );
        assert!(
            path[10..].iter().all(|&at| (4..=8).contains(&at)),
            "{path:?}"
        );
    }

    #[test]
    fn shrinks_from_too_high_and_stays_within_bounds() {
        let limit = AdaptiveLimit::new(3, 32);
        limit.state.lock().unwrap().limit = 32.0;
        limit.current.store(32, Ordering::Relaxed);
        // The least time is learnt first, at low load.
        limit.record(Duration::from_millis(5), 31);
        let path: Vec<usize> = (0..30).map(|_| window(&limit, 6)).collect();
        println!("capacity 6, from 32: {path:?}");
        assert!(path.iter().all(|&at| (3..=32).contains(&at)));
        assert!(
            path[15..].iter().all(|&at| (4..=8).contains(&at)),
            "{path:?}"
        );
    }

    #[test]
    fn an_idle_backend_keeps_its_limit() {
        let limit = AdaptiveLimit::new(2, 16);
        for _ in 0..10 {
            // Fast answers but never saturated: nothing says it can take more.
            for _ in 0..20 {
                limit.record(Duration::from_millis(1), 0);
            }
            limit.update();
        }
        assert_eq!(limit.limit(), 2);
    }
}
