//! The userspace proxy: TCP and UDP listeners that share one context (routes, settings,
//! metrics and the tracker of open connections used for draining).

pub mod relay;
pub mod scratch;
pub mod socket;
pub mod tcp;
pub mod udp;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;

use crate::balance::routes::Routes;
use crate::config::{ProxySettings, UdpSettings};
use crate::telemetry::metrics::Metrics;

/// What every listener and connection of the proxy reads.
pub struct ProxyContext {
    pub routes: Arc<ArcSwap<Routes>>,
    pub tcp: ArcSwap<ProxySettings>,
    pub udp: ArcSwap<UdpSettings>,
    pub metrics: Arc<Metrics>,
    /// Open connections and UDP sessions; a stop waits on it for the drain period.
    pub tracker: TaskTracker,
}
