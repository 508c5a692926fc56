//! A timeout that costs nothing when the work is done at once.
//!
//! `tokio::time::timeout` reads the clock and takes a handle to the timer driver when it is
//! created, whether or not its future ever waits. On the request path most bounded steps finish
//! on their first poll (a request written into an empty socket buffer, a body that came with its
//! response head, a free slot), so `within` polls the work first and arms a timer only once it
//! waits; the limit then runs from that first wait, which is when the step began to take time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

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
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        // It waits, its waker registered by that poll: the timer is armed (once) and polled, the
        // work not polled again (a second look at a socket that just said "not yet" costs a
        // readiness check for nothing).
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        let timer = this
            .timer
            .as_pin_mut()
            .expect("the timer is armed just above");
        timer.poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_work_needs_no_timer_and_waiting_work_gets_its_limit() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await, Some(7));

        let started = tokio::time::Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(within(Duration::from_secs(3), slow).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        let in_time = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "done"
        };
        assert_eq!(within(Duration::from_secs(3), in_time).await, Some("done"));
    }
}
