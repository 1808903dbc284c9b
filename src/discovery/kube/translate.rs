//! From Kubernetes objects to the `ServiceTable`, with kube-proxy's semantics: one model
//! service per frontend (ClusterIPs, NodePorts on this node's addresses, external IPs,
//! load-balancer ingress IPs) of each service port, backends from every EndpointSlice of
//! the Service, traffic policies, topology, affinity and source ranges. Pure: the objects
//! in, the table and what could not be served out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service as KubeService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::endpoints::{categorize, collect, Endpoint};
use crate::model::cidr::Cidr;
use crate::model::units::parse_millicores;
use crate::model::{
    Affinity, Backend, Frontend, Protocol, Service, ServiceKind, ServiceTable, WhenEmpty,
};

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// WAO's per-Service CPU cost of one request (default `100m`).
pub const CPU_PER_REQUEST: &str = "waok8s.github.io/cpu-per-request";
/// kube-proxy's default ClientIP affinity timeout.
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10_800);

/// What the translation needs to know about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    /// Where NodePorts listen.
    pub addresses: Vec<IpAddr>,
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// Something in an object that wao-lb does not serve, and why; reported, never dropped
/// silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unserved {
    /// The object's kind: `Service`, `LocalRedirectPolicy` or `BalancingPolicy`.
    pub kind: &'static str,
    /// `namespace/name` or `namespace/name:port`.
    pub service: String,
    /// Why, in a word (`PascalCase`, the reason of the Kubernetes Event).
    pub code: &'static str,
    pub reason: String,
}

impl Unserved {
    /// The Service's namespace and name.
    pub fn object(&self) -> (&str, &str) {
        let (namespace, rest) = self.service.split_once('/').unwrap_or(("", &self.service));
        (namespace, rest.split(':').next().unwrap_or(rest))
    }
}

/// A `healthCheckNodePort` a cloud load balancer probes (a LoadBalancer Service with
/// `externalTrafficPolicy: Local`): healthy while this node has a ready local endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckPort {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    /// This node's ready endpoints of the Service.
    pub local_endpoints: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    pub table: ServiceTable,
    pub unserved: Vec<Unserved>,
    pub health_check_ports: Vec<HealthCheckPort>,
    /// What each policy uses on this node, for its status.
    pub policies: Vec<super::policies::PolicyUse>,
    /// Power inputs and models of nodes, from WAO's NodeConfigs.
    pub nodes: BTreeMap<crate::model::NodeName, crate::model::node::NodeSpec>,
}

/// Drops from a Service what the translation never reads, before it is stored (a
/// cluster's Services carry labels, `kubectl` annotations and more, in every instance's
/// memory): only WAO's CPU annotation stays of its metadata's maps.
pub fn slim_service(s: &mut KubeService) {
    let m = &mut s.metadata;
    m.labels = None;
    m.annotations = m
        .annotations
        .take()
        .map(|mut a| {
            a.retain(|k, _| k == CPU_PER_REQUEST);
            a
        })
        .filter(|a| !a.is_empty());
    m.owner_references = None;
    m.finalizers = None;
}

/// Drops from an EndpointSlice what the translation never reads: every label but the
/// Service's name, the annotations, and of each endpoint's `targetRef` all but the pod's
/// kind, namespace and name.
pub fn slim_slice(s: &mut EndpointSlice) {
    let m = &mut s.metadata;
    if let Some(labels) = &mut m.labels {
        labels.retain(|k, _| k == SERVICE_NAME_LABEL);
    }
    m.annotations = None;
    m.owner_references = None;
    for e in &mut s.endpoints {
        e.deprecated_topology = None;
        e.hostname = None;
        if let Some(r) = &mut e.target_ref {
            r.uid = None;
            r.resource_version = None;
            r.api_version = None;
            r.field_path = None;
        }
    }
}

/// The table for `services` and their `slices` on `node`.
pub fn translate(
    services: &[&KubeService],
    slices: &[&EndpointSlice],
    node: &ThisNode,
) -> Translation {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let namespace = s.metadata.namespace.as_deref().unwrap_or("");
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((namespace, name)).or_default().push(s);
        }
    }
    let mut out = Translation::default();
    let mut nodes = NodeNames::new();
    for svc in services {
        let namespace = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let slices = by_service
            .get(&(namespace, name))
            .map_or(&[][..], Vec::as_slice);
        translate_service(svc, namespace, name, slices, node, &mut nodes, &mut out);
    }
    out
}

/// One shared name per node: a cluster has far fewer nodes than endpoints.
type NodeNames = std::collections::HashMap<String, crate::model::NodeName>;

/// A Service's frontends, with the policy each follows.
struct Frontends {
    /// ClusterIPs: the internal traffic policy.
    internal: Vec<IpAddr>,
    /// External IPs and NodePort addresses: the external traffic policy.
    external: Vec<IpAddr>,
    /// Load-balancer ingress IPs: the external policy and the source ranges.
    balancer: Vec<IpAddr>,
}

fn translate_service(
    svc: &KubeService,
    namespace: &str,
    name: &str,
    slices: &[&EndpointSlice],
    node: &ThisNode,
    nodes: &mut NodeNames,
    out: &mut Translation,
) {
    let Some(spec) = &svc.spec else { return };
    let id = format!("{namespace}/{name}");
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if kind == "ExternalName" || cluster_ip.is_empty() || cluster_ip == "None" {
        // Headless and ExternalName Services are DNS only; kube-proxy skips them too.
        return;
    }
    let ips = |list: Option<&Vec<String>>| -> Vec<IpAddr> {
        list.into_iter()
            .flatten()
            .filter_map(|a| a.parse().ok())
            .collect()
    };
    let mut internal = ips(spec.cluster_ips.as_ref());
    if internal.is_empty() {
        internal.extend(cluster_ip.parse::<IpAddr>().ok());
    }
    let frontends = Frontends {
        internal,
        external: ips(spec.external_ips.as_ref()),
        balancer: svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
            .collect(),
    };
    let source_ranges: Vec<Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.parse().ok())
        .collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| Affinity {
        timeout: spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(DEFAULT_AFFINITY, Duration::from_secs),
    });
    let cpu = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CPU_PER_REQUEST));
    let cpu_per_connection = match cpu.map(|c| parse_millicores(c)) {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            out.unserved.push(Unserved {
                kind: "Service",
                service: id.clone(),
                code: "InvalidAnnotation",
                reason: format!("annotation {CPU_PER_REQUEST}: {e}; the default applies"),
            });
            None
        }
        None => None,
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let health_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0 && kind == "LoadBalancer" && external_local);
    // This node's ready endpoints, for the health-check node port.
    let mut local_ready = 0;
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.as_deref().unwrap_or("");
        let key: Arc<str> = Arc::from(format!("{id}:{}", display_port(port)));
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                out.unserved.push(Unserved {
                    kind: "Service",
                    service: key.to_string(),
                    code: "UnsupportedProtocol",
                    reason: format!("protocol {other} is not supported by the proxy data plane"),
                });
                continue;
            }
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            continue;
        };
        let node_port = node_ports
            .then_some(port.node_port)
            .flatten()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let proto_name = port.protocol.as_deref().unwrap_or("TCP");
        for v6 in [false, true] {
            let endpoints = collect(slices, port_name, proto_name, v6);
            local_ready = local_ready.max(
                endpoints
                    .iter()
                    .filter(|e| e.ready && e.node.as_deref() == Some(node.name.as_str()))
                    .count(),
            );
            let sorted = categorize(&endpoints, &node.name, node.zone.as_deref());
            let of_family = |list: &[IpAddr]| -> Vec<IpAddr> {
                list.iter()
                    .copied()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .collect()
            };
            // A Service serves a family only where it has a ClusterIP of it (kube-proxy runs
            // one proxier per family and skips Services without an IP of its own).
            let serves_family = frontends.internal.iter().any(|ip| ip.is_ipv6() == v6);
            let node_addresses = if node_port.is_some() && serves_family {
                of_family(&node.addresses)
            } else {
                Vec::new()
            };
            let groups: [(Vec<IpAddr>, u16, bool, &[Cidr]); 4] = [
                (
                    of_family(&frontends.internal),
                    service_port,
                    internal_local,
                    &[],
                ),
                (
                    of_family(&frontends.external),
                    service_port,
                    external_local,
                    &[],
                ),
                (
                    of_family(&frontends.balancer),
                    service_port,
                    external_local,
                    &source_ranges,
                ),
                (node_addresses, node_port.unwrap_or(0), external_local, &[]),
            ];
            for (addresses, port_number, local, ranges) in groups {
                let (list, when_empty) = match (local, sorted.any) {
                    (_, false) => (&[][..], WhenEmpty::Reject),
                    (true, true) => (sorted.local.as_slice(), WhenEmpty::Drop),
                    (false, true) => (sorted.cluster.as_slice(), WhenEmpty::Reject),
                };
                for ip in addresses {
                    let frontend = Frontend {
                        protocol,
                        address: SocketAddr::new(ip, port_number),
                    };
                    let service = Service {
                        key: key.clone(),
                        name: key.clone(),
                        frontend,
                        backends: backends(list, nodes),
                        affinity,
                        cpu_per_connection,
                        udp_responses: None,
                        health_check: None,
                        when_empty,
                        source_ranges: ranges.to_vec(),
                        kind: ServiceKind::Service,
                        policy: None,
                        redirect: None,
                        clusters: Vec::new(),
                    };
                    if out.table.services.contains_key(&frontend) {
                        out.unserved.push(Unserved {
                            kind: "Service",
                            service: key.to_string(),
                            code: "FrontendConflict",
                            reason: format!("{frontend} is already served for another Service"),
                        });
                        continue;
                    }
                    out.table.services.insert(frontend, Arc::new(service));
                }
            }
        }
    }
    if let Some(port) = health_port {
        out.health_check_ports.push(HealthCheckPort {
            port,
            namespace: namespace.to_string(),
            name: name.to_string(),
            local_endpoints: local_ready,
        });
    }
}

/// The port as kube-proxy names it: its name, or its number when unnamed.
pub(super) fn display_port(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => port.port.to_string(),
    }
}

fn backends(list: &[Endpoint], nodes: &mut NodeNames) -> Vec<Backend> {
    list.iter()
        .map(|e| {
            let name = e.node.as_deref().unwrap_or("unknown");
            let node = match nodes.get(name) {
                Some(n) => n.clone(),
                None => nodes
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::from(name))
                    .clone(),
            };
            Backend {
                address: e.address,
                node,
                pod: e.pod.as_deref().map(Arc::from),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node() -> ThisNode {
        ThisNode {
            name: "n1".into(),
            addresses: vec!["192.168.0.1".parse().unwrap(), "fd00::100".parse().unwrap()],
            zone: Some("z1".into()),
        }
    }

    fn service(spec: Value) -> KubeService {
        serde_json::from_value(
            json!({"metadata": {"namespace": "ns", "name": "web"}, "spec": spec}),
        )
        .unwrap()
    }

    /// A slice of Service ns/web with port http/80 (TCP) and these endpoints.
    fn slice(family: &str, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": format!("web-{family}"),
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// Every frontend as "address/protocol" → (backend addresses, verdict when empty).
    fn frontends(t: &Translation) -> Vec<(String, Vec<String>, WhenEmpty)> {
        let mut rows: Vec<_> = t
            .table
            .services
            .values()
            .map(|s| {
                let backends = s.backends.iter().map(|b| b.address.to_string()).collect();
                (s.frontend.to_string(), backends, s.when_empty)
            })
            .collect();
        rows.sort();
        rows
    }

    fn row(
        frontend: &str,
        backends: &[&str],
        when_empty: WhenEmpty,
    ) -> (String, Vec<String>, WhenEmpty) {
        (
            frontend.to_string(),
            backends.iter().map(|b| b.to_string()).collect(),
            when_empty,
        )
    }

    const HTTP: &str = r#"[{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP", "nodePort": 30080}]"#;

    fn ports() -> Value {
        serde_json::from_str(HTTP).unwrap()
    }

    /// Two endpoints: one on this node, one on n2.
    fn two_endpoints() -> EndpointSlice {
        slice(
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "nodeName": "n1"},
                {"addresses": ["10.0.0.2"], "nodeName": "n2"},
            ]),
        )
    }

    /// The translation of `svc` and `slices` as stored: slimmed.
    fn slimmed(svc: &KubeService, slices: &[EndpointSlice]) -> Translation {
        let mut svc = svc.clone();
        slim_service(&mut svc);
        let slices: Vec<EndpointSlice> = slices
            .iter()
            .map(|s| {
                let mut s = s.clone();
                slim_slice(&mut s);
                s
            })
            .collect();
        translate(&[&svc], &slices.iter().collect::<Vec<_>>(), &node())
    }

    /// The upstream behaviour cases (kubernetes `pkg/proxy/nftables/proxier_test.go`),
    /// written afresh as a table: objects in, frontends with backends and verdicts out.
    #[test]
    fn kube_proxy_behaviour_cases() {
        use WhenEmpty::{Drop, Reject};
        struct Case {
            name: &'static str,
            spec: Value,
            status: Value,
            slices: Vec<EndpointSlice>,
            want: Vec<(String, Vec<String>, WhenEmpty)>,
        }
        let both = ["10.0.0.1:8080", "10.0.0.2:8080"];
        let local = ["10.0.0.1:8080"];
        let cases = vec![
            Case {
                name: "TestNoEndpointsReject: no endpoint, every frontend rejects",
                spec: json!({"type": "NodePort", "clusterIP": "172.30.0.1", "ports": ports()}),
                status: json!({}),
                slices: vec![],
                want: vec![
                    row("172.30.0.1:80/tcp", &[], Reject),
                    row("192.168.0.1:30080/tcp", &[], Reject),
                ],
            },
            Case {
                name: "TestClusterIPGeneral: the named target port resolves per slice; dual-stack ClusterIPs",
                spec: json!({"clusterIP": "172.30.0.1", "clusterIPs": ["172.30.0.1", "fd00:30::1"], "ports": ports()}),
                status: json!({}),
                slices: vec![
                    two_endpoints(),
                    slice("IPv6", json!([{"addresses": ["fd00:10::1"], "nodeName": "n2"}])),
                ],
                want: vec![
                    row("172.30.0.1:80/tcp", &both, Reject),
                    row("[fd00:30::1]:80/tcp", &["[fd00:10::1]:8080"], Reject),
                ],
            },
            Case {
                name: "TestLoadBalancer: ingress IPs, external IPs and NodePorts",
                spec: json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1", "externalIPs": ["192.168.99.11"],
                             "loadBalancerSourceRanges": ["203.0.113.0/25"], "ports": ports()}),
                status: json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}),
                slices: vec![two_endpoints()],
                want: vec![
                    row("1.2.3.4:80/tcp", &both, Reject),
                    row("172.30.0.1:80/tcp", &both, Reject),
                    row("192.168.0.1:30080/tcp", &both, Reject),
                    row("192.168.99.11:80/tcp", &both, Reject),
                ],
            },
            Case {
                name: "TestNodePorts: a NodePort on each node address of the family",
                spec: json!({"type": "NodePort", "clusterIP": "fd00:30::1", "ports": ports()}),
                status: json!({}),
                slices: vec![slice("IPv6", json!([{"addresses": ["fd00:10::1"]}]))],
                want: vec![
                    row("[fd00:30::1]:80/tcp", &["[fd00:10::1]:8080"], Reject),
                    row("[fd00::100]:30080/tcp", &["[fd00:10::1]:8080"], Reject),
                ],
            },
            Case {
                name: "TestExternalTrafficPolicyLocal: external frontends use local endpoints, the ClusterIP all",
                spec: json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1", "externalTrafficPolicy": "Local",
                             "externalIPs": ["192.168.99.11"], "ports": ports()}),
                status: json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}),
                slices: vec![two_endpoints()],
                want: vec![
                    row("1.2.3.4:80/tcp", &local, Drop),
                    row("172.30.0.1:80/tcp", &both, Reject),
                    row("192.168.0.1:30080/tcp", &local, Drop),
                    row("192.168.99.11:80/tcp", &local, Drop),
                ],
            },
            Case {
                name: "TestExternalTrafficPolicyLocal: no local endpoint drops external traffic, never rejects",
                spec: json!({"type": "NodePort", "clusterIP": "172.30.0.1", "externalTrafficPolicy": "Local", "ports": ports()}),
                status: json!({}),
                slices: vec![slice("IPv4", json!([{"addresses": ["10.0.0.2"], "nodeName": "n2"}]))],
                want: vec![
                    row("172.30.0.1:80/tcp", &["10.0.0.2:8080"], Reject),
                    row("192.168.0.1:30080/tcp", &[], Drop),
                ],
            },
            Case {
                name: "TestExternalTrafficPolicyCluster: every endpoint everywhere",
                spec: json!({"type": "NodePort", "clusterIP": "172.30.0.1", "externalTrafficPolicy": "Cluster", "ports": ports()}),
                status: json!({}),
                slices: vec![two_endpoints()],
                want: vec![
                    row("172.30.0.1:80/tcp", &both, Reject),
                    row("192.168.0.1:30080/tcp", &both, Reject),
                ],
            },
            Case {
                name: "TestInternalTrafficPolicy: the ClusterIP uses local endpoints; none drops",
                spec: json!({"clusterIP": "172.30.0.1", "internalTrafficPolicy": "Local", "ports": ports()}),
                status: json!({}),
                slices: vec![slice("IPv4", json!([{"addresses": ["10.0.0.2"], "nodeName": "n2"}]))],
                want: vec![row("172.30.0.1:80/tcp", &[], Drop)],
            },
            Case {
                name: "TestTerminatingEndpointsTrafficPolicyLocal: only a terminating local endpoint, it serves",
                spec: json!({"type": "NodePort", "clusterIP": "172.30.0.1", "externalTrafficPolicy": "Local", "ports": ports()}),
                status: json!({}),
                slices: vec![slice("IPv4", json!([
                    {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.0.0.2"], "nodeName": "n2"},
                ]))],
                want: vec![
                    row("172.30.0.1:80/tcp", &["10.0.0.2:8080"], Reject),
                    row("192.168.0.1:30080/tcp", &local, Drop),
                ],
            },
            Case {
                name: "TestTerminatingEndpointsTrafficPolicyCluster: no ready endpoint, the serving terminating ones",
                spec: json!({"clusterIP": "172.30.0.1", "ports": ports()}),
                status: json!({}),
                slices: vec![slice("IPv4", json!([
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                ]))],
                want: vec![row("172.30.0.1:80/tcp", &["10.0.0.1:8080"], Reject)],
            },
            Case {
                name: "TestBuildServiceMapServiceHeadless: skipped",
                spec: json!({"clusterIP": "None", "ports": ports()}),
                status: json!({}),
                slices: vec![two_endpoints()],
                want: vec![],
            },
            Case {
                name: "TestBuildServiceMapServiceTypeExternalName: skipped",
                spec: json!({"type": "ExternalName", "externalName": "example.com", "ports": ports()}),
                status: json!({}),
                slices: vec![],
                want: vec![],
            },
            Case {
                name: "TestLoadBalancerIngressRouteTypeProxy: an ingress IP with ipMode Proxy is the LB's own",
                spec: json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1", "ports": [{"name": "http", "port": 80}]}),
                status: json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "Proxy"}, {"ip": "1.2.3.5", "ipMode": "VIP"}]}}),
                slices: vec![],
                want: vec![
                    row("1.2.3.5:80/tcp", &[], Reject),
                    row("172.30.0.1:80/tcp", &[], Reject),
                ],
            },
            Case {
                name: "TestBadIPs: addresses that do not parse are ignored, the rest served",
                spec: json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1", "clusterIPs": ["172.30.0.1", "not-an-ip"],
                             "externalIPs": ["192.168.99.300", "192.168.99.11"], "loadBalancerSourceRanges": ["10.0.0.0/99"],
                             "ports": [{"name": "http", "port": 80}]}),
                status: json!({"loadBalancer": {"ingress": [{"ip": "1.2.3"}, {"hostname": "lb.example.com"}]}}),
                slices: vec![],
                want: vec![
                    row("172.30.0.1:80/tcp", &[], Reject),
                    row("192.168.99.11:80/tcp", &[], Reject),
                ],
            },
        ];
        for c in cases {
            let mut svc = service(c.spec);
            svc.status = serde_json::from_value(c.status).unwrap();
            let slices: Vec<&EndpointSlice> = c.slices.iter().collect();
            let got = translate(&[&svc], &slices, &node());
            let mut want = c.want;
            want.sort();
            assert_eq!(frontends(&got), want, "{}", c.name);
            assert_eq!(slimmed(&svc, &c.slices), got, "{}: slimmed objects", c.name);
        }
    }

    #[test]
    fn source_ranges_apply_to_balancer_ips_only() {
        let mut svc = service(json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1",
            "loadBalancerSourceRanges": ["203.0.113.0/25", " 198.51.100.7 "], "ports": ports()}));
        svc.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}))
                .unwrap();
        let t = translate(&[&svc], &[], &node());
        for s in t.table.services.values() {
            let ranges: Vec<String> = s.source_ranges.iter().map(|r| r.to_string()).collect();
            if s.frontend.address.ip().to_string() == "1.2.3.4" {
                assert_eq!(ranges, ["203.0.113.0/25", "198.51.100.7/32"]);
            } else {
                assert!(ranges.is_empty(), "{}: {ranges:?}", s.frontend);
            }
        }
    }

    #[test]
    fn slimmed_objects_translate_the_same() {
        let mut svc = service(json!({"clusterIP": "172.30.0.1", "ports": ports()}));
        svc.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        svc.metadata.annotations = Some(
            [
                (CPU_PER_REQUEST.to_string(), "250m".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{...}".repeat(100),
                ),
            ]
            .into(),
        );
        let mut s = slice(
            "IPv4",
            json!([{"addresses": ["10.0.0.1"], "nodeName": "n1", "hostname": "web-0",
                "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
                "targetRef": {"kind": "Pod", "namespace": "ns", "name": "web-0",
                    "uid": "0c6d6a3e-2f4b-4d7e-9c1a-3f5e8b7a6d21", "resourceVersion": "42"}}]),
        );
        s.metadata.annotations = Some(
            [(
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                "2026-11-24T00:00:00Z".to_string(),
            )]
            .into(),
        );
        let full = translate(&[&svc], &[&s], &node());
        assert_eq!(slimmed(&svc, std::slice::from_ref(&s)), full);
        let pods: Vec<_> = full
            .table
            .services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| b.pod.clone()))
            .collect();
        assert!(
            pods.iter().all(|p| p.as_deref() == Some("ns/web-0")),
            "{pods:?}"
        );
        assert!(full
            .table
            .services
            .values()
            .all(|s| s.cpu_per_connection == Some(250)));
        slim_service(&mut svc);
        assert_eq!(svc.metadata.labels, None);
        assert_eq!(svc.metadata.annotations.map(|a| a.len()), Some(1));
        slim_slice(&mut s);
        assert_eq!(s.metadata.annotations, None);
        assert_eq!(
            s.endpoints[0]
                .target_ref
                .as_ref()
                .and_then(|r| r.uid.clone()),
            None
        );
    }

    #[test]
    fn affinity_cost_keys_and_unsupported_protocols() {
        let mut svc = service(
            json!({"clusterIP": "172.30.0.1", "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}, {"name": "sig", "port": 9, "protocol": "SCTP"}]}),
        );
        svc.metadata.annotations = Some([(CPU_PER_REQUEST.to_string(), "250m".to_string())].into());
        let t = translate(&[&svc], &[], &node());
        let keys: Vec<&str> = t.table.services.values().map(|s| &*s.key).collect();
        assert_eq!(keys, ["ns/web:http", "ns/web:53"]);
        for s in t.table.services.values() {
            assert_eq!(
                s.affinity.map(|a| a.timeout),
                Some(Duration::from_secs(10_800))
            );
            assert_eq!(s.cpu_per_connection, Some(250));
        }
        assert_eq!(
            t.unserved,
            [Unserved {
                kind: "Service",
                service: "ns/web:sig".into(),
                code: "UnsupportedProtocol",
                reason: "protocol SCTP is not supported by the proxy data plane".into()
            }]
        );
        let mut timed = service(
            json!({"clusterIP": "172.30.0.1", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}, "ports": [{"port": 80}]}),
        );
        timed.metadata.annotations =
            Some([(CPU_PER_REQUEST.to_string(), "lots".to_string())].into());
        let t = translate(&[&timed], &[], &node());
        let s = t.table.services.values().next().unwrap();
        assert_eq!(s.affinity.map(|a| a.timeout), Some(Duration::from_secs(60)));
        assert_eq!(s.cpu_per_connection, None);
        assert!(
            t.unserved[0].reason.contains("cpu-per-request"),
            "{:?}",
            t.unserved
        );
    }

    #[test]
    fn slices_belong_to_their_own_service_and_namespace() {
        let svc = service(json!({"clusterIP": "172.30.0.1", "ports": ports()}));
        let mut elsewhere = two_endpoints();
        elsewhere.metadata.namespace = Some("other".into());
        let mut other_service = two_endpoints();
        other_service.metadata.labels =
            Some([(SERVICE_NAME_LABEL.to_string(), "api".to_string())].into());
        let t = translate(&[&svc], &[&elsewhere, &other_service], &node());
        assert_eq!(
            frontends(&t),
            [row("172.30.0.1:80/tcp", &[], WhenEmpty::Reject)]
        );
    }

    #[test]
    fn backends_carry_their_pods_node_for_power_weighting() {
        let svc = service(json!({"clusterIP": "172.30.0.1", "ports": ports()}));
        let s = two_endpoints();
        let t = translate(&[&svc], &[&s], &node());
        let nodes: Vec<&str> = t
            .table
            .services
            .values()
            .next()
            .unwrap()
            .backends
            .iter()
            .map(|b| &*b.node)
            .collect();
        assert_eq!(nodes, ["n1", "n2"]);
    }

    #[test]
    fn health_check_node_ports_count_local_ready_endpoints() {
        let lb = |policy: &str| {
            service(
                json!({"type": "LoadBalancer", "clusterIP": "172.30.0.1", "externalTrafficPolicy": policy,
                "healthCheckNodePort": 32000, "ports": ports()}),
            )
        };
        let s = slice(
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "nodeName": "n1"},
                {"addresses": ["10.0.0.3"], "nodeName": "n1", "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.2"], "nodeName": "n2"},
            ]),
        );
        let t = translate(&[&lb("Local")], &[&s], &node());
        assert_eq!(
            t.health_check_ports,
            [HealthCheckPort {
                port: 32000,
                namespace: "ns".into(),
                name: "web".into(),
                local_endpoints: 1
            }]
        );
        assert!(translate(&[&lb("Cluster")], &[&s], &node())
            .health_check_ports
            .is_empty());
        let t = translate(&[&lb("Local")], &[], &node());
        assert_eq!(t.health_check_ports[0].local_endpoints, 0);
    }
}
