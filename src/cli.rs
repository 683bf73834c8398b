//! Command-line types (clap). Only the shape of the CLI and its help text live here; what each command
//! does is in `commands`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0   success (valid, in sync, converged)
  1   error (I/O, network, a failed rollout)
  2   bad input (invalid desired state, unknown path, URL or revision, a saved plan that is
      no longer what a run would do); no host was changed
  3   waiting at a pause or gate (reconcile)
  4   locked by another reconciler (reconcile)
  10  changes pending (plan)

Environment:
  KUBE_FREE_REPO       default for --repo
  KUBE_FREE_CACHE_DIR  where Git URLs are cloned (default $XDG_CACHE_HOME/kube-free/repos)
  KUBE_FREE_VERIFY_SSH_SIGNERS  default for --verify-ssh-signers
  KUBE_FREE_VERIFY_GPG_KEYRING  default for --verify-gpg-keyring
  KUBE_FREE_LOG        log filter, e.g. info or kube_free=debug (default warn); logs go to stderr";

/// Kubernetes-free, GitOps-style zero-downtime deployments to plain Linux hosts.
///
/// The desired state (which version of each app runs in each environment, and how to get there) lives
/// in a Git repository, in `kube-free.yaml` and `environments/<env>.yaml`. kube-free always reads it
/// from a commit, never from uncommitted files.
#[derive(Debug, Parser)]
#[command(name = "kube-free", version, after_help = EXIT_CODES, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the desired state at a commit; touches no host.
    ///
    /// Reports every problem found, each as `FILE:LINE:COLUMN: YAML.PATH: message`, and the commit it
    /// read. Exit 0 when valid, 2 when not.
    Validate(ValidateArgs),
    /// Observe the hosts and the balancer, diff against the desired state, print the steps; changes
    /// nothing. Exit 0 when in sync, 10 when changes are pending, 1 when something is wrong that no
    /// step can put right (traffic left on a quarantined version).
    ///
    /// With --out, the plan is also saved to a file, to be reviewed and then executed exactly by
    /// `reconcile --once --plan FILE` (see there), for one run.
    Plan(PlanArgs),
    /// Converge the hosts to the desired state, then exit.
    ///
    /// Starts the new version in the idle slot, probes it, enables it in the balancer (HAProxy or nginx), moves the traffic
    /// (all at once, host by host, or in canary steps), keeps the old version ready for the app's
    /// `bake` while the new one is watched, then drains and stops the old version. When the version
    /// fails (does not start or get ready, fails analysis, dies or errs in its bake), it is
    /// quarantined and the last good version serves again everywhere (started again where it is
    /// dead), unless a rolling update says `on_failure: hold`; what serves afterwards is read back
    /// and said. Exit 0 when converged, 1 when a step failed or a version is
    /// quarantined, 2 on bad input, 3 when a canary pause or gate outlasts --max-wait (run again to
    /// resume at that step), 4 when another run holds the lease.
    ///
    /// It takes the lease on every host it may change first (with --env/--app, those of the scope),
    /// so one run acts at a time on them (--lock-wait waits for it). On SIGTERM or SIGINT the current steps finish, nothing new starts, the lease is
    /// released and it exits 1; the next run resumes.
    ///
    /// An environment suspended by `kube-free suspend` is left alone: when that is everything in
    /// scope, nothing runs and it prints what it would do (exit 0).
    ///
    /// The commit applied is recorded on the balancer hosts it reaches (`<state_dir>/applied.json`); a later
    /// commit that does not descend from it (a branch rewound by a force-push) is refused with exit
    /// 2, nothing changed, unless --allow-rewind. To roll back, revert in Git.
    ///
    /// A run that changed something appends a line to `<state_dir>/audit.log` on the balancer
    /// hosts (see `kube-free history`); one that cannot be appended is a warning, not an error.
    ///
    /// With --plan FILE (saved by `plan --out FILE`), it executes that plan or nothing: the
    /// repository must be at the plan's commit and the scope is the plan's (refused before the
    /// lease otherwise); under the lease, what it observes must be what the plan was made from
    /// (instances, their liveness and readiness, the balancer's config, servers' weights, admin
    /// states and checks, rollout records; not the traffic counters) and the plan it makes the
    /// saved one, step for step. Else exit 2, naming what changed, and nothing is changed on any
    /// host. A plan is for one run: what it executes changes what it was made from, so running it
    /// again (after exit 3 at a canary pause, say) is refused; make a new plan.
    ///
    /// At a terminal (stderr is one), the steps are shown as they run: each done (✓ and how long it
    /// took), running (a spinner and how long so far) or not started yet (·), and under them a
    /// canary's share of the traffic and how long its pause has left; log lines are printed above
    /// them. Without a terminal (CI, a pipe, a file) nothing is drawn: the result on stdout, logs on
    /// stderr. --quiet prints the result alone.
    Reconcile(ReconcileArgs),
    /// Run as a service: follow a branch and keep the hosts equal to it (GitOps).
    ///
    /// Every --interval (±10%) the branch is fetched; on a new commit, when a --resync is due, when
    /// a canary pause ends, or after a failure's backoff, the same pass as `reconcile --once` runs.
    /// A resync puts drift back (a dead instance restarted, a weight set by hand set back, an
    /// edited config rewritten) and logs each as `drift corrected: …`; with --no-self-heal it is
    /// only reported. The lease is held only while a pass acts, so `promote`, `abort` and a CI
    /// `reconcile --once` work while the watcher idles, and a second watcher on another bastion
    /// takes over when this one dies. Serves on --listen: `/` (status page), `/api/v1/status`,
    /// `/metrics`, `/healthz`, `/readyz`, and `POST /hooks/git` (GitHub, Gitea/Forgejo and GitLab
    /// signatures, checked with --webhook-secret-file) to fetch at once. On SIGTERM or SIGINT the
    /// current step finishes, the lease is given back, and it exits 0. See docs/watch.md.
    Watch(WatchArgs),
    /// End the current pause of a canary (with --all, every remaining pause); the running or next
    /// reconcile goes on from there.
    Promote(GateArgs),
    /// Roll a canary (or any rollout in progress) back now: traffic back to the version that served,
    /// the new instances stopped, the version quarantined. A running reconcile of the app sees the
    /// abort within a second; abort waits up to 60 s for the lease.
    Abort(GateArgs),
    /// Lift the quarantine of a rolled-back version, so that the next reconcile rolls it out again.
    Retry(GateArgs),
    /// Make an environment (or, without --env, every one) observe-only for a while.
    ///
    /// While suspended, `reconcile --once` and watchers change nothing there: they observe and
    /// report what they would do (drift, a new version) and exit 0. It ends by itself after --for,
    /// or with `kube-free resume`. Kept on every balancer host, so every machine that runs
    /// kube-free sees it; written under the lease (waits up to 60 s for a running pass, which it
    /// does not stop: `abort` does). This is not a canary pause (that is a rollout step, ended
    /// by `promote`). Suspending an environment again replaces its suspension.
    Suspend(SuspendArgs),
    /// End the suspension of an environment (with --env) or every suspension (without).
    ///
    /// With --env, a suspension of every environment still applies to it: resume without --env
    /// lifts that.
    Resume(ResumeArgs),
    /// Show, per environment and app, the desired version and what runs and serves on each host.
    Status(StatusArgs),
    /// Print the log of an app's instances in an environment, or follow it.
    ///
    /// Reads the log each instance's runtime keeps on its host: with `kind: process`, the file
    /// `<state_dir>/<env>/<app>/<slot>.log` (the app's stdout and stderr, appended by every
    /// instance that ran in the slot; kept after a stop); with `kind: docker`, `docker logs` (or
    /// `podman logs`) of the slot's container (gone with the container). By default, every slot
    /// of the app that has an instance, on every host of the environment; --host and --slot narrow
    /// that down, and a slot named with --slot is read even without an instance there (the log a
    /// stopped process left).
    ///
    /// Each log's last --lines lines are printed after a header, `==> HOST/SLOT (version V, LOG)
    /// <==`. With --follow, every log is followed at once, each line prefixed with `HOST/SLOT | `
    /// (no prefix when there is one log; the headers go to stderr), until SIGINT or SIGTERM (exit
    /// 0) or every log ends. The instances are chosen when it starts: one started later is not
    /// followed. What the commands print on stderr (a runtime's own messages, an app's stderr with
    /// Docker) goes to stderr.
    ///
    /// Connects only to the hosts it reads from and changes nothing. Exit 2 when the app,
    /// environment, host or slot is unknown (no host contacted), 1 when a log of an instance
    /// cannot be read.
    Logs(LogsArgs),
    /// Print past rollouts, newest first, from the audit log of the balancer hosts.
    ///
    /// Every run that changed something appends one JSON line to `<state_dir>/audit.log` on the
    /// balancer hosts of the environments it was about, at its end (also when it failed, was
    /// interrupted or waits at a pause): `reconcile --once` and watcher passes that did a step (or
    /// failed after acting), `promote`, `abort`, `retry`, `suspend` and a `resume` that ended a
    /// suspension. A run that found nothing to do appends nothing; a line that cannot be appended
    /// is a warning and does not change the run's exit code.
    ///
    /// One row per rollout: TIME (when the run began, UTC), ENV, APP, VERSION, STRATEGY, RESULT
    /// (succeeded, repaired, quarantined, waiting, rolled-back, failed, stopped; promoted, aborted,
    /// retried for a gate), DURATION (of the run), COMMIT (its first 12 digits) and WHO
    /// (user@host). A run that moved no rollout (suspend, resume, a balancer's config) is a row
    /// with APP `-` and its outcome as RESULT, shown only without APP. `--output json` prints an
    /// array of rows with `from` (the version that had the traffic before), `command`, `outcome`
    /// and `steps` too.
    ///
    /// Reads the balancer host of --env (without it, every balancer host in use), and connects to
    /// nothing else; the copies of a line on several hosts count once. A line that cannot be
    /// parsed (torn by a killed writer) is skipped with a warning naming the host and the line.
    /// Exit 2 when APP or ENV is unknown (no host contacted), 1 when a balancer host's log cannot
    /// be read (the rows of the others are printed).
    History(HistoryArgs),
    /// Print the JSON Schema of the desired-state files.
    ///
    /// `schema/kube-free.schema.json` in kube-free's repository is this output. Point your editor at it
    /// with a first line such as `# yaml-language-server: $schema=<path or URL of the schema>`.
    Schema(SchemaArgs),
    /// Print the shell completion script of kube-free for bash, zsh or fish.
    ///
    /// Load it into the current shell with `source <(kube-free completions bash)`, or install it
    /// where the shell finds it: `kube-free completions bash >
    /// /usr/share/bash-completion/completions/kube-free` (bash-completion), `kube-free completions
    /// zsh > "${fpath[1]}/_kube-free"` (zsh, any directory of $fpath, then a new shell), `kube-free
    /// completions fish > ~/.config/fish/completions/kube-free.fish`. It completes commands,
    /// options and the values of fixed choices, not names from the desired state.
    Completions(CompletionsArgs),
    /// Print the lines to add to nginx.conf for each nginx balancer of the desired state.
    ///
    /// kube-free owns one include file per nginx balancer (`config_file`); nginx.conf must include
    /// it inside its `http` block and, in `mode: dynamic`, load the Lua module in its main
    /// context. Prints those lines, commented, for copying; touches no host. Exit 2 when the
    /// desired state has no nginx balancer (or not the one named).
    NginxSnippet(NginxSnippetArgs),
}

/// Where the desired state is read from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Desired-state directory: a local path inside a Git work tree (or a bare repository), or a Git
    /// URL (file://, ssh://, https://, user@host:path) that is cloned into the cache.
    #[arg(
        long,
        value_name = "DIR|URL",
        env = "KUBE_FREE_REPO",
        default_value = "."
    )]
    pub repo: String,
    /// What to read: a branch (`main`; for a URL, the remote's branch), a tag as `tags/v1`, a full
    /// 40-digit commit id, or `HEAD`; `refs/heads/NAME`, `refs/tags/NAME` and
    /// `refs/remotes/REMOTE/NAME` (a local clone's remote-tracking branch) may be spelled out. A
    /// bare name is always a branch, never a tag of the same name. Abbreviated ids and expressions
    /// such as `HEAD~1` are refused (exit 2). Default: HEAD for a local path, the remote's default
    /// branch for a URL.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Directory where Git URLs are cloned.
    #[arg(
        long,
        value_name = "DIR",
        env = "KUBE_FREE_CACHE_DIR",
        hide_env_values = true
    )]
    pub cache_dir: Option<PathBuf>,
    /// Private key (a deploy key) for SSH Git URLs, instead of the SSH agent and ~/.ssh keys. It
    /// must be readable by its owner only.
    #[arg(long, value_name = "FILE")]
    pub git_ssh_key: Option<PathBuf>,
    /// known_hosts file that the Git server's SSH host key must be in.
    #[arg(long, value_name = "FILE")]
    pub git_known_hosts: Option<PathBuf>,
    /// File holding a token for HTTPS Git URLs (sent as the password; readable by its owner
    /// only; read at each fetch, so it can be rotated in place).
    #[arg(long, value_name = "FILE")]
    pub git_token_file: Option<PathBuf>,
    /// Require the commit to be signed by an SSH key of this OpenSSH allowed-signers file
    /// (`PRINCIPAL KEYTYPE KEY` per line, as for git's gpg.ssh.allowedSignersFile). An unsigned
    /// commit, or one signed by another key, is refused with exit 2 before any host is contacted.
    /// Keep the file outside the repository: a repository cannot vouch for itself.
    #[arg(long, value_name = "FILE", env = "KUBE_FREE_VERIFY_SSH_SIGNERS")]
    pub verify_ssh_signers: Option<PathBuf>,
    /// Require the commit to be signed by a GPG key of this public keyring (`gpg --export KEYID >
    /// FILE`; checked with gpgv). With --verify-ssh-signers too, a commit signed by either passes.
    #[arg(long, value_name = "FILE", env = "KUBE_FREE_VERIFY_GPG_KEYRING")]
    pub verify_gpg_keyring: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format: `text` (problems on stderr) or `json` (one JSON object on stdout, with the
    /// problems as an array under `errors`).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Which environments and apps a command looks at. Only their hosts and their balancers' hosts are
/// contacted, observed and locked: a host of another environment may be down.
#[derive(Debug, Clone, Args)]
pub struct ScopeArgs {
    /// Only this environment: only its hosts and its balancer's host are contacted and locked.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Only this app: only the hosts of the environments that deploy it (and their balancers'
    /// hosts) are contacted and locked.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
}

/// What to do with orphans: instances kube-free started that the desired state no longer has.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Stop the orphans in scope: instances kube-free started that the desired state no longer
    /// has (an app or environment taken out, a host taken out of an environment, a slot
    /// renamed), after the balancer configs took their servers out; what `prune: true` in Git
    /// asks for. Refuses (exit 2, nothing changed) to stop more than half of the instances
    /// kube-free runs in scope, or all of them. Without it (and without `prune: true`), orphans
    /// are listed and left running. A process kube-free did not start is never touched.
    #[arg(long)]
    pub prune: bool,
    /// `--prune`, however many instances that stops (a decommission).
    #[arg(long)]
    pub prune_all: bool,
}

impl PruneArgs {
    pub fn mode(&self) -> crate::plan::Prune {
        match (self.prune_all, self.prune) {
            (true, _) => crate::plan::Prune::All,
            (false, true) => crate::plan::Prune::On,
            (false, false) => crate::plan::Prune::Off,
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// `text`, `json`, or `dot` (Graphviz: `kube-free plan --output dot | dot -Tsvg > plan.svg`).
    #[arg(long, value_enum, default_value_t = PlanOutput::Text)]
    pub output: PlanOutput,
    /// Show the plan of a commit that `reconcile` would refuse because it does not descend from
    /// the last one applied (without it, plan refuses it too, with exit 2).
    #[arg(long)]
    pub allow_rewind: bool,
    /// Also save the plan to FILE (JSON, readable by its owner only, replaced whole): the full
    /// commit, the scope, the steps, and a digest of what was observed, for `reconcile --once
    /// --plan FILE`. The plan is printed as without it; where it was saved goes to stderr.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print where the time went on stderr at the end: reading the desired state, connecting,
    /// observing, planning, each with its wall time.
    #[arg(long)]
    pub timings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Text,
    Json,
    Dot,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// Converge once and exit (`kube-free watch` runs continuously).
    #[arg(long, required = true)]
    pub once: bool,
    /// Most steps running at once (across hosts), and most hosts connected to and observed at once.
    #[arg(long, value_name = "N", default_value_t = crate::reconcile::DEFAULT_PARALLEL as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Longest to wait at a canary pause or gate (`30s`, `5m`): a pause with more left, or a gate not
    /// promoted within it, ends the run with exit 3, and the next run resumes at that step. Without
    /// it, timed pauses are waited out and gates end the run at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_wait: Option<std::time::Duration>,
    /// When another run holds the lease, wait this long for it (`2m`) before giving up with exit 4.
    /// Default: do not wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub lock_wait: std::time::Duration,
    /// How long the lease (`<state_dir>/lock` on each balancer host) lasts at least without renewal;
    /// 5s at least. A run renews it every quarter of this and stops at once when a renewal finds it
    /// lost (or none succeeded for half of it); the lease of a run that died is taken over once it
    /// expired.
    #[arg(long, value_name = "DURATION", value_parser = parse_lease_ttl, default_value = "30s")]
    pub lease_ttl: std::time::Duration,
    /// Apply a commit that does not descend from the last one applied (recorded on every
    /// balancer host): a branch rewound by a force-push. Without it such a commit is refused
    /// (exit 2, nothing changed); a rollback in Git is a revert commit, which needs no option.
    #[arg(long)]
    pub allow_rewind: bool,
    /// Execute exactly the plan saved in FILE by `plan --out FILE`, or nothing (exit 2): the
    /// commit and scope must be the plan's, and what is observed under the lease what it was made
    /// from. --env and --app may be left out (the plan's are used) or repeat the plan's; a plan
    /// made with --prune or --prune-all prunes as it says.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prune", "prune_all"])]
    pub plan: Option<PathBuf>,
    /// Print the result alone: the line that says what the run did (and those of environments
    /// skipped as suspended) on stdout, or the error on stderr. Nothing is drawn at a terminal,
    /// and no log line is printed unless KUBE_FREE_LOG asks for some.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print where the time went on stderr at the end: reading the desired state, connecting,
    /// observing, planning, taking the lease, executing (and each step, slowest first), each with its wall time.
    #[arg(long)]
    pub timings: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// How often the branch is fetched (each wait is ±10% of it); at least 1s.
    #[arg(long, value_name = "DURATION", value_parser = parse_period, default_value = "60s")]
    pub interval: std::time::Duration,
    /// How often the pass runs without a new commit, to find and put back drift; at least 1s. The
    /// first pass after a start deploys the head commit (and so puts back drift even with
    /// --no-self-heal).
    #[arg(long, value_name = "DURATION", value_parser = parse_period, default_value = "5m")]
    pub resync: std::time::Duration,
    /// Only report drift (`drift found, not corrected`); new commits are still deployed.
    #[arg(long)]
    pub no_self_heal: bool,
    /// Address of the HTTP endpoints (status page, API, metrics, webhooks). Loopback by default:
    /// put a reverse proxy with TLS in front to expose it.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9420")]
    pub listen: std::net::SocketAddr,
    /// File holding the webhook secret (as configured in GitHub, Gitea/Forgejo or GitLab); it must
    /// not be readable by group or others. Without it, `POST /hooks/git` is refused (403).
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Longest a pass waits at a canary pause before it gives the loop back (the loop reads Git and
    /// comes back when the pause ends; a new commit pre-empts the canary).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub max_wait: std::time::Duration,
    /// Most steps running at once (across hosts), and most hosts connected to and observed at once.
    #[arg(long, value_name = "N", default_value_t = crate::reconcile::DEFAULT_PARALLEL as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// How long the lease lasts at least without renewal (5s at least); a watcher that died is
    /// taken over by another once it expired.
    #[arg(long, value_name = "DURATION", value_parser = parse_lease_ttl, default_value = "30s")]
    pub lease_ttl: std::time::Duration,
    /// Apply a head commit that does not descend from the last one applied (a force-push that
    /// went back). Without it, the watcher says so once and deploys nothing until a commit that
    /// descends from it.
    #[arg(long)]
    pub allow_rewind: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::desired::duration::parse(text)
}

/// A period of the watch loop: 1 s at least, so that it cannot spin.
fn parse_period(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{text:?} is shorter than 1s"));
    }
    Ok(d)
}

/// A lease's time to live: at least [`crate::reconcile::MIN_LEASE_TTL`], since it is renewed every
/// quarter of it, each renewal a round trip to every balancer host.
fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(text)?;
    let min = crate::reconcile::MIN_LEASE_TTL;
    if d < min {
        return Err(format!(
            "{text:?} is shorter than {}: the lease is renewed every quarter of it, each renewal a round trip to every balancer host",
            crate::desired::duration::format(min)
        ));
    }
    Ok(d)
}

/// Which rollout a manual gate acts on.
#[derive(Debug, Args)]
pub struct GateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The app.
    #[arg(value_name = "APP")]
    pub app: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// promote: skip every remaining pause, not only the current one.
    #[arg(long)]
    pub all: bool,
    /// abort: most steps running at once while rolling back.
    #[arg(long, value_name = "N", default_value_t = crate::reconcile::DEFAULT_PARALLEL as u16, value_parser = clap::value_parser!(u16).range(1..), hide = true)]
    pub parallel: u16,
}

#[derive(Debug, Args)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The environment to suspend; without it, every environment.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// How long (`30m`, `2h`, at most 30 days); it ends by itself then.
    #[arg(long = "for", value_name = "DURATION", required = true, value_parser = parse_suspension)]
    pub for_: std::time::Duration,
    /// Why, for whoever finds it suspended (shown by `status`, `reconcile` and the watcher).
    #[arg(long, value_name = "TEXT", required = true, value_parser = parse_reason)]
    pub reason: String,
}

fn parse_suspension(text: &str) -> Result<std::time::Duration, String> {
    let length = parse_duration(text)?;
    crate::reconcile::suspend::check_length(length).map_err(|e| e.to_string())?;
    Ok(length)
}

fn parse_reason(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("a suspension needs a reason".into()),
        reason => Ok(reason.to_owned()),
    }
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The environment to resume; without it, every suspension ends.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// `text` or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The app.
    #[arg(value_name = "APP")]
    pub app: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Only this host (one of the environment's).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only this slot (`blue`, `green`), read even without an instance there.
    #[arg(long, value_name = "SLOT")]
    pub slot: Option<String>,
    /// Lines from the end of each log to print (with --follow: before the new ones).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    pub lines: u32,
    /// Keep printing the lines written to the logs until interrupted (SIGINT, SIGTERM: exit 0).
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this app's rollouts.
    #[arg(value_name = "APP")]
    pub app: Option<String>,
    /// Only this environment's (only its balancer host is read).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Most rows to print, the newest; 0: all.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// `text` (a table) or `json` (an array of rows).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct NginxSnippetArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this balancer (default: every nginx balancer).
    #[arg(long, value_name = "NAME")]
    pub balancer: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// A shell that `completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Print the schema of one `environments/<env>.yaml` file instead of `kube-free.yaml`.
    #[arg(long)]
    pub environment: bool,
}
