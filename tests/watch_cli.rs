//! `kube-free watch` without a fleet: what it refuses at start (a webhook secret others can read,
//! an address in use), and its endpoints while the desired state is bad input (nothing is
//! touched, `/readyz` says why, the page and the API say so, webhooks are checked).

mod common;

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret_file(dir: &Path, mode: u32) -> String {
    let path = dir.join("secret");
    std::fs::write(&path, "s3cret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_secret_others_can_read_is_refused_before_anything_starts() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", "version: 1\n").commit("empty");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o644);
    let port = free_port().to_string();
    kube_free(&[
        "watch",
        "--repo",
        repo.path_str(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--webhook-secret-file",
        &secret,
    ])
    .code(2)
    .stderr_has("permissions 0644 for webhook secret file")
    .stderr_has("are too open: it must be accessible only by its owner (chmod 600)");
}

#[test]
fn an_address_in_use_is_an_error() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", "version: 1\n").commit("empty");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    kube_free(&["watch", "--repo", repo.path_str(), "--listen", &address])
        .code(1)
        .stderr_has(&format!("cannot listen on {address}"));
}

#[test]
fn bad_input_is_shown_and_touches_nothing_and_webhooks_are_checked() {
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        "version: 1\napps:\n  api:\n    slots: 3\n",
    )
    .commit("a broken desired state");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o600);
    let address = format!("127.0.0.1:{}", free_port());
    let child = kube_free_command(
        Path::new("."),
        &[
            "watch",
            "--repo",
            repo.path_str(),
            "--listen",
            &address,
            "--interval",
            "1s",
            "--webhook-secret-file",
            &secret,
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut watcher = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, body) = request(&address, "GET", "/api/v1/status", &[], b"");
        if code == 200 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if json["cycle"]["outcome"] == "invalid" {
                break json;
            }
        }
        assert!(Instant::now() < deadline, "no cycle: {code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let error = status["cycle"]["error"].as_str().unwrap();
    assert!(
        error.contains("has 2 problems") || error.contains("problem"),
        "{status}"
    );
    assert_eq!(status["cycle"]["reached_git"], true, "{status}");
    assert_eq!(status["cycle"]["reached_hosts"], false, "{status}");
    assert_eq!(request(&address, "GET", "/healthz", &[], b"").0, 200);
    let (code, body) = request(&address, "GET", "/readyz", &[], b"");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the desired state at the head commit is invalid, no host was contacted"),
        "{body}"
    );
    let (code, page) = request(&address, "GET", "/", &[], b"");
    assert_eq!(code, 200);
    assert!(page.contains("invalid"), "{page}");
    assert!(!page.contains("<script"), "{page}");

    // Webhooks: checked, counted, and a valid one wakes the loop.
    let body = br#"{"ref":"refs/heads/main"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        request(&address, "POST", "/hooks/git", headers, body).0
    };
    assert_eq!(post(&[("X-Hub-Signature-256", &signature)], body), 202);
    assert_eq!(post(&[("X-Hub-Signature-256", &signature)], b"{}"), 401);
    assert_eq!(post(&[("X-Gitea-Signature", &signature[7..])], body), 202);
    assert_eq!(post(&[("X-Gitlab-Token", "s3cret")], body), 202);
    assert_eq!(post(&[("X-Gitlab-Token", "s3cre")], body), 401);
    assert_eq!(post(&[], body), 401);
    assert_eq!(
        post(
            &[("X-Gitlab-Token", "s3cret")],
            &vec![b'x'; 1024 * 1024 + 1]
        ),
        413
    );
    assert_eq!(request(&address, "GET", "/hooks/git", &[], b"").0, 405);
    let metrics = request(&address, "GET", "/metrics", &[], b"").1;
    for line in [
        r#"kube_free_webhook_requests_total{result="accepted"} 3"#,
        r#"kube_free_webhook_requests_total{result="bad_signature"} 2"#,
        r#"kube_free_webhook_requests_total{result="unsigned"} 1"#,
        r#"kube_free_webhook_requests_total{result="too_large"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(
        metrics.contains(r#"kube_free_cycles_total{result="invalid"}"#),
        "{metrics}"
    );

    // The problems are logged once (not at every poll), with their location.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &watcher.0.id().to_string()])
        .status();
    let out = std::mem::replace(
        &mut watcher.0,
        std::process::Command::new("true").spawn().unwrap(),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("kube-free.yaml:4:12: apps.api.slots").count(),
        1,
        "{log}"
    );
}
