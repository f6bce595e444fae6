//! The ChaosFault controller against an in-process fake API server (tests/kube_fake), with a
//! recording fake of the agent's sessions: no cluster and no kernel needed. Also: the CRD in
//! deploy/kubernetes/crd.yaml is the Rust type's, and every manifest in deploy/ parses into its
//! typed struct, the DaemonSet unprivileged with a reason beside each capability and host path.

mod kube_fake;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chaos_user::{
    agent::{ApiError, SessionInfo, StartRequest},
    kubernetes::{Config, Injector, controller},
};
use kube_fake::FakeApi;
use serde_json::{Value, json};

/// A recording stand-in for the agent's sessions: every start and stop is kept; a running
/// session's counters grow at each read.
#[derive(Default)]
struct FakeSessions {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    started: Vec<StartRequest>,
    sessions: Vec<SessionInfo>,
    stopped: Vec<String>,
    /// Starts are refused with this message (the engine refusing a pod, say).
    refuse: Option<String>,
    /// How long a stop takes (a session's process that is slow to end).
    stop_takes: Duration,
    /// Stops under way now, and the most ever under way at once.
    stopping: usize,
    most_stopping: usize,
    /// How long a start takes (the verifier, a slow machine), and as for stops.
    start_takes: Duration,
    starting: usize,
    most_starting: usize,
}

impl FakeSessions {
    fn started(&self) -> Vec<StartRequest> {
        self.state.lock().unwrap().started.clone()
    }
    fn stopped(&self) -> Vec<String> {
        self.state.lock().unwrap().stopped.clone()
    }
    fn running(&self) -> Vec<SessionInfo> {
        self.state.lock().unwrap().sessions.iter().filter(|s| s.state == "injecting").cloned().collect()
    }
    fn most_stopping(&self) -> usize {
        self.state.lock().unwrap().most_stopping
    }
    fn most_starting(&self) -> usize {
        self.state.lock().unwrap().most_starting
    }
}

impl Injector for FakeSessions {
    async fn start(&self, req: StartRequest) -> Result<SessionInfo, ApiError> {
        let takes = {
            let mut st = self.state.lock().unwrap();
            st.starting += 1;
            st.most_starting = st.most_starting.max(st.starting);
            st.start_takes
        };
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        let mut st = self.state.lock().unwrap();
        st.starting -= 1;
        st.started.push(req.clone());
        if let Some(message) = &st.refuse {
            return Err(ApiError { status: 422, message: message.clone() });
        }
        let info = SessionInfo {
            id: format!("s{}", st.started.len()),
            name: req.name,
            owner: req.owner,
            pid: 1,
            state: "injecting".into(),
            exit_code: None,
            error: None,
            faults: json!([{ "kind": "net.drop", "cgroup": "/kubepods.slice/x", "seen": 0, "matched": 0, "injected": 0 }]),
            summary: None,
        };
        st.sessions.push(info.clone());
        Ok(info)
    }

    async fn stop(&self, id: &str) -> Result<SessionInfo, ApiError> {
        let takes = {
            let mut st = self.state.lock().unwrap();
            st.stopping += 1;
            st.most_stopping = st.most_stopping.max(st.stopping);
            st.stop_takes
        };
        if !takes.is_zero() {
            tokio::time::sleep(takes).await;
        }
        // Recorded with the session's end, at once, as the agent answers a stop once it ended.
        let mut st = self.state.lock().unwrap();
        st.stopping -= 1;
        st.stopped.push(id.to_string());
        let s = st.sessions.iter_mut().find(|s| s.id == id).ok_or_else(|| ApiError { status: 404, message: format!("no session {id}") })?;
        s.state = "ended".into();
        s.exit_code = Some(0);
        Ok(s.clone())
    }

    async fn get(&self, id: &str) -> Option<SessionInfo> {
        let mut st = self.state.lock().unwrap();
        let s = st.sessions.iter_mut().find(|s| s.id == id)?;
        if s.state == "injecting" {
            for f in s.faults.as_array_mut().unwrap() {
                for k in ["seen", "matched", "injected"] {
                    f[k] = json!(f[k].as_u64().unwrap() + 5);
                }
            }
        }
        Some(s.clone())
    }

    async fn list(&self) -> Vec<SessionInfo> {
        self.state.lock().unwrap().sessions.clone()
    }
}

/// A controller of `node` against `api`, aborted when dropped (a test that fails leaves nothing).
struct Running(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn run(api: &FakeApi, node: &str, sessions: &Arc<FakeSessions>) -> Running {
    let config = Config { node: node.into(), resync: Duration::from_secs(1), status_every: Duration::from_millis(500) };
    Running(tokio::spawn(controller::run(api.client(), config, sessions.clone())))
}

/// Waits (at most 15 s) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec(app: &str, mode: &str, value: Option<u32>, duration: &str) -> Value {
    let mut s = json!({
        "selector": { "matchLabels": { "app": app } },
        "mode": mode,
        "duration": duration,
        "faults": [{ "kind": "net.drop", "percent": 100, "proto": "udp" }],
    });
    if let Some(v) = value {
        s["value"] = json!(v);
    }
    s
}

/// The pod uids of a fault file, in order.
fn pods_of(req: &StartRequest) -> Vec<String> {
    let doc: toml::Table = req.faults.parse().expect("the fault file is TOML");
    doc["fault"].as_array().unwrap().iter().map(|f| f["pod"].as_str().unwrap().to_string()).collect()
}

/// The `for` of a fault file's first table, in milliseconds.
fn for_ms(req: &StartRequest) -> u64 {
    let doc: toml::Table = req.faults.parse().unwrap();
    let f = doc["fault"][0]["for"].as_str().unwrap();
    f.strip_suffix("ms").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_another_node_are_never_targeted_and_a_new_local_pod_restarts_the_session() {
    let api = FakeApi::start().await;
    let web1 = api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    let web2 = api.add_pod("shop", "web-2", "n2", &[("app", "web")]);
    let db1 = api.add_pod("shop", "db-1", "n1", &[("app", "db")]);
    let other_ns = api.add_pod("other", "web-9", "n1", &[("app", "web")]);
    api.create_fault("shop", "drop-web", spec("web", "all", None, "5m"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);

    wait_for("the first session", || !sessions.started().is_empty()).await;
    let first = &sessions.started()[0];
    assert_eq!(pods_of(first), vec![web1.clone()], "{}", first.faults);
    for not in [&web2, &db1, &other_ns] {
        assert!(!first.faults.contains(not.as_str()));
    }
    assert_eq!(first.owner.as_deref(), Some("kubernetes:shop/drop-web"));
    // The pod watch asks the server for this node's pods only.
    wait_for("the pod watch with a field selector", || {
        api.requests().iter().any(|r| r.watch && r.query.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=n1"))
    })
    .await;

    // A matching pod on the other node changes nothing here; one on this node restarts the session.
    api.add_pod("shop", "web-3", "n2", &[("app", "web")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sessions.started().len(), 1);
    let web4 = api.add_pod("shop", "web-4", "n1", &[("app", "web")]);
    wait_for("the second session", || sessions.started().len() == 2).await;
    let mut pods = pods_of(&sessions.started()[1]);
    pods.sort();
    let mut want = vec![web1.clone(), web4];
    want.sort();
    assert_eq!(pods, want);
    assert_eq!(sessions.stopped(), vec!["s1".to_string()], "the old session ends before the new one");
    assert_eq!(sessions.running().len(), 1);

    // A new spec restarts the session with the new tables.
    let mut changed = spec("web", "all", None, "5m");
    changed["faults"][0]["percent"] = json!(40);
    api.update_fault("shop", "drop-web", changed);
    wait_for("the session of the new spec", || sessions.started().len() == 3).await;
    assert!(sessions.started()[2].faults.contains("percent = 40"), "{}", sessions.started()[2].faults);
    assert_eq!(sessions.stopped(), ["s1", "s2"]);

    // The local pods go one by one: a session with the one left, then none and no status entry.
    api.delete_pod("shop", "web-4");
    wait_for("the session without web-4", || sessions.started().len() == 4).await;
    assert_eq!(pods_of(&sessions.started()[3]), vec![web1.clone()]);
    api.delete_pod("shop", "web-1");
    wait_for("the last session to end", || sessions.stopped().len() == 4).await;
    wait_for("n1's entry to go", || api.fault("shop", "drop-web").unwrap()["status"]["nodes"].get("n1").is_none()).await;
    assert_eq!(sessions.started().len(), 4, "nothing to start without a local pod");
    assert!(sessions.running().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_makes_the_same_choice_and_acts_only_on_its_own_pods() {
    let api = FakeApi::start().await;
    let mut pods = Vec::new();
    for i in 0..9 {
        let node = if i % 3 == 0 { "n1" } else { "n2" };
        let uid = api.add_pod("shop", &format!("web-{i}"), node, &[("app", "web")]);
        pods.push((format!("web-{i}"), uid, node));
    }
    let fixed = api.create_fault("shop", "fixed-4", spec("web", "fixed", Some(4), "5m"), Duration::ZERO);
    let one = api.create_fault("shop", "one", spec("web", "one", None, "5m"), Duration::ZERO);
    let half = api.create_fault("shop", "half", spec("web", "percent", Some(50), "5m"), Duration::ZERO);
    let (s1, s2) = (Arc::new(FakeSessions::default()), Arc::new(FakeSessions::default()));
    let _c1 = run(&api, "n1", &s1);
    let _c2 = run(&api, "n2", &s2);

    for (name, uid, count) in [("fixed-4", &fixed, 4), ("one", &one, 1), ("half", &half, 5)] {
        let targeted = |s: &FakeSessions| -> Vec<String> {
            s.started().iter().filter(|r| r.owner.as_deref() == Some(&format!("kubernetes:shop/{name}"))).flat_map(pods_of).collect()
        };
        wait_for(name, || targeted(&s1).len() + targeted(&s2).len() == count).await;
        let (t1, t2) = (targeted(&s1), targeted(&s2));
        // Each node targets only pods scheduled on it, and no pod twice.
        for (t, node) in [(&t1, "n1"), (&t2, "n2")] {
            for uid in t {
                assert_eq!(pods.iter().find(|p| &p.1 == uid).unwrap().2, node, "{name}: {uid} targeted on {node}");
            }
        }
        let mut union: Vec<String> = t1.iter().chain(&t2).cloned().collect();
        union.sort();
        union.dedup();
        assert_eq!(union.len(), count, "{name}: {t1:?} {t2:?}");
        // The same set as the choice over every pod of the cluster, seeded by the resource's uid.
        let candidates: Vec<_> =
            pods.iter().map(|(n, u, node)| chaos_user::kubernetes::plan::Candidate { name: n.clone(), uid: u.clone(), node: node.to_string() }).collect();
        let mode = match name {
            "fixed-4" => chaos_user::kubernetes::Mode::Fixed,
            "one" => chaos_user::kubernetes::Mode::One,
            _ => chaos_user::kubernetes::Mode::Percent,
        };
        let value = match name {
            "fixed-4" => Some(4),
            "half" => Some(50),
            _ => None,
        };
        let mut want: Vec<String> = chaos_user::kubernetes::plan::choose(mode, value, uid, &candidates).unwrap().into_iter().map(|c| c.uid).collect();
        want.sort();
        assert_eq!(union, want, "{name}");
    }
    // Both nodes' status entries sit side by side: neither overwrote the other.
    wait_for("both nodes in the status of fixed-4", || {
        let nodes = api.fault("shop", "fixed-4").unwrap()["status"]["nodes"].clone();
        let n = |node: &str| nodes[node]["pods"].as_array().map_or(0, Vec::len);
        n("n1") + n("n2") == 4 && (n("n1") == 0 || nodes["n1"]["phase"] == "Injecting") && (n("n2") == 0 || nodes["n2"]["phase"] == "Injecting")
    })
    .await;
}

/// A session of an earlier controller (owned by a resource), injecting.
fn predecessor(id: &str, resource: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        name: format!("chaosfault shop/{resource}"),
        owner: Some(format!("kubernetes:shop/{resource}")),
        pid: 1,
        state: "injecting".into(),
        exit_code: None,
        error: None,
        faults: json!([]),
        summary: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_start_or_end_together_are_started_or_stopped_together() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    let sessions = Arc::new(FakeSessions::default());
    let slow = Duration::from_secs(1);
    {
        let mut st = sessions.state.lock().unwrap();
        st.stop_takes = slow;
        st.start_takes = slow;
        // An earlier controller's sessions (and one of the API's, left alone): ended at the start.
        st.sessions = vec![predecessor("old-1", "a"), predecessor("old-2", "b"), predecessor("old-3", "c")];
        st.sessions.push(SessionInfo { owner: Some("api".into()), ..predecessor("mine", "d") });
    }
    // Three resources created in the same second, with the same duration: over at the same pass.
    let created = k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap();
    for name in ["one", "two", "three"] {
        api.create_fault_at("shop", name, spec("web", "all", None, "4s"), created);
    }
    let started = Instant::now();
    let _c = run(&api, "n1", &sessions);
    wait_for("the earlier controller's sessions to end", || ["old-1", "old-2", "old-3"].iter().all(|id| sessions.stopped().contains(&id.to_string()))).await;
    let ended_predecessors = started.elapsed();
    wait_for("a session per resource", || sessions.running().len() == 4).await;
    assert_eq!(sessions.most_stopping(), 3, "the three earlier sessions were stopped together");
    assert_eq!(sessions.most_starting(), 3, "the three resources' sessions were started together");
    assert!(ended_predecessors < 3 * slow, "three stops of {slow:?} together took {ended_predecessors:?}");
    assert!(!sessions.stopped().contains(&"mine".to_string()), "a session of the API is not the controller's");

    sessions.state.lock().unwrap().most_stopping = 0;
    wait_for("all three Finished", || {
        ["one", "two", "three"].iter().all(|name| api.fault("shop", name).unwrap()["status"]["nodes"]["n1"]["phase"] == "Finished")
    })
    .await;
    assert_eq!(sessions.most_stopping(), 3, "the three sessions over at the same pass were stopped together");
    for name in ["one", "two", "three"] {
        let status = &api.fault("shop", name).unwrap()["status"]["nodes"]["n1"];
        assert_eq!((status["session"].as_str(), status["faults"].as_array().map(Vec::len)), (None, Some(1)), "{name}: {status}");
    }
    assert_eq!(sessions.running().len(), 1, "only the API's session runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_resource_or_reaching_its_duration_ends_the_session() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    api.create_fault("shop", "long", spec("web", "all", None, "5m"), Duration::ZERO);
    api.create_fault("shop", "short", spec("web", "all", None, "3s"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);
    wait_for("two sessions", || sessions.started().len() == 2).await;
    let id_of = |name: &str| -> String {
        let n = sessions.started().iter().position(|r| r.owner.as_deref() == Some(&format!("kubernetes:shop/{name}"))).unwrap();
        format!("s{}", n + 1)
    };
    let (long, short) = (id_of("long"), id_of("short"));

    // The short one ends at its duration, and says so.
    wait_for("the short session's end", || sessions.stopped().contains(&short)).await;
    wait_for("short Finished", || api.fault("shop", "short").unwrap()["status"]["nodes"]["n1"]["phase"] == "Finished").await;
    assert!(!sessions.stopped().contains(&long));

    api.delete_fault("shop", "long");
    wait_for("the deleted resource's session to end", || sessions.stopped().contains(&long)).await;
    assert!(sessions.running().is_empty());
    assert_eq!(sessions.started().len(), 2, "nothing restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_from_its_version_and_a_too_old_one_relists() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    api.create_fault("shop", "before", spec("web", "all", None, "5m"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);
    wait_for("the first session", || sessions.started().len() == 1).await;
    let fault_lists = |api: &FakeApi| api.requests().iter().filter(|r| r.res == kube_fake::Res::Faults && !r.watch).count();
    let lists_before = fault_lists(&api);

    // The watches drop and stay refused; meanwhile one resource goes and one comes.
    let version_before = api.resource_version();
    api.set_watches_down(true);
    api.delete_fault("shop", "before");
    api.create_fault("shop", "during", spec("web", "all", None, "5m"), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sessions.started().len(), 1, "nothing is seen while the watches are down");
    api.set_watches_down(false);
    wait_for("the resource made while the watch was down", || sessions.started().len() == 2).await;
    wait_for("the resource deleted while the watch was down to end", || sessions.stopped() == vec!["s1".to_string()]).await;
    assert_eq!(fault_lists(&api), lists_before, "resumed by watching from its version, not by a new list");
    let resumed_from = api
        .requests()
        .iter()
        .filter(|r| r.res == kube_fake::Res::Faults && r.watch)
        .filter_map(|r| r.query.get("resourceVersion")?.parse::<u64>().ok())
        .max()
        .unwrap();
    assert!(resumed_from >= version_before, "resumed from {resumed_from}, before the outage {version_before}");

    // Now the server forgets the history while the watch is down: 410 Gone, so the client lists
    // again, and what changed is acted on all the same.
    api.set_watches_down(true);
    api.delete_fault("shop", "during");
    api.create_fault("shop", "after-compaction", spec("web", "all", None, "5m"), Duration::ZERO);
    api.compact();
    api.set_watches_down(false);
    wait_for("the resource made before the compaction", || sessions.started().len() == 3).await;
    wait_for("the second deleted resource's session to end", || sessions.stopped().len() == 2).await;
    assert!(fault_lists(&api) > lists_before, "a 410 makes the watcher list again");
    assert_eq!(sessions.running().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_resource_is_not_started_and_a_restart_resumes_with_what_is_left() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    api.create_fault("shop", "expired", spec("web", "all", None, "60s"), Duration::from_secs(120));
    api.create_fault("shop", "live", spec("web", "all", None, "60s"), Duration::from_secs(30));
    let sessions = Arc::new(FakeSessions::default());
    let first = run(&api, "n1", &sessions);
    wait_for("the live resource's session", || sessions.started().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = sessions.started();
    assert_eq!(started.len(), 1, "only the live resource starts");
    assert_eq!(started[0].owner.as_deref(), Some("kubernetes:shop/live"));
    // About 30 s of its 60 s are left (created 30 s ago, rounded to the second).
    let left = for_ms(&started[0]);
    assert!((28_000..=31_000).contains(&left), "for = {left}ms");
    assert!(api.fault("shop", "expired").unwrap()["status"].is_null(), "nothing to say about a resource this node never ran");

    // The controller restarts (its session left behind, as a crashed one would leave it).
    drop(first);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let _second = run(&api, "n1", &sessions);
    wait_for("the resumed session", || sessions.started().len() == 2).await;
    let resumed = &sessions.started()[1];
    assert_eq!(resumed.owner.as_deref(), Some("kubernetes:shop/live"));
    let left_now = for_ms(resumed);
    assert!(left_now + 1500 <= left && left_now > 20_000, "resumed with {left_now}ms after {left}ms");
    assert_eq!(sessions.stopped(), vec!["s1".to_string()], "the predecessor's session is ended");
    assert_eq!(sessions.running().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_patch_carries_node_pods_phase_and_counters() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    api.create_fault("shop", "drop", spec("web", "all", None, "5m"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);
    wait_for("counters in status", || api.patches().iter().any(|(_, _, p)| p["status"]["nodes"]["n1"]["faults"][0]["injected"].as_u64() > Some(0))).await;
    for (ns, name, patch) in api.patches() {
        assert_eq!((ns.as_str(), name.as_str()), ("shop", "drop"));
        // A merge patch of this node's entry only.
        assert_eq!(patch.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["status"]);
        assert_eq!(patch["status"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["nodes"]);
        assert_eq!(patch["status"]["nodes"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["n1"]);
    }
    let first = &api.patches()[0].2["status"]["nodes"]["n1"];
    assert_eq!(first["phase"], "Injecting");
    assert_eq!(first["pods"], json!(["web-1"]));
    assert_eq!(first["session"], "s1");
    assert!(first["message"].is_null());
    let stored = api.fault("shop", "drop").unwrap();
    assert_eq!(stored["status"]["nodes"]["n1"]["faults"][0]["kind"], "net.drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_fails_in_status_with_one_line_and_is_not_retried() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    let mut bad = spec("web", "all", None, "5m");
    bad["faults"][0]["percent"] = json!(300);
    api.create_fault("shop", "bad-percent", bad, Duration::ZERO);
    let mut targeted = spec("web", "all", None, "5m");
    targeted["faults"][0]["cgroup"] = json!("/system.slice");
    api.create_fault("shop", "with-target", targeted, Duration::ZERO);
    api.create_fault("shop", "bad-duration", spec("web", "all", None, "soon"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);

    let message = |name: &str| api.fault("shop", name).unwrap()["status"]["nodes"]["n1"]["message"].as_str().map(String::from);
    wait_for("three Failed", || ["bad-percent", "with-target", "bad-duration"].iter().all(|n| message(n).is_some())).await;
    for name in ["bad-percent", "with-target", "bad-duration"] {
        assert_eq!(api.fault("shop", name).unwrap()["status"]["nodes"]["n1"]["phase"], "Failed");
        let m = message(name).unwrap();
        assert!(!m.contains('\n'), "{m}");
        eprintln!("{name}: {m}");
    }
    assert!(message("bad-percent").unwrap().starts_with("spec.faults[0] (net.drop): "));
    assert!(message("with-target").unwrap().contains("`cgroup`"));
    assert!(message("bad-duration").unwrap().starts_with("spec.duration: "));
    assert!(sessions.started().is_empty(), "nothing the engine refuses is started");

    // The engine refusing at start (a pod whose cgroup is not here, say) fails it too, once.
    sessions.state.lock().unwrap().refuse = Some("pod 1234 has no cgroup on this node".into());
    api.create_fault("shop", "refused", spec("web", "all", None, "5m"), Duration::ZERO);
    wait_for("refused Failed", || message("refused").is_some()).await;
    assert_eq!(message("refused").unwrap(), "pod 1234 has no cgroup on this node");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(sessions.started().len(), 1, "a refused start is not retried for the same resource and pods");
    let failed_patches = api.patches().iter().filter(|(_, n, _)| n == "bad-percent").count();
    assert_eq!(failed_patches, 1, "the status is written once, not at every tick");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_selector_keeps_other_nodes_pods_out_of_the_choice() {
    let api = FakeApi::start().await;
    api.add_node("n1", &[("disktype", "ssd")]);
    api.add_node("n2", &[("disktype", "hdd")]);
    let mut on_n1 = Vec::new();
    for i in 0..4 {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let uid = api.add_pod("shop", &format!("web-{i}"), node, &[("app", "web")]);
        if node == "n1" {
            on_n1.push(uid);
        }
    }
    on_n1.sort();
    let mut all = spec("web", "all", None, "5m");
    all["nodeSelector"] = json!({ "disktype": "ssd" });
    // Two pods of four, with only n1's two eligible: both of them, whatever the hash.
    let mut fixed = spec("web", "fixed", Some(2), "5m");
    fixed["nodeSelector"] = json!({ "disktype": "ssd" });
    api.create_fault("shop", "ssd-all", all, Duration::ZERO);
    api.create_fault("shop", "ssd-fixed", fixed, Duration::ZERO);
    let (s1, s2) = (Arc::new(FakeSessions::default()), Arc::new(FakeSessions::default()));
    let _c1 = run(&api, "n1", &s1);
    let _c2 = run(&api, "n2", &s2);
    wait_for("n1's two sessions", || s1.started().len() == 2).await;
    for req in s1.started() {
        let mut pods = pods_of(&req);
        pods.sort();
        assert_eq!(pods, on_n1, "{:?}", req.owner);
    }
    // n2 lists the same resources (its pod watch and the cluster-wide list ran) and starts nothing.
    wait_for("n2's cluster-wide list", || {
        api.requests().iter().filter(|r| !r.watch && r.res == kube_fake::Res::Pods && !r.query.contains_key("fieldSelector")).count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(s2.started().is_empty(), "{:?}", s2.started());
    assert!(api.fault("shop", "ssd-all").unwrap()["status"]["nodes"].get("n2").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_api_refused_is_written_once_it_accepts() {
    let api = FakeApi::start().await;
    api.add_pod("shop", "web-1", "n1", &[("app", "web")]);
    api.set_patches_refused(true);
    api.create_fault("shop", "drop", spec("web", "all", None, "5m"), Duration::ZERO);
    let sessions = Arc::new(FakeSessions::default());
    let _c = run(&api, "n1", &sessions);
    wait_for("the session", || sessions.started().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(api.fault("shop", "drop").unwrap()["status"].is_null());
    api.set_patches_refused(false);
    wait_for("the status", || api.fault("shop", "drop").unwrap()["status"]["nodes"]["n1"]["phase"] == "Injecting").await;
    assert_eq!(sessions.started().len(), 1, "the session stays; only the status is retried");
}

// ---- Manifests ----

mod manifests {
    use std::path::PathBuf;

    use chaos_user::kubernetes::{ChaosFault, plan};
    use k8s_openapi::{
        api::{
            apps::v1::DaemonSet,
            batch::v1::CronJob,
            core::v1::{ConfigMap, Namespace, ServiceAccount},
            rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
        },
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    use kube::CustomResourceExt;
    use serde::{Deserialize, de::DeserializeOwned};

    fn deploy(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
    }

    /// Every manifest of a file, each parsed into its typed struct (by kind).
    #[derive(Default)]
    struct Parsed {
        crds: Vec<CustomResourceDefinition>,
        namespaces: Vec<Namespace>,
        service_accounts: Vec<ServiceAccount>,
        cluster_roles: Vec<ClusterRole>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
        roles: Vec<Role>,
        role_bindings: Vec<RoleBinding>,
        daemon_sets: Vec<DaemonSet>,
        cron_jobs: Vec<CronJob>,
        config_maps: Vec<ConfigMap>,
        chaos_faults: Vec<ChaosFault>,
    }

    /// Parses into `T`, and checks that `T` keeps every field written: a misspelt or misplaced
    /// key (which the typed structs would silently drop) fails here.
    fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &serde_yaml_ng::Value) -> T {
        let value: T = serde_yaml_ng::from_value(doc.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let written = serde_json::to_value(doc).unwrap();
        let kept = serde_json::to_value(&value).unwrap();
        assert_eq!(kept, written, "{file}: a field is unknown to the typed struct");
        value
    }

    fn parse_yaml(file: &str, text: &str, out: &mut Parsed) {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let doc = serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            match doc["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")) {
                "CustomResourceDefinition" => out.crds.push(typed(file, &doc)),
                "Namespace" => out.namespaces.push(typed(file, &doc)),
                "ServiceAccount" => out.service_accounts.push(typed(file, &doc)),
                "ClusterRole" => out.cluster_roles.push(typed(file, &doc)),
                "ClusterRoleBinding" => out.cluster_role_bindings.push(typed(file, &doc)),
                "Role" => out.roles.push(typed(file, &doc)),
                "RoleBinding" => out.role_bindings.push(typed(file, &doc)),
                "DaemonSet" => out.daemon_sets.push(typed(file, &doc)),
                "CronJob" => out.cron_jobs.push(typed(file, &doc)),
                "ConfigMap" => out.config_maps.push(typed(file, &doc)),
                "ChaosFault" => out.chaos_faults.push(typed(file, &doc)),
                other => panic!("{file}: no typed struct for kind {other}"),
            }
        }
    }

    fn parse(file: &str) -> Parsed {
        let mut out = Parsed::default();
        parse_yaml(file, &std::fs::read_to_string(deploy(file)).unwrap(), &mut out);
        out
    }

    /// The CRD as deploy/kubernetes/crd.yaml holds it.
    fn crd_yaml() -> String {
        let mut out = String::from("# Generated from chaos-user/src/kubernetes/resource.rs (ChaosFault::crd()); do not edit.\n");
        out += "# CHAOS_CRD_BLESS=1 cargo test -p chaos-user --test kubernetes crd rewrites it.\n";
        out += &serde_yaml_ng::to_string(&ChaosFault::crd()).unwrap();
        out
    }

    #[test]
    fn the_committed_crd_is_the_rust_types() {
        let path = deploy("kubernetes/crd.yaml");
        let want = crd_yaml();
        if std::env::var_os("CHAOS_CRD_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "{} differs from ChaosFault::crd(): rerun with CHAOS_CRD_BLESS=1 to rewrite it", path.display());
        let crds = parse("kubernetes/crd.yaml").crds;
        assert_eq!(crds.len(), 1);
        let crd = &crds[0];
        assert_eq!(crd.spec.group, "chaos.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status is a subresource");
        let schema = serde_json::to_value(&version.schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let mut required: Vec<&str> = spec["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        required.sort();
        assert_eq!(required, ["duration", "faults", "selector"]);
        assert_eq!(spec["properties"]["mode"]["enum"], serde_json::json!(["all", "one", "fixed", "percent"]));
        assert_eq!(spec["properties"]["faults"]["items"]["x-kubernetes-preserve-unknown-fields"], true);
    }

    /// The comment on the line of `needle` (trimmed), if any.
    fn comment_beside<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
        let line = text.lines().find(|l| l.trim_start().starts_with(needle))?;
        line.split_once(" # ").map(|(_, c)| c.trim())
    }

    #[test]
    fn the_daemonset_runs_nothing_privileged_and_says_why_for_each_capability_and_host_path() {
        let text = std::fs::read_to_string(deploy("kubernetes/daemonset.yaml")).unwrap();
        let parsed = parse("kubernetes/daemonset.yaml");
        assert_eq!(parsed.namespaces.len(), 1);
        let ds = &parsed.daemon_sets[0];
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.host_pid, Some(true), "hostPID: /proc and the pods' processes are the host's");
        assert_ne!(pod.host_network, Some(true));
        let agent = &pod.containers[0];
        assert_eq!(agent.command.as_deref().unwrap(), ["chaos", "agent", "--kubernetes"]);
        let node_name = agent.env.as_ref().unwrap().iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
        assert_eq!(node_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "spec.nodeName");

        let security = agent.security_context.as_ref().unwrap();
        assert_ne!(security.privileged, Some(true), "nothing privileged");
        let caps = security.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
        let mut added = caps.add.clone().unwrap();
        added.sort();
        // privileges.rs and docs/capabilities.md: the set chaos checks, plus KILL for signalling
        // other users' processes (proc.kill, sys.delay's SIGCONT).
        assert_eq!(added, ["BPF", "KILL", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]);
        for cap in &added {
            let why = comment_beside(&text, &format!("- {cap} ")).unwrap_or_else(|| panic!("capability {cap} has no reason beside it"));
            assert!(why.split_whitespace().count() >= 3, "{cap}: {why}");
        }

        let volumes = pod.volumes.as_ref().unwrap();
        let mounts = agent.volume_mounts.as_ref().unwrap();
        let mut host_paths = Vec::new();
        for v in volumes {
            let path = &v.host_path.as_ref().unwrap_or_else(|| panic!("volume {} is not a hostPath", v.name)).path;
            let why = comment_beside(&text, &format!("path: {path} ")).unwrap_or_else(|| panic!("host path {path} has no reason beside it"));
            assert!(why.split_whitespace().count() >= 3, "{path}: {why}");
            let mount = mounts.iter().find(|m| m.name == v.name).unwrap_or_else(|| panic!("volume {} is not mounted", v.name));
            assert_eq!(&mount.mount_path, path, "each host path at the same path in the container");
            host_paths.push(path.as_str());
        }
        for needed in ["/sys/fs/cgroup", "/run/chaos", "/sys/kernel/btf"] {
            assert!(host_paths.contains(&needed), "{needed} is not mounted");
        }
        // Only what must be written is writable: the cgroup tree (cgroup.freeze) and /run/chaos.
        for m in mounts {
            if !["/sys/fs/cgroup", "/run/chaos"].contains(&m.mount_path.as_str()) {
                assert_eq!(m.read_only, Some(true), "{} should be read-only", m.mount_path);
            }
        }

        // It runs as the RBAC file's service account.
        let rbac = parse("kubernetes/rbac.yaml");
        let sa = &rbac.service_accounts[0];
        assert_eq!(pod.service_account_name, sa.metadata.name);
        assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    }

    #[test]
    fn the_cluster_role_grants_what_the_controller_uses_and_no_more() {
        let text = std::fs::read_to_string(deploy("kubernetes/rbac.yaml")).unwrap();
        let rbac = parse("kubernetes/rbac.yaml");
        let role = &rbac.cluster_roles[0];
        let mut grants = Vec::new();
        for rule in role.rules.as_ref().unwrap() {
            for resource in rule.resources.as_ref().unwrap() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                grants.push((resource.clone(), verbs.join(",")));
            }
        }
        grants.sort();
        let want = [("chaosfaults", "list,watch"), ("chaosfaults/status", "patch"), ("nodes", "list"), ("pods", "get,list,watch")];
        assert_eq!(grants, want.map(|(r, v)| (r.to_string(), v.to_string())));
        // Each rule has its reason in a comment right above it.
        let lines: Vec<&str> = text.lines().collect();
        let rules = lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with("- apiGroups:"));
        for (i, _) in rules {
            assert!(lines[i - 1].trim_start().starts_with('#'), "the rule at line {} has no reason above it", i + 1);
        }
        let binding = &rbac.cluster_role_bindings[0];
        assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(Some(&subject.name), rbac.service_accounts[0].metadata.name.as_ref());
        assert_eq!(subject.namespace, rbac.service_accounts[0].metadata.namespace);
    }

    fn check_chaos_fault(cf: &ChaosFault) {
        plan::check_tables(&cf.spec.faults).unwrap();
        chaos_user::cli::parse_duration(&cf.spec.duration).unwrap();
        plan::count(cf.spec.mode, cf.spec.value, 10).unwrap();
    }

    #[test]
    fn the_examples_are_valid_chaos_faults_and_the_cronjob_creates_one_with_its_own_rights() {
        let example = parse("kubernetes/chaosfault-example.yaml");
        assert_eq!(example.chaos_faults.len(), 1);
        check_chaos_fault(&example.chaos_faults[0]);

        let cron = parse("kubernetes/cronjob-example.yaml");
        let job = &cron.cron_jobs[0];
        let pod = job.spec.as_ref().unwrap().job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let command = pod.containers[0].command.clone().unwrap();
        assert_eq!(command[..2], ["kubectl", "create"], "only create honours generateName");
        // The ChaosFault it creates (from the ConfigMap) is valid and named afresh each run.
        let data = cron.config_maps[0].data.as_ref().unwrap();
        let mut embedded = Parsed::default();
        parse_yaml("cronjob-example.yaml (ConfigMap)", &data["chaosfault.yaml"], &mut embedded);
        let cf = &embedded.chaos_faults[0];
        assert!(cf.metadata.generate_name.is_some() && cf.metadata.name.is_none());
        check_chaos_fault(cf);
        // Its own account may create ChaosFaults in its namespace and do nothing else.
        assert_eq!(pod.service_account_name, cron.service_accounts[0].metadata.name);
        let rules = cron.roles[0].rules.as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources.as_deref().unwrap(), ["chaosfaults"]);
        assert_eq!(rules[0].verbs, ["create"]);
        assert_eq!(cron.role_bindings[0].role_ref.name, cron.roles[0].metadata.name.clone().unwrap());
        assert_eq!(cf.metadata.namespace, cron.roles[0].metadata.namespace);
    }

    #[test]
    fn the_systemd_units_run_the_experiment_on_a_timer() {
        let service = std::fs::read_to_string(deploy("systemd/chaos-experiment.service")).unwrap();
        let timer = std::fs::read_to_string(deploy("systemd/chaos-experiment.timer")).unwrap();
        let value = |text: &str, key: &str| -> Vec<String> { text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(String::from).collect() };
        assert_eq!(value(&service, "Type"), ["oneshot"]);
        assert_eq!(value(&service, "ExecStart"), ["/usr/local/bin/chaos run /etc/chaos/experiment.toml"]);
        let caps = value(&service, "CapabilityBoundingSet").join(" ");
        for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
            assert!(caps.contains(cap), "{cap}");
        }
        assert_eq!(value(&timer, "OnCalendar").len(), 1);
        assert_eq!(value(&timer, "WantedBy"), ["timers.target"]);
    }
}
