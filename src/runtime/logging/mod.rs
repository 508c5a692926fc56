//! What the access log costs: the binary's `tracing_subscriber::fmt` layer writes through a
//! [`LogBuffer`] (lines gathered per thread, written in batches) and formats the access-log event,
//! one per request, with [`AccessFormat`] (the same line, without the general formatter's
//! machinery). Other events keep the general formatter and are written at once when they are
//! warnings or errors.

mod access;
mod buffer;

pub use access::{AccessFormat, ClientIp, ACCESS_LOG};
pub use buffer::{FlushOnDrop, LineWriter, LogBuffer};
