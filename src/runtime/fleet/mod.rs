//! One bound for the whole fleet: k Juggler instances share each backend's `n` through etcd.
//!
//! Each instance records, under an etcd lease, its share of every backend's `n`, and holds its
//! pool there (`LimitSource::FleetShare`, which bounds open connections and requests alike). The
//! rules that keep the backend's bound:
//! - **Taking** slots is a transaction that succeeds only if nobody wrote since the records were
//!   read, and only if every backend's shares, this instance's new ones included, add up to at
//!   most `n` at that read. The pool is raised only after the transaction succeeded.
//! - **Giving up** slots lowers the pool first and is written only once its open connections are
//!   down to the new share (idle ones close at once, busy ones when their request ends).
//! - Shares follow demand (busy + queued, smoothed, published in the record): every instance
//!   computes the same targets from the same records ([`shares::Tally::target`]) and moves
//!   towards its own, so none has to instruct another.
//!
//! **Failures.** Outsiders cannot tell a dead instance from one cut off from etcd, and the cut-off
//! one cannot know when etcd will drop its lease, only when it *could* at the earliest. The rule
//! chosen, so that the bound holds in both cases and nobody ever opens beyond it:
//! - Each instance has two leases: its shares live under `lease`, its fallback floor
//!   (`fallback_share` per backend, at most its share) under the longer `fallback_lease`. Others
//!   count an instance with the larger of the two while each lives.
//! - An instance that cannot renew counts from the moment it *sent* its last renewal that was
//!   answered (etcd restarted the lease no earlier). Half a lease later it lowers its pools to its
//!   floor, so its other connections are closed before its lease can expire; half a lease before
//!   its fallback lease could expire, it lowers them to 0 and answers `503` while etcd is away.
//!   This assumes that its clock and the etcd leader's run at the same rate within a factor of
//!   two over a lease, and that requests in progress end within half a lease (a longer one keeps
//!   its connection until it ends).
//! - So after a `kill -9` the others can take all but the dead instance's floor once its lease
//!   expires, and the floor once its fallback lease does.
//! - An instance that cannot reach etcd at start holds nothing (it cannot know what the others
//!   hold) and answers `503` until it has registered.
//!
//! `--upgrade` with the same `--instance`: the successor finds the predecessor's records, takes
//! over their leases and shares (writing its own owner id into them), and pools them the way the
//! upgrade protocol already does (it opens nothing while the predecessor still holds a backend's
//! connections). The predecessor sees the new owner and stops writing; it does not revoke.

pub mod shares;
mod store;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin::{FleetBackendReport, FleetReport};
use crate::backend::pool::{BackendPool, LimitSource};
use crate::table::FleetSettings;
use shares::{FloorRecord, MemberRecord, Tally, View};
use store::{Applied, Snapshot, Store, StoreError};

/// How often demand is sampled and the timers looked at.
const TICK: Duration = Duration::from_millis(250);
/// How often this instance's own demand and pending releases are looked at ("every second or
/// so"); the others' records are looked at as soon as the watch brings a change.
const REBALANCE_EVERY: Duration = Duration::from_secs(1);
/// Smoothing of demand per tick: about a second's memory.
const DEMAND_WEIGHT: f64 = 0.25;
/// How long `leave` waits for connections to close before it gives the shares up anyway (the
/// process exits right after, and the kernel closes whatever is left).
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// The next event of the fleet's watch; never, without one.
async fn next_change(
    watch: &mut Option<etcd_client::WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Where this instance stands with etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Not registered (not yet, or its leases are gone): holds nothing.
    Unregistered,
    /// Leases renewed: holds its recorded shares.
    Registered,
    /// Renewals failing for over half a lease: holds only its floor.
    Fallback,
    /// Renewals failing until the floor's lease could expire: holds nothing.
    Stopped,
    /// A successor (`--upgrade`) owns the records now: this process writes nothing more.
    HandedOver,
}

impl Standing {
    fn name(self) -> &'static str {
        match self {
            Standing::Unregistered => "unregistered",
            Standing::Registered => "registered",
            Standing::Fallback => "fallback",
            Standing::Stopped => "stopped",
            Standing::HandedOver => "handed_over",
        }
    }
}

/// The running coordinator: stop it with [`Fleet::leave`].
pub struct Fleet {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    report: Shared,
}

/// What the admin listener shows, refreshed every tick.
type Shared = Arc<Mutex<FleetReport>>;

impl Fleet {
    /// Starts coordinating `pools` (every backend, by id) as `instance`. The pools are held at
    /// zero until this instance has registered: call before the listeners accept. `upgrading`:
    /// take over the records of the process this one replaces.
    pub fn start(
        settings: &'static FleetSettings,
        prefix: String,
        instance: String,
        pools: Vec<Arc<BackendPool>>,
        upgrading: bool,
    ) -> Fleet {
        for pool in &pools {
            pool.set_limit(LimitSource::FleetShare, Some(0));
            // The predecessor's connections count until it has released them; the upgrade
            // marks the pools so too, but only once it serves, and a release recorded in
            // between (this process's own count being 0) would let others take slots the
            // predecessor still holds.
            if upgrading {
                pool.inherit();
            }
        }
        let report: Shared = Arc::new(Mutex::new(FleetReport {
            instance: instance.clone(),
            prefix: prefix.clone(),
            state: Standing::Unregistered.name().to_owned(),
            ..FleetReport::default()
        }));
        crate::admin::report_fleet({
            let report = Arc::clone(&report);
            Box::new(move || {
                report
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
        });
        let (stop, stopped) = watch::channel(false);
        let count = pools.len();
        let coordinator = Coordinator {
            settings,
            prefix,
            instance,
            pools,
            store: None,
            leases: None,
            recorded: vec![0; count],
            floors: vec![0; count],
            caps: vec![0; count],
            demand: vec![0.0; count],
            published: vec![0; count],
            owner: fastrand::u64(..),
            standing: Standing::Unregistered,
            last_renewed: None,
            last_contact: None,
            failed_renewals: 0,
            members_seen: 0,
            fleet_totals: vec![0; count],
            adopt: upgrading,
            cache: None,
            dirty: true,
            report: Arc::clone(&report),
        };
        let task = tokio::spawn(coordinator.run(stopped));
        Fleet { stop, task, report }
    }

    /// This instance's place in the fleet now: what `/status` shows.
    pub fn report(&self) -> FleetReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `within` for this instance to hold recorded shares; `false` if it does not
    /// (etcd unreachable, or the name still registered by a process that is gone).
    pub async fn wait_registered(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.report().state == Standing::Registered.name() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Graceful stop: closes every pooled connection (the caller has drained the requests), then
    /// gives the shares up, so the others may take them at once rather than after the lease.
    /// Gives nothing up when a successor owns the records.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What the coordinator's loop keeps from one round to the next.
struct Rounds {
    next_renewal: Instant,
    next_rebalance: Instant,
    warned_unreachable: bool,
    /// Keeps [`Coordinator::cache`] current; `None` until (re)established with it.
    watch: Option<etcd_client::WatchStream>,
}

struct Coordinator {
    settings: &'static FleetSettings,
    prefix: String,
    instance: String,
    pools: Vec<Arc<BackendPool>>,
    store: Option<Store>,
    /// (short, long) lease ids while registered.
    leases: Option<(i64, i64)>,
    /// The shares etcd holds for this instance (0 while unregistered).
    recorded: Vec<usize>,
    /// The floors etcd holds for this instance under the long lease.
    floors: Vec<usize>,
    /// The FleetShare cap each pool is held at: never above `recorded`.
    caps: Vec<usize>,
    /// Smoothed busy + queued per backend.
    demand: Vec<f64>,
    /// Demand as last written to etcd, in tenths.
    published: Vec<u32>,
    /// Random per process: whose records these are (see `MemberRecord::owner`).
    owner: u64,
    standing: Standing,
    /// When the last renewal that etcd answered was *sent*: the leases expire no earlier than
    /// this plus their TTL.
    last_renewed: Option<Instant>,
    last_contact: Option<SystemTime>,
    /// Renewals failed in a row (not counting a lease found gone).
    failed_renewals: u32,
    members_seen: usize,
    /// Slots of each backend recorded across the fleet at the last read.
    fleet_totals: Vec<usize>,
    /// Take over this instance's records (an upgrade) instead of waiting for them to expire.
    adopt: bool,
    /// The fleet's records as of the last watch event: read once, then fed by the watch (see
    /// `store`). An `Arc` so that a round can look at it while changing the rest of `self`.
    cache: Option<Arc<Snapshot>>,
    /// Something changed (a record, or a write of ours failed) that the shares were not yet
    /// moved for: without it, and with this instance's own demand and pools steady, a round
    /// has nothing to compute.
    dirty: bool,
    report: Shared,
}

impl Coordinator {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = Rounds {
            next_renewal: Instant::now(),
            next_rebalance: Instant::now(),
            warned_unreachable: false,
            watch: None,
        };
        loop {
            let mut changed = false;
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
                event = next_change(&mut rounds.watch) => {
                    changed = true;
                    self.absorb(event, &mut rounds);
                }
            }
            if !changed {
                self.sample_demand();
            }
            self.follow_the_clock(Instant::now());
            // etcd calls may be slow (each is bounded, but several follow one another): they
            // must never hold the pools above what the leases still cover. The work is cut off
            // at the next point the clock lowers them; a write cut off after etcd applied it
            // only ever over-reserves, and the next read corrects what this process believes.
            let deadline = self.next_deadline();
            let work = tokio::time::timeout_at(deadline, self.etcd_work(&mut rounds, changed));
            if work.await.is_err() {
                // Cut off, perhaps after the round cleared `dirty` and before it wrote: with
                // nothing else changing, a share it was about to take would wait for good.
                self.dirty = true;
            }
            self.follow_the_clock(Instant::now());
            self.publish_report();
        }
        self.leave().await;
    }

    /// When [`Self::follow_the_clock`] next lowers the pools, if renewals stay away.
    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let Some(renewed) = self.last_renewed else {
            return far;
        };
        let half_lease = self.settings.lease / 2;
        match self.standing {
            Standing::Registered | Standing::HandedOver => renewed + half_lease,
            // Unregistered after losing the short lease: the floor may still be held.
            Standing::Fallback | Standing::Unregistered => {
                renewed + self.settings.fallback_lease.saturating_sub(half_lease)
            }
            Standing::Stopped => far,
        }
    }

    /// Takes one watch response into the cache; a broken or cancelled watch (or one whose
    /// revision was compacted) drops both, and the next round reads and watches anew.
    fn absorb(
        &mut self,
        event: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
        rounds: &mut Rounds,
    ) {
        let applied = match (event, self.store.as_ref(), self.cache.as_mut()) {
            (Ok(Some(response)), Some(store), Some(cache)) => {
                store.apply(Arc::make_mut(cache), &self.instance, &response)
            }
            _ => Applied::Lost,
        };
        match applied {
            Applied::Current => self.dirty = true,
            Applied::Lost => {
                tracing::debug!("fleet: watch ended; reading the records again");
                rounds.watch = None;
                self.cache = None;
            }
        }
    }

    /// Reads the records once and watches them from there on, unless already watching.
    async fn follow_records(&mut self, rounds: &mut Rounds) -> Result<(), StoreError> {
        if rounds.watch.is_some() && self.cache.is_some() {
            return Ok(());
        }
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let snapshot = store.read(&self.instance).await?;
        rounds.watch = Some(store.watch_from(snapshot.revision).await?);
        self.last_contact = Some(SystemTime::now());
        self.cache = Some(Arc::new(snapshot));
        self.dirty = true;
        Ok(())
    }

    /// One round's etcd calls: connect, watch, renew, read and move shares, as each is due.
    async fn etcd_work(&mut self, rounds: &mut Rounds, changed: bool) {
        let now = Instant::now();
        if self.store.is_none() {
            match self.connect().await {
                Ok(store) => self.store = Some(store),
                Err(error) => {
                    if !rounds.warned_unreachable {
                        tracing::warn!(%error, "fleet: etcd unreachable; holding no more than the shares recorded (none until registered: 503 meanwhile)");
                        rounds.warned_unreachable = true;
                    }
                    return;
                }
            }
        }
        if self.leases.is_some() && now >= rounds.next_renewal {
            rounds.next_renewal = now + self.settings.lease / 4;
            self.renew(now).await;
        }
        if let Err(error) = self.follow_records(rounds).await {
            tracing::debug!(%error, "fleet: cannot read or watch the records");
            return;
        }
        if (changed || now >= rounds.next_rebalance) && self.standing != Standing::HandedOver {
            rounds.next_rebalance = now + REBALANCE_EVERY;
            if let Err(error) = self.rebalance().await {
                self.dirty = true;
                tracing::debug!(%error, "fleet: rebalance round failed");
            }
        }
    }

    async fn connect(&self) -> Result<Store, StoreError> {
        let timeout = (self.settings.lease / 4).min(Duration::from_secs(1));
        Store::connect(self.settings.etcd, self.prefix.clone(), timeout).await
    }

    fn sample_demand(&mut self) {
        for (demand, pool) in self.demand.iter_mut().zip(&self.pools) {
            let now = (pool.busy_slots() + pool.queued()) as f64;
            *demand += DEMAND_WEIGHT * (now - *demand);
        }
    }

    /// Renews both leases; a lease etcd no longer has means this instance's records are gone.
    async fn renew(&mut self, sent: Instant) {
        let (Some(store), Some((short, long))) = (self.store.as_mut(), self.leases) else {
            return;
        };
        let renewed = match store.renew(short).await {
            Ok(()) => store.renew(long).await,
            Err(error) => Err(error),
        };
        match renewed {
            Ok(()) => {
                self.last_renewed = Some(sent);
                self.last_contact = Some(SystemTime::now());
                self.failed_renewals = 0;
                if matches!(self.standing, Standing::Fallback | Standing::Stopped) {
                    // The lease held, so the records did: the shares are ours again.
                    tracing::info!("fleet: etcd reachable again; back to the recorded shares");
                    self.standing = Standing::Registered;
                    self.floors = self.floors_for(&self.recorded);
                    self.apply_caps(self.recorded.clone());
                    // The shares may be above the targets now (the fleet changed meanwhile):
                    // look again even if no record changes from here on.
                    self.dirty = true;
                }
            }
            Err(StoreError::LeaseGone) => {
                tracing::warn!("fleet: lease expired; registering again from the floor");
                self.forget_registration();
            }
            Err(error) => {
                tracing::debug!(%error, "fleet: renewal failed");
                self.failed_renewals += 1;
                // A connection that stays broken is built anew (the leases are kept).
                if self.failed_renewals >= 3 {
                    self.failed_renewals = 0;
                    self.store = None;
                }
            }
        }
    }

    /// Shares are void (the leases are gone): hold at most the floor until registered again.
    /// The floor may still be recorded under the long lease, but a lost short lease says the
    /// long one is likely lost too: hold what [`Self::follow_the_clock`] allows.
    fn forget_registration(&mut self) {
        self.leases = None;
        self.standing = Standing::Unregistered;
        self.recorded = vec![0; self.pools.len()];
        let caps = self
            .caps
            .iter()
            .zip(&self.floors)
            .map(|(cap, floor)| (*cap).min(*floor))
            .collect();
        self.apply_caps(caps);
    }

    /// Lowers the pools as the leases could be expiring on etcd's side without renewals.
    fn follow_the_clock(&mut self, now: Instant) {
        let Some(renewed) = self.last_renewed else {
            return;
        };
        let since = now.saturating_duration_since(renewed);
        let half_lease = self.settings.lease / 2;
        let floor_deadline = self.settings.fallback_lease.saturating_sub(half_lease);
        if since >= floor_deadline && self.standing != Standing::Stopped {
            tracing::warn!(
                since_renewal = ?since,
                "fleet: etcd unreachable for as long as the fallback lease allows; holding no connections (503)"
            );
            self.standing = Standing::Stopped;
            self.floors = vec![0; self.pools.len()];
            self.apply_caps(vec![0; self.pools.len()]);
        } else if since >= half_lease && self.standing == Standing::Registered {
            tracing::warn!(
                since_renewal = ?since,
                "fleet: etcd unreachable; down to the fallback share until it answers"
            );
            self.standing = Standing::Fallback;
            let caps = self
                .caps
                .iter()
                .zip(&self.floors)
                .map(|(cap, floor)| (*cap).min(*floor))
                .collect();
            self.apply_caps(caps);
        }
    }

    /// Sets the pools' FleetShare caps.
    fn apply_caps(&mut self, caps: Vec<usize>) {
        for ((pool, old), new) in self.pools.iter().zip(&mut self.caps).zip(caps) {
            if *old != new {
                pool.set_limit(LimitSource::FleetShare, Some(new));
                *old = new;
            }
        }
    }

    /// Registers if needed, and moves this instance's shares towards its targets (giving up
    /// what is closed, taking what is free), from the watched records: no read.
    async fn rebalance(&mut self) -> Result<(), StoreError> {
        let Some(snapshot) = self.cache.clone() else {
            return Ok(());
        };
        // Before any lease is granted: its expiry counts from no earlier than this.
        let sent = Instant::now();
        let releasing = self
            .caps
            .iter()
            .zip(&self.recorded)
            .any(|(cap, share)| cap < share);
        if self.standing == Standing::Registered
            && !self.dirty
            && !releasing
            && !self.demand_moved()
        {
            return Ok(());
        }
        self.dirty = false;
        let tally = snapshot.view.tally(self.pools.len());
        self.note_totals(&snapshot.view, &tally);
        if let Some(mine) = snapshot.view.members.get(&self.instance) {
            if self.leases.is_some() && mine.owner != self.owner {
                tracing::info!("fleet: the new process of this instance took the shares over");
                self.standing = Standing::HandedOver;
                return Ok(());
            }
            if self.standing == Standing::Registered {
                // What etcd holds is the truth: a write whose answer was lost may have happened.
                self.recorded = mine.shares.clone();
                self.recorded.resize(self.pools.len(), 0);
                let caps = self
                    .caps
                    .iter()
                    .zip(&self.recorded)
                    .map(|(cap, share)| (*cap).min(*share))
                    .collect();
                self.apply_caps(caps);
            }
        }
        match self.standing {
            Standing::Registered => self.move_shares(&snapshot, &tally).await,
            Standing::Unregistered => self.register(&snapshot, &tally, sent).await,
            // Waiting for renewals to succeed again.
            Standing::Fallback | Standing::Stopped | Standing::HandedOver => Ok(()),
        }
    }

    fn note_totals(&mut self, view: &View, tally: &Tally) {
        self.members_seen = view.members.len();
        let mine = view.members.get(&self.instance);
        for (backend, total) in self.fleet_totals.iter_mut().enumerate() {
            let share = mine
                .and_then(|record| record.shares.get(backend).copied())
                .unwrap_or(0);
            *total = tally.used_by_others(backend, &self.instance) + share;
        }
    }

    /// Gets leases and writes this instance's records: with the shares it holds now (its floor
    /// after losing its lease, nothing at start), or, taking over from a predecessor, with the
    /// predecessor's shares and leases.
    async fn register(
        &mut self,
        snapshot: &Snapshot,
        tally: &Tally<'_>,
        sent: Instant,
    ) -> Result<(), StoreError> {
        let existing = snapshot.view.members.get(&self.instance);
        let (leases, shares) = match (existing, snapshot.my_leases) {
            (Some(record), (Some(short), Some(long)))
                if self.adopt || record.owner == self.owner =>
            {
                // An upgrade's predecessor's records, or ours from a write whose answer was lost.
                tracing::info!("fleet: taking over the recorded shares of this instance");
                ((short, long), record.shares.clone())
            }
            (Some(_), _) => {
                // A live record of this name that is not ours to take: a process killed a
                // moment ago (its lease will expire), or another instance with the same name.
                tracing::warn!(
                    instance = self.instance,
                    "fleet: this instance name is still registered; waiting for its lease to expire (another instance with the same --instance?)"
                );
                return Ok(());
            }
            (None, _) => {
                let Some(store) = self.store.as_mut() else {
                    return Ok(());
                };
                let short = store.grant(self.settings.lease).await?;
                let long = store.grant(self.settings.fallback_lease).await?;
                ((short, long), self.caps.clone())
            }
        };
        let sizes = self.sizes();
        let mut shares: Vec<usize> = shares
            .iter()
            .zip(&sizes)
            .map(|(share, n)| (*share).min(*n))
            .collect();
        shares.resize(sizes.len(), 0);
        if !tally.fits(&self.instance, &shares, &sizes) {
            // Only possible when adopting records that the fleet since outgrew; start empty.
            self.apply_caps(vec![0; self.pools.len()]);
            return Ok(());
        }
        let floor = FloorRecord {
            floors: self.floors_for(&shares),
        };
        let member = self.member_record(shares.clone());
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let written = store
            .write(
                &self.instance,
                snapshot.version,
                (&member, leases.0),
                Some((&floor, leases.1)),
            )
            .await?;
        let Some(revision) = written else {
            return Ok(());
        };
        self.note_own_write(revision, (&member, leases.0), Some((&floor, leases.1)));
        tracing::info!(instance = self.instance, shares = ?shares, "fleet: registered");
        // Only now: a write that lost the race reads the predecessor's records again.
        self.adopt = false;
        self.leases = Some(leases);
        self.last_renewed = Some(sent);
        self.standing = Standing::Registered;
        self.recorded = shares.clone();
        self.floors = floor.floors;
        self.published = member.demand;
        self.apply_caps(shares);
        Ok(())
    }

    /// One step towards this instance's targets.
    async fn move_shares(
        &mut self,
        snapshot: &Snapshot,
        tally: &Tally<'_>,
    ) -> Result<(), StoreError> {
        let sizes = self.sizes();
        let mut wanted = self.recorded.clone();
        let mut caps = self.caps.clone();
        for (backend, &n) in sizes.iter().enumerate() {
            let target = tally.target(backend, n, &self.instance);
            let share = self.recorded[backend];
            if target < share && share - target >= (share / 8).max(1) {
                // Give up: lower the pool now, record it once the connections are closed.
                caps[backend] = caps[backend].min(target);
            } else if target > share {
                // A release still waiting for its connections is called off: the share is ours.
                caps[backend] = share;
                let free = n.saturating_sub(tally.used_by_others(backend, &self.instance) + share);
                wanted[backend] = share + free.min(target - share);
            }
            // Closed means closed in both processes during an upgrade: the predecessor's
            // connections to this backend are not in our count until it has released them.
            let pool = &self.pools[backend];
            if caps[backend] < share
                && !pool.is_inheriting()
                && pool.open_connections() <= caps[backend]
            {
                wanted[backend] = caps[backend];
            }
        }
        // Lowering is always safe, and calling a release off keeps within the recorded share.
        self.apply_caps(caps);
        if wanted == self.recorded && !self.demand_moved() {
            return Ok(());
        }
        let Some((short, long)) = self.leases else {
            return Ok(());
        };
        if !tally.fits(&self.instance, &wanted, &sizes) {
            return Ok(());
        }
        let floors = self.floors_for(&wanted);
        let member = self.member_record(wanted.clone());
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let floor = FloorRecord {
            floors: floors.clone(),
        };
        // Most moves leave the floor (at most `fallback_share`) as it was: one value less.
        let floor = (floors != self.floors).then_some((&floor, long));
        let written = store
            .write(&self.instance, snapshot.version, (&member, short), floor)
            .await;
        match written {
            Ok(Some(revision)) => self.note_own_write(revision, (&member, short), floor),
            Ok(None) => {
                // Someone wrote first: the watch is bringing it, recompute then.
                self.dirty = true;
                return Ok(());
            }
            Err(StoreError::LeaseGone) => {
                self.forget_registration();
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        tracing::debug!(shares = ?wanted, "fleet: shares written");
        // Raise only now that etcd holds the new shares.
        let caps = self
            .caps
            .iter()
            .zip(&self.recorded)
            .zip(&wanted)
            .map(|((&cap, &old), &new)| if new > old { new } else { cap.min(new) })
            .collect();
        self.recorded = wanted;
        self.floors = floors;
        self.published = member.demand;
        self.apply_caps(caps);
        Ok(())
    }

    /// Whether this instance's demand moved enough since it was last published to be worth a
    /// write (hysteresis: a whole request, or a quarter).
    fn demand_moved(&self) -> bool {
        let demand = self.demand_tenths();
        demand.iter().zip(&self.published).any(|(now, then)| {
            let (now, then) = (i64::from(*now), i64::from(*then));
            (now - then).abs() >= 10.max(then / 4)
        })
    }

    /// Puts a write of ours into the cache at once (see [`Snapshot::note_own_write`]).
    fn note_own_write(
        &mut self,
        revision: i64,
        member: (&MemberRecord, i64),
        floor: Option<(&FloorRecord, i64)>,
    ) {
        if let Some(cache) = self.cache.as_mut() {
            Arc::make_mut(cache).note_own_write(
                &self.instance,
                revision,
                (member.0.clone(), member.1),
                floor.map(|(floor, lease)| (floor.clone(), lease)),
            );
        }
    }

    fn sizes(&self) -> Vec<usize> {
        self.pools.iter().map(|pool| pool.spec.pool_size).collect()
    }

    fn floors_for(&self, shares: &[usize]) -> Vec<usize> {
        shares
            .iter()
            .map(|share| (*share).min(self.settings.fallback_share))
            .collect()
    }

    fn demand_tenths(&self) -> Vec<u32> {
        self.demand
            .iter()
            .map(|demand| (demand * 10.0).round().clamp(0.0, u32::MAX as f64) as u32)
            .collect()
    }

    fn member_record(&self, shares: Vec<usize>) -> MemberRecord {
        MemberRecord {
            shares,
            demand: self.demand_tenths(),
            owner: self.owner,
        }
    }

    /// Graceful stop: close everything, then revoke both leases, unless a successor owns them.
    async fn leave(mut self) {
        if self.standing == Standing::HandedOver {
            return;
        }
        self.apply_caps(vec![0; self.pools.len()]);
        let deadline = Instant::now() + LEAVE_WAIT;
        while self.pools.iter().any(|pool| pool.open_connections() > 0) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (Some(store), Some((short, long))) = (self.store.as_mut(), self.leases) else {
            return;
        };
        // A successor may have taken the records over since the last read: revoke only leases
        // known to be ours still (unread, they expire on their own, which is merely slower).
        match store.read(&self.instance).await {
            Ok(snapshot) => {
                let mine = snapshot.view.members.get(&self.instance);
                if mine.is_some_and(|record| record.owner != self.owner) {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "fleet: cannot read the records; the shares expire with the lease");
                return;
            }
        }
        for lease in [short, long] {
            if let Err(error) = store.revoke(lease).await {
                tracing::warn!(%error, "fleet: could not give the shares up; they expire with the lease");
            }
        }
        tracing::info!("fleet: shares given up");
    }

    fn publish_report(&self) {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        report.state = self.standing.name().to_owned();
        report.instances_seen = self.members_seen;
        report.last_etcd_contact_unix = self
            .last_contact
            .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|since| since.as_secs_f64());
        report.backends = self
            .pools
            .iter()
            .enumerate()
            .map(|(backend, pool)| FleetBackendReport {
                address: pool.spec.address.to_owned(),
                share: self.recorded[backend],
                limit: self.caps[backend],
                fleet_total: self.fleet_totals[backend],
                pool_size: pool.spec.pool_size,
            })
            .collect();
    }
}
