//! A client's request head as the proxy reads it, whichever protocol brought it: an HTTP/2 request
//! arrives as hyper's `Parts` (a header map, a parsed URI); an HTTP/1.1 one as the bytes the client
//! sent, with the spans its parser found (`client::http1`), so that it reaches the backend without
//! a header map built and walked again in between. Everything in `proxy` that reads a request asks
//! through [`RequestHead`], so each rule is written once for both.

use http::request::Parts;
use http::{Method, Uri, Version};

/// The read-only questions the proxy asks of a request head.
pub trait RequestHead {
    fn method(&self) -> &Method;

    fn version(&self) -> Version;

    /// The target's path without its query: what routes match.
    fn path(&self) -> &str;

    /// The target as a backend's request line carries it: path and query (`*` for `OPTIONS *`;
    /// `/` for an absolute-form target without a path).
    fn path_and_query(&self) -> &str;

    /// The authority an absolute-form target names (HTTP/2: `:authority`).
    fn authority(&self) -> Option<&str>;

    /// The header fields in order, each name as the client spelt it (HTTP/2: lower-case) with its
    /// value.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The first value of the field `name` (lower-case), if there is one.
    fn field(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        self.fields()
            .find(|(spelt, _)| spelt.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// The first value of the field `name` as text, if there is one and it is text
    /// ([`field_text`]).
    fn field_text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(field_text)
    }

    /// Whether the request has a field `name` (lower-case).
    fn has_field(&self, name: &str) -> bool {
        self.field(name).is_some()
    }
}

/// A field value as text when it is visible ASCII, spaces and tabs only (what
/// `HeaderValue::to_str` accepts); `None` for one with obs-text or control bytes, which no rule
/// of Juggler's reads.
pub(crate) fn field_text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A parsed target's [`RequestHead::path_and_query`].
pub(crate) fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |target| target.as_str())
}

/// An HTTP/2 request (and any request built with `http`'s builder): names lower-case, fields in
/// the order the header map keeps them (repeated names together).
impl RequestHead for Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn version(&self) -> Version {
        self.version
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn path_and_query(&self) -> &str {
        path_and_query(&self.uri)
    }

    fn authority(&self) -> Option<&str> {
        self.uri.authority().map(|authority| authority.as_str())
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
    }

    /// By hash, not by walking the fields: an HTTP/2 request may carry many.
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|value| value.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_text_is_visible_ascii_only() {
        assert_eq!(field_text(b"a b\tc~"), Some("a b\tc~"));
        assert_eq!(field_text(b""), Some(""));
        for value in [&b"caf\xc3\xa9"[..], b"a\x7fb", b"a\x01"] {
            assert_eq!(field_text(value), None, "{value:?}");
        }
    }

    #[test]
    fn parts_answer_from_their_uri_and_header_map() {
        let (parts, ()) = http::Request::get("http://a.test:81/x/y?q=1")
            .header("X-One", "1")
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(parts.path(), "/x/y");
        assert_eq!(parts.path_and_query(), "/x/y?q=1");
        assert_eq!(parts.authority(), Some("a.test:81"));
        let fields: Vec<_> = parts.fields().collect();
        assert_eq!(fields, [(&b"x-one"[..], &b"1"[..]), (b"host", b"h")]);
        assert_eq!(parts.field("x-one"), Some(&b"1"[..]));
        assert_eq!(parts.field_text("host"), Some("h"));
        assert!(!parts.has_field("upgrade"));
    }
}
