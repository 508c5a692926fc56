//! Integration tests of the `ssl_cert` binary: it runs into a fresh temp directory, and what it
//! writes is checked on disk, parsed as X.509, and used for a real TLS handshake on 127.0.0.1.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use juggler_testkit::tls::{client_config, tls_connect};
use juggler_testkit::{bind_local, TempDir};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

/// Runs `ssl_cert --dir <dir> <extra…>` to completion (it never waits on input or the network).
fn run_ssl_cert(dir: &Path, extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ssl_cert"))
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    println!(
        "ssl_cert {extra:?} → {}\nstdout:\n{}stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_a_private_key_and_a_certificate_for_localhost() {
    let dir = TempDir::new("ssl-cert");
    // A directory that does not exist yet, as on a fresh checkout without juggler_config/ files.
    let out = dir.file("config");
    let output = run_ssl_cert(&out, &["--days", "30"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let cert_path = out.join("server.crt");
    let key_path = out.join("server.key");
    assert!(stdout.contains(&cert_path.display().to_string()));
    assert!(stdout.contains(&key_path.display().to_string()));
    assert!(stdout.contains("30 days"));

    let key_mode = mode_of(&key_path);
    let cert_mode = mode_of(&cert_path);
    println!("key mode {key_mode:o}, cert mode {cert_mode:o}");
    assert_eq!(key_mode, 0o600);
    assert_eq!(
        cert_mode & 0o022,
        0,
        "certificate must not be writable by others"
    );

    let pem_bytes = std::fs::read(&cert_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes).unwrap();
    let certificate = pem.parse_x509().unwrap();
    let names = certificate
        .subject_alternative_name()
        .unwrap()
        .expect("no subjectAltName extension")
        .value
        .general_names
        .clone();
    println!("subject {} SANs {names:?}", certificate.subject());
    assert!(names.contains(&GeneralName::DNSName("localhost")));
    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let ipv6_loopback = std::net::Ipv6Addr::LOCALHOST.octets();
    assert!(names.contains(&GeneralName::IPAddress(&ipv6_loopback)));

    let validity = certificate.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    println!(
        "valid {} → {} ({lifetime} s)",
        validity.not_before, validity.not_after
    );
    assert_eq!(lifetime, 30 * SECONDS_PER_DAY);
    assert!(validity.is_valid(), "certificate is not valid now");

    let key_text = std::fs::read_to_string(&key_path).unwrap();
    assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn refuses_to_overwrite_without_force_and_replaces_with_it() {
    let dir = TempDir::new("ssl-cert");
    let cert_path = dir.file("server.crt");
    let key_path = dir.file("server.key");
    assert!(run_ssl_cert(dir.path(), &[]).status.success());
    let first_cert = std::fs::read(&cert_path).unwrap();
    let first_key = std::fs::read(&key_path).unwrap();

    let refused = run_ssl_cert(dir.path(), &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(std::fs::read(&cert_path).unwrap(), first_cert);
    assert_eq!(std::fs::read(&key_path).unwrap(), first_key);

    // A key file left world-readable by someone else must come back as 0600, not keep its mode.
    std::fs::remove_file(&key_path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&key_path)
        .unwrap();
    assert!(
        !run_ssl_cert(dir.path(), &[]).status.success(),
        "one existing file is enough to refuse"
    );

    assert!(run_ssl_cert(dir.path(), &["--force"]).status.success());
    assert_ne!(std::fs::read(&cert_path).unwrap(), first_cert);
    assert_ne!(std::fs::read(&key_path).unwrap(), first_key);
    let key_mode = mode_of(&key_path);
    println!("key mode after --force: {key_mode:o}");
    assert_eq!(key_mode, 0o600);
}

#[juggler_testkit::test(current_thread)]
async fn generated_files_complete_a_real_tls_handshake() {
    let dir = TempDir::new("ssl-cert");
    assert!(run_ssl_cert(dir.path(), &[]).status.success());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.file("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.file("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));

    // The client trusts exactly the generated certificate and nothing else.
    let client_config = client_config(&[&certs[0]], &[]);

    let listener = bind_local().await;
    let addr = listener.local_addr().unwrap();
    let names = ["localhost", "127.0.0.1"];
    let server = tokio::spawn(async move {
        for _ in names {
            let (stream, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(stream).await.unwrap();
            let mut ping = [0u8; 4];
            tls.read_exact(&mut ping).await.unwrap();
            assert_eq!(&ping, b"ping");
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
        }
    });

    for name in names {
        let config = Arc::clone(&client_config);
        let mut tls = tls_connect(addr, config, name).await.unwrap();
        let (_, session) = tls.get_ref();
        println!(
            "handshake as {name}: {:?} {:?}",
            session.protocol_version(),
            session.negotiated_cipher_suite().map(|suite| suite.suite())
        );
        tls.write_all(b"ping").await.unwrap();
        let mut pong = Vec::new();
        tls.read_to_end(&mut pong).await.unwrap();
        assert_eq!(pong, b"pong");
    }
    server.await.unwrap();
}
