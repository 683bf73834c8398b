//! Bad input: each case commits a broken desired state to a real Git repository, runs
//! `kube-free validate`, and asserts exit code 2 and every expected problem as
//! `FILE:LINE:COLUMN: YAML.PATH: message`. The location is where an anchor string stands in the file.

mod common;
use common::*;

/// One expected problem: the file, an anchor whose first occurrence in that file is the location
/// (`None`: line 1, column 1), the YAML path and a part of the message.
type Expect<'a> = (&'a str, Option<&'a str>, &'a str, &'a str);

fn check(files: &[(&str, &[u8])], expects: &[Expect]) -> Run {
    let repo = Repo::new();
    for (path, content) in files {
        repo.write(path, content);
    }
    let commit = repo.commit("broken desired state");
    let run = kube_free(&["validate", "--repo", repo.path_str()]);
    run.code(2);
    run.stderr_has(&format!("at commit {commit}"));
    for (file, anchor, path, message) in expects {
        let text = String::from_utf8_lossy(files.iter().find(|(p, _)| p == file).unwrap().1);
        let (line, column) = anchor.map_or((1, 1), |a| position(&text, a));
        let prefix = format!("{file}:{line}:{column}: {path}: ");
        let found = run
            .stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(message));
        assert!(
            found,
            "expected a line starting {prefix:?} containing {message:?}\nstderr:\n{}",
            run.stderr
        );
    }
    let problems = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("error:"))
        .count();
    assert_eq!(
        problems,
        expects.len(),
        "expected exactly {} problems\nstderr:\n{}",
        expects.len(),
        run.stderr
    );
    run
}

fn root(text: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![("kube-free.yaml", text.as_bytes().to_vec())]
}

macro_rules! case {
    ($name:ident, $files:expr, [$($expect:expr),+ $(,)?]) => {
        #[test]
        fn $name() {
            let files: Vec<(&str, Vec<u8>)> = $files;
            let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
            check(&borrowed, &[$($expect),+]);
        }
    };
}

const ROOT: &str = "kube-free.yaml";
const PROD: &str = "environments/production.yaml";

case!(
    yaml_syntax_error,
    root(&base_with(
        "slots: { blue: 8000, green: 8001 }",
        "slots: { blue: 8000, green: 8001 ]"
    )),
    [(ROOT, Some("]\n    probe"), "apps.api.slots", "invalid YAML")]
);

case!(
    duplicate_key,
    root(&base_with(
        "  lb-1: {",
        "  web-1: { address: 192.0.2.13 }\n  lb-1: {"
    )),
    [(
        ROOT,
        Some("web-1: { address: 192.0.2.13"),
        "hosts.web-1",
        "duplicate key \"web-1\" (first defined on line 3)"
    )]
);

case!(
    unknown_top_level_key,
    root(&format!("{BASE}hostz: {{}}\n")),
    [(
        ROOT,
        Some("hostz"),
        "hostz",
        "unknown key \"hostz\" (did you mean `hosts`?)"
    )]
);

case!(
    unknown_nested_key_with_suggestion,
    root(&base_with(
        "{ address: 192.0.2.11 }",
        "{ adress: 192.0.2.11 }"
    )),
    [
        (
            ROOT,
            Some("adress"),
            "hosts.web-1.adress",
            "did you mean `address`?"
        ),
        (
            ROOT,
            Some("web-1: {"),
            "hosts.web-1.address",
            "missing required key `address`"
        ),
    ]
);

case!(
    wrong_type_for_port,
    root(&base_with("port: 2222", "port: twenty")),
    [(
        ROOT,
        Some("twenty"),
        "hosts.web-2.port",
        "expected a whole number, found \"twenty\""
    )]
);

case!(
    port_out_of_range,
    root(&base_with("port: 2222", "port: 70000")),
    [(
        ROOT,
        Some("70000"),
        "hosts.web-2.port",
        "70000 is out of range"
    )]
);

case!(
    quoted_number_is_not_a_number,
    root(&base_with("healthy_after: 3", "healthy_after: \"3\"")),
    [(
        ROOT,
        Some("\"3\""),
        "apps.api.probe.healthy_after",
        "expected a whole number, found \"3\""
    )]
);

case!(
    bad_host_name,
    root(&base_with("  web-1: {", "  Web_1: {").replace("[web-1, web-2]", "[web-2]")),
    [(
        ROOT,
        Some("Web_1"),
        "hosts.Web_1",
        "invalid host name \"Web_1\""
    )]
);

case!(
    bad_version_in_environment_file,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace("\"1.4.2\"", "\"1.4 2\"")
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("\"1.4 2\""),
        "apps.api.version",
        "invalid version \"1.4 2\""
    )]
);

case!(
    bad_duration,
    root(&base_with("drain: 10s", "drain: 10 sec")),
    [(
        ROOT,
        Some("10 sec"),
        "apps.api.drain",
        "invalid duration \"10 sec\""
    )]
);

case!(
    bad_pause_duration,
    root(&base_with("pause: 2m", "pause: 2 minutes")),
    [(
        ROOT,
        Some("2 minutes"),
        "environments.production.apps.api.strategy.canary.steps[0].pause",
        "invalid duration"
    )]
);

case!(
    undeclared_host_in_environment,
    root(&base_with("[web-1, web-2]", "[web-1, web-3]")),
    [(
        ROOT,
        Some("web-3"),
        "environments.production.hosts[1]",
        "unknown host \"web-3\" (declared: lb-1, web-1, web-2)"
    )]
);

case!(
    reserved_environment_name,
    root(&base_with("  production:\n", "  rollouts:\n")),
    [(
        ROOT,
        Some("rollouts"),
        "environments.rollouts",
        "environment name \"rollouts\" is reserved: kube-free keeps its own files under <state_dir>/rollouts/"
    )]
);

case!(
    undeclared_balancer,
    root(&base_with("balancer: edge", "balancer: edge-2")),
    [(
        ROOT,
        Some("edge-2"),
        "environments.production.balancer",
        "unknown balancer \"edge-2\""
    )]
);

case!(
    undeclared_app,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE.replace("  api:", "  web:").into_bytes()
        ),
    ],
    [(
        PROD,
        Some("web:"),
        "apps.web",
        "unknown app \"web\" (declared: api)"
    )]
);

// Reported at the key, not at the block mapping below it.
case!(
    undeclared_app_inline,
    root(&base_with("    apps:\n      api:", "    apps:\n      web:")),
    [(
        ROOT,
        Some("web:"),
        "environments.production.apps.web",
        "unknown app \"web\" (declared: api)"
    )]
);

case!(
    undeclared_balancer_host,
    root(&base_with("host: lb-1", "host: lb-9")),
    [(
        ROOT,
        Some("lb-9"),
        "balancers.edge.host",
        "unknown host \"lb-9\""
    )]
);

case!(
    same_port_for_two_slots,
    root(&base_with("green: 8001", "green: 8000")),
    [(
        ROOT,
        Some("8000 }"),
        "apps.api.slots.green",
        "port 8000 is already used by slot \"blue\""
    )]
);

case!(
    only_one_slot,
    root(&base_with(
        "slots: { blue: 8000, green: 8001 }",
        "slots: { blue: 8000 }"
    )),
    [(
        ROOT,
        Some("blue: 8000"),
        "apps.api.slots",
        "exactly two slots are needed"
    )]
);

case!(
    canary_weight_over_100,
    root(&base_with("weight: 50", "weight: 150")),
    [(
        ROOT,
        Some("150"),
        "environments.production.apps.api.strategy.canary.steps[1].weight",
        "weight 150 is outside 0–100"
    )]
);

case!(
    canary_weights_decreasing,
    root(&base_with("weight: 50", "weight: 5")),
    [(
        ROOT,
        Some("5, pause: 5m"),
        "environments.production.apps.api.strategy.canary.steps[1].weight",
        "lower than the 10 of step 0"
    )]
);

case!(
    canary_step_without_weight_or_pause,
    root(&base_with("- { pause: {} }", "- {}")),
    [(
        ROOT,
        Some("{}\n"),
        "environments.production.apps.api.strategy.canary.steps[2]",
        "a step needs `weight`, `pause` or both"
    )]
);

case!(
    canary_pause_of_the_wrong_shape,
    root(&base_with("pause: {} }", "pause: [1] }")),
    [(
        ROOT,
        Some("[1]"),
        "environments.production.apps.api.strategy.canary.steps[2].pause",
        "invalid pause: found a sequence"
    )]
);

case!(
    analysis_error_rate_outside_0_1,
    root(&base_with("max_error_rate: 0.01", "max_error_rate: 5")),
    [(
        ROOT,
        Some("5, min_requests"),
        "environments.production.apps.api.strategy.canary.analysis.max_error_rate",
        "outside 0–1"
    )]
);

case!(
    analysis_check_path_without_slash,
    root(&base_with(
        "min_requests: 100",
        "min_requests: 100, checks: [/ok, smoke]"
    )),
    [(
        ROOT,
        Some("smoke"),
        "environments.production.apps.api.strategy.canary.analysis.checks[1]",
        "invalid check path \"smoke\" (must start with /"
    )]
);

case!(
    empty_environment,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, b"balancer: edge\nhosts: []\napps: {}\n".to_vec()),
    ],
    [
        (
            PROD,
            Some("[]"),
            "hosts",
            "an environment needs at least one host"
        ),
        (
            PROD,
            Some("{}"),
            "apps",
            "an environment needs at least one app"
        ),
    ]
);

case!(
    environment_file_clashes_with_inline_environment,
    vec![
        (ROOT, BASE.as_bytes().to_vec()),
        (PROD, PRODUCTION_FILE.as_bytes().to_vec())
    ],
    [(
        PROD,
        None,
        "(root)",
        "environment \"production\" is defined both here and inline in kube-free.yaml (line 18)"
    )]
);

case!(
    environment_file_name_is_not_a_name,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            "environments/Prod.yaml",
            PRODUCTION_FILE.as_bytes().to_vec()
        ),
    ],
    [(
        "environments/Prod.yaml",
        Some("balancer"),
        "(root)",
        "invalid environment name \"Prod\" taken from the file name"
    )]
);

case!(
    yml_environment_file_is_reported,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            "environments/production.yml",
            PRODUCTION_FILE.as_bytes().to_vec()
        ),
    ],
    [(
        "environments/production.yml",
        None,
        "(root)",
        "environment files end in .yaml"
    )]
);

case!(
    file_over_one_mebibyte,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            format!("{PRODUCTION_FILE}# {}\n", "x".repeat(1024 * 1024)).into_bytes()
        ),
    ],
    [(
        PROD,
        None,
        "(root)",
        "more than the limit of 1048576 bytes (1 MiB)"
    )]
);

case!(
    alias_expansion_bomb,
    root(&{
        let mut s = base_with(
            "apps:\n  api:",
            "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\napps:\n  api:",
        );
        for i in 1..8 {
            let line = format!(
                "x{i}: &x{i} [{}]\n",
                vec![format!("*x{}", i - 1); 10].join(", ")
            );
            s = s.replacen("apps:\n  api:", &format!("{line}apps:\n  api:"), 1);
        }
        s
    }),
    [(
        ROOT,
        Some("*x3, *x3, *x3]"),
        "x4[7]",
        "document expands to more than 100000 nodes"
    )]
);

/// BASE with `env:` holding a 700 KB anchored value (`BIG`) and `aliases` more variables that name it.
fn big_anchor_with_aliases(aliases: usize) -> String {
    let mut env = format!(
        "command: \"/opt/api/{{version}}/bin/api --listen 0.0.0.0:{{port}}\"\n      env:\n        BIG: &big \"{}\"",
        "x".repeat(700_000)
    );
    for i in 0..aliases {
        env.push_str(&format!("\n        A{i}: *big"));
    }
    base_with(
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        &env,
    )
}

// 1 + 40 nodes, far below the node limit; 700 KB (the value) + 700 KB (its anchor's copy) + 21
// aliases fit in 16 MiB of text, the 22nd does not.
case!(
    alias_expansion_by_bytes,
    root(&big_anchor_with_aliases(40)),
    [(
        ROOT,
        Some("*big\n        A22:"),
        "apps.api.runtime.env.A21",
        "document expands to more than 16777216 bytes (16 MiB) of text (alias expansion bomb?)"
    )]
);

/// Runs `kube-free validate` on `repo` and returns its exit code, its stderr and its peak resident
/// memory in KiB (`ru_maxrss` of this very child, from `wait4`, which reaps it).
#[allow(clippy::zombie_processes)]
fn validate_peak_rss(repo: &Repo) -> (i32, String, i64) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let child = kube_free_command(
        std::path::Path::new("."),
        &["validate", "--repo", repo.path_str()],
    )
    .stdout(std::process::Stdio::null())
    .stderr(stderr.reopen().unwrap())
    .spawn()
    .expect("kube-free runs");
    let started = std::time::Instant::now();
    let mut status = 0;
    // SAFETY: plain zeroed C struct filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for (and reaps) the child this function spawned; std never waits for it.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .expect("exited, not killed");
    eprintln!(
        "kube-free validate: exit {code}, peak RSS {} KiB, {:.1?}",
        usage.ru_maxrss,
        started.elapsed()
    );
    let text = std::fs::read_to_string(stderr.path()).unwrap();
    (code, text, usage.ru_maxrss)
}

/// Peak memory of a validation, whatever a file within the size limit does with aliases.
const MAX_RSS_KIB: i64 = 300 * 1024;

/// 400 aliases of a 700 KB value: 280 MB of text once expanded (571 MB of RSS and 36 s before bytes
/// were counted). Refused at once, in little memory.
#[test]
fn an_alias_bomb_of_bytes_is_refused_in_bounded_memory() {
    let repo = Repo::new();
    let file = big_anchor_with_aliases(400);
    assert!(file.len() < 1024 * 1024);
    repo.write(ROOT, &file);
    repo.commit("alias bomb");
    let (code, stderr, rss) = validate_peak_rss(&repo);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("apps.api.runtime.env.A21: document expands to more than 16777216 bytes"),
        "{stderr}"
    );
    assert!(
        rss < MAX_RSS_KIB,
        "peak RSS {rss} KiB, more than {MAX_RSS_KIB} KiB"
    );
}

/// Just under the limit: 23 copies of a 700 KB value (16 MB of text) go through every stage of
/// validation, still in bounded memory.
#[test]
fn aliases_just_within_the_limit_validate_in_bounded_memory() {
    let repo = Repo::new();
    repo.write(ROOT, big_anchor_with_aliases(21));
    repo.commit("many aliases, within the limit");
    let (code, stderr, rss) = validate_peak_rss(&repo);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        rss < MAX_RSS_KIB,
        "peak RSS {rss} KiB, more than {MAX_RSS_KIB} KiB"
    );
}

// interval × healthy_after overflowed a Duration here and the validator panicked (exit 101).
case!(
    huge_probe_interval_and_healthy_after,
    root(&base_with(
        "interval: 1s, timeout: 2s, healthy_after: 3",
        "interval: 999999999h, timeout: 2s, healthy_after: 4294967295"
    )),
    [(
        ROOT,
        Some("999999999h"),
        "apps.api.probe.interval",
        "duration \"999999999h\" is longer than the limit of 8760h (365 days)"
    )]
);

// Within the limit, the product is computed, not overflowed: 8760h × 4294967295 is longer than 60s.
case!(
    longest_probe_interval_and_most_passes,
    root(&base_with(
        "interval: 1s, timeout: 2s, healthy_after: 3",
        "interval: 8760h, timeout: 2s, healthy_after: 4294967295"
    )),
    [(
        ROOT,
        Some("60s"),
        "apps.api.probe.deadline",
        "deadline 1m is shorter than healthy_after × interval (4294967295 × 8760h), so no instance could ever pass"
    )]
);

case!(
    durations_longer_than_a_year,
    root(
        &base_with("drain: 10s", "drain: 8761h")
            .replace("pause: 5m", "pause: 999999999h999999999h")
    ),
    [
        (
            ROOT,
            Some("8761h"),
            "apps.api.drain",
            "duration \"8761h\" is longer than the limit of 8760h (365 days)"
        ),
        (
            ROOT,
            Some("999999999h9"),
            "environments.production.apps.api.strategy.canary.steps[1].pause",
            "duration \"999999999h999999999h\" is longer than the limit of 8760h (365 days)"
        ),
    ]
);

/// A desired state whose environment file is reached through a symbolic link that Git commits as
/// such (`link` names where the link is, `target` where it points).
fn linked_environment(link: &str, target: &str) -> Repo {
    let repo = Repo::new();
    repo.write(ROOT, base_without_environments());
    repo.write("real/production.yaml", PRODUCTION_FILE);
    let at = repo.path().join(link);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, at).unwrap();
    repo.commit("an environment through a symbolic link");
    repo
}

#[test]
fn a_symlinked_environment_file_is_reported() {
    let repo = linked_environment(PROD, "../real/production.yaml");
    let run = kube_free(&["validate", "--repo", repo.path_str()]);
    run.code(2).stderr_has(
        "environments/production.yaml:1:1: (root): this is a symbolic link, which kube-free does not follow: commit the file itself (it is not read)\n",
    );
}

/// It was silently ignored: `valid` with 0 environments.
#[test]
fn a_symlinked_environments_directory_is_reported() {
    let repo = linked_environment("environments", "real");
    let run = kube_free(&["validate", "--repo", repo.path_str()]);
    run.code(2).stderr_has(
        "environments:1:1: (root): environments/ is a symbolic link, which kube-free does not follow: commit the environment files themselves in a directory environments/ (none is read)\n",
    );
}

case!(
    non_utf8_input,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, [PRODUCTION_FILE.as_bytes(), b"# caf\xe9\n"].concat()),
    ],
    [(PROD, Some("\u{FFFD}"), "(root)", "not valid UTF-8")]
);

case!(
    missing_format_version,
    root(BASE.strip_prefix("version: 1\n").unwrap()),
    [(
        ROOT,
        Some("hosts"),
        "version",
        "missing required key `version`"
    )]
);

case!(
    unsupported_format_version,
    root(&base_with("version: 1", "version: 2")),
    [(ROOT, Some("2\n"), "version", "unsupported format version 2")]
);

case!(
    missing_app_version,
    root(&base_with("        version: \"1.4.2\"\n", "")),
    [(
        ROOT,
        Some("api:\n        listen"),
        "environments.production.apps.api.version",
        "missing required key `version`"
    )]
);

case!(
    bad_listen_address,
    root(&base_with("\"0.0.0.0:80\"", "\"0.0.0.0\"")),
    [(
        ROOT,
        Some("\"0.0.0.0\""),
        "environments.production.apps.api.listen",
        "invalid listen address \"0.0.0.0\""
    )]
);

case!(
    unknown_strategy,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, PRODUCTION_FILE.replace("blue-green", "red-black").into_bytes()),
    ],
    [(PROD, Some("red-black"), "apps.api.strategy", "unknown value \"red-black\", expected one of `blue-green`, `blue_green`, `rolling`, `canary`")]
);

case!(
    rolling_batch_over_100_percent,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace(
                    "strategy: blue-green",
                    "strategy: { rolling: { batch: \"150%\" } }"
                )
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("\"150%\""),
        "apps.api.strategy.rolling.batch",
        "invalid batch \"150%\""
    )]
);

case!(
    rolling_without_settings,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace("strategy: blue-green", "strategy: rolling")
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("rolling"),
        "apps.api.strategy",
        "`rolling` takes settings"
    )]
);

case!(
    unknown_placeholder_in_command,
    root(&base_with("/opt/api/{version}", "/opt/api/{vesion}")),
    [(
        ROOT,
        Some("\"/opt/api"),
        "apps.api.runtime.command",
        "unknown placeholder {vesion}"
    )]
);

case!(
    shell_syntax_in_command,
    root(&base_with(
        "0.0.0.0:{port}\"",
        "0.0.0.0:{port} && rm -rf /\""
    )),
    [(
        ROOT,
        Some("\"/opt/api"),
        "apps.api.runtime.command",
        "needs a shell"
    )]
);

case!(
    top_level_is_not_a_mapping,
    root("- version: 1\n"),
    [(
        ROOT,
        None,
        "(root)",
        "expected a mapping at the top of the file, found a sequence"
    )]
);

case!(
    more_than_one_document,
    root(&format!("{BASE}---\nversion: 1\n")),
    [(ROOT, Some("---"), "(root)", "more than one YAML document")]
);

case!(
    known_hosts_not_in_commit,
    root(&base_with(
        "balancers:",
        "ssh: { known_hosts: ssh/known_hosts }\nbalancers:"
    )),
    [(
        ROOT,
        Some("ssh/known_hosts"),
        "ssh.known_hosts",
        "no file \"ssh/known_hosts\" in the commit"
    )]
);

case!(
    port_clash_between_environments_on_one_host,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, PRODUCTION_FILE.as_bytes().to_vec()),
        ("environments/staging.yaml", b"balancer: edge\nhosts: [web-1]\napps:\n  api: { version: 1.5.0-rc.1, listen: \"0.0.0.0:8080\" }\n".to_vec()),
    ],
    [("environments/staging.yaml", Some("api:"), "apps.api", "port 8000 on host \"web-1\" is already taken by slot \"blue\" of app \"api\" in environment \"production\"; give this environment its own ports with `slots:` under the app")]
);

case!(
    frontend_port_clash_on_the_balancer,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, PRODUCTION_FILE.as_bytes().to_vec()),
        ("environments/staging.yaml", b"balancer: edge\nhosts: [web-1]\napps:\n  api:\n    version: 1.5.0\n    listen: \"0.0.0.0:80\"\n    slots: { blue: 9000, green: 9001 }\n".to_vec()),
    ],
    [("environments/staging.yaml", Some("\"0.0.0.0:80\""), "apps.api.listen", "port 80 on host \"lb-1\" is already taken by the frontend of app \"api\" in environment \"production\"; choose another `listen` port or address")]
);

case!(
    local_transport_with_ssh_settings,
    root(&base_with(
        "lb-1: { address: 192.0.2.10 }",
        "lb-1: { transport: local, address: 192.0.2.10 }"
    )),
    [(
        ROOT,
        Some("address: 192.0.2.10"),
        "hosts.lb-1.address",
        "`address` does not apply to `transport: local`"
    )]
);

case!(
    local_app_host_behind_a_balancer_on_another_host,
    root(
        &base_with("lb-1: { address: 192.0.2.10 }", "lb-1: { address: 192.0.2.10 }\n  here: { transport: local }")
            .replace("[web-1, web-2]", "[web-1, here]")
    ),
    [(
        ROOT,
        Some("here]"),
        "environments.production.hosts[1]",
        "host \"here\" has `transport: local`, so balancer \"edge\" on host \"lb-1\" would reach it at 127.0.0.1, which is lb-1 itself; give \"here\" an ssh transport with an address, or run the balancer on a `transport: local` host"
    )]
);

case!(
    probe_path_without_slash,
    root(&base_with("path: /readyz", "path: readyz")),
    [(
        ROOT,
        Some("readyz,"),
        "apps.api.probe.path",
        "invalid probe path \"readyz\""
    )]
);

case!(
    probe_deadline_too_short_to_ever_pass,
    root(&base_with("deadline: 60s", "deadline: 2s")),
    [(
        ROOT,
        Some("2s }"),
        "apps.api.probe.deadline",
        "shorter than healthy_after × interval"
    )]
);

case!(
    docker_runtime_without_image,
    root(&base_with("kind: process", "kind: docker")),
    [(
        ROOT,
        Some("runtime:"),
        "apps.api.runtime.image",
        "missing required key `image`"
    )]
);

case!(
    docker_keys_on_a_process_runtime,
    root(&base_with(
        "kind: process",
        "kind: process\n      network: host"
    )),
    [(
        ROOT,
        Some("network: host"),
        "apps.api.runtime.network",
        "`network` applies to `kind: docker` only"
    )]
);

case!(
    docker_image_with_a_slot_placeholder_and_a_bad_bind_address,
    root(&base_with(
        "kind: process\n      command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "kind: docker\n      image: \"reg/api:{version}-{slot}\"\n      bind: 10.0.0.300"
    )),
    [
        (
            ROOT,
            Some("\"reg/api"),
            "apps.api.runtime.image",
            "the image cannot use {slot}: one image serves both slots"
        ),
        (
            ROOT,
            Some("10.0.0.300"),
            "apps.api.runtime.bind",
            "invalid bind address \"10.0.0.300\""
        )
    ]
);

case!(
    docker_bind_with_the_host_network,
    root(&base_with(
        "kind: process\n      command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "kind: docker\n      image: \"reg/api:{version}\"\n      network: host\n      bind: 127.0.0.1"
    )),
    [(
        ROOT,
        Some("127.0.0.1"),
        "apps.api.runtime.bind",
        "`bind` applies to `network: bridge` only"
    )]
);

case!(
    docker_container_names_that_run_together_on_one_host,
    root(
        r#"version: 1
hosts:
  web-1: { address: 192.0.2.11 }
  lb-1: { address: 192.0.2.10 }
balancers:
  edge: { kind: haproxy, host: lb-1 }
apps:
  c:
    runtime: { kind: docker, image: "reg/c:{version}" }
    slots: { blue: 8000, green: 8001 }
  b-c:
    runtime: { kind: docker, image: "reg/bc:{version}" }
    slots: { blue: 9000, green: 9001 }
environments:
  a-b:
    balancer: edge
    hosts: [web-1]
    apps:
      c: { version: "1", listen: "0.0.0.0:80" }
  a:
    balancer: edge
    hosts: [web-1]
    apps:
      b-c: { version: "1", listen: "0.0.0.0:81" }
"#
    ),
    [(
        ROOT,
        Some("c: { version"),
        "environments.a-b.apps.c",
        "container kf-a-b-c-blue on host \"web-1\" would also be that of app \"b-c\" in environment \"a\"; rename one of them"
    )]
);

case!(
    env_value_with_a_line_break,
    root(&base_with(
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"\n      env: { KEY: \"line one\\nline two\" }"
    )),
    [(
        ROOT,
        Some("\"line one"),
        "apps.api.runtime.env.KEY",
        "the value of KEY holds the control character '\\n', which cannot be passed to an instance (one line per variable; a tab is allowed)"
    )]
);

// Every control character but a tab is refused in environment values (ESC, NUL) and names (SOH).
case!(
    env_values_and_names_with_control_characters,
    root(&base_with(
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"\n      env: { KEY: \"a\\eb\", TAB: \"a\\tb\", NUL: \"\\0\", \"A\\x01B\": x }"
    )),
    [
        (
            ROOT,
            Some("\"a\\eb\""),
            "apps.api.runtime.env.KEY",
            "the value of KEY holds the control character '\\u{1b}', which cannot be passed to an instance"
        ),
        (
            ROOT,
            Some("\"\\0\""),
            "apps.api.runtime.env.NUL",
            "the value of NUL holds the control character '\\0', which cannot be passed to an instance"
        ),
        (
            ROOT,
            Some("\"A\\x01B\""),
            "apps.api.runtime.env[\"A\\u{1}B\"]",
            "invalid environment variable name \"A\\u{1}B\""
        ),
    ]
);

// A line break between words only separates them; inside a quoted word it is refused, as a BEL is.
case!(
    command_words_with_control_characters,
    root(
        &base_with(
            "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
            "command: \"/opt/api/{version}/bin/api\\n'--name=a\\rb' --listen 0.0.0.0:{port}\""
        )
        .replace(
            "edge: { kind: haproxy, host: lb-1 }",
            "edge: { kind: haproxy, host: lb-1, reload_command: \"systemctl reload\\a haproxy\" }"
        )
    ),
    [
        (
            ROOT,
            Some("\"/opt/api/{version}/bin/api\\n"),
            "apps.api.runtime.command",
            "control character '\\r' in \"/opt/api/{version}/bin/api\\n'--name=a\\rb' --listen 0.0.0.0:{port}\": a command line holds none (a tab is allowed)"
        ),
        (
            ROOT,
            Some("\"systemctl"),
            "balancers.edge.reload_command",
            "control character '\\u{7}' in \"systemctl reload\\u{7} haproxy\": a command line holds none (a tab is allowed)"
        ),
    ]
);

case!(
    image_with_a_control_character,
    root(&base_with(
        "kind: process\n      command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "kind: docker\n      image: \"reg/api\\0:{version}\""
    )),
    [(
        ROOT,
        Some("\"reg/api"),
        "apps.api.runtime.image",
        "invalid image reference \"reg/api\\0:{version}\""
    )]
);

case!(
    ssh_identity_file_and_notification_url_with_control_characters,
    root(&format!(
        "{BASE}ssh: {{ identity_file: \"/root/.ssh/id\\e\" }}\nnotifications:\n  - url: \"https://hooks.example/a\\nb\"\n"
    )),
    [
        (
            ROOT,
            Some("\"/root/.ssh"),
            "ssh.identity_file",
            "the path holds the control character '\\u{1b}'"
        ),
        (
            ROOT,
            Some("\"https://hooks"),
            "notifications[0].url",
            "the URL holds the control character '\\n'"
        ),
    ]
);

case!(
    env_secret_file_of_the_wrong_shape,
    root(&base_with(
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"",
        "command: \"/opt/api/{version}/bin/api --listen 0.0.0.0:{port}\"\n      env: { A: { path: /etc/a }, B: { file: etc/b }, C: [x] }"
    )),
    [
        (
            ROOT,
            Some("path: /etc/a }"),
            "apps.api.runtime.env.A",
            "invalid value of A: found a mapping (a text, or { file: /absolute/path } for a secret read from a file on the machine that runs kube-free)"
        ),
        (
            ROOT,
            Some("etc/b"),
            "apps.api.runtime.env.B.file",
            "invalid path \"etc/b\" (an absolute path"
        ),
        (
            ROOT,
            Some("[x]"),
            "apps.api.runtime.env.C",
            "invalid value of C: found a sequence"
        ),
    ]
);

case!(
    every_problem_in_every_file_is_reported_at_once,
    vec![
        (
            ROOT,
            base_without_environments()
                .replace("port: 2222", "port: x")
                .replace("drain: 10s", "drain: soon")
                .replace("kind: haproxy", "kind: traefik")
                .into_bytes()
        ),
        (
            PROD,
            PRODUCTION_FILE
                .replace("[web-1, web-2]", "[web-1, web-1]")
                .replace("\"1.4.2\"", "\"\"")
                .into_bytes()
        ),
    ],
    [
        (
            ROOT,
            Some("x }"),
            "hosts.web-2.port",
            "expected a whole number"
        ),
        (
            ROOT,
            Some("traefik"),
            "balancers.edge.kind",
            "unknown value \"traefik\", expected one of `haproxy`, `nginx`"
        ),
        (
            ROOT,
            Some("soon"),
            "apps.api.drain",
            "invalid duration \"soon\""
        ),
        (
            PROD,
            Some("web-1]"),
            "hosts[1]",
            "host \"web-1\" is listed twice"
        ),
        (
            PROD,
            Some("\"\""),
            "apps.api.version",
            "invalid version \"\""
        ),
    ]
);

#[test]
fn json_output_lists_the_same_errors_as_an_array() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", base_with("drain: 10s", "drain: 10 sec"));
    let commit = repo.commit("broken");
    let run = kube_free(&["validate", "--repo", repo.path_str(), "--output", "json"]);
    run.code(2);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(report["valid"], false);
    assert_eq!(report["commit"], commit.as_str());
    let errors = report["errors"].as_array().expect("errors is an array");
    assert_eq!(errors.len(), 1);
    let (line, column) = position(&base_with("drain: 10s", "drain: 10 sec"), "10 sec");
    assert_eq!(errors[0]["file"], "kube-free.yaml");
    assert_eq!(errors[0]["line"], line);
    assert_eq!(errors[0]["column"], column);
    assert_eq!(errors[0]["path"], "apps.api.drain");
    assert_eq!(
        errors[0]["message"],
        "invalid duration \"10 sec\" (write e.g. \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")"
    );
}

case!(
    frontend_on_a_wildcard_address_clashes_with_a_specific_one,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (PROD, PRODUCTION_FILE.replace("0.0.0.0:80", "192.0.2.10:80").into_bytes()),
        ("environments/staging.yaml", b"balancer: edge\nhosts: [web-1]\napps:\n  api:\n    version: 1.5.0\n    listen: \"*:80\"\n    slots: { blue: 9000, green: 9001 }\n".to_vec()),
    ],
    [("environments/staging.yaml", Some("\"*:80\""), "apps.api.listen", "port 80 on host \"lb-1\" is already taken")]
);

case!(
    shell_comment_in_reload_command,
    root(&base_with(
        "kind: haproxy, host: lb-1 }",
        "kind: haproxy, host: lb-1, reload_command: \"systemctl reload haproxy # hitless\" }"
    )),
    [(
        ROOT,
        Some("\"systemctl"),
        "balancers.edge.reload_command",
        "would start a comment in a shell"
    )]
);

#[test]
fn frontends_on_different_addresses_may_share_a_port() {
    let repo = Repo::new();
    repo.write("kube-free.yaml", base_without_environments());
    repo.write(
        "environments/production.yaml",
        PRODUCTION_FILE.replace("0.0.0.0:80", "192.0.2.10:80"),
    );
    repo.write(
        "environments/staging.yaml",
        "balancer: edge\nhosts: [web-1]\napps:\n  api:\n    version: 1.5.0\n    listen: \"127.0.0.1:80\"\n    slots: { blue: 9000, green: 9001 }\n",
    );
    repo.commit("two frontends on port 80, two addresses");
    kube_free(&["validate", "--repo", repo.path_str()]).code(0);
}

case!(
    frontend_on_the_port_of_its_own_slot,
    root(&base_with("host: lb-1 }", "host: web-1 }").replace("\"0.0.0.0:80\"", "\"0.0.0.0:8000\"")),
    [(ROOT, Some("\"0.0.0.0:8000\""), "environments.production.apps.api.listen", "port 8000 on host \"web-1\" is already taken by slot \"blue\" of app \"api\" in environment \"production\"")]
);

case!(
    probe_path_with_a_quote_would_break_the_haproxy_config,
    root(&base_with("path: /readyz", "path: \"/ready'z\"")),
    [(
        ROOT,
        Some("\"/ready'z\""),
        "apps.api.probe.path",
        "invalid probe path \"/ready'z\""
    )]
);

case!(
    bake_is_a_duration,
    root(&base_with(
        "stop_timeout: 30s",
        "stop_timeout: 30s\n    bake: a while"
    )),
    [(
        ROOT,
        Some("a while"),
        "apps.api.bake",
        "invalid duration \"a while\""
    )]
);

case!(
    rolling_on_failure_is_revert_or_hold,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace(
                    "strategy: blue-green",
                    "strategy: { rolling: { batch: 1, on_failure: ignore } }"
                )
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("ignore"),
        "apps.api.strategy.rolling.on_failure",
        "unknown value \"ignore\", expected one of `revert`, `hold`"
    )]
);

case!(
    blue_green_analysis_is_checked_where_it_stands,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace(
                    "strategy: blue-green",
                    "strategy: { blue_green: { analysis: { max_error_rate: 5 } } }"
                )
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("5 }"),
        "apps.api.strategy.blue_green.analysis.max_error_rate",
        "max_error_rate 5 is outside 0–1"
    )]
);

case!(
    bake_analysis_has_no_checks,
    vec![
        (ROOT, base_without_environments().into_bytes()),
        (
            PROD,
            PRODUCTION_FILE
                .replace(
                    "strategy: blue-green",
                    "strategy: { rolling: { analysis: { max_error_rate: 0.01, checks: [/smoke] } } }"
                )
                .into_bytes()
        ),
    ],
    [(
        PROD,
        Some("[/smoke]"),
        "apps.api.strategy.rolling.analysis.checks",
        "checks run only between canary steps"
    )]
);

case!(
    notification_targets,
    root(&format!(
        "{BASE}notifications:\n  - name: ops-slack\n    url: ftp://hooks.example/x\n    format: slack\n    events: [started, deployed]\n    secret_file: /etc/kube-free/hook-secret\n  - url: https://hooks.example/kube-free\n    ca_file: certs/ca.pem\n"
    )),
    [
        (
            ROOT,
            Some("ftp://"),
            "notifications[0].url",
            "unsupported URL scheme \"ftp\" in \"ftp://hooks.example/x\" (http or https)"
        ),
        (
            ROOT,
            Some("deployed"),
            "notifications[0].events[1]",
            "unknown value \"deployed\", expected one of `started`, `step`"
        ),
        (
            ROOT,
            Some("secret_file"),
            "notifications[0].secret_file",
            "`secret_file` applies to `format: json` only"
        ),
        (
            ROOT,
            Some("certs/ca.pem"),
            "notifications[1].ca_file",
            "invalid path \"certs/ca.pem\""
        ),
    ]
);

case!(
    nginx_keys_on_haproxy,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: haproxy, host: lb-1, mode: reload, test_command: \"nginx -t\", lua_module: /usr/share/nginx/modules/ngx_http_lua_module.so }"
    )),
    [
        (ROOT, Some("reload,"), "balancers.edge.mode", "`mode` is only for `kind: nginx`"),
        (ROOT, Some("\"nginx -t\""), "balancers.edge.test_command", "`test_command` is only for `kind: nginx`"),
        (ROOT, Some("/usr/share/nginx"), "balancers.edge.lua_module", "`lua_module` is only for `kind: nginx` in `mode: dynamic`")
    ]
);

case!(
    nginx_reload_mode_has_no_lua_module,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: nginx, host: lb-1, mode: reload, lua_module: /usr/lib/lua.so, config_file: kube-free.conf }"
    )),
    [
        (ROOT, Some("/usr/lib/lua.so"), "balancers.edge.lua_module", "`lua_module` is only for `kind: nginx` in `mode: dynamic`"),
        (ROOT, Some("kube-free.conf }"), "balancers.edge.config_file", "invalid path \"kube-free.conf\"")
    ]
);

case!(
    nginx_lua_module_is_an_absolute_path,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: nginx, host: lb-1, lua_module: modules/lua.so }"
    )),
    [(
        ROOT,
        Some("modules/lua.so"),
        "balancers.edge.lua_module",
        "invalid path \"modules/lua.so\""
    )]
);

case!(
    nginx_unknown_mode,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: nginx, host: lb-1, mode: fast }"
    )),
    [(
        ROOT,
        Some("fast"),
        "balancers.edge.mode",
        "unknown value \"fast\", expected one of `dynamic`, `reload`"
    )]
);

case!(
    two_nginx_balancers_on_one_host,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: nginx, host: lb-1 }\n  edge2: { kind: nginx, host: lb-1, config_file: /etc/nginx/conf.d/other.conf }"
    )),
    [(ROOT, Some("lb-1, config_file"), "balancers.edge2.host", "host \"lb-1\" already has nginx balancer \"edge\"")]
);

case!(
    nginx_frontend_clashes_with_an_haproxy_frontend_on_one_host,
    vec![
        (ROOT, base_without_environments().replace("edge: { kind: haproxy, host: lb-1 }", "edge: { kind: haproxy, host: lb-1 }\n  web: { kind: nginx, host: lb-1 }").into_bytes()),
        (PROD, PRODUCTION_FILE.as_bytes().to_vec()),
        ("environments/staging.yaml", b"balancer: web\nhosts: [web-1]\napps:\n  api:\n    version: 1.5.0\n    listen: \"0.0.0.0:80\"\n    slots: { blue: 9000, green: 9001 }\n".to_vec()),
    ],
    [("environments/staging.yaml", Some("\"0.0.0.0:80\""), "apps.api.listen", "port 80 on host \"lb-1\" is already taken by the frontend of app \"api\" in environment \"production\"; choose another `listen` port or address")]
);

case!(
    nginx_reaches_app_hosts_by_ip_address,
    root(&base_with(
        "edge: { kind: haproxy, host: lb-1 }",
        "edge: { kind: nginx, host: lb-1 }"
    ).replace("web-1: { address: 192.0.2.11 }", "web-1: { address: web-1.internal }")),
    [(ROOT, Some("web-1.internal"), "hosts.web-1.address", "nginx balancer \"edge\" reaches host \"web-1\" by IP address (environment \"production\"); give its IP address, not the name \"web-1.internal\"")]
);
