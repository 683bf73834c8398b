//! nginx in `mode: dynamic`: the include file kube-free owns (rendered here) and the Lua module it
//! embeds (`kube_free.lua`), which picks each request's peer by weight from a shared dict, checks
//! health in a timer, counts outcomes in the log phase and serves the admin endpoint.

use crate::desired::DesiredState;

/// Where kube-free keeps the weights and states of a dynamic nginx balancer, on its host: the
/// Lua module seeds its dict from it after a restart.
pub fn state_file(state_dir: &str, balancer: &str) -> String {
    format!("{}/nginx/{balancer}.state", state_dir.trim_end_matches('/'))
}

/// The include file for `balancer` (http context).
pub fn render(_desired: &DesiredState, _balancer: &str) -> String {
    String::new()
}
