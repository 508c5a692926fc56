//! The client side's phase as one connection task follows it, turn after turn.
//!
//! A `watch::Receiver` read and waited on every turn costs a lock shared by every connection
//! twice a turn: `borrow` takes the channel's read lock, and a pending `changed()` takes its
//! notifier's mutex each time it is polled, and again to register and to deregister. The phase
//! changes a few times in a process's life; a turn comes several times a request. So the follower
//! keeps the phase it last read and checks the channel's version (one atomic load) for news, and
//! keeps one wait registered for the task, polled again only when the task's waker changes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::conn::PhaseSignal;
use super::listener::Phase;

pub(super) struct PhaseFollower {
    signal: PhaseSignal,
    current: Phase,
    /// Completes when the phase changes (or the sender is gone); boxed to outlive the turn.
    change: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker `change` was last polled with.
    registered: Option<Waker>,
}

impl PhaseFollower {
    pub(super) fn new(mut signal: PhaseSignal) -> PhaseFollower {
        let current = *signal.borrow_and_update();
        PhaseFollower {
            change: wait_for_change(signal.clone()),
            signal,
            current,
            registered: None,
        }
    }

    /// The phase now; `None` once the sender is gone (the process is going away).
    pub(super) fn current(&mut self) -> Option<Phase> {
        match self.signal.has_changed() {
            Ok(false) => Some(self.current),
            Ok(true) => {
                self.current = *self.signal.borrow_and_update();
                self.change = wait_for_change(self.signal.clone());
                self.registered = None;
                Some(self.current)
            }
            Err(_) => None,
        }
    }

    /// Ready when the phase has changed since [`PhaseFollower::current`] last read it (or the
    /// sender is gone).
    pub(super) fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !matches!(self.signal.has_changed(), Ok(false)) {
            return Poll::Ready(());
        }
        // The wait already holds a waker that wakes this task: nothing to renew.
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.registered = Some(cx.waker().clone());
        self.change.as_mut().poll(cx)
    }
}

fn wait_for_change(mut signal: PhaseSignal) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = signal.changed().await;
    })
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_follower_and_reads_once() {
        let (sender, receiver) = watch::channel(Phase::Serving);
        let mut follower = PhaseFollower::new(receiver);
        assert_eq!(follower.current(), Some(Phase::Serving));
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| follower.poll_changed(cx)).await;
            let seen = follower.current();
            // Seen once: the next wait is pending again.
            let again = tokio::time::timeout(
                Duration::from_millis(50),
                poll_fn(|cx| follower.poll_changed(cx)),
            )
            .await;
            (seen, again.is_err(), follower)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.send(Phase::HandingOver).unwrap();
        let (seen, pending_again, mut follower) = waiting.await.unwrap();
        assert_eq!(seen, Some(Phase::HandingOver));
        assert!(pending_again);

        drop(sender);
        poll_fn(|cx| follower.poll_changed(cx)).await;
        assert_eq!(follower.current(), None);
    }
}
