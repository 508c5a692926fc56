//! Request-smuggling checks on a parsed request head (RFC 9112 §6.3, §11.2; RFC 9110 §7.2), the
//! same for HTTP/1.1 and HTTP/2. The parsers (Juggler's HTTP/1.1 one, hyper's) reject most
//! malformed framing themselves (differing Content-Lengths, a final coding other than `chunked`,
//! bad chunk sizes, whitespace before a colon, obs-fold, control characters); `tests/smuggling.rs`
//! proves each. What they let through and the service can still see is refused here, before
//! routing, so none of it reaches a backend.

use http::Version;

use super::request::{field_text, RequestHead};

/// Why a request is refused with `400` and the connection closed, or `None` if it is fine. One
/// pass over the header fields: a lookup by name costs a hash (or a walk) each, and most requests
/// carry only a few fields.
pub(crate) fn ambiguity(head: &impl RequestHead) -> Option<&'static str> {
    let checks_codings = head.version() <= Version::HTTP_11;
    let mut hosts = 0;
    let mut codings = TransferCodings::default();
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if checks_codings && name.eq_ignore_ascii_case(b"transfer-encoding") {
            if let Err(reason) = codings.add(value) {
                return Some(reason);
            }
        }
    }
    if let Some(reason) = codings.problem() {
        return Some(reason);
    }
    if head.version() == Version::HTTP_11 && hosts == 0 {
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        return Some("HTTP/1.1 request without a Host header\n");
    }
    if hosts > 1 {
        // RFC 9112 §3.2: two Host lines leave the target authority for each hop to pick.
        return Some("more than one Host header\n");
    }
    None
}

/// hyper only looks at the last coding of each `Transfer-Encoding` line and decodes `chunked`
/// once. `gzip, chunked` or `chunked` on two lines would reach us with the body still encoded but
/// the header gone (it is hop-by-hop), so the backend would take encoded bytes as the content.
/// Juggler implements no coding but `chunked`: anything else is refused.
#[derive(Debug, Default)]
struct TransferCodings {
    chunked: usize,
}

impl TransferCodings {
    /// Takes one `Transfer-Encoding` line: the reason to refuse the request at once, if it gives one.
    fn add(&mut self, line: &[u8]) -> Result<(), &'static str> {
        let line = field_text(line).ok_or("unreadable Transfer-Encoding\n")?;
        for coding in line.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err("unsupported Transfer-Encoding (only chunked is accepted)\n");
            }
            self.chunked += 1;
        }
        Ok(())
    }

    /// Once every line is in: what their sum gives to refuse.
    fn problem(&self) -> Option<&'static str> {
        (self.chunked > 1).then_some("Transfer-Encoding applies chunked more than once\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::request::Parts;
    use http::Request;

    /// An HTTP/1.1 request with `headers`, and `Host: a` unless they name a Host themselves.
    fn request(headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::post("/x").version(Version::HTTP_11);
        if !headers.iter().any(|(name, _)| *name == "host") {
            builder = builder.header("host", "a");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn plain_chunked_and_single_host_pass() {
        assert_eq!(ambiguity(&request(&[])), None);
        assert_eq!(
            ambiguity(&request(&[("transfer-encoding", "chunked")])),
            None
        );
        assert_eq!(
            ambiguity(&request(&[("transfer-encoding", "Chunked")])),
            None
        );
        assert_eq!(ambiguity(&request(&[("content-length", "3")])), None);
    }

    #[test]
    fn host_is_required_from_http11_only() {
        let without_host = |version| {
            let request = Request::get("/x").version(version).body(()).unwrap();
            request.into_parts().0
        };
        assert!(ambiguity(&without_host(Version::HTTP_11)).is_some());
        assert_eq!(ambiguity(&without_host(Version::HTTP_10)), None);
        // HTTP/2 carries the authority in `:authority`, not in a Host header.
        assert_eq!(ambiguity(&without_host(Version::HTTP_2)), None);
    }

    #[test]
    fn other_codings_double_chunked_and_two_hosts_are_refused() {
        for headers in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("host", "a"), ("host", "b")],
        ] {
            assert!(ambiguity(&request(headers)).is_some(), "{headers:?}");
        }
    }
}
