//! `balance = "round_robin"` (the default): smooth weighted round robin, request by request.
//!
//! nginx's algorithm: every choice adds each available backend's weight to its current weight,
//! picks the backend with the highest current weight and takes the sum of the weights off it. With
//! weights 5, 1, 1 that interleaves `a a b a c a a` rather than `a a a a a b c`; with equal
//! weights it is plain round robin, request k going to backend k mod m. A backend that is down or
//! full takes no part (its current weight waits), so its share goes to the others in proportion to
//! their weights. Deterministic: the same requests in the same order get the same backends.

use std::cmp::Reverse;
use std::sync::{Mutex, PoisonError};

use smallvec::SmallVec;

use super::{BackendState, Order, Policy, ON_STACK};

#[derive(Debug)]
pub(crate) struct SmoothWeighted {
    /// Current weight of each backend, in the upstream's order. One short lock per request: the
    /// choice reads and updates all of them together.
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub(crate) fn new(backends: usize) -> SmoothWeighted {
        SmoothWeighted {
            current: Mutex::new(vec![0; backends]),
        }
    }
}

impl Policy for SmoothWeighted {
    fn order(&self, backends: &[BackendState], order: &mut Order) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (index, backend) in backends.iter().enumerate() {
            if !backend.available {
                continue;
            }
            current[index] += i64::from(backend.weight);
            total += i64::from(backend.weight);
            // Strictly greater: among equals the first in config order wins, as in nginx.
            if best.is_none_or(|best| current[index] > current[best]) {
                best = Some(index);
            }
        }
        let Some(best) = best else {
            return;
        };
        current[best] -= total;
        // Fallbacks: the backends that would be chosen next, i.e. by current weight; among equals
        // the ones after the chosen one first (with equal weights: the next ones in turn).
        let count = backends.len();
        let mut rest = SmallVec::<[usize; ON_STACK]>::new();
        for offset in 1..count {
            let index = (best + offset) % count;
            if backends[index].available {
                rest.push(index);
            }
        }
        rest.sort_by_key(|&index| Reverse(current[index]));
        order.push(backends[best].id);
        order.extend(rest.into_iter().map(|index| backends[index].id));
    }

    fn sees_load(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{firsts, idle};
    use super::*;
    use crate::table::BackendId;

    #[test]
    fn equal_weights_are_plain_round_robin_with_the_next_ones_as_fallback() {
        let policy = SmoothWeighted::new(3);
        let backends = idle(&[1, 1, 1]);
        let orders: Vec<Vec<u16>> = (0..4)
            .map(|_| {
                let mut order = Order::new();
                policy.order(&backends, &mut order);
                order.iter().map(|id| id.0).collect()
            })
            .collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
    }

    /// More backends than the choice keeps on the stack: the lists move to the heap and the
    /// order is the same.
    #[test]
    fn an_upstream_larger_than_the_stack_room_is_still_plain_round_robin() {
        let count = ON_STACK + 4;
        let policy = SmoothWeighted::new(count);
        let backends = idle(&vec![1; count]);
        for turn in 0..2 * count {
            let mut order = Order::new();
            policy.order(&backends, &mut order);
            let expected: Vec<u16> = (0..count).map(|k| ((turn + k) % count) as u16).collect();
            let got: Vec<u16> = order.iter().map(|id| id.0).collect();
            assert_eq!(got, expected, "turn {turn}");
        }
    }

    #[test]
    fn weights_5_1_1_interleave_as_nginx_documents() {
        // nginx's ngx_http_upstream_round_robin.c: "a a b a c a a" for weights 5, 1, 1.
        let policy = SmoothWeighted::new(3);
        let backends = idle(&[5, 1, 1]);
        assert_eq!(firsts(&policy, &backends, 7), "aabacaa");
        assert_eq!(firsts(&policy, &backends, 7), "aabacaa");
    }

    #[test]
    fn a_down_backend_s_share_goes_to_the_others_by_weight() {
        let policy = SmoothWeighted::new(4);
        let mut backends = idle(&[3, 3, 2, 1]);
        backends[0].available = false;
        let choices = firsts(&policy, &backends, 600);
        let count = |letter| choices.chars().filter(|&c| c == letter).count();
        println!(
            "weights 3/3/2/1, a down: {choices:.24}… b {} c {} d {}",
            count('b'),
            count('c'),
            count('d')
        );
        // b, c, d share 600 as 3:2:1, exactly: the cycle is 6 requests long.
        assert_eq!(
            (count('a'), count('b'), count('c'), count('d')),
            (0, 300, 200, 100)
        );
        // And the order of one request never names the down backend.
        let mut order = Order::new();
        policy.order(&backends, &mut order);
        assert_eq!(order.len(), 3);
        assert!(!order.contains(&BackendId(0)));
    }

    #[test]
    fn a_backend_back_up_rejoins_its_share() {
        let policy = SmoothWeighted::new(2);
        let mut backends = idle(&[1, 1]);
        backends[1].available = false;
        assert_eq!(firsts(&policy, &backends, 4), "aaaa");
        backends[1].available = true;
        let choices = firsts(&policy, &backends, 100);
        assert_eq!(choices.matches('b').count(), 50, "{choices}");
    }

    #[test]
    fn nothing_available_is_an_empty_order() {
        let policy = SmoothWeighted::new(2);
        let mut backends = idle(&[1, 1]);
        backends[0].available = false;
        backends[1].available = false;
        let mut order = Order::new();
        policy.order(&backends, &mut order);
        assert!(order.is_empty());
    }
}
