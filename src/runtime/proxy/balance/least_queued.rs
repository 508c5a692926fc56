//! `balance = "least_queued"`: send a request where it will wait least, by what Juggler knows for
//! certain at the moment of choice: how many of each backend's `n` connections are free and how
//! many requests wait for them.
//!
//! 1. A backend with a free pooled connection serves the request at once; if several have one,
//!    they take turns.
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

use std::cmp::Ordering as Order;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BackendState, Policy};
use crate::table::BackendId;

#[derive(Debug, Default)]
pub(crate) struct LeastQueued {
    /// Where the turn among equally good backends starts for the next request.
    turn: AtomicUsize,
}

impl Policy for LeastQueued {
    fn order(&self, backends: &[BackendState], order: &mut Vec<BackendId>) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let (mut free, mut busy): (Vec<&BackendState>, Vec<&BackendState>) = backends
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
        order.extend(free.into_iter().chain(busy).map(|backend| backend.id));
    }

    /// The two best queues, raced: the request is served by whichever frees a slot first.
    fn waits_in_two_queues(&self) -> bool {
        true
    }
}

/// Which of two busy backends frees a slot for a new request sooner: the lesser
/// `(queued + 1) × hold / (n × weight)`, compared without division.
fn drains_sooner(a: &BackendState, b: &BackendState) -> Order {
    // Hold times count only when both are known; otherwise queue length alone decides.
    let known = !a.hold.is_zero() && !b.hold.is_zero();
    let hold = |x: &BackendState| if known { x.hold.as_micros().max(1) } else { 1 };
    let wait = |x: &BackendState, y: &BackendState| {
        (x.queued as u128 + 1) * hold(x) * y.connections as u128 * u128::from(y.weight)
    };
    wait(a, b).cmp(&wait(b, a))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{firsts, idle};
    use super::*;

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
        let mut order = Vec::new();
        policy.order(&backends, &mut order);
        assert_eq!(order, [BackendId(1), BackendId(2), BackendId(0)]);
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
        let mut order = Vec::new();
        policy.order(&backends, &mut order);
        assert_eq!(order, [BackendId(0)]);
    }
}
