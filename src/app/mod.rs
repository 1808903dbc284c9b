//! Wiring and lifecycle. `start` connects the parts in the one direction data flows:
//! discovery (the config file) → power (NodeWeights) and health → balance (the Plan) → dataplane, with
//! telemetry reading the Plan and the data plane's counters. `control` runs the loop that
//! re-plans on every change and handles reload and drain.

mod control;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::control::Control;
use crate::balance::metrics::BalanceMetrics;
use crate::balance::plan::Plan;
use crate::balance::saving::SavingGauges;
use crate::dataplane::proxy::socket;
use crate::dataplane::{ChosenDataplane, Dataplane, DataplaneError, PickCounts};
use crate::discovery::file::{watch as file_watch, FileConfig};
use crate::discovery::kube::metrics::KubeMetrics;
use crate::discovery::kube::watch as kube_watch;
use crate::health::checker::Checker;
use crate::health::metrics::HealthMetrics;
use crate::model::connections::OpenConnections;
use crate::model::published::Board;
use crate::power::metrics::PowerMetrics;
use crate::power::updater::{self, Demand};
use crate::power::weights::NodeWeights;
use crate::settings::{ConfigError, ConfigErrors};
use crate::telemetry::admin::{self, AdminState};
use crate::telemetry::health_node_ports;
use crate::telemetry::registry::render;
use crate::telemetry::weights_view::{rows, WeightRow};

/// How long start waits for the first weights before serving with uniform ones.
const FIRST_WEIGHTS: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("admin.listen {addr}: cannot bind: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("discovery.kubernetes: {0}")]
    Kubernetes(String),
}

/// A started balancer. Dropping it does not stop it; call `stop`.
pub struct Running {
    /// Where the admin API actually listens (useful with port 0).
    pub admin_addr: SocketAddr,
    /// Ask the running config to be re-read from its file.
    pub reload: mpsc::Sender<()>,
    registry: Registry,
    plan: Arc<ArcSwap<Plan>>,
    picks: Option<Arc<dyn PickCounts>>,
    stop: CancellationToken,
    control: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains open connections for up to the configured grace period, then
    /// stops everything else.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.control.await;
    }

    /// What `/metrics` serves.
    pub fn metrics_text(&self) -> String {
        render(&self.registry)
    }

    /// What `/weights` serves.
    pub fn weights(&self) -> Vec<WeightRow> {
        rows(&self.plan.load(), self.picks.as_deref())
    }
}

/// `wao_lb_config_reloads_total{result}`: reloads of the config file, applied or refused.
fn reload_counter(registry: &Registry) -> IntCounterVec {
    let c = IntCounterVec::new(
        Opts::new(
            "wao_lb_config_reloads_total",
            "Config reloads, by result (success, failure)",
        ),
        &["result"],
    )
    .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

/// `wao_lb_workers`: the threads the runtime serves on (`proxy.workers`, or the CPUs the
/// process may use), as the runtime itself counts them.
fn register_workers(registry: &Registry) {
    let g = IntGauge::new("wao_lb_workers", "Runtime threads serving connections")
        .unwrap_or_else(|e| unreachable!("metric is well-formed: {e}"));
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    g.set(i64::try_from(workers).unwrap_or(i64::MAX));
    let _ = registry.register(Box::new(g));
}

/// Logs a config's warnings, at start and on each reload that applies.
fn log_warnings(warnings: &[ConfigError]) {
    for w in warnings {
        tracing::warn!(path = %w.path, "config: {}", w.message);
    }
}

/// Starts the balancer on `config`. `path` is where the config came from; it is re-read on
/// reload and watched for changes.
pub async fn start(config: FileConfig, path: Option<PathBuf>) -> Result<Running, StartError> {
    if let Err(e) = socket::raise_nofile_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let FileConfig {
        settings,
        desired,
        kubernetes,
        warnings,
    } = config;
    log_warnings(&warnings);
    let registry = Registry::new();
    register_workers(&registry);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let background = CancellationToken::new();

    let admin_listener =
        socket::tcp_listener(settings.admin).map_err(|source| StartError::Admin {
            addr: settings.admin,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Admin {
            addr: settings.admin,
            source,
        })?;

    // Power: inputs and models → NodeWeights, on a watch channel.
    let (demand_tx, demand_rx) = watch::channel(Arc::new(Demand::new(&desired, &settings.power)));
    let (weights_tx, mut weights_rx) = watch::channel(Arc::new(NodeWeights::default()));
    let board = Board::default();
    let open = OpenConnections::default();
    tokio::spawn(updater::run(
        demand_rx,
        weights_tx,
        Arc::new(PowerMetrics::new(&registry)),
        board.clone(),
        open.clone(),
        background.clone(),
    ));
    // Start with real weights when the inputs answer quickly; uniform otherwise.
    let _ = tokio::time::timeout(FIRST_WEIGHTS, weights_rx.changed()).await;

    let (mut checker, health) = Checker::new(HealthMetrics::new(&registry));
    checker.update(&desired.services);

    // Kubernetes: Services and EndpointSlices → a translation on a watch channel; nothing
    // from it is programmed, and /readyz stays red, until every store has synced once.
    let kube_settings = kubernetes.clone();
    let discovered = match kubernetes {
        Some(k) => {
            let client = kube_watch::client(&k)
                .await
                .map_err(StartError::Kubernetes)?;
            let (tx, rx) = watch::channel(None);
            let metrics = KubeMetrics::new(&registry);
            tokio::spawn(kube_watch::run(
                client,
                k,
                metrics,
                board.clone(),
                tx,
                background.clone(),
            ));
            tokio::spawn(health_node_ports::run(rx.clone(), background.clone()));
            Some(rx)
        }
        None => None,
    };

    let dataplane = match ChosenDataplane::start(&settings, &registry, open.clone()).await {
        Ok(d) => d,
        Err(e) => {
            background.cancel();
            return Err(e.into());
        }
    };
    let picks = dataplane.picks();
    let plan = Arc::new(ArcSwap::from_pointee(Plan::default()));
    SavingGauges::register(&registry, plan.clone(), open.clone());
    let waits_for_discovery = discovered.is_some();
    let desired = Arc::new(desired);
    let mut control = Control {
        settings,
        file: desired.clone(),
        discovered,
        desired,
        dataplane,
        plan: plan.clone(),
        weights: weights_rx.clone(),
        checker,
        health,
        demand: demand_tx,
        kubernetes: kube_settings,
        balance_metrics: BalanceMetrics::new(&registry),
        reloads: reload_counter(&registry),
    };
    if let Err(e) = control.replan().await {
        control.dataplane.stop(Duration::ZERO).await;
        background.cancel();
        return Err(e.into());
    }
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            plan: plan.clone(),
            picks: picks.clone(),
            registry: registry.clone(),
            ready: ready.clone(),
            open: open.clone(),
            weights: weights_rx,
        }),
        background.clone(),
    ));
    if !waits_for_discovery {
        ready.store(true, Ordering::Release);
    }
    tracing::info!(%admin_addr, services = control.desired.services.services.len(), "wao-lb started");

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let rereads = path.map(|p| file_watch::spawn(p, reload_rx, background.clone()));
    let control = tokio::spawn(control.run(rereads, stop.clone(), ready, background));
    Ok(Running {
        admin_addr,
        reload: reload_tx,
        registry,
        plan,
        picks,
        stop,
        control,
    })
}

/// Runs the balancer on the config file at `path` until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(path: PathBuf) -> Result<(), StartError> {
    let config = FileConfig::load(&path)?;
    let running = start(config, Some(path)).await?;
    let mut term = signal(tokio::signal::unix::SignalKind::terminate());
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = recv(&mut term) => break,
            _ = recv(&mut hup) => {
                let _ = running.reload.send(()).await;
            }
        }
    }
    tracing::info!("stopping: draining open connections");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .map_err(|e| tracing::warn!(error = %e, "cannot install signal handler"))
        .ok()
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
