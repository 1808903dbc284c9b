//! wao-lb's own CRDs, `lb.wao.dev/v1alpha1`: `LocalRedirectPolicy` (a frontend's traffic
//! from a node goes only to that node's pods chosen by label, else to its normal backends)
//! and `BalancingPolicy` (a frontend whose backends are pods by label, fixed addresses and
//! other clusters, weighted by power). The manifests in `deploy/crds/` are generated from
//! these types (a unit test compares them; `WAO_LB_WRITE_CRDS=1 cargo test crds` rewrites
//! them), so the schema the API server checks is the one read here.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "lb.wao.dev";
pub const VERSION: &str = "v1alpha1";

/// Node-local redirect: while the policy exists, this node's connections to the frontend
/// go only to the ready pods the selector picks on this node; with none ready, to the
/// frontend's normal backends (a Service's endpoints; none for a bare address, which is
/// then refused).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "lb.wao.dev",
    version = "v1alpha1",
    kind = "LocalRedirectPolicy",
    doc = "Sends a frontend's connections from each node to that node's ready pods, else to its normal backends.",
    namespaced,
    shortname = "lrp",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LocalRedirectPolicySpec {
    pub frontend: PolicyFrontend,
    /// The pods on this node that take the traffic.
    pub backends: PodBackends,
}

/// A frontend whose backends are chosen by this policy and weighted by power like any
/// Service's.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "lb.wao.dev",
    version = "v1alpha1",
    kind = "BalancingPolicy",
    doc = "A frontend whose backends are pods by label, fixed addresses and other clusters, weighted by power.",
    namespaced,
    shortname = "bp",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BalancingPolicySpec {
    pub frontend: PolicyFrontend,
    /// Pods by label, on any node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodBackends>,
    /// Fixed backends, in or outside the cluster; `node` names the node whose power model
    /// weighs it (a Node with a NodeConfig, or a `nodes:` entry of the config file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<FixedBackend>,
    /// Other clusters, each one backend group weighted by its power score (WAO's rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterBackend>,
}

/// Exactly one of `service` or `address` (with `port`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFrontend {
    /// A Service of the policy's namespace that wao-lb serves (labelled
    /// `service.kubernetes.io/service-proxy-name: wao-loadbalancer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// A virtual IP of the operator's choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// `TCP` (the default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PolicyProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReference {
    /// The policy's own namespace (the default); a policy may not take another
    /// namespace's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// One of its ports, by name or number; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodBackends {
    /// The pods' namespace; the policy's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pods of that namespace.
    pub selector: LabelSelector,
    /// The pods' port, by number or by a container port's name; the frontend's port when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixedBackend {
    /// `ip:port`.
    pub address: String,
    pub node: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBackend {
    pub cluster: String,
    /// The other cluster's wao-lb `/score`.
    pub score_url: String,
    /// Its frontend for this service, `ip:port`.
    pub address: String,
}

/// What each node's wao-lb uses: by node name, its backends in use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeUse>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeUse {
    /// Backends this node's wao-lb sends the frontend's connections to now.
    pub backends: u32,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// deploy/crds/ holds exactly what these types generate.
    #[test]
    fn crds_in_deploy_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
        for (file, crd) in [
            ("localredirectpolicies.yaml", LocalRedirectPolicy::crd()),
            ("balancingpolicies.yaml", BalancingPolicy::crd()),
        ] {
            let text = format!(
                "# Generated from src/discovery/kube/policy_types.rs; do not edit.\n{}",
                serde_yaml::to_string(&crd).unwrap()
            );
            let path = dir.join(file);
            if std::env::var_os("WAO_LB_WRITE_CRDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let shipped = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                shipped == text,
                "{} differs from the types; run WAO_LB_WRITE_CRDS=1 cargo test crds",
                path.display()
            );
        }
    }
}
