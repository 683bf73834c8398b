//! The flood rules, pure: which events go out. Time is passed in, so tests run on a fake clock.
//! Owns no I/O and knows nothing of targets.

use super::{Event, EventKind};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// After the first notice of a persisting condition, it is sent again this long after the first
/// (each at most once), and then no more until it clears.
pub const RESEND_AFTER: [Duration; 3] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
];

/// How many once-only events are remembered; past this the oldest half is forgotten.
pub const REMEMBERED: usize = 10_000;

/// Identity of a once-only event: kind, environment, app and commit, plus the message for `step`,
/// `paused` and `drift_corrected` (so that each step and each gate of one rollout, and each kind
/// of drift at one commit, is sent once).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OnceKey {
    kind: EventKind,
    env: String,
    app: String,
    commit: String,
    detail: String,
}

impl OnceKey {
    fn of(e: &Event) -> OnceKey {
        OnceKey {
            kind: e.kind,
            env: e.env.clone(),
            app: e.app.clone(),
            commit: e.commit.clone(),
            detail: match e.kind {
                EventKind::Step | EventKind::Paused | EventKind::DriftCorrected => {
                    e.message.clone()
                }
                _ => String::new(),
            },
        }
    }
}

/// A persisting condition since its first notice.
#[derive(Debug)]
struct Episode {
    first: Instant,
    /// Notices sent: 1 for the first, plus one per `RESEND_AFTER` mark passed.
    sent: usize,
    /// The latest event reported for it, for the `recovered` notice.
    last: Event,
}

#[derive(Debug, Default)]
pub struct Gate {
    seen: HashMap<OnceKey, Instant>,
    episodes: HashMap<(EventKind, String, String), Episode>,
}

impl Gate {
    /// Whether a once-only event goes out: the first time for its key, never again.
    pub fn once(&mut self, event: &Event, now: Instant) -> bool {
        let key = OnceKey::of(event);
        if self.seen.contains_key(&key) {
            return false;
        }
        if self.seen.len() >= REMEMBERED {
            let mut times: Vec<Instant> = self.seen.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.seen.retain(|_, t| *t > cut);
        }
        self.seen.insert(key, now);
        true
    }

    /// Whether a notice of a persisting condition goes out now: the first time, then once when
    /// each of `RESEND_AFTER` has passed since the first (marks passed together give one notice),
    /// never more often.
    pub fn failing(&mut self, event: &Event, now: Instant) -> bool {
        let key = (event.kind, event.env.clone(), event.app.clone());
        let Some(episode) = self.episodes.get_mut(&key) else {
            self.episodes.insert(
                key,
                Episode {
                    first: now,
                    sent: 1,
                    last: event.clone(),
                },
            );
            return true;
        };
        episode.last = event.clone();
        let elapsed = now.saturating_duration_since(episode.first);
        let due = 1 + RESEND_AFTER.iter().filter(|d| elapsed >= **d).count();
        if due > episode.sent {
            episode.sent = due;
            true
        } else {
            false
        }
    }

    /// Ends a persisting condition; returns the `recovered` event to send if it had been notified.
    pub fn clear(&mut self, kind: EventKind, env: &str, app: &str, now: Instant) -> Option<Event> {
        let episode = self
            .episodes
            .remove(&(kind, env.to_owned(), app.to_owned()))?;
        let lasted = now.saturating_duration_since(episode.first);
        // Whole seconds: "12m" reads better than "12m0.3s".
        let lasted = crate::desired::duration::format(Duration::from_secs(lasted.as_secs()));
        Some(Event {
            kind: EventKind::Recovered,
            env: episode.last.env,
            app: episode.last.app,
            commit: episode.last.commit,
            version: episode.last.version,
            message: format!("{kind} is over after {lasted}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, commit: &str, message: &str) -> Event {
        Event {
            kind,
            env: "production".into(),
            app: "api".into(),
            commit: commit.into(),
            version: Some("1.4.2".into()),
            message: message.into(),
        }
    }

    #[test]
    fn an_event_goes_out_once_per_commit() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        assert!(g.once(&event(EventKind::Started, "c1", "a"), t0));
        assert!(!g.once(&event(EventKind::Started, "c1", "other words"), t0));
        assert!(g.once(&event(EventKind::Succeeded, "c1", "a"), t0));
        assert!(g.once(&event(EventKind::Started, "c2", "a"), t0));
        let mut staging = event(EventKind::Started, "c1", "a");
        staging.env = "staging".into();
        assert!(g.once(&staging, t0));
        // A step and a gate are told apart by their message.
        assert!(g.once(&event(EventKind::Step, "c1", "step 1 of 3"), t0));
        assert!(g.once(&event(EventKind::Step, "c1", "step 2 of 3"), t0));
        assert!(!g.once(&event(EventKind::Step, "c1", "step 2 of 3"), t0));
        assert!(g.once(&event(EventKind::Paused, "c1", "step 3 of 3"), t0));
        assert!(!g.once(&event(EventKind::Paused, "c1", "step 3 of 3"), t0));
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        for i in 0..REMEMBERED + 1 {
            let at = t0 + Duration::from_secs(i as u64);
            assert!(g.once(&event(EventKind::Started, &format!("c{i}"), ""), at));
        }
        assert!(g.seen.len() <= REMEMBERED / 2 + 1, "{}", g.seen.len());
        let last = format!("c{REMEMBERED}");
        assert!(!g.once(&event(EventKind::Started, &last, ""), t0));
    }

    #[test]
    fn a_persisting_condition_is_resent_at_5m_30m_and_2h_only() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let e = event(EventKind::SyncFailing, "c1", "cannot fetch");
        let sent_at: Vec<u64> = (0..=4 * 3600)
            .step_by(10)
            .filter(|s| g.failing(&e, t0 + Duration::from_secs(*s)))
            .collect();
        assert_eq!(sent_at, vec![0, 300, 1800, 7200]);
    }

    #[test]
    fn marks_passed_while_nobody_reported_give_one_notice() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let e = event(EventKind::Failed, "c1", "");
        assert!(g.failing(&e, t0));
        assert!(g.failing(&e, t0 + Duration::from_secs(3600)));
        assert!(!g.failing(&e, t0 + Duration::from_secs(3601)));
        assert!(g.failing(&e, t0 + Duration::from_secs(7200)));
        assert!(!g.failing(&e, t0 + Duration::from_secs(100_000)));
    }

    #[test]
    fn clear_recovers_once_and_starts_over() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        assert_eq!(
            g.clear(EventKind::SyncFailing, "production", "api", t0),
            None
        );
        assert!(g.failing(&event(EventKind::SyncFailing, "c1", "x"), t0));
        assert!(!g.failing(
            &event(EventKind::SyncFailing, "c2", "y"),
            t0 + Duration::from_secs(60)
        ));
        // Another kind or app is another condition.
        assert_eq!(g.clear(EventKind::Failed, "production", "api", t0), None);
        assert_eq!(
            g.clear(EventKind::SyncFailing, "production", "web", t0),
            None
        );
        let recovered = g
            .clear(
                EventKind::SyncFailing,
                "production",
                "api",
                t0 + Duration::from_millis(720_400),
            )
            .unwrap();
        assert_eq!(
            recovered,
            Event {
                kind: EventKind::Recovered,
                env: "production".into(),
                app: "api".into(),
                commit: "c2".into(),
                version: Some("1.4.2".into()),
                message: "sync_failing is over after 12m".into(),
            }
        );
        assert_eq!(
            g.clear(EventKind::SyncFailing, "production", "api", t0),
            None
        );
        assert!(g.failing(
            &event(EventKind::SyncFailing, "c3", "x"),
            t0 + Duration::from_secs(800)
        ));
    }
}
