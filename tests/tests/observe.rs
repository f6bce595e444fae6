//! `chaos observe`: a target's syscalls counted exactly (a bystander's never), its errors by
//! errno, its time in the right latency bucket; and bad input refused.

use std::{process::Command, process::Stdio, time::Duration};

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
    let child = Command::new(chaos_bin())
        .args(["observe", "--cgroup", &cg, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning chaos observe");
    let mut observe = Proc::new(child, "chaos observe".into());
    observe.wait_for("chaos: observing", START);
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
