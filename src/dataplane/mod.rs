//! Dataplane: programs the Plan and moves the bytes. `Dataplane` is what the app drives;
//! `proxy` (userspace relay, with its redirect rules) and `ipvs` (the kernel's IPVS over
//! generic netlink) implement it, and `ChosenDataplane` is the one the settings name.

pub mod command;
pub mod ipvs;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::plan::Plan;
use crate::model::connections::OpenConnections;
use crate::model::Frontend;
use crate::settings::Settings;

/// A data plane: something that makes the Plan's frontends reach the Plan's backends in the
/// Plan's shares.
pub trait Dataplane: Send + 'static {
    /// Programs `plan`. A frontend is only opened once its routes exist. Returns the first
    /// frontend that could not be set up, after setting up all the others.
    fn apply(
        &mut self,
        plan: &Arc<Plan>,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Takes new process settings on reload (timeouts, limits). Settings that need a
    /// restart (redirect, tproxy, dataplane) are the app's to refuse.
    fn reconfigure(&mut self, settings: &Settings);

    /// How many new connections or flows went to each backend, where this data plane
    /// counts them.
    fn picks(&self) -> Option<Arc<dyn PickCounts>>;

    /// Stops taking new connections, waits up to `grace` for open ones to finish (those
    /// still open then are reset), and removes everything it installed.
    fn stop(self, grace: Duration) -> impl Future<Output = ()> + Send;
}

/// The data plane `dataplane:` names.
pub enum ChosenDataplane {
    Proxy(proxy::Proxy),
    Ipvs(ipvs::Ipvs),
}

impl ChosenDataplane {
    /// Starts the data plane the settings name (IPVS fails at once on a kernel without it).
    pub async fn start(
        settings: &Settings,
        registry: &prometheus::Registry,
        open: OpenConnections,
    ) -> Result<ChosenDataplane, DataplaneError> {
        Ok(match settings.dataplane {
            crate::settings::DataplaneMode::Proxy => {
                ChosenDataplane::Proxy(proxy::Proxy::new(settings, registry, open))
            }
            crate::settings::DataplaneMode::Ipvs => {
                ChosenDataplane::Ipvs(ipvs::Ipvs::start(settings, registry, open).await?)
            }
        })
    }
}

impl Dataplane for ChosenDataplane {
    async fn apply(&mut self, plan: &Arc<Plan>) -> Result<(), DataplaneError> {
        match self {
            ChosenDataplane::Proxy(p) => p.apply(plan).await,
            ChosenDataplane::Ipvs(i) => i.apply(plan).await,
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        match self {
            ChosenDataplane::Proxy(p) => p.reconfigure(settings),
            ChosenDataplane::Ipvs(i) => i.reconfigure(settings),
        }
    }

    fn picks(&self) -> Option<Arc<dyn PickCounts>> {
        match self {
            ChosenDataplane::Proxy(p) => p.picks(),
            ChosenDataplane::Ipvs(i) => i.picks(),
        }
    }

    async fn stop(self, grace: Duration) {
        match self {
            ChosenDataplane::Proxy(p) => p.stop(grace).await,
            ChosenDataplane::Ipvs(i) => i.stop(grace).await,
        }
    }
}

/// Picks per backend, read by the weights view.
pub trait PickCounts: Send + Sync {
    fn picks(&self, frontend: &Frontend, backend: SocketAddr) -> Option<u64>;
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{frontend}: cannot bind: {source}")]
    Bind {
        frontend: Frontend,
        source: std::io::Error,
    },
    #[error("redirect: tproxy: {what} {addr}: {source} (IP_TRANSPARENT needs CAP_NET_ADMIN)")]
    Transparent {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("ipvs: {0}")]
    Ipvs(String),
    #[error("redirect: tproxy: {what}: {source}")]
    Redirect {
        what: &'static str,
        source: command::CommandError,
    },
}
