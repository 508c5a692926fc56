//! Which backend of an upstream a request tries first, and in what order it falls back to the
//! others.
//!
//! The policy is kept apart from the backend set and the pools: at the moment of choice the
//! [`Balancer`] takes a read-only [`BackendState`] snapshot of each backend of the upstream (its
//! weight, pool size, free slots, queue, how long it holds a connection per request, and whether
//! it can take a request at all) and hands it to the upstream's [`Policy`], which returns an
//! order. The policy never touches a pool, so a new one
//! is one small file here that implements [`Policy`], plus its name in `BalancePolicy`.
//!
//! - [`round_robin`]: smooth weighted round robin (nginx's), blind to load; the default.
//! - [`least_queued`]: a free pooled connection if there is one, else the queue that frees first.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use crate::backend::pool::BackendPool;
use crate::table::{BackendId, BalancePolicy, Priority, RouteTable, UpstreamId};

mod least_queued;
mod round_robin;

use least_queued::LeastQueued;
use round_robin::SmoothWeighted;

/// Room on the stack for an upstream's backends, so that choosing allocates nothing for up to
/// this many (an order with re-sends repeats them: up to four backends with one re-send).
const ON_STACK: usize = 8;

/// The backends one request tries, best first.
pub(crate) type Order = SmallVec<[BackendId; ON_STACK]>;

/// Backends a policy sorts while it chooses.
type Picked<'a> = SmallVec<[&'a BackendState; ON_STACK]>;

/// One backend as a policy sees it at the moment of choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendState {
    pub(crate) id: BackendId,
    /// Configured share relative to the upstream's other backends (1-1000).
    pub(crate) weight: u32,
    /// Pool size `n`: how many requests it serves at once.
    pub(crate) connections: usize,
    /// Slots this request may take that no request holds: sent there now, it does not wait.
    pub(crate) free: usize,
    /// Requests waiting for one of its slots.
    pub(crate) queued: usize,
    /// How long a request is expected to hold one of its connections: the moving average of the
    /// recent ones, or, while every connection is busy and none has come back for longer than
    /// that, the time since one last did (a backend that stalls looks slow at once, before any of
    /// its slow answers arrive). Zero while nothing is known.
    pub(crate) hold: Duration,
    /// Not down (connects keep failing), not drained by an operator, queue not full: a request
    /// may be sent there.
    pub(crate) available: bool,
}

impl BackendState {
    /// What a load-blind policy sees (see [`Policy::sees_load`]): weight and availability.
    fn blind(id: BackendId, pool: &BackendPool) -> BackendState {
        BackendState {
            id,
            weight: Self::weight(pool),
            connections: 0,
            free: 0,
            queued: 0,
            hold: Duration::ZERO,
            available: pool.takes_requests(),
        }
    }

    fn of(
        id: BackendId,
        pool: &BackendPool,
        observed: &Observed,
        priority: Priority,
        now: &mut impl FnMut() -> u64,
    ) -> BackendState {
        let free = pool.free_slots_for(priority);
        let average = observed.average_micros.load(Ordering::Relaxed);
        let stalled = if free == 0 {
            now().saturating_sub(observed.last_back_micros.load(Ordering::Relaxed))
        } else {
            0
        };
        BackendState {
            id,
            weight: Self::weight(pool),
            connections: pool.limit().max(1),
            free,
            queued: pool.queued(),
            hold: Duration::from_micros(average.max(stalled)),
            available: pool.takes_requests(),
        }
    }

    /// Scaled by a thousand so slow start can ramp it smoothly (the policies only compare weights
    /// with each other).
    fn weight(pool: &BackendPool) -> u32 {
        pool.spec.weight.max(1) * pool.protection.weight_permille()
    }
}

/// How long a failed answer (`5xx`, Juggler's 502/504) counts as having held its connection.
/// One such answer moves the average (1/8 new) up by an eighth of a second, so a backend that
/// fails fast sorts behind healthy ones answering in milliseconds; a few good answers bring
/// its average back down.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// What the balancer has seen of one backend's answers (microseconds since [`Balancer::epoch`]).
#[derive(Debug, Default)]
struct Observed {
    /// Moving average (1/8 new) of how long a request held a connection; 0 until the first.
    average_micros: AtomicU64,
    /// When a request last gave a connection back.
    last_back_micros: AtomicU64,
}

/// A way of choosing among an upstream's backends, one request at a time.
pub(crate) trait Policy: fmt::Debug + Send + Sync {
    /// Appends to `order` the backends this request should try, best first: only available ones,
    /// each at most once. `backends` is the upstream's backends in config order, always the same
    /// length for one policy instance.
    fn order(&self, backends: &[BackendState], order: &mut Order);

    /// Whether the policy looks at the backends' load (`free`, `queued`, `hold`, `connections`).
    /// A policy blind to it gets those as zero, and the balancer neither reads the pools' slot
    /// and queue counts nor records answer times for it: lines every serving thread writes on
    /// every request, which each read would pull from the other core's cache.
    fn sees_load(&self) -> bool {
        true
    }

    /// Whether a request that finds no free connection at its first choice should wait in the
    /// second one's queue as well and take whichever slot frees first.
    fn waits_in_two_queues(&self) -> bool {
        false
    }
}

/// Each upstream's policy, with its state (cursors, current weights), shared by every client.
#[derive(Debug)]
pub(crate) struct Balancer {
    /// Indexed by `UpstreamId`.
    policies: Vec<Box<dyn Policy>>,
    /// Indexed by `BackendId`.
    observed: Vec<Observed>,
    epoch: Instant,
}

impl Balancer {
    pub(crate) fn new(table: &RouteTable) -> Balancer {
        let policies = table
            .upstreams
            .iter()
            .map(|upstream| -> Box<dyn Policy> {
                match upstream.balance {
                    BalancePolicy::RoundRobin => {
                        Box::new(SmoothWeighted::new(upstream.backends.len()))
                    }
                    BalancePolicy::LeastQueued => Box::new(LeastQueued::default()),
                }
            })
            .collect();
        Balancer {
            policies,
            observed: table.backends.iter().map(|_| Observed::default()).collect(),
            epoch: Instant::now(),
        }
    }

    /// See [`Policy::waits_in_two_queues`].
    pub(crate) fn waits_in_two_queues(&self, upstream: UpstreamId) -> bool {
        self.policies[usize::from(upstream.0)].waits_in_two_queues()
    }

    /// Records that a request held a connection of `backend` (of `upstream`) for `held` and gave
    /// it back at `back` (the caller's clock reading), if the upstream's policy looks at that. A
    /// failed answer counts as at least [`FAILURE_HOLD`]: a backend that fails fast must not look
    /// like the fastest one and draw the traffic to its errors.
    pub(crate) fn observe(
        &self,
        upstream: UpstreamId,
        backend: BackendId,
        held: Duration,
        failed: bool,
        back: Instant,
    ) {
        if !self.policies[usize::from(upstream.0)].sees_load() {
            return;
        }
        let observed = &self.observed[usize::from(backend.0)];
        let held = if failed { held.max(FAILURE_HOLD) } else { held };
        let sample = u64::try_from(held.as_micros()).unwrap_or(u64::MAX).max(1);
        let average = observed.average_micros.load(Ordering::Relaxed);
        // Two requests finishing at once may each update from the same old value; one sample
        // lost from an average is of no consequence, a lock per answer would be.
        let next = if average == 0 {
            sample
        } else {
            average - average / 8 + sample / 8
        };
        observed.average_micros.store(next, Ordering::Relaxed);
        observed
            .last_back_micros
            .store(self.micros_at(back), Ordering::Relaxed);
    }

    fn micros_at(&self, at: Instant) -> u64 {
        let micros = at.saturating_duration_since(self.epoch).as_micros();
        u64::try_from(micros).unwrap_or(u64::MAX)
    }

    /// The backends this request should try, in order, once over for each of `passes` (a re-send
    /// goes on down the order rather than back to the backend that just failed). Backends that are
    /// down or full at this moment are left out; an empty order means none can take the request.
    pub(crate) fn order(
        &self,
        table: &RouteTable,
        pools: &[Arc<BackendPool>],
        upstream: UpstreamId,
        priority: Priority,
        passes: usize,
    ) -> Order {
        // The clock only matters for a backend with no free slot (how long it has stalled).
        let mut now_read = None;
        let mut now = || *now_read.get_or_insert_with(|| self.micros_at(Instant::now()));
        // Pushed one by one rather than collected: `collect` into a SmallVec built the states in
        // an iterator adapter of its own and moved the whole array out of it.
        let policy = &self.policies[usize::from(upstream.0)];
        let sees_load = policy.sees_load();
        let mut snapshot = SmallVec::<[BackendState; ON_STACK]>::new();
        for &id in table.upstream(upstream).backends {
            let index = usize::from(id.0);
            let pool = &pools[index];
            let state = if sees_load {
                BackendState::of(id, pool, &self.observed[index], priority, &mut now)
            } else {
                BackendState::blind(id, pool)
            };
            snapshot.push(state);
        }
        let mut order = Order::with_capacity(snapshot.len() * passes.max(1));
        policy.order(&snapshot, &mut order);
        let once = order.len();
        for _ in 1..passes {
            for index in 0..once {
                order.push(order[index]);
            }
        }
        order
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Backends with these weights, one connection each, idle and available.
    pub(crate) fn idle(weights: &[u32]) -> Vec<BackendState> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| BackendState {
                id: BackendId(index as u16),
                weight,
                connections: 1,
                free: 1,
                queued: 0,
                hold: Duration::ZERO,
                available: true,
            })
            .collect()
    }

    /// The first choice of `requests` requests in a row, as letters (`a` is backend 0).
    pub(crate) fn firsts(
        policy: &dyn Policy,
        backends: &[BackendState],
        requests: usize,
    ) -> String {
        (0..requests)
            .map(|_| {
                let mut order = Order::new();
                policy.order(backends, &mut order);
                order
                    .first()
                    .map_or('-', |id| char::from(b'a' + id.0 as u8))
            })
            .collect()
    }
}
