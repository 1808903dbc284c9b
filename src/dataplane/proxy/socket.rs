//! Socket setup: listeners with a deep backlog, upstream connects with a timeout, resets
//! (RST instead of FIN), and raising the open-files limit at start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const BACKLOG: i32 = 4096;

/// A non-blocking socket bound to `addr` with SO_REUSEADDR (a restart rebinds at once);
/// IPv6 sockets take IPv6 only.
fn bound(addr: SocketAddr, kind: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A TCP listener on `addr`.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bound(addr, Type::STREAM)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket bound to `addr`.
pub fn udp_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bound(addr, Type::DGRAM)?.into())
}

/// Connects to a backend with TCP_NODELAY, giving up after `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Closes a TCP connection with RST: the peer sees a reset, never a clean end of stream.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Raises the open-files limit as far as allowed: with CAP_SYS_RESOURCE up to the kernel's
/// `fs.nr_open`, else the soft limit up to the hard one. Each proxied TCP connection holds
/// two sockets (and two pipes while it splices). Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(lim.rlim_max);
    for target in [nr_open.max(lim.rlim_max), lim.rlim_max] {
        if target <= lim.rlim_cur {
            return Ok(lim.rlim_cur);
        }
        let want = libc::rlimit {
            rlim_cur: target,
            rlim_max: target,
        };
        // SAFETY: setrlimit reads the rlimit struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Ok(target);
        }
    }
    Err(io::Error::last_os_error())
}

/// Whether an accept error means the process or system ran out of something (files,
/// memory, buffers): back off instead of spinning.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The errno name of an error, for metric labels.
pub fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        _ => "other",
    }
}
