//! Which header fields belong to one connection (RFC 9110 §7.6.1) and so never cross Juggler, on
//! either leg: the fixed hop-by-hop names plus whatever a message's `Connection` header names.
//! Shared by the request head written to backends (`proxy::headers`) and the response head read
//! from them (`backend::conn`).

use http::header::{self, HeaderMap, HeaderValue};

/// Headers that never cross Juggler, besides those the `Connection` header names (lower case, as
/// both hyper and [`HeaderName`] keep them).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Juggler already read the whole body, so the client's expectation has been met here.
    "expect",
];

/// The header names one message's `Connection` header lists (`Connection: close, x-secret`): they
/// are hop-by-hop for that message. Empty, without allocating, when there is no such header.
#[derive(Debug, Default)]
pub(crate) struct ConnectionNamed<'a>(Vec<&'a str>);

impl<'a> ConnectionNamed<'a> {
    /// Collects the names from the values of every `Connection` header.
    pub(crate) fn from_values(values: impl Iterator<Item = &'a [u8]>) -> ConnectionNamed<'a> {
        ConnectionNamed(
            values
                .filter_map(|value| std::str::from_utf8(value).ok())
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .collect(),
        )
    }

    /// The names the `Connection` headers of `headers` list.
    pub(crate) fn of(headers: &'a HeaderMap) -> ConnectionNamed<'a> {
        Self::from_values(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    /// Whether a header named `name` stays on this hop: a fixed hop-by-hop header, or one
    /// `Connection` names. Filtering while copying keeps the other headers in their order, which
    /// removing from a `HeaderMap` (a swap-remove) would not.
    pub(crate) fn is_hop_by_hop(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
            || self.0.iter().any(|named| name.eq_ignore_ascii_case(named))
    }
}
