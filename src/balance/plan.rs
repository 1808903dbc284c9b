//! The Plan: every frontend's service with its backends, each with the weight its node
//! earned, its share of new connections, and why. Built whole from the desired services and
//! the power side's `NodeWeights`; pure, no I/O. Every data plane programs it, and
//! `/weights` shows it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{Backend, Frontend, Service, ServiceTable};
use crate::power::weights::{NodeReport, NodeWeights};

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBackend {
    pub backend: Backend,
    /// The weight this backend's node earned (before normalising into shares).
    pub weight: f64,
    /// The fraction of the service's new connections it gets.
    pub share: f64,
    /// Why it has that weight.
    pub reason: String,
    pub report: Option<NodeReport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    pub service: Arc<Service>,
    pub backends: Vec<PlannedBackend>,
}

/// What every frontend should do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub services: BTreeMap<Frontend, Arc<PlannedService>>,
}

impl Plan {
    /// The plan for `services` under `weights`; a service without its own
    /// `cpuPerConnection` is weighed at `default_cost` millicores.
    pub fn build(services: &ServiceTable, weights: &NodeWeights, default_cost: u32) -> Plan {
        let services = services
            .services
            .iter()
            .map(|(frontend, service)| {
                let cost = service.cpu_per_connection.unwrap_or(default_cost);
                let planned = PlannedService {
                    service: service.clone(),
                    backends: planned_backends(service, weights, cost),
                };
                (*frontend, Arc::new(planned))
            })
            .collect();
        Plan { services }
    }
}

/// Each backend's weight from its node's report. A node the power side does not know gets
/// the median weight of the service's known nodes: neither favoured nor starved.
fn planned_backends(service: &Service, weights: &NodeWeights, cost: u32) -> Vec<PlannedBackend> {
    let reports = weights.for_cost(cost);
    let report_of = |b: &Backend| reports.and_then(|r| r.get(&b.node));
    let known: Vec<f64> = service
        .backends
        .iter()
        .filter_map(|b| report_of(b).and_then(|r| r.weight))
        .collect();
    let neutral = median(&known);
    let weighed: Vec<(f64, String)> = service
        .backends
        .iter()
        .map(|b| {
            let report = report_of(b);
            match (report.and_then(|r| r.weight), neutral) {
                (Some(w), _) => (w, report.map(|r| r.reason.clone()).unwrap_or_default()),
                (None, Some(m)) => {
                    let why = report.map_or("node has no power config", |r| r.reason.as_str());
                    (m, format!("{why}: median weight of the other nodes"))
                }
                (None, None) => (1.0, "no node has a usable prediction: uniform".into()),
            }
        })
        .collect();
    let raw: Vec<f64> = weighed.iter().map(|(w, _)| *w).collect();
    service
        .backends
        .iter()
        .zip(weighed)
        .zip(shares(&raw))
        .map(|((b, (weight, reason)), share)| PlannedBackend {
            backend: b.clone(),
            weight,
            share,
            reason,
            report: report_of(b).cloned(),
        })
        .collect()
}

/// Weights → shares that sum to 1. Weights ≤ 0 or not finite exclude a backend; if none is
/// positive, every backend gets an equal share, so a service with backends is never
/// black-holed.
pub fn shares(weights: &[f64]) -> Vec<f64> {
    let n = weights.len();
    let clean: Vec<f64> = weights
        .iter()
        .map(|w| if w.is_finite() && *w > 0.0 { *w } else { 0.0 })
        .collect();
    let sum: f64 = clean.iter().sum();
    if n > 0 && (sum <= 0.0 || !sum.is_finite()) {
        return vec![1.0 / n as f64; n];
    }
    clean.iter().map(|w| w / sum).collect()
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_known_weights() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[1.0, 9.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), Some(2.5));
    }

    #[test]
    fn shares_exclude_bad_weights_and_never_black_hole() {
        assert_eq!(shares(&[1.0, 3.0]), vec![0.25, 0.75]);
        assert_eq!(
            shares(&[2.0, 0.0, -1.0, f64::NAN]),
            vec![1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(shares(&[0.0, f64::INFINITY]), vec![0.5, 0.5]);
        assert!(shares(&[]).is_empty());
    }

    #[test]
    fn unknown_nodes_get_the_median_and_say_so() {
        let service = Service {
            key: "web".into(),
            name: "web".into(),
            frontend: Frontend {
                protocol: crate::model::Protocol::Tcp,
                address: "127.0.0.1:80".parse().unwrap(),
            },
            backends: ["a", "b", "c", "x"]
                .iter()
                .enumerate()
                .map(|(i, n)| Backend {
                    address: ([127, 0, 0, 1], 9000 + i as u16).into(),
                    node: (*n).into(),
                })
                .collect(),
            affinity: None,
            cpu_per_connection: None,
            udp_responses: None,
        };
        let mut reports = BTreeMap::new();
        for (n, w) in [("a", 1.0), ("b", 2.0), ("c", 6.0)] {
            let r = NodeReport {
                weight: Some(w),
                reason: "ok".into(),
                ..NodeReport::default()
            };
            reports.insert(n.into(), r);
        }
        let weights = NodeWeights {
            by_cost: BTreeMap::from([(100, reports)]),
        };
        let mut table = ServiceTable::default();
        table
            .services
            .insert(service.frontend, Arc::new(service.clone()));
        let plan = Plan::build(&table, &weights, 100);
        let planned = &plan.services[&service.frontend];
        let w: Vec<f64> = planned.backends.iter().map(|b| b.weight).collect();
        assert_eq!(w, vec![1.0, 2.0, 6.0, 2.0]);
        assert!(planned.backends[3].reason.contains("median"));
        let total: f64 = planned.backends.iter().map(|b| b.share).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((planned.backends[2].share - 6.0 / 11.0).abs() < 1e-12);
    }
}
