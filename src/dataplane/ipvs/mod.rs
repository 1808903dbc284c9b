//! The IPVS data plane: the Plan's services and power weights programmed into the kernel's
//! IPVS `wrr` over generic netlink, instead of relaying in userspace. `message` is the
//! netlink family, `client` the socket, `reconcile` the fewest operations from the
//! kernel's table to the Plan's, `host` the dummy interface and sysctls, `render` the
//! `ipvsadm -Ln` view. Every Plan, and every few seconds (pending removals, counters),
//! the kernel is brought to the Plan.

pub mod client;
pub mod host;
pub mod message;
pub mod metrics;
pub mod reconcile;
pub mod render;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use self::client::{IpvsClient, IpvsError};
use self::message::{IpvsProtocol, VirtualId};
use self::metrics::IpvsMetrics;
use self::reconcile::{Reconciler, Table};
use super::{Dataplane, DataplaneError, PickCounts};
use crate::balance::plan::Plan;
use crate::model::connections::{Counted, OpenConnections};
use crate::model::Frontend;
use crate::settings::{IpvsSettings, Settings};

/// How often the kernel is brought to the Plan between Plans (removals waiting for their
/// connections to end, counters for the weights view): every 2 s for up to `RESYNC_SERVICES`
/// virtual services, proportionally less often for more, since every sync reads each
/// service's destinations (10,000 services: every 40 s).
const RESYNC: Duration = Duration::from_secs(2);
const RESYNC_SERVICES: usize = 500;

/// The period between resyncs of a table of `services`.
fn resync_period(services: usize) -> Duration {
    let rounds = u32::try_from(services.div_ceil(RESYNC_SERVICES)).unwrap_or(u32::MAX);
    RESYNC.saturating_mul(rounds.max(1))
}

pub struct Ipvs {
    kernel: Arc<Mutex<Kernel>>,
    /// The kernel's table as last read, for the weights view's picks.
    seen: Arc<ArcSwap<Table>>,
    resync: CancellationToken,
    /// Where the destinations' counters of open connections are published.
    open: OpenConnections,
}

/// The socket and what the reconciliation remembers.
struct Kernel {
    client: IpvsClient,
    reconciler: Reconciler,
    desired: Table,
    settings: IpvsSettings,
    /// Addresses on wao-lb's interface: its VIPs, including those a crash left behind.
    bound: BTreeSet<IpAddr>,
    metrics: IpvsMetrics,
    /// The metric labels (service, backend, node) of the destinations of services that
    /// have series of their own: planned ones, and those the plan left that the kernel still
    /// holds (draining at weight 0), whose open counts matter most.
    labels: Labels,
    /// Every planned destination's count of open connections, set from the kernel's.
    open: OpenCounters,
}

impl Ipvs {
    /// Opens IPVS (an error naming the missing module when the kernel has none), sets its
    /// sysctls and wao-lb's interface, and starts the periodic resync.
    pub async fn start(
        settings: &Settings,
        registry: &prometheus::Registry,
        open: OpenConnections,
    ) -> Result<Ipvs, DataplaneError> {
        let client = IpvsClient::connect().map_err(ipvs_error)?;
        host::set_sysctls();
        host::ensure_interface()
            .await
            .map_err(|source| DataplaneError::Redirect {
                what: "the IPVS interface",
                source,
            })?;
        let bound = host::local().await.unwrap_or_default().ours;
        let kernel = Arc::new(Mutex::new(Kernel {
            client,
            reconciler: Reconciler::default(),
            desired: Table::new(),
            settings: settings.ipvs.clone(),
            bound,
            metrics: IpvsMetrics::new(registry),
            labels: HashMap::new(),
            open: HashMap::new(),
        }));
        let seen = Arc::new(ArcSwap::from_pointee(Table::new()));
        let resync = CancellationToken::new();
        tokio::spawn(resync_every(kernel.clone(), seen.clone(), resync.clone()));
        Ok(Ipvs {
            kernel,
            seen,
            resync,
            open,
        })
    }
}

fn ipvs_error(e: IpvsError) -> DataplaneError {
    DataplaneError::Ipvs(e.to_string())
}

fn lock(kernel: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    kernel.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kernel {
    /// Whether the service `id` is wao-lb's: in its Plan, on its interface, or in its
    /// configured CIDRs.
    fn owns(&self, id: &VirtualId) -> bool {
        let ip = id.addr.ip();
        self.desired.contains_key(id)
            || self.bound.contains(&ip)
            || self.settings.owned_cidrs.iter().any(|c| c.contains(ip))
    }

    /// Brings the kernel to `desired`; returns the table read before, and the first error
    /// after trying every operation.
    fn sync(&mut self, now: Instant) -> (Option<Table>, Result<(), IpvsError>) {
        let current = match self.client.table() {
            Ok(t) => t,
            Err(e) => {
                self.metrics.sync_errors.inc();
                return (None, Err(e));
            }
        };
        retain_in_use(&mut self.labels, &current, &self.desired);
        let counts = current
            .iter()
            .flat_map(|(id, e)| e.dests.values().map(move |d| (*id, d)))
            .filter_map(|(id, d)| {
                let labels = self.labels.get(&(id, d.addr))?.clone();
                Some((
                    labels,
                    (d.connections, u64::from(d.active) + u64::from(d.inactive)),
                ))
            })
            .collect();
        self.metrics.destinations(counts);
        for (id, e) in &current {
            for d in e.dests.values() {
                if let Some(open) = self.open.get(&(*id, d.addr)) {
                    open.store(
                        open_connections(id, d.active, d.inactive),
                        Ordering::Relaxed,
                    );
                }
            }
        }
        let grace = self.settings.grace_period;
        let mut reconciler = std::mem::take(&mut self.reconciler);
        let owned = |id: &VirtualId| self.owns(id);
        let ops = reconciler.ops(&current, &self.desired, &owned, now, grace);
        self.reconciler = reconciler;
        let mut first = Ok(());
        for op in &ops {
            tracing::debug!(?op, "ipvs");
            match self.client.run(op) {
                Ok(()) => self.metrics.sent(op),
                Err(e) => {
                    tracing::warn!(error = %e, "ipvs operation failed");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        if first.is_err() {
            self.metrics.sync_errors.inc();
        }
        (Some(current), first)
    }
}

/// Runs a sync off the runtime (netlink calls block).
async fn sync(kernel: Arc<Mutex<Kernel>>, seen: Arc<ArcSwap<Table>>) -> Result<(), IpvsError> {
    let result = tokio::task::spawn_blocking(move || lock(&kernel).sync(Instant::now())).await;
    match result {
        Ok((table, r)) => {
            if let Some(t) = table {
                seen.store(Arc::new(t));
            }
            r
        }
        Err(e) => Err(IpvsError::Answer {
            what: "sync".into(),
            why: e.to_string(),
        }),
    }
}

async fn resync_every(
    kernel: Arc<Mutex<Kernel>>,
    seen: Arc<ArcSwap<Table>>,
    stop: CancellationToken,
) {
    loop {
        let period = resync_period(seen.load().len());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(e) = sync(kernel.clone(), seen.clone()).await {
            tracing::warn!(error = %e, "ipvs resync failed");
        }
    }
}

type Labels = HashMap<(VirtualId, SocketAddr), [String; 3]>;

/// The metric labels of the destinations of the services with series of their own.
fn series_labels(plan: &Plan) -> Labels {
    plan.services
        .iter()
        .filter(|(_, p)| !plan.series_label(&p.service.key).is_empty())
        .flat_map(|(frontend, p)| {
            let id = reconcile::id_of(frontend);
            p.backends.iter().map(move |b| {
                let labels = [
                    p.service.key.to_string(),
                    b.backend.address.to_string(),
                    b.backend.node.to_string(),
                ];
                ((id, b.backend.address), labels)
            })
        })
        .collect()
}

/// Whether `table` has the destination `addr` of service `id`.
fn holds(table: &Table, (id, addr): &(VirtualId, SocketAddr)) -> bool {
    table.get(id).is_some_and(|e| e.dests.contains_key(addr))
}

/// The labels for a new plan: the plan's own (`planned`), and those of `old` whose
/// destination left the plan (`desired`), so that it keeps its series while it drains. A
/// destination still planned whose service no longer has series of its own loses them.
fn carried_labels(mut planned: Labels, old: Labels, desired: &Table) -> Labels {
    for (key, l) in old {
        if !holds(desired, &key) {
            planned.entry(key).or_insert(l);
        }
    }
    planned
}

/// Keeps the labels of destinations the kernel holds or the plan wants: a drained
/// destination's go once the kernel has deleted it.
fn retain_in_use(labels: &mut Labels, kernel: &Table, desired: &Table) {
    labels.retain(|key, _| holds(kernel, key) || holds(desired, key));
}

/// What counts as open on a destination: established TCP connections (IPVS keeps closed
/// ones as inactive through TIME_WAIT), and every UDP or SCTP entry.
fn open_connections(id: &VirtualId, active: u32, inactive: u32) -> i64 {
    match id.protocol {
        IpvsProtocol::Tcp => i64::from(active),
        _ => i64::from(active) + i64::from(inactive),
    }
}

/// Each planned destination's counter of open connections.
type OpenCounters = HashMap<(VirtualId, SocketAddr), Arc<AtomicI64>>;

/// A counter of open connections for every planned destination, and their `Counted` form.
fn open_counters(plan: &Plan) -> (OpenCounters, Vec<Counted>) {
    let mut by_dest = HashMap::new();
    let mut counted = Vec::new();
    for (frontend, p) in &plan.services {
        let id = reconcile::id_of(frontend);
        for b in &p.backends {
            let open = Arc::new(AtomicI64::new(0));
            by_dest.insert((id, b.backend.address), open.clone());
            counted.push(Counted {
                service: p.service.key.clone(),
                node: b.backend.node.clone(),
                cost: p.cost,
                open,
            });
        }
    }
    (by_dest, counted)
}

/// The VIPs of `table`.
fn vips(table: &Table) -> BTreeSet<IpAddr> {
    table.keys().map(|id| id.addr.ip()).collect()
}

impl Dataplane for Ipvs {
    async fn apply(&mut self, plan: &Arc<Plan>) -> Result<(), DataplaneError> {
        let desired = reconcile::desired(plan);
        let local = host::local()
            .await
            .map_err(|source| DataplaneError::Redirect {
                what: "reading the node's addresses",
                source,
            })?;
        let (add, remove) = host::binding(&vips(&desired), &local);
        host::rebind(&add, &[])
            .await
            .map_err(|source| DataplaneError::Redirect {
                what: "binding the VIPs",
                source,
            })?;
        {
            let mut k = lock(&self.kernel);
            // What was bound before (a crash's leftovers included) stays wao-lb's until
            // its services are gone.
            k.bound = local.ours.iter().chain(&add).copied().collect();
            let old = std::mem::take(&mut k.labels);
            k.labels = carried_labels(series_labels(plan), old, &desired);
            k.desired = desired;
            let (by_dest, counted) = open_counters(plan);
            k.open = by_dest;
            self.open.publish(counted);
        }
        sync(self.kernel.clone(), self.seen.clone())
            .await
            .map_err(ipvs_error)?;
        // The sync removed the services of the VIPs no longer planned: they leave too.
        match host::rebind(&[], &remove).await {
            Ok(()) => {
                let mut k = lock(&self.kernel);
                for ip in &remove {
                    k.bound.remove(ip);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot unbind VIPs no longer planned"),
        }
        Ok(())
    }

    fn reconfigure(&mut self, settings: &Settings) {
        lock(&self.kernel).settings = settings.ipvs.clone();
    }

    fn picks(&self) -> Option<Arc<dyn PickCounts>> {
        Some(Arc::new(KernelPicks(self.seen.clone())))
    }

    async fn stop(self, _grace: Duration) {
        self.resync.cancel();
        lock(&self.kernel).desired = Table::new();
        if let Err(e) = sync(self.kernel.clone(), self.seen.clone()).await {
            tracing::warn!(error = %e, "could not remove every IPVS service");
        }
        host::remove_interface().await;
    }
}

/// Connections the kernel scheduled to each destination, as last read.
struct KernelPicks(Arc<ArcSwap<Table>>);

impl PickCounts for KernelPicks {
    fn picks(&self, frontend: &Frontend, backend: SocketAddr) -> Option<u64> {
        self.0
            .load()
            .get(&reconcile::id_of(frontend))
            .and_then(|e| e.dests.get(&backend))
            .map(|d| d.connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_tcp_is_established_and_open_udp_is_every_entry() {
        let id = |protocol| VirtualId {
            protocol,
            addr: "10.0.0.1:80".parse().unwrap(),
        };
        assert_eq!(open_connections(&id(IpvsProtocol::Tcp), 3, 40), 3);
        assert_eq!(open_connections(&id(IpvsProtocol::Udp), 0, 7), 7);
        assert_eq!(open_connections(&id(IpvsProtocol::Sctp), 2, 1), 3);
    }

    #[test]
    fn a_draining_destination_keeps_its_labels_until_the_kernel_drops_it() {
        use reconcile::tests::{id, table};
        let web = |dests: &[u8]| {
            let dests = dests.iter().map(|b| (*b, 0, 0)).collect();
            table(&[(IpvsProtocol::Tcp, 1, 80, false, dests)])
        };
        let key = |b: u8| {
            (
                id(IpvsProtocol::Tcp, 1, 80),
                SocketAddr::from(([10, 1, 0, b], 8080)),
            )
        };
        let (planned, draining, gone) = (1, 2, 3);
        let mut labels: Labels = [planned, draining, gone]
            .into_iter()
            .map(|b| (key(b), [String::new(), b.to_string(), "n".into()]))
            .collect();
        // The plan wants `planned`, not yet in the kernel; `draining` is only in the kernel.
        retain_in_use(&mut labels, &web(&[draining]), &web(&[planned]));
        let mut kept: Vec<_> = labels.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, [key(planned), key(draining)]);
        // Deleted from the kernel: its labels go.
        retain_in_use(&mut labels, &web(&[]), &web(&[planned]));
        assert_eq!(labels.keys().copied().collect::<Vec<_>>(), [key(planned)]);
    }

    #[test]
    fn only_destinations_that_left_the_plan_carry_their_labels_over() {
        use reconcile::tests::{id, table};
        let key = |b: u8| {
            (
                id(IpvsProtocol::Tcp, 1, 80),
                SocketAddr::from(([10, 1, 0, b], 8080)),
            )
        };
        let label = |b: u8| (key(b), [String::new(), b.to_string(), "n".into()]);
        let old: Labels = [label(1), label(2)].into_iter().collect();
        // 1 is still planned but its service lost its series (none in `planned`); 2 left.
        let desired = table(&[(IpvsProtocol::Tcp, 1, 80, false, vec![(1, 1, 0)])]);
        let next = carried_labels(Labels::new(), old, &desired);
        assert_eq!(next.keys().copied().collect::<Vec<_>>(), [key(2)]);
    }

    #[test]
    fn large_tables_are_resynced_less_often() {
        assert_eq!(resync_period(0), RESYNC);
        assert_eq!(resync_period(500), RESYNC);
        assert_eq!(resync_period(501), 2 * RESYNC);
        assert_eq!(resync_period(10_000), Duration::from_secs(40));
    }
}
