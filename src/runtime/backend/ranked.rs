//! A pool's slots and its request queue: high before normal before low, first come, first served
//! within a priority, and each wait ended in one of three ways by the queue itself.
//!
//! A free slot is one unit of `free`, taken with a compare-and-swap: a request that finds one takes
//! no lock and allocates nothing. One that finds none is listed here with its deadline
//! ([`PrioritySlots::enqueue`]) and its wait ends when
//! - a freed slot is handed to it ([`Ending::Granted`]): the order is decided in one place,
//!   [`PrioritySlots::hand_out`];
//! - its deadline passes ([`Ending::TimedOut`]): [`PrioritySlots::expire`], called by one task per
//!   pool at the earliest deadline, instead of a timer per queued request;
//! - the backend leaves rotation ([`Ending::Down`]): [`PrioritySlots::end_all`], instead of a
//!   `Notify` every queued request registers with.
//!
//! Within a priority, a freed slot goes to the first waiter on the serving thread that freed it
//! (see `crate::threads`) if one is among the first [`AFFINITY_WINDOW`]: its connection is then
//! taken on the thread whose reactor it is registered with, and its waker wakes a task of the same
//! thread, without a system call. The first in line is overtaken so at most [`MAX_OVERTAKEN`]
//! times before it is served, so the order stays first come, first served but for a bounded skew.
//!
//! A waiter's state is a cell of a slab under the queue's lock, reused from one waiter to the next,
//! so once the queue has been as long before, a queued request allocates nothing either.
//!
//! While nobody waits, a freed slot goes back to `free` without the lock: the freeing side reads
//! `waiting` around a fence. The fence closes a race with a request that lists itself just as a
//! slot is freed: either it sees the slot on its look after listing, or the freeing side sees it
//! listed and hands the slot over (see [`PrioritySlots::enqueue`] and [`Slots::free`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use super::limit::Slots;
use super::pipeline::Rider;
use crate::table::Priority;
use crate::threads;

/// How far down its priority's line a waiter on the freeing thread may be and still be served
/// first.
const AFFINITY_WINDOW: usize = 32;

/// How often the first waiter of a priority may be overtaken by one on the freeing thread.
const MAX_OVERTAKEN: u8 = 16;

/// How a request's wait in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A slot was handed to it: it holds the slot now.
    Granted,
    /// A slot holder took it to write behind its own request (see `pipeline`): it holds nothing
    /// yet, and its [`Rider`] says how the ride ends.
    Riding,
    /// Its deadline passed first.
    TimedOut,
    /// The backend left rotation while it waited.
    Down,
}

#[derive(Debug)]
pub(crate) struct PrioritySlots {
    /// Free slots. Zero whenever anyone waits, but for the moment of the race the fence closes.
    free: AtomicUsize,
    /// Requests listed in `queue`, readable without its lock.
    waiting: AtomicUsize,
    /// The deadline of the request a freed slot goes to next ([`deadline_micros`]), 0 when
    /// nobody waits: readable without the lock, so that another lane can tell whose requests
    /// have waited longest (all of one pool's waits have the same timeout).
    first_deadline: AtomicU64,
    queue: Mutex<Queue>,
}

/// `deadline` in µs since the process first asked, plus one (0 stays "none"). Only compared
/// with each other, to tell which of two waits began first.
pub(crate) fn deadline_micros(deadline: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let micros = deadline.saturating_duration_since(epoch).as_micros();
    u64::try_from(micros).unwrap_or(u64::MAX - 1) + 1
}

#[derive(Debug, Default)]
struct Queue {
    /// Listed requests of each priority in arrival order: high, normal, low.
    classes: [VecDeque<Listed>; 3],
    /// Each waiter's state, at the index its [`Wait`] holds.
    cells: Vec<Cell>,
    /// Indices of `cells` free for the next waiter.
    vacant: Vec<usize>,
}

/// A request in the queue: its cell, when it stops waiting, and where it waits.
#[derive(Debug, Clone, Copy)]
struct Listed {
    cell: usize,
    deadline: Instant,
    /// The serving thread its task runs on.
    thread: usize,
    /// How often a later waiter was served before it while it was first in line.
    overtaken: u8,
    /// It may ride behind a slot holder's request (its cell holds the [`Rider`]).
    rides: bool,
}

#[derive(Debug)]
enum Cell {
    Vacant,
    /// Listed; the waker of the task that last polled its [`Wait`], and the request to write if
    /// a slot holder takes it to ride.
    Waiting(Option<Waker>, Option<Arc<Rider>>),
    /// Taken off the list; read by its [`Wait`]'s next poll, or by its drop.
    Ended(Ending),
}

impl Queue {
    fn occupy(&mut self, rider: Option<Arc<Rider>>) -> usize {
        match self.vacant.pop() {
            Some(cell) => {
                self.cells[cell] = Cell::Waiting(None, rider);
                cell
            }
            None => {
                self.cells.push(Cell::Waiting(None, rider));
                self.cells.len() - 1
            }
        }
    }

    /// Takes the request a slot freed on `thread` goes to: the first of the highest priority
    /// anyone waits at, unless one near it waits on `thread` and the first may still be
    /// overtaken.
    fn next_for(&mut self, thread: usize) -> Option<Listed> {
        let line = self.classes.iter_mut().find(|line| !line.is_empty())?;
        let first = line.front_mut()?;
        if first.thread != thread && first.overtaken < MAX_OVERTAKEN {
            let near = line
                .iter()
                .take(AFFINITY_WINDOW)
                .position(|listed| listed.thread == thread);
            if let Some(near) = near {
                line[0].overtaken += 1;
                return line.remove(near);
            }
        }
        line.pop_front()
    }

    /// The request [`Queue::next_for`] serves when the freeing thread has none of its own here.
    fn first(&self) -> Option<&Listed> {
        self.classes.iter().find_map(VecDeque::front)
    }

    fn vacate(&mut self, cell: usize) {
        self.cells[cell] = Cell::Vacant;
        self.vacant.push(cell);
    }

    /// Ends a listed request's wait (already taken off its list): returns the waker to wake.
    fn end(&mut self, cell: usize, ending: Ending) -> Option<Waker> {
        match std::mem::replace(&mut self.cells[cell], Cell::Ended(ending)) {
            Cell::Waiting(waker, _) => waker,
            Cell::Vacant | Cell::Ended(_) => None,
        }
    }
}

fn class(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl PrioritySlots {
    pub(crate) fn new(size: usize) -> PrioritySlots {
        PrioritySlots {
            free: AtomicUsize::new(size),
            waiting: AtomicUsize::new(0),
            first_deadline: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `first_deadline` in step with `queue`; called under its lock after every change
    /// of who is listed first.
    fn publish_first(&self, queue: &Queue) {
        let first = queue
            .first()
            .map_or(0, |listed| deadline_micros(listed.deadline));
        self.first_deadline.store(first, Ordering::Relaxed);
    }

    /// The deadline ([`deadline_micros`]) of the request served next, 0 when nobody waits.
    pub(crate) fn first_deadline(&self) -> u64 {
        self.first_deadline.load(Ordering::Relaxed)
    }

    /// Lists a request that found no free slot, in `priority`'s place, until `deadline`; the
    /// returned [`Wait`] completes with how its wait ended. Cancel-safe: a `Wait` dropped before
    /// it completed leaves the queue, and a slot handed to it meanwhile is freed again.
    pub(crate) fn enqueue(&self, priority: Priority, deadline: Instant) -> Wait<'_> {
        self.enqueue_rider(priority, deadline, None)
    }

    /// [`Self::enqueue`] for a request that may also ride (see `pipeline`): then its wait may end
    /// [`Ending::Riding`] instead.
    pub(crate) fn enqueue_rider(
        &self,
        priority: Priority,
        deadline: Instant,
        rider: Option<Arc<Rider>>,
    ) -> Wait<'_> {
        let cell = {
            let mut queue = self.lock();
            let rides = rider.is_some();
            let cell = queue.occupy(rider);
            queue.classes[class(priority)].push_back(Listed {
                cell,
                deadline,
                thread: threads::current(),
                overtaken: 0,
                rides,
            });
            self.publish_first(&queue);
            self.waiting.fetch_add(1, Ordering::SeqCst);
            cell
        };
        // A slot freed before `waiting` counted this request went to `free`: hand it out now, in
        // order (perhaps to this one). Paired with the fence in `free`.
        fence(Ordering::SeqCst);
        if self.free.load(Ordering::SeqCst) > 0 {
            self.hand_out(0);
        }
        Wait {
            slots: self,
            cell,
            done: false,
        }
    }

    /// Takes the first listed request that may ride (in the order slots are handed out, among the
    /// first [`AFFINITY_WINDOW`] of each priority) off the queue, its wait ended
    /// [`Ending::Riding`]. Its waker goes to the rider, woken when the ride ends.
    pub(crate) fn take_rider(&self) -> Option<Arc<Rider>> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut guard = self.lock();
        let queue = &mut *guard;
        let listed = queue.classes.iter_mut().find_map(|line| {
            let at = line
                .iter()
                .take(AFFINITY_WINDOW)
                .position(|listed| listed.rides)?;
            line.remove(at)
        })?;
        self.publish_first(queue);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match std::mem::replace(&mut queue.cells[listed.cell], Cell::Ended(Ending::Riding)) {
            Cell::Waiting(waker, Some(rider)) => {
                rider.taken(waker);
                Some(rider)
            }
            _ => {
                debug_assert!(false, "a request listed to ride without its rider");
                None
            }
        }
    }

    /// Requests listed right now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Whether a request of `priority` is listed (under the queue's lock).
    pub(crate) fn waits_at(&self, priority: Priority) -> bool {
        !self.lock().classes[class(priority)].is_empty()
    }

    /// Ends the wait of every request whose deadline is `now` or earlier; returns the earliest
    /// deadline still listed, `None` if nobody waits.
    pub(crate) fn expire(&self, now: Instant) -> Option<Instant> {
        let mut guard = self.lock();
        let queue = &mut *guard;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for class in &mut queue.classes {
            class.retain(|listed| {
                if listed.deadline <= now {
                    expired.push(listed.cell);
                    return false;
                }
                next = Some(next.map_or(listed.deadline, |next| next.min(listed.deadline)));
                true
            });
        }
        self.publish_first(queue);
        self.end_listed(&mut guard, expired, Ending::TimedOut);
        next
    }

    /// Ends the wait of every listed request with `ending`.
    pub(crate) fn end_all(&self, ending: Ending) {
        let mut queue = self.lock();
        let listed: Vec<usize> = queue
            .classes
            .iter_mut()
            .flat_map(|class| class.drain(..))
            .map(|listed| listed.cell)
            .collect();
        self.publish_first(&queue);
        self.end_listed(&mut queue, listed, ending);
    }

    /// Ends the waits of `cells`, already taken off their lists. Rare (a deadline passed, the
    /// backend left): the wakers are woken under the lock.
    fn end_listed(&self, queue: &mut Queue, cells: Vec<usize>, ending: Ending) {
        if cells.is_empty() {
            return;
        }
        self.waiting.fetch_sub(cells.len(), Ordering::SeqCst);
        for cell in cells {
            if let Some(waker) = queue.end(cell, ending) {
                waker.wake();
            }
        }
    }

    /// Hands `n` freed slots, and any that sit in `free`, to the listed requests in order (high,
    /// normal, low; first come, first served in each, but for the freeing thread's own waiters:
    /// see [`Queue::next_for`]); the rest go to `free`.
    fn hand_out(&self, mut n: usize) {
        let thread = threads::current();
        loop {
            let mut queue = self.lock();
            n += self.free.swap(0, Ordering::SeqCst);
            if n == 0 {
                return;
            }
            let Some(next) = queue.next_for(thread) else {
                // Under the lock: a request listing itself after this finds them in `free`.
                self.free.fetch_add(n, Ordering::SeqCst);
                return;
            };
            self.publish_first(&queue);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            n -= 1;
            let waker = queue.end(next.cell, Ending::Granted);
            drop(queue);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl Slots for PrioritySlots {
    fn free(&self, n: usize) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.hand_out(n);
            return;
        }
        self.free.fetch_add(n, Ordering::SeqCst);
        // A request listed meanwhile may have missed these slots (see `enqueue`): take back what
        // is still free and hand it over.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.hand_out(0);
        }
    }

    fn try_take(&self) -> bool {
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(1)
            })
            .is_ok()
    }

    fn available(&self) -> usize {
        self.free.load(Ordering::Acquire)
    }
}

/// A request's place in the queue until its wait ends (see [`PrioritySlots::enqueue`]).
#[derive(Debug)]
pub(crate) struct Wait<'a> {
    slots: &'a PrioritySlots,
    cell: usize,
    /// Completed: the cell is vacant already and a slot granted is the caller's.
    done: bool,
}

impl Future for Wait<'_> {
    type Output = Ending;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ending> {
        let mut queue = self.slots.lock();
        let ending = match &mut queue.cells[self.cell] {
            Cell::Waiting(waker, _) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            Cell::Ended(ending) => *ending,
            Cell::Vacant => {
                // Only this `Wait` vacates its cell, and it is not polled once done.
                debug_assert!(false, "a queue cell vacated under its waiter");
                Ending::TimedOut
            }
        };
        queue.vacate(self.cell);
        drop(queue);
        self.done = true;
        Poll::Ready(ending)
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut guard = self.slots.lock();
        let queue = &mut *guard;
        let granted = match queue.cells[self.cell] {
            Cell::Waiting(..) => {
                let listed = queue.classes.iter_mut().any(|class| {
                    let at = class.iter().position(|listed| listed.cell == self.cell);
                    at.and_then(|at| class.remove(at)).is_some()
                });
                if listed {
                    self.slots.publish_first(queue);
                    self.slots.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                false
            }
            Cell::Ended(ending) => ending == Ending::Granted,
            Cell::Vacant => false,
        };
        queue.vacate(self.cell);
        drop(guard);
        if granted {
            // Handed a slot that nobody will use: to the next in line.
            self.slots.free(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    const FAR: Duration = Duration::from_secs(3600);

    fn far() -> Instant {
        Instant::now() + FAR
    }

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
                assert_eq!(slots.enqueue(priority, far()).await, Ending::Granted);
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
        let slots = PrioritySlots::new(1);
        assert!(slots.try_take());
        // Listed, never polled: the slot is handed to it, then it goes (the client left).
        let first = slots.enqueue(Priority::Normal, far());
        let mut second = Box::pin(slots.enqueue(Priority::Low, far()));
        assert!(futures_poll(&mut second).is_none());
        slots.free(1);
        assert_eq!(slots.waiting(), 1, "the first was handed the slot");
        drop(first);
        assert_eq!(
            futures_poll(&mut second),
            Some(Ending::Granted),
            "the slot the first was handed went on to the second"
        );
        drop(second);
        assert_eq!(slots.available(), 0, "the second holds it");
        // Left while still listed: nothing to pass on, and the queue is empty again.
        let third = slots.enqueue(Priority::High, far());
        drop(third);
        assert_eq!(slots.waiting(), 0);
        slots.free(1);
        assert_eq!(slots.available(), 1, "with nobody waiting the slot is free");
        assert!(slots.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_time_out_at_their_deadline_and_not_before_in_order() {
        let slots = PrioritySlots::new(0);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut waits: Vec<_> = (1..=3)
            .map(|at| Box::pin(slots.enqueue(Priority::Normal, start + second * at)))
            .collect();
        let mut high = Box::pin(slots.enqueue(Priority::High, start + second * 2));
        assert_eq!(slots.expire(start), Some(start + second));
        tokio::time::advance(second - Duration::from_millis(1)).await;
        assert_eq!(slots.expire(Instant::now()), Some(start + second));
        assert!(futures_poll(&mut waits[0]).is_none(), "not before");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(slots.expire(Instant::now()), Some(start + second * 2));
        assert_eq!(futures_poll(&mut waits[0]), Some(Ending::TimedOut), "at");
        assert!(futures_poll(&mut waits[1]).is_none());
        tokio::time::advance(second).await;
        assert_eq!(slots.expire(Instant::now()), Some(start + second * 3));
        assert_eq!(futures_poll(&mut waits[1]), Some(Ending::TimedOut));
        assert_eq!(futures_poll(&mut high), Some(Ending::TimedOut));
        // A slot freed now goes to the one still waiting, not to those that timed out.
        slots.free(1);
        assert_eq!(futures_poll(&mut waits[2]), Some(Ending::Granted));
        assert_eq!(slots.expire(Instant::now() + FAR), None, "nobody waits");
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test]
    async fn the_backend_leaving_ends_every_wait() {
        let slots = Arc::new(PrioritySlots::new(0));
        let waiting: Vec<_> = [
            Priority::High,
            Priority::Normal,
            Priority::Low,
            Priority::Normal,
        ]
        .into_iter()
        .map(|priority| {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.enqueue(priority, far()).await })
        })
        .collect();
        while slots.waiting() < 4 {
            tokio::task::yield_now().await;
        }
        slots.end_all(Ending::Down);
        assert_eq!(slots.waiting(), 0);
        for task in waiting {
            assert_eq!(task.await.unwrap(), Ending::Down);
        }
        // Ended, not granted: no slot appeared out of nowhere.
        assert_eq!(slots.available(), 0);
    }

    #[test]
    fn a_freed_slot_goes_to_a_waiter_of_its_thread_and_the_first_is_overtaken_a_bounded_number_of_times(
    ) {
        let slots = PrioritySlots::new(0);
        let deadline = far();
        // Two waiters of thread 1 in front, then more of thread 2 than may overtake; slots freed
        // on thread 2.
        let overtakers = usize::from(MAX_OVERTAKEN);
        let mut waits: Vec<(usize, Pin<Box<Wait<'_>>>)> = Vec::new();
        for thread in [1, 1].into_iter().chain([2].repeat(overtakers + 2)) {
            threads::set_current(thread);
            waits.push((thread, Box::pin(slots.enqueue(Priority::Normal, deadline))));
        }
        // A high waiter of thread 1 still goes first: priorities are never skewed.
        threads::set_current(1);
        let mut high = Box::pin(slots.enqueue(Priority::High, deadline));
        threads::set_current(2);
        slots.free(1);
        assert_eq!(futures_poll(&mut high), Some(Ending::Granted));
        let mut served = Vec::new();
        for _ in 0..waits.len() {
            slots.free(1);
            let granted = waits
                .iter_mut()
                .position(|(_, wait)| futures_poll(wait) == Some(Ending::Granted))
                .expect("one waiter granted per freed slot");
            served.push(waits.remove(granted).0);
        }
        threads::set_current(0);
        // MAX_OVERTAKEN of thread 2 overtake the first of thread 1, which is then served, and
        // the second of thread 1 is overtaken by the last two of thread 2 only.
        let mut expected = [2].repeat(overtakers);
        expected.extend([1, 2, 2, 1]);
        assert_eq!(served, expected);
    }

    /// Polls `wait` once with a waker that does nothing.
    fn futures_poll(wait: &mut Pin<Box<Wait<'_>>>) -> Option<Ending> {
        let mut cx = Context::from_waker(Waker::noop());
        match wait.as_mut().poll(&mut cx) {
            Poll::Ready(ending) => Some(ending),
            Poll::Pending => None,
        }
    }
}
