//! What goes on the wire, pure: the JSON and Slack bodies, the signature, the retry delays. Owns no
//! I/O and reads no clock (times are passed in).

use super::{Event, EventKind};
use hmac::{KeyInit, Mac};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The body of `format: json`, in this key order.
#[derive(Serialize)]
struct JsonBody<'a> {
    event: &'static str,
    env: &'a str,
    app: &'a str,
    commit: &'a str,
    version: Option<&'a str>,
    message: &'a str,
    time: String,
}

/// `{"event", "env", "app", "commit", "version", "message", "time"}`; `time` is when the event was
/// queued, RFC 3339 in UTC with whole seconds.
pub fn json(event: &Event, time: SystemTime) -> String {
    serde_json::to_string(&JsonBody {
        event: event.kind.as_str(),
        env: &event.env,
        app: &event.app,
        commit: &event.commit,
        version: event.version.as_deref(),
        message: &event.message,
        time: rfc3339(time),
    })
    .expect("strings serialize")
}

/// `{"text": ...}` for a Slack incoming webhook: one line saying what happened where, then the message.
pub fn slack(event: &Event) -> String {
    let icon = match event.kind {
        EventKind::Started => ":rocket:",
        EventKind::Succeeded => ":white_check_mark:",
        EventKind::Failed => ":x:",
        EventKind::Quarantined => ":no_entry:",
        EventKind::SyncFailing => ":warning:",
        EventKind::Recovered => ":large_green_circle:",
        EventKind::Paused => ":double_vertical_bar:",
        EventKind::Step | EventKind::Promoted | EventKind::DriftCorrected => ":information_source:",
    };
    let place = match (event.env.as_str(), event.app.as_str()) {
        ("", "") => "kube-free".to_owned(),
        (env, "") => env.to_owned(),
        ("", app) => app.to_owned(),
        (env, app) => format!("{app} in {env}"),
    };
    let mut text = format!("{icon} *{}*: {}", escape(&place), event.kind.as_str());
    let mut facts = Vec::new();
    if let Some(v) = &event.version {
        facts.push(format!("version {}", escape(v)));
    }
    if !event.commit.is_empty() {
        facts.push(format!(
            "commit `{}`",
            escape(&event.commit.chars().take(12).collect::<String>())
        ));
    }
    if !facts.is_empty() {
        text.push_str(&format!(" ({})", facts.join(", ")));
    }
    if !event.message.is_empty() {
        text.push('\n');
        text.push_str(&escape(&event.message));
    }
    serde_json::json!({ "text": text }).to_string()
}

/// Slack's control characters in text: `&`, `<`, `>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `sha256=<hex>` of HMAC-SHA256 over `"<timestamp>.<body>"`: the value of `X-Kube-Free-Signature`
/// (with the same `timestamp` in `X-Kube-Free-Timestamp`).
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Tries of one event (the first and three retries).
pub const ATTEMPTS: u32 = 4;

/// Wait before try `attempt` (0-based; 0 is the first try): none, then 1 s, 2 s, 4 s.
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 1).min(5)),
    }
}

/// Whether an HTTP status is worth another try: server errors, 408 and 429. Other 4xx mean the
/// request itself is refused (a wrong URL or token), which another try does not change.
pub fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-11-30T12:45:35Z`.
pub fn rfc3339(time: SystemTime) -> String {
    crate::state::utc(unix_secs(time))
        .replacen(' ', "T", 1)
        .replace(" UTC", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            kind: EventKind::Failed,
            env: "production".into(),
            app: "api".into(),
            commit: "818e539298329720b18e0eb7ec99784a61809eb6".into(),
            version: Some("1.4.2".into()),
            message: "probe <deadline> 60s & more".into(),
        }
    }

    #[test]
    fn json_body_has_every_field_in_order() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_042_735);
        assert_eq!(
            json(&event(), t),
            r#"{"event":"failed","env":"production","app":"api","commit":"818e539298329720b18e0eb7ec99784a61809eb6","version":"1.4.2","message":"probe <deadline> 60s & more","time":"2026-11-30T12:45:35Z"}"#
        );
        let mut e = event();
        e.version = None;
        assert!(json(&e, t).contains(r#""version":null"#));
    }

    #[test]
    fn slack_text_says_what_and_where_and_escapes() {
        assert_eq!(
            slack(&event()),
            r#"{"text":":x: *api in production*: failed (version 1.4.2, commit `818e53929832`)\nprobe &lt;deadline&gt; 60s &amp; more"}"#
        );
        let e = Event {
            kind: EventKind::SyncFailing,
            env: String::new(),
            app: String::new(),
            commit: String::new(),
            version: None,
            message: String::new(),
        };
        assert_eq!(
            slack(&e),
            r#"{"text":":warning: *kube-free*: sync_failing"}"#
        );
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // A known answer (`printf '1700000000.{}' | openssl dgst -sha256 -hmac key`).
        assert_eq!(
            sign(b"key", 1_700_000_000, "{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    #[test]
    fn retries_back_off_and_stop() {
        let waits: Vec<u64> = (0..ATTEMPTS).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![0, 1, 2, 4]);
        assert!(retryable(500) && retryable(503) && retryable(429) && retryable(408));
        assert!(!retryable(400) && !retryable(401) && !retryable(404));
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
    }
}
