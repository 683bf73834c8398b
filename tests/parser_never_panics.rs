//! The parser, the raw stage and validation never panic, whatever the bytes: arbitrary bytes, soups of
//! YAML tokens, random mutations of a valid desired state (which reach deep into validation), anchors
//! named by many aliases (in bounded memory), and every duration and count key at extreme values (a
//! valid result is then planned and rendered for both balancers, which must not panic either).

mod common;
use kube_free::desired::{load, LoadError, MemFiles};
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Peak resident memory of this test process so far, in KiB (nextest runs each test in its own).
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills a plain C struct.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage.ru_maxrss
    }
}

/// What loading any file within the size limit may cost at most.
const MAX_RSS_KIB: i64 = 300 * 1024;

fn load_never_panics(files: MemFiles) {
    match load(&files) {
        Ok(_) | Err(LoadError::Invalid(_)) | Err(LoadError::NoRootFile) => {}
        Err(LoadError::Files(e)) => panic!("in-memory files cannot fail to read: {e}"),
    }
}

fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(", ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("!!str ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("|\n".to_owned()),
        Just("---\n".to_owned()),
        Just("#".to_owned()),
        Just("~".to_owned()),
        prop::sample::select(vec![
            "version",
            "hosts",
            "apps",
            "environments",
            "balancers",
            "ssh",
            "slots",
            "strategy",
            "canary",
            "steps",
            "weight",
            "pause",
            "rolling",
            "batch",
            "runtime",
            "kind",
            "process",
            "docker",
            "command",
            "listen",
            "address",
            "port",
            "web-1",
            "api",
            "edge",
            "blue",
            "green",
            "10s",
            "1",
            "101",
            "-1",
            "1.5",
            "true",
            "null",
            "{port}",
            "{nope}",
            "50%",
            "haproxy",
            "local",
            "transport",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(token, 0..120).prop_map(|t| t.concat())
}

/// A file of anchors and aliases: a large anchored scalar, a sequence of aliases to it, itself
/// anchored and named again, merges, all within the 1 MiB file limit.
fn alias_heavy() -> impl Strategy<Value = String> {
    (
        0usize..900_000,
        0usize..3000,
        0usize..200,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(scalar, first, second, quoted, merge)| {
            let value = "x".repeat(scalar);
            let value = if quoted {
                format!("\"{value}\"")
            } else {
                value
            };
            let mut s = format!("version: 1\nbig: &big {value}\nlevel1: &l1\n");
            for _ in 0..first {
                s.push_str("  - *big\n");
            }
            s.push_str("level2: [");
            s.push_str(&vec!["*l1"; second].join(", "));
            s.push_str("]\n");
            if merge {
                s.push_str("m: &m { a: *big, b: *l1 }\nn: { <<: [*m, *m], c: *big }\n");
            }
            let cut = s.len().min(1024 * 1024);
            s.truncate(cut); // ASCII only
            s
        })
}

const DURATIONS: [&str; 15] = [
    "0s",
    "1ms",
    "1s",
    "60s",
    "8760h",
    "8761h",
    "4294967295ms",
    "999999999ms",
    "999999999s",
    "999999999h",
    "999999999h999999999h999999999h999999999h999999999h999999999h",
    "9999999999h",
    "18446744073709551615s",
    "0",
    "-1s",
];

fn duration_value() -> impl Strategy<Value = String> {
    prop::sample::select(DURATIONS.to_vec()).prop_map(str::to_owned)
}

const COUNTS: [&str; 23] = [
    "0",
    "1",
    "2",
    "100",
    "101",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1e400",
    ".nan",
    ".inf",
    "0.5",
    "1.0",
    "\"100%\"",
    "\"1%\"",
    "\"255%\"",
];

fn count_value() -> impl Strategy<Value = String> {
    prop::sample::select(COUNTS.to_vec()).prop_map(str::to_owned)
}

/// A whole desired state with every duration and count key of the format set from `d` and `n`
/// (probe, drain, stop_timeout, bake, slot ports, listen port, canary weights, pauses and
/// progress_deadline, rolling batch, analysis).
fn extreme_state(d: &[String], n: &[String], strategy: u8) -> String {
    let strategy = match strategy {
        0 => format!(
            "canary: {{ steps: [{{ weight: {}, pause: {} }}, {{ weight: {}, pause: {} }}, {{ pause: {{}} }}], analysis: {{ max_error_rate: {}, min_requests: {} }}, progress_deadline: {} }}",
            n[4], d[7], n[5], d[8], n[6], n[7], d[9]
        ),
        1 => format!(
            "rolling: {{ batch: {}, analysis: {{ max_error_rate: {}, min_requests: {} }} }}",
            n[4], n[6], n[7]
        ),
        _ => format!(
            "blue_green: {{ analysis: {{ max_error_rate: {}, min_requests: {} }} }}",
            n[6], n[7]
        ),
    };
    format!(
        r#"version: 1
hosts:
  web-1: {{ address: 192.0.2.11, port: {} }}
  web-2: {{ address: 192.0.2.12 }}
  lb-1: {{ address: 192.0.2.10 }}
balancers:
  edge: {{ kind: haproxy, host: lb-1 }}
  web: {{ kind: nginx, host: lb-1 }}
apps:
  api:
    runtime: {{ kind: process, command: "/opt/api/{{version}}/api --port {{port}}" }}
    slots: {{ blue: {}, green: {} }}
    probe: {{ interval: {}, timeout: {}, healthy_after: {}, deadline: {} }}
    drain: {}
    stop_timeout: {}
    bake: {}
environments:
  prod:
    balancer: edge
    hosts: [web-1, web-2]
    apps:
      api: {{ version: "2.0", listen: "0.0.0.0:80", strategy: {{ {strategy} }} }}
  stage:
    balancer: web
    hosts: [web-2]
    apps:
      api: {{ version: "2.1", listen: "0.0.0.0:{}", slots: {{ blue: 9000, green: 9001 }}, strategy: {{ {strategy} }} }}
"#,
        n[0], n[1], n[2], d[0], d[1], n[3], d[2], d[3], d[4], d[5], n[8]
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Anchors named by many aliases never panic, and never take memory out of bounds.
    #[test]
    fn alias_heavy_files(root in alias_heavy(), env in alias_heavy()) {
        load_never_panics(
            MemFiles::default().with("kube-free.yaml", root).with("environments/staging.yaml", env),
        );
        let rss = peak_rss_kib();
        prop_assert!(rss < MAX_RSS_KIB, "peak RSS {} KiB", rss);
    }
}

/// Values that make [`extreme_state`] valid; each key is replaced by an extreme value at random.
const ORDINARY_DURATIONS: [&str; 10] = [
    "1s", "2s", "1m", "10s", "30s", "8760h", "0s", "1m", "8760h", "10m",
];
const ORDINARY_COUNTS: [&str; 9] = [
    "22",
    "8000",
    "8001",
    "2",
    "1",
    "100",
    "1.0",
    "18446744073709551615",
    "81",
];

fn with_extremes(ordinary: &[&str], extremes: &[Option<String>]) -> Vec<String> {
    ordinary
        .iter()
        .zip(extremes)
        .map(|(o, e)| e.clone().unwrap_or_else(|| (*o).to_owned()))
        .collect()
}

/// Loads [`extreme_state`]; when it is valid, plans it (from nothing, and for one environment) and
/// renders it for both balancers. Whether it was valid.
fn load_and_plan(d: &[String], n: &[String], strategy: u8) -> bool {
    let files = MemFiles::default().with("kube-free.yaml", extreme_state(d, n, strategy));
    match load(&files) {
        Ok(desired) => {
            let observed = kube_free::observed::ObservedState::default();
            for scope in [
                kube_free::plan::Scope::default(),
                kube_free::plan::Scope {
                    env: Some("stage".into()),
                    ..Default::default()
                },
            ] {
                let stale = BTreeSet::from(["edge".to_owned(), "web".to_owned()]);
                let plan = kube_free::plan::build(&desired, &observed, &stale, &scope);
                assert!(!plan.is_empty());
                plan.render_text();
                plan.render_json();
            }
            kube_free::drivers::haproxy::render_config(&desired, "edge");
            kube_free::drivers::nginx::dynamic::render(&desired, "web");
            true
        }
        Err(LoadError::Invalid(_)) => false,
        Err(e) => panic!("{e}"),
    }
}

/// Every duration key at once at each extreme duration, with every count key at once at each
/// extreme count (`interval: 999999999h` with `healthy_after: 4294967295` overflowed here).
#[test]
fn every_key_at_every_extreme_at_once() {
    for d in DURATIONS {
        for c in COUNTS {
            for strategy in 0..3 {
                load_and_plan(&vec![d.to_owned(); 10], &vec![c.to_owned(); 9], strategy);
            }
        }
    }
}

/// Ordinary values with some keys replaced by extreme ones at random: loading never panics, and
/// what is valid is planned and rendered. Some cases must be valid, or planning would go untested.
#[test]
fn extreme_durations_and_counts() {
    use proptest::test_runner::{Config, TestRunner};
    let strategy = (
        prop::collection::vec(prop::option::weighted(0.15, duration_value()), 10),
        prop::collection::vec(prop::option::weighted(0.15, count_value()), 9),
        0u8..3,
    );
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    let valid = std::cell::Cell::new(0);
    runner
        .run(&strategy, |(d, n, strategy)| {
            let d = with_extremes(&ORDINARY_DURATIONS, &d);
            let n = with_extremes(&ORDINARY_COUNTS, &n);
            if load_and_plan(&d, &n, strategy) {
                valid.set(valid.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} of 256 cases were valid", valid.get());
    assert!(
        valid.get() >= 16,
        "only {} of 256 cases were valid",
        valid.get()
    );
}

/// The extreme-values test starts from a valid state, for each strategy.
#[test]
fn extreme_state_with_ordinary_values_is_valid() {
    let d = with_extremes(&ORDINARY_DURATIONS, &vec![None; 10]);
    let n = with_extremes(&ORDINARY_COUNTS, &vec![None; 9]);
    for strategy in 0..3 {
        load(&MemFiles::default().with("kube-free.yaml", extreme_state(&d, &n, strategy)))
            .unwrap_or_else(|e| panic!("strategy {strategy}: {e:?}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_the_root_file(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        load_never_panics(MemFiles::default().with("kube-free.yaml", bytes));
    }

    #[test]
    fn arbitrary_bytes_as_an_environment_file(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        load_never_panics(
            MemFiles::default()
                .with("kube-free.yaml", common::base_without_environments())
                .with("environments/production.yaml", bytes),
        );
    }

    #[test]
    fn soups_of_yaml_tokens(root in yaml_soup(), env in yaml_soup()) {
        load_never_panics(
            MemFiles::default().with("kube-free.yaml", root).with("environments/staging.yaml", env),
        );
    }

    #[test]
    fn mutations_of_a_valid_file(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
    ) {
        let mut bytes = common::BASE.as_bytes().to_vec();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        load_never_panics(MemFiles::default().with("kube-free.yaml", bytes));
    }
}

#[test]
fn the_unmutated_base_is_valid() {
    // Guards the mutation test: it starts from a valid file.
    load(&MemFiles::default().with("kube-free.yaml", common::BASE)).expect("BASE is valid");
}
