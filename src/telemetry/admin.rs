//! The admin HTTP API (read-only; binds to loopback by default): `/metrics`, `/healthz`,
//! `/readyz` (200 once rules and tables are in place), `/weights`, `/services`, `/saving`
//! and `/score` (JSON).
//! Its connections are capped and timed out, so it holds a bounded share of descriptors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::registry::render;
use super::weights_view::rows;
use crate::balance::plan::Plan;
use crate::balance::saving::Saving;
use crate::dataplane::PickCounts;
use crate::model::connections::OpenConnections;
use crate::model::Service;
use crate::power::clusters::ClusterScore;
use crate::power::weights::NodeWeights;

/// What the admin API reads.
pub struct AdminState {
    pub plan: Arc<ArcSwap<Plan>>,
    pub picks: Option<Arc<dyn PickCounts>>,
    pub registry: prometheus::Registry,
    pub ready: Arc<AtomicBool>,
    pub open: OpenConnections,
    /// The power side's latest weights, for `/score`.
    pub weights: tokio::sync::watch::Receiver<Arc<NodeWeights>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/weights", get(weights))
        .route("/services", get(services))
        .route("/saving", get(saving))
        .route("/score", get(score))
        .with_state(state)
}

/// Admin connections open at once; more wait in the listen backlog, holding no descriptor.
pub const MAX_CONNECTIONS: usize = 64;

/// A request's headers must arrive within this; a silent or trickling client is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// No admin connection lives longer than this (a scraper simply reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin API on `listener` until `stop` is cancelled, with at most
/// `MAX_CONNECTIONS` connections, each bounded in time, so that clients of the API can
/// never take the descriptors the data plane needs.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    serve_bounded(listener, router(state), stop).await;
}

/// Serves `router` on `listener` as the admin API is served: at most `MAX_CONNECTIONS`
/// connections, header and lifetime timeouts, until `stop`.
pub async fn serve_bounded(listener: TcpListener, router: Router, stop: CancellationToken) {
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, slot)) = accepted else {
            // Out of descriptors or the like: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let service = service.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

/// The next connection once a slot is free, or None when accept fails.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((stream, slot)),
        Err(e) => {
            tracing::debug!(error = %e, "admin accept failed");
            None
        }
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&s.registry),
    )
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn weights(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    Json(rows(&s.plan.load(), s.picks.as_deref()))
}

async fn saving(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    Json(Saving::of(&s.plan.load(), &s.open.by_service()))
}

async fn score(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let weights = s.weights.borrow().clone();
    Json(ClusterScore::of(&weights))
}

async fn services(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let plan = s.plan.load();
    let mut list: Vec<Service> = plan
        .services
        .values()
        .map(|e| (*e.service).clone())
        .collect();
    list.sort_by(|a, b| (&a.name, a.frontend).cmp(&(&b.name, b.frontend)));
    Json(list)
}
