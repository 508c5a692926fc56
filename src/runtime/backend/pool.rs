//! The fixed pool of keep-alive connections to one backend, and its request queue.
//!
//! A pool has `n` slots (`connections_per_server`). A request takes a slot, uses the slot's
//! connection (opening it if the slot is empty) and gives the slot back with the connection still
//! open. Because a connection is only ever opened by the holder of a slot, a backend never sees
//! more than `n` connections from Juggler, not even briefly. The slots, the queue and the idle
//! connections are split into a lane per serving thread ([`Lanes`]), slots moving between lanes as
//! the threads' load shifts. Requests that find every slot of their lane busy wait for one in
//! its queue ([`PrioritySlots`]): in priority order, first come, first served within a priority,
//! each until its deadline (the queue timeout after it arrived). One
//! task per pool, running only while anyone waits, ends the waits whose deadline passed
//! ([`BackendPool::expire_queue`]); the backend leaving rotation ends them all
//! ([`BackendPool::leave_rotation`]). No queued request arms a timer of its own.
//!
//! An upstream with `reserved = r` keeps r of the slots for `priority = "high"` routes: normal and
//! low requests first take a share from a second, smaller set of slots ([`SharedSlots`], the limit
//! less r) and queue there, so they never hold more than that many slots and a high request waits
//! only for other high requests. Without `reserved` there is no second set at all.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::conn::BackendConn;
use super::health::BackendProtection;
use super::lanes::{Lanes, Seen, LOOK_EVERY};
pub use super::limit::LimitSource;
use super::limit::{SlotLimit, Slots};
use super::pipeline::{Ride, Rider, Ticket};
use super::ranked::{Ending, PrioritySlots};

use crate::metrics::BackendCounters;
use crate::table::{BackendSpec, Priority, Protection, Settings};

/// Why a request could not get a pooled connection.
#[derive(Debug)]
pub enum CheckoutError {
    /// The backend's queue already holds `max_queued_per_server` requests.
    QueueFull,
    /// The request waited longer than the queue timeout.
    QueueTimeout,
    /// The slot was empty and a new connection could not be opened.
    Connect(io::Error),
    /// The backend left rotation (checks, ejection) while the request waited: it was not sent,
    /// so it may go to another backend.
    Down,
}

/// What a request's wait in the queue got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seat {
    /// A slot of its own.
    Slot,
    /// A ride behind a slot holder's request (see `pipeline`).
    Ride,
}

/// Where a pool sends the connections it hands to a successor process (with the backend's
/// address), and the count of this process's requests in progress: without a detour a
/// connection is handed over only while none is, since a request still on its way to a pool
/// might need it.
#[derive(Debug, Clone)]
pub(crate) struct HandoverSink {
    pub(crate) successor: mpsc::UnboundedSender<HandedConn>,
    pub(crate) requests_in_progress: Arc<AtomicUsize>,
    /// The successor's plain HTTP listener: a request that arrives here after the connections
    /// are gone is sent there, as to a backend.
    pub(crate) detour: Option<std::net::SocketAddr>,
}

/// A pooled connection on its way to the successor process, still counted in its pool's `open`
/// total until `counted` is dropped, once it was sent: the predecessor says RELEASED when a pool
/// counts nothing, and the successor then opens its own `n`. Uncounted on entering the channel,
/// a connection that came back just after the channel was last emptied went out after
/// RELEASED, one beyond the bound at the backend until the successor closed it.
#[derive(Debug)]
pub(crate) struct HandedConn {
    pub(crate) address: &'static str,
    pub(crate) conn: BackendConn,
    pub(crate) counted: Counted,
}

/// One backend's connections, queue and health.
#[derive(Debug)]
pub struct BackendPool {
    pub spec: &'static BackendSpec,
    /// One per usable connection slot, split over the serving threads; their waiters are the
    /// request queues, in priority order.
    lanes: Lanes,
    /// Each lane's idle connections and queued requests, by lane.
    near: Box<[LaneConns]>,
    /// How many of the `n` slots may be used now, kept in step with the lanes' free ones.
    limit: SlotLimit,
    /// The slots normal and low requests may hold (`None` when the upstream reserves none).
    shared: Option<SharedSlots>,
    /// Whether a task ends the waits whose deadline passed (see [`Self::expire_queue`]).
    expiring: AtomicBool,
    /// Wakes that task to look at lending a lane's unused slots to another lane's waiters.
    lend_wanted: Notify,
    /// Connections open or being opened, idle or carrying a request; never above the limit in
    /// force once requests that held a slot before it was lowered have given theirs back.
    /// Only [`Counted`] changes it, so it stays exact however a request ends (including a client
    /// that goes away while its connection is being opened).
    open: Arc<AtomicUsize>,
    health: Health,
    /// Active checks, ejection and slow start (see `health`).
    pub protection: BackendProtection,
    /// Wakes the refill task when a connection was closed, so the pool is back to `n` promptly.
    refill: Notify,
    /// Set while another Juggler process takes this backend's connections over (a binary
    /// upgrade): idle connections go there instead of the idle list, and nothing is opened.
    handover: Mutex<Option<HandoverSink>>,
    /// Whether `handover` is set, readable on every give-back without taking its lock.
    handing_over: AtomicBool,
    /// Set while the process this one took over from still holds this backend's connections:
    /// the pool opens nothing and uses only what it is handed, so the backend never sees more
    /// than `n` connections from both processes together.
    inheriting: AtomicBool,
    /// Wakes checkouts that hold a slot but may open nothing (while inheriting, or after the limit
    /// was lowered) and wait for a connection to be handed over or given back.
    adopted: Notify,
    /// Taken out of rotation by an operator: no new request is sent here (see [`Drain`]).
    drain: AtomicU8,
    /// What happened to the requests it took, for operators.
    pub counters: BackendCounters,
    max_queued: usize,
    queue_timeout: Duration,
    connect_timeout: Duration,
    /// `pipeline = true`: waiting requests may ride behind a holder's (see `pipeline`).
    pipeline: bool,
}

/// The most recently used of `idle`'s connections registered with this thread's reactor, else its
/// most recently used one.
fn pop_most_recent(idle: &mut Vec<Member>) -> Option<Member> {
    match idle.iter().rposition(|member| member.conn.is_at_home()) {
        Some(at_home) => Some(idle.remove(at_home)),
        None => idle.pop(),
    }
}

/// What one lane of a pool keeps beside its slots, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LaneConns {
    /// Open connections not carrying a request, last registered with this lane's thread. Taken
    /// most-recently-used first, so the warmest connections carry the traffic and idle ones are
    /// the ones the refill task checks.
    idle: Mutex<Vec<Member>>,
    /// This lane's requests waiting for a slot; the pool's sum is bounded by `max_queued`.
    queued: AtomicUsize,
}

/// The part of a pool's slots that normal and low requests share: the limit less the reserved
/// slots, but at least one while the limit is above zero (so slow start, which ramps from one
/// slot, or an adaptive limit at its floor, does not starve all but high traffic). A second
/// [`SlotLimit`] keeps its free slots in step with the pool's limit, lowered and raised alike.
#[derive(Debug)]
struct SharedSlots {
    reserved: usize,
    /// One per slot normal and low requests may hold; its queue is where they wait for one.
    slots: PrioritySlots,
    limit: SlotLimit,
}

impl SharedSlots {
    fn new(pool_size: usize, reserved: usize) -> Option<SharedSlots> {
        (reserved > 0).then(|| {
            let size = shared_part(pool_size, reserved);
            SharedSlots {
                reserved,
                slots: PrioritySlots::new(size),
                limit: SlotLimit::new(size),
            }
        })
    }

    /// Follows a change of one source's cap on the whole pool.
    fn follow(&self, source: LimitSource, cap: Option<usize>) {
        let cap = cap.map(|cap| shared_part(cap, self.reserved));
        self.limit.set(source, cap, &self.slots);
    }

    fn try_take(&self) -> Option<Share<'_>> {
        // Built only once taken: a `Share` dropped gives a slot back.
        self.slots.try_take().then(|| Share(self))
    }
}

/// The slots of `limit` that normal and low traffic may hold. Monotone in `limit`, so the lowest
/// source's cap on the pool also gives the lowest cap here.
fn shared_part(limit: usize, reserved: usize) -> usize {
    if limit == 0 {
        0
    } else {
        limit.saturating_sub(reserved).max(1)
    }
}

/// A share of [`SharedSlots`] held by a normal or low request; given back on drop, or kept by the
/// [`PooledConn`] it becomes (see [`Share::keep`]).
struct Share<'a>(&'a SharedSlots);

impl Share<'_> {
    /// From here the [`PooledConn`] gives the share back.
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.0.limit.give_back(&self.0.slots);
    }
}

/// Whether an operator took the backend out of rotation (the admin API's drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// In rotation.
    Off = 0,
    /// No new requests; requests already queued are served and the pool stays open, ready for
    /// the undrain.
    KeepConnections = 1,
    /// No new requests; each pooled connection is closed once no queued request needs it, and
    /// none is reopened until the undrain.
    CloseConnections = 2,
}

/// Passive health: consecutive connect failures mark a backend down; one success marks it up.
#[derive(Debug)]
struct Health {
    consecutive_failures: AtomicU32,
    down: AtomicBool,
    down_after: u32,
}

/// A slot taken from a pool, with its connection. Dropping it gives the slot back: the connection
/// goes back to the idle list if [`PooledConn::release`] said it is reusable, and is closed otherwise
/// (which is also what happens when a request is abandoned part-way).
#[derive(Debug)]
pub struct PooledConn {
    pool: Arc<BackendPool>,
    /// The lane the slot belongs to, given back to it.
    lane: usize,
    conn: Option<Member>,
    reusable: bool,
    /// A rider was lost on this connection: whatever the response, it closes (what the backend
    /// sends next is an answer nobody reads).
    spoiled: bool,
    /// The connection goes to the successor process rather than the backend (see
    /// [`HandoverSink::detour`]): closed after this request, never pooled.
    detour: bool,
    /// Whether the connection came from the idle list (it may have been closed by the backend
    /// while it sat there) rather than being opened for this request.
    pub from_idle: bool,
    /// How long the request waited in the queue for this slot.
    pub queued_for: Duration,
    /// Holds a share of the pool's [`SharedSlots`] too (a normal or low request).
    shared: bool,
    /// A request written behind this one (see `pipeline`): the slot goes to it when this answer
    /// has been read and the connection stays open.
    rider: Option<Arc<Rider>>,
    /// When this slot's request was written behind the previous holder's, if it rode: it is on
    /// the connection already.
    pub sent_at: Option<Instant>,
}

impl BackendPool {
    /// An unprotected pool with one lane, for use off the serving threads.
    pub fn new(spec: &'static BackendSpec, settings: &Settings) -> BackendPool {
        BackendPool::protected(spec, settings, Protection::OFF, 1)
    }

    /// A pool whose backend is protected as its upstream's `protection` says, with a lane for
    /// each of `serving_threads` (see `lanes`).
    pub fn protected(
        spec: &'static BackendSpec,
        settings: &Settings,
        protection: Protection,
        serving_threads: usize,
    ) -> BackendPool {
        let lanes = Lanes::new(spec.pool_size, serving_threads, settings.queue.timeout);
        BackendPool {
            spec,
            near: lanes.queues().map(|_| LaneConns::default()).collect(),
            lanes,
            limit: SlotLimit::new(spec.pool_size),
            shared: SharedSlots::new(spec.pool_size, protection.reserved),
            expiring: AtomicBool::new(false),
            lend_wanted: Notify::new(),
            open: Arc::new(AtomicUsize::new(0)),
            health: Health {
                consecutive_failures: AtomicU32::new(0),
                down: AtomicBool::new(false),
                down_after: settings.proxy.down_after_failures.max(1),
            },
            protection: BackendProtection::new(protection, spec.pool_size),
            refill: Notify::new(),
            handover: Mutex::new(None),
            handing_over: AtomicBool::new(false),
            inheriting: AtomicBool::new(false),
            adopted: Notify::new(),
            drain: AtomicU8::new(Drain::Off as u8),
            counters: BackendCounters::new(crate::metrics::counting_enabled(settings)),
            max_queued: settings.queue.max_queued_per_server,
            queue_timeout: settings.queue.timeout,
            connect_timeout: settings.limits.connect_timeout,
            pipeline: false,
        }
    }

    /// The pool with its upstream's `pipeline` setting.
    pub fn with_pipeline(mut self, pipeline: bool) -> BackendPool {
        self.pipeline = pipeline;
        self
    }

    /// Out of rotation: connects keep failing, health checks fail, or ejected after `5xx`s.
    pub fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Relaxed) || self.protection.out_of_rotation()
    }

    /// Down because connects keep failing (the passive check).
    pub fn connects_failing(&self) -> bool {
        self.health.down.load(Ordering::Relaxed)
    }

    /// Whether a health check may use this pool now: not closing its connections for a drain,
    /// not handing them to or taking them from another process.
    pub(crate) fn may_check(&self) -> bool {
        self.drain_state() != Drain::CloseConnections
            && !self.is_handing_over()
            && !self.inheriting.load(Ordering::Acquire)
    }

    /// The operator's drain state.
    pub fn drain_state(&self) -> Drain {
        match self.drain.load(Ordering::Acquire) {
            0 => Drain::Off,
            1 => Drain::KeepConnections,
            _ => Drain::CloseConnections,
        }
    }

    /// Takes the backend out of rotation (or, with [`Drain::Off`], back in). Requests already
    /// waiting for it are still served; closing connections spares the ones they need.
    pub fn set_drain(&self, drain: Drain) {
        self.drain.store(drain as u8, Ordering::Release);
        match drain {
            Drain::CloseConnections => self.close_idle_unless_needed(),
            Drain::Off | Drain::KeepConnections => self.refill.notify_one(),
        }
    }

    /// Whether new requests may be sent here: up, not drained, queue not full.
    pub fn takes_requests(&self) -> bool {
        !self.is_down() && !self.is_full() && self.drain_state() == Drain::Off
    }

    /// Idle connections open right now.
    pub fn idle_connections(&self) -> usize {
        self.near
            .iter()
            .map(|near| {
                near.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Draining with its connections closed: the idle ones go unless a queued request needs one.
    /// They are closed (and uncounted) under the idle list's lock: a checkout that finds the
    /// list empty must also find them uncounted, or it would see `n` connections and none to take.
    fn close_idle_unless_needed(&self) {
        for near in &self.near {
            let mut idle = near.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if self.queued() == 0 {
                idle.clear();
            }
        }
    }

    /// Whether a new request would be refused by this backend's queue.
    ///
    /// The queue first: the balancer asks this of every backend for every request, and under
    /// load every slot is taken while the queue is rarely full, so one count of lines other
    /// threads write (each lane's queue) answers it rather than two (slots, then queue).
    pub fn is_full(&self) -> bool {
        self.queued() >= self.max_queued && self.lanes.available() == 0
    }

    /// Open connections right now (idle or busy).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Slots that may carry requests right now: `n`, unless a [`LimitSource`] holds it lower.
    pub fn limit(&self) -> usize {
        self.limit.current()
    }

    /// The cap `source` puts on this pool, if any.
    pub fn limit_cap(&self, source: LimitSource) -> Option<usize> {
        self.limit.cap(source)
    }

    /// Sets (or, with `None`, lifts) `source`'s cap on the usable slots and open connections.
    /// Lowered: free slots go at once, idle connections above the new limit are closed, and busy
    /// ones close as their requests end. Raised: the new slots are free at once and the refill
    /// task opens their connections. Returns the limit now in force.
    pub fn set_limit(&self, source: LimitSource, cap: Option<usize>) -> usize {
        let limit = self.limit.set(source, cap, &self.lanes);
        if let Some(shared) = &self.shared {
            shared.follow(source, cap);
        }
        self.close_idle_above(limit);
        self.refill.notify_one();
        limit
    }

    /// Closes idle connections while more than `limit` are open, under the idle list's lock (see
    /// [`Self::close_idle_unless_needed`]).
    fn close_idle_above(&self, limit: usize) {
        for near in &self.near {
            let mut idle = near.idle.lock().unwrap_or_else(PoisonError::into_inner);
            while self.open.load(Ordering::Acquire) > limit {
                if idle.pop().is_none() {
                    break;
                }
            }
        }
    }

    /// Slots held by requests right now.
    pub fn busy_slots(&self) -> usize {
        self.limit.busy(&self.lanes)
    }

    /// Slots no request holds: a request arriving now would not wait. A freed slot goes to a
    /// waiter first, so this is 0 whenever anyone is queued.
    pub fn free_slots(&self) -> usize {
        self.lanes.available()
    }

    /// Slots a request of `priority` may take now: normal and low traffic never the reserved ones.
    pub fn free_slots_for(&self, priority: Priority) -> usize {
        let free = self.lanes.available();
        match &self.shared {
            Some(shared) if priority != Priority::High => free.min(shared.slots.available()),
            _ => free,
        }
    }

    /// Requests that may wait for a slot before the backend counts as full.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.near
            .iter()
            .map(|near| near.queued.load(Ordering::Relaxed))
            .sum()
    }

    /// Slots of each server's pool kept for `priority = "high"` routes.
    pub fn reserved(&self) -> usize {
        self.shared.as_ref().map_or(0, |shared| shared.reserved)
    }

    /// Takes a slot (waiting in the queue if all are busy) and returns it with an open connection.
    /// A normal or low request also takes a share of the unreserved slots first, if any are
    /// reserved.
    pub async fn checkout(
        self: &Arc<Self>,
        priority: Priority,
    ) -> Result<PooledConn, CheckoutError> {
        self.checkout_or_ride(priority, None).await
    }

    /// [`Self::checkout`] for a request that may ride (idempotent, without a body): encoded as
    /// `request`, it waits listed as a rider if the pool pipelines, and may come back with its
    /// request already sent ([`PooledConn::sent_at`]).
    pub async fn checkout_or_ride(
        self: &Arc<Self>,
        priority: Priority,
        request: Option<&[u8]>,
    ) -> Result<PooledConn, CheckoutError> {
        let lane = self.lanes.current();
        let shared = self.shared.as_ref().filter(|_| priority != Priority::High);
        let share = shared.and_then(SharedSlots::try_take);
        if (shared.is_none() || share.is_some())
            && self.lanes.try_take(lane, priority, self.limit.current())
        {
            // A free slot at once: no time queued, and no clock to read for it.
            return self.fill_slot(lane, None, share).await;
        }
        let queued_at = Instant::now();
        // Only where no slot is reserved: a rider takes over its holder's slot, whatever it is.
        let rider = request
            .filter(|_| self.pipeline && shared.is_none())
            .map(Rider::new);
        let (share, seat) = self
            .wait_for_slot(lane, priority, queued_at, shared, share, rider.clone())
            .await?;
        match (seat, rider) {
            (Seat::Ride, Some(rider)) => {
                Box::pin(self.ride(Ticket(rider), priority, queued_at)).await
            }
            _ => self.fill_slot(lane, Some(queued_at), share).await,
        }
    }

    /// Waits for the slot holder that wrote this rider's request to hand its slot over. A rider
    /// whose connection ended first checks out again, without riding: its request may have been
    /// answered, but it is idempotent, and it is lost at most once.
    async fn ride(
        self: &Arc<Self>,
        ticket: Ticket,
        priority: Priority,
        queued_at: Instant,
    ) -> Result<PooledConn, CheckoutError> {
        let mut slot = match ticket.ride().await {
            Ride::Handed(slot) => {
                self.counters.pipelined();
                slot
            }
            Ride::Lost => {
                self.counters.pipeline_lost();
                drop(ticket);
                self.checkout(priority).await?
            }
        };
        // Queued until its request was written (by the holder, or now after a lost ride).
        let written = slot.sent_at.unwrap_or_else(Instant::now);
        slot.queued_for = written.saturating_duration_since(queued_at);
        Ok(slot)
    }

    /// A slot with its connection only if a slot is free now (`None` otherwise): what a health
    /// check uses, so that it never queues and never opens a connection beyond the limit.
    pub(crate) async fn checkout_if_free(
        self: &Arc<Self>,
    ) -> Option<Result<PooledConn, CheckoutError>> {
        let lane = self.lanes.try_take_any()?;
        Some(self.fill_slot(lane, None, None).await)
    }

    /// Gives the slot just taken (with its share, if any) its connection: an idle one, or one
    /// opened within the slot. `queued_at`: when the request began to wait for the slot, if it
    /// had to.
    async fn fill_slot(
        self: &Arc<Self>,
        lane: usize,
        queued_at: Option<Instant>,
        share: Option<Share<'_>>,
    ) -> Result<PooledConn, CheckoutError> {
        // From here the slot and the share are ours; `slot` gives them back on every path out,
        // errors included.
        let shared = share.map(Share::keep).is_some();
        let mut slot = PooledConn {
            shared,
            pool: Arc::clone(self),
            lane,
            conn: None,
            reusable: false,
            spoiled: false,
            detour: false,
            from_idle: true,
            queued_for: queued_at.map_or(Duration::ZERO, |at| at.elapsed()),
            rider: None,
            sent_at: None,
        };
        // The queue timeout bounds the whole wait, for a slot and then for a connection.
        let mut waiting_since = queued_at;
        loop {
            if let Some(member) = self.pop_usable_idle(lane) {
                slot.conn = Some(member);
                return Ok(slot);
            }
            // The slot is empty (its connection was closed): open one within it. Holding a slot
            // with nothing idle means fewer than `n` connections exist, because every path
            // uncounts a closed connection before it releases its slot (see `give_back`).
            // Boxed, these two: rare (a connection to open, a request during a handover), and
            // their states (a connect, a detour) would otherwise make every request's future as
            // large as theirs.
            if let Some(reserved) = self.reserve_connection() {
                return Box::pin(self.open_within(slot, reserved)).await;
            }
            if self.is_handing_over() && !self.inheriting.load(Ordering::Acquire) {
                return Box::pin(self.late_request(slot)).await;
            }
            if !self.waits_for_a_connection() {
                debug_assert!(false, "slot held, nothing idle, yet n connections counted");
                return Err(CheckoutError::Connect(io::Error::other(
                    "pool bookkeeping: no connection to take or open",
                )));
            }
            // The previous process still holds this backend's connections, or the limit was
            // lowered while requests held more slots than it allows: wait for one of those
            // connections (armed before the last look, so one arriving in between still wakes us).
            let adopted = self.adopted.notified();
            tokio::pin!(adopted);
            adopted.as_mut().enable();
            if let Some(member) = self.pop_usable_idle(lane) {
                slot.conn = Some(member);
                return Ok(slot);
            }
            if !self.waits_for_a_connection() {
                continue;
            }
            let started = *waiting_since.get_or_insert_with(Instant::now);
            if tokio::time::timeout_at(started + self.queue_timeout, adopted)
                .await
                .is_err()
            {
                return Err(CheckoutError::QueueTimeout);
            }
        }
    }

    /// Whether a slot holder that found nothing idle and may open nothing will be given a
    /// connection: by the previous process (inheriting), or by a request that held a slot from
    /// before the limit was lowered (the limit owes slots, so one of them is busy).
    fn waits_for_a_connection(&self) -> bool {
        self.inheriting.load(Ordering::Acquire) || self.limit.owes()
    }

    /// A request that reached this process after it handed its connections to a successor (a
    /// TLS keep-alive client still here). It goes to the successor, which serves it from its
    /// own pools, so the backend still sees no more than `n`; only without a plain listener to
    /// reach the successor on does it open a connection of its own beyond the bound.
    async fn late_request(&self, mut slot: PooledConn) -> Result<PooledConn, CheckoutError> {
        let detour = self
            .handover
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|sink| sink.detour);
        let Some(detour) = detour else {
            let Some(reserved) = self.count_connection() else {
                return Err(CheckoutError::QueueFull);
            };
            tracing::warn!(
                backend = self.spec.address,
                "upgrade: a late request opened a connection beyond the pool's bound"
            );
            return self.open_within(slot, reserved).await;
        };
        let conn = BackendConn::connect(&detour.to_string(), self.connect_timeout)
            .await
            .map_err(CheckoutError::Connect)?;
        tracing::info!(
            backend = self.spec.address,
            "upgrade: a late request goes to the new process"
        );
        slot.detour = true;
        slot.from_idle = false;
        slot.conn = Some(Member {
            conn,
            _counted: Counted(Arc::new(AtomicUsize::new(1))),
        });
        Ok(slot)
    }

    /// Opens a connection for `slot`, counted by `reserved`.
    async fn open_within(
        &self,
        mut slot: PooledConn,
        reserved: Counted,
    ) -> Result<PooledConn, CheckoutError> {
        let conn = match self.connect().await {
            Ok(conn) => conn,
            Err(error) => {
                // Uncounted before `slot` releases its slot (see `give_back`).
                drop(reserved);
                return Err(CheckoutError::Connect(error));
            }
        };
        slot.from_idle = false;
        slot.conn = Some(Member {
            conn,
            _counted: reserved,
        });
        Ok(slot)
    }

    /// The most recently used idle connection that can still carry a request; unusable ones met
    /// on the way are closed.
    fn pop_usable_idle(&self, lane: usize) -> Option<Member> {
        while let Some(member) = self.pop_idle(lane) {
            let Member { mut conn, _counted } = member;
            if !conn.is_usable() {
                continue;
            }
            // One that cannot move to this thread's reactor is closed (uncounted with it).
            if let Ok(conn) = conn.settle() {
                return Some(Member { conn, _counted });
            }
        }
        None
    }

    /// Counts a connection about to be opened, unless `n` already exist (or are being opened).
    /// Slots alone do not guarantee the bound: an idle connection and a free slot are the same
    /// capacity, so opening counts against `open` too.
    fn reserve_connection(&self) -> Option<Counted> {
        if self.inheriting.load(Ordering::Acquire) || self.is_handing_over() {
            return None;
        }
        self.count_connection()
    }

    /// Counts one more connection if fewer than the limit (`n`, or lower) exist.
    fn count_connection(&self) -> Option<Counted> {
        let limit = self.limit.current();
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Counted(Arc::clone(&self.open)))
    }

    /// Queues for a slot, and for a share of the unreserved ones first if `shared` is given and
    /// `share` not yet taken, until the queue timeout after `queued_at`. A low request queues only
    /// while fewer than half of `max_queued` wait, so that when the queue fills, low traffic is
    /// the first refused.
    async fn wait_for_slot<'a>(
        self: &Arc<Self>,
        lane: usize,
        priority: Priority,
        queued_at: Instant,
        shared: Option<&'a SharedSlots>,
        share: Option<Share<'a>>,
        rider: Option<Arc<Rider>>,
    ) -> Result<(Option<Share<'a>>, Seat), CheckoutError> {
        let room = match priority {
            Priority::Low => self.max_queued / 2,
            Priority::High | Priority::Normal => self.max_queued,
        };
        let queued = &self.near[lane].queued;
        queued.fetch_add(1, Ordering::Relaxed);
        // Counted out again however the wait ends, including the client going away (this future
        // is then dropped, which also takes it off the queue it is on).
        let _in_queue = QueuedGuard(queued);
        if self.queued() > room {
            return Err(CheckoutError::QueueFull);
        }
        // One deadline for the whole wait, for a share and then for the slot. A share taken here
        // is dropped (given back) if the wait ends before the slot is taken.
        let deadline = queued_at + self.queue_timeout;
        let share = match (shared, share) {
            (Some(shared), None) => {
                let wait = shared.slots.enqueue(priority, deadline);
                self.queue_on(wait).await?;
                Some(Share(shared))
            }
            (_, share) => share,
        };
        let (wait, lendable) =
            self.lanes
                .enqueue_rider(lane, priority, deadline, self.limit.current(), rider);
        if lendable {
            self.lend_wanted.notify_one();
        }
        let seat = self.queue_on(wait).await?;
        Ok((share, seat))
    }

    /// Waits in a queue (a lane's, or the shared slots') until a slot is handed over, its
    /// deadline passes or the backend leaves rotation.
    async fn queue_on(
        self: &Arc<Self>,
        wait: impl Future<Output = Ending>,
    ) -> Result<Seat, CheckoutError> {
        self.arm_expiry();
        // Listed before the look: a departure after it ends the wait (see `leave_rotation`).
        if self.protection.out_of_rotation() {
            return Err(CheckoutError::Down);
        }
        match wait.await {
            Ending::Granted => Ok(Seat::Slot),
            Ending::Riding => Ok(Seat::Ride),
            Ending::TimedOut => Err(CheckoutError::QueueTimeout),
            Ending::Down => Err(CheckoutError::Down),
        }
    }

    /// Starts the task that ends expired waits, unless it runs. Called after a request is
    /// listed: the task, before it ends for want of waiters, looks at `waiting` once more after
    /// clearing `expiring`, so either it sees the request or the request sees `expiring` clear.
    fn arm_expiry(self: &Arc<Self>) {
        if self.expiring.load(Ordering::SeqCst) || self.expiring.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(Arc::clone(self).expire_queue());
    }

    /// The queues' one timer: sleeps until the earliest deadline listed, ends the waits whose
    /// deadline passed, and again, until nobody waits. Every waiter of a pool has the same queue
    /// timeout, so the timer fires about once per timeout while the queue is busy, however many
    /// requests pass through it; it is never re-armed when a request arrives or leaves.
    ///
    /// The same task moves slots between lanes (see `Lanes::lend_idle` and `Lanes::rebalance`): it
    /// looks every [`LOOK_EVERY`] while requests wait, when woken by the first request of a lane
    /// to queue while another lane has free slots, and again when `lend_idle` asks, for as long
    /// as a lane has some; a lane's free slots are lent once it used none of them for
    /// [`super::lanes::LEND_AFTER`].
    async fn expire_queue(self: Arc<Self>) {
        let mut deadline = None;
        let mut expire = true;
        let mut seen = Seen::default();
        let mut rebalance_at = Instant::now() + LOOK_EVERY;
        loop {
            let now = Instant::now();
            if expire {
                deadline = self.queues().filter_map(|slots| slots.expire(now)).min();
            }
            // At most a slot per `LOOK_EVERY`, however often the task looks to lend: the
            // waiting counts it follows fluctuate, and a slot moved moves its connection.
            if expire && now >= rebalance_at {
                self.lanes.rebalance();
                rebalance_at = now + LOOK_EVERY;
            }
            let look_again = self
                .lanes
                .lend_idle(&mut seen, now)
                .or_else(|| (self.lanes.several() && deadline.is_some()).then(|| now + LOOK_EVERY));
            if let Some(next) = deadline.into_iter().chain(look_again).min() {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => expire = true,
                    () = self.lend_wanted.notified() => expire = false,
                }
                continue;
            }
            expire = true;
            self.expiring.store(false, Ordering::SeqCst);
            let waiting = self.queues().any(|slots| slots.waiting() > 0);
            if !waiting || self.expiring.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// The queues requests wait in: the lanes', and the shared slots' if it reserves some.
    fn queues(&self) -> impl Iterator<Item = &PrioritySlots> {
        self.lanes
            .queues()
            .chain(self.shared.as_ref().map(|shared| &shared.slots))
    }

    /// The backend left rotation (health checks fail, or ejected): the requests queued for it
    /// were not sent, and may go elsewhere.
    pub(crate) fn leave_rotation(&self) {
        for slots in self.queues() {
            slots.end_all(Ending::Down);
        }
    }

    /// Ejects the backend after `5xx`s (the caller checked it is not the upstream's last healthy
    /// one), ending its queue; returns for how long (see [`BackendProtection::eject`]).
    pub fn eject(&self) -> Duration {
        let length = self.protection.eject();
        self.leave_rotation();
        length
    }

    /// For a slot of `lane`: the most recently used of its idle connections registered with this
    /// thread's reactor, else its most recently used one, else another lane's (a slot that moved
    /// lanes finds its connection in the lane it came from).
    ///
    /// The other lanes' lists are looked at all under their locks at once (taken in lane order,
    /// the only place that holds more than one): looked at one after another, a connection
    /// another request used meanwhile could go from a list not yet looked at to one already
    /// looked at, and a slot holder find nothing while `n` connections are counted.
    fn pop_idle(&self, lane: usize) -> Option<Member> {
        let own = pop_most_recent(
            &mut self.near[lane]
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if own.is_some() || self.near.len() == 1 {
            return own;
        }
        let mut all: Vec<_> = self
            .near
            .iter()
            .map(|near| near.idle.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        let count = all.len();
        (0..count)
            .map(|offset| (lane + offset) % count)
            .find_map(|index| pop_most_recent(&mut all[index]))
    }

    /// Opens a connection for a slot the caller holds and has reserved with
    /// [`Self::reserve_connection`], recording the outcome for health.
    async fn connect(&self) -> io::Result<BackendConn> {
        match BackendConn::connect(self.spec.address, self.connect_timeout).await {
            Ok(conn) => {
                if self.health.record_success(self.spec.address) {
                    self.protection.came_back();
                }
                Ok(conn)
            }
            Err(error) => {
                self.health.record_failure(self.spec.address, &error);
                self.counters.connect_failure();
                Err(error)
            }
        }
    }

    /// Gives a slot back, keeping its connection if it can carry another request.
    ///
    /// Order matters: the connection is in the idle list, or closed and uncounted, *before* the
    /// slot is released, so whoever takes the slot next finds it idle or may open a new one.
    fn give_back(&self, lane: usize, conn: Option<Member>, reusable: bool) {
        match conn {
            Some(member) if reusable && !self.closes_when_free() && !self.above_limit() => {
                if let Some(member) = self.try_hand_over(member) {
                    self.park_within_limit(lane, member);
                }
            }
            closed => {
                drop(closed);
                self.refill.notify_one();
            }
        }
        self.release_slot(lane);
    }

    /// Frees a slot of `lane` this process held, or pays a lowered limit's debt with it.
    fn release_slot(&self, lane: usize) {
        if self.limit.pay_debt() {
            self.lanes.forfeit(lane);
            // A slot holder may be waiting for the connection this one closed or idled (see
            // `waits_for_a_connection`).
            self.adopted.notify_waiters();
        } else {
            self.lanes.release(lane, self.limit.current());
        }
    }

    /// Puts an open connection in the idle list, or closes it if more are open than the limit
    /// allows. Looked at under the list's lock: `set_limit` lowers the limit *before* it takes
    /// that lock to close idle connections, so either it finds this one in the list or this
    /// finds the lower limit. Nothing else closes an idle connection above the limit: one left
    /// there keeps the pool above it for good (and a fleet instance, which records a share it
    /// gives up only once its pool is down to it, from ever giving the share up).
    fn park_within_limit(&self, lane: usize, member: Member) {
        let mut idle = self.near[lane]
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.above_limit() {
            drop(member);
            drop(idle);
            self.refill.notify_one();
        } else {
            idle.push(member);
        }
    }

    /// More connections open than the limit allows (it was lowered while they were busy).
    fn above_limit(&self) -> bool {
        self.open.load(Ordering::Acquire) > self.limit.current()
    }

    /// Drained with its connections closed, and no queued request left to need this one.
    fn closes_when_free(&self) -> bool {
        self.drain_state() == Drain::CloseConnections && self.queued() == 0
    }

    /// Starts handing this backend's connections to another process: the idle ones now, the
    /// others as they come back idle with no request of this process waiting for them (and
    /// whatever [`Self::hand_over_idle`] finds later).
    pub(crate) fn hand_over_to(&self, successor: HandoverSink) {
        *self.handover.lock().unwrap_or_else(PoisonError::into_inner) = Some(successor);
        self.handing_over.store(true, Ordering::Release);
        self.hand_over_idle();
    }

    /// Offers the idle connections to the successor again: one kept idle because a request was
    /// waiting at the time is handed over once nobody waits any more.
    pub(crate) fn hand_over_idle(&self) {
        for near in &self.near {
            let idle =
                std::mem::take(&mut *near.idle.lock().unwrap_or_else(PoisonError::into_inner));
            let kept: Vec<Member> = idle
                .into_iter()
                .filter_map(|member| self.try_hand_over(member))
                .collect();
            near.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(kept);
        }
    }

    /// Stops handing over (the successor went away) and refills as usual.
    pub(crate) fn keep_connections(&self) {
        *self.handover.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.handing_over.store(false, Ordering::Release);
        self.refill.notify_one();
    }

    fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Sends `member`'s connection to the successor, unless there is none or a request of this
    /// process is waiting for a connection; then `member` comes back to be kept.
    fn try_hand_over(&self, member: Member) -> Option<Member> {
        if !self.is_handing_over() {
            return Some(member);
        }
        let handover = self.handover.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = handover.as_ref() else {
            return Some(member);
        };
        // A request still on its way to this pool needs a connection: with a detour it will take
        // the successor's (see `late_request`), without one it must find one of ours. (Waiting
        // for it with a detour would deadlock: the successor waits for our connections while our
        // detoured request waits for the successor's.)
        let busy = self.queued() > 0
            || (sink.detour.is_none() && sink.requests_in_progress.load(Ordering::Acquire) > 0);
        if busy || sink.successor.is_closed() {
            return Some(member);
        }
        // Its unit of `open` goes along, dropped once the connection is sent (see `HandedConn`).
        let handed = HandedConn {
            address: self.spec.address,
            conn: member.conn,
            counted: member._counted,
        };
        if let Err(returned) = sink.successor.send(handed) {
            let HandedConn { conn, counted, .. } = returned.0;
            return Some(Member {
                conn,
                _counted: counted,
            });
        }
        None
    }

    /// Takes this pool's connections from the previous process only: opens none of its own until
    /// [`Self::end_inheritance`].
    pub(crate) fn inherit(&self) {
        self.inheriting.store(true, Ordering::Release);
    }

    /// Adds a connection the previous process handed over; closes it if `n` are already open (the
    /// new config may have a smaller pool).
    pub(crate) fn adopt(&self, conn: BackendConn) {
        if let Some(counted) = self.count_connection() {
            self.near[self.lanes.current()]
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Member {
                    conn,
                    _counted: counted,
                });
        }
        self.adopted.notify_waiters();
    }

    /// Whether the process this one took over from may still hold connections to this backend
    /// (they count against the backend's bound too, though not in [`Self::open_connections`]).
    pub fn is_inheriting(&self) -> bool {
        self.inheriting.load(Ordering::Acquire)
    }

    /// The previous process holds no connection to this backend any more: open what is missing.
    pub(crate) fn end_inheritance(&self) {
        self.inheriting.store(false, Ordering::Release);
        self.adopted.notify_waiters();
        self.refill.notify_one();
    }

    /// Keeps the pool at `n` open connections: opens them at start-up, replaces the ones backends
    /// close (or that announced a keep-alive timeout about to expire), and while the backend is
    /// down keeps trying with exponential backoff and jitter. Runs until the runtime shuts down.
    pub async fn maintain(self: Arc<Self>) {
        const CHECK_EVERY: Duration = Duration::from_secs(1);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            self.drop_unusable_idle();
            let mut wait = CHECK_EVERY;
            loop {
                if self.drain_state() == Drain::CloseConnections {
                    break;
                }
                // Only a free slot may be filled; busy slots reconnect on demand when used.
                // Given back through `release_slot`, so a limit lowered meanwhile is paid.
                let Some(lane) = self.lanes.try_take_any() else {
                    break;
                };
                let Some(reserved) = self.reserve_connection() else {
                    self.release_slot(lane);
                    break;
                };
                match self.connect().await {
                    Ok(conn) => {
                        backoff.reset();
                        // The limit may have been lowered while this one was connecting, too
                        // late for `set_limit` to find it idle and close it: kept only within
                        // the limit, like a connection a request gives back (with the slot).
                        let member = Member {
                            conn,
                            _counted: reserved,
                        };
                        self.give_back(lane, Some(member), true);
                    }
                    Err(_) => {
                        // Uncounted before the slot is free again (see `give_back`).
                        drop(reserved);
                        self.release_slot(lane);
                        wait = backoff.next_delay();
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.refill.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Closes idle connections the backend has closed or that are due for retirement.
    fn drop_unusable_idle(&self) {
        for near in &self.near {
            near.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain_mut(|member| member.conn.is_usable());
        }
    }
}

impl Health {
    /// Returns whether the backend was down (it has just come back).
    fn record_success(&self, backend: &str) -> bool {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let was_down = self.down.swap(false, Ordering::Relaxed);
        if was_down {
            tracing::warn!(backend, "backend is up again: connect succeeded");
        }
        was_down
    }

    fn record_failure(&self, backend: &str, error: &io::Error) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.down_after && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(backend, failures, %error, "backend marked down: connects keep failing");
        }
    }
}

impl PooledConn {
    pub fn conn(&mut self) -> &mut BackendConn {
        // Invariant: a `PooledConn` handed out by `checkout` always holds a connection.
        &mut self
            .conn
            .as_mut()
            .expect("checked-out slot holds a connection")
            .conn
    }

    pub fn backend(&self) -> &'static BackendSpec {
        self.pool.spec
    }

    /// Marks the response fully read: the connection goes back to the pool (or to the rider
    /// behind it) on drop if the backend keeps it alive and sent nothing beyond the response but
    /// the rider's answer.
    pub fn response_complete(&mut self, keep_alive: bool) {
        self.reusable = keep_alive && (self.rider.is_some() || self.conn().finished_cleanly());
    }

    /// Takes the first request waiting to ride behind this one (see `pipeline`), if the pool
    /// pipelines and this slot's connection will read another answer: the caller writes it
    /// behind its own request, or calls [`Self::lose_rider`].
    #[inline]
    pub fn take_rider(&mut self) -> Option<Bytes> {
        if !self.pool.pipeline {
            return None;
        }
        self.take_waiting_rider()
    }

    fn take_waiting_rider(&mut self) -> Option<Bytes> {
        if self.detour || self.rider.is_some() {
            return None;
        }
        let limit = self.pool.limit.current();
        let rider = self.pool.lanes.take_rider(self.lane, limit)?;
        let request = rider.request().clone();
        self.rider = Some(rider);
        Some(request)
    }

    /// The answer in front of the rider will not be read whole here (it is streamed or spooled,
    /// or the rider's request could not be written): the rider checks out again, and the
    /// connection, whatever it holds of the rider's answer, is closed after this response.
    pub fn lose_rider(&mut self) {
        if let Some(rider) = self.rider.take() {
            rider.lose();
            self.spoiled = true;
        }
    }

    /// Ends the ride of the request written behind this one: the slot and connection pass to it
    /// (true) if the connection carries on, else it is told it was lost (false). Out of line, so
    /// that a drop without a rider stays small.
    #[inline(never)]
    fn end_ride(&mut self, rider: Arc<Rider>) -> bool {
        if !self.reusable || self.spoiled {
            rider.lose();
            return false;
        }
        // As if the rider had held the slot all along.
        let next = PooledConn {
            pool: Arc::clone(&self.pool),
            lane: self.lane,
            conn: self.conn.take(),
            reusable: false,
            spoiled: false,
            detour: false,
            from_idle: true,
            queued_for: Duration::ZERO,
            shared: std::mem::take(&mut self.shared),
            rider: None,
            sent_at: rider.taken_at(),
        };
        rider.hand(next);
        true
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(rider) = self.rider.take() {
            if self.end_ride(rider) {
                return;
            }
        }
        self.pool.give_back(
            self.lane,
            self.conn.take(),
            self.reusable && !self.detour && !self.spoiled,
        );
        // After the slot: a high request waiting for it is served before the normal one this
        // share lets through.
        if self.shared {
            if let Some(shared) = &self.pool.shared {
                drop(Share(shared));
            }
        }
    }
}

/// A pooled connection, counted in its pool's `open` total for as long as it exists.
#[derive(Debug)]
struct Member {
    conn: BackendConn,
    _counted: Counted,
}

/// One unit of a pool's `open` count, taken before a connection is opened and given back when it
/// is dropped (the connection closed, or the attempt to open it failed or was abandoned).
#[derive(Debug)]
pub(crate) struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Exponential backoff with ±50% jitter, so that many pools retrying a dead backend do not
/// reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            current: base,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.current.mul_f64(0.5 + fastrand::f64());
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_part_is_the_limit_less_the_reserved_slots_but_never_none() {
        assert_eq!(shared_part(3, 1), 2);
        assert_eq!(shared_part(8, 3), 5);
        assert_eq!(
            shared_part(1, 1),
            1,
            "slow start at 1: normal traffic keeps its slot"
        );
        assert_eq!(shared_part(2, 4), 1);
        assert_eq!(
            shared_part(0, 1),
            0,
            "a fleet share of 0 leaves nothing to anybody"
        );
    }

    #[test]
    fn shares_follow_the_pool_limit_and_come_back_on_drop() {
        assert!(
            SharedSlots::new(4, 0).is_none(),
            "no reserve, no second set of slots"
        );
        let shared = SharedSlots::new(4, 1).unwrap();
        let held: Vec<Share<'_>> = (0..3).map_while(|_| shared.try_take()).collect();
        assert_eq!(held.len(), 3, "n = 4 less 1 reserved");
        assert!(shared.try_take().is_none());
        // The pool's limit drops to 2 while all three are held: they owe two back.
        shared.follow(LimitSource::Protection, Some(2));
        drop(held);
        let again: Vec<Share<'_>> = (0..3).map_while(|_| shared.try_take()).collect();
        assert_eq!(again.len(), 1, "limit 2 less 1 reserved");
        drop(again);
        shared.follow(LimitSource::Protection, None);
        assert_eq!(shared.slots.available(), 3);
    }

    /// A pool of one slot to an address nothing listens on, with that slot taken: every
    /// request queues. Nothing here opens a connection.
    fn busy_pool(queue_timeout: Duration) -> Arc<BackendPool> {
        let spec: &'static BackendSpec = Box::leak(Box::new(BackendSpec {
            address: "127.0.0.1:9",
            pool_size: 1,
            upstream: crate::table::UpstreamId(0),
            weight: 1,
        }));
        let mut settings = Settings::DEFAULT;
        settings.queue.timeout = queue_timeout;
        settings.queue.max_queued_per_server = 16;
        let pool = Arc::new(BackendPool::new(spec, &settings));
        assert!(pool.lanes.try_take(0, Priority::Normal, 1));
        pool
    }

    /// Queues a normal request now; its outcome comes back with how long it waited.
    fn queue_one(
        pool: &Arc<BackendPool>,
    ) -> tokio::task::JoinHandle<(Result<(), CheckoutError>, Duration)> {
        let pool = Arc::clone(pool);
        tokio::spawn(async move {
            let queued_at = Instant::now();
            let outcome = pool
                .wait_for_slot(0, Priority::Normal, queued_at, None, None, None)
                .await
                .map(|_share| ());
            (outcome, queued_at.elapsed())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_time_out_at_their_deadline_by_one_task_that_ends_when_idle() {
        let timeout = Duration::from_secs(1);
        let pool = busy_pool(timeout);
        let mut waiting = Vec::new();
        for _ in 0..3 {
            waiting.push(queue_one(&pool));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(pool.queued(), 3);
        assert!(pool.expiring.load(Ordering::SeqCst), "the expiry task runs");
        for task in waiting {
            let (outcome, waited) = task.await.unwrap();
            assert!(matches!(outcome, Err(CheckoutError::QueueTimeout)));
            assert_eq!(waited, timeout, "at the deadline, not before nor after");
        }
        assert_eq!(pool.queued(), 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            !pool.expiring.load(Ordering::SeqCst),
            "nobody waits: the task ended"
        );
        // The next request to queue starts it again.
        let (outcome, waited) = queue_one(&pool).await.unwrap();
        assert!(matches!(outcome, Err(CheckoutError::QueueTimeout)));
        assert_eq!(waited, timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_in_time_is_handed_over_and_leaving_rotation_ends_the_rest() {
        let pool = busy_pool(Duration::from_secs(1));
        let waiting: Vec<_> = (0..3).map(|_| queue_one(&pool)).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        pool.release_slot(0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        pool.leave_rotation();
        let outcomes: Vec<_> = outcomes_of(waiting).await;
        assert!(
            matches!(outcomes[0], (Ok(()), _)),
            "first come, first served"
        );
        for (outcome, waited) in &outcomes[1..] {
            assert!(matches!(outcome, Err(CheckoutError::Down)));
            assert!(
                *waited < Duration::from_secs(1),
                "ended when the backend left"
            );
        }
        assert_eq!(pool.queued(), 0);
        assert_eq!(pool.free_slots(), 0, "the first one holds the slot");
    }

    async fn outcomes_of(
        tasks: Vec<tokio::task::JoinHandle<(Result<(), CheckoutError>, Duration)>>,
    ) -> Vec<(Result<(), CheckoutError>, Duration)> {
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    }

    /// Two serving threads, each in its own lane, take and give back slots of one pool as fast as
    /// they can, with more requests at once than their lane owns: slots and connections move
    /// between the lanes all the time, and every request still gets a connection (a slot holder
    /// finding none while `n` are counted fails a debug assertion), never more than `n` open.
    #[test]
    fn requests_on_two_lanes_always_find_a_connection_and_never_more_than_n_open() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address: &'static str = Box::leak(listener.local_addr().unwrap().to_string().into());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counting = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                counting.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        let spec: &'static BackendSpec = Box::leak(Box::new(BackendSpec {
            address,
            pool_size: 4,
            upstream: crate::table::UpstreamId(0),
            weight: 1,
        }));
        let pool = Arc::new(BackendPool::protected(
            spec,
            &Settings::DEFAULT,
            Protection::OFF,
            2,
        ));
        // Each thread's runtime lives until both are done: the pool's queue task, which lends
        // slots between the lanes, runs on one of them.
        let done = Arc::new(AtomicUsize::new(0));
        let serving: Vec<_> = [1, 2]
            .into_iter()
            .map(|thread| {
                let pool = Arc::clone(&pool);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    crate::threads::set_current(thread);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        for _ in 0..300 {
                            let take = || async {
                                let mut slot = pool.checkout(Priority::Normal).await.unwrap();
                                tokio::task::yield_now().await;
                                slot.reusable = true;
                                assert!(pool.open_connections() <= 4);
                            };
                            tokio::join!(take(), take(), take());
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        while done.load(Ordering::SeqCst) < 2 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    });
                })
            })
            .collect();
        for thread in serving {
            thread.join().expect("no request failed");
        }
        assert!(accepted.load(Ordering::SeqCst) <= 4, "never more than n");
        assert_eq!(pool.free_slots(), 4, "every slot back");
        assert_eq!(pool.idle_connections(), pool.open_connections());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(150));
        assert!(delays[7] >= Duration::from_secs(1) && delays[7] <= Duration::from_secs(3));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(150));
    }
}
