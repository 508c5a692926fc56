//! A pool's slots with its queue in priority order: high before normal before low.
//!
//! The slots are the permits of a FIFO semaphore, and normal requests queue on it as they always
//! have. High and low requests that must wait queue here instead, each with a one-shot channel, and
//! a slot that is freed (given back, or added when the limit grows) is handed over directly: to the
//! first high waiter, else to the semaphore while normal requests wait on it, else to the first low
//! waiter. The order is decided in one place, [`PrioritySlots::free`].
//!
//! While no high or low request waits (always, when every route is normal) a freed slot goes to the
//! semaphore as before: the request path takes no lock and allocates nothing for the ranking, it
//! reads `ranked` twice around a fence. The fence closes a race with a high or low request that
//! registers just as a slot is freed: either it sees the slot on its second look, or the freeing
//! side sees it registered and hands the slot over (see [`PrioritySlots::wait_ranked`]).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Semaphore};

use super::limit::Slots;
use crate::table::Priority;

#[derive(Debug)]
pub(crate) struct PrioritySlots {
    /// One permit per free slot; its FIFO wait list is the normal requests' queue.
    permits: Semaphore,
    /// High and low requests waiting in `waiters`, readable without its lock.
    ranked: AtomicUsize,
    /// Normal requests waiting on `permits`: a freed slot goes to them before any low request.
    normal_waiting: AtomicUsize,
    waiters: Mutex<Waiters>,
    next_ticket: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiters {
    high: VecDeque<Waiter>,
    low: VecDeque<Waiter>,
}

/// A high or low request waiting for a slot to be handed to it.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    handoff: oneshot::Sender<()>,
}

impl PrioritySlots {
    pub(crate) fn new(size: usize) -> PrioritySlots {
        PrioritySlots {
            permits: Semaphore::new(size),
            ranked: AtomicUsize::new(0),
            normal_waiting: AtomicUsize::new(0),
            waiters: Mutex::new(Waiters::default()),
            next_ticket: AtomicU64::new(0),
        }
    }

    /// Waits for a slot in `priority`'s place in the queue; `None` only if the semaphore was
    /// closed (it never is). Cancel-safe: a request dropped while waiting leaves its place, and a
    /// slot handed to it meanwhile is freed again.
    pub(crate) async fn wait(&self, priority: Priority) -> Option<()> {
        match priority {
            Priority::Normal => {
                self.normal_waiting.fetch_add(1, Ordering::SeqCst);
                let _waiting = Waiting(self);
                self.permits.acquire().await.ok()?.forget();
                Some(())
            }
            Priority::High | Priority::Low => self.wait_ranked(priority == Priority::High).await,
        }
    }

    async fn wait_ranked(&self, high: bool) -> Option<()> {
        let (handoff, handed) = oneshot::channel();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiters = self.lock();
            let queue = if high {
                &mut waiters.high
            } else {
                &mut waiters.low
            };
            queue.push_back(Waiter { ticket, handoff });
            self.ranked.fetch_add(1, Ordering::SeqCst);
        }
        let mut place = Place {
            slots: self,
            ticket,
            handed,
            served: false,
        };
        // A slot freed before `ranked` counted this request went to the semaphore: take it now.
        // Paired with the fence in `free`.
        fence(Ordering::SeqCst);
        if self.may_take_free_slot(high) && self.permits.try_take() {
            drop(place); // leaves the queue (and frees a slot handed over meanwhile)
            return Some(());
        }
        (&mut place.handed).await.ok()?;
        place.served = true;
        Some(())
    }

    /// A low request takes a free slot only while no normal request waits for one.
    fn may_take_free_slot(&self, high: bool) -> bool {
        high || self.normal_waiting.load(Ordering::SeqCst) == 0
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `n` freed slots, and any that sit free in the semaphore, to the waiters in order; the
    /// rest go to the semaphore. Only while high or low requests wait.
    fn rank(&self, n: usize) {
        let mut waiters = self.lock();
        let mut n = n;
        // Free permits while anyone waits: given back by a normal request that left the queue
        // just as the semaphore chose it, or missed by a request registering (see `free`).
        while self.permits.try_take() {
            n += 1;
        }
        let left = self.hand_over(&mut waiters, n);
        drop(waiters);
        if left > 0 {
            self.permits.add_permits(left);
        }
    }

    /// Hands up to `n` slots to high and low waiters in order; returns how many are left.
    fn hand_over(&self, waiters: &mut Waiters, mut n: usize) -> usize {
        while n > 0 {
            let next = match waiters.high.pop_front() {
                Some(waiter) => waiter,
                None if self.normal_waiting.load(Ordering::SeqCst) > 0 => break,
                None => match waiters.low.pop_front() {
                    Some(waiter) => waiter,
                    None => break,
                },
            };
            self.ranked.fetch_sub(1, Ordering::SeqCst);
            // Fails only if the waiter is gone, which it cannot be while it is listed: leaving
            // takes this lock first. Counted as handed only when it arrived.
            if next.handoff.send(()).is_ok() {
                n -= 1;
            }
        }
        n
    }
}

impl Slots for PrioritySlots {
    fn free(&self, n: usize) {
        if self.ranked.load(Ordering::SeqCst) > 0 {
            self.rank(n);
            return;
        }
        self.permits.add_permits(n);
        // A high or low request that registered meanwhile may have missed these permits (see
        // `wait_ranked`): take back what is still free and hand it over.
        fence(Ordering::SeqCst);
        if self.ranked.load(Ordering::SeqCst) > 0 {
            self.rank(0);
        }
    }

    fn try_take(&self) -> bool {
        self.permits.try_take()
    }

    fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Counts a normal request out of `normal_waiting` however its wait ends. One that leaves while
/// low requests wait may leave a slot free that is theirs now.
struct Waiting<'a>(&'a PrioritySlots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.normal_waiting.fetch_sub(1, Ordering::SeqCst);
        if self.0.ranked.load(Ordering::SeqCst) > 0 {
            self.0.rank(0);
        }
    }
}

/// A high or low request's place in the queue until it is served or leaves.
struct Place<'a> {
    slots: &'a PrioritySlots,
    ticket: u64,
    handed: oneshot::Receiver<()>,
    served: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut guard = self.slots.lock();
        let waiters = &mut *guard;
        let listed = [&mut waiters.high, &mut waiters.low]
            .into_iter()
            .any(|queue| {
                let at = queue.iter().position(|w| w.ticket == self.ticket);
                at.map(|at| queue.remove(at)).is_some()
            });
        if listed {
            self.slots.ranked.fetch_sub(1, Ordering::SeqCst);
        } else if self.handed.try_recv().is_ok() {
            // Handed a slot (under the lock, so it is here by now) that nobody will use.
            drop(guard);
            self.slots.free(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_freed_slot_goes_to_high_then_normal_then_low() {
        let slots = Arc::new(PrioritySlots::new(1));
        assert!(slots.try_take());
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for (name, priority) in [
            ("low", Priority::Low),
            ("normal", Priority::Normal),
            ("high", Priority::High),
        ] {
            let (slots, order_tx) = (Arc::clone(&slots), order_tx.clone());
            waiting.push(tokio::spawn(async move {
                slots.wait(priority).await.unwrap();
                order_tx.send(name).unwrap();
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut served = Vec::new();
        for _ in 0..3 {
            slots.free(1);
            served.push(order.recv().await.unwrap());
        }
        assert_eq!(served, ["high", "normal", "low"]);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(
            slots.available(),
            0,
            "every slot is held by the last one served"
        );
    }

    #[tokio::test]
    async fn a_request_that_leaves_the_queue_passes_a_slot_handed_to_it_on() {
        let slots = Arc::new(PrioritySlots::new(1));
        assert!(slots.try_take());
        let waiting = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.wait(Priority::Low).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(slots.ranked.load(Ordering::SeqCst), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(slots.ranked.load(Ordering::SeqCst), 0);
        slots.free(1);
        assert_eq!(slots.available(), 1, "the slot went back to the semaphore");
        // Without any ranked waiter, freeing is the plain semaphore's.
        assert!(slots.try_take());
        assert_eq!(slots.available(), 0);
    }
}
