//! Parking idle keep-alive connections.
//!
//! A served HTTP/1.1 connection keeps a read buffer (8 KiB), a write buffer and its state for as
//! long as it is served. Most keep-alive clients are idle most of the time, so a connection (plain
//! or TLS) that has been idle for [`PARK_AFTER`] hands its stream back (`http1`), and only the
//! stream is kept until the client sends again; then a fresh connection takes over. Bytes it had
//! already read are carried over to the new one, so nothing is lost: they are the start of a
//! pipelined request head, which goes on at once under the header timeout
//! (`ConnActivity::head_carried_over`) rather than being parked again.
//!
//! A plain connection parks in its server's [`ParkingLot`]: its task ends, its socket leaves
//! tokio's IO driver for one epoll set (mio) that all parked sockets share, and its idle deadline
//! goes into one heap. One task watches the set (registered with tokio as a single source), the
//! deadlines and the server's phase; when a parked client sends, it reads what arrived and deals
//! the connection to a serving thread, where a task serves it again. A parked connection so costs a slot (its socket, its
//! deadline, the client's address) and a heap entry, some 80 bytes, instead of a task of about
//! 2 KiB, a tokio IO registration and a timer. A TLS stream's session lives in its task, so a TLS
//! connection parks there (`conn::serve_http1`), holding only the stream.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::conn::{serve_plain_http1, PhaseSignal, Shared};
use super::listener::{HandedOver, Phase};
use crate::proxy::headers::ClientInfo;

/// Idle time after which a connection is parked. Long enough that a client sending requests back
/// to back never pays for re-creating its HTTP state, short enough that thousands of idle clients
/// do not hold buffers.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(50);

/// Readiness events taken from the lot's epoll set per system call.
const EVENTS_AT_ONCE: usize = 256;

/// The most bytes a waking connection's first read takes; the connection reads the rest. A
/// request head usually fits, which spares it a read that would only find the socket empty.
const FIRST_READ: usize = 2048;

/// Where one server's parked plain connections wait; started with the first park.
pub(super) struct ParkingLot {
    /// `None` inside: the epoll set could not be made, and connections park in their own tasks.
    lot: OnceLock<Option<Arc<Lot>>>,
}

impl ParkingLot {
    pub(super) fn new() -> ParkingLot {
        ParkingLot {
            lot: OnceLock::new(),
        }
    }

    /// The lot, started (with its task) on first use.
    pub(super) fn lot(&self, shared: &Arc<Shared>, phase: &PhaseSignal) -> Option<&Lot> {
        self.lot
            .get_or_init(|| Lot::start(shared, phase))
            .as_deref()
    }
}

/// The parked connections, their epoll set and their deadlines.
pub(super) struct Lot {
    /// Registers sockets with the set the lot's task waits on (a clone of its `mio::Poll`'s).
    registry: mio::Registry,
    state: Mutex<LotState>,
    /// Wakes the lot's task when a connection parks with a deadline earlier than all others, so
    /// that it sleeps to that one instead.
    earlier_deadline: Notify,
}

#[derive(Default)]
struct LotState {
    /// The slab key is the socket's epoll token.
    parked: Slab<Parked>,
    /// Idle deadlines, earliest first. An entry whose connection has left (its slot empty, or
    /// reused by a later connection) is only dropped when it comes up: expiry checks the slot.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The parked connections' permits (one each, on the server's connection cap), merged: the
    /// lot splits one off when a connection leaves.
    permits: Option<OwnedSemaphorePermit>,
    /// The server is draining: connections that would park are closed.
    closed: bool,
}

/// One parked connection.
struct Parked {
    socket: mio::net::TcpStream,
    /// Closed quietly at this instant if the client has sent nothing.
    deadline: Instant,
    /// Who the client is, for the requests it sends when it wakes.
    client: ClientInfo,
}

impl Lot {
    fn start(shared: &Arc<Shared>, phase: &PhaseSignal) -> Option<Arc<Lot>> {
        let made = mio::Poll::new().and_then(|poll| {
            let registry = poll.registry().try_clone()?;
            // Deprecated because a type could hand tokio a descriptor it does not own, or close
            // it while registered. `mio::Poll` owns its epoll descriptor, always returns that
            // one, and the `AsyncFd` owns the `Poll` (it deregisters before dropping it): what
            // the `unsafe` replacement asks for holds, and the runtime stays free of `unsafe`.
            #[allow(deprecated)]
            let poll = AsyncFd::new(poll)?;
            Ok((poll, registry))
        });
        let (poll, registry) = match made {
            Ok(made) => made,
            Err(error) => {
                tracing::warn!(%error, "no epoll set for parked connections; each parks in its task");
                return None;
            }
        };
        let lot = Arc::new(Lot {
            registry,
            state: Mutex::new(LotState::default()),
            earlier_deadline: Notify::new(),
        });
        tokio::spawn(watch(
            Arc::clone(&lot),
            poll,
            Arc::clone(shared),
            phase.clone(),
        ));
        Some(lot)
    }

    fn lock(&self) -> MutexGuard<'_, LotState> {
        // Nothing here panics half-way through a change of the state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks an idle connection, with nothing buffered, until its client sends or `deadline`;
    /// while handing over it goes to the successor instead, while draining it is closed.
    pub(super) fn park(
        &self,
        stream: TcpStream,
        client: ClientInfo,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
        shared: &Shared,
        phase: &PhaseSignal,
    ) {
        let mut state = self.lock();
        // Read under the lock: the lot's task follows a phase change under it too, so a
        // connection parked just before the change is handed over (or closed) by the task, one
        // parked after it sees the new phase here.
        match *phase.borrow() {
            Phase::Serving if !state.closed => {}
            Phase::Serving | Phase::Draining => return,
            Phase::HandingOver => {
                if let Ok(socket) = stream.into_std() {
                    let socket = socket.into();
                    let client_ip = client.ip;
                    let handed = HandedOver {
                        socket,
                        client_ip,
                        permit,
                    };
                    let _ = shared.handed_over.send(handed);
                }
                return;
            }
        }
        let mut socket = match stream.into_std() {
            Ok(socket) => mio::net::TcpStream::from_std(socket),
            Err(error) => {
                tracing::debug!(%error, "parking a connection failed; closing it");
                return;
            }
        };
        let slot = state.parked.vacant_entry();
        let key = slot.key();
        // Registering finds data or a close that arrived before it: it is reported at once.
        if let Err(error) = self
            .registry
            .register(&mut socket, Token(key), Interest::READABLE)
        {
            tracing::debug!(%error, "parking a connection failed; closing it");
            return;
        }
        slot.insert(Parked {
            socket,
            deadline,
            client,
        });
        let earliest = state
            .deadlines
            .peek()
            .is_none_or(|Reverse((first, _))| deadline < *first);
        state.deadlines.push(Reverse((deadline, key)));
        match &mut state.permits {
            Some(permits) => permits.merge(permit),
            None => state.permits = Some(permit),
        }
        drop(state);
        if earliest {
            self.earlier_deadline.notify_one();
        }
    }

    /// A parked socket is readable: read what arrived and serve the connection again, or close
    /// it if its client has.
    fn wake(&self, key: usize, shared: &Arc<Shared>, phase: &PhaseSignal) {
        let mut state = self.lock();
        let Some(parked) = state.parked.get(key) else {
            return;
        };
        let mut first = [0u8; FIRST_READ];
        let read = loop {
            match (&parked.socket).read(&mut first) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                read => break read,
            }
        };
        let read = match read {
            // Nothing after all: still parked; the next arrival is a new edge.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            // 0: the client closed.
            Ok(read) => read,
            Err(_) => 0,
        };
        let (socket, client, permit) = state.leave(key, &self.registry);
        drop(state);
        let (Some(permit), true) = (permit, read > 0) else {
            return;
        };
        let unread = Bytes::copy_from_slice(&first[..read]);
        let shared_there = Arc::clone(shared);
        let phase = phase.clone();
        shared.dealer.deal(socket.into(), move |stream| {
            serve_plain_http1(stream, client, shared_there, phase, permit, unread)
        });
    }

    /// Closes the connections whose deadline has passed; returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        while let Some(&Reverse((deadline, key))) = state.deadlines.peek() {
            if deadline > now {
                break;
            }
            state.deadlines.pop();
            if state.parked.get(key).is_some_and(|p| p.deadline <= now) {
                drop(state.leave(key, &self.registry));
            }
        }
        // Entries of connections that left pile up while they come and go; rebuild the heap
        // from the slots when most entries are such leftovers.
        if state.deadlines.len() > 2 * state.parked.len() + 1024 {
            let live = state
                .parked
                .iter()
                .map(|(key, parked)| Reverse((parked.deadline, key)))
                .collect();
            state.deadlines = live;
        }
        state.next_deadline()
    }

    /// Follows the server's phase (`None`: it is gone): hands every parked connection to the
    /// successor, or closes them all; `false` once the lot is closed for good.
    fn follow(&self, phase: Option<&PhaseSignal>, shared: &Shared) -> bool {
        let mut state = self.lock();
        // Read under the lock, as `park` does.
        let phase = phase.map(|phase| *phase.borrow());
        let keys: Vec<usize> = state.parked.iter().map(|(key, _)| key).collect();
        match phase {
            Some(Phase::Serving) => return true,
            Some(Phase::HandingOver) => {
                for key in keys {
                    // No permit only if the lot's count were wrong: closed, as in `wake`.
                    if let (socket, client, Some(permit)) = state.leave(key, &self.registry) {
                        let handed = HandedOver {
                            socket: socket.into(),
                            client_ip: client.ip,
                            permit,
                        };
                        let _ = shared.handed_over.send(handed);
                    }
                }
                return true;
            }
            Some(Phase::Draining) | None => {}
        }
        for key in keys {
            drop(state.leave(key, &self.registry));
        }
        state.closed = true;
        state.deadlines.clear();
        false
    }
}

impl LotState {
    /// Takes a connection out of the lot: its socket, its client and its permit.
    fn leave(
        &mut self,
        key: usize,
        registry: &mio::Registry,
    ) -> (
        mio::net::TcpStream,
        ClientInfo,
        Option<OwnedSemaphorePermit>,
    ) {
        let mut parked = self.parked.remove(key);
        // Explicitly: a socket handed to another process stays open there, and would stay in
        // this set with it.
        let _ = registry.deregister(&mut parked.socket);
        let permit = self.permits.as_mut().and_then(|permits| permits.split(1));
        (parked.socket, parked.client, permit)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .peek()
            .map(|Reverse((deadline, _))| *deadline)
    }
}

/// The lot's task: serves woken connections, closes expired ones, follows the phase.
async fn watch(
    lot: Arc<Lot>,
    mut poll: AsyncFd<mio::Poll>,
    shared: Arc<Shared>,
    mut phase: PhaseSignal,
) {
    let mut events = Events::with_capacity(EVENTS_AT_ONCE);
    let mut next_deadline = None;
    loop {
        tokio::select! {
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else {
                    tracing::error!("the parked connections' epoll set failed; closing them");
                    lot.follow(None, &shared);
                    return;
                };
                match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        tracing::error!(%error, "the parked connections' epoll set failed; closing them");
                        lot.follow(None, &shared);
                        return;
                    }
                }
                // Only an empty poll proves the set drained (tokio keeps a readiness that
                // arrived meanwhile).
                if events.is_empty() {
                    ready.clear_ready();
                }
                for event in events.iter() {
                    lot.wake(event.token().0, &shared, &phase);
                }
            }
            _ = sleep_until_some(next_deadline) => {
                next_deadline = lot.expire(Instant::now());
            }
            _ = lot.earlier_deadline.notified() => {
                next_deadline = lot.lock().next_deadline();
            }
            changed = phase.changed() => {
                if !lot.follow(changed.is_ok().then_some(&phase), &shared) {
                    return;
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
