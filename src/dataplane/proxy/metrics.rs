//! The proxy's metrics: connections, bytes, datagrams, picks, refusals, accept errors and
//! listeners. Handles used per connection are resolved once per routes build.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::budget::FdBudget;

pub struct ProxyMetrics {
    pub connections: IntCounterVec,
    pub connections_active: IntGaugeVec,
    pub bytes: IntCounterVec,
    pub connect_failures: IntCounterVec,
    pub ejections: IntCounterVec,
    pub connect_retries: IntCounterVec,
    pub refused: IntCounterVec,
    pub picks: IntCounterVec,
    pub udp_sessions: IntCounterVec,
    pub udp_sessions_active: IntGaugeVec,
    pub udp_datagrams_dropped: IntCounterVec,
    pub udp_datagrams: IntCounterVec,
    pub udp_evictions: IntCounter,
    pub accept_errors: IntCounterVec,
    pub splice_connections: IntCounter,
    pub listeners: IntGauge,
    fd_budget: IntGaugeVec,
}

/// Why a connection or flow was not served.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    NoBackend,
    AllBackendsFailed,
    UnknownDestination,
    /// The client is outside the frontend's source ranges.
    SourceRange,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoBackend => "no_backend",
            Refusal::AllBackendsFailed => "all_backends_failed",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::SourceRange => "source_range",
        }
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    register(r, c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    register(r, g)
}

impl ProxyMetrics {
    /// Publishes the descriptor budget's split.
    pub fn publish_budget(&self, b: &FdBudget) {
        for (part, n) in [("pool", b.pool), ("udp_sessions", b.udp_sessions)] {
            self.fd_budget
                .with_label_values(&[part])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn new(r: &Registry) -> ProxyMetrics {
        let splice_connections = IntCounter::new(
            "wao_lb_splice_connections_total",
            "TCP connections that moved enough bytes to switch to splice(2)",
        )
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        let listeners = IntGauge::new("wao_lb_listeners", "Frontend sockets bound")
            .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
        ProxyMetrics {
            connections: counter(
                r,
                "wao_lb_connections_total",
                "TCP connections accepted",
                &["service"],
            ),
            connections_active: gauge(
                r,
                "wao_lb_connections_active",
                "TCP connections open now",
                &["service"],
            ),
            bytes: counter(
                r,
                "wao_lb_relayed_bytes_total",
                "Bytes relayed; direction is upstream (client to backend) or downstream",
                &["service", "direction"],
            ),
            connect_failures: counter(
                r,
                "wao_lb_backend_connect_failures_total",
                "Failed connects to a backend (refused, timed out; UDP: ICMP unreachable)",
                &["service", "backend"],
            ),
            ejections: counter(
                r,
                "wao_lb_backend_ejections_total",
                "Times a backend was taken out of picks after a failed connect (passive ejection)",
                &["service", "backend"],
            ),
            connect_retries: counter(
                r,
                "wao_lb_connect_retries_total",
                "Connects retried on another backend after a failure",
                &["service"],
            ),
            refused: counter(
                r,
                "wao_lb_refused_total",
                "Connections or UDP flows not served, by reason",
                &["service", "reason"],
            ),
            picks: counter(
                r,
                "wao_lb_backend_picks_total",
                "Backends chosen for new connections or flows",
                &["service", "backend", "node"],
            ),
            udp_sessions: counter(
                r,
                "wao_lb_udp_sessions_total",
                "UDP sessions created",
                &["service"],
            ),
            udp_sessions_active: gauge(
                r,
                "wao_lb_udp_sessions_active",
                "UDP sessions open now",
                &["service"],
            ),
            udp_datagrams_dropped: counter(
                r,
                "wao_lb_udp_datagrams_dropped_total",
                "UDP datagrams of new flows dropped at the session limit or with no backend",
                &["service"],
            ),
            udp_datagrams: counter(
                r,
                "wao_lb_udp_datagrams_total",
                "UDP datagrams relayed",
                &["service", "direction"],
            ),
            accept_errors: counter(
                r,
                "wao_lb_accept_errors_total",
                "accept(2) errors such as EMFILE, by errno name",
                &["error"],
            ),
            splice_connections: register(r, splice_connections),
            listeners: register(r, listeners),
            udp_evictions: register(
                r,
                IntCounter::new(
                    "wao_lb_udp_sessions_evicted_total",
                    "Idle UDP sessions ended early to make room for a new flow",
                )
                .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}")),
            ),
            fd_budget: gauge(
                r,
                "wao_lb_fd_budget",
                "The descriptor budget: the pool connections and sessions share, and the most UDP sessions",
                &["part"],
            ),
        }
    }
}
