//! Juggler's config schema: the plain data a route table is made of, shared by the codegen crate
//! (which writes one as `distributer.rs`) and the runtime (which serves one).
//!
//! # Layout
//! - [`table`]: `RouteTable`, `BackendSpec`, `Upstream`, `Route`, `Settings` and their defaults;
//!   the scalar settings are declared once, with kind, default, range and doc, through
//! - [`schema`]: the `settings_section!` macro and the `SectionSpec`s the codegen crate reads.
//! - [`router`]: method sets and wildcard patterns the generated route matcher is built from.
//! - [`network`]: IP networks in CIDR notation (`proxy_protocol_from`).
//! - [`describe`]: the human-readable view of a table (`juggler --print-routes`).
#![forbid(unsafe_code)]

pub mod describe;
pub mod network;
pub mod router;
pub mod schema;
pub mod table;
