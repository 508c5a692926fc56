//! The arithmetic of a fleet's shares, apart from etcd: what the members' records add up to, and
//! how many slots of each backend each live instance should hold given everyone's demand.
//!
//! Every instance computes the same targets from the same records, so none has to tell another
//! what to do: an instance above its target gives slots up (once their connections are closed),
//! one below it takes what is free. Only taking needs the transaction's check (`fits`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one instance records under its (short) lease: its share of each backend's `n`, by
/// backend id, and its recent demand, which the others read to decide who should hold what.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Slots per backend this instance may hold connections in.
    pub shares: Vec<usize>,
    /// Smoothed busy + queued requests per backend, in tenths (integers keep the value short).
    pub demand: Vec<u32>,
    /// Which process writes this record (random per process): an `--upgrade` successor takes the
    /// record over by writing its own, and the predecessor then leaves it alone.
    pub owner: u64,
}

/// What one instance records under its long lease: the slots per backend it keeps when it loses
/// etcd, which survive its short lease (see the module doc of `fleet`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FloorRecord {
    pub floors: Vec<usize>,
}

/// The fleet as read at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Live instances (their short lease holds), by name.
    pub members: BTreeMap<String, MemberRecord>,
    /// Fallback floors by instance name, live or not.
    pub floors: BTreeMap<String, FloorRecord>,
}

impl View {
    /// The sums every decision of a round needs, in one pass over the records: at 100 members
    /// and 1,000 backends, looking each member up per backend would cost every instance tens of
    /// milliseconds per change of any record.
    pub fn tally(&self, backends: usize) -> Tally<'_> {
        let mut counted = vec![0; backends];
        let mut orphaned = vec![0; backends];
        let floors_of = |name: &str| {
            self.floors
                .get(name)
                .map_or(&[][..], |floor| floor.floors.as_slice())
        };
        for (name, member) in &self.members {
            let floors = floors_of(name);
            for (backend, counted) in counted.iter_mut().enumerate() {
                *counted += held(&member.shares, floors, backend);
            }
        }
        for (_, floor) in self.orphans() {
            for (backend, (counted, orphaned)) in counted.iter_mut().zip(&mut orphaned).enumerate()
            {
                let slots = floor.floors.get(backend).copied().unwrap_or(0);
                *counted += slots;
                *orphaned += slots;
            }
        }
        Tally {
            view: self,
            counted,
            orphaned,
        }
    }

    /// Floors of instances that are not members (their short lease is gone, their floor's is
    /// not): nobody may take those slots yet.
    fn orphans(&self) -> impl Iterator<Item = (&String, &FloorRecord)> {
        self.floors
            .iter()
            .filter(|(name, _)| !self.members.contains_key(*name))
    }

    /// Slots of `backend` that `name` counts with (see [`Tally::used_by_others`]).
    fn held_by(&self, name: &str, backend: usize) -> usize {
        let shares = self
            .members
            .get(name)
            .map_or(&[][..], |member| member.shares.as_slice());
        let floors = self
            .floors
            .get(name)
            .map_or(&[][..], |floor| floor.floors.as_slice());
        held(shares, floors, backend)
    }
}

/// An instance counts with the larger of its share (while its short lease holds) and its floor
/// (while its long one does), since a partitioned instance keeps its floor after its share is gone.
fn held(shares: &[usize], floors: &[usize], backend: usize) -> usize {
    let share = shares.get(backend).copied().unwrap_or(0);
    let floor = floors.get(backend).copied().unwrap_or(0);
    share.max(floor)
}

/// A [`View`]'s sums per backend ([`View::tally`]), and the decisions made from them.
pub struct Tally<'a> {
    view: &'a View,
    /// Slots counted per backend across every instance, live or with a floor left.
    counted: Vec<usize>,
    /// The part of `counted` held by floors of instances that are not members.
    orphaned: Vec<usize>,
}

impl<'a> Tally<'a> {
    /// Slots of `backend` recorded across the fleet, never above `n`.
    pub fn total(&self, backend: usize) -> usize {
        self.counted.get(backend).copied().unwrap_or(0)
    }

    /// Slots of `backend` that instances other than `me` may hold connections in.
    pub fn used_by_others(&self, backend: usize, me: &str) -> usize {
        self.total(backend) - self.view.held_by(me, backend)
    }

    /// Whether `me` holding `shares` keeps every backend within its `n` (`sizes`).
    pub fn fits(&self, me: &str, shares: &[usize], sizes: &[usize]) -> bool {
        shares
            .iter()
            .zip(sizes)
            .enumerate()
            .all(|(backend, (&share, &n))| self.used_by_others(backend, me) + share <= n)
    }

    /// How many slots of `backend` (of `n`) each live member should hold: see [`Tally::target`].
    pub fn targets(&self, backend: usize, n: usize) -> BTreeMap<&'a str, usize> {
        let view: &'a View = self.view;
        view.members
            .keys()
            .map(|name| (name.as_str(), self.target(backend, n, name)))
            .collect()
    }

    /// How many slots of `backend` (of `n`) `me` should hold: a floor of 1 each live member
    /// while there are enough slots, the rest in proportion to demand (equally when nobody has
    /// any), by largest remainder with ties to the name, so that every instance computes the
    /// same. Linear in the members and allocation-free: each instance computes it for every
    /// backend whenever a record changes.
    pub fn target(&self, backend: usize, n: usize, me: &str) -> usize {
        let members = &self.view.members;
        let Some(mine) = members.get(me) else {
            return 0;
        };
        let demand_of = |record: &MemberRecord| {
            let demand = record.demand.get(backend).copied().unwrap_or(0);
            // Below half a request on average counts as idle: a decaying average must not
            // keep shares skewed long after the load is gone.
            u64::from(demand).saturating_sub(4)
        };
        let orphaned = self.orphaned.get(backend).copied().unwrap_or(0);
        let available = n.saturating_sub(orphaned);
        let floor = usize::from(available >= members.len());
        let rest = (available - floor * members.len()) as u64;
        let total_demand: u64 = members.values().map(demand_of).sum();
        let weight = |record: &MemberRecord| {
            if total_demand == 0 {
                1
            } else {
                demand_of(record)
            }
        };
        let total_weight: u64 = members.values().map(weight).sum();
        // (whole slots, remainder) of the exact quota rest × weight / total_weight.
        let quota = |record: &MemberRecord| {
            let exact = rest * weight(record);
            (exact / total_weight, exact % total_weight)
        };
        let handed_out: u64 = members.values().map(|record| quota(record).0).sum();
        let left = rest - handed_out;
        let (whole, remainder) = quota(mine);
        // Ahead of `me` for a leftover slot: a larger remainder, or an equal one and a smaller name.
        let ahead = members
            .iter()
            .filter(|&(name, record)| {
                let theirs = quota(record).1;
                theirs > remainder || (theirs == remainder && name.as_str() < me)
            })
            .count() as u64;
        floor + whole as usize + usize::from(ahead < left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[(&str, usize, u32)]) -> View {
        View {
            members: members
                .iter()
                .map(|&(name, share, demand)| {
                    let record = MemberRecord {
                        shares: vec![share],
                        demand: vec![demand],
                        owner: 0,
                    };
                    (name.to_owned(), record)
                })
                .collect(),
            floors: BTreeMap::new(),
        }
    }

    #[test]
    fn idle_instances_split_n_equally_and_the_split_adds_up_to_n() {
        let fleet = view(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        let targets = fleet.tally(1).targets(0, 10);
        assert_eq!(targets.values().sum::<usize>(), 10);
        assert_eq!(targets["a"], 4, "the remainder goes by name");
        assert_eq!(targets["b"], 3);
    }

    #[test]
    fn one_loaded_instance_gets_all_but_the_floors() {
        let fleet = view(&[("a", 0, 0), ("b", 0, 250), ("c", 0, 0)]);
        let targets = fleet.tally(1).targets(0, 12);
        assert_eq!(targets["b"], 10);
        assert_eq!(targets["a"], 1);
        assert_eq!(targets["c"], 1);
    }

    #[test]
    fn fewer_slots_than_instances_means_no_floor() {
        let fleet = view(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        let targets = fleet.tally(1).targets(0, 2);
        assert_eq!(targets.values().sum::<usize>(), 2);
        assert_eq!(targets["c"], 0);
    }

    #[test]
    fn a_gone_instances_floor_is_counted_until_its_long_lease_ends() {
        let mut fleet = view(&[("a", 5, 0), ("b", 4, 0)]);
        fleet
            .floors
            .insert("c".to_owned(), FloorRecord { floors: vec![1] });
        let tally = fleet.tally(1);
        assert_eq!(tally.used_by_others(0, "a"), 5);
        assert!(tally.fits("a", &[5], &[10]));
        assert!(!tally.fits("a", &[6], &[10]));
        assert_eq!(tally.targets(0, 10).values().sum::<usize>(), 9);
    }

    #[test]
    fn a_member_counts_with_the_larger_of_share_and_floor() {
        let mut fleet = view(&[("a", 0, 0), ("b", 0, 0)]);
        fleet
            .floors
            .insert("b".to_owned(), FloorRecord { floors: vec![1] });
        assert_eq!(fleet.tally(1).used_by_others(0, "a"), 1);
    }
}
