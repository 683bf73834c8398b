//! Commit signatures: whether the commit about to be read is signed by a key the operator trusts.
//! The trusted keys are given outside the repository (a repository cannot vouch for itself): an
//! OpenSSH allowed-signers file and/or a GPG public keyring. The signature and the signed payload
//! are taken from the commit with git2 and checked by the real tools, as `git verify-commit` does:
//! `ssh-keygen -Y find-principals` and `-Y verify` (namespace `git`) for SSH signatures, `gpgv`
//! for OpenPGP ones. Knows nothing of the desired state; runs local commands only.

use git2::{Oid, Repository};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The keys a commit must be signed with; nothing is checked when neither is set.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// An OpenSSH allowed-signers file (`ssh-keygen(1)`, ALLOWED SIGNERS).
    pub ssh_signers: Option<PathBuf>,
    /// A GPG public keyring, as `gpg --export KEYID > FILE` writes it.
    pub gpg_keyring: Option<PathBuf>,
}

impl Trust {
    pub fn is_set(&self) -> bool {
        self.ssh_signers.is_some() || self.gpg_keyring.is_some()
    }

    fn names(&self) -> String {
        let mut given = Vec::new();
        if let Some(f) = &self.ssh_signers {
            given.push(format!("SSH signers {}", f.display()));
        }
        if let Some(f) = &self.gpg_keyring {
            given.push(format!("GPG keyring {}", f.display()));
        }
        given.join(" and ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("it is not signed, and signatures are required (trusted: {trusted})")]
    Unsigned { trusted: String },
    #[error("it is signed with an SSH key, but only GPG keys are trusted (--verify-ssh-signers is not set)")]
    NoSshSigners,
    #[error("it is signed with a GPG key, but only SSH keys are trusted (--verify-gpg-keyring is not set)")]
    NoGpgKeyring,
    #[error("its signature is neither an SSH nor an OpenPGP signature")]
    UnknownKind,
    #[error("it is signed by an SSH key that is not in the allowed signers {file}")]
    UnknownSshSigner { file: String },
    #[error("its SSH signature does not verify against the allowed signers {file}: {why}")]
    BadSshSignature { file: String, why: String },
    #[error("its GPG signature was made by key {key}, which is not in the keyring {file}")]
    UnknownGpgKey { key: String, file: String },
    #[error("its GPG signature is not good against the keyring {file}: {why}")]
    BadGpgSignature { file: String, why: String },
    #[error("cannot read {path}")]
    TrustFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {tool} to check the signature")]
    Tool {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read its signature")]
    Git(#[source] git2::Error),
}

impl VerifyError {
    /// Whether the commit or the trust files given are at fault (not the machine).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, VerifyError::Tool { .. } | VerifyError::Git(_))
    }
}

/// Who signed a commit that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// The principal of the allowed-signers file.
    Ssh(String),
    /// The fingerprint of the key.
    Gpg(String),
}

/// Checks that `commit` is signed by a key `trust` holds. Blocking (runs `ssh-keygen` or `gpgv`).
pub fn check(repo: &Repository, commit: Oid, trust: &Trust) -> Result<Signer, VerifyError> {
    for path in [&trust.ssh_signers, &trust.gpg_keyring]
        .into_iter()
        .flatten()
    {
        std::fs::File::open(path).map_err(|source| VerifyError::TrustFile {
            path: path.display().to_string(),
            source,
        })?;
    }
    let (signature, payload) = match repo.extract_signature(&commit, None) {
        Ok((s, p)) => (s.to_vec(), p.to_vec()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(VerifyError::Unsigned {
                trusted: trust.names(),
            })
        }
        Err(e) => return Err(VerifyError::Git(e)),
    };
    let work = tempfile::tempdir().map_err(|source| VerifyError::Tool {
        tool: "a temporary directory",
        source,
    })?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, VerifyError> {
        let path = work.path().join(name);
        std::fs::write(&path, bytes).map_err(|source| VerifyError::Tool {
            tool: "a temporary directory",
            source,
        })?;
        Ok(path)
    };
    let sig_file = write("signature", &signature)?;
    if signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        let signers = trust
            .ssh_signers
            .as_ref()
            .ok_or(VerifyError::NoSshSigners)?;
        ssh(signers, &sig_file, &payload).map(Signer::Ssh)
    } else if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
        let keyring = trust
            .gpg_keyring
            .as_ref()
            .ok_or(VerifyError::NoGpgKeyring)?;
        let payload_file = write("payload", &payload)?;
        gpg(keyring, &sig_file, &payload_file, work.path()).map(Signer::Gpg)
    } else {
        Err(VerifyError::UnknownKind)
    }
}

/// `ssh-keygen -Y find-principals`, then `-Y verify` for each principal found; the principal whose
/// verification passed.
fn ssh(signers: &Path, sig_file: &Path, payload: &[u8]) -> Result<String, VerifyError> {
    let tool = |source| VerifyError::Tool {
        tool: "ssh-keygen",
        source,
    };
    let file = signers.display().to_string();
    let found = Command::new("ssh-keygen")
        .args(["-Y", "find-principals", "-f"])
        .arg(signers)
        .arg("-s")
        .arg(sig_file)
        .stdin(Stdio::null())
        .output()
        .map_err(tool)?;
    let principals: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .flat_map(|l| l.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if !found.status.success() || principals.is_empty() {
        return Err(VerifyError::UnknownSshSigner { file });
    }
    let mut why = String::new();
    for principal in principals {
        let mut child = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "git", "-f"])
            .arg(signers)
            .arg("-I")
            .arg(&principal)
            .arg("-s")
            .arg(sig_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(tool)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A verifier that stops reading early fails below; its own words say why.
            let _ = stdin.write_all(payload);
        }
        let out = child.wait_with_output().map_err(tool)?;
        if out.status.success() {
            tracing::info!(
                principal,
                result = %String::from_utf8_lossy(&out.stdout).trim(),
                "commit signature verified"
            );
            return Ok(principal);
        }
        why = String::from_utf8_lossy(&out.stderr)
            .lines()
            .chain(String::from_utf8_lossy(&out.stdout).lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
    }
    Err(VerifyError::BadSshSignature { file, why })
}

/// `gpgv --status-fd 1 --keyring KEYRING SIG PAYLOAD` with an empty GNUPGHOME, so that no other
/// keyring counts; the fingerprint of the good signature's key. An expired or revoked key's
/// signature is not good.
fn gpg(
    keyring: &Path,
    sig_file: &Path,
    payload_file: &Path,
    home: &Path,
) -> Result<String, VerifyError> {
    let file = keyring.display().to_string();
    // gpgv reads a keyring named without a slash from GNUPGHOME: always give a full path.
    let keyring = std::fs::canonicalize(keyring).map_err(|source| VerifyError::TrustFile {
        path: file.clone(),
        source,
    })?;
    let out = Command::new("gpgv")
        .env("GNUPGHOME", home)
        .args(["--status-fd", "1", "--keyring"])
        .arg(&keyring)
        .arg(sig_file)
        .arg(payload_file)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VerifyError::Tool {
            tool: "gpgv",
            source,
        })?;
    let status = String::from_utf8_lossy(&out.stdout);
    let mut good = None;
    let mut problem = None;
    for line in status.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("[GNUPG:]") {
            continue;
        }
        match (words.next(), words.next()) {
            (Some("VALIDSIG"), Some(fpr)) => good = Some(fpr.to_owned()),
            (Some("NO_PUBKEY"), Some(key)) => {
                return Err(VerifyError::UnknownGpgKey {
                    key: key.to_owned(),
                    file,
                })
            }
            (Some(word @ ("BADSIG" | "EXPKEYSIG" | "REVKEYSIG" | "EXPSIG" | "ERRSIG")), key) => {
                problem = Some(format!(
                    "{} (key {})",
                    match word {
                        "BADSIG" => "bad signature",
                        "EXPKEYSIG" => "the key has expired",
                        "REVKEYSIG" => "the key was revoked",
                        "EXPSIG" => "the signature has expired",
                        _ => "the signature cannot be checked",
                    },
                    key.unwrap_or("?")
                ))
            }
            _ => {}
        }
    }
    match (out.status.success(), good, problem) {
        (true, Some(fingerprint), None) => {
            tracing::info!(key = fingerprint, "commit signature verified");
            Ok(fingerprint)
        }
        (_, _, Some(why)) => Err(VerifyError::BadGpgSignature { file, why }),
        _ => Err(VerifyError::BadGpgSignature {
            file,
            why: String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}
