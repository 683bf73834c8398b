//! Placeholder: the status page.
pub fn render(status: &serde_json::Value, _now: u64) -> String {
    format!("<!doctype html><pre>{status}</pre>")
}
