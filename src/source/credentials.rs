//! Credentials for fetching a Git URL: which SSH key or HTTPS token to offer and which SSH host
//! keys to accept, as git2 remote callbacks. Reads the key, token and known_hosts files (at each
//! fetch, so a rotated token or key is picked up by the next one); knows nothing of the cache,
//! commits or the desired state.

use super::known_hosts::{lookup_name, KnownHosts, Verdict};
use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// Explicit credentials for Git URLs. The default (all `None`) is the SSH agent, then
/// `~/.ssh/id_{ed25519,rsa,ecdsa}`, git's credential helpers for HTTPS, and libgit2's own
/// host-key checks.
#[derive(Clone, Debug, Default)]
pub struct GitCredentials {
    /// Private key for SSH URLs (a deploy key); used instead of the agent and ~/.ssh keys.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file the SSH server's host key must be in; without it libgit2's defaults apply.
    pub known_hosts: Option<PathBuf>,
    /// File holding a token for HTTPS URLs (sent as the password, user `x-access-token` unless the URL names one).
    pub token_file: Option<PathBuf>,
}

/// Why explicit credentials could not be used, or what they refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host key of {host} not in {file}")]
    UnknownHostKey { host: String, file: String },
    #[error("host key of {host} is marked @revoked in {file}")]
    RevokedHostKey { host: String, file: String },
    #[error("{what} {path} refused by the server (user {user:?})")]
    Refused {
        what: &'static str,
        path: String,
        user: String,
    },
}

impl CredentialError {
    /// Whether the problem is in what the user configured (a file's permissions or contents), as
    /// opposed to the server or the network.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, CredentialError::Secret(e) if e.is_bad_input())
    }
}

const SSH_KEY: &str = "SSH key";
const TOKEN_FILE: &str = "token file";
const KNOWN_HOSTS: &str = "known_hosts file";
const TOKEN_USER: &str = "x-access-token";

/// One fetch's credentials: the callbacks, and the first thing they refused, typed.
pub(super) struct Session<'a> {
    creds: &'a GitCredentials,
    known_hosts: Option<KnownHosts>,
    /// Port of an SSH URL (libgit2 hands the callback the host only).
    port: u16,
    failure: RefCell<Option<CredentialError>>,
}

impl<'a> Session<'a> {
    /// Reads the known_hosts file, if one is configured.
    pub fn new(creds: &'a GitCredentials, url: &str) -> Result<Session<'a>, CredentialError> {
        let known_hosts = match &creds.known_hosts {
            None => None,
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
                        what: KNOWN_HOSTS,
                        path: path.display().to_string(),
                        source,
                    })?;
                Some(KnownHosts::parse(&text))
            }
        };
        Ok(Session {
            creds,
            known_hosts,
            port: ssh_port(url),
            failure: RefCell::new(None),
        })
    }

    /// What the callbacks refused, if the fetch failed because of it.
    pub fn into_failure(self) -> Option<CredentialError> {
        self.failure.into_inner()
    }

    fn fail(&self, error: CredentialError) -> git2::Error {
        let message = error.to_string();
        self.failure.borrow_mut().get_or_insert(error);
        git2::Error::from_str(&message)
    }

    /// Callbacks offering each credential once, so a refused one ends in an error, not a loop.
    pub fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut tried: Vec<&'static str> = Vec::new();
        let mut cbs = RemoteCallbacks::new();
        cbs.credentials(move |url, username, allowed| {
            let user = username.unwrap_or("git");
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                if let Some(key) = &self.creds.ssh_key {
                    if tried.contains(&SSH_KEY) {
                        return Err(self.fail(CredentialError::Refused {
                            what: SSH_KEY,
                            path: key.display().to_string(),
                            user: user.into(),
                        }));
                    }
                    tried.push(SSH_KEY);
                    check_private(key, SSH_KEY).map_err(|e| self.fail(e))?;
                    return Cred::ssh_key(user, None, key, None);
                }
                if !tried.contains(&"agent") {
                    tried.push("agent");
                    return Cred::ssh_key_from_agent(user);
                }
                let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
                for (label, key) in [
                    ("ed25519", "id_ed25519"),
                    ("rsa", "id_rsa"),
                    ("ecdsa", "id_ecdsa"),
                ] {
                    let file = home.join(".ssh").join(key);
                    if !tried.contains(&label) && file.exists() {
                        tried.push(label);
                        return Cred::ssh_key(user, None, &file, None);
                    }
                }
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                if let Some(file) = &self.creds.token_file {
                    let user = username.unwrap_or(TOKEN_USER);
                    if tried.contains(&TOKEN_FILE) {
                        return Err(self.fail(CredentialError::Refused {
                            what: TOKEN_FILE,
                            path: file.display().to_string(),
                            user: user.into(),
                        }));
                    }
                    tried.push(TOKEN_FILE);
                    let token = read_token(file).map_err(|e| self.fail(e))?;
                    return Cred::userpass_plaintext(user, &token);
                }
                if !tried.contains(&"helper") {
                    tried.push("helper");
                    let config = git2::Config::open_default()?;
                    return Cred::credential_helper(&config, url, username);
                }
            }
            Err(git2::Error::from_str("no credentials accepted"))
        });
        cbs.certificate_check(move |cert, host| {
            let (Some(known), Some(hostkey)) = (&self.known_hosts, cert.as_hostkey()) else {
                // TLS certificates, or no known_hosts file given: libgit2's own checks.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let file = self
                .creds
                .known_hosts
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
                .to_string();
            let name = lookup_name(host, self.port);
            let verdict = match hostkey.hostkey() {
                Some(key) => known.check(host, self.port, key),
                None => Verdict::Unknown,
            };
            match verdict {
                Verdict::Known => Ok(CertificateCheckStatus::CertificateOk),
                Verdict::Revoked => {
                    Err(self.fail(CredentialError::RevokedHostKey { host: name, file }))
                }
                Verdict::Unknown => {
                    Err(self.fail(CredentialError::UnknownHostKey { host: name, file }))
                }
            }
        });
        cbs
    }
}

fn check_private(path: &Path, what: &'static str) -> Result<(), CredentialError> {
    Ok(crate::secret::check(path, what)?)
}

/// The token in `path`, without surrounding whitespace; read at each fetch, so that a rotated
/// token is used from the next one on.
fn read_token(path: &Path) -> Result<String, CredentialError> {
    let bytes = crate::secret::read(path, TOKEN_FILE)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// The port of an `ssh://` URL (22 when it names none, and for scp-like `host:path`).
fn ssh_port(url: &str) -> u16 {
    let Some((scheme, rest)) = url.split_once("://") else {
        return 22;
    };
    if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
        return 22;
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    port.and_then(|p| p.parse().ok()).unwrap_or(22)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ports_of_ssh_urls() {
        for (url, port) in [
            ("ssh://git@host/org/repo.git", 22),
            ("ssh://git@host:2222/org/repo.git", 2222),
            ("ssh://host:2200/repo", 2200),
            ("git+ssh://u@host:7/r", 7),
            ("ssh://git@[::1]:2222/repo", 2222),
            ("ssh://git@[::1]/repo", 22),
            ("git@host:org/repo.git", 22),
            ("https://host:8443/repo.git", 22),
        ] {
            assert_eq!(ssh_port(url), port, "{url}");
        }
    }

    #[test]
    fn secret_files_must_be_private_and_tokens_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_token(&file).unwrap_err();
        assert!(matches!(
            err,
            CredentialError::Secret(crate::secret::SecretError::TooOpen { mode: 0o640, .. })
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "permissions 0640 for token file {} are too open: it must be accessible only by its owner (chmod 600)",
                file.display()
            )
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            read_token(&file),
            Err(CredentialError::Secret(
                crate::secret::SecretError::Empty { .. }
            ))
        ));
        assert!(matches!(
            read_token(&dir.path().join("missing")),
            Err(CredentialError::Secret(
                crate::secret::SecretError::Read { .. }
            ))
        ));
    }
}
