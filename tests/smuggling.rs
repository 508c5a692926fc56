//! Ambiguous and malformed HTTP/1.1 (RFC 9112 §6.3, §11.2): every case gets `400` and a closed
//! connection, the backend receives nothing, and the next client is unaffected. Each case says
//! who refuses it: Juggler's HTTP/1.1 parser (`client::http1`, httparse underneath) while reading
//! the head or body, or its `request_checks` before routing.

use std::time::Duration;

use juggler::table::Settings;
use juggler_testkit::raw::{exchange, status_of};
use juggler_testkit::*;

/// How long a refused connection may take to be answered and closed.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Sends each case on its own connection to a fresh Juggler and checks: `400`, connection closed,
/// nothing reached the backend, and a normal request from another client still gets `200`.
async fn assert_all_refused(cases: &[(&str, &[u8])]) {
    for (name, bytes) in cases {
        let (backend, juggler) = start_one_backend("server 1", 1, Settings::DEFAULT).await;
        let started = tokio::time::Instant::now();
        let (answer, closed) = exchange(juggler.addr, bytes, ANSWER_WAIT).await;
        let took = started.elapsed();
        let status = status_of(&answer);
        let leaked = backend.stats.requests.get();
        let next = get(juggler.addr, "/after").await.unwrap();
        println!(
            "{name}: status {status:?}, closed {closed} after {took:?}, backend saw {leaked}, \
             next client {}",
            next.status
        );
        assert_eq!(status, Some(400), "{name}: {answer:?}");
        assert!(closed, "{name}: connection left open");
        assert_eq!(leaked, 0, "{name}: reached the backend");
        assert_eq!(next.status, 200, "{name}: next client");
        assert_eq!(backend.stats.requests.get(), 1, "{name}");
        juggler.shutdown().await.unwrap();
    }
}

fn head(extra: &str) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    let mut bytes = head("Transfer-Encoding: chunked\r\n");
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

// --- Refused while parsing ------------------------------------------------------------------

#[juggler_testkit::test]
async fn differing_content_lengths_are_refused() {
    assert_all_refused(&[
        (
            "two lines",
            &head("Content-Length: 4\r\nContent-Length: 5\r\n"),
        ),
        ("one list", &head("Content-Length: 4, 5\r\n")),
        ("same value as a list", &head("Content-Length: 4, 4\r\n")),
        ("signed", &head("Content-Length: +4\r\n")),
        ("not a number", &head("Content-Length: 4x\r\n")),
    ])
    .await;
}

#[juggler_testkit::test]
async fn transfer_encoding_not_ending_in_chunked_is_refused() {
    assert_all_refused(&[
        (
            "chunked, gzip",
            &head("Transfer-Encoding: chunked, gzip\r\n"),
        ),
        ("gzip only", &head("Transfer-Encoding: gzip\r\n")),
        ("xchunked", &head("Transfer-Encoding: xchunked\r\n")),
        (
            "chunked then identity line",
            &head("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n"),
        ),
        (
            "HTTP/1.0 with chunked",
            b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ])
    .await;
}

#[juggler_testkit::test]
async fn bad_chunk_sizes_and_extensions_are_refused() {
    // The body's decoder fails; Juggler reads bodies whole before routing to a backend, so the
    // failure becomes `400` + close and nothing is sent on.
    assert_all_refused(&[
        ("size not hex", &chunked("zz\r\nhello\r\n0\r\n\r\n")),
        ("negative size", &chunked("-5\r\nhello\r\n0\r\n\r\n")),
        ("0x prefix", &chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        (
            "size overflows u64",
            &chunked("1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "size line ends in bare LF",
            &chunked("5\nhello\r\n0\r\n\r\n"),
        ),
        ("data longer than size", &chunked("3\r\nhello\r\n0\r\n\r\n")),
        (
            "extension with bare LF",
            &chunked("5;a=b\nhello\r\n0\r\n\r\n"),
        ),
        (
            "extension with bare CR",
            &chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ),
    ])
    .await;
}

#[juggler_testkit::test]
async fn bare_cr_whitespace_before_colon_and_obs_fold_are_refused_by_httparse() {
    assert_all_refused(&[
        (
            "bare CR inside a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
        ),
        (
            "bare CR as line end",
            b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
        ),
        (
            "bare CR after request line",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
        ),
        (
            "tab before colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: b\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
        ),
        (
            "obs-fold with tab",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb\r\n\r\n",
        ),
    ])
    .await;
}

#[juggler_testkit::test]
async fn invalid_characters_in_header_names_and_values_are_refused_by_httparse() {
    assert_all_refused(&[
        (
            "space in name",
            b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
        ),
        (
            "parenthesis in name",
            b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n",
        ),
        (
            "control char in name",
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n",
        ),
        ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
        ),
        (
            "DEL in value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n",
        ),
        (
            "escape in value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x1bb\r\n\r\n",
        ),
    ])
    .await;
}

#[juggler_testkit::test]
async fn http_0_9_and_broken_request_lines_are_refused_by_httparse() {
    assert_all_refused(&[
        ("HTTP/0.9 request line", b"GET /\r\n"),
        ("HTTP/0.9 request line, blank line", b"GET /\r\n\r\n"),
        ("unknown version", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        ("two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ])
    .await;
}

// --- Framed by the parser, refused by Juggler's request_checks (HTTP/1.1 and HTTP/2 alike) ----

#[juggler_testkit::test]
async fn codings_a_chunked_decoder_would_half_decode_are_refused() {
    assert_all_refused(&[
        (
            "gzip, chunked",
            &[
                head("Transfer-Encoding: gzip, chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "gzip line then chunked line",
            &[
                head("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "chunked twice",
            &[
                head("Transfer-Encoding: chunked, chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "two Host lines",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
    ])
    .await;
}

// --- Ambiguous framing and line ends (RFC 9112 §6.3 item 3, §2.2) ----------------------------

/// `Content-Length` together with `Transfer-Encoding`, either order: RFC 9112 lets a server frame
/// by chunked and close; Juggler refuses, so no reader downstream can frame it by the length. The
/// bytes a length-reader would take as a second request never reach the backend either.
#[juggler_testkit::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let smuggled = b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_all_refused(&[
        (
            "CL then TE",
            &[
                head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "TE then CL",
            &[
                head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "CL.TE with a request behind",
            &[
                head("Content-Length: 60\r\nTransfer-Encoding: chunked\r\n"),
                smuggled.to_vec(),
            ]
            .concat(),
        ),
        (
            "TE.CL with a request behind",
            &[
                head("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
                smuggled.to_vec(),
            ]
            .concat(),
        ),
    ])
    .await;
}

/// A bare LF as a line end: RFC 9112 §2.2 lets a recipient accept it, and httparse does; a backend
/// that does not would read the head differently, so Juggler refuses it.
#[juggler_testkit::test]
async fn bare_lf_line_endings_are_refused() {
    assert_all_refused(&[
        ("all bare LF", b"GET / HTTP/1.1\nHost: a\n\n"),
        (
            "bare LF after request line",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        ),
        (
            "bare LF between headers",
            b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
        ),
        (
            "bare LF with a body",
            b"POST /echo HTTP/1.1\nHost: a\nContent-Length: 5\nX-A: b\n\nhello",
        ),
    ])
    .await;
}

/// Chunk extensions without CR or LF are ignored (RFC 9112 §7.1.1 lets a recipient
/// ignore unknown extensions); Juggler re-frames the body with a `Content-Length`, so they never
/// reach the backend either. Proof that they are dropped, not forwarded.
#[juggler_testkit::test]
async fn odd_but_cr_lf_free_chunk_extensions_are_dropped_not_forwarded() {
    let (_backend, juggler) = start_one_backend("server 1", 1, Settings::DEFAULT).await;
    let bytes = chunked("5;a=\"unterminated;b\r\nhello\r\n0;c\r\n\r\n");
    let (answer, _) = exchange(juggler.addr, &bytes, Duration::from_millis(500)).await;
    println!("odd extension: {answer:?}");
    assert_eq!(status_of(&answer), Some(200));
    assert!(answer.ends_with("hello"), "{answer}");
    assert!(answer.contains("x-body-len: 5"), "{answer}");
    juggler.shutdown().await.unwrap();
}

// --- RFC-strict requests (issue 12) --------------------------------------------------------

#[juggler_testkit::test]
async fn http11_without_host_is_refused_before_any_body() {
    assert_all_refused(&[
        ("HTTP/1.1 GET without Host", b"GET / HTTP/1.1\r\n\r\n"),
        (
            "HTTP/1.1 POST without Host, body never sent",
            b"POST /echo HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
        ),
    ])
    .await;
}
