//! A timeout that costs nothing when the work is done at once, and little when it waits.
//!
//! `tokio::time::timeout` reads the clock and takes a handle to the timer driver when it is
//! created, whether or not its future ever waits. On the request path most bounded steps finish
//! on their first poll (a request written into an empty socket buffer, a body that came with its
//! response head, a free slot), so `within` polls the work first and arms a timer only once it
//! waits; the limit then runs from that first wait, which is when the step began to take time.
//!
//! The step that does wait (a response head on its way) waits on nearly every request. A new
//! timer for it cost an insertion into the timer wheel and a removal, each under the driver's
//! lock, per request. A serving thread keeps the timers of finished waits instead and hands them
//! to its next waits, still in the wheel: moving a timer to a later deadline is one atomic
//! operation (the wheel moves it on only when its old deadline comes), an earlier one re-inserts
//! it, as a new timer would have been.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::threads;

/// Finished waits' timers a serving thread keeps for its next ones: more than the waits a thread
/// has at once on a typical host (one per backend connection in use), few enough that what the
/// kept timers hold (each the waker of the task that used it last) stays small.
const SPARES_KEPT: usize = 256;

thread_local! {
    /// This serving thread's spare timers, each made on this thread's runtime.
    static SPARES: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// `work`'s output, or `None` if it waited longer than `limit` from its first wait.
pub(crate) fn within<F: Future>(limit: Duration, work: F) -> Within<F> {
    Within {
        work,
        limit,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`]. Written out rather than an `async fn`: that one moved the
    /// work's output (a response head, a body) through two more copies on its way out.
    pub(crate) struct Within<F> {
        #[pin]
        work: F,
        limit: Duration,
        // Armed at the work's first wait.
        timer: Option<Lent>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    // Inlined: it wraps every step of an exchange, most of which finish on their first poll.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        // It waits, its waker registered by that poll: the timer is armed (once) and polled, the
        // work not polled again (a second look at a socket that just said "not yet" costs a
        // readiness check for nothing).
        let timer = this
            .timer
            .get_or_insert_with(|| Lent::armed_for(Instant::now() + *this.limit));
        timer.sleep().poll(cx).map(|()| None)
    }
}

/// A timer lent to one wait: a spare of the serving thread, or a new one. Given to the spares of
/// the thread that made it when the wait ends, on that thread; dropped anywhere else.
struct Lent {
    // Taken out only when dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The serving thread whose runtime's timer wheel holds it; 0 off the serving threads, whose
    /// timers are never kept (a thread that is no serving thread may run several runtimes over
    /// its life, and a timer must not outlive its own).
    thread: usize,
}

impl Lent {
    fn armed_for(deadline: Instant) -> Lent {
        let thread = threads::current();
        let spare = match thread {
            0 => None,
            _ => SPARES.with(|spares| spares.borrow_mut().pop()),
        };
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Lent {
            sleep: Some(sleep),
            thread,
        }
    }

    fn sleep(&mut self) -> Pin<&mut Sleep> {
        self.sleep
            .as_mut()
            .expect("a lent timer is taken only when dropped")
            .as_mut()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        if self.thread == 0 || self.thread != threads::current() {
            return;
        }
        // `try_with`: at the thread's exit its spares may be gone already.
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARES_KEPT {
                spares.push(sleep);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_work_needs_no_timer_and_waiting_work_gets_its_limit() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await, Some(7));

        let started = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(within(Duration::from_secs(3), slow).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        let in_time = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "done"
        };
        assert_eq!(within(Duration::from_secs(3), in_time).await, Some("done"));
    }

    fn spares() -> usize {
        SPARES.with(|spares| spares.borrow().len())
    }

    /// A serving thread's waits reuse the timers of earlier ones, and a reused timer keeps its
    /// new limit whether that ends later than its old deadline or earlier, or the old one had
    /// fired already.
    #[test]
    fn reused_timers_keep_each_waits_own_limit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        threads::set_current(7);
        runtime.block_on(async {
            let after = |secs| tokio::time::sleep(Duration::from_secs(secs));
            // Done at 1 s, its timer (due at 2 s) kept.
            assert_eq!(within(Duration::from_secs(2), after(1)).await, Some(()));
            assert_eq!(spares(), 1);
            // The kept timer moved later, from 2 s to 1 + 5 s: still waiting at 4 s, its old
            // deadline long passed.
            let started = Instant::now();
            assert_eq!(within(Duration::from_secs(5), after(3)).await, Some(()));
            assert_eq!(started.elapsed(), Duration::from_secs(3));
            assert_eq!(spares(), 1, "the same timer came back");
            // Moved earlier (from 9 s to 4 + 1 s), it ends the wait at its new deadline.
            let started = Instant::now();
            assert_eq!(within(Duration::from_secs(1), after(10)).await, None);
            assert_eq!(started.elapsed(), Duration::from_secs(1));
            // A timer that fired is armed again.
            let started = Instant::now();
            assert_eq!(within(Duration::from_secs(2), after(10)).await, None);
            assert_eq!(started.elapsed(), Duration::from_secs(2));
            // Two waits at once: the second gets a timer of its own.
            let (first, second) = tokio::join!(
                within(Duration::from_secs(1), after(10)),
                within(Duration::from_secs(4), after(3)),
            );
            assert_eq!((first, second), (None, Some(())));
            assert_eq!(spares(), 2);
        });
        threads::set_current(0);
        SPARES.with(|spares| spares.borrow_mut().clear());
        // Off the serving threads nothing is kept.
        runtime.block_on(async {
            let quick = tokio::time::sleep(Duration::from_millis(1));
            assert_eq!(within(Duration::from_secs(1), quick).await, Some(()));
        });
        assert_eq!(spares(), 0);
    }
}
