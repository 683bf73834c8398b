//! Rewind protection from the command line, on this machine: the demo app behind a HAProxy of the
//! test's own (`transport: local`), deployed by `reconcile --once` from a real Git repository. The
//! last commit applied is kept on the balancer host; a revert commit goes through, a commit that
//! does not descend from the last one applied (a force-push back) is refused by `plan` and
//! `reconcile` with exit 2 and nothing changed, until `--allow-rewind`.

mod common;
use common::*;

type Setup = LocalStage;

impl LocalStage {
    /// The commit the balancer host keeps as the last one applied.
    fn applied(&self) -> String {
        let text = std::fs::read_to_string(self.state.join("applied.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["commit"].as_str().unwrap().to_owned()
    }
}

/// A watcher, killed when dropped.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_commit_that_does_not_descend_from_the_last_applied_is_refused_until_allowed() {
    let s = Setup::new(&[]);
    let a = s.commit("1.0", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert_eq!(s.applied(), a);
    let b = s.commit("1.1", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert_eq!(s.applied(), b);
    assert!(s.serving().contains("1.1"), "{}", s.serving());

    // A rollback in Git is a revert commit: it descends from B, and goes through.
    s.repo.git(&["revert", "--no-edit", "HEAD"]);
    let reverted = s.repo.head();
    s.run(&["reconcile", "--once"])
        .code(0)
        .stdout_has(&format!("converged to commit {reverted}"));
    assert_eq!(s.applied(), reverted);
    assert!(s.serving().contains("1.0"), "{}", s.serving());

    // A force-push back to A, then a new commit C: C does not descend from the revert.
    s.repo.git(&["reset", "-q", "--hard", &a]);
    let c = s.commit("1.2", "blue-green");
    let refused =
        format!("commit {c} does not descend from commit {reverted}, the last one applied");
    s.run(&["reconcile", "--once"])
        .code(2)
        .stderr_has(&refused)
        .stderr_has("run with --allow-rewind to apply it anyway")
        .stdout_lacks("converged");
    s.run(&["plan"]).code(2).stderr_has(&refused);
    // A watcher says so, keeps serving its endpoints, and deploys nothing.
    let address = format!("127.0.0.1:{}", free_port());
    let child = kube_free_command(
        std::path::Path::new("."),
        &[
            "watch",
            "--repo",
            s.repo.path_str(),
            "--listen",
            &address,
            "--interval",
            "1s",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut watcher = Watcher(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let (code, body) = request(&address, "GET", "/api/v1/status", &[], b"");
        if code == 200 {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            if json["cycle"]["finished_at"] != 0 {
                break json;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cycle: {code} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["cycle"]["outcome"], "refused", "{status}");
    assert!(
        status["cycle"]["error"]
            .as_str()
            .unwrap()
            .contains(&refused),
        "{status}"
    );
    let (code, body) = request(&address, "GET", "/readyz", &[], b"");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the head commit is refused"), "{body}");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(watcher.0.try_wait().unwrap().is_none(), "the watcher ended");
    drop(watcher);
    // Nothing changed: the record, and what serves.
    assert_eq!(s.applied(), reverted);
    assert!(s.serving().contains("1.0"), "{}", s.serving());
    s.run(&["plan", "--allow-rewind"])
        .code(10)
        .stdout_has(&format!("desired state at commit {c}"));

    s.run(&["reconcile", "--once", "--allow-rewind"])
        .code(0)
        .stdout_has(&format!("converged to commit {c}"));
    assert_eq!(s.applied(), c);
    assert!(s.serving().contains("1.2"), "{}", s.serving());
    // From then on, C's descendants go through without the option.
    let d = s.commit("1.3", "blue-green");
    s.run(&["reconcile", "--once"]).code(0);
    assert_eq!(s.applied(), d);

    // A repository that does not have the last commit applied cannot tell: refused too.
    let other = Repo::new();
    other.write("kube-free.yaml", s.yaml("1.3", "blue-green"));
    let e = other.commit("elsewhere");
    kube_free(&["reconcile", "--once", "--repo", other.path_str()])
        .code(2)
        .stderr_has(&format!("commit {d}, the last one applied (by "))
        .stderr_has(&format!(
            "is not in the repository read, so whether commit {e} descends from it cannot be told"
        ));
    assert_eq!(s.applied(), d);
}
