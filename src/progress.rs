//! The live view of a run for a person at a terminal: `reconcile` chooses it when stderr is one
//! (and not `--quiet`). It hears the run's [`Event`]s (the [`Progress`] hook of `execute`) and
//! draws on stderr, with indicatif, every step of the plan as done (`✓` and how long it took),
//! running (a spinner and how long so far) or waiting (`·`), and under them each canary's share of
//! the traffic and its pause's countdown while the canary walks its steps (until the shift that
//! moves all of the traffic). Steps done at the top of the list are printed for good
//! (they stay in the terminal's scrollback), so a plan taller than the terminal keeps its running
//! steps in view. kube-free's own log lines go through [`LogWriter`], which prints them above the
//! view while one is drawn, so neither garbles the other.
//!
//! What a line says is pure ([`step_line`], [`canary_line`], [`elapsed`], [`countdown`]): a
//! function of the state and the time given, tested without a terminal or a clock.

use crate::execute::{Event, Progress};
use crate::plan::Action;
use console::{style, Style};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where a step of the plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started yet.
    Waiting,
    /// Running since then.
    Running { since: Instant },
    /// Finished in `took`.
    Done { took: Duration },
    /// Failed after `took`.
    Failed { took: Duration },
    /// Stopped without finishing after `took`, nothing failed: a pause or gate longer than the run
    /// may wait, or a signal.
    Waits { took: Duration },
    /// Never started: the run ended before it (after a failure or a wait).
    NotRun,
}

impl Status {
    /// Whether the step is over (so its line no longer changes).
    pub fn ended(self) -> bool {
        !matches!(self, Status::Waiting | Status::Running { .. })
    }
}

/// The spinner's frames, one every [`FRAME`].
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const FRAME: Duration = Duration::from_millis(100);

/// The spinner's frame after `running` for this long.
pub fn spinner(running: Duration) -> char {
    SPINNER[(running.as_millis() / FRAME.as_millis()) as usize % SPINNER.len()]
}

/// A duration as a step's line shows it, at most 6 characters: `0.4s`, `9.9s`, `42s`, `4m05s`,
/// `1h02m`.
pub fn elapsed(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    if tenths < 100 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    whole_seconds(d.as_secs())
}

/// Seconds as `42s`, `4m05s`, `1h02m`.
fn whole_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// What is left of a wait that ends at `until` when it is `now` (both in seconds since the Unix
/// epoch): `in 7s`, `in 4m05s`, `now`.
pub fn countdown(until: u64, now: u64) -> String {
    match until.saturating_sub(now) {
        0 => "now".to_owned(),
        left => format!("in {}", whole_seconds(left)),
    }
}

/// The line of step `number` (of a plan whose numbers are `width` digits wide) at `now`: its mark,
/// its time, its number and what it does, e.g. `✓   0.4s  1. probe local/demo slot green on here`.
pub fn step_line(
    number: usize,
    width: usize,
    action: &str,
    status: Status,
    now: Instant,
) -> String {
    let (mark, time, after) = match status {
        Status::Waiting => ('·', String::new(), ""),
        Status::Running { since } => {
            let running = now.saturating_duration_since(since);
            (spinner(running), elapsed(running), "")
        }
        Status::Done { took } => ('✓', elapsed(took), ""),
        Status::Failed { took } => ('✗', elapsed(took), " (failed)"),
        Status::Waits { took } => ('‖', elapsed(took), " (waits)"),
        Status::NotRun => ('·', String::new(), " (not run)"),
    };
    format!("{mark} {time:>6}  {number:>width$}. {action}{after}")
}

/// A canary, as the run said it last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub env: String,
    pub app: String,
    pub version: String,
    /// Its share of the traffic, in percent.
    pub weight: u8,
    /// Its pause: until when (seconds since the Unix epoch), `Some(None)` for a gate that waits
    /// for `kube-free promote`; `None` when no pause runs.
    pub pause: Option<Option<u64>>,
}

/// The line of a canary when it is `now` (seconds since the Unix epoch), e.g. `canary local/demo
/// 2.0: 50% of the traffic, its pause ends in 7s`.
pub fn canary_line(c: &Canary, now: u64) -> String {
    let mut line = format!(
        "canary {}/{} {}: {}% of the traffic",
        c.env, c.app, c.version, c.weight
    );
    match c.pause {
        None => {}
        Some(Some(until)) => {
            line.push_str(", its pause ends ");
            line.push_str(&countdown(until, now));
        }
        Some(None) => line.push_str(&format!(
            ", waits for `kube-free promote {} --env {}`",
            c.app, c.env
        )),
    }
    line
}

/// Seconds since the Unix epoch on this machine's clock.
fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A lock, also after a panic under it: what it keeps is only drawn, and the view must still be
/// taken off the screen.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The view in use, if one is drawn: where [`LogWriter`] prints log lines.
static SHOWN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Log lines to stderr (tracing's writer in `main`): above the live view while one is drawn, as
/// they are otherwise. Each log line is written whole, in one piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// One log line on its way: written when it is dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let shown = lock(&SHOWN).clone();
        // Errors are dropped: a closed stderr must not end a run (see main).
        let write = move || {
            let _ = std::io::stderr().write_all(&line);
        };
        match shown {
            Some(multi) => multi.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// A step of a plan drawn in the view.
struct Row {
    number: usize,
    action: String,
    status: Status,
    bar: ProgressBar,
}

/// What the view shows, behind its lock.
struct View {
    /// The line before the first plan (none after it).
    opening: Option<(ProgressBar, String)>,
    /// The steps of the current plan not yet printed for good, in order.
    rows: VecDeque<Row>,
    /// How many digits the current plan's numbers take.
    width: usize,
    /// The next plan cleans up the rollout of this env/app.
    cleanup: Option<(String, String)>,
    /// The canaries, each on its line under the steps, in the order they came.
    canaries: Vec<(Canary, ProgressBar)>,
    /// When the view started (the opening line's time).
    started: Instant,
    /// The commit the run applies.
    commit: String,
}

/// The live view of a run at a terminal. Hand it to the world ([`crate::reconcile::World::
/// set_progress`]); [`Terminal::finish`] (or dropping the [`Shown`] guard) prints its last state
/// for good and stops drawing.
pub struct Terminal {
    multi: MultiProgress,
    view: Mutex<View>,
    /// Set to stop the ticker, which redraws running steps and countdowns.
    stop: Arc<(Mutex<bool>, Condvar)>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Stops the view when dropped.
pub struct Shown(pub Arc<Terminal>);

impl Drop for Shown {
    fn drop(&mut self) {
        self.0.finish();
    }
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").expect("a valid template")
}

/// A live line cut to the terminal's width, less a column (a line that wraps, or one that fills
/// the last column, would make the view's lines move); lines printed for good are not cut.
fn fit(line: String) -> String {
    let columns = usize::from(console::Term::stderr().size().1);
    console::truncate_str(&line, columns.saturating_sub(1).max(10), "…").into_owned()
}

/// A step's line with its mark coloured (green done, cyan running, red failed, yellow waits, dim
/// not started); console leaves colours out where they are off (`NO_COLOR`).
fn painted(line: String, status: Status) -> String {
    let paint: Style = match status {
        Status::Waiting | Status::NotRun => return style(line).dim().for_stderr().to_string(),
        Status::Running { .. } => Style::new().cyan(),
        Status::Done { .. } => Style::new().green(),
        Status::Failed { .. } => Style::new().red(),
        Status::Waits { .. } => Style::new().yellow(),
    };
    let mut chars = line.chars();
    let mark = chars.next().map(String::from).unwrap_or_default();
    format!("{}{}", paint.for_stderr().apply_to(mark), chars.as_str())
}

impl Row {
    fn line(&self, width: usize, now: Instant) -> String {
        painted(
            step_line(self.number, width, &self.action, self.status, now),
            self.status,
        )
    }
}

impl Terminal {
    /// Starts drawing on stderr, with an opening line until the run's plan is known, and prints
    /// log lines above the view from now on. `commit`: the commit the run applies.
    pub fn start(commit: &str) -> Shown {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let opening = format!(
            "reconcile at commit {}: taking the lease, observing, planning",
            short(commit)
        );
        let bar = multi.add(ProgressBar::new_spinner().with_style(line_style()));
        let started = Instant::now();
        bar.set_message(fit(format!("{} {opening}", spinner(Duration::ZERO))));
        let terminal = Arc::new(Terminal {
            multi: multi.clone(),
            view: Mutex::new(View {
                opening: Some((bar, opening)),
                rows: VecDeque::new(),
                width: 1,
                cleanup: None,
                canaries: Vec::new(),
                started,
                commit: commit.to_owned(),
            }),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            ticker: Mutex::new(None),
        });
        *lock(&SHOWN) = Some(multi);
        let weak = Arc::downgrade(&terminal);
        let stop = terminal.stop.clone();
        let ticker = std::thread::spawn(move || loop {
            let (stopping, wake) = &*stop;
            let stopped = lock(stopping);
            let (stopped, _) = wake
                .wait_timeout_while(stopped, FRAME, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
            drop(stopped);
            match weak.upgrade() {
                Some(terminal) => terminal.tick(),
                None => return,
            }
        });
        *lock(&terminal.ticker) = Some(ticker);
        Shown(terminal)
    }

    /// Redraws what changes with time: the spinners, times and countdowns.
    fn tick(&self) {
        let view = lock(&self.view);
        let now = Instant::now();
        if let Some((bar, text)) = &view.opening {
            bar.set_message(fit(format!("{} {text}", spinner(now - view.started))));
        }
        for row in &view.rows {
            if matches!(row.status, Status::Running { .. }) {
                row.bar.set_message(fit(row.line(view.width, now)));
            }
        }
        let epoch = epoch_now();
        for (canary, bar) in &view.canaries {
            if canary.pause.is_some() {
                bar.set_message(fit(canary_line(canary, epoch)));
            }
        }
    }

    /// Prints the view's last state for good and stops drawing it (and printing log lines
    /// through it). Steps never started are said so. Does nothing the second time.
    pub fn finish(&self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(ticker) = lock(&self.ticker).take() {
            let _ = ticker.join();
        }
        let mut view = lock(&self.view);
        if let Some((bar, _)) = view.opening.take() {
            self.take_off(&bar);
        }
        self.print_plan(&mut view);
        let epoch = epoch_now();
        for (canary, bar) in std::mem::take(&mut view.canaries) {
            let _ = self.multi.println(canary_line(&canary, epoch));
            self.take_off(&bar);
        }
        *lock(&SHOWN) = None;
    }

    /// Prints every step of the current plan for good, those not started as not run.
    fn print_plan(&self, view: &mut View) {
        let now = Instant::now();
        while let Some(mut row) = view.rows.pop_front() {
            if row.status == Status::Waiting {
                row.status = Status::NotRun;
            }
            let _ = self.multi.println(row.line(view.width, now));
            self.take_off(&row.bar);
        }
    }

    /// Prints for good the steps at the top that are over; the rest stays live.
    fn print_ended(&self, view: &mut View) {
        let now = Instant::now();
        while view.rows.front().is_some_and(|r| r.status.ended()) {
            let row = view.rows.pop_front().expect("there is one");
            let _ = self.multi.println(row.line(view.width, now));
            self.take_off(&row.bar);
        }
    }

    /// Takes a line off the view (the last one too: removed alone, it would stay on the screen).
    fn take_off(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.multi.remove(bar);
    }

    /// A new line above the canaries (at the end when there are none).
    fn add_line(&self, view: &View) -> ProgressBar {
        let bar = ProgressBar::new_spinner().with_style(line_style());
        match view.canaries.first() {
            Some((_, first)) => self.multi.insert_before(first, bar),
            None => self.multi.add(bar),
        }
    }

    fn plan(&self, view: &mut View, steps: &[Action]) {
        if let Some((bar, _)) = view.opening.take() {
            self.take_off(&bar);
        }
        self.print_plan(view);
        let head = match view.cleanup.take() {
            Some((env, app)) => format!(
                "cleaning up the rollout of {env}/{app}: {}",
                plural(steps.len())
            ),
            None => format!(
                "reconcile at commit {}: {}",
                short(&view.commit),
                plural(steps.len())
            ),
        };
        let _ = self
            .multi
            .println(style(head).bold().for_stderr().to_string());
        view.width = steps.len().to_string().len();
        let now = Instant::now();
        for (i, action) in steps.iter().enumerate() {
            let row = Row {
                number: i + 1,
                action: action.to_string(),
                status: Status::Waiting,
                bar: self.add_line(view),
            };
            row.bar.set_message(fit(row.line(view.width, now)));
            view.rows.push_back(row);
        }
    }

    fn step(&self, view: &mut View, number: usize, status: Status) {
        let width = view.width;
        if let Some(row) = view.rows.iter_mut().find(|r| r.number == number) {
            row.status = status;
            row.bar.set_message(fit(row.line(width, Instant::now())));
        }
        self.print_ended(view);
    }

    /// The pause of the canary of `env`/`app` (if one was said) is over.
    fn pause_over(&self, view: &mut View, env: &str, app: &str) {
        if let Some((canary, bar)) = view
            .canaries
            .iter_mut()
            .find(|(c, _)| c.env == env && c.app == app)
        {
            canary.pause = None;
            bar.set_message(fit(canary_line(canary, epoch_now())));
        }
    }

    /// The line of the canary of `env`/`app` (if one was said) goes: its walk is over.
    fn canary_over(&self, view: &mut View, env: &str, app: &str) {
        if let Some(at) = view
            .canaries
            .iter()
            .position(|(c, _)| c.env == env && c.app == app)
        {
            let (_, bar) = view.canaries.remove(at);
            self.take_off(&bar);
        }
    }

    /// The canary of `env`/`app` (a new line for one not said before), changed by `change`.
    fn canary(&self, view: &mut View, env: &str, app: &str, change: impl FnOnce(&mut Canary)) {
        let at = match view
            .canaries
            .iter()
            .position(|(c, _)| c.env == env && c.app == app)
        {
            Some(at) => at,
            None => {
                let bar = self
                    .multi
                    .add(ProgressBar::new_spinner().with_style(line_style()));
                let canary = Canary {
                    env: env.to_owned(),
                    app: app.to_owned(),
                    version: String::new(),
                    weight: 0,
                    pause: None,
                };
                view.canaries.push((canary, bar));
                view.canaries.len() - 1
            }
        };
        let (canary, bar) = &mut view.canaries[at];
        change(canary);
        bar.set_message(fit(canary_line(canary, epoch_now())));
    }
}

impl Progress for Terminal {
    fn event(&self, event: Event<'_>) {
        let mut view = lock(&self.view);
        let view = &mut *view;
        match event {
            Event::Plan { steps } => self.plan(view, steps),
            Event::Started { step, .. } => self.step(
                view,
                step,
                Status::Running {
                    since: Instant::now(),
                },
            ),
            Event::Done { step, action, took } => {
                self.step(view, step, Status::Done { took });
                match action {
                    Action::Pause { env, app, .. } => self.pause_over(view, env, app),
                    // The canary's walk is over: the traffic moved as a whole (to it, or back).
                    Action::Shift { env, app, .. } => self.canary_over(view, env, app),
                    _ => {}
                }
            }
            Event::Stopped {
                step,
                action,
                took,
                waits,
            } => {
                let status = if waits {
                    Status::Waits { took }
                } else {
                    Status::Failed { took }
                };
                self.step(view, step, status);
                // A pause that waits beyond this run keeps its countdown; one that failed ended.
                if let (Action::Pause { env, app, .. }, false) = (action, waits) {
                    self.pause_over(view, env, app);
                }
            }
            Event::CleaningUp { env, app } => {
                self.print_plan(view);
                view.cleanup = Some((env.to_owned(), app.to_owned()));
            }
            Event::CanaryWeight {
                env,
                app,
                version,
                weight,
            } => self.canary(view, env, app, |c| {
                c.version = version.to_owned();
                c.weight = weight;
            }),
            Event::CanaryPause {
                env,
                app,
                version,
                weight,
                until,
            } => self.canary(view, env, app, |c| {
                c.version = version.to_owned();
                c.weight = weight;
                c.pause = Some(until);
            }),
        }
    }
}

fn plural(steps: usize) -> String {
    format!("{steps} step{}", if steps == 1 { "" } else { "s" })
}

/// A commit as the view shows it: its first 12 digits.
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_time_fits_six_characters_and_loses_precision_as_it_grows() {
        let cases = [
            (0, "0.0s"),
            (449, "0.4s"),
            (9_999, "9.9s"),
            (10_000, "10s"),
            (59_999, "59s"),
            (60_000, "1m00s"),
            (245_000, "4m05s"),
            (3_599_000, "59m59s"),
            (3_720_000, "1h02m"),
            (360_000_000, "100h00m"),
        ];
        for (ms, text) in cases {
            assert_eq!(elapsed(Duration::from_millis(ms)), text, "{ms} ms");
        }
    }

    #[test]
    fn a_countdown_says_what_is_left_and_never_goes_below_now() {
        assert_eq!(countdown(1_000_007, 1_000_000), "in 7s");
        assert_eq!(countdown(1_000_245, 1_000_000), "in 4m05s");
        assert_eq!(countdown(1_007_200, 1_000_000), "in 2h00m");
        assert_eq!(countdown(1_000_000, 1_000_000), "now");
        assert_eq!(countdown(999_990, 1_000_000), "now");
    }

    #[test]
    fn the_spinner_turns_a_frame_every_tenth_of_a_second() {
        assert_eq!(spinner(Duration::ZERO), '⠋');
        assert_eq!(spinner(Duration::from_millis(99)), '⠋');
        assert_eq!(spinner(Duration::from_millis(100)), '⠙');
        assert_eq!(spinner(Duration::from_millis(1_000)), '⠋');
    }

    #[test]
    fn a_step_line_shows_its_mark_time_number_and_action() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(3_250);
        let line = |number, status| {
            step_line(
                number,
                2,
                "probe local/demo slot green on here",
                status,
                now,
            )
        };
        assert_eq!(
            line(3, Status::Waiting),
            "·          3. probe local/demo slot green on here"
        );
        assert_eq!(
            line(3, Status::Running { since: t0 }),
            "⠹   3.2s   3. probe local/demo slot green on here"
        );
        assert_eq!(
            line(
                12,
                Status::Done {
                    took: Duration::from_millis(420)
                }
            ),
            "✓   0.4s  12. probe local/demo slot green on here"
        );
        assert_eq!(
            line(
                3,
                Status::Failed {
                    took: Duration::from_secs(20)
                }
            ),
            "✗    20s   3. probe local/demo slot green on here (failed)"
        );
        assert_eq!(
            line(
                3,
                Status::Waits {
                    took: Duration::from_secs(65)
                }
            ),
            "‖  1m05s   3. probe local/demo slot green on here (waits)"
        );
        assert_eq!(
            line(3, Status::NotRun),
            "·          3. probe local/demo slot green on here (not run)"
        );
    }

    #[test]
    fn a_canary_line_shows_its_weight_and_what_its_pause_waits_for() {
        let mut c = Canary {
            env: "local".into(),
            app: "demo".into(),
            version: "2.0".into(),
            weight: 50,
            pause: None,
        };
        assert_eq!(
            canary_line(&c, 100),
            "canary local/demo 2.0: 50% of the traffic"
        );
        c.pause = Some(Some(107));
        assert_eq!(
            canary_line(&c, 100),
            "canary local/demo 2.0: 50% of the traffic, its pause ends in 7s"
        );
        assert_eq!(
            canary_line(&c, 110),
            "canary local/demo 2.0: 50% of the traffic, its pause ends now"
        );
        c.pause = Some(None);
        assert_eq!(
            canary_line(&c, 100),
            "canary local/demo 2.0: 50% of the traffic, waits for `kube-free promote demo --env local`"
        );
    }

    #[test]
    fn only_steps_that_ended_are_over() {
        assert!(!Status::Waiting.ended());
        assert!(!Status::Running {
            since: Instant::now()
        }
        .ended());
        assert!(Status::Done {
            took: Duration::ZERO
        }
        .ended());
        assert!(Status::NotRun.ended());
    }
}
