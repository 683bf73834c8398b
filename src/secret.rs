//! Secrets kube-free reads from files on the machine that runs it (the webhook secret, a Git
//! token, notification header values and signing keys): only the file's owner may have any
//! permission on it (as OpenSSH demands of private keys), the final newline is not part of the
//! secret, and an empty file is refused. Never from the repository or the command line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("permissions {mode:04o} for {what} {path} are too open: it must be accessible only by its owner (chmod 600)")]
    TooOpen {
        what: &'static str,
        path: String,
        mode: u32,
    },
    #[error("{what} {path} is empty")]
    Empty { what: &'static str, path: String },
}

impl SecretError {
    /// Whether the file is at fault (its mode or content), not the machine.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, SecretError::Read { .. })
    }
}

/// Refuses `path` unless only its owner may access it.
pub fn check(path: &Path, what: &'static str) -> Result<(), SecretError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            what,
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The secret in `path` (`what` names it in errors), without trailing whitespace.
pub fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, SecretError> {
    check(path, what)?;
    let mut content = std::fs::read(path).map_err(|source| SecretError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let len = content.trim_ascii_end().len();
    content.truncate(len);
    if content.is_empty() {
        return Err(SecretError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, content: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn only_an_owner_only_non_empty_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = file(dir.path(), "s3cret \n", 0o600);
        assert_eq!(read(&ok, "secret file").unwrap(), b"s3cret");
        let open = file(dir.path(), "s3cret\n", 0o640);
        let err = read(&open, "secret file").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "permissions 0640 for secret file {} are too open: it must be accessible only by its owner (chmod 600)",
                open.display()
            )
        );
        assert!(err.is_bad_input());
        let empty = file(dir.path(), "\n", 0o400);
        assert!(matches!(
            read(&empty, "secret file"),
            Err(SecretError::Empty { .. })
        ));
        let missing = read(&dir.path().join("none"), "secret file").unwrap_err();
        assert!(!missing.is_bad_input(), "{missing}");
    }
}
