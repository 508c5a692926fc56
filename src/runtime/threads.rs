//! The serving threads: one single-threaded tokio runtime per core, each serving the client
//! connections dealt to it for their whole life, as an nginx worker keeps its connections.
//!
//! On tokio's work-stealing runtime only one worker at a time waits in epoll: the other parks on
//! a futex and is woken for each batch of ready tasks, and a connection's task and the tasks it
//! wakes wander between the cores. Measured on this 2-core machine (12 B GET, 64 connections,
//! pool 8), the two cores then stood idle 5-7 % of the time under full load, and every request
//! cost more CPU in Juggler, in wrk and in the backends alike than with nginx in front; two
//! single-threaded Juggler processes served 1.45x the requests of one two-threaded one.
//!
//! Here each serving thread waits in its own epoll set for its own connections. A pool (one per
//! backend, so `n` stays exact however many threads there are) gives each thread a lane of its
//! slots, queue and idle connections, which move between threads only as their load shifts (see
//! `backend::lanes`); the counters and the parking lot's bookkeeping are shared. A pooled backend
//! connection is registered with the reactor of whichever thread checks it out
//! ([`BackendConn::settle`]), so its readiness wakes the task that waits on it without a hop
//! through another thread.
//!
//! Every serving thread accepts on the listeners itself and serves what it accepts, unless it
//! serves clearly more connections than another (then it hands the connection over); a parked
//! connection that wakes and one handed over by a predecessor go to the least busy thread. The
//! control work (admin listener, health checks, fleet, upgrades, signals) runs on the runtime of
//! the thread that starts the serving threads.
//!
//! [`BackendConn::settle`]: crate::backend::BackendConn::settle

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Numbers the serving threads of the whole process (several servers may run in one, in tests),
/// from 1: 0 is every other thread.
static NEXT_THREAD_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static THREAD_ID: Cell<usize> = const { Cell::new(0) };
}

/// Which serving thread the caller runs on: a number of its own, or 0 off the serving threads
/// (the control runtime, a test's runtime).
pub(crate) fn current() -> usize {
    THREAD_ID.with(Cell::get)
}

/// How many serving threads `worker_threads = count` starts: `count`, or one per core for 0.
pub(crate) fn resolved_count(count: usize) -> usize {
    match count {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        count => count,
    }
}

/// Makes the calling thread count as serving thread `id` (0: none), for tests of what depends on
/// the thread.
#[cfg(test)]
pub(crate) fn set_current(id: usize) {
    THREAD_ID.with(|cell| cell.set(id));
}

/// The running serving threads; stopping (or dropping) this ends them, and with them every task
/// they still run.
pub(crate) struct ServingThreads {
    /// Dropping a sender ends its thread's runtime.
    stop: Vec<oneshot::Sender<()>>,
    /// Each completes once its thread's runtime has dropped its tasks.
    stopped: Vec<oneshot::Receiver<()>>,
}

/// Deals connections to the serving threads: the cheap, cloneable side of [`ServingThreads`].
#[derive(Clone)]
pub(crate) struct Dealer {
    threads: Arc<[DealtTo]>,
}

struct DealtTo {
    runtime: Handle,
    /// Its number (see [`current`]).
    id: usize,
    /// Connections this thread serves now: a new one goes to the thread with the fewest.
    connections: Arc<AtomicUsize>,
}

/// How many more connections than the least busy serving thread the accepting one may serve
/// before it hands what it accepts to that one instead.
const ACCEPT_SLACK: usize = 2;

impl ServingThreads {
    /// Starts `count` serving threads (at least one; 0 means one per core).
    pub(crate) fn start(count: usize) -> io::Result<(ServingThreads, Dealer)> {
        let count = resolved_count(count);
        let mut stop = Vec::with_capacity(count);
        let mut stopped = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        // The serving threads log where the starting thread does: the global subscriber in the
        // binary, a test's own where it set one for its thread.
        let logging = tracing::dispatcher::get_default(Clone::clone);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (stopped_tx, stopped_rx) = oneshot::channel();
            let id = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
            let logging = logging.clone();
            std::thread::Builder::new()
                .name(format!("juggler-serve-{index}"))
                .spawn(move || {
                    THREAD_ID.with(|cell| cell.set(id));
                    let _logging = tracing::dispatcher::set_default(&logging);
                    // Serves until the stop sender is used or dropped.
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                    drop(runtime);
                    let _ = stopped_tx.send(());
                })?;
            stop.push(stop_tx);
            stopped.push(stopped_rx);
            threads.push(DealtTo {
                runtime: handle,
                id,
                connections: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok((
            ServingThreads { stop, stopped },
            Dealer {
                threads: threads.into(),
            },
        ))
    }

    /// Ends every serving thread and waits until each has dropped what it still ran.
    pub(crate) async fn stop(mut self) {
        self.stop.clear();
        for stopped in std::mem::take(&mut self.stopped) {
            let _ = stopped.await;
        }
    }
}

impl Dealer {
    /// Each serving thread's runtime, to start a task on every one (the accept loops).
    pub(crate) fn runtimes(&self) -> impl Iterator<Item = &Handle> {
        self.threads.iter().map(|thread| &thread.runtime)
    }

    /// Serves `stream`, accepted on the calling serving thread, on that thread: no hand-off and
    /// no re-registration, which a client that opens a connection per request would pay for
    /// every request. Unless this thread already serves more than [`ACCEPT_SLACK`] connections
    /// over the least busy one: then `stream` goes there, so a burst of connections that one
    /// thread happened to accept is still spread evenly.
    pub(crate) fn serve_here<Serve, Served>(&self, stream: TcpStream, serve: Serve)
    where
        Serve: FnOnce(TcpStream) -> Served + Send + 'static,
        Served: Future<Output = ()> + Send + 'static,
    {
        let here = current();
        let fewest = self.fewest();
        let this = self.threads.iter().find(|thread| thread.id == here);
        match this {
            Some(this) if this.count() <= fewest.count() + ACCEPT_SLACK => {
                let serving = ServingOne::new(&this.connections);
                tokio::spawn(async move {
                    let _serving = serving;
                    serve(stream).await;
                });
            }
            _ => match stream.into_std() {
                Ok(stream) => Self::deal_to(fewest, stream, serve),
                Err(error) => tracing::debug!(%error, "a connection could not be served"),
            },
        }
    }

    /// Serves `stream` with `serve` on the serving thread with the fewest connections; the
    /// stream is registered with that thread's reactor there. A stream that cannot be
    /// registered is closed.
    pub(crate) fn deal<Serve, Served>(&self, stream: std::net::TcpStream, serve: Serve)
    where
        Serve: FnOnce(TcpStream) -> Served + Send + 'static,
        Served: Future<Output = ()> + Send + 'static,
    {
        Self::deal_to(self.fewest(), stream, serve);
    }

    fn deal_to<Serve, Served>(thread: &DealtTo, stream: std::net::TcpStream, serve: Serve)
    where
        Serve: FnOnce(TcpStream) -> Served + Send + 'static,
        Served: Future<Output = ()> + Send + 'static,
    {
        let serving = ServingOne::new(&thread.connections);
        thread.runtime.spawn(async move {
            let _serving = serving;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(error) => tracing::debug!(%error, "a connection could not be served"),
            }
        });
    }

    fn fewest(&self) -> &DealtTo {
        self.threads
            .iter()
            .min_by_key(|thread| thread.count())
            .expect("at least one serving thread")
    }
}

impl DealtTo {
    fn count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// One connection counted on its serving thread, uncounted when it ends (or is dropped unserved,
/// when the thread stops first).
struct ServingOne(Arc<AtomicUsize>);

impl ServingOne {
    fn new(connections: &Arc<AtomicUsize>) -> ServingOne {
        connections.fetch_add(1, Ordering::Relaxed);
        ServingOne(Arc::clone(connections))
    }
}

impl Drop for ServingOne {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A connected pair of sockets on loopback: the one to deal and its peer.
    fn connection(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (dealt, _) = listener.accept().unwrap();
        dealt.set_nonblocking(true).unwrap();
        (dealt, peer)
    }

    /// A connection's service for these tests: says on which thread it runs as `(tag, thread)`,
    /// holds the connection until its peer closes, and says so again.
    fn report_and_hold(
        tag: usize,
        served_on: tokio::sync::mpsc::UnboundedSender<(usize, usize)>,
    ) -> impl FnOnce(TcpStream) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |mut stream| {
            Box::pin(async move {
                use tokio::io::AsyncReadExt;
                let thread = current();
                served_on.send((tag, thread)).unwrap();
                // Counted on its thread all that time.
                let _ = stream.read(&mut [0; 1]).await;
                let _ = served_on.send((tag, thread));
            })
        }
    }

    #[tokio::test]
    async fn connections_go_to_the_thread_with_the_fewest_and_stay_there() {
        let (threads, dealer) = ServingThreads::start(2).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (served_on, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut peers = Vec::new();
        for index in 0..4 {
            let (dealt, peer) = connection(&listener);
            peers.push(peer);
            dealer.deal(dealt, report_and_hold(index, served_on.clone()));
        }
        let mut first = [0; 4];
        for _ in 0..4 {
            let (index, thread) = seen.recv().await.unwrap();
            first[index] = thread;
        }
        assert!(first.iter().all(|&thread| thread != 0), "{first:?}");
        assert_eq!(first[0], first[2], "{first:?}");
        assert_eq!(first[1], first[3], "{first:?}");
        assert_ne!(first[0], first[1], "two each, in turn: {first:?}");
        // Two end on the first thread: the next two both go there.
        drop(peers.swap_remove(2));
        drop(peers.swap_remove(0));
        for _ in 0..2 {
            let (index, thread) = seen.recv().await.unwrap();
            assert!([0, 2].contains(&index) && thread == first[0]);
        }
        // Uncounted once their tasks are over, just after their last word.
        let counted = || -> usize { dealer.threads.iter().map(DealtTo::count).sum() };
        tokio::time::timeout(Duration::from_secs(5), async {
            while counted() > 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the ended connections are uncounted");
        for index in 4..6 {
            let (dealt, peer) = connection(&listener);
            peers.push(peer);
            dealer.deal(dealt, report_and_hold(index, served_on.clone()));
        }
        for _ in 0..2 {
            let (index, thread) = seen.recv().await.unwrap();
            assert!(index >= 4 && thread == first[0], "{index} on {thread}");
        }
        threads.stop().await;
    }

    #[tokio::test]
    async fn an_accepted_connection_stays_on_its_thread_unless_that_one_serves_too_many_more() {
        let (threads, dealer) = ServingThreads::start(2).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (served_on, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut peers = Vec::new();
        let accepting = dealer.threads[0].id;
        let other = dealer.threads[1].id;
        // Accepted on the first thread, one after the other: it keeps them while it serves at
        // most ACCEPT_SLACK more than the second, then hands the next to the second.
        let mut expected = vec![accepting; ACCEPT_SLACK + 1];
        expected.push(other);
        for &served_there in &expected {
            let (dealt, peer) = connection(&listener);
            peers.push(peer);
            let (dealer_there, serve) = (dealer.clone(), report_and_hold(0, served_on.clone()));
            dealer.threads[0].runtime.spawn(async move {
                let stream = TcpStream::from_std(dealt).unwrap();
                dealer_there.serve_here(stream, serve);
            });
            assert_eq!(seen.recv().await.unwrap(), (0, served_there));
        }
        let counts: Vec<usize> = dealer.threads.iter().map(DealtTo::count).collect();
        assert_eq!(counts, [ACCEPT_SLACK + 1, 1]);
        threads.stop().await;
    }

    #[tokio::test]
    async fn stopping_ends_the_threads_and_drops_what_they_still_serve() {
        let (threads, dealer) = ServingThreads::start(2).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (dealt, _peer) = connection(&listener);
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        dealer.deal(dealt, move |_stream| async move {
            let _dropped_with_the_task = dropped_tx;
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        started.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), threads.stop())
            .await
            .expect("the threads stop");
        assert!(
            dropped.await.is_err(),
            "the endless task was dropped, not completed"
        );
    }
}
