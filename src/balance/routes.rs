//! Routes: every frontend's service with its selection table, affinity table and metric
//! handles. Built whole from the ServiceTable and NodeWeights and swapped in with arc-swap;
//! the dataplane reads it lock-free and never changes it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use prometheus::{IntCounter, IntGauge};
use rand::RngCore;

use super::affinity::AffinityTable;
use super::table::Table;
use crate::model::{Backend, Frontend, Service, ServiceTable};
use crate::power::weights::{NodeReport, NodeWeights};
use crate::telemetry::metrics::{Metrics, Refusal};

pub struct BackendEntry {
    pub backend: Backend,
    /// The weight this backend's node earned (before normalising into shares).
    pub weight: f64,
    /// Why it has that weight.
    pub reason: String,
    pub report: Option<NodeReport>,
    pub picks: IntCounter,
    pub connect_failures: IntCounter,
}

/// Metric handles of one service, resolved once per build so the data path never hashes labels.
pub struct ServiceCounters {
    pub connections: IntCounter,
    pub active: IntGauge,
    pub bytes_upstream: IntCounter,
    pub bytes_downstream: IntCounter,
    pub retries: IntCounter,
    pub refused_no_backend: IntCounter,
    pub refused_all_failed: IntCounter,
    pub udp_sessions: IntCounter,
    pub udp_sessions_active: IntGauge,
    pub udp_dropped: IntCounter,
    pub udp_datagrams_upstream: IntCounter,
    pub udp_datagrams_downstream: IntCounter,
}

impl ServiceCounters {
    fn new(m: &Metrics, service: &str) -> ServiceCounters {
        ServiceCounters {
            connections: m.connections.with_label_values(&[service]),
            active: m.connections_active.with_label_values(&[service]),
            bytes_upstream: m.bytes.with_label_values(&[service, "upstream"]),
            bytes_downstream: m.bytes.with_label_values(&[service, "downstream"]),
            retries: m.connect_retries.with_label_values(&[service]),
            refused_no_backend: m
                .refused
                .with_label_values(&[service, Refusal::NoBackend.label()]),
            refused_all_failed: m
                .refused
                .with_label_values(&[service, Refusal::AllBackendsFailed.label()]),
            udp_sessions: m.udp_sessions.with_label_values(&[service]),
            udp_sessions_active: m.udp_sessions_active.with_label_values(&[service]),
            udp_dropped: m.udp_sessions_dropped.with_label_values(&[service]),
            udp_datagrams_upstream: m.udp_datagrams.with_label_values(&[service, "upstream"]),
            udp_datagrams_downstream: m.udp_datagrams.with_label_values(&[service, "downstream"]),
        }
    }
}

pub struct ServiceEntry {
    pub service: Arc<Service>,
    pub backends: Box<[BackendEntry]>,
    pub table: Table,
    pub affinity: Option<Arc<AffinityTable>>,
    pub counters: ServiceCounters,
}

impl ServiceEntry {
    /// The backend for a new connection from `client`: its sticky backend if affinity holds
    /// one that still exists, else a weighted pick. `tried` backends are avoided.
    pub fn choose<R: RngCore + ?Sized>(
        &self,
        client: IpAddr,
        tried: &[usize],
        rng: &mut R,
    ) -> Option<usize> {
        if tried.is_empty() {
            if let Some(aff) = &self.affinity {
                if let Some(addr) = aff.lookup(client, Instant::now()) {
                    if let Some(i) = self.index_of(addr) {
                        return Some(i);
                    }
                }
            }
        }
        let pick = self.pick_untried(tried, rng)?;
        if let Some(aff) = &self.affinity {
            aff.record(client, self.backends[pick].backend.address, Instant::now());
        }
        Some(pick)
    }

    /// A weighted pick that avoids `tried`; after a few misses it takes the first untried
    /// backend with a share, then any untried one.
    fn pick_untried<R: RngCore + ?Sized>(&self, tried: &[usize], rng: &mut R) -> Option<usize> {
        for _ in 0..8 {
            let i = self.table.pick(rng)?;
            if !tried.contains(&i) {
                return Some(i);
            }
        }
        let untried = |i: &usize| !tried.contains(i);
        (0..self.backends.len())
            .filter(untried)
            .find(|&i| self.table.share(i) > 0.0)
            .or_else(|| (0..self.backends.len()).find(untried))
    }

    /// The index of a backend that still exists and still gets traffic.
    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| b.backend.address == addr)
            .filter(|&i| self.table.share(i) > 0.0)
    }

    /// After a failed connect the client's stickiness to that backend ends.
    pub fn forget_client(&self, client: IpAddr) {
        if let Some(aff) = &self.affinity {
            aff.forget(client);
        }
    }
}

/// Every frontend's entry; what the dataplane looks up per connection or flow.
#[derive(Default)]
pub struct Routes {
    pub by_frontend: HashMap<Frontend, Arc<ServiceEntry>>,
}

impl Routes {
    pub fn get(&self, frontend: &Frontend) -> Option<&Arc<ServiceEntry>> {
        self.by_frontend.get(frontend)
    }

    /// Builds the routes for `services` under `weights`. Affinity tables of services that
    /// still exist with the same affinity carry over from `previous`.
    pub fn build(
        services: &ServiceTable,
        weights: &NodeWeights,
        default_cost: u32,
        previous: &Routes,
        metrics: &Metrics,
    ) -> Routes {
        // Every current backend's gauge is set below; clearing first drops removed ones.
        metrics.backend_weight.reset();
        let by_frontend = services
            .services
            .iter()
            .map(|(frontend, service)| {
                let cost = service.cpu_per_connection.unwrap_or(default_cost);
                let backends = backend_entries(service, weights, cost, metrics);
                let raw: Vec<f64> = backends.iter().map(|b| b.weight).collect();
                let table = Table::new(&raw);
                for (i, b) in backends.iter().enumerate() {
                    metrics
                        .backend_weight
                        .with_label_values(&[
                            &service.name,
                            &b.backend.address.to_string(),
                            &b.backend.node,
                        ])
                        .set(table.share(i));
                }
                let affinity = service.affinity.map(|a| {
                    previous
                        .get(frontend)
                        .and_then(|old| old.affinity.clone())
                        .filter(|old| old.timeout() == a.timeout)
                        .unwrap_or_else(|| Arc::new(AffinityTable::new(a.timeout)))
                });
                let entry = ServiceEntry {
                    service: service.clone(),
                    backends: backends.into_boxed_slice(),
                    table,
                    affinity,
                    counters: ServiceCounters::new(metrics, &service.name),
                };
                (*frontend, Arc::new(entry))
            })
            .collect();
        Routes { by_frontend }
    }
}

/// Each backend's weight from its node's report. A node the power side does not know gets
/// the median weight of the service's known nodes: neither favoured nor starved.
fn backend_entries(
    service: &Service,
    weights: &NodeWeights,
    cost: u32,
    metrics: &Metrics,
) -> Vec<BackendEntry> {
    let reports = weights.for_cost(cost);
    let report_of = |b: &Backend| reports.and_then(|r| r.get(&b.node));
    let known: Vec<f64> = service
        .backends
        .iter()
        .filter_map(|b| report_of(b).and_then(|r| r.weight))
        .collect();
    let neutral = median(&known);
    service
        .backends
        .iter()
        .map(|b| {
            let report = report_of(b).cloned();
            let (weight, reason) = match (report.as_ref().and_then(|r| r.weight), neutral) {
                (Some(w), _) => (
                    w,
                    report
                        .as_ref()
                        .map(|r| r.reason.clone())
                        .unwrap_or_default(),
                ),
                (None, Some(m)) => {
                    let why = report
                        .as_ref()
                        .map_or("node has no power config", |r| r.reason.as_str());
                    (m, format!("{why}: median weight of the other nodes"))
                }
                (None, None) => (1.0, "no node has a usable prediction: uniform".into()),
            };
            let backend_label = b.address.to_string();
            BackendEntry {
                picks: metrics
                    .picks
                    .with_label_values(&[&service.name, &backend_label, &b.node]),
                connect_failures: metrics
                    .connect_failures
                    .with_label_values(&[&service.name, &backend_label]),
                backend: b.clone(),
                weight,
                reason,
                report,
            }
        })
        .collect()
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
}
