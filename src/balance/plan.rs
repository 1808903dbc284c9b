//! The Plan: every frontend's service with its backends, each with the weight its node
//! earned, its share of new connections, and why. Built whole from the desired services and
//! the power side's `NodeWeights`; pure, no I/O. Every data plane programs it, and
//! `/weights` shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::clusters;
use crate::health::{Health, HealthTable};
use crate::model::{Backend, Frontend, Service, ServiceTable};
use crate::power::clusters::ClusterScore;
use crate::power::weights::{NodeReport, NodeWeights};
use crate::settings::MetricsSettings;

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBackend {
    pub backend: Backend,
    /// The weight this backend's node earned (before normalising into shares).
    pub weight: f64,
    /// The fraction of the service's new connections it gets.
    pub share: f64,
    /// Why it has that weight (shared by the backends of a node where it can be).
    pub reason: Arc<str>,
    pub report: Option<Arc<NodeReport>>,
    /// What the service's health checks say; None when it has none.
    pub health: Option<Health>,
    /// What chose this backend: the service, a policy, its fallback, or another cluster;
    /// named in the connection log.
    pub selected_by: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedService {
    pub service: Arc<Service>,
    /// What one of its connections costs a node, in millicores.
    pub cost: u32,
    pub backends: Vec<PlannedBackend>,
}

/// What every frontend should do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub services: BTreeMap<Frontend, Arc<PlannedService>>,
    /// The service keys that get metric series of their own; every other service counts
    /// into the `service=""` series.
    pub series: BTreeSet<Arc<str>>,
}

impl Plan {
    /// The plan for `services` under `weights` and `health`; a service without its own
    /// `cpuPerConnection` is weighed at `default_cost` millicores.
    pub fn build(
        services: &ServiceTable,
        weights: &NodeWeights,
        health: &HealthTable,
        default_cost: u32,
        metrics: MetricsSettings,
    ) -> Plan {
        let series = series_keys(services, metrics);
        let mut reasons = Reasons::default();
        let local_score = ClusterScore::of(weights).usable();
        let services = services
            .services
            .iter()
            .map(|(frontend, service)| {
                let cost = service.cpu_per_connection.unwrap_or(default_cost);
                let mut weigh = |backends: &[Backend], selected_by: Arc<str>| {
                    checked(
                        planned_backends(backends, weights, cost, &mut reasons, selected_by),
                        &service.key,
                        health,
                    )
                };
                let local = local_group(service, &mut weigh);
                let backends = if service.clusters.is_empty() {
                    local
                } else {
                    clusters::split(local, local_score, &service.clusters, &weights.clusters)
                };
                let planned = PlannedService {
                    service: service.clone(),
                    cost,
                    backends,
                };
                (*frontend, Arc::new(planned))
            })
            .collect();
        Plan { services, series }
    }

    /// The metric label of a service: its key when it has series of its own, else "".
    pub fn series_label<'a>(&self, key: &'a str) -> &'a str {
        if self.series.contains(key) {
            key
        } else {
            ""
        }
    }
}

/// This cluster's backends of `service`, weighed by `weigh` with what selected them: a
/// redirect's while any of them is up, else the service's own (the fallback).
fn local_group(
    service: &Service,
    weigh: &mut impl FnMut(&[Backend], Arc<str>) -> Vec<PlannedBackend>,
) -> Vec<PlannedBackend> {
    let Some(redirect) = &service.redirect else {
        return weigh(&service.backends, service.origin().into());
    };
    let local = weigh(&redirect.backends, redirect.by.clone());
    let down = |b: &PlannedBackend| b.health.as_ref().is_some_and(Health::is_down);
    if !local.is_empty() && !local.iter().all(down) {
        return local;
    }
    let why = if local.is_empty() {
        "no ready local backend"
    } else {
        "every local backend is down"
    };
    let by = format!("{} (fallback of {}: {why})", redirect.fallback, redirect.by);
    weigh(&service.backends, by.into())
}

/// The reasons of backends whose node has no usable weight, made once per node and
/// shared by all its backends: a cluster has many more backends than nodes.
#[derive(Default)]
struct Reasons {
    /// By (cost, node): a node's report, and so its reason, is per cost.
    mean: BTreeMap<(u32, crate::model::NodeName), Arc<str>>,
    uniform: Option<Arc<str>>,
}

impl Reasons {
    fn mean(
        &mut self,
        cost: u32,
        node: &crate::model::NodeName,
        report: Option<&NodeReport>,
    ) -> Arc<str> {
        self.mean
            .entry((cost, node.clone()))
            .or_insert_with(|| {
                let why = report.map_or("node has no power config", |r| &*r.reason);
                format!("{why}: mean weight of the other nodes").into()
            })
            .clone()
    }

    fn uniform(&mut self) -> Arc<str> {
        self.uniform
            .get_or_insert_with(|| {
                "fewer than half the nodes have a usable prediction: uniform".into()
            })
            .clone()
    }
}

/// Each backend's weight from its node's report. A node without a usable weight gets the
/// mean weight of the service's nodes that have one, which is what an average healthy node
/// gets: the split among the healthy ones stays the policy's, and none of them is starved.
/// When fewer than half the backends have a weight, the policy knows too little and every
/// backend gets the same.
fn planned_backends(
    backends: &[Backend],
    weights: &NodeWeights,
    cost: u32,
    reasons: &mut Reasons,
    selected_by: Arc<str>,
) -> Vec<PlannedBackend> {
    let reports = weights.for_cost(cost);
    let report_of = |b: &Backend| reports.and_then(|r| r.get(&b.node));
    let known: Vec<f64> = backends
        .iter()
        .filter_map(|b| report_of(b).and_then(|r| r.weight))
        .filter(|w| w.is_finite())
        .collect();
    let neutral = neutral_weight(&known, backends.len());
    let weighed: Vec<(f64, Arc<str>)> = backends
        .iter()
        .map(|b| {
            let report = report_of(b);
            match (report.and_then(|r| r.weight), neutral) {
                (Some(w), _) => (w, report.map(|r| r.reason.clone()).unwrap_or_default()),
                (None, Some(m)) => (m, reasons.mean(cost, &b.node, report.map(|r| &**r))),
                (None, None) => (1.0, reasons.uniform()),
            }
        })
        .collect();
    let raw: Vec<f64> = weighed.iter().map(|(w, _)| *w).collect();
    backends
        .iter()
        .zip(weighed)
        .zip(shares(&raw))
        .map(|((b, (weight, reason)), share)| PlannedBackend {
            backend: b.clone(),
            weight,
            share,
            reason,
            report: report_of(b).cloned(),
            health: None,
            selected_by: selected_by.clone(),
        })
        .collect()
}

/// Applies the health checks: a down backend gets no share. When every backend is down the
/// checks cannot tell where to go, so the shares stay as they were (as Envoy's panic mode):
/// a service with backends is never black-holed.
fn checked(
    mut backends: Vec<PlannedBackend>,
    service: &std::sync::Arc<str>,
    health: &HealthTable,
) -> Vec<PlannedBackend> {
    for b in &mut backends {
        b.health = health.get(service, b.backend.address).cloned();
    }
    let down = |b: &PlannedBackend| b.health.as_ref().is_some_and(Health::is_down);
    if !backends.iter().any(down) {
        // Nothing to take out: the shares stand as planned.
        return backends;
    }
    if backends.iter().all(down) {
        for b in backends.iter_mut().filter(|b| down(b)) {
            b.reason = format!(
                "{}; every backend fails its health check: all kept",
                b.reason
            )
            .into();
        }
        return backends;
    }
    let mut raw: Vec<f64> = backends
        .iter()
        .map(|b| if down(b) { 0.0 } else { b.weight })
        .collect();
    if !raw.iter().any(|w| w.is_finite() && *w > 0.0) {
        // The policy gave the live backends nothing: they share equally, the down ones not.
        raw = backends
            .iter()
            .map(|b| f64::from(u8::from(!down(b))))
            .collect();
    }
    for (b, share) in backends.iter_mut().zip(shares(&raw)) {
        b.share = share;
        if let Some(Health::Down(why)) = &b.health {
            b.reason = format!("down: {why}").into();
        }
    }
    backends
}

/// The keys with series of their own: none when per-service series are off, else the
/// first `max_services` by key.
fn series_keys(services: &ServiceTable, metrics: MetricsSettings) -> BTreeSet<Arc<str>> {
    if !metrics.per_service {
        return BTreeSet::new();
    }
    let keys: BTreeSet<Arc<str>> = services.services.values().map(|s| s.key.clone()).collect();
    keys.into_iter().take(metrics.max_services).collect()
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

/// The weight for a backend whose node has none: the mean of the `known` weights, or None
/// (every backend uniform) when they cover fewer than half of the `backends`.
fn neutral_weight(known: &[f64], backends: usize) -> Option<f64> {
    if known.is_empty() || 2 * known.len() < backends {
        return None;
    }
    Some(known.iter().sum::<f64>() / known.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceKind;

    #[test]
    fn the_neutral_weight_is_the_mean_of_at_least_half() {
        assert_eq!(neutral_weight(&[], 3), None);
        assert_eq!(neutral_weight(&[1.0, 2.0, 6.0], 4), Some(3.0));
        assert_eq!(neutral_weight(&[1.0, 0.0], 4), Some(0.5));
        assert_eq!(neutral_weight(&[1.0], 5), None, "one of five: too little");
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

    /// The plan of one service with a backend on each node; `None` is a node whose
    /// prediction failed.
    fn plan_of(nodes: &[(&str, Option<f64>)]) -> PlannedService {
        plan_checked(nodes, &[])
    }

    /// As `plan_of`, with the health of the first backends.
    fn plan_checked(nodes: &[(&str, Option<f64>)], states: &[Health]) -> PlannedService {
        let backends = nodes
            .iter()
            .enumerate()
            .map(|(i, (n, _))| Backend {
                address: ([127, 0, 0, 1], 9000 + i as u16).into(),
                node: (*n).into(),
                pod: None,
            })
            .collect();
        let frontend = Frontend {
            protocol: crate::model::Protocol::Tcp,
            address: "127.0.0.1:80".parse().unwrap(),
        };
        let service = Service::plain(ServiceKind::Static, "web".into(), frontend, backends);
        let reports = nodes
            .iter()
            .map(|(n, w)| {
                let r = NodeReport {
                    weight: *w,
                    reason: if w.is_some() { "ok" } else { "model failed" }.into(),
                    ..NodeReport::default()
                };
                ((*n).into(), Arc::new(r))
            })
            .collect();
        let weights = NodeWeights {
            by_cost: BTreeMap::from([(100, reports)]),
            ..NodeWeights::default()
        };
        let mut table = ServiceTable::default();
        table
            .services
            .insert(service.frontend, Arc::new(service.clone()));
        let health = HealthTable {
            backends: service
                .backends
                .iter()
                .zip(states)
                .map(|(b, h)| ((service.key.clone(), b.address), h.clone()))
                .collect(),
        };
        let plan = Plan::build(&table, &weights, &health, 100, MetricsSettings::default());
        (*plan.services[&service.frontend]).clone()
    }

    fn shares_of(p: &PlannedService) -> Vec<f64> {
        p.backends.iter().map(|b| b.share).collect()
    }

    #[test]
    fn failed_nodes_get_the_mean_and_say_so() {
        let p = plan_of(&[
            ("a", Some(1.0)),
            ("b", Some(2.0)),
            ("c", Some(6.0)),
            ("x", None),
        ]);
        let w: Vec<f64> = p.backends.iter().map(|b| b.weight).collect();
        assert_eq!(w, vec![1.0, 2.0, 6.0, 3.0]);
        assert!(p.backends[3].reason.contains("mean weight"));
        assert!((shares_of(&p).iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p.backends[2].share - 6.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn failing_nodes_never_starve_the_healthy_ones() {
        // Four of five predictions fail: the policy knows too little, every node gets 1/5.
        let p = plan_of(&[
            ("ok", Some(1.0)),
            ("f1", None),
            ("f2", None),
            ("f3", None),
            ("f4", None),
        ]);
        assert_eq!(shares_of(&p), vec![0.2; 5]);
        // Two healthy nodes, the policy putting everything on one of them: the failed ones
        // get an average healthy node's weight, not the healthy one's whole share.
        let p = plan_of(&[
            ("a", Some(1.0)),
            ("b", Some(0.0)),
            ("f1", None),
            ("f2", None),
        ]);
        assert_eq!(shares_of(&p), vec![0.5, 0.0, 0.25, 0.25]);
    }

    #[test]
    fn down_backends_get_no_share_unless_all_are_down() {
        let down = || Health::Down("connect: refused".into());
        let p = plan_checked(
            &[("a", Some(1.0)), ("b", Some(3.0)), ("c", Some(4.0))],
            &[Health::Up, down(), Health::Starting],
        );
        assert_eq!(shares_of(&p), vec![0.2, 0.0, 0.8]);
        assert_eq!(&*p.backends[1].reason, "down: connect: refused");
        assert_eq!(p.backends[2].health, Some(Health::Starting));
        // The policy gives the live backend nothing: it still takes all, the down one none.
        let p = plan_checked(&[("a", Some(0.0)), ("b", Some(1.0))], &[Health::Up, down()]);
        assert_eq!(shares_of(&p), vec![1.0, 0.0]);
        // Every backend down: the checks cannot say where to go; the policy's split stays.
        let p = plan_checked(&[("a", Some(1.0)), ("b", Some(3.0))], &[down(), down()]);
        assert_eq!(shares_of(&p), vec![0.25, 0.75]);
        assert!(p.backends[0].reason.contains("all kept"));
        // Unchecked backends have no health.
        assert_eq!(plan_of(&[("a", Some(1.0))]).backends[0].health, None);
    }

    #[test]
    fn series_are_per_service_up_to_the_cap_or_none() {
        let mut table = ServiceTable::default();
        for (i, key) in ["c", "a", "b"].iter().enumerate() {
            let frontend = Frontend {
                protocol: crate::model::Protocol::Tcp,
                address: ([127, 0, 0, 1], 80 + i as u16).into(),
            };
            let mut s = (*plan_of(&[("n", Some(1.0))]).service).clone();
            s.key = (*key).into();
            s.frontend = frontend;
            table.services.insert(frontend, Arc::new(s));
        }
        let build = |per_service, max_services| {
            Plan::build(
                &table,
                &NodeWeights::default(),
                &HealthTable::default(),
                100,
                MetricsSettings {
                    per_service,
                    max_services,
                },
            )
        };
        let capped = build(true, 2);
        let keys: Vec<&str> = capped.series.iter().map(|k| &**k).collect();
        assert_eq!(keys, ["a", "b"], "the first two by key");
        assert_eq!(capped.series_label("c"), "");
        assert!(build(false, 100).series.is_empty());
        assert_eq!(build(true, 100).series.len(), 3);
    }

    /// A service whose first `local` backends (of `nodes`) are its redirect, the rest its
    /// own; the health of the redirect's backends as given; every node weighted 1.
    fn redirected(local: usize, nodes: usize, states: &[Health]) -> PlannedService {
        let base = plan_of(&vec![("n", Some(1.0)); nodes]);
        let mut service = (*base.service).clone();
        let own = service.backends.split_off(local);
        let redirect = std::mem::replace(&mut service.backends, own);
        service.redirect = Some(crate::model::Redirect {
            by: "LocalRedirectPolicy ns/dns".into(),
            backends: redirect,
            fallback: "service web".into(),
        });
        let health = HealthTable {
            backends: service
                .all_backends()
                .zip(states)
                .map(|(b, h)| ((service.key.clone(), b.address), h.clone()))
                .collect(),
        };
        let mut table = ServiceTable::default();
        table
            .services
            .insert(service.frontend, Arc::new(service.clone()));
        let weights = NodeWeights {
            by_cost: BTreeMap::from([(
                100,
                BTreeMap::from([(
                    "n".into(),
                    Arc::new(NodeReport {
                        weight: Some(1.0),
                        ..NodeReport::default()
                    }),
                )]),
            )]),
            ..NodeWeights::default()
        };
        let plan = Plan::build(&table, &weights, &health, 100, MetricsSettings::default());
        (*plan.services[&service.frontend]).clone()
    }

    fn ports(p: &PlannedService) -> Vec<u16> {
        p.backends
            .iter()
            .map(|b| b.backend.address.port())
            .collect()
    }

    #[test]
    fn a_redirect_takes_everything_while_a_local_backend_is_up() {
        let up = Health::Up;
        let p = redirected(2, 4, &[up.clone(), Health::Down("refused".into())]);
        assert_eq!(ports(&p), [9000, 9001], "only the local backends");
        assert_eq!(shares_of(&p), [1.0, 0.0], "the down one gets nothing");
        assert_eq!(&*p.backends[0].selected_by, "LocalRedirectPolicy ns/dns");
    }

    #[test]
    fn a_redirect_falls_back_when_no_local_backend_is_up_or_there() {
        let down = Health::Down("refused".into());
        let p = redirected(2, 4, &[down.clone(), down]);
        assert_eq!(ports(&p), [9002, 9003], "the service's own backends");
        assert_eq!(shares_of(&p), [0.5, 0.5]);
        assert_eq!(
            &*p.backends[0].selected_by,
            "service web (fallback of LocalRedirectPolicy ns/dns: every local backend is down)"
        );
        let p = redirected(0, 2, &[]);
        assert_eq!(ports(&p), [9000, 9001]);
        assert!(
            p.backends[0]
                .selected_by
                .ends_with("no ready local backend)"),
            "{}",
            p.backends[0].selected_by
        );
    }
}
