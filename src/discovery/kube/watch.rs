//! The watchers: kube-rs reflectors over the opted-in Services and EndpointSlices and this
//! node's Node, each with client-go's back-off. Nothing is published before every store
//! has synced once; after that each change (coalesced, at most once per `minSyncPeriod`)
//! publishes a whole new translation. While the API server is away the stores keep their
//! last state and the watchers retry; a relist after `410 Gone` swaps in the relisted set,
//! so Services created or deleted meanwhile are picked up.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Node, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::KubeMetrics;
use super::settings::{KubeSettings, PROXY_NAME_LABEL};
use super::translate::{translate, ThisNode, Translation, Unserved};

/// Services that must never be proxied: headless ones (kube-proxy's own selector).
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A client from `settings.kubeconfig`, or else `$KUBECONFIG`, `~/.kube/config` or the
/// in-cluster service account.
pub async fn client(settings: &KubeSettings) -> Result<Client, String> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => Config::infer().await.map_err(|e| {
            format!("no Kubernetes credentials (kubeconfig or service account): {e}")
        })?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// Watches until `stop`, publishing every new translation on `out` (None until the first
/// full sync).
pub async fn run(
    client: Client,
    settings: KubeSettings,
    metrics: KubeMetrics,
    out: watch::Sender<Option<Arc<Translation>>>,
    stop: CancellationToken,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "wao-lb".into(),
            instance: Some(settings.node_name.clone()),
        },
    );
    let ours = format!(
        "{PROXY_NAME_LABEL}={},!{HEADLESS_LABEL}",
        settings.service_proxy_name
    );
    let changed = Arc::new(Notify::new());
    let services: Store<KubeService> = reflect(
        Api::all(client.clone()),
        watcher::Config::default().labels(&ours),
        &changed,
        &stop,
    );
    let slices: Store<EndpointSlice> = reflect(
        Api::all(client.clone()),
        watcher::Config::default().labels(&ours),
        &changed,
        &stop,
    );
    let nodes: Store<Node> = reflect(
        Api::all(client),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name)),
        &changed,
        &stop,
    );
    let synced = async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = synced => {}
    }
    tracing::info!(node = %settings.node_name, proxy_name = %settings.service_proxy_name,
        "Kubernetes objects synced");
    let mut reported: Vec<super::translate::Unserved> = Vec::new();
    loop {
        let started = Instant::now();
        let translation = {
            let services = services.state();
            let slices = slices.state();
            let node = this_node(&nodes.state(), &settings.node_name);
            metrics
                .objects
                .with_label_values(&["Service"])
                .set(services.len() as i64);
            metrics
                .objects
                .with_label_values(&["EndpointSlice"])
                .set(slices.len() as i64);
            let services: Vec<&KubeService> = services.iter().map(|s| &**s).collect();
            let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
            translate(&services, &slices, &node)
        };
        for u in translation
            .unserved
            .iter()
            .filter(|u| !reported.contains(u))
        {
            tracing::warn!(service = %u.service, reason = %u.reason, "Kubernetes Service not fully served");
            tokio::spawn(publish_event(recorder.clone(), u.clone()));
        }
        reported = translation.unserved.clone();
        metrics.unserved.set(reported.len() as i64);
        metrics.syncs.inc();
        metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            metrics.last_sync.set(now.as_secs_f64());
        }
        out.send_if_modified(|current| {
            let same = current.as_deref() == Some(&translation);
            if !same {
                *current = Some(Arc::new(translation));
            }
            !same
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
        }
        // Coalesce: at most one sync per period, whatever came meanwhile included.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(started + settings.min_sync_period) => {}
        }
    }
}

/// A Warning Event on the Service, for `kubectl describe` (best effort: a failure is
/// logged at debug, since the log line and the metric already say it).
async fn publish_event(recorder: Recorder, u: Unserved) {
    let (namespace, name) = u.object();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: u.code.into(),
        note: Some(format!("{}: {}", u.service, u.reason)),
        action: "Proxy".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::debug!(service = %u.service, error = %e, "cannot publish the Event");
    }
}

/// A reflector for `api` under `config`, polled in its own task until `stop`; each event
/// wakes `changed`. Errors are retried with client-go's back-off and logged.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let (changed, stop) = (changed.clone(), stop.clone());
    let kind = K::kind(&K::DynamicType::default()).to_string();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.next() => e,
            };
            match event {
                None => return,
                Some(Ok(_)) => {
                    if failing {
                        tracing::info!(%kind, "Kubernetes watch resumed");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Some(Err(e)) => {
                    if !failing {
                        tracing::warn!(%kind, error = %e, "Kubernetes watch failed; serving the last state and retrying");
                        failing = true;
                    }
                }
            }
        }
    });
    reader
}

/// What the translation needs of this node's Node object (an empty view while it is
/// missing: no NodePorts, no zone).
fn this_node(nodes: &[Arc<Node>], name: &str) -> ThisNode {
    let node = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name));
    ThisNode {
        name: name.to_string(),
        addresses: node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .collect(),
        zone: node
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned(),
    }
}
