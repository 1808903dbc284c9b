//! Power: per-node inputs → predicted watts → the added watts of one more connection → weights.
//! Never touches sockets; publishes `NodeWeights` that balance turns into selection tables.

pub mod clusters;
mod http;
pub mod inputs;
pub mod metrics;
pub mod planner;
pub mod policy;
pub mod predict;
pub mod provider;
pub mod remote;
pub mod sources;
pub mod updater;
pub mod weights;
