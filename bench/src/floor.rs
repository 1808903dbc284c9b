//! The floor: the least a userspace proxy can spend doing wao-lb's job for one fixed
//! backend, to measure every proxy against. One thread, non-blocking sockets on raw
//! edge-triggered epoll, no runtime, no pick, no metrics, no timers. TCP relays by
//! read/write, and by splice(2) through a pipe once a direction has moved 64 KiB (as
//! wao-lb does); UDP keeps one connected upstream socket per client. Its pipes have the
//! kernel's default size, 64 KiB, as tokio-splice's do; `--floor-pipe-bytes` sets another
//! (F_SETPIPE_SZ), to measure what larger pipes would save.
//!
//! The transparent floor (`--floor-transparent`) sits behind wao-lb's own TPROXY rules,
//! installed by the harness: TCP from the node arrives redirected on a plain listener, UDP
//! on a transparent one that reports each datagram's original destination; replies leave
//! from that destination through one transparent socket per frontend, and its sockets
//! carry wao-lb's upstream mark, as wao-lb's do.
//!
//! `wao-bench --serve-floor tcp|udp --floor-listen ADDR --floor-backend ADDR
//! [--floor-transparent --floor-mark MARK] [--floor-pipe-bytes N]` runs it (the harness
//! starts it like any peer, alone on the proxy core).

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

/// Bytes a direction copies before it switches to splice.
const SPLICE_AFTER: u64 = 64 * 1024;
const CHUNK: usize = 64 * 1024;
/// The kernel's default pipe size, which tokio-splice also sets.
pub const PIPE_BYTES: usize = 64 * 1024;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the new fd is owned here.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` edge-triggered for input, output and hang-ups, tagged with `fd`.
    fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: the event lives on our stack for the call; both fds are open.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
            .map(drop)
    }

    /// Watches `listener`, then hands every event to `handle` (the epoll, the event's fd
    /// and flags, a scratch buffer) until an error.
    fn serve(
        listener: RawFd,
        mut handle: impl FnMut(&Epoll, RawFd, u32, &mut [u8]),
    ) -> io::Result<()> {
        let epoll = Epoll::new()?;
        epoll.add(listener)?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = epoll.wait(&mut events)?;
            for event in &events[..n] {
                handle(&epoll, event.u64 as RawFd, event.events, &mut buf);
            }
        }
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `events.len()` entries into the slice.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        match check(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// One direction of a TCP connection: bytes from `src` to `dst`.
#[derive(Default)]
struct Direction {
    moved: u64,
    /// Bytes read but not yet written: copied ones in `held`, spliced ones in the pipe.
    held: Vec<u8>,
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    eof: bool,
    done: bool,
}

impl Direction {
    /// Moves what it can; Ok(()) when it must wait for readiness or is done. A read that
    /// came back short drained the socket: no further read that could only say EAGAIN (a
    /// new edge comes with new bytes). At end of stream the write side is shut down, unless
    /// `other_done`: then the close that follows ends both ways.
    fn pump(
        &mut self,
        (src, dst): (RawFd, RawFd),
        buf: &mut [u8],
        pipe_bytes: usize,
        other_done: bool,
    ) -> io::Result<()> {
        let mut drained = false;
        loop {
            if self.done {
                return Ok(());
            }
            if !self.held.is_empty() {
                match write(dst, &self.held) {
                    Ok(n) => {
                        self.held.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if self.in_pipe > 0 {
                let (r, _) = self
                    .pipe
                    .as_ref()
                    .ok_or_else(|| io::Error::other("no pipe"))?;
                match splice(r.as_raw_fd(), dst, self.in_pipe) {
                    Ok(n) => {
                        self.in_pipe -= n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if self.eof {
                if !other_done {
                    // SAFETY: shutdown(2) on our own open socket.
                    unsafe { libc::shutdown(dst, libc::SHUT_WR) };
                }
                self.done = true;
                return Ok(());
            }
            if drained {
                return Ok(());
            }
            let splicing = self.moved >= SPLICE_AFTER;
            let wanted = if splicing { pipe_bytes } else { CHUNK };
            let read = if splicing {
                if self.pipe.is_none() {
                    self.pipe = Some(pipe(pipe_bytes)?);
                }
                let (_, w) = self
                    .pipe
                    .as_ref()
                    .ok_or_else(|| io::Error::other("no pipe"))?;
                splice(src, w.as_raw_fd(), pipe_bytes).inspect(|n| self.in_pipe = *n)
            } else {
                read(src, buf).and_then(|n| {
                    let written = match write(dst, &buf[..n]) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    self.held.extend_from_slice(&buf[written..n]);
                    Ok(n)
                })
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.moved += n as u64;
                    drained = n < wanted;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    check_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) moves bytes between two of our open fds; no user memory.
    check_size(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// A pipe of `bytes` (the default size is left alone).
fn pipe(bytes: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which we then own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just returned to us.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if bytes != PIPE_BYTES {
        let size = libc::c_int::try_from(bytes).map_err(io::Error::other)?;
        // SAFETY: F_SETPIPE_SZ on our own open pipe; it takes an int and writes nothing.
        check(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) })?;
    }
    Ok((r, w))
}

struct Connection {
    client: TcpStream,
    upstream: Socket,
    /// The upstream connect completed (its first writable edge): until then nothing is
    /// read, so no write can find it unconnected.
    connected: bool,
    up: Direction,
    down: Direction,
    pipe_bytes: usize,
}

impl Connection {
    fn pump(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.connected {
            return Ok(false);
        }
        let (c, u) = (self.client.as_raw_fd(), self.upstream.as_raw_fd());
        self.up.pump((c, u), buf, self.pipe_bytes, self.down.done)?;
        self.down.pump((u, c), buf, self.pipe_bytes, self.up.done)?;
        Ok(self.up.done && self.down.done)
    }
}

/// Serves TCP on `listen`, relaying each connection to `backend` through pipes of
/// `pipe_bytes`, until killed. A pipe size the kernel refuses fails here, at the start.
pub fn serve_tcp(
    listen: SocketAddr,
    backend: SocketAddr,
    mark: Option<u32>,
    pipe_bytes: usize,
) -> io::Result<()> {
    pipe(pipe_bytes).map_err(|e| io::Error::other(format!("a pipe of {pipe_bytes} bytes: {e}")))?;
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    // Connections by either of their fds' number.
    let mut by_fd: HashMap<RawFd, RawFd> = HashMap::new();
    let mut connections: HashMap<RawFd, Connection> = HashMap::new();
    Epoll::serve(listener.as_raw_fd(), |epoll, fd, flags, buf| {
        if fd == listener.as_raw_fd() {
            while let Ok(client) = accept(&listener) {
                let Ok(upstream) = open_upstream(&client, backend, mark) else {
                    reset(client.as_raw_fd());
                    continue;
                };
                let key = client.as_raw_fd();
                if epoll.add(key).is_err() || epoll.add(upstream.as_raw_fd()).is_err() {
                    continue;
                }
                by_fd.insert(upstream.as_raw_fd(), key);
                connections.insert(
                    key,
                    Connection {
                        client,
                        upstream,
                        connected: false,
                        up: Direction::default(),
                        down: Direction::default(),
                        pipe_bytes,
                    },
                );
            }
            return;
        }
        let key = by_fd.get(&fd).copied().unwrap_or(fd);
        let Some(conn) = connections.get_mut(&key) else {
            return;
        };
        if fd != key && flags & (libc::EPOLLOUT | libc::EPOLLERR) as u32 != 0 {
            // Connected, or failed: the pump's first call on it says which.
            conn.connected = true;
        }
        let finished = match conn.pump(buf) {
            Ok(done) => done,
            Err(_) => {
                reset(conn.client.as_raw_fd());
                reset(conn.upstream.as_raw_fd());
                true
            }
        };
        if finished {
            if let Some(conn) = connections.remove(&key) {
                by_fd.remove(&conn.upstream.as_raw_fd());
            }
        }
    })
}

/// A connection, non-blocking from the start (accept4).
fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
    // SAFETY: accept4 with null address pointers writes nothing of ours; the new fd is
    // owned by the stream.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned to us.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

fn open_upstream(client: &TcpStream, backend: SocketAddr, mark: Option<u32>) -> io::Result<Socket> {
    client.set_nodelay(true)?;
    let s = Socket::new(
        Domain::for_address(backend),
        Type::STREAM.nonblocking(),
        None,
    )?;
    s.set_nodelay(true)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    match s.connect(&backend.into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// SO_LINGER 0: the close that follows sends RST.
fn reset(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct from our stack.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Serves UDP on `listen`: each client gets a connected upstream socket to `backend`, and
/// its replies go back through the listener, or (transparent) through the reply socket of
/// the address it sent to. Sessions never expire (the floor has no timers); a run is short.
pub fn serve_udp(
    listen: SocketAddr,
    backend: SocketAddr,
    transparent: bool,
    mark: Option<u32>,
) -> io::Result<()> {
    let listener = Socket::new(Domain::for_address(listen), Type::DGRAM.nonblocking(), None)?;
    if transparent {
        set_int(&listener, libc::SOL_IP, libc::IP_TRANSPARENT)?;
        set_int(&listener, libc::SOL_IP, libc::IP_RECVORIGDSTADDR)?;
    }
    listener.bind(&listen.into())?;
    let listener: UdpSocket = listener.into();
    // Per client: its upstream socket and the address it sent to.
    let mut upstream_of: HashMap<SocketAddr, (UdpSocket, SocketAddr)> = HashMap::new();
    let mut client_of: HashMap<RawFd, SocketAddr> = HashMap::new();
    let mut reply_of: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    Epoll::serve(listener.as_raw_fd(), |epoll, fd, _, buf| {
        if fd == listener.as_raw_fd() {
            while let Ok((len, client, dst)) = receive(&listener, buf) {
                let dst = dst.unwrap_or(listen);
                let (upstream, _) = match upstream_of.entry(client) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let Ok(s) = connect_udp(backend, mark) else {
                            continue;
                        };
                        if epoll.add(s.as_raw_fd()).is_err() {
                            continue;
                        }
                        if transparent && !reply_of.contains_key(&dst) {
                            let Ok(r) = reply_socket(dst, mark) else {
                                continue;
                            };
                            reply_of.insert(dst, r);
                        }
                        client_of.insert(s.as_raw_fd(), client);
                        v.insert((s, dst))
                    }
                };
                let _ = upstream.send(&buf[..len]);
            }
            return;
        }
        let Some(&client) = client_of.get(&fd) else {
            return;
        };
        let Some((upstream, dst)) = upstream_of.get(&client) else {
            return;
        };
        let from = reply_of.get(dst).unwrap_or(&listener);
        while let Ok(len) = upstream.recv(buf) {
            let _ = from.send_to(&buf[..len], client);
        }
    })
}

fn set_int(socket: &Socket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from our stack.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A transparent socket bound to `vip` (not a local address), to send replies from it.
fn reply_socket(vip: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(vip), Type::DGRAM.nonblocking(), None)?;
    set_int(&s, libc::SOL_IP, libc::IP_TRANSPARENT)?;
    s.set_reuse_address(true)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.bind(&vip.into())?;
    Ok(s.into())
}

/// One datagram with its source and, if the socket reports it, its original destination
/// (IPv4 only: the bench's addresses are).
fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>() as _;
    // SAFETY: the kernel writes within the name, data and control buffers `msg` points to,
    // each with its length; all outlive the call.
    let len = check_size(unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) })?;
    let v4 = |a: &libc::sockaddr_in| {
        SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        ))
    };
    let mut dst = None;
    // SAFETY: the CMSG walkers stay within the control buffer the kernel filled; an
    // IP_ORIGDSTADDR message holds a sockaddr_in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_ORIGDSTADDR {
                let a = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::sockaddr_in>());
                dst = Some(v4(&a));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((len, v4(&from), dst))
}

fn connect_udp(backend: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM.nonblocking(),
        None,
    )?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.connect(&backend.into())?;
    Ok(s.into())
}
