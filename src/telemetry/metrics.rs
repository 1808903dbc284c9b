//! Prometheus metrics: one registry, conventional names (`wao_lb_*`, `_total` counters,
//! `_bytes` units). Handles used per connection are resolved once per table build.

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub bytes: IntCounterVec,
    pub connect_failures: IntCounterVec,
    pub connect_retries: IntCounterVec,
    pub refused: IntCounterVec,
    pub picks: IntCounterVec,
    pub backend_weight: GaugeVec,
    pub udp_sessions: IntCounterVec,
    pub udp_sessions_active: IntGaugeVec,
    pub udp_sessions_dropped: IntCounterVec,
    pub udp_datagrams: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub splice_connections: IntCounter,
    pub listeners: IntGauge,
    pub power_fallbacks: IntCounterVec,
    pub node_cpu_percent: GaugeVec,
    pub node_inlet_celsius: GaugeVec,
    pub node_delta_p_pascal: GaugeVec,
    pub node_watts: GaugeVec,
    pub node_delta_watts: GaugeVec,
    pub node_weight: GaugeVec,
    pub node_input_age_seconds: GaugeVec,
}

/// Why a connection or flow was not served.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    NoBackend,
    AllBackendsFailed,
    UnknownDestination,
    SessionLimit,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoBackend => "no_backend",
            Refusal::AllBackendsFailed => "all_backends_failed",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::SessionLimit => "session_limit",
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn node_gauge(registry: &Registry, name: &str, help: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &["node"])
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let backend_weight = GaugeVec::new(
            Opts::new(
                "wao_lb_backend_weight",
                "Share of new connections a backend gets (0-1)",
            ),
            &["service", "backend", "node"],
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(backend_weight.clone()));
        let splice_connections = IntCounter::new(
            "wao_lb_splice_connections_total",
            "TCP connections that moved enough bytes to switch to splice(2)",
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(splice_connections.clone()));
        let listeners = IntGauge::new("wao_lb_listeners", "Frontend sockets bound")
            .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let _ = r.register(Box::new(listeners.clone()));
        Metrics {
            connections: counter(
                &r,
                "wao_lb_connections_total",
                "TCP connections accepted",
                &["service"],
            ),
            connections_active: gauge(
                &r,
                "wao_lb_connections_active",
                "TCP connections open now",
                &["service"],
            ),
            bytes: counter(
                &r,
                "wao_lb_relayed_bytes_total",
                "Bytes relayed; direction is upstream (client to backend) or downstream",
                &["service", "direction"],
            ),
            connect_failures: counter(
                &r,
                "wao_lb_backend_connect_failures_total",
                "Failed connects to a backend",
                &["service", "backend"],
            ),
            connect_retries: counter(
                &r,
                "wao_lb_connect_retries_total",
                "Connects retried on another backend after a failure",
                &["service"],
            ),
            refused: counter(
                &r,
                "wao_lb_refused_total",
                "Connections or UDP flows not served, by reason",
                &["service", "reason"],
            ),
            picks: counter(
                &r,
                "wao_lb_backend_picks_total",
                "Backends chosen for new connections or flows",
                &["service", "backend", "node"],
            ),
            backend_weight,
            udp_sessions: counter(
                &r,
                "wao_lb_udp_sessions_total",
                "UDP sessions created",
                &["service"],
            ),
            udp_sessions_active: gauge(
                &r,
                "wao_lb_udp_sessions_active",
                "UDP sessions open now",
                &["service"],
            ),
            udp_sessions_dropped: counter(
                &r,
                "wao_lb_udp_datagrams_dropped_total",
                "UDP datagrams of new flows dropped at the session limit or with no backend",
                &["service"],
            ),
            udp_datagrams: counter(
                &r,
                "wao_lb_udp_datagrams_total",
                "UDP datagrams relayed",
                &["service", "direction"],
            ),
            config_reloads: counter(
                &r,
                "wao_lb_config_reloads_total",
                "Config reloads, by result (success, failure)",
                &["result"],
            ),
            accept_errors: counter(
                &r,
                "wao_lb_accept_errors_total",
                "accept(2) errors such as EMFILE, by errno name",
                &["error"],
            ),
            splice_connections,
            listeners,
            power_fallbacks: counter(
                &r,
                "wao_lb_power_fallbacks_total",
                "Power inputs or predictions replaced by a fallback, by node, input and kind",
                &["node", "input", "kind"],
            ),
            node_cpu_percent: node_gauge(
                &r,
                "wao_lb_node_cpu_percent",
                "Node CPU utilisation in use (%)",
            ),
            node_inlet_celsius: node_gauge(
                &r,
                "wao_lb_node_inlet_celsius",
                "Node inlet temperature in use (°C)",
            ),
            node_delta_p_pascal: node_gauge(
                &r,
                "wao_lb_node_delta_p_pascal",
                "Node static pressure difference in use (Pa)",
            ),
            node_watts: node_gauge(
                &r,
                "wao_lb_node_predicted_watts",
                "Predicted node power now (W)",
            ),
            node_delta_watts: node_gauge(
                &r,
                "wao_lb_node_delta_watts",
                "Predicted extra power of one more connection (W)",
            ),
            node_weight: node_gauge(
                &r,
                "wao_lb_node_weight",
                "Node weight from the power policy (NaN: neutral)",
            ),
            node_input_age_seconds: node_gauge(
                &r,
                "wao_lb_node_input_age_seconds",
                "Age of the oldest power input in use",
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
