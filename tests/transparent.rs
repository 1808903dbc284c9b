//! Transparent mode on the real kernel. Each test builds its own network namespaces
//! (`common/netns.rs`): a client, the node running wao-lb with `redirect: tproxy`, and two
//! backends.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::*;
use common::BIN;
use serde_json::Value;

fn assert_split(v: &Value, total: u64) {
    assert_eq!(count(v, "errors"), 0, "{v}");
    let (b1, b2) = (count(v, "b1"), count(v, "b2"));
    assert_eq!(b1 + b2, total, "{v}");
    // Weights 1:3 → b1 gets 25 %. The band is 4.5 binomial σ wide, so a correct split fails
    // it about once in 150,000 runs, and it still excludes uniform picking (50 %).
    let sigma = (0.25 * 0.75 / total as f64).sqrt();
    assert!(
        0.25 + 4.5 * sigma < 0.5,
        "{total} connections cannot tell 1:3 from uniform"
    );
    let share = b1 as f64 / total as f64;
    assert!((share - 0.25).abs() <= 4.5 * sigma, "b1 share {share}: {v}");
}

#[test]
fn tcp_and_udp_to_a_vip_reach_the_backends_byte_exact_by_weight() {
    let net = Net::running();
    let vip = net.vip4();
    let tcp = net.client("cl", &["tcp", &vip, "80", "300", "20000"]);
    assert_split(&tcp, 300);
    // The backends see wao-lb's node address, not the client: the proxy relayed it.
    assert_eq!(tcp["peers"].as_array().map(Vec::len), Some(2), "{tcp}");
    let udp = net.client("cl", &["udp", &vip, "53", "300", "1200"]);
    assert_split(&udp, 300);
    // Traffic to a plain address passes through the node untouched: the backend sees the
    // client's own address.
    let direct = net.client("cl", &["tcp", &net.v4(2, 2), "8080", "3", "1000"]);
    assert_eq!(count(&direct, "b1"), 3, "{direct}");
    assert_eq!(
        direct["peers"],
        serde_json::json!([net.v4(1, 2)]),
        "{direct}"
    );
}

/// New UDP flows open sockets bound to the VIP; while one is not yet connected, other
/// clients' datagrams must still reach the listener, and one that races into it anyway must
/// be served as its own client's (this failed with a `socket` rule for UDP).
#[test]
fn many_udp_clients_starting_at_once_each_get_their_own_replies() {
    let net = Net::running();
    let burst = net.client("cl", &["burst", &net.vip4(), "53", "256"]);
    assert_eq!(count(&burst, "foreign"), 0, "{burst}");
    assert_eq!(count(&burst, "replies"), 3 * 256, "{burst}");
}

#[test]
fn the_same_over_ipv6() {
    let net = Net::running();
    let vip = net.vip6();
    assert_split(&net.client("cl", &["tcp", &vip, "80", "200", "5000"]), 200);
    assert_split(&net.client("cl", &["udp", &vip, "53", "200", "800"]), 200);
}

#[test]
fn a_process_on_the_node_reaches_the_vip() {
    let net = Net::running();
    let vip = net.vip4();
    assert_split(&net.client("nd", &["tcp", &vip, "80", "200", "3000"]), 200);
    assert_split(&net.client("nd", &["udp", &vip, "53", "200", "500"]), 200);
}

#[test]
fn a_vip_port_without_backends_is_refused_at_once() {
    let net = Net::running();
    for role in ["cl", "nd"] {
        let r = net.client(role, &["refused", &net.vip4(), "81"]);
        assert_eq!(r["result"], "refused", "{role}: {r}");
        assert!(
            r["seconds"].as_f64().is_some_and(|s| s < 1.0),
            "{role}: {r}"
        );
    }
}

#[test]
fn an_unknown_destination_on_the_transparent_port_is_closed() {
    let net = Net::running();
    let r = net.client("nd", &["refused", "127.0.0.1", "15001"]);
    assert!(r["result"] == "refused" || r["result"] == "closed", "{r}");
    let metrics = net.admin("/metrics").unwrap_or_default();
    assert!(
        metrics.contains("wao_lb_refused_total{reason=\"unknown_destination\",service=\"\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_clean_stop_removes_the_table_and_rules() {
    let mut net = Net::running();
    assert!(net.tables().contains("table inet wao-lb"));
    assert!(net.rules().contains("fwmark 0x1000/0x1000 lookup 1349"));
    let status = net.signal_lb("TERM").expect("wao-lb exits on SIGTERM");
    assert!(status.success());
    assert!(!net.tables().contains("wao-lb"), "{}", net.tables());
    assert!(!net.rules().contains("lookup 1349"), "{}", net.rules());
}

#[test]
fn after_sigkill_a_restart_leaves_exactly_one_table_and_traffic_flows() {
    let mut net = Net::running();
    net.signal_lb("KILL").expect("killed");
    assert!(
        net.tables().contains("wao-lb"),
        "a crash leaves the table behind"
    );
    net.start_lb();
    assert_eq!(
        net.tables().matches("table inet wao-lb").count(),
        1,
        "{}",
        net.tables()
    );
    assert_eq!(
        net.rules().matches("lookup 1349").count(),
        2,
        "one rule per family: {}",
        net.rules()
    );
    assert_split(
        &net.client("cl", &["tcp", &net.vip4(), "80", "100", "100"]),
        100,
    );
}

#[test]
fn without_nftables_it_exits_naming_what_is_missing_and_leaves_nothing() {
    let net = Net::new();
    let config = net.config();
    let ns = net.ns("nd");
    // A PATH with `ip` but without `nft`.
    let bin = net.dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let ip = sh(&["which", "ip"]);
    let ip = String::from_utf8_lossy(&ip.stdout).trim().to_string();
    std::os::unix::fs::symlink(&ip, bin.join("ip")).expect("symlink ip");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.as_str(), BIN, "run", "--config"])
        .arg(&config)
        .env("PATH", &bin)
        .output()
        .expect("run wao-lb");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nft") && err.contains("could not run"),
        "{err}"
    );
    assert!(
        !net.rules().contains("lookup 1349"),
        "routing rules removed again: {}",
        net.rules()
    );
    assert!(!net.tables().contains("wao-lb"));
}

#[test]
fn nft_command_prints_a_ruleset_the_kernel_accepts() {
    let net = Net::new();
    let config = net.config();
    let out = Command::new(BIN)
        .args(["nft", "--config"])
        .arg(&config)
        .output()
        .expect("wao-lb nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ruleset = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        ruleset.contains(&format!("{} . tcp . 80", net.vip4())),
        "{ruleset}"
    );
    assert!(
        ruleset.contains(&format!("{} . tcp . 81", net.vip4())),
        "the empty service is refused: {ruleset}"
    );
    let file = net.dir.join("rules.nft");
    std::fs::write(&file, &ruleset).expect("write ruleset");
    // `nft -c` checks against the kernel without applying anything.
    let check = net.exec("nd", &["nft", "-c", "-f", &file.to_string_lossy()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!net.tables().contains("wao-lb"), "printing applies nothing");
}

/// Kubernetes mode through the transparent path: an opted-in NodePort Service with
/// `externalTrafficPolicy: Local`, its pods on this node (b1) and another (b2). The
/// ClusterIP reaches both; the NodePort on the node's address only the local one; when the
/// local pod goes, the NodePort drops (no answer, as kube-proxy) while the ClusterIP serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_clusterip_nodeport_local_and_drop_through_tproxy() {
    use common::apiserver::Kind;
    use serde_json::json;
    let (mut net, api) = Net::kubernetes();
    let node_ip = net.v4(1, 1);
    api.put(Kind::Service, json!({
        "metadata": {"namespace": "shop", "name": "web",
                     "labels": {"service.kubernetes.io/service-proxy-name": "wao-loadbalancer"}},
        "spec": {"type": "NodePort", "clusterIP": net.vip4(), "clusterIPs": [net.vip4()],
                 "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}}));
    let slice = |endpoints: Vec<(String, &str)>| {
        let endpoints: Vec<_> = endpoints
            .into_iter()
            .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        json!({"metadata": {"namespace": "shop", "name": "web-a",
                            "labels": {"kubernetes.io/service-name": "web",
                                       "service.kubernetes.io/service-proxy-name": "wao-loadbalancer"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": endpoints})
    };
    api.put(
        Kind::EndpointSlice,
        slice(vec![(net.v4(2, 2), "nd"), (net.v4(3, 2), "other")]),
    );
    net.start_kubernetes_lb(&api, "");

    let vip = net.vip4();
    let through_vip = net.client("cl", &["tcp", &vip, "80", "60", "1000"]);
    assert_eq!(count(&through_vip, "errors"), 0, "{through_vip}");
    assert!(
        count(&through_vip, "b1") > 5 && count(&through_vip, "b2") > 5,
        "ClusterIP: both pods: {through_vip}"
    );
    let through_node_port = net.client("cl", &["tcp", &node_ip, "30080", "30", "1000"]);
    assert_eq!(
        count(&through_node_port, "errors"),
        0,
        "{through_node_port}"
    );
    assert_eq!(
        count(&through_node_port, "b1"),
        30,
        "NodePort, policy Local: only this node's pod: {through_node_port}"
    );

    // The local pod goes: the NodePort drops, the ClusterIP serves the other pod.
    api.put(Kind::EndpointSlice, slice(vec![(net.v4(3, 2), "other")]));
    let dropped = tokio::task::block_in_place(|| {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let r = net.client("cl", &["refused", &node_ip, "30080"]);
            if r["result"] == "timeout" || Instant::now() > end {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(
        dropped["result"], "timeout",
        "dropped, not rejected: {dropped}"
    );
    let after = net.client("cl", &["tcp", &vip, "80", "20", "100"]);
    assert_eq!(count(&after, "b2"), 20, "{after}");
    drop(api);
}

/// Next to kube-proxy in nftables mode: its ruleset (`tests/fixtures/kube-proxy.nft`, the
/// layout of its upstream tests, with the ServiceCIDR drop in `cluster-ips-check`) is loaded
/// before wao-lb starts, and wao-lb's VIP lies inside that Service CIDR. Clients, the
/// node's own TCP and the node's own UDP reach wao-lb's VIP; kube-proxy's own Service keeps
/// working; and kube-proxy's table is unchanged by wao-lb's start, traffic and stop.
#[test]
fn next_to_kube_proxy_its_table_is_untouched_and_every_path_passes() {
    let mut net = Net::new();
    net.backends();
    let fixture = include_str!("fixtures/kube-proxy.nft")
        .replace("@SERVICE_CIDR@", &format!("10.96.{}.0/24", net.net))
        .replace("@NODE_IP@", &net.v4(1, 1))
        .replace("@KP_VIP@", &format!("10.96.{}.41", net.net))
        .replace("@KP_POD@", &net.v4(3, 2))
        .replace("@POD_CIDR@", &format!("10.{}.0.0/16", net.net));
    let path = net.dir.join("kube-proxy.nft");
    std::fs::write(&path, fixture).expect("write the kube-proxy ruleset");
    net.exec_ok("nd", &["nft", "-f", path.to_str().expect("utf-8 path")]);
    let kube_proxy = |net: &Net| {
        let out = net.exec("nd", &["nft", "list", "table", "ip", "kube-proxy"]);
        assert!(out.status.success(), "kube-proxy's table is there");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = kube_proxy(&net);
    assert!(before.contains("drop comment \"Drop traffic to unallocated ClusterIPs\""));

    net.start_lb();
    let vip = net.vip4();
    assert_split(&net.client("cl", &["tcp", &vip, "80", "100", "2000"]), 100);
    assert_split(&net.client("cl", &["udp", &vip, "53", "100", "200"]), 100);
    assert_split(&net.client("nd", &["tcp", &vip, "80", "100", "2000"]), 100);
    assert_split(&net.client("nd", &["udp", &vip, "53", "100", "200"]), 100);
    // kube-proxy's own Service (DNAT to b2) still works for clients.
    let kp = net.client(
        "cl",
        &["tcp", &format!("10.96.{}.41", net.net), "80", "10", "100"],
    );
    assert_eq!(count(&kp, "b2"), 10, "{kp}");
    assert_eq!(
        kube_proxy(&net),
        before,
        "wao-lb's start and traffic left kube-proxy's table as it was"
    );

    let status = net.signal_lb("TERM").expect("wao-lb exits on SIGTERM");
    assert!(status.success());
    assert_eq!(kube_proxy(&net), before, "and so did its stop");
}
