//! Kubernetes discovery: the opted-in Services and their EndpointSlices, turned into the
//! same `ServiceTable` the config file gives. `endpoints` and `translate` are pure and hold
//! kube-proxy's semantics.

pub mod endpoints;
pub mod metrics;
pub mod node_metrics;
pub mod nodeconfig;
pub mod settings;
pub mod translate;
pub mod watch;
