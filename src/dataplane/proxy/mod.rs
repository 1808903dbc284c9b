//! The userspace proxy data plane: routes built from each Plan, TCP and UDP listeners that
//! share one context (routes, settings, metrics and the tracker of open connections used for
//! draining), and in transparent mode the kernel's redirect rules.

pub mod affinity;
pub mod budget;
pub mod ejection;
pub mod listeners;
pub mod metrics;
pub mod redirect;
pub mod relay;
pub mod routes;
pub mod scratch;
pub mod socket;
pub mod table;
pub mod tcp;
pub mod udp;
pub mod warn_limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::budget::{FdBudget, Slots};
use self::listeners::Listeners;
use self::metrics::{ProxyMetrics, Refusal};
use self::redirect::nftables::Entry;
use self::redirect::Redirect;
use self::routes::Routes;
use super::{Dataplane, DataplaneError, PickCounts};
use crate::balance::plan::Plan;
use crate::model::connections::OpenConnections;
use crate::model::Frontend;
use crate::settings::{ProxySettings, RedirectMode, Settings, TproxySettings, UdpSettings};

/// How long a stop waits, after the drain period, for cut connections to be reset.
const RESET_WAIT: Duration = Duration::from_secs(1);

/// How a listener learns which frontend a connection or datagram was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The listener is bound to the frontend itself (`redirect: listen`).
    Bound(Frontend),
    /// TPROXY: the accepted socket's local address (TCP) or the datagram's original
    /// destination (UDP) is the frontend.
    Transparent,
    /// NAT redirect of the node's own connections: SO_ORIGINAL_DST names the frontend.
    Redirected,
}

/// What every listener and connection of the proxy reads.
pub struct ProxyContext {
    pub routes: ArcSwap<Routes>,
    pub tcp: ArcSwap<ProxySettings>,
    pub udp: ArcSwap<UdpSettings>,
    pub metrics: ProxyMetrics,
    /// SO_MARK for upstream sockets in transparent mode.
    pub upstream_mark: Option<u32>,
    /// Open connections and UDP sessions; a stop waits on it for the drain period.
    pub tracker: TaskTracker,
    /// Cancelled when the drain period is over: open connections are reset.
    pub cut: CancellationToken,
    /// The descriptor budget's slots for connections, splicing and UDP sessions.
    pub slots: Slots,
}

impl ProxyContext {
    /// Counts a connection or datagram for an address that is no configured frontend.
    pub fn refuse_unknown(&self) {
        self.metrics
            .refused
            .with_label_values(&["", Refusal::UnknownDestination.label()])
            .inc();
    }
}

/// The running proxy.
pub struct Proxy {
    ctx: Arc<ProxyContext>,
    listeners: Listeners,
    /// TPROXY mode: its settings, and the rules once installed.
    tproxy: Option<TproxySettings>,
    redirect: Option<Redirect>,
    /// Where the routes' counters of open connections are published.
    open: OpenConnections,
}

impl Proxy {
    /// A proxy with no routes and nothing bound yet; the first `apply` opens the frontends.
    pub fn new(settings: &Settings, registry: &Registry, open: OpenConnections) -> Proxy {
        let transparent = settings.redirect == RedirectMode::Tproxy;
        let ctx = ProxyContext {
            routes: ArcSwap::from_pointee(Routes::default()),
            tcp: ArcSwap::from_pointee(settings.proxy),
            udp: ArcSwap::from_pointee(settings.udp),
            metrics: ProxyMetrics::new(registry),
            upstream_mark: transparent.then_some(settings.tproxy.upstream_mark),
            tracker: TaskTracker::new(),
            cut: CancellationToken::new(),
            slots: Slots::new(FdBudget::split(socket::nofile_limit())),
        };
        ctx.metrics.publish_budget(&ctx.slots.budget);
        Proxy {
            ctx: Arc::new(ctx),
            listeners: Listeners::default(),
            tproxy: transparent.then_some(settings.tproxy),
            redirect: None,
            open,
        }
    }

    /// TPROXY mode: the redirect rules for `plan`, installing policy routing and the
    /// transparent listeners the first time.
    async fn sync_transparent(
        &mut self,
        plan: &Plan,
        t: TproxySettings,
    ) -> Result<(), DataplaneError> {
        let redirect = match &mut self.redirect {
            Some(r) => r,
            None => {
                let r = Redirect::install(t)
                    .await
                    .map_err(|source| DataplaneError::Redirect {
                        what: "policy routing",
                        source,
                    })?;
                self.redirect.insert(r)
            }
        };
        let entries: Vec<Entry> = plan
            .services
            .values()
            .map(|p| Entry::of(&p.service))
            .collect();
        redirect
            .sync(&entries)
            .await
            .map_err(|source| DataplaneError::Redirect {
                what: "nftables",
                source,
            })?;
        if !self.listeners.is_transparent() {
            self.listeners.start_transparent(&t, &self.ctx)?;
        }
        Ok(())
    }
}

impl Dataplane for Proxy {
    async fn apply(&mut self, plan: &Arc<Plan>) -> Result<(), DataplaneError> {
        let previous = self.ctx.routes.load();
        let routes = Routes::build(plan, &previous, &self.ctx.metrics);
        self.open.publish(routes.counted());
        self.ctx.routes.store(Arc::new(routes));
        match self.tproxy {
            Some(t) => self.sync_transparent(plan, t).await,
            None => self.listeners.reconcile(plan, &self.ctx),
        }
    }

    fn reconfigure(&mut self, settings: &Settings) {
        self.ctx.tcp.store(Arc::new(settings.proxy));
        self.ctx.udp.store(Arc::new(settings.udp));
    }

    fn picks(&self) -> Option<Arc<dyn PickCounts>> {
        Some(Arc::new(RoutePicks(self.ctx.clone())))
    }

    async fn stop(mut self, grace: Duration) {
        self.listeners.stop(&self.ctx);
        self.ctx.tracker.close();
        if tokio::time::timeout(grace, self.ctx.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.ctx.tracker.len(),
                "drain period over; resetting the connections still open"
            );
            self.ctx.cut.cancel();
            // Each relay resets its two sockets as soon as it sees the cut.
            let _ = tokio::time::timeout(RESET_WAIT, self.ctx.tracker.wait()).await;
        }
        if let Some(r) = self.redirect.take() {
            r.remove().await;
        }
    }
}

/// Picks read from the live routes.
struct RoutePicks(Arc<ProxyContext>);

impl PickCounts for RoutePicks {
    fn picks(&self, frontend: &Frontend, backend: SocketAddr) -> Option<u64> {
        self.0.routes.load().picks(frontend, backend)
    }
}
