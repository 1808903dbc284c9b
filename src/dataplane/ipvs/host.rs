//! What the node needs around IPVS: the virtual addresses bound to a dummy interface of
//! wao-lb's own (so the node accepts them; the set also records which VIPs are wao-lb's
//! across a crash), and kube-proxy's IPVS sysctls.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::dataplane::command::{output, run, CommandError};

/// wao-lb's dummy interface (kube-proxy's is `kube-ipvs0`).
pub const INTERFACE: &str = "wao-ipvs0";

/// The sysctls kube-proxy sets for IPVS: new connections on a reused port are scheduled
/// afresh, connections to a removed destination expire, and persistence templates of a
/// quiesced one expire.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("/proc/sys/net/ipv4/vs/conn_reuse_mode", "0"),
    ("/proc/sys/net/ipv4/vs/expire_nodest_conn", "1"),
    ("/proc/sys/net/ipv4/vs/expire_quiescent_template", "1"),
];

/// Creates the interface (kept if it exists) and brings it up.
pub async fn ensure_interface() -> Result<(), CommandError> {
    let exists = run("ip", &["link", "show", "dev", INTERFACE], None)
        .await
        .is_ok();
    if !exists {
        run("ip", &["link", "add", INTERFACE, "type", "dummy"], None).await?;
    }
    run("ip", &["link", "set", INTERFACE, "up"], None).await
}

/// Sets the sysctls; one that cannot be written is a warning, not a failure.
pub fn set_sysctls() {
    for (path, value) in SYSCTLS {
        if let Err(e) = std::fs::write(path, value) {
            tracing::warn!(%path, error = %e, "cannot set an IPVS sysctl");
        }
    }
}

/// The node's addresses: on wao-lb's interface, and on its other interfaces (a NodePort's
/// node address is one: local already, so never bound here, nor taken as a sign of
/// wao-lb's services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub ours: BTreeSet<IpAddr>,
    pub elsewhere: BTreeSet<IpAddr>,
}

/// The node's addresses now (one `ip -o addr show`).
pub async fn local() -> Result<Local, CommandError> {
    let text = output("ip", &["-o", "addr", "show"]).await?;
    Ok(Local {
        ours: addresses(&text, |name| name == INTERFACE),
        elsewhere: addresses(&text, |name| name != INTERFACE),
    })
}

/// The addresses in `ip -o addr show` output (`7: eth0    inet 10.0.0.5/24 …`) on the
/// interfaces `on` accepts, but the IPv6 link-local ones every interface has.
fn addresses(text: &str, on: impl Fn(&str) -> bool) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let interface = words.nth(1)?;
            if !on(interface) {
                return None;
            }
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .filter(|ip: &IpAddr| match ip {
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            IpAddr::V4(_) => true,
        })
        .collect()
}

/// Which of the `wanted` VIPs to bind to wao-lb's interface (those not local yet), and
/// which of its addresses to remove (those no longer wanted).
pub fn binding(wanted: &BTreeSet<IpAddr>, local: &Local) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let add = wanted
        .iter()
        .filter(|ip| !local.ours.contains(ip) && !local.elsewhere.contains(ip))
        .copied()
        .collect();
    let remove = local.ours.difference(wanted).copied().collect();
    (add, remove)
}

/// Binds `add` to the interface and removes `remove` from it, in one `ip -batch`, each
/// line tried even when another fails.
pub async fn rebind(add: &[IpAddr], remove: &[IpAddr]) -> Result<(), CommandError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let line = |verb: &str, ip: &IpAddr| {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        format!("addr {verb} {ip}/{prefix} dev {INTERFACE}\n")
    };
    let batch: String = add
        .iter()
        .map(|ip| line("replace", ip))
        .chain(remove.iter().map(|ip| line("del", ip)))
        .collect();
    run("ip", &["-force", "-batch", "-"], Some(&batch)).await
}

/// Removes the interface and every address on it.
pub async fn remove_interface() {
    if let Err(e) = run("ip", &["link", "del", INTERFACE], None).await {
        tracing::warn!(error = %e, "cannot remove the IPVS interface");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_addresses_from_ip_output() {
        let text = "7: wao-ipvs0    inet 10.96.0.1/32 scope global wao-ipvs0\\       valid_lft forever preferred_lft forever\n\
                    7: wao-ipvs0    inet6 fd00::10/128 scope global \\       valid_lft forever preferred_lft forever\n\
                    7: wao-ipvs0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
        let ours: Vec<String> = addresses(text, |n| n == INTERFACE)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(ours, ["10.96.0.1", "fd00::10"], "not the link-local one");
        let other = "2: eth0    inet 192.168.0.5/24 brd 192.168.0.255 scope global eth0\n";
        let all = format!("{text}{other}");
        let elsewhere: Vec<String> = addresses(&all, |n| n != INTERFACE)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(elsewhere, ["192.168.0.5"]);
        assert!(addresses("", |_| true).is_empty());
    }

    #[test]
    fn only_vips_not_yet_local_are_bound_and_unwanted_ones_removed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local = Local {
            ours: [ip("10.96.0.1"), ip("10.96.0.9")].into(),
            elsewhere: [ip("192.168.0.5")].into(),
        };
        // 10.96.0.1 is bound already, 192.168.0.5 is the node's (a NodePort), 10.96.0.2 is
        // new; 10.96.0.9 is no longer planned.
        let wanted = [ip("10.96.0.1"), ip("10.96.0.2"), ip("192.168.0.5")].into();
        assert_eq!(
            binding(&wanted, &local),
            (vec![ip("10.96.0.2")], vec![ip("10.96.0.9")])
        );
    }
}
