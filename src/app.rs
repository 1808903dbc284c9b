//! Wiring and lifecycle: start every part, reload the config (SIGHUP or a change to the
//! file), keep unchanged listeners across reloads, and stop by draining open connections.
//!
//! One control loop owns the running config and the listeners. It feeds the power updater
//! the config, takes NodeWeights back, builds the routes and swaps them in, so data flows one
//! way: config → power → balance → dataplane, with telemetry reading all of them.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
use crate::config::{Config, ConfigErrors, RedirectMode};
use crate::dataplane::proxy::{socket, tcp, udp, Destination, ProxyContext};
use crate::model::{Frontend, Protocol};
use crate::power::updater;
use crate::power::weights::NodeWeights;
use crate::redirect::nftables::{self, Entry};
use crate::redirect::routing;
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
    #[error("redirect: tproxy: {0}")]
    Redirect(String),
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
        upstream_mark: (config.redirect == RedirectMode::Tproxy)
            .then_some(config.tproxy.upstream_mark),
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
        transparent: Vec::new(),
        applied_ruleset: None,
    };
    control.file_fingerprint = control.path.as_deref().and_then(fingerprint);
    control.rebuild_routes();
    let started = match control.config.redirect {
        RedirectMode::Listen => control.reconcile_listeners(),
        RedirectMode::Tproxy => control.start_transparent().await,
    };
    if let Err(e) = started {
        control.stop_listeners();
        control.remove_redirect().await;
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
    /// Transparent mode's listeners (one token per address family).
    transparent: Vec<CancellationToken>,
    /// The nftables ruleset last applied, so unchanged ones are not re-applied.
    applied_ruleset: Option<String>,
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
                Some(()) = reload.recv() => self.reload("signal").await,
                _ = poll.tick() => {
                    let now = self.path.as_deref().and_then(fingerprint);
                    if now.is_some() && now != self.file_fingerprint {
                        self.file_fingerprint = now;
                        self.reload("file changed").await;
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
        self.remove_redirect().await;
        background.cancel();
    }

    /// Re-reads the config file. A bad file is logged and counted; the running config stays.
    async fn reload(&mut self, why: &str) {
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
                if new.redirect != self.config.redirect || new.tproxy != self.config.tproxy {
                    reloads.with_label_values(&["failure"]).inc();
                    tracing::error!("config reload rejected: redirect and tproxy settings change only on restart");
                    return;
                }
                if new.admin != self.config.admin || new.dataplane != self.config.dataplane {
                    tracing::warn!("admin and dataplane changes take effect on restart");
                }
                self.config = Arc::new(new);
                self.ctx.tcp.store(Arc::new(self.config.proxy));
                self.ctx.udp.store(Arc::new(self.config.udp));
                // The updater answers with new weights, which rebuild the routes; build now
                // too so that new services have routes before their listeners accept.
                self.config_tx.send_replace(self.config.clone());
                self.rebuild_routes();
                let applied = match self.config.redirect {
                    RedirectMode::Listen => self.reconcile_listeners(),
                    RedirectMode::Tproxy => self.sync_ruleset().await,
                };
                match applied {
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
                        tracing::error!(error = %e, "config reloaded, but the frontends could not all be set up");
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
                    Destination::Bound(frontend),
                    self.ctx.clone(),
                    token.clone(),
                ));
            }
            Protocol::Udp => {
                let sock = socket::udp_listener(frontend.address)?;
                tokio::spawn(udp::serve(
                    sock,
                    Destination::Bound(frontend),
                    self.ctx.clone(),
                    token.clone(),
                ));
            }
        }
        tracing::info!(%frontend, "listening");
        Ok(token)
    }

    fn stop_listeners(&mut self) {
        for (_, token) in std::mem::take(&mut self.listeners) {
            token.cancel();
        }
        for token in std::mem::take(&mut self.transparent) {
            token.cancel();
        }
        self.ctx.metrics.listeners.set(0);
    }
}

impl Control {
    /// Transparent mode: policy routing, the nftables table, then the transparent TCP and
    /// UDP listeners and the local-redirect TCP listeners, IPv4 and IPv6. The first failure
    /// is returned; the caller removes whatever was installed.
    async fn start_transparent(&mut self) -> Result<(), StartError> {
        let t = self.config.tproxy;
        routing::install(&t)
            .await
            .map_err(|e| StartError::Redirect(format!("policy routing: {e}")))?;
        self.sync_ruleset().await?;
        let v6 = std::path::Path::new("/proc/net/if_inet6").exists();
        let hosts: Vec<IpAddr> = if v6 {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        } else {
            vec![Ipv4Addr::LOCALHOST.into()]
        };
        for host in hosts {
            let bind_err = |what: &str, addr: SocketAddr, e: std::io::Error| {
                StartError::Redirect(format!(
                    "{what} {addr}: {e} (IP_TRANSPARENT needs CAP_NET_ADMIN)"
                ))
            };
            let at = SocketAddr::new(host, t.port);
            let local = SocketAddr::new(host, t.local_port);
            let tcp_l = socket::transparent_tcp_listener(at)
                .map_err(|e| bind_err("transparent TCP listener", at, e))?;
            let udp_l = socket::transparent_udp_listener(at)
                .map_err(|e| bind_err("transparent UDP listener", at, e))?;
            let local_l = socket::tcp_listener(local)
                .map_err(|e| bind_err("local TCP listener", local, e))?;
            let token = CancellationToken::new();
            tokio::spawn(tcp::serve(
                tcp_l,
                Destination::Transparent,
                self.ctx.clone(),
                token.clone(),
            ));
            tokio::spawn(udp::serve(
                udp_l,
                Destination::Transparent,
                self.ctx.clone(),
                token.clone(),
            ));
            tokio::spawn(tcp::serve(
                local_l,
                Destination::Redirected,
                self.ctx.clone(),
                token.clone(),
            ));
            self.transparent.push(token);
            tracing::info!(%at, %local, "transparent listeners up");
        }
        self.ctx
            .metrics
            .listeners
            .set(self.transparent.len() as i64 * 3);
        Ok(())
    }

    /// Renders the ruleset for the current routes and applies it when it changed.
    async fn sync_ruleset(&mut self) -> Result<(), StartError> {
        let entries: Vec<Entry> = self
            .ctx
            .routes
            .load()
            .by_frontend
            .iter()
            .map(|(f, e)| Entry {
                frontend: *f,
                servable: !e.backends.is_empty(),
            })
            .collect();
        let ruleset = nftables::render(&entries, &self.config.tproxy);
        if self.applied_ruleset.as_deref() == Some(ruleset.as_str()) {
            return Ok(());
        }
        nftables::apply(&ruleset)
            .await
            .map_err(|e| StartError::Redirect(format!("nftables: {e}")))?;
        self.applied_ruleset = Some(ruleset);
        Ok(())
    }

    /// Removes the nftables table and the routing rules, if transparent mode put them there.
    async fn remove_redirect(&mut self) {
        if self.config.redirect != RedirectMode::Tproxy {
            return;
        }
        if let Err(e) = nftables::remove().await {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
        routing::remove(&self.config.tproxy).await;
        self.applied_ruleset = None;
    }
}

/// A hash of the file's bytes, or None if it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
