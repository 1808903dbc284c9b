//! Socket setup: listeners with a deep backlog, upstream connects with a timeout, resets
//! (RST instead of FIN), and raising the open-files limit at start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const BACKLOG: i32 = 4096;

/// A non-blocking socket bound to `addr` with SO_REUSEADDR (a restart rebinds at once);
/// IPv6 sockets take IPv6 only. `transparent` sets IP(V6)_TRANSPARENT first, which lets it
/// bind and receive for addresses that are not local.
fn bound(addr: SocketAddr, kind: Type, transparent: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    if transparent {
        set_transparent(&socket, addr.is_ipv6())?;
    }
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Whether the kernel has IPv6 (it may be disabled at boot).
pub fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// A TCP listener on `addr`.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bound(addr, Type::STREAM, false)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket bound to `addr`.
pub fn udp_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bound(addr, Type::DGRAM, false)?.into())
}

/// Connects to a backend with TCP_NODELAY, giving up after `timeout`. `mark` (SO_MARK)
/// lets transparent mode's rules pass wao-lb's own upstream packets.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    mark: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    if let Some(m) = mark {
        SockRef::from(&socket).set_mark(m)?;
    }
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

/// The data bytes of this connection its peer has acknowledged (TCP_INFO
/// `tcpi_bytes_acked`, Linux 4.1+, less the one sequence number of the SYN): what really
/// reached the peer, also when the relay that sent them failed. A FIN sent before counts
/// one more.
pub fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own; no safe
    // wrapper for TCP_INFO exists in socket2 or nix.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    if r != 0 || (len as usize) < needed {
        return None;
    }
    // SAFETY: zero-initialised and then partly filled by the kernel: every bit pattern is a
    // valid tcp_info (plain integers).
    let info = unsafe { info.assume_init() };
    Some(info.tcpi_bytes_acked.saturating_sub(1))
}

/// Raises the open-files limit as far as allowed: with CAP_SYS_RESOURCE up to the kernel's
/// `fs.nr_open`, else the soft limit up to the hard one. Each proxied TCP connection holds
/// two sockets (and two pipes while it splices). Returns the new soft limit.
/// The open-files limit in force (the soft one), or Linux's usual default if unknown.
pub fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

pub fn raise_nofile_limit() -> io::Result<u64> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    let nr_open = rlimit::SysLimits::read()
        .ok()
        .and_then(|l| l.nr_open)
        .unwrap_or(hard);
    let mut last = None;
    for target in [nr_open.max(hard), hard] {
        if target <= soft {
            return Ok(soft);
        }
        match Resource::NOFILE.set(target, target) {
            Ok(()) => return Ok(target),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("open-files limit unchanged")))
}

/// Whether an error means the process or system ran out of something (files, memory,
/// buffers): back off instead of spinning, and blame no backend.
pub use crate::health::probe::is_resource_exhaustion;

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

/// Sets an integer socket option; for options socket2 has no call for.
fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int on our stack and
    // the fd belongs to `socket`, which outlives the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// IP_TRANSPARENT / IPV6_TRANSPARENT: accept traffic for addresses that are not local and
/// bind to them.
fn set_transparent(socket: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_option(socket, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        set_int_option(socket, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

/// A transparent TCP listener: an accepted socket's local address is the original
/// destination of the connection.
pub fn transparent_tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bound(addr, Type::STREAM, true)?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A transparent UDP socket that reports each datagram's original destination
/// (IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR).
pub fn transparent_udp_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = bound(addr, Type::DGRAM, true)?;
    if addr.is_ipv6() {
        set_int_option(&socket, libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
    } else {
        set_int_option(&socket, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    }
    UdpSocket::from_std(socket.into())
}

/// A UDP socket bound to a VIP that is not a local address, to send replies from it.
pub fn transparent_reply_socket(vip: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bound(vip, Type::DGRAM, true)?.into())
}

/// The destination a NAT-redirected TCP connection was originally sent to (SO_ORIGINAL_DST).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst()?,
        SocketAddr::V6(_) => sock.original_dst_ipv6()?,
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}
