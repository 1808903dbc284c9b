//! Active health checks: for every service with a `healthCheck`, a TCP connect to each
//! backend on an interval; rise and fall decide when a backend is up or down. The result is
//! a `HealthTable` on a watch channel; balance gives down backends no share (unless every
//! backend of the service is down), so every data plane follows it.

pub mod checker;
pub mod metrics;
pub mod probe;
pub mod streak;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the checks say about one backend of one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not yet decided: no `fall` failures and no `rise` successes in a row so far. Balanced
    /// as up, as HAProxy starts a server.
    Starting,
    Up,
    /// Down since the failure that completed `fall`, with what that failure was.
    Down(String),
}

impl Health {
    pub fn is_down(&self) -> bool {
        matches!(self, Health::Down(_))
    }

    /// The word the weights view shows.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Up => "up",
            Health::Down(_) => "down",
        }
    }
}

/// The health of every checked backend, by (service key, backend address). A backend of a
/// service without checks has no entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthTable {
    pub backends: BTreeMap<(Arc<str>, SocketAddr), Health>,
}

impl HealthTable {
    pub fn get(&self, service: &Arc<str>, backend: SocketAddr) -> Option<&Health> {
        self.backends.get(&(service.clone(), backend))
    }
}
