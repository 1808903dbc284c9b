//! From per-node predictions to per-node weights: the policies (`planner`, `marginal`,
//! `wao`) and the `NodeWeights` that balance reads. Pure functions; the updater calls them
//! on its interval.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::inputs::Reading;
use super::planner::{Curve, Mover, PlanNode, Traffic};
use super::policy::{limit_weights, Controller, Signal};
use crate::model::url::HttpUrl;
use crate::model::NodeName;
use crate::settings::{Limits, Policy};

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
    /// Utilisation (%) without wao-lb's own connections of this cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_percent: Option<f64>,
    /// Predicted watts at 0, 10, …, 100 % CPU with the inputs now.
    #[serde(skip)]
    pub curve: Option<Arc<Curve>>,
    #[serde(skip)]
    pub cores: f64,
    /// A weight set by the operator instead of a model.
    #[serde(skip)]
    pub fixed: Option<f64>,
    /// None: no usable prediction; balance gives the node a neutral weight.
    pub weight: Option<f64>,
    pub reason: Arc<str>,
}

/// Per-node weights for every per-connection CPU cost (millicores) some service uses. A
/// report is shared by every backend planned on its node.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NodeWeights {
    pub by_cost: BTreeMap<u32, BTreeMap<NodeName, Arc<NodeReport>>>,
    /// The other clusters' scores that services list, by score URL.
    pub clusters: BTreeMap<HttpUrl, RemoteScore>,
}

/// Another cluster's score as read now: its value, or why there is none.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteScore {
    pub score: Option<f64>,
    pub reason: Arc<str>,
}

impl RemoteScore {
    pub fn of(reading: Reading) -> RemoteScore {
        match reading {
            Reading::Fresh(v) => RemoteScore {
                score: Some(v),
                reason: "score read".into(),
            },
            Reading::Last { value, age, error } => RemoteScore {
                score: Some(value),
                reason: format!("last score, {}s old: {error}", age.as_secs()).into(),
            },
            Reading::Missing { reason } => RemoteScore {
                score: None,
                reason: reason.into(),
            },
        }
    }
}

impl NodeWeights {
    /// The nodes' reports for a service whose connections cost `cost` millicores.
    pub fn for_cost(&self, cost: u32) -> Option<&BTreeMap<NodeName, Arc<NodeReport>>> {
        self.by_cost.get(&cost)
    }
}

/// What a policy remembers from one step to the next.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    controller: Controller,
    /// The planner's nodes, in the order of its mover's shares.
    planned: Vec<NodeName>,
    mover: Mover,
}

impl PolicyState {
    /// The planner's shares for the nodes with a curve and a background load; a change
    /// of those nodes starts the mover again.
    fn plan(
        &mut self,
        reports: &BTreeMap<NodeName, NodeReport>,
        traffic: Traffic,
        limits: Limits,
    ) -> BTreeMap<NodeName, f64> {
        let (names, nodes): (Vec<NodeName>, Vec<PlanNode>) = reports
            .iter()
            .filter(|(_, r)| r.fixed.is_none())
            .filter_map(|(n, r)| {
                let node = PlanNode {
                    curve: (**r.curve.as_ref()?).clone(),
                    background: r.background_percent?,
                    cores: r.cores,
                };
                Some((n.clone(), node))
            })
            .unzip();
        if names != self.planned {
            self.planned = names.clone();
            self.mover = Mover::default();
        }
        if names.is_empty() {
            return BTreeMap::new();
        }
        let shares = self.mover.plan_and_step(&nodes, traffic, limits);
        names.into_iter().zip(shares).collect()
    }
}

/// Fills in every report's weight. Fixed weights are kept as given; nodes the policy can
/// weigh (a ΔW; for `planner`, a curve and a background load) get shares from it (summing
/// to 1) under the safety `limits`; the rest get None (neutral, decided by balance).
/// `traffic` is what wao-lb's connections of this cost add to the nodes.
pub fn apply(
    policy: Policy,
    reports: &mut BTreeMap<NodeName, NodeReport>,
    state: &mut PolicyState,
    limits: Limits,
    traffic: Traffic,
) {
    let modelled = |r: &NodeReport| r.fixed.is_none() && r.delta_watts.is_some();
    let cpu: BTreeMap<NodeName, f64> = reports
        .iter()
        .filter(|(_, r)| modelled(r))
        .map(|(n, r)| (n.clone(), r.cpu_percent.unwrap_or(0.0)))
        .collect();
    let shares = match policy {
        Policy::Planner => state.plan(reports, traffic, limits),
        Policy::Marginal => {
            let signals: BTreeMap<NodeName, Signal> = reports
                .iter()
                .filter(|(_, r)| modelled(r))
                .map(|(n, r)| {
                    let signal = Signal {
                        delta_watts: r.delta_watts.unwrap_or(f64::NAN),
                        cpu_percent: cpu[n],
                    };
                    (n.clone(), signal)
                })
                .collect();
            state.controller.step(&signals, limits)
        }
        Policy::Wao => {
            let names: Vec<NodeName> = cpu.keys().cloned().collect();
            let whole: Vec<i64> = names
                .iter()
                .map(|n| wao_delta_watts(reports[n].delta_watts.unwrap_or(f64::NAN)))
                .collect();
            let mut w: BTreeMap<NodeName, f64> = names
                .into_iter()
                .zip(wao_scores(&whole))
                .map(|(n, s)| (n, f64::from(s.unwrap_or(0))))
                .collect();
            limit_weights(&mut w, &cpu, limits);
            w
        }
    };
    for (name, r) in reports.iter_mut() {
        r.weight = r.fixed.or_else(|| shares.get(name).copied());
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

    fn report(d: Option<f64>, fixed: Option<f64>) -> NodeReport {
        NodeReport {
            cpu_percent: Some(30.0),
            delta_watts: d,
            fixed,
            ..NodeReport::default()
        }
    }

    #[test]
    fn sub_watt_differences_matter_to_marginal_not_to_wao() {
        let mut reports: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
        reports.insert("a".into(), report(Some(0.2), None));
        reports.insert("b".into(), report(Some(0.8), None));
        let mut wao = reports.clone();
        apply(
            Policy::Wao,
            &mut wao,
            &mut PolicyState::default(),
            Limits::default(),
            Traffic::exact(1.0),
        );
        assert_eq!(wao["a"].weight, wao["b"].weight, "WAO rounds both to 0 W");
        apply(
            Policy::Marginal,
            &mut reports,
            &mut PolicyState::default(),
            Limits::default(),
            Traffic::exact(1.0),
        );
        assert!(reports["a"].weight > reports["b"].weight);
    }

    #[test]
    fn apply_keeps_fixed_and_leaves_unknown_neutral() {
        let mut reports: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
        reports.insert("a".into(), report(Some(0.5), None));
        reports.insert("c".into(), report(None, Some(3.0)));
        reports.insert("d".into(), report(None, None));
        apply(
            Policy::Marginal,
            &mut reports,
            &mut PolicyState::default(),
            Limits::default(),
            Traffic::exact(1.0),
        );
        assert_eq!(reports["a"].weight, Some(1.0));
        assert_eq!(reports["c"].weight, Some(3.0));
        assert_eq!(reports["d"].weight, None);
    }
}
