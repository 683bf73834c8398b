//! Suspensions (`kube-free suspend` / `kube-free resume`): an environment (or every one) made
//! observe-only until a time or until resumed. They are kept in `suspensions.json` on every balancer
//! host in use, through each host's ledger, so every machine that runs kube-free (bastions, CI) sees
//! the same ones; readers merge the copies, so a copy a failed write left behind errs on the side of
//! staying suspended. [`suspend`] and [`resume`] write under the lease; [`decide`] (pure) and
//! [`check`] say what a pass may do: nothing at all, or only the environments not suspended.
//! This file touches ledgers only, never an instance or a balancer; it is not a canary pause
//! (that is a rollout's, in its record). A suspend, and a resume that ended one, append their
//! line to the audit log, under the lease.

use super::audit::{self, Outcome};
use super::lease::leased;
use super::{ReconcileError, World};
use crate::desired::DesiredState;
use crate::drivers::LedgerError;
use crate::plan::Scope;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The longest a suspension may last: one that is forgotten ends by itself.
pub const LONGEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// One suspension, as kept in `suspensions.json` (a JSON array of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The environment; `None`: every environment.
    pub env: Option<String>,
    /// When it ends by itself (seconds since the Unix epoch, the clock of the machine that wrote it).
    pub until: u64,
    pub reason: String,
    /// Who suspended: `user@hostname`.
    pub by: String,
    /// When (seconds since the Unix epoch).
    pub at: u64,
}

impl Suspension {
    /// What is suspended, in words: the environment's name or `every environment`.
    pub fn what(&self) -> &str {
        self.env.as_deref().unwrap_or("every environment")
    }
}

/// `production until 2026-11-30 15:00:00 UTC by alice@bastion-1 (db migration)`.
impl std::fmt::Display for Suspension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} until {} by {} ({})",
            self.what(),
            utc(self.until),
            self.by,
            self.reason
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    #[error("suspensions file {path} on {host} cannot be read ({error}); nothing is done until it is put right: fix it, or remove it on that host and suspend again")]
    Unreadable {
        host: String,
        path: String,
        error: String,
    },
    #[error("cannot write the suspensions file {path} on {host} (the balancer hosts written before it have it); run again")]
    Write {
        host: String,
        path: String,
        #[source]
        source: Box<LedgerError>,
    },
    #[error("a suspension must last more than 0s and at most 30 days, not {0}")]
    Length(String),
    #[error("a suspension needs a reason")]
    NoReason,
}

/// Whether `length` is one a suspension may have (more than 0, at most [`LONGEST`]).
pub fn check_length(length: Duration) -> Result<(), SuspendError> {
    if length.is_zero() || length > LONGEST {
        return Err(SuspendError::Length(crate::desired::duration::format(
            length,
        )));
    }
    Ok(())
}

/// The suspension that applies to `env`: its own or one of every environment; when several do,
/// the one that ends last.
pub fn applies<'a>(list: &'a [Suspension], env: &str) -> Option<&'a Suspension> {
    list.iter()
        .filter(|s| s.env.as_deref().is_none_or(|e| e == env))
        .max_by_key(|s| s.until)
}

/// The suspensions in force now: every balancer host's, merged, without those that ended.
/// A file that cannot be parsed is an error that names its host and path.
pub async fn suspensions(world: &World) -> Result<Vec<Suspension>, ReconcileError> {
    Ok(live(read_all(world).await?, world.clock().now()))
}

/// `kube-free suspend`: `env` (every environment when `None`) is observe-only for `length` from
/// now. Replaces an earlier suspension of the same `env`. Written to every balancer host in use,
/// under the lease (waiting up to 60s for it); a pass that runs meanwhile is not stopped.
pub async fn suspend(
    world: &Arc<World>,
    env: Option<&str>,
    length: Duration,
    reason: &str,
) -> Result<Suspension, ReconcileError> {
    check_length(length)?;
    if reason.trim().is_empty() {
        return Err(SuspendError::NoReason.into());
    }
    let work = async {
        let start = audit::start(world);
        let now = world.clock().now();
        let mut list = live(read_all(world).await?, now);
        list.retain(|s| s.env.as_deref() != env);
        let secs = length.as_secs() + u64::from(length.subsec_nanos() > 0);
        let new = Suspension {
            env: env.map(str::to_owned),
            until: now + secs,
            reason: reason.trim().to_owned(),
            by: who(),
            at: now,
        };
        list.push(new.clone());
        write_all(world, &list).await?;
        let mut command = String::from("suspend");
        if let Some(env) = env {
            command.push_str(&format!(" --env {env}"));
        }
        command.push_str(&format!(
            " --for {}",
            crate::desired::duration::format(length)
        ));
        let envs = concerned(world, env);
        audit::command_line(
            world,
            &start,
            &command,
            Outcome::Suspended,
            envs,
            Vec::new(),
        )
        .await;
        Ok(new)
    };
    leased(
        world,
        Duration::from_secs(60),
        Duration::from_secs(30),
        work,
    )
    .await
}

/// What `kube-free resume` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// The suspensions removed.
    pub removed: Vec<Suspension>,
    /// With an environment: the suspension of every environment that still applies to it.
    pub still: Option<Suspension>,
}

/// `kube-free resume`: removes the suspension of `env` (with `None`, every suspension, that of
/// every environment included), on every balancer host in use, under the lease.
pub async fn resume(world: &Arc<World>, env: Option<&str>) -> Result<Resumed, ReconcileError> {
    let work = async {
        let start = audit::start(world);
        let mut list = live(read_all(world).await?, world.clock().now());
        let (removed, kept): (Vec<_>, Vec<_>) = list
            .drain(..)
            .partition(|s| env.is_none() || s.env.as_deref() == env);
        if !removed.is_empty() {
            write_all(world, &kept).await?;
            let command = match env {
                Some(env) => format!("resume --env {env}"),
                None => "resume".to_owned(),
            };
            let envs = concerned(world, env);
            audit::command_line(world, &start, &command, Outcome::Resumed, envs, Vec::new()).await;
        }
        let still = env.and_then(|e| applies(&kept, e)).cloned();
        Ok(Resumed { removed, still })
    };
    leased(
        world,
        Duration::from_secs(60),
        Duration::from_secs(30),
        work,
    )
    .await
}

/// The environments a suspension of `env` (`None`: every environment) is about.
fn concerned(world: &World, env: Option<&str>) -> Vec<String> {
    match env {
        Some(env) => vec![env.to_owned()],
        None => world.desired.environments.keys().cloned().collect(),
    }
}

/// What a pass may do, given the suspensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the pass on `scope`; it leaves out the environments `skipped` suspends (empty when
    /// nothing in the scope is suspended).
    Run {
        scope: Scope,
        skipped: Vec<Suspension>,
    },
    /// Run nothing: every environment in the scope is suspended, by these.
    Suspended(Vec<Suspension>),
}

/// What a pass over `scope` may do under `list` (the suspensions in force): nothing when every
/// environment with an app in the scope is suspended (a single suspended environment, or every
/// environment suspended); else the pass runs on the others only.
pub fn decide(desired: &DesiredState, scope: &Scope, list: &[Suspension]) -> Decision {
    let mut envs: Vec<&str> = desired
        .deployments()
        .filter(|(env, app, _)| scope.includes(&env.name, app))
        .map(|(env, _, _)| env.name.as_str())
        .collect();
    envs.dedup();
    let mut held: Vec<(&str, &Suspension)> = Vec::new();
    let mut free = 0;
    for env in envs {
        match applies(list, env) {
            Some(s) => held.push((env, s)),
            None => free += 1,
        }
    }
    let mut by: Vec<Suspension> = Vec::new();
    for (_, s) in &held {
        if !by.contains(s) {
            by.push((*s).clone());
        }
    }
    if held.is_empty() {
        Decision::Run {
            scope: scope.clone(),
            skipped: Vec::new(),
        }
    } else if free == 0 {
        Decision::Suspended(by)
    } else {
        let mut scope = scope.clone();
        scope
            .except
            .extend(held.iter().map(|(env, _)| (*env).to_owned()));
        Decision::Run { scope, skipped: by }
    }
}

/// [`decide`] on the suspensions in force now.
pub async fn check(world: &World, scope: &Scope) -> Result<Decision, ReconcileError> {
    Ok(decide(&world.desired, scope, &suspensions(world).await?))
}

/// The suspensions of `list` that have not ended at `now`.
fn live(mut list: Vec<Suspension>, now: u64) -> Vec<Suspension> {
    list.retain(|s| s.until > now);
    list
}

/// Every balancer host's suspensions, merged (each once), by environment and end.
async fn read_all(world: &World) -> Result<Vec<Suspension>, ReconcileError> {
    let mut all: Vec<Suspension> = Vec::new();
    for host in world.balancer_hosts() {
        let ledger = world.drivers.ledgers[host].as_ref();
        let Some(bytes) = ledger.read_suspensions().await? else {
            continue;
        };
        let list: Vec<Suspension> =
            serde_json::from_slice(&bytes).map_err(|e| SuspendError::Unreadable {
                host: host.to_owned(),
                path: ledger.suspensions_file(),
                error: e.to_string(),
            })?;
        for s in list {
            if !all.contains(&s) {
                all.push(s);
            }
        }
    }
    all.sort_by(|a, b| (&a.env, a.until).cmp(&(&b.env, b.until)));
    Ok(all)
}

/// Writes `list` whole to every balancer host in use.
async fn write_all(world: &World, list: &[Suspension]) -> Result<(), ReconcileError> {
    let bytes = serde_json::to_vec_pretty(list).expect("suspensions serialize");
    for host in world.balancer_hosts() {
        let ledger = world.drivers.ledgers[host].as_ref();
        world.check_lease().await?;
        ledger
            .write_suspensions(&bytes)
            .await
            .map_err(|source| SuspendError::Write {
                host: host.to_owned(),
                path: ledger.suspensions_file(),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// `user@hostname` of this process.
pub(crate) fn who() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| h.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail and touches no memory.
            let uid = unsafe { libc::getuid() }.to_string();
            std::fs::read_to_string("/etc/passwd")
                .ok()
                .and_then(|passwd| {
                    passwd.lines().find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() > 2 && f[2] == uid).then(|| f[0].to_owned())
                    })
                })
                .unwrap_or_else(|| format!("uid {uid}"))
        });
    format!("{user}@{host}")
}

pub use crate::state::utc;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(env: Option<&str>, until: u64) -> Suspension {
        Suspension {
            env: env.map(str::to_owned),
            until,
            reason: "why".into(),
            by: "me@here".into(),
            at: 0,
        }
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
        assert_eq!(utc(1_796_050_800), "2026-11-30 15:00:00 UTC");
    }

    #[test]
    fn the_suspension_that_applies_is_the_one_that_ends_last() {
        let list = [s(Some("prod"), 10), s(None, 20), s(Some("staging"), 30)];
        assert_eq!(applies(&list, "prod"), Some(&list[1]));
        assert_eq!(applies(&list, "staging"), Some(&list[2]));
        assert_eq!(applies(&list, "dev"), Some(&list[1]));
        assert_eq!(applies(&list[..1], "staging"), None);
        assert_eq!(live(list.to_vec(), 20), vec![list[2].clone()]);
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(check_length(Duration::ZERO).is_err());
        assert!(check_length(Duration::from_millis(1)).is_ok());
        assert!(check_length(LONGEST).is_ok());
        assert_eq!(
            check_length(LONGEST + Duration::from_secs(60))
                .unwrap_err()
                .to_string(),
            "a suspension must last more than 0s and at most 30 days, not 720h1m"
        );
    }

    #[test]
    fn the_file_is_a_json_array() {
        let text = serde_json::to_string(&[s(None, 5)]).unwrap();
        assert_eq!(
            text,
            r#"[{"env":null,"until":5,"reason":"why","by":"me@here","at":0}]"#
        );
    }

    #[test]
    fn a_display_names_what_until_when_by_whom_and_why() {
        assert_eq!(
            s(Some("prod"), 1_796_050_800).to_string(),
            "prod until 2026-11-30 15:00:00 UTC by me@here (why)"
        );
        assert_eq!(
            s(None, 0).to_string(),
            "every environment until 1970-01-01 00:00:00 UTC by me@here (why)"
        );
    }
}
