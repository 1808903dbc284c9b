//! The TCP relay between a client and its backend, both ways, until both ends are done.
//!
//! A connection starts in copy mode: it waits for readiness holding no buffer and no pipe,
//! reads into one per-thread 64 KiB buffer and writes straight on; only bytes the peer cannot
//! take yet are kept, in a buffer of their own. So an idle connection costs two sockets and
//! a little state. Once a connection has moved `splice_after_bytes`, it proves bulky and
//! switches to tokio-splice's zero-copy splice(2) for the rest of its life (two pipes).
//! Half-close is kept: EOF one way shuts down only the write side of the other socket. An
//! error one way resets both sockets, so a peer's RST reaches the other side as an RST.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::budget::Slots;
use super::scratch::with_scratch;
use super::socket::{bytes_acked, reset};

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both directions reached end of stream.
    Closed,
    /// No bytes either way for the idle timeout; both sides were reset.
    Idle,
    /// One side failed (e.g. a reset); both sides were reset.
    Error,
    /// The drain deadline passed with the connection still open; both sides were reset, so
    /// neither mistakes a cut transfer for a complete one.
    Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub upstream_bytes: u64,
    pub downstream_bytes: u64,
    pub spliced: bool,
    pub ending: Ending,
}

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings<'a> {
    pub idle_timeout: Duration,
    pub splice_after_bytes: u64,
    /// The descriptor budget, which must grant a connection its pipes before it splices;
    /// without them it keeps copying.
    pub budget: &'a Slots,
}

/// One direction of the copy mode.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (the writer was full).
    pending: Vec<u8>,
    written: usize,
    /// The reader reached end of stream and the writer was shut down.
    done: bool,
    bytes: u64,
}

impl Half {
    fn wants_read(&self) -> bool {
        !self.done && self.pending.is_empty()
    }

    fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads what `from` has and writes it to `to` until `from` would block or `to` is full.
    /// At end of stream it shuts down `to`'s write side, unless the other direction is
    /// already done: then both sockets are about to be closed, which sends the FIN anyway.
    fn pump(&mut self, from: &TcpStream, to: &TcpStream, other_done: bool) -> io::Result<()> {
        with_scratch(|buf| {
            // A bounded number of rounds keeps one busy connection from starving the rest.
            for _ in 0..16 {
                let n = match read_some(from, buf) {
                    Ok(0) => {
                        self.done = true;
                        if other_done {
                            return Ok(());
                        }
                        return SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                };
                self.bytes += n as u64;
                let sent = match to.try_write(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                };
                if sent < n {
                    self.pending = buf[sent..n].to_vec();
                    self.written = 0;
                    return Ok(());
                }
            }
            Ok(())
        })
    }

    /// Writes pending bytes; frees the buffer once they are all out.
    fn flush(&mut self, to: &TcpStream) -> io::Result<()> {
        while self.written < self.pending.len() {
            match to.try_write(&self.pending[self.written..]) {
                Ok(m) => self.written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.pending = Vec::new();
        self.written = 0;
        Ok(())
    }
}

/// Reads into `buf`. A read that leaves `buf` unfilled has drained the socket (readiness
/// is edge-triggered), so the readiness is cleared right away instead of by one more read
/// that fails with EAGAIN, as tokio's own `poll_read` does. `try_io` clears only the
/// readiness it saw before the read, so data that arrives meanwhile still wakes us.
fn read_some(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut short = None;
    let r = from.try_io(Interest::READABLE, || {
        let socket = SockRef::from(from);
        let n = (&*socket).read(buf)?;
        if n > 0 && n < buf.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => r,
    }
}

/// Relays between `client` and `upstream` until both directions end, the connection idles
/// out, an error resets it, or `cut` completes (then both sides are reset). Consumes both
/// sockets.
pub async fn relay<C: Future<Output = ()>>(
    client: TcpStream,
    upstream: TcpStream,
    settings: RelaySettings<'_>,
    mut cut: Pin<&mut C>,
) -> Relayed {
    let mut up = Half::default();
    let mut down = Half::default();
    let mut splice_after = settings.splice_after_bytes;
    loop {
        let exit = copy(
            &client,
            &upstream,
            &mut up,
            &mut down,
            settings.idle_timeout,
            splice_after,
            cut.as_mut(),
        )
        .await;
        let ending = match exit {
            CopyExit::Ended(ending) => ending,
            CopyExit::Bulky => {
                let Some(_pipes) = settings.budget.splice() else {
                    splice_after = u64::MAX;
                    continue;
                };
                let copied = (up.bytes, down.bytes);
                let cut = cut.as_mut();
                match splice_phase(&client, &upstream, settings.idle_timeout, copied, cut).await {
                    SpliceResult::Done(u, d, ending) => {
                        return finish(client, upstream, u, d, true, ending);
                    }
                    // No pipe to be had: stay in copy mode for good.
                    SpliceResult::NoPipes => {
                        splice_after = u64::MAX;
                        continue;
                    }
                }
            }
        };
        return finish(client, upstream, up.bytes, down.bytes, false, ending);
    }
}

enum CopyExit {
    Ended(Ending),
    /// The connection moved `splice_after` bytes and nothing is pending: time to splice.
    Bulky,
}

async fn copy<C: Future<Output = ()>>(
    client: &TcpStream,
    upstream: &TcpStream,
    up: &mut Half,
    down: &mut Half,
    idle_timeout: Duration,
    splice_after: u64,
    mut cut: Pin<&mut C>,
) -> CopyExit {
    // The timer is re-armed only when it fires, not on every step: a step records the
    // time, and a firing timer checks whether the connection really was idle that long.
    let mut last_active = Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        if up.done && down.done {
            return CopyExit::Ended(Ending::Closed);
        }
        let quiet = !up.done && !down.done && up.pending.is_empty() && down.pending.is_empty();
        if quiet && up.bytes + down.bytes >= splice_after {
            return CopyExit::Bulky;
        }
        let step = tokio::select! {
            r = client.readable(), if up.wants_read() => r.and_then(|_| up.pump(client, upstream, down.done)),
            r = upstream.writable(), if up.wants_write() => r.and_then(|_| up.flush(upstream)),
            r = upstream.readable(), if down.wants_read() => r.and_then(|_| down.pump(upstream, client, up.done)),
            r = client.writable(), if down.wants_write() => r.and_then(|_| down.flush(client)),
            _ = cut.as_mut() => return CopyExit::Ended(Ending::Cut),
            _ = &mut idle => {
                if last_active.elapsed() >= idle_timeout {
                    return CopyExit::Ended(Ending::Idle);
                }
                idle.as_mut().reset(last_active + idle_timeout);
                continue;
            }
        };
        if step.is_err() {
            return CopyExit::Ended(Ending::Error);
        }
        last_active = Instant::now();
    }
}

fn finish(
    client: TcpStream,
    upstream: TcpStream,
    upstream_bytes: u64,
    downstream_bytes: u64,
    spliced: bool,
    ending: Ending,
) -> Relayed {
    if ending != Ending::Closed {
        reset(client);
        reset(upstream);
    }
    Relayed {
        upstream_bytes,
        downstream_bytes,
        spliced,
        ending,
    }
}

enum SpliceResult {
    /// The connection's totals (upstream, downstream bytes) and how it ended.
    Done(u64, u64, Ending),
    NoPipes,
}

/// Splices until the connection ends. `copied` are the bytes the copy phase relayed
/// (upstream, downstream); the result carries the connection's totals.
async fn splice_phase<C: Future<Output = ()>>(
    client: &TcpStream,
    upstream: &TcpStream,
    idle_timeout: Duration,
    copied: (u64, u64),
    cut: Pin<&mut C>,
) -> SpliceResult {
    // tokio-splice reports its byte counts only when both directions end cleanly. After an
    // idle timeout or an error, what each peer acknowledged is what was relayed to it: the
    // sockets carry nothing else.
    let relayed_on_failure = || {
        let to = |s: &TcpStream, copied: u64| bytes_acked(s).map_or(copied, |a| a.max(copied));
        (to(upstream, copied.0), to(client, copied.1))
    };
    let activity = AtomicU64::new(0);
    let mut a = Watched {
        stream: client,
        activity: &activity,
    };
    let mut b = Watched {
        stream: upstream,
        activity: &activity,
    };
    tokio::select! {
        r = tokio_splice::zero_copy_bidirectional(&mut a, &mut b) => match r {
            Ok((u, d)) => SpliceResult::Done(copied.0 + u, copied.1 + d, Ending::Closed),
            // Pipes are created before any byte moves, so nothing was lost.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)) => {
                SpliceResult::NoPipes
            }
            Err(_) => {
                let (u, d) = relayed_on_failure();
                SpliceResult::Done(u, d, Ending::Error)
            }
        },
        _ = idle_watch(&activity, idle_timeout) => {
            let (u, d) = relayed_on_failure();
            SpliceResult::Done(u, d, Ending::Idle)
        }
        _ = cut => {
            let (u, d) = relayed_on_failure();
            SpliceResult::Done(u, d, Ending::Cut)
        }
    }
}

/// Completes once `activity` has not moved for a whole `timeout`.
async fn idle_watch(activity: &AtomicU64, timeout: Duration) {
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A socket lent to tokio-splice that counts readiness events, so the idle timeout still
/// works while splice moves the bytes.
struct Watched<'a> {
    stream: &'a TcpStream,
    activity: &'a AtomicU64,
}

impl AsRawFd for Watched<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // tokio-splice never reads through this; it splices from the raw fd.
        loop {
            std::task::ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(self.stream).shutdown(std::net::Shutdown::Write))
    }
}

impl tokio_splice::Stream for Watched<'_> {
    fn poll_read_ready_n(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.stream.poll_read_ready(cx);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_ready_n(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_write_ready(cx)
    }

    fn try_io_n<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.stream.try_io(interest, f)
    }
}
