//! The config file as a discovery source: one YAML file holds the process settings
//! (`settings`), the static `services:`, the `nodes:` with their power inputs, and
//! `discovery.kubernetes` when Services come from a cluster too. `load`
//! reads and validates all of it, reporting every value error with its key path; `watch`
//! re-reads it on request (SIGHUP) or when its bytes change.

mod nodes;
mod services;
pub mod watch;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::kube::settings::{self as kube_settings, KubeSettings, RawKube, NODE_NAME_ENV};
use crate::model::Desired;
use crate::settings::{
    structural, yaml, ConfigError, ConfigErrors, DataplaneMode, RawAdmin, RawIpvs, RawMetrics,
    RawPower, RawProxy, RawSettings, RawTproxy, RawUdp, RedirectMode, Settings, Validator,
};

/// A validated config file: the process settings and the desired services and nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub settings: Settings,
    pub desired: Desired,
    /// Kubernetes discovery, when `discovery.kubernetes` is set: its Services join the
    /// file's `services:`.
    pub kubernetes: Option<KubeSettings>,
    /// Legal but probably unintended (`path: why`); `check` prints them, `run` logs them.
    pub warnings: Vec<ConfigError>,
}

/// The file's top level, as written. Unknown keys are errors, with their path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    redirect: RedirectMode,
    #[serde(default)]
    tproxy: RawTproxy,
    #[serde(default)]
    dataplane: DataplaneMode,
    #[serde(default)]
    ipvs: RawIpvs,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    udp: RawUdp,
    /// Absent is an error (a file with nothing to serve is a mistake); `services: []` says
    /// "none" on purpose.
    services: Option<Vec<services::RawService>>,
    #[serde(default)]
    nodes: BTreeMap<String, nodes::RawNode>,
    #[serde(default)]
    power: RawPower,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDiscovery {
    kubernetes: Option<RawKube>,
}

impl FileConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigErrors> {
        let text = read_bounded(path).map_err(|e| {
            ConfigErrors::whole_file(format!("cannot read {}: {e}", path.display()))
        })?;
        FileConfig::parse(&text)
    }

    /// Parses and validates YAML text. Structural errors (unknown key, wrong type) stop at
    /// the first one; value errors are all collected.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
        if text.trim().is_empty() {
            return Err(ConfigErrors::whole_file(
                "the config is empty; it needs `services:` (write `services: []` to serve none)",
            ));
        }
        let raw: RawFile = structural(text)?;
        let mut v = Validator::default();
        let kubernetes = raw
            .discovery
            .kubernetes
            .as_ref()
            .map(|k| kube_settings::validate(&mut v, k, std::env::var(NODE_NAME_ENV).ok()));
        if raw.services.is_none() && kubernetes.is_none() {
            v.err(
                "services",
                "missing; write `services: []` to run with no services, or set discovery.kubernetes",
            );
        }
        let settings = Settings::validate(
            &RawSettings {
                admin: raw.admin,
                redirect: raw.redirect,
                tproxy: raw.tproxy,
                dataplane: raw.dataplane,
                ipvs: raw.ipvs,
                proxy: raw.proxy,
                udp: raw.udp,
                power: raw.power,
                metrics: raw.metrics,
                discovered: kubernetes.is_some(),
            },
            &mut v,
        );
        let desired = Desired {
            services: services::validate(&mut v, raw.services.as_deref().unwrap_or_default()),
            nodes: nodes::validate(&mut v, &raw.nodes),
        };
        if let Some(raw_services) = &raw.services {
            services::warn_unconfigured_nodes(&mut v, raw_services, &raw.nodes);
        }
        let warnings = v.warnings().to_vec();
        v.finish(FileConfig {
            settings,
            desired,
            kubernetes,
            warnings,
        })
    }
}

/// The file's text, refused without reading it all when it is larger than YAML may be.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(yaml::MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_empty_service_list_is_defaults() {
        let c = FileConfig::parse("services: []\n").unwrap();
        assert_eq!(
            c.settings.admin,
            crate::settings::DEFAULT_ADMIN.parse().unwrap()
        );
        assert!(c.settings.admin.ip().is_loopback());
        assert!(c.desired.services.services.is_empty());
    }

    #[test]
    fn a_file_that_says_nothing_is_refused() {
        for text in [
            "",
            "  \n",
            "# just a comment\n",
            "admin: {listen: 127.0.0.1:1}\n",
        ] {
            let errs = FileConfig::parse(text).unwrap_err().to_string();
            assert!(errs.contains("services: []"), "{text:?}: {errs}");
        }
    }

    #[test]
    fn collects_every_value_error() {
        let yaml = r#"
services:
  - name: a
    address: 127.0.0.1:80
    backends:
      - {address: x, node: n}
  - name: a
    address: nope
"#;
        let errs = FileConfig::parse(yaml).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "services[0].backends[0].address: invalid socket address \"x\"".to_string(),
                "services[1].name: duplicate service name \"a\"".to_string(),
                "services[1].address: invalid socket address \"nope\"".to_string(),
            ]
        );
    }

    #[test]
    fn local_redirects_and_other_clusters_are_read_and_checked() {
        let yaml = r#"
services:
  - name: dns
    protocol: udp
    address: 10.0.0.10:53
    localRedirect:
      backends: [{address: "127.0.0.1:5353", node: vm1}]
    backends: [{address: "10.0.0.2:53", node: vm2}]
    clusters:
      - {cluster: east, scoreUrl: "http://u:secret@east:10349/score", address: "10.9.0.1:53", interval: 2s}
"#;
        let c = FileConfig::parse(yaml).unwrap();
        let s = c.desired.services.services.values().next().unwrap();
        let redirect = s.redirect.as_ref().unwrap();
        assert_eq!(redirect.backends[0].address.to_string(), "127.0.0.1:5353");
        assert_eq!(s.backends.len(), 1);
        assert_eq!(&*s.clusters[0].name, "east");
        assert_eq!(s.clusters[0].timing.interval.as_secs(), 2);
        assert_eq!(
            s.clusters[0].score_url.to_string(),
            "http://***@east:10349/score"
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.path == "services[0].localRedirect"),
            "no healthCheck: warned that it never falls back"
        );
        let bad = r#"
services:
  - name: dns
    address: 10.0.0.10:53
    localRedirect: {backends: []}
    clusters:
      - {cluster: local, scoreUrl: "ftp://east/score", address: "0.0.0.0:53"}
      - {cluster: east, scoreUrl: "http://east/score", address: "10.9.0.1:53", staleAfter: 1s}
"#;
        let errs = FileConfig::parse(bad).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services[0].localRedirect.backends",
                "services[0].clusters[0].cluster",
                "services[0].clusters[0].scoreUrl",
                "services[0].clusters[0].address",
                "services[0].clusters[1].staleAfter",
            ]
        );
    }

    #[test]
    fn tproxy_settings_take_hex_marks_and_refuse_kube_proxy_bits() {
        let c = FileConfig::parse(
            "services: []\nredirect: tproxy\ntproxy: {mark: 0x100, upstreamMark: 0x200, routeTable: 77}\n",
        )
        .unwrap();
        assert_eq!(c.settings.redirect, crate::settings::RedirectMode::Tproxy);
        assert_eq!(
            (
                c.settings.tproxy.mark,
                c.settings.tproxy.upstream_mark,
                c.settings.tproxy.route_table
            ),
            (0x100, 0x200, 77)
        );
        let errs = FileConfig::parse(
            "services: []\ntproxy: {mark: 0x4000, upstreamMark: 0x4000, routeTable: 254}\n",
        )
        .unwrap_err()
        .0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.contains(
                &"tproxy.mark: 0x4000 overlaps kube-proxy's marks 0x4000/0x8000".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(&"tproxy.upstreamMark: must not share bits with tproxy.mark".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"tproxy.routeTable: 254 is a reserved routing table".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn unknown_key_has_its_path() {
        let yaml = "services:\n  - name: a\n    address: 127.0.0.1:80\n    backends:\n      - {adress: 1.2.3.4:5, node: n}\n";
        let errs = FileConfig::parse(yaml).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "services[0].backends[0].adress");
        assert!(
            errs[0].message.contains("unknown field `adress`"),
            "{}",
            errs[0].message
        );
    }
}
