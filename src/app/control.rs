//! The control loop: owns the running settings, the desired state and the data plane. On
//! new weights it re-plans; on a re-read config file it applies what may change at run time
//! (services, nodes, proxy and power knobs) and refuses the rest; at stop it drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::balance::metrics::BalanceMetrics;
use crate::balance::plan::Plan;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::discovery::file::watch::Reread;
use crate::discovery::kube::settings::KubeSettings;
use crate::discovery::kube::translate::Translation;
use crate::health::checker::Checker;
use crate::health::HealthTable;
use crate::model::Desired;
use crate::power::updater::Demand;
use crate::power::weights::NodeWeights;
use crate::settings::Settings;

pub(super) struct Control<D: Dataplane> {
    pub settings: Settings,
    /// What the config file wants: its static services and its nodes.
    pub file: Arc<Desired>,
    /// Kubernetes discovery's latest translation (None before its first full sync).
    pub discovered: Option<watch::Receiver<Option<Arc<Translation>>>>,
    /// The file's services and the discovered ones: what runs.
    pub desired: Arc<Desired>,
    pub dataplane: D,
    /// The Plan in force, read by the admin API.
    pub plan: Arc<ArcSwap<Plan>>,
    pub weights: watch::Receiver<Arc<NodeWeights>>,
    /// The health checks: told the services on each reload, heard on each change of state.
    pub checker: Checker,
    pub health: watch::Receiver<Arc<HealthTable>>,
    pub demand: watch::Sender<Arc<Demand>>,
    /// The running Kubernetes discovery settings (they change only on restart).
    pub kubernetes: Option<KubeSettings>,
    pub balance_metrics: BalanceMetrics,
    pub reloads: IntCounterVec,
}

impl<D: Dataplane> Control<D> {
    pub async fn run(
        mut self,
        mut rereads: Option<mpsc::Receiver<Reread>>,
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
        background: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(reread) = next(&mut rereads) => self.reload(reread).await,
                Some(()) = discovery_changed(&mut self.discovered) => {
                    if self.rediscover().await {
                        ready.store(true, Ordering::Release);
                    }
                }
                r = self.weights.changed() => {
                    if r.is_err() {
                        break;
                    }
                    if let Err(e) = self.replan().await {
                        tracing::error!(error = %e, "new weights applied, but a frontend could not be set up");
                    }
                }
                Ok(()) = self.health.changed() => {
                    if let Err(e) = self.replan().await {
                        tracing::error!(error = %e, "new health applied, but a frontend could not be set up");
                    }
                }
            }
        }
        ready.store(false, Ordering::Release);
        self.dataplane.stop(self.settings.proxy.drain_timeout).await;
        background.cancel();
    }

    /// Builds the Plan from the desired services, the latest weights and health, publishes
    /// it and programs the data plane.
    pub async fn replan(&mut self) -> Result<(), DataplaneError> {
        let weights = self.weights.borrow_and_update().clone();
        let health = self.health.borrow_and_update().clone();
        let plan = Arc::new(Plan::build(
            &self.desired.services,
            &weights,
            &health,
            self.settings.power.cpu_per_connection,
            self.settings.metrics,
        ));
        self.balance_metrics.publish(&plan);
        self.plan.store(plan.clone());
        self.dataplane.apply(&plan).await
    }

    /// Applies a re-read config file. A bad file, or one that changes what only a restart
    /// may change, is logged and counted; the running config stays.
    async fn reload(&mut self, reread: Reread) {
        let new = match reread.loaded {
            Ok(new) => new,
            Err(errors) => {
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(%errors, "config reload rejected; keeping the running config");
                return;
            }
        };
        if new.settings == self.settings && new.desired == *self.file {
            return;
        }
        super::log_warnings(&new.warnings);
        if new.settings.redirect != self.settings.redirect
            || new.settings.tproxy != self.settings.tproxy
        {
            self.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(
                "config reload rejected: redirect and tproxy settings change only on restart"
            );
            return;
        }
        if new.settings.admin != self.settings.admin
            || new.settings.dataplane != self.settings.dataplane
            || new.settings.proxy.workers != self.settings.proxy.workers
        {
            tracing::warn!("admin, dataplane and proxy.workers changes take effect on restart");
        }
        if new.kubernetes != self.kubernetes {
            tracing::warn!("discovery changes take effect on restart");
        }
        self.settings = new.settings;
        self.file = Arc::new(new.desired);
        self.dataplane.reconfigure(&self.settings);
        self.merge_desired();
        match self.replan().await {
            Ok(()) => {
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!(
                    why = reread.why,
                    services = self.desired.services.services.len(),
                    "config reloaded"
                );
            }
            Err(e) => {
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "config reloaded, but the frontends could not all be set up");
            }
        }
    }
}

impl<D: Dataplane> Control<D> {
    /// Applies discovery's latest translation; true when it is programmed.
    async fn rediscover(&mut self) -> bool {
        self.merge_desired();
        match self.replan().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "discovered services applied, but a frontend could not be set up");
                false
            }
        }
    }

    /// `desired` = the file's services and nodes plus the discovered services (the file's
    /// win a frontend both claim); the health checks and the power side follow it.
    fn merge_desired(&mut self) {
        let mut desired = (*self.file).clone();
        let discovered = self
            .discovered
            .as_mut()
            .and_then(|rx| rx.borrow_and_update().clone());
        if let Some(t) = discovered {
            // NodeConfigs give nodes their power inputs; a `nodes:` entry in the file wins.
            for (node, spec) in &t.nodes {
                desired
                    .nodes
                    .entry(node.clone())
                    .or_insert_with(|| spec.clone());
            }
            for (frontend, service) in &t.table.services {
                if desired.services.services.contains_key(frontend) {
                    tracing::warn!(%frontend, service = %service.key,
                        "a Kubernetes Service claims a frontend of the config file; the file's service keeps it");
                    continue;
                }
                desired.services.services.insert(*frontend, service.clone());
            }
        }
        self.desired = Arc::new(desired);
        self.checker.update(&self.desired.services);
        // The updater answers with new weights, which re-plan; the caller plans now too so
        // that new services have routes before their listeners accept.
        let demand = Arc::new(Demand::new(&self.desired, &self.settings.power));
        self.demand.send_if_modified(|d| {
            let changed = **d != *demand;
            if changed {
                *d = demand;
            }
            changed
        });
    }
}

/// Completes when discovery has a new translation; never without discovery, or once it
/// stopped.
async fn discovery_changed(
    rx: &mut Option<watch::Receiver<Option<Arc<Translation>>>>,
) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

async fn next(rereads: &mut Option<mpsc::Receiver<Reread>>) -> Option<Reread> {
    match rereads {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
