//! wao-lb: an energy-aware L4 (TCP/UDP) load balancer. See ARCHITECTURE.md for the map.
//! Data flows one way: discovery → power → balance → dataplane; telemetry reads.

pub mod app;
pub mod balance;
pub mod dataplane;
pub mod demo;
pub mod discovery;
pub mod health;
pub mod model;
pub mod power;
pub mod settings;
pub mod telemetry;
