//! `kube-free validate` and `kube-free schema` on real Git repositories: the commit read, revisions,
//! uncommitted changes, subdirectories, Git URLs through the cache, the committed schema, the examples.

mod common;
use common::*;
use std::path::Path;

#[test]
fn valid_desired_state_exits_0_and_names_the_commit() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let commit = repo.commit("valid");
    kube_free(&["validate", "--repo", repo.path_str()])
        .code(0)
        .stdout_has(&format!(
            "valid: {} at commit {commit} (1 environment, 1 app, 3 hosts, 1 balancer)",
            repo.path_str()
        ));
}

#[test]
fn the_design_documents_example_is_understood() {
    // The contract's own example: staging shares web-1 with production on the same slot ports, and its
    // known_hosts is not in the repository. Both are reported, and nothing else.
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        include_str!("fixtures/design-example.yaml"),
    );
    repo.commit("design example");
    let run = kube_free(&["validate", "--repo", repo.path_str()]);
    run.code(2)
        .stderr_has("ssh.known_hosts: no file \"ssh/known_hosts\" in the commit")
        .stderr_has("environments.staging.apps.api: port 8000 on host \"web-1\" is already taken");
    assert_eq!(run.stderr.lines().count(), 3, "{}", run.stderr);
    repo.write("ssh/known_hosts", "# keys go here\n");
    // `./` before a path in the repository is fine.
    repo.write(
        "kube-free.yaml",
        include_str!("fixtures/design-example.yaml").replace("known_hosts: ssh/known_hosts", "known_hosts: ./ssh/known_hosts").replace(
            "listen: \"0.0.0.0:8080\", strategy: blue-green }",
            "listen: \"0.0.0.0:8080\", strategy: blue-green, slots: { blue: 9000, green: 9001 } }",
        ),
    );
    repo.commit("fix it");
    kube_free(&["validate", "--repo", repo.path_str()]).code(0);
}

#[test]
fn environment_files_are_read() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", base_without_environments());
    repo.write("environments/production.yaml", PRODUCTION_FILE);
    repo.write("environments/README.md", "not an environment");
    repo.commit("files");
    kube_free(&["validate", "--repo", repo.path_str()])
        .code(0)
        .stdout_has("(1 environment,");
}

#[test]
fn uncommitted_changes_are_ignored_and_reported() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let commit = repo.commit("valid");
    // Break the work tree without committing: validation reads the commit, and says so.
    repo.write("kube-free.yaml", "version: [broken\n");
    repo.write("environments/new.yaml", "balancer: nope\n");
    let run = kube_free(&["validate", "--repo", repo.path_str()]);
    run.code(0)
        .stdout_has(&format!("at commit {commit}"))
        .stderr_has("warning: 2 uncommitted changes")
        .stderr_has("M kube-free.yaml")
        .stderr_has("?? environments/new.yaml");
    // Committing the breakage makes it count.
    repo.remove("environments/new.yaml");
    repo.commit("broken");
    kube_free(&["validate", "--repo", repo.path_str()])
        .code(2)
        .stderr_has("kube-free.yaml:2:1: version[1]: invalid YAML: while parsing a flow sequence")
        .stderr_lacks("warning");
}

#[test]
fn rev_selects_a_branch_a_tag_or_a_commit() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let good = repo.commit("good");
    repo.git(&["tag", "-a", "v1", "-m", "release 1"]);
    repo.git(&["tag", "light"]);
    repo.git(&["branch", "stable"]);
    repo.write(
        "kube-free.yaml",
        base_with("version: \"1.4.2\"", "version: \"1 4\""),
    );
    let bad = repo.commit("bad");
    kube_free(&["validate", "--repo", repo.path_str()])
        .code(2)
        .stderr_has(&bad);
    for rev in [
        "tags/v1",
        "refs/tags/v1",
        "tags/light",
        "stable",
        "refs/heads/stable",
        good.as_str(),
    ] {
        kube_free(&["validate", "--repo", repo.path_str(), "--rev", rev])
            .code(0)
            .stdout_has(&format!("at commit {good}"));
    }
    kube_free(&["validate", "--repo", repo.path_str(), "--rev", "HEAD"])
        .code(2)
        .stderr_has(&bad);
    let validate = |rev: &str| kube_free(&["validate", "--repo", repo.path_str(), "--rev", rev]);
    validate("no-such-branch")
        .code(2)
        .stderr_has("error: revision \"no-such-branch\" not found in ")
        .stderr_has("no branch refs/heads/no-such-branch, and it is not a full 40-digit commit id");
    // A tag is only taken when asked for.
    validate("v1")
        .code(2)
        .stderr_has("no branch refs/heads/v1")
        .stderr_has("there is a tag \"v1\": name it --rev tags/v1");
    validate("tags/stable")
        .code(2)
        .stderr_has("no tag refs/tags/stable");
    // Abbreviations and expressions could name another commit tomorrow.
    validate(&good[..10])
        .code(2)
        .stderr_has("abbreviated commit ids are not accepted");
    validate("HEAD~1")
        .code(2)
        .stderr_has("revision expressions are not accepted");
    // A local clone's remote-tracking branch, spelled out.
    repo.git(&["update-ref", "refs/remotes/origin/main", &good]);
    validate("origin/main")
        .code(2)
        .stderr_has("name it --rev refs/remotes/origin/main");
    validate("refs/remotes/origin/main")
        .code(0)
        .stdout_has(&format!("at commit {good}"));
    validate("refs/notes/x")
        .code(2)
        .stderr_has("only refs/heads/, refs/tags/ and refs/remotes/ names");
    // A full id of a commit the repository does not have.
    validate(&"0".repeat(40))
        .code(2)
        .stderr_has("no commit 0000000000");
}

#[test]
fn a_branch_is_never_shadowed_by_a_tag_of_the_same_name() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", BASE);
    let old = repo.commit("old");
    // A tag called `main` on an old commit: `--rev main` is still the branch.
    repo.git(&["tag", "main"]);
    repo.write("kube-free.yaml", base_with("\"1.4.2\"", "\"1.5.0\""));
    let new = repo.commit("new");
    kube_free(&["validate", "--repo", repo.path_str(), "--rev", "main"])
        .code(0)
        .stdout_has(&format!("at commit {new}"));
    kube_free(&["validate", "--repo", repo.path_str(), "--rev", "tags/main"])
        .code(0)
        .stdout_has(&format!("at commit {old}"));
}

#[test]
fn a_subdirectory_of_a_work_tree_is_a_desired_state_directory() {
    let repo = Repo::new();
    repo.write("deploy/kube-free.yaml", BASE);
    repo.write("kube-free.yaml", "not: [valid");
    let commit = repo.commit("nested");
    let dir = repo.path().join("deploy");
    kube_free(&["validate", "--repo", dir.to_str().unwrap()])
        .code(0)
        .stdout_has(&format!("at commit {commit}"));
    // Relative paths work from inside the work tree, too.
    kube_free_in(repo.path(), &["validate", "--repo", "deploy"]).code(0);
    // A directory that exists on disk but not in the commit.
    std::fs::create_dir(repo.path().join("later")).unwrap();
    std::fs::write(repo.path().join("later/kube-free.yaml"), BASE).unwrap();
    kube_free(&[
        "validate",
        "--repo",
        repo.path().join("later").to_str().unwrap(),
    ])
    .code(2)
    .stderr_has("directory \"later\" is not in commit");
}

#[test]
fn paths_that_are_not_repositories_are_bad_input() {
    kube_free(&["validate", "--repo", "/nonexistent/desired-state"])
        .code(2)
        .stderr_has("error: /nonexistent/desired-state: no such directory");
    let dir = tempfile::tempdir().unwrap();
    kube_free(&["validate", "--repo", dir.path().to_str().unwrap()])
        .code(2)
        .stderr_has("not inside a Git repository");
    let empty = Repo::new();
    kube_free(&["validate", "--repo", empty.path_str()])
        .code(2)
        .stderr_has("has no commits yet");
    empty.write("README.md", "nothing here");
    empty.commit("no desired state");
    kube_free(&["validate", "--repo", empty.path_str()])
        .code(2)
        .stderr_has("error: no kube-free.yaml in");
}

#[test]
fn git_urls_are_cloned_into_the_cache_and_fetched_again() {
    let upstream = Repo::new();
    upstream.write("kube-free.yaml", BASE);
    let first = upstream.commit("first");
    upstream.git(&["tag", "v1"]);
    let cache = tempfile::tempdir().unwrap();
    let url = format!("file://{}", upstream.path_str());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "validate",
            "--repo",
            &url,
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        kube_free(&args)
    };
    run(&[]).code(0).stdout_has(&format!("at commit {first}"));
    // One bare copy per URL (next to it, the `.flock` file that makes fetches take turns).
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(entries.len(), 1, "one cache entry per URL: {entries:?}");

    // A new commit upstream is fetched on the next run; tags and older commits stay reachable.
    upstream.write("kube-free.yaml", base_with("\"1.4.2\"", "\"1.5.0\""));
    let second = upstream.commit("second");
    run(&[]).code(0).stdout_has(&format!("at commit {second}"));
    run(&["--rev", "tags/v1"])
        .code(0)
        .stdout_has(&format!("at commit {first}"));
    // The remote's branch, fetched into the cache, is what a bare name means, even with a tag of
    // the same name upstream.
    upstream.git(&["tag", "main", &first]);
    run(&["--rev", "main"])
        .code(0)
        .stdout_has(&format!("at commit {second}"));
    run(&["--rev", "tags/main"])
        .code(0)
        .stdout_has(&format!("at commit {first}"));

    // The remote's default branch is followed, whatever the branch is called.
    upstream.git(&["checkout", "-q", "-b", "trunk"]);
    upstream.write("kube-free.yaml", base_with("\"1.4.2\"", "\"2.0.0\""));
    let third = upstream.commit("third");
    run(&[]).code(0).stdout_has(&format!("at commit {third}"));
    run(&["--rev", "HEAD"])
        .code(0)
        .stdout_has(&format!("at commit {third}"));
    run(&["--rev", "trunk"])
        .code(0)
        .stdout_has(&format!("at commit {third}"));

    kube_free(&[
        "validate",
        "--repo",
        "file:///nonexistent/repo.git",
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ])
    .code(1)
    .stderr_has("error: cannot fetch file:///nonexistent/repo.git");
}

#[test]
fn committed_schemas_are_current() {
    for (args, file) in [
        (&["schema"][..], "schema/kube-free.schema.json"),
        (
            &["schema", "--environment"][..],
            "schema/environment.schema.json",
        ),
    ] {
        let run = kube_free(args);
        run.code(0);
        let committed =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert!(
            run.stdout == committed,
            "{file} is stale: run `cargo run -- {} > {file}`",
            args.join(" ")
        );
        let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(
            schema["additionalProperties"], false,
            "unknown keys are errors in {file}"
        );
    }
}

/// Copies a directory tree (the examples are validated as their own repositories, so the test does
/// not depend on what is committed in this one).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn every_example_is_valid_and_names_its_schema() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("kube-free.yaml").exists() {
            continue;
        }
        let repo = Repo::new();
        copy_tree(&dir, repo.path());
        repo.commit("example");
        kube_free(&["validate", "--repo", repo.path_str()]).code(0);
        let mut yaml_files = vec![dir.join("kube-free.yaml")];
        if let Ok(envs) = std::fs::read_dir(dir.join("environments")) {
            yaml_files.extend(envs.map(|e| e.unwrap().path()));
        }
        for file in yaml_files {
            let text = std::fs::read_to_string(&file).unwrap();
            let schema = if file.ends_with("kube-free.yaml") {
                "kube-free.schema.json"
            } else {
                "environment.schema.json"
            };
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("# yaml-language-server: $schema=") && first.ends_with(schema),
                "{} does not start with the modeline for {schema}",
                file.display()
            );
            let target = file
                .parent()
                .unwrap()
                .join(first.rsplit('=').next().unwrap());
            assert!(
                target.exists(),
                "{}: modeline points at a missing file",
                file.display()
            );
        }
        checked.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for needed in ["blue-green", "canary", "quickstart", "rolling"] {
        assert!(
            checked.iter().any(|c| c == needed),
            "examples/{needed} is missing (found {checked:?})"
        );
    }
}

#[test]
fn help_explains_commands_and_exit_codes() {
    kube_free(&["--help"])
        .code(0)
        .stdout_has("Exit codes:")
        .stdout_has("validate")
        .stdout_has("schema");
    kube_free(&["validate", "--help"])
        .code(0)
        .stdout_has("--rev")
        .stdout_has("--output");
    kube_free(&["validate", "--output", "yaml"])
        .code(2)
        .stderr_has("invalid value 'yaml'");
}

/// A desired state on this machine only (so that nothing could reach another address even if a
/// check below regressed).
fn local_only(strategy: &str) -> String {
    format!(
        r#"version: 1
hosts:
  here: {{ transport: local, state_dir: /tmp/kube-free-refusal-test/state }}
balancers:
  edge: {{ kind: haproxy, host: here, admin_socket: /tmp/kube-free-refusal-test/none.sock, config_file: /tmp/kube-free-refusal-test/kf.cfg }}
apps:
  api:
    runtime: {{ kind: process, command: "/bin/false {{port}}" }}
    slots: {{ blue: 18901, green: 18902 }}
environments:
  prod:
    balancer: edge
    hosts: [here]
    apps:
      api: {{ version: "1", listen: "127.0.0.1:18900", strategy: {strategy} }}
"#
    )
}

#[test]
fn an_environment_and_an_app_it_does_not_deploy_are_bad_input() {
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        local_only("blue-green").replace(
            "environments:",
            "  web:\n    runtime: { kind: process, command: \"/bin/false {port}\" }\n    slots: { blue: 18903, green: 18904 }\nenvironments:",
        ),
    );
    repo.commit("web is declared, deployed nowhere");
    for cmd in [&["plan"][..], &["reconcile", "--once"][..], &["status"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["--repo", repo.path_str(), "--env", "prod", "--app", "web"]);
        kube_free(&args)
            .code(2)
            .stderr_has("error: app \"web\" is not in environment \"prod\" (it has: api)");
    }
}

#[test]
fn plan_reconcile_and_gates_refuse_unknown_names_before_touching_any_host() {
    let repo = Repo::new();
    repo.write(
        "kube-free.yaml",
        local_only("{ canary: { steps: [{ weight: 10 }] } }"),
    );
    repo.commit("canary");
    for cmd in [&["plan"][..], &["reconcile", "--once"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["--repo", repo.path_str()]);
        let mut scoped = args.clone();
        scoped.extend(["--env", "staging"]);
        kube_free(&scoped)
            .code(2)
            .stderr_has("error: unknown environment \"staging\"");
        let mut scoped = args.clone();
        scoped.extend(["--app", "web"]);
        kube_free(&scoped)
            .code(2)
            .stderr_has("error: unknown app \"web\"");
    }
    for gate in ["promote", "abort", "retry"] {
        kube_free(&[gate, "web", "--env", "prod", "--repo", repo.path_str()])
            .code(2)
            .stderr_has("error: unknown app \"web\"");
        kube_free(&[gate, "api", "--env", "staging", "--repo", repo.path_str()])
            .code(2)
            .stderr_has("error: unknown environment \"staging\"");
    }
    kube_free(&[
        "reconcile",
        "--once",
        "--max-wait",
        "soon",
        "--repo",
        repo.path_str(),
    ])
    .code(2)
    .stderr_has("invalid duration");
    assert!(
        !std::path::Path::new("/tmp/kube-free-refusal-test").exists(),
        "nothing was written"
    );
}

#[test]
fn an_unreachable_admin_socket_stops_the_run_before_anything_changes() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", local_only("blue-green"));
    repo.commit("blue-green");
    kube_free(&["reconcile", "--once", "--repo", repo.path_str()])
        .code(1)
        .stderr_has("cannot connect to /tmp/kube-free-refusal-test/none.sock");
    kube_free(&["plan", "--repo", repo.path_str()])
        .code(1)
        .stderr_has("none.sock");
    let _ = std::fs::remove_dir_all("/tmp/kube-free-refusal-test");
}

#[test]
fn a_closed_stderr_does_not_crash_a_run() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", local_only("blue-green"));
    repo.commit("blue-green");
    let mut child = std::process::Command::new(bin())
        .args(["plan", "--repo", repo.path_str()])
        .env("KUBE_FREE_LOG", "kube_free=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // nobody reads what it logs
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "the run's own error (no admin socket), not a panic (101)"
    );
    let _ = std::fs::remove_dir_all("/tmp/kube-free-refusal-test");
}
