//! wao-lb's policies end to end on the real kernel path, in network namespaces
//! (`common/netns.rs`: a client, the node running wao-lb with `redirect: tproxy`, and two
//! backends that answer with their name): a LocalRedirectPolicy and a BalancingPolicy from
//! the test API server (`common/apiserver.rs`, driven by kube-rs, listening inside the
//! node's namespace), and two wao-lb processes acting as two clusters, each serving
//! `/score`, with a service that lists the other as a backend group split by WAO's rule.

mod common;

use std::time::{Duration, Instant};

use common::apiserver::Kind;
use common::netns::*;
use common::BIN;
use serde_json::{json, Value};

const OPT_IN: &str = "service.kubernetes.io/service-proxy-name";

/// Polls `f` every 100 ms for up to 20 s, off the async workers.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    tokio::task::block_in_place(|| {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    })
}

/// `path` of an admin API as JSON (Null while it does not answer).
fn admin_json(net: &Net, role: &str, addr: &str, path: &str) -> Value {
    net.admin_at(role, addr, path)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// The node wao-lb's `/weights` rows.
fn rows(net: &Net) -> Vec<Value> {
    match admin_json(net, "nd", "127.0.0.1:10349", "/weights") {
        Value::Array(rows) => rows,
        _ => Vec::new(),
    }
}

/// A pod of namespace shop on `node` at `ip`, labelled `app`, ready or not.
fn pod(name: &str, app: &str, node: &str, ip: &str, ready: bool) -> Value {
    json!({"metadata": {"namespace": "shop", "name": name, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c"}]},
           "status": {"podIP": ip, "conditions": [
               {"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Asserts that `picks` backends of `total` went to b1 within 4.5 binomial σ of `share`
/// (a correct split fails about once in 150,000 runs), and that the band excludes uniform.
fn assert_share(v: &Value, total: u64, share: f64) {
    assert_eq!(count(v, "errors"), 0, "{v}");
    assert_eq!(count(v, "b1") + count(v, "b2"), total, "{v}");
    let sigma = (share * (1.0 - share) / total as f64).sqrt();
    assert!(
        (share - 0.5).abs() > 4.5 * sigma,
        "{total} connections cannot tell {share:.3} from uniform"
    );
    let observed = count(v, "b1") as f64 / total as f64;
    assert!(
        (observed - share).abs() <= 4.5 * sigma,
        "b1 got {observed:.3}, planned {share:.3}: {v}"
    );
}

/// A LocalRedirectPolicy on a Service's VIP: the node's connections, from a client routed
/// through it and from a process on the node itself, go only to the ready pod on this
/// node (b1), not to the Service's endpoint elsewhere (b2), through the TPROXY rules. When
/// that pod goes unready they fall back to the Service's endpoint, and come back when it
/// is ready again. The policy's status says how many local backends the node uses, also
/// when the API server fails the first patches. Pods are watched only while the policy
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_redirect_keeps_traffic_on_the_node_and_falls_back() {
    let (mut net, api) = Net::kubernetes();
    // The first status patches fail; nothing else changes before the status is checked,
    // so only a retry can write it.
    api.fail_status_patches(2);
    let vip = net.vip4();
    api.put(
        Kind::Service,
        json!({"metadata": {"namespace": "shop", "name": "web", "labels": {OPT_IN: "wao-loadbalancer"}},
               "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip],
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    api.put(
        Kind::EndpointSlice,
        json!({"metadata": {"namespace": "shop", "name": "web-a",
                            "labels": {"kubernetes.io/service-name": "web", OPT_IN: "wao-loadbalancer"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [net.v4(3, 2)], "nodeName": "other",
                              "conditions": {"ready": true}}]}),
    );
    let (b1, b2) = (net.v4(2, 2), net.v4(3, 2));
    api.put(Kind::Pod, pod("cache-other", "cache", "other", &b2, true));
    let cache_nd = |ready: bool| api.put(Kind::Pod, pod("cache-nd", "cache", "nd", &b1, ready));
    cache_nd(true);
    net.start_kubernetes_lb(&api, "");
    let only = |backend: &str| {
        let rows = rows(&net);
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r["backend"] == format!("{backend}:8080"))
    };
    // No policy yet: the Service's own endpoint, and no Pod watch.
    assert!(wait_for(|| only(&b2)), "{:?}", rows(&net));
    assert_eq!(
        api.watches_open(Kind::Pod),
        0,
        "no Pod watch without a policy"
    );
    api.put(
        Kind::LocalRedirectPolicy,
        json!({"metadata": {"namespace": "shop", "name": "local-web"},
               "spec": {"frontend": {"service": {"name": "web", "port": "http"}},
                        "backends": {"selector": {"matchLabels": {"app": "cache"}}}}}),
    );
    assert!(wait_for(|| only(&b1)), "{:?}", rows(&net));
    assert_eq!(
        api.watches_open(Kind::Pod),
        1,
        "the policy's Pods are watched"
    );
    let rows_now = rows(&net);
    assert_eq!(rows_now[0]["kind"], "LocalRedirectPolicy", "{rows_now:?}");
    assert_eq!(
        rows_now[0]["selectedBy"],
        "LocalRedirectPolicy shop/local-web"
    );

    let through = net.client("cl", &["tcp", &vip, "80", "40", "1000"]);
    assert_eq!(
        count(&through, "b1"),
        40,
        "routed through the node: {through}"
    );
    let own = net.client("nd", &["tcp", &vip, "80", "20", "1000"]);
    assert_eq!(count(&own, "b1"), 20, "from the node itself: {own}");
    let status = |n: u64| {
        api.get(Kind::LocalRedirectPolicy, "shop", "local-web")
            .is_some_and(|p| p["status"]["nodes"]["nd"]["backends"] == n)
    };
    assert!(wait_for(|| status(1)), "status: one local backend");
    assert_eq!(api.status_patch_failures_left(), 0, "the failures were met");

    // The local pod goes unready: the Service's endpoint takes over.
    cache_nd(false);
    assert!(wait_for(|| only(&b2)), "{:?}", rows(&net));
    let fallback = net.client("cl", &["tcp", &vip, "80", "30", "1000"]);
    assert_eq!(count(&fallback, "b2"), 30, "fallback: {fallback}");
    let selected = rows(&net)[0]["selectedBy"].clone();
    assert_eq!(
        selected,
        "Service shop/web:http (fallback of LocalRedirectPolicy shop/local-web: no ready local backend)"
    );
    assert!(wait_for(|| status(0)), "status: none in use");

    // Ready again: back on the node.
    cache_nd(true);
    assert!(wait_for(|| only(&b1)), "{:?}", rows(&net));
    let back = net.client("cl", &["tcp", &vip, "80", "20", "1000"]);
    assert_eq!(count(&back, "b1"), 20, "{back}");

    // The policy goes: the Service's endpoint again, and the Pod watch ends.
    api.delete(Kind::LocalRedirectPolicy, "shop", "local-web");
    assert!(wait_for(|| only(&b2)), "{:?}", rows(&net));
    assert!(
        wait_for(|| api.watches_open(Kind::Pod) == 0),
        "the Pod watch ends with the last policy"
    );
    drop(api);
}

/// A BalancingPolicy on a VIP of its own with one pod (b1, on node nd) and one fixed
/// address (b2, node ext, outside the cluster): the split follows the nodes' power weights
/// (static CPU on one power curve, nd at 45 % and ext at 75 %, weighed by WAO's formula,
/// which splits where the planner would send a quiet service's connections all to one
/// node), and the connections through the TPROXY rules follow it where uniform would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancing_policy_weighs_a_pod_and_a_fixed_address_by_power() {
    let (mut net, api) = Net::kubernetes();
    let vip = net.vip4();
    api.put(Kind::Pod, pod("web-nd", "web", "nd", &net.v4(2, 2), true));
    api.put(
        Kind::BalancingPolicy,
        json!({"metadata": {"namespace": "shop", "name": "split"},
               "spec": {"frontend": {"address": vip, "port": 80},
                        "pods": {"selector": {"matchLabels": {"app": "web"}}, "targetPort": 8080},
                        "addresses": [{"address": format!("{}:8080", net.v4(3, 2)), "node": "ext"}]}}),
    );
    let node = |cpu: u32| {
        format!("    cores: 4\n    cpu: {{source: static, percent: {cpu}}}\n    model: {{type: curve, profile: rs720a-e12}}\n")
    };
    net.start_kubernetes_lb(
        &api,
        &format!(
            "power: {{interval: 200ms, policy: wao}}\nnodes:\n  nd:\n{}  ext:\n{}",
            node(45),
            node(75)
        ),
    );
    let weighed = || {
        let rows = rows(&net);
        rows.len() == 2 && rows.iter().all(|r| r["watts"].is_number())
    };
    assert!(wait_for(weighed), "{:?}", rows(&net));
    let rows = rows(&net);
    assert!(
        rows.iter().all(|r| r["kind"] == "BalancingPolicy"),
        "{rows:?}"
    );
    assert!(rows
        .iter()
        .all(|r| r["selectedBy"] == "BalancingPolicy shop/split"));
    let share = rows
        .iter()
        .find(|r| r["node"] == "nd")
        .and_then(|r| r["share"].as_f64())
        .expect("nd's share");
    assert!(
        (0.1..0.9).contains(&share),
        "both backends in use: {rows:?}"
    );
    let picks = net.client("cl", &["tcp", &vip, "80", "400", "100"]);
    assert_share(&picks, 400, share);
    drop(api);
}

/// Static config of a one-node "cluster": node `node` (8 cores, rs720a-e12 curve) at
/// `cpu` %, service web at `frontend` with `backend` on it, plus `settings` and `extra`
/// lines for the service.
fn cluster_config(
    settings: &str,
    node: &str,
    cpu: u32,
    frontend: &str,
    backend: &str,
    extra: &str,
) -> String {
    format!(
        "{settings}power: {{interval: 200ms}}\nservices:\n  - name: web\n    address: \"{frontend}\"\n    backends: [{{address: \"{backend}\", node: {node}}}]\n{extra}nodes:\n  {node}:\n    cores: 8\n    cpu: {{source: static, percent: {cpu}}}\n    model: {{type: curve, profile: rs720a-e12}}\n"
    )
}

/// Two wao-lb processes are two clusters, one node each on the rs720a-e12 curve (128 W idle,
/// 817 W flat out): west at 50 %, east at 1 %, then 100 %. East runs in b2's namespace (its admin API and
/// its web frontend on b2's address, its backend the echo on b2); west runs on the node,
/// transparent, with web on the VIP, b1 as its own backend and east as a backend group.
/// West splits by WAO's rule, keeping s_east / (s_west + s_east) for itself; the
/// connections follow it, then follow east's load when east's config raises its CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_split_by_their_power_scores() {
    let mut net = Net::new();
    net.backends();
    let east_ip = net.v4(3, 2);
    let east_admin = format!("{east_ip}:10349");
    let east_frontend = format!("{east_ip}:9090");
    let east_config = |cpu: u32| {
        cluster_config(
            &format!("admin: {{listen: \"{east_admin}\"}}\n"),
            "e1",
            cpu,
            &east_frontend,
            "127.0.0.1:8080",
            "",
        )
    };
    let east_path = net.dir.join("east.yaml");
    std::fs::write(&east_path, east_config(1)).expect("write east");
    let east_path_text = east_path.display().to_string();
    let east = net.spawn_in("b2", &[BIN, "run", "--config", &east_path_text]);
    net.children.push(east);
    let east_ready = || net.admin_at("b2", &east_admin, "/readyz").is_some();
    assert!(wait_for(east_ready), "east is up");

    let listed = format!(
        "    clusters:\n      - {{cluster: east, scoreUrl: \"http://{east_admin}/score\", address: \"{east_frontend}\", interval: 200ms, timeout: 200ms}}\n"
    );
    let west_path = net.dir.join("west.yaml");
    let west = cluster_config(
        "admin: {listen: 127.0.0.1:10349}\nredirect: tproxy\n",
        "w1",
        50,
        &format!("{}:80", net.vip4()),
        &format!("{}:8080", net.v4(2, 2)),
        &listed,
    );
    std::fs::write(&west_path, west).expect("write west");
    tokio::task::block_in_place(|| net.start_lb_on(&west_path));

    let score = |role: &str, addr: &str| {
        admin_json(&net, role, addr, "/score")["score"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let west_share = || {
        rows(&net)
            .iter()
            .find(|r| r["node"] == "w1")
            .and_then(|r| r["share"].as_f64())
            .unwrap_or(f64::NAN)
    };
    // The share WAO's rule gives west once both scores are in, and west's plan settled on it.
    let settled = || {
        let (w, e) = (score("nd", "127.0.0.1:10349"), score("b2", &east_admin));
        let expected = e / (w + e);
        ((west_share() - expected).abs() < 1e-3).then_some((w, e, expected))
    };
    let settle = || {
        let mut found = None;
        let done = wait_for(|| {
            found = settled();
            found.is_some()
        });
        assert!(done, "west's share never settled: {:?}", rows(&net));
        found.unwrap_or_default()
    };
    let (s_west, s_east, expected) = settle();
    let row = rows(&net)
        .into_iter()
        .find(|r| r["node"] == "cluster/east")
        .expect("east's row");
    assert_eq!(row["selectedBy"], "cluster east", "{row}");
    let vip = net.vip4();
    let picks = net.client("cl", &["tcp", &vip, "80", "400", "100"]);
    assert_share(&picks, 400, expected);

    // East gets busy: its score rises, so west keeps more.
    std::fs::write(&east_path, east_config(100)).expect("rewrite east");
    assert!(
        wait_for(|| score("b2", &east_admin) > s_east + 1.0),
        "east's score follows its load"
    );
    let (_, _, expected2) = settle();
    assert!(
        expected2 > expected + 0.1,
        "{s_west} W vs {s_east} W: {expected} → {expected2}"
    );
    let picks = net.client("cl", &["tcp", &vip, "80", "400", "100"]);
    assert_share(&picks, 400, expected2);
}
