//! Kubernetes discovery's metrics, in kube-proxy's spirit: how long a sync takes, when the
//! last one happened, and how many objects and unserved ports it saw. No per-Service series.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct KubeMetrics {
    pub syncs: IntCounter,
    pub sync_duration: Histogram,
    pub last_sync: Gauge,
    pub objects: IntGaugeVec,
    pub unserved: IntGauge,
}

impl KubeMetrics {
    pub fn new(r: &Registry) -> KubeMetrics {
        let well_formed =
            |e: prometheus::Error| -> ! { unreachable!("metric is well-formed: {e}") };
        let syncs = IntCounter::new(
            "wao_lb_kube_syncs_total",
            "Translations of the Kubernetes objects into services",
        )
        .unwrap_or_else(|e| well_formed(e));
        let sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "wao_lb_kube_sync_duration_seconds",
                "Time to translate the Kubernetes objects into services",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .unwrap_or_else(|e| well_formed(e));
        let last_sync = Gauge::new(
            "wao_lb_kube_last_sync_timestamp_seconds",
            "Unix time of the last translation",
        )
        .unwrap_or_else(|e| well_formed(e));
        let objects = IntGaugeVec::new(
            Opts::new("wao_lb_kube_objects", "Kubernetes objects watched, by kind"),
            &["kind"],
        )
        .unwrap_or_else(|e| well_formed(e));
        let unserved = IntGauge::new(
            "wao_lb_kube_unserved_ports",
            "Service ports wao-lb cannot serve (e.g. SCTP), logged by name",
        )
        .unwrap_or_else(|e| well_formed(e));
        for m in [
            Box::new(syncs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sync_duration.clone()),
            Box::new(last_sync.clone()),
            Box::new(objects.clone()),
            Box::new(unserved.clone()),
        ] {
            let _ = r.register(m);
        }
        KubeMetrics {
            syncs,
            sync_duration,
            last_sync,
            objects,
            unserved,
        }
    }
}
