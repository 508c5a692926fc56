//! Real rustls clients (HTTP/1.1 and HTTP/2 over TLS) that trust only the certificates a test
//! names, and what a test reads off a TLS session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;

use crate::certs::TestCert;
use crate::client::{Answer, Client};

/// ALPN ids a client offers; Juggler picks `h2` when offered.
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

/// Bound on one client handshake, so a broken server fails the test instead of hanging it.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client configuration (ring provider, TLS 1.2 and 1.3) trusting exactly `trusted` and
/// offering `alpn`. Each call makes a new session cache, so a connection made with a fresh
/// config always does a full handshake and sees the server's current certificate.
pub fn client_config(trusted: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_for(trusted, alpn, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] allowing only the protocol `versions`.
pub fn client_config_for(
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

/// A TLS connection to `localhost` at `addr` trusting only `cert` and offering `alpn`.
pub async fn tls_connect_trusting(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> TlsClientStream {
    tls_connect(addr, client_config(&[&cert.der], alpn), "localhost")
        .await
        .unwrap()
}

/// [`tls_connect_trusting`], after checking that ALPN settled on the one protocol in `alpn`.
async fn connect_trusting(addr: SocketAddr, cert: &TestCert, alpn: &[&[u8]]) -> TlsClientStream {
    let stream = tls_connect_trusting(addr, cert, alpn).await;
    assert_eq!(alpn_of(&stream).as_deref(), Some(alpn[0]));
    stream
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
    Client::over(connect_trusting(addr, cert, ALPN_HTTP11).await).await
}

/// One HTTP/2 connection over TLS (ALPN `h2`). Cheap to clone: every clone sends its requests as
/// new streams of the same connection.
#[derive(Clone)]
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2Client {
    pub async fn connect(addr: SocketAddr, cert: &TestCert) -> H2Client {
        let stream = connect_trusting(addr, cert, ALPN_H2).await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2Client { sender }
    }

    /// Whether the connection is closed (the server ended it, or it failed): no stream can be
    /// sent on it any more.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `GET https://localhost<path>` as one stream, read whole.
    pub async fn get(&self, path: &str) -> hyper::Result<Answer> {
        let request = Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(request).await
    }

    /// `request` as one stream, its answer read whole.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> hyper::Result<Answer> {
        let mut sender = self.sender.clone();
        sender.ready().await?;
        Answer::read(sender.send_request(request).await?).await
    }
}
