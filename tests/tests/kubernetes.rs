//! `chaos agent --kubernetes` end to end, without a cluster: the fake API server
//! (chaos-user/tests/kube_fake) runs in this process, a kubeconfig points a real agent at it, and
//! the pods are cgroups made as the kubelet makes them, with real processes and real traffic.

#[path = "../../chaos-user/tests/kube_fake/mod.rs"]
mod kube_fake;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;
use kube_fake::FakeApi;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// A pod UID no other test (or run) shares: its first group is this process and call's.
fn pod_uid(tag: u8) -> String {
    let digits: String = unique("").chars().filter(char::is_ascii_digit).collect();
    let head = format!("{tag:02x}{digits:0<6}");
    format!("{}-7e57-4b0d-8c4a-5a5a5a5a5a5a", &head[..8])
}

/// The cgroup of a pod's one container, as the kubelet (systemd driver) and containerd make it.
fn pod_cgroup(uid: &str, tag: u8) -> String {
    let container = format!("{tag:02x}{}", "0123456789abcdef".repeat(4))[..64].to_string();
    format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope", uid.replace('-', "_"))
}

/// `n` datagrams at 2000/s from a process in `cgroup` to the sandbox's server: how many arrived.
fn udp_from(sb: &Sandbox, cgroup: &Path, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    sb.spawn_at(cgroup, Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "2000"]).json(T);
    sink.json(T)["received"].as_u64().expect("received")
}

/// A kubeconfig in `dir` whose one context is the fake API server.
fn kubeconfig(api: &FakeApi, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
        api.url()
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// Polls the fake server's copy of the resource until `cond` holds for it (at most `within`).
fn wait_for_fault(api: &FakeApi, name: &str, within: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + within;
    loop {
        let fault = api.fault("e2e", name).expect("the resource");
        if cond(&fault) {
            return fault;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {fault}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_chaosfault_drops_the_udp_of_its_pod_on_this_node_only_until_it_is_deleted() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let api = runtime.block_on(FakeApi::start());
    let sb = Sandbox::new();
    let (here, there) = (pod_uid(0xa1), pod_uid(0xb2));
    let cg_here = sb.child_cgroup(&pod_cgroup(&here, 0xc1));
    let cg_there = sb.child_cgroup(&pod_cgroup(&there, 0xc2));
    // Each pod's own process, as a pod has: it keeps the cgroup populated, and chaos finds the
    // pod's network namespace through it.
    let mut holders = [(&cg_here, 6662), (&cg_there, 6663)]
        .map(|(cg, port)| sb.spawn_at(cg, Place::Target, &["udp-sink", "--bind", &format!("127.0.0.1:{port}"), "--idle", "500ms"]));
    for h in &mut holders {
        h.ready();
    }
    // Both pods match; only one is on this agent's node. The other node's pod has a cgroup on
    // this machine too, so only the node filter keeps it out.
    api.add_pod_with_uid("e2e", "web-here", "n1", &[("app", "web")], &here);
    api.add_pod_with_uid("e2e", "web-there", "n2", &[("app", "web")], &there);

    let dir = temp_dir("kube");
    let kubeconfig = kubeconfig(&api, &dir.0);
    let root_before = sb.client_root_qdisc();
    let socket = dir.0.join("agent.sock");
    let child = Command::new(chaos_bin())
        .args(["agent", "--kubernetes", "--node", "n1", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning chaos agent");
    let mut agent = Proc::new(child, "chaos agent --kubernetes".into());
    agent.wait_for("Kubernetes controller for node n1", T);

    let spec = json!({
        "selector": { "matchLabels": { "app": "web" } },
        "duration": "2m",
        "faults": [{ "kind": "net.drop", "percent": 100, "proto": "udp" }],
    });
    api.create_fault("e2e", "drop-udp", spec, Duration::ZERO);
    let fault = wait_for_fault(&api, "drop-udp", START, "this node's status", |f| f["status"]["nodes"]["n1"]["phase"].is_string());
    let node = &fault["status"]["nodes"]["n1"];
    assert_eq!(node["phase"], "Injecting", "{fault}");
    assert_eq!(node["pods"], json!(["web-here"]));
    assert!(fault["status"]["nodes"].get("n2").is_none(), "no other node wrote: {fault}");
    let session = node["session"].as_str().expect("the session id").to_string();

    let (got_here, got_there) = (udp_from(&sb, &cg_here, 6661, 50), udp_from(&sb, &cg_there, 6661, 50));
    assert_eq!((got_here, got_there), (0, 50), "this node's pod lost every datagram, the other node's none");
    // The counters reach the status (read every 10 s).
    let injected = |f: &Value| -> u64 {
        f["status"]["nodes"]["n1"]["faults"].as_array().map_or(0, |rules| rules.iter().map(|r| r["injected"].as_u64().unwrap_or(0)).sum())
    };
    let fault = wait_for_fault(&api, "drop-udp", T, "the counters in status", |f| injected(f) >= 50);
    assert_eq!(injected(&fault), 50, "exactly the datagrams of this node's pod: {fault}");
    let rules = fault["status"]["nodes"]["n1"]["faults"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "one table × one pod: {fault}");
    let rule = &rules[0];
    assert_eq!(rule["kind"], "net.drop");
    // The rule's target is the pod's cgroup (every container of it).
    assert_eq!(rule["cgroup"], cg_here.parent().unwrap().display().to_string());

    // Deleting the resource ends the fault: traffic passes, and the session left nothing.
    let pid = status()["sessions"].as_array().unwrap().iter().find(|s| s["id"] == session.as_str()).map(|s| s["pid"].as_u64().unwrap() as u32);
    let pid = pid.unwrap_or_else(|| panic!("session {session} is not in chaos status: {}", status()));
    api.delete_fault("e2e", "drop-udp");
    let left = leftovers_after(&sb, &[&cg_here], &root_before, pid, T);
    assert!(left.is_empty(), "left after the resource was deleted: {left:?}");
    assert_eq!(udp_from(&sb, &cg_here, 6661, 50), 50, "the fault is gone");
    agent.wait_for(&format!("is gone: ending session {session}"), T);

    // A fault file sent to the agent may name a pod by NAMESPACE/NAME: the agent asks the API for
    // its UID. Without a cluster, chaos says where a name can be used.
    let sock = socket.to_str().expect("utf-8").to_string();
    let by_name = TempFile::new("chaos-kube-pod-", "[[fault]]\nkind = \"net.drop\"\npod = \"e2e/web-here\"\npercent = 100\nproto = \"udp\"\nfor = \"60s\"\n");
    let (code, out, err) = run_chaos(&["--agent", &sock, "apply", by_name.path(), "--detach"]);
    assert_eq!(code, 0, "{err:?}");
    let by_name_session = out.trim().to_string();
    assert_eq!(
        (udp_from(&sb, &cg_here, 6661, 50), udp_from(&sb, &cg_there, 6661, 50)),
        (0, 50),
        "the pod named e2e/web-here lost every datagram, the other pod none"
    );
    let (code, _, err) = run_chaos(&["--agent", &sock, "stop", &by_name_session]);
    assert_eq!(code, 0, "{err:?}");
    let (code, out, err) = run_chaos(&["--agent", &sock, "status", "--json"]);
    assert_eq!(code, 0, "{err:?}");
    let listed: Value = serde_json::from_str(&out).expect("status JSON");
    let ended = listed["sessions"].as_array().expect("sessions").iter().find(|s| s["id"] == by_name_session.as_str()).cloned().expect("the stopped session");
    assert_eq!(counter(&ended["summary"], 0, "dropped"), 50, "{ended}");
    assert_eq!(ended["summary"]["rules"][0]["cgroup"], cg_here.parent().unwrap().display().to_string(), "{ended}");
    let unknown = TempFile::new("chaos-kube-pod-", "[[fault]]\nkind = \"net.drop\"\npod = \"e2e/no-such-pod\"\npercent = 100\n");
    let (code, _, err) = run_chaos(&["--agent", &sock, "apply", unknown.path(), "--detach"]);
    assert_eq!(code, 2, "{err:?}");
    assert_eq!(err, [format!("chaos: {}:1: no pod no-such-pod in namespace e2e of the cluster: `kubectl get pods -n e2e` lists them", unknown.path())]);
    // Any fault command asks the API itself; here no cluster is configured.
    let (code, _, err) = run_chaos_env(&["net", "drop", "--pod", "e2e/web-here", "--percent", "5", "--dry-run"], &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert_eq!(code, 2, "{err:?}");
    assert!(
        err.len() == 1 && err[0].starts_with("chaos: --pod e2e/web-here names pods through the Kubernetes API, which cannot be reached (") && err[0].contains("give the pod's UID"),
        "{err:?}"
    );
    assert_eq!(udp_from(&sb, &cg_here, 6661, 50), 50, "the stopped session's fault is gone");

    agent.signal(libc::SIGTERM);
    let (code, _, err) = agent.finish(T);
    assert_eq!(code, 0, "the agent ends cleanly on SIGTERM: {err:?}");
    drop(runtime);
}

#[test]
fn without_a_cluster_to_reach_the_agent_says_so_in_one_line() {
    let dir = temp_dir("kube");
    let out = Command::new(chaos_bin())
        .args(["agent", "--kubernetes", "--node", "n1", "--socket"])
        .arg(dir.0.join("agent.sock"))
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .env("KUBECONFIG", dir.0.join("no-such-kubeconfig"))
        .env("HOME", &dir.0)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running chaos agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("Kubernetes API")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("chaos: cannot connect to the Kubernetes API")
            && lines[0].contains("no-such-kubeconfig")
            && lines[0].ends_with("set KUBECONFIG, or run in a pod with a service account"),
        "{err}"
    );
}

/// An experiment file names its pods by label (`pods = "NAMESPACE/SELECTOR"`): `chaos run` asks
/// the API (here the fake one, through KUBECONFIG) and faults every matching pod of this node
/// ($NODE_NAME), each as a rule of its own. A matching pod on another node and a pod that does not
/// match are not touched: their services answer all through, though their cgroups are on this
/// machine too. Each pod runs a web service, probed by the experiment.
#[test]
fn an_experiment_pauses_the_pods_its_label_selector_picks_on_this_node() {
    if !host_only("proc.pause in an experiment") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let api = runtime.block_on(FakeApi::start());
    let top = chaos_user::sandbox::TempCgroup::new(&unique("chaos-kexp-")).expect("a cgroup");
    let mut services = Vec::new();
    let mut probes = String::new();
    let mut pod_dirs = Vec::new();
    for (name, node, app, tag) in [("web-1", "n1", "web", 0xd1), ("web-2", "n1", "web", 0xd2), ("web-3", "n2", "web", 0xd3), ("db-1", "n1", "db", 0xd4)] {
        let uid = pod_uid(tag);
        let container = top.path.join(pod_cgroup(&uid, tag));
        std::fs::create_dir_all(&container).expect("a pod's cgroup");
        api.add_pod_with_uid("e2e", name, node, &[("app", app)], &uid);
        let port = free_port();
        let mut cmd = Command::new(chaos_bin());
        cmd.args(["workload", "http-service", "--bind", &format!("127.0.0.1:{port}"), "--max", "1m"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = chaos_user::sandbox::spawn_in(&mut cmd, Some(&container), None).expect("spawning a pod's service");
        let mut service = Proc::new(child, format!("the service of pod {name}"));
        service.ready();
        services.push(service);
        probes += &format!("[[probe]]\nname = \"{name}\"\nhttp = \"http://127.0.0.1:{port}/\"\nevery = \"50ms\"\ntimeout = \"300ms\"\nsteady = [\"error-rate < 5%\"]\n\n");
        pod_dirs.push(container.parent().expect("the pod's cgroup").display().to_string());
    }
    let text = format!(
        "[experiment]\ntitle = \"pods by label\"\nbaseline = \"2s\"\ninject = \"4s\"\nrecovery = \"3s\"\nrecovered-after = 1\n\n{probes}\
         [[fault]]\nkind = \"proc.pause\"\npods = \"e2e/app=web\"\nafter = \"1s\"\nfor = \"2s\"\n"
    );
    let file = TempFile::new("chaos-kube-experiment-", &text);
    let dir = temp_dir("kube");
    let config = kubeconfig(&api, &dir.0);
    let report_dir = dir.0.join("report");
    let (code, out, err) = run_chaos_env(
        &["run", file.path(), "--report", report_dir.to_str().unwrap(), "--json"],
        &[("KUBECONFIG", config.to_str().unwrap()), ("NODE_NAME", "n1")],
    );
    let report: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("no report ({e}): {out} {err:?}"));
    assert!(
        err.iter().any(|l| l.ends_with("pods e2e/app=web on this node (n1): web-1, web-2")),
        "chaos says which pods the selector chose: {err:?}"
    );
    assert_eq!(code, 4, "violated: the paused pods did not answer; stderr {err:?}");
    // One rule per chosen pod, each on the pod's cgroup, each having paused its service.
    let rules = report["faults"]["rules"].as_array().expect("rules");
    let targets: Vec<&str> = rules.iter().map(|r| r["cgroup"].as_str().unwrap_or_default()).collect();
    assert_eq!(targets, [pod_dirs[0].as_str(), pod_dirs[1].as_str()], "{}", report["faults"]);
    for rule in rules {
        assert!(rule["paused"].as_u64().unwrap_or(0) >= 1, "each rule paused its pod's service: {rule}");
    }
    let inject_errors = |name: &str| -> u64 {
        let source = report["sources"].as_array().expect("sources").iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no source {name}: {report}"));
        source["phases"]["inject"]["errors"].as_u64().expect("errors")
    };
    let errors: Vec<u64> = ["web-1", "web-2", "web-3", "db-1"].map(inject_errors).to_vec();
    assert!(errors[0] > 0 && errors[1] > 0, "the chosen pods stopped answering while paused: {errors:?}");
    assert_eq!((errors[2], errors[3]), (0, 0), "the other node's pod and the pod that does not match answered all through: {errors:?}");
    // The API was asked for the pods by the file's selector.
    let asked = api.requests().iter().filter(|r| r.query.get("labelSelector").map(String::as_str) == Some("app=web")).count();
    assert_eq!(asked, 1, "one list of the namespace's pods by the selector");
    drop(services);
    drop(runtime);
}

/// `chaos observe --pod NAMESPACE/NAME` asks the API (the fake one, through KUBECONFIG) for the
/// pod's UID and observes the pod's cgroup: the calls of the pod's web service as it answers
/// requests. A pod on another node is refused in one line naming where it runs.
#[test]
fn observe_finds_a_pod_by_namespace_and_name() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let api = runtime.block_on(FakeApi::start());
    let top = chaos_user::sandbox::TempCgroup::new(&unique("chaos-kobs-")).expect("a cgroup");
    let (here, there) = (pod_uid(0xe1), pod_uid(0xe2));
    api.add_pod_with_uid("e2e", "web-here", "n1", &[("app", "web")], &here);
    api.add_pod_with_uid("e2e", "web-there", "n2", &[("app", "web")], &there);
    let container = top.path.join(pod_cgroup(&here, 0xe1));
    std::fs::create_dir_all(&container).expect("the pod's cgroup");
    let port = free_port();
    let mut cmd = Command::new(chaos_bin());
    cmd.args(["workload", "http-service", "--bind", &format!("127.0.0.1:{port}"), "--max", "1m"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut service = Proc::new(chaos_user::sandbox::spawn_in(&mut cmd, Some(&container), None).expect("spawning the pod's service"), "the pod's service".into());
    service.ready();
    let dir = temp_dir("kobs");
    let config = kubeconfig(&api, &dir.0);
    let env = [("KUBECONFIG", config.to_str().unwrap()), ("NODE_NAME", "n1")];

    let mut observe = Command::new(chaos_bin());
    observe.args(["observe", "--pod", "e2e/web-here", "--for", "3s", "--json"]).envs(env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut observe = Proc::new(observe.spawn().expect("spawning chaos observe"), "chaos observe".into());
    observe.wait_for("chaos: observing", T);
    let requests = 20;
    for _ in 0..requests {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting to the pod's service");
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("a request");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("the answer");
        assert!(answer.starts_with(b"HTTP/1."), "{}", String::from_utf8_lossy(&answer));
    }
    let summary = observe.json(T);
    assert_eq!(summary["cgroup"], container.parent().unwrap().display().to_string(), "the pod's cgroup: {summary}");
    let calls = |name: &str| summary["syscalls"].as_array().expect("syscalls").iter().filter(|r| r["syscall"] == name).map(|r| r["calls"].as_u64().unwrap()).sum::<u64>();
    // An answer is one sendto; the first accept4 was already waiting when observing began.
    assert!(calls("sendto") >= requests && calls("accept4") >= requests - 1, "the service's calls were observed: {summary}");

    let (code, _, err) = run_chaos_env(&["observe", "--pod", "e2e/web-there", "--for", "1s"], &env);
    assert_eq!(code, 2, "{err:?}");
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].starts_with("chaos: pod e2e/web-there runs on node n2, not on this one (n1)"), "{err:?}");
    drop(service);
    drop(runtime);
}
