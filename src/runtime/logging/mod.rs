//! What the access log costs: the binary's `tracing_subscriber::fmt` layer writes through a
//! [`LogBuffer`] (lines gathered per thread, written in batches) with [`AccessFormat`] as its
//! event formatter, which tells [`AccessLine`] it may write the access line, one per request,
//! straight into the buffer (the same bytes, without a `tracing` event). Other events keep the
//! general formatter and are written at once when they are warnings or errors.

mod access;
mod buffer;

pub use access::{AccessFormat, AccessLine, ACCESS_LOG};
pub use buffer::{FlushOnDrop, LineWriter, LogBuffer};
