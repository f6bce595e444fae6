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
    let kubeconfig = dir.0.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
        api.url()
    );
    std::fs::write(&kubeconfig, config).unwrap();
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
    assert_eq!(err, ["chaos: no pod no-such-pod in namespace e2e of the cluster: `kubectl get pods -n e2e` lists them"]);
    let (code, _, err) = run_chaos(&["net", "drop", "--pod", "e2e/web-here", "--percent", "5", "--dry-run"]);
    assert_eq!(code, 2, "{err:?}");
    assert!(
        err.len() == 1 && err[0].contains("'e2e/web-here' names a pod by namespace and name, which only `chaos agent --kubernetes` can look up"),
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
