//! Pipelining toward a backend (`pipeline = true`): a request that would wait for a slot is
//! written behind the request a busy connection carries, and takes over that connection's slot
//! once the answer before it has been read.
//!
//! The pool's bound is untouched: a rider holds no slot until the holder hands it its own, so the
//! backend still sees `n` connections, each answering one request at a time with at most one more
//! waiting in its socket (RFC 9112 §9.3.2). What it saves is the round trip between two requests
//! on a connection: the backend finds the next request when it finishes the last.
//!
//! - A rider is an idempotent request without a body that found no free slot. It waits in its
//!   lane's queue like any request, listed as one that may ride (`ranked`'s `take_rider`).
//! - A slot holder about to write its request takes the first such rider off the queue and writes
//!   both in one system call; a holder whose own request was written while it rode takes the next
//!   one the same way, so a busy connection keeps one request waiting.
//! - When the holder's answer has been read whole and the connection stays open, its slot and
//!   connection go to the rider ([`Rider::hand`]). Otherwise (an error, a `Connection: close`, an
//!   answer too large to read at once, the client gone) the rider is told it was lost
//!   ([`Rider::lose`]) and checks out again; its request may or may not have been answered by the
//!   backend, which is why only idempotent ones ride.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::time::Instant;

use super::pool::PooledConn;

/// A request listed in the queue as one that may ride, from the moment it is listed until it
/// was handed a connection, lost, or went away.
#[derive(Debug)]
pub(crate) struct Rider {
    /// The request as it goes to the backend; taken by the holder that writes it.
    request: Bytes,
    /// When a holder took it to write: its wait for a connection ends there, and its answer is
    /// timed from there.
    taken_at: OnceLock<Instant>,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// Listed, or written behind a holder's request and waiting for its answer to be read; the
    /// waker of the rider's task once it waits.
    Waiting(Option<Waker>),
    /// The holder's answer was read: its slot and connection are the rider's.
    Handed(PooledConn),
    /// The connection ended before the rider's answer could be read.
    Lost,
    /// The rider went away (its client did) or took what it was given.
    Gone,
}

/// How a ride ended.
#[derive(Debug)]
pub(crate) enum Ride {
    /// The slot and connection, the rider's request already on it.
    Handed(PooledConn),
    Lost,
}

impl Rider {
    pub(crate) fn new(request: &[u8]) -> Arc<Rider> {
        Arc::new(Rider {
            request: Bytes::copy_from_slice(request),
            taken_at: OnceLock::new(),
            state: Mutex::new(State::Waiting(None)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When a holder took it to write behind its own request.
    pub(crate) fn taken_at(&self) -> Option<Instant> {
        self.taken_at.get().copied()
    }

    /// The request to write behind the holder's.
    pub(crate) fn request(&self) -> &Bytes {
        &self.request
    }

    /// Taken off the queue by a holder: `waker` (the one the rider's queue wait last registered)
    /// is woken when the ride ends.
    pub(crate) fn taken(&self, waker: Option<Waker>) {
        let _ = self.taken_at.set(Instant::now());
        if let State::Waiting(slot) = &mut *self.lock() {
            *slot = waker;
        }
    }

    /// Hands the holder's slot over. If the rider has gone away its answer is on the connection
    /// unread: the slot is given back here and the connection closed (a handed `PooledConn` is not
    /// reusable until an answer is read on it).
    pub(crate) fn hand(&self, slot: PooledConn) {
        let mut state = self.lock();
        let State::Waiting(waker) = &mut *state else {
            drop(state);
            drop(slot);
            return;
        };
        let waker = waker.take();
        *state = State::Handed(slot);
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection ended before the rider's answer.
    pub(crate) fn lose(&self) {
        let mut state = self.lock();
        let State::Waiting(waker) = &mut *state else {
            return;
        };
        let waker = waker.take();
        *state = State::Lost;
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The rider's side: waits for its ride to end; dropped early (the client went away), it marks
/// the rider gone, so the holder closes the connection rather than leave an answer unread on it.
#[derive(Debug)]
pub(crate) struct Ticket(pub(crate) Arc<Rider>);

impl Ticket {
    pub(crate) async fn ride(&self) -> Ride {
        poll_fn(|cx| {
            let mut state = self.0.lock();
            match std::mem::replace(&mut *state, State::Gone) {
                State::Waiting(waker) => {
                    let waker = match waker {
                        Some(waker) if waker.will_wake(cx.waker()) => waker,
                        _ => cx.waker().clone(),
                    };
                    *state = State::Waiting(Some(waker));
                    Poll::Pending
                }
                State::Handed(slot) => Poll::Ready(Ride::Handed(slot)),
                State::Lost | State::Gone => Poll::Ready(Ride::Lost),
            }
        })
        .await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let left = std::mem::replace(&mut *self.0.lock(), State::Gone);
        // A slot handed to a rider that left: given back, its connection closed (`PooledConn`
        // is not reusable until an answer is read on it).
        drop(left);
    }
}
