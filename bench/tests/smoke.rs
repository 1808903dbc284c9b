//! A smoke run of every scenario through the real `wao-bench` binary with tiny sizes:
//! each scenario measures wao-lb, bound and transparent, writes its JSON and SVG, and accounts for
//! every requested target either as rows or as a skipped line with a reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `wao-bench ARGS --smoke` on the workspace's wao-lb into a fresh output directory
/// named after `tag`; asserts it succeeded and returns its stdout and that directory.
fn run_smoke(args: &[&str], tag: &str) -> (String, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wao_lb = ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("wao-lb"))
        .find(|p| p.is_file())
        .expect("the workspace build holds the wao-lb binary");
    let out = std::env::temp_dir().join(format!("wao-bench-{tag}-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_wao-bench"))
        .args(args)
        .arg("--smoke")
        .arg("--wao-lb")
        .arg(&wao_lb)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("wao-bench runs");
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    (stdout, out)
}

#[test]
fn every_scenario_measures_wao_lb_and_accounts_for_every_target() {
    let (stdout, out) = run_smoke(
        &[
            "all",
            "--targets",
            "direct,floor,floor-tproxy,wao-lb,wao-lb-tproxy,haproxy,nginx,dnat",
        ],
        "smoke",
    );
    let expected = [
        ("throughput", "gbit_per_second", 2),
        ("rr", "rate", 2),
        ("crr", "rate", 1),
        ("idle", "rss_kib_per_connection", 1),
        ("udp", "rate", 1),
    ];
    for (scenario, key, variants) in expected {
        let json = std::fs::read_to_string(out.join(format!("{scenario}.json")))
            .unwrap_or_else(|e| panic!("{scenario}.json: {e}"));
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rows = report["rows"].as_array().unwrap();
        // Bound and transparent (CI runs as root with nftables, so both must work).
        let lb: Vec<_> = rows
            .iter()
            .filter(|r| r["target"] == "wao-lb" || r["target"] == "wao-lb-tproxy")
            .collect();
        assert_eq!(lb.len(), 2 * variants, "{scenario}: {json}");
        // The floors are built in: they always run (the transparent one behind wao-lb's
        // rules, as root with nftables like wao-lb-tproxy), and move the same traffic.
        let floor: Vec<_> = rows
            .iter()
            .filter(|r| r["target"] == "floor" || r["target"] == "floor-tproxy")
            .collect();
        assert_eq!(floor.len(), 2 * variants, "{scenario}: {json}");
        assert!(
            floor
                .iter()
                .all(|r| r["values"][key].as_f64().unwrap_or(-1.0) >= 0.0),
            "{scenario}: {json}"
        );
        for r in &lb {
            let v = r["values"][key].as_f64().unwrap_or(-1.0);
            // Idle memory may not grow at all for 50 connections; rates must be positive.
            let ok = if key == "rss_kib_per_connection" {
                v >= 0.0
            } else {
                v > 0.0
            };
            assert!(ok, "{scenario}: wao-lb {key} = {v}: {json}");
            if key != "gbit_per_second" && scenario != "idle" {
                assert!(
                    r["values"]["p99_us"].as_f64().unwrap_or(0.0) > 0.0,
                    "{json}"
                );
            }
        }
        assert!(
            lb.iter().any(|r| r["values"].get("proxy_cpu_us").is_some()
                || r["values"].get("proxy_cpu_seconds_per_gb").is_some()
                || scenario == "idle"),
            "{scenario}: wao-lb has no CPU figure: {json}"
        );
        // Every target is either measured or skipped with a reason: never silently absent.
        for target in [
            "direct",
            "floor",
            "floor-tproxy",
            "wao-lb",
            "wao-lb-tproxy",
            "haproxy",
            "nginx",
            "nft-dnat",
        ] {
            let measured = rows.iter().any(|r| r["target"] == target);
            let skipped =
                report["skipped"].as_array().unwrap().iter().any(|s| {
                    s["target"] == target && !s["reason"].as_str().unwrap_or("").is_empty()
                });
            assert!(
                measured ^ skipped,
                "{scenario}: {target} neither measured nor skipped: {json}"
            );
        }
        let svg = std::fs::read_to_string(out.join(format!("{scenario}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<rect"),
            "{scenario}.svg"
        );
        assert!(stdout.contains(&format!("== {scenario}:")), "{stdout}");
    }
    let energy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("energy.json")).unwrap()).unwrap();
    assert!(energy.as_array().is_some_and(|a| !a.is_empty()));
    let _ = std::fs::remove_dir_all(&out);
}

/// A short soak: churn (kills, restarts, rewrites) with every connection accounted for, none
/// silently short, and wao-lb's footprint sampled.
#[test]
fn a_short_soak_loses_no_byte_silently() {
    let (stdout, out) = run_smoke(&["soak"], "soak");
    let json = std::fs::read_to_string(out.join("soak.json")).expect("soak.json");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let n = |k: &str| report["outcomes"][k].as_u64().unwrap_or(u64::MAX);
    assert!(n("byte_exact") > 0, "{json}");
    for defect in ["silently_short", "corrupt", "stalled"] {
        assert_eq!(n(defect), 0, "{defect}: {json}");
    }
    assert!(report["backend_kills"].as_u64().unwrap_or(0) >= 1, "{json}");
    assert!(
        report["reloads_applied"].as_f64().unwrap_or(0.0) >= 1.0,
        "{json}"
    );
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{json}");
    assert!(
        samples
            .iter()
            .all(|s| s["rss_kib"].as_u64().unwrap_or(0) > 0 && s["fds"].as_u64().unwrap_or(0) > 0),
        "{json}"
    );
    assert!(stdout.contains("== soak:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A small kube-scale run: wao-lb syncs 200 Services from the test API server, follows every
/// EndpointSlice change, and reports its memory and metric series.
#[test]
fn a_small_kube_scale_run_syncs_and_follows_changes() {
    let (stdout, out) = run_smoke(&["kube-scale"], "kube");
    assert!(stdout.contains("== kube-scale:"), "{stdout}");
    let json = std::fs::read_to_string(out.join("kube-scale.json")).expect("kube-scale.json");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["services"], 200, "{json}");
    assert_eq!(report["changes"], 5, "every change was followed: {json}");
    assert!(
        report["first_sync_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{json}"
    );
    assert!(report["synced_rss_kib"].as_u64().unwrap_or(0) > 0, "{json}");
    assert!(report["metrics_series"].as_u64().unwrap_or(0) > 0, "{json}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `energy --json` is a contract others script against: stdout is one JSON object per
/// line and mix, with the issue's keys, and nothing else.
#[test]
fn energy_json_prints_only_the_contract_lines() {
    let (stdout, out) = run_smoke(&["energy", "--json"], "energy-json");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "one line per shipped mix: {stdout}");
    for line in lines {
        let mix: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(mix["mix"].is_string(), "{line}");
        assert_eq!(mix["defaultPolicy"], "planner", "{line}");
        assert!(mix["uniformFeasible"].is_boolean(), "{line}");
        assert!(
            mix["optimumWatts"].as_f64().is_some_and(|w| w > 0.0),
            "{line}"
        );
        for policy in ["uniform", "wao", "wao-formula", "marginal", "planner"] {
            let p = &mix["policies"][policy];
            assert!(
                p["watts"].as_f64().is_some_and(|w| w > 0.0),
                "{policy}: {line}"
            );
            assert!(
                p["shareOfOptimalSaving"].is_number() || p["shareOfOptimalSaving"].is_null(),
                "{policy}: {line}"
            );
            assert!(p["peakUtilisation"].is_number(), "{policy}: {line}");
            assert_eq!(
                p["busiestShareRange"].as_array().map(Vec::len),
                Some(2),
                "{line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A reader that goes away (`wao-bench | head`) costs the printed tables, not the run: no
/// panic, the exit status of a good run, and the JSON written.
#[test]
fn a_closed_stdout_ends_nothing() {
    let out = std::env::temp_dir().join(format!("wao-bench-closed-stdout-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wao-bench"))
        .args(["energy", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wao-bench starts");
    // The read end closes before the run has its first table (it prints once the
    // simulation is done), so its writes meet EPIPE.
    drop(child.stdout.take());
    let done = child.wait_with_output().expect("wao-bench ends");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{}: {stderr}", done.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.join("energy.json").is_file(),
        "the run's JSON is written"
    );
    let _ = std::fs::remove_dir_all(&out);
}
