//! Explicit Git credentials against real servers: an sshd of the test fleet serving a bare
//! repository (deploy key, known_hosts plain and hashed, a wrong host key, a key file others can
//! read, a key the server does not accept), and `git http-backend` behind a small HTTP server
//! that wants a token as the basic-auth password. The SSH test needs root (network namespaces).

mod common;
#[path = "fleet/mod.rs"]
mod fleet;

use common::{run_git, Repo};
use fleet::{Fleet, FleetSpec};
use kube_free::desired::Files;
use kube_free::source::{self, CredentialError, GitCredentials, SourceError, SourceSpec};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A bare repository `deploy.git` in `dir` fed from a work repository; returns (work, bare path).
fn bare_repo(dir: &Path) -> (Repo, PathBuf) {
    let bare = dir.join("deploy.git");
    run_git(
        dir,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    (Repo::new(), bare)
}

fn push(work: &Repo, bare: &Path, file: &str, content: &str) -> String {
    work.write(file, content);
    let commit = work.commit(&format!("{file}: {content}"));
    work.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    commit
}

fn spec(url: &str, cache: &Path, credentials: GitCredentials) -> SourceSpec {
    SourceSpec {
        repo: url.into(),
        rev: None,
        cache_dir: Some(cache.to_path_buf()),
        credentials,
    }
}

/// The commit `refs/heads/main` points at in the cache for `url`.
fn cached_main(cache: &Path, url: &str) -> String {
    let repo = git2::Repository::open_bare(source::cache_entry(cache, url)).unwrap();
    let id = repo.refname_to_id("refs/heads/main").unwrap();
    id.to_string()
}

/// A fresh ed25519 key pair; returns (private key path, public key line).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

fn credentials_error(result: Result<source::Snapshot, SourceError>) -> CredentialError {
    match result {
        Err(SourceError::Credentials { source, .. }) => source,
        other => panic!("expected a credentials error, got {other:?}"),
    }
}

#[test]
fn ssh_with_a_deploy_key_and_a_known_hosts_file() {
    let fleet = Fleet::start(FleetSpec::new(&["git-1"], "lb-1"));
    let address = fleet.address("git-1");
    let tmp = tempfile::tempdir().unwrap();
    let (work, bare) = bare_repo(tmp.path());
    let first = push(&work, &bare, "environments/production.yaml", "one");
    let url = format!("ssh://root@{address}{}", bare.display());
    let cache = tmp.path().join("cache");

    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(&known_hosts, fleet.known_hosts_text()).unwrap();
    let good = GitCredentials {
        ssh_key: Some(fleet.identity_file().to_path_buf()),
        known_hosts: Some(known_hosts.clone()),
        token_file: None,
    };

    // The deploy key and the right host key: the commit is read.
    let snapshot = source::open(&spec(&url, &cache, good.clone())).expect("fetch over ssh");
    assert_eq!(snapshot.commit.to_string(), first);
    assert_eq!(
        snapshot.read("environments/production.yaml").unwrap(),
        b"one"
    );
    drop(snapshot);

    // Hashed known_hosts entries (`ssh-keygen -H`) are understood.
    let hashed = tmp.path().join("known_hosts.hashed");
    std::fs::write(&hashed, fleet.known_hosts_text()).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-q", "-H", "-f"])
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -H: {out:?}");
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains(&address),
        "not hashed: {text}"
    );
    let second = push(&work, &bare, "environments/production.yaml", "two");
    let hashed_creds = GitCredentials {
        known_hosts: Some(hashed),
        ..good.clone()
    };
    let snapshot = source::open(&spec(&url, &cache, hashed_creds)).expect("hashed known_hosts");
    assert_eq!(snapshot.commit.to_string(), second);
    drop(snapshot);

    // A known_hosts file with another key for the host: refused before anything is fetched,
    // and the cache keeps what it had.
    let third = push(&work, &bare, "environments/production.yaml", "three");
    let (_, other_public) = keygen(tmp.path(), "other_host_key");
    let wrong = tmp.path().join("known_hosts.wrong");
    std::fs::write(&wrong, format!("{address} {other_public}\n")).unwrap();
    let wrong_creds = GitCredentials {
        known_hosts: Some(wrong.clone()),
        ..good.clone()
    };
    let err = source::open(&spec(&url, &cache, wrong_creds)).unwrap_err();
    assert_eq!(
        format!("{err}: {}", std::error::Error::source(&err).unwrap()),
        format!(
            "cannot fetch {url}: host key of {address} not in {}",
            wrong.display()
        )
    );
    assert!(!err.is_bad_input());
    assert_eq!(
        cached_main(&cache, &url),
        second,
        "fetched despite the host key"
    );

    // The cache is still usable: the right file fetches the new commit.
    let snapshot = source::open(&spec(&url, &cache, good.clone())).expect("fetch after a failure");
    assert_eq!(snapshot.commit.to_string(), third);
    drop(snapshot);

    // A key file others can read is refused, like OpenSSH does, naming the file.
    let open_key = tmp.path().join("id_open");
    std::fs::copy(fleet.identity_file(), &open_key).unwrap();
    chmod(&open_key, 0o644);
    let open_creds = GitCredentials {
        ssh_key: Some(open_key.clone()),
        ..good.clone()
    };
    let err = source::open(&spec(&url, &cache, open_creds.clone())).unwrap_err();
    assert!(err.is_bad_input(), "{err:?}");
    match credentials_error(Err(err)) {
        CredentialError::TooOpen { path, mode, .. } => {
            assert_eq!(path, open_key.display().to_string());
            assert_eq!(mode, 0o644);
        }
        other => panic!("expected TooOpen, got {other:?}"),
    }
    chmod(&open_key, 0o600);
    source::open(&spec(&url, &cache, open_creds)).expect("the same key, now private");

    // A key the server does not accept: tried once, then a typed refusal (no loop).
    let (stranger, _) = keygen(tmp.path(), "id_stranger");
    let stranger_creds = GitCredentials {
        ssh_key: Some(stranger.clone()),
        ..good.clone()
    };
    match credentials_error(source::open(&spec(&url, &cache, stranger_creds))) {
        CredentialError::Refused { path, user, .. } => {
            assert_eq!(path, stranger.display().to_string());
            assert_eq!(user, "root");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(cached_main(&cache, &url), third);
}
