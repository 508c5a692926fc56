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
    /// Slots of `backend` that instances other than `me` may hold connections in: each counts
    /// with the larger of its share (while its short lease holds) and its floor (while its long
    /// one does), since a partitioned instance keeps its floor after its share is gone.
    pub fn used_by_others(&self, backend: usize, me: &str) -> usize {
        let names = self.members.keys().chain(self.floors.keys());
        let mut seen = std::collections::BTreeSet::new();
        names
            .filter(|name| name.as_str() != me && seen.insert(name.as_str()))
            .map(|name| {
                let share = self
                    .members
                    .get(name)
                    .and_then(|member| member.shares.get(backend).copied())
                    .unwrap_or(0);
                let floor = self
                    .floors
                    .get(name)
                    .and_then(|floor| floor.floors.get(backend).copied())
                    .unwrap_or(0);
                share.max(floor)
            })
            .sum()
    }

    /// Slots of `backend` reserved by instances that are not members (their short lease is gone,
    /// their floor's is not): nobody may take them yet.
    fn orphaned_floors(&self, backend: usize) -> usize {
        self.floors
            .iter()
            .filter(|(name, _)| !self.members.contains_key(*name))
            .map(|(_, floor)| floor.floors.get(backend).copied().unwrap_or(0))
            .sum()
    }

    /// Whether `me` holding `shares` keeps every backend within its `n` (`sizes`).
    pub fn fits(&self, me: &str, shares: &[usize], sizes: &[usize]) -> bool {
        shares
            .iter()
            .zip(sizes)
            .enumerate()
            .all(|(backend, (&share, &n))| self.used_by_others(backend, me) + share <= n)
    }

    /// How many slots of `backend` (of `n`) each live member should hold: a floor of 1 each while
    /// there are enough slots, the rest in proportion to demand (equally when nobody has any),
    /// by largest remainder with ties to the name, so that every instance computes the same.
    pub fn targets(&self, backend: usize, n: usize) -> BTreeMap<&str, usize> {
        let available = n.saturating_sub(self.orphaned_floors(backend));
        let members: Vec<(&str, u64)> = self
            .members
            .iter()
            .map(|(name, record)| {
                let demand = record.demand.get(backend).copied().unwrap_or(0);
                // Below half a request on average counts as idle: a decaying average must not
                // keep shares skewed long after the load is gone.
                (name.as_str(), u64::from(demand).saturating_sub(4))
            })
            .collect();
        let k = members.len();
        if k == 0 {
            return BTreeMap::new();
        }
        let floor = usize::from(available >= k);
        let rest = available - floor * k;
        let total_demand: u64 = members.iter().map(|(_, demand)| demand).sum();
        let weight = |demand: u64| if total_demand == 0 { 1 } else { demand };
        let total_weight: u64 = members.iter().map(|&(_, demand)| weight(demand)).sum();
        let mut quotas: Vec<(&str, usize, u64)> = members
            .iter()
            .map(|&(name, demand)| {
                let exact = rest as u64 * weight(demand);
                let whole = (exact / total_weight) as usize;
                (name, floor + whole, exact % total_weight)
            })
            .collect();
        let mut left = available - quotas.iter().map(|(_, quota, _)| quota).sum::<usize>();
        let mut order: Vec<usize> = (0..quotas.len()).collect();
        order.sort_by(|&a, &b| {
            quotas[b]
                .2
                .cmp(&quotas[a].2)
                .then(quotas[a].0.cmp(quotas[b].0))
        });
        for index in order {
            if left == 0 {
                break;
            }
            quotas[index].1 += 1;
            left -= 1;
        }
        quotas
            .into_iter()
            .map(|(name, quota, _)| (name, quota))
            .collect()
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
        let targets = fleet.targets(0, 10);
        assert_eq!(targets.values().sum::<usize>(), 10);
        assert_eq!(targets["a"], 4, "the remainder goes by name");
        assert_eq!(targets["b"], 3);
    }

    #[test]
    fn one_loaded_instance_gets_all_but_the_floors() {
        let fleet = view(&[("a", 0, 0), ("b", 0, 250), ("c", 0, 0)]);
        let targets = fleet.targets(0, 12);
        assert_eq!(targets["b"], 10);
        assert_eq!(targets["a"], 1);
        assert_eq!(targets["c"], 1);
    }

    #[test]
    fn fewer_slots_than_instances_means_no_floor() {
        let fleet = view(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        let targets = fleet.targets(0, 2);
        assert_eq!(targets.values().sum::<usize>(), 2);
        assert_eq!(targets["c"], 0);
    }

    #[test]
    fn a_gone_instances_floor_is_counted_until_its_long_lease_ends() {
        let mut fleet = view(&[("a", 5, 0), ("b", 4, 0)]);
        fleet
            .floors
            .insert("c".to_owned(), FloorRecord { floors: vec![1] });
        assert_eq!(fleet.used_by_others(0, "a"), 5);
        assert!(fleet.fits("a", &[5], &[10]));
        assert!(!fleet.fits("a", &[6], &[10]));
        assert_eq!(fleet.targets(0, 10).values().sum::<usize>(), 9);
    }

    #[test]
    fn a_member_counts_with_the_larger_of_share_and_floor() {
        let mut fleet = view(&[("a", 0, 0), ("b", 0, 0)]);
        fleet
            .floors
            .insert("b".to_owned(), FloorRecord { floors: vec![1] });
        assert_eq!(fleet.used_by_others(0, "a"), 1);
    }
}
