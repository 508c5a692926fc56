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
//! - [`client`]: listeners and client connections: accept, HTTP/1.1 and HTTP/2, timeouts,
//!   parking idle connections, TLS, the optional redirect to HTTPS, draining.
//! - [`proxy`]: one request: refuse, route, read the body, pick backends in round robin
//!   (`balance`), forward with re-sends, answer; header rules (`headers`, `request_checks`).
//! - [`backend`]: each backend's fixed pool of `n` connections and its FIFO queue (`pool`), and
//!   one HTTP/1.1 exchange on a pooled connection (`exchange`, `conn`, `chunked`, `body`).
//! - `error`: `ProxyError`, which knows who failed and what status the client sees.
//! - `hop_by_hop`: the header rule both sides share: which fields belong to one connection.
//! - [`table`], [`router`], [`describe`]: the config schema (crate `juggler-config`).
#![forbid(unsafe_code)]

/// Re-exported so generated code can name `::juggler::http::Method` without its own dependency.
pub use http;
pub use juggler_config::{describe, router, table};

pub mod backend;
pub mod client;
mod error;
mod hop_by_hop;
pub mod proxy;

pub use client::{run, run_with, tls, Listeners};
