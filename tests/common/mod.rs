//! Test harness: temporary Git repositories made with the `git` command, and runs of the real
//! `kube-free` binary with their exit code, stdout and stderr.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary Git repository, built file by file and commit by commit.
pub struct Repo {
    dir: tempfile::TempDir,
}

/// A `git` command isolated from the user's and the system's configuration.
pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "kube-free tests")
        .env("GIT_AUTHOR_EMAIL", "tests@kube-free.invalid")
        .env("GIT_COMMITTER_NAME", "kube-free tests")
        .env("GIT_COMMITTER_EMAIL", "tests@kube-free.invalid");
    cmd
}

pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let out = git(dir).args(args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        run_git(dir.path(), &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// Writes a file in the work tree (not committed).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.dir.path().join(path)).unwrap();
        self
    }

    /// Commits everything in the work tree; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        run_git(self.path(), &["add", "-A"]);
        run_git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        run_git(self.path(), &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        run_git(self.path(), args)
    }
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code {} (expected {expected})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\nstderr:\n{}",
            self.stderr
        );
        self
    }

    pub fn stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains(needle),
            "stderr has {needle:?}\nstderr:\n{}",
            self.stderr
        );
        self
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kube-free"))
}

/// Runs `kube-free ARGS` with a private cache directory and no inherited KUBE_FREE_* settings.
pub fn kube_free(args: &[&str]) -> Run {
    kube_free_in(Path::new("."), args)
}

pub fn kube_free_in(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .current_dir(cwd)
        .args(args)
        .env_remove("KUBE_FREE_REPO")
        .env_remove("KUBE_FREE_LOG")
        .env(
            "KUBE_FREE_CACHE_DIR",
            std::env::temp_dir().join("kube-free-test-cache"),
        )
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("kube-free runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Line and column (1-based) of the first occurrence of `needle` in `text`.
pub fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the text:\n{text}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |p| p + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A small valid desired state that test cases change one thing in.
pub const BASE: &str = r#"version: 1
hosts:
  web-1: { address: 192.0.2.11 }
  web-2: { address: 192.0.2.12, user: deploy, port: 2222 }
  lb-1: { address: 192.0.2.10 }
balancers:
  edge: { kind: haproxy, host: lb-1 }
apps:
  api:
    runtime:
      kind: process
      command: "/opt/api/{version}/bin/api --listen 0.0.0.0:{port}"
    slots: { blue: 8000, green: 8001 }
    probe: { path: /readyz, interval: 1s, timeout: 2s, healthy_after: 3, deadline: 60s }
    drain: 10s
    stop_timeout: 30s
environments:
  production:
    balancer: edge
    hosts: [web-1, web-2]
    apps:
      api:
        version: "1.4.2"
        listen: "0.0.0.0:80"
        strategy:
          canary:
            steps:
              - { weight: 10, pause: 2m }
              - { weight: 50, pause: 5m }
              - { pause: {} }
            analysis: { max_error_rate: 0.01, min_requests: 100 }
"#;

/// BASE with `from` replaced by `to` (which must occur).
pub fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

/// BASE without its inline environments (for tests that put them in files).
pub fn base_without_environments() -> String {
    BASE[..BASE.find("environments:").unwrap()].to_owned()
}

/// The body of `environments/production.yaml` equivalent to BASE's inline environment.
pub const PRODUCTION_FILE: &str = r#"balancer: edge
hosts: [web-1, web-2]
apps:
  api:
    version: "1.4.2"
    listen: "0.0.0.0:80"
    strategy: blue-green
"#;
