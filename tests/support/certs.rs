//! Files a test needs on disk: a temporary directory of its own, and a self-signed certificate
//! generated per test (rcgen) with the files Juggler loads it from.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;

/// A directory of its own per test, removed when dropped. The name carries the process id, the
/// time and a counter, so neither parallel tests nor a leftover from an earlier run collide.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "juggler-{label}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` inside the directory.
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
        let mut params = localhost_params();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        TestCert::sign(params)
    }

    /// A certificate valid from January 1st of `from_year` to January 1st of `until_year`.
    pub fn generate_between(from_year: i32, until_year: i32) -> TestCert {
        let mut params = localhost_params();
        params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        TestCert::sign(params)
    }

    fn sign(params: rcgen::CertificateParams) -> TestCert {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// rcgen's defaults (valid 1975 to 4096) with the names a local client checks.
fn localhost_params() -> rcgen::CertificateParams {
    rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap()
}

/// Certificate and key files Juggler must refuse to load, each with what is wrong with them: built
/// from `good`'s certificate or key, and `other`'s key for a mismatch.
pub fn broken_pairs(good: &TestCert, other: &TestCert) -> [(&'static str, String, String); 4] {
    let expired = TestCert::generate_between(2000, 2001);
    let (cert, key) = (&good.cert_pem, &good.key_pem);
    [
        (
            "garbage certificate",
            "not a certificate\n".to_owned(),
            key.clone(),
        ),
        (
            "key of another certificate",
            cert.clone(),
            other.key_pem.clone(),
        ),
        ("expired certificate", expired.cert_pem, expired.key_pem),
        ("empty key", cert.clone(), String::new()),
    ]
}

/// The certificate and key files Juggler reads at start and on every reload, in a temporary
/// directory that lives as long as this value.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where both files are; other files a test needs can go next to them.
    pub dir: TempDir,
}

impl CertFiles {
    pub fn new(test_name: &str, cert: &TestCert) -> CertFiles {
        let dir = TempDir::new(test_name);
        let files = CertFiles {
            cert: dir.file("server.crt"),
            key: dir.file("server.key"),
            dir,
        };
        files.write(cert);
        files
    }

    /// A fresh certificate ([`TestCert::generate`]) and its files.
    pub fn generate(test_name: &str) -> (TestCert, CertFiles) {
        let cert = TestCert::generate();
        let files = CertFiles::new(test_name, &cert);
        (cert, files)
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
