//! `chaos apply FILE`: many faults of different kinds on nested cgroups in one session, each rule
//! with exact counters; `--dry-run`; and bad files as one line with file:line:column.

use std::time::Duration;

use chaos_tests::*;

const T: Duration = Duration::from_secs(60);

/// Sends `n` UDP datagrams to the server's port from a process in `cgroup`; returns how many the
/// server received.
fn udp_from(sb: &Sandbox, cgroup: &std::path::Path, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    let sent = sb.spawn_at(cgroup, Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "2000"]).json(T);
    assert_eq!((sent["sent"].as_u64(), sent["errors"].as_u64()), (Some(n), Some(0)), "{sent}");
    let got = sink.json(T);
    assert_eq!(got["rcvbuf_errors"], 0, "{got}");
    got["received"].as_u64().expect("received")
}

/// Runs `n` connects from `cgroup` to a listener in the client namespace; returns (ok, refused).
fn connects_from(sb: &Sandbox, cgroup: &std::path::Path, port: u16, n: u64) -> (u64, u64) {
    let r = sb.spawn_at(cgroup, Place::Target, &["syscall-loop", "--call", "connect", "--to", &format!("127.0.0.1:{port}"), "--count", &n.to_string()]).json(T);
    (r["ok"].as_u64().unwrap_or(0), r["errors"][libc::ECONNREFUSED.to_string()].as_u64().unwrap_or(0))
}

#[test]
fn a_file_of_mixed_faults_on_nested_cgroups_counts_each_rule_exactly() {
    let sb = Sandbox::new();
    let outer = sb.child_cgroup("a");
    let inner = sb.child_cgroup("a/b");
    let opens = sb.child_cgroup("o");
    let netns = sb.netns_path(Place::Target).display().to_string();
    // An open fault fails exec too, so its caller exists before the session starts; it gets the
    // file-open fault only where this lane has a backend for it.
    let open_backend = lane_has("bpf_lsm") || lane_has("fmod_ret_security") || lane_has("kprobe_override");
    let file_path = std::env::temp_dir().join(unique("chaos-apply-open-"));
    std::fs::write(&file_path, b"x").expect("test file");
    let mut opener = sb.spawn_at(&opens, Place::Target, &["syscall-loop", "--wait", "--call", "open", "--path", file_path.to_str().unwrap(), "--count", "200"]);
    opener.ready();
    let mut listener = sb.spawn(Place::Bystander, &["rr-server", "--bind", "127.0.0.1:6210", "--max", "170s"]);
    listener.ready();

    let mut text = format!(
        r#"# four faults, three targets, one session
[[fault]]
kind = "net.drop"
cgroup = "{outer}"
netns = ["{netns}"]
percent = 100
proto = "udp"
port = 6201

[[fault]]
kind = "net.drop"
cgroup = "{inner}"
netns = ["{netns}"]
percent = "100%"
proto = "udp"
port = "6202"
max-injections = 50

[[fault]]
kind = "sys.fail"
cgroup = "{inner}"
syscall = "connect"
errno = "ECONNREFUSED"
"#,
        outer = outer.display(),
        inner = inner.display()
    );
    if open_backend {
        text += &format!("\n[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{}\"\nsyscall = \"openat\"\nerrno = \"EIO\"\n", opens.display());
    }
    let file = TempFile::new("chaos-apply-", &text);
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);

    // Inner's packets reach both rules (inner is inside outer); outer's own reach only outer's.
    assert_eq!(udp_from(&sb, &inner, 6201, 100), 0, "outer's rule drops its port for the inner cgroup too");
    assert_eq!(udp_from(&sb, &inner, 6202, 100), 50, "inner's rule drops exactly its 50 and stops");
    assert_eq!(udp_from(&sb, &outer, 6202, 100), 100, "inner's rule never sees outer's own packets");
    assert_eq!(connects_from(&sb, &inner, 6210, 40), (0, 40), "inner's connects are refused");
    assert_eq!(connects_from(&sb, &outer, 6210, 40), (40, 0), "outer's are not");
    opener.go();
    let opened = opener.json(T);
    let summary = stop_chaos(chaos);
    let _ = std::fs::remove_file(&file_path);

    assert_eq!(summary["rules"].as_array().map(Vec::len), Some(3 + open_backend as usize), "{summary}");
    assert_eq!((counter(&summary, 0, "matched"), counter(&summary, 0, "dropped")), (100, 100), "rule 0: {summary}");
    assert_eq!(
        (counter(&summary, 1, "matched"), counter(&summary, 1, "selected"), counter(&summary, 1, "dropped"), counter(&summary, 1, "capped")),
        (100, 100, 50, 50),
        "rule 1 stopped at --max-injections: {summary}"
    );
    assert_eq!((counter(&summary, 2, "seen"), counter(&summary, 2, "failed")), (40, 40), "rule 2: {summary}");
    assert_eq!(summary["rules"][1]["cgroup"], inner.display().to_string());
    if open_backend {
        assert_eq!(opened["errors"][libc::EIO.to_string()], 200, "{opened}");
        assert_eq!(counter(&summary, 3, "failed"), 200, "rule 3: {summary}");
    } else {
        assert_eq!(opened["ok"], 200, "no open fault on this lane: {opened}");
        eprintln!("no file-open backend on the {} lane: the file ran without its open fault", lane());
    }
    assert!(summary["kernel_errors"].as_object().expect("errors").values().all(|v| v == 0), "{summary}");
}

#[test]
fn a_fault_waits_for_its_after_and_the_session_runs_until_the_last_one_ends() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let file = TempFile::new(
        "chaos-apply-after-",
        &format!(
            "[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\npercent = 100\nproto = \"udp\"\nfor = \"1s\"\n\n\
             [[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\npercent = 100\nproto = \"udp\"\nafter = \"2s\"\nfor = \"1s\"\n"
        ),
    );
    let started = std::time::Instant::now();
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let summary = chaos.json(Duration::from_secs(30));
    assert_eq!(summary["ended_by"], "deadline");
    assert!(started.elapsed() >= Duration::from_secs(3), "the session lasted until the second fault's end: {:?}", started.elapsed());
    assert_eq!(summary["rules"][1]["after_s"], 2.0);
}

#[test]
fn dry_run_resolves_checks_and_prints_what_would_attach_without_attaching() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let file = TempFile::new(
        "chaos-apply-dry-",
        &format!(
            "[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\npercent = 100\nproto = \"udp\"\ndirection = \"both\"\n\n\
             [[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cg}\"\nsyscall = \"connect\"\nerrno = \"EPERM\"\n"
        ),
    );
    let (code, out, err) = run_chaos(&["apply", file.path(), "--dry-run"]);
    assert_eq!(code, 0, "{err:?}");
    assert!(out.contains("dry run: nothing was attached"), "{out}");
    assert!(out.contains("rule 0 (net.drop)") && out.contains("rule 1 (sys.fail)"), "{out}");
    assert!(out.contains("TC egress") && out.contains(&sb.client_dev), "the devices of the namespace are named: {out}");
    assert!(out.contains("cgroup_skb/ingress") && out.contains("connect4"), "{out}");
    let (code, out, _) = run_chaos(&["net", "drop", "--cgroup", &cg, "--percent", "5", "--dry-run", "--json", "--netns", &netns]);
    assert_eq!(code, 0);
    let view: Value = serde_json::from_str(&out).expect("dry-run --json");
    assert_eq!(view["faults"][0]["kind"], "net.drop");
    // Nothing was attached: a 100% fault in the file would have dropped these.
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", "0.0.0.0:6221", "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:6221"), "--count", "100"]).json(T);
    assert_eq!(sink.json(T)["received"], 100);
}

fn bad_file(content: &str, expect: &str) {
    let file = TempFile::new("chaos-apply-bad-", content);
    let (code, out, err) = run_chaos(&["apply", file.path()]);
    assert_eq!(code, 2, "{content:?}: exit {code}, {err:?}");
    assert_eq!(err.len(), 1, "one line: {err:?}");
    let want = format!("chaos: {}:{expect}", file.path());
    assert!(err[0].starts_with(&want), "{content:?}:\n  got  {:?}\n  want {want:?}...", err[0]);
    assert!(out.is_empty());
}

#[test]
fn a_bad_file_is_one_line_with_its_position_and_exit_2() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    bad_file("[[fault]]\nkind = \"net.drop\"\ncgroup = \"x\n", "3:");
    bad_file("", "1:1: no [[fault]] table");
    bad_file("[[fault]]\nkind = \"net.dorp\"\n", "2:8: unknown kind \"net.dorp\" (did you mean \"net.drop\"?)");
    bad_file(&format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nprecent = 5\n"), "4:1: unknown key `precent` for net.drop (did you mean `percent`?)");
    bad_file(&format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\npercent = 150\n"), "4:11: invalid value '150' for '--percent <P>': 150 is outside 0-100");
    bad_file(&format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\npercent = 5\nmax_injections = 3\n"), "5:1: unknown key `max_injections`");
    bad_file("\n\n[[fault]]\nkind = \"net.drop\"\npercent = 5\n", "3:1: missing required key for net.drop: one of `cgroup`, `pid`, `container`, `pod` or `pods`");
    bad_file(&format!("[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cg}\"\nsyscall = \"openat\"\nerrno = \"EWHAT\"\n"), "5:9: invalid value 'EWHAT'");
    // Resolved after parsing, still named by the fault's place in the file.
    bad_file("[[fault]]\nkind = \"net.drop\"\ncgroup = \"/no/such/cgroup-here\"\npercent = 5\n", "1: no cgroup v2 directory");
    let (code, _, err) = run_chaos(&["apply", "/no/such/file.toml"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("cannot read /no/such/file.toml"), "{err:?}");
}

#[test]
fn a_session_holds_64_rules_each_with_its_own_counters() {
    // 64 rules on one cgroup, one port each: a datagram to port 7000 + k is dropped by rule k
    // alone (rules past the first few are walked in a bpf_loop), and a 65th rule is refused.
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let table = |port: u16| format!("[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\npercent = 100\nproto = \"udp\"\nport = {port}\n\n");
    let text: String = (0..64).map(|k| table(7000 + k)).collect();
    let file = TempFile::new("chaos-apply-64-", &text);
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let hit = [0u16, 3, 4, 5, 31, 62, 63];
    for &k in &hit {
        assert_eq!(udp_from(&sb, &sb.cgroup.path, 7000 + k, 1), 0, "rule {k} drops its port");
    }
    assert_eq!(udp_from(&sb, &sb.cgroup.path, 7100, 3), 3, "no rule for port 7100");
    let summary = stop_chaos(chaos);
    for k in 0..64u16 {
        let want = u64::from(hit.contains(&k));
        assert_eq!((counter(&summary, k as usize, "matched"), counter(&summary, k as usize, "dropped")), (want, want), "rule {k}");
    }
    let too_many = TempFile::new("chaos-apply-65-", &(text + &table(7064)));
    let (code, _, err) = run_chaos(&["apply", too_many.path()]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("65 faults: a session holds at most 64"), "{err:?}");
}
