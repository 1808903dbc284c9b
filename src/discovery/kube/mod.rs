//! Kubernetes discovery: the opted-in Services and their EndpointSlices, turned into the
//! same `ServiceTable` the config file gives, then wao-lb's policies (LocalRedirectPolicy,
//! BalancingPolicy) applied to it. `endpoints` and `translate` are pure and hold
//! kube-proxy's semantics; `policies` is pure too.

pub mod endpoints;
pub mod metrics;
pub mod node_metrics;
pub mod nodeconfig;
pub mod policies;
pub mod policy_status;
pub mod policy_types;
pub mod settings;
pub mod translate;
pub mod watch;
