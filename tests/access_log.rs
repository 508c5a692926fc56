//! The buffered access log (`juggler::logging`, issue 18) over real sockets: lines are written
//! in batches yet show up within the flush interval when traffic stops, none is lost when Juggler
//! shuts down or when an upgrade's predecessor exits, and warnings are not held back.
//!
//! Each test logs into a `LogBuffer` of its own on a current-thread runtime (its subscriber is the
//! thread's default), so tests in one process do not see each other's lines. The predecessor of
//! the upgrade test runs on a thread and runtime of its own, with its own buffer, as a process
//! would.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use juggler::logging::{AccessFormat, LogBuffer};
use juggler::table::Settings;
use juggler_testkit::upgrade::{variant, Instance};
use juggler_testkit::*;
use tracing::subscriber::DefaultGuard;

const HOUR: Duration = Duration::from_secs(3600);
const BUFFER: usize = 64 * 1024;

/// What the log sink received: the bytes and how many writes carried them.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut sink = self.0.lock().unwrap();
        sink.0.extend_from_slice(bytes);
        sink.1 += 1;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn writes(&self) -> usize {
        self.0.lock().unwrap().1
    }

    /// Every line written so far, parsed (the subscriber writes JSON).
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a whole JSON line"))
            .collect()
    }

    /// The access-log lines written so far.
    fn access_lines(&self) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["target"] == juggler::proxy::ACCESS_LOG)
            .collect()
    }
}

/// This thread logs what `filter` (`RUST_LOG`'s syntax) lets through into a fresh buffer over a
/// [`Sink`], formatted as the binary formats it with `[log] format = "json"`.
fn log_into_buffer(
    filter: &str,
    capacity: usize,
    flush: Duration,
) -> (Sink, LogBuffer, DefaultGuard) {
    let sink = Sink::default();
    let buffer = LogBuffer::new(sink.clone(), usize::MAX, capacity, flush).unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(buffer.clone())
        .json()
        .flatten_event(true)
        .map_event_format(AccessFormat::json)
        .finish();
    let default = tracing::subscriber::set_default(subscriber);
    (sink, buffer, default)
}

/// `count` GETs one after another on one keep-alive connection.
async fn requests(addr: std::net::SocketAddr, count: usize) {
    let mut client = Client::connect(addr).await;
    for n in 0..count {
        let answer = client.get(&format!("/logged/{n}")).await.unwrap();
        assert_eq!(answer.status, 200);
    }
}

#[juggler_testkit::test(current_thread)]
async fn lines_are_written_in_batches_and_within_the_flush_interval_once_traffic_stops() {
    const REQUESTS: usize = 50;
    let (sink, _buffer, _default) = log_into_buffer("info", BUFFER, Duration::from_secs(1));
    let (_backend, juggler) = start_one_backend("server", 2, Settings::DEFAULT).await;
    requests(juggler.addr, REQUESTS).await;
    let stopped = Instant::now();
    let written_at_once = sink.access_lines().len();
    let waited = wait_for(Duration::from_secs(5), || {
        sink.access_lines().len() == REQUESTS
    })
    .await;
    let writes = sink.writes();
    println!(
        "{REQUESTS} requests: {written_at_once} lines written when the last answer came, all \
         {REQUESTS} after {:?}, in {writes} writes",
        stopped.elapsed()
    );
    let waited = waited.expect("not every line was written after traffic stopped");
    // The flusher runs every second; the slack is for a loaded machine.
    assert!(waited < Duration::from_millis(2500), "took {waited:?}");
    // Lines of a second go out together, not one write each.
    assert!(writes <= 4, "{writes} writes for {REQUESTS} lines");
}

#[juggler_testkit::test(current_thread)]
async fn every_line_is_written_when_juggler_shuts_down() {
    const REQUESTS: usize = 100;
    let (sink, buffer, _default) = log_into_buffer("info", BUFFER, HOUR);
    // What `main` holds: every buffered line is written when it is dropped.
    let flushed = buffer.flush_on_drop();
    let (_backend, juggler) = start_one_backend("server", 2, Settings::DEFAULT).await;
    requests(juggler.addr, REQUESTS).await;
    juggler.shutdown().await.unwrap();
    // A hundred lines fit in the buffer and the interval is an hour: nothing was written yet.
    assert_eq!(sink.access_lines().len(), 0);
    drop(flushed);
    let lines = sink.access_lines();
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|line| line["request_id"].as_str().unwrap())
        .collect();
    println!("{} access lines, {} distinct ids", lines.len(), ids.len());
    assert_eq!(lines.len(), REQUESTS);
    assert_eq!(ids.len(), REQUESTS);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["path"], format!("/logged/{n}"), "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
}

#[juggler_testkit::test(current_thread)]
async fn the_predecessor_writes_every_line_when_it_exits_after_an_upgrade() {
    const REQUESTS: usize = 60;
    let backend = TestBackend::start("server").await;
    let base = table(&[backend.addr], 2, Settings::DEFAULT);
    let (table_a, table_b) = (
        variant(base, test_routes, "tableaaa"),
        variant(base, test_routes, "tablebbb"),
    );
    let dir = TempDir::new("access-log-upgrade");
    let control = dir.file("juggler.sock");

    // The predecessor: its own thread, runtime and log buffer, as its own process would have; it
    // writes what it gathered once its serving returns, as `main` does.
    let (started, instance) = tokio::sync::oneshot::channel();
    let (exit, exited) = tokio::sync::oneshot::channel::<()>();
    let predecessor = std::thread::spawn(move || {
        // The access log alone: the harness's readiness probes of the control socket each end
        // in a warning ("takeover abandoned"), which would write the lines early.
        let (sink, buffer, default) = log_into_buffer("juggler::access=info", BUFFER, HOUR);
        let flushed = buffer.flush_on_drop();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let instance = Instance::start(table_a, &control, None).await;
            let _ = started.send((instance, sink.clone()));
            let _ = exited.await;
        });
        drop(runtime);
        drop(flushed);
        drop(default);
        sink
    });
    let (old, written) = instance.await.unwrap();
    requests(old.http, REQUESTS).await;
    let new = old.take_over(table_b, None).await;
    old.exited(Duration::from_secs(10)).await;
    assert_eq!(get(new.http, "/after").await.unwrap().status, 200);
    // Its serving has returned; the lines are still gathered until it ends.
    assert_eq!(written.access_lines().len(), 0);
    exit.send(()).unwrap();
    let sink = tokio::task::spawn_blocking(move || predecessor.join().unwrap())
        .await
        .unwrap();
    let lines = sink.access_lines();
    println!(
        "the predecessor wrote {} access lines ({} lines in all) in {} writes",
        lines.len(),
        sink.lines().len(),
        sink.writes()
    );
    assert_eq!(lines.len(), REQUESTS);
    new.stop().await;
}

#[juggler_testkit::test(current_thread)]
async fn a_warning_is_written_at_once_with_the_lines_before_it() {
    // A backend that refuses connections: the first failed connect marks it down, a warning.
    let dead = bind_local().await;
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (sink, _buffer, _default) = log_into_buffer("info", BUFFER, HOUR);
    let settings = settings_with(|settings| settings.proxy.down_after_failures = 1);
    let juggler = TestJuggler::start(table(&[dead_addr], 1, settings)).await;
    tracing::info!("gathered before the warning");
    let asked = Instant::now();
    let answer = get(juggler.addr, "/to-nowhere").await.unwrap();
    assert!(answer.status.is_server_error(), "{}", answer.status);
    // The interval is an hour and the buffer far from full: only the warning's urgency writes.
    let waited = wait_for(Duration::from_secs(2), || {
        sink.lines().iter().any(|line| line["level"] == "WARN")
    })
    .await;
    let lines = sink.lines();
    println!(
        "after {:?}: {:#?}",
        asked.elapsed(),
        lines
            .iter()
            .map(|line| format!("{} {}", line["level"], line["message"]))
            .collect::<Vec<_>>()
    );
    let waited = waited.expect("the warning was held back");
    assert!(waited < Duration::from_millis(500), "took {waited:?}");
    let warning = lines
        .iter()
        .position(|line| line["message"] == "backend marked down: connects keep failing")
        .expect("the backend-down warning");
    // What was gathered before it went out with it, ahead of it.
    assert!(
        lines[..warning]
            .iter()
            .any(|line| line["message"] == "gathered before the warning"),
        "the line logged before the warning is missing or after it"
    );
    juggler.shutdown().await.unwrap();
}
