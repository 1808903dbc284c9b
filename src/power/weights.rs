//! From per-node predictions to per-node weights: the policies (`wao`, `marginal`) and the
//! `NodeWeights` that balance reads. Pure functions; the updater calls them on its interval.

use std::collections::BTreeMap;

use crate::config::{NodeConfig, NodeWeighting, Policy};
use crate::model::NodeName;

/// What the power side knows about one node for one per-connection cost, and the weight it
/// earned. Shown as is by `/weights`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub cpu_percent: f64,
    pub inlet_celsius: f64,
    pub delta_p_pascal: f64,
    /// Predicted watts now.
    pub watts: f64,
    /// Predicted extra watts of one more connection.
    pub delta_watts: f64,
    pub weight: f64,
    pub reason: String,
}

/// Per-node weights for every per-connection CPU cost (millicores) some service uses.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NodeWeights {
    pub by_cost: BTreeMap<u32, BTreeMap<NodeName, NodeReport>>,
}

impl NodeWeights {
    /// The nodes' reports for a service whose connections cost `cost` millicores.
    pub fn for_cost(&self, cost: u32) -> Option<&BTreeMap<NodeName, NodeReport>> {
        self.by_cost.get(&cost)
    }
}

/// Predicts every node's ΔW for one connection costing `cost_millicores` and applies `policy`.
/// Nodes with a fixed weight keep it; it is on the scale of the policy (the cheapest
/// modelled node has 1 under `marginal`, 100 under `wao`).
pub fn compute(
    nodes: &BTreeMap<NodeName, NodeConfig>,
    cost_millicores: u32,
    policy: Policy,
) -> BTreeMap<NodeName, NodeReport> {
    let mut modelled: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
    let mut fixed: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
    for (name, n) in nodes {
        let (model, weight) = match &n.weighting {
            NodeWeighting::Model(m) => (Some(m), 0.0),
            NodeWeighting::Fixed(w) => (None, *w),
        };
        let (watts, delta_watts, reason) = match model {
            Some(m) => {
                let step = f64::from(cost_millicores) / (n.cores * 1000.0) * 100.0;
                let before = m.predict(n.cpu_percent, n.inlet_celsius, n.delta_p_pascal);
                let after = m.predict(n.cpu_percent + step, n.inlet_celsius, n.delta_p_pascal);
                (
                    before,
                    after - before,
                    format!("static inputs, model {}", m.id),
                )
            }
            None => (f64::NAN, f64::NAN, "fixed weight from config".to_string()),
        };
        let report = NodeReport {
            cpu_percent: n.cpu_percent,
            inlet_celsius: n.inlet_celsius,
            delta_p_pascal: n.delta_p_pascal,
            watts,
            delta_watts,
            weight,
            reason,
        };
        if model.is_some() {
            modelled.insert(name.clone(), report);
        } else {
            fixed.insert(name.clone(), report);
        }
    }
    let deltas: Vec<f64> = modelled.values().map(|r| r.delta_watts).collect();
    let weights = match policy {
        Policy::Wao => {
            let whole: Vec<i64> = deltas.iter().map(|d| wao_delta_watts(*d)).collect();
            wao_scores(&whole)
                .into_iter()
                .map(|s| f64::from(s.unwrap_or(0)))
                .collect()
        }
        Policy::Marginal => marginal_weights(&deltas),
    };
    for (report, weight) in modelled.values_mut().zip(weights) {
        report.weight = weight;
    }
    modelled.extend(fixed);
    modelled
}

/// WAO's ΔW: truncated to whole watts, negatives become 0.
pub fn wao_delta_watts(delta: f64) -> i64 {
    if delta.is_finite() && delta > 0.0 {
        delta.trunc() as i64
    } else {
        0
    }
}

/// WAO v1.31's scores: drop negative ΔW (None), w' = ΔW + 1,
/// `score = round(100 · min(w') / w')` clamped to 0..=100.
pub fn wao_scores(delta_watts: &[i64]) -> Vec<Option<u32>> {
    let min = delta_watts.iter().filter(|d| **d >= 0).map(|d| d + 1).min();
    delta_watts
        .iter()
        .map(|d| {
            let min = min?;
            (*d >= 0).then(|| {
                let score = (100.0 * min as f64 / (*d + 1) as f64).round();
                score.clamp(0.0, 100.0) as u32
            })
        })
        .collect()
}

/// The smallest ΔW the marginal policy distinguishes; below it nodes count as equally cheap.
const MIN_DELTA_WATTS: f64 = 1e-6;

/// Weights inversely proportional to the marginal watts, scaled so the cheapest node has 1.
/// Unlike WAO it keeps fractions of a watt, so many-core nodes still differ.
pub fn marginal_weights(delta_watts: &[f64]) -> Vec<f64> {
    let clean: Vec<f64> = delta_watts
        .iter()
        .map(|d| {
            if d.is_finite() {
                d.max(MIN_DELTA_WATTS)
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let min = clean.iter().copied().fold(f64::INFINITY, f64::min);
    clean
        .iter()
        .map(|d| if d.is_finite() { min / d } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wao_test_vectors() {
        assert_eq!(
            wao_scores(&[200, 250, 300]),
            vec![Some(100), Some(80), Some(67)]
        );
        assert_eq!(wao_scores(&[200, 200_000_000]), vec![Some(100), Some(0)]);
        assert_eq!(
            wao_scores(&[5, 2, -123, 0, 5, 0]),
            vec![Some(17), Some(33), None, Some(100), Some(17), Some(100)]
        );
    }

    #[test]
    fn wao_truncates_to_whole_watts() {
        assert_eq!(wao_delta_watts(0.9), 0);
        assert_eq!(wao_delta_watts(2.7), 2);
        assert_eq!(wao_delta_watts(-3.0), 0);
        assert_eq!(wao_delta_watts(f64::NAN), 0);
    }

    #[test]
    fn marginal_keeps_sub_watt_differences() {
        let w = marginal_weights(&[0.2, 0.4, 0.8]);
        assert_eq!(w, vec![1.0, 0.5, 0.25]);
        // WAO sees all three as 0 W and scores them equally.
        let whole: Vec<i64> = [0.2, 0.4, 0.8]
            .iter()
            .map(|d| wao_delta_watts(*d))
            .collect();
        assert_eq!(wao_scores(&whole), vec![Some(100); 3]);
    }

    #[test]
    fn marginal_gives_nan_no_weight() {
        assert_eq!(marginal_weights(&[1.0, f64::NAN]), vec![1.0, 0.0]);
    }
}
