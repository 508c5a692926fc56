//! TLS termination: loading the certificate and key, swapping them on reload, and accepting
//! client handshakes with a deadline.
//!
//! Start-up calls [`from_files`], which refuses a missing, malformed, mismatched or expired
//! pair with a [`TlsError`] naming the file. The returned [`TlsAcceptor`] is cloned into each
//! connection task; the returned [`ReloadableCert`] is kept by the SIGHUP handler, which calls
//! [`ReloadableCert::reload`]. Handshakes already in progress or finished keep the certificate
//! they started with; every new full handshake gets the new one. (A client resuming a TLS
//! session from before the reload skips the certificate exchange, as resumption is meant to;
//! the session keys never depended on the certificate's private key, so this is safe.)
//!
//! Every rustls object here is built from the `ring` provider explicitly, so nothing depends on
//! which process-wide default provider another crate may or may not have installed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::server::TlsStream;
use x509_parser::time::ASN1Time;

/// ALPN protocol ids in server preference order: HTTP/2 when the client offers it, since it
/// multiplexes many requests over one handshake; HTTP/1.1 for everyone else.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate or key could not be used. Every variant names the file at fault, because
/// these errors are shown to an operator at start-up or after SIGHUP.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("{} is not valid PEM: {source}", path.display())]
    InvalidPem { path: PathBuf, source: pem::Error },

    #[error("{} contains no PEM `CERTIFICATE` block", path.display())]
    NoCertificate { path: PathBuf },

    #[error("{} holds a certificate that cannot be parsed: {reason}", path.display())]
    InvalidCertificate { path: PathBuf, reason: String },

    #[error("the certificate in {} expired on {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },

    #[error("the certificate in {} is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },

    #[error(
        "{} contains no unencrypted private key (PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },

    #[error("the private key in {} is not supported: {source}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },

    #[error(
        "the private key in {} does not match the certificate in {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },

    /// rustls refused the server configuration itself; not caused by the files, and not
    /// expected with the fixed provider and protocol versions used here.
    #[error("rustls rejected the TLS server configuration: {0}")]
    Config(rustls::Error),
}

/// The one crypto provider every rustls object in Juggler is built from.
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and its private key, and checks that they belong together and
/// that every certificate in the chain is valid now.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_cert_chain(cert_path)?;
    let key = read_private_key(key_path)?;
    let signing_key = ring_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key type cannot report its public half; rustls itself accepts that.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            })
        }
    }
    Ok(Arc::new(certified))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of `path` in file order (end-entity first), each checked for its dates.
fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_bytes = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidPem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for cert in &chain {
        check_validity_period(path, cert)?;
    }
    Ok(chain)
}

/// Refuses a certificate outside its validity period: clients would reject every handshake,
/// so it is better to say so once, clearly, than to serve errors.
fn check_validity_period(path: &Path, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|error| {
        TlsError::InvalidCertificate {
            path: path.to_owned(),
            reason: error.to_string(),
        }
    })?;
    let validity = parsed.validity();
    let now = ASN1Time::now();
    if now < validity.not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    if now > validity.not_after {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    Ok(())
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem_bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::InvalidPem {
            path: path.to_owned(),
            source,
        },
    })
}

/// The server certificate, replaceable while Juggler runs.
///
/// rustls asks [`ResolvesServerCert::resolve`] once per handshake; it gets whatever pair is
/// current at that moment.
#[derive(Debug)]
pub struct ReloadableCert {
    /// Re-read on every [`reload`](Self::reload), so an operator replaces the files in place.
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The pair handed to new handshakes. An `RwLock` is cheap here: every handshake takes the
    /// read side only long enough to clone an `Arc` (one atomic increment), so readers never
    /// wait on each other, and the write side is taken only by `reload`, i.e. on SIGHUP.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads the pair once; fails exactly like [`load_certified_key`].
    pub fn new(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let current = load_certified_key(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(current),
        })
    }

    /// Re-reads both files and, only if the new pair is valid, makes it the one new handshakes
    /// get. On error the previous pair stays in use and the error says which file is at fault.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert_path, &self.key_path)?;
        // A poisoned lock only means a panic elsewhere while holding it; the value is a
        // complete `Arc` either way, so overwriting it is safe.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for ReloadableCert {
    /// One certificate for every client: SNI is not used to choose, and a client that asked
    /// for another name rejects the certificate on its side.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Accepts TLS 1.2/1.3 handshakes, offering ALPN `h2` then `http/1.1`. Cheap to clone: one per
/// connection task.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-rustls' acceptor has no `Debug`; the configuration is fixed and uninteresting.
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Builds the server configuration around `certs`, so a later `certs.reload()` is seen by
    /// every following handshake of this acceptor and its clones.
    pub fn new(certs: Arc<ReloadableCert>) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&TLS13, &TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(Self {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the handshake on `io`, giving up after `handshake_timeout`.
    ///
    /// The deadline is what drops clients that stall, send garbage slowly, or speak plain HTTP
    /// and then wait for an answer. On timeout the error kind is [`io::ErrorKind::TimedOut`] and
    /// `io` has been dropped (the connection is closed); a handshake that fails outright
    /// returns rustls' error, usually [`io::ErrorKind::InvalidData`].
    pub async fn accept<IO>(&self, io: IO, handshake_timeout: Duration) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(handshake_timeout, self.inner.accept(io)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake not finished within {handshake_timeout:?}"),
            )),
        }
    }
}

/// The one entry point for start-up: loads the pair and builds the acceptor around it. Keep the
/// `ReloadableCert` for SIGHUP; clone the acceptor into connection tasks.
pub fn from_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(TlsAcceptor, Arc<ReloadableCert>), TlsError> {
    let certs = Arc::new(ReloadableCert::new(cert_path, key_path)?);
    let acceptor = TlsAcceptor::new(Arc::clone(&certs))?;
    Ok((acceptor, certs))
}

/// Whether the client and Juggler agreed on HTTP/2 via ALPN; anything else (including a client
/// that sent no ALPN) is served as HTTP/1.1.
pub fn is_h2<IO>(stream: &TlsStream<IO>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(ALPN_H2)
}

/// Re-reads the certificate and key on every SIGHUP, for as long as the process runs: new
/// handshakes get the new pair; a broken pair is logged with the file at fault and the old one
/// kept, so a bad deploy of certificate files never takes HTTPS down.
///
/// Spawn it once per process. Until it has run for the first time SIGHUP keeps its default
/// action (terminating the process), so spawn it before telling anyone Juggler is up.
pub async fn reload_on_sighup(certs: Arc<ReloadableCert>) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP: certificate reload disabled");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!(cert = %certs.cert_path.display(), "TLS certificate reloaded"),
            Err(error) => tracing::error!(%error, "TLS reload failed; keeping the old certificate"),
        }
    }
}
