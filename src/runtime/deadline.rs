//! A timeout that costs nothing when the work is done at once.
//!
//! `tokio::time::timeout` reads the clock and takes a handle to the timer driver when it is
//! created, whether or not its future ever waits. On the request path most bounded steps finish
//! on their first poll (a request written into an empty socket buffer, a body that came with its
//! response head, a free slot), so `within` polls the work first and arms a timer only once it
//! waits; the limit then runs from that first wait, which is when the step began to take time.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// `work`'s output, or `None` if it waited longer than `limit` from its first wait.
pub(crate) async fn within<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return Some(output);
    }
    // It waits, its waker registered by that poll: arm the timer without polling it again (a
    // second look at a socket that just said "not yet" costs a readiness check for nothing).
    let mut timer = pin!(tokio::time::sleep(limit));
    let mut just_polled = true;
    poll_fn(|cx| {
        if !std::mem::take(&mut just_polled) {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
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
