//! The IPVS data plane's metrics: the kernel's connection counts per destination (for the
//! services that have series of their own), the netlink operations sent, and failed
//! syncs.

use std::collections::BTreeSet;

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::reconcile::Op;

pub struct IpvsMetrics {
    /// Connections the kernel scheduled to a destination since it was added (a gauge:
    /// it starts again when the destination is re-created).
    pub scheduled: IntGaugeVec,
    /// Connections open now (IPVS's active and inactive counts).
    pub open: IntGaugeVec,
    pub operations: IntCounterVec,
    pub sync_errors: IntCounter,
    /// The label sets set last time, so that a destination that went loses its series.
    exported: BTreeSet<[String; 3]>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    let _ = r.register(Box::new(c.clone()));
    c
}

impl IpvsMetrics {
    pub fn new(r: &Registry) -> IpvsMetrics {
        let labels = ["service", "backend", "node"];
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
            register(r, g)
        };
        IpvsMetrics {
            scheduled: gauge(
                "wao_lb_ipvs_destination_connections",
                "Connections the kernel's IPVS scheduled to a destination since it was added",
                &labels,
            ),
            open: gauge(
                "wao_lb_ipvs_destination_open_connections",
                "Connections IPVS holds open to a destination (active and inactive)",
                &labels,
            ),
            operations: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "wao_lb_ipvs_operations_total",
                        "Netlink operations sent to IPVS, by kind",
                    ),
                    &["op"],
                )
                .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}")),
            ),
            sync_errors: register(
                r,
                IntCounter::new(
                    "wao_lb_ipvs_sync_errors_total",
                    "Syncs with IPVS that failed (the next one retries)",
                )
                .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}")),
            ),
            exported: BTreeSet::new(),
        }
    }

    pub fn sent(&self, op: &Op) {
        let kind = match op {
            Op::NewService(_) => "new_service",
            Op::SetService(_) => "set_service",
            Op::DelService(_) => "del_service",
            Op::NewDest(..) => "new_dest",
            Op::SetDest(..) => "set_dest",
            Op::DelDest(..) => "del_dest",
        };
        self.operations.with_label_values(&[kind]).inc();
    }

    /// Sets the counts of `now` (labels and the kernel's (scheduled, open)) and drops the
    /// series of destinations no longer there.
    pub fn destinations(&mut self, now: Vec<([String; 3], (u64, u64))>) {
        let mut seen = BTreeSet::new();
        for (labels, (scheduled, open)) in now {
            let l = [labels[0].as_str(), labels[1].as_str(), labels[2].as_str()];
            self.scheduled
                .with_label_values(&l)
                .set(i64::try_from(scheduled).unwrap_or(i64::MAX));
            self.open
                .with_label_values(&l)
                .set(i64::try_from(open).unwrap_or(i64::MAX));
            seen.insert(labels);
        }
        for gone in self.exported.difference(&seen) {
            let l = [gone[0].as_str(), gone[1].as_str(), gone[2].as_str()];
            let _ = self.scheduled.remove_label_values(&l);
            let _ = self.open.remove_label_values(&l);
        }
        self.exported = seen;
    }
}
