//! Header rewriting between the two hops: what is removed, what is added, and how the request head
//! going to a backend is written.
//!
//! Everything end-to-end passes unchanged; hop-by-hop headers (RFC 9110 §7.6.1) belong to one
//! connection and are dropped on both legs. Framing headers are dropped too because Juggler re-frames
//! every request body with `Content-Length` and hyper frames every response it sends.

use std::net::IpAddr;

use http::header::HeaderValue;
use http::Method;

use super::request::RequestHead;
use crate::hop_by_hop::ConnectionNamed;

/// Whether the client asked to switch protocols (WebSocket and the like), which Juggler refuses.
pub fn wants_upgrade(head: &impl RequestHead) -> bool {
    head.has_field("upgrade")
}

/// Headers Juggler adds toward the backend, each opt-in and each replacing what the client sent
/// under that name.
#[derive(Debug, Default, Clone, Copy)]
pub struct Added<'a> {
    /// `X-Forwarded-For` (appended to the client's chain) and `X-Forwarded-Proto` for this client.
    pub forwarded: Option<ClientInfo>,
    /// `X-Request-Id`: the id the access log names the request by.
    pub request_id: Option<&'a str>,
}

/// Where the request came from, for the opt-in `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub https: bool,
}

/// Writes the HTTP/1.1 request head for a backend into `out`: the request line, every end-to-end
/// field as the head gives it (an HTTP/1.1 client's spelling and order; HTTP/2's lower-case names
/// in the order hyper keeps them), `Host` (taken from the target's authority when there is no
/// `Host` field: HTTP/2 clients send `:authority` instead), the `added` headers, `Content-Length`
/// and `Connection: keep-alive`.
pub fn encode_request_head(
    head: &impl RequestHead,
    body_len: usize,
    added: Added<'_>,
    out: &mut Vec<u8>,
) {
    let forwarded = added.forwarded;
    out.extend_from_slice(head.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path_and_query().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    // One pass for what the copy below needs to know first.
    let mut has_host = false;
    let mut connection_named = ConnectionNamed::default();
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case(b"host") {
            has_host = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_named.add_line(value);
        }
    }
    if !has_host {
        if let Some(authority) = head.authority() {
            write_header(out, b"host", authority.as_bytes());
        }
    }
    let mut forwarded_for_written = false;
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case(b"content-length") || connection_named.is_hop_by_hop(name) {
            continue;
        }
        if let (Some(client), true) = (forwarded, name.eq_ignore_ascii_case(X_FORWARDED_FOR)) {
            if !forwarded_for_written {
                forwarded_for_written = true;
                let chain = join_forwarded_for(head, client.ip);
                write_header(out, name, chain.as_bytes());
            }
            continue;
        }
        let replaced = (forwarded.is_some() && name.eq_ignore_ascii_case(X_FORWARDED_PROTO))
            || (added.request_id.is_some() && name.eq_ignore_ascii_case(X_REQUEST_ID.as_bytes()));
        if replaced {
            continue;
        }
        write_header(out, name, value);
    }
    if let Some(client) = forwarded {
        if !forwarded_for_written {
            write_header(out, X_FORWARDED_FOR, client.ip.to_string().as_bytes());
        }
        let proto: &[u8] = if client.https { b"https" } else { b"http" };
        write_header(out, X_FORWARDED_PROTO, proto);
    }
    if let Some(id) = added.request_id {
        write_header(out, X_REQUEST_ID.as_bytes(), id.as_bytes());
    }
    if body_len > 0 || method_implies_body(head.method()) {
        let mut digits = itoa::Buffer::new();
        write_header(out, b"content-length", digits.format(body_len).as_bytes());
    }
    out.extend_from_slice(b"connection: keep-alive\r\n\r\n");
}

const X_FORWARDED_FOR: &[u8] = b"x-forwarded-for";
const X_FORWARDED_PROTO: &[u8] = b"x-forwarded-proto";
/// The request id's field, toward backends and from clients (lower-case, for lookups).
pub const X_REQUEST_ID: &str = "x-request-id";

/// The client's existing `X-Forwarded-For` chain (all values, in order) with its address appended.
fn join_forwarded_for(head: &impl RequestHead, client: IpAddr) -> String {
    let mut chain = String::new();
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case(X_FORWARDED_FOR) {
            if let Some(value) = super::request::field_text(value) {
                chain.push_str(value);
                chain.push_str(", ");
            }
        }
    }
    chain.push_str(&client.to_string());
    chain
}

/// Methods whose requests carry a body by definition: an empty one still gets `Content-Length: 0`,
/// which some servers insist on (RFC 9110 §8.6).
fn method_implies_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `Retry-After` for `503`s: one second is long enough for a pooled connection to free up.
pub const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");

#[cfg(test)]
mod tests {
    use super::*;
    use http::request::Parts;
    use http::Request;

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_recognised() {
        let mut named = ConnectionNamed::default();
        named.add_line(b"close, X-Secret");
        for name in [
            "connection",
            "x-secret",
            "keep-alive",
            "transfer-encoding",
            "te",
            "expect",
        ] {
            assert!(named.is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["x-kept", "host", "content-type", "cookie"] {
            assert!(!named.is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded_and_the_rest_keep_their_order() {
        let request = Request::get("/")
            .header("host", "h")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("x-b", "2")
            .header("te", "trailers")
            .header("x-a", "3")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_request_head(&parts(request), 0, Added::default(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\nx-b: 2\r\nx-a: 3\r\nconnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn request_head_keeps_headers_and_sets_framing() {
        let request = Request::post("http://example.test/a/b?c=1")
            .header("host", "example.test")
            .header("x-dup", "1")
            .header("x-dup", "2")
            .header("content-length", "999")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_request_head(&parts(request), 12, Added::default(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /a/b?c=1 HTTP/1.1\r\nhost: example.test\r\nx-dup: 1\r\nx-dup: 2\r\n\
             content-length: 12\r\nconnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn http2_authority_becomes_host_and_added_headers_replace_the_clients() {
        let request = || {
            Request::get("https://example.test/x")
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-forwarded-proto", "http")
                .header("x-request-id", "client's")
                .body(())
                .unwrap()
        };
        let client = ClientInfo {
            ip: "127.0.0.1".parse().unwrap(),
            https: true,
        };
        let added = Added {
            forwarded: Some(client),
            request_id: Some("00c0ffee000000000001"),
        };
        let mut out = Vec::new();
        encode_request_head(&parts(request()), 0, added, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nhost: example.test\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\n\
             x-forwarded-proto: https\r\nx-request-id: 00c0ffee000000000001\r\n\
             connection: keep-alive\r\n\r\n"
        );

        let mut out = Vec::new();
        encode_request_head(&parts(request()), 0, Added::default(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nhost: example.test\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-request-id: client's\r\nconnection: keep-alive\r\n\r\n",
            "nothing added, the client's headers pass unchanged"
        );
    }
}
