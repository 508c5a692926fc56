//! The TLS layer on real sockets: certificate loading errors, handshakes with real rustls clients
//! over 127.0.0.1, ALPN, bad clients dropped by the handshake deadline, and certificate reload.
//! Certificates are generated per test with rcgen into a temporary directory of their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use juggler::tls::{self, ReloadableCert, TlsAcceptor, TlsError};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// Upper bound for any whole test: a hang is a failure, not a stuck CI job.
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// Handshake deadline for tests that expect handshakes to finish (or fail) on their own.
const GENEROUS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("test exceeded its deadline")
}

/// A directory of its own per test, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test_name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "juggler-tls-{test_name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1` with its key, as PEM and DER.
struct GeneratedPair {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

fn generate_pair() -> GeneratedPair {
    sign_pair(localhost_params())
}

/// A pair valid from January 1st of `from_year` to January 1st of `until_year`.
fn generate_pair_between(from_year: i32, until_year: i32) -> GeneratedPair {
    let mut params = localhost_params();
    params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
    params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
    sign_pair(params)
}

/// rcgen's defaults (valid 1975 to 4096) with the names a local client checks.
fn localhost_params() -> rcgen::CertificateParams {
    rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap()
}

fn sign_pair(params: rcgen::CertificateParams) -> GeneratedPair {
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key_pair).unwrap();
    GeneratedPair {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// Where a test keeps the pair the acceptor loads (and reloads).
struct PairFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl PairFiles {
    fn in_dir(dir: &TempDir) -> Self {
        Self {
            cert: dir.file("cert.pem"),
            key: dir.file("key.pem"),
        }
    }

    fn write(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(&self.cert, cert_pem).unwrap();
        std::fs::write(&self.key, key_pem).unwrap();
    }
}

/// What the server side saw for one connection.
struct ServerOutcome {
    elapsed: Duration,
    /// `Ok(is_h2)` after a finished handshake.
    result: io::Result<bool>,
}

/// An accept loop on 127.0.0.1:0 that runs each handshake in its own task (so a stalled client
/// cannot hold up others), reports every outcome, and after a handshake writes `hello` and closes.
struct TestServer {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<ServerOutcome>,
    accept_loop: JoinHandle<()>,
}

impl TestServer {
    async fn start(acceptor: TlsAcceptor, handshake_timeout: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, outcomes) = mpsc::unbounded_channel();
        let accept_loop = tokio::spawn(async move {
            // Dropped with this task, which aborts every connection task still running.
            let mut connections = JoinSet::new();
            loop {
                let (tcp, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                };
                let acceptor = acceptor.clone();
                let report = report.clone();
                connections.spawn(async move {
                    let started = Instant::now();
                    match acceptor.accept(tcp, handshake_timeout).await {
                        Ok(mut stream) => {
                            let is_h2 = tls::is_h2(&stream);
                            let _ = report.send(ServerOutcome {
                                elapsed: started.elapsed(),
                                result: Ok(is_h2),
                            });
                            let _ = stream.write_all(b"hello").await;
                            let _ = stream.shutdown().await;
                        }
                        Err(error) => {
                            let _ = report.send(ServerOutcome {
                                elapsed: started.elapsed(),
                                result: Err(error),
                            });
                        }
                    }
                });
                // Reap finished connection tasks so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            outcomes,
            accept_loop,
        }
    }

    async fn next_outcome(&mut self) -> ServerOutcome {
        tokio::time::timeout(Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("server reported no handshake outcome")
            .expect("server stopped")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

fn client_config(
    trusted: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("client handshake hung")
}

/// Reads what the server sends after the handshake, proving the session carries data.
async fn read_greeting(stream: &mut ClientStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("server greeting hung")
        .unwrap();
    received
}

fn peer_cert(stream: &ClientStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A rustls error the client side reported, from the `io::Error` tokio-rustls wraps it in.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

fn acceptor_for(
    pair: &GeneratedPair,
    dir: &TempDir,
) -> (TlsAcceptor, Arc<ReloadableCert>, PairFiles) {
    let files = PairFiles::in_dir(dir);
    files.write(&pair.cert_pem, &pair.key_pem);
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

#[test]
fn missing_files_are_named_in_the_error() {
    let dir = TempDir::new("missing");
    let pair = generate_pair();
    let files = PairFiles::in_dir(&dir);
    files.write(&pair.cert_pem, &pair.key_pem);
    let absent = dir.file("absent.pem");

    let error = tls::from_files(&absent, &files.key).err().unwrap();
    assert!(matches!(&error, TlsError::Read { path, .. } if *path == absent));
    assert_names(&error, &absent);

    let error = tls::from_files(&files.cert, &absent).err().unwrap();
    assert!(matches!(&error, TlsError::Read { path, .. } if *path == absent));
    assert_names(&error, &absent);
}

#[test]
fn garbage_pem_is_refused_with_the_reason() {
    let dir = TempDir::new("garbage");
    let pair = generate_pair();
    let files = PairFiles::in_dir(&dir);

    files.write("this is not a certificate\n", &pair.key_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    assert_names(&error, &files.cert);

    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
    files.write(bad_base64, &pair.key_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::InvalidPem { .. }), "{error:?}");
    assert_names(&error, &files.cert);

    // Well-formed PEM whose content is not a certificate.
    let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    files.write(not_der, &pair.key_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(
        matches!(error, TlsError::InvalidCertificate { .. }),
        "{error:?}"
    );
    assert_names(&error, &files.cert);

    // A certificate where the key should be.
    files.write(&pair.cert_pem, &pair.cert_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
    assert_names(&error, &files.key);

    let not_a_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    files.write(&pair.cert_pem, not_a_key);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(
        matches!(error, TlsError::UnsupportedKey { .. }),
        "{error:?}"
    );
    assert_names(&error, &files.key);
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let dir = TempDir::new("mismatch");
    let first = generate_pair();
    let second = generate_pair();
    let files = PairFiles::in_dir(&dir);
    files.write(&first.cert_pem, &second.key_pem);

    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    assert_names(&error, &files.cert);
    assert_names(&error, &files.key);
}

#[test]
fn certificate_outside_its_validity_period_is_refused() {
    let dir = TempDir::new("expired");
    let files = PairFiles::in_dir(&dir);

    let expired = generate_pair_between(2000, 2001);
    files.write(&expired.cert_pem, &expired.key_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::Expired { .. }), "{error:?}");
    assert_names(&error, &files.cert);
    assert!(error.to_string().contains("2001"), "notAfter date missing");

    let future = generate_pair_between(2090, 2091);
    files.write(&future.cert_pem, &future.key_pem);
    let error = tls::from_files(&files.cert, &files.key).err().unwrap();
    assert!(matches!(error, TlsError::NotYetValid { .. }), "{error:?}");
    assert_names(&error, &files.cert);
    assert!(error.to_string().contains("2090"), "notBefore date missing");
}

#[tokio::test]
async fn trusted_client_negotiates_h2_when_offered_and_http11_otherwise() {
    bounded(async {
        let dir = TempDir::new("alpn");
        let pair = generate_pair();
        let (acceptor, _certs, _files) = acceptor_for(&pair, &dir);
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
            let config = client_config(&[&pair.cert_der], case.offered, &[case.version]);
            let mut stream = connect(server.addr, config, "localhost").await.unwrap();
            let (_, session) = stream.get_ref();
            let version = session.protocol_version().unwrap();
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(version, case.expect_version);
            assert_eq!(alpn.as_deref(), case.expect_alpn);
            assert_eq!(peer_cert(&stream), pair.cert_der);

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
    })
    .await;
}

#[tokio::test]
async fn client_that_does_not_trust_the_certificate_fails() {
    bounded(async {
        let dir = TempDir::new("untrusted");
        let pair = generate_pair();
        let stranger = generate_pair();
        let (acceptor, _certs, _files) = acceptor_for(&pair, &dir);
        let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

        let config = client_config(&[&stranger.cert_der], &[b"h2"], &[&TLS13, &TLS12]);
        let error = connect(server.addr, config, "localhost")
            .await
            .err()
            .unwrap();
        println!("client error: {error}");
        assert!(
            matches!(
                rustls_error(&error),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{error:?}"
        );
        let outcome = server.next_outcome().await;
        println!(
            "server: {:?} after {:?}",
            outcome.result.as_ref().err(),
            outcome.elapsed
        );
        assert!(outcome.result.is_err());
    })
    .await;
}

#[tokio::test]
async fn client_expecting_another_name_fails() {
    bounded(async {
        let dir = TempDir::new("sni");
        let pair = generate_pair();
        let (acceptor, _certs, _files) = acceptor_for(&pair, &dir);
        let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;

        let config = client_config(&[&pair.cert_der], &[b"h2"], &[&TLS13, &TLS12]);
        let error = connect(server.addr, config, "example.com")
            .await
            .err()
            .unwrap();
        println!("client error: {error}");
        assert!(
            matches!(
                rustls_error(&error),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{error:?}"
        );
        assert!(server.next_outcome().await.result.is_err());

        // The same server and certificate are fine for the name they were made for.
        let config = client_config(&[&pair.cert_der], &[b"h2"], &[&TLS13, &TLS12]);
        let mut stream = connect(server.addr, config, "localhost").await.unwrap();
        assert_eq!(read_greeting(&mut stream).await, b"hello");
    })
    .await;
}

#[tokio::test]
async fn garbage_or_plain_http_instead_of_client_hello_is_refused_at_once() {
    bounded(async {
        let dir = TempDir::new("garbage-hello");
        let pair = generate_pair();
        let (acceptor, _certs, _files) = acceptor_for(&pair, &dir);
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
    })
    .await;
}

#[tokio::test]
async fn stalled_handshakes_time_out_without_blocking_other_clients() {
    bounded(async {
        let dir = TempDir::new("stall");
        let pair = generate_pair();
        let (acceptor, _certs, _files) = acceptor_for(&pair, &dir);
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
        let config = client_config(&[&pair.cert_der], &[b"h2"], &[&TLS13]);
        let mut good = connect(server.addr, config, "localhost").await.unwrap();
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
                    println!("stalled client dropped after {:?}: {error}", outcome.elapsed);
                    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
                    assert!(outcome.elapsed >= handshake_timeout);
                    assert!(outcome.elapsed < handshake_timeout + Duration::from_secs(2));
                }
            }
        }
        assert_eq!(finished, 1, "exactly the normal client finished its handshake");

        // Both stalled connections were closed by the server.
        for mut tcp in [silent, half] {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest))
                .await
                .expect("stalled connection left open")
                .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_keeps_the_old_one_on_error() {
    bounded(async {
        let dir = TempDir::new("reload");
        let first = generate_pair();
        let second = generate_pair();
        let (acceptor, certs, files) = acceptor_for(&first, &dir);
        let mut server = TestServer::start(acceptor, GENEROUS_HANDSHAKE_TIMEOUT).await;
        let trusted = [&first.cert_der, &second.cert_der];

        /// The certificate a new client gets in a full handshake. Each call builds a fresh
        /// client config: a reused one would resume its earlier TLS session, and a resumed
        /// session keeps the identity it was first authenticated with.
        async fn served_cert(
            server: &mut TestServer,
            trusted: &[&CertificateDer<'static>],
        ) -> CertificateDer<'static> {
            let config = client_config(trusted, &[b"h2", b"http/1.1"], &[&TLS13, &TLS12]);
            let mut stream = connect(server.addr, config, "localhost").await.unwrap();
            assert!(server.next_outcome().await.result.is_ok());
            assert_eq!(read_greeting(&mut stream).await, b"hello");
            assert!(!stream.get_ref().1.is_handshaking());
            peer_cert(&stream)
        }

        assert_eq!(served_cert(&mut server, &trusted).await, first.cert_der);
        // A connection made before the reload keeps its session.
        let mut before_reload = connect(
            server.addr,
            client_config(&trusted, &[b"h2"], &[&TLS13]),
            "localhost",
        )
        .await
        .unwrap();
        assert!(server.next_outcome().await.result.is_ok());

        files.write(&second.cert_pem, &second.key_pem);
        certs.reload().unwrap();
        assert_eq!(served_cert(&mut server, &trusted).await, second.cert_der);
        assert_eq!(peer_cert(&before_reload), first.cert_der);
        assert_eq!(read_greeting(&mut before_reload).await, b"hello");
        println!("after reload: new handshakes get the new certificate, the open one kept the old");

        let expired = generate_pair_between(2000, 2001);
        let broken_pairs = [
            (
                "garbage certificate",
                "garbage".to_owned(),
                second.key_pem.clone(),
            ),
            (
                "mismatched key",
                second.cert_pem.clone(),
                first.key_pem.clone(),
            ),
            (
                "expired certificate",
                expired.cert_pem.clone(),
                expired.key_pem.clone(),
            ),
        ];
        for (label, cert_pem, key_pem) in broken_pairs {
            files.write(&cert_pem, &key_pem);
            let error = certs.reload().err().unwrap();
            println!("reload with {label} refused: {error}");
            assert_eq!(served_cert(&mut server, &trusted).await, second.cert_der);
        }
        files.write(&second.cert_pem, &second.key_pem);
        std::fs::remove_file(&files.key).unwrap();
        let error = certs.reload().err().unwrap();
        println!("reload with missing key refused: {error}");
        assert_names(&error, &files.key);
        assert_eq!(served_cert(&mut server, &trusted).await, second.cert_der);
    })
    .await;
}
