//! Log lines gathered per thread and written in batches, as nginx's `access_log ... buffer=
//! flush=`: with the access log on, one `write(2)` per request cost more than the rest of the
//! logging together.
//!
//! [`LogBuffer`] is the writer `tracing_subscriber::fmt` formats every event into, and the
//! buffer the access log formats its lines into without an event (`AccessLine`). Each thread
//! appends whole lines to a buffer of its own, behind a lock only a flush ever contends. A
//! thread's buffer is written when the next line would not fit (`[log] buffer`), by a thread of
//! its own every `[log] flush` interval (so lines show up when traffic stops), at once when the
//! event is a warning or an error (with every thread's lines before it: an operator watching a
//! failing start-up sees it as it happens), and by [`FlushOnDrop`] when the process ends, so a
//! SIGTERM or an upgrade's handover loses nothing. `buffer = 0` writes every line at once.
//!
//! Every write is whole lines, under one lock, so two threads' lines never interleave. Written to a
//! pipe, a batch goes out in pieces of at most `PIPE_BUF` bytes cut at line ends: the kernel keeps
//! such writes whole, so the lines of a predecessor and its successor sharing a pipe during an
//! upgrade do not tear either.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use thread_local::ThreadLocal;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::table::LogBuffering;

/// Linux's `PIPE_BUF`: the largest write to a pipe the kernel never interleaves with another.
const PIPE_ATOMIC_BYTES: usize = 4096;

/// The writer `tracing_subscriber::fmt` is given; clones share the buffers.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Each thread's lines not yet written: locked by its thread for every line, by a flush
    /// for the time it writes them.
    lines: ThreadLocal<Mutex<Vec<u8>>>,
    /// Bytes a thread gathers before it writes them; 0 writes every line at once.
    capacity: usize,
    /// Where lines go. One lock for every write, so batches never interleave.
    out: Mutex<Output>,
}

struct Output {
    sink: Box<dyn Write + Send>,
    /// The most bytes one `write` may carry for the sink to keep it whole (a pipe's `PIPE_BUF`);
    /// `usize::MAX` where any size is kept whole or nothing would be (files, terminals, sockets).
    atomic: usize,
}

impl LogBuffer {
    /// Lines to stderr, buffered as `[log]` says.
    pub fn stderr(buffering: &LogBuffering) -> io::Result<LogBuffer> {
        let atomic = match rustix::fs::fstat(io::stderr()) {
            Ok(stat)
                if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                    == rustix::fs::FileType::Fifo =>
            {
                PIPE_ATOMIC_BYTES
            }
            _ => usize::MAX,
        };
        LogBuffer::new(io::stderr(), atomic, buffering.buffer, buffering.flush)
    }

    /// Lines to `sink` in writes of at most `atomic` bytes (whole lines longer than that alone),
    /// gathered up to `capacity` bytes per thread and written at least every `flush`.
    pub fn new(
        sink: impl Write + Send + 'static,
        atomic: usize,
        capacity: usize,
        flush: Duration,
    ) -> io::Result<LogBuffer> {
        let shared = Arc::new(Shared {
            lines: ThreadLocal::new(),
            capacity,
            out: Mutex::new(Output {
                sink: Box::new(sink),
                atomic,
            }),
        });
        if capacity > 0 {
            // The thread ends at its first tick after the last clone is gone.
            let flushed = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("juggler-log-flush".into())
                .spawn(move || loop {
                    std::thread::sleep(flush);
                    let Some(shared) = flushed.upgrade() else {
                        return;
                    };
                    shared.flush_all(None);
                })?;
        }
        Ok(LogBuffer { shared })
    }

    /// Writes every thread's gathered lines now.
    pub fn flush(&self) {
        self.shared.flush_all(None);
    }

    /// A guard that writes every gathered line when dropped: `main` holds one, so that nothing
    /// buffered is lost however it returns.
    pub fn flush_on_drop(&self) -> FlushOnDrop {
        FlushOnDrop(self.clone())
    }

    /// Formats one line straight into this thread's buffer: the access log, which has no event
    /// to go through the subscriber with. Batched, flushed and kept whole as any other line.
    pub(super) fn append_line(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let mut line = self.line(false);
        format(&mut line.lines);
        // The line's length is known only now: if it did not fit, the whole lines before it go
        // out and it moves to the front (a few hundred bytes; the buffer's allocation grows past
        // `capacity` once per thread, when the first line overflows it).
        if line.start > 0 && line.lines.len() > self.shared.capacity {
            line.write_out_earlier();
        }
    }

    fn line(&self, urgent: bool) -> LineWriter<'_> {
        let shared = &*self.shared;
        let mine = shared
            .lines
            .get_or(|| Mutex::new(Vec::with_capacity(shared.capacity)));
        let lines = lock(mine);
        LineWriter {
            shared,
            mine,
            start: lines.len(),
            lines,
            urgent,
        }
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        self.line(false)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        self.line(*meta.level() <= Level::WARN)
    }
}

/// Writes every gathered line when dropped (see [`LogBuffer::flush_on_drop`]).
pub struct FlushOnDrop(LogBuffer);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// One event's bytes, appended to its thread's buffer. The buffer stays locked until the event is
/// complete, so a flush never writes half of it.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    /// This thread's buffer, which `lines` holds locked.
    mine: &'a Mutex<Vec<u8>>,
    lines: MutexGuard<'a, Vec<u8>>,
    /// Where this event's bytes begin in `lines`: everything before is whole lines.
    start: usize,
    /// A warning or an error: written at once, with every thread's lines before it.
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.start > 0 && self.lines.len() + bytes.len() > self.shared.capacity {
            // This event would not fit: the whole lines before it go first.
            self.write_out_earlier();
        }
        self.lines.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LineWriter<'_> {
    /// Writes the whole lines before this event's bytes, which move to the front.
    fn write_out_earlier(&mut self) {
        self.shared.write_out(&self.lines[..self.start]);
        self.lines.drain(..self.start);
        self.start = 0;
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.urgent {
            // The other threads' earlier lines first, so the warning reads after what led to it.
            // `try_lock`: a thread holding its buffer is mid-line (or flushing it), and two
            // warnings at once must not wait on each other's buffers; those lines keep to the
            // flush interval.
            self.shared.flush_all(Some(self.mine));
        }
        if self.urgent || self.lines.len() >= self.shared.capacity {
            self.shared.write_out(&self.lines);
            self.lines.clear();
        }
    }
}

impl Shared {
    /// Writes out every thread's lines. `busy_skipped` is the caller's own buffer, which it holds:
    /// then buffers locked by another thread are skipped rather than waited for.
    fn flush_all(&self, busy_skipped: Option<&Mutex<Vec<u8>>>) {
        for buffer in self.lines.iter() {
            let mut lines = match busy_skipped {
                None => lock(buffer),
                Some(mine) if std::ptr::eq(mine, buffer) => continue,
                Some(_) => match buffer.try_lock() {
                    Ok(lines) => lines,
                    Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => continue,
                },
            };
            if !lines.is_empty() {
                self.write_out(&lines);
                lines.clear();
            }
        }
    }

    /// Writes whole lines to the sink. A log that cannot be written (stderr closed, a full disk)
    /// must not stop the proxy: the lines are dropped.
    fn write_out(&self, mut lines: &[u8]) {
        let mut out = lock(&self.out);
        let out = &mut *out;
        while !lines.is_empty() {
            let piece = match lines.len() <= out.atomic {
                true => lines.len(),
                // Up to the last line end that fits; a longer line goes whole.
                false => lines[..out.atomic]
                    .iter()
                    .rposition(|&byte| byte == b'\n')
                    .or_else(|| lines.iter().position(|&byte| byte == b'\n'))
                    .map_or(lines.len(), |end| end + 1),
            };
            if out.sink.write_all(&lines[..piece]).is_err() {
                return;
            }
            lines = &lines[piece..];
        }
    }
}

/// A buffer stays usable after a panic elsewhere: its bytes are whole lines or one event's start.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write the sink receives, as a pipe reader would see them one by one.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn taken(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut *lock(&self.0))
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn log(buffer: &LogBuffer, line: &str) {
        buffer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_wait_until_the_buffer_is_full_then_go_in_one_write() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(writes.clone(), usize::MAX, 100, HOUR).unwrap();
        for n in 0..9 {
            log(&buffer, &format!("line {n:04}\n"));
        }
        assert!(writes.taken().is_empty(), "90 bytes fit in 100");
        // The tenth line fills the buffer: one write of all ten.
        log(&buffer, "line 0009\n");
        let written = writes.taken();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].len(), 100);
        // A line that would not fit pushes out the lines before it, not itself.
        log(&buffer, &format!("{}\n", "x".repeat(59)));
        log(&buffer, &format!("{}\n", "y".repeat(59)));
        assert_eq!(
            writes.taken(),
            vec![format!("{}\n", "x".repeat(59)).into_bytes()]
        );
        buffer.flush();
        assert_eq!(writes.taken().len(), 1);
    }

    /// Lines formatted straight into the buffer (the access log's) batch as written ones do.
    #[test]
    fn appended_lines_are_batched_as_written_ones() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(writes.clone(), usize::MAX, 100, HOUR).unwrap();
        let append = |line: &str| buffer.append_line(|out| out.extend_from_slice(line.as_bytes()));
        for n in 0..9 {
            append(&format!("line {n:04}\n"));
        }
        assert!(writes.taken().is_empty(), "90 bytes fit in 100");
        append("line 0009\n");
        assert_eq!(
            writes.taken().iter().map(Vec::len).collect::<Vec<_>>(),
            [100]
        );
        // One that does not fit pushes out the lines before it, not itself.
        append(&format!("{}\n", "x".repeat(59)));
        log(&buffer, &format!("{}\n", "y".repeat(30)));
        append(&format!("{}\n", "z".repeat(59)));
        let x_and_y = format!("{}\n{}\n", "x".repeat(59), "y".repeat(30));
        assert_eq!(writes.taken(), vec![x_and_y.into_bytes()]);
        buffer.flush();
        assert_eq!(
            writes.taken(),
            vec![format!("{}\n", "z".repeat(59)).into_bytes()]
        );
        // Unbuffered, each goes at once.
        let buffer = LogBuffer::new(writes.clone(), usize::MAX, 0, HOUR).unwrap();
        buffer.append_line(|out| out.extend_from_slice(b"one\n"));
        assert_eq!(writes.taken(), vec![b"one\n".to_vec()]);
    }

    #[test]
    fn zero_capacity_writes_each_line_at_once() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(writes.clone(), usize::MAX, 0, HOUR).unwrap();
        log(&buffer, "one\n");
        log(&buffer, "two\n");
        assert_eq!(writes.taken(), vec![b"one\n".to_vec(), b"two\n".to_vec()]);
    }

    #[test]
    fn writes_to_a_pipe_are_cut_at_line_ends_within_the_atomic_size() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(writes.clone(), 10, 1000, HOUR).unwrap();
        for line in [
            "aaaa\n",
            "bbbb\n",
            "cccc\n",
            "a line longer than ten\n",
            "dd\n",
        ] {
            log(&buffer, line);
        }
        buffer.flush();
        let written: Vec<String> = writes
            .taken()
            .into_iter()
            .map(|bytes| String::from_utf8(bytes).unwrap())
            .collect();
        assert_eq!(
            written,
            ["aaaa\nbbbb\n", "cccc\n", "a line longer than ten\n", "dd\n"]
        );
    }

    #[test]
    fn the_flusher_writes_lines_when_traffic_stops() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(
            writes.clone(),
            usize::MAX,
            1 << 16,
            Duration::from_millis(50),
        )
        .unwrap();
        log(&buffer, "alone\n");
        let started = std::time::Instant::now();
        while writes.taken().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5), "never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
        println!("flushed after {:?}", started.elapsed());
    }

    /// Many threads logging through `tracing` at once into a small buffer (many flushes, by full
    /// buffers, by warnings and by the flusher, all racing): every write holds whole lines only,
    /// and no line is lost or doubled.
    #[test]
    fn lines_of_many_threads_are_never_torn_or_lost() {
        const THREADS: usize = 8;
        const LINES: usize = 2000;
        let writes = Writes::default();
        let buffer = LogBuffer::new(writes.clone(), 512, 300, Duration::from_millis(1)).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(buffer.clone())
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false)
                    .finish();
                scope.spawn(move || {
                    tracing::subscriber::with_default(subscriber, || {
                        for n in 0..LINES {
                            // Lines of varying length, some past the pipe's atomic size.
                            let z = "z".repeat(n % 700);
                            match n % 97 {
                                0 => tracing::warn!("{thread} {n} {z}"),
                                _ => tracing::info!("{thread} {n} {z}"),
                            }
                        }
                    });
                });
            }
        });
        buffer.flush();
        let mut seen = vec![vec![false; LINES]; THREADS];
        let written = writes.taken();
        for write in &written {
            assert_eq!(write.last(), Some(&b'\n'), "a write ends mid-line");
            for line in write.split(|&byte| byte == b'\n').filter(|l| !l.is_empty()) {
                let line = std::str::from_utf8(line).unwrap();
                let mut fields = line.split(' ');
                let thread: usize = fields.next().unwrap().parse().unwrap();
                let n: usize = fields.next().unwrap().parse().unwrap();
                assert_eq!(fields.next().unwrap(), "z".repeat(n % 700), "torn: {line}");
                assert!(!seen[thread][n], "line {thread} {n} written twice");
                seen[thread][n] = true;
            }
        }
        let lost = seen.iter().flatten().filter(|seen| !**seen).count();
        println!("{} lines in {} writes", THREADS * LINES, written.len());
        assert_eq!(lost, 0);
    }
}
