//! `balance = "least_queued"`: send a request where it will wait least, by what Juggler knows for
//! certain at the moment of choice: how many of each backend's `n` connections are free and how
//! many requests wait for them.
//!
//! 1. A backend with a free pooled connection serves the request at once; if several have one,
//!    they take turns. Except a free backend so slow that a busy one would have *finished* the
//!    request sooner, queue included (its `hold` above the busy one's `hold × (1 + (queued + 1) /
//!    (n × weight))`): it comes after the busy ones. Otherwise a backend 20× slower would get a
//!    request every time one of its slots frees, and each of those waits 20× longer.
//! 2. Otherwise the backend whose queue frees up first: fewest waiting per connection,
//!    weight-adjusted and scaled by how long the backend holds a connection per request, i.e. the
//!    least `(queued + 1) × hold / (n × weight)` (a weight-3 backend is taken to drain its queue
//!    three times as fast). Ties take turns too.
//!
//! 3. A request that has to wait waits in the two best queues at once and takes whichever slot
//!    frees first (the proxy races the two checkouts; the loser leaves its queue).
//!
//! Without the hold time a burst would fill every queue alike, the slow backend's included, since
//! they all look equally long at the moment of choice; with it a backend 20× slower gets a request
//! only when the others' queues are 20× longer. Until anything is known the hold times count as
//! equal. Down and full backends are left out.

use std::cmp;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendState, Order, Picked, Policy};

#[derive(Debug, Default)]
pub(crate) struct LeastQueued {
    /// Where the turn among equally good backends starts for the next request.
    turn: AtomicUsize,
}

impl Policy for LeastQueued {
    fn order(&self, backends: &[BackendState], order: &mut Order) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let (mut free, mut busy): (Picked, Picked) = backends
            .iter()
            .filter(|backend| backend.available)
            .partition(|backend| backend.free > 0);
        // Turns are taken within each group, so the backends with a free connection right now
        // share the requests evenly whichever the others are.
        if !free.is_empty() {
            let len = free.len();
            free.rotate_left(turn % len);
        }
        if !busy.is_empty() {
            let len = busy.len();
            busy.rotate_left(turn % len);
            // Stable: equally good backends stay in turn order.
            busy.sort_by(|a, b| drains_sooner(a, b));
        }
        // busy[0] is the busy backend that serves a request soonest (hold times known: sorted by
        // them). A free backend slower than that goes after the busy ones.
        let (free, slow): (Picked, Picked) = match busy.first() {
            Some(soonest) if !soonest.hold.is_zero() => free
                .into_iter()
                .partition(|free| free.hold.is_zero() || !finishes_sooner(soonest, free)),
            _ => (free, Picked::new()),
        };
        order.extend(
            free.into_iter()
                .chain(busy)
                .chain(slow)
                .map(|backend| backend.id),
        );
    }

    /// The two best queues, raced: the request is served by whichever frees a slot first.
    fn waits_in_two_queues(&self) -> bool {
        true
    }
}

/// Which of two busy backends frees a slot for a new request sooner: the lesser
/// `(queued + 1) × hold / (n × weight)`, compared without division.
fn drains_sooner(a: &BackendState, b: &BackendState) -> cmp::Ordering {
    // Hold times count only when both are known; otherwise queue length alone decides.
    let known = !a.hold.is_zero() && !b.hold.is_zero();
    let hold = |x: &BackendState| if known { x.hold.as_micros().max(1) } else { 1 };
    let wait = |x: &BackendState, y: &BackendState| {
        (x.queued as u128 + 1) * hold(x) * y.connections as u128 * u128::from(y.weight)
    };
    wait(a, b).cmp(&wait(b, a))
}

/// Whether a request queued at `busy` is expected to be answered before one sent to the free
/// connection of `free`: `busy.hold × (n × w + queued + 1) / (n × w) < free.hold`.
fn finishes_sooner(busy: &BackendState, free: &BackendState) -> bool {
    let capacity = busy.connections as u128 * u128::from(busy.weight);
    let queued = busy.queued as u128 + 1;
    busy.hold.as_micros() * (capacity + queued) < free.hold.as_micros() * capacity
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{firsts, idle};
    use super::*;
    use crate::table::BackendId;

    fn busy(backend: &mut BackendState, connections: usize, queued: usize) {
        backend.connections = connections;
        backend.free = 0;
        backend.queued = queued;
    }

    #[test]
    fn free_connections_first_taking_turns() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1, 1]);
        assert_eq!(firsts(&policy, &backends, 6), "abcabc");
        busy(&mut backends[0], 4, 0);
        assert_eq!(firsts(&policy, &backends, 4), "bcbc");
    }

    #[test]
    fn all_busy_the_queue_that_frees_first() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1, 1]);
        busy(&mut backends[0], 4, 8); // 9 / 4 per connection
        busy(&mut backends[1], 4, 2); // 3 / 4
        busy(&mut backends[2], 2, 2); // 3 / 2
        let mut order = Order::new();
        policy.order(&backends, &mut order);
        assert_eq!(order[..], [BackendId(1), BackendId(2), BackendId(0)]);
    }

    #[test]
    fn weight_counts_as_drain_speed() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[3, 1]);
        busy(&mut backends[0], 2, 5); // 6 / (2 × 3) = 1
        busy(&mut backends[1], 2, 2); // 3 / 2 = 1.5
        assert_eq!(firsts(&policy, &backends, 3), "aaa");
    }

    #[test]
    fn a_backend_that_holds_connections_longer_drains_later() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1]);
        busy(&mut backends[0], 4, 1); // 2 × 200 ms / 4
        busy(&mut backends[1], 4, 15); // 16 × 10 ms / 4
        backends[0].hold = Duration::from_millis(200);
        backends[1].hold = Duration::from_millis(10);
        assert_eq!(firsts(&policy, &backends, 2), "bb");
        backends[1].queued = 40; // 41 × 10 ms / 4 > 2 × 200 ms / 4
        assert_eq!(firsts(&policy, &backends, 2), "aa");
        // Nothing known about one of them: queue length alone.
        backends[0].hold = Duration::ZERO;
        assert_eq!(firsts(&policy, &backends, 2), "aa");
    }

    #[test]
    fn a_free_backend_waits_behind_a_queue_that_finishes_sooner() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1, 1]);
        backends[0].hold = Duration::from_millis(20); // free, but 20 ms per request
        busy(&mut backends[1], 8, 16); // 1 ms × (8 + 17) / 8 ≈ 3.1 ms
        busy(&mut backends[2], 8, 40); // 1 ms × (8 + 41) / 8 ≈ 6.1 ms
        backends[1].hold = Duration::from_millis(1);
        backends[2].hold = Duration::from_millis(1);
        let mut order = Order::new();
        policy.order(&backends, &mut order);
        assert_eq!(order[..], [BackendId(1), BackendId(2), BackendId(0)]);
        // Once the queues are long enough, the free slow one is the sooner again.
        backends[1].queued = 200; // 1 ms × 209 / 8 ≈ 26 ms
        backends[2].queued = 200;
        assert_eq!(firsts(&policy, &backends, 2), "aa");
        // Nothing known of its speed: a free connection comes first, as the rule says.
        backends[0].hold = Duration::ZERO;
        backends[1].queued = 0;
        assert_eq!(firsts(&policy, &backends, 2), "aa");
    }

    #[test]
    fn equal_queues_take_turns() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1]);
        busy(&mut backends[0], 2, 3);
        busy(&mut backends[1], 2, 3);
        assert_eq!(firsts(&policy, &backends, 4), "abab");
    }

    #[test]
    fn never_down_or_full() {
        let policy = LeastQueued::default();
        let mut backends = idle(&[1, 1, 1]);
        backends[1].available = false;
        busy(&mut backends[2], 1, 100);
        backends[2].available = false;
        let mut order = Order::new();
        policy.order(&backends, &mut order);
        assert_eq!(order[..], [BackendId(0)]);
    }
}
