//! What a plain HTTP/1.1 client connection is doing, as far as its timers need to know: idle
//! between requests, part-way through sending a request head, or waiting for a response.
//!
//! An idle keep-alive connection and one trickling a request head (slowloris) look alike from the
//! socket; the connection task reads these counters to tell them apart, so a slow head gets `408`
//! and an idle connection is closed quietly.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Shared by the connection's IO wrapper (which sees bytes arrive), its requests (which see a
/// request start and its response end) and the connection task (which enforces the timeouts).
#[derive(Debug)]
pub(crate) struct ConnActivity {
    epoch: Instant,
    /// Requests whose response has not been fully written yet.
    in_flight: AtomicU32,
    /// When the connection last went idle (milliseconds since `epoch`).
    idle_since_ms: AtomicU64,
    /// When the first byte of the next request head arrived, plus one; 0 while none has.
    head_started_ms: AtomicU64,
    /// Reads and writes that moved bytes on the client's socket: what a [`StallGuard`] calls
    /// progress.
    socket_io: AtomicU64,
    /// How often the last request in flight has ended: the connection task compares it across its
    /// poll of the connection to decide promptly whether to park.
    times_went_idle: AtomicU64,
}

/// What the connection task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing is overdue; look again at this instant.
    CheckAt(Instant),
    /// A request head has been arriving for longer than the header timeout: answer 408 and close.
    HeadTooSlow,
    /// No request for longer than the idle timeout: close quietly.
    IdleTooLong,
    /// Idle for the park delay with nothing arriving: free the HTTP state until bytes arrive.
    Park,
}

impl ConnActivity {
    pub(crate) fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            socket_io: AtomicU64::new(0),
            times_went_idle: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn instant_at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Called whenever bytes arrive from the client's socket (by the IO wrapper, or by the parked
    /// connection's first read).
    pub(crate) fn bytes_arrived(&self) {
        self.socket_io.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Called when bytes went out to the client's socket.
    fn bytes_sent(&self) {
        self.socket_io.fetch_add(1, Ordering::Relaxed);
    }

    /// Called when bytes of the next request head were already read, with an earlier request,
    /// when the connection went idle (a pipelining client): that head is under the header
    /// timeout like any other, counted from when the connection became free to read it.
    pub(crate) fn head_carried_over(&self) {
        if self.head_started_ms.load(Ordering::Relaxed) == 0 {
            let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
            self.head_started_ms
                .store(idle_since + 1, Ordering::Relaxed);
        }
    }

    /// Called when a complete request head is handed to the service; the returned guard ends the
    /// request when dropped (with the response body, once it is written).
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Decides, at `now`, whether a timeout has run out, or (with `park_after`) whether the
    /// connection has been idle long enough to park.
    pub(crate) fn verdict(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
        park_after: Option<Duration>,
    ) -> Verdict {
        let now = self.now_ms();
        // Look again at least this often: a request head may start at any moment while idle.
        let soon = self.instant_at(now) + (header_timeout / 2).max(Duration::from_millis(10));
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::CheckAt(soon);
        }
        let head_started = self.head_started_ms.load(Ordering::Relaxed);
        if head_started != 0 {
            let deadline = head_started - 1 + header_timeout.as_millis() as u64;
            return if now >= deadline {
                Verdict::HeadTooSlow
            } else {
                Verdict::CheckAt(self.instant_at(deadline))
            };
        }
        let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
        let deadline = idle_since + idle_timeout.as_millis() as u64;
        if now >= deadline {
            return Verdict::IdleTooLong;
        }
        let mut check_at = self.instant_at(deadline).min(soon);
        if let Some(park_after) = park_after {
            let park_at = idle_since + park_after.as_millis() as u64;
            if now >= park_at {
                return Verdict::Park;
            }
            check_at = check_at.min(self.instant_at(park_at));
        }
        Verdict::CheckAt(check_at)
    }

    /// No request in flight and no request head arriving: closing the connection now loses
    /// nothing.
    pub(crate) fn is_quiet(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
    }

    /// When an idle connection is closed if nothing arrives.
    pub(crate) fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        self.instant_at(self.idle_since_ms.load(Ordering::Relaxed)) + idle_timeout
    }

    /// How often the connection has gone idle: a change tells that the last request in flight
    /// ended in between.
    pub(crate) fn times_went_idle(&self) -> u64 {
        self.times_went_idle.load(Ordering::Relaxed)
    }
}

/// A request in progress on a connection; dropping it marks the response finished.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnActivity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Relaxed);
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity.times_went_idle.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The client stream, reporting bytes moving on it to its [`ConnActivity`].
#[derive(Debug)]
pub(crate) struct WatchedIo<S> {
    inner: S,
    activity: Arc<ConnActivity>,
}

impl<S> WatchedIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<ConnActivity>) -> WatchedIo<S> {
        WatchedIo { inner, activity }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// Reads into the connection's buffer (see `http1::BufferedRead`), reporting what arrived.
    pub(crate) fn poll_read_buffered(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> Poll<io::Result<usize>>
    where
        S: super::http1::BufferedRead,
    {
        let read = self.inner.poll_read_buffered(cx, buf);
        if matches!(read, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_arrived();
        }
        read
    }

    fn report_sent(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.bytes_sent();
        }
    }
}

/// Catches a connection task that keeps turning without moving a byte on its socket: a bug of
/// that class (a poll that wakes itself, a park that finds nothing new and parks again) burns a
/// core and starves every task queued behind it on the same worker. Debug builds (and so the
/// tests) fail loudly on it; a release build closes that one connection and logs the bug.
#[derive(Debug)]
pub(crate) struct StallGuard {
    /// The activity's socket counter when it last moved; `None` before the first turn, which
    /// always passes (a connection may park before its client has sent anything).
    last_seen: Option<u64>,
    /// Turns since then.
    idle_turns: u32,
    /// Turns in a row without progress that are still plausible.
    max_idle_turns: u32,
}

impl StallGuard {
    pub(crate) fn new(max_idle_turns: u32) -> StallGuard {
        StallGuard {
            last_seen: None,
            idle_turns: 0,
            max_idle_turns,
        }
    }

    /// Counts one turn of the guarded loop; `Err` once too many turns in a row moved nothing.
    pub(crate) fn turn(
        &mut self,
        activity: &ConnActivity,
        what: &'static str,
    ) -> Result<(), Stalled> {
        let seen = activity.socket_io.load(Ordering::Relaxed);
        if self.last_seen != Some(seen) {
            self.last_seen = Some(seen);
            self.idle_turns = 0;
            return Ok(());
        }
        self.idle_turns += 1;
        if self.idle_turns <= self.max_idle_turns {
            return Ok(());
        }
        tracing::error!(
            what,
            turns = self.idle_turns,
            "bug: a client connection keeps running without socket progress; closing it"
        );
        debug_assert!(
            false,
            "{what}: {} turns without socket progress",
            self.idle_turns
        );
        Err(Stalled)
    }
}

/// A [`StallGuard`] tripped: the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stalled;

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.report_sent(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.report_sent(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_guard_trips_only_after_turns_without_progress() {
        let activity = ConnActivity::new();
        let mut guard = StallGuard::new(2);
        // The first turn only takes note; two more without progress are allowed; progress resets
        // the count.
        assert_eq!(guard.turn(&activity, "test"), Ok(()));
        assert_eq!(guard.turn(&activity, "test"), Ok(()));
        assert_eq!(guard.turn(&activity, "test"), Ok(()));
        for _ in 0..3 {
            activity.bytes_sent();
            assert_eq!(guard.turn(&activity, "test"), Ok(()));
            activity.bytes_arrived();
            assert_eq!(guard.turn(&activity, "test"), Ok(()));
        }
        assert_eq!(guard.turn(&activity, "test"), Ok(()));
        assert_eq!(guard.turn(&activity, "test"), Ok(()));
        // The debug assertion is the point in tests; only a release build gets the `Err` back.
        let third = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            guard.turn(&activity, "test")
        }));
        if cfg!(debug_assertions) {
            assert!(third.is_err(), "a debug build panics on a stall");
        } else {
            assert_eq!(third.ok(), Some(Err(Stalled)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn carried_over_head_is_timed_from_when_the_connection_went_idle() {
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let park = Some(Duration::from_millis(50));
        let activity = ConnActivity::new();
        drop(activity.request_started());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.verdict(header, idle, park), Verdict::Park);
        activity.head_carried_over();
        // Never parked again while a head is pending: the head timer runs instead.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(matches!(
            activity.verdict(header, idle, park),
            Verdict::CheckAt(_)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.verdict(header, idle, park), Verdict::HeadTooSlow);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_slow_head_then_request() {
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let activity = ConnActivity::new();
        assert!(matches!(
            activity.verdict(header, idle, None),
            Verdict::CheckAt(_)
        ));

        tokio::time::advance(Duration::from_secs(30)).await;
        activity.bytes_arrived();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(
            activity.verdict(header, idle, None),
            Verdict::CheckAt(_)
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.verdict(header, idle, None), Verdict::HeadTooSlow);

        let request = activity.request_started();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(
            activity.verdict(header, idle, None),
            Verdict::CheckAt(_)
        ));
        drop(request);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            activity.verdict(header, idle, None),
            Verdict::CheckAt(_)
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(activity.verdict(header, idle, None), Verdict::IdleTooLong);
    }
}
