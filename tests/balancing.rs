//! Backends are chosen by weight: shares follow the weights, weight 0 gets nothing, a dead
//! backend costs no client a failure, ClientIP affinity sticks. Counted at real backends.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tokio::sync::Semaphore;

/// Sends `n` connections through `frontend`, `CONCURRENCY` at a time; all must echo.
async fn connections(frontend: SocketAddr, n: usize) {
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let payload = format!("request {i}");
            let back = echo_once(frontend, payload.as_bytes()).await;
            drop(permit);
            (i, back.map(|b| b == payload.as_bytes()))
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("task");
        assert!(matches!(r, Ok(true)), "connection {i}: {r:?}");
    }
}

/// A config with one TCP service whose backends' nodes have fixed weights.
fn weighted_yaml(frontend: SocketAddr, backends: &[(SocketAddr, &str, f64)]) -> String {
    let list: Vec<(SocketAddr, &str)> = backends.iter().map(|(a, n, _)| (*a, *n)).collect();
    let mut yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}nodes:\n",
        service_yaml("web", "tcp", frontend, &list)
    );
    for (_, node, w) in backends {
        yaml.push_str(&format!("  {node}: {{weight: {w}}}\n"));
    }
    yaml
}

/// Echo backends on nodes a, b, c… with these fixed weights, behind a started wao-lb.
async fn weighted(weights: &[f64]) -> (Vec<Echo>, SocketAddr, wao_lb::app::Running) {
    let mut echoes = Vec::new();
    for _ in weights {
        echoes.push(echo_server().await);
    }
    let names = ["a", "b", "c", "d"];
    let list: Vec<(SocketAddr, &str, f64)> = echoes
        .iter()
        .zip(names)
        .zip(weights)
        .map(|((e, n), w)| (e.addr, n, *w))
        .collect();
    let frontend: SocketAddr = free_addr();
    let lb = start(&weighted_yaml(frontend, &list)).await;
    (echoes, frontend, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_follow_weights_1_2_7() {
    let (echoes, frontend, lb) = weighted(&[1.0, 2.0, 7.0]).await;
    connections(frontend, 10_000).await;
    let counts: Vec<u64> = echoes.iter().map(Echo::count).collect();
    assert_eq!(counts.iter().sum::<u64>(), 10_000);
    // Binomial σ is at most 46 connections here; ±200 is over 4σ, and uniform picking
    // (3,333 each) misses every band by more than 1,300.
    for (count, expect) in counts.iter().zip([1_000u64, 2_000, 7_000]) {
        assert!(
            count.abs_diff(expect) <= 200,
            "counts {counts:?}, expected 1000/2000/7000"
        );
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_gets_nothing() {
    let (echoes, frontend, lb) = weighted(&[1.0, 0.0, 1.0]).await;
    connections(frontend, 2_000).await;
    assert_eq!(echoes[1].count(), 0, "weight 0 backend got traffic");
    assert!(echoes[0].count() > 800 && echoes[2].count() > 800);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_weights_zero_falls_back_to_uniform() {
    let (echoes, frontend, lb) = weighted(&[0.0, 0.0]).await;
    connections(frontend, 1_000).await;
    assert!(
        echoes[0].count() > 400 && echoes[1].count() > 400,
        "not black-holed"
    );
    lb.stop().await;
}

/// One live backend of four, the dead ones weighted most: by default a connection tries
/// every backend, so no client fails, and passive ejection makes each dead backend cost a
/// few failed connects, not one per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_backends_fail_no_client_and_are_ejected() {
    let live = echo_server().await;
    let dead = [closed_port_addr(), closed_port_addr(), closed_port_addr()];
    let frontend: SocketAddr = free_addr();
    let yaml = weighted_yaml(
        frontend,
        &[
            (dead[0], "d0", 5.0),
            (dead[1], "d1", 5.0),
            (dead[2], "d2", 5.0),
            (live.addr, "a", 1.0),
        ],
    );
    let lb = start(&yaml).await;
    connections(frontend, 1_000).await;
    assert_eq!(live.count(), 1_000);
    let m = lb.metrics_text();
    let mut failures = 0.0;
    for d in dead {
        let series = format!("backend=\"{d}\",service=\"web\"");
        let f = metric(
            &m,
            &format!("wao_lb_backend_connect_failures_total{{{series}}}"),
        )
        .unwrap_or(0.0);
        let ejected =
            metric(&m, &format!("wao_lb_backend_ejections_total{{{series}}}")).unwrap_or(0.0);
        assert!(
            f >= 1.0 && ejected >= 1.0,
            "{d}: {f} failures, {ejected} ejections"
        );
        failures += f;
    }
    let retries = metric(&m, "wao_lb_connect_retries_total{service=\"web\"}").unwrap_or(0.0);
    assert_eq!(failures, retries, "every failure was retried elsewhere");
    // Without ejection 15/16 of the connections try a dead backend first (~940 failures);
    // with it, only those in flight before the first failure returns, and one per back-off.
    assert!(
        failures < 250.0,
        "{failures} failed connects for 1000 connections"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backends_refuses_at_once() {
    let frontend: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}",
        service_yaml("empty", "tcp", frontend, &[])
    );
    let lb = start(&yaml).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(2), echo_once(frontend, b"x"))
        .await
        .expect("refused at once, not left hanging");
    assert!(
        r.is_err(),
        "a service without backends must not answer: {r:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_sticks_to_one_backend() {
    let echoes = [
        echo_server().await,
        echo_server().await,
        echo_server().await,
    ];
    let frontend: SocketAddr = free_addr();
    let list: Vec<(SocketAddr, &str)> = echoes.iter().map(|e| (e.addr, "n")).collect();
    let service = service_yaml("sticky", "tcp", frontend, &list).replace(
        "    backends:",
        "    sessionAffinity: {type: ClientIP, timeout: 10m}\n    backends:",
    );
    let lb = start(&format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{service}"
    ))
    .await;
    connections(frontend, 300).await;
    let counts: Vec<u64> = echoes.iter().map(Echo::count).collect();
    assert_eq!(
        counts.iter().filter(|c| **c > 0).count(),
        1,
        "one client IP, one backend: {counts:?}"
    );
    // The weights view says why picks do not follow shares.
    let rows = lb.weights();
    assert!(
        rows.iter().all(|r| r.affinity_seconds == Some(600)),
        "{rows:?}"
    );
    let table = wao_lb::telemetry::weights_view::render_table(&rows);
    assert!(table.contains("ClientIP affinity 600s"), "{table}");
    lb.stop().await;
}

/// A listener that completes no handshake: its one-slot accept queue is full and never
/// drained, so the kernel drops new SYNs, as a hung host does. Returns it and the queued
/// connections (keep both alive).
async fn hung_backend() -> (socket2::Socket, Vec<tokio::net::TcpStream>) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    let mut queued = Vec::new();
    while let Ok(Ok(s)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        queued.push(s);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (socket, queued)
}

/// Health checks take a hung backend (SYNs dropped) out of the split and bring it back when
/// it answers again; the weights view and the metrics show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_hung_backend_out_and_back() {
    let live = echo_server().await;
    let (hung, queued) = hung_backend().await;
    let hung_addr = hung.local_addr().expect("addr").as_socket().expect("inet");
    let frontend: SocketAddr = free_addr();
    let yaml = weighted_yaml(frontend, &[(live.addr, "a", 1.0), (hung_addr, "b", 1.0)]).replace(
        "    backends:",
        "    healthCheck: {interval: 500ms, timeout: 400ms, rise: 2, fall: 2}\n    backends:",
    );
    let lb = start(&yaml).await;
    let row = |lb: &wao_lb::app::Running, addr: SocketAddr| {
        lb.weights()
            .into_iter()
            .find(|r| r.backend == addr.to_string())
            .expect("row")
    };
    let within = std::time::Duration::from_secs(30);
    assert!(
        eventually(within, async || row(&lb, hung_addr).health.as_deref()
            == Some("down"))
        .await,
        "the hung backend is marked down: {:?}",
        lb.weights()
    );
    let down = row(&lb, hung_addr);
    assert_eq!(down.share, 0.0);
    assert!(down.reason.contains("timed out after 400ms"), "{down:?}");
    assert_eq!(row(&lb, live.addr).share, 1.0);
    assert_eq!(row(&lb, live.addr).health.as_deref(), Some("up"));
    let table = wao_lb::telemetry::weights_view::render_table(&lb.weights());
    assert!(
        table.contains("HEALTH") && table.contains("down"),
        "{table}"
    );
    let m = lb.metrics_text();
    let series = format!("backend=\"{hung_addr}\",service=\"web\"");
    assert_eq!(
        metric(&m, &format!("wao_lb_backend_up{{{series}}}")),
        Some(0.0)
    );
    let failed = format!(
        "wao_lb_health_checks_total{{backend=\"{hung_addr}\",result=\"failure\",service=\"web\"}}"
    );
    assert!(metric(&m, &failed).unwrap_or(0.0) >= 2.0, "{m}");

    // While it is down, new connections go only to the live backend.
    let picks = |lb: &wao_lb::app::Running| row(lb, hung_addr).picks;
    let before = picks(&lb);
    connections(frontend, 200).await;
    assert_eq!(picks(&lb), before, "a down backend gets no picks");

    // The host answers again: two passing checks bring it back into the split.
    drop(queued);
    drop(hung);
    let revived = tokio::net::TcpListener::bind(hung_addr)
        .await
        .expect("rebind");
    tokio::spawn(async move { while revived.accept().await.is_ok() {} });
    assert!(
        eventually(within, async || row(&lb, hung_addr).health.as_deref()
            == Some("up"))
        .await,
        "the backend comes back: {:?}",
        lb.weights()
    );
    assert_eq!(row(&lb, hung_addr).share, 0.5);
    let m = lb.metrics_text();
    assert_eq!(
        metric(&m, &format!("wao_lb_backend_up{{{series}}}")),
        Some(1.0)
    );
    lb.stop().await;
}
