//! Telemetry: Prometheus metrics, the read-only admin HTTP API, and logging setup. It reads
//! from every other module and writes to none of them.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod weights_view;
