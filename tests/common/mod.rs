//! What the integration tests share: real backends on loopback (TCP echo, UDP echo), free
//! ports, starting wao-lb in-process or as a process, and small HTTP reads of the admin API.
#![allow(dead_code)]

pub mod apiserver;
pub mod mlserver;
pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

pub const BIN: &str = env!("CARGO_BIN_EXE_wao-lb");

/// A free address on a random loopback host (127.a.b.c), so that it cannot collide with
/// the ephemeral ports of the many connections tests make from and to 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    use rand::Rng;
    let mut rng = rand::rng();
    let ip = std::net::Ipv4Addr::new(
        127,
        rng.random_range(1..=254),
        rng.random(),
        rng.random_range(1..=254),
    );
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A TCP echo server; the counter counts accepted connections.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
}

impl Echo {
    pub fn count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A loopback TCP listener with a backlog deep enough for a thousand simultaneous connects.
pub fn deep_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    socket.listen(4096).expect("listen")
}

pub async fn echo_server() -> Echo {
    let listener = deep_listener();
    let addr = listener.local_addr().expect("echo addr");
    Echo {
        addr,
        accepted: echo_on(listener),
    }
}

/// Echoes on `listener` until the test ends; the counter counts accepted connections.
pub fn echo_on(listener: TcpListener) -> Arc<AtomicU64> {
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    accepted
}

/// A UDP echo server.
pub async fn udp_echo_server() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp echo");
    let addr = sock.local_addr().expect("udp addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

/// An address on which nothing listens: bound once, then closed.
pub fn closed_port_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// One connection: send `payload`, half-close, read everything back.
pub async fn echo_once(frontend: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(frontend).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(payload).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(payload.len());
    let (wr, rd) = tokio::join!(write, r.read_to_end(&mut back));
    wr?;
    rd?;
    Ok(back)
}

/// Starts wao-lb in this process on `yaml`.
pub async fn start(yaml: &str) -> wao_lb::app::Running {
    let config = wao_lb::discovery::file::FileConfig::parse(yaml)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    wao_lb::app::start(config, None)
        .await
        .expect("wao-lb starts")
}

/// A YAML service block for one TCP or UDP frontend and backends on given nodes.
pub fn service_yaml(
    name: &str,
    protocol: &str,
    frontend: SocketAddr,
    backends: &[(SocketAddr, &str)],
) -> String {
    let mut s = format!(
        "  - name: {name}\n    protocol: {protocol}\n    address: \"{frontend}\"\n    backends:\n"
    );
    for (addr, node) in backends {
        s.push_str(&format!("      - {{address: \"{addr}\", node: {node}}}\n"));
    }
    s
}

/// A plain HTTP/1.0 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line of the Prometheus text, e.g.
/// `wao_lb_config_reloads_total{result="failure"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A wao-lb process; killed on drop so a failed test leaves nothing behind.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn run(config: &Path) -> Process {
        Process::run_logging(config, Stdio::null())
    }

    /// `run` with JSON logs to `log`.
    pub fn run_logging(config: &Path, log: impl Into<Stdio>) -> Process {
        let child = Command::new(BIN)
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wao-lb");
        Process { child }
    }

    /// wao-lb started by `program args` (a wrapper that execs it: `prlimit`, `sh -c`),
    /// with its output discarded.
    pub fn run_under(program: &str, args: &[&str]) -> Process {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Process { child }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether `addr` accepts a connection within `limit` (a started process is serving).
pub async fn accepts_within(addr: SocketAddr, limit: Duration) -> bool {
    eventually(limit, async || TcpStream::connect(addr).await.is_ok()).await
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wao-lb-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
