//! Batched datagram receive: up to `BATCH` datagrams per `recvmmsg(2)`, each with its
//! source and, on a transparent listener, its original destination, into this thread's
//! batch buffer. A batch that comes back short has drained the socket, so it clears the
//! socket's readiness itself: no extra call that only returns EAGAIN.

use std::cell::RefCell;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::dataplane::proxy::scratch::SCRATCH_BYTES;

/// Datagrams per receive call.
pub const BATCH: usize = 16;

/// Control bytes per datagram: room for one original-destination address (IPv6's is the
/// larger), in u64s so the buffer is aligned for `cmsghdr`.
const CONTROL_WORDS: usize = 8;

/// One received datagram.
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub from: SocketAddr,
    /// Where it was sent (IP_RECVORIGDSTADDR), when the socket reports it.
    pub original_dst: Option<SocketAddr>,
}

/// What a receive call fills: `BATCH` slots of a whole datagram each (touched only as far
/// as datagrams reach, so small ones cost a page per slot), with each one's source
/// address and control messages; then per datagram its length, source and original
/// destination. The kernel shortens a header's name and control lengths to what it wrote,
/// so every call sets all of them afresh.
struct Batch {
    buf: Box<[u8]>,
    names: [libc::sockaddr_storage; BATCH],
    controls: [[u64; CONTROL_WORDS]; BATCH],
    iovs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    /// Per datagram: its slot, length, source and original destination.
    received: Vec<(usize, usize, SocketAddr, Option<SocketAddr>)>,
}

impl Batch {
    fn new() -> Box<Batch> {
        Box::new(Batch {
            buf: vec![0u8; BATCH * SCRATCH_BYTES].into_boxed_slice(),
            // SAFETY: plain C structs of integers and pointers, for which all zeroes is a
            // valid (empty) value; every pointer is set before the kernel sees it.
            names: unsafe { zeroed() },
            controls: [[0; CONTROL_WORDS]; BATCH],
            // SAFETY: as above.
            iovs: unsafe { zeroed() },
            // SAFETY: as above.
            headers: unsafe { zeroed() },
            received: Vec::with_capacity(BATCH),
        })
    }

    /// One `recvmmsg`; fills `received` and returns how many slots the kernel filled
    /// (a datagram from a non-IP source fills one but cannot be answered: it is skipped).
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received.clear();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.buf[i * SCRATCH_BYTES..].as_mut_ptr().cast(),
                iov_len: SCRATCH_BYTES,
            };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: recvmmsg writes at most BATCH headers, each within the name, control and
        // data buffers its pointers (set just above) give with their lengths; all of them
        // live in `self`, which is borrowed for the whole call. No safe wrapper resets
        // those lengths between calls.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let filled = (n as usize).min(BATCH);
        for i in 0..filled {
            let h = &self.headers[i].msg_hdr;
            let Some(from) = socket_addr(&self.names[i]) else {
                continue;
            };
            let len = (self.headers[i].msg_len as usize).min(SCRATCH_BYTES);
            self.received.push((i, len, from, original_dst(h)));
        }
        Ok(filled)
    }
}

/// An IPv4 or IPv6 socket address the kernel wrote.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let ptr: *const libc::sockaddr_storage = storage;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // and aligned enough for.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*ptr.cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The original destination among a received header's control messages, if any.
fn original_dst(h: &libc::msghdr) -> Option<SocketAddr> {
    // SAFETY: the header's control pointer and length are what the kernel filled; the
    // CMSG_* walkers stay within them, and each message's data is at least as long as the
    // address its type says it holds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            let holds =
                |size: usize| (*c).cmsg_len as usize >= libc::CMSG_LEN(size as u32) as usize;
            let size = match (level, kind) {
                (libc::SOL_IP, libc::IP_ORIGDSTADDR) => size_of::<libc::sockaddr_in>(),
                (libc::SOL_IPV6, libc::IPV6_ORIGDSTADDR) => size_of::<libc::sockaddr_in6>(),
                _ => 0,
            };
            let found = if size > 0 && holds(size) {
                let mut a: libc::sockaddr_storage = zeroed();
                std::ptr::copy_nonoverlapping(
                    data,
                    (&mut a as *mut libc::sockaddr_storage).cast(),
                    size,
                );
                socket_addr(&a)
            } else {
                None
            };
            if found.is_some() {
                return found;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

thread_local! {
    static BATCH_BUFFER: RefCell<Option<Box<Batch>>> = const { RefCell::new(None) };
}

/// Receives the datagrams waiting on `socket` (up to `BATCH`) and hands each to `each`,
/// with no await in between; returns how many. Err(WouldBlock) when none was waiting: wait
/// for readiness, then call again. `each` must not call `receive` itself.
pub fn receive(socket: &UdpSocket, mut each: impl FnMut(Datagram<'_>)) -> io::Result<usize> {
    BATCH_BUFFER.with(|cell| {
        let mut fresh = None;
        let mut borrowed = cell.try_borrow_mut();
        // Only re-entrance finds it borrowed; a batch of its own keeps that correct.
        let batch = match &mut borrowed {
            Ok(slot) => slot.get_or_insert_with(Batch::new),
            Err(_) => fresh.get_or_insert_with(Batch::new),
        };
        // Not ready, try_io does not call the closure: nothing of an earlier call may
        // remain to be handed on again.
        batch.received.clear();
        let drained = match socket.try_io(Interest::READABLE, || {
            if batch.receive(socket)? < BATCH {
                // Short: drained. Saying WouldBlock from inside try_io lets tokio clear
                // exactly the readiness this call consumed, not a newer one.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        }) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e),
        };
        if drained && batch.received.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        for &(slot, len, from, original_dst) in &batch.received {
            let start = slot * SCRATCH_BYTES;
            let bytes = batch.buf.get(start..start + len).unwrap_or_default();
            each(Datagram {
                bytes,
                from,
                original_dst,
            });
        }
        Ok(batch.received.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_carries_every_waiting_datagram_with_its_source() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // More than a batch, of different sizes, from two sources.
        let mut sent = Vec::new();
        for i in 0..(BATCH + 3) {
            let (from, bytes) = if i % 2 == 0 {
                (&a, vec![i as u8; 1 + i * 1000])
            } else {
                (&b, vec![i as u8; 3])
            };
            from.send_to(&bytes, to).await.unwrap();
            sent.push((from.local_addr().unwrap(), bytes));
        }
        let mut got = Vec::new();
        while got.len() < sent.len() {
            rx.readable().await.unwrap();
            match receive(&rx, |d| got.push((d.from, d.bytes.to_vec()))) {
                Ok(n) => assert!(n <= BATCH),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(got, sent);
        // Drained: nothing more; a new datagram wakes the socket again.
        assert_eq!(
            receive(&rx, |_| {}).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        a.send_to(b"late", to).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.readable())
            .await
            .unwrap()
            .unwrap();
        let mut late = Vec::new();
        receive(&rx, |d| late.push(d.bytes.to_vec())).unwrap();
        assert_eq!(late, vec![b"late".to_vec()]);
    }

    #[tokio::test]
    async fn each_datagram_carries_its_original_destination() {
        use nix::sys::socket::{setsockopt, sockopt};
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        setsockopt(&rx, sockopt::Ipv4OrigDstAddr, &true).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A socket that reports no destination, and one of the other family, read on the
        // same thread in between.
        let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let six = UdpSocket::bind("[::1]:0").await.ok();
        let mut dsts = Vec::new();
        // Over several calls: what one call's headers were left with must not cut the
        // next call's addresses or control messages short.
        for round in 0..3 {
            tx.send_to(b"p", plain.local_addr().unwrap()).await.unwrap();
            plain.readable().await.unwrap();
            let mut seen = 0;
            while seen == 0 {
                let _ = receive(&plain, |d| {
                    assert_eq!(d.original_dst, None);
                    seen += 1;
                });
            }
            if let Some(six) = &six {
                let from6 = UdpSocket::bind("[::1]:0").await.unwrap();
                from6
                    .send_to(b"6", six.local_addr().unwrap())
                    .await
                    .unwrap();
                let mut from = None;
                while from.is_none() {
                    six.readable().await.unwrap();
                    let _ = receive(six, |d| from = Some(d.from));
                }
                assert_eq!(from, from6.local_addr().ok());
            }
            for _ in 0..=round {
                tx.send_to(b"x", to).await.unwrap();
            }
            let want = dsts.len() + round + 1;
            while dsts.len() < want {
                rx.readable().await.unwrap();
                let _ = receive(&rx, |d| dsts.push(d.original_dst));
            }
        }
        assert_eq!(dsts, vec![Some(to); 6]);
    }

    #[tokio::test]
    async fn a_whole_64k_datagram_fits_a_slot() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let big = vec![7u8; 65_507];
        tx.send_to(&big, rx.local_addr().unwrap()).await.unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).await.unwrap();
        let mut lens = Vec::new();
        while lens.len() < 2 {
            rx.readable().await.unwrap();
            let _ = receive(&rx, |d| lens.push(d.bytes.len()));
        }
        assert_eq!(lens, vec![65_507, 1]);
    }
}
