//! UDP: per-client sessions. The first datagram from a client address picks a backend and
//! opens an upstream socket connected to it; replies go back from the address the client
//! sent to: the service's own socket (`listen`), or in transparent mode a socket of the
//! flow's own, bound to the VIP and connected to the client. Sessions end after the idle timeout, when the
//! backend refuses (ICMP), or at stop. Past `maxSessions`, new flows are dropped and counted
//! while existing flows keep working.
//!
//! A flow's own socket can receive another client's datagram: the kernel's TPROXY lookup
//! races the socket's connect. Such a stray goes back to the listener's loop, which serves
//! it like any datagram, so it is never relayed as the wrong client's.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::routes::ServiceEntry;
use super::scratch::with_scratch;
use super::socket::{recv_with_original_dst, transparent_reply_socket};
use super::{Destination, ProxyContext};
use crate::model::{Frontend, Protocol};

const MAX_DATAGRAM: usize = super::scratch::SCRATCH_BYTES;

/// Sessions by (client, frontend address).
type Sessions = Arc<Mutex<HashMap<(SocketAddr, SocketAddr), Arc<Session>>>>;

/// A datagram a flow's own socket received from another client: its bytes, its client,
/// and the frontend address it was sent to.
type Stray = (Vec<u8>, SocketAddr, SocketAddr);

/// Strays waiting for the listener's loop; past this many, they are dropped and counted.
const STRAYS_QUEUED: usize = 256;

/// What the sessions of one listening socket share.
#[derive(Clone)]
struct Shared {
    listener: Arc<UdpSocket>,
    destination: Destination,
    sessions: Sessions,
    strays: mpsc::Sender<Stray>,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
}

struct Session {
    upstream: UdpSocket,
    /// Milliseconds since `epoch` of the last datagram either way.
    last_active: AtomicU64,
    epoch: Instant,
}

impl Session {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_active.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Receives datagrams on `socket` until `stop` is cancelled.
pub async fn serve(
    socket: UdpSocket,
    destination: Destination,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
) {
    let (strays, mut stray_rx) = mpsc::channel(STRAYS_QUEUED);
    let shared = Shared {
        listener: Arc::new(socket),
        destination,
        sessions: Arc::default(),
        strays,
        ctx,
        stop,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = receive(&shared.listener, destination, &mut buf) => match r {
                Ok((n, client, dst)) => forward(&buf[..n], client, dst, &shared).await,
                // ICMP errors for earlier replies surface here on some kernels; keep going.
                Err(e) => tracing::debug!(error = %e, "udp receive failed"),
            },
            Some((data, client, dst)) = stray_rx.recv() => {
                forward(&data, client, dst, &shared).await;
            }
            _ = shared.stop.cancelled() => return,
        }
    }
}

/// Sends a client's datagram to its session's backend, opening the session if it is new.
async fn forward(datagram: &[u8], client: SocketAddr, dst: SocketAddr, shared: &Shared) {
    let frontend = Frontend {
        protocol: Protocol::Udp,
        address: dst,
    };
    let Some(entry) = shared.ctx.routes.load().get(&frontend).cloned() else {
        shared.ctx.refuse_unknown();
        return;
    };
    let existing = lock(&shared.sessions).get(&(client, dst)).cloned();
    let session = match existing {
        Some(s) => s,
        None => match open_session(&entry, client, dst, shared).await {
            Some(s) => s,
            None => {
                entry.counters.udp_datagrams_dropped.inc();
                return;
            }
        },
    };
    session.touch();
    if session.upstream.send(datagram).await.is_ok() {
        entry.counters.udp_datagrams_upstream.inc();
    }
}

/// One datagram: its length, its client, and the frontend address it was sent to.
async fn receive(
    socket: &UdpSocket,
    destination: Destination,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    if let Destination::Bound(f) = destination {
        let (n, client) = socket.recv_from(buf).await?;
        return Ok((n, client, f.address));
    }
    loop {
        socket.readable().await?;
        match recv_with_original_dst(socket, buf) {
            Ok((n, client, Some(dst))) => return Ok((n, client, dst)),
            // Without an original destination the datagram cannot be placed: drop it.
            Ok((_, _, None)) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Transparent mode: a socket bound to the VIP and connected to the client. It sends the
/// replies from the VIP, and because the kernel matches the exact flow to it, it also
/// receives the client's further datagrams; the listener only sees each flow's first one.
async fn client_socket(vip: SocketAddr, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let s = transparent_reply_socket(vip)?;
    s.connect(client).await?;
    Ok(Arc::new(s))
}

/// Forwards what the client sent on its own socket (transparent mode) to the backend, and
/// what another client sent to it back to the listener's loop.
fn forward_requests(
    session: &Session,
    from_client: &UdpSocket,
    (client, frontend): (SocketAddr, SocketAddr),
    entry: &ServiceEntry,
    strays: &mpsc::Sender<Stray>,
) -> io::Result<()> {
    with_scratch(|buf| loop {
        match from_client.try_recv_from(buf) {
            Ok((n, from)) if from != client => {
                if strays
                    .try_send((buf[..n].to_vec(), from, frontend))
                    .is_err()
                {
                    entry.counters.udp_datagrams_dropped.inc();
                }
            }
            Ok((n, _)) => {
                session.touch();
                if session.upstream.try_send(&buf[..n]).is_ok() {
                    entry.counters.udp_datagrams_upstream.inc();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    })
}

fn lock(
    sessions: &Sessions,
) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, SocketAddr), Arc<Session>>> {
    sessions.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens a session for a new client, or None when it must be dropped (session limit, no
/// backend, no socket).
async fn open_session(
    entry: &Arc<ServiceEntry>,
    client: SocketAddr,
    frontend: SocketAddr,
    shared: &Shared,
) -> Option<Arc<Session>> {
    let (ctx, sessions) = (&shared.ctx, &shared.sessions);
    let settings = **ctx.udp.load();
    if lock(sessions).len() >= settings.max_sessions {
        tracing::debug!(service = %entry.service.name, %client, "udp session limit reached");
        return None;
    }
    let reply = match shared.destination {
        Destination::Bound(_) => shared.listener.clone(),
        _ => match client_socket(frontend, client).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%frontend, error = %e, "cannot bind a reply socket");
                return None;
            }
        },
    };
    let i = entry.choose(client.ip(), &[], &mut rand::rng())?;
    let backend = &entry.backends[i];
    backend.picks.inc();
    let upstream = match connect_upstream(backend.address, ctx.upstream_mark).await {
        Ok(s) => s,
        Err(e) => {
            backend.connect_failures.inc();
            tracing::debug!(backend = %backend.address, error = %e, "udp upstream socket");
            return None;
        }
    };
    let session = Arc::new(Session {
        upstream,
        last_active: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    lock(sessions).insert((client, frontend), session.clone());
    entry.counters.udp_sessions.inc();
    entry.counters.udp_sessions_active.inc();
    ctx.tracker.spawn(replies(
        session.clone(),
        (client, frontend),
        reply,
        entry.clone(),
        settings.session_timeout,
        shared.clone(),
    ));
    Some(session)
}

async fn connect_upstream(backend: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let local: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    if let Some(m) = mark {
        socket2::SockRef::from(&socket).set_mark(m)?;
    }
    socket.connect(backend).await?;
    Ok(socket)
}

/// Sends every reply waiting on the upstream socket to the client. Returns a reply that
/// must wait for the reply socket to become writable, if any. An error other than "nothing
/// more" (ECONNREFUSED: the backend is gone) ends the session; the client's next datagram
/// then picks anew.
fn forward_replies(
    session: &Session,
    reply: &UdpSocket,
    client: SocketAddr,
    entry: &ServiceEntry,
) -> io::Result<Option<Vec<u8>>> {
    with_scratch(|buf| loop {
        match session.upstream.try_recv(buf) {
            Ok(n) => {
                session.touch();
                match reply.try_send_to(&buf[..n], client) {
                    Ok(_) => entry.counters.udp_datagrams_downstream.inc(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(Some(buf[..n].to_vec()));
                    }
                    Err(_) => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    })
}

/// Carries the backend's replies to the client until the session idles out or fails.
async fn replies(
    session: Arc<Session>,
    (client, frontend): (SocketAddr, SocketAddr),
    reply: Arc<UdpSocket>,
    entry: Arc<ServiceEntry>,
    timeout: Duration,
    shared: Shared,
) {
    // A connected reply socket is the session's own (transparent mode); the shared listener
    // socket is read by `serve`.
    let owns_reply = reply.peer_addr().is_ok();
    loop {
        let wait = timeout.saturating_sub(session.idle_for());
        if wait.is_zero() {
            break;
        }
        tokio::select! {
            r = session.upstream.readable() => {
                let waiting = match r.and_then(|_| forward_replies(&session, &reply, client, &entry)) {
                    Ok(w) => w,
                    Err(_) => break,
                };
                if let Some(datagram) = waiting {
                    if reply.send_to(&datagram, client).await.is_ok() {
                        entry.counters.udp_datagrams_downstream.inc();
                    }
                }
            }
            r = reply.readable(), if owns_reply => {
                let flow = (client, frontend);
                if r.and_then(|_| forward_requests(&session, &reply, flow, &entry, &shared.strays)).is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stop.cancelled() => break,
        }
    }
    lock(&shared.sessions).remove(&(client, frontend));
    entry.counters.udp_sessions_active.dec();
}
