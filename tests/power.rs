//! Power inputs and models against real components: a real prometheus-node-exporter as the
//! CPU source, a real MLServer serving a scikit-learn model as the V2-inference predictor,
//! and small HTTP servers returning the Redfish and DPAPI vendor documents (and broken
//! ones). Every fallback must leave the weights sane.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use common::mlserver::{assert_model_answers, mlserver, mlserver_ready, Server};
use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use wao_lb::telemetry::weights_view::WeightRow;

/// A child process killed on drop.
async fn serve(router: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    addr
}

fn weights(lb: &wao_lb::app::Running) -> Vec<WeightRow> {
    lb.weights()
}

fn row<'a>(rows: &'a [WeightRow], node: &str) -> &'a WeightRow {
    rows.iter()
        .find(|r| r.node == node)
        .unwrap_or_else(|| panic!("no row for {node}: {rows:?}"))
}

/// Whether `node`'s reason contains `text` within `limit`.
async fn reason_within(lb: &wao_lb::app::Running, node: &str, text: &str, limit: Duration) -> bool {
    eventually(limit, async || {
        row(&weights(lb), node).reason.contains(text)
    })
    .await
}

/// A config with one TCP service whose backends sit on `nodes` (name, yaml).
fn config(nodes: &[(&str, String)]) -> String {
    let frontend: SocketAddr = free_addr();
    let backends: Vec<(SocketAddr, &str)> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)), *n))
        .collect();
    let mut yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\npower: {{interval: 200ms}}\nservices:\n{}nodes:\n",
        service_yaml("svc", "tcp", frontend, &backends)
    );
    for (name, body) in nodes {
        yaml.push_str(&format!("  {name}:\n{body}"));
    }
    yaml
}

const CURVE: &str = "    model: {type: curve, profile: ml30-g11}\n";
const FAST: &str = "interval: 200ms, timeout: 300ms, staleAfter: 1s";

/// The kernel's own CPU counters (the per-CPU lines of /proc/stat, which node_exporter
/// reads) summed as (idle + iowait, total) seconds over the modes node_exporter exposes.
fn kernel_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let (mut idle, mut total) = (0.0, 0.0);
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let ticks: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal
            .map(|t| t.parse::<f64>().expect("ticks") / 100.0) // USER_HZ
            .collect();
        idle += ticks[3] + ticks[4];
        total += ticks.iter().sum::<f64>();
    }
    (idle, total)
}

/// The node_exporter source reads the same counters the kernel keeps: each scrape's sums lie
/// between the kernel's readings just before and just after it, whatever the machine is
/// doing. (`cpu_percent` turning two such readings into a utilisation is unit-tested.)
/// wao-lb, pointed at the same exporter, uses its readings for the node's prediction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_cpu_is_the_kernels() {
    let port = free_port();
    let exporter = Command::new("prometheus-node-exporter")
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--collector.disable-defaults",
            "--collector.cpu",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter is installed (tests/run.sh installs it)");
    let _exporter = Server(exporter);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let scrape =
        async || -> Option<String> { client.get(&url).send().await.ok()?.text().await.ok() };
    assert!(
        eventually(Duration::from_secs(10), async || scrape().await.is_some()).await,
        "node_exporter answers"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // The kernel counts in ticks of 10 ms; allow a tick of rounding per CPU and mode. A
    // parser that missed a mode or a CPU would be off by hundreds of seconds.
    let tick = 0.01 * 8.0 * cores + 1e-9;
    for _ in 0..3 {
        let before = kernel_cpu_seconds();
        let page = scrape().await.expect("scrape");
        let after = kernel_cpu_seconds();
        let ours = wao_lb::power::sources::node_exporter_cpu(&page).expect("parsed");
        assert!(
            before.0 - tick <= ours.idle && ours.idle <= after.0 + tick,
            "idle {} not within the kernel's {before:?}..{after:?}",
            ours.idle
        );
        assert!(
            before.1 - tick <= ours.total && ours.total <= after.1 + tick,
            "total {} not within the kernel's {before:?}..{after:?}",
            ours.total
        );
    }

    let yaml = config(&[(
        "a",
        format!("    cpu: {{source: node-exporter, url: \"{url}\", {FAST}}}\n{CURVE}"),
    )]);
    let lb = start(&yaml).await;
    let used = eventually(Duration::from_secs(10), async || {
        weights(&lb).first().is_some_and(|r| {
            r.cpu_percent.is_some_and(|c| (0.0..=100.0).contains(&c)) && r.watts.is_some()
        })
    })
    .await;
    assert!(
        used,
        "a prediction from the measured CPU: {:?}",
        weights(&lb)
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_predictions_are_used_exactly() {
    let dir = TempDir::new("mlserver");
    // The queries the updater will make: cpu 30 % with 2 cores → +5 % per 100m connection.
    let queries = [[30.0, 27.0, 5.0], [35.0, 27.0, 5.0]];
    let (_server, port, expected) = mlserver(&dir, &queries);
    assert!(mlserver_ready(port).await, "MLServer came up");
    let model = format!("    model: {{type: v2-inference, url: \"http://127.0.0.1:{port}\", model: power, version: v1}}\n");
    let inputs = "    cores: 2\n    cpu: {source: static, percent: 30}\n    inletTemp: {source: static, celsius: 27}\n    deltaP: {source: static, pascal: 5}\n";
    let yaml = config(&[
        ("a", format!("{inputs}{model}")),
        ("b", format!("{inputs}{CURVE}")),
    ]);
    let lb = start(&yaml).await;
    assert!(
        eventually(Duration::from_secs(10), async || row(&weights(&lb), "a")
            .watts
            .is_some())
        .await
    );
    let r = weights(&lb);
    assert_model_answers(row(&r, "a"), &expected);
    lb.stop().await;
}

/// A fake predictor whose behaviour the test switches: 0 good, 1 down (500), 2 NaN,
/// 3 negative, 4 wrong JSON, 5 slow.
async fn switchable_predictor() -> (SocketAddr, Arc<AtomicU32>) {
    let mode = Arc::new(AtomicU32::new(0));
    let m = mode.clone();
    let router = Router::new().route(
        "/v2/models/p/infer",
        post(move |Json(body): Json<Value>| {
            let m = m.clone();
            async move {
                let cpu = body["inputs"][0]["data"][0][0].as_f64().unwrap_or(0.0);
                let answer = |v: Value| {
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({"outputs": [{"name": "predict", "data": [v]}]})),
                    )
                };
                match m.load(Ordering::Relaxed) {
                    0 => answer(json!(100.0 + cpu)),
                    1 => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"error": "down"})),
                    ),
                    2 => answer(json!("NaN")),
                    3 => answer(json!(-5.0)),
                    4 => (
                        axum::http::StatusCode::OK,
                        Json(json!({"predictions": [1]})),
                    ),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        answer(json!(100.0 + cpu))
                    }
                }
            }
        }),
    );
    (serve(router).await, mode)
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_predictor_falls_back_to_last_good_then_neutral() {
    let (addr, mode) = switchable_predictor().await;
    let remote = format!(
        "    cpu: {{source: static, percent: 20}}\n    model: {{type: v2-inference, url: \"http://{addr}\", model: p, timeout: 300ms, staleAfter: 1500ms, cacheFor: 1ms}}\n"
    );
    let local = |cpu: u32| format!("    cpu: {{source: static, percent: {cpu}}}\n{CURVE}");
    // `marginal` never starves a node, so every weight stays above 0 (the planner may
    // give a node none: see the next test).
    let yaml = config(&[
        ("remote", remote),
        ("local", local(20)),
        ("local2", local(60)),
    ])
    .replace(
        "power: {interval: 200ms}",
        "power: {interval: 200ms, policy: marginal}",
    );
    let lb = start(&yaml).await;
    for (m, what) in [
        (1, "down"),
        (2, "NaN"),
        (3, "negative"),
        (4, "wrong JSON"),
        (5, "slow"),
    ] {
        mode.store(0, Ordering::Relaxed);
        let ok = reason_within(&lb, "remote", "ok, model", Duration::from_secs(5)).await;
        assert!(
            ok,
            "{what}: healthy first: {:?}",
            row(&weights(&lb), "remote")
        );
        let good = row(&weights(&lb), "remote").watts;
        mode.store(m, Ordering::Relaxed);
        // First the last good prediction, with the same weight...
        let last = reason_within(
            &lb,
            "remote",
            "using last prediction",
            Duration::from_secs(3),
        )
        .await;
        let r = weights(&lb);
        assert!(last, "{what}: last good value: {:?}", row(&r, "remote"));
        assert!(
            good.is_some() && row(&r, "remote").watts == good,
            "{what}: the last good prediction is used"
        );
        // ...then, past staleAfter, a neutral weight: the mean of the other nodes.
        let neutral = reason_within(&lb, "remote", "neutral weight", Duration::from_secs(5)).await;
        let r = weights(&lb);
        assert!(neutral, "{what}: neutral: {:?}", row(&r, "remote"));
        let others = (row(&r, "local").weight + row(&r, "local2").weight) / 2.0;
        assert!(
            (row(&r, "remote").weight - others).abs() < 1e-9,
            "{what}: {r:?}"
        );
        assert!(
            r.iter().all(|x| x.weight.is_finite() && x.weight > 0.0),
            "{what}: sane weights {r:?}"
        );
    }
    let m = lb.metrics_text();
    assert!(metric_sum(&m, "wao_lb_power_fallbacks_total{input=\"model\",kind=\"predictor_failed\",node=\"remote\"}") >= 5.0, "{m}");
    assert!(
        metric_sum(
            &m,
            "wao_lb_power_fallbacks_total{input=\"model\",kind=\"neutral\",node=\"remote\"}"
        ) >= 5.0,
        "{m}"
    );
    lb.stop().await;
}

/// The planner (the default) keeps a failing model's last curve with its last prediction:
/// until `staleAfter` the node is weighed exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_keeps_the_last_good_curve_of_a_failing_model() {
    let (addr, mode) = switchable_predictor().await;
    let remote = format!(
        "    cpu: {{source: static, percent: 20}}\n    model: {{type: v2-inference, url: \"http://{addr}\", model: p, timeout: 300ms, staleAfter: 3s, cacheFor: 1ms}}\n"
    );
    let local = format!("    cpu: {{source: static, percent: 60}}\n{CURVE}");
    let lb = start(&config(&[("remote", remote), ("local", local)])).await;
    let ok = reason_within(&lb, "remote", "ok, model", Duration::from_secs(5)).await;
    assert!(ok, "{:?}", weights(&lb));
    // Let the mover reach its plan.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = row(&weights(&lb), "remote").weight;
    mode.store(1, Ordering::Relaxed);
    let last = reason_within(
        &lb,
        "remote",
        "using last prediction",
        Duration::from_secs(3),
    )
    .await;
    let r = weights(&lb);
    assert!(last, "{r:?}");
    assert!(
        (row(&r, "remote").weight - before).abs() < 1e-9,
        "weighed as before: {before} → {:?}",
        row(&r, "remote")
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_predictors_down_gives_uniform_weights() {
    let dead = closed_port_addr();
    let node = format!(
        "    model: {{type: v2-inference, url: \"http://{dead}\", model: p, timeout: 300ms}}\n"
    );
    let lb = start(&config(&[
        ("a", node.clone()),
        ("b", node.clone()),
        ("c", node),
    ]))
    .await;
    let uniform = eventually(Duration::from_secs(5), async || {
        weights(&lb)
            .iter()
            .all(|r| (r.share - 1.0 / 3.0).abs() < 1e-9 && r.reason.contains("uniform"))
    })
    .await;
    assert!(uniform, "{:?}", weights(&lb));
    lb.stop().await;
}

/// Static inputs carry no feedback: after its first step the controller holds its shares,
/// however long it runs, though the nodes' marginal watts differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_inputs_hold_the_shares_still() {
    let node = |cpu: u32| format!("    cpu: {{source: static, percent: {cpu}}}\n{CURVE}");
    let lb = start(&config(&[("a", node(25)), ("b", node(35))])).await;
    let shares = |lb: &wao_lb::app::Running| -> Vec<f64> {
        let r = weights(lb);
        vec![row(&r, "a").share, row(&r, "b").share]
    };
    assert!(
        eventually(Duration::from_secs(5), async || {
            row(&weights(&lb), "a").delta_watts.is_some()
        })
        .await,
        "{:?}",
        weights(&lb)
    );
    let r = weights(&lb);
    let (da, db) = (row(&r, "a").delta_watts, row(&r, "b").delta_watts);
    assert!(
        da.zip(db).is_some_and(|(a, b)| (a / b - 1.0).abs() > 0.01),
        "the nodes' marginal watts must differ by more than the dead band: {da:?} {db:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = shares(&lb);
    // Fifteen more power intervals of 200 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(shares(&lb), first, "{:?}", weights(&lb));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_neither_favours_nor_starves_its_node() {
    let dead = closed_port_addr();
    let broken = format!(
        "    cpu: {{source: node-exporter, url: \"http://{dead}/metrics\", {FAST}}}\n{CURVE}"
    );
    let healthy = format!("    cpu: {{source: static, percent: 40}}\n{CURVE}");
    let lb = start(&config(&[("broken", broken), ("healthy", healthy)])).await;
    let settled = reason_within(&lb, "broken", "no cpu", Duration::from_secs(5)).await;
    let r = weights(&lb);
    assert!(settled, "{r:?}");
    // Two nodes, one unknown: it gets the other's weight, so traffic splits evenly.
    assert!((row(&r, "broken").share - 0.5).abs() < 1e-9, "{r:?}");
    assert!(row(&r, "broken").reason.contains("mean weight"), "{r:?}");
    let m = lb.metrics_text();
    assert!(
        metric_sum(
            &m,
            "wao_lb_power_fallbacks_total{input=\"cpu\",kind=\"missing_input\",node=\"broken\"}"
        ) >= 1.0,
        "{m}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_inlet_temperature_from_each_vendor_layout() {
    let vendors = [
        (
            "/redfish/v1/Chassis/System.Embedded.1/Sensors/SystemBoardInletTemp",
            json!({"Reading": 23.0, "ReadingUnits": "Cel"}),
            23.0,
        ),
        (
            "/redfish/v1/Chassis/1/Sensors/128L0",
            json!({"Name": "Ambient Temp", "Reading": 29.5}),
            29.5,
        ),
        (
            "/redfish/v1/Chassis/1/Thermal",
            json!({"Temperatures": [{"Name": "CPU Temp", "ReadingCelsius": 61}, {"Name": "System Temp", "ReadingCelsius": 26}]}),
            26.0,
        ),
    ];
    let mut nodes = Vec::new();
    let mut expect = Vec::new();
    for (i, (path, doc, celsius)) in vendors.into_iter().enumerate() {
        let addr = serve(Router::new().route(path, get(move || async move { Json(doc) }))).await;
        nodes.push((
            ["idrac", "xclarity", "supermicro"][i],
            format!("    inletTemp: {{source: redfish, url: \"http://{addr}\", username: root, password: calvin, {FAST}}}\n{CURVE}"),
        ));
        expect.push(celsius);
    }
    // A BMC whose document is broken: the input is missing, the node neutral.
    let broken = serve(Router::new().route(
        "/redfish/v1/Chassis/1/Sensors/128L0",
        get(|| async { Json(json!({"Reading": "hot"})) }),
    ))
    .await;
    nodes.push((
        "broken",
        format!("    inletTemp: {{source: redfish, url: \"http://{broken}\", {FAST}}}\n{CURVE}"),
    ));
    let lb = start(&config(&nodes)).await;
    let seen = eventually(Duration::from_secs(5), async || {
        weights(&lb)
            .iter()
            .filter(|r| r.inlet_celsius.is_some())
            .count()
            == 3
    })
    .await;
    let r = weights(&lb);
    assert!(seen, "{r:?}");
    for (name, celsius) in ["idrac", "xclarity", "supermicro"].iter().zip(expect) {
        assert_eq!(row(&r, name).inlet_celsius, Some(celsius), "{name}");
    }
    assert_eq!(row(&r, "broken").inlet_celsius, None);
    assert!(row(&r, "broken").reason.contains("no inlet_temp"), "{r:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpapi_pressure_and_its_broken_variants() {
    let good = serve(Router::new().route(
        "/api/sensor/by_nodename/rack-1",
        get(|| async { Json(json!({"code": 200, "sensor": [{"pressure": 7.5, "sensorid": "101037B", "temperature": 26.02}]})) }),
    ))
    .await;
    let empty = serve(Router::new().route(
        "/api/sensor/by_nodename/b",
        get(|| async { Json(json!({"code": 404, "sensor": []})) }),
    ))
    .await;
    let lb = start(&config(&[
        ("a", format!("    deltaP: {{source: dpapi, url: \"http://{good}\", node: rack-1, {FAST}}}\n{CURVE}")),
        ("b", format!("    deltaP: {{source: dpapi, url: \"http://{empty}\", {FAST}}}\n{CURVE}")),
    ]))
    .await;
    let seen = eventually(Duration::from_secs(5), async || {
        row(&weights(&lb), "a").delta_p_pascal.is_some()
    })
    .await;
    let r = weights(&lb);
    assert!(seen, "{r:?}");
    assert_eq!(row(&r, "a").delta_p_pascal, Some(7.5));
    assert_eq!(row(&r, "b").delta_p_pascal, None);
    assert!(row(&r, "b").reason.contains("sensor[0].pressure"), "{r:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tfserving_model_and_ipmi_exporter_inlet() {
    let tf = serve(Router::new().route(
        "/v1/models/power:predict",
        post(|Json(body): Json<Value>| async move {
            let row = &body["inputs"][0];
            let watts = 100.0 + row[0].as_f64().unwrap_or(0.0) + row[1].as_f64().unwrap_or(0.0);
            Json(json!({"outputs": [[watts]]}))
        }),
    ))
    .await;
    let ipmi = serve(Router::new().route(
        "/metrics",
        get(|| async { "ipmi_temperature_celsius{id=\"1\",name=\"CPU1\"} 55\nipmi_temperature_celsius{id=\"4\",name=\"Ambient\"} 21.5\n" }),
    ))
    .await;
    let node = format!(
        "    cpu: {{source: static, percent: 10}}\n    inletTemp: {{source: ipmi-exporter, url: \"http://{ipmi}/metrics\", {FAST}}}\n    model: {{type: tfserving, url: \"http://{tf}\", model: power}}\n"
    );
    let lb = start(&config(&[
        ("a", node),
        (
            "b",
            format!("    cpu: {{source: static, percent: 10}}\n{CURVE}"),
        ),
    ]))
    .await;
    let seen = eventually(Duration::from_secs(5), async || {
        row(&weights(&lb), "a").watts.is_some()
    })
    .await;
    let r = weights(&lb);
    assert!(seen, "{r:?}");
    assert_eq!(row(&r, "a").inlet_celsius, Some(21.5));
    // The fake model adds cpu and inlet to 100 W: 100 + 10 + 21.5.
    assert_eq!(row(&r, "a").watts, Some(131.5));
    assert!(row(&r, "a").reason.contains("tfserving"), "{r:?}");
    let m = lb.metrics_text();
    for gauge in [
        "wao_lb_node_predicted_watts{node=\"a\"} 131.5",
        "wao_lb_node_inlet_celsius{node=\"a\"} 21.5",
        "wao_lb_node_cpu_percent{node=\"a\"} 10",
        "wao_lb_node_weight{node=\"a\"}",
        "wao_lb_node_input_age_seconds{node=\"a\"}",
    ] {
        assert!(m.contains(gauge), "/metrics lacks {gauge}:\n{m}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_input_keeps_its_last_value_then_turns_neutral() {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = up.clone();
    let dpapi = serve(Router::new().route(
        "/api/sensor/by_nodename/a",
        get(move || {
            let up = flag.load(Ordering::Relaxed);
            async move {
                if up {
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({"code": 200, "sensor": [{"pressure": 4.0}]})),
                    )
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"code": 503})),
                    )
                }
            }
        }),
    ))
    .await;
    let a = format!("    deltaP: {{source: dpapi, url: \"http://{dpapi}\", {FAST}}}\n{CURVE}");
    let b = format!("    cpu: {{source: static, percent: 50}}\n{CURVE}");
    let lb = start(&config(&[("a", a), ("b", b)])).await;
    assert!(
        eventually(Duration::from_secs(5), async || row(&weights(&lb), "a")
            .delta_p_pascal
            == Some(4.0))
        .await
    );
    up.store(false, Ordering::Relaxed);
    let stale = reason_within(
        &lb,
        "a",
        "stale delta_p, using last value",
        Duration::from_secs(3),
    )
    .await;
    let r = weights(&lb);
    assert!(stale, "{r:?}");
    assert_eq!(
        row(&r, "a").delta_p_pascal,
        Some(4.0),
        "last good value in use"
    );
    assert!(
        row(&r, "a").watts.is_some(),
        "still predicted from the last value"
    );
    let missing = reason_within(&lb, "a", "no delta_p", Duration::from_secs(5)).await;
    let r = weights(&lb);
    assert!(missing, "{r:?}");
    assert_eq!(
        row(&r, "a").weight,
        row(&r, "b").weight,
        "neutral: the other node's weight"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_inference_sends_basic_auth() {
    let predictor = serve(Router::new().route(
        "/v2/models/p/versions/3/infer",
        post(
            |headers: axum::http::HeaderMap, Json(body): Json<serde_json::Value>| async move {
                // "admin:s3cret" in base64.
                let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Basic YWRtaW46czNjcmV0");
                let cpu = body["inputs"][0]["data"][0][0].as_f64().unwrap_or(0.0);
                if ok {
                    (
                        axum::http::StatusCode::OK,
                        Json(json!({"outputs": [{"name": "predict", "data": [77.0 + cpu]}]})),
                    )
                } else {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        Json(json!({"error": "auth"})),
                    )
                }
            },
        ),
    ))
    .await;
    let model = |password: &str| {
        format!(
            "    model: {{type: v2-inference, url: \"http://{predictor}\", model: p, version: \"3\", username: admin, password: {password}}}\n"
        )
    };
    let lb = start(&config(&[
        ("good", model("s3cret")),
        ("bad", model("wrong")),
    ]))
    .await;
    let seen = eventually(Duration::from_secs(5), async || {
        row(&weights(&lb), "good").watts == Some(77.0)
    })
    .await;
    let r = weights(&lb);
    assert!(seen, "{r:?}");
    assert!(
        row(&r, "bad").watts.is_none() && row(&r, "bad").reason.contains("401"),
        "{r:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_over_https_with_a_self_signed_certificate() {
    let dir = TempDir::new("redfish-tls");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bmc",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(&dir.0)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = free_port();
    // An iDRAC-like BMC: HTTPS with a self-signed certificate.
    let script = format!(
        r#"
import http.server, json, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redfish/v1/Chassis/System.Embedded.1/Sensors/SystemBoardInletTemp":
            body = json.dumps({{"Reading": 24.5}}).encode(); self.send_response(200)
        else:
            body = b"{{}}"; self.send_response(404)
        self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", {port}), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain("cert.pem", "key.pem")
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#
    );
    let bmc = Command::new("python3")
        .args(["-c", &script])
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let _bmc = Server(bmc);
    let node = |insecure: bool| {
        format!(
            "    inletTemp: {{source: redfish, url: \"https://127.0.0.1:{port}\", insecureSkipVerify: {insecure}, {FAST}}}\n{CURVE}"
        )
    };
    let lb = start(&config(&[
        ("trusting", node(true)),
        ("checking", node(false)),
    ]))
    .await;
    let seen = eventually(Duration::from_secs(10), async || {
        row(&weights(&lb), "trusting").inlet_celsius == Some(24.5)
    })
    .await;
    let r = weights(&lb);
    assert!(seen, "{r:?}");
    // Without insecureSkipVerify the self-signed certificate is refused.
    assert_eq!(row(&r, "checking").inlet_celsius, None, "{r:?}");
    lb.stop().await;
}

/// The planner (the default) plans for wao-lb's own open connections, and `/saving` and
/// its gauge say what its split saves against uniform picks. Two identical nodes (RS720A-E12
/// curve, 4 cores, 100m per connection): a reads 45 % CPU, b 20 %. Before any connection,
/// a's next connection costs less (the curve is flatter there), so the plan loads a alone.
/// Ten connections held open then all go to a: 1 core, 25 points of a's 45 %, so both
/// nodes are at 20 % without wao-lb's traffic, and the split saves what loading both to
/// 32.5 % would cost more: f(32.5)·2 − f(45) − f(20) watts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_plans_for_open_connections_and_says_what_it_saves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = echo_server().await;
    let b = echo_server().await;
    let frontend = free_addr();
    let node = |cpu: u32| {
        format!("    cores: 4\n    cpu: {{source: static, percent: {cpu}}}\n    model: {{type: curve, profile: rs720a-e12}}\n")
    };
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\npower: {{interval: 200ms}}\nservices:\n{}nodes:\n  a:\n{}  b:\n{}",
        service_yaml("svc", "tcp", frontend, &[(a.addr, "a"), (b.addr, "b")]),
        node(45),
        node(20)
    );
    let lb = start(&yaml).await;
    let admin = lb.admin_addr;
    let saving = async || -> Value {
        let (status, body) = http_get(admin, "/saving").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("saving JSON")
    };
    assert!(
        eventually(Duration::from_secs(5), async || {
            (row(&weights(&lb), "a").share - 1.0).abs() < 1e-9
        })
        .await,
        "{:?}",
        weights(&lb)
    );
    assert_eq!(saving().await["totalWatts"], json!(0.0), "nothing open yet");
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(frontend)
            .await
            .expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("echo");
        open.push(s);
    }
    assert_eq!((a.count(), b.count()), (10, 0));
    // E12 at 20, 32.5 and 45 %: 300, 349.5 and 394 W.
    let expected = 2.0 * 349.5 - 394.0 - 300.0;
    let close = async || {
        let s = saving().await;
        s["totalWatts"]
            .as_f64()
            .is_some_and(|w| (w - expected).abs() < 0.5)
    };
    assert!(
        eventually(Duration::from_secs(5), close).await,
        "{}",
        saving().await
    );
    let (_, metrics) = http_get(admin, "/metrics").await;
    let gauge = metric(&metrics, "wao_lb_estimated_saving_watts").unwrap_or(f64::NAN);
    assert!((gauge - expected).abs() < 0.5, "{gauge}");
    // Still planned on a: the two nodes are alike now, and the plan stays where it is.
    assert!((row(&weights(&lb), "a").share - 1.0).abs() < 1e-9);
    drop(open);
    lb.stop().await;
}

/// `/score` is WAO's cluster score: the sum of the predicted watts of the nodes that have a
/// prediction; a node whose model is down is left out (and counted as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_score_sums_the_predicted_watts_of_predicted_nodes() {
    let node = |cpu: u32| format!("    cpu: {{source: static, percent: {cpu}}}\n{CURVE}");
    let dead = closed_port_addr();
    let down = format!(
        "    cpu: {{source: static, percent: 50}}\n    model: {{type: v2-inference, url: \"http://{dead}\", model: p, timeout: 300ms}}\n"
    );
    let lb = start(&config(&[("a", node(20)), ("b", node(60)), ("c", down)])).await;
    let predicted = eventually(Duration::from_secs(5), async || {
        let r = weights(&lb);
        row(&r, "a").watts.is_some() && row(&r, "b").watts.is_some()
    })
    .await;
    assert!(predicted, "{:?}", weights(&lb));
    let r = weights(&lb);
    let expected = row(&r, "a").watts.unwrap() + row(&r, "b").watts.unwrap();
    assert_eq!(row(&r, "c").watts, None, "{r:?}");
    let (code, body) = http_get(lb.admin_addr, "/score").await;
    assert_eq!(code, 200, "{body}");
    let score: Value = serde_json::from_str(&body).expect(&body);
    assert!(
        (score["score"].as_f64().unwrap_or(0.0) - expected).abs() < 1e-6,
        "{score} vs {expected}"
    );
    assert_eq!(score["nodes"], 2, "{score}");
    assert_eq!(score["withoutPrediction"], 1, "{score}");
    lb.stop().await;
}

/// Another cluster's score, as a service's backend group, has the fallbacks of a node's
/// inputs: read, its last value kept while it cannot be read (until `staleAfter`), then
/// counted at the mean of the known scores, which here splits the two groups equally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_score_is_kept_until_stale_then_neutral() {
    let down = Arc::new(AtomicU32::new(0));
    let d = down.clone();
    let east = serve(Router::new().route(
        "/score",
        get(move || {
            let d = d.clone();
            async move {
                if d.load(Ordering::Relaxed) == 0 {
                    (axum::http::StatusCode::OK, Json(json!({"score": 100.0})))
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({})))
                }
            }
        }),
    ))
    .await;
    let frontend = free_addr();
    let yaml = format!(
        "admin: {{listen: 127.0.0.1:0}}\npower: {{interval: 100ms}}\nservices:\n{}    clusters:\n      - {{cluster: east, scoreUrl: \"http://{east}/score\", address: \"127.0.0.1:9\", interval: 100ms, timeout: 100ms, staleAfter: 2s}}\nnodes:\n  a:\n    cpu: {{source: static, percent: 50}}\n    model: {{type: curve, profile: rs720a-e12}}\n",
        service_yaml("web", "tcp", frontend, &[("127.0.0.1:20000".parse().unwrap(), "a")])
    );
    let lb = start(&yaml).await;
    let east_row = |lb: &wao_lb::app::Running| row(&weights(lb), "cluster/east").clone();
    // This cluster: one node at 50 % on rs720a-e12, 410 W; east 100 W. This cluster keeps
    // 100 / 510 of the connections.
    let read = eventually(Duration::from_secs(5), async || {
        east_row(&lb).reason.contains("score 100.0 W (score read)")
    })
    .await;
    assert!(read, "{:?}", weights(&lb));
    let local = 100.0 / 510.0;
    assert!(
        (row(&weights(&lb), "a").share - local).abs() < 1e-9,
        "{:?}",
        weights(&lb)
    );
    assert!((east_row(&lb).share - (1.0 - local)).abs() < 1e-9);

    down.store(1, Ordering::Relaxed);
    let kept = eventually(Duration::from_secs(5), async || {
        east_row(&lb).reason.contains("last score")
    })
    .await;
    assert!(kept, "{:?}", east_row(&lb));
    assert!(
        (east_row(&lb).share - (1.0 - local)).abs() < 1e-9,
        "the last score still counts: {:?}",
        east_row(&lb)
    );
    let neutral = eventually(Duration::from_secs(10), async || {
        east_row(&lb).reason.contains("mean of the others")
    })
    .await;
    assert!(neutral, "{:?}", east_row(&lb));
    assert!(
        (east_row(&lb).share - 0.5).abs() < 1e-9,
        "stale: counted at the mean, so neither favoured nor starved: {:?}",
        east_row(&lb)
    );
    lb.stop().await;
}
