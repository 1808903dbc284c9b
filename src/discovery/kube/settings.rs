//! `discovery.kubernetes`: which Services this instance takes, for which node, how often it
//! may re-sync, where its API credentials come from, and whether the BMCs that WAO's
//! NodeConfigs name may have self-signed certificates.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::Validator;

/// The label a Service sets to be proxied by wao-lb instead of kube-proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// WAO's proxy name, wao-lb's default.
pub const DEFAULT_PROXY_NAME: &str = "wao-loadbalancer";
/// The downward-API variable the DaemonSet sets.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKube {
    service_proxy_name: Option<String>,
    node_name: Option<String>,
    min_sync_period: Option<String>,
    kubeconfig: Option<PathBuf>,
    bmc_insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// Services and EndpointSlices labelled `service.kubernetes.io/service-proxy-name` with
    /// this value are ours.
    pub service_proxy_name: String,
    /// This node: its Node object gives the NodePort addresses and the zone.
    pub node_name: String,
    /// At most one re-sync per this period (kube-proxy's `minSyncPeriod`, 1 s).
    pub min_sync_period: Duration,
    /// A kubeconfig file; else `$KUBECONFIG`, `~/.kube/config` or the in-cluster service
    /// account.
    pub kubeconfig: Option<PathBuf>,
    /// Accept self-signed certificates from the Redfish endpoints (BMCs) NodeConfigs name.
    /// WAO always does; wao-lb checks them unless this is set.
    pub bmc_insecure_skip_verify: bool,
}

/// Validates `discovery.kubernetes`; `node_env` is `$NODE_NAME`.
pub fn validate(v: &mut Validator, raw: &RawKube, node_env: Option<String>) -> KubeSettings {
    let at = "discovery.kubernetes";
    let service_proxy_name = raw
        .service_proxy_name
        .clone()
        .unwrap_or_else(|| DEFAULT_PROXY_NAME.into());
    if !is_label_value(&service_proxy_name) {
        v.err(
            format!("{at}.serviceProxyName"),
            format!("{service_proxy_name:?} is not a valid label value"),
        );
    }
    let node_name = match raw.node_name.clone().or(node_env) {
        Some(n) if !n.trim().is_empty() => n,
        _ => {
            v.err(
                format!("{at}.nodeName"),
                format!("missing, and ${NODE_NAME_ENV} is not set"),
            );
            String::new()
        }
    };
    let min_sync_period = v.duration(
        &format!("{at}.minSyncPeriod"),
        raw.min_sync_period.as_deref(),
        Duration::from_secs(1),
    );
    KubeSettings {
        service_proxy_name,
        node_name,
        min_sync_period,
        kubeconfig: raw.kubeconfig.clone(),
        bmc_insecure_skip_verify: raw.bmc_insecure_skip_verify.unwrap_or(false),
    }
}

/// A Kubernetes label value: at most 63 characters of alphanumerics, `-`, `_` and `.`,
/// beginning and ending with an alphanumeric.
fn is_label_value(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_have_their_paths() {
        let mut v = Validator::default();
        let s = validate(&mut v, &RawKube::default(), Some("node-1".into()));
        assert_eq!(s.service_proxy_name, "wao-loadbalancer");
        assert_eq!(s.node_name, "node-1");
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert!(v.finish(()).is_ok());

        let mut v = Validator::default();
        let raw = RawKube {
            service_proxy_name: Some("-bad name".into()),
            min_sync_period: Some("soon".into()),
            ..RawKube::default()
        };
        validate(&mut v, &raw, None);
        let errors = v.finish(()).unwrap_err().to_string();
        for e in [
            "discovery.kubernetes.serviceProxyName: \"-bad name\" is not a valid label value",
            "discovery.kubernetes.nodeName: missing, and $NODE_NAME is not set",
            "discovery.kubernetes.minSyncPeriod: invalid duration \"soon\"",
        ] {
            assert!(errors.contains(e), "{e}: {errors}");
        }
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("wao-loadbalancer"));
        assert!(is_label_value("a.b_c"));
        assert!(!is_label_value(""));
        assert!(!is_label_value("a-"));
        assert!(!is_label_value(&"a".repeat(64)));
    }
}
