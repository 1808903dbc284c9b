//! The endpoints of one service port as kube-proxy sees them: gathered from every
//! EndpointSlice of the Service, deduplicated, and sorted into the cluster list and the
//! local list by readiness, termination and topology hints. Pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The node the pod runs on, if the slice says.
    pub node: Option<String>,
    /// The pod (`namespace/name`), if the slice names it.
    pub pod: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Endpoint {
    fn is_local(&self, node: &str) -> bool {
        self.node.as_deref() == Some(node)
    }

    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The endpoints of port `port_name`/`protocol` in `slices` whose addresses are of the
/// family `v6`. Only `addresses[0]` counts; a nil `ready` or `serving` is true, a nil
/// `terminating` false; ports without a number and slices of another family (or FQDN) are
/// skipped. One ip:port in several slices is one endpoint, the non-terminating entry kept.
pub fn collect(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: &str,
    v6: bool,
) -> Vec<Endpoint> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut found: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let port = slice.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let number = u16::try_from(p.port?).ok().filter(|n| *n > 0)?;
            (name == port_name && proto == protocol).then_some(number)
        });
        let Some(port) = port else { continue };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ip.is_ipv6() != v6 {
                continue;
            }
            let c = e.conditions.as_ref();
            let hints = e.hints.as_ref();
            let endpoint = Endpoint {
                address: SocketAddr::new(ip, port),
                node: e.node_name.clone(),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(format!(
                            "{}/{}",
                            r.namespace.as_deref().unwrap_or(""),
                            r.name.as_deref()?
                        ))
                    }),
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                serving: c.and_then(|c| c.serving).unwrap_or(true),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_default(),
            };
            match found.get(&endpoint.address) {
                Some(kept) if !kept.terminating || endpoint.terminating => {}
                _ => {
                    found.insert(endpoint.address, endpoint);
                }
            }
        }
    }
    found.into_values().collect()
}

/// Where a service port's traffic may go from this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// For traffic policy Cluster: ready endpoints the topology allows; if none, the
    /// serving and terminating ones.
    pub cluster: Vec<Endpoint>,
    /// For traffic policy Local: this node's ready endpoints; if none, its serving and
    /// terminating ones.
    pub local: Vec<Endpoint>,
    /// Whether any endpoint anywhere could serve (else every frontend rejects).
    pub any: bool,
}

/// Which hints the cluster list follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    None,
    SameNode,
    SameZone,
}

/// Sorts `endpoints` for this node (`node`, in zone `zone`), as kube-proxy's
/// `CategorizeEndpoints`.
pub fn categorize(endpoints: &[Endpoint], node: &str, zone: Option<&str>) -> Categorized {
    let topology = topology(endpoints, node, zone);
    let allowed = |e: &Endpoint| match topology {
        Topology::None => true,
        Topology::SameNode => e.node_hints.iter().any(|n| n == node),
        Topology::SameZone => zone.is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
    };
    let pick = |f: &dyn Fn(&Endpoint) -> bool| -> Vec<Endpoint> {
        endpoints.iter().filter(|e| f(e)).cloned().collect()
    };
    let mut cluster = pick(&|e| e.ready && allowed(e));
    if cluster.is_empty() {
        cluster = pick(&|e| e.serving_terminating());
    }
    let mut local = pick(&|e| e.is_local(node) && e.ready);
    if local.is_empty() {
        local = pick(&|e| e.is_local(node) && e.serving_terminating());
    }
    let any = endpoints.iter().any(|e| e.ready || e.serving_terminating());
    Categorized {
        cluster,
        local,
        any,
    }
}

/// Node hints are followed only when every ready endpoint has some and one names this
/// node; else zone hints likewise; else none.
fn topology(endpoints: &[Endpoint], node: &str, zone: Option<&str>) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::None;
    }
    let all_node_hints = ready.iter().all(|e| !e.node_hints.is_empty());
    if all_node_hints && ready.iter().any(|e| e.node_hints.iter().any(|n| n == node)) {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|e| !e.zone_hints.is_empty());
    let for_zone = |z: &str| ready.iter().any(|e| e.zone_hints.iter().any(|h| h == z));
    if all_zone_hints && zone.is_some_and(for_zone) {
        return Topology::SameZone;
    }
    Topology::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn addresses(list: &[Endpoint]) -> Vec<String> {
        list.iter().map(|e| e.address.to_string()).collect()
    }

    /// Upstream `TestEndpointsMapFromESC`: "2 slices, overlapping endpoints, some endpoints
    /// unready and some endpoints terminating" (the non-terminating duplicate is kept),
    /// "Nil port should not break anything", "Different endpoints with duplicate IPs should
    /// not be filtered", plus the other family and FQDN slices skipped.
    #[test]
    fn endpoints_are_gathered_across_slices_like_kube_proxy() {
        let a = slice(serde_json::json!({
            "metadata": {"name": "a"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "nil"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.2", "10.9.9.9"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
            ]
        }));
        let b = slice(serde_json::json!({
            "metadata": {"name": "b"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.4"], "nodeName": "n1"},
            ]
        }));
        let other_port = slice(serde_json::json!({
            "metadata": {"name": "c"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.2"]}]
        }));
        let v6 = slice(serde_json::json!({
            "metadata": {"name": "d"}, "addressType": "IPv6",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["fd00::1"]}]
        }));
        let fqdn = slice(serde_json::json!({
            "metadata": {"name": "e"}, "addressType": "FQDN",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["example.com"]}]
        }));
        let all = [&a, &b, &other_port, &v6, &fqdn];
        let got = collect(&all, "http", "TCP", false);
        assert_eq!(
            addresses(&got),
            [
                "10.0.0.1:80",
                "10.0.0.2:80",
                "10.0.0.2:8080",
                "10.0.0.3:80",
                "10.0.0.4:80"
            ]
        );
        let one = &got[0];
        assert!(
            one.ready && !one.terminating,
            "the non-terminating entry wins: {one:?}"
        );
        assert!(!got[3].ready && got[3].serving, "nil serving is true");
        assert_eq!(got[4].node.as_deref(), Some("n1"));
        assert_eq!(
            addresses(&collect(&all, "http", "TCP", true)),
            ["[fd00::1]:80"]
        );
        assert!(
            collect(&all, "http", "UDP", false).is_empty(),
            "protocol must match"
        );
        assert!(
            collect(&all, "nil", "TCP", false).is_empty(),
            "a port without number"
        );
    }

    fn ep(addr: &str, node: &str, state: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            node: Some(node.into()),
            pod: None,
            ready: state == "ready",
            serving: state != "down",
            terminating: state == "terminating",
            zone_hints: zones.iter().map(|z| z.to_string()).collect(),
            node_hints: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// Upstream `TestCategorizeEndpoints`, written afresh: each row is endpoints in, the
    /// cluster and local lists out, for this node "n1" in zone "z1".
    #[test]
    fn categorize_like_kube_proxy() {
        struct Case {
            name: &'static str,
            endpoints: Vec<Endpoint>,
            zone: Option<&'static str>,
            cluster: &'static [&'static str],
            local: &'static [&'static str],
            any: bool,
        }
        let cases = [
            Case {
                name: "no hints: every ready endpoint",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &[], &[]),
                    ep("10.0.0.2:80", "n2", "ready", &[], &[]),
                    ep("10.0.0.3:80", "n3", "down", &[], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80", "10.0.0.2:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "zone hints for this zone",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &["z1"], &[]),
                    ep("10.0.0.2:80", "n2", "ready", &["z2"], &[]),
                    ep("10.0.0.3:80", "n3", "ready", &["z1"], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80", "10.0.0.3:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "zone hints, but one ready endpoint has none: hints ignored",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &["z1"], &[]),
                    ep("10.0.0.2:80", "n2", "ready", &[], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80", "10.0.0.2:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "zone hints, none for this zone: hints ignored",
                endpoints: vec![
                    ep("10.0.0.1:80", "n2", "ready", &["z2"], &[]),
                    ep("10.0.0.2:80", "n3", "ready", &["z3"], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80", "10.0.0.2:80"],
                local: &[],
                any: true,
            },
            Case {
                name: "zone hints, node without a zone label: hints ignored",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &["z1"], &[]),
                    ep("10.0.0.2:80", "n2", "ready", &["z2"], &[]),
                ],
                zone: None,
                cluster: &["10.0.0.1:80", "10.0.0.2:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "node hints for this node beat zone hints",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &["z1"], &["n1"]),
                    ep("10.0.0.2:80", "n2", "ready", &["z1"], &["n2"]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "node hints for other nodes only: zone hints apply",
                endpoints: vec![
                    ep("10.0.0.1:80", "n2", "ready", &["z1"], &["n2"]),
                    ep("10.0.0.2:80", "n3", "ready", &["z2"], &["n3"]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80"],
                local: &[],
                any: true,
            },
            Case {
                name: "unready endpoints' hints do not count",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "ready", &["z1"], &[]),
                    ep("10.0.0.2:80", "n2", "down", &[], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "only terminating endpoints: serving ones are used, cluster and local",
                endpoints: vec![
                    ep("10.0.0.1:80", "n1", "terminating", &[], &[]),
                    ep("10.0.0.2:80", "n2", "terminating", &[], &[]),
                    ep("10.0.0.3:80", "n2", "down", &[], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80", "10.0.0.2:80"],
                local: &["10.0.0.1:80"],
                any: true,
            },
            Case {
                name: "a ready remote endpoint and a terminating local one: local uses it",
                endpoints: vec![
                    ep("10.0.0.1:80", "n2", "ready", &[], &[]),
                    ep("10.0.0.2:80", "n1", "terminating", &[], &[]),
                ],
                zone: Some("z1"),
                cluster: &["10.0.0.1:80"],
                local: &["10.0.0.2:80"],
                any: true,
            },
            Case {
                name: "nothing serving",
                endpoints: vec![ep("10.0.0.1:80", "n1", "down", &[], &[])],
                zone: Some("z1"),
                cluster: &[],
                local: &[],
                any: false,
            },
        ];
        for c in cases {
            let got = categorize(&c.endpoints, "n1", c.zone);
            assert_eq!(addresses(&got.cluster), c.cluster, "{}: cluster", c.name);
            assert_eq!(addresses(&got.local), c.local, "{}: local", c.name);
            assert_eq!(got.any, c.any, "{}: any", c.name);
        }
    }
}
