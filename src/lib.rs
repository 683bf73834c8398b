//! kube-free: a Kubernetes-free, GitOps-style deployment reconciler for plain Linux hosts.
//!
//! The desired state is read from a Git commit (`source`), parsed and validated (`desired`); later
//! stages observe hosts, plan and execute. `commands` ties them to the CLI (`cli`).
pub mod cli;
pub mod commands;
pub mod desired;
pub mod drivers;
pub mod error;
pub mod execute;
pub mod names;
pub mod observed;
pub mod plan;
pub mod reconcile;
pub mod source;
pub mod state;
#[cfg(test)]
mod testing;
pub mod watch;

pub use error::{Error, Exit};
