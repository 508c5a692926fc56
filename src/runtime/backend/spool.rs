//! Bodies too large to hold in memory, under two global budgets.
//!
//! - A request body keeps its first `body_memory_bytes` in memory and spills the rest to an
//!   unlinked temporary file ([`BodyIntake`] → [`RequestBody`]), sent to the backend from there
//!   with `sendfile` (see `conn`). While a budget is full an upload simply waits for it: its task
//!   stops polling the client's body, so hyper stops reading the socket and TCP backpressure
//!   reaches the client. Nobody is failed for it unless the wait outlasts `body_read_timeout`.
//! - A response over `response_buffer_bytes` is copied from the backend into a spool file at the
//!   backend's pace by a task of its own ([`spool_response`]), which gives the pooled connection
//!   back as soon as the backend has finished; the client reads the file at its own pace
//!   ([`SpooledBody`]). When the spool budget or the per-response cap runs out part-way, the
//!   rest streams from the connection as it did before spooling existed.
//!
//! The budgets are semaphores of bytes: a byte in memory or on disk is held as a permit and given
//! back when the body is dropped, however the request ends.
//!
//! Spill files are created with `tempfile::tempfile_in`, which on Linux opens them `O_TMPFILE` (they
//! never have a name) or unlinks them at once: nothing is left behind after a crash, a client that
//! goes away or a shutdown, because the kernel frees the space when the last descriptor closes.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use juggler_config::table::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::body::StreamingBody;
use super::conn::{BodyError, BodyState};
use super::pool::PooledConn;

/// Spilled bytes are written, and spooled bytes read, in pieces of this size: large enough that a
/// blocking-pool hop per piece costs little, small enough to be a fixed per-body overhead.
pub(crate) const SPOOL_PIECE: usize = 64 * 1024;

/// The global memory and disk budgets for bodies, and where spill files go.
#[derive(Debug)]
pub struct Budget {
    /// In-memory request body bytes of every request together (`body_memory_budget`).
    memory: Arc<Semaphore>,
    /// Bytes in spill files, requests and responses together (`spool_budget`).
    disk: Arc<Semaphore>,
    /// Bytes of each request body kept in memory (`body_memory_bytes`).
    memory_part: usize,
    /// The largest response spooled (`response_spool_max_bytes`).
    response_cap: u64,
    /// The directory of spill files: the system temporary directory (`$TMPDIR`, else `/tmp`).
    dir: PathBuf,
    /// Responses that streamed (holding their pooled connection) because the spool budget or the
    /// per-response cap ran out; reported in the log line of each such response.
    streamed: AtomicU64,
}

impl Budget {
    pub fn new(limits: &Limits) -> Budget {
        let permits = |bytes: usize| bytes.min(Semaphore::MAX_PERMITS);
        Budget {
            memory: Arc::new(Semaphore::new(permits(limits.body_memory_budget))),
            disk: Arc::new(Semaphore::new(permits(limits.spool_budget))),
            memory_part: limits.body_memory_bytes,
            response_cap: limits.response_spool_max_bytes as u64,
            dir: std::env::temp_dir(),
            streamed: AtomicU64::new(0),
        }
    }

    /// In-memory body bytes not taken right now.
    pub fn memory_available(&self) -> usize {
        self.memory.available_permits()
    }

    /// Spill-file bytes not taken right now.
    pub fn disk_available(&self) -> usize {
        self.disk.available_permits()
    }

    async fn temp_file(&self) -> io::Result<File> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
            .await
            .map_err(io::Error::other)?
    }
}

/// Waits until `bytes` of `budget` are free and takes them.
async fn reserve(budget: &Arc<Semaphore>, bytes: usize) -> OwnedSemaphorePermit {
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    match Arc::clone(budget).acquire_many_owned(bytes).await {
        Ok(permit) => permit,
        // The budgets are never closed.
        Err(_) => unreachable!("body budget semaphore closed"),
    }
}

/// Takes `bytes` of `budget` if they are free now.
fn try_reserve(budget: &Arc<Semaphore>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let bytes = u32::try_from(bytes).ok()?;
    Arc::clone(budget).try_acquire_many_owned(bytes).ok()
}

fn add(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(permit) => permit.merge(more),
        None => *held = Some(more),
    }
}

/// A complete request body: its first bytes in memory, the rest (if any) in a spill file. The
/// budget it holds is given back when it is dropped.
#[derive(Debug, Default)]
pub struct RequestBody {
    memory: Bytes,
    spill: Option<Spill>,
    _memory_permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
struct Spill {
    file: Arc<File>,
    len: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

impl RequestBody {
    /// A body held in memory outside the budget (tests, small fixed texts).
    pub fn from_bytes(bytes: Bytes) -> RequestBody {
        RequestBody {
            memory: bytes,
            ..RequestBody::default()
        }
    }

    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.spill.as_ref().map_or(0, |spill| spill.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory: the whole body unless it spilled.
    pub fn in_memory(&self) -> &Bytes {
        &self.memory
    }

    /// The spill file and how many of its bytes follow the in-memory part.
    pub(crate) fn spilled(&self) -> Option<(&File, u64)> {
        self.spill.as_ref().map(|spill| (&*spill.file, spill.len))
    }
}

/// A request body being received: bytes go to memory up to the per-request part, then to a spill
/// file, each only once its budget has room.
#[derive(Debug)]
pub struct BodyIntake<'a> {
    budget: &'a Budget,
    memory: Vec<u8>,
    memory_permit: Option<OwnedSemaphorePermit>,
    spill: Option<SpillWriter>,
    /// Set while the intake waits for a budget: a body timeout then is Juggler's doing (`503`),
    /// not the client's (`408`).
    pub waiting_for_budget: bool,
}

#[derive(Debug)]
struct SpillWriter {
    file: Arc<File>,
    written: u64,
    /// Bytes gathered for the next write, taken from the memory budget when spilling started.
    batch: Vec<u8>,
    disk_permit: Option<OwnedSemaphorePermit>,
}

impl<'a> BodyIntake<'a> {
    pub fn new(budget: &'a Budget) -> BodyIntake<'a> {
        BodyIntake {
            budget,
            memory: Vec::new(),
            memory_permit: None,
            spill: None,
            waiting_for_budget: false,
        }
    }

    /// Takes one piece of the body. It has already been read off the socket (at most hyper's read
    /// buffer, or one HTTP/2 frame); the next is not read until this returns.
    pub async fn push(&mut self, mut chunk: Bytes) -> io::Result<()> {
        let room = self.budget.memory_part - self.memory.len();
        if room > 0 && self.spill.is_none() {
            let take = room.min(chunk.len());
            self.waiting_for_budget = true;
            let permit = reserve(&self.budget.memory, take).await;
            self.waiting_for_budget = false;
            add(&mut self.memory_permit, permit);
            // Grown by doubling but never past the part, so capacity is what the budget counts.
            if self.memory.capacity() < self.memory.len() + take {
                let want = (self.memory.capacity() * 2)
                    .max(self.memory.len() + take)
                    .min(self.budget.memory_part);
                self.memory.reserve_exact(want - self.memory.len());
            }
            self.memory.extend_from_slice(&chunk.split_to(take));
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if self.spill.is_none() {
            self.waiting_for_budget = true;
            let batch_permit = reserve(&self.budget.memory, SPOOL_PIECE).await;
            self.waiting_for_budget = false;
            add(&mut self.memory_permit, batch_permit);
            self.spill = Some(SpillWriter {
                file: Arc::new(self.budget.temp_file().await?),
                written: 0,
                batch: Vec::with_capacity(SPOOL_PIECE),
                disk_permit: None,
            });
        }
        while !chunk.is_empty() {
            let Some(spill) = self.spill.as_mut() else {
                break;
            };
            let take = (SPOOL_PIECE - spill.batch.len()).min(chunk.len());
            spill.batch.extend_from_slice(&chunk.split_to(take));
            if spill.batch.len() == SPOOL_PIECE {
                self.write_batch().await?;
            }
        }
        Ok(())
    }

    /// Writes the gathered bytes to the spill file once the disk budget has room for them.
    async fn write_batch(&mut self) -> io::Result<()> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(());
        };
        if spill.batch.is_empty() {
            return Ok(());
        }
        self.waiting_for_budget = true;
        let permit = reserve(&self.budget.disk, spill.batch.len()).await;
        self.waiting_for_budget = false;
        add(&mut spill.disk_permit, permit);
        let batch = std::mem::take(&mut spill.batch);
        let (file, offset) = (Arc::clone(&spill.file), spill.written);
        let mut batch =
            tokio::task::spawn_blocking(move || file.write_all_at(&batch, offset).map(|()| batch))
                .await
                .map_err(io::Error::other)??;
        spill.written += batch.len() as u64;
        batch.clear();
        spill.batch = batch;
        Ok(())
    }

    /// The complete body. The spill batch's memory goes back to the budget here.
    pub async fn finish(mut self) -> io::Result<RequestBody> {
        self.write_batch().await?;
        let spill = self.spill.take().map(|spill| Spill {
            file: spill.file,
            len: spill.written,
            _permit: spill.disk_permit,
        });
        let mut memory_permit = self.memory_permit.take();
        if let (Some(permit), true) = (memory_permit.as_mut(), spill.is_some()) {
            // The batch buffer is gone; only the in-memory part stays counted.
            if let Some(batch) = permit.split(SPOOL_PIECE) {
                drop(batch);
            }
        }
        Ok(RequestBody {
            memory: Bytes::from(std::mem::take(&mut self.memory)),
            spill,
            _memory_permit: memory_permit,
        })
    }
}

/// What the spooling task and the client's body share.
#[derive(Debug)]
pub(super) struct SpoolShared {
    file: File,
    state: Mutex<SpoolState>,
}

#[derive(Debug)]
struct SpoolState {
    /// Bytes in the file so far.
    written: u64,
    end: Option<SpoolEnd>,
    /// The client's body, waiting for more bytes.
    reader: Option<Waker>,
    /// The client went away: the spooling task stops and closes the backend connection.
    reader_gone: bool,
    /// The disk budget the file's bytes hold, given back with the file.
    permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
enum SpoolEnd {
    Complete,
    Failed(io::ErrorKind),
    /// The budget or the cap ran out: after the file's bytes, the body streams from here.
    StreamRest(Box<StreamingBody>),
}

impl SpoolShared {
    fn state(&self) -> std::sync::MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut SpoolState)) {
        let waker = {
            let mut state = self.state();
            change(&mut state);
            state.reader.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// What [`spool_response`] needs about the response being spooled.
pub(super) struct SpoolJob {
    pub slot: PooledConn,
    pub state: BodyState,
    /// Bytes already read while deciding the body is too large to buffer.
    pub prefix: Bytes,
    pub keep_alive: bool,
    /// The whole body's length, when the backend sent one.
    pub len: Option<u64>,
    pub stall_timeout: Duration,
}

/// Starts copying a large response into a spool file at the backend's pace; `Err` gives the job
/// back when the spool budget (or the per-response cap) has no room for even its prefix, or no
/// file can be made, and the caller streams it as before.
pub(super) async fn spool_response(
    budget: &Arc<Budget>,
    job: SpoolJob,
) -> Result<SpooledBody, SpoolJob> {
    let prefix_len = job.prefix.len() as u64;
    let fits_cap = job.len.unwrap_or(prefix_len).max(prefix_len) <= budget.response_cap;
    let prefix_permit = fits_cap
        .then(|| try_reserve(&budget.disk, job.prefix.len()))
        .flatten();
    let Some(prefix_permit) = prefix_permit else {
        note_streamed(budget, &job, "spool budget or per-response cap reached");
        return Err(job);
    };
    let file = match budget.temp_file().await {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(%error, dir = %budget.dir.display(), "cannot create a spool file");
            note_streamed(budget, &job, "no spool file");
            return Err(job);
        }
    };
    let shared = Arc::new(SpoolShared {
        file,
        state: Mutex::new(SpoolState {
            written: 0,
            end: None,
            reader: None,
            reader_gone: false,
            permit: Some(prefix_permit),
        }),
    });
    let len = job.len;
    tokio::spawn(copy_to_spool(Arc::clone(budget), Arc::clone(&shared), job));
    Ok(SpooledBody {
        shared,
        pos: 0,
        reading: None,
        remaining: len,
    })
}

fn note_streamed(budget: &Budget, job: &SpoolJob, why: &'static str) {
    let streamed = budget.streamed.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        backend = job.slot.backend().address,
        why,
        streamed_responses = streamed,
        "large response streams, holding its pooled connection"
    );
}

/// The spooling task: backend → file, until the body ends, the client goes away, or the budget
/// runs out (then the rest streams).
async fn copy_to_spool(budget: Arc<Budget>, shared: Arc<SpoolShared>, job: SpoolJob) {
    let SpoolJob {
        slot,
        mut state,
        prefix,
        keep_alive,
        len: _,
        stall_timeout,
    } = job;
    let mut slot = Some(slot);
    // Bytes read and already counted in the budget, not yet in the file.
    let mut pending = prefix;
    let mut written = 0u64;
    loop {
        if !pending.is_empty() {
            let piece = std::mem::take(&mut pending);
            let file_shared = Arc::clone(&shared);
            let len = piece.len() as u64;
            let result =
                tokio::task::spawn_blocking(move || file_shared.file.write_all_at(&piece, written))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|result| result);
            if let Err(error) = result {
                tracing::warn!(%error, "spool file write failed");
                shared.update(|state| state.end = Some(SpoolEnd::Failed(error.kind())));
                return;
            }
            written += len;
            shared.update(|state| state.written = written);
        }
        let Some(conn_slot) = slot.as_mut() else {
            shared.update(|state| state.end = Some(SpoolEnd::Complete));
            return;
        };
        if shared.state().reader_gone {
            return;
        }
        let gathered = match gather(conn_slot, &mut state, stall_timeout).await {
            Ok(gathered) => gathered,
            Err(kind) => {
                shared.update(|state| state.end = Some(SpoolEnd::Failed(kind)));
                return;
            }
        };
        if matches!(state, BodyState::Done) {
            // The backend is done: its connection goes back to the pool now, whatever the client.
            if let Some(mut done) = slot.take() {
                done.response_complete(keep_alive);
            }
        }
        let fits = written + gathered.len() as u64 <= budget.response_cap;
        match fits
            .then(|| try_reserve(&budget.disk, gathered.len()))
            .flatten()
        {
            Some(permit) => {
                shared.update(|state| add(&mut state.permit, permit));
                pending = gathered;
            }
            None => {
                let streamed = budget.streamed.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    spooled = written,
                    streamed_responses = streamed,
                    "spool budget or per-response cap reached: the rest of the response streams"
                );
                let rest = match slot.take() {
                    Some(slot) => {
                        StreamingBody::new(slot, state, gathered, keep_alive, stall_timeout)
                    }
                    None => StreamingBody::finished(gathered),
                };
                shared.update(|state| state.end = Some(SpoolEnd::StreamRest(Box::new(rest))));
                return;
            }
        }
    }
}

/// Reads up to one spool piece from the backend (less at the end of the body).
async fn gather(
    slot: &mut PooledConn,
    state: &mut BodyState,
    stall_timeout: Duration,
) -> Result<Bytes, io::ErrorKind> {
    let backend = slot.backend().address;
    let mut gathered = bytes::BytesMut::new();
    while gathered.len() < SPOOL_PIECE {
        let conn = slot.conn();
        let next = std::future::poll_fn(|cx| conn.poll_body_chunk(state, cx));
        match tokio::time::timeout(stall_timeout, next).await {
            Ok(Ok(Some(chunk))) => gathered.extend_from_slice(&chunk),
            Ok(Ok(None)) => break,
            Ok(Err(error)) => {
                tracing::warn!(backend, ?error, "backend response cut off while spooling");
                return Err(match error {
                    BodyError::Io(error) => error.kind(),
                    BodyError::Invalid(_) => io::ErrorKind::InvalidData,
                    BodyError::Truncated => io::ErrorKind::UnexpectedEof,
                });
            }
            Err(_) => {
                tracing::warn!(backend, "backend stalled while spooling a response");
                return Err(io::ErrorKind::TimedOut);
            }
        }
    }
    Ok(gathered.freeze())
}

/// The client's side of a spooled response: reads the file behind the spooling task.
#[derive(Debug)]
pub(super) struct SpooledBody {
    shared: Arc<SpoolShared>,
    /// Bytes of the file already handed to the client.
    pos: u64,
    /// A read of the file in the blocking pool.
    reading: Option<JoinHandle<io::Result<Vec<u8>>>>,
    /// Bytes still to come, when the backend sent a length.
    pub(super) remaining: Option<u64>,
}

/// What the client's body does next.
pub(super) enum SpoolRead {
    Data(Bytes),
    End,
    Failed(io::Error),
    /// The spooled bytes are all out; the rest streams from this.
    Stream(Box<StreamingBody>),
}

impl SpooledBody {
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<SpoolRead> {
        loop {
            if let Some(reading) = self.reading.as_mut() {
                let read = std::task::ready!(std::pin::Pin::new(reading).poll(cx));
                self.reading = None;
                return Poll::Ready(match read.map_err(io::Error::other).and_then(|r| r) {
                    Ok(piece) => {
                        self.pos += piece.len() as u64;
                        if let Some(remaining) = self.remaining.as_mut() {
                            *remaining = remaining.saturating_sub(piece.len() as u64);
                        }
                        SpoolRead::Data(Bytes::from(piece))
                    }
                    Err(error) => SpoolRead::Failed(error),
                });
            }
            let mut state = self.shared.state();
            if state.written > self.pos {
                let len = (state.written - self.pos).min(SPOOL_PIECE as u64) as usize;
                drop(state);
                let (shared, pos) = (Arc::clone(&self.shared), self.pos);
                self.reading = Some(tokio::task::spawn_blocking(move || {
                    let mut piece = vec![0; len];
                    shared.file.read_exact_at(&mut piece, pos)?;
                    Ok(piece)
                }));
                continue;
            }
            return Poll::Ready(match state.end.take() {
                Some(SpoolEnd::Complete) => {
                    state.end = Some(SpoolEnd::Complete);
                    SpoolRead::End
                }
                Some(SpoolEnd::Failed(kind)) => {
                    state.end = Some(SpoolEnd::Failed(kind));
                    SpoolRead::Failed(kind.into())
                }
                Some(SpoolEnd::StreamRest(rest)) => SpoolRead::Stream(rest),
                None => {
                    state.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            });
        }
    }

    /// Whether every byte has been handed out.
    pub(super) fn is_end(&self) -> bool {
        let state = self.shared.state();
        matches!(state.end, Some(SpoolEnd::Complete)) && state.written == self.pos
    }
}

impl Drop for SpooledBody {
    fn drop(&mut self) {
        self.shared.state().reader_gone = true;
    }
}
