//! The process's life: reloads (bad files keep the running config, good ones apply without
//! dropping connections on unchanged listeners), SIGTERM drains, and the admin API.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config_text(admin: SocketAddr, services: &str) -> String {
    format!("admin: {{listen: \"{admin}\"}}\nproxy: {{drainTimeout: 10s}}\nservices:\n{services}")
}

async fn ping(stream: &mut TcpStream, what: &[u8]) -> std::io::Result<()> {
    stream.write_all(what).await?;
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    assert_eq!(back, what);
    Ok(())
}

/// Waits until wao-lb says it is ready: tables in place, listeners bound.
async fn admin_up(admin: SocketAddr) -> bool {
    eventually(Duration::from_secs(10), async || {
        TcpStream::connect(admin).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(2), http_get(admin, "/readyz"))
                .await
                .is_ok_and(|(code, _)| code == 200)
    })
    .await
}

async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    let (_, m) = http_get(admin, "/metrics").await;
    metric(
        &m,
        &format!("wao_lb_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A wao-lb process serving one TCP service, `web`, in front of an echo server; ready.
struct WebLb {
    echo: Echo,
    admin: SocketAddr,
    web: SocketAddr,
    /// `web`'s block of the `services:` list.
    one: String,
    path: std::path::PathBuf,
    lb: Process,
    _dir: TempDir,
}

async fn web_lb(tag: &str) -> WebLb {
    let echo = echo_server().await;
    let admin: SocketAddr = free_addr();
    let web: SocketAddr = free_addr();
    let dir = TempDir::new(tag);
    let one = service_yaml("web", "tcp", web, &[(echo.addr, "a")]);
    let path = dir.file("lb.yaml", &config_text(admin, &one));
    let lb = Process::run(&path);
    assert!(admin_up(admin).await, "wao-lb came up");
    WebLb {
        echo,
        admin,
        web,
        one,
        path,
        lb,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_serving_and_keep_connections() {
    let WebLb {
        echo,
        admin,
        web,
        one,
        path,
        mut lb,
        _dir,
    } = web_lb("reload").await;
    let api: SocketAddr = free_addr();
    let mut open = TcpStream::connect(web).await.expect("connect");
    ping(&mut open, b"before")
        .await
        .expect("served before reload");

    // A broken file: rejected, counted, and the old config keeps serving.
    std::fs::write(&path, "services: [\n").expect("write broken");
    lb.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), async || reloads(admin, "failure")
            .await
            >= 1.0)
        .await
    );
    ping(&mut open, b"after bad reload")
        .await
        .expect("open connection kept");
    assert_eq!(
        echo_once(web, b"new").await.expect("new connection"),
        b"new"
    );

    // A good file adding a service: applied by the file watcher alone, the open connection
    // on the unchanged listener survives.
    let two = format!(
        "{one}{}",
        service_yaml("api", "tcp", api, &[(echo.addr, "a")])
    );
    std::fs::write(&path, config_text(admin, &two)).expect("write good");
    assert!(
        eventually(Duration::from_secs(5), async || reloads(admin, "success")
            .await
            >= 1.0)
        .await
    );
    assert_eq!(echo_once(api, b"api").await.expect("new service"), b"api");
    ping(&mut open, b"after good reload")
        .await
        .expect("open connection kept");

    // Removing the service closes its listener.
    std::fs::write(&path, config_text(admin, &one)).expect("write smaller");
    assert!(
        eventually(Duration::from_secs(5), async || TcpStream::connect(api)
            .await
            .is_err())
        .await
    );
    ping(&mut open, b"still")
        .await
        .expect("open connection kept");

    lb.signal("TERM");
    drop(open);
    assert!(lb
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

/// An emptied file (a truncate seen before the write) is refused and every listener stays;
/// only a file that says `services: []` removes them. A bad file re-read on SIGHUP counts
/// one failure, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_file_keeps_every_listener() {
    let WebLb {
        admin,
        web,
        path,
        mut lb,
        _dir,
        ..
    } = web_lb("emptied").await;

    std::fs::write(&path, "").expect("truncate");
    assert!(
        eventually(Duration::from_secs(5), async || reloads(admin, "failure")
            .await
            >= 1.0)
        .await
    );
    lb.signal("HUP");
    // Give the signal time to be handled before the next write decides the outcome.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        echo_once(web, b"kept").await.expect("still served"),
        b"kept"
    );
    assert_eq!(
        reloads(admin, "failure").await,
        1.0,
        "one bad file, one failure"
    );

    std::fs::write(
        &path,
        format!("admin: {{listen: \"{admin}\"}}\nservices: []\n"),
    )
    .expect("write empty list");
    assert!(
        eventually(Duration::from_secs(5), async || TcpStream::connect(web)
            .await
            .is_err())
        .await,
        "services: [] closes the listener"
    );
    assert_eq!(reloads(admin, "success").await, 1.0);
    lb.signal("TERM");
    assert!(lb
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 150 clients that send half a request and stall hold at most the admin API's 64
/// connections, each dropped after the header timeout; the data plane and, once a slot
/// frees, the API itself keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_admin_clients_hold_a_bounded_number_of_descriptors() {
    let WebLb {
        admin,
        web,
        mut lb,
        _dir,
        ..
    } = web_lb("admin-fds").await;
    let pid = lb.child.id();
    let before = open_fds(pid);
    let mut stalled = Vec::new();
    for _ in 0..150 {
        let mut s = TcpStream::connect(admin).await.expect("connect admin");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a request");
        stalled.push(s);
    }
    let held = open_fds(pid);
    assert!(
        held <= before + 64 + 4,
        "{held} descriptors open, {before} before 150 stalled admin clients"
    );
    assert_eq!(echo_once(web, b"data").await.expect("data plane"), b"data");
    // Stalled clients are dropped by the server after the header timeout...
    let mut first = stalled.swap_remove(0);
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(30), first.read(&mut buf)).await;
    assert!(
        closed.is_ok_and(|r| r.map_or(true, |n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"))),
        "a stalled admin client is closed"
    );
    // ...so a real request is served while the others still stall.
    assert!(
        eventually(Duration::from_secs(60), async || tokio::time::timeout(
            Duration::from_secs(10),
            http_get(admin, "/healthz")
        )
        .await
        .is_ok_and(|(code, _)| code == 200))
        .await
    );
    drop(stalled);
    lb.signal("TERM");
    assert!(lb
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections() {
    let WebLb {
        admin,
        web,
        mut lb,
        _dir,
        ..
    } = web_lb("drain").await;
    let mut open = TcpStream::connect(web).await.expect("connect");
    ping(&mut open, b"one").await.expect("served");

    lb.signal("TERM");
    // Stops accepting at once...
    assert!(
        eventually(Duration::from_secs(5), async || TcpStream::connect(web)
            .await
            .is_err())
        .await
    );
    let (code, _) = http_get(admin, "/readyz").await;
    assert_ne!(code, 200, "not ready while draining");
    // ...but the open connection still works during the grace period...
    ping(&mut open, b"two")
        .await
        .expect("drained connection still served");
    assert!(
        lb.wait_exit(Duration::from_millis(300)).is_none(),
        "waits for the open connection"
    );
    // ...and once it closes, the process exits cleanly.
    drop(open);
    let status = lb
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_weights_cli() {
    let echo = echo_server().await;
    let web: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}nodes:\n  a: {{cores: 8, cpu: {{source: static, percent: 30}}, model: {{type: curve, profile: ml30-g11}}}}\n",
        service_yaml("web", "tcp", web, &[(echo.addr, "a")])
    );
    let lb = start(&yaml).await;
    let admin = lb.admin_addr;
    assert!(admin.ip().is_loopback());
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    echo_once(web, b"x").await.expect("one connection");

    let (code, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "wao_lb_connections_total{service=\"web\"} 1",
        "wao_lb_connections_active",
        "wao_lb_relayed_bytes_total",
        "wao_lb_backend_picks_total",
        "wao_lb_backend_weight",
        "wao_lb_listeners 1",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    for series in [
        "wao_lb_udp_sessions_total{service=\"web\"}",
        "wao_lb_udp_datagrams_total{direction=\"upstream\",service=\"web\"}",
    ] {
        assert!(!metrics.contains(series), "a TCP service has no {series}");
    }

    let (code, body) = http_get(admin, "/weights").await;
    assert_eq!(code, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).expect("weights JSON");
    assert_eq!(rows[0]["service"], "web");
    assert_eq!(rows[0]["node"], "a");
    assert_eq!(rows[0]["cpuPercent"], 30.0);
    assert_eq!(rows[0]["picks"], 1);
    assert!(rows[0]["watts"]
        .as_f64()
        .is_some_and(|w| w > 40.0 && w < 100.0));

    let (code, body) = http_get(admin, "/services").await;
    assert_eq!(code, 200);
    let services: serde_json::Value = serde_json::from_str(&body).expect("services JSON");
    assert_eq!(services[0]["name"], "web");
    assert_eq!(services[0]["backends"][0]["address"], echo.addr.to_string());

    let admin_arg = admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["weights", "--admin", &admin_arg])
            .output()
    })
    .await
    .expect("join")
    .expect("wao-lb weights");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SERVICE")
            && lines[0].contains("WATTS")
            && lines[0].contains("REASON")
    );
    assert!(
        lines[1].starts_with("web") && lines[1].contains(&echo.addr.to_string()),
        "{text}"
    );
    lb.stop().await;
}

#[test]
fn weights_cli_reports_an_unreachable_admin() {
    let addr = closed_port_addr().to_string();
    let out = std::process::Command::new(BIN)
        .args(["weights", "--admin", &addr])
        .output()
        .expect("wao-lb weights");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("no wao-lb admin API at {addr}")) && text.contains("--admin"),
        "says what it tried and how to point elsewhere: {text}"
    );
}

#[test]
fn demo_shows_the_weighted_split() {
    let out = std::process::Command::new(BIN)
        .args(["demo", "--connections", "2000"])
        .output()
        .expect("wao-lb demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2000 connections in"), "{text}");
    assert!(text.contains(", 0 failed."), "{text}");
    // The efficient node's share must clearly dominate: its weight is far above the others'.
    let edge = text
        .lines()
        .find(|l| l.trim_start().starts_with("edge-arm") && l.contains("connections"))
        .expect("edge-arm line");
    let received: u64 = edge
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(received > 1400, "edge-arm got {received} of 2000:\n{text}");
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_files_backs_off_and_recovers() {
    let echo = echo_server().await;
    let admin: SocketAddr = free_addr();
    let web: SocketAddr = free_addr();
    let dir = TempDir::new("emfile");
    let path = dir.file(
        "lb.yaml",
        &config_text(admin, &service_yaml("web", "tcp", web, &[(echo.addr, "a")])),
    );
    // 64 files: a budget pool of 48, room for 24 connections; the rest wait in the backlog.
    let config = path.display().to_string();
    let mut lb = Process::run_under(
        "prlimit",
        &["--nofile=64:64", BIN, "run", "--config", &config],
    );
    assert!(admin_up(admin).await);
    let mut held = Vec::new();
    for _ in 0..60 {
        // The kernel completes handshakes from the backlog even when accept(2) cannot. A
        // connection accepted when no file is left for its backend socket is reset.
        if let Ok(s) = TcpStream::connect(web).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The budget keeps descriptors for the admin API while the data plane is full.
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), http_get(admin, "/healthz"))
        .await
        .expect("admin answers while the data plane is full");
    assert_eq!(code, 200);
    let cpu_before = cpu_seconds(lb.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_seconds(lb.child.id()) - cpu_before;
    assert!(
        spent < 0.3,
        "backs off instead of spinning: {spent}s CPU in 1s"
    );
    assert!(
        lb.child.try_wait().expect("status").is_none(),
        "still running"
    );
    drop(held);
    // Once files are free again, new connections are served.
    assert!(
        eventually(Duration::from_secs(10), async || matches!(
            echo_once(web, b"back").await.as_deref(),
            Ok(b"back")
        ))
        .await,
        "recovers after EMFILE"
    );
    let (_, m) = http_get(admin, "/metrics").await;
    assert_eq!(
        metric(&m, "wao_lb_fd_budget{part=\"pool\"}"),
        Some(48.0),
        "{m}"
    );
    lb.signal("TERM");
    assert!(lb.wait_exit(Duration::from_secs(10)).is_some());
}

/// `proxy.connectionLogSample: 1` logs every closed connection on its own target, as JSON
/// with the service, client, backend, node, what selected it, share, bytes each way and
/// duration; at the
/// default (0) none is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_connections_are_logged_when_they_close() {
    let echo = echo_server().await;
    let dir = TempDir::new("connlog");
    let run = |sample: &str| {
        let frontend = free_addr();
        let yaml = format!(
            "admin: {{listen: 127.0.0.1:0}}\nproxy: {{connectionLogSample: {sample}}}\nservices:\n{}",
            service_yaml("web", "tcp", frontend, &[(echo.addr, "n1")])
        );
        let config = dir.file(&format!("lb-{sample}.yaml"), &yaml);
        let log = std::fs::File::create(dir.0.join(format!("log-{sample}"))).expect("log file");
        (Process::run_logging(&config, log), frontend)
    };
    for sample in ["1", "0"] {
        let (mut lb, frontend) = run(sample);
        assert!(accepts_within(frontend, Duration::from_secs(10)).await);
        for i in 0..3 {
            let payload = format!("hello {i}");
            assert_eq!(
                echo_once(frontend, payload.as_bytes()).await.unwrap(),
                payload.as_bytes()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        lb.signal("TERM");
        assert!(lb.wait_exit(Duration::from_secs(10)).is_some());
        let text = std::fs::read_to_string(dir.0.join(format!("log-{sample}"))).expect("log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["target"] == "wao_lb::connections")
            .collect();
        if sample == "0" {
            assert!(lines.is_empty(), "{text}");
            continue;
        }
        // Three echoes, plus the readiness probe's connection above.
        assert!(lines.len() >= 3, "{text}");
        let f = &lines[lines.len() - 1]["fields"];
        assert_eq!(f["service"], "web");
        assert_eq!(f["backend"], echo.addr.to_string());
        assert_eq!(f["node"], "n1");
        assert_eq!(f["selected_by"], "service web", "what chose the backend");
        assert_eq!(f["share"], 1.0);
        assert_eq!(f["bytes_upstream"], 7);
        assert_eq!(f["bytes_downstream"], 7);
        assert!(
            f["duration_ms"].is_u64()
                && f["client"].as_str().is_some_and(|c| c.starts_with("127."))
        );
        assert_eq!(f["ending"], "Closed");
    }
}

/// A cgroup of the `cpu` controller (v2 if it has one, else v1) limited to `cpus` CPUs;
/// removed on drop.
struct CpuCgroup(std::path::PathBuf);

impl CpuCgroup {
    fn limited_to(cpus: u32) -> CpuCgroup {
        let name = format!("wao-lb-test-{}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let v2_cpu = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let dir = if v2_cpu {
            let dir = v2.join(&name);
            std::fs::create_dir_all(&dir).expect("create a v2 cgroup (root)");
            std::fs::write(dir.join("cpu.max"), format!("{} 100000", cpus * 100_000))
                .expect("cpu.max");
            dir
        } else {
            let dir = v2.join("cpu").join(&name);
            std::fs::create_dir_all(&dir).expect("create a v1 cpu cgroup (root)");
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("period");
            std::fs::write(dir.join("cpu.cfs_quota_us"), (cpus * 100_000).to_string())
                .expect("quota");
            dir
        };
        CpuCgroup(dir)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn workers(admin: SocketAddr) -> Option<f64> {
    let (_, m) = http_get(admin, "/metrics").await;
    metric(&m, "wao_lb_workers")
}

/// The runtime's threads follow `proxy.workers`, else the CPU quota of the process's
/// cgroup (a DaemonSet's CPU limit), not the node's core count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_follow_the_config_else_the_cgroup_cpu_quota() {
    let echo = echo_server().await;
    let dir = TempDir::new("workers");
    let one = |web| service_yaml("web", "tcp", web, &[(echo.addr, "a")]);

    // Set: exactly that many, whatever the machine.
    let admin = free_addr();
    let text = format!(
        "admin: {{listen: \"{admin}\"}}\nproxy: {{workers: 3}}\nservices:\n{}",
        one(free_addr())
    );
    let mut lb = Process::run(&dir.file("set.yaml", &text));
    assert!(admin_up(admin).await);
    assert_eq!(workers(admin).await, Some(3.0));
    lb.signal("TERM");
    assert!(lb.wait_exit(Duration::from_secs(10)).is_some());

    // Unset, in a cgroup limited to one CPU on a machine with more: one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cores >= 2, "this test needs a machine with at least 2 CPUs");
    let cgroup = CpuCgroup::limited_to(1);
    let admin = free_addr();
    let path = dir.file("unset.yaml", &config_text(admin, &one(free_addr())));
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {BIN} run --config {}",
        cgroup.0.display(),
        path.display()
    );
    let mut lb = Process::run_under("sh", &["-c", &script]);
    assert!(admin_up(admin).await);
    assert_eq!(workers(admin).await, Some(1.0));
    lb.signal("TERM");
    assert!(lb.wait_exit(Duration::from_secs(10)).is_some());
    drop(cgroup);

    // Unset, outside: every CPU.
    let admin = free_addr();
    let path = dir.file("free.yaml", &config_text(admin, &one(free_addr())));
    let mut lb = Process::run(&path);
    assert!(admin_up(admin).await);
    assert_eq!(workers(admin).await, Some(cores as f64));
    lb.signal("TERM");
    assert!(lb.wait_exit(Duration::from_secs(10)).is_some());
}
