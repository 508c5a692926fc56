//! Juggler's HTTP/1.1 request-head parser against hyper's, which served clients before it: the same
//! bytes must get the same verdict (the same request, the same refusal status, or both still
//! waiting), except where Juggler refuses on purpose what hyper let through (`Content-Length` with
//! `Transfer-Encoding`, bare-LF line ends). A hand-written corpus of edge cases, then seeded
//! mutations of it; `make fuzz` runs the same comparison coverage-guided (target `head_vs_hyper`).

use juggler::fuzzing::{compare_with_hyper, juggler_verdict, HeadVerdict};

const MAX_HEAD: usize = 16 * 1024;

fn corpus() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /a/b?c=d&e HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Two: 1\r\nx-two: 2\r\n\r\n",
        b"GET http://example.com:8080/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET /\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000000005\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: caf\xc3\xa9 \xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nX:   spaced   \r\n\r\n",
        b"GET / HTTP/1.1\r\nX:\tt\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://[::1]:80/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a b/ HTTP/1.1\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        // Pipelined: the first request is the one compared (found by the fuzz target, where the
        // comparison had taken hyper's last request instead).
        b"znPRHHHHHHHI * HTTP/1.1\r\n\r\nSMHHHHHHHHHHI * HTTP/1.1\r\n\r\nSM\n\r\x1e%[",
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\n",
        // Empty lines before the request line, and a head ended by a bare LF (the fuzz target).
        b"\r\n\r\n\r\n#HHHHHH j~HH HTTP/1.0\r\n\n\n#",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost",
        b"GET / HT",
        b"",
    ]
    .iter()
    .map(|case| case.to_vec())
    .collect();
    cases.push(format!("GET / HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(99)).into_bytes());
    cases.push(format!("GET / HTTP/1.1\r\n{}\r\n", "X: 1\r\n".repeat(100)).into_bytes());
    cases.push(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes());
    cases.push(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD - 20)).into_bytes());
    cases
}

async fn assert_agree(input: &[u8]) {
    if let Err(difference) = compare_with_hyper(input, MAX_HEAD).await {
        let shown = String::from_utf8_lossy(&input[..input.len().min(300)]);
        let tail = String::from_utf8_lossy(&input[input.len().saturating_sub(100)..]);
        panic!(
            "verdicts differ on {shown:?} ... {tail:?} ({} bytes):\n{}",
            input.len(),
            &difference[..difference.len().min(1000)]
        );
    }
}

#[tokio::test]
async fn the_corpus_gets_hyper_s_verdicts_but_for_the_deliberate_refusals() {
    for case in corpus() {
        assert_agree(&case).await;
    }
    // The deliberate ones are refused, not merely allowed to differ.
    for refused in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            juggler_verdict(refused, MAX_HEAD),
            HeadVerdict::Refused(400)
        );
    }
}

/// Seeded mutations of the corpus: bytes flipped, inserted (from the bytes that matter to a head
/// parser), deleted, and heads cut short; the same seed gives the same cases.
#[tokio::test]
async fn mutated_heads_get_hyper_s_verdicts() {
    const INTERESTING: &[u8] = b"\r\n :\t;,\x00\x7f\xff0aZ-/?";
    let corpus = corpus();
    let mut rng = fastrand::Rng::with_seed(0x5eed_1b07);
    // (accepted, refused, incomplete): the mutations must reach every verdict, or they test little.
    let mut kinds = (0, 0, 0);
    for _ in 0..3_000 {
        let mut case = corpus[rng.usize(..corpus.len())].clone();
        for _ in 0..rng.usize(1..3) {
            if case.is_empty() {
                break;
            }
            let at = rng.usize(..case.len());
            match rng.u8(..4) {
                0 => case[at] = INTERESTING[rng.usize(..INTERESTING.len())],
                1 => case.insert(at, INTERESTING[rng.usize(..INTERESTING.len())]),
                2 => {
                    case.remove(at);
                }
                _ => case.truncate(at),
            }
        }
        assert_agree(&case).await;
        match juggler_verdict(&case, MAX_HEAD) {
            HeadVerdict::Accepted { .. } => kinds.0 += 1,
            HeadVerdict::Refused(_) => kinds.1 += 1,
            HeadVerdict::Incomplete => kinds.2 += 1,
        }
    }
    println!("accepted, refused, incomplete: {kinds:?}");
    assert!(
        kinds.0 >= 200 && kinds.1 >= 300 && kinds.2 >= 100,
        "{kinds:?}"
    );
}
