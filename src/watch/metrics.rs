//! The watcher's Prometheus metrics (names in docs/watch.md): one registry, encoded by
//! prometheus-client. Labels are a small fixed set (environment, app, result, kind); no commit
//! hashes. Per-app series are rebuilt from each cycle's status, so the series of a removed app
//! or of a version that no longer serves disappear at once.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub env: String,
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub env: String,
    pub app: String,
    pub desired: String,
    pub serving: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub env: String,
    pub app: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvLabel {
    pub env: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub cycles: Family<ResultLabel, Counter>,
    pub cycle_duration: Histogram,
    pub last_success: FloatGauge,
    pub app_info: Family<VersionLabels, Gauge>,
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    pub canary_weight: Family<AppLabels, Gauge>,
    pub analysis_error_rate: Family<AppLabels, FloatGauge>,
    pub quarantined: Family<AppLabels, Gauge>,
    pub drift_corrections: Family<KindLabel, Counter>,
    pub drift_found: Family<KindLabel, Gauge>,
    pub webhooks: Family<ResultLabel, Counter>,
    pub git_fetch_errors: Counter,
    pub lease_held: Gauge,
    pub suspended: Family<EnvLabel, Gauge>,
    pub backoff: FloatGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kube_free");
        let m = Metrics {
            cycles: Family::default(),
            // 0.1 s (a no-change cycle) to 10 min (a long rollout).
            cycle_duration: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ]),
            last_success: FloatGauge::default(),
            app_info: Family::default(),
            rollout_phase: Family::default(),
            canary_weight: Family::default(),
            analysis_error_rate: Family::default(),
            quarantined: Family::default(),
            drift_corrections: Family::default(),
            drift_found: Family::default(),
            webhooks: Family::default(),
            git_fetch_errors: Counter::default(),
            lease_held: Gauge::default(),
            suspended: Family::default(),
            backoff: FloatGauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "cycles",
            "Watch cycles by result (in_sync, converged, waiting, locked, failed, quarantined, invalid, git_failed, drift, suspended, stopped, unchanged)",
            m.cycles.clone(),
        );
        r.register(
            "cycle_duration_seconds",
            "Duration of watch cycles (every cycle but a poll that found nothing new)",
            m.cycle_duration.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When a cycle last ended in sync or converged (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "app_info",
            "1 per environment and app, labelled with the desired version and the versions that serve",
            m.app_info.clone(),
        );
        r.register(
            "rollout_phase",
            "1 for the phase of the app's rollout record of its desired version",
            m.rollout_phase.clone(),
        );
        r.register(
            "canary_weight",
            "Percent of the app's traffic on its canary (0 without one)",
            m.canary_weight.clone(),
        );
        r.register(
            "analysis_error_rate",
            "Error rate of the last analysis of the app's rollout",
            m.analysis_error_rate.clone(),
        );
        r.register(
            "quarantined",
            "1 when the app's desired version is quarantined",
            m.quarantined.clone(),
        );
        r.register(
            "drift_corrections",
            "Drift put back by self-heal, by kind (instance, traffic, config)",
            m.drift_corrections.clone(),
        );
        r.register(
            "drift",
            "Steps of drift found and not corrected (self-heal off or suspended), by kind",
            m.drift_found.clone(),
        );
        r.register(
            "webhook_requests",
            "Webhook requests by result (accepted, bad_signature, unsigned, too_large, disabled)",
            m.webhooks.clone(),
        );
        r.register(
            "git_fetch_errors",
            "Fetches of the desired-state repository that failed",
            m.git_fetch_errors.clone(),
        );
        r.register(
            "lease_held",
            "1 while this watcher holds the lease (acts), 0 while it idles",
            m.lease_held.clone(),
        );
        r.register(
            "suspended",
            "1 per suspended environment (`*` for all) while a suspension lasts",
            m.suspended.clone(),
        );
        r.register(
            "backoff_seconds",
            "How long the watcher waits after failing cycles before the next (0 when healthy)",
            m.backoff.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The exposition text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Replaces the per-app series with what `apps` (the status report) says.
    pub fn set_apps(&self, apps: &[serde_json::Value]) {
        self.app_info.clear();
        self.rollout_phase.clear();
        self.canary_weight.clear();
        self.analysis_error_rate.clear();
        self.quarantined.clear();
        for app in apps {
            let text = |k: &str| app[k].as_str().unwrap_or_default().to_owned();
            let labels = AppLabels {
                env: text("env"),
                app: text("app"),
            };
            self.app_info
                .get_or_create(&VersionLabels {
                    env: labels.env.clone(),
                    app: labels.app.clone(),
                    desired: text("desired_version"),
                    serving: serving(app).join(","),
                })
                .set(1);
            self.quarantined
                .get_or_create(&labels)
                .set(i64::from(app["quarantined"] == true));
            let rollout = &app["rollout"];
            if let Some(phase) = rollout["phase"].as_str() {
                self.rollout_phase
                    .get_or_create(&PhaseLabels {
                        env: labels.env.clone(),
                        app: labels.app.clone(),
                        phase: phase.to_owned(),
                    })
                    .set(1);
            }
            if let Some(last) = rollout["analysis"].as_array().and_then(|a| a.last()) {
                self.analysis_error_rate
                    .get_or_create(&labels)
                    .set(last["error_rate"].as_f64().unwrap_or(0.0));
            }
            let canary = if app["strategy"] == "canary" && app["in_sync"] != true {
                canary_weight(app)
            } else {
                0
            };
            self.canary_weight.get_or_create(&labels).set(canary);
        }
    }
}

/// The versions that serve an app: of live instances with weight.
pub fn serving(app: &serde_json::Value) -> Vec<String> {
    let mut versions: Vec<String> = app["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["alive"] == true && s["weight"].as_u64().unwrap_or(0) > 0)
        .filter_map(|s| s["version"].as_str().map(str::to_owned))
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// The share of the weight on the desired version's servers, in percent, while others weigh too.
fn canary_weight(app: &serde_json::Value) -> i64 {
    let desired = &app["desired_version"];
    let (mut canary, mut all) = (0u64, 0u64);
    for s in app["slots"].as_array().into_iter().flatten() {
        if s["alive"] != true {
            continue;
        }
        let w = s["weight"].as_u64().unwrap_or(0);
        all += w;
        if &s["version"] == desired {
            canary += w;
        }
    }
    if all == 0 || canary == all {
        0
    } else {
        (canary * 100 / all) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(name: &str, slots: serde_json::Value) -> serde_json::Value {
        json!({"env": "production", "app": name, "desired_version": "2.0.0", "strategy": "canary",
               "in_sync": false, "quarantined": false, "slots": slots})
    }

    #[test]
    fn app_series_follow_the_status_and_removed_apps_disappear() {
        let m = Metrics::new();
        m.set_apps(&[
            app(
                "api",
                json!([
                    {"version": "1.0.0", "alive": true, "weight": 80},
                    {"version": "2.0.0", "alive": true, "weight": 20},
                    {"version": "0.9.0", "alive": false, "weight": 100},
                ]),
            ),
            app(
                "web",
                json!([{"version": "2.0.0", "alive": true, "weight": 100}]),
            ),
        ]);
        let text = m.encode();
        assert!(
            text.contains(r#"kube_free_app_info{env="production",app="api",desired="2.0.0",serving="1.0.0,2.0.0"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kube_free_canary_weight{env="production",app="api"} 20"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kube_free_canary_weight{env="production",app="web"} 0"#),
            "{text}"
        );
        m.set_apps(&[app(
            "api",
            json!([{"version": "2.0.0", "alive": true, "weight": 100}]),
        )]);
        let text = m.encode();
        assert!(!text.contains(r#"app="web""#), "{text}");
        assert!(!text.contains("1.0.0"), "{text}");
    }

    #[test]
    fn counters_and_histogram_are_exposed_with_their_names() {
        let m = Metrics::new();
        m.cycles
            .get_or_create(&ResultLabel {
                result: "converged".into(),
            })
            .inc();
        m.cycle_duration.observe(0.3);
        let text = m.encode();
        assert!(
            text.contains(r#"kube_free_cycles_total{result="converged"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("kube_free_cycle_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("# TYPE kube_free_lease_held gauge"), "{text}");
    }
}
