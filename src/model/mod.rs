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
    /// What made it: a static service, a Kubernetes Service, or one of wao-lb's policies.
    pub kind: ServiceKind,
    /// The policy that made or reshaped it (`namespace/name`), for logs and views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    /// A local redirect: while any of its backends is up they take every connection, and
    /// `backends` only while none is (the fallback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Other clusters that take a share of the connections by their power score, as WAO's
    /// multi-cluster endpoint proxy splits them; `backends` are this cluster's group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<RemoteCluster>,
}

impl Service {
    /// A service of `kind` with only its frontend and backends; every option unset.
    pub fn plain(
        kind: ServiceKind,
        key: Arc<str>,
        frontend: Frontend,
        backends: Vec<Backend>,
    ) -> Service {
        Service {
            name: key.clone(),
            key,
            frontend,
            backends,
            affinity: None,
            cpu_per_connection: None,
            udp_responses: None,
            health_check: None,
            when_empty: WhenEmpty::Reject,
            source_ranges: Vec::new(),
            kind,
            policy: None,
            redirect: None,
            clusters: Vec::new(),
        }
    }

    /// What it is to an operator, as the connection log names it: `service web`,
    /// `Service ns/web:http`, `BalancingPolicy ns/split`.
    pub fn origin(&self) -> String {
        match (&self.kind, &self.policy) {
            (ServiceKind::Static, _) => format!("service {}", self.name),
            (kind, Some(policy)) => format!("{kind} {policy}"),
            (kind, None) => format!("{kind} {}", self.name),
        }
    }

    /// Whether any connection could be served: it has a backend of some group.
    pub fn has_backends(&self) -> bool {
        !self.backends.is_empty()
            || !self.clusters.is_empty()
            || self
                .redirect
                .as_ref()
                .is_some_and(|r| !r.backends.is_empty())
    }

    /// Every backend of this cluster it names: the redirect's, then its own.
    pub fn all_backends(&self) -> impl Iterator<Item = &Backend> {
        self.redirect
            .iter()
            .flat_map(|r| r.backends.iter())
            .chain(self.backends.iter())
    }
}

/// What made a service; shown in `/services`, `/weights` and `wao-lb weights`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ServiceKind {
    /// A `services:` entry of the config file.
    #[default]
    #[serde(rename = "static")]
    Static,
    /// A Kubernetes Service opted in to wao-lb.
    Service,
    LocalRedirectPolicy,
    BalancingPolicy,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Static => "static",
            ServiceKind::Service => "Service",
            ServiceKind::LocalRedirectPolicy => "LocalRedirectPolicy",
            ServiceKind::BalancingPolicy => "BalancingPolicy",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Node-local backends that take a frontend's connections while any of them is up.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Redirect {
    /// Who asked for it (`LocalRedirectPolicy ns/name`, or `localRedirect` in the file).
    pub by: Arc<str>,
    pub backends: Vec<Backend>,
    /// What the service's own backends, the fallback, are to an operator (`Service
    /// ns/web:http`, `BalancingPolicy ns/split`): what the redirect was put in front of.
    pub fallback: Arc<str>,
}

/// Another cluster as one backend group: its frontend `address` takes the share its power
/// score earns, read from `score_url` (another wao-lb's `/score`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteCluster {
    pub name: Arc<str>,
    pub score_url: url::HttpUrl,
    pub address: SocketAddr,
    #[serde(skip)]
    pub timing: node::Timing,
}

impl RemoteCluster {
    /// The node name its connections are counted under: never a real node's (a Node's
    /// name cannot hold a `/`).
    pub fn node(&self) -> NodeName {
        Arc::from(format!("cluster/{}", self.name))
    }
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
