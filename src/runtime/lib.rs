//! Juggler: an L7 HTTP load balancer whose configuration is compiled in.
//!
//! Each backend server sees exactly `n` keep-alive connections from Juggler however many clients
//! connect: a client's request is read completely, routed, and handed to the next backend of its
//! upstream in per-request round robin, where it waits (bounded, FIFO) for one of that backend's
//! pooled connections.
//!
//! This crate is the runtime; it serves any [`table::RouteTable`]. The binary (`src/main.rs`)
//! hands it the table `build.rs` generated from `routes.toml` and `juggler_config/`.
//!
//! # Layout
//! Data flows down this list; no module imports from one above it.
//! - [`upgrade`]: a new process takes over listeners, idle clients and pooled connections.
//! - [`fleet`]: several instances share each backend's `n` through etcd (pool shares).
//! - [`admin`]: the operators' listener: `/metrics`, the status page, draining a backend.
//! - [`client`]: listeners and client connections: accept, HTTP/1.1 and HTTP/2, timeouts,
//!   parking idle connections, TLS, the optional redirect to HTTPS, draining.
//! - [`proxy`]: one request: refuse, route, read the body, pick backends in round robin
//!   (`balance`), forward with re-sends, answer; the request head as HTTP/1.1 and HTTP/2 alike
//!   give it (`request`), header rules (`headers`, `request_checks`).
//! - [`backend`]: each backend's fixed pool of `n` connections and its FIFO queue (`pool`), and
//!   one HTTP/1.1 exchange on a pooled connection (`exchange`, `conn`, `chunked`, `body`).
//! - [`systemd`]: the service manager's channels: readiness notifications, socket activation.
//! - [`metrics`]: the request path's sharded counters and latency histograms (read by `admin`).
//! - [`logging`]: log lines gathered per thread and written in batches; the access line formatted
//!   cheaply (what the access log costs).
//! - `threads`: the serving threads, one single-threaded runtime per core, and the dealing of
//!   client connections to them.
//! - `sharded`: per-thread copies of what every request writes.
//! - `deadline`: a timeout that costs nothing when the work is done at once.
//! - `error`: `ProxyError`, which knows who failed and what status the client sees.
//! - `hop_by_hop`: the header rule both sides share: which fields belong to one connection.
//! - [`table`], [`router`], [`describe`]: the config schema (crate `juggler-config`).
#![forbid(unsafe_code)]

/// Re-exported so generated code can name `::juggler::http::Method` without its own dependency.
pub use http;
pub use juggler_config::{describe, router, table};

pub mod admin;
pub mod backend;
pub mod client;
mod deadline;
mod error;
pub mod fleet;
mod hop_by_hop;
pub mod logging;
pub mod metrics;
pub mod proxy;
mod sharded;
mod socket_read;
pub mod systemd;
mod threads;
pub mod upgrade;

pub use client::{run, run_with, tls, Listeners};

/// Entry points for the fuzz targets (`tests/fuzz`) and their regression tests: the parsers that
/// face the network are crate-private, these thin wrappers over them are not. Not an API.
#[doc(hidden)]
pub mod fuzzing;
