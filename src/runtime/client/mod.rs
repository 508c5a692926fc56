//! The client side: everything between a client's socket and one proxied request.
//!
//! - [`listener`]: accept (connection cap, backoff), a task per active connection, drain on shutdown.
//! - `conn`: one connection: HTTP/1.1 or HTTP/2, the client timeouts, parking.
//! - `http1`: HTTP/1.1 itself (parsing, body, response writing).
//! - `http2`: HTTP/2 on the `h2` crate: streams answered on the connection's task, keep-alive.
//! - `activity`, `park`: what a connection is doing as its timers see it; idle plain connections
//!   wait without a task in one shared epoll set (the parking lot), idle TLS ones as bare streams
//!   in their task.
//! - `phase`: the listener's phase as a connection task follows it, without a lock per turn.
//! - `proxy_protocol`: the PROXY header (v1, v2) a trusted L4 balancer opens connections with.
//! - `response`: the response body with the request's in-flight guard attached.
//! - [`tls`]: certificates, the TLS acceptor, reload on SIGHUP.
//! - `redirect`: the optional `308` from the plain listener to HTTPS.

mod activity;
mod conn;
mod date;
pub(crate) mod http1;
mod http2;
pub mod listener;
mod park;
mod phase;
mod proxy_protocol;
mod redirect;
mod response;
pub mod tls;

pub use listener::{run, run_with, Listeners};
pub(crate) use listener::{HandedOver, Phase, Server};
