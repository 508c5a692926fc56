//! A client's request head, parsed from the front of its connection's read buffer (RFC 9112 §2-§6):
//! httparse finds the lines, this decides what they mean and refuses, with the status the client
//! gets, what a proxy must not pass on. The head stays the client's bytes, with where its target
//! and fields sit in them ([`SentHead`]): nothing is copied into a header map, so the fields can
//! reach the backend as the client sent them.
//!
//! Beyond what httparse checks itself (tokens, field syntax, obs-fold, whitespace before a colon),
//! a request is refused with `400` when its framing is ambiguous: `Content-Length` together with
//! `Transfer-Encoding`, differing lengths, a transfer coding on HTTP/1.0 or one not ending in
//! `chunked`, and any line ending in a bare LF (RFC 9112 §2.2 lets a server accept those; a proxy
//! whose backend reads them differently would be the classic smuggling gap).

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri, Version};

use crate::backend::head::decimal;
use crate::hop_by_hop::{self, HopByHop};
use crate::proxy::request::{self, field_text, RequestHead};

/// Fields a request head may have (hyper's default); more get `431`.
const MAX_FIELDS: usize = 100;
/// The longest request target accepted (hyper's limit); longer gets `414`.
const MAX_URI_LEN: usize = 65_534;
/// The longest field name `http` (and so hyper) accepts.
const MAX_NAME_LEN: usize = 65_535;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A complete request head.
#[derive(Debug)]
pub(crate) struct ParsedHead {
    /// Method, target, version and fields; the body is attached by the caller.
    pub(crate) head: SentHead,
    pub(crate) framing: BodyFraming,
    /// Whether the client lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending the body.
    pub(crate) expects_continue: bool,
}

/// A request head as the client sent it: its bytes, and where the target and each field sit in
/// them. The proxy reads it through [`RequestHead`] and writes the client's fields to the backend
/// as they are, in the client's spelling and order.
#[derive(Debug)]
pub(crate) struct SentHead {
    bytes: Bytes,
    method: Method,
    version: Version,
    target: Target,
    /// Each field's name and value, in the client's order.
    fields: Vec<(Span, Span)>,
}

/// The request target (RFC 9112 §3.2).
#[derive(Debug)]
enum Target {
    /// `/path?query`, as nearly every request sends it: a slice of the head, checked by the same
    /// code `http::Uri` checks it with (a fragment, which a client must not send, cut off), and
    /// then read as text without checking it again.
    Origin(PathAndQuery),
    /// The absolute, authority and asterisk forms, parsed whole.
    Parsed(Uri),
}

impl SentHead {
    /// The target as `http::Uri` holds it, for comparing with other parsers (`crate::fuzzing`).
    pub(crate) fn uri(&self) -> Uri {
        match &self.target {
            Target::Origin(target) => Uri::from(target.clone()),
            Target::Parsed(uri) => uri.clone(),
        }
    }
}

impl RequestHead for SentHead {
    fn method(&self) -> &Method {
        &self.method
    }

    fn version(&self) -> Version {
        self.version
    }

    fn path(&self) -> &str {
        match &self.target {
            Target::Origin(target) => target.path(),
            Target::Parsed(uri) => uri.path(),
        }
    }

    fn path_and_query(&self) -> &str {
        match &self.target {
            Target::Origin(target) => target.as_str(),
            Target::Parsed(uri) => request::path_and_query(uri),
        }
    }

    fn authority(&self) -> Option<&str> {
        match &self.target {
            Target::Origin(_) => None,
            Target::Parsed(uri) => uri.authority().map(|authority| authority.as_str()),
        }
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|&(name, value)| (&self.bytes[range(name)], &self.bytes[range(value)]))
    }
}

/// Why a head is refused: the client gets [`HeadError::status`] and the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    Malformed(&'static str),
    TooLarge,
    UriTooLong,
}

impl HeadError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }
}

/// Parses the head at the front of `buf` and takes it out; `Ok(None)` while it is incomplete
/// (read more and call again). `max_head`: the most bytes a head may take.
pub(crate) fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<ParsedHead>, HeadError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    // Only the first `max_head` bytes can hold a head: what comes after cannot change the verdict,
    // however the bytes arrived (one read or many).
    let window = &buf[..buf.len().min(max_head)];
    let len = match request.parse_with_uninit_headers(window, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(describe(error))),
    };
    if has_bare_lf(&buf[..len]) {
        return Err(HeadError::Malformed("line ending without CR"));
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    if target.len() > MAX_URI_LEN {
        return Err(HeadError::UriTooLong);
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match minor {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where the target and the fields sit in the head, to slice them from it once it is taken
    // out of the buffer (the parse borrows the buffer until then). A head is at most 1 MiB.
    let base = buf.as_ptr() as usize;
    let span = |bytes: &[u8]| -> Span {
        let start = (bytes.as_ptr() as usize - base) as u32;
        (start, start + bytes.len() as u32)
    };
    let origin_form = target.starts_with('/');
    let target = span(target.as_bytes());
    let mut scan = FieldScan::new(version, request.headers.len());
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        scan.add(name, field.value, (span(name), span(field.value)))?;
    }
    let framing = scan.framing()?;
    let bytes = buf.split_to(len).freeze();
    let target = bytes.slice(range(target));
    let target = if origin_form {
        Target::Origin(PathAndQuery::from_maybe_shared(target).map_err(|_| INVALID_TARGET)?)
    } else {
        Target::Parsed(Uri::from_maybe_shared(target).map_err(|_| INVALID_TARGET)?)
    };
    Ok(Some(ParsedHead {
        head: SentHead {
            bytes,
            method,
            version,
            target,
            fields: scan.fields,
        },
        framing,
        keep_alive: !scan.close && (version == Version::HTTP_11 || scan.keep_alive),
        expects_continue: scan.expects_continue,
    }))
}

const INVALID_TARGET: HeadError = HeadError::Malformed("invalid request target");

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine | httparse::Error::Status => "invalid line ending",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// Start and end of a piece of the head.
type Span = (u32, u32);

fn range((start, end): Span) -> Range<usize> {
    start as usize..end as usize
}

/// Whether any line of `head` ends in LF alone.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r')
}

/// What one pass over the fields learns: where they are, and what framing and keep-alive need.
struct FieldScan {
    version: Version,
    fields: Vec<(Span, Span)>,
    content_length: Option<u64>,
    /// Whether the last `Transfer-Encoding` line's last coding is `chunked`, if there is one.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    expects_continue: bool,
}

impl FieldScan {
    fn new(version: Version, fields: usize) -> FieldScan {
        FieldScan {
            version,
            fields: Vec::with_capacity(fields),
            content_length: None,
            chunked: None,
            close: false,
            keep_alive: false,
            expects_continue: false,
        }
    }

    /// One field: its name, its value, and where each sits in the head.
    fn add(&mut self, name: &[u8], value: &[u8], spans: (Span, Span)) -> Result<(), HeadError> {
        if name.len() > MAX_NAME_LEN {
            return Err(HeadError::Malformed("invalid header field"));
        }
        let text = || field_text(value).unwrap_or("");
        match hop_by_hop::kind(name) {
            Some(HopByHop::Connection) => {
                for token in hop_by_hop::tokens(text()) {
                    if token.eq_ignore_ascii_case("close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        self.keep_alive = true;
                    }
                }
            }
            Some(HopByHop::TransferEncoding) => {
                if self.version == Version::HTTP_10 {
                    return Err(HeadError::Malformed(
                        "Transfer-Encoding in an HTTP/1.0 request",
                    ));
                }
                let last = hop_by_hop::tokens(text()).last().unwrap_or("");
                self.chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
            _ if name.eq_ignore_ascii_case(b"content-length") => {
                let len = decimal(value).ok_or(HeadError::Malformed("invalid Content-Length"))?;
                match self.content_length {
                    Some(known) if known != len => {
                        return Err(HeadError::Malformed("differing Content-Length values"))
                    }
                    // The same length twice says nothing more: kept once.
                    Some(_) => return Ok(()),
                    None => self.content_length = Some(len),
                }
            }
            _ if name.eq_ignore_ascii_case(b"expect") => {
                self.expects_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        self.fields.push(spans);
        Ok(())
    }

    /// RFC 9112 §6.3 for requests, refusing what two readers could frame differently.
    fn framing(&self) -> Result<BodyFraming, HeadError> {
        match (self.chunked, self.content_length) {
            (Some(_), Some(_)) => Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            )),
            (Some(true), None) => Ok(BodyFraming::Chunked),
            (Some(false), None) => Err(HeadError::Malformed(
                "Transfer-Encoding not ending in chunked",
            )),
            (None, Some(0) | None) => Ok(BodyFraming::Empty),
            (None, Some(len)) => Ok(BodyFraming::Length(len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<ParsedHead>, HeadError> {
        parse(&mut BytesMut::from(text.as_bytes()), 16 * 1024)
    }

    fn framing(text: &str) -> Result<BodyFraming, HeadError> {
        parse_text(text).map(|head| head.expect("complete").framing)
    }

    #[test]
    fn a_complete_head_is_taken_from_the_buffer_and_the_rest_left() {
        let mut buf = BytesMut::from(
            &b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next"[..],
        );
        let head = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"GET /next");
        let sent = &head.head;
        assert_eq!(sent.method(), Method::GET);
        assert_eq!((sent.path(), sent.path_and_query()), ("/a", "/a?b"));
        assert_eq!(sent.version(), Version::HTTP_11);
        let fields: Vec<_> = sent.fields().collect();
        let expected: [(&[u8], &[u8]); 3] = [(b"Host", b"x"), (b"X-A", b"1"), (b"x-a", b"2")];
        assert_eq!(fields, expected, "as sent: spelling and order");
        assert_eq!(sent.field("x-a"), Some(&b"1"[..]));
        assert!(head.keep_alive);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert_eq!(parse(&mut buf, 1024).unwrap().map(|_| ()), None, "partial");
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        let post = |fields: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        for (fields, framed) in [
            ("Content-Length: 5\r\n", BodyFraming::Length(5)),
            ("Content-Length: 0\r\n", BodyFraming::Empty),
            (
                "Content-Length: 000000000000000000000007\r\n",
                BodyFraming::Length(7),
            ),
            (
                "Content-Length: 5\r\ncontent-length: 5\r\n",
                BodyFraming::Length(5),
            ),
            ("Transfer-Encoding: gzip, chunked\r\n", BodyFraming::Chunked),
        ] {
            assert_eq!(framing(&post(fields)), Ok(framed), "{fields:?}");
        }
        for refused in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Content-Length: 18446744073709551616\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert!(
                matches!(framing(&post(refused)), Err(HeadError::Malformed(_))),
                "{refused:?}"
            );
        }
        let old = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(framing(old), Err(HeadError::Malformed(_))));
    }

    #[test]
    fn bare_lf_anywhere_is_refused() {
        for text in [
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\nHost: x\n\n",
        ] {
            assert!(
                matches!(parse_text(text), Err(HeadError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_options() {
        let keeps = |text: &str| parse_text(text).unwrap().unwrap().keep_alive;
        assert!(keeps("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!keeps(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn limits_give_their_own_statuses() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse(&mut BytesMut::from(long.as_bytes()), 1024).unwrap_err(),
            HeadError::TooLarge
        );
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        assert_eq!(
            parse(&mut BytesMut::from(partial.as_bytes()), 1024).unwrap_err(),
            HeadError::TooLarge
        );
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(101));
        assert_eq!(parse_text(&many).unwrap_err(), HeadError::TooLarge);
        let target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_LEN));
        assert_eq!(
            parse(&mut BytesMut::from(target.as_bytes()), 1 << 20).unwrap_err(),
            HeadError::UriTooLong
        );
        assert_eq!(
            parse_text("G\x01T / HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn expect_continue_is_seen_in_any_case() {
        let head =
            parse_text("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(head.unwrap().unwrap().expects_continue);
    }

    /// Every byte in each place of an origin-form target: the same verdict, path and
    /// path-and-query as `http::Uri` (which Juggler parsed every target with before).
    #[test]
    fn origin_form_targets_read_as_uri_reads_them() {
        let mut targets: Vec<Vec<u8>> = Vec::new();
        for byte in 0x21u8..=0xff {
            for (before, after) in [(&b"/a"[..], &b"c"[..]), (b"/a?x", b"y"), (b"/a#", b"z")] {
                targets.push([before, &[byte], after].concat());
            }
        }
        for target in [
            &b"/caf\xc3\xa9?q=\xc3\xa9"[..],
            b"/caf\xc3",
            b"/a?\xff",
            b"/a??b?",
            b"/a#b?c",
            b"/",
            b"//x",
        ] {
            targets.push(target.to_vec());
        }
        let mut compared = 0;
        for target in targets {
            let text = String::from_utf8_lossy(&target).into_owned();
            let mut head = b"GET ".to_vec();
            head.extend_from_slice(&target);
            head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            let ours = match parse(&mut BytesMut::from(&head[..]), 1024) {
                Ok(Some(parsed)) => {
                    let head = parsed.head;
                    Some((head.path().to_owned(), head.path_and_query().to_owned()))
                }
                // httparse's own refusals (bytes no target may hold) are not the point here.
                Err(error) if error != INVALID_TARGET => continue,
                _ => None,
            };
            let theirs = Uri::try_from(&target[..]).ok().map(|uri| {
                let path_and_query = uri.path_and_query().map_or("", |pq| pq.as_str());
                (uri.path().to_owned(), path_and_query.to_owned())
            });
            assert_eq!(ours, theirs, "{text:?}");
            compared += 1;
        }
        // httparse itself refuses a target with bytes above 0x7e, the rest reach the check.
        assert!(
            compared > 280,
            "only {compared} targets reached the target check"
        );
    }

    #[test]
    fn other_target_forms_are_parsed_whole() {
        let head = |text: &str| parse_text(text).unwrap().unwrap().head;
        let absolute = head("GET http://a.test:81/x?y#f HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!(absolute.authority(), Some("a.test:81"));
        assert_eq!((absolute.path(), absolute.path_and_query()), ("/x", "/x?y"));
        let bare = head("GET http://a.test HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!((bare.path(), bare.path_and_query()), ("/", "/"));
        let asterisk = head("OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!((asterisk.path(), asterisk.path_and_query()), ("*", "*"));
        assert_eq!(asterisk.authority(), None);
        let origin = head("GET /a#frag HTTP/1.0\r\n\r\n");
        assert_eq!((origin.path(), origin.path_and_query()), ("/a", "/a"));
        assert_eq!(origin.uri(), "/a");
        for refused in [
            "GET /a<b HTTP/1.1\r\n\r\n",
            "GET /a?\"b HTTP/1.1\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
            "GET a/b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_text(refused).unwrap_err(),
                INVALID_TARGET,
                "{refused:?}"
            );
        }
    }

    /// Heads as clients send them, and the head a backend gets: the client's fields as sent
    /// (spelling, order, repeats), without hop-by-hop ones, those `Connection` names and
    /// `Content-Length`, with Juggler's own framing.
    #[test]
    fn backends_get_the_clients_fields_as_sent() {
        use crate::proxy::headers::{encode_request_head, Added, ClientInfo};

        let forwarded = Added {
            forwarded: Some(ClientInfo {
                ip: "10.0.0.9".parse().unwrap(),
                https: false,
            }),
            request_id: Some("id-1"),
        };
        let cases: [(&str, usize, Added<'_>, &str); 7] = [
            (
                "GET /a?b HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\nACCEPT: */*\r\n\r\n",
                0,
                Added::default(),
                "GET /a?b HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\nACCEPT: */*\r\n\
                 connection: keep-alive\r\n\r\n",
            ),
            (
                "GET / HTTP/1.1\r\nX-B: 1\r\nConnection: close, X-Secret\r\nhost: x\r\n\
                 X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nx-b: 2\r\n\r\n",
                0,
                Added::default(),
                "GET / HTTP/1.1\r\nX-B: 1\r\nhost: x\r\nx-b: 2\r\nconnection: keep-alive\r\n\r\n",
            ),
            (
                "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
                 Content-Type: text/plain\r\n\r\n",
                3,
                Added::default(),
                "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                 content-length: 3\r\nconnection: keep-alive\r\n\r\n",
            ),
            (
                "PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Expect: 100-continue\r\n\r\n",
                0,
                Added::default(),
                "PUT /chunked HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\
                 connection: keep-alive\r\n\r\n",
            ),
            (
                "GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n\
                 X-Request-Id: theirs\r\nX-Forwarded-Proto: https\r\n\
                 x-forwarded-for: 2.2.2.2\r\n\r\n",
                0,
                forwarded,
                "GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n\
                 x-forwarded-proto: http\r\nx-request-id: id-1\r\nconnection: keep-alive\r\n\r\n",
            ),
            (
                "GET http://a.test:81/p?q HTTP/1.0\r\n\r\n",
                0,
                Added::default(),
                "GET /p?q HTTP/1.1\r\nhost: a.test:81\r\nconnection: keep-alive\r\n\r\n",
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
                0,
                Added::default(),
                "OPTIONS * HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\n\r\n",
            ),
        ];
        for (sent, body_len, added, expected) in cases {
            let head = parse_text(sent).unwrap().unwrap().head;
            let mut out = Vec::new();
            encode_request_head(&head, body_len, added, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{sent:?}");
        }
    }
}
