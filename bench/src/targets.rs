//! The targets a scenario measures, each in front of the same built-in backend: `direct`
//! (no proxy, the limit), `wao-lb` bound to its service address, `wao-lb-tproxy` (the
//! transparent path: a VIP on 127.77.0.1 caught by wao-lb's own nftables rules), HAProxy
//! (`mode tcp`, splice on), nginx `stream`, and the kernel's nftables DNAT path, which is
//! what the transparent path replaces. The harness writes each peer's config into its work folder,
//! starts the peer alone on the proxy core with one thread/worker, waits until it serves,
//! and stops it on drop. A peer that is missing or fails to start is a `Skip` with a reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Direct,
    /// The floor (`floor.rs`): the least a userspace proxy spends.
    Floor,
    /// The floor behind wao-lb's TPROXY rules: the least the transparent path spends.
    FloorTproxy,
    WaoLb,
    WaoLbTproxy,
    Haproxy,
    Nginx,
    Dnat,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Floor => "floor",
            Target::FloorTproxy => "floor-tproxy",
            Target::WaoLb => "wao-lb",
            Target::WaoLbTproxy => "wao-lb-tproxy",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
            Target::Dnat => "nft-dnat",
        }
    }

    /// Whether the target runs as a process of its own whose CPU and RSS can be read.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            Target::Floor
                | Target::FloorTproxy
                | Target::WaoLb
                | Target::WaoLbTproxy
                | Target::Haproxy
                | Target::Nginx
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What every peer is started with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub wao_lb: PathBuf,
    pub work: PathBuf,
    /// The core each proxy runs alone on (None: no pinning, e.g. on one core).
    pub proxy_core: Option<usize>,
    /// The open-files limit the peers inherit from the harness.
    pub open_files: u64,
    /// Threads or worker processes each proxy runs (the floor is one thread by design).
    pub workers: usize,
    /// The floor's pipe size.
    pub floor_pipe_bytes: usize,
}

/// A target serving at `addr`. `pid` is the proxy's process, if it has one.
pub struct Running {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    _stop: Stop,
}

enum Stop {
    Nothing,
    Process(Child),
    NftTable(String),
}

impl Drop for Stop {
    fn drop(&mut self) {
        match self {
            Stop::Nothing => {}
            Stop::Process(child) => stop_gracefully(child),
            Stop::NftTable(table) => {
                let _ = Command::new("nft")
                    .args(["delete", "table", "ip", table])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// SIGTERM, so that a draining proxy finishes and wao-lb-tproxy removes its rules.
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Waits up to `limit` for `child` to exit.
fn exited_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fallback when a `Running` is dropped without `stop()` (an error path): SIGTERM,
/// a short wait, then SIGKILL.
pub fn stop_gracefully(child: &mut Child) {
    // An exited child's pid may belong to someone else by now: signal only a live one.
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    terminate(child);
    if !exited_within(child, Duration::from_secs(2)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Running {
    /// Stops the target with SIGTERM. It awaits the exit, so the harness's runtime keeps
    /// serving the built-in backend meanwhile and a draining proxy sees its last
    /// connections close. SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Stop::Process(child) = &mut self._stop {
            terminate(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Dropping `self` kills what is left and deletes an nftables table.
    }
}

/// Why a target was not measured; printed and kept in the JSON, never a silent zero.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip(pub String);

pub fn wao_lb_config(listen: SocketAddr, backend: SocketAddr, proto: Proto) -> String {
    let protocol = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    format!(
        "admin: {{listen: 127.0.0.1:0}}\n\
         udp: {{maxSessions: 100000}}\n\
         services:\n  - name: bench\n    protocol: {protocol}\n    address: \"{listen}\"\n    \
         backends: [{{address: \"{backend}\", node: n}}]\n"
    )
}

/// The VIP of `wao-lb-tproxy`: a loopback address no socket is bound to, so traffic to it
/// reaches the backend only through wao-lb's redirect rules.
pub const TPROXY_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 77, 0, 1);

/// wao-lb in transparent mode (`redirect: tproxy`) with the VIP `listen` as its service;
/// `ports` are its TPROXY and local-redirect listener ports.
pub fn wao_lb_tproxy_config(
    listen: SocketAddr,
    backend: SocketAddr,
    proto: Proto,
    ports: (u16, u16),
) -> String {
    format!(
        "redirect: tproxy\ntproxy: {{port: {}, localPort: {}}}\n{}",
        ports.0,
        ports.1,
        wao_lb_config(listen, backend, proto)
    )
}

/// HAProxy 2.x in TCP mode with `threads` threads and kernel splicing, as an operator would
/// run it. HAProxy refuses to start unless `maxconn` sockets, two per connection, and its
/// splice pipes fit the open-files limit, so the pipes get what the connections leave.
pub fn haproxy_config(
    listen: SocketAddr,
    backend: SocketAddr,
    max_connections: usize,
    open_files: u64,
    threads: usize,
) -> String {
    let maxconn = max_connections.max(64);
    let spare = (open_files as usize).saturating_sub(2 * maxconn + 200) / 2;
    let maxpipes = (maxconn / 4).min(spare).max(1);
    format!(
        "global\n  nbthread {threads}\n  maxconn {maxconn}\n  maxpipes {maxpipes}\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  option splice-auto\n\
         listen bench\n  bind {listen}\n  maxconn {maxconn}\n  server s1 {backend} maxconn {maxconn}\n"
    )
}

/// nginx `stream` with `workers` worker processes: one with `master_process off`, so the
/// measured pid is the worker itself; more under a master, whose process tree is measured.
/// The stream module is loaded from Debian's path when it is dynamic. TCP relays half-close
/// (`proxy_half_close on`), the job every other target does.
pub fn nginx_config(
    listen: SocketAddr,
    backend: SocketAddr,
    proto: Proto,
    work: &Path,
    max_connections: usize,
    stream_module: Option<&Path>,
    workers: usize,
) -> String {
    let processes = if workers > 1 {
        format!("worker_processes {workers};")
    } else {
        "master_process off;\nworker_processes 1;".to_string()
    };
    let load = stream_module.map_or(String::new(), |m| format!("load_module {};\n", m.display()));
    let (listen_opts, proxy_opts) = match proto {
        Proto::Tcp => ("", "    proxy_half_close on;\n"),
        Proto::Udp => (" udp reuseport", "    proxy_timeout 60s;\n"),
    };
    let connections = 2 * max_connections + 64;
    let w = work.display();
    format!(
        "{load}daemon off;\n{processes}\nworker_rlimit_nofile {connections};\n\
         pid {w}/nginx.pid;\nerror_log {w}/nginx-error.log warn;\n\
         events {{ worker_connections {connections}; multi_accept on; }}\n\
         stream {{\n  server {{\n    listen {listen}{listen_opts};\n    proxy_pass {backend};\n{proxy_opts}  }}\n}}\n"
    )
}

/// The kernel path: a DNAT in nftables' output hook from `listen` to `backend`, as
/// kube-proxy's nftables mode does for ClusterIPs. Loopback traffic is locally generated,
/// so the rule sits in `output`, not `prerouting`.
pub fn dnat_ruleset(table: &str, listen: SocketAddr, backend: SocketAddr, proto: Proto) -> String {
    let l4 = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    format!(
        "table ip {table} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    \
         ip daddr {} {l4} dport {} dnat to {backend}\n  }}\n}}\n",
        listen.ip(),
        listen.port()
    )
}

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub fn free_addr(ip: std::net::Ipv4Addr, proto: Proto) -> std::io::Result<SocketAddr> {
    match proto {
        Proto::Tcp => std::net::TcpListener::bind((ip, 0))?.local_addr(),
        Proto::Udp => std::net::UdpSocket::bind((ip, 0))?.local_addr(),
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new(program).is_file()
}

/// Starts `program args` on the proxy core, stdout and stderr to `log`.
pub fn spawn(setup: &Setup, program: &str, args: &[&str], log: &Path) -> Result<Child, Skip> {
    let out = std::fs::File::create(log).map_err(|e| Skip(format!("{}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| Skip(format!("{}: {e}", log.display())))?;
    let mut command = match setup.proxy_core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &core.to_string(), program]);
            c
        }
        None => Command::new(program),
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // If the harness dies (Ctrl-C), the peer gets SIGTERM, so wao-lb-tproxy still removes
    // its rules and no proxy outlives the run.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command
        .spawn()
        .map_err(|e| Skip(format!("could not start {program}: {e}")))
}

/// Waits until the target answers: a TCP connect, or a UDP datagram echoed by the backend
/// behind it. A peer that exits first is skipped with the tail of its log.
pub async fn wait_serving(
    child: &mut Option<&mut Child>,
    addr: SocketAddr,
    proto: Proto,
    log: Option<&Path>,
) -> Result<(), Skip> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let tail = log
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .map(|s| s.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
                    .unwrap_or_default();
                return Err(Skip(format!("exited at start ({status}): {tail}")));
            }
        }
        if probe(addr, proto).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Skip(format!("did not serve {addr} within 10 s")))
}

async fn probe(addr: SocketAddr, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect(addr).await.is_ok(),
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                return false;
            };
            if s.connect(addr).await.is_err() || s.send(b"probe").await.is_err() {
                return false;
            }
            let mut b = [0u8; 16];
            matches!(
                tokio::time::timeout(Duration::from_millis(200), s.recv(&mut b)).await,
                Ok(Ok(5))
            )
        }
    }
}

impl Target {
    /// Starts this target in front of `backend`.
    /// `max_connections` is how many connections it must hold at once (idle: thousands).
    pub async fn start(
        self,
        proto: Proto,
        backend: SocketAddr,
        max_connections: usize,
        setup: &Setup,
    ) -> Result<Running, Skip> {
        let ip = match self {
            Target::WaoLbTproxy | Target::FloorTproxy => TPROXY_VIP,
            _ => std::net::Ipv4Addr::LOCALHOST,
        };
        let listen = free_addr(ip, proto).map_err(|e| Skip(format!("no free port: {e}")))?;
        let write = |name: &str, text: String| -> Result<String, Skip> {
            let path = setup.work.join(name);
            std::fs::write(&path, text).map_err(|e| Skip(format!("{}: {e}", path.display())))?;
            Ok(path.to_string_lossy().into_owned())
        };
        let (program, args, log): (String, Vec<String>, PathBuf) = match self {
            Target::Direct => {
                return Ok(Running {
                    addr: backend,
                    pid: None,
                    _stop: Stop::Nothing,
                })
            }
            Target::Dnat => return start_dnat(listen, backend, proto).await,
            Target::Floor => floor_command(proto, listen, backend, None, setup)?,
            Target::FloorTproxy => {
                let ports = tproxy_ports()?;
                let config = write(
                    "floor-tproxy.yaml",
                    wao_lb_tproxy_config(listen, backend, proto, ports),
                )?;
                install_redirect(&setup.wao_lb, &config)?;
                // TCP from the node arrives redirected on the local port, UDP by TPROXY.
                let port = match proto {
                    Proto::Tcp => ports.1,
                    Proto::Udp => ports.0,
                };
                let at = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                floor_command(proto, at, backend, Some(listen), setup)?
            }
            Target::WaoLb | Target::WaoLbTproxy => {
                if !setup.wao_lb.is_file() {
                    return Err(Skip(format!(
                        "{} not found (cargo build --release)",
                        setup.wao_lb.display()
                    )));
                }
                let text = if self == Target::WaoLb {
                    wao_lb_config(listen, backend, proto)
                } else {
                    wao_lb_tproxy_config(listen, backend, proto, tproxy_ports()?)
                };
                let text = format!("proxy: {{workers: {}}}\n{text}", setup.workers);
                let config = write(&format!("{}.yaml", self.name()), text)?;
                (
                    setup.wao_lb.to_string_lossy().into_owned(),
                    vec!["run".into(), "--config".into(), config],
                    setup.work.join(format!("{}.log", self.name())),
                )
            }
            Target::Haproxy => {
                if proto == Proto::Udp {
                    return Err(Skip(
                        "HAProxy does not proxy UDP (its `mode tcp` is TCP only)".into(),
                    ));
                }
                if !installed("haproxy") {
                    return Err(Skip("not installed (apt-get install haproxy)".into()));
                }
                let config = write(
                    "haproxy.cfg",
                    haproxy_config(
                        listen,
                        backend,
                        max_connections,
                        setup.open_files,
                        setup.workers,
                    ),
                )?;
                (
                    "haproxy".into(),
                    vec!["-db".into(), "-f".into(), config],
                    setup.work.join("haproxy.log"),
                )
            }
            Target::Nginx => {
                if !installed("nginx") {
                    return Err(Skip("not installed (apt-get install nginx)".into()));
                }
                let module = Path::new(NGINX_STREAM_MODULE);
                let config = write(
                    "nginx.conf",
                    nginx_config(
                        listen,
                        backend,
                        proto,
                        &setup.work,
                        max_connections,
                        module.is_file().then_some(module),
                        setup.workers,
                    ),
                )?;
                let errors = setup.work.join("nginx-error.log");
                (
                    "nginx".into(),
                    vec![
                        "-e".into(),
                        errors.to_string_lossy().into_owned(),
                        "-c".into(),
                        config,
                    ],
                    errors,
                )
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let console = setup.work.join(format!("{}.console", self.name()));
        let mut child = spawn(setup, &program, &args, &console)?;
        let pid = child.id();
        let logs = if log.exists() { log } else { console };
        wait_serving(&mut Some(&mut child), listen, proto, Some(&logs)).await?;
        Ok(Running {
            addr: listen,
            // taskset execs the program, so the child's pid is the proxy's.
            pid: Some(pid),
            _stop: Stop::Process(child),
        })
    }
}

/// Free ports for the TPROXY listener and the local-redirect one.
fn tproxy_ports() -> Result<(u16, u16), Skip> {
    let port = |p| free_addr(std::net::Ipv4Addr::LOCALHOST, p).map(|a| a.port());
    port(Proto::Tcp)
        .and_then(|a| Ok((a, port(Proto::Tcp)?)))
        .map_err(|e| Skip(format!("no free port: {e}")))
}

/// `wao-bench --serve-floor` on `listen`; `vip` makes it the transparent floor, serving
/// the redirected traffic of that VIP with wao-lb's upstream mark.
fn floor_command(
    proto: Proto,
    listen: SocketAddr,
    backend: SocketAddr,
    vip: Option<SocketAddr>,
    setup: &Setup,
) -> Result<(String, Vec<String>, PathBuf), Skip> {
    let me =
        std::env::current_exe().map_err(|e| Skip(format!("cannot find wao-bench itself: {e}")))?;
    let proto = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let mut args: Vec<String> = vec![
        "--serve-floor".into(),
        proto.into(),
        "--floor-listen".into(),
        listen.to_string(),
        "--floor-backend".into(),
        backend.to_string(),
        "--floor-pipe-bytes".into(),
        setup.floor_pipe_bytes.to_string(),
    ];
    if vip.is_some() {
        let mark = wao_lb::settings::TproxySettings::default().upstream_mark;
        args.extend([
            "--floor-transparent".into(),
            "--floor-mark".into(),
            mark.to_string(),
        ]);
    }
    let log = if vip.is_some() {
        "floor-tproxy.log"
    } else {
        "floor.log"
    };
    Ok((
        me.to_string_lossy().into_owned(),
        args,
        setup.work.join(log),
    ))
}

/// Feeds `ruleset` to `nft -f -`; Err with what nft said.
fn nft_apply(ruleset: &str) -> Result<(), String> {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = nft.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(ruleset.as_bytes());
    }
    let out = nft.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Installs the TPROXY rules and policy routing wao-lb would for `config`, as `wao-lb nft`
/// prints them, into this (fresh) namespace.
fn install_redirect(wao_lb: &Path, config: &str) -> Result<(), Skip> {
    if !installed("nft") {
        return Err(Skip("nft not installed (apt-get install nftables)".into()));
    }
    let out = Command::new(wao_lb)
        .args(["nft", "--config", config])
        .output()
        .map_err(|e| Skip(format!("{}: {e}", wao_lb.display())))?;
    if !out.status.success() {
        return Err(Skip(format!(
            "wao-lb nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    nft_apply(&text).map_err(|e| Skip(format!("nft -f: {e}")))?;
    for line in text.lines() {
        let Some(command) = line.strip_prefix("#   ip ") else {
            continue;
        };
        let args: Vec<&str> = command.split_whitespace().collect();
        let ok = Command::new("ip")
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // IPv6 may be off in this namespace; the bench's VIP is IPv4.
        if !ok && args.first() == Some(&"-4") {
            return Err(Skip(format!("ip {command} failed")));
        }
    }
    Ok(())
}

const TABLE_PREFIX: &str = "wao_bench_";

/// The DNAT tables of earlier runs whose harness died before removing them.
pub fn stale_tables(listing: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .filter(|name| {
            name.strip_prefix(TABLE_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_string)
        .collect()
}

fn remove_stale_tables() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    let listing = String::from_utf8_lossy(&out.stdout);
    for table in stale_tables(&listing, |pid| Path::new(&format!("/proc/{pid}")).exists()) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .status();
    }
}

async fn start_dnat(
    listen: SocketAddr,
    backend: SocketAddr,
    proto: Proto,
) -> Result<Running, Skip> {
    if !installed("nft") {
        return Err(Skip("nft not installed (apt-get install nftables)".into()));
    }
    remove_stale_tables();
    let table = format!("{TABLE_PREFIX}{}", std::process::id());
    let ruleset = dnat_ruleset(&table, listen, backend, proto);
    nft_apply(&ruleset).map_err(|e| {
        Skip(format!(
            "nft -f refused the DNAT rule (root and nf_nat needed): {e}"
        ))
    })?;
    let running = Running {
        addr: listen,
        pid: None,
        _stop: Stop::NftTable(table),
    };
    wait_serving(&mut None, listen, proto, None).await?;
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
        )
    }

    #[test]
    fn wao_lb_configs_parse_as_wao_lb_configs() {
        let (l, b) = addrs();
        for proto in [Proto::Tcp, Proto::Udp] {
            let cfg = wao_lb::discovery::file::FileConfig::parse(&wao_lb_config(l, b, proto))
                .expect("a valid wao-lb config");
            assert_eq!(cfg.desired.services.services.len(), 1);
        }
        assert!(wao_lb_config(l, b, Proto::Udp).contains("protocol: udp"));
        let vip = SocketAddr::from((TPROXY_VIP, 80));
        let cfg = wao_lb::discovery::file::FileConfig::parse(&wao_lb_tproxy_config(
            vip,
            b,
            Proto::Tcp,
            (3, 4),
        ))
        .expect("a valid transparent wao-lb config");
        assert_eq!(
            (cfg.settings.tproxy.port, cfg.settings.tproxy.local_port),
            (3, 4)
        );
        assert_eq!(
            cfg.settings.redirect,
            wao_lb::settings::RedirectMode::Tproxy
        );
    }

    #[test]
    fn haproxy_config_is_tcp_one_thread_spliced() {
        let (l, b) = addrs();
        let hp = haproxy_config(l, b, 4_000, 20_000, 1);
        for line in [
            "nbthread 1",
            "mode tcp",
            "option splice-auto",
            "bind 127.0.0.1:1000",
            "server s1 127.0.0.1:2000",
            "maxconn 4000",
            "maxpipes 1000",
        ] {
            assert!(hp.contains(line), "{line} missing:\n{hp}");
        }
        // 9,950 idle connections leave almost no files for pipes under a 20,000 limit.
        assert!(haproxy_config(l, b, 9_950, 20_000, 1).contains("maxpipes 1\n"));
        assert!(haproxy_config(l, b, 4_000, 20_000, 2).contains("nbthread 2\n"));
    }

    #[test]
    fn nginx_config_is_one_worker_stream_proxy() {
        let (l, b) = addrs();
        let work = Path::new("/tmp/w");
        let tcp = nginx_config(l, b, Proto::Tcp, work, 10_000, None, 1);
        assert!(tcp.contains("worker_processes 1;") && tcp.contains("master_process off;"));
        let two = nginx_config(l, b, Proto::Tcp, work, 10_000, None, 2);
        assert!(two.contains("worker_processes 2;") && !two.contains("master_process off;"));
        assert!(
            tcp.contains("listen 127.0.0.1:1000;") && tcp.contains("proxy_pass 127.0.0.1:2000;")
        );
        assert!(tcp.contains("worker_connections 20064;") && !tcp.contains("load_module"));
        // The same job as every other target: a client's FIN is relayed, not a close of both.
        assert!(tcp.contains("proxy_half_close on;"));
        let udp = nginx_config(l, b, Proto::Udp, work, 10, Some(Path::new("/m.so")), 1);
        assert!(
            udp.starts_with("load_module /m.so;")
                && udp.contains("listen 127.0.0.1:1000 udp reuseport;")
                && !udp.contains("proxy_half_close")
        );
    }

    #[test]
    fn dnat_ruleset_rewrites_only_the_frontend() {
        let (l, b) = addrs();
        let r = dnat_ruleset("t1", l, b, Proto::Udp);
        assert!(r.contains("table ip t1") && r.contains("hook output"));
        assert!(r.contains("ip daddr 127.0.0.1 udp dport 1000 dnat to 127.0.0.1:2000"));
    }

    #[test]
    fn only_tables_of_dead_harnesses_are_stale() {
        let listing = "table inet wao-lb\ntable ip wao_bench_10\ntable ip wao_bench_20\ntable ip nat\ntable ip wao_bench_x\n";
        assert_eq!(stale_tables(listing, |pid| pid == 20), vec!["wao_bench_10"]);
    }

    /// Runs a peer's config checker and fails with its complaint.
    fn assert_accepts(checker: &mut Command) {
        let out = checker.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The generated peer configs pass the peers' own checkers where they are installed.
    #[test]
    fn peers_accept_their_generated_configs() {
        let (l, b) = addrs();
        let work = std::env::temp_dir().join(format!("wao-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        if installed("haproxy") {
            let p = work.join("haproxy.cfg");
            std::fs::write(&p, haproxy_config(l, b, 1000, 20_000, 1)).unwrap();
            assert_accepts(Command::new("haproxy").arg("-c").arg("-f").arg(&p));
        }
        if installed("nginx") {
            let module = Path::new(NGINX_STREAM_MODULE);
            for proto in [Proto::Tcp, Proto::Udp] {
                let p = work.join("nginx.conf");
                let text = nginx_config(
                    l,
                    b,
                    proto,
                    &work,
                    100,
                    module.is_file().then_some(module),
                    1,
                );
                std::fs::write(&p, text).unwrap();
                let log = work.join("e.log");
                assert_accepts(
                    Command::new("nginx")
                        .arg("-t")
                        .arg("-e")
                        .arg(log)
                        .arg("-c")
                        .arg(&p),
                );
            }
        }
        let _ = std::fs::remove_dir_all(&work);
    }
}
