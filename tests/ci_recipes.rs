//! The CI recipes in `examples/ci/` (GitHub Actions, GitLab CI, Jenkins; explained in
//! `docs/ci.md`): the two YAML files pass their vendor's schema as vendored in check-jsonschema
//! (from PyPI, installed once into a virtualenv under the tests' temporary directory), and a copy
//! with an unknown key is refused; every `kube-free ...` command line in the recipes (and in
//! `docs/ci.md`'s code blocks) parses with kube-free's own CLI parser, so the recipes cannot drift
//! from the CLI; the GitHub and GitLab plan and reconcile scripts, run by bash against a stand-in
//! `kube-free` that exits with each code, pass, fail, wait or retry as `docs/ci.md` says; and the
//! rest of what it promises holds (plan.json kept on failure too, one deploy at a time, full
//! history, no `--allow-rewind`). The Jenkinsfile is checked for its brackets and its steps only.

use clap::Parser;
use kube_free::cli::{Cli, Command, PlanOutput};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

const GITHUB: &str = "examples/ci/github-actions.yml";
const GITLAB: &str = "examples/ci/gitlab-ci.yml";
const JENKINS: &str = "examples/ci/Jenkinsfile";
const DOC: &str = "docs/ci.md";

/// The check-jsonschema release the schemas are taken from (its vendored copies change with it).
const CHECK_JSONSCHEMA: &str = "check-jsonschema==0.39.0";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn run(cmd: &mut Process, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {cmd:?}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `check-jsonschema` in a virtualenv under `CARGO_TARGET_TMPDIR`, made and filled from PyPI by the
/// first test that needs it; the others wait for it on a lock file (tests run in parallel
/// processes under nextest).
fn check_jsonschema() -> PathBuf {
    use std::os::unix::io::AsRawFd;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join("ci-recipes-venv");
    let exe = venv.join("bin/check-jsonschema");
    let marker = venv.join("kube-free-installed");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(tmp.join("ci-recipes-venv.lock"))
        .expect("lock file opens");
    // SAFETY: flock on a valid, owned descriptor; released when `lock` is dropped.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    if exe.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(CHECK_JSONSCHEMA) {
        return exe;
    }
    // Absent, half made by a killed run, or of another version: made again.
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Process::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (on Debian: apt-get install -y python3-venv)",
    );
    run(
        Process::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(["--disable-pip-version-check", CHECK_JSONSCHEMA])
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        &format!("pip install {CHECK_JSONSCHEMA}"),
    );
    std::fs::write(&marker, CHECK_JSONSCHEMA).unwrap();
    drop(lock);
    exe
}

/// `check-jsonschema --builtin-schema SCHEMA` on `text` written to a temporary file named like
/// `path`: whether it passed, and all it printed.
fn schema_check(schema: &str, path: &str, text: &str) -> (bool, String) {
    let exe = check_jsonschema();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(Path::new(path).file_name().unwrap());
    std::fs::write(&file, text).unwrap();
    let out = Process::new(&exe)
        .args(["--builtin-schema", schema])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

fn assert_passes(schema: &str, path: &str, text: &str) {
    let (ok, all) = schema_check(schema, path, text);
    assert!(
        ok,
        "{path} fails check-jsonschema --builtin-schema {schema}:\n{all}"
    );
    assert!(all.contains("ok -- validation done"), "{schema}: {all}");
}

/// `text` with `extra` added after the first line `after`, which must be there.
fn with_line_after(text: &str, after: &str, extra: &str) -> String {
    let at = text
        .find(&format!("{after}\n"))
        .unwrap_or_else(|| panic!("no line {after:?}"))
        + after.len()
        + 1;
    format!("{}{extra}\n{}", &text[..at], &text[at..])
}

fn assert_refused(schema: &str, path: &str, broken: &str, unknown: &str) {
    let (ok, all) = schema_check(schema, path, broken);
    assert!(
        !ok,
        "{schema} accepted a job with the unknown key {unknown}:\n{all}"
    );
    assert!(
        all.contains(unknown),
        "{schema}: the error does not name {unknown}:\n{all}"
    );
}

#[test]
fn github_actions_recipe_passes_the_workflow_schema_and_a_broken_copy_does_not() {
    let text = read(GITHUB);
    assert_passes("vendor.github-workflows", GITHUB, &text);
    // Every job has a timeout-minutes (a hung ssh must not hold a runner for six hours).
    assert_passes("custom.github-workflows-require-timeout", GITHUB, &text);
    let broken = with_line_after(&text, "    timeout-minutes: 60", "    timeout-minute: 60");
    assert_refused("vendor.github-workflows", GITHUB, &broken, "timeout-minute");
}

#[test]
fn gitlab_recipe_passes_the_ci_schema_and_a_broken_copy_does_not() {
    let text = read(GITLAB);
    assert_passes("vendor.gitlab-ci", GITLAB, &text);
    let broken = with_line_after(&text, "  interruptible: false", "  interruptable: false");
    assert_refused("vendor.gitlab-ci", GITLAB, &broken, "interruptable");
}

/// Lines with their `\` continuations joined, each with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let (n, mut joined) = current.take().unwrap_or((i + 1, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                current = Some((n, joined));
            }
            None => {
                joined.push_str(line);
                lines.push((n, joined));
            }
        }
    }
    lines.extend(current);
    lines
}

/// Whether a command starts right after `before` (the text before it on its line): at the start of
/// a line, a YAML `run:`, `script:` or list item, after a shell operator or keyword, a prompt
/// (`$ `), or at the start of the script string of a Jenkins `sh`.
fn command_position(before: &str) -> bool {
    let before = before.trim_end();
    let unquoted = before.trim_end_matches(['\'', '"']);
    if unquoted.len() != before.len() {
        let last = unquoted.split_whitespace().last().unwrap_or("");
        return matches!(last, "sh" | "sh(" | "script:");
    }
    match before.split_whitespace().last() {
        None => true,
        Some(last) => {
            matches!(
                last,
                "-" | "run:" | "script:" | "||" | "&&" | "|" | ";" | "then" | "do" | "else" | "$"
            ) || last.ends_with(';')
                || last.ends_with("$(")
        }
    }
}

/// The words of a command after `kube-free`, up to the first shell operator, redirection, comment
/// or the quote that closes a Jenkins `sh` script; `"…"`/`'…'` around a whole word are removed.
fn command_words(rest: &str) -> Vec<String> {
    let mut words = Vec::new();
    for word in rest.split_whitespace() {
        if matches!(word, "||" | "&&" | "|" | ";" | "&")
            || word.starts_with(['>', '<', '#', '|', '&', ';', ')', '`'])
            || word.starts_with("2>")
            || word.starts_with("1>")
        {
            break;
        }
        // `word;` ends the command after this word.
        let (word, last) = match word.strip_suffix(';') {
            Some(word) => (word, true),
            None => (word, false),
        };
        let quoted = word.len() >= 2
            && (word.starts_with('"') && word.ends_with('"')
                || word.starts_with('\'') && word.ends_with('\''));
        if quoted {
            words.push(word[1..word.len() - 1].to_owned());
        } else {
            // A quote (and parenthesis) at the end closes the script string around the command.
            let end = word.trim_end_matches([')', '\'', '"']);
            if !end.is_empty() {
                words.push(end.to_owned());
            }
            if end.len() != word.len() {
                break;
            }
        }
        if last {
            break;
        }
    }
    words
}

/// Every `kube-free ...` command in `text` that is not in a comment: (line, words after `kube-free`).
fn commands(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    for (n, line) in logical_lines(text) {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with("//") {
            continue;
        }
        for (at, _) in line.match_indices("kube-free") {
            let before = &line[..at];
            let rest = &line[at + "kube-free".len()..];
            let joined_before = before
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || "-_./".contains(c));
            let joined_after = rest.chars().next().is_some_and(|c| !c.is_whitespace());
            if joined_before || joined_after || !command_position(before) {
                continue;
            }
            found.push((n, command_words(rest)));
        }
    }
    found
}

/// The code inside the fenced blocks of a Markdown text, other lines blanked (numbers kept).
fn fenced_code(markdown: &str) -> String {
    let mut inside = false;
    let mut code = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            code.push('\n');
        } else if inside {
            code.push_str(line);
            code.push('\n');
        } else {
            code.push('\n');
        }
    }
    code
}

/// Parses each command with the CLI's parser (`--help`/`--version` count as parsed): the parsed
/// commands, or an error naming the file, the line and clap's error.
fn parse_all(path: &str, commands: &[(usize, Vec<String>)]) -> Result<Vec<(usize, Cli)>, String> {
    let mut parsed = Vec::new();
    for (n, words) in commands {
        let argv = std::iter::once("kube-free".to_owned()).chain(words.iter().cloned());
        match Cli::try_parse_from(argv) {
            Ok(cli) => parsed.push((*n, cli)),
            Err(e)
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) => {}
            Err(e) => {
                return Err(format!(
                    "{path}:{n}: `kube-free {}` does not parse:\n{e}",
                    words.join(" ")
                ))
            }
        }
    }
    Ok(parsed)
}

#[test]
fn every_kube_free_command_in_the_recipes_parses_with_the_cli() {
    for path in [GITHUB, GITLAB, JENKINS] {
        let found = commands(&read(path));
        let listing: Vec<String> = found
            .iter()
            .map(|(n, w)| format!("{path}:{n}: kube-free {}", w.join(" ")))
            .collect();
        eprintln!("{}", listing.join("\n"));
        let parsed = parse_all(path, &found).unwrap_or_else(|e| panic!("{e}"));
        let (mut validate, mut plan, mut reconcile) = (0, 0, 0);
        for (n, cli) in &parsed {
            match &cli.command {
                Command::Validate(_) => validate += 1,
                Command::Plan(args) => {
                    plan += 1;
                    assert_eq!(
                        args.output,
                        PlanOutput::Json,
                        "{path}:{n}: plan --output json"
                    );
                    assert!(!args.allow_rewind, "{path}:{n}: --allow-rewind in CI");
                }
                Command::Reconcile(args) => {
                    reconcile += 1;
                    assert!(args.once, "{path}:{n}");
                    assert_eq!(
                        args.max_wait,
                        Some(Duration::from_secs(600)),
                        "{path}:{n}: --max-wait 10m"
                    );
                    assert!(!args.allow_rewind, "{path}:{n}: --allow-rewind in CI");
                }
                other => panic!("{path}:{n}: unexpected command in a recipe: {other:?}"),
            }
        }
        assert!(
            validate >= 1 && plan >= 1 && reconcile >= 1,
            "{path}: expected validate, plan and reconcile; found {validate}, {plan}, {reconcile}:\n{}",
            listing.join("\n")
        );
        assert!(
            !read(path).contains("--allow-rewind"),
            "{path} names --allow-rewind"
        );
    }
    // The doc's examples parse too (any command there).
    let doc = commands(&fenced_code(&read(DOC)));
    assert!(
        !doc.is_empty(),
        "{DOC}: no kube-free command in a code block"
    );
    parse_all(DOC, &doc).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_command_scan_finds_commands_and_skips_prose() {
    let text = "\
run: kube-free validate --repo .
  kube-free plan --repo . \\
    --output json > plan.json || rc=$?
# kube-free is not a command in a comment
echo \"::notice::kube-free is waiting\"
sh 'kube-free --version'
rc = sh(returnStatus: true, script: 'kube-free plan --output dot | dot -Tsvg')
cargo install --locked --git \"$URL\" kube-free
- kube-free reconcile --once --max-wait \"10m\"; echo done
";
    let found: Vec<(usize, String)> = commands(text)
        .into_iter()
        .map(|(n, w)| (n, w.join(" ")))
        .collect();
    let expect = [
        (1, "validate --repo ."),
        (2, "plan --repo . --output json"),
        (6, "--version"),
        (7, "plan --output dot"),
        (9, "reconcile --once --max-wait 10m"),
    ];
    let expect: Vec<(usize, String)> = expect.iter().map(|(n, s)| (*n, s.to_string())).collect();
    assert_eq!(found, expect);
    // A flag the CLI does not have is caught.
    let bad = commands("kube-free reconcile --once --max-wiat 10m");
    let err = parse_all("test", &bad).expect_err("--max-wiat parsed");
    assert!(err.contains("--max-wiat"), "{err}");
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn steps_using<'a>(job: &'a Yaml, action: &str) -> Vec<&'a Yaml> {
    job["steps"]
        .as_vec()
        .expect("steps")
        .iter()
        .filter(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(action)))
        .collect()
}

#[test]
fn the_recipes_keep_what_the_doc_promises() {
    // GitHub: pull requests validate without secrets; main, the schedule and a manual run deploy
    // one at a time, from the full history, and keep plan.json whatever happens.
    let gh = yaml(GITHUB);
    for trigger in ["pull_request", "push", "schedule", "workflow_dispatch"] {
        assert!(!gh["on"][trigger].is_badvalue(), "{GITHUB}: on.{trigger}");
    }
    assert_eq!(gh["on"]["push"]["branches"][0].as_str(), Some("main"));
    let validate = &gh["jobs"]["validate"];
    assert!(!read(GITHUB)
        .split("\n  deploy:")
        .next()
        .unwrap()
        .contains("secrets."));
    assert_eq!(
        validate["if"].as_str(),
        Some("github.event_name == 'pull_request'")
    );
    let deploy = &gh["jobs"]["deploy"];
    assert_eq!(
        deploy["if"].as_str(),
        Some("github.event_name != 'pull_request' && github.ref == 'refs/heads/main'")
    );
    assert_eq!(
        deploy["concurrency"]["cancel-in-progress"].as_bool(),
        Some(false)
    );
    assert!(deploy["concurrency"]["group"]
        .as_str()
        .is_some_and(|g| g.contains("github.ref")));
    let checkout = steps_using(deploy, "actions/checkout@");
    assert_eq!(checkout.len(), 1);
    assert_eq!(checkout[0]["with"]["fetch-depth"].as_i64(), Some(0));
    let upload = steps_using(deploy, "actions/upload-artifact@");
    assert_eq!(upload.len(), 1);
    assert_eq!(upload[0]["if"].as_str(), Some("always()"));
    assert_eq!(upload[0]["with"]["path"].as_str(), Some("plan.json"));

    // GitLab: the same with rules, a resource group, artifacts when always, exit 3 allowed.
    let gl = yaml(GITLAB);
    assert_eq!(
        gl["validate"]["rules"][0]["if"].as_str(),
        Some("$CI_PIPELINE_SOURCE == \"merge_request_event\"")
    );
    let deploy = &gl["deploy"];
    assert_eq!(
        deploy["rules"][0]["if"].as_str(),
        Some("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH")
    );
    assert!(deploy["resource_group"].as_str().is_some());
    assert_eq!(deploy["interruptible"].as_bool(), Some(false));
    assert_eq!(deploy["variables"]["GIT_DEPTH"].as_str(), Some("0"));
    assert_eq!(deploy["artifacts"]["when"].as_str(), Some("always"));
    assert_eq!(deploy["artifacts"]["paths"][0].as_str(), Some("plan.json"));
    let allowed: Vec<i64> = deploy["allow_failure"]["exit_codes"]
        .as_vec()
        .expect("allow_failure.exit_codes")
        .iter()
        .filter_map(Yaml::as_i64)
        .collect();
    assert_eq!(allowed, [3], "only 'waiting' is allowed to fail");

    // The Jenkinsfile's Groovy cannot run here: it has what the doc describes.
    let jenkins = read(JENKINS);
    for needle in [
        "disableConcurrentBuilds()",
        "lock(resource:",
        "sh(returnStatus: true",
        "archiveArtifacts artifacts: 'plan.json', allowEmptyArchive: true",
        "rc == 10",
        "rc == 3",
        "unstable(",
        "if (rc != 4)",
        "when { changeRequest() }",
        "when { branch 'main' }",
    ] {
        assert!(jenkins.contains(needle), "{JENKINS}: no {needle:?}");
    }
}

/// Brackets of Groovy code, outside strings and comments: balanced, or the line of the first one
/// that is not.
fn groovy_brackets(text: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum In {
        Code,
        LineComment,
        BlockComment,
        Str(&'static str),
    }
    let chars: Vec<char> = text.chars().collect();
    let mut line = 1;
    let mut stack: Vec<(char, usize)> = Vec::new();
    let mut state = In::Code;
    let mut i = 0;
    let starts = |i: usize, s: &str| chars[i..].iter().take(s.len()).copied().eq(s.chars());
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
        }
        match state {
            In::LineComment if c == '\n' => state = In::Code,
            In::BlockComment if starts(i, "*/") => {
                state = In::Code;
                i += 1;
            }
            In::Str(_) if c == '\\' => i += 1,
            In::Str(q) if starts(i, q) => {
                state = In::Code;
                i += q.len() - 1;
            }
            In::Code => {
                if starts(i, "//") {
                    state = In::LineComment;
                } else if starts(i, "/*") {
                    state = In::BlockComment;
                } else if let Some(q) = ["'''", "\"\"\"", "'", "\""]
                    .into_iter()
                    .find(|q| starts(i, q))
                {
                    state = In::Str(q);
                    i += q.len() - 1;
                } else if "({[".contains(c) {
                    stack.push((c, line));
                } else if let Some(open) = match c {
                    ')' => Some('('),
                    '}' => Some('{'),
                    ']' => Some('['),
                    _ => None,
                } {
                    match stack.pop() {
                        Some((o, _)) if o == open => {}
                        Some((o, l)) => {
                            return Err(format!("line {line}: {c} closes {o} of line {l}"))
                        }
                        None => return Err(format!("line {line}: {c} closes nothing")),
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    if state != In::Code && state != In::LineComment {
        return Err("a string or comment is not closed".to_owned());
    }
    match stack.pop() {
        Some((o, l)) => Err(format!("{o} of line {l} is not closed")),
        None => Ok(()),
    }
}

#[test]
fn the_jenkinsfile_brackets_are_balanced() {
    groovy_brackets(&read(JENKINS)).unwrap_or_else(|e| panic!("{JENKINS}: {e}"));
    // The check itself: a missing brace is found.
    let broken = read(JENKINS).replacen("disableConcurrentBuilds()", "disableConcurrentBuilds(", 1);
    assert!(groovy_brackets(&broken).is_err());
    assert!(groovy_brackets("a { 'x}' /* } */ \"${y}\" }").is_ok());
}

/// A directory with stand-ins for `kube-free` and `sleep` to run a recipe's own shell script
/// against: `kube-free` exits with the codes of `codes` in turn (the last one from then on) and
/// logs its arguments, `sleep` only logs.
struct Stubs {
    dir: tempfile::TempDir,
}

impl Stubs {
    fn new() -> Stubs {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let kube_free = r#"#!/bin/sh
n=$(($(cat "$STUB_DIR/calls" 2>/dev/null || echo 0) + 1))
echo "$n" > "$STUB_DIR/calls"
echo "$*" >> "$STUB_DIR/args"
set -- $STUB_CODES
[ "$n" -le "$#" ] || n=$#
eval "exit \${$n}"
"#;
        let sleep = "#!/bin/sh\necho \"$*\" >> \"$STUB_DIR/sleeps\"\n";
        for (name, text) in [("kube-free", kube_free), ("sleep", sleep)] {
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Stubs { dir }
    }

    /// Runs `script` with `shell` (the CI system's own options) in a fresh directory, kube-free
    /// exiting with `codes`: the script's exit code, kube-free's calls, the sleeps, and the step
    /// summary it wrote.
    fn run(&self, shell: &[&str], script: &str, codes: &str) -> (i32, Vec<String>, usize, String) {
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let summary = state.path().join("summary");
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        let out = Process::new(shell[0])
            .args(&shell[1..])
            .arg(script)
            .current_dir(work.path())
            .env("PATH", path)
            .env("STUB_DIR", state.path())
            .env("STUB_CODES", codes)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .output()
            .unwrap();
        let lines = |name: &str| -> Vec<String> {
            std::fs::read_to_string(state.path().join(name))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        if script.contains("> plan.json") {
            assert!(work.path().join("plan.json").exists(), "no plan.json");
        }
        (
            out.status.code().expect("exit code"),
            lines("args"),
            lines("sleeps").len(),
            std::fs::read_to_string(summary).unwrap_or_default(),
        )
    }
}

/// The run: script of the GitHub step named `name` in the deploy job.
fn github_step(gh: &Yaml, name: &str) -> String {
    gh["jobs"]["deploy"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .and_then(|s| s["run"].as_str())
        .unwrap_or_else(|| panic!("{GITHUB}: no step {name:?} with run:"))
        .to_owned()
}

/// The entry of the GitLab deploy job's script that runs `kube-free WHAT`.
fn gitlab_script(gl: &Yaml, what: &str) -> String {
    gl["deploy"]["script"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .find(|s| {
            s.lines()
                .any(|l| l.trim_start().starts_with(&format!("kube-free {what} ")))
        })
        .unwrap_or_else(|| panic!("{GITLAB}: no script entry with kube-free {what}"))
        .to_owned()
}

#[test]
fn the_recipes_scripts_treat_each_exit_code_as_the_doc_says() {
    let stubs = Stubs::new();
    let gh = yaml(GITHUB);
    let gl = yaml(GITLAB);
    // GitHub runs `bash -e {0}`; GitLab runs a job's script with errexit and pipefail.
    let github_shell: &[&str] = &["bash", "-e", "-c"];
    let gitlab_shell: &[&str] = &["bash", "-e", "-o", "pipefail", "-c"];
    let recipes = [
        (
            GITHUB,
            github_shell,
            github_step(&gh, "kube-free plan"),
            github_step(&gh, "kube-free reconcile --once"),
            0, // exit 3 passes, with a notice
        ),
        (
            GITLAB,
            gitlab_shell,
            gitlab_script(&gl, "plan"),
            gitlab_script(&gl, "reconcile"),
            3, // exit 3 stays 3, which allow_failure: exit_codes: [3] lets pass with a warning
        ),
    ];
    for (path, shell, plan, reconcile, waiting) in recipes {
        for (codes, ok) in [("0", true), ("10", true), ("1", false), ("2", false)] {
            let (rc, calls, _, _) = stubs.run(shell, &plan, codes);
            assert_eq!(rc == 0, ok, "{path}: plan exiting {codes} gave {rc}");
            assert_eq!(calls, ["plan --repo . --output json"], "{path}");
        }
        let reconcile_args = "reconcile --once --repo . --max-wait 10m";
        for (codes, expect_rc, expect_calls, expect_sleeps) in [
            ("0", 0, 1, 0),
            ("1", 1, 1, 0),
            ("2", 2, 1, 0),
            ("3", waiting, 1, 0),
            ("4 4 0", 0, 3, 2),
            ("4 3", waiting, 2, 1),
            ("4 1", 1, 2, 1),
            ("4", 4, 5, 4),
        ] {
            let (rc, calls, sleeps, summary) = stubs.run(shell, &reconcile, codes);
            assert_eq!(rc, expect_rc, "{path}: reconcile exiting {codes}");
            assert_eq!(calls.len(), expect_calls, "{path}: {codes}: {calls:?}");
            assert!(calls.iter().all(|c| c == reconcile_args), "{calls:?}");
            assert_eq!(sleeps, expect_sleeps, "{path}: sleeps for {codes}");
            if path == GITHUB && codes.ends_with('3') {
                assert!(summary.contains("waiting (exit 3)"), "{summary:?}");
            }
        }
    }
}
