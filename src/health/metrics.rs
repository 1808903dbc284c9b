//! Health's metrics: each checked backend's state and its check results.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HealthMetrics {
    /// `wao_lb_backend_up{service,backend}`: 1 up or starting, 0 down.
    pub up: IntGaugeVec,
    /// `wao_lb_health_checks_total{service,backend,result}`.
    pub checks: IntCounterVec,
}

impl HealthMetrics {
    pub fn new(r: &Registry) -> HealthMetrics {
        let up = IntGaugeVec::new(
            Opts::new(
                "wao_lb_backend_up",
                "Whether a health-checked backend is up (1, also while starting) or down (0)",
            ),
            &["service", "backend"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let checks = IntCounterVec::new(
            Opts::new(
                "wao_lb_health_checks_total",
                "Active health checks, by result (success, failure, inconclusive)",
            ),
            &["service", "backend", "result"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(up.clone()));
        let _ = r.register(Box::new(checks.clone()));
        HealthMetrics { up, checks }
    }

    /// Drops the series of a backend no longer checked.
    pub fn forget(&self, service: &str, backend: &str) {
        let _ = self.up.remove_label_values(&[service, backend]);
        for result in ["success", "failure", "inconclusive"] {
            let _ = self.checks.remove_label_values(&[service, backend, result]);
        }
    }
}
