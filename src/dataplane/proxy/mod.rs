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
use crate::model::Frontend;
use crate::telemetry::metrics::{Metrics, Refusal};

/// How a listener learns which frontend a connection or datagram was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The listener is bound to the frontend itself (`redirect: listen`).
    Bound(Frontend),
    /// TPROXY: the accepted socket's local address (TCP) or the datagram's original
    /// destination (UDP) is the frontend.
    Transparent,
    /// NAT redirect of the node's own connections: SO_ORIGINAL_DST names the frontend.
    Redirected,
}

impl ProxyContext {
    /// Counts a connection or datagram for an address that is no configured frontend.
    pub fn refuse_unknown(&self) {
        self.metrics
            .refused
            .with_label_values(&["", Refusal::UnknownDestination.label()])
            .inc();
    }
}

/// What every listener and connection of the proxy reads.
pub struct ProxyContext {
    pub routes: Arc<ArcSwap<Routes>>,
    pub tcp: ArcSwap<ProxySettings>,
    pub udp: ArcSwap<UdpSettings>,
    pub metrics: Arc<Metrics>,
    /// SO_MARK for upstream sockets in transparent mode.
    pub upstream_mark: Option<u32>,
    /// Open connections and UDP sessions; a stop waits on it for the drain period.
    pub tracker: TaskTracker,
}
