//! Transparent mode on the real kernel. Each test builds its own network namespaces — a
//! client, the node running wao-lb with `redirect: tproxy`, and two backends — joined by
//! veth pairs and routes, with unique names so tests run in parallel, and removes them
//! even when it fails. Clients and backends are small Python programs run inside the
//! namespaces with `ip netns exec`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::BIN;
use serde_json::Value;

/// Backend: TCP and UDP echo that prefixes each answer with its name and the peer's IP.
const BACKEND: &str = r#"
import socket, sys, threading
name, port, family = sys.argv[1], int(sys.argv[2]), socket.AF_INET6 if sys.argv[3] == "6" else socket.AF_INET
any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
def tcp():
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((any_addr, port)); s.listen(512)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
def serve(c, peer):
    data = b""
    while True:
        b = c.recv(65536)
        if not b: break
        data += b
    c.sendall(("%s %s\n" % (name, peer[0])).encode() + data)
    c.close()
def udp():
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((any_addr, port))
    while True:
        d, peer = s.recvfrom(65536)
        s.sendto(("%s %s\n" % (name, peer[0])).encode() + d, peer)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// Client: `tcp|udp HOST PORT COUNT SIZE` → JSON {backend name: count, "errors": n, "peers": [...]},
/// checking every echoed payload byte for byte; `refused HOST PORT` → how a connect ended;
/// `burst HOST PORT COUNT` → COUNT UDP sockets sending at once → {"replies": n, "foreign": n, ...}.
const CLIENT: &str = r#"
import json, os, socket, sys, time
mode, host = sys.argv[1], sys.argv[2]
port = int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if mode == "refused":
    s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(3)
    t = time.time()
    try:
        s.connect((host, port)); s.sendall(b"x"); d = s.recv(10)
        print(json.dumps({"result": "closed" if not d else "data", "seconds": time.time() - t}))
    except socket.timeout:
        print(json.dumps({"result": "timeout", "seconds": time.time() - t}))
    except (ConnectionRefusedError, ConnectionResetError) as e:
        print(json.dumps({"result": "refused", "seconds": time.time() - t}))
    sys.exit(0)
if mode == "burst":
    # COUNT sockets send at once, three rounds; each must get its own datagram back. A
    # reply carrying another socket's datagram was misdelivered; one of an earlier round of
    # its own is late.
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(int(sys.argv[4]))]
    out = {"replies": 0, "foreign": 0, "late": 0, "missing": 0}
    for r in range(3):
        sent = [b"%d %d " % (i, r) + os.urandom(100) for i in range(len(socks))]
        for s, p in zip(socks, sent):
            s.sendto(p, (host, port))
        deadline = time.time() + 10
        for i, (s, p) in enumerate(zip(socks, sent)):
            while True:
                s.settimeout(max(0.01, deadline - time.time()))
                try:
                    data, src = s.recvfrom(70000)
                except socket.timeout:
                    out["missing"] += 1
                    break
                body = data.split(b"\n", 1)[1]
                if src[0] == host and body == p:
                    out["replies"] += 1
                    break
                if body.split(b" ")[0] == b"%d" % i:
                    out["late"] += 1
                else:
                    out["foreign"] += 1
    print(json.dumps(out))
    sys.exit(0)
count, size = int(sys.argv[4]), int(sys.argv[5])
out = {"errors": 0, "peers": []}
out["slowest"] = 0.0
for i in range(count):
    payload = os.urandom(size)
    started = time.time()
    try:
        if mode == "tcp":
            s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(5)
            s.connect((host, port)); s.sendall(payload); s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                b = s.recv(65536)
                if not b: break
                data += b
            s.close()
        else:
            s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(2)
            s.sendto(payload, (host, port)); data, src = s.recvfrom(70000); s.close()
            if src[0] != host:
                raise Exception("reply from %s, not %s" % (src[0], host))
        head, body = data.split(b"\n", 1)
        name, peer = head.decode().split(" ")
        if body != payload:
            raise Exception("payload differs")
        out[name] = out.get(name, 0) + 1
        out["slowest"] = max(out["slowest"], time.time() - started)
        if peer not in out["peers"]: out["peers"].append(peer)
    except Exception as e:
        out["errors"] += 1
        out["last_error"] = str(e)
print(json.dumps(out))
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test; removed on drop.
struct Net {
    tag: String,
    /// Second octet of every IPv4 address in this topology.
    net: u32,
    children: Vec<Child>,
    lb: Option<Child>,
    dir: std::path::PathBuf,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("wao{}{role}", self.tag)
    }

    fn v4(&self, subnet: u32, host: u32) -> String {
        format!("10.{}.{subnet}.{host}", self.net)
    }

    fn v6(&self, subnet: u32, host: u32) -> String {
        format!("fd00:{}:{subnet}::{host}", self.net)
    }

    pub fn vip4(&self) -> String {
        format!("10.96.{}.10", self.net)
    }

    pub fn vip6(&self) -> String {
        format!("fd00:96:{}::10", self.net)
    }

    fn exec(&self, role: &str, args: &[&str]) -> std::process::Output {
        let ns = self.ns(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn exec_ok(&self, role: &str, args: &[&str]) {
        let out = self.exec(role, args);
        assert!(
            out.status.success(),
            "{role} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// client —— node —— b1, node —— b2; IPv4 and IPv6; the node routes between them.
    fn new() -> Net {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{i}", std::process::id() % 100_000);
        let net = 100 + (std::process::id() * 7 + i * 13) % 150;
        let dir = std::env::temp_dir().join(format!("wao-lb-tproxy-{tag}"));
        let _ = std::fs::create_dir_all(&dir);
        let n = Net {
            tag,
            net,
            children: Vec::new(),
            lb: None,
            dir,
        };
        for role in ["cl", "nd", "b1", "b2"] {
            must(&["ip", "netns", "add", &n.ns(role)]);
            n.exec_ok(role, &["ip", "link", "set", "lo", "up"]);
        }
        for (k, peer) in [(1u32, "cl"), (2, "b1"), (3, "b2")] {
            let (a, b) = (format!("w{}n{k}", n.tag), format!("w{}p{k}", n.tag));
            must(&[
                "ip",
                "link",
                "add",
                &a,
                "netns",
                &n.ns("nd"),
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &n.ns(peer),
            ]);
            n.exec_ok(
                "nd",
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", n.v4(k, 1)),
                    "dev",
                    &a,
                ],
            );
            n.exec_ok(
                "nd",
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", n.v6(k, 1)),
                    "dev",
                    &a,
                    "nodad",
                ],
            );
            n.exec_ok("nd", &["ip", "link", "set", &a, "up"]);
            n.exec_ok(
                peer,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", n.v4(k, 2)),
                    "dev",
                    &b,
                ],
            );
            n.exec_ok(
                peer,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", n.v6(k, 2)),
                    "dev",
                    &b,
                    "nodad",
                ],
            );
            n.exec_ok(peer, &["ip", "link", "set", &b, "up"]);
            n.exec_ok(peer, &["ip", "route", "add", "default", "via", &n.v4(k, 1)]);
            n.exec_ok(
                peer,
                &["ip", "-6", "route", "add", "default", "via", &n.v6(k, 1)],
            );
        }
        // Like any node, this one has a default route (here toward the client's side), so
        // its own packets to a VIP get a route before the output hooks redirect them.
        n.exec_ok("nd", &["ip", "route", "add", "default", "via", &n.v4(1, 2)]);
        n.exec_ok(
            "nd",
            &["ip", "-6", "route", "add", "default", "via", &n.v6(1, 2)],
        );
        n.exec_ok("nd", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        n.exec_ok("nd", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        n
    }

    fn spawn_in(&self, role: &str, args: &[&str]) -> Child {
        let ns = self.ns(role);
        Command::new("ip")
            .args(["netns", "exec", ns.as_str()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn in {role}: {e}"))
    }

    /// A topology with both backends and wao-lb up and ready.
    fn running() -> Net {
        let mut net = Net::new();
        net.backends();
        net.start_lb();
        net
    }

    /// Starts both backends on port 8080 (IPv4 and IPv6 each).
    fn backends(&mut self) {
        for role in ["b1", "b2"] {
            for family in ["4", "6"] {
                let port = if family == "4" { "8080" } else { "8086" };
                let c = self.spawn_in(role, &["python3", "-c", BACKEND, role, port, family]);
                self.children.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// The config: TCP and UDP services on the IPv4 and IPv6 VIPs, b1 weight 1, b2 weight 3,
    /// plus a VIP port with no backends.
    fn config(&self) -> std::path::PathBuf {
        let b = |k: u32, port: u16, v6: bool| {
            if v6 {
                format!("\"[{}]:{port}\"", self.v6(k, 2))
            } else {
                format!("\"{}:{port}\"", self.v4(k, 2))
            }
        };
        let svc = |name: &str, proto: &str, vip: String, port: u16, v6: bool| {
            format!(
                "  - name: {name}\n    protocol: {proto}\n    address: \"{vip}\"\n    backends:\n      - {{address: {}, node: b1}}\n      - {{address: {}, node: b2}}\n",
                b(2, port, v6),
                b(3, port, v6)
            )
        };
        let yaml = format!(
            "admin: {{listen: 127.0.0.1:10349}}\nredirect: tproxy\nproxy: {{drainTimeout: 2s}}\nservices:\n{}{}{}{}  - name: empty\n    address: \"{}:81\"\nnodes:\n  b1: {{weight: 1}}\n  b2: {{weight: 3}}\n",
            svc("web", "tcp", format!("{}:80", self.vip4()), 8080, false),
            svc("dns", "udp", format!("{}:53", self.vip4()), 8080, false),
            svc("web6", "tcp", format!("[{}]:80", self.vip6()), 8086, true),
            svc("dns6", "udp", format!("[{}]:53", self.vip6()), 8086, true),
            self.vip4(),
        );
        let path = self.dir.join("lb.yaml");
        std::fs::write(&path, yaml).expect("write config");
        path
    }

    fn start_lb(&mut self) {
        let config = self.config();
        self.start_lb_on(&config);
    }

    /// Starts wao-lb in the node namespace on the config file at `config`.
    fn start_lb_on(&mut self, config: &std::path::Path) {
        let ns = self.ns("nd");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.as_str(), BIN, "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wao-lb");
        self.lb = Some(child);
        assert!(
            self.wait_ready(),
            "wao-lb became ready in the node namespace"
        );
    }

    fn admin(&self, path: &str) -> Option<String> {
        let script = format!(
            "import urllib.request,sys\ntry:\n  print(urllib.request.urlopen('http://127.0.0.1:10349{path}', timeout=2).read().decode())\nexcept Exception as e:\n  sys.exit(1)"
        );
        let out = self.exec("nd", &["python3", "-c", &script]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn wait_ready(&self) -> bool {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self.admin("/readyz").is_some_and(|r| r.contains("ready")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn client(&self, role: &str, args: &[&str]) -> Value {
        let mut full = vec!["python3", "-c", CLIENT];
        full.extend_from_slice(args);
        let out = self.exec(role, &full);
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn tables(&self) -> String {
        String::from_utf8_lossy(&self.exec("nd", &["nft", "list", "tables"]).stdout).to_string()
    }

    fn rules(&self) -> String {
        let v4 = self.exec("nd", &["ip", "rule"]).stdout;
        let v6 = self.exec("nd", &["ip", "-6", "rule"]).stdout;
        String::from_utf8_lossy(&v4).to_string() + &String::from_utf8_lossy(&v6)
    }

    fn signal_lb(&mut self, sig: &str) -> Option<std::process::ExitStatus> {
        let lb = self.lb.as_mut()?;
        // `ip netns exec` execs wao-lb, so the child's pid is wao-lb's.
        let _ = sh(&["kill", &format!("-{sig}"), &lb.id().to_string()]);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(s)) = lb.try_wait() {
                self.lb = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut lb) = self.lb.take() {
            let _ = lb.kill();
            let _ = lb.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["cl", "nd", "b1", "b2"] {
            let _ = sh(&["ip", "netns", "del", &self.ns(role)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

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

/// A TCP listener on 127.0.0.1 inside network namespace `ns`, bound from a thread that
/// enters it, so a server in this process is reachable from processes in that namespace.
fn listener_in(ns: &str) -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: setns(2) only moves this short-lived thread into the namespace; the
        // descriptor is open for the duration of the call.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the namespace");
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
    .join()
    .expect("listener thread")
}

/// Kubernetes mode through the transparent path: an opted-in NodePort Service with
/// `externalTrafficPolicy: Local`, its pods on this node (b1) and another (b2). The
/// ClusterIP reaches both; the NodePort on the node's address only the local one; when the
/// local pod goes, the NodePort drops (no answer, as kube-proxy) while the ClusterIP serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_clusterip_nodeport_local_and_drop_through_tproxy() {
    use common::apiserver::{ApiServer, Kind};
    use serde_json::json;
    let mut net = Net::new();
    net.backends();
    let listener =
        tokio::net::TcpListener::from_std(listener_in(&net.ns("nd"))).expect("tokio listener");
    let api = ApiServer::start_on(listener);
    let node_ip = net.v4(1, 1);
    api.put(
        Kind::Node,
        json!({"metadata": {"name": "nd"},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip}]}}),
    );
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
    let kubeconfig = api.kubeconfig(&net.dir);
    let config = net.dir.join("kube.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{listen: 127.0.0.1:10349}}\nredirect: tproxy\ndiscovery:\n  kubernetes: {{nodeName: nd, minSyncPeriod: 100ms, kubeconfig: \"{}\"}}\n",
            kubeconfig.display()
        ),
    )
    .expect("write config");
    net.start_lb_on(&config);

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
