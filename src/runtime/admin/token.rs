//! The bearer token the admin API's mutating endpoints require: read from the configured file at
//! start-up, or generated into it (mode 0600) on the first start, so a fresh install is never open
//! and nobody has to invent a secret.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why the token could not be had; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("admin token file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("admin token file {path} is empty")]
    Empty { path: String },
}

/// The token in `path`, created with a new random token if the file does not exist.
pub fn load_or_create(path: &str) -> Result<String, TokenError> {
    let io_error = |source| TokenError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::metadata(path) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
            let token = fs::read_to_string(path).map_err(io_error)?;
            let token = token.trim();
            if token.is_empty() {
                return Err(TokenError::Empty {
                    path: path.to_owned(),
                });
            }
            Ok(token.to_owned())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let token = generate().map_err(io_error)?;
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
            {
                fs::create_dir_all(dir).map_err(io_error)?;
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_error)?;
            writeln!(file, "{token}").map_err(io_error)?;
            tracing::info!(
                path,
                "admin: generated a new bearer token for the drain API"
            );
            Ok(token)
        }
        Err(error) => Err(io_error(error)),
    }
}

/// 32 random bytes from the kernel, as hex.
fn generate() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Compares in time independent of where the first difference is, so response timing does not
/// reveal a token prefix.
pub(super) fn matches(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_gets_a_private_token_that_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let path = path.to_str().unwrap();
        let created = load_or_create(path).unwrap();
        assert_eq!(created.len(), 64);
        assert_eq!(
            fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(path).unwrap(), created);
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        let exposed = load_or_create(path).unwrap_err().to_string();
        assert!(
            exposed.contains(path) && exposed.contains("644"),
            "{exposed}"
        );
    }

    #[test]
    fn only_the_exact_token_matches() {
        assert!(matches(b"secret", b"secret"));
        assert!(!matches(b"secreT", b"secret"));
        assert!(!matches(b"secret!", b"secret"));
        assert!(!matches(b"", b"secret"));
    }
}
