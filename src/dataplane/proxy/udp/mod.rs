//! UDP: per-client sessions. The first datagram from a client address picks a backend and
//! opens an upstream socket connected to it; replies go back from the address the client
//! sent to: the service's own socket (`listen`), or in transparent mode the frontend's
//! reply socket, bound to the VIP and port and shared by all of that frontend's flows. All
//! of a client's datagrams arrive on the listener (TPROXY picks an unconnected socket only
//! as the listener), so a flow costs one socket, its upstream one. Sessions end after the
//! idle timeout, after the service's `udp.responses` replies, when the backend is
//! unreachable (ICMP; the backend is then ejected, and the client's next datagram picks
//! another), when their route no longer holds, or at stop. A new flow needs a slot of the
//! descriptor budget and room under `maxSessions`; when there is none, the least recently
//! active session idle for `EVICTABLE_IDLE` makes room, and only if none has idled is the
//! new flow's datagram dropped (counted, and logged at most once per period).
//!
//! A datagram that reaches a reply socket anyway (it is bound to the VIP) goes back to the
//! listener's loop, which serves it like any datagram.

mod batch;
mod sessions;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::batch::Datagram;
use self::sessions::{Flow, Sessions};
use super::budget::SessionSlot;
use super::routes::{Routes, ServiceEntry};
use super::socket::transparent_reply_socket;
use super::warn_limit::WarnLimit;
use super::{Destination, ProxyContext};
use crate::model::{Frontend, Protocol};

/// A session silent for this long may be evicted to make room for a new flow.
const EVICTABLE_IDLE: Duration = Duration::from_secs(2);

/// A datagram a reply socket received: its bytes, its client, and the frontend address it
/// was sent to.
type Stray = (Vec<u8>, SocketAddr, SocketAddr);

/// Transparent mode: each frontend's reply socket, and the token that stops its reader.
type ReplySocketMap = HashMap<SocketAddr, (Arc<UdpSocket>, CancellationToken)>;
type ReplySockets = Mutex<ReplySocketMap>;

/// Strays waiting for the listener's loop; past this many the loop is far behind, and
/// they are dropped as a full socket buffer would drop them.
const STRAYS_QUEUED: usize = 256;

/// What the sessions of one listening socket share.
#[derive(Clone)]
struct Shared {
    listener: Arc<UdpSocket>,
    destination: Destination,
    sessions: Arc<Sessions<Session>>,
    strays: mpsc::Sender<Stray>,
    reply_sockets: Arc<ReplySockets>,
    ctx: Arc<ProxyContext>,
    stop: CancellationToken,
    /// Warnings about dropped flows, at most one per period.
    drops: Arc<WarnLimit>,
}

struct Session {
    upstream: UdpSocket,
    /// The route the session was opened with, and the backend's index in it.
    entry: Arc<ServiceEntry>,
    backend: usize,
    /// The generation of the routes the session was last found to hold under: while it
    /// is current, a datagram needs no route lookup.
    routes_generation: AtomicU64,
    /// Milliseconds since `epoch` of the last datagram either way.
    last_active: AtomicU64,
    epoch: Instant,
    /// Replies relayed to the client.
    replies: AtomicU64,
    /// The session's slot of the descriptor budget; a flow that evicts it takes it over.
    slot: Mutex<Option<SessionSlot>>,
    /// Cancelled when the session is evicted, its backend is unreachable, or its route no
    /// longer holds.
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

    /// Whether the session may carry the client's datagrams under `routes`: its frontend
    /// still exists, still admits the client, and still has the session's backend (a
    /// removed backend's flows end, so their next datagram picks anew). Remembered per
    /// generation.
    fn holds_under(&self, routes: &Routes, (client, frontend): Flow) -> bool {
        if self.routes_generation.load(Ordering::Relaxed) == routes.generation {
            return true;
        }
        let key = Frontend {
            protocol: Protocol::Udp,
            address: frontend,
        };
        let backend = self.entry.backends.get(self.backend).map(|b| b.address);
        let holds = routes
            .get(&key)
            .is_some_and(|e| e.allows(client.ip()) && backend.is_some_and(|b| e.has_backend(b)));
        if holds {
            self.routes_generation
                .store(routes.generation, Ordering::Relaxed);
        }
        holds
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
        reply_sockets: Arc::default(),
        ctx,
        stop,
        drops: Arc::default(),
    };
    let mut generation = 0;
    let mut blocked = Vec::new();
    let stop = shared.stop.clone();
    let mut stopped = pin!(stop.cancelled());
    loop {
        tokio::select! {
            r = shared.listener.readable() => {
                // One routes load per batch: its datagrams are handed on with no await.
                let routes = shared.ctx.routes.load();
                let received = r.and_then(|()| batch::receive(&shared.listener, |d| {
                    if let Some(flow) = flow_of(&d, destination) {
                        forward(d.bytes, flow, &routes, &shared, &mut blocked);
                    }
                }));
                match received {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ICMP errors for earlier replies surface here on some kernels.
                    Err(e) => tracing::debug!(error = %e, "udp receive failed"),
                }
            }
            Some((data, client, dst)) = stray_rx.recv() => {
                forward(&data, (client, dst), &shared.ctx.routes.load(), &shared, &mut blocked);
            }
            () = &mut stopped => return,
        }
        // Datagrams whose upstream socket was full wait for it here, in order.
        for (session, datagram) in blocked.drain(..) {
            send_upstream(&session, &datagram).await;
        }
        let routes = shared.ctx.routes.load();
        if routes.generation != generation {
            generation = routes.generation;
            drop_reply_sockets_without_route(&shared, &routes);
        }
    }
}

fn lock(sockets: &ReplySockets) -> std::sync::MutexGuard<'_, ReplySocketMap> {
    sockets.lock().unwrap_or_else(|p| p.into_inner())
}

/// Transparent mode: the reply socket of `frontend` (its VIP and port), made on its first
/// flow; a task hands what it receives back to the listener's loop.
fn reply_socket(shared: &Shared, frontend: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let mut sockets = lock(&shared.reply_sockets);
    if let Some((socket, _)) = sockets.get(&frontend) {
        return Ok(socket.clone());
    }
    let socket = transparent_reply_socket(frontend)?;
    // Replies are wao-lb's own traffic: the mark lets them past the redirect rules at
    // once, as the upstream sockets' packets.
    if let Some(m) = shared.ctx.upstream_mark {
        socket2::SockRef::from(&socket).set_mark(m)?;
    }
    let socket = Arc::new(socket);
    // A child of the listener's stop: it ends with the listener, or with its route.
    let reader = shared.stop.child_token();
    shared.ctx.tracker.spawn(hand_back(
        socket.clone(),
        frontend,
        shared.strays.clone(),
        reader.clone(),
    ));
    sockets.insert(frontend, (socket.clone(), reader));
    Ok(socket)
}

/// Closes the reply sockets of frontends that are gone (their flows' sessions hold theirs
/// until they end).
fn drop_reply_sockets_without_route(shared: &Shared, routes: &Routes) {
    lock(&shared.reply_sockets).retain(|frontend, (_, reader)| {
        let key = Frontend {
            protocol: Protocol::Udp,
            address: *frontend,
        };
        let kept = routes.get(&key).is_some();
        if !kept {
            reader.cancel();
        }
        kept
    });
}

/// Hands what a reply socket receives to the listener's loop, until `stop`.
async fn hand_back(
    socket: Arc<UdpSocket>,
    frontend: SocketAddr,
    strays: mpsc::Sender<Stray>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            r = socket.readable() => {
                let received = r.and_then(|()| batch::receive(&socket, |d| {
                    // A full queue drops it: the listener's loop is far behind.
                    let _ = strays.try_send((d.bytes.to_vec(), d.from, frontend));
                }));
                if received.is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock) {
                    return;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// A received datagram's flow: its client and the frontend address it was sent to (a
/// transparent listener's datagram without an original destination cannot be placed).
fn flow_of(d: &Datagram<'_>, destination: Destination) -> Option<Flow> {
    match destination {
        Destination::Bound(f) => Some((d.from, f.address)),
        _ => d.original_dst.map(|dst| (d.from, dst)),
    }
}

/// Sends a client's datagram to its session's backend under `routes`, opening the session
/// if it is new.
/// A datagram the upstream socket has no room for now goes to `blocked`.
fn forward(
    datagram: &[u8],
    flow: Flow,
    routes: &Routes,
    shared: &Shared,
    blocked: &mut Vec<(Arc<Session>, Vec<u8>)>,
) {
    let session = match shared.sessions.get(&flow) {
        Some(s) if s.holds_under(routes, flow) => s,
        found => {
            if let Some(old) = found {
                // Its route changed under it: it ends, and this datagram routes anew.
                old.ended.cancel();
                shared.sessions.remove(&flow, &old);
            }
            match open_session(routes, flow, shared) {
                Some(s) => s,
                None => return,
            }
        }
    };
    session.touch();
    match session.upstream.try_send(datagram) {
        Ok(_) => session.entry.counters.udp_datagrams_upstream.inc(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            blocked.push((session, datagram.to_vec()));
        }
        Err(e) => unreachable_backend(&session, &e, flow.0),
    }
}

/// Sends a datagram once the session's upstream socket has room.
async fn send_upstream(session: &Session, datagram: &[u8]) {
    if session.upstream.send(datagram).await.is_ok() {
        session.entry.counters.udp_datagrams_upstream.inc();
    }
}

/// An error on a session's upstream socket: if the backend is unreachable (ICMP), it is
/// ejected and the session ends, so the client's next datagram picks another backend.
fn unreachable_backend(session: &Session, e: &io::Error, client: SocketAddr) {
    let unreachable = matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
    );
    if unreachable {
        if let Some(backend) = session.entry.backends.get(session.backend) {
            backend.failed();
        }
        session.entry.forget_client(client.ip());
    }
    session.ended.cancel();
}

/// Opens a session for a new flow under `routes`, or None when its datagram is refused
/// (unknown frontend, source not allowed) or dropped (session limit, no backend, no
/// socket; counted and logged at most once per period).
fn open_session(routes: &Routes, flow: Flow, shared: &Shared) -> Option<Arc<Session>> {
    let (client, frontend) = flow;
    let key = Frontend {
        protocol: Protocol::Udp,
        address: frontend,
    };
    let Some(entry) = routes.get(&key) else {
        shared.ctx.refuse_unknown();
        return None;
    };
    if !entry.allows(client.ip()) {
        entry.counters.refused_source.inc();
        return None;
    }
    let session = new_session(entry, routes.generation, flow, shared);
    if session.is_none() {
        entry.counters.udp_datagrams_dropped.inc();
        if let Some(drops) = shared.drops.event() {
            tracing::warn!(service = %entry.service().name, drops,
                "udp: new flows dropped (no session could be opened or made room for)");
        }
    }
    session
}

/// The session itself: a budget slot, the reply socket, a pick, the upstream socket, and
/// the task that carries its replies.
fn new_session(
    entry: &Arc<ServiceEntry>,
    generation: u64,
    (client, frontend): Flow,
    shared: &Shared,
) -> Option<Arc<Session>> {
    let ctx = &shared.ctx;
    let settings = **ctx.udp.load();
    let slot = admit(shared, settings.max_sessions)?;
    let reply = match shared.destination {
        Destination::Bound(_) => shared.listener.clone(),
        _ => match reply_socket(shared, frontend) {
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
    let upstream = match connect_upstream(backend.address, ctx.upstream_mark) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(backend = %backend.address, error = %e, "udp upstream socket");
            return None;
        }
    };
    let session = Arc::new(Session {
        upstream,
        entry: entry.clone(),
        backend: i,
        routes_generation: AtomicU64::new(generation),
        last_active: AtomicU64::new(0),
        epoch: Instant::now(),
        replies: AtomicU64::new(0),
        slot: Mutex::new(Some(slot)),
        ended: CancellationToken::new(),
    });
    shared.sessions.insert((client, frontend), session.clone());
    entry.counters.udp_sessions.inc();
    entry.counters.udp_sessions_active.inc();
    backend.open.fetch_add(1, Ordering::Relaxed);
    ctx.tracker.spawn(replies(
        session.clone(),
        (client, frontend),
        reply,
        settings.session_timeout,
        shared.clone(),
    ));
    Some(session)
}

/// A budget slot for a new flow: a free one while this listener is under `max_sessions`,
/// else the slot of its least recently active session idle for `EVICTABLE_IDLE`, which is
/// evicted. None when neither exists.
fn admit(shared: &Shared, max_sessions: usize) -> Option<SessionSlot> {
    if shared.sessions.len() < max_sessions {
        if let Some(slot) = shared.ctx.slots.session() {
            return Some(slot);
        }
    }
    let victim = shared
        .sessions
        .evict_idlest(EVICTABLE_IDLE, Session::idle_for)?;
    victim.ended.cancel();
    shared.ctx.metrics.udp_evictions.inc();
    let slot = victim.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    slot
}

/// A UDP socket connected to `backend`, made without awaiting (nothing is sent).
fn connect_upstream(backend: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let local: SocketAddr = if backend.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    if let Some(m) = mark {
        socket2::SockRef::from(&socket).set_mark(m)?;
    }
    socket.connect(backend)?;
    UdpSocket::from_std(socket)
}

/// Sends the replies waiting on the session's upstream socket to the client, a batch per
/// call. Replies the reply socket has no room for now go to `blocked`. An error other than
/// "nothing more" (ECONNREFUSED: the backend is gone) ends the session; the client's next
/// datagram then picks anew.
fn forward_replies(
    session: &Session,
    reply: &UdpSocket,
    client: SocketAddr,
    blocked: &mut Vec<Vec<u8>>,
) -> io::Result<()> {
    let counters = &session.entry.counters;
    let relayed = batch::receive(&session.upstream, |d| {
        session.replies.fetch_add(1, Ordering::Relaxed);
        match reply.try_send_to(d.bytes, client) {
            Ok(_) => counters.udp_datagrams_downstream.inc(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked.push(d.bytes.to_vec()),
            Err(_) => {}
        }
    });
    match relayed {
        Ok(_) => {
            session.touch();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Carries the backend's replies to the client until the session idles out or fails.
async fn replies(
    session: Arc<Session>,
    flow: Flow,
    reply: Arc<UdpSocket>,
    timeout: Duration,
    shared: Shared,
) {
    let (client, _) = flow;
    let entry = session.entry.clone();
    let responses = entry.service().udp_responses.map(u64::from);
    let mut blocked = Vec::new();
    // Made once, not per datagram: the idle timer is re-armed only when it fires.
    let mut idle = pin!(tokio::time::sleep(timeout));
    let mut ended = pin!(session.ended.cancelled());
    let mut stop = pin!(shared.stop.cancelled());
    loop {
        if responses.is_some_and(|n| session.replies.load(Ordering::Relaxed) >= n) {
            break;
        }
        tokio::select! {
            r = session.upstream.readable() => {
                if let Err(e) = r.and_then(|()| forward_replies(&session, &reply, client, &mut blocked)) {
                    unreachable_backend(&session, &e, client);
                    break;
                }
                for datagram in blocked.drain(..) {
                    if reply.send_to(&datagram, client).await.is_ok() {
                        entry.counters.udp_datagrams_downstream.inc();
                    }
                }
            }
            () = &mut idle => {
                let left = timeout.saturating_sub(session.idle_for());
                if left.is_zero() {
                    break;
                }
                idle.as_mut().reset(Instant::now() + left);
            }
            () = &mut ended => break,
            () = &mut stop => break,
        }
    }
    shared.sessions.remove(&flow, &session);
    entry.counters.udp_sessions_active.dec();
    if let Some(b) = entry.backends.get(session.backend) {
        b.open.fetch_sub(1, Ordering::Relaxed);
    }
}
