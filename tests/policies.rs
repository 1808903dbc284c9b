//! wao-lb's policies end to end, on real sockets: a LocalRedirectPolicy and a
//! BalancingPolicy from the test API server (`common/apiserver.rs`, driven by kube-rs), and
//! two wao-lb instances acting as two clusters, each serving `/score`, with a service that
//! lists the other one as a backend group split by WAO's rule.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::apiserver::{ApiServer, Kind};
use common::*;
use serde_json::{json, Value};

const OPT_IN: &str = "service.kubernetes.io/service-proxy-name";
const WITHIN: Duration = Duration::from_secs(20);

fn node(name: &str) -> Value {
    json!({"metadata": {"name": name}, "status": {"addresses": []}})
}

/// A pod of namespace shop on `node` at `ip`, labelled `app`, ready or not.
fn pod(name: &str, app: &str, node: &str, ip: &str, ready: bool) -> Value {
    json!({"metadata": {"namespace": "shop", "name": name, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c"}]},
           "status": {"podIP": ip, "conditions": [
               {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Opted-in Service shop/web at `vip`, with one ready endpoint `endpoint` on node n2.
fn web_service(api: &ApiServer, vip: SocketAddr, endpoint: SocketAddr) {
    api.put(
        Kind::Service,
        json!({"metadata": {"namespace": "shop", "name": "web", "labels": {OPT_IN: "wao-loadbalancer"}},
               "spec": {"type": "ClusterIP", "clusterIP": vip.ip().to_string(),
                        "ports": [{"name": "http", "port": vip.port(), "protocol": "TCP"}]}}),
    );
    api.put(
        Kind::EndpointSlice,
        json!({"metadata": {"namespace": "shop", "name": "web-a",
                            "labels": {"kubernetes.io/service-name": "web", OPT_IN: "wao-loadbalancer"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": endpoint.port(), "protocol": "TCP"}],
               "endpoints": [{"addresses": [endpoint.ip().to_string()], "nodeName": "n2",
                              "conditions": {"ready": true}}]}),
    );
}

/// wao-lb in Kubernetes mode for node n1 against `api`, with `nodes` (config-file YAML
/// under `nodes:`), once `/readyz` is green.
async fn start_on(api: &ApiServer, dir: &TempDir, nodes: &str) -> wao_lb::app::Running {
    let kubeconfig = api.kubeconfig(&dir.0);
    let lb = start(&format!(
        "admin: {{listen: 127.0.0.1:0}}\npower: {{interval: 200ms}}\ndiscovery:\n  kubernetes: {{nodeName: n1, minSyncPeriod: 100ms, kubeconfig: \"{}\"}}\n{nodes}",
        kubeconfig.display()
    ))
    .await;
    let ready = eventually(WITHIN, async || {
        http_get(lb.admin_addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "/readyz after the first sync");
    lb
}

/// A scratch directory, an API server with Node n1, two echo servers and a free VIP.
async fn setup(tag: &str) -> (TempDir, ApiServer, Echo, Echo, SocketAddr) {
    let api = ApiServer::start().await;
    api.put(Kind::Node, node("n1"));
    let (a, b) = (echo_server().await, echo_server().await);
    (TempDir::new(tag), api, a, b, free_addr())
}

/// `n` connections through `frontend`, each echoed whole.
async fn connect(frontend: SocketAddr, n: usize) {
    for i in 0..n {
        let back = echo_once(frontend, b"ping").await;
        assert_eq!(back.ok().as_deref(), Some(&b"ping"[..]), "connection {i}");
    }
}

/// A LocalRedirectPolicy on a Service's VIP: node n1's connections go only to the ready
/// pod on n1, not to the Service's endpoint on n2; when that pod goes unready they fall
/// back to the Service's endpoint, and come back when it is ready again. The policy's
/// status says how many local backends n1 uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_redirect_keeps_traffic_on_the_node_and_falls_back() {
    let (dir, api, local, remote, vip) = setup("lrp").await;
    web_service(&api, vip, remote.addr);
    // The pod on n1, ready or not.
    let cache_n1 = |ready: bool| {
        let ip = local.addr.ip().to_string();
        api.put(Kind::Pod, pod("cache-n1", "cache", "n1", &ip, ready));
    };
    cache_n1(true);
    api.put(
        Kind::Pod,
        pod("cache-n2", "cache", "n2", "127.0.0.99", true),
    );
    api.put(
        Kind::LocalRedirectPolicy,
        json!({"metadata": {"namespace": "shop", "name": "local-web"},
               "spec": {"frontend": {"service": {"name": "web", "port": "http"}},
                        "backends": {"selector": {"matchLabels": {"app": "cache"}},
                                     "targetPort": local.addr.port()}}}),
    );
    let lb = start_on(&api, &dir, "").await;
    let redirected = eventually(WITHIN, async || {
        lb.weights()
            .iter()
            .any(|r| r.kind == "LocalRedirectPolicy" && r.backend == local.addr.to_string())
    })
    .await;
    assert!(redirected, "{:?}", lb.weights());
    connect(vip, 40).await;
    assert_eq!(local.count(), 40, "every connection to the local pod");
    assert_eq!(remote.count(), 0, "none to the Service's endpoint on n2");
    let row = &lb.weights()[0];
    assert_eq!(row.selected_by, "LocalRedirectPolicy shop/local-web");
    let status = eventually(WITHIN, async || {
        api.get(Kind::LocalRedirectPolicy, "shop", "local-web")
            .is_some_and(|p| p["status"]["nodes"]["n1"]["backends"] == 1)
    })
    .await;
    assert!(
        status,
        "{:?}",
        api.get(Kind::LocalRedirectPolicy, "shop", "local-web")
    );

    // The local pod goes unready: the Service's own endpoint takes over.
    cache_n1(false);
    let fell_back = eventually(WITHIN, async || {
        lb.weights()
            .iter()
            .any(|r| r.backend == remote.addr.to_string())
    })
    .await;
    assert!(fell_back, "{:?}", lb.weights());
    connect(vip, 20).await;
    assert_eq!(local.count(), 40, "none more to the unready pod");
    assert_eq!(remote.count(), 20, "all to the fallback");
    let row = &lb.weights()[0];
    assert!(
        row.selected_by
            .starts_with("Service shop/web:http (fallback of LocalRedirectPolicy shop/local-web"),
        "{}",
        row.selected_by
    );
    assert!(
        eventually(WITHIN, async || {
            api.get(Kind::LocalRedirectPolicy, "shop", "local-web")
                .is_some_and(|p| p["status"]["nodes"]["n1"]["backends"] == 0)
        })
        .await
    );

    // Ready again: back on the node.
    cache_n1(true);
    assert!(
        eventually(WITHIN, async || {
            lb.weights()
                .iter()
                .all(|r| r.backend == local.addr.to_string())
        })
        .await
    );
    connect(vip, 10).await;
    assert_eq!((local.count(), remote.count()), (50, 20));
    lb.stop().await;
}

/// A BalancingPolicy on a VIP of its own with one pod (node n1) and one fixed address
/// (node ext, outside the cluster): the split follows the nodes' power weights (static CPU
/// on power curves: the planner loads the node where a connection adds fewer watts), and
/// observed picks match it where uniform would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancing_policy_weighs_a_pod_and_a_fixed_address_by_power() {
    let (dir, api, in_cluster, outside, vip) = setup("bp").await;
    api.put(
        Kind::Pod,
        pod(
            "web-1",
            "web",
            "n1",
            &in_cluster.addr.ip().to_string(),
            true,
        ),
    );
    api.put(
        Kind::BalancingPolicy,
        json!({"metadata": {"namespace": "shop", "name": "split"},
               "spec": {"frontend": {"address": vip.ip().to_string(), "port": vip.port()},
                        "pods": {"selector": {"matchLabels": {"app": "web"}},
                                 "targetPort": in_cluster.addr.port()},
                        "addresses": [{"address": outside.addr.to_string(), "node": "ext"}]}}),
    );
    // Two nodes on one curve: n1 at 45 % CPU, ext at 20 %. The planner's split (its
    // reason and shares) is what the test checks the picks against.
    let nodes = "nodes:\n  n1:\n    cores: 4\n    cpu: {source: static, percent: 45}\n    model: {type: curve, profile: rs720a-e12}\n  ext:\n    cores: 4\n    cpu: {source: static, percent: 20}\n    model: {type: curve, profile: rs720a-e12}\n";
    let lb = start_on(&api, &dir, nodes).await;
    let weighted = eventually(WITHIN, async || {
        let rows = lb.weights();
        rows.len() == 2 && rows.iter().all(|r| r.watts.is_some())
    })
    .await;
    assert!(weighted, "{:?}", lb.weights());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rows = lb.weights();
    assert!(rows.iter().all(|r| r.kind == "BalancingPolicy"), "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.selected_by == "BalancingPolicy shop/split"));
    let planned = |node: &str| {
        rows.iter()
            .find(|r| r.node == node)
            .map_or(0.0, |r| r.share)
    };
    let p = planned("n1");
    assert!(
        (p - 0.5).abs() > 0.2,
        "the power split must differ from uniform to tell them apart: {rows:?}"
    );
    let n = 400;
    connect(vip, n).await;
    let observed = in_cluster.count() as f64 / n as f64;
    assert_eq!(in_cluster.count() + outside.count(), n as u64);
    // 400 picks: the standard deviation of the observed share is at most 0.025.
    assert!(
        (observed - p).abs() < 0.1,
        "observed {observed:.3} on n1, planned {p:.3}: {rows:?}"
    );
    lb.stop().await;
}

/// Static wao-lb "cluster" config: one node `node` on the rs720a-e12 curve at `cpu` %,
/// service web at `frontend` with `backend` on it, and `extra` YAML for the service.
fn cluster_config(
    node: &str,
    cpu: u32,
    frontend: SocketAddr,
    backend: SocketAddr,
    extra: &str,
) -> String {
    format!(
        "admin: {{listen: 127.0.0.1:0}}\npower: {{interval: 200ms}}\nservices:\n  - name: web\n    address: \"{frontend}\"\n    backends: [{{address: \"{backend}\", node: {node}}}]\n{extra}nodes:\n  {node}:\n    cores: 8\n    cpu: {{source: static, percent: {cpu}}}\n    model: {{type: curve, profile: rs720a-e12}}\n"
    )
}

async fn score_of(lb: &wao_lb::app::Running) -> f64 {
    let (code, body) = http_get(lb.admin_addr, "/score").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect(&body);
    v["score"].as_f64().unwrap_or(f64::NAN)
}

/// Two wao-lb instances are two clusters. East serves its own web; west serves web with
/// its own backend and east as a backend group. West splits by WAO's rule: its own share is
/// s_east / (s_west + s_east). The observed picks follow it, then follow east's load when
/// east's config raises its CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_split_by_their_power_scores() {
    let dir = TempDir::new("clusters");
    let (east_backend, west_backend) = (echo_server().await, echo_server().await);
    let (east_frontend, west_frontend) = (free_addr(), free_addr());
    let east_path = dir.file(
        "east.yaml",
        &cluster_config("e1", 5, east_frontend, east_backend.addr, ""),
    );
    let east_config = wao_lb::discovery::file::FileConfig::load(&east_path).expect("east config");
    let east = wao_lb::app::start(east_config, Some(east_path.clone()))
        .await
        .expect("east starts");
    let listed = format!(
        "    clusters:\n      - {{cluster: east, scoreUrl: \"http://{}/score\", address: \"{east_frontend}\", interval: 200ms, timeout: 200ms}}\n",
        east.admin_addr
    );
    let west = start(&cluster_config(
        "w1",
        80,
        west_frontend,
        west_backend.addr,
        &listed,
    ))
    .await;

    // The share west's plan gives itself, once both scores are in and it says so.
    let own_share = async || {
        west.weights()
            .iter()
            .find(|r| r.node == "w1")
            .map_or(f64::NAN, |r| r.share)
    };
    let settled = async |expected: f64| {
        eventually(WITHIN, async || (own_share().await - expected).abs() < 1e-3).await
    };
    let (s_west, s_east) = (score_of(&west).await, score_of(&east).await);
    let expected = s_east / (s_west + s_east);
    assert!(
        settled(expected).await,
        "west share {} vs {expected}: {:?}",
        own_share().await,
        west.weights()
    );
    assert!(
        (expected - 0.5).abs() > 0.1,
        "east idle, west busy: uniform must be told apart ({s_west} W vs {s_east} W)"
    );
    let observe = async |n: usize| {
        let before = (west_backend.count(), east_backend.count());
        connect(west_frontend, n).await;
        let west_n = west_backend.count() - before.0;
        let east_n = east_backend.count() - before.1;
        assert_eq!(
            west_n + east_n,
            n as u64,
            "every connection served by one cluster"
        );
        west_n as f64 / n as f64
    };
    let observed = observe(400).await;
    assert!(
        (observed - expected).abs() < 0.1,
        "observed {observed:.3} to west, WAO's rule {expected:.3}"
    );
    let row = west
        .weights()
        .into_iter()
        .find(|r| r.node == "cluster/east")
        .expect("east row");
    assert_eq!(row.selected_by, "cluster east");

    // East gets busy: its score rises, so west keeps more.
    std::fs::write(
        &east_path,
        cluster_config("e1", 95, east_frontend, east_backend.addr, ""),
    )
    .expect("rewrite east");
    let risen = eventually(WITHIN, async || score_of(&east).await > s_east + 1.0).await;
    assert!(risen, "east's score follows its load");
    let (s_west, s_east2) = (score_of(&west).await, score_of(&east).await);
    let expected2 = s_east2 / (s_west + s_east2);
    assert!(
        settled(expected2).await,
        "west share {} vs {expected2}",
        own_share().await
    );
    assert!(expected2 > expected + 0.1, "{expected} → {expected2}");
    let observed2 = observe(400).await;
    assert!(
        (observed2 - expected2).abs() < 0.1,
        "observed {observed2:.3} to west, WAO's rule {expected2:.3}"
    );
    west.stop().await;
    east.stop().await;
}
