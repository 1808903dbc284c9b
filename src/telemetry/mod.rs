//! Telemetry: the metrics registry's rendering, the read-only admin HTTP API, the weights
//! view, the cluster's power score, kube-proxy's health-check node ports, and logging
//! setup. It reads the Plan, the power side's weights and the data plane's counters and
//! writes to nothing; only `app` (and the CLI) import it.

pub mod admin;
pub mod health_node_ports;
pub mod logging;
pub mod registry;
pub mod weights_view;
