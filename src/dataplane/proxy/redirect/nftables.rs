//! wao-lb's nftables table (`inet wao-lb`), rendered from the services' frontends. It never
//! touches another table (kube-proxy's `ip kube-proxy` stays as it is) and uses only its
//! own mark bits. Every apply replaces the whole table in one `nft -f` transaction, which
//! also replaces a stale table a crashed instance left behind.
//!
//! - prerouting (filter, mangle priority): wao-lb's own upstream packets pass; frontends
//!   without a usable backend are rejected (TCP reset, ICMP for UDP); packets of
//!   established transparent TCP sockets are marked; TCP and UDP packets to a frontend are
//!   TPROXYed (to a UDP flow's connected reply socket, else to the transparent listeners)
//!   and marked, so policy routing delivers them.
//! - output (nat, −110, before kube-proxy's −100): the node's own TCP connections to a
//!   frontend are redirected to the local listener, which reads the VIP back with
//!   SO_ORIGINAL_DST. The destination is rewritten before kube-proxy's filter sees it.
//! - output (filter, raw): the node's own UDP to a frontend is not tracked, so another
//!   table's rules for new connections (kube-proxy's Service CIDR drop) let it pass.
//! - output (route, mangle): the node's own UDP to a frontend is marked, so policy routing
//!   loops it through lo into prerouting and the TPROXY rule.
//! - output (filter, −130): the node's own connections to a frontend without backends are
//!   rejected too.

use std::fmt::Write;

use crate::dataplane::command::{run, CommandError};
use crate::model::cidr::Cidr;
use crate::model::{Frontend, Service, WhenEmpty};
use crate::settings::TproxySettings;

pub const TABLE: &str = "wao-lb";

/// What the rules do with a frontend's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand them to wao-lb (it has backends).
    Serve,
    /// No backend at all: a TCP reset, ICMP port unreachable for UDP.
    Reject,
    /// A traffic policy `Local` left this node no backend: no answer at all.
    Drop,
}

/// A frontend, its verdict and the clients it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub frontend: Frontend,
    pub verdict: Verdict,
    /// Only these sources are served, the others dropped (`loadBalancerSourceRanges`);
    /// empty: every source.
    pub sources: Vec<Cidr>,
}

impl Entry {
    pub fn of(service: &Service) -> Entry {
        let verdict = match (!service.has_backends(), service.when_empty) {
            (false, _) => Verdict::Serve,
            (true, WhenEmpty::Reject) => Verdict::Reject,
            (true, WhenEmpty::Drop) => Verdict::Drop,
        };
        Entry {
            frontend: service.frontend,
            verdict,
            sources: service.source_ranges.clone(),
        }
    }
}

fn element(f: &Frontend) -> String {
    format!("{} . {} . {}", f.address.ip(), f.protocol, f.address.port())
}

fn set(out: &mut String, name: &str, ip_type: &str, members: &[String]) {
    let _ = writeln!(
        out,
        "\tset {name} {{\n\t\ttype {ip_type} . inet_proto . inet_service"
    );
    if !members.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", members.join(", "));
    }
    out.push_str("\t}\n");
}

/// The whole ruleset, as one `nft -f` transaction that replaces wao-lb's table.
pub fn render(entries: &[Entry], t: &TproxySettings) -> String {
    let pick = |v6: bool, verdict: Verdict| -> Vec<String> {
        let mut v: Vec<String> = entries
            .iter()
            .filter(|e| e.frontend.address.is_ipv6() == v6 && e.verdict == verdict)
            .map(|e| element(&e.frontend))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (mark, up) = (t.mark, t.upstream_mark);
    let mut out = String::new();
    let _ = writeln!(out, "# wao-lb transparent mode; generated, do not edit");
    let _ = writeln!(
        out,
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{"
    );
    for (name, verdict) in [
        ("frontends", Verdict::Serve),
        ("refuse", Verdict::Reject),
        ("drop", Verdict::Drop),
    ] {
        for (_, v6, n, addr_type) in FAMILIES {
            set(
                &mut out,
                &format!("{name}{n}"),
                addr_type,
                &pick(v6, verdict),
            );
        }
    }
    // A chain's header, then the rule that lets wao-lb's own upstream packets pass.
    let own = format!("meta mark & {up:#x} == {up:#x} return");
    let open = |out: &mut String, name: &str, hook: &str| {
        let _ = writeln!(
            out,
            "\tchain {name} {{\n\t\ttype {hook}; policy accept;\n\t\t{own}"
        );
    };
    let refuse = |out: &mut String| {
        per_family(out, "refuse", "meta l4proto tcp reject with tcp reset");
        per_family(out, "refuse", "meta l4proto udp reject");
        per_family(out, "drop", "drop");
    };
    open(
        &mut out,
        "prerouting",
        "filter hook prerouting priority mangle",
    );
    refuse(&mut out);
    for e in entries.iter().filter(|e| e.verdict == Verdict::Serve) {
        source_filter(&mut out, e);
    }
    // TCP only: for UDP the `socket` match also finds a flow's reply socket in the moment
    // it is bound to the VIP but not yet connected to its client, and would deliver other
    // clients' datagrams to it. The UDP tproxy rule's own lookup takes only connected
    // sockets and hands the rest to the listener.
    let _ = writeln!(
        out,
        "\t\tmeta l4proto tcp socket transparent 1 meta mark set meta mark | {mark:#x} accept"
    );
    for (family, v6, n, _) in FAMILIES {
        let to = if v6 { "[::1]" } else { "127.0.0.1" };
        for proto in ["tcp", "udp"] {
            let _ = writeln!(
                out,
                "\t\t{family} daddr . meta l4proto . th dport @frontends{n} meta l4proto {proto} tproxy {family} to {to}:{} meta mark set meta mark | {mark:#x} accept",
                t.port
            );
        }
    }
    out.push_str("\t}\n");
    open(
        &mut out,
        "output_refuse",
        "filter hook output priority -130",
    );
    refuse(&mut out);
    out.push_str("\t}\n");
    open(&mut out, "output_nat", "nat hook output priority -110");
    per_family(
        &mut out,
        "frontends",
        &format!("meta l4proto tcp redirect to :{}", t.local_port),
    );
    out.push_str("\t}\n");
    // Before conntrack: the node's own UDP to a frontend stays untracked, so rules that
    // act on new connections (kube-proxy's `ct state new jump cluster-ips-check`, which
    // drops every address of its Service CIDR it does not serve itself) never see it.
    open(&mut out, "output_raw", "filter hook output priority raw");
    per_family(&mut out, "frontends", "meta l4proto udp notrack");
    out.push_str("\t}\n");
    open(
        &mut out,
        "output_route",
        "route hook output priority mangle",
    );
    per_family(
        &mut out,
        "frontends",
        &format!("meta l4proto udp meta mark set meta mark | {mark:#x}"),
    );
    out.push_str("\t}\n}\n");
    out
}

/// The two address families: nft family, whether IPv6, set-name suffix, set address type.
const FAMILIES: [(&str, bool, &str, &str); 2] = [
    ("ip", false, "4", "ipv4_addr"),
    ("ip6", true, "6", "ipv6_addr"),
];

/// `rule` for packets to the members of set `name` (its IPv4 and its IPv6 set).
fn per_family(out: &mut String, name: &str, rule: &str) {
    for (family, _, n, _) in FAMILIES {
        let _ = writeln!(
            out,
            "\t\t{family} daddr . meta l4proto . th dport @{name}{n} {rule}"
        );
    }
}

/// Drops packets to `e` from sources outside its ranges (before they are TPROXYed).
fn source_filter(out: &mut String, e: &Entry) {
    if e.sources.is_empty() {
        return;
    }
    let v6 = e.frontend.address.is_ipv6();
    let family = if v6 { "ip6" } else { "ip" };
    let ranges: Vec<String> = e
        .sources
        .iter()
        .filter(|c| c.network.is_ipv6() == v6)
        .map(|c| c.to_string())
        .collect();
    let to = format!(
        "{family} daddr {} meta l4proto {} th dport {}",
        e.frontend.address.ip(),
        e.frontend.protocol,
        e.frontend.address.port()
    );
    // No range of the frontend's family: no source of it is allowed.
    let _ = match ranges.is_empty() {
        true => writeln!(out, "\t\t{to} drop"),
        false => writeln!(
            out,
            "\t\t{to} {family} saddr != {{ {} }} drop",
            ranges.join(", ")
        ),
    };
}

/// Applies a rendered ruleset atomically.
pub async fn apply(ruleset: &str) -> Result<(), CommandError> {
    run("nft", &["-f", "-"], Some(ruleset)).await
}

/// Removes wao-lb's table; absent is fine.
pub async fn remove() -> Result<(), CommandError> {
    run(
        "nft",
        &["-f", "-"],
        Some(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn entry(addr: &str, protocol: Protocol, servable: bool) -> Entry {
        Entry {
            frontend: Frontend {
                protocol,
                address: addr.parse().unwrap(),
            },
            verdict: if servable {
                Verdict::Serve
            } else {
                Verdict::Reject
            },
            sources: Vec::new(),
        }
    }

    #[test]
    fn drops_and_source_ranges() {
        let mut ranged = entry("203.0.113.10:443", Protocol::Tcp, true);
        ranged.sources = vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let mut v6_only = entry("203.0.113.11:443", Protocol::Tcp, true);
        v6_only.sources = vec!["2001:db8::/32".parse().unwrap()];
        let mut dropped = entry("10.96.0.12:80", Protocol::Tcp, false);
        dropped.verdict = Verdict::Drop;
        let text = render(&[ranged, v6_only, dropped], &TproxySettings::default());
        assert!(text.contains("set drop4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { 10.96.0.12 . tcp . 80 }"), "{text}");
        assert_eq!(
            text.matches("ip daddr . meta l4proto . th dport @drop4 drop")
                .count(),
            2,
            "prerouting and output: {text}"
        );
        assert!(text.contains("ip daddr 203.0.113.10 meta l4proto tcp th dport 443 ip saddr != { 198.51.100.0/24 } drop"), "{text}");
        assert!(
            text.contains("ip daddr 203.0.113.11 meta l4proto tcp th dport 443 drop"),
            "{text}"
        );
        let filter = text.find("saddr !=").unwrap();
        assert!(
            filter < text.find("tproxy ip to").unwrap(),
            "filtered before TPROXY"
        );
    }

    #[test]
    fn renders_sets_rules_and_marks() {
        let t = TproxySettings::default();
        let text = render(
            &[
                entry("10.96.0.10:80", Protocol::Tcp, true),
                entry("10.96.0.10:53", Protocol::Udp, true),
                entry("[fd00::10]:80", Protocol::Tcp, true),
                entry("10.96.0.11:80", Protocol::Tcp, false),
            ],
            &t,
        );
        assert!(text.starts_with("# wao-lb"));
        assert!(text.contains("table inet wao-lb\ndelete table inet wao-lb\ntable inet wao-lb {"));
        assert!(
            text.contains("elements = { 10.96.0.10 . tcp . 80, 10.96.0.10 . udp . 53 }"),
            "{text}"
        );
        assert!(
            text.contains("elements = { fd00::10 . tcp . 80 }"),
            "{text}"
        );
        assert!(text.contains("set refuse4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { 10.96.0.11 . tcp . 80 }"), "{text}");
        assert!(text.contains("meta mark & 0x2000 == 0x2000 return"));
        assert!(
            text.contains("tproxy ip to 127.0.0.1:15001 meta mark set meta mark | 0x1000 accept")
        );
        assert!(text.contains("tproxy ip6 to [::1]:15001"));
        // Only TCP skips the tproxy lookup through the socket match (see `render`).
        assert!(text.contains("\t\tmeta l4proto tcp socket transparent 1 meta mark set"));
        assert_eq!(text.matches("socket transparent").count(), 1, "{text}");
        assert!(text.contains("meta l4proto tcp redirect to :15002"));
        assert!(text.contains("type filter hook output priority raw;"));
        assert!(text
            .contains("ip daddr . meta l4proto . th dport @frontends4 meta l4proto udp notrack"));
        assert!(
            !text.contains("kube-proxy"),
            "never touches kube-proxy's table"
        );
    }

    #[test]
    fn empty_sets_have_no_elements_line() {
        let text = render(&[], &TproxySettings::default());
        assert!(!text.contains("elements"));
    }
}
