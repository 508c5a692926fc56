//! HTTPS through Juggler end to end: real TLS over 127.0.0.1 with a certificate generated per
//! test, HTTP/1.1 and HTTP/2 clients, bad clients dropped by the handshake deadline, and the
//! certificate reloaded by a real SIGHUP sent to this test process.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use juggler::table::Settings;
use juggler_testkit::bodies::{fingerprint, random_body};
use juggler_testkit::certs::broken_pairs;
use juggler_testkit::raw::read_until_close;
use juggler_testkit::raw_backend::RawBackend;
use juggler_testkit::tls::*;
use juggler_testkit::*;
use rustls::pki_types::CertificateDer;
use rustls::CertificateError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};

const ROUND_ROBIN: [&str; 6] = [
    "server 1", "server 2", "server 3", "server 1", "server 2", "server 3",
];

#[juggler_testkit::test]
async fn round_robin_over_https_with_http11_and_http2() {
    let backends = three_backends().await;
    let (cert, files) = CertFiles::generate("round-robin");
    let table = table(&addrs_of(&backends), 2, Settings::DEFAULT);
    let juggler = TestJuggler::start_https(table, &files).await;

    let mut http11 = https_client(juggler.https_addr(), &cert).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let answer = http11.get("/test.txt").await.unwrap();
        assert_eq!(answer.status, 200);
        seen.push(answer.text());
    }
    println!("HTTPS HTTP/1.1, one connection: {seen:?}");
    assert_eq!(seen, ROUND_ROBIN);

    // One request at a time, so the order of streams is the order of requests.
    let http2 = H2Client::connect(juggler.https_addr(), &cert).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let answer = http2.get("/test.txt").await.unwrap();
        assert_eq!(answer.status, 200);
        seen.push(answer.text());
    }
    println!("HTTPS HTTP/2, one connection: {seen:?}");
    assert_eq!(seen, ROUND_ROBIN);

    // The plain listener keeps serving next to the TLS one, from the same round robin.
    let plain = get(juggler.addr, "/test.txt").await.unwrap().text();
    println!("plain HTTP after them: {plain:?}");
    assert_eq!(plain, "server 1");
    juggler.shutdown().await.unwrap();
}

/// Bodies larger than every HTTP/2 window, both ways: Juggler gives the client's upload window
/// back as it reads (its receive window is 1 MiB, the body 3 MiB), and sends a 3 MiB response
/// only as the client's windows open. Several streams at once share the connection's windows.
#[juggler_testkit::test]
async fn http2_uploads_and_answers_larger_than_every_window_arrive_whole() {
    const SIZE: usize = 3 * 1024 * 1024;
    let backends = three_backends().await;
    let (cert, files) = CertFiles::generate("h2-large-bodies");
    let table = table(&addrs_of(&backends), 2, Settings::DEFAULT);
    let juggler = TestJuggler::start_https(table, &files).await;
    let http2 = H2Client::connect(juggler.https_addr(), &cert).await;
    let started = Instant::now();
    let mut uploads = tokio::task::JoinSet::new();
    for seed in 0..3u64 {
        let http2 = http2.clone();
        uploads.spawn(async move {
            let body = random_body(SIZE, 300 + seed);
            let request = Request::post("https://localhost/echo")
                .body(Full::new(body.clone()))
                .unwrap();
            let answer = http2.send(request).await.unwrap();
            (fingerprint(&body), answer)
        });
    }
    while let Some(done) = uploads.join_next().await {
        let (sent, answer) = done.unwrap();
        println!(
            "HTTP/2 POST {SIZE} B: status {}, echoed {} B, fingerprint {sent:016x} -> {:016x}",
            answer.status,
            answer.body.len(),
            fingerprint(&answer.body)
        );
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), SIZE);
        assert_eq!(fingerprint(&answer.body), sent);
    }
    println!("three streams of 3 MiB each way in {:?}", started.elapsed());
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn http2_connection_with_100_concurrent_streams_uses_only_the_fixed_pools() {
    const POOL: usize = 3;
    const STREAMS: usize = 100;
    // A short delay keeps many streams in flight at once, so they really queue for the pools.
    let mut backends = Vec::new();
    for n in 1..=3 {
        backends.push(
            TestBackend::start_with(Behaviour {
                name: format!("server {n}"),
                delay: Duration::from_millis(20),
            })
            .await,
        );
    }
    let (cert, files) = CertFiles::generate("h2-streams");
    let table = table(&addrs_of(&backends), POOL, Settings::DEFAULT);
    let juggler = TestJuggler::start_https(table, &files).await;

    let client = H2Client::connect(juggler.https_addr(), &cert).await;
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let client = client.clone();
        streams.spawn(async move { client.get("/test.txt").await.unwrap() });
    }
    let mut texts = Vec::new();
    while let Some(answer) = streams.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        texts.push(answer.text());
    }
    let elapsed = started.elapsed();
    let by_body = tally(texts.iter().map(String::as_str));
    let requests: Vec<usize> = backends.iter().map(|b| b.stats.requests.get()).collect();
    let accepted: Vec<usize> = backends.iter().map(|b| b.accepted()).collect();
    let max_in_flight: Vec<usize> = backends
        .iter()
        .map(|b| b.stats.max_in_flight.get())
        .collect();
    println!(
        "{STREAMS} streams on one HTTP/2 connection in {elapsed:?}: answers {by_body:?}, \
         requests per backend {requests:?}, backend connections accepted {accepted:?}, \
         max in flight per backend {max_in_flight:?}, Juggler's open pooled connections {:?}",
        juggler.open_connections()
    );
    assert_eq!(texts.len(), STREAMS);
    assert_eq!(requests.iter().sum::<usize>(), STREAMS);
    // Per-request round robin: 100 over 3 backends is 34/33/33.
    let (fewest, most) = (requests.iter().min(), requests.iter().max());
    assert!(
        most.unwrap() - fewest.unwrap() <= 1,
        "uneven spread {requests:?}"
    );
    for (n, count) in requests.iter().enumerate() {
        assert_eq!(by_body[&format!("server {}", n + 1)], *count);
    }
    // However many streams the client opens, each backend sees only its pool.
    assert_eq!(accepted, [POOL; 3]);
    assert!(
        max_in_flight.iter().all(|&m| m <= POOL),
        "{max_in_flight:?}"
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn forwarded_proto_is_https_for_tls_clients() {
    let backend = TestBackend::start("server 1").await;
    let (cert, files) = CertFiles::generate("forwarded");
    let settings = settings_with(|s| s.proxy.forwarded_headers = true);
    let juggler = TestJuggler::start_https(table(&[backend.addr], 1, settings), &files).await;
    let forwarded = |backend: &TestBackend| {
        let headers = backend.stats.last_headers.lock().unwrap().clone().unwrap();
        let value = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        (value("x-forwarded-proto"), value("x-forwarded-for"))
    };
    let expect = |proto: &str| (Some(proto.to_owned()), Some("127.0.0.1".to_owned()));

    let mut http11 = https_client(juggler.https_addr(), &cert).await;
    assert_eq!(http11.get("/test.txt").await.unwrap().status, 200);
    let over_http11 = forwarded(&backend);
    println!("HTTPS HTTP/1.1 → backend saw {over_http11:?}");
    assert_eq!(over_http11, expect("https"));

    let http2 = H2Client::connect(juggler.https_addr(), &cert).await;
    assert_eq!(http2.get("/test.txt").await.unwrap().status, 200);
    let over_http2 = forwarded(&backend);
    println!("HTTPS HTTP/2 → backend saw {over_http2:?}");
    assert_eq!(over_http2, expect("https"));

    assert_eq!(get(juggler.addr, "/x").await.unwrap().status, 200);
    let over_plain = forwarded(&backend);
    println!("plain HTTP → backend saw {over_plain:?}");
    assert_eq!(over_plain, expect("http"));
    juggler.shutdown().await.unwrap();
}

/// An HTTP/2 client's fields reach the backend lower-case (HTTP/2 allows no other spelling),
/// repeated names together as hyper's header map keeps them, hop-by-hop ones left out, and `Host`
/// from `:authority`; an HTTP/1.1 client's go as sent (`tests/proxy_http.rs`).
#[juggler_testkit::test]
async fn http2_fields_reach_the_backend_lower_case_with_host_from_authority() {
    let backend = RawBackend::start().await;
    let (cert, files) = CertFiles::generate("h2-fields");
    let table = table(&[backend.addr], 1, Settings::DEFAULT);
    let juggler = TestJuggler::start_https(table, &files).await;
    let http2 = H2Client::connect(juggler.https_addr(), &cert).await;
    let request = Request::get("https://localhost/fields?a=1")
        .header("X-Dup", "1")
        .header("Accept", "*/*")
        .header("x-dup", "2")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(http2.send(request).await.unwrap().status, 200);
    let head = backend.last_head().expect("the backend saw the request");
    println!("HTTP/2 request head as the backend received it:\n{head}");
    assert_eq!(
        head,
        "GET /fields?a=1 HTTP/1.1\r\nhost: localhost\r\nx-dup: 1\r\nx-dup: 2\r\n\
         accept: */*\r\nconnection: keep-alive\r\n\r\n"
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn wrong_name_or_untrusted_certificate_fails_on_the_client() {
    let backend = TestBackend::start("server 1").await;
    let (cert, files) = CertFiles::generate("client-verdict");
    let juggler =
        TestJuggler::start_https(table(&[backend.addr], 1, Settings::DEFAULT), &files).await;

    let trusting = client_config(&[&cert.der], ALPN_HTTP11);
    let error = tls_connect(juggler.https_addr(), trusting, "juggler.invalid")
        .await
        .expect_err("a certificate for localhost was accepted for juggler.invalid");
    println!("wrong SNI: {error}");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{error:?}"
    );

    let stranger = TestCert::generate_named("someone else");
    let trusting_another = client_config(&[&stranger.der], ALPN_HTTP11);
    let error = tls_connect(juggler.https_addr(), trusting_another, "localhost")
        .await
        .expect_err("a certificate nobody trusts was accepted");
    println!("untrusted certificate: {error}");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{error:?}"
    );

    // The refused clients cost nothing: a proper one is served.
    let mut client = https_client(juggler.https_addr(), &cert).await;
    assert_eq!(client.get("/test.txt").await.unwrap().text(), "server 1");
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}

/// How a misbehaving client treats the HTTPS port, and when Juggler closed on it.
struct BadClientOutcome {
    what: &'static str,
    closed: bool,
    after: Duration,
    received: String,
}

/// Connects to `addr`, sends `bytes` (maybe none) and then waits, reading until Juggler closes.
async fn bad_client(
    addr: std::net::SocketAddr,
    what: &'static str,
    bytes: &[u8],
) -> BadClientOutcome {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(bytes).await.unwrap();
    let (received, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    BadClientOutcome {
        what,
        closed,
        after: started.elapsed(),
        received,
    }
}

#[juggler_testkit::test]
async fn garbage_plain_http_and_stalled_handshakes_are_dropped_while_others_are_served() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
    let backend = TestBackend::start("server 1").await;
    let (cert, files) = CertFiles::generate("bad-clients");
    let settings = settings_with(|s| s.limits.tls_handshake_timeout = HANDSHAKE_TIMEOUT);
    let juggler = TestJuggler::start_https(table(&[backend.addr], 2, settings), &files).await;
    let mut served = https_client(juggler.https_addr(), &cert).await;
    assert_eq!(served.get("/before").await.unwrap().status, 200);

    let addr = juggler.https_addr();
    // A TLS record header announcing a 512-byte handshake message, then only its start.
    let partial_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
    let mut bad = tokio::task::JoinSet::new();
    bad.spawn(async move { bad_client(addr, "garbage", b"\x00\xffnot TLS at all\r\n\r\n").await });
    bad.spawn(async move {
        bad_client(
            addr,
            "plain HTTP",
            b"GET /test.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
    });
    bad.spawn(async move { bad_client(addr, "silent", b"").await });
    bad.spawn(async move { bad_client(addr, "stalled mid-hello", partial_hello).await });

    // While the stalled ones wait for their deadline, the established client and a brand
    // new one (full handshake) keep being served.
    let mut during = 0;
    let fresh = H2Client::connect(juggler.https_addr(), &cert).await;
    for _ in 0..5 {
        assert_eq!(served.get("/during").await.unwrap().status, 200);
        assert_eq!(fresh.get("/during").await.unwrap().status, 200);
        during += 2;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    while let Some(outcome) = bad.join_next().await {
        let outcome = outcome.unwrap();
        println!(
            "{}: closed={} after {:?}, received {} bytes",
            outcome.what,
            outcome.closed,
            outcome.after,
            outcome.received.len()
        );
        assert!(outcome.closed, "{} was not closed", outcome.what);
        assert!(
            !outcome.received.contains("HTTP/1.1 200"),
            "{} was answered",
            outcome.what
        );
        match outcome.what {
            // Nothing to reject yet: only the handshake deadline ends these.
            "silent" | "stalled mid-hello" => {
                assert!(outcome.after >= HANDSHAKE_TIMEOUT - Duration::from_millis(20));
                assert!(outcome.after < Duration::from_secs(3));
            }
            // rustls refuses the first bytes that are not a TLS record: no waiting.
            _ => assert!(outcome.after < Duration::from_secs(3)),
        }
    }
    assert_eq!(served.get("/after").await.unwrap().status, 200);
    println!(
        "served {during} requests during the bad handshakes; backend requests {}",
        backend.stats.requests.get()
    );
    // before + during + after; none of the bad clients reached the backend.
    assert_eq!(backend.stats.requests.get(), 1 + during + 1);
    juggler.shutdown().await.unwrap();
}

/// The certificate a brand-new connection gets. The client config is fresh each time: a reused
/// one would resume its TLS session and skip the certificate exchange.
async fn certificate_of_new_connection(
    addr: std::net::SocketAddr,
    trusted: &[&CertificateDer<'static>],
) -> io::Result<CertificateDer<'static>> {
    let stream = tls_connect(addr, client_config(trusted, ALPN_HTTP11), "localhost").await?;
    Ok(peer_cert(&stream))
}

fn which(cert: &CertificateDer<'static>, named: &[(&'static str, &TestCert)]) -> &'static str {
    named
        .iter()
        .find(|(_, candidate)| candidate.der == *cert)
        .map_or("unknown", |(name, _)| name)
}

/// Sends SIGHUP to this test process: the real signal path of `juggler` (`reload_on_sighup`).
fn send_sighup() {
    // SAFETY: kill(2) on our own pid with a signal this process handles (see the test).
    let result = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    assert_eq!(result, 0, "kill(SIGHUP): {}", io::Error::last_os_error());
}

#[juggler_testkit::test]
async fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_files_are_broken() {
    let backend = TestBackend::start("server 1").await;
    let (a, b, c) = (
        TestCert::generate(),
        TestCert::generate(),
        TestCert::generate(),
    );
    let named = [("A", &a), ("B", &b), ("C", &c)];
    let trusted = [&a.der, &b.der, &c.der];
    let files = CertFiles::new("sighup", &a);
    let juggler =
        TestJuggler::start_https(table(&[backend.addr], 1, Settings::DEFAULT), &files).await;

    // Our own SIGHUP listener first: it installs the process-wide handler, so SIGHUP can no
    // longer terminate this test process (its default action), and it tells us when each
    // signal has been delivered. Only this test sends signals; the other tests in this file
    // never see them.
    let mut delivered = signal(SignalKind::hangup()).unwrap();
    let reloader = tokio::spawn(juggler::tls::reload_on_sighup(std::sync::Arc::clone(
        juggler.certs(),
    )));

    let first = certificate_of_new_connection(juggler.https_addr(), &trusted)
        .await
        .unwrap();
    println!("at start: certificate {}", which(&first, &named));
    assert_eq!(first, a.der);
    // An established connection outlives every reload.
    let mut established = https_client(juggler.https_addr(), &a).await;
    assert_eq!(established.get("/a").await.unwrap().status, 200);

    // The reload task registers its listener when it first runs; until then a SIGHUP is not
    // seen by it, so resend until the new certificate shows (bounded).
    files.write(&b);
    let reloaded = wait_for_certificate(&juggler, &mut delivered, &trusted, &b.der).await;
    println!(
        "after writing B and SIGHUP: certificate {} ({reloaded} signal(s))",
        which(&b.der, &named)
    );

    for (what, cert_pem, key_pem) in broken_pairs(&c, &a) {
        files.write_pem(&cert_pem, &key_pem);
        // The library call the signal handler makes refuses the pair...
        let error = juggler.certs().reload().expect_err("broken pair accepted");
        println!("{what}: reload refused: {error}");
        // ...and so does the handler itself, given time to run after the signal arrives.
        send_sighup();
        delivered.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let current = certificate_of_new_connection(juggler.https_addr(), &trusted)
            .await
            .unwrap();
        println!(
            "{what}: after SIGHUP new connections get {}",
            which(&current, &named)
        );
        assert_eq!(current, b.der, "{what}: the old certificate was not kept");
        let mut client = https_client(juggler.https_addr(), &b).await;
        assert_eq!(client.get("/still-b").await.unwrap().status, 200);
    }

    // The handler survived the failed reloads and picks up the next good pair.
    files.write(&c);
    let reloaded = wait_for_certificate(&juggler, &mut delivered, &trusted, &c.der).await;
    println!("after writing C and SIGHUP: certificate C ({reloaded} signal(s))");
    assert_eq!(established.get("/a-again").await.unwrap().status, 200);

    reloader.abort();
    juggler.shutdown().await.unwrap();
}

/// Sends SIGHUP until a new connection gets `expected` (at most 5 s); returns the signals sent.
async fn wait_for_certificate(
    juggler: &TestJuggler,
    delivered: &mut tokio::signal::unix::Signal,
    trusted: &[&CertificateDer<'static>],
    expected: &CertificateDer<'static>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut signals = 0;
    loop {
        send_sighup();
        signals += 1;
        delivered.recv().await.unwrap();
        // A moment for the reload task, which got the same signal, to run.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let current = certificate_of_new_connection(juggler.https_addr(), trusted)
            .await
            .unwrap();
        if current == *expected {
            return signals;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate after {signals} SIGHUPs"
        );
    }
}

#[juggler_testkit::test]
async fn plain_listener_redirects_to_https_when_configured() {
    let backend = TestBackend::start("server 1").await;
    let (cert, files) = CertFiles::generate("redirect");
    let settings = settings_with(|s| s.listen.redirect_http_to_https = true);
    let juggler = TestJuggler::start_https(table(&[backend.addr], 1, settings), &files).await;
    // The redirect names the port the HTTPS listener is actually bound to.
    let port = juggler.https_addr().port();

    let mut plain = Client::connect(juggler.addr).await;
    let answer = plain.get("/a/b?x=1").await.unwrap();
    let location = answer.headers.get("location").map(|v| v.to_str().unwrap());
    println!("plain GET → {} location {location:?}", answer.status);
    assert_eq!(answer.status, 308);
    let expected = format!("https://juggler.test:{port}/a/b?x=1");
    assert_eq!(location, Some(expected.as_str()));

    // 308 keeps the method, so a POST is redirected too; the keep-alive connection survives.
    let post = Request::post("/form")
        .header("host", "localhost:8080")
        .body(Full::new(Bytes::from_static(b"a=1")))
        .unwrap();
    let answer = plain.send(post).await.unwrap();
    let location = answer.headers.get("location").map(|v| v.to_str().unwrap());
    println!("plain POST → {} location {location:?}", answer.status);
    assert_eq!(answer.status, 308);
    let expected = format!("https://localhost:{port}/form");
    assert_eq!(location, Some(expected.as_str()));

    // HTTPS itself is proxied as usual, and nothing from the plain listener reached a backend.
    let mut secure = https_client(juggler.https_addr(), &cert).await;
    assert_eq!(secure.get("/a/b?x=1").await.unwrap().text(), "server 1");
    assert_eq!(backend.stats.requests.get(), 1);
    juggler.shutdown().await.unwrap();
}

/// An HTTP/2 connection with no stream for `client_idle_timeout` is closed (GOAWAY), so silent h2
/// clients cannot hold connection slots for ever; one that stays busy is not.
#[juggler_testkit::test]
async fn idle_http2_connections_are_closed_and_busy_ones_are_not() {
    let backend = TestBackend::start("server 1").await;
    let (cert, files) = CertFiles::generate("h2-idle");
    let settings = settings_with(|s| s.limits.client_idle_timeout = Duration::from_millis(300));
    let juggler = TestJuggler::start_https(table(&[backend.addr], 1, settings), &files).await;

    let connect = || async {
        let stream = tls_connect_trusting(juggler.https_addr(), &cert, ALPN_H2).await;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        (sender, tokio::spawn(conn))
    };
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>| async move {
        let request = Request::get("https://localhost/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(request).await.map(|r| r.status())
    };

    // Busy: a request every 100 ms for 900 ms, three times the idle timeout.
    let (busy, busy_conn) = connect().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        assert_eq!(get(busy.clone()).await.unwrap(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy_alive = !busy_conn.is_finished();

    // Idle: one request, then nothing; the server ends the connection.
    let (idle, idle_conn) = connect().await;
    assert_eq!(get(idle.clone()).await.unwrap(), 200);
    let idle_started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), idle_conn).await;
    let idle_for = idle_started.elapsed();
    println!(
        "busy h2 connection alive after 900 ms of requests: {busy_alive}; idle one ended \
         after {idle_for:?} (timeout 300 ms)"
    );
    assert!(busy_alive);
    assert!(ended.is_ok(), "idle HTTP/2 connection still open after 5 s");
    assert!(idle_for >= Duration::from_millis(250));
    juggler.shutdown().await.unwrap();
}

/// A busy HTTP/2 connection lives as long as its client wants: thousands of streams one after
/// another, far more connection polls than the HTTP/1.1 stall guard's budget (the soak once saw
/// that guard close healthy HTTP/2 connections, whose socket IO it could not see).
#[juggler_testkit::test]
async fn a_long_busy_http2_connection_is_never_cut() {
    let backend = TestBackend::start("server").await;
    let (cert, files) = CertFiles::generate("h2-long");
    let juggler =
        TestJuggler::start_https(table(&[backend.addr], 4, Settings::DEFAULT), &files).await;
    let h2 = H2Client::connect(juggler.https_addr(), &cert).await;
    for round in 0..1500 {
        let streams: Vec<_> = (0..20)
            .map(|_| {
                let h2 = h2.clone();
                tokio::spawn(async move { h2.get("/").await })
            })
            .collect();
        for stream in streams {
            let answer = stream.await.unwrap();
            assert!(
                matches!(answer, Ok(ref answer) if answer.status == 200),
                "round {round}: {answer:?}"
            );
        }
    }
    assert_eq!(backend.stats.requests.get(), 30_000);
    juggler.shutdown().await.unwrap();
}
