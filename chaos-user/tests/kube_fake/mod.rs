//! An in-process stand-in for the Kubernetes API server: the endpoints the ChaosFault controller
//! uses, speaking the real API's JSON (lists with a resourceVersion; watches as newline-delimited
//! ADDED/MODIFIED/DELETED/BOOKMARK events resumed from a resourceVersion, and a 410 Gone ERROR
//! event for one that is too old; merge patches of the status subresource, recorded).
//!
//! Shared by chaos-user/tests/kubernetes.rs (the controller with a recording fake of the agent's
//! sessions) and tests/tests/kubernetes.rs (a real `chaos agent --kubernetes`).

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, patch},
};
use serde_json::{Value, json};

/// The two collections the controller watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Res {
    Faults,
    Pods,
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    res: Res,
    kind: &'static str,
    object: Value,
}

/// A request the server answered, for tests to assert (e.g. a watch resumed from its version).
#[derive(Debug, Clone)]
pub struct Request {
    pub res: Res,
    pub watch: bool,
    pub query: HashMap<String, String>,
}

#[derive(Default)]
struct World {
    rv: u64,
    next_uid: u64,
    faults: BTreeMap<(String, String), Value>,
    pods: BTreeMap<(String, String), Value>,
    nodes: Vec<Value>,
    events: Vec<Event>,
    /// Watches from a version older than this get 410 Gone (the API server's compaction).
    oldest: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    /// While true, watches are refused (503) and none stays open.
    down: bool,
    patches: Vec<(String, String, Value)>,
    /// While true, status patches fail with 500 (and are not recorded).
    refuse_patches: bool,
    requests: Vec<Request>,
}

#[derive(Clone)]
pub struct FakeApi {
    world: Arc<Mutex<World>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    pub addr: SocketAddr,
}

impl FakeApi {
    /// Serves on 127.0.0.1 on a free port, in the current tokio runtime.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the fake API server");
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::watch::channel(0);
        let api = FakeApi { world: Arc::new(Mutex::new(World::default())), changed: Arc::new(tx), addr };
        let router = Router::new()
            .route("/apis/chaos.dev/v1alpha1/chaosfaults", get(list_or_watch_faults))
            .route("/apis/chaos.dev/v1alpha1/namespaces/{ns}/chaosfaults/{name}/status", patch(patch_status))
            .route("/api/v1/pods", get(list_or_watch_pods))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods_in))
            .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
            .route("/api/v1/nodes", get(list_nodes))
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).expect("a client for the fake API server")
    }

    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let out = f(&mut self.world.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// Creates a ChaosFault `created_ago` ago; returns its uid.
    pub fn create_fault(&self, ns: &str, name: &str, spec: Value, created_ago: Duration) -> String {
        let created = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::try_from(created_ago).unwrap();
        self.create_fault_at(ns, name, spec, created)
    }

    /// Creates a ChaosFault at `created` (to the second, as the API server keeps it); returns its
    /// uid.
    pub fn create_fault_at(&self, ns: &str, name: &str, spec: Value, created: k8s_openapi::jiff::Timestamp) -> String {
        let created = created.round(k8s_openapi::jiff::Unit::Second).unwrap();
        self.with(|w| {
            w.next_uid += 1;
            let uid = format!("0000cf00-0000-4000-8000-{:012}", w.next_uid);
            let object = json!({
                "apiVersion": "chaos.dev/v1alpha1",
                "kind": "ChaosFault",
                "metadata": { "name": name, "namespace": ns, "uid": uid, "generation": 1, "creationTimestamp": created.to_string() },
                "spec": spec,
            });
            w.put(Res::Faults, "ADDED", object);
            uid
        })
    }

    /// Replaces a ChaosFault's spec (a new generation).
    pub fn update_fault(&self, ns: &str, name: &str, spec: Value) {
        self.with(|w| {
            let mut object = w.faults[&(ns.to_string(), name.to_string())].clone();
            object["spec"] = spec;
            let generation = object["metadata"]["generation"].as_i64().unwrap() + 1;
            object["metadata"]["generation"] = json!(generation);
            w.put(Res::Faults, "MODIFIED", object);
        })
    }

    pub fn delete_fault(&self, ns: &str, name: &str) {
        self.with(|w| w.delete(Res::Faults, ns, name))
    }

    /// The stored ChaosFault (with the status the agents wrote).
    pub fn fault(&self, ns: &str, name: &str) -> Option<Value> {
        self.world.lock().unwrap().faults.get(&(ns.to_string(), name.to_string())).cloned()
    }

    /// Adds a Running pod scheduled on `node`; returns its uid.
    pub fn add_pod(&self, ns: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> String {
        let uid = self.with(|w| {
            w.next_uid += 1;
            format!("0000b0d0-0000-4000-8000-{:012}", w.next_uid)
        });
        self.add_pod_with_uid(ns, name, node, labels, &uid);
        uid
    }

    pub fn add_pod_with_uid(&self, ns: &str, name: &str, node: &str, labels: &[(&str, &str)], uid: &str) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": ns, "uid": uid, "labels": labels },
            "spec": { "nodeName": node, "containers": [{ "name": "app", "image": "example.invalid/app:1" }] },
            "status": { "phase": "Running" },
        });
        self.with(|w| w.put(Res::Pods, "ADDED", object));
    }

    pub fn delete_pod(&self, ns: &str, name: &str) {
        self.with(|w| w.delete(Res::Pods, ns, name))
    }

    pub fn add_node(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.with(|w| w.nodes.push(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name, "labels": labels } })));
    }

    /// Ends every open watch; the clients watch again from their resourceVersion.
    pub fn drop_watches(&self) {
        self.with(|w| w.epoch += 1)
    }

    /// While down, open watches end and new ones are refused with 503.
    pub fn set_watches_down(&self, down: bool) {
        self.with(|w| {
            w.down = down;
            w.epoch += 1;
        })
    }

    /// While refused, status patches fail with 500.
    pub fn set_patches_refused(&self, refused: bool) {
        self.with(|w| w.refuse_patches = refused)
    }

    /// Forgets every event so far: a watch from an older version gets 410 Gone and must relist.
    pub fn compact(&self) {
        self.with(|w| w.oldest = w.rv)
    }

    pub fn resource_version(&self) -> u64 {
        self.world.lock().unwrap().rv
    }

    /// The status merge patches received: (namespace, name, body).
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.world.lock().unwrap().patches.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.world.lock().unwrap().requests.clone()
    }

    fn record(&self, res: Res, query: &HashMap<String, String>) -> bool {
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        self.world.lock().unwrap().requests.push(Request { res, watch, query: query.clone() });
        watch
    }
}

impl World {
    fn store(&mut self, res: Res) -> &mut BTreeMap<(String, String), Value> {
        match res {
            Res::Faults => &mut self.faults,
            Res::Pods => &mut self.pods,
        }
    }

    fn put(&mut self, res: Res, kind: &'static str, mut object: Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = (object["metadata"]["namespace"].as_str().unwrap().to_string(), object["metadata"]["name"].as_str().unwrap().to_string());
        self.store(res).insert(key, object.clone());
        let rv = self.rv;
        self.events.push(Event { rv, res, kind, object });
    }

    fn delete(&mut self, res: Res, ns: &str, name: &str) {
        let Some(mut object) = self.store(res).remove(&(ns.to_string(), name.to_string())) else {
            return;
        };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let rv = self.rv;
        self.events.push(Event { rv, res, kind: "DELETED", object });
    }
}

/// The selectors the controller sends: `k=v,k2=v2` labels, `spec.nodeName=N` fields.
fn selects(object: &Value, query: &HashMap<String, String>) -> bool {
    let pairs = |s: &str| -> Vec<(String, String)> {
        s.split(',').filter(|p| !p.is_empty()).map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).expect("only k=v selectors")).collect()
    };
    if let Some(labels) = query.get("labelSelector")
        && !pairs(labels).iter().all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
    {
        return false;
    }
    if let Some(fields) = query.get("fieldSelector") {
        for (k, v) in pairs(fields) {
            assert_eq!(k, "spec.nodeName", "the fake API server only knows the field spec.nodeName");
            if object["spec"]["nodeName"].as_str() != Some(v.as_str()) {
                return false;
            }
        }
    }
    true
}

fn list_body(kind: &str, rv: u64, items: Vec<Value>) -> Response {
    let api_version = if kind == "ChaosFaultList" { "chaos.dev/v1alpha1" } else { "v1" };
    axum::Json(json!({ "apiVersion": api_version, "kind": kind, "metadata": { "resourceVersion": rv.to_string() }, "items": items })).into_response()
}

async fn list_or_watch_faults(State(api): State<FakeApi>, Query(query): Query<HashMap<String, String>>) -> Response {
    list_or_watch(api, Res::Faults, None, query)
}

async fn list_or_watch_pods(State(api): State<FakeApi>, Query(query): Query<HashMap<String, String>>) -> Response {
    list_or_watch(api, Res::Pods, None, query)
}

async fn list_pods_in(State(api): State<FakeApi>, Path(ns): Path<String>, Query(query): Query<HashMap<String, String>>) -> Response {
    list_or_watch(api, Res::Pods, Some(ns), query)
}

/// One pod by namespace and name, or the API's 404 Status.
async fn get_pod(State(api): State<FakeApi>, Path((ns, name)): Path<(String, String)>) -> Response {
    let pod = api.world.lock().unwrap().pods.get(&(ns, name.clone())).cloned();
    match pod {
        Some(object) => axum::Json(object).into_response(),
        None => {
            let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("pods \"{name}\" not found"), "reason": "NotFound", "code": 404 });
            (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
        }
    }
}

async fn list_nodes(State(api): State<FakeApi>, Query(query): Query<HashMap<String, String>>) -> Response {
    let w = api.world.lock().unwrap();
    let items = w.nodes.iter().filter(|n| selects(n, &query)).cloned().collect();
    list_body("NodeList", w.rv, items)
}

fn list_or_watch(api: FakeApi, res: Res, ns: Option<String>, query: HashMap<String, String>) -> Response {
    let watch = api.record(res, &query);
    let in_ns = move |o: &Value| ns.as_deref().is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns));
    if !watch {
        let mut w = api.world.lock().unwrap();
        let rv = w.rv;
        let items = w.store(res).values().filter(|o| in_ns(o) && selects(o, &query)).cloned().collect();
        return list_body(if res == Res::Faults { "ChaosFaultList" } else { "PodList" }, rv, items);
    }
    let (since, epoch, down) = {
        let w = api.world.lock().unwrap();
        (query.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()).unwrap_or(w.rv), w.epoch, w.down)
    };
    if down {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the fake API server is down", "reason": "ServiceUnavailable", "code": 503 });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(status)).into_response();
    }
    let state = WatchState { api, res, query, since, epoch, bookmarked: false, ended: false, in_ns: Box::new(in_ns) };
    let stream = futures::stream::unfold(state, next_chunk);
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}

struct WatchState {
    api: FakeApi,
    res: Res,
    query: HashMap<String, String>,
    since: u64,
    epoch: u64,
    bookmarked: bool,
    ended: bool,
    in_ns: Box<dyn Fn(&Value) -> bool + Send + Sync>,
}

/// The watch's next lines: the events after `since` that it selects, a BOOKMARK once its backlog
/// is sent, a 410 ERROR event for a version older than the oldest kept; None ends the watch.
async fn next_chunk(mut st: WatchState) -> Option<(Result<Bytes, std::convert::Infallible>, WatchState)> {
    if st.ended {
        return None;
    }
    let mut changed = st.api.changed.subscribe();
    // Bounded: a watch lives at most 60 s, as the API server's own ends them now and then.
    for _ in 0..300 {
        let chunk = {
            let w = st.api.world.lock().unwrap();
            if w.epoch != st.epoch || w.down {
                return None;
            }
            if st.since < w.oldest {
                st.ended = true;
                let gone = json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {} ({})", st.since, w.oldest), "reason": "Expired", "code": 410 } });
                Some(format!("{gone}\n"))
            } else {
                let mut lines = String::new();
                for e in w.events.iter().filter(|e| e.rv > st.since && e.res == st.res && (st.in_ns)(&e.object) && selects(&e.object, &st.query)) {
                    lines += &format!("{}\n", json!({ "type": e.kind, "object": e.object }));
                }
                if lines.is_empty() && !st.bookmarked && st.query.get("allowWatchBookmarks").is_some_and(|v| v == "true") {
                    let (api_version, kind) = if st.res == Res::Faults { ("chaos.dev/v1alpha1", "ChaosFault") } else { ("v1", "Pod") };
                    lines = format!(
                        "{}\n",
                        json!({ "type": "BOOKMARK", "object": { "apiVersion": api_version, "kind": kind, "metadata": { "resourceVersion": w.rv.to_string() } } })
                    );
                    st.bookmarked = true;
                }
                st.since = w.rv;
                (!lines.is_empty()).then_some(lines)
            }
        };
        if let Some(chunk) = chunk {
            return Some((Ok(Bytes::from(chunk)), st));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
    }
    None
}

async fn patch_status(State(api): State<FakeApi>, Path((ns, name)): Path<(String, String)>, body: Bytes) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    if api.world.lock().unwrap().refuse_patches {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the fake API server refuses patches", "reason": "InternalError", "code": 500 });
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status)).into_response();
    }
    let updated = api.with(|w| {
        let key = (ns.clone(), name.clone());
        let mut object = w.faults.get(&key)?.clone();
        w.patches.push((ns.clone(), name.clone(), patch.clone()));
        // The status subresource: only status changes, whatever else the patch holds.
        let mut status = object.get("status").cloned().unwrap_or(Value::Null);
        merge(&mut status, &patch["status"]);
        object["status"] = status;
        w.put(Res::Faults, "MODIFIED", object.clone());
        w.faults.get(&key).cloned()
    });
    match updated {
        Some(object) => axum::Json(object).into_response(),
        None => {
            let status = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("chaosfaults \"{name}\" not found"), "reason": "NotFound", "code": 404 });
            (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
        }
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, null removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
