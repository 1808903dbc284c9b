//! TCP: the accept loop (with back-off on EMFILE and the like) and one connection's life:
//! look up the service, pick a backend, connect with a timeout, retry another backend on a
//! failed connect, then relay. A connection that cannot be served is reset, never half-served.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::relay::{relay, RelaySettings};
use super::routes::ServiceEntry;
use super::socket::{connect, errno_name, is_resource_exhaustion, original_dst, reset};
use super::warn_limit::WarnLimit;
use super::{Destination, ProxyContext};
use crate::model::Frontend;

/// Connect attempts per connection never exceed this, whatever the config says.
const MAX_ATTEMPTS: usize = 16;

/// Accepts connections on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    destination: Destination,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
) {
    let at = listener.local_addr().ok();
    let mut backoff = Duration::ZERO;
    let warn = WarnLimit::default();
    loop {
        // A connection needs a slot of the descriptor budget; while none is free, new
        // connections wait in the listen backlog.
        let slot = tokio::select! {
            s = ctx.slots.connection() => s,
            _ = stop.cancelled() => return,
        };
        let Some(slot) = slot else { return };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = Duration::ZERO;
                let ctx2 = ctx.clone();
                ctx.tracker.spawn(async move {
                    handle(client, peer, destination, ctx2).await;
                    drop(slot);
                });
            }
            Err(e) => {
                ctx.metrics
                    .accept_errors
                    .with_label_values(&[errno_name(&e)])
                    .inc();
                if !is_resource_exhaustion(&e) {
                    tracing::debug!(?at, error = %e, "accept failed");
                    continue;
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if let Some(failures) = warn.event() {
                    tracing::warn!(?at, error = %e, failures, backoff_ms = backoff.as_millis() as u64,
                        "accept: out of resources, backing off");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// The frontend an accepted connection was for.
fn frontend_of(client: &TcpStream, destination: Destination) -> std::io::Result<Frontend> {
    let address = match destination {
        Destination::Bound(f) => return Ok(f),
        Destination::Transparent => client.local_addr()?,
        Destination::Redirected => original_dst(client)?,
    };
    Ok(Frontend {
        protocol: crate::model::Protocol::Tcp,
        address,
    })
}

/// Serves one accepted connection. A connection for an address that is no configured
/// frontend is reset at once: wao-lb is never an open relay.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    destination: Destination,
    ctx: Arc<ProxyContext>,
) {
    let entry = frontend_of(&client, destination)
        .ok()
        .and_then(|f| ctx.routes.load().get(&f).cloned());
    let Some(entry) = entry else {
        ctx.refuse_unknown();
        reset(client);
        return;
    };
    if !entry.allows(peer.ip()) {
        // A bound listener has completed the handshake already: it can only reset.
        entry.counters.refused_source.inc();
        reset(client);
        return;
    }
    let _ = client.set_nodelay(true);
    entry.counters.connections.inc();
    if entry.backends.is_empty() {
        entry.counters.refused_no_backend.inc();
        reset(client);
        return;
    }
    let settings = **ctx.tcp.load();
    let logged = settings.connection_log_sample > 0.0
        && rand::random::<f64>() < settings.connection_log_sample;
    let opened = logged.then(std::time::Instant::now);
    // The drain deadline, as a token of this connection's own: the relay polls it on every
    // step, and a child's locks are its own, not shared with every other connection.
    let token = ctx.cut.child_token();
    let cut = token.cancelled();
    tokio::pin!(cut);
    let connected = tokio::select! {
        c = connect_any(
            &entry,
            peer,
            ctx.upstream_mark,
            settings.connect_attempts,
            settings.connect_timeout,
        ) => c,
        _ = cut.as_mut() => {
            reset(client);
            return;
        }
    };
    let Some((upstream, chosen)) = connected else {
        entry.counters.refused_all_failed.inc();
        reset(client);
        return;
    };
    entry.counters.active.inc();
    let open = &entry.backends[chosen].open;
    open.fetch_add(1, Ordering::Relaxed);
    let relayed = relay(
        client,
        upstream,
        RelaySettings {
            idle_timeout: settings.idle_timeout,
            splice_after_bytes: settings.splice_after_bytes,
            budget: &ctx.slots,
        },
        cut,
    )
    .await;
    open.fetch_sub(1, Ordering::Relaxed);
    entry.counters.active.dec();
    entry.counters.bytes_upstream.inc_by(relayed.upstream_bytes);
    entry
        .counters
        .bytes_downstream
        .inc_by(relayed.downstream_bytes);
    if relayed.spliced {
        ctx.metrics.splice_connections.inc();
    }
    tracing::trace!(service = %entry.service().name, %peer, ?relayed, "connection done");
    if let Some(opened) = opened {
        log_connection(&entry, chosen, peer, &relayed, opened.elapsed());
    }
}

/// One line of the connection event log (target `wao_lb::connections`), for a sampled
/// connection that closed.
fn log_connection(
    entry: &ServiceEntry,
    chosen: usize,
    client: SocketAddr,
    relayed: &super::relay::Relayed,
    duration: Duration,
) {
    let planned = entry.planned.backends.get(chosen);
    tracing::info!(
        target: "wao_lb::connections",
        service = %entry.service().key,
        %client,
        backend = %entry.backends[chosen].address,
        pod = planned.and_then(|b| b.backend.pod.as_deref()).unwrap_or("-"),
        node = &*entry.backends[chosen].node,
        selected_by = planned.map_or("-", |b| &*b.selected_by),
        share = entry.table.share(chosen),
        bytes_upstream = relayed.upstream_bytes,
        bytes_downstream = relayed.downstream_bytes,
        duration_ms = duration.as_millis() as u64,
        ending = ?relayed.ending,
        "connection closed"
    );
}

/// Tries up to `attempts` different backends (every one, at most `MAX_ATTEMPTS`, when the
/// config sets none); the first that accepts the connection wins. A backend that fails is
/// ejected for a while. Running out of local descriptors is no backend's fault: it ends the
/// attempts without blaming one.
async fn connect_any(
    entry: &ServiceEntry,
    peer: SocketAddr,
    mark: Option<u32>,
    attempts: Option<u32>,
    timeout: Duration,
) -> Option<(TcpStream, usize)> {
    let attempts = attempts
        .map_or(MAX_ATTEMPTS, |n| n as usize)
        .clamp(1, MAX_ATTEMPTS)
        .min(entry.backends.len());
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    for n in 0..attempts {
        let i = entry.choose(peer.ip(), &tried[..n], &mut rand::rng())?;
        tried[n] = i;
        let backend = &entry.backends[i];
        backend.picks.inc();
        if n > 0 {
            entry.counters.retries.inc();
        }
        match connect(backend.address, timeout, mark).await {
            Ok(stream) => {
                backend.ejection.succeeded();
                return Some((stream, i));
            }
            Err(e) if is_resource_exhaustion(&e) => {
                tracing::debug!(service = %entry.service().name, error = %e,
                    "no local resources for an upstream socket");
                return None;
            }
            Err(e) => {
                backend.failed();
                entry.forget_client(peer.ip());
                tracing::debug!(service = %entry.service().name, backend = %backend.address,
                    error = %e, "connect failed");
            }
        }
    }
    None
}
