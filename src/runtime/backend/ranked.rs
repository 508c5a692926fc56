//! A pool's slots and its request queue: high before normal before low, first come, first served
//! within a priority, and each wait ended in one of three ways by the queue itself.
//!
//! A free slot is one unit of `free` (or of its thread's kept slots), taken with a
//! compare-and-swap: a request that finds one takes no lock and allocates nothing. One that finds
//! none is listed here with its deadline ([`PrioritySlots::enqueue`]) and its wait ends when
//! - a freed slot is handed to it ([`Ending::Granted`]): the order is decided in one place,
//!   [`PrioritySlots::hand_out`];
//! - its deadline passes ([`Ending::TimedOut`]): [`PrioritySlots::expire`], called by one task per
//!   pool at the earliest deadline, instead of a timer per queued request;
//! - the backend leaves rotation ([`Ending::Down`]): [`PrioritySlots::end_all`], instead of a
//!   `Notify` every queued request registers with.
//!
//! Within a priority, the slots split evenly between the serving threads (see `crate::threads`)
//! that wait for them, and then stay with their thread, as if each thread had a pool of its own
//! while `n` stays one bound for all: each thread then takes, in the common case, the connection
//! it just gave back, registered with its own reactor, and wakes a task of its own, without a
//! system call. A slot its holder gives back goes
//! - to the first waiter of the thread that holds the fewest slots among those with a waiter in
//!   the first [`AFFINITY_WINDOW`], and to the freeing thread's own first waiter when it holds no
//!   more than any of them (the slot it frees not counted): a slot crosses to another thread
//!   only to even the split out. Ties at no slot held go to the waiter listed first, so a thread
//!   that holds none is served by the next slot freed anywhere, and no thread starves;
//! - when none of the freeing thread's requests waits and every thread that waits holds at least
//!   as many, to the freeing thread's next request ([`GivenBack::Kept`]): under load its next one
//!   comes within microseconds. Requests of other threads neither take a kept slot nor are
//!   served from it until the pool ends the keeping after a millisecond (`pool`), so a kept slot
//!   never idles longer while anyone waits. High-priority waiters are never kept from.
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
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

use super::limit::Slots;
use crate::table::Priority;
use crate::threads;

/// How far down its priority's line a thread's first waiter may be and still be served first:
/// bounds the look a freed slot takes under the lock.
const AFFINITY_WINDOW: usize = 32;

/// How many threads' first waiters a freed slot compares; beyond them (more serving threads
/// waiting within the window) the rest wait for the next slot.
const MAX_CANDIDATES: usize = 8;

/// How a request's wait in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A slot was handed to it: it holds the slot now.
    Granted,
    /// Its deadline passed first.
    TimedOut,
    /// The backend left rotation while it waited.
    Down,
}

#[derive(Debug)]
pub(crate) struct PrioritySlots {
    /// Free slots any request may take. Zero whenever anyone waits, but for the moment of the
    /// race the fence closes.
    free: AtomicUsize,
    /// Requests listed in `queue`, readable without its lock.
    waiting: AtomicUsize,
    queue: Mutex<Queue>,
    /// One per serving thread (a thread's lane is its number modulo their count), each on a
    /// cache line of its own: a thread takes and gives back its own slots without touching the
    /// others' lanes.
    lanes: Box<[Lane]>,
    /// Whether a slot given back by its holder may be kept free for the thread's next request.
    keeps: Keeping,
}

/// Whether a queue keeps a freed slot for the thread that freed it (see the module's
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keeping {
    /// Kept, and served to other threads' waiters only once the owner of the queue calls
    /// [`PrioritySlots::end_keeping`] (see [`GivenBack::Kept`]).
    ForItsThread,
    /// Always handed to whoever waits.
    Never,
}

/// What became of a slot its holder gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GivenBack {
    /// Free, or handed to a waiter.
    Freed,
    /// Kept free for the next request of the thread that gave it back while requests of other
    /// threads wait: the caller ends that with [`PrioritySlots::end_keeping`] after a short
    /// while, unless [`PrioritySlots::keeping_ends_later`] says it is already due to.
    Kept,
    /// Gone for good, paying a lowered limit's debt (see `limit`).
    PaidDebt,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Lane {
    /// Slots held now by the lane's requests.
    held: AtomicUsize,
    /// Free slots kept for the lane's next requests (see [`GivenBack::Kept`]).
    kept: AtomicUsize,
    /// Whether a call to [`PrioritySlots::end_keeping`] is due for a slot this lane kept.
    keeping_ends: AtomicBool,
}

/// What a freed slot does, as [`Queue::next_for`] decides.
enum Next {
    Serve(Listed),
    KeepForThisThread,
    NobodyWaits,
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
}

#[derive(Debug)]
enum Cell {
    Vacant,
    /// Listed; the waker of the task that last polled its [`Wait`].
    Waiting(Option<Waker>),
    /// Taken off the list; read by its [`Wait`]'s next poll, or by its drop.
    Ended(Ending),
}

impl Queue {
    fn occupy(&mut self) -> usize {
        match self.vacant.pop() {
            Some(cell) => {
                self.cells[cell] = Cell::Waiting(None);
                cell
            }
            None => {
                self.cells.push(Cell::Waiting(None));
                self.cells.len() - 1
            }
        }
    }

    /// Takes the request a slot freed on `thread` goes to, within the highest priority anyone
    /// waits at: the first waiter of the thread that holds the fewest slots (`held`), `thread`'s
    /// own on a tie unless the tie is at none held, the one listed first otherwise; or, if it
    /// may `keep` it, to `thread`'s next request (see the module's documentation).
    fn next_for(&mut self, thread: usize, held: impl Fn(usize) -> usize, keep: Keeping) -> Next {
        let Some(class) = self.classes.iter().position(|line| !line.is_empty()) else {
            return Next::NobodyWaits;
        };
        let line = &mut self.classes[class];
        let mut compared = [0; MAX_CANDIDATES];
        let mut candidates = 0;
        let mut chosen = 0;
        let mut own_waits = false;
        // Fewest held first; then the freeing thread (unless none is held); then listed first.
        let mut best = (usize::MAX, true);
        for (at, listed) in line.iter().enumerate().take(AFFINITY_WINDOW) {
            if compared[..candidates].contains(&listed.thread) {
                continue;
            }
            own_waits |= listed.thread == thread;
            let holds = held(listed.thread);
            let rank = (holds, listed.thread != thread || holds == 0);
            if rank < best {
                best = rank;
                chosen = at;
            }
            if best.0 == 0 || candidates == MAX_CANDIDATES {
                // Nothing later ranks before a thread holding none listed earlier.
                break;
            }
            compared[candidates] = listed.thread;
            candidates += 1;
        }
        let keep_for_own_thread = keep == Keeping::ForItsThread
            && thread != threads::CONTROL
            && !own_waits
            && class != class_of(Priority::High)
            && best.0 > 0
            && best.0 >= held(thread);
        if keep_for_own_thread {
            return Next::KeepForThisThread;
        }
        match line.remove(chosen) {
            Some(listed) => Next::Serve(listed),
            None => Next::NobodyWaits,
        }
    }

    fn vacate(&mut self, cell: usize) {
        self.cells[cell] = Cell::Vacant;
        self.vacant.push(cell);
    }

    /// Ends a listed request's wait (already taken off its list): returns the waker to wake.
    fn end(&mut self, cell: usize, ending: Ending) -> Option<Waker> {
        match std::mem::replace(&mut self.cells[cell], Cell::Ended(ending)) {
            Cell::Waiting(waker) => waker,
            Cell::Vacant | Cell::Ended(_) => None,
        }
    }
}

fn class_of(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl PrioritySlots {
    /// `size` free slots, split between up to `threads` serving threads (plus the threads that
    /// serve none, which count as one).
    pub(crate) fn new(size: usize, threads: usize, keeps: Keeping) -> PrioritySlots {
        PrioritySlots {
            free: AtomicUsize::new(size),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            lanes: (0..=threads).map(|_| Lane::default()).collect(),
            keeps,
        }
    }

    /// `thread`'s lane (shared with the threads whose number falls on the same).
    fn lane(&self, thread: usize) -> &Lane {
        &self.lanes[thread % self.lanes.len()]
    }

    /// The count of slots held by `thread`'s requests.
    fn held_by(&self, thread: usize) -> &AtomicUsize {
        &self.lane(thread).held
    }

    /// After [`GivenBack::Kept`]: whether the caller should end the keeping later, rather than
    /// a call already due on this thread doing so.
    pub(crate) fn keeping_ends_later(&self) -> bool {
        !self
            .lane(threads::current())
            .keeping_ends
            .swap(true, Ordering::Relaxed)
    }

    /// Serves the waiters from the slots kept free for the calling thread (and any others free).
    pub(crate) fn end_keeping(&self) {
        let lane = self.lane(threads::current());
        lane.keeping_ends.store(false, Ordering::Relaxed);
        self.release(lane.kept.swap(0, Ordering::AcqRel), Keeping::Never);
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists a request that found no free slot, in `priority`'s place, until `deadline`; the
    /// returned [`Wait`] completes with how its wait ended. Cancel-safe: a `Wait` dropped before
    /// it completed leaves the queue, and a slot handed to it meanwhile is freed again.
    pub(crate) fn enqueue(&self, priority: Priority, deadline: Instant) -> Wait<'_> {
        let cell = {
            let mut queue = self.lock();
            let cell = queue.occupy();
            queue.classes[class_of(priority)].push_back(Listed {
                cell,
                deadline,
                thread: threads::current(),
            });
            self.waiting.fetch_add(1, Ordering::SeqCst);
            cell
        };
        // A slot freed before `waiting` counted this request went to `free`: hand it out now, in
        // order (perhaps to this one). Paired with the fence in `free`.
        fence(Ordering::SeqCst);
        if self.free.load(Ordering::SeqCst) > 0 {
            // Listed on this thread: nothing is kept from its own request.
            self.hand_out(0, Keeping::Never);
        }
        Wait {
            slots: self,
            cell,
            done: false,
        }
    }

    /// Requests listed right now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
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

    /// Frees `n` slots (0: only hands out what sits in `free`), to whoever waits for one first,
    /// unless `keep` lets it keep them for the calling thread. Returns whether it did while
    /// others wait.
    fn release(&self, n: usize, keep: Keeping) -> bool {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return self.hand_out(n, keep);
        }
        if n > 0 {
            self.free.fetch_add(n, Ordering::SeqCst);
        }
        // A request listed meanwhile may have missed these slots (see `enqueue`): take back what
        // is still free and hand it over.
        fence(Ordering::SeqCst);
        self.waiting.load(Ordering::SeqCst) > 0 && self.hand_out(0, keep)
    }

    /// Hands `n` freed slots, and any that sit in `free`, to the listed requests in order (high,
    /// normal, low; within a priority, as [`Queue::next_for`] chooses); the rest go to `free`.
    /// Returns whether it kept some there for the calling thread while others wait.
    fn hand_out(&self, mut n: usize, keep: Keeping) -> bool {
        let thread = threads::current();
        loop {
            let mut queue = self.lock();
            n += self.free.swap(0, Ordering::SeqCst);
            if n == 0 {
                return false;
            }
            let held = |waiter| self.held_by(waiter).load(Ordering::Relaxed);
            let next = match queue.next_for(thread, held, keep) {
                Next::Serve(next) => next,
                Next::KeepForThisThread => {
                    // Only this thread's requests take them, until `end_keeping`.
                    self.lane(thread).kept.fetch_add(n, Ordering::AcqRel);
                    return true;
                }
                Next::NobodyWaits => {
                    // Under the lock: a request listing itself after this finds them in `free`.
                    self.free.fetch_add(n, Ordering::SeqCst);
                    return false;
                }
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.held_by(next.thread).fetch_add(1, Ordering::Relaxed);
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
        self.release(n, Keeping::Never);
    }

    fn give_back(&self) -> GivenBack {
        self.let_go();
        if self.release(1, self.keeps) {
            GivenBack::Kept
        } else {
            GivenBack::Freed
        }
    }

    fn try_take(&self) -> bool {
        let lane = self.lane(threads::current());
        let taken = take_one(&lane.kept) || take_one(&self.free);
        if taken {
            lane.held.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn take_away(&self) -> bool {
        take_one(&self.free) || self.lanes.iter().any(|lane| take_one(&lane.kept))
    }

    fn let_go(&self) {
        // Saturating: a slot given back on a thread other than the one that took it (none does
        // today) skews the split for a while, never the count of slots.
        let _ = self.held_by(threads::current()).fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |held| held.checked_sub(1),
        );
    }

    fn available(&self) -> usize {
        let kept: usize = self
            .lanes
            .iter()
            .map(|lane| lane.kept.load(Ordering::Acquire))
            .sum();
        self.free.load(Ordering::Acquire) + kept
    }
}

/// Takes one of `free`, if there is one.
fn take_one(free: &AtomicUsize) -> bool {
    free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
        free.checked_sub(1)
    })
    .is_ok()
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
            Cell::Waiting(waker) => {
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
            Cell::Waiting(_) => {
                let listed = queue.classes.iter_mut().any(|class| {
                    let at = class.iter().position(|listed| listed.cell == self.cell);
                    at.and_then(|at| class.remove(at)).is_some()
                });
                if listed {
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
            self.slots.let_go();
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
        let slots = Arc::new(PrioritySlots::new(1, 1, Keeping::Never));
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
        let slots = PrioritySlots::new(1, 1, Keeping::Never);
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
        let slots = PrioritySlots::new(0, 1, Keeping::Never);
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
        let slots = Arc::new(PrioritySlots::new(0, 1, Keeping::Never));
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
    fn freed_slots_even_the_split_out_then_stay_with_their_thread() {
        // Four slots, two serving threads: thread 1 holds three, thread 2 one. Thread 1's
        // waiters are listed first.
        let slots = PrioritySlots::new(4, 2, Keeping::ForItsThread);
        let deadline = far();
        for thread in [1, 1, 1, 2] {
            threads::set_current(thread);
            assert!(slots.try_take());
        }
        let mut waits: Vec<(usize, Pin<Box<Wait<'_>>>)> = Vec::new();
        let enqueue = |waits: &mut Vec<_>, thread, priority| {
            threads::set_current(thread);
            waits.push((thread, Box::pin(slots.enqueue(priority, deadline))));
        };
        for thread in [1, 1, 2, 2] {
            enqueue(&mut waits, thread, Priority::Normal);
        }
        // Thread 1 frees while holding more (two, the freed one not counted, against one): the
        // slot crosses to thread 2. From two each on, each thread's freed slot goes to its own
        // first waiter.
        let mut served = Vec::new();
        for freeing in [1, 1, 2] {
            threads::set_current(freeing);
            served.push(give_back_one_to(&slots, &mut waits));
        }
        assert_eq!(served, [2, 1, 2]);
        // None of thread 2's waits and thread 1 holds as many: the slot stays free for thread
        // 2's next request, which takes it without waiting.
        threads::set_current(2);
        assert_eq!(slots.give_back(), GivenBack::Kept);
        assert!(waits
            .iter_mut()
            .all(|(_, wait)| futures_poll(wait).is_none()));
        assert_eq!(slots.available(), 1);
        threads::set_current(1);
        assert!(!slots.try_take(), "kept from thread 1's new requests too");
        threads::set_current(2);
        assert!(slots.try_take());
        // Kept again; once the keeping ends (one call due per thread), thread 1 is served.
        assert_eq!(slots.give_back(), GivenBack::Kept);
        assert!(slots.keeping_ends_later());
        assert!(!slots.keeping_ends_later(), "already due");
        slots.end_keeping();
        assert_eq!(give_back_one_to_waiting(&mut waits), 1);
        // A high waiter is served first whoever frees, and whatever each holds.
        let mut high = Vec::new();
        enqueue(&mut high, 1, Priority::High);
        enqueue(&mut waits, 2, Priority::Normal);
        threads::set_current(2);
        assert_eq!(slots.give_back(), GivenBack::Freed);
        assert_eq!(futures_poll(&mut high[0].1), Some(Ending::Granted));
        assert!(waits
            .iter_mut()
            .all(|(_, wait)| futures_poll(wait).is_none()));
        threads::set_current(0);
    }

    #[test]
    fn a_thread_holding_no_slot_is_served_by_the_next_slot_freed_anywhere() {
        // One slot, held by thread 1; thread 2 waits first, then thread 1 again and again.
        let slots = PrioritySlots::new(1, 2, Keeping::ForItsThread);
        let deadline = far();
        threads::set_current(1);
        assert!(slots.try_take());
        let mut waits: Vec<(usize, Pin<Box<Wait<'_>>>)> = Vec::new();
        for thread in [2, 1, 1, 2] {
            threads::set_current(thread);
            waits.push((thread, Box::pin(slots.enqueue(Priority::Normal, deadline))));
        }
        // Each freeing thread then holds none, as does the other: the one listed first is served,
        // so the single slot alternates rather than staying with thread 1.
        let mut served = Vec::new();
        let mut holder = 1;
        for _ in 0..4 {
            threads::set_current(holder);
            holder = give_back_one_to(&slots, &mut waits);
            served.push(holder);
        }
        assert_eq!(served, [2, 1, 1, 2]);
        threads::set_current(0);
    }

    /// Gives back a slot the calling thread holds and returns the thread of the waiter served.
    fn give_back_one_to(
        slots: &PrioritySlots,
        waits: &mut Vec<(usize, Pin<Box<Wait<'_>>>)>,
    ) -> usize {
        assert_eq!(slots.give_back(), GivenBack::Freed);
        give_back_one_to_waiting(waits)
    }

    /// The thread of the one waiter served, taken off `waits`.
    fn give_back_one_to_waiting(waits: &mut Vec<(usize, Pin<Box<Wait<'_>>>)>) -> usize {
        let granted = waits
            .iter_mut()
            .position(|(_, wait)| futures_poll(wait) == Some(Ending::Granted))
            .expect("one waiter granted per freed slot");
        waits.remove(granted).0
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
