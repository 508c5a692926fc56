//! A panic while handling one request is a bug, but it must cost only that request: it becomes
//! the request's `500` and an error log line with the request's details, while the connection,
//! and every other client, go on being served.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// Polls `inner`, turning a panic into `Err(message)`.
    pub(crate) struct CatchPanic<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchPanic<F> {
    pub(crate) fn new(inner: F) -> CatchPanic<F> {
        CatchPanic { inner }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // Unwind safety: the panicking request's own state is dropped with this future, and the
        // state it shares (pools, counters) is kept consistent by drop guards and poison-tolerant
        // locks, which run and hold during unwinding too.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled.map(Ok),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_a_value_passes() {
        assert_eq!(CatchPanic::new(async { 7 }).await, Ok(7));
        let panicked = CatchPanic::new(async {
            panic!("boom {}", 42);
            #[allow(unreachable_code)]
            0
        })
        .await;
        assert_eq!(panicked, Err("boom 42".to_owned()));
    }
}
