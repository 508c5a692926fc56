//! The TLS layer on real sockets: certificate loading errors, handshakes with real rustls clients
//! over 127.0.0.1, ALPN, bad clients dropped by the handshake deadline, and certificate reload.
//! Certificates are generated per test with rcgen into a temporary directory of their own.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use juggler::tls::{self, ReloadableCert, TlsAcceptor, TlsError};
use juggler_testkit::certs::broken_pairs;
use juggler_testkit::tls::{
    client_config_for, peer_cert, rustls_error, tls_connect, TlsClientStream,
};
use juggler_testkit::{bind_local, Backend, CertFiles, TestCert};
use rustls::pki_types::CertificateDer;
use rustls::version::{TLS12, TLS13};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Handshake deadline for tests that expect handshakes to finish (or fail) on their own.
const GENEROUS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server side saw for one connection.
struct ServerOutcome {
    elapsed: Duration,
    /// `Ok(is_h2)` after a finished handshake.
    result: io::Result<bool>,
}

/// A server on 127.0.0.1:0 that runs each handshake in its own task (so a stalled client cannot
/// hold up others), reports every outcome, and after a handshake writes `hello` and closes.
struct TestServer {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<ServerOutcome>,
    /// Aborts every connection when the test ends.
    _backend: Backend<mpsc::UnboundedSender<ServerOutcome>>,
}

impl TestServer {
    async fn start(acceptor: TlsAcceptor, handshake_timeout: Duration) -> Self {
        let (report, outcomes) = mpsc::unbounded_channel();
        let backend = Backend::serve(bind_local().await, report, move |tcp, report| {
            let acceptor = acceptor.clone();
            async move {
                let started = Instant::now();
                let result = match acceptor.accept(tcp, handshake_timeout).await {
                    Ok(mut stream) => {
                        let is_h2 = tls::is_h2(&stream);
                        let _ = stream.write_all(b"hello").await;
                        let _ = stream.shutdown().await;
                        Ok(is_h2)
                    }
                    Err(error) => Err(error),
                };
                let _ = report.send(ServerOutcome {
                    elapsed: started.elapsed(),
                    result,
                });
            }
        });
        Self {
            addr: backend.addr,
            outcomes,
            _backend: backend,
        }
    }

    async fn next_outcome(&mut self) -> ServerOutcome {
        tokio::time::timeout(Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("server reported no handshake outcome")
            .expect("server stopped")
    }
}

/// Reads what the server sends after the handshake, proving the session carries data.
async fn read_greeting(stream: &mut TlsClientStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("server greeting hung")
        .unwrap();
    received
}

/// Connects to `addr` trusting only `root` and expecting `name`: the client must refuse the
/// server's certificate.
async fn assert_certificate_refused(addr: SocketAddr, root: &CertificateDer<'static>, name: &str) {
    let config = client_config_for(&[root], &[b"h2"], &[&TLS13, &TLS12]);
    let error = tls_connect(addr, config, name).await.err().unwrap();
    println!("client error: {error}");
    assert!(
        matches!(
            rustls_error(&error),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{error:?}"
    );
}

/// An acceptor for `cert`, loaded from files of its own (which a test may rewrite to reload).
fn acceptor_for(test_name: &str, cert: &TestCert) -> (TlsAcceptor, Arc<ReloadableCert>, CertFiles) {
    let files = CertFiles::new(test_name, cert);
    let (acceptor, certs) = tls::from_files(&files.cert, &files.key).unwrap();
    (acceptor, certs, files)
}

fn assert_names(error: &TlsError, path: &Path) {
    let message = error.to_string();
    println!("error: {message}");
    assert!(
        message.contains(&path.display().to_string()),
        "`{message}` does not name {}",
        path.display()
    );
}

/// Loads the pair `files` hold and returns the error, which must be the variant `expected` (by
/// its name) and name the `culprit` file.
fn refused(files: &CertFiles, expected: &str, culprit: &Path) -> TlsError {
    let Err(error) = tls::from_files(&files.cert, &files.key) else {
        panic!("{expected}: the pair was accepted");
    };
    let variant = format!("{error:?}");
    assert_eq!(variant.split(' ').next(), Some(expected), "{variant}");
    assert_names(&error, culprit);
    error
}

#[test]
fn missing_files_are_named_in_the_error() {
    let files = CertFiles::new("tls-missing", &TestCert::generate());
    let absent = files.dir.file("absent.pem");
    for (cert, key) in [(&absent, &files.key), (&files.cert, &absent)] {
        let error = tls::from_files(cert, key).err().unwrap();
        assert!(matches!(&error, TlsError::Read { path, .. } if *path == absent));
        assert_names(&error, &absent);
    }
}

#[test]
fn garbage_pem_is_refused_with_the_reason() {
    let pair = TestCert::generate();
    let files = CertFiles::new("tls-garbage", &pair);
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
    // Well-formed PEM whose content is not a certificate, or not a key.
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let not_a_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    let (cert, key) = (pair.cert_pem.as_str(), pair.key_pem.as_str());
    files.write_pem("this is not a certificate\n", key);
    refused(&files, "NoCertificate", &files.cert);
    files.write_pem(bad_base64, key);
    refused(&files, "InvalidPem", &files.cert);
    files.write_pem(not_der, key);
    refused(&files, "InvalidCertificate", &files.cert);
    // A certificate where the key should be.
    files.write_pem(cert, cert);
    refused(&files, "NoPrivateKey", &files.key);
    files.write_pem(cert, not_a_key);
    refused(&files, "UnsupportedKey", &files.key);
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let (first, second) = (TestCert::generate(), TestCert::generate());
    let files = CertFiles::new("tls-mismatch", &first);
    files.write_pem(&first.cert_pem, &second.key_pem);
    let error = refused(&files, "KeyMismatch", &files.cert);
    assert_names(&error, &files.key);
}

#[test]
fn certificate_outside_its_validity_period_is_refused() {
    let files = CertFiles::new("tls-expired", &TestCert::generate_between(2000, 2001));
    let error = refused(&files, "Expired", &files.cert);
    assert!(error.to_string().contains("2001"), "notAfter date missing");

    files.write(&TestCert::generate_between(2090, 2091));
    let error = refused(&files, "NotYetValid", &files.cert);
    assert!(error.to_string().contains("2090"), "notBefore date missing");
}

#[juggler_testkit::test(current_thread)]
async fn trusted_client_negotiates_h2_when_offered_and_http11_otherwise() {
    let pair = TestCert::generate();
    let (acceptor, _certs, _files) = acceptor_for("tls", &pair);
    let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

    struct Case {
        offered: &'static [&'static [u8]],
        /// The one protocol version the client allows.
        version: &'static SupportedProtocolVersion,
        expect_version: ProtocolVersion,
        expect_alpn: Option<&'static [u8]>,
    }
    let cases = [
        Case {
            offered: &[b"h2", b"http/1.1"],
            version: &TLS13,
            expect_version: ProtocolVersion::TLSv1_3,
            expect_alpn: Some(b"h2"),
        },
        Case {
            offered: &[b"http/1.1"],
            version: &TLS13,
            expect_version: ProtocolVersion::TLSv1_3,
            expect_alpn: Some(b"http/1.1"),
        },
        Case {
            offered: &[],
            version: &TLS13,
            expect_version: ProtocolVersion::TLSv1_3,
            expect_alpn: None,
        },
        Case {
            offered: &[b"h2", b"http/1.1"],
            version: &TLS12,
            expect_version: ProtocolVersion::TLSv1_2,
            expect_alpn: Some(b"h2"),
        },
    ];
    for case in cases {
        let config = client_config_for(&[&pair.der], case.offered, &[case.version]);
        let mut stream = tls_connect(server.addr, config, "localhost").await.unwrap();
        let (_, session) = stream.get_ref();
        let version = session.protocol_version().unwrap();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(version, case.expect_version);
        assert_eq!(alpn.as_deref(), case.expect_alpn);
        assert_eq!(peer_cert(&stream), pair.der);

        let outcome = server.next_outcome().await;
        let server_is_h2 = outcome.result.unwrap();
        assert_eq!(server_is_h2, case.expect_alpn == Some(b"h2".as_slice()));
        assert_eq!(read_greeting(&mut stream).await, b"hello");
        println!(
            "offered {:?} over {version:?}: client ALPN {:?}, server is_h2={server_is_h2}, \
             server handshake {:?}",
            case.offered
                .iter()
                .map(|p| String::from_utf8_lossy(p))
                .collect::<Vec<_>>(),
            alpn.as_deref().map(String::from_utf8_lossy),
            outcome.elapsed
        );
    }
}

#[juggler_testkit::test(current_thread)]
async fn client_that_does_not_trust_the_certificate_fails() {
    let pair = TestCert::generate();
    let stranger = TestCert::generate();
    let (acceptor, _certs, _files) = acceptor_for("tls", &pair);
    let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

    assert_certificate_refused(server.addr, &stranger.der, "localhost").await;
    let outcome = server.next_outcome().await;
    println!(
        "server: {:?} after {:?}",
        outcome.result.as_ref().err(),
        outcome.elapsed
    );
    assert!(outcome.result.is_err());
}

#[juggler_testkit::test(current_thread)]
async fn client_expecting_another_name_fails() {
    let pair = TestCert::generate();
    let (acceptor, _certs, _files) = acceptor_for("tls", &pair);
    let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

    assert_certificate_refused(server.addr, &pair.der, "example.com").await;
    assert!(server.next_outcome().await.result.is_err());

    // The same server and certificate are fine for the name they were made for.
    let config = client_config_for(&[&pair.der], &[b"h2"], &[&TLS13, &TLS12]);
    let mut stream = tls_connect(server.addr, config, "localhost").await.unwrap();
    assert_eq!(read_greeting(&mut stream).await, b"hello");
}

#[juggler_testkit::test(current_thread)]
async fn garbage_or_plain_http_instead_of_client_hello_is_refused_at_once() {
    let pair = TestCert::generate();
    let (acceptor, _certs, _files) = acceptor_for("tls", &pair);
    let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

    let inputs: [(&str, &[u8]); 2] = [
        (
            "garbage",
            &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0xff, 0xff],
        ),
        (
            "plain HTTP",
            b"GET /test.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    for (label, bytes) in inputs {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let outcome = server.next_outcome().await;
        let error = outcome.result.err().unwrap();
        println!(
            "{label}: accept failed after {:?}: {error}",
            outcome.elapsed
        );
        assert!(
            outcome.elapsed < Duration::from_secs(1),
            "{label} was not refused before the handshake deadline"
        );
        // The server closed the connection: the client reads at most an alert, then EOF.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest))
            .await
            .expect("server left the connection open");
        println!("{label}: client read {} bytes then {closed:?}", rest.len());
    }
}

#[juggler_testkit::test(current_thread)]
async fn stalled_handshakes_time_out_without_blocking_other_clients() {
    let pair = TestCert::generate();
    let (acceptor, _certs, _files) = acceptor_for("tls", &pair);
    let handshake_timeout = Duration::from_millis(300);
    let mut server = TestServer::start(acceptor, handshake_timeout).await;

    // One client connects and says nothing; another starts a ClientHello record and stops.
    let started = Instant::now();
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00])
        .await
        .unwrap();

    // Meanwhile a normal client is served.
    let config = client_config_for(&[&pair.der], &[b"h2"], &[&TLS13]);
    let mut good = tls_connect(server.addr, config, "localhost").await.unwrap();
    assert_eq!(read_greeting(&mut good).await, b"hello");
    println!(
        "normal client served {:?} after the stalled ones connected (handshake timeout {handshake_timeout:?})",
        started.elapsed()
    );

    // Outcomes in any order: on a loaded machine the deadlines may fire before the good one.
    let mut finished = 0;
    for _ in 0..3 {
        let outcome = server.next_outcome().await;
        match outcome.result {
            Ok(_) => finished += 1,
            Err(error) => {
                println!(
                    "stalled client dropped after {:?}: {error}",
                    outcome.elapsed
                );
                assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                assert!(outcome.elapsed >= handshake_timeout);
                assert!(outcome.elapsed < handshake_timeout + Duration::from_secs(2));
            }
        }
    }
    assert_eq!(
        finished, 1,
        "exactly the normal client finished its handshake"
    );

    // Both stalled connections were closed by the server.
    for mut tcp in [silent, half] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest))
            .await
            .expect("stalled connection left open")
            .unwrap();
    }
}

#[juggler_testkit::test(current_thread)]
async fn reload_serves_the_new_certificate_and_keeps_the_old_one_on_error() {
    let first = TestCert::generate();
    let second = TestCert::generate();
    let (acceptor, certs, files) = acceptor_for("tls", &first);
    let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;
    let trusted = [&first.der, &second.der];

    /// The certificate a new client gets in a full handshake. Each call builds a fresh
    /// client config: a reused one would resume its earlier TLS session, and a resumed
    /// session keeps the identity it was first authenticated with.
    async fn served_cert(
        server: &mut TestServer,
        trusted: &[&CertificateDer<'static>],
    ) -> CertificateDer<'static> {
        let config = client_config_for(trusted, &[b"h2", b"http/1.1"], &[&TLS13, &TLS12]);
        let mut stream = tls_connect(server.addr, config, "localhost").await.unwrap();
        assert!(server.next_outcome().await.result.is_ok());
        assert_eq!(read_greeting(&mut stream).await, b"hello");
        assert!(!stream.get_ref().1.is_handshaking());
        peer_cert(&stream)
    }

    assert_eq!(served_cert(&mut server, &trusted).await, first.der);
    // A connection made before the reload keeps its session.
    let mut before_reload = tls_connect(
        server.addr,
        client_config_for(&trusted, &[b"h2"], &[&TLS13]),
        "localhost",
    )
    .await
    .unwrap();
    assert!(server.next_outcome().await.result.is_ok());

    files.write_pem(&second.cert_pem, &second.key_pem);
    certs.reload().unwrap();
    assert_eq!(served_cert(&mut server, &trusted).await, second.der);
    assert_eq!(peer_cert(&before_reload), first.der);
    assert_eq!(read_greeting(&mut before_reload).await, b"hello");
    println!("after reload: new handshakes get the new certificate, the open one kept the old");

    for (label, cert_pem, key_pem) in broken_pairs(&second, &first) {
        files.write_pem(&cert_pem, &key_pem);
        let error = certs.reload().err().unwrap();
        println!("reload with {label} refused: {error}");
        assert_eq!(served_cert(&mut server, &trusted).await, second.der);
    }
    files.write_pem(&second.cert_pem, &second.key_pem);
    std::fs::remove_file(&files.key).unwrap();
    let error = certs.reload().err().unwrap();
    println!("reload with missing key refused: {error}");
    assert_names(&error, &files.key);
    assert_eq!(served_cert(&mut server, &trusted).await, second.der);
}
