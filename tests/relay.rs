//! The relay moves every byte exactly: many concurrent TCP connections with random payloads,
//! half-close, reset propagation, and UDP datagrams of many sizes. Real sockets on loopback.

mod common;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn checksum(bytes: &[u8]) -> (usize, u64) {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    (bytes.len(), h.finish())
}

/// Sizes from 1 B to 4 MiB, log-uniform so every order of magnitude is covered, with both
/// ends always present.
fn payload_size(i: usize, rng: &mut SmallRng) -> usize {
    match i {
        0 => 1,
        1 => 4 << 20,
        _ => (2f64.powf(rng.random_range(0.0..22.0)) as usize).clamp(1, 4 << 20),
    }
}

async fn tcp_balancer(backends: &[SocketAddr]) -> (wao_lb::app::Running, SocketAddr) {
    tcp_balancer_with("{}", "echo", backends).await
}

/// A balancer with one TCP service `name` and the `proxy:` settings given as YAML.
async fn tcp_balancer_with(
    proxy: &str,
    name: &str,
    backends: &[SocketAddr],
) -> (wao_lb::app::Running, SocketAddr) {
    let frontend: SocketAddr = free_addr();
    let list: Vec<(SocketAddr, &str)> = backends.iter().map(|b| (*b, "n")).collect();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nproxy: {proxy}\nservices:\n{}",
        service_yaml(name, "tcp", frontend, &list)
    );
    (start(&yaml).await, frontend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_are_byte_exact() {
    let echo = echo_server().await;
    let (lb, frontend) = tcp_balancer(&[echo.addr]).await;
    let mut rng = SmallRng::seed_from_u64(2026);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let size = payload_size(i, &mut rng);
        let seed = rng.next_u64();
        tasks.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            SmallRng::seed_from_u64(seed).fill_bytes(&mut payload);
            let back = echo_once(frontend, &payload).await?;
            Ok::<_, std::io::Error>((checksum(&payload), checksum(&back)))
        }));
    }
    let mut total = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (sent, got) = t
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", lb.metrics_text()));
        assert_eq!(
            sent,
            got,
            "connection {i}: echo differs\n{}",
            lb.metrics_text()
        );
        total += sent.0;
    }
    assert_eq!(echo.count(), 1000);
    let metrics = lb.metrics_text();
    let up = metric(
        &metrics,
        "wao_lb_relayed_bytes_total{direction=\"upstream\",service=\"echo\"}",
    );
    assert_eq!(up, Some(total as f64), "upstream bytes counted");
    let spliced = metric(&metrics, "wao_lb_splice_connections_total").unwrap_or(0.0);
    assert!(spliced > 0.0, "bulky connections switch to splice");
    lb.stop().await;
}

/// A backend that reads the whole request (until the client's FIN), then answers with
/// `reply_len` bytes and closes.
async fn read_all_then_reply(reply_len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_ok() {
                    let reply: Vec<u8> = (0..reply_len).map(|i| (i % 251) as u8).collect();
                    let _ = s.write_all(&reply).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let backend = read_all_then_reply(3 << 20).await;
    let (lb, frontend) = tcp_balancer(&[backend]).await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(frontend).await.expect("connect");
        s.write_all(b"request").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .await
            .expect("read reply after half-close");
        assert_eq!(reply.len(), 3 << 20);
        assert!(reply.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_reaches_the_client_as_reset() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 5];
            let _ = s.read_exact(&mut b).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let (lb, frontend) = tcp_balancer(&[backend]).await;
    let mut s = TcpStream::connect(frontend).await.expect("connect");
    s.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no hang");
    let err = r.expect_err("a reset, not a clean end of stream");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_of_every_size_echo_exactly() {
    let backend = udp_echo_server().await;
    let frontend: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}",
        service_yaml("udp-echo", "udp", frontend, &[(backend, "n")])
    );
    let lb = start(&yaml).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    client.connect(frontend).await.expect("connect");
    let mut rng = SmallRng::seed_from_u64(9);
    let mut buf = vec![0u8; 70_000];
    for size in [0usize, 1, 2, 100, 512, 1400, 1500, 9000, 32_768, 65_507] {
        let mut payload = vec![0u8; size];
        rng.fill_bytes(&mut payload);
        client.send(&payload).await.expect("send");
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("reply to a {size}-byte datagram"))
            .expect("recv");
        assert_eq!(&buf[..n], &payload[..], "{size}-byte datagram");
    }
    let m = lb.metrics_text();
    assert_eq!(
        metric(&m, "wao_lb_udp_sessions_total{service=\"udp-echo\"}"),
        Some(1.0)
    );
    lb.stop().await;
}

/// One datagram out and its echo back, or None after 500 ms.
async fn ask(c: &UdpSocket, buf: &mut [u8]) -> Option<usize> {
    c.send(b"ping").await.ok()?;
    tokio::time::timeout(Duration::from_millis(500), c.recv(buf))
        .await
        .ok()?
        .ok()
}

async fn udp_client(frontend: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    c.connect(frontend).await.expect("connect");
    c
}

/// At the cap, a new flow is dropped while every session is active; once the sessions idle,
/// the least recently active one makes room instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_session_cap_keeps_active_flows_and_evicts_idle_ones() {
    let backend = udp_echo_server().await;
    let frontend: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nudp: {{maxSessions: 2}}\nservices:\n{}",
        service_yaml("capped", "udp", frontend, &[(backend, "n")])
    );
    let lb = start(&yaml).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(udp_client(frontend).await);
    }
    let mut buf = [0u8; 64];
    assert_eq!(ask(&clients[0], &mut buf).await, Some(4));
    assert_eq!(ask(&clients[1], &mut buf).await, Some(4));
    assert_eq!(
        ask(&clients[2], &mut buf).await,
        None,
        "third flow is over the cap"
    );
    assert_eq!(
        ask(&clients[0], &mut buf).await,
        Some(4),
        "existing flow still works"
    );
    let m = lb.metrics_text();
    let dropped = metric(&m, "wao_lb_udp_datagrams_dropped_total{service=\"capped\"}");
    assert_eq!(dropped, Some(1.0));

    // Both sessions fall idle; the new flow takes the place of the least recent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ask(&clients[2], &mut buf).await, Some(4), "room was made");
    let m = lb.metrics_text();
    assert_eq!(metric(&m, "wao_lb_udp_sessions_evicted_total"), Some(1.0));
    assert_eq!(
        metric(&m, "wao_lb_udp_sessions_active{service=\"capped\"}"),
        Some(2.0)
    );
    lb.stop().await;
}

/// DNS-style traffic, a new source port per query: with `udp.responses: 1` each flow ends
/// with its answer, so 60 queries pass a cap of 4 sessions with none held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_end_after_their_responses() {
    let backend = udp_echo_server().await;
    let frontend: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nudp: {{maxSessions: 4}}\nservices:\n{}    udp: {{responses: 1}}\n",
        service_yaml("dns", "udp", frontend, &[(backend, "n")])
    );
    let lb = start(&yaml).await;
    let mut buf = [0u8; 64];
    let mut answered = 0;
    for _ in 0..60 {
        let c = udp_client(frontend).await;
        for _try in 0..3 {
            if ask(&c, &mut buf).await == Some(4) {
                answered += 1;
                break;
            }
        }
    }
    assert_eq!(answered, 60);
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &lb.metrics_text(),
            "wao_lb_udp_sessions_active{service=\"dns\"}"
        ) == Some(0.0))
        .await,
        "no flow is held after its answer"
    );
    lb.stop().await;
}

/// A dead UDP backend answers with ICMP port unreachable: that counts as a failure, ejects
/// it, and the client's next datagram goes to the live backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_udp_backend_is_ejected() {
    let live = udp_echo_server().await;
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr")
    };
    let frontend: SocketAddr = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\nservices:\n{}",
        service_yaml("dns", "udp", frontend, &[(live, "a"), (dead, "b")])
    );
    let lb = start(&yaml).await;
    let mut buf = [0u8; 64];
    let mut tries = 0;
    for _ in 0..40 {
        let c = udp_client(frontend).await;
        let mut answered = false;
        for _try in 0..5 {
            tries += 1;
            if ask(&c, &mut buf).await == Some(4) {
                answered = true;
                break;
            }
        }
        assert!(answered, "every client reaches the live backend");
    }
    let m = lb.metrics_text();
    let dead_label = format!("backend=\"{dead}\",service=\"dns\"");
    let failures = metric(
        &m,
        &format!("wao_lb_backend_connect_failures_total{{{dead_label}}}"),
    )
    .unwrap_or(0.0);
    let ejections = metric(
        &m,
        &format!("wao_lb_backend_ejections_total{{{dead_label}}}"),
    )
    .unwrap_or(0.0);
    assert!(failures >= 1.0 && ejections >= 1.0, "{m}");
    // Half the flows would be lost without ejection; with it, the dead backend costs a
    // few datagrams, one per back-off.
    assert!(tries < 40 + 20, "{tries} datagrams for 40 answers");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let echo = echo_server().await;
    let (lb, frontend) = tcp_balancer_with("{idleTimeout: 300ms}", "echo", &[echo.addr]).await;
    let mut s = TcpStream::connect(frontend).await.expect("connect");
    s.write_all(b"x").await.expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("echo");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("closed in time");
    assert!(r.is_err() || r.is_ok_and(|n| n == 0), "connection closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
    lb.stop().await;
}

/// A backend that reads everything and never answers or closes. It reports how each
/// connection's reading ended: "clean end of stream", or the error kind.
async fn silent_sink() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (ended_tx, ended_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let ending = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break "clean end of stream".to_string(),
                        Ok(_) => continue,
                        Err(e) => break format!("{:?}", e.kind()),
                    }
                };
                let _ = ended_tx.send(ending);
            });
        }
    });
    (addr, ended_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_of_a_spliced_connection_that_idles_out_are_counted() {
    let (sink, _endings) = silent_sink().await;
    let proxy = "{idleTimeout: 500ms, spliceAfterBytes: 1024}";
    let (lb, frontend) = tcp_balancer_with(proxy, "sink", &[sink]).await;
    let mut s = TcpStream::connect(frontend).await.expect("connect");
    let payload = vec![7u8; 1 << 20];
    s.write_all(&payload).await.expect("write 1 MiB");
    // The connection now idles out; the relay resets both sides.
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("idle timeout ends the connection");
    assert!(r.is_err(), "reset, not a clean close: {r:?}");
    let series = "wao_lb_relayed_bytes_total{direction=\"upstream\",service=\"sink\"}";
    let counted = eventually(Duration::from_secs(5), async || {
        metric(&lb.metrics_text(), series) == Some(payload.len() as f64)
    })
    .await;
    let text = lb.metrics_text();
    assert!(counted, "{series} should be {}:\n{text}", payload.len());
    assert_eq!(
        metric(&text, "wao_lb_splice_connections_total"),
        Some(1.0),
        "{text}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_at_the_drain_deadline_are_reset_both_ways() {
    // The backend reads part of an upload and then waits; it reports how its read ended.
    let (backend, mut endings) = silent_sink().await;
    let (lb, frontend) = tcp_balancer_with("{drainTimeout: 300ms}", "upload", &[backend]).await;
    let mut client = TcpStream::connect(frontend).await.expect("connect");
    client
        .write_all(b"the first part of an upload")
        .await
        .expect("write");
    let stopping = tokio::spawn(lb.stop());
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(10), client.read(&mut b))
        .await
        .expect("the deadline ends the connection");
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the client sees a reset, not an end of stream that looks like a complete reply"
    );
    let backend_saw = tokio::time::timeout(Duration::from_secs(10), endings.recv())
        .await
        .expect("the backend's read ends")
        .expect("backend task");
    assert_eq!(
        backend_saw, "ConnectionReset",
        "the backend sees a reset, not a truncated upload that looks complete"
    );
    stopping.await.expect("stop");
}
