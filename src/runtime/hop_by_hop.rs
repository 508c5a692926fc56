//! Which header fields belong to one connection (RFC 9110 §7.6.1) and so never cross Juggler, on
//! either leg: the fixed hop-by-hop names plus whatever a message's `Connection` header names.
//! Shared by the request head written to backends (`proxy::headers`) and the response head read
//! from them (`backend::head`).

/// The fixed hop-by-hop fields, by what Juggler does with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HopByHop {
    /// `Connection`: whether the connection lives on, and which other fields are hop-by-hop.
    Connection,
    /// `Keep-Alive`: the backend's idle timeout.
    KeepAlive,
    /// `Transfer-Encoding`: how the body is delimited on this hop.
    TransferEncoding,
    /// `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`, and `Expect` (Juggler already read the whole
    /// body, so the client's expectation has been met here).
    Other,
}

/// The hop-by-hop kind of a field name (any case), or `None` for an end-to-end field. One look at
/// the length picks the one or two names it could be, so each field costs one comparison.
pub(crate) fn kind(name: &[u8]) -> Option<HopByHop> {
    let is = |fixed: &str| name.eq_ignore_ascii_case(fixed.as_bytes());
    match name.len() {
        2 if is("te") => Some(HopByHop::Other),
        6 if is("expect") => Some(HopByHop::Other),
        7 if is("trailer") || is("upgrade") => Some(HopByHop::Other),
        10 if is("connection") => Some(HopByHop::Connection),
        10 if is("keep-alive") => Some(HopByHop::KeepAlive),
        16 if is("proxy-connection") => Some(HopByHop::Other),
        17 if is("transfer-encoding") => Some(HopByHop::TransferEncoding),
        _ => None,
    }
}

/// The comma-separated elements of a field value, trimmed.
pub(crate) fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

/// The header names one message's `Connection` header lists (`Connection: close, x-secret`): they
/// are hop-by-hop for that message. Empty, without allocating, when it lists only connection
/// options (`close`, `keep-alive`) or fixed hop-by-hop names, as it nearly always does.
#[derive(Debug, Default)]
pub(crate) struct ConnectionNamed<'a>(Vec<&'a str>);

impl<'a> ConnectionNamed<'a> {
    /// Adds the names one `Connection` line lists.
    pub(crate) fn add_line(&mut self, value: &'a [u8]) {
        if let Ok(value) = std::str::from_utf8(value) {
            for token in value.split(',') {
                self.add(token.trim());
            }
        }
    }

    /// Adds one element of a `Connection` value (trimmed); options and fixed hop-by-hop names
    /// need no entry.
    pub(crate) fn add(&mut self, token: &'a str) {
        let option =
            token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive");
        if !token.is_empty() && !option && kind(token.as_bytes()).is_none() {
            self.0.push(token);
        }
    }

    /// Whether `Connection` names no field at all (as it nearly always does).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `Connection` names the field `name`.
    pub(crate) fn names(&self, name: &[u8]) -> bool {
        self.0
            .iter()
            .any(|named| name.eq_ignore_ascii_case(named.as_bytes()))
    }

    /// Whether a header named `name` stays on this hop: a fixed hop-by-hop header, or one
    /// `Connection` names. Filtering while copying keeps the other headers in their order, which
    /// removing from a `HeaderMap` (a swap-remove) would not.
    pub(crate) fn is_hop_by_hop(&self, name: &[u8]) -> bool {
        kind(name).is_some() || self.names(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_name_is_found_in_any_case_and_nothing_else() {
        for name in [
            "connection",
            "Keep-Alive",
            "PROXY-CONNECTION",
            "te",
            "Trailer",
            "transfer-encoding",
            "upgrade",
            "Expect",
        ] {
            assert!(kind(name.as_bytes()).is_some(), "{name}");
        }
        for name in [
            "content-length",
            "tea",
            "t",
            "",
            "connections",
            "x-upgrade",
            "date",
        ] {
            assert_eq!(kind(name.as_bytes()), None, "{name}");
        }
        assert_eq!(kind(b"Connection"), Some(HopByHop::Connection));
        assert_eq!(kind(b"keep-alive"), Some(HopByHop::KeepAlive));
        assert_eq!(kind(b"Transfer-Encoding"), Some(HopByHop::TransferEncoding));
    }

    #[test]
    fn connection_names_other_fields_but_not_its_options() {
        let mut named = ConnectionNamed::default();
        named.add_line(b"close, X-Secret");
        named.add_line(b" keep-alive ,upgrade,x-other");
        assert_eq!(named.0, ["X-Secret", "x-other"]);
        assert!(named.is_hop_by_hop(b"x-secret") && named.is_hop_by_hop(b"X-OTHER"));
        assert!(named.is_hop_by_hop(b"upgrade"));
        assert!(!named.is_hop_by_hop(b"close") && !named.is_hop_by_hop(b"x-kept"));
    }
}
