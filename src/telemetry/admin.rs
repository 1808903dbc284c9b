//! The admin HTTP API (read-only; binds to loopback by default): `/metrics`, `/healthz`,
//! `/readyz` (200 once rules and tables are in place), `/weights` and `/services` (JSON).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::registry::render;
use super::weights_view::rows;
use crate::balance::plan::Plan;
use crate::dataplane::PickCounts;
use crate::model::Service;

/// What the admin API reads.
pub struct AdminState {
    pub plan: Arc<ArcSwap<Plan>>,
    pub picks: Option<Arc<dyn PickCounts>>,
    pub registry: prometheus::Registry,
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/weights", get(weights))
        .route("/services", get(services))
        .with_state(state)
}

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin server failed");
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
