//! Explicit Git credentials against real servers: an sshd of the test fleet serving a bare
//! repository (deploy key, known_hosts plain and hashed, a wrong host key, a key file others can
//! read, a key the server does not accept), and `git http-backend` behind a small HTTP server
//! that wants a token as the basic-auth password (plain HTTP on 127.0.0.1: libgit2 sends the
//! password the same way over HTTPS, where its own TLS is in front). The SSH test needs root
//! (network namespaces).

mod common;
#[path = "fleet/mod.rs"]
mod fleet;

use common::{run_git, Repo};
use fleet::{Fleet, FleetSpec};
use kube_free::desired::Files;
use kube_free::secret::SecretError;
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
        trust: Default::default(),
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
        CredentialError::Secret(SecretError::TooOpen { path, mode, .. }) => {
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

/// What the HTTP server saw: the user of each request that carried the right token.
type Users = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Serves the repositories under `root` with `git http-backend` (as CGI) on 127.0.0.1, to requests
/// whose basic-auth password is `token`; others get 401. Returns the port.
fn serve_git_http(rt: &tokio::runtime::Runtime, root: PathBuf, token: &str, users: Users) -> u16 {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    use http_body_util::{BodyExt, Full};
    use hyper::{body::Bytes, Request, Response};

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = token.to_owned();
    rt.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (root, token, users) = (root.clone(), token.clone(), users.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (root, token, users) = (root.clone(), token.clone(), users.clone());
                async move {
                    let user = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Basic "))
                        .and_then(|v| STANDARD.decode(v).ok())
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|v| {
                            let (user, password) = v.split_once(':')?;
                            (password == token).then(|| user.to_owned())
                        });
                    let Some(user) = user else {
                        return Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(401)
                                .header("www-authenticate", "Basic realm=\"git\"")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    };
                    users.lock().unwrap().push(user.clone());
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let mut cgi =
                        tokio::process::Command::new("/usr/lib/git-core/git-http-backend");
                    cgi.env_clear()
                        .env("GIT_PROJECT_ROOT", &root)
                        .env("GIT_HTTP_EXPORT_ALL", "1")
                        .env("REQUEST_METHOD", req.method().as_str())
                        .env("PATH_INFO", req.uri().path())
                        .env("QUERY_STRING", req.uri().query().unwrap_or(""))
                        .env("CONTENT_TYPE", header("content-type"))
                        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                        .env("GIT_PROTOCOL", header("git-protocol"))
                        .env("REMOTE_USER", &user)
                        .env("REMOTE_ADDR", "127.0.0.1")
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    cgi.env("CONTENT_LENGTH", body.len().to_string());
                    let mut child = cgi.spawn().expect("run git-http-backend");
                    let mut stdin = child.stdin.take().unwrap();
                    tokio::io::AsyncWriteExt::write_all(&mut stdin, &body)
                        .await
                        .unwrap();
                    drop(stdin);
                    let out = child.wait_with_output().await.unwrap().stdout;
                    // CGI: header lines, a blank line, the body.
                    let split = out
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| (p, p + 4))
                        .or_else(|| {
                            out.windows(2)
                                .position(|w| w == b"\n\n")
                                .map(|p| (p, p + 2))
                        })
                        .expect("CGI headers");
                    let mut response = Response::builder();
                    for line in String::from_utf8_lossy(&out[..split.0]).lines() {
                        let (name, value) = line.split_once(':').unwrap();
                        let value = value.trim();
                        if name.eq_ignore_ascii_case("status") {
                            response = response.status(&value[..3]);
                        } else {
                            response = response.header(name, value);
                        }
                    }
                    Ok(response
                        .body(Full::new(Bytes::copy_from_slice(&out[split.1..])))
                        .unwrap())
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    port
}

#[test]
fn a_token_file_as_the_basic_auth_password_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let (work, bare) = bare_repo(tmp.path());
    let first = push(&work, &bare, "environments/production.yaml", "one");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let users = Users::default();
    let port = serve_git_http(&rt, tmp.path().to_path_buf(), "s3cret-token", users.clone());
    let url = format!("http://127.0.0.1:{port}/deploy.git");
    let cache = tmp.path().join("cache");

    // No token (and no credential helper that knows this server): refused.
    let err = source::open(&spec(&url, &cache, GitCredentials::default())).unwrap_err();
    assert!(matches!(err, SourceError::Fetch { .. }), "{err:?}");

    // The token, read from a private file, sent as the password of `x-access-token`.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    chmod(&token_file, 0o600);
    let creds = GitCredentials {
        token_file: Some(token_file.clone()),
        ..Default::default()
    };
    let snapshot = source::open(&spec(&url, &cache, creds.clone())).expect("fetch with the token");
    assert_eq!(snapshot.commit.to_string(), first);
    assert_eq!(
        snapshot.read("environments/production.yaml").unwrap(),
        b"one"
    );
    drop(snapshot);
    assert!(!users.lock().unwrap().is_empty());
    assert!(users.lock().unwrap().iter().all(|u| u == "x-access-token"));

    // A user named in the URL is the one sent.
    users.lock().unwrap().clear();
    let named = format!("http://deployer@127.0.0.1:{port}/deploy.git");
    source::open(&spec(&named, &cache, creds.clone())).expect("fetch as the URL's user");
    assert!(users.lock().unwrap().iter().all(|u| u == "deployer"));

    // A wrong token: sent once, then a typed refusal; the cache keeps what it had.
    let second = push(&work, &bare, "environments/production.yaml", "two");
    std::fs::write(&token_file, "expired\n").unwrap();
    match credentials_error(source::open(&spec(&url, &cache, creds.clone()))) {
        CredentialError::Refused { what, path, user } => {
            assert_eq!(what, "token file");
            assert_eq!(path, token_file.display().to_string());
            assert_eq!(user, "x-access-token");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(cached_main(&cache, &url), first);

    // The file is read at each fetch: a rotated token is used by the next one.
    std::fs::write(&token_file, "s3cret-token").unwrap();
    let snapshot = source::open(&spec(&url, &cache, creds.clone())).expect("rotated token");
    assert_eq!(snapshot.commit.to_string(), second);
    drop(snapshot);

    // A token file others can read is refused.
    chmod(&token_file, 0o644);
    match credentials_error(source::open(&spec(&url, &cache, creds))) {
        CredentialError::Secret(SecretError::TooOpen { path, .. }) => {
            assert_eq!(path, token_file.display().to_string())
        }
        other => panic!("expected TooOpen, got {other:?}"),
    }
}
