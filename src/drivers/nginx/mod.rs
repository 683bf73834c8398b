//! The nginx balancer driver ([`Nginx`], a [`Balancer`]), in two modes: `dynamic` (weights and
//! states at runtime through the Lua endpoint rendered in [`dynamic`]) and `reload` (plain nginx:
//! every change is a config test and a reload, [`reload`]).

pub mod dynamic;

use super::{Balancer, BalancerError, Change, Transport};
use crate::desired::DesiredState;
use crate::observed::{BalancerState, Servers};
use std::sync::Arc;

/// The nginx driver of one balancer of the desired state.
pub struct Nginx {
    name: String,
    transport: Arc<dyn Transport>,
    config: String,
}

impl Nginx {
    pub fn new(desired: &DesiredState, name: &str, transport: Arc<dyn Transport>) -> Nginx {
        Nginx {
            name: name.to_owned(),
            transport,
            config: dynamic::render(desired, name),
        }
    }
}

#[async_trait::async_trait]
impl Balancer for Nginx {
    fn name(&self) -> &str {
        &self.name
    }
    fn host(&self) -> &str {
        self.transport.host()
    }
    async fn observe(&self) -> Result<BalancerState, BalancerError> {
        todo!()
    }
    async fn servers(&self) -> Result<Servers, BalancerError> {
        todo!()
    }
    async fn apply(&self, _changes: &[Change]) -> Result<(), BalancerError> {
        todo!()
    }
    fn rendered_config(&self) -> &str {
        &self.config
    }
    async fn apply_config(&self) -> Result<(), BalancerError> {
        todo!()
    }
    async fn save_state(&self, _backend: &str) -> Result<(), BalancerError> {
        todo!()
    }
}
