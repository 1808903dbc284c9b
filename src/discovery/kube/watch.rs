//! The watchers: kube-rs reflectors over the opted-in Services and EndpointSlices, this
//! node's Node, wao-lb's policies and the Pods they select, each with client-go's back-off, and the pollers of WAO's NodeConfigs and
//! the cluster's node metrics. Nothing is published before every store
//! has synced once; after that each change (coalesced, at most once per `minSyncPeriod`)
//! publishes a whole new translation. While the API server is away the stores keep their
//! last state and the watchers retry; a relist after `410 Gone` swaps in the relisted set,
//! so Services created or deleted meanwhile are picked up.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::KubeMetrics;
use super::node_metrics::{self, saying, NodeMetrics};
use super::nodeconfig::{self, NodeConfig, NodeConfigs};
use super::policies::{self, slim_pod, Policies};
use super::policy_status;
use super::policy_types::{self, BalancingPolicy, LocalRedirectPolicy};
use super::settings::{KubeSettings, PROXY_NAME_LABEL};
use super::translate::{slim_service, slim_slice, translate, ThisNode, Translation, Unserved};
use crate::model::node::BasicAuth;
use crate::model::published::Board;

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
    board: Board,
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
        slim_service,
        Some(&changed),
        &stop,
    );
    let slices: Store<EndpointSlice> = reflect(
        Api::all(client.clone()),
        watcher::Config::default().labels(&ours),
        slim_slice,
        Some(&changed),
        &stop,
    );
    let nodes: Store<Node> = reflect(
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name)),
        |_| {},
        Some(&changed),
        &stop,
    );
    // wao-lb's policies, and the pods they select (watched only while a policy exists).
    let mut pods = PodWatch {
        api: Api::all(client.clone()),
        changed: changed.clone(),
        stop: stop.clone(),
        running: None,
    };
    let redirect_api: Api<LocalRedirectPolicy> = Api::all(client.clone());
    let balancing_api: Api<BalancingPolicy> = Api::all(client.clone());
    let local_redirects: Store<LocalRedirectPolicy> = reflect(
        redirect_api.clone(),
        watcher::Config::default(),
        |_| {},
        Some(&changed),
        &stop,
    );
    let balancing_policies: Store<BalancingPolicy> = reflect(
        balancing_api.clone(),
        watcher::Config::default(),
        |_| {},
        Some(&changed),
        &stop,
    );
    let node_configs = Arc::new(std::sync::Mutex::new(NodeConfigs::default()));
    tokio::spawn(poll_node_configs(
        client.clone(),
        settings.bmc_insecure_skip_verify,
        node_configs.clone(),
        changed.clone(),
        stop.clone(),
    ));
    // Every Node, for its CPU capacity: read by the metrics poller, which wakes the sync
    // when a capacity changes (not on every Node status update).
    let all_nodes: Store<Node> = reflect(
        Api::all(client.clone()),
        watcher::Config::default().any_semantic(),
        node_metrics::slim_to_capacity,
        None,
        &stop,
    );
    let node_metrics = Arc::new(std::sync::Mutex::new(NodeMetrics::default()));
    tokio::spawn(node_metrics::poll(
        client.clone(),
        all_nodes.clone(),
        board,
        node_metrics.clone(),
        changed.clone(),
        stop.clone(),
    ));
    let synced = async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        synced_or_absent(&redirect_api, &local_redirects).await;
        synced_or_absent(&balancing_api, &balancing_policies).await;
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = synced => {}
    }
    tracing::info!(node = %settings.node_name, proxy_name = %settings.service_proxy_name,
        "Kubernetes objects synced");
    let mut reported: Vec<super::translate::Unserved> = Vec::new();
    let (statuses, wanted_statuses) = watch::channel(Vec::new());
    tokio::spawn(policy_status::write(
        client.clone(),
        settings.node_name.clone(),
        wanted_statuses,
        stop.clone(),
    ));
    loop {
        let started = Instant::now();
        let (redirects, balancing) = (local_redirects.state(), balancing_policies.state());
        pods.follow(!redirects.is_empty() || !balancing.is_empty())
            .await;
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
            let mut t = translate(&services, &slices, &node);
            let pods = pods.state();
            let redirects: Vec<&LocalRedirectPolicy> = redirects.iter().map(|p| &**p).collect();
            let balancing: Vec<&BalancingPolicy> = balancing.iter().map(|p| &**p).collect();
            let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
            let policies = Policies {
                local_redirects: &redirects,
                balancing: &balancing,
                pods: &pods,
                services: &services,
            };
            t.policies = policies::apply(&mut t.table, &policies, &node, &mut t.unserved);
            t.nodes = lock(&node_configs).nodes.clone();
            let cluster = lock(&node_metrics);
            nodeconfig::prefer_custom_metrics(&mut t.nodes, &cluster.custom);
            for (name, spec) in t.nodes.iter_mut() {
                if let Some(cores) = cluster.capacity.get(&**name) {
                    spec.cores = *cores;
                }
            }
            t
        };
        for u in translation
            .unserved
            .iter()
            .filter(|u| !reported.contains(u))
        {
            tracing::warn!(service = %u.service, reason = %u.reason, "Kubernetes Service not fully served");
            if reports_events(&all_nodes.state(), &settings.node_name) {
                tokio::spawn(publish_event(recorder.clone(), u.clone()));
            }
        }
        reported = translation.unserved.clone();
        statuses.send_if_modified(|wanted| {
            let changed = *wanted != translation.policies;
            if changed {
                wanted.clone_from(&translation.policies);
            }
            changed
        });
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often NodeConfigs are listed (they change rarely; WAO itself re-reads them on use).
const NODE_CONFIG_PERIOD: Duration = Duration::from_secs(30);

/// Lists WAO's NodeConfigs (and the Secrets their terms name) every period into `into`,
/// waking `changed` when the node specs change. Without the CRD, that is said once and
/// nodes get their power inputs from the config file only.
async fn poll_node_configs(
    client: Client,
    bmc_insecure: bool,
    into: Arc<std::sync::Mutex<NodeConfigs>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        nodeconfig::GROUP,
        nodeconfig::VERSION,
        nodeconfig::KIND,
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut said = None;
    loop {
        let absent =
            "WAO's NodeConfig CRD is not installed; node power inputs come from the config file";
        let listed = api.list(&ListParams::default()).await.map(|l| l.items);
        if let Some(items) = saying(listed, &mut said, absent, "NodeConfigs") {
            let configs: Vec<NodeConfig> = items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect();
            let secrets = read_secrets(&client, &configs).await;
            let secret = |ns: &str, name: &str| secrets.get(&(ns.into(), name.into())).cloned();
            let out = nodeconfig::translate(&configs, &secret, bmc_insecure);
            let mut current = lock(&into);
            for n in out.notes.iter().filter(|n| !current.notes.contains(n)) {
                tracing::warn!(note = %n, "NodeConfig");
            }
            if *current != out {
                *current = out;
                changed.notify_one();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(NODE_CONFIG_PERIOD) => {}
        }
    }
}

/// The `username`/`password` of every Secret a NodeConfig term names (in its namespace).
async fn read_secrets(
    client: &Client,
    configs: &[NodeConfig],
) -> BTreeMap<(String, String), BasicAuth> {
    let mut out = BTreeMap::new();
    for c in configs {
        let namespace = c.metadata.namespace.clone().unwrap_or_default();
        let terms = [
            Some(&c.spec.metrics_collector.inlet_temp),
            Some(&c.spec.metrics_collector.delta_p),
            c.spec.predictor.power_consumption.as_ref(),
            c.spec
                .predictor
                .power_consumption_endpoint_provider
                .as_ref(),
        ];
        for name in terms
            .into_iter()
            .flatten()
            .filter_map(|t| t.basic_auth_secret.as_ref())
        {
            let key = (namespace.clone(), name.name.clone());
            if out.contains_key(&key) {
                continue;
            }
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let secret = match api.get_opt(&name.name).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    tracing::warn!(%namespace, secret = %name.name, "NodeConfig names a Secret that does not exist");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%namespace, secret = %name.name, error = %e, "cannot read a NodeConfig's Secret");
                    continue;
                }
            };
            let field = |k: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
            };
            if let (Some(username), Some(password)) = (field("username"), field("password")) {
                out.insert(key, BasicAuth { username, password });
            }
        }
    }
    out
}

/// Whether this node's instance publishes Events: every instance sees the same Service, so
/// one speaks for all, the one on the first Node by name (every instance if the Nodes are
/// not known). Each still logs and counts what it cannot serve.
fn reports_events(nodes: &[Arc<Node>], this: &str) -> bool {
    nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .min()
        .is_none_or(|first| first == this)
}

/// Completes when `store` has synced, or at once when the API server does not serve its
/// kind (a CRD not installed) or does not let wao-lb read it (RBAC of an older release),
/// which is said: policies need them, Services do not, so Services are served meanwhile,
/// and the reflector picks the objects up once they can be read.
async fn synced_or_absent<K>(api: &Api<K>, store: &Store<K>)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    match api.list(&ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
            let kind = K::kind(&K::DynamicType::default()).to_string();
            tracing::warn!(%kind, reason = %e.message,
                "cannot list them (CRD not installed, or no RBAC grant: see deploy/); policies that need them are not applied until they can be read");
        }
        _ => {
            let _ = store.wait_until_ready().await;
        }
    }
}

/// The Pods that policies select, slimmed to what selection reads. They are watched
/// cluster-wide, so only while a policy exists: a cluster without policies pays for no Pod
/// watch on any node.
struct PodWatch {
    api: Api<Pod>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    /// The store and the token that ends its watch, while one runs.
    running: Option<(Store<Pod>, CancellationToken)>,
}

/// How long a sync waits for a new Pod watch's first list before it goes on without it.
const POD_LIST_WAIT: Duration = Duration::from_secs(10);

impl PodWatch {
    /// Starts the watch when a policy appears and ends it when the last one goes. A new
    /// watch's first list is waited for (up to `POD_LIST_WAIT`), so the first translation
    /// with a policy already sees its pods.
    async fn follow(&mut self, wanted: bool) {
        if !wanted {
            if let Some((_, token)) = self.running.take() {
                token.cancel();
                tracing::info!("no policy left: the Pod watch ended");
            }
            return;
        }
        if self.running.is_some() {
            return;
        }
        let token = self.stop.child_token();
        let store = reflect(
            self.api.clone(),
            watcher::Config::default().any_semantic(),
            slim_pod,
            Some(&self.changed),
            &token,
        );
        tracing::info!("a policy exists: watching Pods");
        let listed = tokio::time::timeout(POD_LIST_WAIT, synced_or_absent(&self.api, &store));
        let _ = self.stop.run_until_cancelled(listed).await;
        self.running = Some((store, token));
    }

    fn state(&self) -> Vec<Arc<Pod>> {
        self.running
            .as_ref()
            .map_or_else(Vec::new, |(store, _)| store.state())
    }
}

/// A Warning Event on the object, for `kubectl describe` (best effort: a failure is
/// logged at debug, since the log line and the metric already say it).
async fn publish_event(recorder: Recorder, u: Unserved) {
    let (namespace, name) = u.object();
    let api_version = match u.kind {
        "Service" => "v1".to_string(),
        _ => format!("{}/{}", policy_types::GROUP, policy_types::VERSION),
    };
    let reference = ObjectReference {
        api_version: Some(api_version),
        kind: Some(u.kind.into()),
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
/// wakes `changed`, if given. Objects are stored as `slim` leaves them. Errors are retried with
/// client-go's back-off and logged.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    changed: Option<&Arc<Notify>>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // Managed fields are often most of an object's size, and nothing here reads them.
    let objects = watcher(api, config).modify(move |o| {
        o.managed_fields_mut().clear();
        slim(o);
    });
    let stream = reflector::reflector(writer, objects).default_backoff();
    let (changed, stop) = (changed.cloned(), stop.clone());
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
                // A relist begins (or pages in): nothing in the store has changed yet, and
                // while the list keeps failing (a CRD not installed) this comes back with
                // every retry, which must not resync everything each time.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Ok(_)) => {
                    if failing {
                        tracing::info!(%kind, "Kubernetes watch resumed");
                        failing = false;
                    }
                    if let Some(changed) = &changed {
                        changed.notify_one();
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_speaks_for_all() {
        let nodes: Vec<Arc<Node>> = ["n2", "n10", "n1"]
            .iter()
            .map(|name| {
                let mut n = Node::default();
                n.metadata.name = Some(name.to_string());
                Arc::new(n)
            })
            .collect();
        assert!(reports_events(&nodes, "n1"));
        assert!(!reports_events(&nodes, "n2"));
        assert!(!reports_events(&nodes, "n10"), "by name, not by number");
        assert!(reports_events(&nodes[..1], "n2"));
        assert!(
            reports_events(&[], "anyone"),
            "Nodes not known: every instance"
        );
    }
}
