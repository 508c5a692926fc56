//! HTTPS test support: a certificate generated per test into a temporary directory of its own,
//! Juggler serving plain HTTP and HTTPS on 127.0.0.1:0, and real rustls clients (HTTP/1.1 and
//! HTTP/2) that trust only the certificates a test names.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use juggler::proxy::Proxy;
use juggler::table::RouteTable;
use juggler::tls::{self, ReloadableCert};
use juggler::Listeners;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Answer, Client};

/// ALPN ids a client offers; Juggler picks `h2` when offered.
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

/// Bound on one client handshake, so a broken server fails the test instead of hanging it.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory of its own per test (process id + counter), removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test_name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "juggler-https-{test_name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1` with its private key.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A fresh key pair each time, so two certificates of one test are told apart by their DER.
    pub fn generate() -> TestCert {
        TestCert::generate_named("Juggler test")
    }

    /// A certificate whose subject (and, self-signed, issuer) is `common_name`. A client trusting
    /// only a certificate of another name finds no issuer for this one at all (`UnknownIssuer`);
    /// with the same name it would find the issuer and fail on the signature instead.
    pub fn generate_named(common_name: &str) -> TestCert {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// The certificate and key files Juggler reads at start and on every reload, in a temporary
/// directory that lives as long as this value.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl CertFiles {
    pub fn new(test_name: &str, cert: &TestCert) -> CertFiles {
        let dir = TempDir::new(test_name);
        let files = CertFiles {
            cert: dir.file("server.crt"),
            key: dir.file("server.key"),
            _dir: dir,
        };
        files.write(cert);
        files
    }

    /// Replaces both files in place, as an operator deploying a new certificate would.
    pub fn write(&self, cert: &TestCert) {
        self.write_pem(&cert.cert_pem, &cert.key_pem);
    }

    pub fn write_pem(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(&self.cert, cert_pem).unwrap();
        std::fs::write(&self.key, key_pem).unwrap();
    }
}

/// Juggler serving `table` on two listeners at once, plain HTTP and HTTPS, inside the test's
/// runtime.
pub struct HttpsJuggler {
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// The certificate Juggler's acceptor resolves per handshake; what SIGHUP reloads.
    pub certs: Arc<ReloadableCert>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl HttpsJuggler {
    pub async fn start(table: &'static RouteTable, files: &CertFiles) -> HttpsJuggler {
        let (acceptor, certs) = tls::from_files(&files.cert, &files.key).unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let https_addr = https.local_addr().unwrap();
        let proxy = Arc::new(Proxy::new(table));
        let (shutdown, signal) = oneshot::channel::<()>();
        let listeners = Listeners {
            http: Some(http),
            https: Some((https, Arc::new(acceptor))),
        };
        let task = tokio::spawn(juggler::run_with(listeners, Arc::clone(&proxy), async {
            let _ = signal.await;
        }));
        HttpsJuggler {
            http_addr,
            https_addr,
            proxy,
            certs,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Open pooled connections per backend, as Juggler counts them.
    pub fn open_connections(&self) -> Vec<usize> {
        self.proxy
            .pools
            .iter()
            .map(|pool| pool.open_connections())
            .collect()
    }

    /// Starts a graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

impl Drop for HttpsJuggler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client configuration (ring provider, TLS 1.2 and 1.3) trusting exactly `trusted` and
/// offering `alpn`. Each call makes a new session cache, so a connection made with a fresh
/// config always does a full handshake and sees the server's current certificate.
pub fn client_config(trusted: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

pub type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` asking for `server_name` (SNI and the name the certificate must
/// carry). The error is the client's verdict on the handshake.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<TlsClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    tokio::time::timeout(
        CLIENT_HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("client TLS handshake hung")
}

/// The end-entity certificate the server presented.
pub fn peer_cert(stream: &TlsClientStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The protocol ALPN settled on, if any.
pub fn alpn_of(stream: &TlsClientStream) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// The rustls error behind a failed client handshake (tokio-rustls wraps it in `io::Error`).
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A keep-alive HTTP/1.1 client over TLS (ALPN `http/1.1`) trusting `cert`.
pub async fn https_client(addr: SocketAddr, cert: &TestCert) -> Client {
    let stream = tls_connect(addr, client_config(&[&cert.der], ALPN_HTTP11), "localhost")
        .await
        .unwrap();
    assert_eq!(alpn_of(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Client { sender }
}

/// One HTTP/2 connection over TLS (ALPN `h2`). Cheap to clone: every clone sends its requests as
/// new streams of the same connection.
#[derive(Clone)]
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    pub async fn connect(addr: SocketAddr, cert: &TestCert) -> H2Client {
        let stream = tls_connect(addr, client_config(&[&cert.der], ALPN_H2), "localhost")
            .await
            .unwrap();
        assert_eq!(alpn_of(&stream).as_deref(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Client { sender }
    }

    /// `GET https://localhost<path>` as one stream, read whole.
    pub async fn get(&self, path: &str) -> hyper::Result<Answer> {
        let mut sender = self.sender.clone();
        sender.ready().await?;
        let request = Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
