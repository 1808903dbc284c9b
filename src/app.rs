//! Wiring and lifecycle: start every part, reload the config (SIGHUP or a change to the
//! file), keep unchanged listeners across reloads, and stop by draining open connections.
//!
//! One control loop owns the running config and the listeners. It feeds the power updater
//! the config, takes NodeWeights back, builds the routes and swaps them in, so data flows one
//! way: config → power → balance → dataplane, with telemetry reading all of them.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::routes::Routes;
use crate::config::{Config, ConfigErrors};
use crate::dataplane::proxy::{socket, tcp, udp, ProxyContext};
use crate::model::{Frontend, Protocol};
use crate::power::updater;
use crate::power::weights::NodeWeights;
use crate::telemetry::admin::{self, AdminState};
use crate::telemetry::metrics::Metrics;

/// How long start waits for the first weights before serving with uniform ones.
const FIRST_WEIGHTS: Duration = Duration::from_secs(3);

/// How often the config file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("admin.listen {addr}: cannot bind: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{frontend}: cannot bind: {source}")]
    Listener {
        frontend: Frontend,
        source: std::io::Error,
    },
}

/// A started balancer. Dropping it does not stop it; call `stop`.
pub struct Running {
    /// Where the admin API actually listens (useful with port 0).
    pub admin_addr: SocketAddr,
    /// Ask the running config to be re-read from its file.
    pub reload: mpsc::Sender<()>,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<ArcSwap<Routes>>,
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
}

/// Starts the balancer on `config`. `path` is where the config came from; it is re-read on
/// reload and watched for changes.
pub async fn start(config: Config, path: Option<PathBuf>) -> Result<Running, StartError> {
    if let Err(e) = socket::raise_nofile_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(ArcSwap::from_pointee(Routes::default()));
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let ctx = Arc::new(ProxyContext {
        routes: routes.clone(),
        tcp: ArcSwap::from_pointee(config.proxy),
        udp: ArcSwap::from_pointee(config.udp),
        metrics: metrics.clone(),
        tracker: TaskTracker::new(),
    });

    let admin_listener =
        socket::tcp_listener(config.admin).map_err(|source| StartError::Admin {
            addr: config.admin,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Admin {
            addr: config.admin,
            source,
        })?;

    let config = Arc::new(config);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (weights_tx, mut weights_rx) = watch::channel(Arc::new(NodeWeights::default()));
    let background = CancellationToken::new();
    tokio::spawn(updater::run(
        config_rx,
        weights_tx,
        metrics.clone(),
        background.clone(),
    ));
    // Start with real weights when the inputs answer quickly; uniform otherwise.
    let _ = tokio::time::timeout(FIRST_WEIGHTS, weights_rx.changed()).await;

    let mut control = Control {
        config,
        path,
        listeners: BTreeMap::new(),
        ctx,
        weights: weights_rx,
        config_tx,
        file_fingerprint: None,
    };
    control.file_fingerprint = control.path.as_deref().and_then(fingerprint);
    control.rebuild_routes();
    if let Err(e) = control.reconcile_listeners() {
        control.stop_listeners();
        background.cancel();
        return Err(e);
    }
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            routes: routes.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
        }),
        background.clone(),
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(%admin_addr, services = control.config.services.services.len(), "wao-lb started");

    let (reload_tx, reload_rx) = mpsc::channel(4);
    let control = tokio::spawn(control.run(reload_rx, stop.clone(), ready, background));
    Ok(Running {
        admin_addr,
        reload: reload_tx,
        metrics,
        routes,
        stop,
        control,
    })
}

/// Runs the balancer on the config file at `path` until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(path: PathBuf) -> Result<(), StartError> {
    let config = Config::load(&path)?;
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

struct Control {
    config: Arc<Config>,
    path: Option<PathBuf>,
    listeners: BTreeMap<Frontend, CancellationToken>,
    ctx: Arc<ProxyContext>,
    weights: watch::Receiver<Arc<NodeWeights>>,
    config_tx: watch::Sender<Arc<Config>>,
    file_fingerprint: Option<u64>,
}

impl Control {
    async fn run(
        mut self,
        mut reload: mpsc::Receiver<()>,
        stop: CancellationToken,
        ready: Arc<AtomicBool>,
        background: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(FILE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(()) = reload.recv() => self.reload("signal"),
                _ = poll.tick() => {
                    let now = self.path.as_deref().and_then(fingerprint);
                    if now.is_some() && now != self.file_fingerprint {
                        self.file_fingerprint = now;
                        self.reload("file changed");
                    }
                }
                r = self.weights.changed() => {
                    if r.is_err() {
                        break;
                    }
                    self.rebuild_routes();
                }
            }
        }
        ready.store(false, Ordering::Release);
        self.stop_listeners();
        self.ctx.tracker.close();
        let grace = self.config.proxy.drain_timeout;
        if tokio::time::timeout(grace, self.ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.ctx.tracker.len(),
                "drain period over; closing remaining connections"
            );
        }
        background.cancel();
    }

    /// Re-reads the config file. A bad file is logged and counted; the running config stays.
    fn reload(&mut self, why: &str) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let reloads = self.ctx.metrics.config_reloads.clone();
        match Config::load(&path) {
            Err(errors) => {
                reloads.with_label_values(&["failure"]).inc();
                tracing::error!(path = %path.display(), %errors, "config reload rejected; keeping the running config");
            }
            Ok(new) => {
                if new == *self.config {
                    return;
                }
                if new.admin != self.config.admin
                    || new.redirect != self.config.redirect
                    || new.dataplane != self.config.dataplane
                {
                    tracing::warn!("admin, redirect and dataplane changes take effect on restart");
                }
                self.config = Arc::new(new);
                self.ctx.tcp.store(Arc::new(self.config.proxy));
                self.ctx.udp.store(Arc::new(self.config.udp));
                // The updater answers with new weights, which rebuild the routes; build now
                // too so that new services have routes before their listeners accept.
                self.config_tx.send_replace(self.config.clone());
                self.rebuild_routes();
                match self.reconcile_listeners() {
                    Ok(()) => {
                        reloads.with_label_values(&["success"]).inc();
                        tracing::info!(
                            why,
                            services = self.config.services.services.len(),
                            "config reloaded"
                        );
                    }
                    Err(e) => {
                        reloads.with_label_values(&["failure"]).inc();
                        tracing::error!(error = %e, "config reloaded, but a listener could not be bound");
                    }
                }
            }
        }
    }

    fn rebuild_routes(&mut self) {
        let weights = self.weights.borrow_and_update().clone();
        let previous = self.ctx.routes.load();
        let routes = Routes::build(
            &self.config.services,
            &weights,
            self.config.power.cpu_per_connection,
            &previous,
            &self.ctx.metrics,
        );
        self.ctx.routes.store(Arc::new(routes));
    }

    /// Binds listeners for new frontends and stops those of removed ones; unchanged ones are
    /// kept, so their connections are untouched. Returns the first bind error, after
    /// binding everything else it could.
    fn reconcile_listeners(&mut self) -> Result<(), StartError> {
        let wanted: Vec<Frontend> = self.config.services.services.keys().copied().collect();
        let removed: Vec<Frontend> = self
            .listeners
            .keys()
            .filter(|f| !wanted.contains(f))
            .copied()
            .collect();
        for f in removed {
            if let Some(token) = self.listeners.remove(&f) {
                token.cancel();
            }
        }
        let mut first_error = None;
        for frontend in wanted {
            if self.listeners.contains_key(&frontend) {
                continue;
            }
            match self.bind(frontend) {
                Ok(token) => {
                    self.listeners.insert(frontend, token);
                }
                Err(source) => {
                    tracing::error!(%frontend, error = %source, "cannot bind");
                    first_error.get_or_insert(StartError::Listener { frontend, source });
                }
            }
        }
        self.ctx.metrics.listeners.set(self.listeners.len() as i64);
        first_error.map_or(Ok(()), Err)
    }

    fn bind(&self, frontend: Frontend) -> std::io::Result<CancellationToken> {
        let token = CancellationToken::new();
        match frontend.protocol {
            Protocol::Tcp => {
                let listener = socket::tcp_listener(frontend.address)?;
                tokio::spawn(tcp::serve(
                    listener,
                    frontend,
                    self.ctx.clone(),
                    token.clone(),
                ));
            }
            Protocol::Udp => {
                let sock = socket::udp_listener(frontend.address)?;
                tokio::spawn(udp::serve(sock, frontend, self.ctx.clone(), token.clone()));
            }
        }
        tracing::info!(%frontend, "listening");
        Ok(token)
    }

    fn stop_listeners(&mut self) {
        for (_, token) in std::mem::take(&mut self.listeners) {
            token.cancel();
        }
        self.ctx.metrics.listeners.set(0);
    }
}

/// A hash of the file's bytes, or None if it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
