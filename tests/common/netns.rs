//! Network namespaces for the tests that need a real kernel path: a client, a node running
//! wao-lb (usually with `redirect: tproxy`) and two backends, joined by veth pairs and
//! routes, with unique names so tests run in parallel, removed even when a test fails.
//! Clients and backends are small Python programs run inside the namespaces with
//! `ip netns exec`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::apiserver::{ApiServer, Kind};
use super::BIN;

/// Backend: TCP and UDP echo that prefixes each answer with its name and the peer's IP.
pub const BACKEND: &str = r#"
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
pub const CLIENT: &str = r#"
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

pub fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test; removed on drop.
pub struct Net {
    pub tag: String,
    /// Second octet of every IPv4 address in this topology.
    pub net: u32,
    pub children: Vec<Child>,
    pub lb: Option<Child>,
    pub dir: std::path::PathBuf,
}

impl Net {
    pub fn ns(&self, role: &str) -> String {
        format!("wao{}{role}", self.tag)
    }

    pub fn v4(&self, subnet: u32, host: u32) -> String {
        format!("10.{}.{subnet}.{host}", self.net)
    }

    pub fn v6(&self, subnet: u32, host: u32) -> String {
        format!("fd00:{}:{subnet}::{host}", self.net)
    }

    pub fn vip4(&self) -> String {
        format!("10.96.{}.10", self.net)
    }

    pub fn vip6(&self) -> String {
        format!("fd00:96:{}::10", self.net)
    }

    pub fn exec(&self, role: &str, args: &[&str]) -> std::process::Output {
        let ns = self.ns(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn exec_ok(&self, role: &str, args: &[&str]) {
        let out = self.exec(role, args);
        assert!(
            out.status.success(),
            "{role} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// client —— node —— b1, node —— b2; IPv4 and IPv6; the node routes between them.
    pub fn new() -> Net {
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

    pub fn spawn_in(&self, role: &str, args: &[&str]) -> Child {
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
    pub fn running() -> Net {
        let mut net = Net::new();
        net.backends();
        net.start_lb();
        net
    }

    /// Starts both backends on port 8080 (IPv4 and IPv6 each).
    pub fn backends(&mut self) {
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
    pub fn config(&self) -> std::path::PathBuf {
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

    pub fn start_lb(&mut self) {
        let config = self.config();
        self.start_lb_on(&config);
    }

    /// Starts wao-lb in the node namespace on the config file at `config`.
    pub fn start_lb_on(&mut self, config: &std::path::Path) {
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

    /// `path` of the node's wao-lb admin API (127.0.0.1:10349).
    pub fn admin(&self, path: &str) -> Option<String> {
        self.admin_at("nd", "127.0.0.1:10349", path)
    }

    /// `path` of the admin API at `addr`, asked from namespace `role`.
    pub fn admin_at(&self, role: &str, addr: &str, path: &str) -> Option<String> {
        let script = format!(
            "import urllib.request,sys\ntry:\n  print(urllib.request.urlopen('http://{addr}{path}', timeout=2).read().decode())\nexcept Exception as e:\n  sys.exit(1)"
        );
        let out = self.exec(role, &["python3", "-c", &script]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    pub fn wait_ready(&self) -> bool {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self.admin("/readyz").is_some_and(|r| r.contains("ready")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn client(&self, role: &str, args: &[&str]) -> Value {
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

    pub fn tables(&self) -> String {
        String::from_utf8_lossy(&self.exec("nd", &["nft", "list", "tables"]).stdout).to_string()
    }

    pub fn rules(&self) -> String {
        let v4 = self.exec("nd", &["ip", "rule"]).stdout;
        let v6 = self.exec("nd", &["ip", "-6", "rule"]).stdout;
        String::from_utf8_lossy(&v4).to_string() + &String::from_utf8_lossy(&v6)
    }

    pub fn signal_lb(&mut self, sig: &str) -> Option<std::process::ExitStatus> {
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

pub fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
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

impl Net {
    /// The namespaces with both backends, and the test API server inside the node's
    /// namespace with Node `nd` (the node wao-lb runs on, its InternalIP on the client's
    /// side).
    pub fn kubernetes() -> (Net, ApiServer) {
        let mut net = Net::new();
        net.backends();
        let listener =
            tokio::net::TcpListener::from_std(listener_in(&net.ns("nd"))).expect("tokio listener");
        let api = ApiServer::start_on(listener);
        api.put(
            Kind::Node,
            json!({"metadata": {"name": "nd"},
                   "status": {"addresses": [{"type": "InternalIP", "address": net.v4(1, 1)}]}}),
        );
        (net, api)
    }

    /// Starts wao-lb in the node's namespace, transparent, in Kubernetes mode for node `nd`
    /// against `api`, with `extra` YAML (power settings, nodes).
    pub fn start_kubernetes_lb(&mut self, api: &ApiServer, extra: &str) {
        let kubeconfig = api.kubeconfig(&self.dir);
        let config = self.dir.join("kube.yaml");
        std::fs::write(
            &config,
            format!(
                "admin: {{listen: 127.0.0.1:10349}}\nredirect: tproxy\ndiscovery:\n  kubernetes: {{nodeName: nd, minSyncPeriod: 100ms, kubeconfig: \"{}\"}}\n{extra}",
                kubeconfig.display()
            ),
        )
        .expect("write config");
        tokio::task::block_in_place(|| self.start_lb_on(&config));
    }
}
