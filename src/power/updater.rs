//! The weight updater task: on its interval (and on every config change) it recomputes
//! `NodeWeights` for every per-connection cost in use and publishes them when they changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::weights::{compute, NodeWeights};
use crate::config::Config;

/// Weights for every per-connection cost the config's services use.
pub fn weights_for(config: &Config) -> NodeWeights {
    let mut costs: BTreeSet<u32> = config
        .services
        .services
        .values()
        .filter_map(|s| s.cpu_per_connection)
        .collect();
    costs.insert(config.power.cpu_per_connection);
    NodeWeights {
        by_cost: costs
            .into_iter()
            .map(|cost| (cost, compute(&config.nodes, cost, config.power.policy)))
            .collect(),
    }
}

pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    out: watch::Sender<Arc<NodeWeights>>,
    stop: CancellationToken,
) {
    loop {
        let current = config.borrow_and_update().clone();
        let fresh = weights_for(&current);
        out.send_if_modified(|w| {
            let changed = **w != fresh;
            if changed {
                *w = Arc::new(fresh);
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(current.power.interval) => {}
            r = config.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
