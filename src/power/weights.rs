//! From per-node predictions to per-node weights: the policies (`wao`, `marginal`) and the
//! `NodeWeights` that balance reads. Pure functions; the updater calls them on its interval.

use std::collections::BTreeMap;

use crate::config::Policy;
use crate::model::NodeName;

/// What the power side knows about one node for one per-connection cost, and the weight it
/// earned. Shown as is by `/weights`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub cpu_percent: Option<f64>,
    pub inlet_celsius: Option<f64>,
    pub delta_p_pascal: Option<f64>,
    /// Age of the oldest input in use, in seconds.
    pub input_age_seconds: f64,
    /// Predicted watts now.
    pub watts: Option<f64>,
    /// Predicted extra watts of one more connection.
    pub delta_watts: Option<f64>,
    /// A weight set by the operator instead of a model.
    #[serde(skip)]
    pub fixed: Option<f64>,
    /// None: no usable prediction; balance gives the node a neutral weight.
    pub weight: Option<f64>,
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

/// Fills in every report's weight: fixed ones keep theirs, nodes with a ΔW share `policy`
/// (on its scale: the cheapest node has 1 under `marginal`, 100 under `wao`), the rest get
/// None (neutral).
pub fn apply(policy: Policy, reports: &mut BTreeMap<NodeName, NodeReport>) {
    let modelled: Vec<&mut NodeReport> = reports
        .values_mut()
        .filter_map(|r| {
            r.weight = r.fixed;
            (r.fixed.is_none() && r.delta_watts.is_some()).then_some(r)
        })
        .collect();
    let deltas: Vec<f64> = modelled
        .iter()
        .map(|r| r.delta_watts.unwrap_or(f64::NAN))
        .collect();
    let weights: Vec<f64> = match policy {
        Policy::Wao => {
            let whole: Vec<i64> = deltas.iter().map(|d| wao_delta_watts(*d)).collect();
            wao_scores(&whole)
                .into_iter()
                .map(|s| f64::from(s.unwrap_or(0)))
                .collect()
        }
        Policy::Marginal => marginal_weights(&deltas),
    };
    for (r, w) in modelled.into_iter().zip(weights) {
        r.weight = Some(w);
    }
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
    fn apply_keeps_fixed_and_leaves_unknown_neutral() {
        let mut reports: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
        let node = |d: Option<f64>, fixed: Option<f64>| NodeReport {
            delta_watts: d,
            fixed,
            ..NodeReport::default()
        };
        reports.insert("a".into(), node(Some(0.5), None));
        reports.insert("b".into(), node(Some(1.0), None));
        reports.insert("c".into(), node(None, Some(3.0)));
        reports.insert("d".into(), node(None, None));
        apply(Policy::Marginal, &mut reports);
        let w: Vec<Option<f64>> = reports.values().map(|r| r.weight).collect();
        assert_eq!(w, vec![Some(1.0), Some(0.5), Some(3.0), None]);
    }

    #[test]
    fn marginal_gives_nan_no_weight() {
        assert_eq!(marginal_weights(&[1.0, f64::NAN]), vec![1.0, 0.0]);
    }
}
