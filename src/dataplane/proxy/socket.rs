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

/// Receives one datagram with its source and original destination.
pub fn recv_with_original_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    use std::os::fd::AsRawFd;
    socket.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut src: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut src as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg points at live buffers (src, iov → buf, control) sized as declared.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let from = sockaddr_to_std(&src)
            .ok_or_else(|| io::Error::other("datagram from a non-IP source"))?;
        let mut original = None;
        // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level == libc::SOL_IP && kind == libc::IP_ORIGDSTADDR)
                    || (level == libc::SOL_IPV6 && kind == libc::IPV6_ORIGDSTADDR)
                {
                    let mut storage: libc::sockaddr_storage = std::mem::zeroed();
                    let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    let len = len.min(std::mem::size_of::<libc::sockaddr_storage>());
                    std::ptr::copy_nonoverlapping(
                        libc::CMSG_DATA(c),
                        (&mut storage as *mut libc::sockaddr_storage).cast(),
                        len,
                    );
                    original = sockaddr_to_std(&storage);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok((n as usize, from, original))
    })
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}
