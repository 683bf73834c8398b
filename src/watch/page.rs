//! The status page `kube-free watch` serves at `/`: one self-contained HTML document rendered from
//! the `/api/v1/status` JSON. Owns only the markup: plain HTML and inline CSS, no JavaScript, no
//! external assets, nothing to click that changes state. It reads no clock (the caller passes
//! `now`), no file and no socket, and never panics on missing or odd fields (they show as `-`).
//! Every string taken from the JSON is HTML-escaped.

use crate::state::utc;
use serde_json::Value;
use std::fmt::{self, Write};

/// The complete HTML document for `status` (the `/api/v1/status` JSON) as seen at `now` (seconds
/// since the Unix epoch). It refreshes itself every 5 seconds.
pub fn render(status: &Value, now: u64) -> String {
    let mut out = String::with_capacity(8 * 1024);
    document(&mut out, status, now).expect("writing to a String cannot fail");
    out
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:72em;padding:.5em 1em;color:#222;background:#fff}\
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:.2em 0}p{margin:.2em 0}\
code,pre{font-family:ui-monospace,monospace}pre{white-space:pre-wrap;margin:.2em 0}\
.banner{background:#fff3cd;border:1px solid #c9a000;padding:.4em 1em;margin:.5em 0}\
.banner ul{margin:.2em 0}\
.error{background:#fde8e8;border-left:4px solid #c00;padding:.3em .6em}\
.app{border:1px solid #bbb;border-radius:4px;margin:.8em 0;padding:.4em 1em}\
.app.quarantined{border-color:#c00}.app.pending{border-color:#c90}\
.state{font-size:.85em;padding:0 .5em;border-radius:1em;background:#eee}\
.state.in-sync{background:#d4edda}.state.pending{background:#fff3cd}.state.quarantined{background:#f8d7da}\
.problem,.quarantine{color:#a00}.muted{color:#666}\
table{border-collapse:collapse;margin:.3em 0}th,td{text-align:left;padding:.1em .6em;border-bottom:1px solid #ddd}\
tr.dead td{color:#a00}\
td.weight{width:8em;padding:0;background:#eee}\
.bar{text-indent:.3em;white-space:nowrap;background:#9d9}\
@media(prefers-color-scheme:dark){body{color:#ddd;background:#181818}.app{border-color:#555}\
.banner{background:#3a3000}.error{background:#3a1515}.state{background:#333}.state.in-sync{background:#1e4028}\
.state.pending{background:#3a3000}.state.quarantined{background:#4a1c1c}td.weight{background:#333}\
.bar{background:#2a5a3a}\
th,td{border-color:#333}.problem,.quarantine,tr.dead td{color:#f77}.muted{color:#999}}";

fn document(out: &mut String, status: &Value, now: u64) -> fmt::Result {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>kube-free status</title><style>{STYLE}</style></head>\n<body>\n"
    )?;
    summary(out, status, now)?;
    suspended(out, &status["suspended"], now)?;
    cycle(out, &status["cycle"], now)?;
    out.push_str("<main id=\"apps\">\n");
    let apps = status["environments"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if apps.is_empty() {
        out.push_str("<p class=\"muted\" id=\"no-apps\">no environments reported yet</p>\n");
    }
    for app in apps {
        section(out, app)?;
    }
    out.push_str("</main>\n</body></html>\n");
    Ok(())
}

/// The desired state's commit: hash, subject, author and age.
fn summary(out: &mut String, status: &Value, now: u64) -> fmt::Result {
    writeln!(
        out,
        "<header id=\"summary\"><h1>kube-free</h1><p>desired state at \
         <code class=\"commit\" title=\"{}\">{}</code> <span class=\"subject\">{}</span> \
         by <span class=\"author\">{}</span>, committed <span class=\"committed\"{}>{}</span></p></header>",
        text(&status["commit"]),
        short(&status["commit"]),
        text(&status["subject"]),
        text(&status["author"]),
        utc_title(&status["committed_at"]),
        ago(now, &status["committed_at"]),
    )
}

/// The banner shown while reconciling is suspended, one line per suspension.
fn suspended(out: &mut String, suspended: &Value, now: u64) -> fmt::Result {
    let Some(list) = suspended.as_array().filter(|l| !l.is_empty()) else {
        return Ok(());
    };
    out.push_str(
        "<div id=\"suspended\" class=\"banner\" role=\"alert\"><strong>reconciling is suspended</strong><ul>",
    );
    for s in list {
        let scope = if s["env"].is_null() {
            "everything".to_owned()
        } else {
            text(&s["env"])
        };
        let until = match s["until"].as_u64() {
            Some(t) => format!("until {} ({})", utc(t), relative(now, t)),
            None => "until resumed".to_owned(),
        };
        write!(
            out,
            "<li class=\"suspension\"><span class=\"scope\">{scope}</span> \
             <span class=\"until\">{until}</span>: <span class=\"reason\">{}</span></li>",
            text(&s["reason"]),
        )?;
    }
    out.push_str("</ul></div>\n");
    Ok(())
}

/// The last reconcile cycle: outcome, timing, the next poll and the last error.
fn cycle(out: &mut String, cycle: &Value, now: u64) -> fmt::Result {
    let duration = match cycle["duration_ms"].as_u64() {
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "-".to_owned(),
    };
    let acting = match cycle["acting"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    write!(
        out,
        "<section id=\"cycle\" class=\"outcome-{}\"><p>last cycle: <span class=\"outcome\">{}</span> \
         at <code class=\"cycle-commit\" title=\"{}\">{}</code>, finished <span class=\"finished\"{}>{}</span> \
         in <span class=\"duration\">{duration}</span>; last sync <span class=\"last-sync\"{}>{}</span>; \
         next poll <span class=\"next-poll\"{}>{}</span>; acting: <span class=\"acting\">{acting}</span>",
        slug(&cycle["outcome"]),
        text(&cycle["outcome"]),
        text(&cycle["commit"]),
        short(&cycle["commit"]),
        utc_title(&cycle["finished_at"]),
        ago(now, &cycle["finished_at"]),
        utc_title(&cycle["last_sync_at"]),
        ago(now, &cycle["last_sync_at"]),
        utc_title(&cycle["next_poll_at"]),
        ago(now, &cycle["next_poll_at"]),
    )?;
    if let Some(secs) = cycle["backoff_secs"].as_u64().filter(|s| *s > 0) {
        write!(
            out,
            "; backing off <span class=\"backoff\">{}</span>",
            span(secs)
        )?;
    }
    out.push_str("</p>");
    match cycle["error"].as_str().filter(|e| !e.is_empty()) {
        Some(error) => write!(
            out,
            "<p>last error:</p><pre class=\"error\" id=\"last-error\">{}</pre>",
            escape(error)
        )?,
        None => out.push_str("<p>last error: <span id=\"last-error\">-</span></p>"),
    }
    out.push_str("</section>\n");
    Ok(())
}

/// One app of one environment: versions, state, rollout, problems and its servers.
fn section(out: &mut String, app: &Value) -> fmt::Result {
    let (env, name) = (text(&app["env"]), text(&app["app"]));
    let id = format!("{env}-{name}");
    let rollout = &app["rollout"];
    let (state, state_text) = if app["quarantined"] == true {
        ("quarantined", "quarantined")
    } else if app["in_sync"] == true {
        ("in-sync", "in sync")
    } else if app["in_sync"] == false {
        ("pending", "changes pending")
    } else {
        ("unknown", "-")
    };
    let slots = app["slots"].as_array().map_or(&[][..], Vec::as_slice);
    write!(
        out,
        "<section class=\"app {state}\" id=\"{id}\">\
         <h2>{env} / {name} <span class=\"state {state}\">{state_text}</span></h2>\
         <p>desired <span class=\"desired\">{}</span>, serving <span class=\"serving\">{}</span>, \
         strategy <span class=\"strategy\">{}</span></p>\
         <p>traffic: <span class=\"traffic\">{}</span>; falls back to <span class=\"last-good\">{}</span></p>",
        text(&app["desired_version"]),
        serving(slots, &app["traffic"]),
        text(&app["strategy"]),
        text(&app["traffic"]),
        text(&app["last_good"]),
    )?;
    if app["quarantined"] == true {
        let reason = [&rollout["quarantine"]["reason"], &rollout["outcome"]]
            .into_iter()
            .find(|r| r.as_str().is_some_and(|r| !r.is_empty()))
            .map_or_else(|| "-".to_owned(), text);
        write!(
            out,
            "<p class=\"quarantine\">quarantined: <span class=\"reason\">{reason}</span> \
             (<code>kube-free retry</code> or a change lifts it)</p>"
        )?;
    }
    rollout_lines(out, rollout)?;
    let problems = app["problems"].as_array().map_or(&[][..], Vec::as_slice);
    if !problems.is_empty() {
        out.push_str("<ul class=\"problems\">");
        for p in problems {
            write!(out, "<li class=\"problem\">{}</li>", text(p))?;
        }
        out.push_str("</ul>");
    }
    out.push('\n');
    if slots.is_empty() {
        out.push_str("<p class=\"muted\">no servers reported</p>");
    } else {
        out.push_str(
            "<table class=\"slots\"><tr><th>host<th>slot<th>port<th>version<th>instance\
             <th>weight<th>admin<th>balancer</tr>\n",
        );
        for s in slots {
            slot_row(out, &id, s)?;
        }
        out.push_str("</table>");
    }
    out.push_str("</section>\n");
    Ok(())
}

/// The rollout record: version, phase, step, outcome, bake and the last analysis window.
fn rollout_lines(out: &mut String, r: &Value) -> fmt::Result {
    if !r.is_object() {
        out.push_str("<p class=\"rollout\">rollout: -</p>");
        return Ok(());
    }
    write!(
        out,
        "<p class=\"rollout\">rollout of <span class=\"rollout-version\">{}</span> at \
         <code>{}</code>: <span class=\"phase\">{}</span>, step <span class=\"step\">{}</span>",
        text(&r["version"]),
        short(&r["revision"]),
        text(&r["phase"]),
        text(&r["step"]),
    )?;
    if r["outcome"].is_string() {
        write!(
            out,
            ": <span class=\"rollout-outcome\">{}</span>",
            text(&r["outcome"])
        )?;
    }
    out.push_str("</p>");
    if let Some(bake) = r["bake"].as_object() {
        let servers: Vec<String> = bake
            .get("servers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        write!(
            out,
            "<p class=\"bake\">bake of {}: {}</p>",
            if servers.is_empty() {
                "-".to_owned()
            } else {
                servers.join(", ")
            },
            if bake.get("passed") == Some(&Value::Bool(true)) {
                "passed"
            } else {
                "not passed"
            }
        )?;
    }
    if let Some(last) = r["analysis"].as_array().and_then(|a| a.last()) {
        let rate = last["error_rate"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0));
        write!(
            out,
            "<p class=\"analysis verdict-{}\">last analysis: step {} at {}%: {} requests, {} errors ({rate}), \
             <span class=\"verdict\">{}</span></p>",
            slug(&last["verdict"]),
            text(&last["step"]),
            text(&last["weight"]),
            text(&last["requests"]),
            text(&last["errors"]),
            text(&last["verdict"]),
        )?;
    }
    Ok(())
}

/// One server: host, slot, the instance there and the balancer's view, with a bar for its weight
/// (kube-free's weights are percentages; a balancer's larger weights fill the bar).
fn slot_row(out: &mut String, app_id: &str, s: &Value) -> fmt::Result {
    let (host, slot) = (text(&s["host"]), text(&s["slot"]));
    let instance = match (s["alive"].as_bool(), s["ready"].as_bool()) {
        (Some(true), Some(true)) => "ready",
        (Some(true), Some(false)) => "not ready",
        (Some(true), None) => "running",
        (Some(false), _) => "dead",
        (None, _) => "-",
    };
    let width = s["weight"].as_f64().map_or(0.0, |w| w.clamp(0.0, 100.0));
    let class = if is_serving(s) {
        "slot serving"
    } else if instance == "dead" {
        "slot dead"
    } else {
        "slot"
    };
    writeln!(
        out,
        "<tr class=\"{class}\" id=\"{app_id}-{host}-{slot}\"><td>{host}<td>{slot}<td>{}\
         <td class=\"version\">{}<td>{instance}<td class=\"weight\">\
         <div class=\"bar\" style=\"width:{width}%\">{}</div><td>{}<td>{}</tr>",
        text(&s["port"]),
        text(&s["version"]),
        text(&s["weight"]),
        text(&s["admin"]),
        text(&s["balancer_status"]),
    )
}

/// A server takes requests: its instance is alive and its weight is above zero.
fn is_serving(s: &Value) -> bool {
    s["alive"] == true && s["weight"].as_f64().is_some_and(|w| w > 0.0)
}

/// The versions that take traffic (alive servers with weight), in the order first seen; else the
/// status's own traffic line; else `-`.
fn serving(slots: &[Value], traffic: &Value) -> String {
    let mut versions: Vec<&str> = Vec::new();
    for v in slots
        .iter()
        .filter(|s| is_serving(s))
        .filter_map(|s| s["version"].as_str())
    {
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    if versions.is_empty() {
        text(traffic)
    } else {
        escape(&versions.join(", "))
    }
}

/// `s` safe inside HTML text and inside double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as escaped text: strings and numbers as they are, booleans as yes/no, anything
/// else (null, missing, arrays, objects) as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => escape(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        _ => "-".to_owned(),
    }
}

/// The first 12 characters of a commit hash, escaped; `-` when there is none.
fn short(v: &Value) -> String {
    match v.as_str().filter(|s| !s.is_empty()) {
        Some(s) => escape(&s.chars().take(12).collect::<String>()),
        None => "-".to_owned(),
    }
}

/// A word from the JSON made fit for a class name: lowercase letters, digits and dashes.
fn slug(v: &Value) -> String {
    match v.as_str().filter(|s| !s.is_empty()) {
        Some(s) => s
            .chars()
            .take(32)
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect(),
        None => "none".to_owned(),
    }
}

/// A timestamp relative to `now` ("12 s ago", "in 3 min"); `-` when it is not a timestamp.
fn ago(now: u64, t: &Value) -> String {
    t.as_u64()
        .map_or_else(|| "-".to_owned(), |t| relative(now, t))
}

fn relative(now: u64, t: u64) -> String {
    if t <= now {
        format!("{} ago", span(now - t))
    } else {
        format!("in {}", span(t - now))
    }
}

/// A number of seconds in its largest whole unit: `12 s`, `3 min`, `2 h`, `4 d`.
fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// ` title="<UTC time>"` for a timestamp (shown on hover), nothing when there is none.
fn utc_title(t: &Value) -> String {
    t.as_u64()
        .map_or_else(String::new, |t| format!(" title=\"{}\"", utc(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_764_500_112;

    fn slot(host: &str, slot: &str, version: &str, weight: u64) -> Value {
        json!({"host": host, "slot": slot, "port": if slot == "blue" { 8000 } else { 8001 },
               "version": version, "alive": true, "ready": true, "weight": weight,
               "admin": "ready", "balancer_status": "UP"})
    }

    fn status() -> Value {
        json!({
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "subject": "bump demo to 2.0.0",
            "author": "Ann <ann@example.com>",
            "committed_at": 1_764_500_000u64,
            "suspended": [],
            "cycle": {"commit": "0123456789abcdef0123456789abcdef01234567", "outcome": "waiting",
                      "error": null, "finished_at": 1_764_500_100u64, "duration_ms": 1234,
                      "next_poll_at": 1_764_500_160u64, "last_sync_at": 1_764_500_100u64,
                      "acting": true, "backoff_secs": 0},
            "environments": [
                {"env": "production", "app": "demo", "desired_version": "2.0.0", "strategy": "canary",
                 "in_sync": false, "quarantined": false, "last_good": "1.0.0",
                 "traffic": "2.0.0 20%, 1.0.0 80%", "problems": ["web-2 unreachable: timed out"],
                 "rollout": {"strategy": "canary", "version": "2.0.0", "revision": "fedcba9876543210fedcba9876543210fedcba98",
                             "phase": "progressing", "step": 2,
                             "analysis": [{"step": 0, "weight": 10, "requests": 400, "errors": 0,
                                           "error_rate": 0.0, "verdict": "passed"},
                                          {"step": 1, "weight": 20, "requests": 1000, "errors": 3,
                                           "error_rate": 0.003, "verdict": "passed"}]},
                 "slots": [slot("web-1", "blue", "1.0.0", 80), slot("web-1", "green", "2.0.0", 20)]},
                {"env": "staging", "app": "api", "desired_version": "3.1.0", "strategy": "blue-green",
                 "in_sync": true, "quarantined": false, "last_good": null, "traffic": "3.1.0 100%",
                 "problems": [], "rollout": null,
                 "slots": [slot("web-2", "blue", "3.1.0", 100), slot("web-2", "green", "3.0.0", 0)]}
            ]
        })
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("it's a & b"), "it&#39;s a &amp; b");
        assert_eq!(escape("plain 1.0.0"), "plain 1.0.0");
    }

    #[test]
    fn shows_both_apps_with_their_versions_and_state() {
        let page = render(&status(), NOW);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.trim_end().ends_with("</html>"));
        for needle in [
            "<section class=\"app pending\" id=\"production-demo\"><h2>production / demo <span class=\"state pending\">changes pending</span></h2>",
            "<span class=\"desired\">2.0.0</span>",
            "<span class=\"serving\">1.0.0, 2.0.0</span>",
            "<span class=\"strategy\">canary</span>",
            "<span class=\"state pending\">changes pending</span>",
            "<span class=\"traffic\">2.0.0 20%, 1.0.0 80%</span>",
            "<span class=\"last-good\">1.0.0</span>",
            "<span class=\"phase\">progressing</span>, step <span class=\"step\">2</span>",
            "last analysis: step 1 at 20%: 1000 requests, 3 errors (0.30%), <span class=\"verdict\">passed</span>",
            "<li class=\"problem\">web-2 unreachable: timed out</li>",
            "<tr class=\"slot serving\" id=\"production-demo-web-1-blue\">",
            "<td class=\"version\">1.0.0<td>ready<td class=\"weight\"><div class=\"bar\" style=\"width:80%\">80</div><td>ready<td>UP</tr>",
            "<section class=\"app in-sync\" id=\"staging-api\"",
            "<span class=\"state in-sync\">in sync</span>",
            "<span class=\"serving\">3.1.0</span>",
            "<tr class=\"slot\" id=\"staging-api-web-2-green\">",
            "<code class=\"commit\" title=\"0123456789abcdef0123456789abcdef01234567\">0123456789ab</code>",
            "<span class=\"subject\">bump demo to 2.0.0</span>",
            "<span class=\"author\">Ann &lt;ann@example.com&gt;</span>",
            "<span class=\"last-sync\" title=\"2025-11-30 10:55:00 UTC\">12 s ago</span>",
            "<span class=\"next-poll\" title=\"2025-11-30 10:56:00 UTC\">in 48 s</span>",
            "<span class=\"committed\" title=\"2025-11-30 10:53:20 UTC\">1 min ago</span>",
            "<span class=\"duration\">1.2 s</span>",
            "<span class=\"outcome\">waiting</span>",
            "last error: <span id=\"last-error\">-</span>",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        // Only the last analysis window is shown; no suspension, no quarantine.
        assert!(!page.contains("400 requests"));
        assert!(!page.contains("id=\"suspended\""));
        assert!(!page.contains("class=\"quarantine\""));
    }

    #[test]
    fn self_contained_and_read_only() {
        let page = render(&status(), NOW);
        let lower = page.to_lowercase();
        for banned in [
            "<script",
            "<form",
            "<button",
            "<input",
            "<img",
            "<iframe",
            "@import",
            "url(",
            "http://",
            "https://",
            " src=",
            "javascript:",
        ] {
            assert!(!lower.contains(banned), "page contains {banned:?}");
        }
        // No event handler attributes (` onload=`, ` onclick=`...).
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            assert!(
                !lower[i + 3 + name.len()..].starts_with('='),
                "handler on{name}"
            );
        }
        for (i, _) in lower.match_indices("href=\"") {
            assert!(lower[i + 6..].starts_with("data:"), "a link off the page");
        }
    }

    #[test]
    fn suspension_quarantine_error_and_backoff() {
        let mut s = status();
        s["suspended"] = json!([
            {"env": "production", "until": NOW + 7200, "reason": "db migration"},
            {"env": null, "until": null, "reason": "freeze"}
        ]);
        s["cycle"]["outcome"] = json!("failed");
        s["cycle"]["error"] = json!("web-1: ssh: connection refused <boom>");
        s["cycle"]["backoff_secs"] = json!(120);
        s["environments"][0]["quarantined"] = json!(true);
        s["environments"][0]["rollout"]["phase"] = json!("failed");
        s["environments"][0]["rollout"]["quarantine"] = json!({"reason": "error rate 5% > 1%"});
        let page = render(&s, NOW);
        for needle in [
            "<div id=\"suspended\" class=\"banner\"",
            "<span class=\"scope\">production</span> <span class=\"until\">until 2025-11-30 12:55:12 UTC (in 2 h)</span>: <span class=\"reason\">db migration</span>",
            "<span class=\"scope\">everything</span> <span class=\"until\">until resumed</span>: <span class=\"reason\">freeze</span>",
            "<section id=\"cycle\" class=\"outcome-failed\">",
            "<pre class=\"error\" id=\"last-error\">web-1: ssh: connection refused &lt;boom&gt;</pre>",
            "backing off <span class=\"backoff\">2 min</span>",
            "<section class=\"app quarantined\" id=\"production-demo\"",
            "<span class=\"reason\">error rate 5% &gt; 1%</span>",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        // Without a quarantine object, the rollout's outcome is the reason.
        s["environments"][0]["rollout"]["quarantine"] = Value::Null;
        s["environments"][0]["rollout"]["outcome"] = json!("probe failed on web-1");
        let page = render(&s, NOW);
        assert!(page.contains("quarantined: <span class=\"reason\">probe failed on web-1</span>"));
    }

    #[test]
    fn every_string_is_escaped() {
        let evil = "<script>alert('x')</script>\"";
        let mut s = json!({"commit": evil, "subject": evil, "author": evil,
            "suspended": [{"env": evil, "reason": evil, "until": evil}],
            "cycle": {"outcome": evil, "error": evil, "commit": evil},
            "environments": [{"env": evil, "app": evil, "desired_version": evil, "strategy": evil,
                "last_good": evil, "traffic": evil, "problems": [evil],
                "rollout": {"strategy": evil, "version": evil, "revision": evil, "phase": evil,
                            "step": evil, "outcome": evil, "bake": {"servers": [evil]},
                            "analysis": [{"verdict": evil, "step": evil}]},
                "slots": [{"host": evil, "slot": evil, "port": evil, "version": evil, "alive": true,
                           "weight": 5, "admin": evil, "balancer_status": evil}]}]});
        let page = render(&s, NOW);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert('x')"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;"));
        s["environments"][0]["quarantined"] = json!(true);
        s["environments"][0]["rollout"]["quarantine"] = json!({"reason": evil});
        assert!(!render(&s, NOW).contains("<script"));
    }

    #[test]
    fn missing_and_odd_fields_render_as_dashes() {
        let page = render(&json!({}), NOW);
        assert!(page.contains("<code class=\"commit\" title=\"-\">-</code>"));
        assert!(page.contains("<span class=\"last-sync\">-</span>"));
        assert!(page.contains("id=\"no-apps\""));
        assert!(page.ends_with("</html>\n"));
        for odd in [
            json!(null),
            json!([1, 2]),
            json!("text"),
            json!({"environments": [{}, null, 3], "suspended": [null], "cycle": []}),
            json!({"environments": [{"slots": [null, {"weight": -5}, {"weight": 999}],
                                     "rollout": {"analysis": [null]}}]}),
        ] {
            let page = render(&odd, NOW);
            assert!(page.ends_with("</html>\n"));
        }
        let page = render(
            &json!({"environments": [{"env": "e", "app": "a",
                "slots": [{"host": "h", "slot": "s", "weight": 256, "alive": true}, {"weight": -5}]}]}),
            NOW,
        );
        assert!(page.contains("width:100%"), "weights clamp to 100");
        assert!(page.contains("style=\"width:100%\">256</div>"));
        assert!(page.contains("width:0%"));
        assert!(page.contains("<p class=\"rollout\">rollout: -</p>"));
    }

    #[test]
    fn times_read_as_ages() {
        assert_eq!(relative(100, 88), "12 s ago");
        assert_eq!(relative(1000, 800), "3 min ago");
        assert_eq!(relative(100, 100), "0 s ago");
        assert_eq!(relative(0, 7200), "in 2 h");
        assert_eq!(relative(200_000, 0), "2 d ago");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_500_000), "2025-11-30 10:53:20 UTC");
        assert!(
            utc(u64::MAX).ends_with(" UTC"),
            "no overflow at the end of time"
        );
    }

    #[test]
    fn fifty_apps_with_four_servers_fit_in_100_kb() {
        let mut s = status();
        let template = s["environments"][0].clone();
        let mut apps = Vec::new();
        for i in 0..50 {
            let mut app = template.clone();
            app["env"] = json!(format!("production-{}", i % 5));
            app["app"] = json!(format!("service-number-{i}"));
            app["problems"] =
                json!(["web-4 unreachable: ssh: connect to host 10.0.0.14 port 22: timed out"]);
            app["slots"] = json!([
                slot("web-1", "blue", "1.0.0", 80),
                slot("web-1", "green", "2.0.0", 20),
                slot("web-2", "blue", "1.0.0", 80),
                slot("web-2", "green", "2.0.0", 20),
            ]);
            apps.push(app);
        }
        s["environments"] = json!(apps);
        s["suspended"] =
            json!([{"env": "production-1", "until": NOW + 60, "reason": "db migration"}]);
        let page = render(&s, NOW);
        assert_eq!(page.matches("<section class=\"app").count(), 50);
        assert_eq!(page.matches("<tr class=\"slot").count(), 200);
        assert!(page.len() < 100 * 1024, "{} bytes", page.len());
    }
}
