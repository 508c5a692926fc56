//! The one lifecycle every test server shares: an accept loop on 127.0.0.1:0 that hands each
//! connection to a handler task, counts connections accepted and open, closes every connection on
//! `stop()` (as a crashed backend would), and aborts everything when dropped mid-test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A listener on an ephemeral loopback port.
pub async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A count a server keeps and a test reads.
#[derive(Debug, Default)]
pub struct Count(AtomicUsize);

impl Count {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Adds one and returns the new count.
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn drop_one(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// Raises the count to `value` if it is lower (for a "most ever at once").
    pub fn raise_to(&self, value: usize) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

/// TCP connections a server has seen.
#[derive(Debug, Default)]
struct ConnectionCounts {
    accepted: Count,
    open: Count,
}

/// Counts a connection open for as long as it lives, so the count stays exact when its task is
/// aborted by `stop()`.
struct OpenConnection(Arc<ConnectionCounts>);

impl OpenConnection {
    fn new(counts: &Arc<ConnectionCounts>) -> OpenConnection {
        counts.accepted.bump();
        counts.open.bump();
        OpenConnection(Arc::clone(counts))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.drop_one();
    }
}

/// A server on 127.0.0.1 whose handler records what it sees in `stats` (`S`: what this kind of
/// backend counts). The hyper, faulty and raw backends are this type with their own handler.
pub struct Backend<S> {
    pub addr: SocketAddr,
    /// What the handler recorded, shared with every connection task.
    pub stats: Arc<S>,
    connections: Arc<ConnectionCounts>,
    /// Ends the accept loop; the loop then closes every connection.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl<S: Send + Sync + 'static> Backend<S> {
    /// Serves `listener`, running `handle(stream, stats)` for each connection in a task of its own.
    pub fn serve<F, Fut>(listener: TcpListener, stats: S, handle: F) -> Backend<S>
    where
        F: Fn(TcpStream, Arc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(stats);
        let connections = Arc::new(ConnectionCounts::default());
        let (stop, mut stopped) = oneshot::channel();
        let (task_stats, counts) = (Arc::clone(&stats), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut stopped => break,
                };
                let open = OpenConnection::new(&counts);
                let served = handle(stream, Arc::clone(&task_stats));
                tasks.spawn(async move {
                    served.await;
                    drop(open);
                });
                // Reap finished connection tasks so the set does not grow without bound.
                while tasks.try_join_next().is_some() {}
            }
            // Aborts every connection still open: the backend is gone.
            tasks.shutdown().await;
        });
        Backend {
            addr,
            stats,
            connections,
            stop: Some(stop),
            task,
        }
    }

    /// TCP connections accepted over the server's life.
    pub fn accepted(&self) -> usize {
        self.connections.accepted.get()
    }

    /// TCP connections open right now.
    pub fn open(&self) -> usize {
        self.connections.open.get()
    }

    /// Stops accepting and closes every connection, as a crashed backend would.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl<S> Drop for Backend<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
