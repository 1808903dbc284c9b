//! A Kubernetes API server for the tests (no real one can run here). It speaks the real
//! protocol over HTTP for Services, EndpointSlices and Nodes: list with a resourceVersion,
//! watch streams of ADDED / MODIFIED / DELETED / BOOKMARK events from a given version,
//! label selectors (`k=v`, `k`, `!k`) and `metadata.name` field selectors, an object that
//! leaves a watch's selector arriving as DELETED, and `410 Gone` (an ERROR event with the
//! `Expired` status) for a version older than the last compaction. It can be stopped and
//! started again on the same port. It also serves Secrets, Events, WAO's NodeConfig CRD,
//! metrics.k8s.io's NodeMetrics, WAO's custom metrics, Pods, and wao-lb's policy CRDs with
//! merge patches of their status. The real client (kube-rs) drives it through a kubeconfig.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// The kinds it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    /// WAO's CRD: served only after `install_node_config_crd`.
    NodeConfig,
    Secret,
    /// metrics.k8s.io's node usage.
    NodeMetrics,
    Pod,
    /// wao-lb's CRDs.
    LocalRedirectPolicy,
    BalancingPolicy,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NodeConfig => "node.waok8s.github.io/v1beta1",
            Kind::NodeMetrics => "metrics.k8s.io/v1beta1",
            Kind::LocalRedirectPolicy | Kind::BalancingPolicy => "lb.wao.dev/v1alpha1",
            _ => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::NodeConfig => "NodeConfig",
            Kind::Secret => "Secret",
            Kind::NodeMetrics => "NodeMetrics",
            Kind::Pod => "Pod",
            Kind::LocalRedirectPolicy => "LocalRedirectPolicy",
            Kind::BalancingPolicy => "BalancingPolicy",
        }
    }
}

/// One change, with the object before (None: created) and after (None: deleted).
#[derive(Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a version before this get 410 Gone.
    compacted: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Watches answered with 410 Gone.
    gone: std::sync::atomic::AtomicU64,
    /// Events posted (events.k8s.io/v1), as sent.
    events: Mutex<Vec<Value>>,
    node_config_crd: std::sync::atomic::AtomicBool,
    /// wao-lb's policy CRDs are served unless removed.
    policy_crds_removed: std::sync::atomic::AtomicBool,
    /// Status patches still to answer with 500, as an API server that is briefly away.
    status_patch_failures: std::sync::atomic::AtomicU64,
    /// Watch streams still open, per kind.
    open_watches: Mutex<BTreeMap<Kind, usize>>,
    /// WAO's metrics adapter on custom.metrics.k8s.io: (node, metric) → value; None while
    /// the API is not served.
    custom_metrics: Mutex<Option<BTreeMap<(String, String), String>>>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<CancellationToken>,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api server");
        ApiServer::start_on(listener)
    }

    /// Serves on `listener`, e.g. one bound inside another network namespace.
    pub fn start_on(listener: tokio::net::TcpListener) -> ApiServer {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changes,
            gone: Default::default(),
            events: Default::default(),
            node_config_crd: Default::default(),
            policy_crds_removed: Default::default(),
            status_patch_failures: Default::default(),
            open_watches: Default::default(),
            custom_metrics: Default::default(),
        });
        let addr = listener.local_addr().expect("addr");
        let mut server = ApiServer {
            addr,
            shared,
            stop: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let state = (self.shared.clone(), stop.clone());
        let app = Router::new()
            .route("/api/v1/services", get(|s, q| handle(s, q, Kind::Service)))
            .route(
                "/apis/discovery.k8s.io/v1/endpointslices",
                get(|s, q| handle(s, q, Kind::EndpointSlice)),
            )
            .route("/api/v1/nodes", get(|s, q| handle(s, q, Kind::Node)))
            .route("/api/v1/pods", get(|s, q| handle(s, q, Kind::Pod)))
            .route(
                "/apis/lb.wao.dev/v1alpha1/localredirectpolicies",
                get(|s, q| policy(s, q, Kind::LocalRedirectPolicy)),
            )
            .route(
                "/apis/lb.wao.dev/v1alpha1/balancingpolicies",
                get(|s, q| policy(s, q, Kind::BalancingPolicy)),
            )
            .route(
                "/apis/lb.wao.dev/v1alpha1/namespaces/:namespace/:plural/:name/status",
                axum::routing::patch(patch_status),
            )
            .route(
                "/apis/node.waok8s.github.io/v1beta1/nodeconfigs",
                get(|s: State<(Arc<Shared>, CancellationToken)>, q| async move {
                    if s.0
                         .0
                        .node_config_crd
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        handle(s, q, Kind::NodeConfig).await
                    } else {
                        not_found()
                    }
                }),
            )
            .route(
                "/api/v1/namespaces/:namespace/secrets/:name",
                get(get_secret),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/nodes",
                get(|s, q| handle(s, q, Kind::NodeMetrics)),
            )
            .route(
                "/apis/custom.metrics.k8s.io/v1beta2/nodes/:name/:metric",
                get(custom_metric),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/:namespace/events",
                axum::routing::post(record_event),
            )
            .with_state(state);
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        self.stop = Some(stop);
    }

    /// Stops serving: the listener closes and every watch stream ends.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Creates or replaces an object (its namespace and name from its metadata).
    pub fn put(&self, kind: Kind, object: Value) {
        put(&self.shared, kind, object);
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut store = self.shared.store.lock().expect("store");
        let Some(mut before) =
            store
                .objects
                .remove(&(kind, namespace.to_string(), name.to_string()))
        else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        before["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            kind,
            before: Some(before),
            after: None,
        };
        store.log.push(change.clone());
        let _ = self.shared.changes.send(change);
    }

    /// The stored object, if any.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().expect("store");
        store
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Forgets the history: a watch from any version before now gets 410 Gone.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().expect("store");
        store.compacted = store.rv + 1;
        store.log.clear();
    }

    /// From now on the NodeConfig CRD is served (before, its path answers 404).
    pub fn install_node_config_crd(&self) {
        self.shared
            .node_config_crd
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// From now on the custom metrics API serves `metric` of `node` as `value` (a quantity).
    pub fn serve_custom_metric(&self, node: &str, metric: &str, value: &str) {
        self.shared
            .custom_metrics
            .lock()
            .expect("custom metrics")
            .get_or_insert_default()
            .insert((node.into(), metric.into()), value.into());
    }

    /// Whether wao-lb's policy CRDs are served (they are from the start); without them
    /// their paths answer 404, as an API server without the CRDs installed.
    pub fn serve_policy_crds(&self, served: bool) {
        self.shared
            .policy_crds_removed
            .store(!served, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers the next `n` status patches with 500 Internal Server Error.
    pub fn fail_status_patches(&self, n: u64) {
        self.shared
            .status_patch_failures
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Status patches still to be failed.
    pub fn status_patch_failures_left(&self) -> u64 {
        self.shared
            .status_patch_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Watch streams of `kind` open now (one ends within a bookmark's period, 0.5 s, of its
    /// client going away).
    pub fn watches_open(&self, kind: Kind) -> usize {
        let open = self.shared.open_watches.lock().expect("open watches");
        open.get(&kind).copied().unwrap_or(0)
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        self.shared.events.lock().expect("events").clone()
    }

    /// How many watches were answered with 410 Gone.
    pub fn gone(&self) -> u64 {
        self.shared.gone.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A kubeconfig for this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n\
             current-context: test\n",
            self.addr
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn get_secret(
    State((shared, _)): State<(Arc<Shared>, CancellationToken)>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> Response {
    let store = shared.store.lock().expect("store");
    match store.objects.get(&(Kind::Secret, namespace, name)) {
        Some(secret) => Json(secret.clone()).into_response(),
        None => not_found(),
    }
}

/// `GET .../nodes/{name|*}/{metric}` as a MetricValueList, or 404 while not served.
async fn custom_metric(
    State((shared, _)): State<(Arc<Shared>, CancellationToken)>,
    axum::extract::Path((name, metric)): axum::extract::Path<(String, String)>,
) -> Response {
    let served = shared.custom_metrics.lock().expect("custom metrics");
    let Some(values) = served.as_ref() else {
        return not_found();
    };
    let items: Vec<Value> = values
        .iter()
        .filter(|((n, m), _)| (name == "*" || *n == name) && *m == metric)
        .map(|((n, m), v)| {
            json!({"describedObject": {"kind": "Node", "name": n, "apiVersion": "/v1"},
                "metric": {"name": m, "selector": null},
                "timestamp": "2026-11-24T00:00:00Z", "value": v})
        })
        .collect();
    Json(
        json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2",
        "metadata": {}, "items": items}),
    )
    .into_response()
}

/// A list or watch of a policy CRD, or 404 while the CRDs are not served.
async fn policy(
    s: State<(Arc<Shared>, CancellationToken)>,
    q: Query<BTreeMap<String, String>>,
    kind: Kind,
) -> Response {
    if s.0
         .0
        .policy_crds_removed
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return not_found();
    }
    handle(s, q, kind).await
}

/// A JSON merge patch (RFC 7386) of a policy's `status`, as kube-rs sends `Patch::Merge`;
/// the object's spec is left alone, and the change is seen by watches like any other.
async fn patch_status(
    State((shared, _)): State<(Arc<Shared>, CancellationToken)>,
    axum::extract::Path((namespace, plural, name)): axum::extract::Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    // kube-rs sends `application/merge-patch+json`, which axum's Json extractor refuses.
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let failing = shared.status_patch_failures.fetch_update(
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
        |n| n.checked_sub(1),
    );
    if failing.is_ok() {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "etcdserver: request timed out", "code": 500});
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Json(status)).into_response();
    }
    let kind = match plural.as_str() {
        "localredirectpolicies" => Kind::LocalRedirectPolicy,
        "balancingpolicies" => Kind::BalancingPolicy,
        _ => return not_found(),
    };
    let stored = {
        let store = shared.store.lock().expect("store");
        store.objects.get(&(kind, namespace, name)).cloned()
    };
    let Some(mut object) = stored else {
        return not_found();
    };
    merge(&mut object["status"], &patch["status"]);
    put(&shared, kind, object.clone());
    Json(object).into_response()
}

fn merge(into: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !into.is_object() {
                *into = json!({});
            }
            for (k, v) in fields {
                if v.is_null() {
                    if let Some(o) = into.as_object_mut() {
                        o.remove(k);
                    }
                } else {
                    merge(&mut into[k], v);
                }
            }
        }
        other => *into = other.clone(),
    }
}

/// Creates or replaces an object (its namespace and name from its metadata).
fn put(shared: &Shared, kind: Kind, mut object: Value) {
    let mut store = shared.store.lock().expect("store");
    store.rv += 1;
    let rv = store.rv;
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.name());
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("uid-{rv}"));
    }
    let key = key_of(kind, &object);
    let before = store.objects.insert(key, object.clone());
    let change = Change {
        rv,
        kind,
        before,
        after: Some(object),
    };
    store.log.push(change.clone());
    let _ = shared.changes.send(change);
}

fn not_found() -> Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404}),
        ),
    )
        .into_response()
}

async fn record_event(
    State((shared, _)): State<(Arc<Shared>, CancellationToken)>,
    Json(event): Json<Value>,
) -> Response {
    shared.events.lock().expect("events").push(event.clone());
    (axum::http::StatusCode::CREATED, Json(event)).into_response()
}

fn key_of(kind: Kind, object: &Value) -> (Kind, String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    (kind, text(&meta["namespace"]), text(&meta["name"]))
}

/// What a list or watch asks for.
struct Selection {
    labels: Vec<(String, Option<String>, bool)>,
    name: Option<String>,
}

impl Selection {
    fn parse(q: &BTreeMap<String, String>) -> Selection {
        let labels = q
            .get("labelSelector")
            .map(|s| {
                s.split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| match (t.strip_prefix('!'), t.split_once('=')) {
                        (Some(k), _) => (k.to_string(), None, false),
                        (None, Some((k, v))) => (k.to_string(), Some(v.to_string()), true),
                        (None, None) => (t.to_string(), None, true),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let name = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string);
        Selection { labels, name }
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(name) = &self.name {
            if meta["name"].as_str() != Some(name) {
                return false;
            }
        }
        self.labels.iter().all(|(k, v, present)| {
            let got = meta["labels"][k].as_str();
            match (v, present) {
                (_, false) => got.is_none(),
                (Some(v), true) => got == Some(v.as_str()),
                (None, true) => got.is_some(),
            }
        })
    }
}

async fn handle(
    State((shared, stop)): State<(Arc<Shared>, CancellationToken)>,
    Query(q): Query<BTreeMap<String, String>>,
    kind: Kind,
) -> Response {
    let selection = Selection::parse(&q);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch(shared, stop, q, kind, selection).await;
    }
    let store = shared.store.lock().expect("store");
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((k, _, _), o)| *k == kind && selection.matches(o))
        .map(|(_, o)| o.clone())
        .collect();
    Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
    .into_response()
}

/// The event a watcher with `selection` sees for `change`, if any.
fn event_for(change: &Change, selection: &Selection) -> Option<Value> {
    let before = change.before.as_ref().filter(|o| selection.matches(o));
    let after = change.after.as_ref().filter(|o| selection.matches(o));
    let (kind, mut object) = match (before, after) {
        (None, Some(a)) => ("ADDED", a.clone()),
        (Some(_), Some(a)) => ("MODIFIED", a.clone()),
        (Some(b), None) => ("DELETED", b.clone()),
        (None, None) => return None,
    };
    object["metadata"]["resourceVersion"] = json!(change.rv.to_string());
    Some(json!({"type": kind, "object": object}))
}

/// Counts a watch stream as open from its start until its task ends.
struct OpenWatch {
    shared: Arc<Shared>,
    kind: Kind,
}

impl OpenWatch {
    fn new(shared: Arc<Shared>, kind: Kind) -> OpenWatch {
        *shared
            .open_watches
            .lock()
            .expect("open watches")
            .entry(kind)
            .or_default() += 1;
        OpenWatch { shared, kind }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open_watches.lock() {
            if let Some(n) = open.get_mut(&self.kind) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

async fn watch(
    shared: Arc<Shared>,
    stop: CancellationToken,
    q: BTreeMap<String, String>,
    kind: Kind,
    selection: Selection,
) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let (replay, mut live, gone, last) = {
        let store = shared.store.lock().expect("store");
        let gone = from != 0 && from < store.compacted;
        if gone {
            shared
                .gone
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let replay: Vec<Value> = store
            .log
            .iter()
            .filter(|c| c.kind == kind && c.rv > from)
            .filter_map(|c| event_for(c, &selection))
            .collect();
        (replay, shared.changes.subscribe(), gone, store.rv)
    };
    let open = OpenWatch::new(shared.clone(), kind);
    tokio::spawn(async move {
        let _open = open;
        if gone {
            let status = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure", "message": "too old resource version",
                "reason": "Expired", "code": 410}});
            let _ = tx.send(line(status)).await;
            return;
        }
        for event in replay {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::sleep(timeout);
        tokio::pin!(end);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut seen = last.max(from);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut end => return,
                _ = tick.tick(), if bookmarks => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(),
                        "apiVersion": kind.api_version(), "metadata": {"resourceVersion": seen.to_string()}}});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => {
                    let Ok(change) = change else { return };
                    if change.kind != kind || change.rv <= seen {
                        continue;
                    }
                    seen = change.rv;
                    if let Some(event) = event_for(&change, &selection) {
                        if tx.send(line(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
