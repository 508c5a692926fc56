//! PROXY protocol on the way in (`[listen] proxy_protocol_from`): a trusted peer's v1 or v2
//! header names the client the backend then sees in `X-Forwarded-For`, on the plain and the HTTPS
//! listener; a malformed, missing or late header from a trusted peer, or any PROXY header from an
//! untrusted one, closes the connection without a response. An idle connection handed to an
//! upgrade's successor keeps the client its header named.

use std::net::SocketAddr;
use std::time::Duration;

use juggler::metrics::ListenerKind;
use juggler::table::{IpNetwork, Settings};
use juggler_testkit::raw::read_until_close;
use juggler_testkit::tls::client_config;
use juggler_testkit::*;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LOOPBACK: &[IpNetwork] = &[IpNetwork::v4([127, 0, 0, 0], 8)];
const ELSEWHERE: &[IpNetwork] = &[IpNetwork::v4([10, 0, 0, 0], 8)];
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: juggler\r\nconnection: close\r\n\r\n";
/// How long a test waits to see whether Juggler closes a connection.
const WAIT: Duration = Duration::from_secs(5);

fn settings(trusted: &'static [IpNetwork]) -> Settings {
    settings_with(|settings| {
        settings.proxy.forwarded_headers = true;
        settings.listen.proxy_protocol_from = trusted;
    })
}

fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.push(0x20 | command);
    bytes.push(family);
    bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// `header` then a request on one connection: what came back and whether Juggler closed.
async fn exchange(addr: SocketAddr, header: &[u8], request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Closed already (a refused header) is an answer too: the write may fail then.
    let _ = stream.write_all(&[header, request].concat()).await;
    read_until_close(&mut stream, WAIT).await
}

fn forwarded_for(backend: &TestBackend) -> String {
    let headers = backend.stats.last_headers();
    headers["x-forwarded-for"].to_str().unwrap().to_owned()
}

#[juggler_testkit::test]
async fn v1_and_v2_headers_name_the_client() {
    let (backend, juggler) = start_one_backend("server", 1, settings(LOOPBACK)).await;
    let addr = juggler.addr;

    let v1_tcp4 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n";
    let (answer, _) = exchange(addr, v1_tcp4, REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "192.0.2.7");

    let v1_tcp6 = b"PROXY TCP6 2001:db8::7 ::1 40000 8080\r\n";
    let (answer, _) = exchange(addr, v1_tcp6, REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "2001:db8::7");

    // v2 over IPv4 with a TLV after the addresses, then over IPv6.
    let mut body = vec![198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90];
    body.extend_from_slice(&[0x04, 0, 2, 0, 0]);
    let (answer, _) = exchange(addr, &v2_header(1, 0x11, &body), REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "198.51.100.9");
    let mut body = vec![0x20, 0x01, 0x0d, 0xb8];
    body.extend_from_slice(&[0; 11]);
    body.push(9);
    body.extend_from_slice(&[0; 15]);
    body.push(1);
    body.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    let (answer, _) = exchange(addr, &v2_header(1, 0x21, &body), REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "2001:db8::9");

    // LOCAL (the balancer's own health check) and v1 UNKNOWN keep the peer's address.
    let (answer, _) = exchange(addr, &v2_header(0, 0x00, &[]), REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "127.0.0.1");
    let (answer, _) = exchange(addr, b"PROXY UNKNOWN\r\n", REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "127.0.0.1");

    // Header and request in separate writes, the header itself split: nothing of the request
    // is swallowed, and a keep-alive connection keeps the address for its next request (after
    // being parked in between).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PROXY TCP4 203.0.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"113.5 127.0.0.1 1 2\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = Client::over(stream).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(forwarded_for(&backend), "203.0.113.5");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(forwarded_for(&backend), "203.0.113.5");
    drop(client);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn https_listener_reads_the_header_before_the_handshake() {
    let backend = TestBackend::start("server").await;
    let (cert, files) = CertFiles::generate("proxied");
    let juggler =
        TestJuggler::start_https(table(&[backend.addr], 1, settings(LOOPBACK)), &files).await;
    let mut tcp = TcpStream::connect(juggler.https_addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 5 443\r\n")
        .await
        .unwrap();
    let config = client_config(&[&cert.der], &[b"http/1.1"]);
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut client = Client::over(tls).await;
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert_eq!(forwarded_for(&backend), "192.0.2.44");
    drop(client);
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn bad_missing_and_untrusted_headers_close_the_connection() {
    let (backend, juggler) = start_one_backend("server", 1, settings(LOOPBACK)).await;
    let too_long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120], b"\r\n"].concat();
    let bad = [
        (
            "v1 bad address",
            b"PROXY TCP4 192.0.2 127.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "v1 family/address mismatch",
            b"PROXY TCP6 192.0.2.1 127.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "v1 without CR",
            b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n".to_vec(),
        ),
        ("v1 longer than 107 bytes", too_long),
        ("v2 unknown command", v2_header(5, 0x11, &[0; 12])),
        ("v2 addresses cut short", v2_header(1, 0x21, &[0; 12])),
        ("v2 unknown family", v2_header(1, 0x51, &[0; 12])),
        ("v2 longer than accepted", v2_header(1, 0x11, &[0; 1000])),
        ("no header at all", Vec::new()),
    ];
    for (what, header) in bad {
        let (answer, closed) = exchange(juggler.addr, &header, REQUEST).await;
        assert!(closed && answer.is_empty(), "{what}: {closed} {answer:?}");
    }
    assert_eq!(backend.stats.requests.get(), 0);
    juggler.shutdown().await.unwrap();

    // Only 10.0.0.0/8 is trusted: a header from 127.0.0.1 is a spoofing attempt, whatever its
    // version; a plain request is served as ever.
    let juggler = TestJuggler::start(table(&[backend.addr], 1, settings(ELSEWHERE))).await;
    for header in [
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n".to_vec(),
        v2_header(1, 0x11, &[192, 0, 2, 7, 127, 0, 0, 1, 0, 1, 0, 2]),
    ] {
        let (answer, closed) = exchange(juggler.addr, &header, REQUEST).await;
        assert!(closed && answer.is_empty(), "{closed} {answer:?}");
    }
    assert_eq!(backend.stats.requests.get(), 0);
    let (answer, _) = exchange(juggler.addr, b"", REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&backend), "127.0.0.1");
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn a_slow_header_is_cut_at_the_header_timeout() {
    let backend = TestBackend::start("server").await;
    let settings = settings_with(|settings| {
        settings.listen.proxy_protocol_from = LOOPBACK;
        settings.limits.header_read_timeout = Duration::from_millis(300);
    });
    let juggler = TestJuggler::start(table(&[backend.addr], 1, settings)).await;
    let mut stream = TcpStream::connect(juggler.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    stream.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    let (answer, closed) = read_until_close(&mut stream, WAIT).await;
    let took = started.elapsed();
    assert!(closed && answer.is_empty(), "{closed} {answer:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    juggler.shutdown().await.unwrap();
}

#[juggler_testkit::test]
async fn the_named_client_stays_with_its_connection_through_an_upgrade() {
    use juggler_testkit::upgrade::Instance;
    use juggler_testkit::wire::Wire;

    let backend = TestBackend::start("server").await;
    let table = table(&[backend.addr], 1, settings(LOOPBACK));
    let dir = TempDir::new("proxy-upgrade");
    let first = Instance::start(table, &dir.file("juggler.sock"), None).await;
    let keep_alive = b"GET / HTTP/1.1\r\nhost: juggler\r\n\r\n";

    let mut client = Wire::connect(first.http).await;
    client
        .send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n")
        .await;
    client.send(keep_alive).await;
    assert_eq!(client.read_response(false).await.status, 200);
    assert_eq!(forwarded_for(&backend), "192.0.2.7");

    // Idle now: the connection moves to the successor, which never sees its PROXY header.
    let second = first.replaced_by(table).await;
    client.send(keep_alive).await;
    let answer = client.read_response(false).await;
    println!(
        "after the upgrade: {} from {}",
        answer.status,
        forwarded_for(&backend)
    );
    assert_eq!(answer.status, 200);
    assert_eq!(forwarded_for(&backend), "192.0.2.7");
    drop(second);
}

/// Every refusal is counted by listener and reason (`juggler_proxy_protocol_refused_total`), so
/// that an operator can tell a misconfigured L4 balancer (malformed, timeout) from spoofing
/// (untrusted); accepted headers and plain requests from untrusted peers count nothing.
#[juggler_testkit::test]
async fn refusals_are_counted_by_reason() {
    const TOKEN: &str = "test-token-0123456789";
    let backend = TestBackend::start("server").await;
    let trusting = settings_with(|settings| {
        settings.listen.proxy_protocol_from = LOOPBACK;
        settings.limits.header_read_timeout = Duration::from_millis(300);
    });
    let juggler = TestJuggler::start_with_admin(table(&[backend.addr], 1, trusting), TOKEN).await;
    for malformed in [
        b"PROXY TCP4 192.0.2 127.0.0.1 1 2\r\n".to_vec(),
        v2_header(5, 0x11, &[0; 12]),
    ] {
        let (_, closed) = exchange(juggler.addr, &malformed, REQUEST).await;
        assert!(closed);
    }
    let mut slow = TcpStream::connect(juggler.addr).await.unwrap();
    slow.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    let (_, closed) = read_until_close(&mut slow, WAIT).await;
    assert!(closed);
    let good = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n";
    let (answer, _) = exchange(juggler.addr, good, REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let counted = |juggler: &TestJuggler| {
        let metrics = &juggler.proxy.metrics;
        metrics.listener_snapshot(ListenerKind::Http).proxy_refused
    };
    assert_eq!(
        counted(&juggler),
        [0, 2, 1],
        "untrusted, malformed, timeout"
    );
    let exposed = get(juggler.admin_addr(), "/metrics").await.unwrap().text();
    for line in [
        r#"juggler_proxy_protocol_refused_total{listener="http",reason="malformed"} 2"#,
        r#"juggler_proxy_protocol_refused_total{listener="http",reason="timeout"} 1"#,
        r#"juggler_proxy_protocol_refused_total{listener="http",reason="untrusted"} 0"#,
    ] {
        assert!(
            exposed.lines().any(|exposed| exposed == line),
            "{line} in\n{exposed}"
        );
    }
    juggler.shutdown().await.unwrap();

    let juggler =
        TestJuggler::start_with_admin(table(&[backend.addr], 1, settings(ELSEWHERE)), TOKEN).await;
    let spoofed = b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n";
    let (_, closed) = exchange(juggler.addr, spoofed, REQUEST).await;
    assert!(closed);
    let (answer, _) = exchange(juggler.addr, b"", REQUEST).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        counted(&juggler),
        [1, 0, 0],
        "untrusted, malformed, timeout"
    );
    juggler.shutdown().await.unwrap();
}
