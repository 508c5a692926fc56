//! A pool's slots split over the serving threads, so that a request's slot, its queue and its
//! connection stay on the thread that serves the request.
//!
//! With one pool's slots and queue shared by every serving thread, a slot freed on one thread
//! often goes to a request waiting on the other: its connection moves between reactors (two
//! `epoll_ctl`) and the other thread is woken (an `eventfd` write), 0.34 and 0.14 times per request
//! at 64 connections on this 2-core machine. Pools of `n/2` per thread with nothing shared served
//! 1.057 and 1.068 times the requests per CPU-second (20 pairs each, an experiment that could not
//! serve one thread's load with the whole pool).
//!
//! Here each serving thread has a lane: the slots it owns (free, or held by its requests) and a
//! queue of its own. The pool's limit and its count of open connections stay global, so `n` is
//! exact whatever the lanes own, and the slots only move between lanes, never appear. They move
//! as the load between threads shifts, and not while it holds steady:
//! - a starved lane (owning none, or under half its share of the limit, `limit / lanes`) takes a
//!   free slot of a lane where nobody waits rather than queue; so does a high-priority request;
//! - a slot freed on a lane above its share goes to a starved lane whose requests wait
//!   ([`Lanes::release`]), and any freed slot to another lane's high-priority request if one
//!   waits and none of its own lane's does, so high still goes before normal across the pool;
//! - under a steady uneven load (three HTTP/2 connections on one thread, two on the other) the
//!   slots follow the waiting requests, at most one slot per [`LOOK_EVERY`] ([`Lanes::rebalance`],
//!   called by the pool's queue task): with equal shares, the busier thread's requests wait longer
//!   (HTTP/2 p99 9.8 -> 14.9 ms, measured);
//! - a slot freed on a lane whose next request has waited less than [`OLDER_BY`] goes to another
//!   lane whose next one began waiting at least [`OLDER_BY`] earlier, at most one slot per
//!   [`OLDER_BY`] ([`Lanes::waited_longer`]): each lane's queue fluctuates on its own, and
//!   without this the tail of the waits grew with the lanes;
//! - free slots of a lane that used none of its slots for [`LEND_AFTER`] while another lane's
//!   requests waited go to that lane ([`Lanes::lend_idle`], called by the pool's queue task): all of a thread's load on one
//!   HTTP/2 connection gets the whole pool within a few tens of milliseconds.
//!
//! Moving slots eagerly gives the gain back, measured: taking another lane's free slot whenever
//! one is free read 0.984 of the shared pool; lending free slots unused for 1 ms, with the queue
//! task woken whenever a slot went free on one lane while the other's requests waited, read 1.000
//! (still 0.22 `epoll_ctl` and 0.11 wake-ups per request). Under even load a lane's free slot sits
//! there for microseconds to milliseconds, until its own next requests, and lending it moves a
//! connection to the other thread and, once the other lane is below its share, back. So did
//! lending slots that were merely free at two looks: with 32 connections per process, over 200
//! slots a second went back and forth, at 0.94 of the requests per CPU-second of a split that never
//! moves one; lending only slots unused between looks at least [`LEND_AFTER`] apart moved none
//! under that load.
//!
//! With fewer than two slots per serving thread there is one lane, as with a single thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::limit::Slots;
use super::pipeline::Rider;
use super::ranked::{deadline_micros, Ending, PrioritySlots, Wait};
use crate::table::Priority;
use crate::threads;

/// How long free slots must sit unused on one lane, while another lane's requests wait, before
/// they move to it.
pub(crate) const LEND_AFTER: Duration = Duration::from_millis(10);

/// How often the pool's queue task looks for unused slots while requests wait, besides when the
/// first request of a lane queues while another lane has free slots: a lane whose load stops
/// while the other's queue never empties has its slots lent within this (and [`LEND_AFTER`]).
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How much longer another lane's next request must have waited than the releasing lane's for
/// the freed slot to go to it, how long the releasing lane's may have waited at most (it keeps
/// up), and how often a slot may go so (see [`Lanes::waited_longer`]).
pub(crate) const OLDER_BY: Duration = Duration::from_millis(2);

/// A lane per serving thread, up to one per bit of the mask of lanes below their share.
const MAX_LANES: usize = usize::BITS as usize;

#[derive(Debug)]
pub(crate) struct Lanes {
    lanes: Box<[Lane]>,
    /// Lanes (bit per lane) whose requests queued while the lane owned fewer than its share: a
    /// slot freed on a lane above its share goes to one of them. Written only when that changes,
    /// so the check on every release reads a line nobody writes.
    needy: AtomicUsize,
    /// High-priority requests waiting in any lane; written only by high traffic that queues.
    high_waiting: AtomicUsize,
    /// A slot move [`Lanes::rebalance`] decided, made by the giving lane's next release: encoded
    /// as `(to + 1) * MAX_LANES + from`, 0 for none.
    moving: AtomicUsize,
    /// The queue task looks again within [`LEND_AFTER`]: a request that queues need not wake it.
    looking: AtomicBool,
    /// Every wait's timeout: a wait's deadline less this is when it began.
    queue_timeout: Duration,
    /// When [`Lanes::waited_longer`] last handed a slot over, on the deadlines' scale (see
    /// `ranked::deadline_micros`); written only then.
    handed_over: AtomicU64,
}

#[derive(Debug)]
#[repr(align(128))]
struct Lane {
    slots: PrioritySlots,
    /// Slots this lane owns: its free ones and the ones its requests hold. Decides only where
    /// slots move; the slots themselves are counted by `slots` and the requests holding them.
    owned: AtomicUsize,
    /// Slots its requests gave back, ever: unchanged between two looks of the queue task, the
    /// lane used none of its free slots meanwhile.
    released: AtomicUsize,
}

/// What the queue task saw at the look it judges unused slots against: when it was, and for each
/// lane with free slots nobody waited for, how many slots the lane had given back by then.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    at: Option<Instant>,
    released: Vec<Option<usize>>,
}

impl Lanes {
    /// `size` slots over `threads` serving threads (one lane unless each gets two), for requests
    /// that wait at most `queue_timeout`.
    pub(crate) fn new(size: usize, threads: usize, queue_timeout: Duration) -> Lanes {
        let count = if threads >= 2 && size >= 2 * threads {
            threads.min(MAX_LANES)
        } else {
            1
        };
        let lanes = (0..count)
            .map(|lane| {
                let owned = size / count + usize::from(lane < size % count);
                Lane {
                    slots: PrioritySlots::new(owned),
                    owned: AtomicUsize::new(owned),
                    released: AtomicUsize::new(0),
                }
            })
            .collect();
        Lanes {
            lanes,
            needy: AtomicUsize::new(0),
            high_waiting: AtomicUsize::new(0),
            moving: AtomicUsize::new(0),
            looking: AtomicBool::new(false),
            queue_timeout,
            handed_over: AtomicU64::new(0),
        }
    }

    /// The lane of the calling thread.
    pub(crate) fn current(&self) -> usize {
        threads::current() % self.lanes.len()
    }

    /// Every lane's queue.
    pub(crate) fn queues(&self) -> impl Iterator<Item = &PrioritySlots> {
        self.lanes.iter().map(|lane| &lane.slots)
    }

    /// Takes a free slot for a request on `lane`: one of its own, else another lane's if `lane`
    /// owns too few or the request is high priority (see the module's rules). `limit`: the pool's
    /// limit in force.
    pub(crate) fn try_take(&self, lane: usize, priority: Priority, limit: usize) -> bool {
        let home = &self.lanes[lane];
        if home.slots.try_take() {
            return true;
        }
        if self.lanes.len() == 1 {
            return false;
        }
        if priority != Priority::High && !self.starved(home, limit) {
            return false;
        }
        let taken = self.others(lane).find(|&from| {
            let other = &self.lanes[from];
            other.slots.waiting() == 0 && other.slots.try_take()
        });
        taken.inspect(|&from| self.transfer(from, lane)).is_some()
    }

    /// A free slot of any lane, for work off the serving threads (refill, health checks); returns
    /// its lane, which it is given back to.
    pub(crate) fn try_take_any(&self) -> Option<usize> {
        let first = self.current();
        (0..self.lanes.len())
            .map(|offset| (first + offset) % self.lanes.len())
            .find(|&lane| self.lanes[lane].slots.try_take())
    }

    /// Lists a request of `lane` that found no free slot (see [`PrioritySlots::enqueue`]). Returns
    /// the wait, and whether another lane has free slots nobody there waits for while the queue
    /// task is not already looking at them: the caller wakes it, to look now and again after
    /// [`LEND_AFTER`].
    #[cfg(test)]
    pub(crate) fn enqueue(
        &self,
        lane: usize,
        priority: Priority,
        deadline: Instant,
        limit: usize,
    ) -> (LaneWait<'_>, bool) {
        self.enqueue_rider(lane, priority, deadline, limit, None)
    }

    /// [`Self::enqueue`] for a request that may also ride (see `pipeline`).
    pub(crate) fn enqueue_rider(
        &self,
        lane: usize,
        priority: Priority,
        deadline: Instant,
        limit: usize,
        rider: Option<Arc<Rider>>,
    ) -> (LaneWait<'_>, bool) {
        let home = &self.lanes[lane];
        let high = (priority == Priority::High && self.lanes.len() > 1).then(|| {
            self.high_waiting.fetch_add(1, Ordering::AcqRel);
            &self.high_waiting
        });
        let wait = LaneWait {
            wait: home.slots.enqueue_rider(priority, deadline, rider),
            high,
        };
        // Looked at by the first waiter only: under steady load a lane's queue is rarely empty,
        // and the look reads the other lanes' hot lines.
        let first = self.lanes.len() > 1 && home.slots.waiting() == 1;
        if first && self.starved(home, limit) {
            self.needy.fetch_or(1 << lane, Ordering::AcqRel);
        }
        let lendable = first
            && self.others(lane).any(|other| self.has_idle_slots(other))
            && !self.looking.swap(true, Ordering::AcqRel);
        (wait, lendable)
    }

    /// The first request of `lane`'s queue that may ride behind a holder's (see `pipeline`), taken
    /// off the queue, unless the slot is owed elsewhere ([`Self::owes_slot`]).
    pub(crate) fn take_rider(&self, lane: usize, limit: usize) -> Option<Arc<Rider>> {
        if self.owes_slot(lane, limit) {
            return None;
        }
        self.lanes[lane].slots.take_rider()
    }

    /// Whether a slot of `lane` should go back through [`Self::release`] rather than pass to a
    /// rider: a slot that passes from request to request is never released, so the moves that
    /// keep the lanes' waits alike would never happen (at 512 connections one lane's requests
    /// waited 8 times as long at the 99th percentile). True when `release` might move it: a move
    /// decided for it, a high request waiting elsewhere, a starved lane while this one owns more
    /// than its share, or another lane's next request waiting [`OLDER_BY`] longer than this one's.
    fn owes_slot(&self, lane: usize, limit: usize) -> bool {
        if self.lanes.len() == 1 {
            return false;
        }
        let moving = self.moving.load(Ordering::Acquire);
        if moving != 0 && moving % MAX_LANES == lane {
            return true;
        }
        if self.high_waiting.load(Ordering::Acquire) > 0 {
            return true;
        }
        let needy = self.needy.load(Ordering::Acquire) & !(1 << lane);
        if needy != 0 && self.lanes[lane].owned.load(Ordering::Relaxed) > self.share(limit) {
            return true;
        }
        let mine = self.lanes[lane].slots.first_deadline();
        let margin = OLDER_BY.as_micros() as u64;
        self.others(lane).any(|other| {
            let theirs = self.lanes[other].slots.first_deadline();
            theirs != 0 && theirs.saturating_add(margin) < mine
        })
    }

    /// A slot held by a request of `lane` is given back: to a lane below its share whose requests
    /// wait, if `lane` owns more than its share, else to `lane`'s own queue or free slots. (Whether
    /// it then sits unused is left to the queue task's looks: waking it from here, on every slot
    /// that went free while another lane waited, cost what the lanes save.)
    pub(crate) fn release(&self, lane: usize, limit: usize) {
        let home = &self.lanes[lane];
        if self.lanes.len() == 1 {
            home.slots.free(1);
            return;
        }
        home.released.fetch_add(1, Ordering::Relaxed);
        let moving = self.moving.load(Ordering::Acquire);
        if moving % MAX_LANES == lane
            && moving != 0
            && self
                .moving
                .compare_exchange(moving, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let to = moving / MAX_LANES - 1;
            self.transfer(lane, to);
            self.lanes[to].slots.free(1);
            return;
        }
        if self.high_waiting.load(Ordering::Acquire) > 0 && !home.slots.waits_at(Priority::High) {
            let high = self
                .others(lane)
                .find(|&other| self.lanes[other].slots.waits_at(Priority::High));
            if let Some(to) = high {
                self.transfer(lane, to);
                self.lanes[to].slots.free(1);
                return;
            }
        }
        let needy = self.needy.load(Ordering::Acquire) & !(1 << lane);
        if needy != 0 && home.owned.load(Ordering::Relaxed) > self.share(limit) {
            let to = needy.trailing_zeros() as usize;
            self.transfer(lane, to);
            if !self.starved(&self.lanes[to], limit) {
                self.needy.fetch_and(!(1 << to), Ordering::AcqRel);
            }
            // Giving it may leave this lane's own waiters starved in turn.
            if home.slots.waiting() > 0 && self.starved(home, limit) {
                self.needy.fetch_or(1 << lane, Ordering::AcqRel);
            }
            self.lanes[to].slots.free(1);
            return;
        }
        if let Some(to) = self.waited_longer(lane) {
            self.transfer(lane, to);
            self.lanes[to].slots.free(1);
            return;
        }
        home.slots.free(1);
    }

    /// The lane whose next request has waited longest, if it began waiting at least
    /// [`OLDER_BY`] before `lane`'s next one while that one has waited less than [`OLDER_BY`] (this
    /// lane keeps up, the other does not), and no slot was handed over so within the last
    /// [`OLDER_BY`]: a slot freed on `lane` goes there instead. With each lane's requests served
    /// by its own slots only, a lane's queue fluctuates on its own and its waits' tail grows (p99
    /// at 64 connections 4.64 -> 5.98 ms when the lanes came). Each slot that moves moves its
    /// connection to the other thread's reactor, and while that thread is busy the connection
    /// waits for it: the margin keeps the slots where they are while the lanes' waits are alike,
    /// and slots stay put while both lanes' queues are deep (at 512 connections, moving them
    /// whenever one lane's next request had waited the margin longer served 0.945 of the
    /// requests, 8 pairs); the pace bounds the moves whatever the load.
    fn waited_longer(&self, lane: usize) -> Option<usize> {
        let mine = self.lanes[lane].slots.first_deadline();
        if mine == 0 {
            return None;
        }
        let (to, theirs) = self
            .others(lane)
            .map(|other| (other, self.lanes[other].slots.first_deadline()))
            .filter(|&(_, theirs)| theirs != 0)
            .min_by_key(|&(_, theirs)| theirs)?;
        let margin = OLDER_BY.as_micros() as u64;
        if theirs.saturating_add(margin) >= mine {
            return None;
        }
        // On the deadlines' scale: a request queued now would have `now`'s deadline.
        let now = deadline_micros(Instant::now() + self.queue_timeout);
        if now.saturating_sub(mine) >= margin {
            return None;
        }
        let last = self.handed_over.load(Ordering::Relaxed);
        if now < last.saturating_add(margin)
            || self
                .handed_over
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        Some(to)
    }

    /// More than one lane: slots may move between them.
    pub(crate) fn several(&self) -> bool {
        self.lanes.len() > 1
    }

    /// A slot held by a request of `lane` went to pay a lowered limit's debt: `lane` owns one
    /// fewer.
    pub(crate) fn forfeit(&self, lane: usize) {
        decrement(&self.lanes[lane].owned);
    }

    /// Moves free slots to lanes whose requests wait, from lanes where nobody waits and that gave
    /// back no slot since a look at least [`LEND_AFTER`] ago (`seen`, updated here): free slots
    /// that sat unused all that time. Returns when to look again, if a lane has free slots
    /// nobody waits for; until then a request that queues does not wake the queue task.
    ///
    /// Free slots at two looks are not enough: under a load that merely fluctuates, a busy
    /// lane often has a free slot at both instants, and lending it moves its connection to the
    /// other thread and, a moment later, back (measured: 0.066 `epoll_ctl` and 0.062 wake-ups
    /// per request with 32 connections per process, where a pool per thread had none). Nor are
    /// two looks close together: the task also looks when a request queues.
    pub(crate) fn lend_idle(&self, seen: &mut Seen, now: Instant) -> Option<Instant> {
        if self.lanes.len() == 1 {
            return None;
        }
        let waiting = self.mask(|lane| lane.slots.waiting() > 0);
        if waiting == 0 {
            *seen = Seen::default();
            self.looking.store(false, Ordering::Release);
            return None;
        }
        if let Some(judged) = seen
            .at
            .map(|at| at + LEND_AFTER)
            .filter(|&judged| now < judged)
        {
            return Some(judged);
        }
        seen.released.resize(self.lanes.len(), None);
        let mut takers = Bits(waiting).cycle();
        let mut idle_left = false;
        for (from, lane) in self.lanes.iter().enumerate() {
            let idle = lane.slots.waiting() == 0 && lane.slots.available() > 0;
            let released = lane.released.load(Ordering::Relaxed);
            let unused = idle && seen.released[from] == Some(released);
            seen.released[from] = (idle && !unused).then_some(released);
            idle_left |= idle && !unused;
            while unused && lane.slots.try_take() {
                let to = takers.next().expect("some lane waits");
                self.transfer(from, to);
                self.lanes[to].slots.free(1);
            }
        }
        seen.at = Some(now);
        self.looking.store(idle_left, Ordering::Release);
        idle_left.then_some(now + LEND_AFTER)
    }

    /// Lanes with free slots and nobody waiting, while another lane's requests wait.
    fn has_idle_slots(&self, lane: usize) -> bool {
        let lane = &self.lanes[lane];
        lane.slots.waiting() == 0 && lane.slots.available() > 0
    }

    /// Each lane's fair part of `limit`, rounded down (so that an odd limit moves no slot back
    /// and forth).
    fn share(&self, limit: usize) -> usize {
        limit / self.lanes.len()
    }

    /// Whether `lane` owns none, or fewer than half its share: it gets slots at once rather than
    /// a slot per look. With a limit below the number of lanes (slow start ramps from one slot)
    /// the lanes that own none take turns with the ones that do, rather than wait for slots those
    /// never leave free.
    fn starved(&self, lane: &Lane, limit: usize) -> bool {
        lane.owned.load(Ordering::Relaxed) < (self.share(limit) / 2).max(1)
    }

    /// Decides one slot's move toward the lane whose requests wait most per slot it owns, from
    /// the lane (owning two or more) where they wait least, when the first waits half as much
    /// again per slot or more; the giving lane's next release makes it. A decision its giver did
    /// not make by the next look is dropped (its requests may be stuck).
    pub(crate) fn rebalance(&self) {
        if self.lanes.len() == 1 || self.moving.swap(0, Ordering::AcqRel) != 0 {
            return;
        }
        let load = |index: usize| {
            let lane = &self.lanes[index];
            (lane.slots.waiting(), lane.owned.load(Ordering::Relaxed))
        };
        // Requests waiting per slot owned, `a`'s against `b`'s: wa / oa against wb / ob,
        // cross-multiplied. Ties go to the lower index.
        let per_slot = |a: usize, b: usize| {
            let ((wa, oa), (wb, ob)) = (load(a), load(b));
            (wa * ob).cmp(&(wb * oa))
        };
        let Some(to) = (0..self.lanes.len())
            .filter(|&index| load(index).0 > 0)
            .min_by(|&a, &b| per_slot(b, a))
        else {
            return;
        };
        let Some(from) = (0..self.lanes.len())
            .filter(|&index| index != to && load(index).1 >= 2)
            .min_by(|&a, &b| per_slot(a, b))
        else {
            return;
        };
        let ((wt, ot), (wf, of)) = (load(to), load(from));
        if 2 * wt * of > 3 * wf * ot {
            self.moving
                .store((to + 1) * MAX_LANES + from, Ordering::Release);
        }
    }

    fn transfer(&self, from: usize, to: usize) {
        decrement(&self.lanes[from].owned);
        self.lanes[to].owned.fetch_add(1, Ordering::Relaxed);
    }

    fn others(&self, lane: usize) -> impl Iterator<Item = usize> + '_ {
        (1..self.lanes.len()).map(move |offset| (lane + offset) % self.lanes.len())
    }

    fn mask(&self, pick: impl Fn(&Lane) -> bool) -> usize {
        self.lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| pick(lane))
            .fold(0, |mask, (index, _)| mask | 1 << index)
    }
}

/// Moves the whole pool's free slots as its [`SlotLimit`](super::limit::SlotLimit) changes: new
/// slots go to the lanes owning fewest, removed ones come from any lane that has one free.
impl Slots for Lanes {
    fn free(&self, n: usize) {
        for _ in 0..n {
            let poorest = (0..self.lanes.len())
                .min_by_key(|&lane| self.lanes[lane].owned.load(Ordering::Relaxed))
                .expect("a pool has a lane");
            self.lanes[poorest].owned.fetch_add(1, Ordering::Relaxed);
            self.lanes[poorest].slots.free(1);
        }
    }

    fn try_take(&self) -> bool {
        self.try_take_any()
            .inspect(|&lane| decrement(&self.lanes[lane].owned))
            .is_some()
    }

    fn available(&self) -> usize {
        self.lanes.iter().map(|lane| lane.slots.available()).sum()
    }
}

/// A request's wait in its lane's queue; a high-priority one is counted in
/// [`Lanes::high_waiting`] until it ends.
#[derive(Debug)]
pub(crate) struct LaneWait<'a> {
    wait: Wait<'a>,
    high: Option<&'a AtomicUsize>,
}

impl Future for LaneWait<'_> {
    type Output = Ending;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ending> {
        Pin::new(&mut self.wait).poll(cx)
    }
}

impl Drop for LaneWait<'_> {
    fn drop(&mut self) {
        if let Some(high_waiting) = self.high {
            high_waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One fewer, never below zero (the counts only steer where slots go).
fn decrement(count: &AtomicUsize) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// The set bits of a mask, lowest first.
#[derive(Clone, Copy)]
struct Bits(usize);

impl Iterator for Bits {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How `wait` ended, failing the test rather than hanging it if it never does.
    async fn within_a_second(wait: impl Future<Output = Ending>) -> Ending {
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("the wait ends")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn far() -> Instant {
        Instant::now() + HOUR
    }

    /// The deadline of a request that began waiting `ago` (the lanes' timeout is an hour).
    fn began(ago: Duration) -> Instant {
        far() - ago
    }

    /// Every lane's requests hold all of its slots; `limit`: the pool's.
    fn hold_every_slot(lanes: &Lanes, limit: usize) {
        for (lane, owns) in owned(lanes).into_iter().enumerate() {
            for _ in 0..owns {
                assert!(lanes.try_take(lane, Priority::Normal, limit));
            }
        }
    }

    fn owned(lanes: &Lanes) -> Vec<usize> {
        lanes
            .lanes
            .iter()
            .map(|lane| lane.owned.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn slots_split_evenly_and_fewer_than_two_per_thread_make_one_lane() {
        assert_eq!(owned(&Lanes::new(8, 2, HOUR)), [4, 4]);
        assert_eq!(owned(&Lanes::new(7, 2, HOUR)), [4, 3]);
        assert_eq!(owned(&Lanes::new(3, 2, HOUR)), [3]);
        assert_eq!(owned(&Lanes::new(8, 1, HOUR)), [8]);
    }

    #[test]
    fn a_lane_at_its_share_keeps_to_its_own_slots_but_a_high_request_borrows() {
        let lanes = Lanes::new(4, 2, HOUR);
        assert!(lanes.try_take(0, Priority::Normal, 4));
        assert!(lanes.try_take(0, Priority::Normal, 4));
        assert!(
            !lanes.try_take(0, Priority::Normal, 4),
            "at its share of 2: it queues rather than take lane 1's"
        );
        assert!(lanes.try_take(0, Priority::High, 4));
        assert_eq!(
            owned(&lanes),
            [3, 1],
            "the slot moved with the high request"
        );
        assert_eq!(lanes.available(), 1);
    }

    #[test]
    fn a_lane_below_its_share_borrows_a_free_slot_where_nobody_waits() {
        let lanes = Lanes::new(4, 2, HOUR);
        // Lane 1 lent both of its slots to lane 0 (one HTTP/2 connection's load, say).
        lanes.transfer(1, 0);
        lanes.transfer(1, 0);
        assert!(lanes.lanes[1].slots.try_take() && lanes.lanes[1].slots.try_take());
        lanes.lanes[0].slots.free(2);
        assert!(
            lanes.try_take(1, Priority::Normal, 4),
            "owning none, it takes one"
        );
        assert_eq!(owned(&lanes), [3, 1]);
    }

    #[tokio::test]
    async fn a_slot_given_back_above_the_share_goes_to_a_starved_lane_that_waits() {
        let lanes = Lanes::new(4, 2, HOUR);
        // Lane 0 holds all four slots (it borrowed lane 1's), and lane 1's request waits.
        for _ in 0..2 {
            assert!(lanes.try_take(0, Priority::Normal, 4));
        }
        lanes.transfer(1, 0);
        lanes.transfer(1, 0);
        assert!(lanes.lanes[1].slots.try_take() && lanes.lanes[1].slots.try_take());
        let (wait, lendable) = lanes.enqueue(1, Priority::Normal, far(), 4);
        assert!(!lendable, "no lane has a free slot");
        assert_eq!(lanes.needy.load(Ordering::Relaxed), 0b10);
        lanes.release(0, 4);
        assert_eq!(within_a_second(wait).await, Ending::Granted);
        assert_eq!(owned(&lanes), [3, 1]);
        assert_eq!(
            lanes.needy.load(Ordering::Relaxed),
            0,
            "one slot of a share of two: no longer starved"
        );
    }

    #[tokio::test]
    async fn free_slots_unused_between_two_looks_go_to_the_lane_that_waits() {
        let lanes = Lanes::new(4, 2, HOUR);
        for _ in 0..2 {
            assert!(lanes.try_take(0, Priority::Normal, 4));
        }
        let (wait, lendable) = lanes.enqueue(0, Priority::Normal, far(), 4);
        assert!(lendable, "lane 1 has two free slots and nobody waiting");
        let mut seen = Seen::default();
        let now = Instant::now();
        assert_eq!(
            lanes.lend_idle(&mut seen, now),
            Some(now + LEND_AFTER),
            "seen once: not lent yet"
        );
        assert_eq!(owned(&lanes), [2, 2]);
        let (_other, lendable) = lanes.enqueue(0, Priority::Normal, far(), 4);
        assert!(!lendable, "the queue task looks again anyway: no wake-up");
        let soon = now + LEND_AFTER / 2;
        assert_eq!(lanes.lend_idle(&mut seen, soon), Some(now + LEND_AFTER));
        assert_eq!(owned(&lanes), [2, 2], "too soon to call them unused");
        assert_eq!(lanes.lend_idle(&mut seen, now + LEND_AFTER), None);
        assert_eq!(within_a_second(wait).await, Ending::Granted);
        assert_eq!(owned(&lanes), [4, 0], "both went, one to each waiter");
        assert_eq!(lanes.available(), 0);
    }

    #[tokio::test]
    async fn free_slots_of_a_lane_that_used_one_since_the_last_look_stay() {
        let lanes = Lanes::new(4, 2, HOUR);
        for _ in 0..2 {
            assert!(lanes.try_take(0, Priority::Normal, 4));
        }
        let (wait, _) = lanes.enqueue(0, Priority::Normal, far(), 4);
        let mut seen = Seen::default();
        let now = Instant::now();
        assert!(lanes.lend_idle(&mut seen, now).is_some());
        // Lane 1 serves a request between the looks: a free slot at both, but not unused.
        assert!(lanes.try_take(1, Priority::Normal, 4));
        lanes.release(1, 4);
        let later = now + LEND_AFTER;
        assert!(
            lanes.lend_idle(&mut seen, later).is_some(),
            "still free: looked at again"
        );
        assert_eq!(owned(&lanes), [2, 2]);
        assert!(
            lanes.lend_idle(&mut seen, later + LEND_AFTER).is_none(),
            "unused since the last look: lent"
        );
        assert_eq!(within_a_second(wait).await, Ending::Granted);
        assert_eq!(owned(&lanes), [4, 0]);
    }

    /// A slot that would pass to a rider is never released, so it never moves to the lane whose
    /// requests waited longer: a holder on the lane that keeps up takes no rider while another
    /// lane's next request has waited the margin longer (at 512 connections, without this, the
    /// pipelined p99 was 816 ms against 103 ms unpipelined).
    #[tokio::test]
    async fn a_slot_owed_to_a_lane_that_waited_longer_takes_no_rider() {
        let lanes = Lanes::new(4, 2, HOUR);
        hold_every_slot(&lanes, 4);
        let ms = Duration::from_millis;
        let rider = || Some(Rider::new(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"));
        let (older, _) = lanes.enqueue_rider(1, Priority::Normal, began(ms(10)), 4, rider());
        let (newer, _) = lanes.enqueue_rider(0, Priority::Normal, began(ms(1)), 4, rider());
        assert!(
            lanes.take_rider(0, 4).is_none(),
            "lane 1's request has waited 10 ms, lane 0's 1 ms: the slot goes back through release"
        );
        assert!(lanes.take_rider(1, 4).is_some());
        assert_eq!(within_a_second(older).await, Ending::Riding);
        // Nobody waits on lane 1 any more: lane 0's holder takes its own rider.
        assert!(lanes.take_rider(0, 4).is_some());
        assert_eq!(within_a_second(newer).await, Ending::Riding);
    }

    // The clock stands still: the pace's bound cannot pass between the steps on a slow machine.
    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_lane_whose_next_request_waited_longer_at_a_bounded_pace() {
        let lanes = Lanes::new(4, 2, HOUR);
        hold_every_slot(&lanes, 4);
        let ms = Duration::from_millis;
        let (older, _) = lanes.enqueue(1, Priority::Normal, began(ms(10)), 4);
        let (newer, _) = lanes.enqueue(0, Priority::Normal, began(ms(1)), 4);
        lanes.release(0, 4);
        assert_eq!(
            within_a_second(older).await,
            Ending::Granted,
            "lane 1's request has waited 10 ms, lane 0's 1 ms"
        );
        assert_eq!(owned(&lanes), [1, 3]);
        // Within the margin of lane 0's next: the slot stays on lane 0.
        let (alike, _) = lanes.enqueue(1, Priority::Normal, began(ms(1) + OLDER_BY / 2), 4);
        lanes.release(0, 4);
        assert_eq!(within_a_second(newer).await, Ending::Granted);
        assert_eq!(owned(&lanes), [1, 3]);
        drop(alike);
        // Beyond the margin again, but a slot was handed over less than a margin ago: stays.
        let (_deep, _) = lanes.enqueue(1, Priority::Normal, began(ms(12)), 4);
        let (mine, _) = lanes.enqueue(0, Priority::Normal, began(ms(1)), 4);
        lanes.release(0, 4);
        assert_eq!(within_a_second(mine).await, Ending::Granted);
        assert_eq!(owned(&lanes), [1, 3]);
        // Past the pace, but this lane's next request has waited the margin too: both lanes'
        // queues are deep, and the slot stays.
        tokio::time::advance(2 * OLDER_BY).await;
        let (deep_too, _) = lanes.enqueue(0, Priority::Normal, began(ms(7)), 4);
        lanes.release(0, 4);
        assert_eq!(within_a_second(deep_too).await, Ending::Granted);
        assert_eq!(owned(&lanes), [1, 3]);
        assert_eq!(lanes.lanes[1].slots.waiting(), 1);
    }

    #[tokio::test]
    async fn with_a_limit_below_the_lanes_count_they_take_turns_with_the_one_slot() {
        let lanes = Lanes::new(4, 2, HOUR);
        // The limit drops to 1: three free slots go, and one lane owns the one left.
        for _ in 0..3 {
            assert!(Slots::try_take(&lanes));
        }
        let holder = (0..2)
            .find(|&lane| lanes.lanes[lane].owned.load(Ordering::Relaxed) == 1)
            .unwrap();
        let other = 1 - holder;
        assert!(lanes.try_take(holder, Priority::Normal, 1));
        assert!(!lanes.try_take(other, Priority::Normal, 1), "busy");
        let (other_waits, _) = lanes.enqueue(other, Priority::Normal, far(), 1);
        let (holder_waits, _) = lanes.enqueue(holder, Priority::Normal, far(), 1);
        // Given back, it goes to the lane that owns none, though the holder's lane waits too...
        lanes.release(holder, 1);
        assert_eq!(within_a_second(other_waits).await, Ending::Granted);
        // ...and back again when that one is done.
        lanes.release(other, 1);
        assert_eq!(within_a_second(holder_waits).await, Ending::Granted);
        assert_eq!(owned(&lanes)[holder], 1);
        assert_eq!(owned(&lanes)[other], 0);
    }

    #[tokio::test]
    async fn a_slot_freed_on_one_lane_goes_to_a_high_request_waiting_on_another() {
        let lanes = Lanes::new(4, 2, HOUR);
        // Every slot is held (lane 1's too), and both lanes have requests waiting.
        hold_every_slot(&lanes, 4);
        let (normal, _) = lanes.enqueue(0, Priority::Normal, far(), 4);
        let (high, _) = lanes.enqueue(1, Priority::High, far(), 4);
        assert_eq!(lanes.high_waiting.load(Ordering::Relaxed), 1);
        lanes.release(0, 4);
        assert_eq!(
            within_a_second(high).await,
            Ending::Granted,
            "high before normal, across lanes"
        );
        assert_eq!(owned(&lanes), [1, 3]);
        assert_eq!(lanes.high_waiting.load(Ordering::Relaxed), 0, "counted out");
        // With no high request waiting, a freed slot serves its own lane's queue.
        lanes.release(0, 4);
        assert_eq!(within_a_second(normal).await, Ending::Granted);
    }

    #[tokio::test]
    async fn slots_follow_the_waiting_requests_a_slot_per_look() {
        let lanes = Lanes::new(8, 2, HOUR);
        hold_every_slot(&lanes, 8);
        // Six wait on lane 0, one on lane 1: 1.5 per slot against 0.25.
        let mut busy: Vec<_> = (0..6)
            .map(|_| lanes.enqueue(0, Priority::Normal, far(), 8).0)
            .collect();
        let (quiet, _) = lanes.enqueue(1, Priority::Normal, far(), 8);
        lanes.rebalance();
        lanes.release(1, 8);
        assert_eq!(
            within_a_second(busy.remove(0)).await,
            Ending::Granted,
            "lane 1 gave its slot"
        );
        assert_eq!(owned(&lanes), [5, 3]);
        // Four of lane 0's leave: one per five slots against one per three is not half as much
        // again, so the next release serves its own lane.
        busy.truncate(1);
        lanes.rebalance();
        lanes.release(1, 8);
        assert_eq!(within_a_second(quiet).await, Ending::Granted);
        assert_eq!(owned(&lanes), [5, 3]);
    }

    #[test]
    fn limit_changes_add_to_the_poorest_lane_and_take_from_any_free_one() {
        let lanes = Lanes::new(4, 2, HOUR);
        assert!(lanes.try_take(0, Priority::Normal, 4));
        lanes.free(3);
        assert_eq!(owned(&lanes), [4, 3]);
        assert_eq!(lanes.available(), 6);
        for _ in 0..6 {
            assert!(Slots::try_take(&lanes));
        }
        assert!(!Slots::try_take(&lanes), "only the held slot is left");
        assert_eq!(owned(&lanes).iter().sum::<usize>(), 1);
    }
}
