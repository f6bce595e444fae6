//! Targets are matched by cgroup id, at any depth, from inside a cgroup namespace and through a
//! bind-mounted subtree; a target that contains chaos itself is refused without --force, and
//! chaos's own process is exempt from its faults; the documented capability sets are true.

use std::{process::Command, time::Duration};

use chaos_tests::*;

const T: Duration = Duration::from_secs(60);

/// A chaos command run through `sh -c PREFIX; exec chaos ARGS` (a cgroup move, an unshare, a
/// mount): returns once it is injecting.
fn chaos_via_shell(prefix: &str, args: &[&str]) -> Proc {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("{prefix}exec '{}' {}", chaos_bin().display(), quoted.join(" "));
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).env("RUST_LOG", "info");
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut p = Proc::new(cmd.spawn().expect("sh"), format!("chaos {}", args.join(" ")));
    p.wait_for("chaos: injecting", START);
    p
}

/// `n` connects from `cgroup` to a listener on the client namespace's lo; (ok, refused).
fn connects(sb: &Sandbox, cgroup: &std::path::Path, port: u16, n: u64) -> (u64, u64) {
    let r = sb.spawn_at(cgroup, Place::Target, &["syscall-loop", "--call", "connect", "--to", &format!("127.0.0.1:{port}"), "--count", &n.to_string()]).json(T);
    (r["ok"].as_u64().unwrap_or(0), r["errors"][libc::ECONNREFUSED.to_string()].as_u64().unwrap_or(0))
}

fn udp_from(sb: &Sandbox, cgroup: &std::path::Path, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    sb.spawn_at(cgroup, Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string()]).json(T);
    sink.json(T)["received"].as_u64().expect("received")
}

fn listener(sb: &Sandbox, port: u16) -> Proc {
    let mut l = sb.spawn(Place::Bystander, &["rr-server", "--bind", &format!("127.0.0.1:{port}"), "--max", "60s"]);
    l.ready();
    l
}

/// A session holding as many targets as it may (64) still follows one that is recreated (a
/// container restarted): the new directory's rules take the old one's place in the kernel's table
/// of targets, which has room for 64, and its datagrams are dropped as the old one's were.
#[test]
fn a_recreated_target_is_followed_in_a_session_of_the_most_targets() {
    let sb = Sandbox::new();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let dirs: Vec<std::path::PathBuf> = (0..64).map(|i| sb.child_cgroup(&format!("t{i}"))).collect();
    let mut faults = String::new();
    for d in &dirs {
        faults += &format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{}\"\nnetns = [\"{netns}\"]\npercent = 100\nproto = \"udp\"\nfor = \"60s\"\n\n", d.display());
    }
    let file = TempFile::new("chaos-64-targets-", &faults);
    let mut chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let last = &dirs[63];
    std::fs::remove_dir(last).expect("removing a target's directory");
    std::fs::create_dir(last).expect("making it again");
    let line = chaos.wait_for("was recreated", Duration::from_secs(20));
    assert!(line.contains("its faults now apply to the new cgroup"), "{line}");
    assert_eq!(udp_from(&sb, last, 6511, 50), 0, "the new directory's datagrams are dropped");
    let summary = stop_chaos(chaos);
    let changes = summary["targets_changed"].as_array().unwrap_or_else(|| panic!("no targets_changed: {summary}"));
    assert_eq!((changes.len(), &changes[0]["followed"]), (1, &Value::Bool(true)), "{summary}");
    assert_eq!(counter(&summary, 63, "dropped"), 50, "{summary}");
}

/// A recreated target the session fails to follow (made to fail by a test hook, before anything
/// is done for it) is reported on stderr and in the summary with the reason, once, not retried at
/// each refresh; its new processes are indeed missed, the old directory's were not, and the
/// session ends with nothing left in the kernel.
#[test]
fn a_recreated_target_that_cannot_be_followed_is_reported_once_and_missed() {
    let sb = Sandbox::new();
    let dir = sb.child_cgroup("restarted");
    let netns = sb.netns_path(Place::Target).display().to_string();
    let args: Vec<String> = ["net", "drop", "--cgroup", &dir.display().to_string(), "--netns", &netns, "--percent", "100", "--proto", "udp", "--for", "60s", "--json"]
        .map(String::from)
        .to_vec();
    let mut chaos = start_chaos_env(&args, &[("CHAOS_TEST_FAIL_FOLLOW", "1")]);
    let (programs, links) = attached_ids(&chaos.wait_for("attached:", Duration::from_secs(5)));
    assert_eq!(udp_from(&sb, &dir, 6512, 50), 0, "the first directory's datagrams are dropped");
    std::fs::remove_dir(&dir).expect("removing the target's directory");
    std::fs::create_dir(&dir).expect("making it again");
    let line = chaos.wait_for("was recreated", Duration::from_secs(20));
    assert!(line.contains("the faults may miss its new processes") && line.contains("on purpose") && line.contains("start a new session"), "{line}");
    assert_eq!(udp_from(&sb, &dir, 6513, 50), 50, "the new directory's datagrams are missed, as reported");
    // Two more refreshes at least (one a second): the failure is not tried, nor reported, again.
    std::thread::sleep(Duration::from_millis(2500));
    let summary = stop_chaos(chaos);
    let changes = summary["targets_changed"].as_array().unwrap_or_else(|| panic!("no targets_changed: {summary}"));
    assert_eq!(changes.len(), 1, "reported once: {summary}");
    assert_eq!(changes[0]["followed"], Value::Bool(false), "{summary}");
    assert_eq!(changes[0]["new_id"].as_u64(), Some(cgroup_id(&dir)), "{summary}");
    assert!(changes[0]["error"].as_str().is_some_and(|e| e.contains("on purpose")), "the reason: {summary}");
    assert_eq!((counter(&summary, 0, "matched"), counter(&summary, 0, "dropped")), (50, 50), "only the first directory's datagrams counted: {summary}");
    assert_all_gone(&programs, &links, "after a session that failed to follow its target");
}

#[test]
fn a_target_applies_to_descendants_at_any_depth() {
    let sb = Sandbox::new();
    let top = sb.child_cgroup("a");
    let deep = sb.child_cgroup("a/b/c/d/e");
    let _l = listener(&sb, 6501);
    let netns = sb.netns_path(Place::Target).display().to_string();
    let top_s = top.display().to_string();
    let net = start_chaos(&["net", "drop", "--cgroup", &top_s, "--percent", "100", "--proto", "udp", "--for", "60s", "--json", "--netns", &netns].map(String::from));
    let sys = start_chaos(&["sys", "fail", "--cgroup", &top_s, "--syscall", "connect", "--errno", "ECONNREFUSED", "--for", "60s", "--json"].map(String::from));
    assert_eq!(udp_from(&sb, &deep, 6502, 50), 0, "packets five levels below the target");
    assert_eq!(connects(&sb, &deep, 6501, 30), (0, 30), "calls five levels below the target");
    assert_eq!(connects(&sb, &sb.cgroup.path, 6501, 30), (30, 0), "the target's parent is not the target");
    assert_eq!(counter(&stop_chaos(sys), 0, "failed"), 30);
    assert_eq!(counter(&stop_chaos(net), 0, "dropped"), 50);
}

#[test]
fn targets_resolve_and_match_from_inside_a_cgroup_namespace() {
    // chaos runs in `unshare --cgroup` rooted at its own cgroup, a sibling of the target's: the
    // target process's /proc/PID/cgroup reads "/../t", the cgroup2 mount's root "/../..".
    let sb = Sandbox::new();
    let ctl = sb.child_cgroup("ctl");
    let t = sb.child_cgroup("t");
    let _l = listener(&sb, 6511);
    let mut caller = sb.spawn_at(&t, Place::Target, &["syscall-loop", "--wait", "--call", "connect", "--to", "127.0.0.1:6511", "--count", "40"]);
    caller.ready();
    let pid = caller.child.id().to_string();
    let prefix = format!("echo $$ > '{}/cgroup.procs' && ", ctl.display());
    let chaos = chaos_via_shell(
        &(prefix + "unshare --cgroup sh -c 'cat /proc/self/cgroup >&2' && "),
        &["sys", "fail", "--pid", &pid, "--syscall", "connect", "--errno", "ECONNREFUSED", "--for", "60s", "--json"],
    );
    assert!(chaos.stderr_seen.iter().any(|l| l == "0::/"), "the shell's check ran in a cgroup namespace: {:?}", chaos.stderr_seen);
    caller.go();
    let r = caller.json(T);
    assert_eq!(r["errors"][libc::ECONNREFUSED.to_string()], 40, "{r}");
    chaos.signal(libc::SIGINT);
    let summary = chaos.json(T);
    assert_eq!(summary["rules"][0]["cgroup_id"], std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&t).unwrap()));
    assert_eq!(counter(&summary, 0, "failed"), 40);
}

#[test]
fn targets_match_through_a_bind_mounted_subtree() {
    // In a mount namespace of its own, chaos sees only the sandbox's subtree of the cgroup2
    // hierarchy, bind-mounted elsewhere (mountinfo root "/chaos-test-..."); paths and levels
    // under that mount say nothing of the real depth. Faults must still match.
    let sb = Sandbox::new();
    let t = sb.child_cgroup("t/u");
    let _l = listener(&sb, 6521);
    let mount = chaos_user::target::cgroup2_mount().expect("cgroup2").mount_point;
    let dir = std::env::temp_dir().join(unique("chaos-cgsub-"));
    std::fs::create_dir(&dir).expect("mount point");
    let rel = t.strip_prefix(&sb.cgroup.path).unwrap().display().to_string();
    let target = format!("{}/{rel}", dir.display());
    let netns = sb.netns_path(Place::Target).display().to_string();
    let prefix = format!(
        "exec unshare --mount --propagation private sh -c \"mount --bind '{}' '{}' && umount -l '{}' && exec \\\"\\$0\\\" \\\"\\$@\\\"\" ",
        sb.cgroup.path.display(),
        dir.display(),
        mount.display()
    );
    let run = |args: &[&str]| {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!("{prefix}'{}' {}", chaos_bin().display(), quoted.join(" "));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("RUST_LOG", "info");
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut p = Proc::new(cmd.spawn().expect("sh"), format!("chaos {}", args.join(" ")));
        p.wait_for("chaos: injecting", START);
        p
    };
    let sys = run(&["sys", "fail", "--cgroup", &target, "--syscall", "connect", "--errno", "ECONNREFUSED", "--for", "60s", "--json"]);
    let net = run(&["net", "drop", "--cgroup", &target, "--percent", "100", "--proto", "udp", "--for", "60s", "--json", "--netns", &netns]);
    assert_eq!(connects(&sb, &t, 6521, 25), (0, 25));
    assert_eq!(udp_from(&sb, &t, 6522, 40), 0);
    let sys = stop_chaos(sys);
    assert_eq!(sys["rules"][0]["cgroup"], target, "named as chaos sees it");
    assert_eq!(counter(&sys, 0, "failed"), 25);
    assert_eq!(counter(&stop_chaos(net), 0, "dropped"), 40);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn a_target_that_contains_chaos_is_refused_without_force() {
    let sb = Sandbox::new();
    let inner = sb.child_cgroup("chaos-here");
    let cg = sb.cgroup.path.display().to_string();
    for target in [&inner, &sb.cgroup.path] {
        let script = format!(
            "echo $$ > '{}/cgroup.procs' && exec '{}' net drop --cgroup '{}' --percent 5 --for 2s",
            inner.display(),
            chaos_bin().display(),
            target.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().expect("sh");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("contains chaos itself") && err.contains("--force"), "{err}");
    }
    // With --force it runs, and the target's packets are dropped.
    let netns = sb.netns_path(Place::Target).display().to_string();
    let chaos = chaos_via_shell(
        &format!("echo $$ > '{}/cgroup.procs' && ", inner.display()),
        &["net", "drop", "--cgroup", &cg, "--percent", "100", "--proto", "udp", "--for", "60s", "--json", "--force", "--netns", &netns],
    );
    assert_eq!(udp_from(&sb, &sb.cgroup.path, 6531, 30), 0);
    chaos.signal(libc::SIGINT);
    assert_eq!(counter(&chaos.json(T), 0, "dropped"), 30);
}

#[test]
fn chaos_never_fails_its_own_calls_in_a_target_that_contains_it() {
    // chaos opens files while it runs (/proc, cgroup.procs: it looks for new namespaces every
    // second). In its own cgroup with an open fault (--force), those opens must neither fail nor
    // be counted; only the target process's are.
    if !(lane_has("bpf_lsm") || lane_has("fmod_ret_security")) {
        eprintln!("no file-open backend on the {} lane: the exemption is shown for connect only", lane());
        return;
    }
    let sb = Sandbox::new();
    let file = TempFile::new("chaos-self-", "x");
    let mut opener = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "open", "--path", file.path(), "--count", "100"]);
    opener.ready();
    let cg = sb.cgroup.path.display().to_string();
    let chaos = chaos_via_shell(
        &format!("echo $$ > '{cg}/cgroup.procs' && "),
        &["sys", "fail", "--cgroup", &cg, "--syscall", "openat", "--errno", "EIO", "--for", "60s", "--json", "--force"],
    );
    std::thread::sleep(Duration::from_millis(2500)); // a few of chaos's own refreshes
    opener.go();
    assert_eq!(opener.json(T)["errors"][libc::EIO.to_string()], 100);
    chaos.signal(libc::SIGINT);
    let summary = chaos.json(T);
    assert_eq!(counter(&summary, 0, "seen"), 100, "only the target's opens reached the rule: {summary}");
}

// --- capabilities -------------------------------------------------------------------------------

/// Runs chaos with exactly the capabilities `caps` (setpriv names), as root.
fn chaos_with_caps(caps: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new("setpriv");
    cmd.args([&format!("--bounding-set=-all,{caps}"), "--inh-caps=-all"]).arg(chaos_bin()).args(args).env("RUST_LOG", "info");
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    Proc::new(cmd.spawn().expect("setpriv (util-linux)"), format!("chaos {} with {caps}", args.join(" ")))
}

/// The set for a target in chaos's own network namespace (docs/capabilities.md).
const HOST_SET: &str = "+bpf,+perfmon,+net_admin";
/// The set for a container's target, in another namespace, run by another user.
const CONTAINER_SET: &str = "+bpf,+perfmon,+net_admin,+sys_admin,+sys_ptrace";

#[test]
fn the_documented_capability_sets_are_enough_and_each_missing_one_is_named() {
    let sb = Sandbox::new();
    // An ingress fault on a cgroup: no other namespace to enter.
    let cg = sb.cgroup.path.display().to_string();
    let mut sink = sb.spawn(Place::Target, &["udp-sink", "--bind", "0.0.0.0:6541", "--idle", "500ms"]);
    sink.ready();
    let mut chaos = chaos_with_caps(HOST_SET, &["net", "drop", "--cgroup", &cg, "--direction", "ingress", "--percent", "100", "--for", "60s", "--json"]);
    chaos.wait_for("chaos: injecting", START);
    sb.spawn(Place::Server, &["udp-send", "--to", &format!("{CLIENT_V4}:6541"), "--count", "30"]).json(T);
    assert_eq!(sink.json(T)["received"], 0);
    chaos.signal(libc::SIGINT);
    assert_eq!(counter(&chaos.json(T), 0, "dropped"), 30, "the host set runs an ingress fault");

    // A process of another user in the container's namespace, found by pid: chaos must open its
    // namespace (CAP_SYS_PTRACE) and enter it (CAP_SYS_ADMIN) to put the TC program there.
    let mut target = sb.spawn_as(Place::Target, 65534, &["udp-sink", "--bind", "0.0.0.0:6542", "--idle", "500ms"]);
    target.ready();
    let pid = target.child.id().to_string();
    let args = ["net", "drop", "--pid", &pid, "--percent", "100", "--proto", "icmp", "--for", "2s", "--json"];
    let mut chaos = chaos_with_caps(CONTAINER_SET, &args);
    chaos.wait_for("chaos: injecting", START);
    let summary = chaos.json(T);
    assert_eq!(summary["ended_by"], "deadline", "the container set runs an egress fault on another user's container: {summary}");
    assert!(summary["attached"]["devices"].as_array().is_some_and(|d| d.iter().any(|d| d["ifname"] == sb.client_dev.as_str())), "{summary}");
    for (missing, name) in [("+sys_ptrace", "CAP_SYS_PTRACE"), ("+sys_admin", "CAP_SYS_ADMIN"), ("+net_admin", "CAP_NET_ADMIN")] {
        let set = CONTAINER_SET.replace(&format!(",{missing}"), "").replace(&format!("{missing},"), "");
        let (code, _, err) = chaos_with_caps(&set, &args).finish(T);
        assert_eq!(code, 3, "without {name}: {err:?}");
        assert_eq!(err.len(), 1, "one line: {err:?}");
        assert!(err[0].contains(name), "without {name}, the refusal names it: {err:?}");
    }
    drop(target);
}
