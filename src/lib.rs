//! wao-lb: an energy-aware L4 (TCP/UDP) load balancer. See ARCHITECTURE.md for the map.

pub mod app;
pub mod balance;
pub mod config;
pub mod dataplane;
pub mod demo;
pub mod model;
pub mod power;
pub mod redirect;
pub mod telemetry;
