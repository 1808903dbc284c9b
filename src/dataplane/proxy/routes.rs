//! Routes: the proxy's form of the Plan. Per frontend: the service, its backends with their
//! metric handles, the alias table of their shares, an index by address, and the affinity
//! table. Built whole from each Plan and swapped in with arc-swap; connections read it
//! lock-free and never change it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus::{IntCounter, IntGauge};
use rand::RngCore;

use super::affinity::AffinityTable;
use super::ejection::Ejection;
use super::metrics::{ProxyMetrics, Refusal};
use super::table::Table;
use crate::balance::plan::{Plan, PlannedService};
use crate::model::connections::Counted;
use crate::model::{Frontend, NodeName, Protocol, Service};

pub struct BackendEntry {
    pub address: SocketAddr,
    pub node: NodeName,
    pub picks: Picks,
    /// Its open connections (or UDP sessions), carried over rebuilds like the picks.
    pub open: Arc<AtomicI64>,
    pub connect_failures: IntCounter,
    pub ejection: Arc<Ejection>,
    ejections: IntCounter,
}

/// A backend's picks: counted for the weights view always, and into its metric series
/// when it has one. The count carries over route rebuilds.
#[derive(Clone, Default)]
pub struct Picks {
    count: Arc<AtomicU64>,
    series: Option<IntCounter>,
}

impl Picks {
    pub fn inc(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = &self.series {
            s.inc();
        }
    }

    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl BackendEntry {
    /// A connect to this backend failed: it is ejected for a back-off (counted once per
    /// ejection).
    pub fn failed(&self) {
        self.connect_failures.inc();
        if self.ejection.failed() {
            self.ejections.inc();
        }
    }
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
    pub refused_source: IntCounter,
    pub udp_sessions: IntCounter,
    pub udp_sessions_active: IntGauge,
    pub udp_datagrams_dropped: IntCounter,
    pub udp_datagrams_upstream: IntCounter,
    pub udp_datagrams_downstream: IntCounter,
}

impl ServiceCounters {
    /// Handles for `service`; only the series of its protocol are exported (a TCP service
    /// has no datagram series, a UDP one no connection series), and source-range refusals
    /// only where it has `ranged` sources: the others count into handles no registry holds.
    fn new(m: &ProxyMetrics, service: &str, protocol: Protocol, ranged: bool) -> ServiceCounters {
        let (tcp, udp) = (protocol == Protocol::Tcp, protocol == Protocol::Udp);
        let (counter, gauge) = (counter_or_sink, gauge_or_sink);
        ServiceCounters {
            connections: counter(tcp, &m.connections, &[service]),
            active: gauge(tcp, &m.connections_active, &[service]),
            bytes_upstream: counter(tcp, &m.bytes, &[service, "upstream"]),
            bytes_downstream: counter(tcp, &m.bytes, &[service, "downstream"]),
            retries: counter(tcp, &m.connect_retries, &[service]),
            refused_no_backend: m
                .refused
                .with_label_values(&[service, Refusal::NoBackend.label()]),
            refused_all_failed: counter(
                tcp,
                &m.refused,
                &[service, Refusal::AllBackendsFailed.label()],
            ),
            refused_source: counter(ranged, &m.refused, &[service, Refusal::SourceRange.label()]),
            udp_sessions: counter(udp, &m.udp_sessions, &[service]),
            udp_sessions_active: gauge(udp, &m.udp_sessions_active, &[service]),
            udp_datagrams_dropped: counter(udp, &m.udp_datagrams_dropped, &[service]),
            udp_datagrams_upstream: counter(udp, &m.udp_datagrams, &[service, "upstream"]),
            udp_datagrams_downstream: counter(udp, &m.udp_datagrams, &[service, "downstream"]),
        }
    }
}

/// The series of `labels` in `vec` when it is `export`ed, else the shared sink.
fn counter_or_sink(export: bool, vec: &prometheus::IntCounterVec, labels: &[&str]) -> IntCounter {
    if export {
        vec.with_label_values(labels)
    } else {
        unexported_counter()
    }
}

fn gauge_or_sink(export: bool, vec: &prometheus::IntGaugeVec, labels: &[&str]) -> IntGauge {
    if export {
        vec.with_label_values(labels)
    } else {
        unexported_gauge()
    }
}

/// One counter no registry holds, for every count nobody reads (another protocol's series,
/// a backend without series of its own): shared, so none costs an allocation.
fn unexported_counter() -> IntCounter {
    static SINK: OnceLock<IntCounter> = OnceLock::new();
    SINK.get_or_init(|| {
        IntCounter::new("unexported", "unexported")
            .unwrap_or_else(|e| unreachable!("counter is well-formed: {e}"))
    })
    .clone()
}

fn unexported_gauge() -> IntGauge {
    static SINK: OnceLock<IntGauge> = OnceLock::new();
    SINK.get_or_init(|| {
        IntGauge::new("unexported", "unexported")
            .unwrap_or_else(|e| unreachable!("gauge is well-formed: {e}"))
    })
    .clone()
}

pub struct ServiceEntry {
    /// The plan it was built from: the service, its cost, and per backend (in the order of
    /// `backends`) its pod and what selected it, for the connection log.
    pub planned: Arc<PlannedService>,
    pub backends: Box<[BackendEntry]>,
    /// Backend index by address, for affinity hits.
    by_address: HashMap<SocketAddr, usize>,
    pub table: Table,
    pub affinity: Option<Arc<AffinityTable>>,
    pub counters: ServiceCounters,
}

impl ServiceEntry {
    /// The entry of `planned`. `label` is its metric label: its key when it has series of
    /// its own (then its backends have theirs too), else "" (counted with the others).
    fn new(
        planned: &Arc<PlannedService>,
        affinity: Option<Arc<AffinityTable>>,
        previous: Option<&ServiceEntry>,
        label: &str,
        m: &ProxyMetrics,
    ) -> ServiceEntry {
        let key = label;
        let per_backend = !label.is_empty();
        let backends: Box<[BackendEntry]> = planned
            .backends
            .iter()
            .map(|b| {
                let address = b.backend.address;
                let label = address.to_string();
                let old =
                    previous.and_then(|p| p.by_address.get(&address).map(|&i| &p.backends[i]));
                let ejection = old.map(|old| old.ejection.clone()).unwrap_or_default();
                let counter = |vec, labels: &[&str]| counter_or_sink(per_backend, vec, labels);
                // The pick count carries over rebuilds (the weights view reads it).
                let picks = Picks {
                    count: old.map(|o| o.picks.count.clone()).unwrap_or_default(),
                    series: per_backend
                        .then(|| m.picks.with_label_values(&[key, &label, &b.backend.node])),
                };
                BackendEntry {
                    address,
                    node: b.backend.node.clone(),
                    picks,
                    open: old.map(|o| o.open.clone()).unwrap_or_default(),
                    connect_failures: counter(&m.connect_failures, &[key, &label]),
                    ejection,
                    ejections: counter(&m.ejections, &[key, &label]),
                }
            })
            .collect();
        let shares = planned.backends.iter().map(|b| b.share).collect();
        ServiceEntry {
            planned: planned.clone(),
            by_address: backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.address, i))
                .collect(),
            backends,
            table: Table::from_shares(shares),
            affinity,
            counters: ServiceCounters::new(
                m,
                key,
                planned.service.frontend.protocol,
                !planned.service.source_ranges.is_empty(),
            ),
        }
    }

    /// The backend for a new connection from `client`: its sticky backend if affinity holds
    /// one that still exists, else a weighted pick. `tried` backends are avoided.
    pub fn choose<R: RngCore + ?Sized>(
        &self,
        client: IpAddr,
        tried: &[usize],
        rng: &mut R,
    ) -> Option<usize> {
        let Some(aff) = &self.affinity else {
            return self.pick_untried(tried, rng);
        };
        let now = Instant::now();
        if !tried.is_empty() {
            // A retry after a failed connect: a new pick becomes the client's backend.
            let pick = self.pick_untried(tried, rng)?;
            aff.record(client, self.backends[pick].address, now);
            return Some(pick);
        }
        // Decided under the affinity lock, so concurrent first connections agree.
        let mut chosen = None;
        aff.decide(client, now, |sticky| {
            let i = sticky
                .and_then(|a| self.index_of(a))
                .or_else(|| self.pick_untried(tried, rng))?;
            chosen = Some(i);
            Some(self.backends[i].address)
        });
        chosen
    }

    /// A weighted pick that avoids `tried` and ejected backends; after a few misses it takes
    /// the first such backend with a share, then any; only when every untried backend is
    /// ejected does it take an ejected one.
    fn pick_untried<R: RngCore + ?Sized>(&self, tried: &[usize], rng: &mut R) -> Option<usize> {
        let usable = |i: &usize| !tried.contains(i) && !self.backends[*i].ejection.is_ejected();
        for _ in 0..8 {
            let i = self.table.pick(rng)?;
            if usable(&i) {
                return Some(i);
            }
        }
        let untried = |i: &usize| !tried.contains(i);
        let all = 0..self.backends.len();
        let with_share = |i: &usize| self.table.share(*i) > 0.0;
        all.clone()
            .filter(usable)
            .find(with_share)
            .or_else(|| all.clone().find(usable))
            .or_else(|| all.clone().filter(untried).find(with_share))
            .or_else(|| all.clone().find(untried))
    }

    /// The index of a backend that still exists and still gets traffic.
    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_address
            .get(&addr)
            .copied()
            .filter(|&i| self.table.share(i) > 0.0)
    }

    pub fn service(&self) -> &Service {
        &self.planned.service
    }

    /// What one connection costs a node, in millicores.
    pub fn cost(&self) -> u32 {
        self.planned.cost
    }

    /// Whether the frontend serves `client` (its source ranges, if any, hold it). In
    /// transparent mode the nftables rules already dropped the others.
    pub fn allows(&self, client: IpAddr) -> bool {
        let ranges = &self.service().source_ranges;
        ranges.is_empty() || ranges.iter().any(|r| r.contains(client))
    }

    /// Whether `address` is one of this entry's backends.
    pub fn has_backend(&self, address: SocketAddr) -> bool {
        self.by_address.contains_key(&address)
    }

    /// After a failed connect the client's stickiness to that backend ends.
    pub fn forget_client(&self, client: IpAddr) {
        if let Some(aff) = &self.affinity {
            aff.forget(client);
        }
    }
}

/// Every frontend's entry; what the proxy looks up per connection or flow.
#[derive(Default)]
pub struct Routes {
    pub by_frontend: HashMap<Frontend, Arc<ServiceEntry>>,
    /// Different in every build (0: none yet): a UDP session resolved under this
    /// generation need not look its route up again until it changes.
    pub generation: u64,
}

impl Routes {
    pub fn get(&self, frontend: &Frontend) -> Option<&Arc<ServiceEntry>> {
        self.by_frontend.get(frontend)
    }

    /// The routes for `plan`. Affinity tables of services that still exist with the same
    /// affinity carry over from `previous`.
    pub fn build(plan: &Plan, previous: &Routes, metrics: &ProxyMetrics) -> Routes {
        let by_frontend = plan
            .services
            .iter()
            .map(|(frontend, planned)| {
                let affinity = planned.service.affinity.map(|a| {
                    previous
                        .get(frontend)
                        .and_then(|old| old.affinity.clone())
                        .filter(|old| old.timeout() == a.timeout)
                        .unwrap_or_else(|| Arc::new(AffinityTable::new(a.timeout)))
                });
                let entry = ServiceEntry::new(
                    planned,
                    affinity,
                    previous.get(frontend).map(|e| &**e),
                    plan.series_label(&planned.service.key),
                    metrics,
                );
                (*frontend, Arc::new(entry))
            })
            .collect();
        static BUILDS: AtomicU64 = AtomicU64::new(0);
        Routes {
            by_frontend,
            generation: BUILDS.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Every backend's counter of open connections, for `OpenConnections`.
    pub fn counted(&self) -> Vec<Counted> {
        self.by_frontend
            .values()
            .flat_map(|e| {
                e.backends.iter().map(|b| Counted {
                    service: e.service().key.clone(),
                    node: b.node.clone(),
                    cost: e.cost(),
                    open: b.open.clone(),
                })
            })
            .collect()
    }

    /// How many picks `backend` of `frontend` has had.
    pub fn picks(&self, frontend: &Frontend, backend: SocketAddr) -> Option<u64> {
        let entry = self.get(frontend)?;
        let i = *entry.by_address.get(&backend)?;
        Some(entry.backends[i].picks.get())
    }
}
