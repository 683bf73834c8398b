//! `reconcile --once` as a person at a terminal sees it, and as CI does without one: the demo app on
//! this machine behind a HAProxy of the test's own (`LocalStage`), deployed from a real Git
//! repository. In a terminal (tmux, read with `capture-pane`), the live view shows a canary's pause
//! running with its elapsed time, the canary's weight and its countdown, then every step done; log
//! lines asked for with KUBE_FREE_LOG come above the steps, neither garbling the other; a version
//! that fails shows its failed step, the steps not run and the cleanup's steps, then the error. On
//! a pipe nothing is drawn, and `--quiet` prints the result line (or the error) alone, in a
//! terminal too. Then `completions` for bash, zsh and fish.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its socket in a temporary directory), with one window of
/// 200×50 that runs one command and then says how it exited.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Runs `kube-free ARGS` in a new tmux server, with `env` and as `kube_free_command` does
    /// (no inherited KUBE_FREE_* settings, a private cache, no Git configuration), in a terminal
    /// that says it is xterm-256color. Its last line says `exit CODE`.
    fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Tmux {
        require_tools(&["tmux"]);
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = dir.join(format!("tmux-{n}"));
        let mut line = String::from("env -u KUBE_FREE_REPO -u KUBE_FREE_LOG -u KUBE_FREE_VERIFY_SSH_SIGNERS -u KUBE_FREE_VERIFY_GPG_KEYRING -u NO_COLOR");
        let cache = std::env::temp_dir().join("kube-free-test-cache");
        let cache = cache.display().to_string();
        for (k, v) in [
            ("KUBE_FREE_CACHE_DIR", cache.as_str()),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("TERM", "xterm-256color"),
        ]
        .iter()
        .chain(env)
        {
            line.push_str(&format!(" {k}={}", quoted(v)));
        }
        line.push_str(&format!(" {}", quoted(&bin().display().to_string())));
        for a in args {
            line.push_str(&format!(" {}", quoted(a)));
        }
        line.push_str("; echo \"exit $?\"; sleep 600");
        let tmux = Tmux { socket };
        tmux.command(&[
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-s",
            "kf",
            &line,
        ]);
        tmux
    }

    fn command(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as it is now (text, without colours, each line without its trailing spaces),
    /// with the lines scrolled out of it. Lines are read as the terminal has them: indicatif fills
    /// each live line up to the last column, and lets the terminal wrap to the next.
    fn screen(&self) -> String {
        let screen = self.command(&["capture-pane", "-p", "-S", "-", "-t", "kf"]);
        screen
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect()
    }

    /// Reads the screen until `found` says it is there (at most `limit`); that screen.
    fn wait_for(&self, what: &str, limit: Duration, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if found(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the command's end; its exit code and the screen.
    fn exit(&self) -> (i32, String) {
        let screen = self.wait_for("exit", Duration::from_secs(120), |s| {
            s.lines().any(|l| l.starts_with("exit "))
        });
        let code = screen
            .lines()
            .find_map(|l| l.strip_prefix("exit "))
            .and_then(|c| c.trim().parse().ok())
            .expect("an exit code");
        (code, screen)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// `text` quoted for sh.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

const SPINNER: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

/// The lines of `screen` that show a step done: `✓`, its time, its number and `action`.
fn done_lines<'a>(screen: &'a str, action: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.starts_with('✓') && l.contains(action))
        .collect()
}

/// How many steps `kube-free plan` finds now.
fn steps_planned(s: &LocalStage) -> usize {
    let out = s.run(&["plan", "--output", "json"]);
    out.code(10);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    plan["steps"].as_array().unwrap().len()
}

#[test]
fn a_terminal_shows_the_steps_live_a_pipe_and_quiet_get_the_result_alone() {
    let s = LocalStage::new(&["flock", "sha256sum", "tmux"]);

    // Without a terminal, nothing is drawn: the result on stdout, and nothing on stderr.
    let c1 = s.commit("1.0.0", "blue-green");
    let out = s.run(&["reconcile", "--once"]);
    out.code(0);
    assert!(
        out.stdout
            .starts_with(&format!("converged to commit {c1} in "))
            && out.stdout.ends_with(" steps\n")
            && out.stdout.lines().count() == 1,
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "");

    // In a terminal: a canary of 2.0 at 50% with a pause of 4 s.
    let c2 = s.commit(
        "2.0.0",
        "{ canary: { steps: [{ weight: 50, pause: 4s }] } }",
    );
    let steps = steps_planned(&s);
    let repo = s.repo.path_str();
    let tmux = Tmux::run(s.dir.path(), &["reconcile", "--once", "--repo", repo], &[]);
    // The pause runs: its spinner and elapsed time; the canary's weight and its countdown.
    let pause = "canary step 0: pause local/demo for 4s, then analyse";
    // Read until the pause has run long enough for its time to have been redrawn.
    let live = tmux.wait_for("running pause", Duration::from_secs(60), |screen| {
        screen.lines().any(|l| {
            l.contains(pause)
                && l.chars().next().is_some_and(|c| SPINNER.contains(c))
                && !l.contains(" 0.0s  ")
        }) && screen.contains("canary local/demo 2.0.0: 50% of the traffic, its pause ends in ")
    });
    let running = live.lines().find(|l| l.contains(pause)).unwrap();
    let time = running.chars().skip(1).collect::<String>();
    let time = time.split_whitespace().next().unwrap();
    assert!(
        time.ends_with('s') && time[..time.len() - 1].parse::<f64>().is_ok(),
        "the running pause shows how long it has run: {running:?}\n{live}"
    );
    assert!(
        live.contains(&format!("reconcile at commit {}: {steps} steps", &c2[..12])),
        "{live}"
    );
    // Steps before the pause are done, the weigh among them; steps after it wait.
    assert_eq!(
        done_lines(&live, "canary step 0: local/demo 2.0.0 gets 50% on edge").len(),
        1,
        "{live}"
    );
    assert!(
        live.lines()
            .any(|l| l.starts_with('·') && l.contains("stop local/demo 1.0.0")),
        "{live}"
    );

    let (code, screen) = tmux.exit();
    assert_eq!(code, 0, "{screen}");
    drop(tmux);
    // Every step done, each shown once, then the result.
    let marked: Vec<&str> = screen
        .lines()
        .filter(|l| {
            l.chars()
                .next()
                .is_some_and(|c| "✓✗‖·".contains(c) || SPINNER.contains(c))
        })
        .collect();
    assert_eq!(marked.len(), steps, "{screen}");
    assert!(marked.iter().all(|l| l.starts_with('✓')), "{screen}");
    assert_eq!(done_lines(&screen, pause).len(), 1, "{screen}");
    for (i, line) in marked.iter().enumerate() {
        assert!(
            line.contains(&format!(" {}. ", i + 1)),
            "steps in order: {line:?}\n{screen}"
        );
    }
    // The canary's line went with the shift that gave it all of the traffic.
    assert!(!screen.contains("canary local/demo 2.0.0: "), "{screen}");
    assert!(
        screen.contains(&format!("converged to commit {c2} in {steps} steps")),
        "{screen}"
    );
    assert_eq!(s.serving(), "2.0.0");

    // Logs asked for come above the steps, each line whole.
    s.commit("3.0.0", "blue-green");
    let steps = steps_planned(&s);
    let tmux = Tmux::run(
        s.dir.path(),
        &["reconcile", "--once", "--repo", repo],
        &[("KUBE_FREE_LOG", "kube_free::execute=info")],
    );
    let (code, screen) = tmux.exit();
    assert_eq!(code, 0, "{screen}");
    drop(tmux);
    let ticks = screen.lines().filter(|l| l.starts_with('✓')).count();
    assert_eq!(ticks, steps, "{screen}");
    let logs: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains(" INFO kube_free::execute: "))
        .collect();
    assert_eq!(
        logs.len(),
        2 * steps,
        "a start and an end per step\n{screen}"
    );
    for l in &logs {
        assert!(
            l.contains("step started step=") || l.contains("step done step="),
            "{l:?}\n{screen}"
        );
    }

    // --quiet: the result alone, on a pipe …
    let c4 = s.commit("4.0.0", "blue-green");
    let steps = steps_planned(&s);
    let out = s.run(&["reconcile", "--once", "--quiet"]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!("converged to commit {c4} in {steps} steps\n")
    );
    assert_eq!(out.stderr, "");
    let out = s.run(&["reconcile", "--once", "-q"]);
    out.code(0);
    assert_eq!(
        out.stdout,
        format!("in sync at commit {c4}: nothing to do\n")
    );
    assert_eq!(out.stderr, "");

    // … and in a terminal.
    let c5 = s.commit("5.0.0", "blue-green");
    let steps = steps_planned(&s);
    let tmux = Tmux::run(
        s.dir.path(),
        &["reconcile", "--once", "--quiet", "--repo", repo],
        &[],
    );
    let (code, screen) = tmux.exit();
    assert_eq!(code, 0, "{screen}");
    let shown: Vec<&str> = screen.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        shown,
        [
            format!("converged to commit {c5} in {steps} steps"),
            "exit 0".to_owned()
        ],
        "{screen}"
    );
    drop(tmux);

    // In sync, in a terminal: the opening line goes, and the result stays alone.
    let tmux = Tmux::run(s.dir.path(), &["reconcile", "--once", "--repo", repo], &[]);
    let (code, screen) = tmux.exit();
    assert_eq!(code, 0, "{screen}");
    let shown: Vec<&str> = screen.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        shown,
        [
            format!("in sync at commit {c5}: nothing to do"),
            "exit 0".to_owned()
        ],
        "{screen}"
    );
    drop(tmux);

    // A version that never gets ready (its probe gives up after 2 s). With --quiet, on a pipe:
    // the error alone, without the cleanup's warnings.
    let never_ready = |version: &str| {
        let yaml = s
            .yaml(version, "blue-green")
            .replace(
                "--version {version}\"",
                "--version {version} --never-ready\"",
            )
            .replace("deadline: 20s", "deadline: 2s");
        s.repo.write("kube-free.yaml", yaml);
        s.repo.commit(&format!("demo {version}, never ready"))
    };
    never_ready("6.0.0");
    let out = s.run(&["reconcile", "--once", "--quiet"]);
    out.code(1);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: step ")
            && out
                .stderr
                .contains(") failed: not ready within the probe deadline of 2s"),
        "{}",
        out.stderr
    );

    // In a terminal: the failed step, those not run, the cleanup's own steps, then the error.
    never_ready("7.0.0");
    let tmux = Tmux::run(s.dir.path(), &["reconcile", "--once", "--repo", repo], &[]);
    let (code, screen) = tmux.exit();
    assert_eq!(code, 1, "{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    let at = |what: &str, found: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| found(l))
            .unwrap_or_else(|| panic!("no {what}:\n{screen}"))
    };
    let failed = at("failed probe", &|l| {
        l.starts_with('✗') && l.contains(". probe local/demo slot ") && l.ends_with(" (failed)")
    });
    let not_run = at("step not run", &|l| {
        l.starts_with('·') && l.contains(". enable kf_local_demo/") && l.ends_with(" (not run)")
    });
    let cleanup = at("cleanup", &|l| {
        l == "cleaning up the rollout of local/demo: 1 step"
    });
    let stopped = at("cleanup's stop", &|l| {
        l.starts_with('✓') && l.contains("1. stop local/demo 7.0.0 in slot ")
    });
    let error = at("error", &|l| {
        l.starts_with("error: step 2 (probe local/demo slot ")
    });
    assert!(
        failed < not_run && not_run < cleanup && cleanup < stopped && stopped < error,
        "{screen}"
    );
    assert!(
        screen.contains("7.0.0 is quarantined until its desired state changes"),
        "{screen}"
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let out = kube_free(&["completions", "bash"]);
    out.code(0);
    let script = out.stdout;
    for word in ["reconcile", "completions", "--max-wait", "--quiet"] {
        assert!(script.contains(word), "{word} is not completed:\n{script}");
    }
    assert!(
        script.lines().any(|l| {
            let l = l.trim();
            l.starts_with("complete -F ") && l.ends_with(" kube-free")
        }),
        "no completion defined for kube-free:\n{script}"
    );
    // A valid bash script, which defines the completion when sourced.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kube-free.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p kube-free",
            quoted(&file.display().to_string())
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&sourced.stdout).contains("kube-free"),
        "sourcing defines no completion for kube-free: {}",
        String::from_utf8_lossy(&sourced.stderr)
    );

    for (shell, checker) in [("zsh", "zsh"), ("fish", "fish")] {
        let out = kube_free(&["completions", shell]);
        out.code(0);
        assert!(out.stdout.contains("reconcile"), "{shell}:\n{}", out.stdout);
        // Checked by the shell itself where it is installed (the tests do not install it).
        let installed = Command::new("sh")
            .args(["-c", &format!("command -v {checker}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if installed {
            let file = dir.path().join(format!("kube-free.{shell}"));
            std::fs::write(&file, &out.stdout).unwrap();
            let check = Command::new(checker).arg("-n").arg(&file).output().unwrap();
            assert!(
                check.status.success(),
                "{checker} -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    kube_free(&["completions", "tcsh"]).code(2);
    kube_free(&["--help"]).code(0).stdout_has("completions");
}
