//! `/score`: this cluster's power score as WAO's multi-cluster endpoint proxy defines it,
//! the sum of the predicted watts of its nodes that have a prediction now, from the power
//! side's `NodeWeights`. Another cluster's wao-lb (or WAO) reads it to weigh this cluster
//! (`weight_c = Σs − s_c`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::NodeName;
use crate::power::weights::NodeWeights;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterScore {
    /// Σ predicted watts of the nodes with a prediction.
    pub score: f64,
    /// Nodes counted in the score.
    pub nodes: usize,
    /// Known nodes without a usable prediction now (model down past `staleAfter`, no
    /// inputs): not counted, as WAO counts only ready nodes.
    pub without_prediction: usize,
}

impl ClusterScore {
    /// The score of the nodes in `weights`. A node appears once per per-connection cost;
    /// its predicted watts now are the same under each, so it is counted once.
    pub fn of(weights: &NodeWeights) -> ClusterScore {
        let mut watts: BTreeMap<&NodeName, Option<f64>> = BTreeMap::new();
        for (node, report) in weights.by_cost.values().flatten() {
            watts
                .entry(node)
                .or_insert(report.watts.filter(|w| w.is_finite()));
        }
        let predicted: Vec<f64> = watts.values().flatten().copied().collect();
        ClusterScore {
            score: predicted.iter().sum(),
            nodes: predicted.len(),
            without_prediction: watts.len() - predicted.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::power::weights::NodeReport;

    fn report(watts: Option<f64>) -> Arc<NodeReport> {
        Arc::new(NodeReport {
            watts,
            ..NodeReport::default()
        })
    }

    #[test]
    fn nodes_with_a_prediction_are_summed_once_across_costs() {
        let nodes = |a: f64| -> BTreeMap<NodeName, Arc<NodeReport>> {
            [
                (NodeName::from("a"), report(Some(a))),
                (NodeName::from("b"), report(Some(250.0))),
                (NodeName::from("c"), report(None)),
            ]
            .into_iter()
            .collect()
        };
        let weights = NodeWeights {
            by_cost: [(100, nodes(120.5)), (250, nodes(120.5))]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            ClusterScore::of(&weights),
            ClusterScore {
                score: 370.5,
                nodes: 2,
                without_prediction: 1
            }
        );
        assert_eq!(ClusterScore::of(&NodeWeights::default()).score, 0.0);
    }
}
