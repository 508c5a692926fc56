//! A response head as HTTP/1.1 bytes (RFC 9112 §4-§6): the status line, the proxy's fields as they
//! are, then what this hop's framing and connection need (`Content-Length` or chunked,
//! `Connection`, and `Date` when the response has none).

use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::response::Parts;
use http::{StatusCode, Version};
use http_body::SizeHint;

use crate::backend::head::ForwardedFields;
use crate::hop_by_hop;

/// How the response body is delimited on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body is sent (a `HEAD` request, `1xx`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client of a body of unknown length: the close ends it.
    UntilClose,
}

/// What the request decided about its response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange {
    /// The client's HTTP version: an HTTP/1.0 client gets HTTP/1.0 back.
    pub(super) version: Version,
    pub(super) is_head: bool,
    /// Whether the connection may carry another request afterwards, as far as the client and
    /// the connection are concerned; the response may still close it.
    pub(super) keep_alive: bool,
}

/// Appends the head of a response with `parts` (after `forwarded`: the backend's fields as it
/// sent them, if they came that way) and a body of `size` to `out`; returns its framing and
/// whether the connection stays open after it.
pub(super) fn encode_head(
    parts: &Parts,
    forwarded: Option<&ForwardedFields>,
    size: &SizeHint,
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let http10 = exchange.version == Version::HTTP_10;
    let status = parts.status;
    out.reserve(64 + 48 * parts.headers.len());
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // The fields as they are, noting on the way what this hop's framing and connection need.
    let (mut said_close, mut said_keep_alive, mut has_date) = (false, false, false);
    let mut declared = None;
    // The backend's, spelt as it spelt them; no hop-by-hop field is among them, and a length only
    // where it frames the body (`backend::head`).
    if let Some(forwarded) = forwarded {
        declared = forwarded.declared_length();
        has_date = forwarded.has_date();
        forwarded.write_to(out);
    }
    for (name, value) in &parts.headers {
        if *name == CONNECTION {
            for token in hop_by_hop::tokens(value.to_str().unwrap_or("")) {
                said_close |= token.eq_ignore_ascii_case("close");
                said_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if *name == CONTENT_LENGTH && declared.is_none() {
            declared = Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok()),
            );
        } else if *name == DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = exchange.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, declared, size.exact()) {
        (true, _, _) => Framing::None,
        (false, Some(Some(len)), _) => Framing::Length(len),
        (false, Some(None), _) => Framing::UntilClose,
        (false, None, Some(len)) => Framing::Length(len),
        (false, None, None) if http10 => Framing::UntilClose,
        (false, None, None) => Framing::Chunked,
    };
    let keep_alive = exchange.keep_alive && !said_close && framing != Framing::UntilClose;
    match framing {
        Framing::Length(len) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if http10 && keep_alive && !said_keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    } else if !http10 && !keep_alive && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(crate::client::date::now().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The line in front of one chunk of `len` bytes.
pub(super) fn chunk_size_line(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.max(1).leading_zeros()).div_ceil(4);
    out.extend((0..digits).rev().map(|at| HEX[(len >> (4 * at)) & 0xf]));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn head(response: Response<()>, size: SizeHint, exchange: Exchange) -> (String, Framing, bool) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let (framing, keep_alive) = encode_head(&parts, None, &size, exchange, &mut out);
        (String::from_utf8(out).unwrap(), framing, keep_alive)
    }

    const KEEP: Exchange = Exchange {
        version: Version::HTTP_11,
        is_head: false,
        keep_alive: true,
    };

    #[test]
    fn a_known_size_gets_a_length_and_an_unknown_one_is_chunked() {
        let response = Response::builder().header("x-a", "1").body(()).unwrap();
        let (text, framing, keep_alive) = head(response, SizeHint::with_exact(12), KEEP);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 12\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!((framing, keep_alive), (Framing::Length(12), true));

        let response = Response::builder().header("date", "then").body(()).unwrap();
        let (text, framing, _) = head(response, SizeHint::default(), KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: then\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, Framing::Chunked);
    }

    #[test]
    fn connection_fields_follow_the_version_and_the_decision() {
        let with_date = || Response::builder().header("date", "d");
        let closing = Exchange {
            keep_alive: false,
            ..KEEP
        };
        let (text, _, keep_alive) = head(
            with_date().body(()).unwrap(),
            SizeHint::with_exact(0),
            closing,
        );
        assert!(
            text.contains("connection: close\r\n") && !keep_alive,
            "{text}"
        );

        let said = with_date().header("connection", "close").body(()).unwrap();
        let (text, _, keep_alive) = head(said, SizeHint::with_exact(0), KEEP);
        assert_eq!(text.matches("close").count(), 1, "{text}");
        assert!(!keep_alive);

        let old = Exchange {
            version: Version::HTTP_10,
            ..KEEP
        };
        let (text, _, keep_alive) =
            head(with_date().body(()).unwrap(), SizeHint::with_exact(2), old);
        assert!(
            text.starts_with("HTTP/1.0 200 OK\r\n") && text.contains("connection: keep-alive\r\n"),
            "{text}"
        );
        assert!(keep_alive);
        let (_, framing, keep_alive) =
            head(with_date().body(()).unwrap(), SizeHint::default(), old);
        assert_eq!((framing, keep_alive), (Framing::UntilClose, false));
    }

    #[test]
    fn the_backend_s_fields_go_first_as_spelt_and_frame_the_body_as_it_did() {
        let forwarded = crate::backend::head::forwarded_of(
            "HTTP/1.1 200 OK\r\nServer: b\r\nDATE: then\r\nContent-Length: 3\r\nx-a: 1\r\n\r\n",
        );
        let (parts, ()) = Response::builder()
            .header("x-own", "2")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        let (framing, _) = encode_head(
            &parts,
            Some(&forwarded),
            &SizeHint::with_exact(3),
            KEEP,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: b\r\nDATE: then\r\nContent-Length: 3\r\nx-a: 1\r\nx-own: 2\r\n\r\n",
            "no second length or date"
        );
        assert_eq!(framing, Framing::Length(3));
    }

    /// Whether the backend dated its response and what length it declared are read from the
    /// fields as forwarded: a Date that `Connection` made hop-by-hop is no date, and a length
    /// that is an agreeing list frames the backend's leg but is no plain number for the client's.
    #[test]
    fn the_date_and_the_length_are_the_forwarded_fields_ones() {
        for (backend_head, dated, framing) in [
            ("Content-Length: 3\r\n", false, Framing::Length(3)),
            (
                "date: then\r\nContent-Length: 3\r\n",
                true,
                Framing::Length(3),
            ),
            (
                "Date: then\r\nConnection: date\r\nContent-Length: 3\r\n",
                false,
                Framing::Length(3),
            ),
            (
                "Date: then\r\nContent-Length: 3, 3\r\n",
                true,
                Framing::UntilClose,
            ),
            (
                "Dates: x\r\nTransfer-Encoding: chunked\r\n",
                false,
                Framing::Chunked,
            ),
        ] {
            let forwarded = crate::backend::head::forwarded_of(&format!(
                "HTTP/1.1 200 OK\r\n{backend_head}\r\n"
            ));
            let (parts, ()) = Response::new(()).into_parts();
            let mut out = Vec::new();
            let (written, _) =
                encode_head(&parts, Some(&forwarded), &SizeHint::new(), KEEP, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(written, framing, "{backend_head:?}");
            assert_eq!(
                text.matches("ate: ").count(),
                1,
                "one date, the backend's if it sent one: {text:?}"
            );
            assert_eq!(
                text.to_ascii_lowercase().contains("date: then"),
                dated,
                "{text:?}"
            );
        }
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size_line(len, &mut out);
            assert_eq!(out, line.as_bytes());
        }
    }

    #[test]
    fn head_requests_and_bodiless_statuses_send_no_body() {
        let head_request = Exchange {
            is_head: true,
            ..KEEP
        };
        let response = Response::builder()
            .header("content-length", "5")
            .header("date", "d")
            .body(())
            .unwrap();
        let (text, framing, _) = head(response, SizeHint::with_exact(0), head_request);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: d\r\n\r\n"
        );
        assert_eq!(framing, Framing::None);
        let not_modified = Response::builder()
            .status(304)
            .header("date", "d")
            .body(())
            .unwrap();
        assert_eq!(
            head(not_modified, SizeHint::default(), KEEP).1,
            Framing::None
        );
    }
}
