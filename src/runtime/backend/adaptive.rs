//! `connections_per_server = { min, max }`: how many of a backend's `max` slots it may use, moved
//! by measured response times (a Vegas-style limit).
//!
//! Every [`WINDOW`] the limit looks at the response times of the answers in that window: their
//! median against the least window median seen (the backend's time without queueing, allowed to
//! drift up slowly so a backend that became slower for good is followed). Medians, not averages
//! and minimums: a loaded machine adds a tail of scheduling delays to some answers, which must not
//! read as the backend queueing, while queueing inside the backend slows most of them. Near that least time (within
//! [`GROW_BELOW`]×) and with every usable slot busy, the backend has room: the limit grows by an
//! eighth (at least 1). Well above it ([`SHRINK_ABOVE`]×), requests are queueing inside the backend:
//! the limit shrinks by a quarter of the excess share (at least 1), and does not grow again for 1 s
//! (each probe above the capacity slows every request of its window). A backend one or two above
//! its capacity slows only the requests that find it full, a minority the median cannot see. So each
//! growth is a probe: if the share of answers beyond [`GROW_BELOW`]× the least time rises by more
//! than [`SLOWED_SHARE`] in the window after it, the growth is taken back and growth pauses, twice
//! as long after each probe taken back in a row (up to [`MAX_PROBE_PAUSE`]; a growth that makes the
//! median cross [`SHRINK_ABOVE`] counts as a probe taken back too, back to where it was): at its capacity the
//! backend is probed rarely, so the requests a probe slows stay out of the tail. The rise, not the
//! share: a loaded machine slows a steady share of answers whatever the limit. A backend with a
//! cliff at its capacity slows every answer at once, and a whole window of that queues every
//! request behind it: so while a growth is on probation each answer is also counted as it comes
//! back, and once most of at least [`PROBE_ANSWERS_PER_SLOT`] answers per slot came back slowed the
//! probe ends there ([`AdaptiveLimit::record`] says so, the protection task takes it back at once).
//! In between, or without enough answers to judge, it stays. The limit starts at `min`, so a
//! backend that was just deployed is never hit with `max` at once. Only successful answers count:
//! failures are ejection's business.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
/// Rise in the share of a window's answers beyond `GROW_BELOW`× the least time, after a growth,
/// that takes the growth back: a backend one above its capacity slows about 1 answer in
/// `capacity + 1`.
const SLOWED_SHARE: f64 = 0.08;
/// Windows without growth after a shrink: each probe above the backend's capacity costs every
/// request of that window the backend's queueing, so it probes once a second, not constantly.
const PAUSE_AFTER_SHRINK: u32 = 4;
/// The longest pause after probes taken back in a row (windows: 30 s).
const MAX_PROBE_PAUSE: u32 = 120;
/// Answers per usable slot a probe must see before its early verdict: a scheduling hiccup slows
/// the answers in flight at one moment (one per slot), a cliff slows every answer after it.
const PROBE_ANSWERS_PER_SLOT: u32 = 3;
/// Share of a probe's answers that must be exceeded by those that come back slowed for the early
/// verdict, and by how much the last window's share must be exceeded.
const PROBE_SLOWED_SHARE: f64 = 0.5;
const PROBE_SLOWED_RISE: f64 = 0.3;
/// Response-time buckets: bucket k holds times around `BUCKET_GROWTH^k` µs (10 % apart), up to
/// about an hour.
const BUCKETS: usize = 240;
const BUCKET_GROWTH: f64 = 1.1;

fn bucket_of(micros: u64) -> usize {
    ((micros.max(1) as f64).ln() / BUCKET_GROWTH.ln()) as usize
}

fn micros_of(bucket: usize) -> f64 {
    BUCKET_GROWTH.powi(bucket as i32)
}

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
    /// This window's response times, counted in buckets [`BUCKET_GROWTH`] apart, and the most
    /// slots busy at once when one came back.
    buckets: [AtomicU32; BUCKETS],
    peak_busy: AtomicUsize,
    /// The growth on probation, as each answer sees it.
    probe: ProbeWatch,
    state: Mutex<State>,
}

/// A growth on probation, judged answer by answer (the early verdict of the module's text).
#[derive(Debug, Default)]
struct ProbeWatch {
    /// Answers slower than this are slowed; 0 when no growth is on probation.
    slow_from_micros: AtomicU64,
    answers: AtomicU32,
    slowed: AtomicU32,
    /// Answers needed, and slowed answers among them (fixed point, 1/1000), for the verdict.
    needed: AtomicU32,
    slowed_permille: AtomicU32,
    /// Set once the verdict is in, until the protection task takes the growth back.
    failed: AtomicBool,
}

impl ProbeWatch {
    fn start(&self, slow_from_micros: f64, limit: usize, slowed_share_before: f64) {
        let share = PROBE_SLOWED_SHARE.max(slowed_share_before + PROBE_SLOWED_RISE);
        self.answers.store(0, Ordering::Relaxed);
        self.slowed.store(0, Ordering::Relaxed);
        self.needed.store(
            PROBE_ANSWERS_PER_SLOT * u32::try_from(limit).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        self.slowed_permille
            .store((share * 1000.0) as u32, Ordering::Relaxed);
        self.failed.store(false, Ordering::Relaxed);
        self.slow_from_micros
            .store((slow_from_micros as u64).max(1), Ordering::Release);
    }

    fn stop(&self) {
        self.slow_from_micros.store(0, Ordering::Relaxed);
    }

    /// Counts an answer; true only for the answer that brings the verdict "failed".
    fn answered(&self, micros: u64) -> bool {
        let slow_from = self.slow_from_micros.load(Ordering::Acquire);
        if slow_from == 0 {
            return false;
        }
        let answers = self.answers.fetch_add(1, Ordering::Relaxed) + 1;
        let slowed = if micros > slow_from {
            self.slowed.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.slowed.load(Ordering::Relaxed)
        };
        answers >= self.needed.load(Ordering::Relaxed)
            && u64::from(slowed) * 1000
                > u64::from(answers) * u64::from(self.slowed_permille.load(Ordering::Relaxed))
            && !self.failed.swap(true, Ordering::AcqRel)
    }
}

#[derive(Debug)]
struct State {
    /// The limit with its fraction, so small steps add up.
    limit: f64,
    /// The backend's response time without queueing, µs; 0 until known.
    no_load_micros: f64,
    /// Windows left before the limit may grow again (after a shrink).
    pause: u32,
    /// The last window's share of slowed answers.
    slowed_share: f64,
    /// The limit before the growth of the last window, while that growth is on probation.
    grown_from: Option<f64>,
    /// The pause after the next probe taken back.
    probe_pause: u32,
}

impl State {
    /// A failed probe: the limit back to `before` (not below), and no growth for the probe pause,
    /// twice as long the next time.
    fn take_back(&mut self, before: f64) {
        self.limit = before;
        self.pause = self.probe_pause;
        self.probe_pause = (self.probe_pause * 2).min(MAX_PROBE_PAUSE);
    }
}

impl AdaptiveLimit {
    pub fn new(min: usize, max: usize) -> AdaptiveLimit {
        let min = min.clamp(1, max.max(1));
        AdaptiveLimit {
            min,
            max,
            current: AtomicUsize::new(min),
            buckets: [const { AtomicU32::new(0) }; BUCKETS],
            peak_busy: AtomicUsize::new(0),
            probe: ProbeWatch::default(),
            state: Mutex::new(State {
                limit: min as f64,
                no_load_micros: 0.0,
                pause: 0,
                slowed_share: 0.0,
                grown_from: None,
                probe_pause: PAUSE_AFTER_SHRINK,
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// A successful answer that took `took`, with `busy` slots held when it came back. True when
    /// this answer ended the growth on probation: the caller has [`Self::take_back_probe`] called
    /// now rather than at the window's end.
    #[must_use]
    pub fn record(&self, took: Duration, busy: usize) -> bool {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = bucket_of(micros).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.peak_busy.fetch_max(busy, Ordering::Relaxed);
        self.probe.answered(micros)
    }

    /// Whether the growth on probation has failed early and waits to be taken back.
    pub fn probe_failed(&self) -> bool {
        self.probe.failed.load(Ordering::Acquire)
    }

    /// Takes back a growth whose probe failed early and starts a new window: the answers it
    /// slowed must not also read, at the window's end, as a backend to shrink below where the
    /// limit was. Returns the limit.
    pub fn take_back_probe(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.probe.stop();
        self.probe.failed.store(false, Ordering::Release);
        // None: the window ended first and judged the growth already.
        if let Some(before) = state.grown_from.take() {
            state.take_back(before);
            for bucket in &self.buckets {
                bucket.store(0, Ordering::Relaxed);
            }
            self.peak_busy.store(0, Ordering::Relaxed);
            self.current
                .store(state.limit.floor() as usize, Ordering::Relaxed);
        }
        self.limit()
    }

    /// Ends a window: moves the limit on its answers and returns it.
    pub fn update(&self) -> usize {
        let counts: Vec<u32> = self
            .buckets
            .iter()
            .map(|bucket| bucket.swap(0, Ordering::Relaxed))
            .collect();
        let peak = self.peak_busy.swap(0, Ordering::Relaxed);
        // Counted from the buckets themselves: an answer recorded between the two swaps is in
        // one window or the other, never half in each.
        let total: u64 = counts.iter().map(|&count| u64::from(count)).sum();
        if total < MIN_SAMPLES {
            return self.limit();
        }
        let mut below = 0;
        let median_bucket = counts
            .iter()
            .position(|&count| {
                below += u64::from(count);
                below * 2 >= total
            })
            .unwrap_or(0);
        let median = micros_of(median_bucket);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.no_load_micros = if state.no_load_micros == 0.0 {
            median
        } else {
            (state.no_load_micros * DRIFT).min(median)
        };
        let ratio = median / state.no_load_micros.max(1.0);
        let slow_from = state.no_load_micros * GROW_BELOW;
        let slowed: u64 = counts
            .iter()
            .enumerate()
            .filter(|&(bucket, _)| micros_of(bucket) > slow_from)
            .map(|(_, &count)| u64::from(count))
            .sum();
        let slowed_share = slowed as f64 / total as f64;
        let rise = slowed_share - std::mem::replace(&mut state.slowed_share, slowed_share);
        let grown_from = state.grown_from.take();
        let limit = state.limit;
        self.probe.stop();
        // The answer that came back had given its slot back already: `peak + 1` were busy.
        let saturated = peak + 1 >= limit.floor() as usize;
        let probe_failed = ratio > SHRINK_ABOVE || rise > SLOWED_SHARE;
        if let Some(before) = grown_from.filter(|_| probe_failed) {
            // The growth just made did it (a backend with a cliff at its capacity slows every
            // answer at once): back to where it was, not below.
            state.take_back(before);
        } else if ratio > SHRINK_ABOVE {
            let excess = limit * (1.0 - GROW_BELOW / ratio) / 4.0;
            state.limit = limit - excess.max(1.0);
            state.pause = PAUSE_AFTER_SHRINK;
        } else if state.pause > 0 {
            state.pause -= 1;
        } else if ratio <= GROW_BELOW && saturated {
            if grown_from.is_some() {
                // The last growth held: the backend had room, probe at the usual pace again.
                state.probe_pause = PAUSE_AFTER_SHRINK;
            }
            state.grown_from = Some(limit);
            state.limit = limit + (limit / 8.0).max(1.0);
            let grown_to = (state.limit.floor() as usize).min(self.max);
            self.probe.start(slow_from, grown_to, slowed_share);
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
            answer(limit, took, at_once - 1);
        }
        limit.update()
    }

    /// An answer, as the proxy records it and the protection task follows it up.
    fn answer(limit: &AdaptiveLimit, took: Duration, busy: usize) {
        if limit.record(took, busy) {
            limit.take_back_probe();
        }
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

    /// A backend like `test_server --capacity`: requests that find it full wait 20 ms more per
    /// request beyond `capacity`, the others are answered in 5 ms.
    fn window_slowing_the_excess(limit: &AdaptiveLimit, capacity: usize) -> usize {
        let at_once = limit.limit();
        for index in 0..(at_once * 4).max(20) {
            let excess = (index % at_once + 1).saturating_sub(capacity) as u64;
            answer(limit, Duration::from_millis(5 + 20 * excess), at_once - 1);
        }
        limit.update()
    }

    #[test]
    fn a_minority_slowed_past_the_capacity_stops_the_growth() {
        let limit = AdaptiveLimit::new(1, 32);
        let path: Vec<usize> = (0..60)
            .map(|_| window_slowing_the_excess(&limit, 6))
            .collect();
        println!("capacity 6 slowing only the excess, min 1, max 32: {path:?}");
        assert!(path[..10].contains(&6), "reached 6: {path:?}");
        let above = path[10..].iter().filter(|&&at| at > 6).count();
        assert!(
            path[10..].iter().all(|&at| (5..=7).contains(&at)),
            "{path:?}"
        );
        assert!(
            above * 4 <= path.len() - 10,
            "above capacity too often: {path:?}"
        );
    }

    #[test]
    fn shrinks_from_too_high_and_stays_within_bounds() {
        let limit = AdaptiveLimit::new(3, 32);
        // The time without queueing is learnt first, at low load (the limit starts at min)...
        for _ in 0..20 {
            answer(&limit, Duration::from_millis(5), 0);
        }
        limit.update();
        // ...then the limit is far too high (as if min had been 32).
        limit.state.lock().unwrap().limit = 32.0;
        limit.current.store(32, Ordering::Relaxed);
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
                answer(&limit, Duration::from_millis(1), 0);
            }
            limit.update();
        }
        assert_eq!(limit.limit(), 2);
    }

    /// Grows a limit of `min` 6 by one: a probe at 7 on probation.
    fn probing_seven() -> AdaptiveLimit {
        let limit = AdaptiveLimit::new(6, 32);
        for _ in 0..20 {
            answer(&limit, Duration::from_millis(5), 5);
        }
        assert_eq!(limit.update(), 7, "saturated and fast: grows");
        limit
    }

    #[test]
    fn a_probe_over_a_cliff_is_taken_back_within_a_few_answers_per_slot() {
        let limit = probing_seven();
        // Past its capacity of 6, every answer is 20 ms slower.
        let failed_at = (1..=100).find(|_| limit.record(Duration::from_millis(25), 6));
        assert_eq!(
            failed_at,
            Some(3 * 7),
            "the verdict after 3 answers per slot"
        );
        assert!(limit.probe_failed());
        assert_eq!(limit.take_back_probe(), 6, "back to where it was");
        assert!(!limit.probe_failed());
        // The slowed answers went with the probe: the next window does not shrink below 6.
        for _ in 0..20 {
            answer(&limit, Duration::from_millis(5), 5);
        }
        assert_eq!(
            limit.update(),
            6,
            "paused after the failed probe, not shrunk"
        );
    }

    #[test]
    fn a_hiccup_slowing_one_answer_per_slot_does_not_fail_a_probe() {
        let limit = probing_seven();
        // A scheduling stall slows the answers in flight at one moment, then all is fast again.
        let slowed = (0..7).any(|_| limit.record(Duration::from_millis(40), 6));
        let fast = (0..60).any(|_| limit.record(Duration::from_millis(5), 6));
        assert!(!slowed && !fast, "no early verdict");
        assert!(!limit.probe_failed());
        // (The window's end may still take it back on the rise in slowed answers: its own rule.)
        assert_eq!(limit.limit(), 7, "the growth stands until the window ends");
    }
}
