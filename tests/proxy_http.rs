//! HTTP semantics through Juggler, end to end over loopback: bodies arrive byte for byte whatever
//! the client's framing, headers cross as RFC 9110 says a proxy must pass them, and requests
//! Juggler refuses get the right status without ever reaching a backend.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use juggler::table::Settings;
use juggler_testkit::bodies::{fingerprint, random_body, send_frames, Frames};
use juggler_testkit::raw_backend::{RawBackend, HOP_BY_HOP_RESPONSE_HEADERS};
use juggler_testkit::wire::Wire;
use juggler_testkit::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const MIB: usize = 1024 * 1024;

/// From empty to four times the response buffer: `1 MiB ± 1` straddle the buffered/streamed split.
const BODY_SIZES: [usize; 7] = [0, 1, 1000, 64 * 1024, MIB - 1, MIB + 1, 4 * MIB];

/// Hop-by-hop request headers (RFC 9110 §7.6.1) that must not reach a backend.
const HOP_BY_HOP_REQUEST_HEADERS: [&str; 7] = [
    "x-custom",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the backend saw of the most recent request: its `content-length`, and whether any
/// `transfer-encoding` came with it.
fn framing_seen(backend: &TestBackend) -> (Option<String>, bool) {
    let headers = backend.stats.last_headers.lock().unwrap();
    let headers = headers.as_ref().expect("backend saw no request");
    let length = headers
        .get("content-length")
        .map(|value| value.to_str().unwrap().to_owned());
    (length, headers.contains_key("transfer-encoding"))
}

#[juggler_testkit::test]
async fn bodies_with_content_length_arrive_byte_for_byte() {
    let (backend, juggler) = start_one_backend("echo", 2, Settings::DEFAULT).await;
    let mut client = Client::connect(juggler.addr).await;
    for (seed, size) in BODY_SIZES.into_iter().enumerate() {
        let body = random_body(size, seed as u64);
        let started = Instant::now();
        let answer = client.send(post("/echo", body.clone())).await.unwrap();
        let (length, chunked) = framing_seen(&backend);
        println!(
            "content-length {size:>8} B: status {}, echoed {} B, fingerprint {:016x} -> {:016x}, \
             backend saw content-length {length:?}, transfer-encoding {chunked}, {:?}",
            answer.status,
            answer.body.len(),
            fingerprint(&body),
            fingerprint(&answer.body),
            started.elapsed()
        );
        assert_eq!(answer.status, 200);
        assert!(answer.body == body, "body of {size} B changed on the way");
        assert_eq!(answer.headers["x-body-len"], size.to_string().as_str());
        assert_eq!(length, Some(size.to_string()));
        assert!(!chunked);
    }
    assert_eq!(backend.stats.requests.get(), BODY_SIZES.len());
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn chunked_bodies_are_reframed_with_content_length() {
    let (backend, juggler) = start_one_backend("echo", 2, Settings::DEFAULT).await;
    for (seed, size) in BODY_SIZES.into_iter().enumerate() {
        let body = random_body(size, 100 + seed as u64);
        let frames = Frames::split(&body, 4);
        let frame_count = frames.count();
        let request = Request::post("/echo")
            .header("host", "juggler.test")
            .body(frames)
            .unwrap();
        let started = Instant::now();
        let answer = send_frames(juggler.addr, request).await.unwrap();
        let (length, chunked) = framing_seen(&backend);
        println!(
            "chunked {size:>8} B in {frame_count} chunks: status {}, echoed {} B, fingerprint \
             {:016x} -> {:016x}, backend saw content-length {length:?}, transfer-encoding \
             {chunked}, {:?}",
            answer.status,
            answer.body.len(),
            fingerprint(&body),
            fingerprint(&answer.body),
            started.elapsed()
        );
        assert_eq!(answer.status, 200);
        assert!(
            answer.body == body,
            "chunked body of {size} B changed on the way"
        );
        assert_eq!(length, Some(size.to_string()));
        assert!(!chunked);
    }
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn raw_chunked_body_with_extensions_and_trailers_is_reframed() {
    let (backend, juggler) = start_one_backend("echo", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(
        b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    )
    .await;
    let response = wire.read_response(false).await;
    let (length, chunked) = framing_seen(&backend);
    let trailer_forwarded = backend
        .stats
        .last_headers
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .contains_key("x-trailer");
    println!(
        "raw chunked: status {}, body {:?}, backend saw content-length {length:?}, \
         transfer-encoding {chunked}, trailer as header {trailer_forwarded}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world");
    assert_eq!(length.as_deref(), Some("11"));
    assert!(!chunked);
    assert!(!trailer_forwarded);
    juggler.shutdown().await.unwrap();
}

/// Juggler with one connection to a [`RawBackend`] (which answers from the request's path).
async fn behind_raw_backend() -> (RawBackend, TestJuggler) {
    let backend = RawBackend::start().await;
    let juggler = TestJuggler::start(table(&[backend.addr], 1, Settings::DEFAULT)).await;
    (backend, juggler)
}

/// [`behind_raw_backend`] and a raw client connected to Juggler.
async fn raw_backend_and_wire() -> (RawBackend, TestJuggler, Wire) {
    let (backend, juggler) = behind_raw_backend().await;
    let wire = Wire::connect(juggler.addr).await;
    (backend, juggler, wire)
}

#[juggler_testkit::test]
async fn chunked_and_close_delimited_responses_arrive_byte_for_byte() {
    let (backend, juggler) = behind_raw_backend().await;
    let mut client = Client::connect(juggler.addr).await;
    for (path, sizes) in [
        ("/chunked-echo", &[0, 1000, MIB + 1, 4 * MIB][..]),
        ("/until-close", &[1000, MIB + 1][..]),
    ] {
        for &size in sizes {
            let body = random_body(size, 200 + size as u64);
            let request = post(path, body.clone());
            let started = Instant::now();
            let answer = client.send(request).await.unwrap();
            println!(
                "{path} {size:>8} B: status {}, got {} B, fingerprint {:016x} -> {:016x}, \
                 content-length {:?}, {:?}",
                answer.status,
                answer.body.len(),
                fingerprint(&body),
                fingerprint(&answer.body),
                answer.headers.get("content-length"),
                started.elapsed()
            );
            assert_eq!(answer.status, 200);
            assert!(
                answer.body == body,
                "{path} body of {size} B changed on the way"
            );
            assert!(!answer.headers.contains_key("trailer"));
        }
    }
    // Every close-delimited response cost the pool its connection; each was replaced (the last
    // one by the pool's refill, which runs beside the answer, not before it).
    let replaced = wait_for(Duration::from_secs(5), || backend.accepted() >= 3).await;
    println!("backend connections accepted: {}", backend.accepted());
    assert!(
        replaced.is_some(),
        "close-delimited responses must retire their connection"
    );
    juggler.shutdown().await.unwrap();
}

/// A request with every kind of hop-by-hop header and end-to-end ones with duplicates, interleaved.
const HEADER_TEST_REQUEST: &[u8] = b"POST /echo?q=1&r=%2F HTTP/1.1\r\n\
    Host: juggler.test:8080\r\n\
    Connection: x-custom, keep-alive\r\n\
    X-Custom: connection-specific\r\n\
    Keep-Alive: timeout=5\r\n\
    Proxy-Connection: keep-alive\r\n\
    TE: trailers\r\n\
    Trailer: x-checksum\r\n\
    X-Dup: 1\r\n\
    Accept: text/html, application/json;q=0.9\r\n\
    X-Dup: 2\r\n\
    Cookie: a=1\r\n\
    User-Agent: juggler-test/1.0\r\n\
    Cookie: b=2\r\n\
    X-Request-Id: 4f2a-77\r\n\
    X-Empty: \r\n\
    Content-Length: 5\r\n\
    \r\n\
    hello";

/// End-to-end headers of [`HEADER_TEST_REQUEST`] with every value, in order.
const END_TO_END: [(&str, &[&str]); 7] = [
    ("host", &["juggler.test:8080"]),
    ("x-dup", &["1", "2"]),
    ("accept", &["text/html, application/json;q=0.9"]),
    ("cookie", &["a=1", "b=2"]),
    ("user-agent", &["juggler-test/1.0"]),
    ("x-request-id", &["4f2a-77"]),
    ("x-empty", &[""]),
];

#[juggler_testkit::test]
async fn request_headers_cross_unchanged_except_hop_by_hop() {
    let (backend, juggler) = start_one_backend("echo", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(HEADER_TEST_REQUEST).await;
    let response = wire.read_response(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");

    let headers = backend.stats.last_headers.lock().unwrap().clone().unwrap();
    println!("backend received: {headers:#?}");
    for (name, values) in END_TO_END {
        let got: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert_eq!(got, values, "header {name}");
    }
    let connection: Vec<_> = headers.get_all("connection").iter().collect();
    assert_eq!(connection, ["keep-alive"]);
    assert_eq!(headers["content-length"], "5");
    for name in HOP_BY_HOP_REQUEST_HEADERS
        .iter()
        .chain(&["x-forwarded-for", "x-forwarded-proto"])
    {
        assert!(!headers.contains_key(*name), "{name} reached the backend");
    }
    let expected = END_TO_END.len() + 2; // plus connection and content-length
    assert_eq!(headers.keys_len(), expected, "unexpected extra headers");
    assert_eq!(
        backend.stats.paths.lock().unwrap().as_slice(),
        ["/echo"],
        "path"
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn request_line_and_header_values_arrive_byte_for_byte() {
    let (backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(HEADER_TEST_REQUEST).await;
    let response = wire.read_response(false).await;
    assert_eq!(response.status, 200);
    let head = String::from_utf8(response.body).unwrap();
    println!("request head as the backend received it:\n{head}");
    assert_eq!(backend.last_head().as_deref(), Some(head.as_str()));

    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("POST /echo?q=1&r=%2F HTTP/1.1"));
    let fields: Vec<(String, &str)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim())
        })
        .collect();
    for (name, values) in END_TO_END {
        let got: Vec<&str> = fields
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| *value)
            .collect();
        assert_eq!(got, values, "header {name}");
    }
    let count = |name: &str| fields.iter().filter(|(field, _)| field == name).count();
    assert_eq!(count("connection"), 1);
    assert_eq!(count("content-length"), 1);
    for name in HOP_BY_HOP_REQUEST_HEADERS {
        assert_eq!(count(name), 0, "{name} reached the backend");
    }
    assert!(head.ends_with("\r\n\r\n"));
    juggler.shutdown().await.unwrap();
}

/// Over HTTP/1.1 the client's end-to-end fields reach the backend spelt as the client spelt them
/// and in its order, repeated names interleaved as sent: they are written as they came, not
/// rebuilt from a header map. Hop-by-hop fields, what `Connection` names and the client's
/// `Content-Length` are left out; Juggler's own framing follows.
#[juggler_testkit::test]
async fn request_fields_keep_their_spelling_and_order_over_http1() {
    let (backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(HEADER_TEST_REQUEST).await;
    let response = wire.read_response(false).await;
    assert_eq!(response.status, 200);
    let head = backend.last_head().expect("the backend saw the request");
    println!("request head as the backend received it:\n{head}");
    assert_eq!(
        head,
        "POST /echo?q=1&r=%2F HTTP/1.1\r\n\
         Host: juggler.test:8080\r\n\
         X-Dup: 1\r\n\
         Accept: text/html, application/json;q=0.9\r\n\
         X-Dup: 2\r\n\
         Cookie: a=1\r\n\
         User-Agent: juggler-test/1.0\r\n\
         Cookie: b=2\r\n\
         X-Request-Id: 4f2a-77\r\n\
         X-Empty: \r\n\
         content-length: 5\r\n\
         connection: keep-alive\r\n\r\n"
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn response_hop_by_hop_headers_do_not_reach_the_client() {
    let (_backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(b"GET /hop-by-hop HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let response = wire.read_response(false).await;
    println!(
        "client received: {} {:?}",
        response.status, response.headers
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");
    for name in HOP_BY_HOP_RESPONSE_HEADERS {
        assert!(response.header(name).is_none(), "{name} reached the client");
    }
    assert!(response.header("transfer-encoding").is_none());
    assert_eq!(response.header_all("x-kept"), ["1", "2"]);
    assert_eq!(response.header_all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header("content-length"), Some("2"));
    // The client connection is still usable.
    wire.send(b"GET /hop-by-hop HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    assert_eq!(wire.read_response(false).await.status, 200);
    juggler.shutdown().await.unwrap();
}

/// Over HTTP/1.1 the backend's end-to-end fields reach the client spelt as the backend spelt them
/// and in its order, repeated names interleaved as sent: they are written as they came, not
/// rebuilt from a header map (which would lower-case them and group repeats).
#[juggler_testkit::test]
async fn response_fields_keep_their_spelling_and_order_over_http1() {
    let (_backend, juggler) = behind_raw_backend().await;
    let request = b"GET /hop-by-hop HTTP/1.1\r\nHost: juggler.test\r\nConnection: close\r\n\r\n";
    let (answer, closed) =
        juggler_testkit::raw::exchange(juggler.addr, request, Duration::from_secs(3)).await;
    println!("{answer}");
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let sent_on = "\r\nX-Kept: 1\r\nSet-Cookie: a=1\r\nX-Kept: 2\r\nSet-Cookie: b=2\r\n\
                   Content-Type: text/plain\r\nContent-Length: 2\r\n";
    assert!(answer.contains(sent_on), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    juggler.shutdown().await.unwrap();
}

/// Sends GET `/x` with `x_forwarded_for` values and an `X-Forwarded-Proto: https` claim, and
/// returns the backend's `X-Forwarded-For` / `X-Forwarded-Proto` values.
async fn forwarded_seen(
    juggler: &TestJuggler,
    backend: &TestBackend,
    x_forwarded_for: &[&str],
    claim_proto: bool,
) -> (Vec<String>, Vec<String>) {
    let mut request = Request::get("/x").header("host", "juggler.test");
    for value in x_forwarded_for {
        request = request.header("x-forwarded-for", *value);
    }
    if claim_proto {
        request = request.header("x-forwarded-proto", "https");
    }
    let answer = get_with(juggler, request.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(answer.status, 200);
    let headers = backend.stats.last_headers.lock().unwrap().clone().unwrap();
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    (values("x-forwarded-for"), values("x-forwarded-proto"))
}

async fn get_with(juggler: &TestJuggler, request: Request<Full<Bytes>>) -> Answer {
    Client::connect(juggler.addr)
        .await
        .send(request)
        .await
        .unwrap()
}

#[juggler_testkit::test]
async fn forwarded_headers_are_opt_in() {
    let backend = TestBackend::start("server").await;
    let off = TestJuggler::start(table(&[backend.addr], 1, Settings::DEFAULT)).await;
    let (xff, proto) = forwarded_seen(&off, &backend, &[], false).await;
    println!("flag off, nothing sent: x-forwarded-for {xff:?}, x-forwarded-proto {proto:?}");
    assert!(xff.is_empty() && proto.is_empty());
    let (xff, proto) = forwarded_seen(&off, &backend, &["10.0.0.1"], true).await;
    println!("flag off, client's own: x-forwarded-for {xff:?}, x-forwarded-proto {proto:?}");
    assert_eq!(xff, ["10.0.0.1"]);
    assert_eq!(proto, ["https"]);
    off.shutdown().await.unwrap();

    let settings = settings_with(|s| s.proxy.forwarded_headers = true);
    let on = TestJuggler::start(table(&[backend.addr], 1, settings)).await;
    let (xff, proto) = forwarded_seen(&on, &backend, &[], false).await;
    println!("flag on, nothing sent: x-forwarded-for {xff:?}, x-forwarded-proto {proto:?}");
    assert_eq!(xff, ["127.0.0.1"]);
    assert_eq!(proto, ["http"]);
    let (xff, proto) =
        forwarded_seen(&on, &backend, &["10.0.0.1", "10.0.0.2, 10.0.0.3"], true).await;
    println!("flag on, chain sent: x-forwarded-for {xff:?}, x-forwarded-proto {proto:?}");
    assert_eq!(xff, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]);
    assert_eq!(
        proto,
        ["http"],
        "a client's X-Forwarded-Proto claim is replaced"
    );
    on.shutdown().await.unwrap();
}

/// Sends GET `/x` with these `X-Request-Id` values; returns the ones the backend saw.
async fn request_ids_seen(
    juggler: &TestJuggler,
    backend: &TestBackend,
    sent: &[&str],
) -> Vec<String> {
    let mut request = Request::get("/x").header("host", "juggler.test");
    for id in sent {
        request = request.header("x-request-id", *id);
    }
    let answer = get_with(juggler, request.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(answer.status, 200);
    let headers = backend.stats.last_headers.lock().unwrap().clone().unwrap();
    headers
        .get_all("x-request-id")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

#[juggler_testkit::test]
async fn request_id_header_is_opt_in_and_one_per_request() {
    let backend = TestBackend::start("server").await;
    let off = TestJuggler::start(table(&[backend.addr], 1, Settings::DEFAULT)).await;
    assert!(request_ids_seen(&off, &backend, &[]).await.is_empty());
    assert_eq!(request_ids_seen(&off, &backend, &["abc"]).await, ["abc"]);
    off.shutdown().await.unwrap();

    let settings = settings_with(|s| s.proxy.request_id_header = true);
    let on = TestJuggler::start(table(&[backend.addr], 1, settings)).await;
    let first = request_ids_seen(&on, &backend, &[]).await;
    let second = request_ids_seen(&on, &backend, &[]).await;
    println!("generated: {first:?} then {second:?}");
    for ids in [&first, &second] {
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(ids[0].len(), 20, "{ids:?}");
        assert!(ids[0].bytes().all(|b| b.is_ascii_hexdigit()), "{ids:?}");
    }
    assert_ne!(first, second, "two requests got one id");
    let kept = request_ids_seen(&on, &backend, &["trace-7f3a"]).await;
    assert_eq!(
        kept,
        ["trace-7f3a"],
        "a usable client id is passed on as it is"
    );
    let too_long = "x".repeat(65);
    let replaced = request_ids_seen(&on, &backend, &[&too_long]).await;
    println!("65-byte client id replaced by {replaced:?}");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced[0], too_long);
    let two = request_ids_seen(&on, &backend, &["a", "b"]).await;
    assert_eq!(
        two.len(),
        1,
        "two client ids reach the backend as one: {two:?}"
    );
    on.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let (backend, juggler) = start_one_backend("server", 1, Settings::DEFAULT).await;
    let mut client = Client::connect(juggler.addr).await;
    let not_found = client.get("/nowhere/x").await.unwrap();
    let wrong_method = client
        .send(post("/get-only", Bytes::from_static(b"data")))
        .await
        .unwrap();
    println!(
        "GET /nowhere/x: {} {:?}; POST /get-only: {} allow {:?}; backend requests {}",
        not_found.status,
        not_found.text(),
        wrong_method.status,
        wrong_method.headers.get("allow"),
        backend.stats.requests.get()
    );
    assert_eq!(not_found.status, 404);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.headers["allow"], "GET, HEAD");
    assert_eq!(backend.stats.requests.get(), 0);
    // The same connection still reaches the backend on a matching route.
    assert_eq!(client.get("/get-only").await.unwrap().text(), "server");
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}

fn limited_body_settings() -> Settings {
    settings_with(|s| s.limits.max_body_bytes = 1000)
}

#[juggler_testkit::test]
async fn declared_body_over_the_limit_is_413_and_closes() {
    let (backend, juggler) = start_one_backend("echo", 1, limited_body_settings()).await;
    let at_limit = get_with(&juggler, post("/echo", random_body(1000, 1))).await;
    assert_eq!(at_limit.status, 200);

    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nContent-Length: 1001\r\n\r\n")
        .await;
    let response = wire.read_response(false).await;
    let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
    println!(
        "1000 B: {}; declared 1001 B: {} {:?}, then {} more bytes, closed {closed}; backend \
         requests {}",
        at_limit.status,
        response.status,
        String::from_utf8_lossy(&response.body),
        rest.len(),
        backend.stats.requests.get()
    );
    assert_eq!(response.status, 413);
    assert!(rest.is_empty());
    assert!(closed, "connection left open after 413");

    // A client that waits for `100 Continue` gets the 413 instead, and never sends the body.
    let mut polite = Wire::connect(juggler.addr).await;
    polite
        .send(
            b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nExpect: 100-continue\r\n\
              Content-Length: 5000\r\n\r\n",
        )
        .await;
    let refused = polite.read_response(false).await;
    let (_, polite_closed) = polite.rest(Duration::from_secs(3)).await;
    println!(
        "declared 5000 B with Expect: 100-continue: {}, closed {polite_closed}",
        refused.status
    );
    assert_eq!(refused.status, 413);
    assert!(polite_closed);
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn chunked_body_growing_over_the_limit_is_413_and_closes() {
    let (backend, juggler) = start_one_backend("echo", 1, limited_body_settings()).await;
    let mut wire = Wire::connect(juggler.addr).await;
    let chunk = [b'a'; 600];
    wire.send(b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    // 600 B, a pause, then 600 B more: the body outgrows 1000 B only in its second chunk.
    for _ in 0..2 {
        let mut piece = b"258\r\n".to_vec();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        // Juggler may already have answered and closed: a failed write is not the test's end.
        let _ = wire.stream.write_all(&piece).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = wire.read_response(false).await;
    let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
    println!(
        "chunked 1200 B over a 1000 B limit: {}, then {} more bytes, closed {closed}; \
         backend requests {}",
        response.status,
        rest.len(),
        backend.stats.requests.get()
    );
    assert_eq!(response.status, 413);
    assert!(rest.is_empty());
    assert!(closed, "connection left open after 413");
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn header_block_over_the_limit_is_431() {
    let settings = settings_with(|s| s.limits.max_header_bytes = 4096);
    let (backend, juggler) = start_one_backend("server", 1, settings).await;
    let request_with = |filler: usize| {
        format!(
            "GET /x HTTP/1.1\r\nHost: juggler.test\r\nX-Filler: {}\r\n\r\n",
            "f".repeat(filler)
        )
    };
    let mut small = Wire::connect(juggler.addr).await;
    small.send(request_with(3000).as_bytes()).await;
    let fits = small.read_response(false).await;

    let mut large = Wire::connect(juggler.addr).await;
    large.send(request_with(6000).as_bytes()).await;
    let too_large = large.read_response(false).await;
    let (_, closed) = large.rest(Duration::from_secs(3)).await;
    println!(
        "~3 KiB head: {}; ~6 KiB head over a 4 KiB limit: {}, closed {closed}; backend \
         requests {}",
        fits.status,
        too_large.status,
        backend.stats.requests.get()
    );
    assert_eq!(fits.status, 200);
    assert_eq!(too_large.status, 431);
    assert!(closed);
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn slow_body_is_408_and_closes() {
    let settings = settings_with(|s| s.limits.body_read_timeout = Duration::from_millis(300));
    let (backend, juggler) = start_one_backend("echo", 1, settings).await;
    let mut wire = Wire::connect(juggler.addr).await;
    let started = Instant::now();
    wire.send(
        b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    let response = wire.read_response(false).await;
    let waited = started.elapsed();
    let (_, closed) = wire.rest(Duration::from_secs(3)).await;
    println!(
        "10 of 100 body bytes: {} after {waited:?}, closed {closed}; backend requests {}",
        response.status,
        backend.stats.requests.get()
    );
    assert_eq!(response.status, 408);
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_secs(3));
    assert!(closed);
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

fn short_header_timeout() -> Settings {
    settings_with(|s| s.limits.header_read_timeout = Duration::from_millis(300))
}

#[juggler_testkit::test]
async fn slow_head_is_408_and_closes() {
    let (backend, juggler) = start_one_backend("server", 1, short_header_timeout()).await;
    let started = Instant::now();
    let (text, closed) = raw::exchange(
        juggler.addr,
        b"GET /x HTTP/1.1\r\nHost: jugg",
        Duration::from_secs(5),
    )
    .await;
    let waited = started.elapsed();
    println!("partial head: {text:?} after {waited:?}, closed {closed}");
    assert_eq!(raw::status_of(&text), Some(408));
    assert!(closed);
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_secs(3));
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn trickled_head_is_408_however_steady_the_trickle() {
    let (backend, juggler) = start_one_backend("server", 1, short_header_timeout()).await;
    let mut wire = Wire::connect(juggler.addr).await;
    let started = Instant::now();
    // One byte every 40 ms: every read sees progress, but the head takes over a second.
    let head = b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n";
    let mut sent = 0;
    for byte in head {
        if wire.stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&rest);
    println!(
        "trickled {sent} of {} head bytes over {:?}: {text:?}, closed {closed}",
        head.len(),
        started.elapsed()
    );
    assert_eq!(raw::status_of(&text), Some(408));
    assert!(closed);
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn idle_connections_are_closed_quietly() {
    let settings = settings_with(|s| s.limits.client_idle_timeout = Duration::from_millis(300));
    let (_backend, juggler) = start_one_backend("server", 1, settings).await;

    let mut used = Wire::connect(juggler.addr).await;
    used.send(b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    assert_eq!(used.read_response(false).await.status, 200);
    let idle_from = Instant::now();
    let (after_response, closed_after_response) = used.rest(Duration::from_secs(3)).await;
    let idle_for = idle_from.elapsed();

    let mut silent = Wire::connect(juggler.addr).await;
    let silent_from = Instant::now();
    let (from_silent, silent_closed) = silent.rest(Duration::from_secs(3)).await;
    let silent_for = silent_from.elapsed();
    println!(
        "after a response: closed {closed_after_response} after {idle_for:?} with {} bytes; \
         never used: closed {silent_closed} after {silent_for:?} with {} bytes",
        after_response.len(),
        from_silent.len()
    );
    assert!(closed_after_response && after_response.is_empty());
    assert!(idle_for >= Duration::from_millis(250) && idle_for < Duration::from_secs(2));
    assert!(silent_closed && from_silent.is_empty());
    assert!(silent_for < Duration::from_secs(2));
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn upgrade_and_connect_are_501() {
    let (backend, juggler) = start_one_backend("server", 1, Settings::DEFAULT).await;
    let mut websocket = Wire::connect(juggler.addr).await;
    websocket
        .send(
            b"GET /chat HTTP/1.1\r\nHost: juggler.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
    let upgrade = websocket.read_response(false).await;
    let mut tunnel = Wire::connect(juggler.addr).await;
    tunnel
        .send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        .await;
    let connect = tunnel.read_response(false).await;
    println!(
        "Upgrade: websocket: {} {:?}; CONNECT: {} {:?}; backend requests {}",
        upgrade.status,
        String::from_utf8_lossy(&upgrade.body),
        connect.status,
        String::from_utf8_lossy(&connect.body),
        backend.stats.requests.get()
    );
    for response in [&upgrade, &connect] {
        assert_eq!(response.status, 501);
        let text = String::from_utf8_lossy(&response.body);
        assert!(text.contains("long-lived"), "body {text:?}");
        assert!(response.header("upgrade").is_none());
    }
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn head_response_has_the_get_length_and_no_body() {
    let (_backend, juggler) = start_one_backend("server 1", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(b"HEAD /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let head = wire.read_response(true).await;
    let (stray, closed) = wire.rest(Duration::from_millis(300)).await;
    // The next response on the connection must start right where the HEAD response ended.
    wire.send(b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let get = wire.read_response(false).await;
    println!(
        "HEAD: {} content-length {:?}, {} stray bytes, closed {closed}; GET: {} \
         content-length {:?} body {:?}",
        head.status,
        head.header("content-length"),
        stray.len(),
        get.status,
        get.header("content-length"),
        String::from_utf8_lossy(&get.body)
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("8"));
    assert!(stray.is_empty() && !closed);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, b"server 1");
    assert_eq!(get.header("content-length"), Some("8"));
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn no_body_for_204_and_304() {
    let (_backend, juggler) = start_one_backend("server 1", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    for status in [204u16, 304] {
        wire.send(
            format!("GET /status/{status} HTTP/1.1\r\nHost: juggler.test\r\n\r\n").as_bytes(),
        )
        .await;
        let response = wire.read_response(false).await;
        let (stray, closed) = wire.rest(Duration::from_millis(300)).await;
        println!(
            "/status/{status}: {} headers {:?}, {} stray bytes, closed {closed}",
            response.status,
            response.headers,
            stray.len()
        );
        assert_eq!(response.status, status);
        assert!(stray.is_empty() && !closed);
        assert!(response.header("transfer-encoding").is_none());
        if status == 204 {
            assert!(matches!(
                response.header("content-length"),
                None | Some("0")
            ));
        }
    }
    wire.send(b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let next = wire.read_response(false).await;
    assert_eq!(next.body, b"server 1");
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn expect_100_continue_is_answered_by_juggler_and_not_forwarded() {
    let (backend, juggler) = start_one_backend("echo", 1, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(
        b"POST /echo HTTP/1.1\r\nHost: juggler.test\r\nExpect: 100-continue\r\n\
          Content-Length: 5\r\n\r\n",
    )
    .await;
    let interim = wire.read_response(false).await;
    wire.send(b"hello").await;
    let response = wire.read_response(false).await;
    let expect_forwarded = backend
        .stats
        .last_headers
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .contains_key("expect");
    println!(
        "interim {}, final {} {:?}, expect forwarded {expect_forwarded}",
        interim.status,
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(interim.status, 100);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
    assert!(!expect_forwarded);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_backend, juggler) = start_one_backend("server", 2, Settings::DEFAULT).await;
    let mut wire = Wire::connect(juggler.addr).await;
    // Three requests in one write; a slow one first, so a later one could overtake it.
    wire.send(
        b"GET /sleep/200 HTTP/1.1\r\nHost: juggler.test\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: juggler.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /status/204 HTTP/1.1\r\nHost: juggler.test\r\n\r\n",
    )
    .await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = wire.read_response(false).await;
        answers.push((response.status, String::from_utf8(response.body).unwrap()));
    }
    println!("pipelined answers: {answers:?}");
    assert_eq!(
        answers,
        [
            (200, "server".to_owned()),
            (200, "abc".to_owned()),
            (204, String::new())
        ]
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn http_1_0_clients_get_whole_bodies_and_a_close() {
    let (backend, juggler) = behind_raw_backend().await;
    for size in [1000, MIB + 1] {
        let body = random_body(size, 300 + size as u64);
        let mut wire = Wire::connect(juggler.addr).await;
        wire.send(
            format!(
                "POST /chunked-echo HTTP/1.0\r\nHost: juggler.test\r\nContent-Length: {size}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        wire.send(&body).await;
        let response = wire.read_response(false).await;
        let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
        println!(
            "HTTP/1.0 client, chunked backend response of {size} B: {} content-length {:?} \
             transfer-encoding {:?}, got {} B, then {} more, closed {closed}",
            response.status,
            response.header("content-length"),
            response.header("transfer-encoding"),
            response.body.len(),
            rest.len()
        );
        assert_eq!(response.status, 200);
        assert!(response.header("transfer-encoding").is_none());
        assert!(response.body == body, "body of {size} B changed on the way");
        assert!(rest.is_empty() && closed);
    }
    // The pooled connection is HTTP/1.1 keep-alive whatever the client spoke.
    assert!(backend
        .last_head()
        .unwrap()
        .starts_with("POST /chunked-echo HTTP/1.1\r\n"));
    assert!(backend
        .last_head()
        .unwrap()
        .contains("connection: keep-alive\r\n"));
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn absolute_form_target_goes_out_in_origin_form() {
    let (_backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(b"GET http://juggler.test/abs/path?x=1 HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let response = wire.read_response(false).await;
    let head = String::from_utf8(response.body).unwrap();
    println!("absolute-form request reached the backend as:\n{head}");
    assert_eq!(response.status, 200);
    assert!(head.starts_with("GET /abs/path?x=1 HTTP/1.1\r\n"));
    assert_eq!(head.matches("Host: juggler.test\r\n").count(), 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn interim_responses_from_the_backend_are_skipped() {
    let (backend, juggler) = behind_raw_backend().await;
    let mut client = Client::connect(juggler.addr).await;
    let first = client.get("/early-hints").await.unwrap();
    let second = client.get("/early-hints").await.unwrap();
    println!(
        "after 103 + 100: {} {:?}, again {} {:?}; backend connections {}",
        first.status,
        first.text(),
        second.status,
        second.text(),
        backend.accepted()
    );
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "final")
    );
    assert_eq!(
        (second.status.as_u16(), second.text().as_str()),
        (200, "final")
    );
    assert_eq!(backend.accepted(), 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn client_connection_close_ends_only_the_client_connection() {
    let (backend, juggler) = behind_raw_backend().await;
    for round in 0..3 {
        let mut wire = Wire::connect(juggler.addr).await;
        wire.send(b"GET /a HTTP/1.1\r\nHost: juggler.test\r\nConnection: close\r\n\r\n")
            .await;
        let response = wire.read_response(false).await;
        let (_, closed) = wire.rest(Duration::from_secs(3)).await;
        let head = String::from_utf8(response.body).unwrap();
        println!(
            "round {round}: {} closed {closed}; backend saw {head:?}",
            response.status
        );
        assert_eq!(response.status, 200);
        assert!(closed, "client asked for close");
        assert!(head.contains("connection: keep-alive\r\n") && !head.contains("close"));
    }
    let accepted = backend.accepted();
    println!("backend connections accepted over 3 client closes: {accepted}");
    assert_eq!(accepted, 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn head_of_a_large_response_carries_its_length_and_keeps_the_connection() {
    let (backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(b"HEAD /big-length HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let head = wire.read_response(true).await;
    let (stray, closed) = wire.rest(Duration::from_millis(300)).await;
    wire.send(b"GET /after-head HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let next = wire.read_response(false).await;
    let accepted = backend.accepted();
    println!(
        "HEAD /big-length: {} content-length {:?}, {} stray bytes, closed {closed}; next \
         request {}; backend connections {accepted}",
        head.status,
        head.header("content-length"),
        stray.len(),
        next.status
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(raw_backend::BIG_LENGTH.to_string().as_str())
    );
    assert!(stray.is_empty() && !closed);
    assert_eq!(next.status, 200);
    assert!(String::from_utf8_lossy(&next.body).starts_with("GET /after-head HTTP/1.1"));
    assert_eq!(accepted, 1, "a HEAD response cost the pooled connection");
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn client_leaving_mid_stream_frees_the_pooled_connection() {
    let (backend, juggler) = start_one_backend("server", 1, Settings::DEFAULT).await;
    let body = random_body(4 * MIB, 7);
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: juggler.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    wire.send(&body).await;
    // Read a little of the 4 MiB answer, then go away.
    let mut first = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut wire.stream, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));
    drop(wire);

    let started = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(5), get(juggler.addr, "/x"))
        .await
        .expect("the only pooled connection was never given back")
        .unwrap();
    let waited = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    while (juggler.open_connections() != [1] || backend.open() != 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "after the client left mid-stream: next request {} in {waited:?}; pool {:?}, backend \
         open {}, accepted {}",
        next.status,
        juggler.open_connections(),
        backend.open(),
        backend.accepted()
    );
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "server");
    assert_eq!(juggler.open_connections(), [1]);
    assert_eq!(backend.open(), 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn request_of_a_client_gone_while_queued_is_never_sent() {
    let (backend, juggler) = start_one_backend("server", 1, Settings::DEFAULT).await;
    let addr = juggler.addr;
    let holder = tokio::spawn(async move { get(addr, "/sleep/600").await.unwrap().status });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.stats.requests.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut quitter = Wire::connect(addr).await;
    quitter
        .send(b"GET /abandoned HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(quitter);
    assert_eq!(holder.await.unwrap(), 200);
    // Give Juggler the time it would need to (wrongly) send the abandoned request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = get(addr, "/after").await.unwrap();
    let paths = backend.stats.paths.lock().unwrap().clone();
    println!("backend paths: {paths:?}; request after: {}", after.status);
    assert_eq!(after.status, 200);
    assert_eq!(paths, ["/sleep/600", "/after"]);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn client_still_sending_a_large_body_reads_its_413() {
    let (backend, juggler) = start_one_backend("echo", 1, limited_body_settings()).await;
    // 20 MB is far beyond what the socket buffers absorb: Juggler answers and closes while
    // the client is still writing, and the 413 must still reach it (not just a reset).
    const SIZE: usize = 20_000_000;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(juggler.addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            let head = format!("POST /echo HTTP/1.1\r\nHost: j\r\nContent-Length: {SIZE}\r\n\r\n");
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&vec![b'x'; SIZE]).await
        });
        let mut received = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut received),
        )
        .await
        .expect("connection not closed after 413");
        let wrote = writing.await.unwrap();
        let status = raw::status_of(&String::from_utf8_lossy(&received));
        outcomes.push((
            status,
            read.map(|_| "closed").map_err(|error| error.kind()),
            wrote.map_err(|error| error.kind()),
        ));
    }
    println!(
        "(status, read end, write end) x5: {outcomes:?}; backend requests {}",
        backend.stats.requests.get()
    );
    for (status, _, _) in &outcomes {
        assert_eq!(*status, Some(413));
    }
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn client_timeouts_do_not_cut_a_slow_backend_answer() {
    let settings = settings_with(|s| {
        s.limits.header_read_timeout = Duration::from_millis(200);
        s.limits.client_idle_timeout = Duration::from_millis(200);
    });
    let (_backend, juggler) = start_one_backend("server", 1, settings).await;
    let mut wire = Wire::connect(juggler.addr).await;
    let started = Instant::now();
    wire.send(b"GET /sleep/800 HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let slow = wire.read_response(false).await;
    let took = started.elapsed();
    // The connection is still open and serves the next request.
    wire.send(b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let next = wire.read_response(false).await;
    println!(
        "800 ms answer under 200 ms header/idle timeouts: {} after {took:?}; next {} {:?}",
        slow.status,
        next.status,
        String::from_utf8_lossy(&next.body)
    );
    assert_eq!(slow.status, 200);
    assert_eq!(slow.body, b"server");
    assert_eq!(next.body, b"server");
    juggler.shutdown().await.unwrap();
}

/// Distinct field names in order of first appearance, Juggler's own framing headers left out.
fn name_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for name in names {
        let name = name.to_ascii_lowercase();
        let own = ["connection", "content-length", "date"].contains(&name.as_str());
        if !own && !order.contains(&name) {
            order.push(name);
        }
    }
    order
}

#[juggler_testkit::test]
async fn end_to_end_headers_keep_their_order_on_both_legs() {
    let (_backend, juggler, mut wire) = raw_backend_and_wire().await;
    wire.send(HEADER_TEST_REQUEST).await;
    let response = wire.read_response(false).await;
    let head = String::from_utf8(response.body).unwrap();
    let sent = name_order(END_TO_END.iter().map(|(name, _)| *name));
    let arrived = name_order(
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':').map(|(name, _)| name)),
    );

    wire.send(b"GET /hop-by-hop HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    let response = wire.read_response(false).await;
    let backend_sent = ["x-kept", "set-cookie", "content-type"].map(String::from);
    let client_got = name_order(response.headers.iter().map(|(name, _)| name.as_str()));
    println!(
        "request: sent {sent:?}, backend got {arrived:?}; response: backend sent \
         {backend_sent:?}, client got {client_got:?}"
    );
    assert_eq!(arrived, sent, "request header order");
    assert_eq!(client_got, backend_sent, "response header order");
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn a_hundred_header_fields_all_arrive() {
    const FIELDS: usize = 100;
    let (_backend, juggler) = behind_raw_backend().await;
    let mut request = String::from("GET /x HTTP/1.1\r\nHost: juggler.test\r\n");
    for i in 1..FIELDS {
        request.push_str(&format!("X-Field-{i}: value {i}\r\n"));
    }
    request.push_str("\r\n");
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(request.as_bytes()).await;
    let response = wire.read_response(false).await;
    let head = String::from_utf8(response.body).unwrap();
    let arrived = (1..FIELDS)
        .filter(|i| head.contains(&format!("X-Field-{i}: value {i}\r\n")))
        .count();
    println!(
        "{FIELDS} header fields ({} B): {}, {arrived} of {} custom fields reached the backend",
        request.len(),
        response.status,
        FIELDS - 1
    );
    assert_eq!(response.status, 200);
    assert_eq!(arrived, FIELDS - 1);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn non_ascii_header_values_and_long_targets_pass_byte_for_byte() {
    let (_backend, juggler) = behind_raw_backend().await;
    let long_path = format!("/long/{}?q={}", "p".repeat(4000), "v".repeat(2000));
    let request = format!(
        "GET {long_path} HTTP/1.1\r\nHost: juggler.test\r\nX-Utf8: café ✓\r\n\
         X-Spaces: a  b\tc\r\n\r\n"
    );
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(request.as_bytes()).await;
    let response = wire.read_response(false).await;
    let head = String::from_utf8(response.body).unwrap();
    println!(
        "{} B target, UTF-8 and inner whitespace in values: {}; backend head {} B",
        long_path.len(),
        response.status,
        head.len()
    );
    assert_eq!(response.status, 200);
    assert!(head.starts_with(&format!("GET {long_path} HTTP/1.1\r\n")));
    assert!(head.contains("X-Utf8: café ✓\r\n"));
    assert!(head.contains("X-Spaces: a  b\tc\r\n"));
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn slow_second_head_on_a_keep_alive_connection_is_408() {
    let (backend, juggler) = start_one_backend("server", 1, short_header_timeout()).await;
    let mut wire = Wire::connect(juggler.addr).await;
    wire.send(b"GET /x HTTP/1.1\r\nHost: juggler.test\r\n\r\n")
        .await;
    assert_eq!(wire.read_response(false).await.status, 200);
    // Idle for longer than the header timeout (idle is not slow), then a head that stalls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    wire.send(b"GET /x HTTP/1.1\r\nHo").await;
    let (rest, closed) = wire.rest(Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&rest);
    println!(
        "second head stalled: {text:?} after {:?}, closed {closed}; backend requests {}",
        started.elapsed(),
        backend.stats.requests.get()
    );
    assert_eq!(raw::status_of(&text), Some(408));
    assert!(closed);
    assert!(started.elapsed() >= Duration::from_millis(280));
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}
