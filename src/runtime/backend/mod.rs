//! The backend side: each backend's fixed pool of `n` keep-alive connections with its FIFO queue,
//! and Juggler's own HTTP/1.1 client on those connections.
//!
//! - [`pool`]: the `n` slots, the queue, health, refill.
//! - `lanes`: the pool's slots split over the serving threads, moving as their load shifts.
//! - `ranked`: a lane's slots with its queue in priority order (high, normal, low).
//! - `limit`: how many of the `n` slots may be used now (fleet share, slow start, adaptive limit).
//! - [`health`]: active checks, ejection on `5xx`, slow start: what takes a backend out of
//!   rotation besides failed connects, and how it comes back.
//! - [`adaptive`]: the limit that follows response times (`connections_per_server = { min, max }`).
//! - `exchange`: one request and response on a pooled connection.
//! - `pipeline`: a waiting request written behind a busy connection's (`pipeline = true`).
//! - [`conn`]: the connection itself: write a request, parse a response head, read body chunks.
//! - `chunked`: the chunked transfer-coding decoder `conn` reads bodies with.
//! - [`body`]: a response body: bytes in memory, spooled to a file, or streamed from a pooled
//!   connection.
//! - [`spool`]: the memory and disk budgets for bodies; request bodies that spill to a file and
//!   responses spooled to one.

pub mod adaptive;
pub mod body;
pub(crate) mod chunked;
pub mod conn;
mod exchange;
pub(crate) mod head;
pub mod health;
mod lanes;
mod limit;
mod pipeline;
pub mod pool;
mod ranked;
pub mod spool;

pub use body::ResponseBody;
pub(crate) use exchange::{exchange, OutgoingRequest};
