//! UDP: per-client sessions. The first datagram from a client address picks a backend and
//! opens an upstream socket connected to it; replies go back from the address the client
//! sent to: the service's own socket (`listen`), or in transparent mode a socket of the
//! flow's own, bound to the VIP and connected to the client. Sessions end after the idle
//! timeout, after the service's `udp.responses` replies, when the backend is unreachable
//! (ICMP; the backend is then ejected, and the client's next datagram picks another), or at
//! stop. A new flow needs a slot of the descriptor budget and room under `maxSessions`;
//! when there is none, the least recently active session idle for `EVICTABLE_IDLE` makes
//! room, and only if none has idled is the new flow's datagram dropped (counted, and
//! logged at most once per period).
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

use super::budget::SessionSlot;
use super::routes::ServiceEntry;
use super::scratch::with_scratch;
use super::socket::{recv_with_original_dst, transparent_reply_socket};
use super::warn_limit::WarnLimit;
use super::{Destination, ProxyContext};
use crate::model::{Frontend, Protocol};

const MAX_DATAGRAM: usize = super::scratch::SCRATCH_BYTES;

/// A session silent for this long may be evicted to make room for a new flow.
const EVICTABLE_IDLE: Duration = Duration::from_secs(2);

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
    /// Warnings about dropped flows, at most one per period.
    drops: Arc<WarnLimit>,
}

struct Session {
    upstream: UdpSocket,
    /// The backend's index in the entry the session was opened with.
    backend: usize,
    /// Milliseconds since `epoch` of the last datagram either way.
    last_active: AtomicU64,
    epoch: Instant,
    /// Replies relayed to the client.
    replies: AtomicU64,
    /// The session's slot of the descriptor budget; a flow that evicts it takes it over.
    slot: Mutex<Option<SessionSlot>>,
    /// Cancelled when the session is evicted or its backend is unreachable.
    ended: CancellationToken,
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
        drops: Arc::default(),
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
    if !entry.allows(client.ip()) {
        entry.counters.refused_source.inc();
        return;
    }
    let existing = lock(&shared.sessions).get(&(client, dst)).cloned();
    let session = match existing {
        Some(s) => s,
        None => match open_session(&entry, client, dst, shared).await {
            Some(s) => s,
            None => {
                entry.counters.udp_datagrams_dropped.inc();
                if let Some(drops) = shared.drops.event() {
                    tracing::warn!(service = %entry.service.name, drops,
                        "udp: new flows dropped (no session could be opened or made room for)");
                }
                return;
            }
        },
    };
    session.touch();
    match session.upstream.send(datagram).await {
        Ok(_) => entry.counters.udp_datagrams_upstream.inc(),
        Err(e) => unreachable_backend(&session, &e, client, &entry),
    }
}

/// An error on a session's upstream socket: if the backend is unreachable (ICMP), it is
/// ejected and the session ends, so the client's next datagram picks another backend.
fn unreachable_backend(session: &Session, e: &io::Error, client: SocketAddr, entry: &ServiceEntry) {
    let unreachable = matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
    );
    if unreachable {
        if let Some(backend) = entry.backends.get(session.backend) {
            backend.failed();
        }
        entry.forget_client(client.ip());
    }
    session.ended.cancel();
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
    let slot = admit(shared, settings.max_sessions)?;
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
    // Creating and connecting a UDP socket sends nothing: a failure here is local.
    let upstream = match connect_upstream(backend.address, ctx.upstream_mark).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(backend = %backend.address, error = %e, "udp upstream socket");
            return None;
        }
    };
    let session = Arc::new(Session {
        upstream,
        backend: i,
        last_active: AtomicU64::new(0),
        epoch: Instant::now(),
        replies: AtomicU64::new(0),
        slot: Mutex::new(Some(slot)),
        ended: CancellationToken::new(),
    });
    lock(sessions).insert((client, frontend), session.clone());
    entry.counters.udp_sessions.inc();
    entry.counters.udp_sessions_active.inc();
    backend.open.fetch_add(1, Ordering::Relaxed);
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

/// A budget slot for a new flow: a free one while this listener is under `max_sessions`,
/// else the slot of its least recently active session idle for `EVICTABLE_IDLE`, which is
/// evicted. None when neither exists.
fn admit(shared: &Shared, max_sessions: usize) -> Option<SessionSlot> {
    let mut sessions = lock(&shared.sessions);
    if sessions.len() < max_sessions {
        if let Some(slot) = shared.ctx.slots.session() {
            return Some(slot);
        }
    }
    let (key, victim) = sessions
        .iter()
        .map(|(k, s)| (s.idle_for(), *k, s))
        .filter(|(idle, ..)| *idle >= EVICTABLE_IDLE)
        .max_by_key(|(idle, ..)| *idle)
        .map(|(_, k, s)| (k, s.clone()))?;
    sessions.remove(&key);
    victim.ended.cancel();
    shared.ctx.metrics.udp_evictions.inc();
    let slot = victim.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    slot
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
                session.replies.fetch_add(1, Ordering::Relaxed);
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
    let responses = entry.service.udp_responses.map(u64::from);
    loop {
        if responses.is_some_and(|n| session.replies.load(Ordering::Relaxed) >= n) {
            break;
        }
        let wait = timeout.saturating_sub(session.idle_for());
        if wait.is_zero() {
            break;
        }
        tokio::select! {
            r = session.upstream.readable() => {
                let waiting = match r.and_then(|_| forward_replies(&session, &reply, client, &entry)) {
                    Ok(w) => w,
                    Err(e) => {
                        unreachable_backend(&session, &e, client, &entry);
                        break;
                    }
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
            _ = session.ended.cancelled() => break,
            _ = shared.stop.cancelled() => break,
        }
    }
    {
        // An evicted session's key may already hold a new session of the same client.
        let mut sessions = lock(&shared.sessions);
        let key = (client, frontend);
        if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            sessions.remove(&key);
        }
    }
    entry.counters.udp_sessions_active.dec();
    if let Some(b) = entry.backends.get(session.backend) {
        b.open.fetch_sub(1, Ordering::Relaxed);
    }
}
