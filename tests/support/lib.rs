//! Juggler's integration-test harness, one of each: servers on 127.0.0.1:0 sharing one
//! accept/stop/drop lifecycle ([`backend`]: a real hyper backend, a faulty one, a raw one),
//! Juggler itself inside the test's runtime on plain HTTP or plain HTTP and HTTPS ([`launcher`]),
//! clients ([`client`], [`tls`], [`wire`], [`raw`]), a temporary directory and certificates
//! ([`certs`]), and the runtime and time bound every test runs under ([`test`], [`bounded`]).
//!
//! A library rather than a `mod support;` in each test file: it compiles once, and everything a
//! test may use is `pub` instead of hidden behind `allow(dead_code)`.

pub mod backend;
pub mod bodies;
pub mod certs;
pub mod client;
pub mod etcd;
pub mod faulty;
pub mod hyper_backend;
pub mod launcher;
pub mod raw;
pub mod raw_backend;
pub mod tcp_table;
pub mod test_server;
pub mod tls;
pub mod upgrade;
pub mod wire;

use std::future::Future;
use std::time::Duration;

pub use backend::{bind_local, Backend, Count};
pub use certs::{CertFiles, TempDir, TestCert};
pub use client::{get, gets_at_once, post, send, tally, Answer, Client};
pub use hyper_backend::{addrs_of, three_backends, BackendStats, Behaviour, TestBackend};
pub use launcher::{
    balanced_table, pipelined_table, protected_table, settings_with, start_one_backend, table,
    test_routes, TestJuggler,
};
pub use tcp_table::HeldSockets;
pub use test_server::TestServerProcess;

/// Every test gives up after this long rather than hang.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `#[juggler_testkit::test]` on an `async fn` without arguments: a test on a multi-thread runtime
/// with two workers, under [`TEST_TIMEOUT`]; `#[juggler_testkit::test(current_thread)]` for one
/// thread. It expands to a `#[test]` that calls [`run_test`].
pub use juggler_testkit_macros::test;

/// The runtime [`run_test`] builds, as `#[juggler_testkit::test]` asks for it.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    /// Two workers: a server and its clients really run in parallel, as in production.
    MultiThread,
    /// One thread, for tests that do not need more.
    CurrentThread,
}

/// What `#[juggler_testkit::test]` expands to: runs the test `name` on a fresh `runtime` and panics
/// if it has not finished within [`TEST_TIMEOUT`].
pub fn run_test<F: Future>(runtime: Runtime, name: &str, test: F) -> F::Output {
    let mut builder = match runtime {
        Runtime::MultiThread => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("building the test's runtime");
    // Boxed: the future holds every local of the test's body; on the heap it is not moved about
    // on the test thread's stack.
    let test = Box::pin(test);
    runtime.block_on(async {
        match tokio::time::timeout(TEST_TIMEOUT, test).await {
            Ok(output) => output,
            Err(_) => {
                panic!("test `{name}` did not finish within its time bound of {TEST_TIMEOUT:?}")
            }
        }
    })
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; how long it took to hold,
/// `None` if it never did.
pub async fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition().then(|| started.elapsed())
}

/// Resident set size of this process (a test's Juggler runs inside it), in KiB.
pub fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Runs `future` with the suite-wide time bound.
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test exceeded its time bound")
}
