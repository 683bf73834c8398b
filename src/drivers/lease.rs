//! The lease: `<state_dir>/lock` on a balancer host says which kube-free run may change things, until
//! when. One line, `EPOCH EXPIRES RUN_ID HOLDER_HOST PID`, replaced atomically (temp file + rename);
//! every read-check-write runs under `flock` on `lock.mutex` on that host, and every time is that
//! host's clock, so contenders on machines with different clocks still agree. A lease that is not
//! renewed expires and is then taken over, with the epoch raised by one: a run that lost its lease
//! (it was paused past the expiry, say) finds a newer epoch when it checks before a step (fencing).
//! Only the commands (argv, by pure functions) and the parsing of their answers live here.

use super::Cmd;

pub fn lock_file(state_dir: &str) -> String {
    format!("{}/lock", state_dir.trim_end_matches('/'))
}

/// Who holds a lease, as the lock file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub epoch: u64,
    /// Seconds since the Unix epoch, on the balancer host's clock.
    pub expires: u64,
    pub run_id: String,
    pub host: String,
    pub pid: u32,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} (pid {} on {}), epoch {}",
            self.run_id, self.pid, self.host, self.epoch
        )
    }
}

/// What an acquire, renew or check answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// This run holds the lease at `epoch` until `expires`.
    Held { epoch: u64, expires: u64 },
    /// Another run holds it; `now` is the balancer host's clock.
    Taken { holder: Holder, now: u64 },
    /// This run does not hold it (any more): nobody, or `holder`, does.
    Lost { holder: Option<Holder> },
    /// The lease is released (or was not held by this run).
    Released,
}

const PRELUDE: &str = r#"set -e; f=$1; mkdir -p "$(dirname "$f")"; exec 9>>"$f.mutex"; flock -w 10 9; now=$(date +%s); epoch=0; expires=0; run=-; host=-; pid=0; if [ -s "$f" ]; then read -r epoch expires run host pid <"$f" || true; fi; "#;
const WRITE: &str = r#"tmp=$(mktemp "$f.XXXXXX"); printf '%s %s %s %s %s\n' "$epoch" "$expires" "$2" "$4" "$5" >"$tmp"; sync "$tmp"; mv -f "$tmp" "$f"; "#;

/// Takes the lease for `run_id` (renewing it when this run holds it already), unless another run
/// holds one that has not expired. `ttl_secs` from now on the host's clock.
pub fn acquire_cmd(path: &str, run_id: &str, ttl_secs: u64, holder_host: &str, pid: u32) -> Cmd {
    let script = format!(
        "{PRELUDE}if [ \"$run\" != \"$2\" ] && [ \"$expires\" -gt \"$now\" ]; then echo \"taken $epoch $expires $run $host $pid $now\"; exit 0; fi; if [ \"$run\" != \"$2\" ]; then epoch=$((epoch + 1)); fi; expires=$((now + $3)); {WRITE}echo \"held $epoch $expires\""
    );
    script_cmd(
        script,
        &[
            path,
            run_id,
            &ttl_secs.to_string(),
            holder_host,
            &pid.to_string(),
        ],
    )
}

/// `sh -c SCRIPT kube-free-lease ARGS…`, a command that changes something; every value is a
/// positional parameter.
fn script_cmd(script: String, args: &[&str]) -> Cmd {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script,
        "kube-free-lease".to_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    Cmd::change(argv)
}

/// Extends the lease of `run_id` at `epoch` by `ttl_secs` from now, if it still holds it.
pub fn renew_cmd(path: &str, run_id: &str, ttl_secs: u64, epoch: u64) -> Cmd {
    let script = format!(
        "{PRELUDE}if [ \"$run\" != \"$2\" ] || [ \"$epoch\" != \"$6\" ] || [ \"$expires\" -le \"$now\" ]; then echo \"lost $epoch $expires $run $host $pid\"; exit 0; fi; expires=$((now + $3)); set -- \"$1\" \"$2\" \"$3\" \"$host\" \"$pid\"; {WRITE}echo \"held $epoch $expires\""
    );
    script_cmd(
        script,
        &[
            path,
            run_id,
            &ttl_secs.to_string(),
            "",
            "",
            &epoch.to_string(),
        ],
    )
}

/// Whether `run_id` still holds the lease at `epoch` (fencing before a step that changes something).
pub fn check_cmd(path: &str, run_id: &str, epoch: u64) -> Cmd {
    Cmd {
        changes: false,
        ..script_cmd(
            r#"f=$1; now=$(date +%s); epoch=0; expires=0; run=-; host=-; pid=0; if [ -s "$f" ]; then read -r epoch expires run host pid <"$f" || true; fi; if [ "$run" = "$2" ] && [ "$epoch" = "$3" ] && [ "$expires" -gt "$now" ]; then echo "held $epoch $expires"; else echo "lost $epoch $expires $run $host $pid"; fi"#.to_owned(),
            &[path, run_id, &epoch.to_string()],
        )
    }
}

/// Exit status of a command refused by [`fenced_cmd`].
pub const FENCED: i32 = 97;

/// `cmd`, run only if `run_id` still holds the lease in `path` at `epoch`: the check is made on
/// the host, under the lease's `flock`, in the same command that then `exec`s `cmd` (so no step
/// of a run whose lease passed to another can land between a check and its change). Refused with
/// exit [`FENCED`] and the lock file's line on stderr.
pub fn fenced_cmd(path: &str, run_id: &str, epoch: u64, cmd: &Cmd) -> Cmd {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(r#"{FENCE} >&2; exit {FENCED}; fi; exec 9>&-; shift 3; exec "$@""#),
        "kube-free-fenced".to_owned(),
        path.to_owned(),
        run_id.to_owned(),
        epoch.to_string(),
    ];
    argv.extend(cmd.argv.iter().cloned());
    Cmd {
        argv,
        stdin: cmd.stdin.clone(),
        changes: cmd.changes,
    }
}

/// Takes the lease's `flock` on the host and checks, as [`fenced_cmd`] does, that `run_id` holds
/// the lease at `epoch`; then prints `held` and keeps the lock until its standard input closes
/// (for a change that is not a shell command: one through an admin socket). Otherwise prints the
/// `fenced: …` line and exits [`FENCED`].
pub fn hold_cmd(path: &str, run_id: &str, epoch: u64) -> Cmd {
    Cmd::change([
        "sh".to_owned(),
        "-c".to_owned(),
        format!(r#"{FENCE}; exit {FENCED}; fi; echo held; read -r _ || true"#),
        "kube-free-hold".to_owned(),
        path.to_owned(),
        run_id.to_owned(),
        epoch.to_string(),
    ])
}

/// The start of [`fenced_cmd`] and [`hold_cmd`]: under `flock` on the lease's mutex, whether
/// `$2` holds the lease in `$1` at epoch `$3`; when not, it is in the branch that echoes why.
const FENCE: &str = r#"f=$1; exec 9>>"$f.mutex"; flock -w 10 9; now=$(date +%s); epoch=0; expires=0; run=-; if [ -s "$f" ]; then read -r epoch expires run rest <"$f" || true; fi; if [ "$run" != "$2" ] || [ "$epoch" != "$3" ] || [ "$expires" -le "$now" ]; then echo "fenced: the lease on this host is not this run's any more (lock: $epoch $expires $run)""#;

/// Removes the lease if `run_id` holds it.
pub fn release_cmd(path: &str, run_id: &str) -> Cmd {
    let script = format!("{PRELUDE}if [ \"$run\" = \"$2\" ]; then rm -f \"$f\"; fi; echo released");
    script_cmd(script, &[path, run_id])
}

/// Parses the one line a lease command prints.
pub fn parse_answer(text: &str) -> Option<Answer> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    let holder = |from: usize| -> Option<Holder> {
        let run_id = (*f.get(from + 2)?).to_owned();
        (run_id != "-").then_some(Holder {
            epoch: num(from)?,
            expires: num(from + 1)?,
            run_id,
            host: (*f.get(from + 3)?).to_owned(),
            pid: f.get(from + 4)?.parse().ok()?,
        })
    };
    match *f.first()? {
        "held" => Some(Answer::Held {
            epoch: num(1)?,
            expires: num(2)?,
        }),
        "taken" => Some(Answer::Taken {
            holder: holder(1)?,
            now: num(6)?,
        }),
        "lost" => Some(Answer::Lost { holder: holder(1) }),
        "released" => Some(Answer::Released),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact_data() {
        let c = acquire_cmd("/s/lock", "r1", 30, "ci-7", 42);
        assert!(c.changes);
        assert_eq!(
            &c.argv[3..],
            ["kube-free-lease", "/s/lock", "r1", "30", "ci-7", "42"]
        );
        assert!(c.argv[2].starts_with("set -e; f=$1;"));
        assert!(c.argv[2].contains("flock -w 10 9"));
        let c = check_cmd("/s/lock", "r1", 3);
        assert!(!c.changes);
        assert_eq!(&c.argv[3..], ["kube-free-lease", "/s/lock", "r1", "3"]);
        assert_eq!(
            &renew_cmd("/s/lock", "r1", 30, 3).argv[3..],
            ["kube-free-lease", "/s/lock", "r1", "30", "", "", "3"]
        );
        assert_eq!(lock_file("/var/lib/kube-free/"), "/var/lib/kube-free/lock");
    }

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse_answer("held 4 1700000030\n"),
            Some(Answer::Held {
                epoch: 4,
                expires: 1700000030
            })
        );
        assert_eq!(
            parse_answer("taken 4 1700000030 r9 bastion 77 1700000001"),
            Some(Answer::Taken {
                holder: Holder {
                    epoch: 4,
                    expires: 1700000030,
                    run_id: "r9".into(),
                    host: "bastion".into(),
                    pid: 77
                },
                now: 1700000001
            })
        );
        assert_eq!(
            parse_answer("lost 0 0 - - 0"),
            Some(Answer::Lost { holder: None })
        );
        assert_eq!(parse_answer("released"), Some(Answer::Released));
        assert_eq!(parse_answer("sh: flock: not found"), None);
    }

    /// The scripts themselves, run by `sh` on this machine against a temporary directory.
    #[test]
    fn the_scripts_take_renew_fence_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock").to_string_lossy().into_owned();
        let run = |c: Cmd| {
            let out = std::process::Command::new(&c.argv[0])
                .args(&c.argv[1..])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            parse_answer(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        let Answer::Held { epoch, .. } = run(acquire_cmd(&path, "a", 30, "h", 1)) else {
            panic!("a takes a free lease")
        };
        assert_eq!(epoch, 1);
        assert!(matches!(
            run(acquire_cmd(&path, "b", 30, "h", 2)),
            Answer::Taken { holder, .. } if holder.run_id == "a"
        ));
        assert!(matches!(run(check_cmd(&path, "a", 1)), Answer::Held { .. }));
        assert!(matches!(run(check_cmd(&path, "b", 1)), Answer::Lost { .. }));
        assert!(matches!(
            run(renew_cmd(&path, "a", 30, 1)),
            Answer::Held { epoch: 1, .. }
        ));
        // An expired lease (ttl 0) is taken over, with a new epoch: the old holder is fenced off.
        run(acquire_cmd(&path, "a", 0, "h", 1));
        assert!(matches!(
            run(acquire_cmd(&path, "b", 30, "h", 2)),
            Answer::Held { epoch: 2, .. }
        ));
        assert!(matches!(run(check_cmd(&path, "a", 1)), Answer::Lost { .. }));
        assert!(matches!(
            run(renew_cmd(&path, "a", 30, 1)),
            Answer::Lost { .. }
        ));
        // Only the holder releases it.
        run(release_cmd(&path, "a"));
        assert!(matches!(run(check_cmd(&path, "b", 2)), Answer::Held { .. }));
        run(release_cmd(&path, "b"));
        assert!(!std::path::Path::new(&path).exists());
        assert!(matches!(
            run(acquire_cmd(&path, "a", 30, "h", 1)),
            Answer::Held { epoch: 1, .. }
        ));
    }
}
