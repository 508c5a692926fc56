//! How many of a pool's `n` slots may be used right now.
//!
//! `n` (`connections_per_server`) is the ceiling the config sets. Other parts of Juggler may hold a
//! pool below it for a while, each for its own reason, and each through a source of its own here:
//! a fleet coordinator (this instance's share of a fleet-wide `n`), the backend's protection (slow
//! start after it comes back, an adaptive limit from measured latency). The pool obeys the lowest.
//! One number bounds both requests in progress and open connections, so a lowered limit is a
//! promise to the backend, not only to the queue.
//!
//! The slots ([`Slots`]) can be freed and taken but not destroyed while a request holds one.
//! Lowering the limit therefore takes free slots away at once and records the rest as `debt`: a
//! busy slot given back while debt is owed pays it off instead of becoming free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Free slots as a [`SlotLimit`] moves them: a pool's slots (or its shared ones), which hand a
/// freed slot to the waiting request of the highest priority first (see `ranked`).
pub(crate) trait Slots {
    /// Frees `n` slots: to whoever waits for one, else as free ones.
    fn free(&self, n: usize);
    /// Takes a free slot, if there is one.
    fn try_take(&self) -> bool;
    /// Free slots right now.
    fn available(&self) -> usize;
}

/// Why a pool runs below its configured `n`; each source sets its own cap and the lowest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// This instance's share of a fleet-wide `n` (the fleet coordinator).
    FleetShare = 0,
    /// Slow start after a backend comes back, or the adaptive limit (backend protection).
    Protection = 1,
}

const SOURCES: usize = 2;

/// The usable slot count of one pool, kept in step with its free slots.
#[derive(Debug)]
pub(crate) struct SlotLimit {
    /// The configured `n`: no source raises the limit above it.
    ceiling: usize,
    /// Each source's cap (`usize::MAX` while it imposes none).
    caps: [AtomicUsize; SOURCES],
    /// The limit in force: `min(ceiling, caps)`, read on every connection opened.
    current: AtomicUsize,
    /// Slots owed back after a lowering that found too few free ones.
    debt: AtomicUsize,
    /// Serialises changes of the limit, so each one moves the slots from a known count.
    changing: Mutex<()>,
}

impl SlotLimit {
    pub(crate) fn new(ceiling: usize) -> SlotLimit {
        SlotLimit {
            ceiling,
            caps: [const { AtomicUsize::new(usize::MAX) }; SOURCES],
            current: AtomicUsize::new(ceiling),
            debt: AtomicUsize::new(0),
            changing: Mutex::new(()),
        }
    }

    /// The limit in force.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    /// The cap `source` imposes, if any.
    pub(crate) fn cap(&self, source: LimitSource) -> Option<usize> {
        let cap = self.caps[source as usize].load(Ordering::Acquire);
        (cap != usize::MAX).then_some(cap)
    }

    /// Sets `source`'s cap (`None` lifts it) and moves `slots`' free slots to the new limit.
    /// Returns the limit now in force.
    pub(crate) fn set(&self, source: LimitSource, cap: Option<usize>, slots: &impl Slots) -> usize {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        self.caps[source as usize].store(cap.unwrap_or(usize::MAX), Ordering::Release);
        let new = self
            .caps
            .iter()
            .map(|cap| cap.load(Ordering::Acquire))
            .fold(self.ceiling, usize::min);
        let old = self.current.swap(new, Ordering::AcqRel);
        if new > old {
            self.grow(new - old, slots);
        } else if new < old {
            self.shrink(old - new, slots);
        }
        new
    }

    /// Pays off debt first; only what is left becomes new free slots.
    fn grow(&self, by: usize, slots: &impl Slots) {
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                Some(debt.saturating_sub(by))
            })
            .unwrap_or(0);
        let new_permits = by - owed.min(by);
        if new_permits > 0 {
            slots.free(new_permits);
        }
    }

    /// Takes free slots away now; the ones held by requests are owed until given back.
    fn shrink(&self, by: usize, slots: &impl Slots) {
        let mut taken = 0;
        while taken < by && slots.try_take() {
            taken += 1;
        }
        if taken < by {
            self.debt.fetch_add(by - taken, Ordering::AcqRel);
        }
    }

    /// A slot given back: pays one slot of debt if any is owed (returns true), else frees it.
    pub(crate) fn give_back(&self, slots: &impl Slots) -> bool {
        let paid = self.pay_debt();
        if !paid {
            slots.free(1);
        }
        paid
    }

    /// A slot given back pays one slot of debt, if any is owed (returns whether); otherwise the
    /// caller frees it.
    pub(crate) fn pay_debt(&self) -> bool {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |debt| {
                debt.checked_sub(1)
            })
            .is_ok()
    }

    /// Whether requests still hold slots the limit no longer allows.
    pub(crate) fn owes(&self) -> bool {
        self.debt.load(Ordering::Acquire) > 0
    }

    /// Slots held by requests right now, given the free ones.
    pub(crate) fn busy(&self, slots: &impl Slots) -> usize {
        (self.current() + self.debt.load(Ordering::Acquire)).saturating_sub(slots.available())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ranked::PrioritySlots;
    use super::*;

    #[test]
    fn lowering_takes_free_permits_and_owes_the_busy_ones() {
        let slots = PrioritySlots::new(8);
        let limit = SlotLimit::new(8);
        // Six requests hold a slot each.
        for _ in 0..6 {
            assert!(slots.try_take());
        }
        assert_eq!(limit.set(LimitSource::FleetShare, Some(3), &slots), 3);
        assert_eq!(slots.available(), 0, "both free slots taken");
        assert_eq!(limit.busy(&slots), 6);
        // Three come back: they pay the debt of three.
        for _ in 0..3 {
            limit.give_back(&slots);
        }
        assert_eq!(slots.available(), 0);
        assert_eq!(limit.busy(&slots), 3);
        // The rest come back as free slots again, never more than the limit.
        for _ in 0..3 {
            limit.give_back(&slots);
        }
        assert_eq!(slots.available(), 3);
        assert_eq!(limit.busy(&slots), 0);
    }

    #[test]
    fn the_lowest_source_wins_and_nothing_exceeds_the_ceiling() {
        let slots = PrioritySlots::new(8);
        let limit = SlotLimit::new(8);
        assert_eq!(limit.set(LimitSource::Protection, Some(2), &slots), 2);
        assert_eq!(limit.set(LimitSource::FleetShare, Some(5), &slots), 2);
        assert_eq!(limit.set(LimitSource::Protection, None, &slots), 5);
        assert_eq!(slots.available(), 5);
        assert_eq!(limit.set(LimitSource::FleetShare, Some(100), &slots), 8);
        assert_eq!(slots.available(), 8);
        assert_eq!(limit.cap(LimitSource::FleetShare), Some(100));
        assert_eq!(limit.cap(LimitSource::Protection), None);
    }

    #[test]
    fn raising_while_owed_pays_the_debt_before_adding_permits() {
        let slots = PrioritySlots::new(4);
        let limit = SlotLimit::new(4);
        for _ in 0..4 {
            assert!(slots.try_take());
        }
        limit.set(LimitSource::FleetShare, Some(1), &slots); // owes 3
        limit.set(LimitSource::FleetShare, Some(2), &slots); // owes 2
        assert_eq!(slots.available(), 0);
        for _ in 0..4 {
            limit.give_back(&slots);
        }
        assert_eq!(slots.available(), 2);
    }
}
