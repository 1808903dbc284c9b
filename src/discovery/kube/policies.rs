//! wao-lb's policies onto the translated `ServiceTable`: BalancingPolicies give a frontend
//! (a served Service's port, or an address of their own) pods by label, fixed addresses and
//! other clusters as backends; then LocalRedirectPolicies put this node's ready pods in front
//! of a frontend's backends, which stay as the fallback. What a policy cannot do is reported
//! as `Unserved`. Pure: the objects in, the table changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodSpec, PodStatus, Service as KubeService,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::policy_types::{
    BalancingPolicy, FixedBackend, LocalRedirectPolicy, PodBackends, PolicyFrontend, PolicyProtocol,
};
use super::translate::{display_port, ThisNode, Unserved};
use crate::model::node::Timing;
use crate::model::url::HttpUrl;
use crate::model::{
    Backend, Frontend, Protocol, Redirect, RemoteCluster, Service, ServiceKind, ServiceTable,
};

/// How many backends a policy has in use on this node, for its status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyUse {
    pub kind: ServiceKind,
    pub namespace: String,
    pub name: String,
    pub backends: u32,
}

/// The policies' objects, and the opted-in Services their frontends may name.
pub struct Policies<'a> {
    pub local_redirects: &'a [&'a LocalRedirectPolicy],
    pub balancing: &'a [&'a BalancingPolicy],
    pub pods: &'a [&'a Pod],
    pub services: &'a [&'a KubeService],
}

/// Keeps of a Pod only what the policies read: its namespace, name, labels and deletion
/// time (with what the store needs: uid and resourceVersion), its node and its
/// containers' named ports, its IPs and its Ready condition. A cluster's pods are many;
/// each instance stores them all.
pub fn slim_pod(p: &mut Pod) {
    let m = std::mem::take(&mut p.metadata);
    p.metadata = ObjectMeta {
        namespace: m.namespace,
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    };
    p.spec = p.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        containers: spec
            .containers
            .into_iter()
            .filter_map(|c| {
                let ports: Vec<ContainerPort> =
                    c.ports?.into_iter().filter(|p| p.name.is_some()).collect();
                (!ports.is_empty()).then(|| Container {
                    name: c.name,
                    ports: Some(ports),
                    ..Container::default()
                })
            })
            .collect(),
        ..PodSpec::default()
    });
    p.status = p.status.take().map(|status| PodStatus {
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        conditions: status
            .conditions
            .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
        ..PodStatus::default()
    });
}

/// Applies every policy to `table`; returns what each uses on this node.
pub fn apply(
    table: &mut ServiceTable,
    policies: &Policies<'_>,
    node: &ThisNode,
    unserved: &mut Vec<Unserved>,
) -> Vec<PolicyUse> {
    if policies.balancing.is_empty() && policies.local_redirects.is_empty() {
        return Vec::new();
    }
    let kube = KubeFrontends::of(policies.services, table);
    let mut used = Vec::new();
    let mut held = BTreeSet::new();
    for p in sorted(policies.balancing) {
        let one = One::new(ServiceKind::BalancingPolicy, &p.metadata, &p.spec.frontend);
        let clusters = match clusters(&p.spec.clusters) {
            Ok(c) => c,
            Err(e) => {
                unserved.push(one.refused("InvalidBackend", e));
                continue;
            }
        };
        let (fixed, refused) = fixed_backends(&p.spec.addresses);
        unserved.extend(
            refused
                .into_iter()
                .map(|r| one.refused("InvalidBackend", r)),
        );
        let spec = &p.spec;
        let pods = spec.pods.as_ref().map(|b| {
            let namespace = b.namespace.as_deref().unwrap_or(one.namespace);
            (b, selected(namespace, &b.selector, policies.pods, None))
        });
        used.extend(
            one.apply(table, &kube, &mut held, unserved, |target, service| {
                let mut backends = match &pods {
                    Some((b, selected)) => pod_backends(selected, b, target),
                    None => Vec::new(),
                };
                backends.extend(fixed.iter().cloned());
                service.backends = backends;
                service.clusters = clusters.clone();
                service.backends.len() + service.clusters.len()
            }),
        );
    }
    let mut held = BTreeSet::new();
    for p in sorted(policies.local_redirects) {
        let one = One::new(
            ServiceKind::LocalRedirectPolicy,
            &p.metadata,
            &p.spec.frontend,
        );
        let by: Arc<str> = format!("LocalRedirectPolicy {}/{}", one.namespace, one.name).into();
        let b = &p.spec.backends;
        let namespace = b.namespace.as_deref().unwrap_or(one.namespace);
        let local = selected(namespace, &b.selector, policies.pods, Some(&node.name));
        used.extend(
            one.apply(table, &kube, &mut held, unserved, |target, service| {
                let local = pod_backends(&local, b, target);
                let in_use = local.len();
                service.redirect = Some(Redirect {
                    by: by.clone(),
                    backends: local,
                    fallback: service.origin().into(),
                });
                in_use
            }),
        );
    }
    used
}

/// The frontends of each served Kubernetes Service port, by its key
/// (`namespace/name:port`), and the Services themselves: what a policy's `service`
/// frontend names. Made once per translation, not searched for each policy.
struct KubeFrontends<'a> {
    services: &'a [&'a KubeService],
    by_key: BTreeMap<Arc<str>, Vec<Frontend>>,
}

impl<'a> KubeFrontends<'a> {
    fn of(services: &'a [&'a KubeService], table: &ServiceTable) -> KubeFrontends<'a> {
        let mut by_key: BTreeMap<Arc<str>, Vec<Frontend>> = BTreeMap::new();
        for s in table.services.values() {
            by_key.entry(s.key.clone()).or_default().push(s.frontend);
        }
        KubeFrontends { services, by_key }
    }
}

/// A BalancingPolicy's fixed `addresses` as backends, and why each refused one is.
fn fixed_backends(addresses: &[FixedBackend]) -> (Vec<Backend>, Vec<String>) {
    let mut backends = Vec::new();
    let mut refused = Vec::new();
    for (i, f) in addresses.iter().enumerate() {
        match f.address.parse::<SocketAddr>() {
            Ok(address) if relayable(address) && !f.node.is_empty() => backends.push(Backend {
                address,
                node: Arc::from(f.node.as_str()),
                pod: None,
            }),
            _ => refused.push(format!(
                "spec.addresses[{i}]: {:?} on node {:?} is not a routable ip:port on a named node",
                f.address, f.node
            )),
        }
    }
    (backends, refused)
}

/// One policy being applied: its kind, identity and frontend.
struct One<'a> {
    kind: ServiceKind,
    namespace: &'a str,
    name: &'a str,
    frontend: &'a PolicyFrontend,
}

impl<'a> One<'a> {
    fn new(kind: ServiceKind, meta: &'a ObjectMeta, frontend: &'a PolicyFrontend) -> One<'a> {
        let (namespace, name) = identity(meta);
        One {
            kind,
            namespace,
            name,
            frontend,
        }
    }

    fn refused(&self, code: &'static str, reason: String) -> Unserved {
        Unserved {
            kind: self.kind.as_str(),
            service: format!("{}/{}", self.namespace, self.name),
            code,
            reason,
        }
    }

    /// Each frontend the policy names, not yet `held` by a policy of its kind, gets
    /// `shape`d from the service there (or a new one of its own); `shape` returns how many
    /// backends it uses. None when the frontend is invalid.
    fn apply(
        &self,
        table: &mut ServiceTable,
        kube: &KubeFrontends<'_>,
        held: &mut BTreeSet<Frontend>,
        unserved: &mut Vec<Unserved>,
        mut shape: impl FnMut(&Target, &mut Service) -> usize,
    ) -> Option<PolicyUse> {
        let targets = match frontends(self.namespace, self.frontend, kube, table) {
            Ok(t) => t,
            Err(e) => {
                unserved.push(self.refused("InvalidFrontend", e));
                return None;
            }
        };
        let policy: Arc<str> = format!("{}/{}", self.namespace, self.name).into();
        let mut in_use = 0;
        for target in targets {
            if !held.insert(target.frontend) {
                let reason = format!(
                    "{} is already taken by another {}",
                    target.frontend, self.kind
                );
                unserved.push(self.refused("FrontendConflict", reason));
                continue;
            }
            // `shape` sees the service as found (a redirect names what it falls back to),
            // then it becomes the policy's.
            let mut service = base(table, &target, self.kind, &policy);
            in_use = in_use.max(shape(&target, &mut service));
            service.kind = self.kind;
            service.policy = Some(policy.clone());
            table.services.insert(target.frontend, Arc::new(service));
        }
        Some(PolicyUse {
            kind: self.kind,
            namespace: self.namespace.into(),
            name: self.name.into(),
            backends: u32::try_from(in_use).unwrap_or(u32::MAX),
        })
    }
}

/// Policies by namespace and name: which wins a conflict does not depend on list order.
fn sorted<'a, K: kube::Resource>(list: &[&'a K]) -> Vec<&'a K> {
    let mut out = list.to_vec();
    out.sort_by(|a, b| identity(a.meta()).cmp(&identity(b.meta())));
    out
}

fn identity(m: &ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or(""),
    )
}

/// The service at `target` as the policy finds it: the table's (a Service's, or another
/// policy's), else a new one of the policy's own, named `policy`, with no backend.
fn base(table: &ServiceTable, target: &Target, kind: ServiceKind, policy: &Arc<str>) -> Service {
    match table.services.get(&target.frontend) {
        Some(s) => (**s).clone(),
        None => Service::plain(kind, policy.clone(), target.frontend, Vec::new()),
    }
}

/// One frontend a policy applies to, and the port its pods take when the policy names none.
#[derive(Debug, Clone)]
struct Target {
    frontend: Frontend,
    default_port: IntOrString,
}

/// The frontends `f` names: every frontend of the Service's port(s) in the table, or the
/// address of its own.
fn frontends(
    namespace: &str,
    f: &PolicyFrontend,
    kube: &KubeFrontends<'_>,
    table: &ServiceTable,
) -> Result<Vec<Target>, String> {
    match (&f.service, &f.address) {
        (Some(_), Some(_)) | (None, None) => {
            Err("spec.frontend: give exactly one of service or address".into())
        }
        (None, Some(address)) => {
            let ip: IpAddr = address
                .parse()
                .map_err(|_| format!("spec.frontend.address: {address:?} is not an IP address"))?;
            let port = f
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or("spec.frontend.port: a port from 1 to 65535 is required with an address")?;
            let protocol = match f.protocol {
                Some(PolicyProtocol::Udp) => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            let frontend = Frontend {
                protocol,
                address: SocketAddr::new(ip, port),
            };
            // An address of a Service (or policy) of another namespace is not this one's
            // to take.
            if let Some(owner) = table.services.get(&frontend) {
                if owner.key.split('/').next() != Some(namespace) {
                    return Err(format!(
                        "spec.frontend.address: {frontend} is a frontend of {}, in another namespace",
                        owner.key
                    ));
                }
            }
            Ok(vec![Target {
                frontend,
                default_port: IntOrString::Int(i32::from(port)),
            }])
        }
        (Some(reference), None) => {
            if reference
                .namespace
                .as_deref()
                .is_some_and(|n| n != namespace)
            {
                return Err(format!(
                    "spec.frontend.service.namespace: a policy in {namespace} may take only Services of its own namespace"
                ));
            }
            let svc = kube
                .services
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(reference.name.as_str())
                })
                .ok_or_else(|| {
                    format!(
                        "spec.frontend.service: Service {namespace}/{} is not served by wao-lb (missing, or without the service-proxy-name label)",
                        reference.name
                    )
                })?;
            let ports: Vec<_> = svc
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .filter(|p| match &reference.port {
                    None => true,
                    Some(IntOrString::Int(n)) => p.port == *n,
                    Some(IntOrString::String(s)) => p.name.as_deref() == Some(s.as_str()),
                })
                .collect();
            if ports.is_empty() {
                return Err(format!(
                    "spec.frontend.service.port: Service {namespace}/{} has no port {:?}",
                    reference.name, reference.port
                ));
            }
            let mut out = Vec::new();
            for port in ports {
                let key = format!("{namespace}/{}:{}", reference.name, display_port(port));
                let default_port = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                out.extend(
                    kube.by_key
                        .get(key.as_str())
                        .into_iter()
                        .flatten()
                        .map(|frontend| Target {
                            frontend: *frontend,
                            default_port: default_port.clone(),
                        }),
                );
            }
            Ok(out)
        }
    }
}

/// The ready pods of `namespace` that `selector` picks, on any node or only on `node`:
/// once per policy, whatever number of frontends it has.
fn selected<'p>(
    namespace: &str,
    selector: &LabelSelector,
    pods: &[&'p Pod],
    node: Option<&str>,
) -> Vec<&'p Pod> {
    pods.iter()
        .copied()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| selects(selector, p.metadata.labels.as_ref()))
        .filter(|p| ready(p))
        .filter(|p| {
            let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            on.is_some() && node.is_none_or(|n| on == Some(n))
        })
        .collect()
}

/// The `selected` pods as backends for `target`: the address of the frontend's family,
/// the port `b` names (or the target's default).
fn pod_backends(selected: &[&Pod], b: &PodBackends, target: &Target) -> Vec<Backend> {
    let wanted = b.target_port.as_ref().unwrap_or(&target.default_port);
    let mut out: Vec<Backend> = selected
        .iter()
        .filter_map(|p| {
            let on = p.spec.as_ref()?.node_name.as_deref()?;
            let ip = pod_ip(p, target.frontend.address.is_ipv6())?;
            let port = pod_port(p, wanted, target.frontend.protocol)?;
            let (namespace, name) = identity(&p.metadata);
            Some(Backend {
                address: SocketAddr::new(ip, port),
                node: Arc::from(on),
                pod: Some(format!("{namespace}/{name}").into()),
            })
        })
        .collect();
    out.sort_by_key(|b| b.address);
    out.dedup_by_key(|b| b.address);
    out
}

/// Ready, and not being deleted.
fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod, v6: bool) -> Option<IpAddr> {
    let status = p.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
}

/// A port by number, or a container port of `protocol` by name.
fn pod_port(p: &Pod, wanted: &IntOrString, protocol: Protocol) -> Option<u16> {
    match wanted {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n > 0),
        IntOrString::String(name) => {
            let proto = match protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            };
            p.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .and_then(|cp| u16::try_from(cp.container_port).ok())
        }
    }
}

/// Whether wao-lb may connect to `a` for a policy: not port 0, and not an address that only
/// means something on the node itself (loopback, unspecified, link-local such as a cloud's
/// metadata service at 169.254.169.254, multicast). wao-lb runs in the host's network, so
/// a policy's author could otherwise reach the node's own services through it.
fn relayable(a: SocketAddr) -> bool {
    let local = match a.ip() {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_broadcast()
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_unicast_link_local()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_link_local())
        }
    };
    a.port() != 0 && !local
}

/// Kubernetes label selector semantics: every `matchLabels` pair and every expression holds;
/// an empty selector selects everything. An unknown operator selects nothing.
pub fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// The policy's other clusters, each checked; one bad entry refuses them all (a split
/// that silently lost a cluster would send its share elsewhere).
fn clusters(list: &[super::policy_types::ClusterBackend]) -> Result<Vec<RemoteCluster>, String> {
    let mut out: Vec<RemoteCluster> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let at = format!("spec.clusters[{i}]");
        if c.cluster.is_empty() || out.iter().any(|o| *o.name == *c.cluster) {
            return Err(format!("{at}.cluster: empty or duplicate {:?}", c.cluster));
        }
        let score_url = HttpUrl::parse(&c.score_url).map_err(|e| format!("{at}.scoreUrl: {e}"))?;
        let address = c
            .address
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| relayable(*a))
            .ok_or_else(|| format!("{at}.address: {:?} is not a routable ip:port", c.address))?;
        out.push(RemoteCluster {
            name: Arc::from(c.cluster.as_str()),
            score_url,
            address,
            timing: Timing::default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::discovery::kube::translate::translate;

    fn node() -> ThisNode {
        ThisNode {
            name: "n1".into(),
            ..ThisNode::default()
        }
    }

    /// A pod of namespace `ns` with labels `app`, on `node`, at `ip`, ready or not, with a
    /// container port `dns`/53 (UDP) and `http`/8080.
    fn pod(name: &str, app: &str, node: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": name, "labels": {"app": app, "tier": "x"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    /// Service ns/web, ClusterIP 10.96.0.10, ports http/80→8080 (TCP) and dns/53 (UDP),
    /// with one endpoint on n2 for each port.
    fn served() -> (KubeService, k8s_openapi::api::discovery::v1::EndpointSlice) {
        let svc = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]},
        }))
        .unwrap();
        let slice = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.1.2.9"], "nodeName": "n2"}],
        }))
        .unwrap();
        (svc, slice)
    }

    fn lrp(name: &str, spec: Value) -> LocalRedirectPolicy {
        serde_json::from_value(json!({"apiVersion": "lb.wao.dev/v1alpha1",
            "kind": "LocalRedirectPolicy", "metadata": {"namespace": "ns", "name": name},
            "spec": spec}))
        .unwrap()
    }

    fn bp(name: &str, spec: Value) -> BalancingPolicy {
        serde_json::from_value(json!({"apiVersion": "lb.wao.dev/v1alpha1",
            "kind": "BalancingPolicy", "metadata": {"namespace": "ns", "name": name},
            "spec": spec}))
        .unwrap()
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod("dns-n1", "dns", "n1", "10.1.1.5", true),
            pod("dns-n1-starting", "dns", "n1", "10.1.1.6", false),
            pod("dns-n2", "dns", "n2", "10.1.2.5", true),
            pod("web-n2", "web", "n2", "10.1.2.7", true),
        ]
    }

    /// One row per frontend: (frontend, kind, redirect backends, backends, clusters).
    type Row = (String, ServiceKind, Vec<String>, Vec<String>, usize);

    /// The table after applying `lrps` and `bps` with `pods`, and what was refused.
    fn run(
        lrps: &[LocalRedirectPolicy],
        bps: &[BalancingPolicy],
        pods: &[Pod],
    ) -> (Vec<Row>, Vec<String>, Vec<PolicyUse>) {
        let (svc, slice) = served();
        let mut t = translate(&[&svc], &[&slice], &node());
        let lrps: Vec<&LocalRedirectPolicy> = lrps.iter().collect();
        let bps: Vec<&BalancingPolicy> = bps.iter().collect();
        let pods: Vec<&Pod> = pods.iter().collect();
        let used = apply(
            &mut t.table,
            &Policies {
                local_redirects: &lrps,
                balancing: &bps,
                pods: &pods,
                services: &[&svc],
            },
            &node(),
            &mut t.unserved,
        );
        let addresses = |list: &[Backend]| {
            list.iter()
                .map(|b| format!("{}@{}", b.address, b.node))
                .collect()
        };
        let rows = t
            .table
            .services
            .values()
            .map(|s| {
                (
                    s.frontend.to_string(),
                    s.kind,
                    s.redirect
                        .as_ref()
                        .map(|r| addresses(&r.backends))
                        .unwrap_or_default(),
                    addresses(&s.backends),
                    s.clusters.len(),
                )
            })
            .collect();
        let refused = t
            .unserved
            .iter()
            .map(|u| format!("{} {}: {}", u.kind, u.code, u.reason))
            .collect();
        (rows, refused, used)
    }

    #[test]
    fn a_local_redirect_on_a_service_takes_only_this_nodes_ready_pods() {
        let cases: [(&str, Value, Vec<&str>); 3] = [
            (
                "named target port, one service port",
                json!({"frontend": {"service": {"name": "web", "port": "dns"}},
                       "backends": {"selector": {"matchLabels": {"app": "dns"}}, "targetPort": "dns"}}),
                vec!["10.1.1.5:53@n1"],
            ),
            (
                "no target port: the Service's targetPort, by name on the pod",
                json!({"frontend": {"service": {"name": "web", "port": 80}},
                       "backends": {"selector": {"matchLabels": {"app": "dns"}}}}),
                vec!["10.1.1.5:8080@n1"],
            ),
            (
                "expressions",
                json!({"frontend": {"service": {"name": "web", "port": "dns"}},
                       "backends": {"selector": {"matchExpressions": [
                           {"key": "app", "operator": "In", "values": ["dns", "cache"]},
                           {"key": "canary", "operator": "DoesNotExist"}]}}}),
                vec!["10.1.1.5:53@n1"],
            ),
        ];
        for (what, spec, want) in cases {
            let (rows, refused, used) = run(&[lrp("local", spec)], &[], &pods());
            assert!(refused.is_empty(), "{what}: {refused:?}");
            let redirected: Vec<&Row> = rows
                .iter()
                .filter(|r| r.1 == ServiceKind::LocalRedirectPolicy)
                .collect();
            assert_eq!(redirected.len(), 1, "{what}: one frontend: {rows:?}");
            let (_, _, redirect, fallback, _) = redirected[0];
            assert_eq!(redirect, &want, "{what}");
            assert_eq!(
                fallback.len(),
                1,
                "{what}: the Service's endpoint stays as the fallback"
            );
            assert!(fallback[0].ends_with("@n2"), "{what}: {fallback:?}");
            assert_eq!(used[0].backends, 1, "{what}");
        }
    }

    #[test]
    fn without_a_ready_local_pod_the_redirect_is_empty_and_the_service_stays() {
        let spec = json!({"frontend": {"service": {"name": "web", "port": "dns"}},
                          "backends": {"selector": {"matchLabels": {"app": "dns"}}}});
        let pods = [
            pod("dns-n1-starting", "dns", "n1", "10.1.1.6", false),
            pod("dns-n2", "dns", "n2", "10.1.2.5", true),
        ];
        let (rows, _, used) = run(&[lrp("local", spec)], &[], &pods);
        let row = rows.iter().find(|r| r.0 == "10.96.0.10:53/udp").unwrap();
        assert_eq!(row.2, Vec::<String>::new());
        assert_eq!(row.3, ["10.1.2.9:53@n2"]);
        assert_eq!(used[0].backends, 0);
    }

    #[test]
    fn pods_may_be_of_another_namespace_when_named() {
        let mut cache = pod("cache", "dns", "n1", "10.1.1.8", true);
        cache.metadata.namespace = Some("dns-system".into());
        let spec = |pods_namespace: Value| {
            json!({"frontend": {"service": {"name": "web", "port": "dns"}},
                   "backends": {"namespace": pods_namespace,
                                "selector": {"matchLabels": {"app": "dns"}}}})
        };
        let redirect_of = |spec: Value| {
            let (rows, _, _) = run(&[lrp("local", spec)], &[], std::slice::from_ref(&cache));
            rows.into_iter()
                .find(|r| r.0 == "10.96.0.10:53/udp")
                .map(|r| r.2)
                .unwrap_or_default()
        };
        assert_eq!(redirect_of(spec(json!("dns-system"))), ["10.1.1.8:53@n1"]);
        assert!(
            redirect_of(spec(Value::Null)).is_empty(),
            "by default only the policy's namespace"
        );
    }

    #[test]
    fn a_redirect_on_an_address_of_its_own_is_a_new_frontend() {
        let spec = json!({"frontend": {"address": "169.254.20.10", "port": 53, "protocol": "UDP"},
                          "backends": {"selector": {"matchLabels": {"app": "dns"}}}});
        let (rows, refused, _) = run(&[lrp("vip", spec)], &[], &pods());
        assert!(refused.is_empty(), "{refused:?}");
        let row = rows.iter().find(|r| r.0 == "169.254.20.10:53/udp").unwrap();
        assert_eq!(row.1, ServiceKind::LocalRedirectPolicy);
        assert_eq!(
            row.2,
            ["10.1.1.5:53@n1"],
            "the frontend port is the pods' port"
        );
        assert!(row.3.is_empty(), "no fallback for an address of its own");
    }

    #[test]
    fn a_balancing_policy_takes_pods_anywhere_and_fixed_addresses() {
        let spec = json!({"frontend": {"address": "10.96.200.1", "port": 80},
            "pods": {"selector": {"matchLabels": {"app": "web"}}, "targetPort": "http"},
            "addresses": [{"address": "192.0.2.10:8080", "node": "rack7"}],
            "clusters": [{"cluster": "east", "scoreUrl": "http://east:10349/score", "address": "203.0.113.10:80"}]});
        let (rows, refused, used) = run(&[], &[bp("split", spec)], &pods());
        assert!(refused.is_empty(), "{refused:?}");
        let row = rows.iter().find(|r| r.0 == "10.96.200.1:80/tcp").unwrap();
        assert_eq!(row.1, ServiceKind::BalancingPolicy);
        assert_eq!(row.3, ["10.1.2.7:8080@n2", "192.0.2.10:8080@rack7"]);
        assert_eq!(row.4, 1, "one other cluster");
        assert_eq!(used[0].backends, 3);
        // On a Service's port it replaces the endpoints; a redirect then composes on top.
        let spec = json!({"frontend": {"service": {"name": "web", "port": "http"}},
            "addresses": [{"address": "192.0.2.10:8080", "node": "rack7"}]});
        let redirect = json!({"frontend": {"service": {"name": "web", "port": "http"}},
            "backends": {"selector": {"matchLabels": {"app": "dns"}}, "targetPort": 8080}});
        let (rows, _, _) = run(&[lrp("local", redirect)], &[bp("db", spec)], &pods());
        let row = rows.iter().find(|r| r.0 == "10.96.0.10:80/tcp").unwrap();
        assert_eq!(row.2, ["10.1.1.5:8080@n1"]);
        assert_eq!(
            row.3,
            ["192.0.2.10:8080@rack7"],
            "the policy's backends are the fallback"
        );
    }

    #[test]
    fn what_a_policy_cannot_do_is_reported() {
        let cases: [(Value, &str); 6] = [
            (json!({"frontend": {"address": "10.0.0.1", "port": 80, "service": {"name": "web"}}}),
             "BalancingPolicy InvalidFrontend: spec.frontend: give exactly one of service or address"),
            (json!({"frontend": {"service": {"name": "db"}}}),
             "BalancingPolicy InvalidFrontend: spec.frontend.service: Service ns/db is not served by wao-lb"),
            (json!({"frontend": {"service": {"name": "web", "port": "grpc"}}}),
             "BalancingPolicy InvalidFrontend: spec.frontend.service.port: Service ns/web has no port"),
            (json!({"frontend": {"address": "10.0.0.1"}}),
             "BalancingPolicy InvalidFrontend: spec.frontend.port: a port from 1 to 65535"),
            (json!({"frontend": {"service": {"namespace": "other", "name": "web"}}}),
             "BalancingPolicy InvalidFrontend: spec.frontend.service.namespace: a policy in ns may take only Services of its own namespace"),
            (json!({"frontend": {"address": "10.0.0.1", "port": 80},
                    "clusters": [{"cluster": "east", "scoreUrl": "ftp://x", "address": "1.2.3.4:80"}]}),
             "BalancingPolicy InvalidBackend: spec.clusters[0].scoreUrl"),
        ];
        let node_only = [
            json!({"frontend": {"address": "10.0.0.1", "port": 80},
                   "addresses": [{"address": "127.0.0.1:10349", "node": "n1"}]}),
            json!({"frontend": {"address": "10.0.0.1", "port": 80},
                   "addresses": [{"address": "169.254.169.254:80", "node": "n1"}]}),
            json!({"frontend": {"address": "10.0.0.1", "port": 80},
                   "addresses": [{"address": "[::ffff:127.0.0.1]:22", "node": "n1"}]}),
        ];
        for spec in node_only {
            let (rows, refused, _) = run(&[], &[bp("relay", spec.clone())], &[]);
            assert!(
                refused[0].starts_with("BalancingPolicy InvalidBackend: spec.addresses[0]"),
                "{spec}: {refused:?}"
            );
            let row = rows.iter().find(|r| r.0 == "10.0.0.1:80/tcp").unwrap();
            assert!(row.3.is_empty(), "{spec}: not a backend: {row:?}");
        }
        // Another namespace's Service address is not taken.
        let other: BalancingPolicy = serde_json::from_value(json!({
            "apiVersion": "lb.wao.dev/v1alpha1", "kind": "BalancingPolicy",
            "metadata": {"namespace": "intruder", "name": "steal"},
            "spec": {"frontend": {"address": "10.96.0.10", "port": 80},
                     "addresses": [{"address": "192.0.2.66:80", "node": "evil"}]}}))
        .unwrap();
        let (rows, refused, _) = run(&[], &[other], &[]);
        assert!(
            refused[0]
                .contains("10.96.0.10:80/tcp is a frontend of ns/web:http, in another namespace"),
            "{refused:?}"
        );
        let row = rows.iter().find(|r| r.0 == "10.96.0.10:80/tcp").unwrap();
        assert_eq!(row.1, ServiceKind::Service, "left as it was: {row:?}");
        for (spec, want) in cases {
            let (_, refused, _) = run(&[], &[bp("bad", spec)], &[]);
            assert!(
                refused.iter().any(|r| r.starts_with(want)),
                "want {want:?}, got {refused:?}"
            );
        }
        let spec = json!({"frontend": {"address": "10.0.0.1", "port": 80}});
        let (_, refused, _) = run(&[], &[bp("a", spec.clone()), bp("b", spec)], &[]);
        assert_eq!(refused, ["BalancingPolicy FrontendConflict: 10.0.0.1:80/tcp is already taken by another BalancingPolicy"]);
    }

    #[test]
    fn a_slimmed_pod_is_selected_and_resolved_as_before() {
        let mut full: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "dns-n1", "labels": {"app": "dns"},
                         "annotations": {"big": "x".repeat(1000)}, "uid": "u1",
                         "resourceVersion": "7", "ownerReferences": [
                             {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r"}]},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "image": "cache:1", "args": ["-v"],
                 "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                           {"containerPort": 9153}]},
                {"name": "sidecar", "image": "log:1"}]},
            "status": {"podIP": "10.1.1.5", "phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "cache:1", "imageID": "",
                                       "ready": true, "restartCount": 0}]},
        }))
        .unwrap();
        let table_with = |pod: &Pod| {
            let spec = json!({
                "frontend": {"address": "169.254.20.10", "port": 53, "protocol": "UDP"},
                "backends": {"selector": {"matchLabels": {"app": "dns"}}, "targetPort": "dns"}});
            run(&[lrp("local", spec)], &[], std::slice::from_ref(pod)).0
        };
        let before = table_with(&full);
        slim_pod(&mut full);
        let slim = serde_json::to_value(&full).unwrap();
        assert_eq!(
            slim,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"namespace": "ns", "name": "dns-n1", "labels": {"app": "dns"},
                                "uid": "u1", "resourceVersion": "7"},
                   "spec": {"nodeName": "n1", "containers": [
                       {"name": "c", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                   "status": {"podIP": "10.1.1.5", "conditions": [{"type": "Ready", "status": "True"}]}})
        );
        let after = table_with(&full);
        assert_eq!(after, before);
        assert!(after.iter().any(|r| r.2 == ["10.1.1.5:53@n1"]), "{after:?}");
    }

    #[test]
    fn label_selectors_as_kubernetes_reads_them() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "dns".into()), ("tier".into(), "x".into())].into();
        let cases: [(Value, bool); 8] = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "dns"}}), true),
            (json!({"matchLabels": {"app": "web"}}), false),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["dns"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["dns"]}]}),
                false,
            ),
        ];
        for (selector, want) in cases {
            let s: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
            assert_eq!(selects(&s, Some(&labels)), want, "{selector}");
        }
    }
}
