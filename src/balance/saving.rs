//! What the split saves: each service's predicted watts under its planned shares against
//! under uniform picks over its backends (what kube-proxy does), for the connections it has
//! open now, over the nodes whose power curve is known. Pure estimate (`Saving::of`), and
//! the gauges that compute it when scraped: `wao_lb_estimated_saving_watts` (all services)
//! and `wao_lb_service_estimated_saving_watts{service}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, Opts};

use super::plan::{Plan, PlannedService};
use crate::model::connections::OpenConnections;
use crate::model::NodeName;
use crate::power::weights::NodeReport;

/// Watts saved against uniform picks, per service and in all.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saving {
    /// None when no node of any service has a known curve.
    pub total_watts: Option<f64>,
    pub services: BTreeMap<String, f64>,
}

impl Saving {
    /// The estimate for every service of `plan` with `open` connections per service.
    pub fn of(plan: &Plan, open: &HashMap<Arc<str>, u64>) -> Saving {
        let mut out = Saving::default();
        for p in plan.services.values() {
            let count = open.get(&p.service.key).copied().unwrap_or(0);
            if let Some(w) = service_saving(p, count) {
                *out.services.entry(p.service.key.to_string()).or_default() += w;
                *out.total_watts.get_or_insert(0.0) += w;
            }
        }
        out
    }
}

/// What `planned`'s shares save against uniform picks for `open` connections: over each
/// node with a curve and a CPU reading, its watts with the service's load spread uniformly
/// less its watts with the load as planned (the reading taken to hold the planned load).
pub fn service_saving(planned: &PlannedService, open: u64) -> Option<f64> {
    let cores = open as f64 * f64::from(planned.cost) / 1000.0;
    let uniform = 1.0 / planned.backends.len().max(1) as f64;
    // Per node: (its report, planned share, uniform share).
    let mut nodes: BTreeMap<&NodeName, (&NodeReport, f64, f64)> = BTreeMap::new();
    for b in &planned.backends {
        let Some(report) = b.report.as_deref() else {
            continue;
        };
        let entry = nodes.entry(&b.backend.node).or_insert((report, 0.0, 0.0));
        entry.1 += b.share;
        entry.2 += uniform;
    }
    let mut saving = None;
    for (report, share, even) in nodes.values() {
        let (Some(curve), Some(cpu)) = (&report.curve, report.cpu_percent) else {
            continue;
        };
        if report.cores <= 0.0 {
            continue;
        }
        let load = |s: f64| 100.0 * cores * s / report.cores;
        let base = cpu - load(*share);
        let w = curve.at(base + load(*even)) - curve.at(base + load(*share));
        *saving.get_or_insert(0.0) += w;
    }
    saving
}

/// The saving gauges, computed from the Plan in force and the open connections at scrape.
pub struct SavingGauges {
    plan: Arc<ArcSwap<Plan>>,
    open: OpenConnections,
    total: Gauge,
    per_service: GaugeVec,
}

impl SavingGauges {
    pub fn register(
        registry: &prometheus::Registry,
        plan: Arc<ArcSwap<Plan>>,
        open: OpenConnections,
    ) {
        let total = Gauge::with_opts(Opts::new(
            "wao_lb_estimated_saving_watts",
            "Predicted watts the split saves against uniform picks, all services",
        ))
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let per_service = GaugeVec::new(
            Opts::new(
                "wao_lb_service_estimated_saving_watts",
                "Predicted watts a service's split saves against uniform picks",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let gauges = SavingGauges {
            plan,
            open,
            total,
            per_service,
        };
        if let Err(e) = registry.register(Box::new(gauges)) {
            tracing::warn!(error = %e, "saving gauges not registered");
        }
    }
}

impl Collector for SavingGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.total.desc();
        d.extend(self.per_service.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let plan = self.plan.load();
        let saving = Saving::of(&plan, &self.open.by_service());
        self.total.set(saving.total_watts.unwrap_or(0.0));
        self.per_service.reset();
        // Services without series of their own count into service="".
        for (service, watts) in &saving.services {
            self.per_service
                .with_label_values(&[plan.series_label(service)])
                .add(*watts);
        }
        let mut out = self.total.collect();
        out.extend(self.per_service.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::plan::PlannedBackend;
    use crate::model::{Backend, Frontend, Protocol, Service, ServiceKind};
    use crate::power::planner::Curve;

    /// Two identical nodes whose curve is concave from 20 % on: loading one saves.
    fn report(cpu: f64) -> Arc<NodeReport> {
        Arc::new(NodeReport {
            cpu_percent: Some(cpu),
            curve: Some(Arc::new(Curve {
                watts: [
                    100.0, 200.0, 250.0, 270.0, 285.0, 295.0, 305.0, 315.0, 325.0, 335.0, 345.0,
                ],
            })),
            cores: 10.0,
            ..NodeReport::default()
        })
    }

    fn planned(shares: &[(&str, f64, f64)]) -> PlannedService {
        let frontend = Frontend {
            protocol: Protocol::Tcp,
            address: "127.0.0.1:80".parse().unwrap(),
        };
        let backends: Vec<PlannedBackend> = shares
            .iter()
            .enumerate()
            .map(|(i, (node, share, cpu))| PlannedBackend {
                backend: Backend {
                    address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    node: (*node).into(),
                    pod: None,
                },
                weight: *share,
                share: *share,
                reason: "test".into(),
                report: Some(report(*cpu)),
                health: None,
                selected_by: "service web".into(),
            })
            .collect();
        let service = Service::plain(
            ServiceKind::Static,
            "web".into(),
            frontend,
            backends.iter().map(|b| b.backend.clone()).collect(),
        );
        PlannedService {
            service: Arc::new(service),
            cost: 1000,
            backends,
        }
    }

    #[test]
    fn concentrating_on_a_concave_curve_saves_what_uniform_would_cost() {
        // 4 connections of one core each; node a carries all of them (40 % over its 20 %
        // base, reading 60 %), node b none (reading 20 %). Uniform: both at 40 %.
        let p = planned(&[("a", 1.0, 60.0), ("b", 0.0, 20.0)]);
        let saving = service_saving(&p, 4).unwrap();
        let expected = 2.0 * 285.0 - (305.0 + 250.0);
        assert!((saving - expected).abs() < 1e-9, "{saving} vs {expected}");
        // Uniform itself saves nothing; no open connection saves nothing.
        let even = planned(&[("a", 0.5, 40.0), ("b", 0.5, 40.0)]);
        assert!(service_saving(&even, 4).unwrap().abs() < 1e-9);
        assert_eq!(service_saving(&p, 0), Some(0.0));
    }

    #[test]
    fn nodes_without_a_curve_are_left_out_and_totals_add_up() {
        let mut p = planned(&[("a", 1.0, 60.0), ("b", 0.0, 20.0)]);
        for b in &mut p.backends {
            b.report = Some(Arc::new(NodeReport::default()));
        }
        assert_eq!(service_saving(&p, 4), None);
        let mut plan = Plan::default();
        let web = planned(&[("a", 1.0, 60.0), ("b", 0.0, 20.0)]);
        let frontend = web.service.frontend;
        plan.services.insert(frontend, Arc::new(web));
        let open: HashMap<Arc<str>, u64> = [("web".into(), 4)].into_iter().collect();
        let s = Saving::of(&plan, &open);
        assert_eq!(s.total_watts, s.services.get("web").copied());
        assert!(s.total_watts.unwrap() > 10.0, "{s:?}");
    }
}
