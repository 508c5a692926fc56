//! A backend's response head, parsed with one pass over its fields.
//!
//! Everything Juggler needs from the fields (how the body is delimited, whether the connection
//! lives on, a keep-alive timeout, which fields the client gets) is taken in the same pass, each
//! name classified once; the client's fields are sliced out of the head's bytes, not copied.
//! Most heads have a handful of fields, so they are parsed with room for 16 first and only a head
//! with more is parsed again with room for [`MAX_RESPONSE_HEADERS`].

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::conn::{Framing, HeadError};
use crate::hop_by_hop::{self, ConnectionNamed, HopByHop};

/// The most response header fields accepted from a backend.
pub(super) const MAX_RESPONSE_HEADERS: usize = 128;
/// Room for the fields of a typical head, tried first.
const USUAL_RESPONSE_HEADERS: usize = 16;

/// What the front of a read buffer holds.
#[derive(Debug)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim `1xx` head of this many bytes: dropped, the final one follows.
    Interim(usize),
    Final(FinalHead),
}

/// A complete final response head, with its fields as offsets into its bytes.
#[derive(Debug)]
pub(super) struct FinalHead {
    /// Bytes the head takes at the front of the buffer.
    pub(super) len: usize,
    pub(super) status: StatusCode,
    pub(super) framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub(super) keep_alive: bool,
    /// `Keep-Alive: timeout=N` (seconds), when the backend announced one.
    pub(super) keep_alive_timeout: Option<u64>,
    /// The end-to-end fields, in the backend's order: (name, value) byte ranges of the head.
    forwarded: Vec<FieldSpan>,
}

#[derive(Debug, Clone, Copy)]
struct FieldSpan {
    /// (offset, length) in the head's bytes.
    name: (u32, u32),
    value: (u32, u32),
    /// What the field is to Juggler, its name compared once, here.
    known: KnownField,
}

/// The end-to-end fields Juggler reads in a response on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KnownField {
    /// Dropped when the body is not framed by it; read for the client's framing.
    ContentLength,
    /// Its presence spares Juggler writing one.
    Date,
    Other,
}

impl KnownField {
    /// One look at the length picks the one name it could be.
    fn of(name: &[u8]) -> KnownField {
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => KnownField::ContentLength,
            4 if name.eq_ignore_ascii_case(b"date") => KnownField::Date,
            _ => KnownField::Other,
        }
    }
}

/// The bytes an (offset, length) pair of a [`FieldSpan`] covers.
fn range((start, len): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..(start + len) as usize
}

/// Parses the head at the front of `buf`.
pub(super) fn parse(buf: &[u8], request_was_head: bool) -> Result<Parsed, HeadError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    match parse_with::<USUAL_RESPONSE_HEADERS>(buf, request_was_head) {
        Err(HeadError::Invalid(TOO_MANY)) => {
            parse_with::<MAX_RESPONSE_HEADERS>(buf, request_was_head)
        }
        parsed => parsed,
    }
}

const TOO_MANY: &str = "too many response headers";

fn parse_with<const FIELDS: usize>(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Parsed, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Invalid(TOO_MANY)),
        Err(_) => return Err(HeadError::Invalid("malformed response head")),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| HeadError::Invalid("bad status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(HeadError::Invalid("unrequested protocol switch"));
        }
        // 100 Continue, 103 Early Hints: interim, the real response follows.
        return Ok(Parsed::Interim(len));
    }
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut scan = FieldScan::of(version, response.headers, buf);
    let framing = scan.framing(status, request_was_head)?;
    let keep_alive = scan.keeps_alive && framing != Framing::UntilClose;
    let mut forwarded = std::mem::take(&mut scan.forwarded);
    // A length goes only with a body framed by that length (HEAD and 304 keep the backend's).
    if matches!(framing, Framing::Chunked | Framing::UntilClose) {
        forwarded.retain(|span| span.known != KnownField::ContentLength);
    }
    // Rare: a `Connection` line naming an end-to-end field makes it hop-by-hop.
    if !scan.connection_named.is_empty() {
        forwarded.retain(|span| !scan.connection_named.names(&buf[range(span.name)]));
    }
    Ok(Parsed::Final(FinalHead {
        len,
        status,
        framing,
        keep_alive,
        keep_alive_timeout: scan.keep_alive_timeout,
        forwarded,
    }))
}

/// The field names of a connection's responses by place (each place as the latest response with
/// that many fields left it), as spelt and as parsed. A backend sends the same names, spelt the
/// same way, in the same order response after response; a name spelt exactly as the one at its
/// place is taken as is rather than parsed again (`HeaderName::from_bytes` lowercases and matches
/// it against every standard name: the larger part of a field's cost).
#[derive(Debug, Default)]
pub(crate) struct KnownNames(Vec<(Box<[u8]>, HeaderName)>);

impl KnownNames {
    /// The name of the `index`th forwarded field, spelt `bytes`.
    fn name(&mut self, index: usize, bytes: &[u8]) -> Result<HeaderName, HeadError> {
        if let Some((spelt, known)) = self.0.get(index) {
            if **spelt == *bytes {
                return Ok(known.clone());
            }
        }
        let name = HeaderName::from_bytes(bytes)
            .map_err(|_| HeadError::Invalid("bad response header name"))?;
        let entry = (Box::from(bytes), name.clone());
        if index < self.0.len() {
            self.0[index] = entry;
        } else if index == self.0.len() {
            self.0.push(entry);
        }
        Ok(name)
    }
}

/// A response's end-to-end fields as its backend sent them: the head's bytes and where each field
/// sits in them, in the backend's order. An HTTP/1.1 client gets them written as they are
/// (`client::http1::write`), without a header map built and walked again in between; an HTTP/2
/// client gets a header map ([`FinalHead::headers`]).
#[derive(Debug, Clone)]
pub struct ForwardedFields {
    head: Bytes,
    spans: Vec<FieldSpan>,
}

impl ForwardedFields {
    /// Each field's name (as spelt) and value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|span| (&self.head[range(span.name)], &self.head[range(span.value)]))
    }

    /// The body's length as the fields declare it: the value of the `Content-Length` that
    /// frames it, `Some(None)` if that is no plain number (an agreeing list, `5, 5`), `None`
    /// without one.
    pub(crate) fn declared_length(&self) -> Option<Option<u64>> {
        self.spans
            .iter()
            .find(|span| span.known == KnownField::ContentLength)
            .map(|span| decimal(&self.head[range(span.value)]))
    }

    /// Whether the backend dated its response.
    pub(crate) fn has_date(&self) -> bool {
        self.spans.iter().any(|span| span.known == KnownField::Date)
    }

    /// Writes the fields as `name: value` lines. Lines the backend sent one after the other,
    /// each ending in CRLF, are copied as they are in one piece (most of a head: only
    /// hop-by-hop fields interrupt it); any other line is written from its name and value.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let mut run = 0..0;
        for span in &self.spans {
            let start = span.name.0 as usize;
            match line_end(&self.head, range(span.value).end) {
                Some(end) if run.end == start && !run.is_empty() => run.end = end,
                Some(end) => {
                    out.extend_from_slice(&self.head[run]);
                    run = start..end;
                }
                None => {
                    out.extend_from_slice(&self.head[run]);
                    run = 0..0;
                    for piece in [
                        &self.head[range(span.name)],
                        b": ",
                        &self.head[range(span.value)],
                        b"\r\n",
                    ] {
                        out.extend_from_slice(piece);
                    }
                }
            }
        }
        out.extend_from_slice(&self.head[run]);
    }

    /// Whether a field named `name` (lowercase) is among them.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.iter()
            .any(|(spelt, _)| spelt.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Where the line whose value ends at `value_end` ends, past its CRLF; `None` if it ends in a
/// bare LF (accepted from a backend, never passed on).
fn line_end(head: &[u8], value_end: usize) -> Option<usize> {
    let rest = &head[value_end..];
    let blank = rest
        .iter()
        .take_while(|&&byte| byte == b' ' || byte == b'\t')
        .count();
    rest[blank..]
        .starts_with(b"\r\n")
        .then_some(value_end + blank + 2)
}

/// The forwarded fields of a complete response head `text`, for tests elsewhere.
#[cfg(test)]
pub(crate) fn forwarded_of(text: &str) -> ForwardedFields {
    let bytes = Bytes::copy_from_slice(text.as_bytes());
    match parse(&bytes, false) {
        Ok(Parsed::Final(mut head)) => head.forwarded(bytes),
        other => panic!("not a final head: {other:?}"),
    }
}

impl FinalHead {
    /// The client's fields as the backend sent them, out of `head` (the bytes this head was
    /// parsed from).
    pub(super) fn forwarded(&mut self, head: Bytes) -> ForwardedFields {
        ForwardedFields {
            head,
            spans: std::mem::take(&mut self.forwarded),
        }
    }

    /// The client's fields, sliced out of `head` (the bytes this head was parsed from); `known`:
    /// the names of the connection's last response, updated to this one's.
    pub(super) fn headers(
        &self,
        head: &Bytes,
        known: &mut KnownNames,
    ) -> Result<HeaderMap, HeadError> {
        let mut headers = HeaderMap::with_capacity(self.forwarded.len());
        for (index, span) in self.forwarded.iter().enumerate() {
            let name = known.name(index, &head[range(span.name)])?;
            let value = HeaderValue::from_maybe_shared(head.slice(range(span.value)))
                .map_err(|_| HeadError::Invalid("bad response header value"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// What one pass over a head's fields finds.
#[derive(Debug, Default)]
struct FieldScan<'h> {
    /// The last coding of the last `Transfer-Encoding` field, if there is one.
    last_coding: Option<&'h str>,
    /// Every `Content-Length` value agreed so far, or why they do not.
    content_length: Option<Result<u64, &'static str>>,
    keeps_alive: bool,
    keep_alive_timeout: Option<u64>,
    /// What `Connection` names besides the fixed hop-by-hop fields.
    connection_named: ConnectionNamed<'h>,
    /// The fields that are no fixed hop-by-hop field, in the backend's order: the client's, but
    /// for what the framing and `Connection` then take out.
    forwarded: Vec<FieldSpan>,
}

impl<'h> FieldScan<'h> {
    /// `fields` as httparse found them in `head`.
    fn of(version: Version, fields: &'h [httparse::Header<'h>], head: &[u8]) -> FieldScan<'h> {
        let mut scan = FieldScan {
            forwarded: Vec::with_capacity(fields.len()),
            ..FieldScan::default()
        };
        let (mut close, mut keep_alive) = (false, false);
        // Only the values Juggler reads are decoded: the others are forwarded as bytes.
        let text = |field: &httparse::Header<'h>| std::str::from_utf8(field.value).unwrap_or("");
        let base = head.as_ptr() as usize;
        let offset = |bytes: &[u8]| -> (u32, u32) {
            // A head is at most 64 KiB, so its offsets fit.
            ((bytes.as_ptr() as usize - base) as u32, bytes.len() as u32)
        };
        for field in fields {
            let kind = hop_by_hop::kind(field.name.as_bytes());
            let known = match kind {
                Some(_) => KnownField::Other,
                None => KnownField::of(field.name.as_bytes()),
            };
            let content_length = known == KnownField::ContentLength;
            if kind.is_none() {
                scan.forwarded.push(FieldSpan {
                    name: offset(field.name.as_bytes()),
                    value: offset(field.value),
                    known,
                });
            }
            match kind {
                Some(HopByHop::Connection) => {
                    for token in hop_by_hop::tokens(text(field)) {
                        if token.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case("keep-alive") {
                            keep_alive = true;
                        } else {
                            scan.connection_named.add(token);
                        }
                    }
                }
                Some(HopByHop::KeepAlive) if scan.keep_alive_timeout.is_none() => {
                    scan.keep_alive_timeout = parse_keep_alive_timeout(text(field));
                }
                Some(HopByHop::TransferEncoding) => {
                    scan.last_coding = Some(hop_by_hop::tokens(text(field)).last().unwrap_or(""));
                }
                Some(_) => {}
                None if content_length => {
                    // A list of equal lengths (`5, 5`) is one length (RFC 9110 §8.6).
                    for piece in field.value.split(|&byte| byte == b',') {
                        let parsed = decimal(piece.trim_ascii()).ok_or("bad Content-Length");
                        scan.content_length = Some(match (scan.content_length, parsed) {
                            (Some(Err(why)), _) | (_, Err(why)) => Err(why),
                            (Some(Ok(known)), Ok(parsed)) if known != parsed => {
                                Err("conflicting Content-Length values")
                            }
                            (_, Ok(parsed)) => Ok(parsed),
                        });
                    }
                }
                None => {}
            }
        }
        // `close` anywhere ends the connection; HTTP/1.0 lives on only when asked to.
        scan.keeps_alive = !close && (version != Version::HTTP_10 || keep_alive);
        scan
    }

    /// RFC 9112 §6.3: how the response body is delimited.
    fn framing(&self, status: StatusCode, request_was_head: bool) -> Result<Framing, HeadError> {
        if request_was_head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status.is_informational()
        {
            return Ok(Framing::Empty);
        }
        if let Some(coding) = self.last_coding {
            // The final transfer coding decides the framing.
            return Ok(if coding.eq_ignore_ascii_case("chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        Ok(match self.content_length {
            Some(Err(why)) => return Err(HeadError::Invalid(why)),
            Some(Ok(0)) => Framing::Empty,
            Some(Ok(len)) => Framing::Length(len),
            None => Framing::UntilClose,
        })
    }
}

/// A `Content-Length` (RFC 9110 §8.6: `1*DIGIT`): decimal digits only, no sign, within u64.
/// Read from the bytes: `str::parse` would also take a `+` and cost a UTF-8 check first.
pub(crate) fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |len, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        len.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `timeout=5, max=100` → `Some(5)`.
fn parse_keep_alive_timeout(value: &str) -> Option<u64> {
    value.split(',').find_map(|parameter| {
        let (name, seconds) = parameter.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("timeout") {
            seconds.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The final head of `text` (`\n` stands for CRLF), parsed as the answer to a GET.
    fn final_head(text: &str) -> Result<(FinalHead, Bytes), HeadError> {
        let bytes = Bytes::from(text.replace('\n', "\r\n"));
        match parse(&bytes, false)? {
            Parsed::Final(head) => Ok((head, bytes)),
            other => panic!("not a final head: {other:?}"),
        }
    }

    fn framing(text: &str) -> Result<Framing, HeadError> {
        final_head(text).map(|(head, _)| head.framing)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\n\n")).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(
            framing(&format!("{ok}Content-Length: 0\n\n")).unwrap(),
            Framing::Empty
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\ncontent-length: 5\n\n").unwrap(),
            Framing::Empty
        );
        assert_eq!(
            framing(&format!(
                "{ok}transfer-encoding: gzip, chunked\ncontent-length: 5\n\n"
            ))
            .unwrap(),
            Framing::Chunked
        );
        assert_eq!(
            framing(&format!(
                "{ok}Transfer-Encoding: chunked\nTransfer-Encoding: gzip\n\n"
            ))
            .unwrap(),
            Framing::UntilClose
        );
        assert_eq!(framing(&format!("{ok}\n")).unwrap(), Framing::UntilClose);
        assert!(framing(&format!("{ok}content-length: 5\ncontent-length: 6\n\n")).is_err());
        for bad in [
            "five",
            "+5",
            "-5",
            "5 5",
            "",
            "18446744073709551616",
            "5,",
            "0x5",
        ] {
            assert!(
                framing(&format!("{ok}content-length: {bad}\n\n")).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            framing(&format!("{ok}content-length: 5, 5\n\n")).unwrap(),
            Framing::Length(5)
        );
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        let Parsed::Final(answer_to_head) = parse(&head, true).unwrap() else {
            panic!("not final");
        };
        assert_eq!(answer_to_head.framing, Framing::Empty);
    }

    #[test]
    fn keep_alive_rules() {
        let keeps = |text: &str| final_head(text).unwrap().0.keep_alive;
        assert!(keeps("HTTP/1.1 200 OK\ncontent-length: 0\n\n"));
        assert!(!keeps(
            "HTTP/1.1 200 OK\nconnection: Close\ncontent-length: 0\n\n"
        ));
        assert!(!keeps(
            "HTTP/1.1 200 OK\nconnection: keep-alive, close\ncontent-length: 0\n\n"
        ));
        assert!(!keeps("HTTP/1.0 200 OK\ncontent-length: 0\n\n"));
        assert!(keeps(
            "HTTP/1.0 200 OK\nConnection: Keep-Alive\ncontent-length: 0\n\n"
        ));
        // A body that runs until the backend closes leaves nothing to keep.
        assert!(!keeps("HTTP/1.1 200 OK\n\n"));
        let timeout = |text: &str| final_head(text).unwrap().0.keep_alive_timeout;
        assert_eq!(
            timeout("HTTP/1.1 200 OK\nKeep-Alive: timeout=5, max=100\ncontent-length: 0\n\n"),
            Some(5)
        );
        assert_eq!(
            timeout("HTTP/1.1 200 OK\nkeep-alive: max=100\ncontent-length: 0\n\n"),
            None
        );
    }

    #[test]
    fn the_client_gets_end_to_end_fields_in_order_and_no_stale_length() {
        let (head, bytes) = final_head(
            "HTTP/1.1 200 OK\nServer: nginx\nConnection: keep-alive, X-Hop\nX-Hop: 1\n\
             Transfer-Encoding: chunked\nContent-Length: 12\nKeep-Alive: timeout=5\nTE: x\n\
             Set-Cookie: a=1\nSet-Cookie: b=2\nDate: today\n\n",
        )
        .unwrap();
        let headers = head.headers(&bytes, &mut KnownNames::default()).unwrap();
        let names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["server", "set-cookie", "date"]);
        let cookies: Vec<&[u8]> = headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [b"a=1".as_slice(), b"b=2"]);
    }

    #[test]
    fn the_last_field_a_head_may_have_is_classified_like_the_first() {
        let fields: String = (0..MAX_RESPONSE_HEADERS - 2)
            .map(|index| format!("x-{index}: 1\n"))
            .collect();
        let (head, bytes) = final_head(&format!(
            "HTTP/1.1 200 OK\n{fields}transfer-encoding: chunked\ncontent-length: 5\n\n"
        ))
        .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let headers = head.headers(&bytes, &mut KnownNames::default()).unwrap();
        assert_eq!(
            headers.len(),
            MAX_RESPONSE_HEADERS - 2,
            "both hop fields dropped"
        );
        assert!(!headers.contains_key("content-length"));
    }

    #[test]
    fn names_known_from_the_last_response_are_reused_only_where_they_match() {
        let mut known = KnownNames::default();
        let names = |text: &str, known: &mut KnownNames| -> Vec<String> {
            let (head, bytes) = final_head(text).unwrap();
            let headers = head.headers(&bytes, known).unwrap();
            headers.keys().map(|name| name.to_string()).collect()
        };
        let first = names(
            "HTTP/1.1 200 OK\nServer: a\nX-One: 1\ncontent-length: 0\n\n",
            &mut known,
        );
        assert_eq!(first, ["server", "x-one", "content-length"]);
        // The same names in another case, then a different name at a known place, then more.
        let second = names(
            "HTTP/1.1 200 OK\nSERVER: b\nX-Two: 2\nContent-Length: 0\nX-Three: 3\n\n",
            &mut known,
        );
        assert_eq!(second, ["server", "x-two", "content-length", "x-three"]);
        let third = names("HTTP/1.1 200 OK\nx-two: 2\n\n", &mut known);
        assert_eq!(third, ["x-two"]);
    }

    #[test]
    fn a_head_with_many_fields_is_parsed_again_with_room_for_them_all() {
        let fields: String = (0..100)
            .map(|index| format!("x-field-{index}: {index}\n"))
            .collect();
        let (head, bytes) =
            final_head(&format!("HTTP/1.1 200 OK\n{fields}content-length: 0\n\n")).unwrap();
        assert_eq!(
            head.headers(&bytes, &mut KnownNames::default())
                .unwrap()
                .len(),
            101
        );
        let too_many: String = (0..MAX_RESPONSE_HEADERS)
            .map(|index| format!("x-{index}: 1\n"))
            .collect();
        assert!(matches!(
            final_head(&format!("HTTP/1.1 200 OK\n{too_many}content-length: 0\n\n")),
            Err(HeadError::Invalid(TOO_MANY))
        ));
    }

    #[test]
    fn interim_heads_are_skipped_and_a_protocol_switch_refused() {
        let text = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(parse(text, false).unwrap(), Parsed::Interim(25)));
        assert!(parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nDate", false).unwrap(),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"", false).unwrap(), Parsed::Partial));
    }
    #[test]
    fn forwarded_lines_are_written_as_sent_around_what_is_taken_out() {
        let written = |text: &str| {
            let mut out = Vec::new();
            forwarded_of(text).write_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        // Runs of lines copied whole (spelling, spacing), hop-by-hop lines left out.
        assert_eq!(
            written(
                "HTTP/1.1 200 OK\r\nServer: a\r\nX-Spaced:  b \r\nConnection: keep-alive\r\n\
                 ETag: \"c\"\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\n\r\n"
            ),
            "Server: a\r\nX-Spaced:  b \r\nETag: \"c\"\r\nContent-Length: 0\r\n"
        );
        // A bare LF from the backend never reaches the client; the lines around it still do.
        assert_eq!(
            written("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\nC: 3\r\nTE: x\r\nD: 4\r\n\r\n"),
            "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n"
        );
        // A field `Connection` names is taken out of the middle of a run.
        assert_eq!(
            written("HTTP/1.1 200 OK\r\nA: 1\r\nX-Hop: 2\r\nConnection: x-hop\r\nB: 3\r\n\r\n"),
            "A: 1\r\nB: 3\r\n"
        );
        assert_eq!(
            written("HTTP/1.1 200 OK\r\nA:\r\nB:   \r\nC: 3\r\n\r\n"),
            "A:\r\nB:   \r\nC: 3\r\n",
            "empty values"
        );
        assert_eq!(written("HTTP/1.1 204 No Content\r\n\r\n"), "");
    }
}
