//! State written on every request, kept as one copy per thread so that no two cores write the
//! same cache line: a copy is aligned to lines of its own, and each thread keeps to its own copy.
//! Readers that need the whole (a scrape of the counters) combine the copies.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Copies kept: more than the serving threads of a typical balancer host, so that threads rarely
/// share one (threads that do still see consistent state, only written from two cores).
const SHARDS: usize = 8;

/// The index of the calling thread's copy, fixed for the thread's life.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// One copy of `T` per shard, each aligned to its own cache lines.
#[derive(Debug)]
pub(crate) struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Sharded<T> {
    /// Each copy made by `make`.
    pub(crate) fn from_fn(mut make: impl FnMut() -> T) -> Sharded<T> {
        Sharded {
            shards: (0..SHARDS).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's copy.
    pub(crate) fn local(&self) -> &T {
        &self.shards[shard_index()].0
    }

    /// The calling thread's copy and its number (below `SHARDS`), for state that must say which
    /// copy it came from.
    pub(crate) fn local_indexed(&self) -> (usize, &T) {
        let index = shard_index();
        (index, &self.shards[index].0)
    }

    pub(crate) fn each(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|padded| &padded.0)
    }
}

impl<T: Default> Sharded<T> {
    pub(crate) fn new() -> Sharded<T> {
        Sharded::from_fn(T::default)
    }
}
