//! `--verify-ssh-signers` and `--verify-gpg-keyring` on real Git repositories with commits signed by
//! `git commit -S` (SSH keys made with ssh-keygen, a GPG key made with gpg): signed by a trusted key
//! passes; unsigned, signed by another key, or tampered with is refused with exit 2 by every
//! command, before any host is contacted.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh ed25519 key without a passphrase; returns the private key's path and the public key line.
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

/// Commits everything, signed with the SSH key `key`.
fn ssh_signed(repo: &Repo, key: &Path, message: &str) -> String {
    repo.git(&["add", "-A"]);
    repo.git(&[
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", key.display()),
        "commit",
        "-q",
        "--allow-empty",
        "-S",
        "-m",
        message,
    ]);
    repo.head()
}

/// A copy of `commit` with another message and the same signature, as an attacker who edits a
/// signed commit would make it; returns its id.
fn tampered(repo: &Repo, commit: &str) -> String {
    let raw = repo.git(&["cat-file", "commit", commit]);
    let edited = format!("{}\n", raw.replace("signed one", "signed one, edited"));
    assert_ne!(raw, edited);
    let mut child = git(repo.path())
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(edited.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn ssh_signatures_are_required_when_allowed_signers_are_given() {
    require_tools(&["ssh-keygen"]);
    let keys = tempfile::tempdir().unwrap();
    let (trusted, trusted_pub) = ssh_key(keys.path(), "trusted");
    let (stranger, _) = ssh_key(keys.path(), "stranger");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("ops@example.com {trusted_pub}\n")).unwrap();
    let allowed = allowed.to_str().unwrap();

    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let signed = ssh_signed(&repo, &trusted, "signed one");
    let check = |rev: &str| {
        kube_free(&[
            "validate",
            "--repo",
            repo.path_str(),
            "--rev",
            rev,
            "--verify-ssh-signers",
            allowed,
        ])
    };
    check(&signed)
        .code(0)
        .stdout_has(&format!("at commit {signed}"));
    // Without the option, nothing is checked.
    let unsigned = repo.commit("unsigned");
    kube_free(&["validate", "--repo", repo.path_str()]).code(0);
    check(&unsigned)
        .code(2)
        .stderr_has(&format!(
            "error: refusing commit {unsigned} of {}: it is not signed, and signatures are required (trusted: SSH signers {allowed})",
            repo.path_str()
        ));
    let by_stranger = ssh_signed(&repo, &stranger, "signed by a stranger");
    check(&by_stranger).code(2).stderr_has(&format!(
        "refusing commit {by_stranger} of {}: it is signed by an SSH key that is not in the allowed signers {allowed}",
        repo.path_str()
    ));
    let edited = tampered(&repo, &signed);
    check(&edited)
        .code(2)
        .stderr_has(&format!("refusing commit {edited} of "))
        .stderr_has("its SSH signature does not verify against the allowed signers");
    // The environment variable does the same, and a missing file is bad input too.
    let mut cmd = kube_free_command(Path::new("."), &["validate", "--repo", repo.path_str()]);
    let run: Run = cmd
        .env("KUBE_FREE_VERIFY_SSH_SIGNERS", allowed)
        .output()
        .unwrap()
        .into();
    run.code(2)
        .stderr_has("it is signed by an SSH key that is not in");
    kube_free(&[
        "validate",
        "--repo",
        repo.path_str(),
        "--verify-ssh-signers",
        "/nonexistent/allowed_signers",
    ])
    .code(2)
    .stderr_has("cannot read /nonexistent/allowed_signers");
    // A commit signed with an SSH key when only a GPG keyring is trusted.
    kube_free(&[
        "validate",
        "--repo",
        repo.path_str(),
        "--rev",
        &signed,
        "--verify-gpg-keyring",
        allowed,
    ])
    .code(2)
    .stderr_has("it is signed with an SSH key, but only GPG keys are trusted");
}

#[test]
fn commands_that_reach_hosts_refuse_an_untrusted_commit_before_contacting_any() {
    require_tools(&["ssh-keygen"]);
    let keys = tempfile::tempdir().unwrap();
    let (trusted, trusted_pub) = ssh_key(keys.path(), "trusted");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("ops@example.com {trusted_pub}\n")).unwrap();
    let allowed = allowed.to_str().unwrap();
    let repo = Repo::new();
    // Each command names an environment the desired state lacks: past the signature check, it
    // stops there with "unknown environment", before any host is contacted.
    repo.write("kube-free.yaml", BASE);
    let signed = ssh_signed(&repo, &trusted, "signed one");
    let unsigned = repo.commit("unsigned");
    let commands = [
        &["plan", "--env", "staging"][..],
        &["reconcile", "--once", "--env", "staging"],
        &["status", "--env", "staging"],
        &["promote", "api", "--env", "staging"],
    ];
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--repo", repo.path_str(), "--verify-ssh-signers", allowed]);
        kube_free(&all)
            .code(2)
            .stderr_has(&format!("error: refusing commit {unsigned} of "))
            .stderr_has("it is not signed")
            .stderr_lacks("unknown environment");
        // The signed commit gets past the check.
        all.extend(["--rev", &signed]);
        kube_free(&all)
            .code(2)
            .stderr_lacks("refusing commit")
            .stderr_has("unknown environment \"staging\"");
    }
}

/// A GNUPGHOME of its own; its agent is stopped when dropped.
struct GnuPg {
    home: tempfile::TempDir,
}

impl GnuPg {
    fn new() -> GnuPg {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        GnuPg { home }
    }

    fn gpg(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        out
    }

    /// Makes a signing key for `uid`; returns its fingerprint.
    fn key(&self, uid: &str) -> String {
        self.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
        ]);
        let out = self.gpg(&["--with-colons", "--list-keys", uid]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_owned())
            })
            .unwrap()
    }

    fn commit(&self, repo: &Repo, key: &str, message: &str) -> String {
        repo.git(&["add", "-A"]);
        let out = git(repo.path())
            .env("GNUPGHOME", self.home.path())
            .args([
                "-c",
                &format!("user.signingkey={key}"),
                "commit",
                "-q",
                "--allow-empty",
                "-S",
                "-m",
                message,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        repo.head()
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

#[test]
fn gpg_signatures_are_checked_against_the_keyring_given() {
    require_tools(&["gpg", "gpgv", "gpgconf"]);
    let gnupg = GnuPg::new();
    let trusted = gnupg.key("Ops <ops@example.invalid>");
    let stranger = gnupg.key("Stranger <stranger@example.invalid>");
    let keyring = gnupg.home.path().join("trusted.gpg");
    let out = gnupg.gpg(&["--export", &trusted]);
    std::fs::write(&keyring, out.stdout).unwrap();
    let keyring = keyring.to_str().unwrap();

    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let signed = gnupg.commit(&repo, &trusted, "signed one");
    let check = |rev: &str| {
        kube_free(&[
            "validate",
            "--repo",
            repo.path_str(),
            "--rev",
            rev,
            "--verify-gpg-keyring",
            keyring,
        ])
    };
    check(&signed)
        .code(0)
        .stdout_has(&format!("at commit {signed}"));
    let by_stranger = gnupg.commit(&repo, &stranger, "signed by a stranger");
    check(&by_stranger).code(2).stderr_has(&format!(
        "refusing commit {by_stranger} of {}: its GPG signature was made by key {}, which is not in the keyring {keyring}",
        repo.path_str(),
        &stranger[24..]
    ));
    let unsigned = repo.commit("unsigned");
    check(&unsigned)
        .code(2)
        .stderr_has("it is not signed, and signatures are required (trusted: GPG keyring");
    check(&tampered(&repo, &signed))
        .code(2)
        .stderr_has("its GPG signature is not good against the keyring")
        .stderr_has("bad signature");
    // Both kinds trusted: the GPG-signed commit passes.
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = ssh_key(keys.path(), "other");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("ops@example.com {public}\n")).unwrap();
    kube_free(&[
        "validate",
        "--repo",
        repo.path_str(),
        "--rev",
        &signed,
        "--verify-gpg-keyring",
        keyring,
        "--verify-ssh-signers",
        allowed.to_str().unwrap(),
    ])
    .code(0);
}
