//! Balance's metric: the share of new connections each backend gets under the current Plan.

use prometheus::{GaugeVec, Opts, Registry};

use super::plan::Plan;

pub struct BalanceMetrics {
    backend_weight: GaugeVec,
}

impl BalanceMetrics {
    pub fn new(r: &Registry) -> BalanceMetrics {
        let backend_weight = GaugeVec::new(
            Opts::new(
                "wao_lb_backend_weight",
                "Share of new connections a backend gets (0-1)",
            ),
            &["service", "backend", "node"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(backend_weight.clone()));
        BalanceMetrics { backend_weight }
    }

    /// Sets every backend's share; backends no longer planned disappear. Only services with
    /// series of their own have per-backend series.
    pub fn publish(&self, plan: &Plan) {
        self.backend_weight.reset();
        for planned in plan.services.values() {
            if !plan.series.contains(&planned.service.key) {
                continue;
            }
            for b in &planned.backends {
                self.backend_weight
                    .with_label_values(&[
                        &planned.service.key,
                        &b.backend.address.to_string(),
                        &b.backend.node,
                    ])
                    .set(b.share);
            }
        }
    }
}
