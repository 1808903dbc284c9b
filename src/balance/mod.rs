//! Balance: immutable per-service selection tables, built off the data path from the
//! ServiceTable and NodeWeights and swapped in whole; the dataplane only reads them.

pub mod affinity;
pub mod routes;
pub mod table;
