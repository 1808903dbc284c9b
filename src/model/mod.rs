//! Shared vocabulary: what a service, a frontend, a backend and a node are, and the
//! `Desired` state discovery produces. Balance, power and the data planes consume them;
//! nothing here does I/O, and this module imports no other of the crate.

pub mod cidr;
pub mod connections;
pub mod curve;
pub mod node;
pub mod published;
pub mod units;
pub mod url;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The name of the node (machine) a backend runs on; power is modelled per node.
pub type NodeName = Arc<str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where clients reach a service: one address and port for one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    pub protocol: Protocol,
    pub address: SocketAddr,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.protocol)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub address: SocketAddr,
    pub node: NodeName,
    /// The pod behind it (`namespace/name`), for Kubernetes endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
}

/// ClientIP session affinity, as kube-proxy does it: the same client IP goes to the same
/// backend until `timeout` passes without a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Affinity {
    #[serde(with = "units::duration_secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// What metrics, logs and uniqueness checks key the service by: its name for a static
    /// service, `namespace/name:port` for a Kubernetes one (one key per frontend).
    pub key: Arc<str>,
    /// The name an operator knows it by.
    pub name: Arc<str>,
    pub frontend: Frontend,
    pub backends: Vec<Backend>,
    pub affinity: Option<Affinity>,
    /// CPU (in millicores) one more connection costs a node; overrides `power.cpuPerConnection`.
    pub cpu_per_connection: Option<u32>,
    /// UDP: a flow ends after this many replies (1 suits DNS), as nginx's `proxy_responses`.
    pub udp_responses: Option<u32>,
    /// Active TCP connect checks of each backend; none when absent.
    pub health_check: Option<HealthCheck>,
    /// What a connection gets while there is no backend.
    pub when_empty: WhenEmpty,
    /// The clients this frontend serves (a load-balancer IP's `loadBalancerSourceRanges`);
    /// others are dropped. Empty: every client.
    pub source_ranges: Vec<cidr::Cidr>,
}

/// What a frontend does with a connection while it has no backend, as kube-proxy: reject
/// (a TCP reset, ICMP port unreachable for UDP) when the service has no endpoint at all;
/// drop (no answer) when a traffic policy `Local` leaves this node none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenEmpty {
    #[default]
    Reject,
    Drop,
}

/// An active health check: a TCP connect to the backend every `interval`, failing after
/// `timeout`. A backend goes down after `fall` failures in a row and up again after `rise`
/// successes in a row, as HAProxy's `check inter rise fall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct HealthCheck {
    #[serde(with = "units::duration_secs")]
    pub interval: Duration,
    #[serde(with = "units::duration_secs")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Every service, keyed by its frontend.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ServiceTable {
    pub services: BTreeMap<Frontend, Arc<Service>>,
}

/// What discovery wants running: the services and the nodes whose power weights them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub services: ServiceTable,
    pub nodes: BTreeMap<NodeName, node::NodeSpec>,
}
