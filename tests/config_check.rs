//! `wao-lb check` (and `wao-lb ipvs`): every shipped example passes; every broken file fails with exit code 2
//! and names the path of the bad key.

mod common;

use std::process::Command;

use common::*;

fn check(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run wao-lb check");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, text) = check(&path);
            assert_eq!(code, 0, "{}: {text}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "config/ holds example configs");
}

const GOOD_SERVICE: &str = "services:\n  - name: web\n    address: 127.0.0.1:8080\n    backends:\n      - {address: 127.0.0.1:9001, node: a}\n";

#[test]
fn broken_files_name_the_bad_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad backend address",
            "services:\n  - name: web\n    address: 127.0.0.1:80\n    backends:\n      - {address: 127.0.0.1:9001, node: a}\n      - {address: x, node: b}\n",
            &["services[0].backends[1].address: invalid socket address \"x\""],
        ),
        (
            "second service's backend",
            "services:\n  - name: a\n    address: 127.0.0.1:80\n  - name: b\n    address: 127.0.0.1:81\n    backends:\n      - {address: \"300.0.0.1:1\", node: n}\n",
            &["services[1].backends[0].address: invalid socket address \"300.0.0.1:1\""],
        ),
        ("unknown top-level key", "servics: []\n", &["unknown field `servics`"]),
        (
            "unknown nested key",
            "services:\n  - name: a\n    address: 127.0.0.1:80\n    backend: []\n",
            &["services[0].backend: unknown field `backend`"],
        ),
        ("bad protocol", "services:\n  - name: a\n    protocol: sctp\n    address: 127.0.0.1:80\n", &["services[0].protocol: unknown variant `sctp`"]),
        ("bad duration", "proxy: {connectTimeout: 5 seconds}\n", &["proxy.connectTimeout: invalid duration \"5 seconds\""]),
        ("zero duration", "proxy: {idleTimeout: 0s}\n", &["proxy.idleTimeout: must be greater than zero"]),
        (
            "duration that overflows",
            "proxy: {connectTimeout: 10000000000000000000s10000000000000000000s}\n",
            &["proxy.connectTimeout: duration \"10000000000000000000s10000000000000000000s\" is too long"],
        ),
        ("bad attempts", "proxy: {connectAttempts: 0}\n", &["proxy.connectAttempts: 0 is outside 1..16"]),
        ("bad workers", "proxy: {workers: 0}\n", &["proxy.workers: 0 is outside 1..1024"]),
        ("bad quantity", "power: {cpuPerConnection: lots}\n", &["power.cpuPerConnection: invalid CPU quantity \"lots\""]),
        ("bad policy", "power: {policy: greedy}\n", &["power.policy: unknown variant `greedy`"]),
        ("bad admin", "admin: {listen: localhost}\n", &["admin.listen: invalid socket address \"localhost\""]),
        (
            "duplicate frontend",
            "services:\n  - name: a\n    address: 127.0.0.1:80\n  - name: b\n    address: 127.0.0.1:80\n",
            &["services[1].address: 127.0.0.1:80/tcp is already used by another service"],
        ),
        (
            "unknown profile",
            "nodes:\n  a: {model: {type: curve, profile: pentium}}\n",
            &["nodes.a.model.profile: unknown profile \"pentium\""],
        ),
        ("cpu out of range", "nodes:\n  a: {cpu: {source: static, percent: 130}, weight: 1}\n", &["nodes.a.cpu.percent: 130 is outside 0..100 %"]),
        ("node without model", "nodes:\n  a: {cores: 8}\n", &["nodes.a.model: missing"]),
        ("udp cap", "udp: {maxSessions: 0}\n", &["udp.maxSessions: must be at least 1"]),
        (
            "health checks on UDP, and out of range",
            "services:\n  - name: dns\n    protocol: udp\n    address: 127.0.0.1:53\n    healthCheck: {interval: 1s, timeout: 2s, rise: 0, fall: 101}\n",
            &[
                "services[0].healthCheck: checks are TCP connects: only for protocol tcp",
                "services[0].healthCheck.timeout: must be at most the interval",
                "services[0].healthCheck.rise: must be from 1 to 100",
                "services[0].healthCheck.fall: must be from 1 to 100",
            ],
        ),
        ("health check too often", "services:\n  - name: web\n    address: 127.0.0.1:80\n    healthCheck: {interval: 10ms}\n", &["services[0].healthCheck.interval: must be at least 100ms"]),
        ("not yaml", "services: [\n", &["did not find expected"]),
        ("empty file", "", &["the config is empty"]),
        ("no services key", "proxy: {idleTimeout: 1m}\n", &["services: missing; write `services: []`"]),
        ("alias", "services: []\nproxy: &p {idleTimeout: 1m}\nudp: *p\n", &["YAML aliases (*name) are not accepted (line 3)"]),
        ("duplicate top-level key", "services: []\nproxy: {}\nproxy: {}\n", &["proxy: duplicate key \"proxy\" (line 3)"]),
        ("deep nesting", &format!("services: []\nproxy: {}{}\n", "[".repeat(5000), "]".repeat(5000)), &["nested deeper than 32 levels"]),
        ("huge number", "nodes:\n  a: {weight: 1e300}\n", &["nodes.a.weight: 1e300 is outside 0..1000000"]),
        (
            "credentials on a source that ignores them",
            "nodes:\n  a: {cpu: {source: node-exporter, url: \"http://h:9100\", username: u, password: p}, weight: 1}\n",
            &["nodes.a.cpu.username: not used by source node-exporter", "nodes.a.cpu.password: not used by source node-exporter"],
        ),
        (
            "credentials in a bad URL",
            "nodes:\n  a: {cpu: {source: node-exporter, url: \"ftp://admin:hunter2@h\"}, weight: 1}\n",
            &["nodes.a.cpu.url: \"ftp://***@h\" is not an http:// or https:// URL"],
        ),
        (
            "every error at once",
            "services:\n  - name: \"\"\n    address: nope\n    backends:\n      - {address: y, node: a}\nproxy: {drainTimeout: forever}\n",
            &[
                "services[0].name: must not be empty",
                "services[0].address: invalid socket address \"nope\"",
                "services[0].backends[0].address: invalid socket address \"y\"",
                "proxy.drainTimeout: invalid duration \"forever\"",
            ],
        ),
    ];
    let dir = TempDir::new("check");
    for (i, (what, yaml, expected)) in cases.iter().enumerate() {
        let path = dir.file(&format!("case{i}.yaml"), yaml);
        let (code, text) = check(&path);
        assert_eq!(code, 2, "{what}: exit code, output: {text}");
        assert!(
            !text.contains("hunter2"),
            "{what}: a password shown: {text}"
        );
        for e in *expected {
            assert!(text.contains(e), "{what}: expected {e:?} in:\n{text}");
        }
    }
    let good = dir.file("good.yaml", GOOD_SERVICE);
    assert_eq!(check(&good).0, 0);
}

/// Legal but suspicious settings pass with a warning naming the key.
#[test]
fn suspicious_settings_pass_with_a_warning() {
    let dir = TempDir::new("warn");
    let path = dir.file(
        "lb.yaml",
        "admin: {listen: \"0.0.0.0:10349\"}\nservices:\n  - name: web\n    address: 127.0.0.1:8080\n    backends:\n      - {address: 127.0.0.1:9001, node: a}\n      - {address: 127.0.0.1:9002, node: typo}\nnodes:\n  a: {weight: 1}\n",
    );
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: admin.listen: 0.0.0.0:10349 is reachable from other hosts"),
        "{text}"
    );
    assert!(
        text.contains("warning: services[0].backends[1].node: \"typo\" has no entry under nodes:"),
        "{text}"
    );
    assert!(!text.contains("backends[0].node"), "{text}");
}

/// The DaemonSet's config (deploy/configmap.yaml) passes `check` on a node, where the
/// downward API sets $NODE_NAME; without it, the error names the key and the variable.
#[test]
fn the_daemonset_config_is_valid_on_a_node() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/configmap.yaml")).expect("configmap");
    let map: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let config = map["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml");
    let dir = TempDir::new("daemonset");
    let path = dir.file("config.yaml", config);
    let run = |node: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["check", "--config"])
            .arg(&path)
            .env_remove("NODE_NAME");
        if let Some(n) = node {
            c.env("NODE_NAME", n);
        }
        let out = c.output().expect("run check");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, text) = run(Some("worker-1"));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning: admin.listen"), "{text}");
    let (code, text) = run(None);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("discovery.kubernetes.nodeName: missing, and $NODE_NAME is not set"),
        "{text}"
    );
}

/// `dataplane: ipvs`: `wao-lb ipvs` prints what would be programmed, in `ipvsadm -Ln`'s
/// layout, without a kernel; on a kernel without IPVS (this machine's), `check` warns and
/// `run` stops at once, both naming the module to load.
#[test]
fn ipvs_is_printed_and_a_kernel_without_it_is_named() {
    let dir = TempDir::new("ipvs");
    let path = dir.file(
        "lb.yaml",
        "dataplane: ipvs\nadmin: {listen: \"127.0.0.1:0\"}\nnodes:\n  a: {weight: 3}\n  b: {weight: 1}\n\
         services:\n  - name: web\n    address: 10.96.0.10:80\n    sessionAffinity: {type: ClientIP, timeout: 1h}\n    backends:\n\
         \x20     - {address: 10.244.1.5:8080, node: a}\n      - {address: 10.244.2.7:8080, node: b}\n",
    );
    let out = Command::new(BIN)
        .args(["ipvs", "--config"])
        .arg(&path)
        .output()
        .expect("run wao-lb ipvs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("TCP  10.96.0.10:80 wrr persistent 3600"),
        "{text}"
    );
    assert!(text.contains("-> 10.244.1.5:8080"), "{text}");
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        eprintln!("this kernel has IPVS: the missing-module messages are not checked here");
        return;
    }
    let (code, text) = check(&path);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: dataplane: ipvs: the kernel has no IPVS") && text.contains("ip_vs"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run wao-lb run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: ipvs: the kernel has no IPVS") && text.contains("modprobe ip_vs_wrr"),
        "{text}"
    );
}
