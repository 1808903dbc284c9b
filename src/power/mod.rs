//! Power: per-node inputs → predicted watts → the added watts of one more connection → weights.
//! Never touches sockets; publishes `NodeWeights` that balance turns into selection tables.

pub mod predict;
pub mod updater;
pub mod weights;
