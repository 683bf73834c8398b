//! An OpenSSH `known_hosts` file and the question it answers: is this the host key of this host?
//! Pure: parses text and compares bytes; reading the file and talking to the server belong to the
//! caller (`source::credentials`).
//!
//! Supported, as `sshd(8)` documents them: host patterns separated by commas, with `*` and `?`
//! wildcards and `!` negation; `[host]:port` for a server not on port 22; hashed entries
//! (`|1|salt|hash`, HMAC-SHA1 of the name, as `ssh-keygen -H` writes them); `@revoked` lines.
//! `@cert-authority` lines are skipped: libgit2 hands over the plain host key, not a certificate.
//! Lines that do not parse are skipped, like OpenSSH does.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// The parsed lines of a known_hosts file.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    revoked: bool,
    hosts: Hosts,
    /// The key blob (the base64 field decoded), which starts with the key type.
    key: Vec<u8>,
}

#[derive(Debug)]
enum Hosts {
    /// `|1|salt|hash`: HMAC-SHA1 keyed with the salt, of the host name as it is looked up.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Comma-separated patterns, `!` negated ones included.
    Patterns(Vec<String>),
}

/// What the file says about a host key.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A line for the host has this key.
    Known,
    /// A `@revoked` line has this key (for this host or a pattern that matches it).
    Revoked,
    /// No line for the host has this key.
    Unknown,
}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        KnownHosts {
            entries: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Whether `key` (the raw key blob the server sent) is the key of `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Verdict {
        let name = lookup_name(host, port);
        let mut known = false;
        for entry in self.entries.iter().filter(|e| e.key == key) {
            if !entry.hosts.matches(&name) {
                continue;
            }
            if entry.revoked {
                return Verdict::Revoked;
            }
            known = true;
        }
        if known {
            Verdict::Known
        } else {
            Verdict::Unknown
        }
    }
}

/// The name a host is filed under: `host` on port 22, `[host]:port` elsewhere.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let mut revoked = false;
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            _ => return None, // @cert-authority, or unknown
        }
        first = fields.next()?;
    }
    let _key_type = fields.next()?;
    let key = STANDARD.decode(fields.next()?).ok()?;
    let hosts = match first.strip_prefix("|1|") {
        Some(hashed) => {
            let (salt, hash) = hashed.split_once('|')?;
            Hosts::Hashed {
                salt: STANDARD.decode(salt).ok()?,
                hash: STANDARD.decode(hash).ok()?,
            }
        }
        None => Hosts::Patterns(first.split(',').map(str::to_owned).collect()),
    };
    Some(Entry {
        revoked,
        hosts,
        key,
    })
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut matched = false;
                for pattern in patterns {
                    match pattern.strip_prefix('!') {
                        // A matching negated pattern rules the line out, whatever else matches.
                        Some(negated) if glob(negated, name) => return false,
                        Some(_) => {}
                        None => matched |= glob(pattern, name),
                    }
                }
                matched
            }
        }
    }
}

/// `*` and `?` wildcards, case-insensitive like OpenSSH's host matching.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let n: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHbE1a3o2tZ5L3Ie1Y4F0nT1vHc8bq2yQm8mJ3sO9x0A";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOq5gk3m8r7w5bC8f2WJ3kq1mQh0r2v5J1mX8nT2bL9e";

    fn key(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    #[test]
    fn plain_names_match_on_port_22_and_bracketed_names_elsewhere() {
        let file = KnownHosts::parse(&format!(
            "# comment\n\n10.0.0.1,git.example.org ssh-ed25519 {KEY_A} a@b\n\
             [git.example.org]:2222 ssh-ed25519 {KEY_B}\n"
        ));
        assert_eq!(file.check("10.0.0.1", 22, &key(KEY_A)), Verdict::Known);
        assert_eq!(
            file.check("GIT.example.org", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            file.check("git.example.org", 22, &key(KEY_B)),
            Verdict::Unknown
        );
        assert_eq!(
            file.check("git.example.org", 2222, &key(KEY_B)),
            Verdict::Known
        );
        assert_eq!(
            file.check("git.example.org", 2222, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(file.check("10.0.0.2", 22, &key(KEY_A)), Verdict::Unknown);
    }

    #[test]
    fn wildcards_and_negations() {
        let file = KnownHosts::parse(&format!(
            "*.example.org,!evil.example.org ssh-ed25519 {KEY_A}\n10.0.0.? ssh-ed25519 {KEY_B}\n"
        ));
        assert_eq!(
            file.check("git.example.org", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            file.check("evil.example.org", 22, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(file.check("example.org", 22, &key(KEY_A)), Verdict::Unknown);
        assert_eq!(file.check("10.0.0.7", 22, &key(KEY_B)), Verdict::Known);
        assert_eq!(file.check("10.0.0.17", 22, &key(KEY_B)), Verdict::Unknown);
    }

    #[test]
    fn hashed_entries_match_the_name_they_were_made_from() {
        // `ssh-keygen -H` of "git.example.org" and of "[git.example.org]:2222", with fixed salts.
        let line = |name: &str, salt: &[u8], k: &str| {
            let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
            mac.update(name.as_bytes());
            let hash = mac.finalize().into_bytes();
            format!(
                "|1|{}|{} ssh-ed25519 {k}\n",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            )
        };
        let file = KnownHosts::parse(
            &(line("git.example.org", &[7; 20], KEY_A)
                + &line("[git.example.org]:2222", &[9; 20], KEY_B)),
        );
        assert_eq!(
            file.check("git.example.org", 22, &key(KEY_A)),
            Verdict::Known
        );
        assert_eq!(
            file.check("git.example.org", 2222, &key(KEY_B)),
            Verdict::Known
        );
        assert_eq!(
            file.check("git.example.org", 2222, &key(KEY_A)),
            Verdict::Unknown
        );
        assert_eq!(
            file.check("other.example.org", 22, &key(KEY_A)),
            Verdict::Unknown
        );
    }

    #[test]
    fn revoked_keys_win_and_cert_authorities_and_garbage_are_skipped() {
        let file = KnownHosts::parse(&format!(
            "git.example.org ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_A}\n\
             @cert-authority git.example.org ssh-ed25519 {KEY_B}\n\
             git.example.org ssh-ed25519 not-base64!\njunk\n"
        ));
        assert_eq!(
            file.check("git.example.org", 22, &key(KEY_A)),
            Verdict::Revoked
        );
        assert_eq!(
            file.check("git.example.org", 22, &key(KEY_B)),
            Verdict::Unknown
        );
        assert_eq!(file.entries.len(), 2);
    }
}
