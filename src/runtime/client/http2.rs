//! An HTTP/2 connection whose streams run on the connection's own task.
//!
//! hyper hands each stream it accepts to an executor; with tokio's, every stream is a task of its
//! own: spawned, scheduled (on any worker thread, so a stream and its connection often run on two
//! cores and wake each other across them), and joined. Proxying a stream is waiting on a backend,
//! not work worth another core, so [`OwnStreams`] keeps the streams with their connection, as
//! nginx does: the executor queues each one, and the connection's poll polls the ones that were
//! woken (a [`FuturesUnordered`]), before and after hyper's.
//!
//! A stream still left when the connection ends is dropped with it: hyper ends the connection
//! after its streams (a graceful shutdown waits for them), or when the client is gone, which
//! leaves a stream nothing to answer; dropping a request's future is what a client going away
//! always does to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

/// A stream's future, as hyper hands it over.
type AcceptedStream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper's HTTP/2 connection is built with: it queues the streams hyper accepts for
/// the [`OwnStreams`] around that connection. hyper accepts streams only inside its connection's
/// poll (hyper 1.x, `proto::h2::server`), so nothing but that poll needs waking: [`OwnStreams`]
/// starts what it queued before the poll returns.
#[derive(Clone, Default)]
pub(super) struct StreamQueue(Arc<Mutex<Vec<AcceptedStream>>>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for StreamQueue {
    fn execute(&self, stream: F) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
    }
}

impl StreamQueue {
    /// Moves the queued streams into `streams`; whether there were any.
    fn move_into(&self, streams: &mut FuturesUnordered<AcceptedStream>) -> bool {
        let mut queued = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let any = !queued.is_empty();
        streams.extend(queued.drain(..));
        any
    }
}

pin_project_lite::pin_project! {
    /// hyper's connection `C`, built with `queue` as its executor, with the streams it accepted.
    pub(super) struct OwnStreams<C> {
        #[pin]
        conn: C,
        queue: StreamQueue,
        streams: FuturesUnordered<AcceptedStream>,
    }
}

impl<C> OwnStreams<C> {
    pub(super) fn new(conn: C, queue: StreamQueue) -> OwnStreams<C> {
        OwnStreams {
            conn,
            queue,
            streams: FuturesUnordered::new(),
        }
    }

    /// The connection itself, to shut it down.
    pub(super) fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

/// Polls the streams that were woken until none is ready; finished ones leave the set.
fn poll_streams(streams: &mut FuturesUnordered<AcceptedStream>, cx: &mut Context<'_>) {
    while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
}

impl<C: Future> Future for OwnStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.project();
        // Streams first: a response they finish queues frames the connection's poll then writes.
        poll_streams(this.streams, cx);
        let polled = this.conn.poll(cx);
        // Streams accepted in that poll start now, as a spawned task would have on its first poll.
        if this.queue.move_into(this.streams) {
            poll_streams(this.streams, cx);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Streams queued by the executor run when the connection is polled, each woken stream is
    /// polled again, and the connection's own output is what comes out.
    #[tokio::test]
    async fn queued_streams_run_on_the_connections_task() {
        let queue = StreamQueue::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let conn = {
            let queue = queue.clone();
            let finished = Arc::clone(&finished);
            async move {
                // As hyper does inside its poll: hand streams to the executor.
                let quick = Arc::clone(&finished);
                queue.execute(async move {
                    quick.fetch_add(1, Ordering::SeqCst);
                });
                let waiting = Arc::clone(&finished);
                queue.execute(async move {
                    released.await.unwrap();
                    waiting.fetch_add(1, Ordering::SeqCst);
                });
                tokio::task::yield_now().await;
                assert_eq!(
                    finished.load(Ordering::SeqCst),
                    1,
                    "the quick one ran at once"
                );
                release.send(()).unwrap();
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                "the connection's output"
            }
        };
        let output = OwnStreams::new(conn, queue).await;
        assert_eq!(output, "the connection's output");
        assert_eq!(finished.load(Ordering::SeqCst), 2, "the woken one ran too");
    }
}
