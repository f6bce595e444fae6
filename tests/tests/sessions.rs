//! Sessions across processes: `chaos status` lists them with live counters from the kernel,
//! `chaos stop` ends them cleanly (each still prints its summary) and returns once they are gone;
//! the guardian undoes a killed session's changes by itself; forged records are never acted on.

use std::{
    os::unix::fs::PermissionsExt,
    sync::RwLock,
    time::{Duration, Instant},
};

use chaos_tests::*;

const T: Duration = Duration::from_secs(60);

/// `chaos stop --all` ends every session on the machine: the test that runs it holds this for
/// writing, every other test of this file that runs a session for reading, so it never ends
/// theirs (a session stopped while attaching never starts its rules, and a test that froze it
/// found them waiting).
static ALL_SESSIONS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    ALL_SESSIONS.read().unwrap_or_else(|e| e.into_inner())
}

fn drop_args(sb: &Sandbox, port: &str) -> Vec<String> {
    let mut a: Vec<String> = ["net", "drop", "--percent", "100", "--proto", "udp", "--port", port, "--for", "60s", "--json"].map(String::from).to_vec();
    a.extend(sb.target_args());
    a
}

fn udp(sb: &Sandbox, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "2000"]).json(T);
    sink.json(T)["received"].as_u64().expect("received")
}

fn find<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["sessions"].as_array().expect("sessions").iter().find(|s| s["id"] == id)
}

#[test]
fn status_shows_live_sessions_and_stop_ends_them_with_their_summary() {
    let _all = ALL_SESSIONS.write().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let mut a = start_chaos(&drop_args(&sb, "6301"));
    let mut b = start_chaos(&drop_args(&sb, "6302"));
    let (ida, idb) = (session_id(&mut a), session_id(&mut b));
    assert_ne!(ida, idb);
    assert_eq!(udp(&sb, 6301, 120), 0);

    let st = status();
    let sa = find(&st, &ida).unwrap_or_else(|| panic!("session {ida} not listed: {st}"));
    assert_eq!(sa["pid"], a.child.id());
    let f = &sa["faults"][0];
    assert_eq!((f["kind"].as_str(), f["state"].as_str()), (Some("net.drop"), Some("injecting")), "{sa}");
    assert_eq!(f["cgroup"], sb.cgroup.path.display().to_string());
    assert!(f["description"].as_str().unwrap_or_default().contains("remote port 6301"), "{f}");
    let left = f["left_s"].as_f64().expect("left_s");
    assert!(left > 30.0 && left <= 60.0, "time left {left}");
    // Live counters, read from the kernel while the session runs.
    assert_eq!((f["matched"].as_u64(), f["injected"].as_u64()), (Some(120), Some(120)), "{f}");
    assert!(find(&st, &idb).is_some(), "both sessions are listed: {st}");

    // Stop one by id: it returns once the process is gone, and that process printed its summary.
    let started = Instant::now();
    let (code, _, err) = run_chaos(&["stop", &ida]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{err:?}");
    assert!(err.iter().any(|l| l.contains(&format!("stopped session {ida}"))), "{err:?}");
    eprintln!("chaos stop returned after {took:?} on the {} lane", lane());
    assert!(a.child.try_wait().expect("try_wait").is_some() || {
        std::thread::sleep(Duration::from_millis(100));
        a.child.try_wait().expect("try_wait").is_some()
    }, "the session's process is gone when stop returns");
    let summary = a.json(T);
    assert_eq!(summary["ended_by"], "chaos stop");
    assert_eq!(counter(&summary, 0, "dropped"), 120);
    // The other session still runs, and its fault still works.
    assert_eq!(udp(&sb, 6302, 50), 0);
    assert!(find(&status(), &ida).is_none(), "a stopped session is no longer listed");

    let (code, _, err) = run_chaos(&["stop", "--all"]);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(b.json(T)["ended_by"], "chaos stop");
    assert_eq!(udp(&sb, 6302, 50), 50, "nothing injects after stop");
}

#[test]
fn stop_ends_a_frozen_sessions_faults_in_the_kernel_at_once() {
    let _all = shared();
    let sb = Sandbox::new();
    let mut chaos = start_chaos(&drop_args(&sb, "6311"));
    let id = session_id(&mut chaos);
    chaos.signal(libc::SIGSTOP);
    // stop waits for the process, which cannot run while stopped: run it in the background and
    // check that the fault is already gone from the kernel.
    let stopper = std::thread::spawn({
        let id = id.clone();
        move || run_chaos(&["stop", &id])
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status();
        let state = find(&st, &id).map(|s| s["faults"][0]["state"].clone());
        if state == Some(Value::from("ended")) {
            break;
        }
        assert!(Instant::now() < deadline, "the rule did not end in the kernel: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(udp(&sb, 6311, 100), 100, "a frozen session's fault no longer injects once stopped");
    chaos.signal(libc::SIGCONT);
    let (code, _, err) = stopper.join().expect("stopper");
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(chaos.json(T)["ended_by"], "chaos stop");
}

#[test]
fn stopping_an_unknown_session_is_bad_input() {
    let _all = shared();
    let (code, _, err) = run_chaos(&["stop", "no-such-session"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("no running session no-such-session"), "{err:?}");
    let (code, _, err) = run_chaos(&["stop"]);
    assert_eq!(code, 2, "{err:?}");
}

#[test]
fn the_guardian_undoes_a_killed_sessions_change_within_a_second() {
    let _all = shared();
    let sb = Sandbox::new();
    let marker_file = std::env::temp_dir().join(unique("chaos-guardian-"));
    let mut chaos = start_chaos_env(&drop_args(&sb, "6321"), &[("CHAOS_TEST_FAKE_CHANGE", marker_file.to_str().unwrap())]);
    let id = session_id(&mut chaos);
    let text = std::fs::read_to_string(&marker_file).expect("the session made its journaled change");
    assert_eq!(text.trim(), id, "the change carries the session's id");
    let st = status();
    let rec = find(&st, &id).unwrap_or_else(|| panic!("session {id} is not listed: {st}")).clone();
    assert!(rec["changes"].as_array().is_some_and(|c| c.iter().any(|c| c.as_str().unwrap_or_default().contains("test file"))), "{rec}");
    chaos.signal(libc::SIGKILL);
    let killed = Instant::now();
    let _ = chaos.finish(Duration::from_secs(10));
    // No chaos command runs from here: only the guardian can undo it.
    while marker_file.exists() {
        assert!(killed.elapsed() < Duration::from_secs(10), "the guardian did not undo the change");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("the guardian undid the change {:?} after SIGKILL on the {} lane", killed.elapsed(), lane());
    let st = status();
    assert!(find(&st, &id).is_none() && !st["dead"].as_array().expect("dead").iter().any(|d| d["id"] == id), "the record is gone: {st}");
}

#[test]
fn a_clean_end_undoes_its_own_change_and_leaves_no_record() {
    let _all = shared();
    let sb = Sandbox::new();
    let marker_file = std::env::temp_dir().join(unique("chaos-guardian-"));
    let mut args = drop_args(&sb, "6331");
    args[9] = "1s".into(); // --for
    let chaos = start_chaos_env(&args, &[("CHAOS_TEST_FAKE_CHANGE", marker_file.to_str().unwrap())]);
    assert!(marker_file.exists());
    assert_eq!(chaos.json(T)["ended_by"], "deadline");
    assert!(!marker_file.exists(), "undone at the end");
}

/// A session record as a killed session would leave it, written by the test.
fn forged_record(id: &str, changes: &str) -> String {
    format!(
        r#"{{"id":"{id}","pid":4000000,"start_time":1,"maps":{{"rules":0,"counters":0,"session":0,"errors":0}},"faults":[],"guardian":null,"changes":[{changes}]}}"#
    )
}

#[test]
fn records_that_are_not_roots_alone_are_refused_never_acted_on() {
    let _all = shared();
    // A state directory of the test's own, so other tests' sessions are not involved.
    let dir = std::env::temp_dir().join(unique("chaos-state-"));
    std::fs::create_dir(&dir).expect("state dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = std::env::temp_dir().join(unique("chaos-victim-"));
    std::fs::write(&victim, "forged\n").unwrap();
    let change = format!(r#"{{"kind":"test_file","path":"{}","marker":"forged"}}"#, victim.display());
    let env = [("CHAOS_STATE_DIR", dir.to_str().unwrap())];

    // Owned by another user: refused.
    let rec = dir.join("forged1.json");
    std::fs::write(&rec, forged_record("forged1", &change)).unwrap();
    std::os::unix::fs::chown(&rec, Some(65534), Some(65534)).unwrap();
    let (code, out, err) = run_chaos_env(&["cleanup", "--json"], &env);
    assert_eq!(code, 0, "{err:?}");
    let swept: Value = serde_json::from_str(&out).expect("json");
    assert!(swept["refused"].to_string().contains("not root"), "{swept}");
    assert!(victim.exists(), "a record owned by another user was acted on");

    // Root's, but writable by others: refused.
    std::os::unix::fs::chown(&rec, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (_, out, _) = run_chaos_env(&["cleanup", "--json"], &env);
    assert!(out.contains("can be written by others"), "{out}");
    assert!(victim.exists());

    // A directory others can write: every record in it refused.
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (_, out, _) = run_chaos_env(&["cleanup", "--json"], &env);
    assert!(out.contains("can be written by others"), "{out}");
    assert!(victim.exists());

    // Root's alone, in a root-only directory: acted on (the change proves itself by its marker).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (_, out, _) = run_chaos_env(&["cleanup", "--json"], &env);
    let swept: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(swept["undone"], 1, "{swept}");
    assert!(!victim.exists() && !rec.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_forged_filter_record_never_removes_another_tools_filter() {
    let _all = shared();
    // Another tool's cls_bpf filter on a device of the sandbox, and a record that names it with a
    // program id that is not the one it runs: the sweep must leave it.
    let sb = Sandbox::new();
    sb.client_tc(&["qdisc", "add", "dev", &sb.client_dev, "clsact"]);
    sb.client_tc(&["filter", "add", "dev", &sb.client_dev, "egress", "prio", "7", "handle", "1", "bpf", "bytecode", "1,6 0 0 4294967295"]);
    let dir = std::env::temp_dir().join(unique("chaos-state-"));
    std::fs::create_dir(&dir).expect("state dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let netns = sb.netns_path(Place::Target);
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns).unwrap());
    let out = std::process::Command::new("ip").args(["-n", &sb.client_ns, "-o", "link", "show", &sb.client_dev]).output().expect("ip");
    let ifindex: u32 = String::from_utf8_lossy(&out.stdout).split(':').next().unwrap().trim().parse().expect("ifindex");
    let change = format!(
        r#"{{"kind":"tc_filter","netns":{{"ino":{ino},"path":"{}"}},"ifindex":{ifindex},"ifname":"{}","parent":4294967283,"prog_id":4000000}},{{"kind":"clsact","netns":{{"ino":{ino},"path":"{}"}},"ifindex":{ifindex},"ifname":"{}"}}"#,
        netns.display(),
        sb.client_dev,
        netns.display(),
        sb.client_dev
    );
    std::fs::write(dir.join("forged2.json"), forged_record("forged2", &change)).unwrap();
    let (code, out, err) = run_chaos_env(&["cleanup", "--json"], &[("CHAOS_STATE_DIR", dir.to_str().unwrap())]);
    assert_eq!(code, 0, "{err:?}");
    let swept: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(swept["undone"], 0, "{swept}");
    let filters = std::process::Command::new("ip").args(["netns", "exec", &sb.client_ns, "tc", "filter", "show", "dev", &sb.client_dev, "egress"]).output().expect("tc");
    let filters = String::from_utf8_lossy(&filters.stdout);
    assert!(filters.contains("pref 7"), "the other tool's filter is still there:\n{filters}");
    assert!(sb.client_qdiscs().contains("clsact"), "and so is the clsact it uses");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A target busy on the host's loopback while chaos starts: the kernel checks attach the
/// session's own TC program to `lo` for an instant, with no targets yet, and the target's packets
/// then must not be remembered as a bystander's (they were, in the program's cgroup cache: the
/// fault then never applied; seen as one experiment in four doing nothing beside another).
#[test]
fn a_target_busy_while_chaos_checks_the_kernel_is_still_a_target() {
    let _all = shared();
    let sb = Sandbox::new();
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback port");
    let to = sink.local_addr().expect("addr").to_string();
    // In the host's namespace, in the sandbox's cgroup: its datagrams cross the host's lo.
    let mut cmd = std::process::Command::new(chaos_bin());
    cmd.args(["workload", "udp-send", "--to", &to, "--count", "1000000", "--rate", "100000"]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let flood = Proc::new(chaos_user::sandbox::spawn_in(&mut cmd, Some(&sb.cgroup.path), None).expect("spawning udp-send"), "udp-send".into());
    std::thread::sleep(Duration::from_millis(300));
    let cg = sb.cgroup.path.display().to_string();
    let (code, out, err) = run_chaos(&["net", "drop", "--cgroup", &cg, "--percent", "100", "--proto", "udp", "--for", "2s", "--json"]);
    drop(flood);
    assert_eq!(code, 0, "{err:?}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("summary JSON");
    let (_, matched, _, dropped) = rule0(&summary);
    assert!(matched > 1000 && dropped == matched, "the target's datagrams matched and dropped: matched {matched}, dropped {dropped}: {summary}");
}

/// Two sessions on one cgroup and one device (tcx links side by side, or two netlink filters at
/// different priorities on 6.1): each drops its own port and counts exactly its own packets, and
/// when one ends the other goes on, still whole.
#[test]
fn two_sessions_on_one_cgroup_and_device_each_count_exactly_their_own() {
    let _all = shared();
    let sb = Sandbox::new();
    let (a, b, c) = (6321u16, 6322u16, 6323u16);
    let first = start_chaos(&drop_args(&sb, &a.to_string()));
    let mut second = start_chaos(&drop_args(&sb, &b.to_string()));
    let _ = session_id(&mut second);
    assert_eq!(udp(&sb, a, 100), 0, "the first session drops its port");
    assert_eq!(udp(&sb, b, 100), 0, "the second session drops its port");
    assert_eq!(udp(&sb, c, 100), 100, "a port neither names passes");
    let one = stop_chaos(first);
    assert_eq!(counter(&one, 0, "dropped"), 100, "the first counted its own 100: {one}");
    assert_eq!(counter(&one, 0, "matched"), 100, "and matched none of the other's: {one}");
    assert_eq!(udp(&sb, a, 100), 100, "the first's port passes once it ended");
    assert_eq!(udp(&sb, b, 100), 0, "the second still drops its port after the first ended");
    let two = stop_chaos(second);
    assert_eq!(counter(&two, 0, "dropped"), 200, "the second counted its own 200: {two}");
    assert_eq!(counter(&two, 0, "matched"), 200, "{two}");
    assert!(!sb.client_qdiscs().contains("clsact"), "nothing of either is left on the device:\n{}", sb.client_qdiscs());
}
