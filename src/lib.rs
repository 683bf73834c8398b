//! kube-free: a Kubernetes-free, GitOps-style deployment reconciler for plain Linux hosts.
//!
//! The desired state is read from a Git commit (`source`), parsed and validated (`desired`); later
//! stages observe hosts, plan and execute. `commands` ties them to the CLI (`cli`); `logs` reads
//! the logs of an app's instances; `history` prints past rollouts from the audit log; `progress` draws a run's steps live at a terminal. `notify` sends events to the notification targets of the
//! desired state, never delaying the caller.
pub mod cli;
pub mod commands;
pub mod desired;
pub mod drivers;
pub mod error;
pub mod execute;
pub mod history;
pub mod load;
pub mod logs;
pub mod names;
pub mod notify;
pub mod observed;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod secret;
pub mod source;
pub mod state;
pub mod status;
#[cfg(test)]
mod testing;
pub mod timings;
pub mod watch;

pub use error::{Error, Exit};

/// Installs rustls's `ring` crypto provider as the process default (the first call does; later calls
/// do nothing). reqwest is built without a provider of its own (no aws-lc), so every place that builds
/// an HTTP client calls this first, or building the client panics.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
