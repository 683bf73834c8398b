//! The long-running `kube-free watch` service.
pub mod page;
