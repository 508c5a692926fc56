//! Backend protection: what takes a backend out of rotation besides failed connects, and how it
//! comes back.
//!
//! - **Active checks** (`health_check`): every `interval` a `GET path` goes over one of the pool's
//!   own connections, in one of its own slots, and only when a slot is free: a check never waits
//!   in the queue and never opens a connection beyond the pool's limit, so the bound `n` holds with
//!   checks included. A backend whose every slot has been busy with no request sent and no
//!   answer back for longer than the check's `timeout` counts as failing the check: that is how a
//!   hung backend (a stuck process, `SIGSTOP`) is found while it holds every slot. `fails`
//!   failures in a row mark it down, `passes` passes bring it back. While down its checks open connections as needed, so its
//!   reconnect attempts are its checks.
//! - **Ejection** (`eject_after_5xx`): that many `5xx` answers in a row take a backend out for
//!   10 s, doubling on each repeat up to 5 min (the proxy keeps the last healthy backend of an
//!   upstream in). Passing checks end an ejection early.
//! - **Slow start** (`slow_start`): a backend that comes back (checks, ejection or connects) gets
//!   1 usable slot, growing linearly to `n`, through the pool's `Protection` limit; the balancing
//!   weight grows with it.
//!
//! - **Adaptive limit** (`connections_per_server = { min, max }`, see `adaptive`): the usable slots
//!   follow measured response times; the pool's `Protection` limit is the lower of it and slow
//!   start's.
//!
//! A backend out of rotation wakes the requests queued for it, which move to another backend of
//! the upstream (they were not sent yet) or are answered `503`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::adaptive::{AdaptiveLimit, WINDOW};
use super::conn::{FieldsWanted, Framing, HeadError};
use super::pool::{BackendPool, CheckoutError, LimitSource, PooledConn};
use super::spool::RequestBody;
use crate::table::{HealthCheck, Protection};

/// The first ejection's length; each repeat doubles it.
pub const EJECT_FIRST: Duration = Duration::from_secs(10);
/// No ejection lasts longer.
pub const EJECT_MAX: Duration = Duration::from_secs(300);
/// Check answers with a body larger than this are not read: the connection is closed instead.
const CHECK_BODY_MAX: u64 = 64 * 1024;
/// How often slow start moves the limit, and how soon an ejection's end is noticed.
const TICK: Duration = Duration::from_millis(100);

/// How the last check ended, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// No check has run yet.
    None,
    /// Answered with this status (passed or not, as `expect` says).
    Status(u16),
    /// No answer within `timeout`.
    Timeout,
    /// The connection failed (connect refused, reset, garbage).
    Failed,
    /// Every slot busy with no request sent and no answer back for longer than `timeout`.
    Hung,
}

/// How far [`BackendProtection::active_at`] lets the last activity lag behind the true one.
const ACTIVE_GRAIN_MICROS: u64 = 1_000;

/// One backend's protection state, owned by its pool.
#[derive(Debug)]
pub struct BackendProtection {
    pub config: Protection,
    /// `n`: what slow start ramps to.
    pool_size: usize,
    epoch: Instant,
    /// Marked down by active checks (or found hung).
    check_down: AtomicBool,
    fails_in_row: AtomicU32,
    passes_in_row: AtomicU32,
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    /// [`CheckOutcome`] packed: 0 none, 1 timeout, 2 failed, 3 hung, else the status.
    last_check: AtomicU32,
    /// When a request (or check) was last sent to the backend or an answer's head last came
    /// back, in µs since `epoch`: a backend that answers is not hung, even with every slot busy.
    last_active_micros: AtomicU64,
    consecutive_5xx: AtomicU32,
    /// End of the ejection in force, µs since `epoch` + 1; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row without a long healthy spell between them: the next lasts 2^level × 10 s.
    eject_level: AtomicU32,
    ejections: AtomicU64,
    /// When the backend last came back (µs since `epoch` + 1; 0: never went away).
    back_since: AtomicU64,
    /// `connections_per_server = { min, max }`: the limit from response times.
    adaptive: Option<AdaptiveLimit>,
    /// Wakes the protection task when the adaptive limit's growth on probation failed early.
    probe_failed: Notify,
}

impl BackendProtection {
    pub fn new(config: Protection, pool_size: usize) -> BackendProtection {
        BackendProtection {
            config,
            pool_size,
            epoch: Instant::now(),
            check_down: AtomicBool::new(false),
            fails_in_row: AtomicU32::new(0),
            passes_in_row: AtomicU32::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            last_check: AtomicU32::new(0),
            last_active_micros: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            eject_level: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            back_since: AtomicU64::new(0),
            adaptive: config
                .adaptive_min
                .map(|min| AdaptiveLimit::new(min, pool_size)),
            probe_failed: Notify::new(),
        }
    }

    /// Whether anything here needs the [`protect`] task.
    pub fn is_active(&self) -> bool {
        self.config.health_check.is_some()
            || !self.config.slow_start.is_zero()
            || self.config.eject_after_5xx > 0
            || self.adaptive.is_some()
    }

    /// A successful answer that took `took` with `busy` slots held: evidence for the adaptive
    /// limit, if there is one.
    pub fn record_response_time(&self, took: Duration, busy: impl FnOnce() -> usize) {
        if let Some(adaptive) = &self.adaptive {
            if adaptive.record(took, busy()) {
                self.probe_failed.notify_one();
            }
        }
    }

    /// The cap protection puts on the pool now: the lower of slow start's and the adaptive
    /// limit's; `None` when neither holds it below `n`.
    fn cap(&self) -> Option<usize> {
        let adaptive = self
            .adaptive
            .as_ref()
            .map(AdaptiveLimit::limit)
            .filter(|&limit| limit < self.pool_size);
        match (self.slow_start_limit(), adaptive) {
            (Some(ramp), Some(adaptive)) => Some(ramp.min(adaptive)),
            (ramp, adaptive) => ramp.or(adaptive),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Down by checks or ejected: the backend takes no new request.
    pub fn out_of_rotation(&self) -> bool {
        self.check_down.load(Ordering::Acquire) || self.is_ejected()
    }

    pub fn is_check_down(&self) -> bool {
        self.check_down.load(Ordering::Acquire)
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && self.now() < until - 1
    }

    /// Time left of the ejection in force.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now = self.now();
        (until != 0 && now < until - 1).then(|| Duration::from_micros(until - 1 - now))
    }

    pub fn checks_passed(&self) -> u64 {
        self.checks_passed.load(Ordering::Relaxed)
    }

    pub fn checks_failed(&self) -> u64 {
        self.checks_failed.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn last_check(&self) -> CheckOutcome {
        match self.last_check.load(Ordering::Relaxed) {
            0 => CheckOutcome::None,
            1 => CheckOutcome::Timeout,
            2 => CheckOutcome::Failed,
            3 => CheckOutcome::Hung,
            status => CheckOutcome::Status(status as u16),
        }
    }

    /// A request was about to be written to the backend at `at`, or an answer came back then
    /// (the hung check needs the latest). The caller's clock reading: it has one already.
    ///
    /// Moved forward at most once per [`ACTIVE_GRAIN_MICROS`]: every serving thread calls this
    /// twice per request, and a write each time would pull the line, with the rest of this
    /// state that every choice of backend reads, back and forth between the cores. The hung
    /// check's timeouts are seconds; a millisecond more of quiet changes nothing.
    pub fn active_at(&self, at: Instant) {
        let micros = at.saturating_duration_since(self.epoch).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        let last = self.last_active_micros.load(Ordering::Relaxed);
        if micros > last.saturating_add(ACTIVE_GRAIN_MICROS) {
            self.last_active_micros.fetch_max(micros, Ordering::Relaxed);
        }
    }

    /// Records a backend's answer; true when it completes a run of `eject_after_5xx` failures and
    /// the backend should be ejected (the caller decides, knowing the upstream). A `503` with
    /// `Retry-After` is the backend asking for less load, not a failure: it neither counts nor
    /// breaks the run.
    pub fn answered(&self, status: http::StatusCode, retry_after: bool) -> bool {
        let threshold = self.config.eject_after_5xx;
        if threshold == 0 {
            return false;
        }
        if status == http::StatusCode::SERVICE_UNAVAILABLE && retry_after {
            return false;
        }
        if !status.is_server_error() {
            // Read first: under steady good answers the run is already 0, and the line stays
            // unwritten (see `active_at`).
            if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let run = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        run >= threshold && !self.is_ejected()
    }

    /// `5xx` answers in a row so far.
    pub fn failure_run(&self) -> u32 {
        self.consecutive_5xx.load(Ordering::Relaxed)
    }

    /// Ejects the backend (the caller checked it is not the upstream's last healthy one) and
    /// returns for how long: 10 s, doubling for each ejection since the last healthy spell of at
    /// least [`EJECT_MAX`]. Called by [`BackendPool::eject`], which also ends the queue.
    pub(crate) fn eject(&self) -> Duration {
        let now = self.now();
        let back = self.back_since.load(Ordering::Acquire);
        if back != 0 && now.saturating_sub(back - 1) > EJECT_MAX.as_micros() as u64 {
            self.eject_level.store(0, Ordering::Relaxed);
        }
        let level = self.eject_level.fetch_add(1, Ordering::Relaxed).min(16);
        let length = EJECT_FIRST.saturating_mul(1 << level).min(EJECT_MAX);
        self.ejected_until
            .store(now + length.as_micros() as u64 + 1, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.passes_in_row.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        length
    }

    /// Clears an ejection whose time is up (slow start begins); true if there was one. Exactly
    /// the ejection read is cleared, so one that begins meanwhile stays.
    fn ejection_expired(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 || self.now() < until - 1 {
            return false;
        }
        let cleared = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if cleared {
            self.came_back();
        }
        cleared
    }

    /// The backend is usable again (checks passed, ejection over, connects succeed after
    /// failing): slow start begins.
    pub fn came_back(&self) {
        self.back_since.store(self.now() + 1, Ordering::Release);
    }

    /// How far slow start has come, from 1/n to 1; `None` when not ramping.
    fn ramp(&self) -> Option<f64> {
        let slow_start = self.config.slow_start;
        let since = self.back_since.load(Ordering::Acquire);
        if slow_start.is_zero() || since == 0 || self.out_of_rotation() {
            return None;
        }
        let elapsed = Duration::from_micros(self.now().saturating_sub(since - 1));
        (elapsed < slow_start).then(|| {
            let floor = 1.0 / self.pool_size.max(1) as f64;
            (elapsed.as_secs_f64() / slow_start.as_secs_f64()).max(floor)
        })
    }

    /// Usable slots during slow start (1 → n); `None` when not ramping.
    pub fn slow_start_limit(&self) -> Option<usize> {
        let share = self.ramp()?;
        let n = self.pool_size.max(1);
        Some((1 + ((n - 1) as f64 * share) as usize).min(n))
    }

    /// The balancing weight's share in thousandths: 1000, less during slow start.
    pub fn weight_permille(&self) -> u32 {
        self.ramp()
            .map_or(1000, |share| ((share * 1000.0) as u32).max(1))
    }

    /// Records a check's outcome; returns whether the backend has just been marked down by it
    /// (its queue is then to be ended: see [`BackendPool::leave_rotation`]).
    #[must_use]
    fn record_check(&self, outcome: CheckOutcome, check: &HealthCheck, backend: &str) -> bool {
        let packed = match outcome {
            CheckOutcome::None => 0,
            CheckOutcome::Timeout => 1,
            CheckOutcome::Failed => 2,
            CheckOutcome::Hung => 3,
            CheckOutcome::Status(status) => u32::from(status),
        };
        self.last_check.store(packed, Ordering::Relaxed);
        let passed = matches!(outcome, CheckOutcome::Status(status) if check.passes_with(status));
        if passed {
            self.checks_passed.fetch_add(1, Ordering::Relaxed);
            self.fails_in_row.store(0, Ordering::Relaxed);
            let passes = self.passes_in_row.fetch_add(1, Ordering::Relaxed) + 1;
            if passes < check.passes {
                return false;
            }
            if self.check_down.swap(false, Ordering::AcqRel) {
                tracing::warn!(backend, passes, "backend is up again: health checks pass");
                self.came_back();
            }
            if self.is_ejected() {
                tracing::warn!(backend, passes, "ejection ended early: health checks pass");
                self.ejected_until.store(0, Ordering::Release);
                self.came_back();
            }
        } else {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
            self.passes_in_row.store(0, Ordering::Relaxed);
            let fails = self.fails_in_row.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= check.fails && !self.check_down.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    backend,
                    fails,
                    ?outcome,
                    "backend marked down: health checks fail"
                );
                return true;
            }
        }
        false
    }

    /// Whether every slot of `pool` has been busy with nothing sent and no answer back for longer
    /// than `timeout`.
    fn looks_hung(&self, pool: &BackendPool, timeout: Duration) -> bool {
        let quiet = Duration::from_micros(
            self.now()
                .saturating_sub(self.last_active_micros.load(Ordering::Relaxed)),
        );
        pool.free_slots() == 0
            && pool.busy_slots() > 0
            && pool.idle_connections() == 0
            && quiet > timeout
    }
}

/// Runs `pool`'s checks, ends its ejections and steps its slow start, until the runtime shuts
/// down. Spawned only for pools whose upstream sets one of the protection keys.
pub async fn protect(pool: Arc<BackendPool>) {
    let protection = &pool.protection;
    let mut next_check = Instant::now()
        + protection
            .config
            .health_check
            .map_or(Duration::ZERO, |check| check.interval);
    let mut next_window = Instant::now() + WINDOW;
    loop {
        let now = Instant::now();
        if let Some(check) = &protection.config.health_check {
            if now >= next_check {
                next_check = now + check.interval;
                if let Some(outcome) = run_check(&pool, check).await {
                    if protection.record_check(outcome, check, pool.spec.address) {
                        pool.leave_rotation();
                    }
                }
            }
        }
        if protection.ejection_expired() {
            tracing::warn!(
                backend = pool.spec.address,
                "ejection over: back in rotation"
            );
        }
        if let Some(adaptive) = &protection.adaptive {
            if adaptive.probe_failed() {
                adaptive.take_back_probe();
                next_window = now + WINDOW;
            } else if now >= next_window {
                next_window = now + WINDOW;
                adaptive.update();
            }
        }
        let cap = protection.cap();
        if pool.limit_cap(LimitSource::Protection) != cap {
            pool.set_limit(LimitSource::Protection, cap);
        }
        let ramp = protection.slow_start_limit();
        let soon = Instant::now() + TICK;
        let wake = match protection.config.health_check {
            Some(_)
                if !protection.is_ejected() && ramp.is_none() && protection.adaptive.is_none() =>
            {
                next_check
            }
            // Ramping, ejected, or no checks: a tick notices an ejection's end, moves the ramp,
            // and sees a comeback after failed connects soon enough.
            Some(_) => next_check.min(soon),
            None => soon,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = protection.probe_failed.notified() => {}
        }
    }
}

/// One check of `pool`: over a free slot's connection (opened within the slot if it is empty),
/// or, with every slot busy, a look at whether they are all stuck. `None`: no verdict this time
/// (slots busy but moving, drained, handing over, or an idle connection the backend had closed).
async fn run_check(pool: &Arc<BackendPool>, check: &HealthCheck) -> Option<CheckOutcome> {
    if !pool.may_check() {
        return None;
    }
    let protection = &pool.protection;
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: juggler-health-check\r\n\r\n",
        check.path, pool.spec.address
    );
    // The timeout covers opening a connection too: a backend whose SYNs go unanswered fails
    // its check within `timeout`, not `connect_timeout`. A check cut short drops its slot
    // unfinished, which closes that connection (it may still get an answer).
    let attempt = async {
        let Some(checked) = pool.checkout_if_free().await else {
            return Err(CheckError::NoSlot);
        };
        let mut slot = match checked {
            Ok(slot) => slot,
            Err(CheckoutError::Connect(_)) => return Err(CheckError::Failed),
            Err(_) => return Err(CheckError::Stale),
        };
        protection.active_at(Instant::now());
        exchange_check(&mut slot, head.as_bytes()).await
        // `slot` is dropped here: its connection stays pooled if the answer was read whole.
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Err(_) => Some(CheckOutcome::Timeout),
        Ok(Ok(status)) => Some(CheckOutcome::Status(status)),
        Ok(Err(CheckError::NoSlot)) => protection
            .looks_hung(pool, check.timeout)
            .then_some(CheckOutcome::Hung),
        // The backend closed an idle connection before the check (a keep-alive race), or the
        // slot could not be had after all: no verdict.
        Ok(Err(CheckError::Stale)) => None,
        Ok(Err(CheckError::Failed)) => Some(CheckOutcome::Failed),
    }
}

enum CheckError {
    /// Every slot busy: the check could not be sent.
    NoSlot,
    Stale,
    Failed,
}

/// Writes the check and reads its answer; the connection stays pooled only if the whole answer
/// was read and the backend keeps it alive.
async fn exchange_check(slot: &mut PooledConn, head: &[u8]) -> Result<u16, CheckError> {
    let reused = slot.from_idle;
    let conn = slot.conn();
    let nothing = RequestBody::default();
    if conn.write_request(head, &nothing, &[]).await.is_err() {
        return Err(if reused {
            CheckError::Stale
        } else {
            CheckError::Failed
        });
    }
    let response = match conn.read_head(false, FieldsWanted::HeaderMap).await {
        Ok(response) => response,
        Err(HeadError::NothingReceived(_)) if reused => return Err(CheckError::Stale),
        Err(_) => return Err(CheckError::Failed),
    };
    let status = response.status.as_u16();
    let read_whole = match response.framing {
        Framing::Empty => true,
        Framing::Length(len) if len <= CHECK_BODY_MAX => {
            conn.read_exact_body(len as usize).await.is_ok()
        }
        // Chunked or unbounded: not worth reading for a check; the connection is closed.
        _ => false,
    };
    slot.response_complete(read_whole && response.keep_alive);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(eject_after_5xx: u32, slow_start: Duration) -> BackendProtection {
        BackendProtection::new(
            Protection {
                health_check: None,
                slow_start,
                eject_after_5xx,
                ..Protection::OFF
            },
            8,
        )
    }

    #[test]
    fn a_run_of_5xx_ejects_and_anything_else_breaks_it() {
        let p = protection(3, Duration::ZERO);
        use http::StatusCode as S;
        assert!(!p.answered(S::INTERNAL_SERVER_ERROR, false));
        assert!(!p.answered(S::BAD_GATEWAY, false));
        assert!(!p.answered(S::OK, false), "a 200 breaks the run");
        assert!(!p.answered(S::INTERNAL_SERVER_ERROR, false));
        assert!(
            !p.answered(S::SERVICE_UNAVAILABLE, true),
            "503 + Retry-After: no count"
        );
        assert!(!p.answered(S::INTERNAL_SERVER_ERROR, false));
        assert!(p.answered(S::INTERNAL_SERVER_ERROR, false));
        assert_eq!(p.eject(), EJECT_FIRST);
        assert!(p.out_of_rotation());
        assert!(!p.answered(S::INTERNAL_SERVER_ERROR, false));
    }

    #[test]
    fn ejections_double_up_to_five_minutes() {
        let p = protection(1, Duration::ZERO);
        let lengths: Vec<u64> = (0..7).map(|_| p.eject().as_secs()).collect();
        assert_eq!(lengths, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(p.ejections(), 7);
    }

    #[test]
    fn off_means_never() {
        let p = protection(0, Duration::ZERO);
        for _ in 0..100 {
            assert!(!p.answered(http::StatusCode::INTERNAL_SERVER_ERROR, false));
        }
        assert_eq!(p.slow_start_limit(), None);
        assert_eq!(p.weight_permille(), 1000);
    }

    #[test]
    fn slow_start_begins_at_one_slot() {
        let p = protection(0, Duration::from_secs(60));
        assert_eq!(p.slow_start_limit(), None, "start-up is not a comeback");
        p.came_back();
        assert_eq!(p.slow_start_limit(), Some(1));
        assert_eq!(
            p.weight_permille(),
            125,
            "1/8 of the weight with one slot of 8"
        );
    }
}
