//! The kube-scale scenario: wao-lb in Kubernetes mode, transparent, against the tests' API
//! server (`tests/common/apiserver.rs`, included here) holding many opted-in Services, each
//! with one EndpointSlice of several endpoints. It measures the first full sync (start to
//! `/readyz` green), the RSS growth per endpoint over an idle wao-lb, the `/metrics` size,
//! and how long one EndpointSlice change takes to reach new connections while every other
//! Service stays as it is.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::measure::{admin_get, rss_kib};
use crate::targets::{free_addr, spawn, stop_gracefully, Proto, Setup};

#[allow(dead_code)]
#[path = "../../../tests/common/apiserver.rs"]
mod apiserver;

use apiserver::{ApiServer, Kind};

#[derive(Debug, Clone)]
pub struct Sizes {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub changes: usize,
}

impl Sizes {
    pub fn new(services: usize) -> Sizes {
        Sizes {
            services: services.max(1),
            endpoints_per_service: 5,
            changes: 50,
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            services: 200,
            endpoints_per_service: 5,
            changes: 5,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub services: usize,
    pub endpoints: usize,
    pub first_sync_seconds: f64,
    pub idle_rss_kib: u64,
    pub synced_rss_kib: u64,
    pub rss_kib_per_endpoint: f64,
    pub metrics_series: usize,
    pub metrics_bytes: usize,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
    pub changes: usize,
}

impl Report {
    pub fn table(&self) -> String {
        format!(
            "== kube-scale: {} Services, {} endpoints, transparent mode\n\
             first full sync to /readyz: {:.2} s\n\
             RSS: {} KiB idle, {} KiB synced: {:.2} KiB per endpoint\n\
             /metrics: {} series, {} bytes\n\
             EndpointSlice change to new connections: p50 {:.1} ms, p99 {:.1} ms over {} changes\n",
            self.services,
            self.endpoints,
            self.first_sync_seconds,
            self.idle_rss_kib,
            self.synced_rss_kib,
            self.rss_kib_per_endpoint,
            self.metrics_series,
            self.metrics_bytes,
            self.change_p50_ms,
            self.change_p99_ms,
            self.changes
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Service `i`'s VIP: on loopback (127.77.0.0/16), where the node's own connections reach
/// wao-lb's redirect rules.
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn service(i: usize) -> Value {
    json!({"metadata": {"namespace": "scale", "name": format!("svc{i}"),
                        "labels": {"service.kubernetes.io/service-proxy-name": "wao-loadbalancer"}},
           "spec": {"type": "ClusterIP", "clusterIP": vip(i).to_string(), "clusterIPs": [vip(i).to_string()],
                    "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}})
}

fn slice(i: usize, addresses: &[IpAddr], port: u16) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .enumerate()
        .map(|(k, a)| {
            json!({"addresses": [a.to_string()], "nodeName": format!("n{}", k % 3),
                             "conditions": {"ready": true}})
        })
        .collect();
    json!({"metadata": {"namespace": "scale", "name": format!("svc{i}-a"),
                        "labels": {"kubernetes.io/service-name": format!("svc{i}"),
                                   "service.kubernetes.io/service-proxy-name": "wao-loadbalancer"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// wao-lb on `api` with its admin API at `admin`; returns the child and the seconds from
/// start to `/readyz` green.
async fn start_lb(
    setup: &Setup,
    api: &ApiServer,
    admin: SocketAddr,
    tag: &str,
) -> std::io::Result<(std::process::Child, f64)> {
    let kubeconfig = api.kubeconfig(&setup.work);
    let config = setup.work.join(format!("kube-scale-{tag}.yaml"));
    let ports = (
        free_addr(Ipv4Addr::LOCALHOST, Proto::Tcp)?.port(),
        free_addr(Ipv4Addr::LOCALHOST, Proto::Tcp)?.port(),
    );
    std::fs::write(
        &config,
        format!(
            "admin: {{listen: \"{admin}\"}}\nredirect: tproxy\ntproxy: {{port: {}, localPort: {}}}\n\
             discovery:\n  kubernetes: {{nodeName: n0, kubeconfig: \"{}\"}}\n",
            ports.0,
            ports.1,
            kubeconfig.display()
        ),
    )?;
    let log = setup.work.join(format!("kube-scale-{tag}.log"));
    let config = config.to_string_lossy().into_owned();
    let started = Instant::now();
    let mut child = spawn(
        setup,
        &setup.wao_lb.to_string_lossy(),
        &["run", "--config", &config],
        &log,
    )
    .map_err(|s| std::io::Error::other(s.0))?;
    loop {
        if admin_get(admin, "/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            return Ok((child, started.elapsed().as_secs_f64()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(std::io::Error::other(format!(
                "wao-lb exited ({status}); see {}",
                log.display()
            )));
        }
        if started.elapsed() > Duration::from_secs(120) {
            stop_gracefully(&mut child);
            return Err(std::io::Error::other("wao-lb was not ready within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An echo "pod" at `ip:port` counting its connections.
async fn pod(ip: Ipv4Addr, port: u16) -> std::io::Result<Arc<AtomicU64>> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(count)
}

pub async fn run(setup: &Setup, sizes: &Sizes) -> std::io::Result<Report> {
    // An idle wao-lb (no Services) for the RSS baseline.
    let admin = free_addr(Ipv4Addr::LOCALHOST, Proto::Tcp)?;
    let empty = ApiServer::start().await;
    empty.put(Kind::Node, json!({"metadata": {"name": "n0"}}));
    let (mut idle, _) = start_lb(setup, &empty, admin, "idle").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(idle.id()).unwrap_or(0);
    stop_gracefully(&mut idle);
    drop(empty);

    // The probe Service (0) has real pods; the others have addresses nothing serves.
    let (a, b) = (Ipv4Addr::new(127, 0, 81, 1), Ipv4Addr::new(127, 0, 81, 2));
    let port = free_addr(a, Proto::Tcp)?.port();
    let counts = [pod(a, port).await?, pod(b, port).await?];
    let api = ApiServer::start().await;
    api.put(Kind::Node, json!({"metadata": {"name": "n0"}}));
    let per = sizes.endpoints_per_service;
    for i in 0..sizes.services {
        api.put(Kind::Service, service(i));
        let addresses: Vec<IpAddr> = if i == 0 {
            vec![a.into()]
        } else {
            (0..per)
                .map(|k| {
                    IpAddr::V4(Ipv4Addr::new(
                        10,
                        (i / 250) as u8,
                        (i % 250) as u8,
                        k as u8 + 1,
                    ))
                })
                .collect()
        };
        api.put(Kind::EndpointSlice, slice(i, &addresses, port));
    }
    let admin = free_addr(Ipv4Addr::LOCALHOST, Proto::Tcp)?;
    let (mut lb, first_sync) = start_lb(setup, &api, admin, "synced").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let synced_rss = rss_kib(lb.id()).unwrap_or(0);
    let metrics = admin_get(admin, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let series = metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();

    // One Service's slice flips between two pods; every other Service stays.
    let frontend = SocketAddr::new(vip(0).into(), 80);
    let mut took = Vec::new();
    for n in 0..sizes.changes {
        let (to, count) = if n % 2 == 0 {
            (b, &counts[1])
        } else {
            (a, &counts[0])
        };
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = count.load(Ordering::Relaxed);
        let changed = Instant::now();
        api.put(Kind::EndpointSlice, slice(0, &[to.into()], port));
        loop {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(frontend)).await
            {
                let _ = s.write_all(b"x").await;
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut byte)).await;
            }
            if count.load(Ordering::Relaxed) > before {
                took.push(changed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if changed.elapsed() > Duration::from_secs(30) {
                stop_gracefully(&mut lb);
                return Err(std::io::Error::other(format!(
                    "change {n} was not followed within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop_gracefully(&mut lb);
    took.sort_by(f64::total_cmp);
    let at = |q: f64| {
        took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    let endpoints = (sizes.services - 1) * per + 1;
    Ok(Report {
        services: sizes.services,
        endpoints,
        first_sync_seconds: first_sync,
        idle_rss_kib: idle_rss,
        synced_rss_kib: synced_rss,
        rss_kib_per_endpoint: synced_rss.saturating_sub(idle_rss) as f64 / endpoints as f64,
        metrics_series: series,
        metrics_bytes: metrics.len(),
        change_p50_ms: at(0.5),
        change_p99_ms: at(0.99),
        changes: took.len(),
    })
}
