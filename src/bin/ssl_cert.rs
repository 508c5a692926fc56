//! `ssl_cert`: writes a self-signed certificate and key for Juggler's HTTPS listener.
//!
//! `make ssl_cert` runs this, so a fresh machine needs nothing but the Rust toolchain (no
//! `openssl` binary). The certificate names `localhost`, `127.0.0.1` and `::1`, which is what a
//! local client connects to; it is meant for testing and benchmarks, not for the public internet.
//!
//! Files: `<dir>/server.crt` (PEM, mode 0644) and `<dir>/server.key` (PEM, mode 0600 from the
//! moment it is created, so the private key is never readable by others, not even briefly).
//! Existing files are kept unless `--force` is given.
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

/// Names a local client may use to reach Juggler; each becomes a subjectAltName.
const SUBJECT_ALT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const CERT_FILE: &str = "server.crt";
const KEY_FILE: &str = "server.key";
const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;
const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Create a self-signed TLS certificate and key for Juggler (localhost)"
)]
struct Args {
    /// Directory to write server.crt and server.key into (created if missing).
    #[arg(long, default_value = "juggler_config")]
    dir: PathBuf,

    /// How many days the certificate is valid, starting now.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: u32,

    /// Replace server.crt and server.key if they already exist.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The error chain on one line, without anyhow's backtrace: the reader is an operator.
    match create_certificate(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ssl_cert: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn create_certificate(args: &Args) -> anyhow::Result<()> {
    let cert_path = args.dir.join(CERT_FILE);
    let key_path = args.dir.join(KEY_FILE);

    // Checked before anything is generated or written, so a refusal changes nothing on disk.
    let existing: Vec<&PathBuf> = [&cert_path, &key_path]
        .into_iter()
        .filter(|path| path.exists())
        .collect();
    if !existing.is_empty() && !args.force {
        let names: Vec<String> = existing
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        let verb = if names.len() == 1 { "exists" } else { "exist" };
        bail!(
            "{} already {verb}; not overwriting. Rerun with --force to replace \
             (e.g. `ssl_cert --dir {} --force`).",
            names.join(" and "),
            args.dir.display()
        );
    }

    let validity = Validity::starting_now(args.days)?;
    let generated = generate(&validity)?;

    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create directory {}", args.dir.display()))?;
    // The key goes first: a certificate without its key is useless, the reverse is harmless.
    write_new_file(&key_path, generated.key_pem.as_bytes(), KEY_MODE)?;
    write_new_file(&cert_path, generated.cert_pem.as_bytes(), CERT_MODE)?;

    println!("certificate: {}", cert_path.display());
    println!("private key: {} (mode 0600)", key_path.display());
    println!("names:       {}", SUBJECT_ALT_NAMES.join(", "));
    println!(
        "valid:       {} days, from {} to {} (UTC)",
        args.days, generated.not_before, generated.not_after
    );
    Ok(())
}

/// The certificate's validity window, whole seconds (X.509 times carry no fractions).
struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Validity {
    fn starting_now(days: u32) -> anyhow::Result<Validity> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock is before 1970")?;
        let not_before = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        let not_after = not_before + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY);
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// PEM texts plus the validity as rcgen renders it, for the summary.
struct Generated {
    cert_pem: String,
    key_pem: String,
    not_before: String,
    not_after: String,
}

fn generate(validity: &Validity) -> anyhow::Result<Generated> {
    let names: Vec<String> = SUBJECT_ALT_NAMES
        .iter()
        .map(|name| name.to_string())
        .collect();
    // rcgen turns names that parse as IP addresses into IP SANs, the rest into DNS SANs.
    let mut params = CertificateParams::new(names).context("invalid subject alternative name")?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "localhost");
    subject.push(DnType::OrganizationName, "Juggler self-signed");
    params.distinguished_name = subject;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();

    // ECDSA P-256: small, fast handshakes, and accepted by rustls and every common client.
    let key_pair = KeyPair::generate().context("cannot generate a key pair")?;
    let not_before = params.not_before.date().to_string();
    let not_after = params.not_after.date().to_string();
    let certificate = params
        .self_signed(&key_pair)
        .context("cannot sign the certificate")?;
    Ok(Generated {
        cert_pem: certificate.pem(),
        key_pem: key_pair.serialize_pem(),
        not_before,
        not_after,
    })
}

/// Writes `contents` to a file created with `mode`; an old file (allowed by `--force`) is removed
/// first, because opening it would keep its old permissions.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot replace {}", path.display())),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
