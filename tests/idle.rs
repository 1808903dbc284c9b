//! Idle connections through a wao-lb process: close to 10k fit in the open-files limit and
//! hold no pipes. Its own test binary, so no other test shares this process's files.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open pipes of process `pid`: a splice(2) relay holds two.
fn open_pipes(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("pipe:"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Close to 10k idle connections through a wao-lb process. Exactly 10k cannot fit: each
/// proxied connection holds two sockets, the open-files limit here is 20,000 per process,
/// and the descriptor budget keeps 128 of them for the admin API, listeners and files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_fit_and_hold_no_pipes() {
    const N: usize = 9_800;
    let echo = echo_server().await;
    let frontend: SocketAddr = free_addr();
    let dir = TempDir::new("idle");
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}",
        service_yaml("echo", "tcp", frontend, &[(echo.addr, "n")])
    );
    let lb = Process::run(&dir.file("lb.yaml", &yaml));
    let pid = lb.child.id();
    assert!(accepts_within(frontend, Duration::from_secs(10)).await);
    let rss_before = rss_kib(pid);
    let pipes_before = open_pipes(pid);
    let mut open = Vec::with_capacity(N);
    for i in 0..N {
        let s = TcpStream::connect(frontend)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        open.push(s);
    }
    // Every connection is served: the backend saw all of them, and the last one answers.
    assert!(
        eventually(Duration::from_secs(20), async || echo.count() as usize >= N).await,
        "backend saw {} of {N}",
        echo.count()
    );
    let last = open.last_mut().expect("connections");
    last.write_all(b"ping").await.expect("write");
    let mut b = [0u8; 4];
    last.read_exact(&mut b).await.expect("echo");
    assert_eq!(
        open_pipes(pid),
        pipes_before,
        "idle connections hold no pipes"
    );
    let per_conn = (rss_kib(pid).saturating_sub(rss_before)) as f64 / N as f64;
    println!("proxy RSS per idle connection: {per_conn:.2} KiB");
    drop(open);
}
