//! Where a run's time went (`--timings` on `plan` and `reconcile`): the phases a command goes
//! through (reading the desired state, connecting, observing, planning, executing) and each step
//! the walker ran, with how long it took. Collected only once asked for ([`Timings::enable`]), so
//! that a world nobody asked kept nothing. It hears the steps as a [`Progress`] observer, beside whoever draws them.

use crate::execute::{Event, Progress};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A run's phases and steps, in the order they ended.
#[derive(Debug, Default)]
pub struct Timings {
    on: std::sync::atomic::AtomicBool,
    phases: Mutex<Vec<(String, Duration)>>,
    steps: Mutex<Vec<Step>>,
}

#[derive(Debug)]
struct Step {
    what: String,
    took: Duration,
    /// `None`: done; else whether it stopped to wait (true) or failed (false).
    stopped: Option<bool>,
}

impl Timings {
    /// From now on, phases and steps are recorded.
    pub fn enable(&self) {
        self.on.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a phase that took `took` (when enabled).
    pub fn phase(&self, name: impl Into<String>, took: Duration) {
        if !self.on() {
            return;
        }
        self.phases
            .lock()
            .expect("not poisoned")
            .push((name.into(), took));
    }

    /// Records the phase `name` as the time since `since`.
    pub fn since(&self, name: impl Into<String>, since: Instant) {
        self.phase(name, since.elapsed());
    }

    /// Runs `work`, recording it as the phase `name`.
    pub async fn time<T>(&self, name: &str, work: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = work.await;
        self.since(name, started);
        out
    }

    /// The phases recorded so far, by name and time.
    pub fn phases(&self) -> Vec<(String, Duration)> {
        self.phases.lock().expect("not poisoned").clone()
    }

    /// The table `--timings` prints: the phases, then the steps (slowest first), with `total`, the
    /// wall time of the whole command.
    pub fn render(&self, total: Duration) -> String {
        let phases = self.phases();
        let mut steps: Vec<(String, Duration, &str)> = self
            .steps
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|s| {
                let how = match s.stopped {
                    None => "",
                    Some(true) => "  (waits)",
                    Some(false) => "  (failed)",
                };
                (s.what.clone(), s.took, how)
            })
            .collect();
        steps.sort_by_key(|s| std::cmp::Reverse(s.1));
        let width = phases
            .iter()
            .map(|(n, _)| n.len())
            .chain(steps.iter().map(|(w, _, _)| w.len() + 2))
            .chain(["total".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::from("timings:\n");
        for (name, took) in &phases {
            let _ = writeln!(out, "  {name:<width$}  {}", secs(*took));
        }
        if !steps.is_empty() {
            let _ = writeln!(out, "  steps, slowest first:");
            for (what, took, how) in &steps {
                let _ = writeln!(out, "    {what:<w$}  {}{how}", secs(*took), w = width - 2);
            }
        }
        let _ = writeln!(out, "  {:<width$}  {}", "total", secs(total));
        out
    }
}

fn secs(d: Duration) -> String {
    format!("{:>8.3} s", d.as_secs_f64())
}

impl Progress for Timings {
    fn event(&self, event: Event<'_>) {
        let (action, took, stopped) = match event {
            Event::Done { action, took, .. } => (action, took, None),
            Event::Stopped {
                action,
                took,
                waits,
                ..
            } => (action, took, Some(waits)),
            _ => return,
        };
        if !self.on() {
            return;
        }
        self.steps.lock().expect("not poisoned").push(Step {
            what: action.to_string(),
            took,
            stopped,
        });
    }
}

/// Two observers hear every event: who draws the run, and its [`Timings`].
pub struct Both<'a>(pub &'a dyn Progress, pub &'a dyn Progress);

impl Progress for Both<'_> {
    fn event(&self, event: Event<'_>) {
        self.0.event(event);
        self.1.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Action;

    #[test]
    fn phases_in_order_and_steps_slowest_first_with_how_they_ended() {
        let t = Timings::default();
        t.phase("not asked for", Duration::from_millis(1));
        t.enable();
        t.phase("read desired state", Duration::from_millis(12));
        t.phase("observe", Duration::from_millis(340));
        let fast = Action::ApplyConfig {
            balancer: "edge".into(),
        };
        let slow = Action::ApplyConfig {
            balancer: "other".into(),
        };
        t.event(Event::Done {
            step: 1,
            action: &fast,
            took: Duration::from_millis(5),
        });
        t.event(Event::Stopped {
            step: 2,
            action: &slow,
            took: Duration::from_millis(2500),
            waits: false,
        });
        let text = t.render(Duration::from_secs(3));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "timings:");
        assert!(lines[1].starts_with("  read desired state") && lines[1].ends_with("0.012 s"));
        assert!(lines[2].starts_with("  observe") && lines[2].ends_with("0.340 s"));
        assert_eq!(lines[3], "  steps, slowest first:");
        assert!(lines[4].contains("balancer other") && lines[4].ends_with("2.500 s  (failed)"));
        assert!(lines[5].contains("balancer edge") && lines[5].ends_with("0.005 s"));
        assert!(lines[6].starts_with("  total") && lines[6].ends_with("3.000 s"));
    }
}
