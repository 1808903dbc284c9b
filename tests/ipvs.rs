//! `dataplane: ipvs` on a real IPVS kernel: Debian's user-mode Linux (6.1, IPVS as modules)
//! boots as a process with the host's filesystem as its root, loads `ip_vs`, `ip_vs_wrr`,
//! `veth` and `dummy`, and runs `tests/fixtures/ipvs_scenario.py`: a client and two
//! backends in network namespaces, a foreign IPVS service, wao-lb programming a TCP and a
//! UDP service, traffic, a removal with a connection held open, a weight change, a clean
//! stop, and SIGKILL with a restart. The scenario records; this test asserts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WEB: &str = "TCP 10.96.0.10:80";
const DNS: &str = "UDP 10.96.0.53:53";
const FOREIGN: &str = "TCP 10.99.0.1:80";
const EMPTY: &str = "TCP 10.96.0.20:80";
const B1: &str = "10.10.1.2";
const B2: &str = "10.10.2.2";

/// `ipvsadm -Ln` as {"TCP addr:port": {"dest": weight}}.
fn table(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut service = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p @ ("TCP" | "UDP"), addr, ..] => {
                let key = format!("{p} {addr}");
                out.entry(key.clone()).or_default();
                service = Some(key);
            }
            ["->", dest, _, weight, ..] if dest.starts_with(|c: char| c.is_ascii_digit()) => {
                if let (Some(s), Ok(w)) = (&service, weight.parse()) {
                    out.entry(s.clone())
                        .or_default()
                        .insert(dest.to_string(), w);
                }
            }
            _ => {}
        }
    }
    out
}

/// The table wao-lb programs for weights (b1, b2) (and a service without backends), next
/// to the foreign service.
fn expected(b1: u64, b2: u64) -> BTreeMap<String, BTreeMap<String, u64>> {
    let dests =
        |port: u16| BTreeMap::from([(format!("{B1}:{port}"), b1), (format!("{B2}:{port}"), b2)]);
    let mut t = only_foreign();
    t.insert(WEB.to_string(), dests(8080));
    t.insert(DNS.to_string(), dests(5353));
    t.insert(EMPTY.to_string(), BTreeMap::new());
    t
}

fn only_foreign() -> BTreeMap<String, BTreeMap<String, u64>> {
    BTreeMap::from([(
        FOREIGN.to_string(),
        BTreeMap::from([(format!("{B1}:8080"), 1)]),
    )])
}

/// b1's share of a client's answers.
fn b1_share(split: &Value) -> f64 {
    let by = &split["by_backend"];
    let (b1, b2) = (
        by["b1"].as_f64().unwrap_or(0.0),
        by["b2"].as_f64().unwrap_or(0.0),
    );
    b1 / (b1 + b2)
}

/// The `Conns` column of one destination in `ipvsadm -Ln --stats`.
fn conns(stats: &str, dest: &str) -> Option<u64> {
    stats
        .lines()
        .find(|l| l.contains(&format!("-> {dest}")))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
}

/// Boots user-mode Linux on the scenario; None (with the reason printed) where it cannot
/// start.
fn run_scenario(dir: &Path) -> Option<Value> {
    let uml = ["/usr/bin/linux.uml", "/usr/bin/linux"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(uml) = uml else {
        eprintln!("SKIPPED: user-mode Linux is not installed (apt-get install user-mode-linux; tests/run.sh does)");
        return None;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let init = dir.join("init.sh");
    std::fs::write(
        &init,
        format!(
            "#!/bin/sh\n\
             export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t tmpfs run /run\n\
             mkdir -p /run/netns\n\
             M={dir}/modules\n\
             mkdir -p $M/lib/modules\n\
             ln -sfn /usr/lib/uml/modules/$(uname -r) $M/lib/modules/$(uname -r)\n\
             depmod -b $M $(uname -r)\n\
             for m in ip_vs_wrr ip_vs_rr veth dummy; do modprobe -d $M $m || echo \"modprobe $m failed\"; done\n\
             ip link set lo up\n\
             python3 {scenario} {dir} {wao_lb} > {dir}/scenario.log 2>&1\n\
             echo o > /proc/sysrq-trigger\n",
            dir = dir.display(),
            scenario = fixtures.join("ipvs_scenario.py").display(),
            wao_lb = env!("CARGO_BIN_EXE_wao-lb"),
        ),
    )
    .expect("write init");
    Command::new("chmod")
        .arg("+x")
        .arg(&init)
        .status()
        .expect("chmod");
    let log = std::fs::File::create(dir.join("uml.log")).expect("uml.log");
    let mut child = match Command::new(&uml)
        .args([
            "mem=768M",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            &format!("init={}", init.display()),
            "con=null",
            "con0=fd:0,fd:1",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: user-mode Linux cannot start: {e}");
            return None;
        }
    };
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("user-mode Linux did not finish; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let results = dir.join("results.json");
    let Ok(text) = std::fs::read_to_string(&results) else {
        let log = std::fs::read_to_string(dir.join("uml.log")).unwrap_or_default();
        if !log.contains("Run ") {
            eprintln!("SKIPPED: user-mode Linux did not boot:\n{log}");
            return None;
        }
        panic!("the scenario wrote no results; see {}", dir.display());
    };
    Some(serde_json::from_str(&text).expect("results.json"))
}

#[test]
fn ipvs_on_a_real_kernel() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ipvs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let Some(r) = run_scenario(&dir) else { return };
    let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    assert!(
        r["error"].is_null(),
        "{}: see {}",
        r["error"],
        dir.display()
    );
    assert_eq!(
        r["steps"],
        serde_json::json!([
            "network",
            "started",
            "removal",
            "split",
            "weight change",
            "stop",
            "restart"
        ])
    );
    // Another tool's service was there before wao-lb and stays through everything.
    assert_eq!(table(&text("foreign_before")), only_foreign());

    // Programmed exactly as planned (node weights 3:1), VIPs on wao-lb's interface.
    assert_eq!(table(&text("programmed")), expected(7500, 2500));
    // A service without destinations: IPVS answers ICMP port unreachable, a refusal.
    assert_eq!(text("empty_connect"), "refused");
    for vip in ["10.96.0.10/32", "10.96.0.53/32", "10.96.0.20/32"] {
        assert!(text("interface").contains(vip), "{}", text("interface"));
    }

    // b2 leaves while a connection to it is open: quiesced, the connection finishes
    // byte-exact, then b2 is deleted (before its 60 s grace: its connections ended).
    assert_eq!(r["held_opened"], true);
    assert!(r["quiesced_seconds"].is_number(), "never quiesced");
    let held = table(&text("while_held"));
    assert_eq!(held[WEB].get(&format!("{B2}:8080")), Some(&0), "{held:?}");
    assert_eq!(r["still_quiesced_after_3s"], 0);
    // The kernel's open count of the held connection reaches /metrics, and the series goes
    // with the destination.
    assert!(
        r["open_while_held"].as_u64().is_some_and(|n| n >= 1),
        "open connections while held: {}",
        r["open_while_held"]
    );
    assert!(
        r["open_after_removal"].is_null(),
        "{}",
        r["open_after_removal"]
    );
    assert_eq!(r["held"]["ok"], true, "{}", r["held"]);
    assert!(
        r["deleted_seconds"].is_number(),
        "never deleted: {}",
        text("after_removal")
    );
    let removed = table(&text("after_removal"));
    assert_eq!(
        removed[WEB],
        BTreeMap::from([(format!("{B1}:8080"), 10_000)])
    );
    assert_eq!(removed[FOREIGN], only_foreign()[FOREIGN]);

    // Traffic through the VIPs: byte-exact, split 3:1 by the power weights (uniform, 1:1,
    // fails), and the kernel's counters are the picks in /weights.
    let tcp = &r["split_tcp"];
    assert_eq!(
        (tcp["exact"].as_u64(), tcp["failed"].as_u64()),
        (Some(400), Some(0)),
        "{tcp}"
    );
    for split in [tcp, &r["split_udp"]] {
        let share = b1_share(split);
        assert!((0.70..=0.80).contains(&share), "b1 share {share}: {split}");
    }
    assert_eq!(r["split_udp"]["failed"], 0);
    for (b, name) in [(B1, "b1"), (B2, "b2")] {
        let key = format!("10.96.0.10:80/tcp {b}:8080");
        let picked = r["picks_after"][&key].as_u64().unwrap_or(0)
            - r["picks_before"][&key].as_u64().unwrap_or(0);
        assert_eq!(Some(picked), tcp["by_backend"][name].as_u64(), "{key}");
    }

    // The same kernel counts in /metrics, per destination, with its node.
    let metrics = text("metrics");
    for (b, node) in [(B1, "n1"), (B2, "n2")] {
        let key = format!("10.96.0.10:80/tcp {b}:8080");
        let series = format!(
            "wao_lb_ipvs_destination_connections{{backend=\"{b}:8080\",node=\"{node}\",service=\"web\"}}"
        );
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert_eq!(
            value,
            r["picks_after"][&key].as_u64(),
            "{series}\n{metrics}"
        );
    }
    assert!(
        metrics.contains("wao_lb_ipvs_operations_total{op=\"set_dest\"}"),
        "{metrics}"
    );

    // A weight change (3:1 → 1:3) is a SET_DEST: the destinations keep their counters,
    // and the split follows.
    let seconds = r["weight_change_seconds"]
        .as_f64()
        .expect("new weights in the kernel");
    eprintln!(
        "weight change to kernel weights: {:.0} ms",
        seconds * 1000.0
    );
    for b in [B1, B2] {
        let dest = format!("{b}:8080");
        let before = conns(&text("stats_before_change"), &dest);
        assert!(before.is_some_and(|c| c > 0), "{dest}");
        assert_eq!(
            before,
            conns(&text("stats_after_change"), &dest),
            "{dest} re-created"
        );
    }
    let share = b1_share(&r["split_tcp_after"]);
    assert!((0.20..=0.30).contains(&share), "b1 share after {share}");

    // A clean stop removes exactly what wao-lb added.
    assert_eq!(r["stop_exit"], 0);
    assert_eq!(table(&text("after_stop")), only_foreign());
    assert!(
        text("interface_after_stop").is_empty(),
        "{}",
        text("interface_after_stop")
    );

    // SIGKILL (with a destination left at weight 0) and a restart converge to one copy of
    // each service with its planned weights; the final stop leaves the foreign one.
    let killed = table(&text("after_kill"));
    assert_eq!(killed[WEB].get(&format!("{B1}:8080")), Some(&0));
    assert_eq!(table(&text("after_restart")), expected(7500, 2500));
    assert_eq!(table(&text("final")), only_foreign());
}
