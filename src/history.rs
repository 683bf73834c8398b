//! `kube-free history`: past rollouts, from the audit log every changing run appends to on the
//! balancer hosts ([`crate::reconcile::audit`]). Which hosts to read ([`hosts`]: the balancer
//! hosts of the environments asked for), the lines of one host's log ([`parse`]: a torn or
//! unparsable line is left out and said), the rows ([`rows`]: the logs of several hosts merged by
//! time, the copies of one line counted once, one row per rollout, newest first) and the table
//! ([`render_text`]). Pure: the reading is the command's.

use crate::desired::DesiredState;
use crate::state::AuditLine;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read the audit log on {} of {total} balancer host{}: {}", .failed.len(), if *.total == 1 { "" } else { "s" }, .failed.join(", "))]
    Unread { failed: Vec<String>, total: usize },
}

/// The balancer hosts whose audit logs tell the history of `env` (`None`: of every environment).
pub fn hosts(state: &DesiredState, env: Option<&str>) -> BTreeSet<String> {
    match env {
        Some(env) => BTreeSet::from([state.balancer_of(env).host.clone()]),
        None => state
            .balancer_hosts()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

/// A line of a log that was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub host: String,
    pub file: String,
    /// Its number in what was read, from 1.
    pub line: usize,
    pub error: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {}, line {}: skipped, not an audit line ({})",
            self.file, self.host, self.line, self.error
        )
    }
}

/// One line of a log, as read.
#[derive(Clone, Debug)]
pub struct Line {
    /// Its text: the same on every host it was written to.
    pub text: String,
    pub line: AuditLine,
}

/// The lines of the log `file` of `host`, in order; those that cannot be read (torn by a writer
/// that was killed, edited by hand) are left out, each said.
pub fn parse(host: &str, file: &str, bytes: &[u8]) -> (Vec<Line>, Vec<Skipped>) {
    let (mut lines, mut skipped) = (Vec::new(), Vec::new());
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let text = String::from_utf8_lossy(raw).trim().to_owned();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<AuditLine>(&text) {
            Ok(line) => lines.push(Line { text, line }),
            Err(e) => skipped.push(Skipped {
                host: host.to_owned(),
                file: file.to_owned(),
                line: i + 1,
                error: e.to_string(),
            }),
        }
    }
    (lines, skipped)
}

/// One row of the history: a rollout of a run (or a run that moved none, as `suspend`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    pub time: String,
    /// `-` for a run that moved no rollout and named no environment.
    pub env: String,
    /// `-` for a run that moved no rollout.
    pub app: String,
    pub version: String,
    pub strategy: String,
    pub from: Option<String>,
    /// The rollout's result; the run's outcome for a run that moved none.
    pub result: String,
    pub duration_ms: u64,
    pub commit: String,
    pub who: String,
    pub command: String,
    pub outcome: String,
    pub steps: usize,
}

/// The rows of `app` in `env` (each `None`: any) of `lines` (read from every host), newest first,
/// at most `limit` (0: all). A line read from several hosts counts once; a run that moved no
/// rollout (`suspend`, a balancer's config) is shown only without `app`.
pub fn rows(lines: Vec<Line>, app: Option<&str>, env: Option<&str>, limit: usize) -> Vec<Row> {
    let mut seen = BTreeSet::new();
    let mut lines: Vec<AuditLine> = lines
        .into_iter()
        .filter(|l| seen.insert(l.text.clone()))
        .map(|l| l.line)
        .collect();
    // Oldest first (stable: lines of the same second stay in the order written), then reversed.
    lines.sort_by(|a, b| a.time.cmp(&b.time));
    let mut rows = Vec::new();
    for line in lines.iter().rev() {
        let row = |env: String,
                   app: String,
                   version: String,
                   strategy: String,
                   from: Option<String>,
                   result: String| Row {
            time: line.time.clone(),
            env,
            app,
            version,
            strategy,
            from,
            result,
            duration_ms: line.duration_ms,
            commit: line.commit.clone(),
            who: line.who.clone(),
            command: line.command.clone(),
            outcome: line.outcome.clone(),
            steps: line.steps,
        };
        if line.rollouts.is_empty() {
            let about =
                line.envs.is_empty() || env.is_none_or(|e| line.envs.iter().any(|l| l == e));
            if app.is_none() && about {
                let envs = if line.envs.is_empty() {
                    "-".to_owned()
                } else {
                    line.envs.join(",")
                };
                let dash = || "-".to_owned();
                rows.push(row(
                    envs,
                    dash(),
                    dash(),
                    dash(),
                    None,
                    line.outcome.clone(),
                ));
            }
            continue;
        }
        for r in &line.rollouts {
            if env.is_some_and(|e| e != r.env) || app.is_some_and(|a| a != r.app) {
                continue;
            }
            rows.push(row(
                r.env.clone(),
                r.app.clone(),
                r.version.clone(),
                r.strategy.clone(),
                r.from.clone(),
                r.result.clone(),
            ));
        }
    }
    if limit > 0 {
        rows.truncate(limit);
    }
    rows
}

/// `850ms`, `12.3s`, `5m2s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        crate::desired::duration::format(std::time::Duration::from_secs(ms / 1000))
    }
}

/// The rows as a table, newest first: time, environment, app, version, strategy, result,
/// duration, commit (12 digits) and who.
pub fn render_text(rows: &[Row], out: &mut dyn Write) -> std::io::Result<()> {
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.time.clone(),
                r.env.clone(),
                r.app.clone(),
                r.version.clone(),
                r.strategy.clone(),
                r.result.clone(),
                duration(r.duration_ms),
                r.commit.chars().take(12).collect(),
                r.who.clone(),
            ]
        })
        .collect();
    let head = [
        "TIME", "ENV", "APP", "VERSION", "STRATEGY", "RESULT", "DURATION", "COMMIT", "WHO",
    ];
    let mut widths = head.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &head)?;
    for row in &cells {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AuditRollout;

    fn audit(time: &str, run: &str, rollouts: &[(&str, &str, &str, &str)]) -> String {
        let line = AuditLine {
            time: time.into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            who: "me@here".into(),
            command: "reconcile --once".into(),
            steps: 6,
            outcome: "converged".into(),
            duration_ms: 61_500,
            rollouts: rollouts
                .iter()
                .map(|(env, app, version, result)| AuditRollout {
                    env: (*env).into(),
                    app: (*app).into(),
                    version: (*version).into(),
                    strategy: "blue-green".into(),
                    from: None,
                    result: (*result).into(),
                })
                .collect(),
            envs: vec!["prod".into(), "staging".into()],
            stopped_at: None,
            run: run.into(),
        };
        serde_json::to_string(&line).unwrap()
    }

    #[test]
    fn torn_lines_are_skipped_and_said_with_their_host_and_number() {
        let log = format!(
            "{}\n{{\"time\": \"2026\n\n{}\nnot json\n",
            audit("2026-01-01T00:00:00Z", "a", &[]),
            audit("2026-01-02T00:00:00Z", "b", &[])
        );
        let (lines, skipped) = parse("lb-1", "/s/audit.log", log.as_bytes());
        assert_eq!(lines.len(), 2);
        assert_eq!(
            skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            vec![2, 5]
        );
        assert!(skipped[0]
            .to_string()
            .starts_with("/s/audit.log on lb-1, line 2: skipped, not an audit line ("));
    }

    /// Two hosts' logs: the same lines (a run on both environments) count once, the others are
    /// merged by time, newest first; filters and the limit apply to rows.
    #[test]
    fn logs_of_several_hosts_merge_by_time_and_count_a_line_once() {
        let one = audit(
            "2026-01-01T00:00:00Z",
            "1",
            &[("prod", "api", "1.0", "succeeded")],
        );
        let two = audit(
            "2026-01-02T00:00:00Z",
            "2",
            &[
                ("prod", "api", "2.0", "rolled-back"),
                ("staging", "web", "3.0", "succeeded"),
            ],
        );
        let three = audit(
            "2026-01-03T00:00:00Z",
            "3",
            &[("staging", "api", "2.0", "waiting")],
        );
        let suspend = AuditLine {
            rollouts: Vec::new(),
            envs: vec!["prod".into()],
            outcome: "suspended".into(),
            ..serde_json::from_str(&audit("2026-01-04T00:00:00Z", "4", &[])).unwrap()
        };
        let suspend = serde_json::to_string(&suspend).unwrap();
        let (a, _) = parse("lb-1", "f", format!("{one}\n{two}\n{suspend}\n").as_bytes());
        let (b, _) = parse("lb-2", "f", format!("{two}\n{three}\n").as_bytes());
        let all: Vec<Line> = a.into_iter().chain(b).collect();
        let seen = |rows: Vec<Row>| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    format!(
                        "{} {}/{} {} {}",
                        &r.time[..10],
                        r.env,
                        r.app,
                        r.version,
                        r.result
                    )
                })
                .collect()
        };
        assert_eq!(
            seen(rows(all.clone(), None, None, 0)),
            [
                "2026-01-04 prod/- - suspended",
                "2026-01-03 staging/api 2.0 waiting",
                "2026-01-02 prod/api 2.0 rolled-back",
                "2026-01-02 staging/web 3.0 succeeded",
                "2026-01-01 prod/api 1.0 succeeded",
            ]
        );
        assert_eq!(
            seen(rows(all.clone(), Some("api"), None, 0)),
            [
                "2026-01-03 staging/api 2.0 waiting",
                "2026-01-02 prod/api 2.0 rolled-back",
                "2026-01-01 prod/api 1.0 succeeded",
            ]
        );
        assert_eq!(
            seen(rows(all.clone(), None, Some("staging"), 0)),
            [
                "2026-01-03 staging/api 2.0 waiting",
                "2026-01-02 staging/web 3.0 succeeded",
            ]
        );
        assert_eq!(
            seen(rows(all.clone(), Some("api"), Some("prod"), 1)),
            ["2026-01-02 prod/api 2.0 rolled-back"]
        );
    }

    #[test]
    fn the_table_has_a_column_per_field() {
        let (lines, _) = parse(
            "lb-1",
            "f",
            audit(
                "2026-01-01T00:00:00Z",
                "1",
                &[("prod", "api", "1.0", "succeeded")],
            )
            .as_bytes(),
        );
        let mut out = Vec::new();
        render_text(&rows(lines, None, None, 0), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TIME                  ENV   APP  VERSION  STRATEGY    RESULT     DURATION  COMMIT        WHO\n\
             2026-01-01T00:00:00Z  prod  api  1.0      blue-green  succeeded  1m1s      0123456789ab  me@here\n"
        );
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_340), "12.3s");
    }
}
