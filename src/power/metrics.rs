//! The power side's metrics: per-node inputs and predictions in use, and every fallback.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use super::weights::NodeReport;
use crate::model::NodeName;

pub struct PowerMetrics {
    fallbacks: IntCounterVec,
    cpu_percent: GaugeVec,
    inlet_celsius: GaugeVec,
    delta_p_pascal: GaugeVec,
    watts: GaugeVec,
    delta_watts: GaugeVec,
    weight: GaugeVec,
    input_age_seconds: GaugeVec,
}

fn node_gauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["node"])
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl PowerMetrics {
    pub fn new(r: &Registry) -> PowerMetrics {
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "wao_lb_power_fallbacks_total",
                "Power inputs or predictions replaced by a fallback, by node, input and kind",
            ),
            &["node", "input", "kind"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(fallbacks.clone()));
        PowerMetrics {
            fallbacks,
            cpu_percent: node_gauge(
                r,
                "wao_lb_node_cpu_percent",
                "Node CPU utilisation in use (%)",
            ),
            inlet_celsius: node_gauge(
                r,
                "wao_lb_node_inlet_celsius",
                "Node inlet temperature in use (°C)",
            ),
            delta_p_pascal: node_gauge(
                r,
                "wao_lb_node_delta_p_pascal",
                "Node static pressure difference in use (Pa)",
            ),
            watts: node_gauge(
                r,
                "wao_lb_node_predicted_watts",
                "Predicted node power now (W)",
            ),
            delta_watts: node_gauge(
                r,
                "wao_lb_node_delta_watts",
                "Predicted extra power of one more connection (W)",
            ),
            weight: node_gauge(
                r,
                "wao_lb_node_weight",
                "Node weight from the power policy (NaN: neutral)",
            ),
            input_age_seconds: node_gauge(
                r,
                "wao_lb_node_input_age_seconds",
                "Age of the oldest power input in use",
            ),
        }
    }

    /// Counts one fallback of `node`'s `input` (a quantity or "model") of `kind`.
    pub fn fallback(&self, node: &str, input: &str, kind: &str) {
        self.fallbacks.with_label_values(&[node, input, kind]).inc();
    }

    /// Sets every node gauge from the reports; an unknown value reads NaN.
    pub fn publish(&self, reports: &std::collections::BTreeMap<NodeName, NodeReport>) {
        for (node, r) in reports {
            let set = |gauge: &GaugeVec, v: Option<f64>| {
                gauge.with_label_values(&[node]).set(v.unwrap_or(f64::NAN));
            };
            set(&self.cpu_percent, r.cpu_percent);
            set(&self.inlet_celsius, r.inlet_celsius);
            set(&self.delta_p_pascal, r.delta_p_pascal);
            set(&self.watts, r.watts);
            set(&self.delta_watts, r.delta_watts);
            set(&self.weight, r.weight);
            set(&self.input_age_seconds, Some(r.input_age_seconds));
        }
    }
}
