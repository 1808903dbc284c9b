//! The built-in backends, so no external server is needed: a TCP echo (rr, crr, idle), a
//! TCP sink that counts bytes (throughput) and a UDP echo (udp). They run in the harness's
//! own runtime on the load core, except for `idle`, whose echo runs in a child process
//! (`wao-bench --serve-echo`) so that the harness's N client sockets and the backend's N
//! accepted ones do not share one open-files limit. Every target gets a backend of its own,
//! started in the target's network namespace (`netns.rs`) and stopped with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// A built-in backend serving in this runtime; dropping it closes its socket.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every byte back on each accepted connection until the peer closes.
pub async fn tcp_echo() -> std::io::Result<Served> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(serve_echo(listener));
    Ok(Served { addr, task })
}

pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            // EMFILE and friends: back off briefly rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// Reads and discards; every byte received is added to the returned counter.
pub async fn tcp_sink() -> std::io::Result<(Served, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((Served { addr, task }, received))
}

/// Sends every datagram back to its sender.
pub async fn udp_echo() -> std::io::Result<Served> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Ok(Served { addr, task })
}

/// A TCP echo in a child process of the harness; killed on drop.
pub struct EchoProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
}

/// How an echo process closes its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// As any server: a FIN, also when the process dies.
    Plain,
    /// A FIN once the peer has acknowledged every byte; a process that dies resets its
    /// open connections (the soak's backends: a killed backend must not look like one
    /// that finished).
    ResetOnDeath,
}

impl EchoProcess {
    /// An echo process on `port` of 127.0.0.1 (0: any free port).
    pub fn start(port: u16, closing: Closing) -> std::io::Result<Self> {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.args(["--serve-echo", "--echo-port", &port.to_string()]);
        if closing == Closing::ResetOnDeath {
            command.arg("--echo-resets");
        }
        let mut child = command.stdout(std::process::Stdio::piped()).spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        match line.trim().strip_prefix("listening ").map(str::parse) {
            Some(Ok(addr)) => Ok(Self { child, addr }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(format!(
                    "the echo child process did not report its address (got {line:?})"
                )))
            }
        }
    }
}

impl EchoProcess {
    /// SIGKILL, and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `wao-bench --serve-echo`: bind, print the address, echo until killed.
pub async fn serve_echo_forever(port: u16, closing: Closing) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?);
    match closing {
        Closing::Plain => serve_echo(listener).await,
        Closing::ResetOnDeath => serve_resetting_echo(listener).await,
    }
    Ok(())
}

/// An echo whose connections carry SO_LINGER 0, so when its process dies each open one is
/// reset. A connection that completes sends its FIN and waits until the peer has
/// acknowledged everything before it closes, so the reset of that close discards nothing.
async fn serve_resetting_echo(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if s.shutdown().await.is_err() {
                return;
            }
            for _ in 0..2_000 {
                if unacknowledged(&s) == Some(0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }
}

/// Bytes (and FIN) sent on `s` that the peer has not acknowledged yet (SIOCOUTQ).
fn unacknowledged(s: &tokio::net::TcpStream) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: ioctl(SIOCOUTQ, int*) writes one int into `n`, which lives across the call;
    // the descriptor belongs to `s`, which is borrowed for the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (rc == 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn echo_sink_and_udp_echo_serve_real_sockets() {
        let echo = tcp_echo().await.unwrap();
        let mut s = TcpStream::connect(echo.addr).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");

        let (sink, received) = tcp_sink().await.unwrap();
        let mut s = TcpStream::connect(sink.addr).await.unwrap();
        s.write_all(&[1u8; 100_000]).await.unwrap();
        drop(s);
        for _ in 0..100 {
            if received.load(Ordering::Relaxed) == 100_000 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(received.load(Ordering::Relaxed), 100_000);

        let udp = udp_echo().await.unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(udp.addr).await.unwrap();
        c.send(b"dgram").await.unwrap();
        let mut b = [0u8; 16];
        let n = c.recv(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"dgram");

        // Dropped, a backend stops serving: its port refuses.
        let addr = echo.addr;
        drop(echo);
        tokio::task::yield_now().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
