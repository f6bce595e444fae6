//! The controller one node's agent runs: it watches every `ChaosFault` and the pods scheduled on
//! its node, keeps one session per resource holding the faults on the resource's chosen local pods,
//! and reports under `status.nodes.<node>`.
//!
//! It is level-driven: every event, and a tick each second, compares what should be (from the
//! watched objects and the clock) with the sessions it holds, so a missed event, a dropped watch or
//! a restart of the agent converge to the same place. Nothing is kept in the cluster but status.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::{Selector, SelectorExt},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

use super::{
    injector::Injector,
    plan::{self, Candidate},
    resource::{ChaosFault, FaultCounters, Mode, NodeStatus, Phase},
};
use crate::agent::{SessionInfo, StartRequest};

/// Sessions the controller starts carry this owner prefix (then `NAMESPACE/NAME`).
pub const OWNER_PREFIX: &str = "kubernetes:";

#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name (`spec.nodeName` of the pods it acts on; its key in status).
    pub node: String,
    /// How often the cluster-wide choice of pods (modes one, fixed, percent) is listed again
    /// without a local pod event: a pod of another node may have come or gone.
    pub resync: Duration,
    /// How often a running session's counters are read into status.
    pub status_every: Duration,
}

impl Config {
    pub fn new(node: String) -> Config {
        Config { node, resync: Duration::from_secs(30), status_every: Duration::from_secs(10) }
    }
}

/// Runs until the watches fail for good (they retry with backoff, so in practice: forever).
pub async fn run<I: Injector>(client: Client, config: Config, injector: Arc<I>) -> anyhow::Result<()> {
    let (faults, faults_writer) = reflector::store::<ChaosFault>();
    let fault_events = reflector::reflector(faults_writer, watcher(Api::<ChaosFault>::all(client.clone()), watcher::Config::default())).default_backoff();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let local = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node));
    let pod_events = reflector::reflector(pods_writer, watcher(Api::<Pod>::all(client.clone()), local)).default_backoff();
    let mut fault_events = std::pin::pin!(fault_events);
    let mut pod_events = std::pin::pin!(pod_events);

    let mut controller = Controller::new(client, config, injector);
    controller.end_predecessors().await;
    let (mut faults_listed, mut pods_listed) = (false, false);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = fault_events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => faults_listed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => log::warn!("watching ChaosFaults: {e}; retrying"),
                None => anyhow::bail!("the ChaosFault watch ended"),
            },
            event = pod_events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => { pods_listed = true; controller.pods_changed(); }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => controller.pods_changed(),
                Some(Ok(_)) => {}
                Some(Err(e)) => log::warn!("watching the pods of node {}: {e}; retrying", controller.config.node),
                None => anyhow::bail!("the pod watch ended"),
            },
            _ = tick.tick() => {}
        }
        // Until both lists are in, an absent resource may only be unlisted yet: act on nothing.
        if faults_listed && pods_listed {
            controller.reconcile(&faults, &pods).await;
        }
    }
}

struct Controller<I> {
    client: Client,
    config: Config,
    injector: Arc<I>,
    /// By resource uid: what this node does for it.
    tracked: HashMap<String, Tracked>,
    /// By resource uid: the cluster-wide choice of pods, when it was listed, for which generation.
    choices: HashMap<String, Choice>,
    /// A local pod came, went or changed: every choice is listed again.
    pods_changed: bool,
    /// By resource uid: [`check`]'s verdict for a generation (it runs the fault file parser).
    checks: HashMap<String, (Option<i64>, Result<Duration, String>)>,
}

struct Tracked {
    /// The resource's generation and the chosen local pods' uids the session was made for: a
    /// change of either makes a new session; the same key is never retried after a failure.
    key: (Option<i64>, Vec<String>),
    session: Option<String>,
    /// This node's entry in status (None: no entry); `written` once the API has it.
    status: Option<NodeStatus>,
    written: bool,
    polled: Instant,
}

/// A session to end and or start for one resource, carried out with the pass's others.
struct Change {
    fault: Arc<ChaosFault>,
    uid: String,
    /// Its old session, ended first.
    stop: Option<String>,
    start: Option<StartRequest>,
    /// The status to write once done; with a start, completed from its answer (`settle`).
    status: Option<NodeStatus>,
}

struct Choice {
    at: Instant,
    generation: Option<i64>,
    /// The nodes the node selector allows (None: no node selector).
    nodes: Option<Vec<String>>,
    /// The cluster-wide choice (modes one, fixed, percent).
    chosen: Vec<Candidate>,
}

impl<I: Injector> Controller<I> {
    fn new(client: Client, config: Config, injector: Arc<I>) -> Self {
        Controller { client, config, injector, tracked: HashMap::new(), choices: HashMap::new(), pods_changed: true, checks: HashMap::new() }
    }

    /// [`check`] once per generation of a resource.
    fn checked(&mut self, fault: &ChaosFault, uid: &str) -> Result<Duration, String> {
        let generation = fault.metadata.generation;
        if let Some((g, verdict)) = self.checks.get(uid)
            && *g == generation
        {
            return verdict.clone();
        }
        let verdict = check(fault);
        self.checks.insert(uid.to_string(), (generation, verdict.clone()));
        verdict
    }

    fn pods_changed(&mut self) {
        self.pods_changed = true;
    }

    /// Ends sessions an earlier controller of this agent started: this one starts afresh with
    /// what is left of each live resource (the agent's own start sweeps killed ones already).
    async fn end_predecessors(&self) {
        let mut ids = Vec::new();
        for s in self.injector.list().await {
            if s.state != "ended" && s.owner.as_deref().is_some_and(|o| o.starts_with(OWNER_PREFIX)) {
                log::info!("ending session {} ({}) of an earlier controller", s.id, s.name);
                ids.push(s.id);
            }
        }
        self.stop_each(&ids).await;
    }

    async fn reconcile(&mut self, faults: &Store<ChaosFault>, pods: &Store<Pod>) {
        let live: Vec<Arc<ChaosFault>> = faults.state().into_iter().filter(|f| f.metadata.deletion_timestamp.is_none()).collect();
        let local: Vec<Arc<Pod>> = pods.state();
        // One clock for the pass: a resource found over here is over in `reconcile_one` too.
        let now = k8s_openapi::jiff::Timestamp::now();
        // The sessions that end now end together: each stop waits for its session's process, so
        // one after the other, a slow one would hold up the rest and the controller for the sum.
        // (uid, session id) of each.
        let mut ending: Vec<(String, String)> = Vec::new();
        // Resources deleted (or being deleted): their faults end.
        let gone: Vec<String> = self.tracked.keys().filter(|uid| !live.iter().any(|f| f.uid().as_deref() == Some(uid.as_str()))).cloned().collect();
        for uid in gone {
            if let Some(t) = self.tracked.remove(&uid)
                && let Some(id) = t.session
            {
                log::info!("resource {uid} is gone: ending session {id}");
                ending.push((uid.clone(), id));
            }
            self.choices.remove(&uid);
            self.checks.remove(&uid);
        }
        // Resources over (their duration reached): their sessions end, the rest in `reconcile_one`.
        for fault in &live {
            let Some(uid) = fault.uid() else { continue };
            if self.checked(fault, &uid).is_ok_and(|total| elapsed(fault, now) >= total)
                && let Some(id) = self.tracked.get_mut(&uid).and_then(|t| t.session.take())
            {
                ending.push((uid, id));
            }
        }
        let ids: Vec<String> = ending.iter().map(|(_, id)| id.clone()).collect();
        let mut ended: HashMap<String, Option<SessionInfo>> = ending.into_iter().map(|(uid, _)| uid).zip(self.stop_each(&ids).await).collect();
        let mut changes = Vec::new();
        for fault in &live {
            changes.extend(self.reconcile_one(fault, &local, now, &mut ended).await);
        }
        // The pass's new sessions (and the ends of those they replace) together, for the same
        // reason: each waits for a process, and one after the other they would add up.
        let this = &*self;
        let outcomes = futures::future::join_all(changes.iter().map(|c| this.carry_out(c))).await;
        for (change, started) in changes.into_iter().zip(outcomes) {
            self.settle(change, started).await;
        }
        self.pods_changed = false;
    }

    /// `ended`: by resource uid, the sessions [`reconcile`](Self::reconcile) ended just now (their
    /// final state, None if the stop failed), already taken out of `tracked`. What needs a
    /// session started or ended is returned, for the pass to carry out with the others.
    async fn reconcile_one(
        &mut self,
        fault: &Arc<ChaosFault>,
        local: &[Arc<Pod>],
        now: k8s_openapi::jiff::Timestamp,
        ended: &mut HashMap<String, Option<SessionInfo>>,
    ) -> Option<Change> {
        let uid = fault.uid()?;
        let generation = fault.metadata.generation;
        let elapsed = elapsed(fault, now);

        let total = match self.checked(fault, &uid) {
            Ok(total) => total,
            Err(message) => {
                let key = (generation, Vec::new());
                let status = NodeStatus { phase: Phase::Failed, pods: Vec::new(), session: None, faults: Vec::new(), message: Some(message) };
                return self.change(fault, &uid, key, None, Some(status)).await;
            }
        };

        if elapsed >= total {
            // Over: end what runs; report Finished only where this node had something to report.
            let ended_now = ended.remove(&uid);
            let tracked = self.tracked.get_mut(&uid);
            let had_session = ended_now.is_some() || tracked.as_ref().is_some_and(|t| t.session.is_some());
            let ended = match (ended_now, tracked.and_then(|t| t.session.take())) {
                (Some(info), _) => info,
                (None, Some(id)) => self.stop(&id).await,
                (None, None) => None,
            };
            let reported = self.tracked.get(&uid).and_then(|t| t.status.clone()).or_else(|| node_status(fault, &self.config.node));
            if let Some(mut status) = reported.filter(|s| had_session || s.phase == Phase::Injecting) {
                status.phase = Phase::Finished;
                status.session = None;
                if let Some(info) = ended {
                    status.faults = counters(&info);
                }
                self.write_status(fault, &uid, Some(status)).await;
            }
            return None;
        }

        let chosen = match self.chosen_local(fault, &uid, local).await {
            Ok(chosen) => chosen,
            Err(message) => {
                log::warn!("choosing the pods of {}/{}: {message}", fault.namespace().unwrap_or_default(), fault.name_any());
                return None;
            }
        };
        let key = (generation, chosen.iter().map(|c| c.uid.clone()).collect::<Vec<_>>());
        let pods: Vec<String> = chosen.iter().map(|c| c.name.clone()).collect();

        if let Some(t) = self.tracked.get(&uid)
            && t.key == key
        {
            if !t.written {
                // The last write failed (the API was unreachable, say): again.
                let status = t.status.clone();
                self.write_status(fault, &uid, status).await;
            }
            self.poll(fault, &uid).await;
            return None;
        }
        // A new resource, a changed spec or a changed set of local pods: a new session.
        if chosen.is_empty() {
            // Nothing of this resource on this node: no entry in its status.
            return self.change(fault, &uid, key, None, None).await;
        }
        let status = |phase, message| NodeStatus { phase, pods: pods.clone(), session: None, faults: Vec::new(), message };
        match plan::fault_file(&fault.spec.faults, &key.1, elapsed, total) {
            Err(message) => self.change(fault, &uid, key, None, Some(status(Phase::Failed, Some(message)))).await,
            Ok(None) => self.change(fault, &uid, key, None, Some(status(Phase::Finished, None))).await,
            Ok(Some(text)) => {
                let ns = fault.namespace().unwrap_or_default();
                let request = StartRequest {
                    name: format!("chaosfault {ns}/{}", fault.name_any()),
                    faults: text,
                    owner: Some(format!("{OWNER_PREFIX}{ns}/{}", fault.name_any())),
                };
                // Until it answers: Failed with the start's error, or Injecting (`settle`).
                self.change(fault, &uid, key, Some(request), Some(status(Phase::Failed, None))).await
            }
        }
    }

    /// Tracks `key` for the resource with no session yet; its old session, if any, is to end. With
    /// nothing to wait for (no session to end or start), writes `status` now; otherwise returns
    /// the change for the pass to carry out.
    async fn change(
        &mut self,
        fault: &Arc<ChaosFault>,
        uid: &str,
        key: (Option<i64>, Vec<String>),
        start: Option<StartRequest>,
        status: Option<NodeStatus>,
    ) -> Option<Change> {
        let old = self.tracked.remove(uid);
        let stop = old.as_ref().and_then(|t| t.session.clone());
        let (kept, written) = old.map(|t| (t.status, t.written)).unwrap_or_default();
        let tracked = Tracked { key, session: None, status: kept, written, polled: Instant::now() };
        self.tracked.insert(uid.to_string(), tracked);
        if stop.is_none() && start.is_none() {
            self.write_status(fault, uid, status).await;
            return None;
        }
        Some(Change { fault: fault.clone(), uid: uid.to_string(), stop, start, status })
    }

    /// Ends a change's old session, then starts its new one: the start's answer.
    async fn carry_out(&self, change: &Change) -> Option<Result<SessionInfo, crate::agent::ApiError>> {
        if let Some(id) = &change.stop {
            self.stop(id).await;
        }
        Some(self.injector.start(change.start.clone()?).await)
    }

    /// Records a carried-out change: the started session, and the status it makes.
    async fn settle(&mut self, change: Change, started: Option<Result<SessionInfo, crate::agent::ApiError>>) {
        let Change { fault, uid, status, .. } = change;
        let status = match (status, started) {
            (Some(mut status), Some(Ok(info))) => {
                log::info!("session {} for {}/{} on {}", info.id, fault.namespace().unwrap_or_default(), fault.name_any(), status.pods.join(", "));
                if let Some(t) = self.tracked.get_mut(&uid) {
                    t.session = Some(info.id.clone());
                    t.polled = Instant::now();
                }
                status.phase = Phase::Injecting;
                status.session = Some(info.id.clone());
                status.faults = counters(&info);
                Some(status)
            }
            (Some(mut status), Some(Err(e))) => {
                status.message = Some(e.message);
                Some(status)
            }
            (status, _) => status,
        };
        self.write_status(&fault, &uid, status).await;
    }

    /// Reads a running session's counters into status every `status_every`; notices its end.
    async fn poll(&mut self, fault: &ChaosFault, uid: &str) {
        let every = self.config.status_every;
        let Some(t) = self.tracked.get_mut(uid) else {
            return;
        };
        let Some(id) = t.session.clone() else { return };
        if t.polled.elapsed() < every {
            return;
        }
        t.polled = Instant::now();
        let info = self.injector.get(&id).await;
        let Some(mut status) = self.tracked.get(uid).and_then(|t| t.status.clone()) else {
            return;
        };
        match info {
            Some(info) if info.state != "ended" => status.faults = counters(&info),
            ended => {
                // Ended before the resource's end: stopped on the node (`chaos stop`), or failed.
                if let Some(t) = self.tracked.get_mut(uid) {
                    t.session = None;
                }
                status.session = None;
                match &ended {
                    Some(info) if info.error.is_some() || info.exit_code.is_some_and(|c| c != 0) => {
                        status.phase = Phase::Failed;
                        status.message = Some(info.error.clone().unwrap_or_else(|| format!("the session ended with exit code {:?}", info.exit_code)));
                    }
                    _ => status.phase = Phase::Finished,
                }
                if let Some(info) = ended {
                    status.faults = counters(&info);
                }
            }
        }
        self.write_status(fault, uid, Some(status)).await;
    }

    /// Ends the sessions `ids` together (see [`reconcile`](Self::reconcile)); their final states in
    /// the order of `ids`, each failure logged with its session.
    async fn stop_each(&self, ids: &[String]) -> Vec<Option<SessionInfo>> {
        futures::future::join_all(ids.iter().map(|id| self.stop(id))).await
    }

    async fn stop(&self, id: &str) -> Option<SessionInfo> {
        match self.injector.stop(id).await {
            Ok(info) => Some(info),
            Err(e) => {
                log::warn!("ending session {id}: {e}");
                None
            }
        }
    }

    /// The chosen pods on this node: for `all`, the matching local pods; otherwise the
    /// cluster-wide choice, those of it on this node. What needs the API (the cluster-wide list,
    /// the nodes the node selector allows) is listed again on a local pod event, a new
    /// generation, or after `resync`; the 1 s ticks in between use what was listed.
    async fn chosen_local(&mut self, fault: &ChaosFault, uid: &str, local: &[Arc<Pod>]) -> Result<Vec<Candidate>, String> {
        let selector = Selector::try_from(fault.spec.selector.clone()).map_err(|e| e.to_string())?;
        let ns = fault.namespace().unwrap_or_default();
        let fresh =
            self.choices.get(uid).is_some_and(|c| !self.pods_changed && c.generation == fault.metadata.generation && c.at.elapsed() < self.config.resync);
        if !fresh {
            let nodes = match &fault.spec.node_selector {
                Some(labels) => Some(self.nodes_with(labels).await?),
                None => None,
            };
            let chosen = match fault.spec.mode {
                Mode::All => Vec::new(),
                _ => self.choose_in_cluster(fault, &selector, &ns, uid, nodes.as_deref()).await?,
            };
            let generation = fault.metadata.generation;
            let at = Instant::now();
            let choice = Choice { at, generation, nodes, chosen };
            self.choices.insert(uid.to_string(), choice);
        }
        let choice = &self.choices[uid];
        let node = &self.config.node;
        if choice.nodes.as_ref().is_some_and(|n| !n.contains(node)) {
            return Ok(Vec::new());
        }
        let mut chosen: Vec<Candidate> = match fault.spec.mode {
            Mode::All => local
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .filter(|p| selector.matches(p.labels()))
                .filter_map(|p| candidate(p))
                .collect(),
            _ => choice.chosen.clone(),
        };
        chosen.retain(|c| &c.node == node);
        chosen.sort();
        Ok(chosen)
    }

    /// Every matching pod of the cluster (running, scheduled, on one of `nodes` if given), and
    /// the resource's choice of them.
    async fn choose_in_cluster(
        &self,
        fault: &ChaosFault,
        selector: &Selector,
        ns: &str,
        uid: &str,
        nodes: Option<&[String]>,
    ) -> Result<Vec<Candidate>, String> {
        let listed = Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(&selector.to_string()))
            .await
            .map_err(|e| format!("listing pods: {e}"))?;
        let candidates: Vec<Candidate> =
            listed.items.iter().filter(|p| selector.matches(p.labels())).filter_map(candidate).filter(|c| nodes.is_none_or(|n| n.contains(&c.node))).collect();
        plan::choose(fault.spec.mode, fault.spec.value, uid, &candidates)
    }

    async fn nodes_with(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
        let selector: Selector = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels(&selector.to_string()))
            .await
            .map_err(|e| format!("listing nodes: {e}"))?;
        Ok(nodes.items.iter().map(|n| n.name_any()).collect())
    }

    /// Writes `status.nodes.<node>` (None: removes it) with a merge patch, which leaves the other
    /// nodes' entries alone; skipped when it is what this node last wrote or the resource says.
    async fn write_status(&mut self, fault: &ChaosFault, uid: &str, status: Option<NodeStatus>) {
        let node = self.config.node.clone();
        let tracked = self.tracked.entry(uid.to_string()).or_insert_with(|| Tracked {
            key: (fault.metadata.generation, Vec::new()),
            session: None,
            status: None,
            written: false,
            polled: Instant::now(),
        });
        if tracked.written && tracked.status == status {
            return;
        }
        if node_status(fault, &node) != status {
            let patch = json!({ "status": { "nodes": { node: status } } });
            let ns = fault.namespace().unwrap_or_default();
            let api = Api::<ChaosFault>::namespaced(self.client.clone(), &ns);
            if let Err(e) = api.patch_status(&fault.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                // Kept as what to write: the next pass (or poll) tries again.
                log::warn!("writing the status of {ns}/{}: {e}", fault.name_any());
                tracked.status = status;
                tracked.written = false;
                return;
            }
        }
        tracked.status = status;
        tracked.written = true;
    }
}

/// How long ago the resource was created (its window is counted from then), at `now`.
fn elapsed(fault: &ChaosFault, now: k8s_openapi::jiff::Timestamp) -> Duration {
    let created = fault.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    Duration::try_from(now.duration_since(created)).unwrap_or_default()
}

/// The resource's duration, or the one line that says what is wrong with it.
fn check(fault: &ChaosFault) -> Result<Duration, String> {
    let total = crate::cli::parse_duration(&fault.spec.duration).map_err(|e| format!("spec.duration: {e}"))?;
    plan::count(fault.spec.mode, fault.spec.value, 0)?;
    let selector = &fault.spec.selector;
    if selector.match_labels.as_ref().is_none_or(|l| l.is_empty()) && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty()) {
        return Err("spec.selector is empty, which would pick every pod of the namespace; give matchLabels or matchExpressions".into());
    }
    Selector::try_from(selector.clone()).map_err(|e| format!("spec.selector: {e}"))?;
    plan::check_tables(&fault.spec.faults)?;
    Ok(total)
}

/// A pod that can be a target: scheduled, running, not being deleted.
pub(super) fn candidate(pod: &Pod) -> Option<Candidate> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let node = pod.spec.as_ref()?.node_name.clone()?;
    running.then(|| Candidate { name: pod.name_any(), uid: pod.uid().unwrap_or_default(), node })
}

fn node_status(fault: &ChaosFault, node: &str) -> Option<NodeStatus> {
    fault.status.as_ref().and_then(|s| s.nodes.get(node).cloned())
}

/// Each rule's counters from a session's faults (live, or the summary's rules once ended).
fn counters(info: &SessionInfo) -> Vec<FaultCounters> {
    let Some(rules) = info.faults.as_array() else {
        return Vec::new();
    };
    rules
        .iter()
        .map(|r| {
            let n = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let s = |k: &str| r.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
            FaultCounters { kind: s("kind"), cgroup: s("cgroup"), seen: n("seen"), matched: n("matched"), injected: n("injected") }
        })
        .collect()
}
