//! The pure decisions of the live steps, as plain functions of what the balancer reports: the
//! safety rules of traffic (weight only to servers that are UP with a passed check, some UP server
//! always keeps weight, never drain the last server that serves, weights read back as set) and the
//! canary's analysis verdict. The effects call these before they act; the tests call them alone.

use crate::desired::Analysis;
use crate::names::ServerKey;
use crate::observed::{Admin, Servers};
use crate::plan::Action;

/// A change the traffic rules do not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refusing to change weights: no server that is UP would keep any weight")]
    NoServerKeepsWeight,
    #[error("refusing to move traffic to {}/{}: balancer reports {}", .server.0, .server.1, .label.as_deref().map_or("no such server".to_owned(), |l| format!("{l:?}")))]
    NotUp {
        server: ServerKey,
        /// What the balancer calls the server's state (`None`: it does not know the server).
        label: Option<String>,
    },
    #[error("refusing to drain {}/{}: no other server of the backend is UP with weight", .0.0, .0.1)]
    LastServer(ServerKey),
    #[error("read back weight {got:?} for {}/{}, expected {want}", .server.0, .server.1)]
    WeightNotSet {
        server: ServerKey,
        got: Option<u32>,
        want: u32,
    },
}

/// Whether `weights` may be set: every server of `must_be_up` is UP with a passed check (weight
/// goes only to servers the balancer itself found healthy), and some server that is UP keeps a
/// weight above zero. `Ok(true)` when every weight is already as asked (nothing to send).
pub fn check_weights(
    servers: &Servers,
    weights: &[(ServerKey, u32)],
    must_be_up: &[ServerKey],
) -> Result<bool, Refusal> {
    if !weights
        .iter()
        .any(|(k, w)| *w > 0 && servers.get(k).is_some_and(|s| s.checked_up()))
    {
        return Err(Refusal::NoServerKeepsWeight);
    }
    for k in must_be_up {
        match servers.get(k) {
            Some(s) if s.checked_up() => {}
            other => {
                return Err(Refusal::NotUp {
                    server: k.clone(),
                    label: other.map(|s| s.label.clone()),
                })
            }
        }
    }
    Ok(weights
        .iter()
        .all(|(k, w)| servers.get(k).is_some_and(|s| s.weight == *w)))
}

/// Whether the weights read back after a change are the ones set.
pub fn check_read_back(servers: &Servers, weights: &[(ServerKey, u32)]) -> Result<(), Refusal> {
    for (k, want) in weights {
        let got = servers.get(k).map(|s| s.weight);
        if got != Some(*want) {
            return Err(Refusal::WeightNotSet {
                server: k.clone(),
                got,
                want: *want,
            });
        }
    }
    Ok(())
}

/// Whether `server` may be drained: never take traffic away from the last server of its backend
/// that can take it. A server without weight, in maintenance already, or DOWN takes none.
pub fn check_drain(servers: &Servers, server: &ServerKey) -> Result<(), Refusal> {
    let current = servers.get(server);
    if current.is_some_and(|s| s.weight > 0 && s.admin != Admin::Maint && s.up) {
        let others_serve = servers
            .iter()
            .any(|(k, s)| k.0 == server.0 && k != server && s.weight > 0 && s.checked_up());
        if !others_serve {
            return Err(Refusal::LastServer(server.clone()));
        }
    }
    Ok(())
}

/// What the canary served over one analysis window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
}

impl Window {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The analysis of one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// A check failed, or the error rate is above `max_error_rate`.
    Failed,
    /// Fewer requests than `min_requests`: too few to judge.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// Judges a window: a failed check fails it whatever the figures; then too few requests say
/// nothing; then the error rate decides.
pub fn judge(window: Window, analysis: &Analysis, check_failed: bool) -> Verdict {
    if check_failed {
        Verdict::Failed
    } else if window.requests < analysis.min_requests {
        Verdict::Inconclusive
    } else if window.error_rate() > analysis.max_error_rate {
        Verdict::Failed
    } else {
        Verdict::Passed
    }
}

/// What the pause does after a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The step is done: go on.
    Proceed,
    /// Roll back: the analysis failed.
    Fail,
    /// Roll back: still too few requests at the progress deadline.
    GiveUp,
    /// Too few requests: wait longer.
    Extend,
}

/// A promote is a person's decision: too few requests do not hold it up (errors still do).
pub fn decide(verdict: Verdict, promoted: bool, past_deadline: bool) -> Decision {
    match verdict {
        Verdict::Passed => Decision::Proceed,
        Verdict::Failed => Decision::Fail,
        Verdict::Inconclusive if promoted => Decision::Proceed,
        Verdict::Inconclusive if past_deadline => Decision::GiveUp,
        Verdict::Inconclusive => Decision::Extend,
    }
}

/// Whether a canary whose rollout failed at `action` is still being judged, so that its traffic
/// goes back to the last good version: before its bake passed. After it, a failed drain or stop
/// of the old version leaves the new one serving.
pub fn takes_back(action: &Action) -> bool {
    matches!(
        action,
        Action::Pull { .. }
            | Action::Start { .. }
            | Action::Probe { .. }
            | Action::Enable { .. }
            | Action::Weigh { .. }
            | Action::Pause { .. }
            | Action::Bake { .. }
    )
}

#[cfg(test)]
mod tests;
