//! kube-proxy's `healthCheckNodePort` answers, which a Service that opts out of kube-proxy
//! would otherwise lose: for a LoadBalancer Service with `externalTrafficPolicy: Local`,
//! `GET` on that port (every node address) answers 200 with kube-proxy's JSON while this
//! node has a ready local endpoint, 503 otherwise, so the cloud load balancer sends
//! traffic only to nodes that can serve it locally.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admin::serve_bounded;
use crate::discovery::kube::translate::{HealthCheckPort, Translation};

/// The answer for `port`: status and kube-proxy's body.
pub fn answer(port: &HealthCheckPort) -> (StatusCode, serde_json::Value) {
    let healthy = port.local_endpoints > 0;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": port.namespace, "name": port.name},
        "localEndpoints": port.local_endpoints,
        "serviceProxyHealthy": true,
    });
    (status, body)
}

async fn respond(State(port): State<Arc<ArcSwap<HealthCheckPort>>>) -> impl IntoResponse {
    let (status, body) = answer(&port.load());
    (status, Json(body))
}

/// Keeps one listener per health-check port of discovery's latest translation until `stop`.
pub async fn run(
    mut discovered: watch::Receiver<Option<Arc<Translation>>>,
    stop: CancellationToken,
) {
    let mut open: BTreeMap<u16, (CancellationToken, Arc<ArcSwap<HealthCheckPort>>)> =
        BTreeMap::new();
    loop {
        let wanted: Vec<HealthCheckPort> = discovered
            .borrow_and_update()
            .as_ref()
            .map(|t| t.health_check_ports.clone())
            .unwrap_or_default();
        open.retain(|port, (token, _)| {
            let keep = wanted.iter().any(|w| w.port == *port);
            if !keep {
                token.cancel();
            }
            keep
        });
        for w in wanted {
            if let Some((_, state)) = open.get(&w.port) {
                state.store(Arc::new(w));
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, w.port));
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port = w.port, service = %format!("{}/{}", w.namespace, w.name),
                        error = %e, "cannot serve the health-check node port");
                    continue;
                }
            };
            let token = stop.child_token();
            let state = Arc::new(ArcSwap::from_pointee(w.clone()));
            let router = Router::new().fallback(respond).with_state(state.clone());
            tokio::spawn(serve_bounded(listener, router, token.clone()));
            open.insert(w.port, (token, state));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = discovered.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_with_a_local_endpoint() {
        let mut port = HealthCheckPort {
            port: 32000,
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let (status, body) = answer(&port);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        port.local_endpoints = 0;
        assert_eq!(answer(&port).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
