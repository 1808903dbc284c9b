//! `wao-bench rr` and `crr`: 1-byte request/response as fast as it goes, over kept-alive
//! connections (`rr`) or with a new connection per request (`crr`), against the backend
//! directly, through wao-lb and through HAProxy (`mode tcp`, one thread). Each proxy runs alone on core 1 (taskset); the load and the
//! built-in backend share core 0. Reports rate, latency percentiles (hdrhistogram) and the
//! proxy's own CPU time per request. A peer that is not installed is skipped with a line
//! saying so.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RrResult {
    pub target: String,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// The proxy's utime + stime per request, in microseconds (None for direct).
    pub proxy_cpu_us_per_request: Option<f64>,
}

/// Percentiles (µs) of a histogram of nanoseconds.
pub fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    [50.0, 90.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0) as f64 / 1000.0)
}

/// The HAProxy config for one TCP frontend → backend, with `threads` threads.
pub fn haproxy_config(listen: SocketAddr, backend: SocketAddr, threads: u32) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  option splice-auto\nlisten rr\n  bind {listen}\n  server s1 {backend}\n"
    )
}

/// The wao-lb config for one TCP service with one backend.
pub fn wao_lb_config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n  - name: rr\n    address: \"{listen}\"\n    backends: [{{address: \"{backend}\", node: n}}]\n"
    )
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // After the command: state is not numeric, so utime/stime sit at 10 and 11 here.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

async fn rr_backend() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).await.is_ok() {
                    if s.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Whether each request reuses its connection (`rr`) or opens a new one (`crr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    NewConnection,
}

async fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// `connections` ping-pong loops for `duration`; all latencies (including the connect
/// under `crr`) in one histogram.
async fn drive(
    target: SocketAddr,
    mode: Mode,
    connections: usize,
    duration: Duration,
) -> std::io::Result<(Histogram<u64>, u64)> {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut kept = match mode {
            Mode::KeepAlive => Some(connect(target).await?),
            Mode::NewConnection => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
                .map_err(std::io::Error::other)?;
            let mut b = [7u8; 1];
            while Instant::now() < end {
                let t = Instant::now();
                let mut fresh = match kept {
                    Some(_) => None,
                    None => Some(connect(target).await?),
                };
                let Some(s) = kept.as_mut().or(fresh.as_mut()) else {
                    break;
                };
                s.write_all(&b).await?;
                s.read_exact(&mut b).await?;
                let _ = h.record(t.elapsed().as_nanos() as u64);
                drop(fresh.take());
            }
            Ok::<_, std::io::Error>(h)
        }));
    }
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).map_err(std::io::Error::other)?;
    for t in tasks {
        let h = t.await.map_err(std::io::Error::other)??;
        let _ = all.add(&h);
    }
    let n = all.len();
    Ok((all, n))
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn spawn_pinned(program: &str, args: &[&str]) -> Option<Peer> {
    Command::new("taskset")
        .args(["-c", "1", program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(Peer)
}

async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn measure(
    name: &str,
    target: SocketAddr,
    pid: Option<u32>,
    mode: Mode,
    connections: usize,
    duration: Duration,
) -> std::io::Result<RrResult> {
    let cpu0 = pid.map(cpu_seconds);
    let started = Instant::now();
    let (h, n) = drive(target, mode, connections, duration).await?;
    let secs = started.elapsed().as_secs_f64();
    let [p50, p90, p99, p999] = percentiles(&h);
    Ok(RrResult {
        target: name.into(),
        requests_per_second: n as f64 / secs,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        p999_us: p999,
        proxy_cpu_us_per_request: pid
            .zip(cpu0)
            .map(|(p, c0)| (cpu_seconds(p) - c0) * 1e6 / (n.max(1)) as f64),
    })
}

/// Runs the scenario; `wao_lb` is the wao-lb binary to start.
pub async fn run(
    wao_lb: &Path,
    mode: Mode,
    connections: usize,
    duration: Duration,
    work: &Path,
) -> std::io::Result<Vec<RrResult>> {
    let backend = rr_backend().await?;
    let mut results = vec![measure("direct", backend, None, mode, connections, duration).await?];

    let lb_addr = free_addr()?;
    let lb_cfg = work.join("rr-wao-lb.yaml");
    std::fs::write(&lb_cfg, wao_lb_config(lb_addr, backend))?;
    let lb_path = wao_lb.to_string_lossy().to_string();
    let cfg = lb_cfg.to_string_lossy().to_string();
    match spawn_pinned(&lb_path, &["run", "--config", &cfg]) {
        Some(peer) if wait_listening(lb_addr).await => {
            results.push(
                measure(
                    "wao-lb",
                    lb_addr,
                    Some(peer.0.id()),
                    mode,
                    connections,
                    duration,
                )
                .await?,
            );
        }
        _ => eprintln!("skipped wao-lb: {lb_path} did not start"),
    }

    let hp_addr = free_addr()?;
    let hp_cfg = work.join("rr-haproxy.cfg");
    std::fs::write(&hp_cfg, haproxy_config(hp_addr, backend, 1))?;
    let hp = hp_cfg.to_string_lossy().to_string();
    match spawn_pinned("haproxy", &["-f", &hp, "-db"]) {
        Some(peer) if wait_listening(hp_addr).await => {
            results.push(
                measure(
                    "haproxy",
                    hp_addr,
                    Some(peer.0.id()),
                    mode,
                    connections,
                    duration,
                )
                .await?,
            );
        }
        _ => eprintln!("skipped haproxy: not installed or did not start (apt-get install haproxy)"),
    }
    Ok(results)
}

pub fn table(results: &[RrResult]) -> String {
    let mut out = format!(
        "{:<10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>16}\n",
        "target", "req/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "proxy CPU µs/req"
    );
    for r in results {
        out.push_str(&format!(
            "{:<10} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>16}\n",
            r.target,
            r.requests_per_second,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.proxy_cpu_us_per_request
                .map_or("-".into(), |c| format!("{c:.2}"))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_math() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let [p50, p90, p99, p999] = percentiles(&h);
        assert!((p50 - 500.0).abs() <= 1.0, "{p50}");
        assert!((p90 - 900.0).abs() <= 1.0, "{p90}");
        assert!((p99 - 990.0).abs() <= 1.0, "{p99}");
        assert!((p999 - 999.0).abs() <= 2.0, "{p999}");
    }

    #[test]
    fn peer_configs() {
        let l: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let hp = haproxy_config(l, b, 1);
        assert!(
            hp.contains("nbthread 1")
                && hp.contains("bind 127.0.0.1:1000")
                && hp.contains("server s1 127.0.0.1:2000")
        );
        assert!(hp.contains("option splice-auto"));
        let cfg = wao_lb::config::Config::parse(&wao_lb_config(l, b)).expect("valid wao-lb config");
        assert_eq!(cfg.services.services.len(), 1);
    }

    #[test]
    fn result_json() {
        let r = RrResult {
            target: "wao-lb".into(),
            requests_per_second: 1000.0,
            p50_us: 10.0,
            p90_us: 20.0,
            p99_us: 30.0,
            p999_us: 40.0,
            proxy_cpu_us_per_request: Some(5.0),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["target"], "wao-lb");
        assert_eq!(v["p99_us"], 30.0);
        assert_eq!(v["proxy_cpu_us_per_request"], 5.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_against_wao_lb() {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/wao-lb");
        let bin = if bin.exists() {
            bin
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/wao-lb")
        };
        let work = std::env::temp_dir().join(format!("wao-bench-smoke-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        for mode in [Mode::KeepAlive, Mode::NewConnection] {
            let results = run(&bin, mode, 2, Duration::from_millis(300), &work)
                .await
                .unwrap();
            let lb = results
                .iter()
                .find(|r| r.target == "wao-lb")
                .expect("wao-lb measured");
            assert!(lb.requests_per_second > 100.0, "{mode:?}: {lb:?}");
            assert!(
                lb.p50_us > 0.0 && lb.p50_us <= lb.p99_us,
                "{mode:?}: {lb:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&work);
    }
}
