//! Juggler's integration-test harness, one of each: servers on 127.0.0.1:0 sharing one
//! accept/stop/drop lifecycle ([`backend`]: a real hyper backend, a faulty one, a raw one),
//! Juggler itself inside the test's runtime on plain HTTP or plain HTTP and HTTPS ([`launcher`]),
//! clients ([`client`], [`tls`], [`wire`], [`raw`]), a temporary directory and certificates
//! ([`certs`]), and the time bound every test runs under ([`bounded`]).
//!
//! A library rather than a `mod support;` in each test file: it compiles once, and everything a
//! test may use is `pub` instead of hidden behind `allow(dead_code)`.

pub mod backend;
pub mod bodies;
pub mod certs;
pub mod client;
pub mod faulty;
pub mod hyper_backend;
pub mod launcher;
pub mod raw;
pub mod raw_backend;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::time::Duration;

pub use backend::{bind_local, Backend, Count};
pub use certs::{CertFiles, TempDir, TestCert};
pub use client::{get, post, tally, Answer, Client};
pub use hyper_backend::{addrs_of, three_backends, BackendStats, Behaviour, TestBackend};
pub use launcher::{settings_with, start_one_backend, table, test_routes, TestJuggler};

/// Every test gives up after this long rather than hang.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `future` with the suite-wide time bound.
pub async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("test exceeded its time bound")
}
