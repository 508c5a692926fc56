//! A client's request head, parsed from the front of its connection's read buffer (RFC 9112 §2-§6):
//! httparse finds the lines, this decides what they mean and refuses, with the status the client
//! gets, what a proxy must not pass on. Field values are slices of the head's bytes, not copies.
//!
//! Beyond what httparse checks itself (tokens, field syntax, obs-fold, whitespace before a colon),
//! a request is refused with `400` when its framing is ambiguous: `Content-Length` together with
//! `Transfer-Encoding`, differing lengths, a transfer coding on HTTP/1.0 or one not ending in
//! `chunked`, and any line ending in a bare LF (RFC 9112 §2.2 lets a server accept those; a proxy
//! whose backend reads them differently would be the classic smuggling gap).

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use crate::hop_by_hop::{self, HopByHop};

/// Fields a request head may have (hyper's default); more get `431`.
const MAX_FIELDS: usize = 100;
/// The longest request target accepted (hyper's limit); longer gets `414`.
const MAX_URI_LEN: usize = 65_534;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// A complete request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Method, target, version and fields; the body is attached by the caller.
    pub(crate) request: Request<()>,
    pub(crate) framing: BodyFraming,
    /// Whether the client lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending the body.
    pub(crate) expects_continue: bool,
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
pub(crate) fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, HeadError> {
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
    let target = span(target.as_bytes());
    let mut spans = [((0, 0), (0, 0)); MAX_FIELDS];
    let count = request.headers.len();
    for (field, spans) in request.headers.iter().zip(spans.iter_mut()) {
        *spans = (span(field.name.as_bytes()), span(field.value));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(range(target)))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let mut scan = FieldScan::new(version, count);
    for &(name, value) in &spans[..count] {
        scan.add(&head, range(name), range(value))?;
    }
    let framing = scan.framing()?;
    let mut parsed = Request::new(());
    *parsed.method_mut() = method;
    *parsed.uri_mut() = uri;
    *parsed.version_mut() = version;
    *parsed.headers_mut() = scan.headers;
    Ok(Some(RequestHead {
        request: parsed,
        framing,
        keep_alive: !scan.close && (version == Version::HTTP_11 || scan.keep_alive),
        expects_continue: scan.expects_continue,
    }))
}

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

/// What one pass over the fields learns: the header map and what framing and keep-alive need.
struct FieldScan {
    version: Version,
    headers: HeaderMap,
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
            headers: HeaderMap::with_capacity(fields),
            content_length: None,
            chunked: None,
            close: false,
            keep_alive: false,
            expects_continue: false,
        }
    }

    fn add(
        &mut self,
        head: &Bytes,
        name: Range<usize>,
        value: Range<usize>,
    ) -> Result<(), HeadError> {
        const MALFORMED: HeadError = HeadError::Malformed("invalid header field");
        let name = HeaderName::from_bytes(&head[name]).map_err(|_| MALFORMED)?;
        let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| MALFORMED)?;
        let text = || value.to_str().unwrap_or("");
        match hop_by_hop::kind(name.as_str()) {
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
            _ if name == http::header::CONTENT_LENGTH => {
                let len = digits(value.as_bytes())
                    .ok_or(HeadError::Malformed("invalid Content-Length"))?;
                match self.content_length {
                    Some(known) if known != len => {
                        return Err(HeadError::Malformed("differing Content-Length values"))
                    }
                    // The same length twice says nothing more: forwarded once.
                    Some(_) => return Ok(()),
                    None => self.content_length = Some(len),
                }
            }
            _ if name == http::header::EXPECT => {
                self.expects_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        self.headers.append(name, value);
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

/// A `Content-Length` value: decimal digits only (no sign, no list), within u64.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |len, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        len.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<RequestHead>, HeadError> {
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
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri(), "/a?b");
        assert_eq!(head.request.version(), Version::HTTP_11);
        let values: Vec<_> = head.request.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
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
}
