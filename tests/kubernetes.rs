//! Kubernetes mode against the test API server (`common/apiserver.rs`), driven by the real
//! client (kube-rs) through a generated kubeconfig: opted-in Services over every
//! EndpointSlice, opting out, terminating endpoints, and an API server that goes away and
//! comes back compacted. Out-of-cluster mode (`redirect: listen`): wao-lb binds the
//! ClusterIPs and balances straight to the pod addresses.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::apiserver::{ApiServer, Kind};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPT_IN: &str = "service.kubernetes.io/service-proxy-name";

/// Echo "pods" on distinct loopback addresses that share one port, as pods of a
/// Deployment do; each counts its connections.
struct Pods {
    port: u16,
    counts: BTreeMap<IpAddr, Arc<AtomicU64>>,
}

impl Pods {
    async fn start(ips: &[&str]) -> Pods {
        let first: IpAddr = ips[0].parse().unwrap();
        let port = std::net::TcpListener::bind((first, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut counts = BTreeMap::new();
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            let listener = tokio::net::TcpListener::bind((ip, port))
                .await
                .expect("bind pod");
            counts.insert(ip, echo_on(listener));
        }
        Pods { port, counts }
    }

    fn count(&self, ip: &str) -> u64 {
        self.counts[&ip.parse::<IpAddr>().unwrap()].load(Ordering::Relaxed)
    }
}

fn node(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn service(name: &str, vip: SocketAddr, opted_in: bool) -> Value {
    let labels = if opted_in {
        json!({OPT_IN: "wao-loadbalancer"})
    } else {
        json!({})
    };
    json!({"metadata": {"namespace": "shop", "name": name, "labels": labels},
           "spec": {"type": "ClusterIP", "clusterIP": vip.ip().to_string(),
                    "clusterIPs": [vip.ip().to_string()],
                    "ports": [{"name": "http", "port": vip.port(), "targetPort": "web", "protocol": "TCP"}]}})
}

/// An EndpointSlice of `service` with one endpoint per (ip, node, state) at `port`.
fn slice(service: &str, name: &str, port: u16, endpoints: &[(&str, &str, &str)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, state)| {
            let conditions = match *state {
                "terminating" => json!({"ready": false, "serving": true, "terminating": true}),
                _ => json!({"ready": true, "serving": true, "terminating": false}),
            };
            json!({"addresses": [ip], "nodeName": node, "conditions": conditions})
        })
        .collect();
    json!({"metadata": {"namespace": "shop", "name": name,
                        "labels": {"kubernetes.io/service-name": service, OPT_IN: "wao-loadbalancer"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// wao-lb in Kubernetes mode for node n1 against `api`.
async fn start_lb(api: &ApiServer, dir: &TempDir) -> wao_lb::app::Running {
    let kubeconfig = api.kubeconfig(&dir.0);
    start(&format!(
        "admin: {{listen: 127.0.0.1:0}}\ndiscovery:\n  kubernetes: {{nodeName: n1, minSyncPeriod: 100ms, kubeconfig: \"{}\"}}\n",
        kubeconfig.display()
    ))
    .await
}

/// The weights row of the backend on `node`.
fn row_of(lb: &wao_lb::app::Running, node: &str) -> wao_lb::telemetry::weights_view::WeightRow {
    lb.weights()
        .into_iter()
        .find(|r| r.node == node)
        .unwrap_or_else(|| panic!("no row for {node}: {:?}", lb.weights()))
}

/// WAO's setting for node n1 (16 cores, `usage` CPU in metrics.k8s.io, the NodeConfig CRD
/// with one NodeConfig: Fake inlet and ΔP, `predictor`) and Service shop/web with one pod
/// on n1 and one on n2, which has no NodeConfig. Returns the Service's VIP.
fn node_config_cluster(api: &ApiServer, pods: &Pods, usage: &str, predictor: Value) -> SocketAddr {
    let vip = free_addr();
    api.install_node_config_crd();
    let mut n1 = node("n1", "127.0.60.1");
    n1["status"]["capacity"] = json!({"cpu": "16"});
    api.put(Kind::Node, n1);
    api.put(
        Kind::NodeMetrics,
        json!({"metadata": {"name": "n1"}, "usage": {"cpu": usage}}),
    );
    api.put(Kind::NodeConfig, json!({"metadata": {"namespace": "wao-system", "name": "n1",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n1",
            "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
            "predictor": {"powerConsumption": predictor}}}));
    api.put(Kind::Service, service("web", vip, true));
    let ips: Vec<String> = pods.counts.keys().map(|ip| ip.to_string()).collect();
    api.put(
        Kind::EndpointSlice,
        slice(
            "web",
            "web-a",
            pods.port,
            &[(&ips[0], "n1", "ready"), (&ips[1], "n2", "ready")],
        ),
    );
    vip
}

/// wao-lb on `api`, once `/readyz` is green.
async fn start_ready(api: &ApiServer, dir: &TempDir) -> wao_lb::app::Running {
    let lb = start_lb(api, dir).await;
    assert!(
        eventually(WITHIN, async || ready(&lb).await).await,
        "/readyz after the first sync"
    );
    lb
}

/// Node n1 and Service shop/web (port name http) with one ready pod, `ip` on n1; its VIP.
fn one_pod_service(api: &ApiServer, pods: &Pods, ip: &str) -> SocketAddr {
    let vip = free_addr();
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    api.put(Kind::Service, service("web", vip, true));
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-a", pods.port, &[(ip, "n1", "ready")]),
    );
    vip
}

async fn ready(lb: &wao_lb::app::Running) -> bool {
    http_get(lb.admin_addr, "/readyz").await.0 == 200
}

/// One echo through `frontend`; Ok(true) when it came back whole.
async fn echo(frontend: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), echo_once(frontend, b"ping")).await,
        Ok(Ok(b)) if b == b"ping"
    )
}

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_service_reaches_the_pods_of_both_slices() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-slices");
    let pods = Pods::start(&["127.0.61.1", "127.0.61.2"]).await;
    let vip = one_pod_service(&api, &pods, "127.0.61.1");
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-b", pods.port, &[("127.0.61.2", "n2", "ready")]),
    );
    let lb = start_lb(&api, &dir).await;
    assert!(
        eventually(WITHIN, async || ready(&lb).await).await,
        "/readyz after the first sync"
    );
    for _ in 0..200 {
        assert!(echo(vip).await, "through the ClusterIP");
    }
    let (a, b) = (pods.count("127.0.61.1"), pods.count("127.0.61.2"));
    assert_eq!(a + b, 200);
    assert!(a > 40 && b > 40, "both slices' pods serve: {a} / {b}");
    let rows = lb.weights();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.service == "shop/web:http"),
        "{rows:?}"
    );
    let nodes: Vec<&str> = rows.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2"], "backends carry their pods' nodes");
    let m = lb.metrics_text();
    assert_eq!(
        metric(&m, "wao_lb_kube_objects{kind=\"Service\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "wao_lb_kube_objects{kind=\"EndpointSlice\"}"),
        Some(2.0)
    );
    assert!(metric(&m, "wao_lb_kube_syncs_total").unwrap_or(0.0) >= 1.0);
    assert!(metric(&m, "wao_lb_kube_last_sync_timestamp_seconds").unwrap_or(0.0) > 1.7e9);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_the_label_are_ignored_and_one_that_loses_it_is_removed() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-optout");
    let pods = Pods::start(&["127.0.62.1"]).await;
    let (ours, theirs) = (free_addr(), free_addr());
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    api.put(Kind::Service, service("ours", ours, true));
    api.put(Kind::Service, service("theirs", theirs, false));
    api.put(
        Kind::EndpointSlice,
        slice(
            "ours",
            "ours-a",
            pods.port,
            &[("127.0.62.1", "n1", "ready")],
        ),
    );
    let lb = start_ready(&api, &dir).await;
    assert!(echo(ours).await);
    assert!(!echo(theirs).await, "kube-proxy's Service is not ours");
    assert!(lb.weights().iter().all(|r| r.service == "shop/ours:http"));
    // The label goes: the Service is kube-proxy's again and wao-lb lets go of it.
    api.put(Kind::Service, service("ours", ours, false));
    assert!(
        eventually(WITHIN, async || lb.weights().is_empty()).await,
        "{:?}",
        lb.weights()
    );
    assert!(!echo(ours).await, "the listener is gone");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_follow_a_new_slice_and_established_ones_stay() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-terminating");
    let pods = Pods::start(&["127.0.63.1", "127.0.63.2"]).await;
    let vip = one_pod_service(&api, &pods, "127.0.63.1");
    let lb = start_ready(&api, &dir).await;
    // An established connection to the old pod.
    let mut held = tokio::net::TcpStream::connect(vip).await.expect("connect");
    held.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    held.read_exact(&mut buf).await.unwrap();
    // The old pod terminates, a new one appears in a new slice.
    api.put(
        Kind::EndpointSlice,
        slice(
            "web",
            "web-a",
            pods.port,
            &[("127.0.63.1", "n1", "terminating")],
        ),
    );
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-b", pods.port, &[("127.0.63.2", "n2", "ready")]),
    );
    assert!(
        eventually(WITHIN, async || {
            let rows = lb.weights();
            rows.len() == 1 && rows[0].backend.starts_with("127.0.63.2:")
        })
        .await,
        "{:?}",
        lb.weights()
    );
    let before = pods.count("127.0.63.1");
    for _ in 0..50 {
        assert!(echo(vip).await);
    }
    assert_eq!(
        pods.count("127.0.63.1"),
        before,
        "no new connection to the terminating pod"
    );
    assert_eq!(pods.count("127.0.63.2"), 50);
    held.write_all(b"after!").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!", "the established connection was not cut");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_goes_away_and_comes_back_compacted() {
    let mut api = ApiServer::start().await;
    let dir = TempDir::new("kube-outage");
    let pods = Pods::start(&["127.0.64.1"]).await;
    let (kept, deleted, added) = (free_addr(), free_addr(), free_addr());
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    for (name, vip) in [("kept", kept), ("deleted", deleted)] {
        api.put(Kind::Service, service(name, vip, true));
        api.put(
            Kind::EndpointSlice,
            slice(
                name,
                &format!("{name}-a"),
                pods.port,
                &[("127.0.64.1", "n1", "ready")],
            ),
        );
    }
    let lb = start_ready(&api, &dir).await;
    assert!(echo(kept).await && echo(deleted).await);

    // The API server goes away mid-watch: traffic keeps flowing on the last state.
    api.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert!(echo(kept).await, "served while the API server is away");
    }
    // Meanwhile one Service is deleted and one added, and the history is compacted, so
    // the watchers' next watch from their old version gets 410 Gone and must relist.
    api.delete(Kind::Service, "shop", "deleted");
    api.delete(Kind::EndpointSlice, "shop", "deleted-a");
    api.put(Kind::Service, service("added", added, true));
    api.put(
        Kind::EndpointSlice,
        slice(
            "added",
            "added-a",
            pods.port,
            &[("127.0.64.1", "n1", "ready")],
        ),
    );
    api.compact();
    api.restart().await;
    assert!(
        eventually(WITHIN, async || {
            let services: Vec<String> = lb.weights().into_iter().map(|r| r.service).collect();
            services == ["shop/added:http", "shop/kept:http"]
        })
        .await,
        "{:?}",
        lb.weights()
    );
    assert!(api.gone() >= 1, "the watchers' old versions got 410 Gone");
    assert!(echo(added).await, "the Service added meanwhile is served");
    assert!(echo(kept).await, "the one that stayed still is");
    assert!(!echo(deleted).await, "the one deleted meanwhile is gone");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_nothing_programmed_before_the_first_sync() {
    let mut api = ApiServer::start().await;
    let dir = TempDir::new("kube-first-sync");
    let pods = Pods::start(&["127.0.65.1"]).await;
    let vip = one_pod_service(&api, &pods, "127.0.65.1");
    api.stop();
    let lb = start_lb(&api, &dir).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        http_get(lb.admin_addr, "/readyz").await.0,
        503,
        "no sync yet"
    );
    assert!(lb.weights().is_empty());
    assert_eq!(
        http_get(lb.admin_addr, "/healthz").await.0,
        200,
        "alive meanwhile"
    );
    api.restart().await;
    assert!(eventually(WITHIN, async || ready(&lb).await).await);
    assert!(echo(vip).await);
    lb.stop().await;
}

/// `loadBalancerSourceRanges` restrict the load-balancer IP only: a client outside them is
/// refused there (a bound listener has completed the handshake, so it resets) and counted,
/// while the ClusterIP serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_restrict_the_balancer_ip_only() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-ranges");
    let pods = Pods::start(&["127.0.66.1"]).await;
    let vip = free_addr();
    let lb_ip = free_addr();
    let balancer = |ranges: &[&str]| {
        let mut s = service("web", vip, true);
        s["spec"]["type"] = json!("LoadBalancer");
        s["spec"]["ports"][0]["port"] = json!(lb_ip.port());
        s["spec"]["loadBalancerSourceRanges"] = json!(ranges);
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": lb_ip.ip().to_string()}]}});
        s
    };
    let cluster = SocketAddr::new(vip.ip(), lb_ip.port());
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    api.put(Kind::Service, balancer(&["10.0.0.0/8"]));
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-a", pods.port, &[("127.0.66.1", "n1", "ready")]),
    );
    let lb = start_ready(&api, &dir).await;
    assert!(echo(cluster).await, "the ClusterIP has no source ranges");
    assert!(!echo(lb_ip).await, "127.0.0.1 is outside 10.0.0.0/8");
    // Kubernetes mode has no per-Service series by default: totals under service="".
    let refused = "wao_lb_refused_total{reason=\"source_range\",service=\"\"}";
    assert_eq!(metric(&lb.metrics_text(), refused), Some(1.0));
    // The client's range is added: the balancer IP serves it.
    api.put(Kind::Service, balancer(&["10.0.0.0/8", "127.0.0.1/32"]));
    assert!(eventually(WITHIN, async || echo(lb_ip).await).await);
    lb.stop().await;
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` opted out of kube-proxy still
/// answers its cloud load balancer's health check: 200 and kube-proxy's JSON while this
/// node has a ready local endpoint, 503 once it has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_node_port_answers_for_local_endpoints() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-hcnp");
    let pods = Pods::start(&["127.0.67.1", "127.0.67.2"]).await;
    let vip = free_addr();
    let health_port = free_port();
    let mut svc = service("web", vip, true);
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["spec"]["healthCheckNodePort"] = json!(health_port);
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    api.put(Kind::Service, svc);
    api.put(
        Kind::EndpointSlice,
        slice(
            "web",
            "web-a",
            pods.port,
            &[("127.0.67.1", "n1", "ready"), ("127.0.67.2", "n2", "ready")],
        ),
    );
    let lb = start_ready(&api, &dir).await;
    let at: SocketAddr = ([127, 0, 0, 1], health_port).into();
    let (status, body) = http_get(at, "/").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v,
        json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    // The local pod goes: the cloud load balancer must stop sending here.
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-a", pods.port, &[("127.0.67.2", "n2", "ready")]),
    );
    assert!(eventually(WITHIN, async || http_get(at, "/").await.0 == 503).await);
    lb.stop().await;
}

/// Every one of 50 EndpointSlice changes (the Service's one pod swapped for another) is
/// followed by new connections. The time from each change to the first connection that
/// reaches the new pod is printed (`--nocapture`), not asserted: it depends on the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_endpoint_changes_are_each_followed() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-follow");
    let pods = Pods::start(&["127.0.68.1", "127.0.68.2"]).await;
    let vip = one_pod_service(&api, &pods, "127.0.68.1");
    let lb = start_ready(&api, &dir).await;
    let mut took = Vec::new();
    for i in 0..50 {
        let to = if i % 2 == 0 {
            "127.0.68.2"
        } else {
            "127.0.68.1"
        };
        // Let the previous change's minimum sync period pass, so each change is measured
        // on its own.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = pods.count(to);
        let changed = std::time::Instant::now();
        api.put(
            Kind::EndpointSlice,
            slice("web", "web-a", pods.port, &[(to, "n1", "ready")]),
        );
        // Polled every 2 ms (a connection each), finer than `eventually`.
        let followed = loop {
            if echo(vip).await && pods.count(to) > before {
                break true;
            }
            if changed.elapsed() > WITHIN {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(
            followed,
            "change {i} to {to} was not followed: {:?}",
            lb.weights()
        );
        took.push(changed.elapsed());
    }
    took.sort();
    println!(
        "EndpointSlice change to traffic: median {:?}, p99 {:?}, max {:?} over {} changes (minSyncPeriod 100ms)",
        took[took.len() / 2],
        took[(took.len() * 99).div_ceil(100) - 1],
        took[took.len() - 1],
        took.len()
    );
    lb.stop().await;
}

/// An SCTP port is not dropped silently: a Warning Event on the Service says so (as well as
/// the log and `wao_lb_kube_unserved_ports`), and the Service's other ports are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_is_reported_on_the_service() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-sctp");
    let pods = Pods::start(&["127.0.69.1"]).await;
    let vip = free_addr();
    let mut svc = service("web", vip, true);
    svc["spec"]["ports"]
        .as_array_mut()
        .expect("ports")
        .push(json!({"name": "sig", "port": 9, "protocol": "SCTP"}));
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    api.put(Kind::Service, svc);
    api.put(
        Kind::EndpointSlice,
        slice("web", "web-a", pods.port, &[("127.0.69.1", "n1", "ready")]),
    );
    let lb = start_ready(&api, &dir).await;
    assert!(echo(vip).await, "the TCP port is served");
    assert!(eventually(WITHIN, async || !api.events().is_empty()).await);
    let event = &api.events()[0];
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], "UnsupportedProtocol", "{event}");
    assert_eq!(event["regarding"]["kind"], "Service", "{event}");
    assert_eq!(event["regarding"]["name"], "web", "{event}");
    assert_eq!(event["regarding"]["namespace"], "shop", "{event}");
    assert!(
        event["note"].as_str().is_some_and(|n| n.contains("SCTP")),
        "{event}"
    );
    assert_eq!(
        metric(&lb.metrics_text(), "wao_lb_kube_unserved_ports"),
        Some(1.0)
    );
    lb.stop().await;
}

/// WAO's NodeConfig gives a node its model (a V2 inference predictor behind basic auth,
/// whose credentials come from the Secret the NodeConfig names), and its CPU comes from
/// metrics.k8s.io over the Node's capacity, as WAO reads it: the weights table says which
/// node is predicted by it and which, without a NodeConfig, is weighted neutrally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_config_gives_its_node_a_model() {
    use axum::routing::post;
    let predictor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let predictor_addr = predictor.local_addr().unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().route(
        "/v2/models/power/versions/v1/infer",
        post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                // "wao:hunter2" in base64.
                let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Basic d2FvOmh1bnRlcjI=");
                counter.fetch_add(1, Ordering::Relaxed);
                let cpu = body["inputs"][0]["data"][0][0].as_f64().unwrap_or(0.0);
                if ok {
                    (axum::http::StatusCode::OK, axum::Json(json!({"outputs": [{"name": "predict", "data": [100.0 + 3.0 * cpu]}]})))
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({})))
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(predictor, app).await });

    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-nodeconfig");
    let pods = Pods::start(&["127.0.70.1", "127.0.70.2"]).await;
    api.put(
        Kind::Secret,
        json!({"metadata": {"namespace": "wao-system", "name": "predictor-auth"},
        "data": {"username": "d2Fv", "password": "aHVudGVyMg=="}}),
    );
    node_config_cluster(
        &api,
        &pods,
        "4000000000n",
        json!({"type": "V2InferenceProtocol",
            "endpoint": format!("http://{predictor_addr}/v2/models/power/versions/v1/infer"),
            "basicAuthSecret": {"name": "predictor-auth"}}),
    );
    let lb = start_ready(&api, &dir).await;
    let row = |node: &str| row_of(&lb, node);
    assert!(
        eventually(WITHIN, async || row("n1").reason.contains("v2-inference")).await,
        "{:?}",
        lb.weights()
    );
    assert_eq!(row("n1").inlet_celsius, Some(15.5), "WAO's Fake inlet");
    assert_eq!(row("n1").delta_p_pascal, Some(7.5), "WAO's Fake ΔP");
    assert_eq!(
        row("n1").cpu_percent,
        Some(25.0),
        "CPU from metrics.k8s.io over the Node's 16 cores"
    );
    assert!(
        row("n1").watts.is_some_and(|w| (w - 175.0).abs() < 1e-6),
        "{:?}",
        row("n1")
    );
    assert!(
        row("n2").reason.contains("mean weight"),
        "no NodeConfig: neutral: {:?}",
        row("n2")
    );
    assert!(asked.load(Ordering::Relaxed) > 0);
    lb.stop().await;
}

/// In Kubernetes mode `/metrics` does not grow with the number of Services: no series
/// names a Service or backend, every Service counts into `service=""`; the weights view
/// still has every row. (The per-Service series and their cap are tested in
/// `balance::plan`'s unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_series_do_not_grow_with_services() {
    let api = ApiServer::start().await;
    let dir = TempDir::new("kube-series");
    let pods = Pods::start(&["127.0.71.1"]).await;
    api.put(Kind::Node, node("n1", "127.0.60.1"));
    let series = |lb: &wao_lb::app::Running| {
        lb.metrics_text()
            .lines()
            .filter(|l| l.starts_with("wao_lb_") && !l.starts_with("wao_lb_kube_"))
            .count()
    };
    let mut vips = Vec::new();
    let add = |api: &ApiServer, i: usize, vips: &mut Vec<SocketAddr>| {
        let vip = free_addr();
        let name = format!("svc{i}");
        api.put(Kind::Service, service(&name, vip, true));
        api.put(
            Kind::EndpointSlice,
            slice(
                &name,
                &format!("{name}-a"),
                pods.port,
                &[("127.0.71.1", "n1", "ready")],
            ),
        );
        vips.push(vip);
    };
    add(&api, 0, &mut vips);
    let lb = start_ready(&api, &dir).await;
    assert!(echo(vips[0]).await);
    let with_one = series(&lb);
    for i in 1..20 {
        add(&api, i, &mut vips);
    }
    assert!(eventually(WITHIN, async || lb.weights().len() == 20).await);
    for vip in &vips {
        assert!(echo(*vip).await);
    }
    let m = lb.metrics_text();
    assert_eq!(
        series(&lb),
        with_one,
        "20 Services, as many series as one:\n{m}"
    );
    assert!(!m.contains("service=\"shop/"), "{m}");
    assert_eq!(
        metric(&m, "wao_lb_connections_total{service=\"\"}"),
        Some(21.0),
        "{m}"
    );
    lb.stop().await;
}

/// With a real MLServer predictor named by NodeConfigs, each node's watts and ΔW are the
/// model's own predictions for its inputs as WAO reads them:
/// - n1 names the model's URL (`powerConsumption`); its inlet and ΔP are WAO's Fakes.
/// - n2 names its BMC (`powerConsumptionEndpointProvider`, Redfish behind basic auth),
///   whose `MachineLearningModel` resource names the same MLServer model; the custom
///   metrics API serves n2's inlet temperature and ΔP (not n1's), which replace its Fakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_configs_with_an_mlserver_predictor() {
    use common::mlserver::{assert_model_answers, mlserver, mlserver_ready};
    let dir = TempDir::new("kube-mlserver");
    // 4.8 of 16 cores is 30 %, 3.2 is 20 %; one connection (100m) adds 0.625 %.
    let queries = [
        [30.0, 15.5, 7.5],
        [30.625, 15.5, 7.5],
        [20.0, 22.0, 3.5],
        [20.625, 22.0, 3.5],
    ];
    let (_server, port, expected) = mlserver(&dir, &queries);
    let bmc = fake_bmc(&format!("http://127.0.0.1:{port}")).await;
    assert!(mlserver_ready(port).await, "MLServer came up");
    let api = ApiServer::start().await;
    let pods = Pods::start(&["127.0.72.1", "127.0.72.2"]).await;
    node_config_cluster(
        &api,
        &pods,
        "4800m",
        json!({"type": "V2InferenceProtocol",
            "endpoint": format!("http://127.0.0.1:{port}/v2/models/power/versions/v1/infer")}),
    );
    let mut n2 = node("n2", "127.0.60.2");
    n2["status"]["capacity"] = json!({"cpu": "16"});
    api.put(Kind::Node, n2);
    api.put(
        Kind::NodeMetrics,
        json!({"metadata": {"name": "n2"}, "usage": {"cpu": "3200m"}}),
    );
    api.put(
        Kind::Secret,
        json!({"metadata": {"namespace": "wao-system", "name": "bmc-n2"},
        "data": {"username": "cm9vdA==", "password": "Y2Fsdmlu"}}),
    );
    api.put(Kind::NodeConfig, json!({"metadata": {"namespace": "wao-system", "name": "n2",
            "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "n2",
            "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
            "predictor": {"powerConsumptionEndpointProvider": {"type": "Redfish",
                "endpoint": format!("http://{}", bmc.addr), "basicAuthSecret": {"name": "bmc-n2"}}}}}));
    api.serve_custom_metric("n2", "inlet_temp", "22");
    api.serve_custom_metric("n2", "delta_p", "3500m");
    let lb = start_ready(&api, &dir).await;
    let row = |node: &str| row_of(&lb, node);
    assert!(
        eventually(Duration::from_secs(30), async || {
            row("n1").watts.is_some() && row("n2").watts.is_some()
        })
        .await,
        "{:?}",
        lb.weights()
    );
    assert_model_answers(&row("n1"), &expected[..2]);
    assert_model_answers(&row("n2"), &expected[2..]);
    assert_eq!(
        (row("n1").inlet_celsius, row("n1").delta_p_pascal),
        (Some(15.5), Some(7.5)),
        "no custom metrics for n1: WAO's Fakes"
    );
    assert_eq!(
        (row("n2").inlet_celsius, row("n2").delta_p_pascal),
        (Some(22.0), Some(3.5)),
        "n2's custom metrics"
    );
    assert!(
        row("n2").reason.contains("named by Redfish"),
        "{}",
        row("n2").reason
    );
    assert!(bmc.asked.load(Ordering::Relaxed) >= 2, "the BMC was asked");
    assert_eq!(
        bmc.refused.load(Ordering::Relaxed),
        0,
        "every request to the BMC carried the Secret's credentials"
    );
    lb.stop().await;
}

/// A BMC's Redfish API as WAO's model provider reads it: one system, whose
/// `MachineLearningModel` names model `power` version `v1` at `model_url`. It counts
/// requests, and refuses (and counts) those without basic auth root:calvin.
struct FakeBmc {
    addr: SocketAddr,
    asked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

async fn fake_bmc(model_url: &str) -> FakeBmc {
    use axum::http::{HeaderMap, StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (asked, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let answer = {
        let (asked, refused) = (asked.clone(), refused.clone());
        move |headers: &HeaderMap, doc: Value| {
            asked.fetch_add(1, Ordering::Relaxed);
            // "root:calvin" in base64.
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some("Basic cm9vdDpjYWx2aW4=")
            {
                (StatusCode::OK, axum::Json(doc))
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
                (StatusCode::UNAUTHORIZED, axum::Json(json!({})))
            }
        }
    };
    let systems = json!({"@odata.id": "/redfish/v1/Systems",
        "Members": [{"@odata.id": "/redfish/v1/Systems/System.Embedded.1"}]});
    let models = json!({"@odata.id": "/redfish/v1/Systems/System.Embedded.1/MachineLearningModel",
        "PowerConsumptionModel": {"Name": "power", "Url": model_url,
            "Type": "V2InferenceProtocol", "Version": "v1"}});
    let a = answer.clone();
    let app = axum::Router::new()
        .route(
            "/redfish/v1/Systems",
            axum::routing::get(move |h: HeaderMap| async move { a(&h, systems) }),
        )
        .route(
            "/redfish/v1/Systems/System.Embedded.1/MachineLearningModel",
            axum::routing::get(move |h: HeaderMap| async move { answer(&h, models) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeBmc {
        addr,
        asked,
        refused,
    }
}

/// Without wao-lb's policy CRDs (an API server where they are not installed), Services are
/// served, and the failing policy watches retry without resyncing every Service each time.
/// Once the CRDs are served, a policy created then takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_policy_crds_services_are_served_and_nothing_resyncs() {
    let dir = TempDir::new("nocrds");
    let api = ApiServer::start().await;
    api.serve_policy_crds(false);
    let pods = Pods::start(&["127.0.77.1", "127.0.77.2"]).await;
    let vip = one_pod_service(&api, &pods, "127.0.77.1");
    let lb = start_ready(&api, &dir).await;
    assert!(echo(vip).await);
    let syncs = async || {
        let (_, m) = http_get(lb.admin_addr, "/metrics").await;
        metric(&m, "wao_lb_kube_syncs_total").unwrap_or(-1.0)
    };
    // Once the start has settled (events that came during the first sync resync once)...
    let mut before = syncs().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = syncs().await;
        if now == before {
            break;
        }
        before = now;
    }
    // ...the watches' back-off retries (0.8, 1.6, 3.2 s, …) come and go without a resync.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(syncs().await, before, "no resync while nothing changed");

    api.serve_policy_crds(true);
    api.put(
        Kind::Pod,
        json!({"metadata": {"namespace": "shop", "name": "cache", "labels": {"app": "cache"}},
               "spec": {"nodeName": "n1"},
               "status": {"podIP": "127.0.77.2", "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.put(
        Kind::LocalRedirectPolicy,
        json!({"metadata": {"namespace": "shop", "name": "local"},
               "spec": {"frontend": {"service": {"name": "web", "port": "http"}},
                        "backends": {"selector": {"matchLabels": {"app": "cache"}},
                                     "targetPort": pods.port}}}),
    );
    let redirected = eventually(Duration::from_secs(60), async || {
        lb.weights().iter().any(|r| r.kind == "LocalRedirectPolicy")
    })
    .await;
    assert!(
        redirected,
        "the policy is applied once its CRD is served: {:?}",
        lb.weights()
    );
    let before = pods.count("127.0.77.2");
    assert!(echo(vip).await);
    assert_eq!(pods.count("127.0.77.2"), before + 1, "to the local pod");
    lb.stop().await;
}
