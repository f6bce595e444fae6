//! `chaos observe`: a target's syscalls counted exactly (a bystander's never), its errors by
//! errno, its time in the right latency bucket; and bad input refused.

use std::time::Duration;

use chaos_tests::*;

/// Starts `syscall-loop --wait` in the main thread at `place`.
fn caller(sb: &Sandbox, place: Place, call: &str, path: &str, n: u64) -> Proc {
    let mut p = sb.spawn(place, &["syscall-loop", "--wait", "--same-thread", "--call", call, "--path", path, "--count", &n.to_string()]);
    p.ready();
    p
}

/// The row of `syscall` in an observe summary (`{}` if it made no call).
fn row<'a>(summary: &'a Value, syscall: &str) -> &'a Value {
    static NONE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    summary["syscalls"].as_array().and_then(|rows| rows.iter().find(|r| r["syscall"] == syscall)).unwrap_or_else(|| NONE.get_or_init(|| serde_json::json!({})))
}

#[test]
fn observe_counts_a_targets_calls_exactly_with_errors_and_latency() {
    assert!(lane_has("tp_btf_signal"), "every lane has tp_btf");
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let dir = std::env::temp_dir().join(unique("chaos-observe-"));
    std::fs::create_dir_all(&dir).expect("test directory");
    let missing = dir.join("missing").display().to_string();
    let here = dir.display().to_string();
    let loops = |place| [caller(&sb, place, "getppid", &here, 1000), caller(&sb, place, "open", &missing, 50), caller(&sb, place, "nanosleep", &here, 20)];
    let (target, bystander) = (loops(Place::Target), loops(Place::Bystander));
    let observe = start_observe(&["--cgroup", &cg, "--json"]);
    for p in target.into_iter().chain(bystander) {
        let mut p = p;
        p.go();
        let out = p.json(Duration::from_secs(60));
        assert!(out["calls"].as_u64().is_some(), "{out}");
    }
    let summary = stop_chaos(observe);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary["ended_by"], "SIGINT", "{summary}");
    assert_eq!(row(&summary, "getppid")["calls"], 1000, "the target's getppid calls, not the bystander's: {summary}");
    assert_eq!(row(&summary, "getppid")["errors"], serde_json::json!({}), "{summary}");
    let openat = row(&summary, "openat");
    assert_eq!(openat["errors"]["ENOENT"], 50, "each failed open, by errno: {summary}");
    let sleep = row(&summary, "nanosleep");
    assert_eq!(sleep["calls"], 20, "{summary}");
    // 5 ms lies in the bucket [4.19, 8.39) ms; a loaded machine may sleep longer, never shorter.
    let p50 = sleep["p50_ns"].as_u64().unwrap_or(0);
    assert!((4_194_304..=67_108_864).contains(&p50), "nanosleep p50 {p50} ns: {summary}");
    assert!(sleep["total_ns"].as_u64().unwrap_or(0) >= 20 * 5_000_000, "20 sleeps of 5 ms at least: {summary}");
}

#[test]
fn observe_refuses_bad_input_with_the_reason() {
    for (args, says) in [
        (vec!["observe"], "--cgroup"),
        (vec!["observe", "--cgroup", "/no/such/cgroup-chaos-test"], "cgroup"),
        (vec!["observe", "--pid", "1", "--syscall", "opne"], "did you mean open"),
    ] {
        let (code, _, err) = run_chaos(&args);
        assert_eq!((code, err.len()), (2, 1), "{args:?}: {err:?}");
        assert!(err[0].contains(says), "{args:?}: {err:?}");
    }
}

/// The observed cgroup's traffic: a target's TCP transfer counted in its bytes out (a
/// bystander's equal transfer not), the ACKs in, and with 10% of its packets dropped by a chaos
/// fault beside the observation, its TCP retransmissions, as many as the sender's socket counted.
#[test]
fn observe_counts_a_targets_traffic_and_retransmissions() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let observe = start_observe(&["--cgroup", &cg, "--json"]);
    // 4 MiB: some 140 segments of 64 KB (TSO), so 10% loss misses them all with a chance of 1e-7 (1 MiB: 2%, seen in CI).
    let bytes: u64 = 4 << 20;
    let send = |place, port: u16| {
        let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", &format!("0.0.0.0:{port}")]);
        sink.ready();
        let out = sb.spawn(place, &["tcp-send", "--to", &format!("{SERVER_V4}:{port}"), "--bytes", &bytes.to_string()]).json(Duration::from_secs(120));
        sink.json(Duration::from_secs(120));
        out
    };
    let mut drop = vec!["net", "drop", "--percent", "10", "--proto", "tcp", "--for", "120s", "--json"].into_iter().map(String::from).collect::<Vec<_>>();
    drop.extend(sb.target_args());
    let fault = start_chaos(&drop);
    let target = send(Place::Target, 6201);
    stop_chaos(fault);
    let bystander = send(Place::Bystander, 6202);
    let summary = stop_chaos(observe);
    let net = &summary["network"];
    let out = net["bytes_out"].as_u64().unwrap_or(0);
    assert!(out >= bytes && out < bytes * 3 / 2, "the target's 4 MiB and its headers and resends, not the bystander's: {net} ({bystander})");
    assert!(net["packets_in"].as_u64().unwrap_or(0) > 0 && net["packets_out"].as_u64().unwrap_or(0) > 0, "{net}");
    let retransmits = net["tcp_retransmits"].as_u64().unwrap_or(0);
    assert!(retransmits > 0, "10% loss makes TCP resend: {net} (sender: {target})");
    if let Some(sender) = target["retransmits"].as_u64() {
        assert_eq!(retransmits, sender, "each resend the sender's socket counted: {net} {target}");
    }
}

/// Killed with SIGKILL, an observation leaves nothing attached: its programs and links go with
/// the process (never pinned).
#[test]
fn nothing_of_an_observation_stays_after_sigkill() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let mut observe = start_observe(&["--cgroup", &cg]);
    let (programs, links) = attached_ids(&observe.wait_for("attached:", Duration::from_secs(5)));
    assert_eq!((programs.len(), links.len()), (5, 5), "sys_enter, sys_exit, egress, ingress, sock_ops: {programs:?} {links:?}");
    assert!(still_loaded(&programs, &links).len() == 10, "live while observing");
    observe.signal(libc::SIGKILL);
    let _ = observe.finish(Duration::from_secs(10));
    assert_all_gone(&programs, &links, "after SIGKILL");
}

/// On a terminal, `chaos observe` redraws its table every interval (clear, then the table of the
/// calls since the last frame), then prints its summary once it ends.
#[test]
fn on_a_terminal_observe_redraws_its_table_each_interval() {
    if !host_only("the terminal display, user space's alone") {
        return;
    }
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let dir = std::env::temp_dir().join(unique("chaos-observe-tty-"));
    std::fs::create_dir_all(&dir).expect("test directory");
    let _cleanup = RemoveOnDrop(dir.clone());
    // 5 ms sleeps for about 3 s, all the while observed.
    let mut sleeper = caller(&sb, Place::Target, "nanosleep", &dir.display().to_string(), 600);
    sleeper.go();
    let (code, out) = chaos_on_a_terminal(&["observe", "--cgroup", &cg, "--for", "2s", "--interval", "400ms"]);
    let _ = sleeper.json(Duration::from_secs(60));
    assert_eq!(code, 0, "{out}");
    let frames: Vec<&str> = out.split("\x1b[H\x1b[2J").skip(1).collect();
    assert!((3..=7).contains(&frames.len()), "a frame every 400 ms for 2 s: {} in {out:?}", frames.len());
    assert!(frames.iter().filter(|f| f.contains("nanosleep")).count() >= 2, "the target's sleeps in the frames: {out:?}");
    let last = frames.last().copied().unwrap_or_default();
    assert!(last.contains("ended by deadline"), "the summary after the last frame: {last:?}");
}
