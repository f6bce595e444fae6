//! `proc pause`: the target's processes stop for the window and go on after it; a bystander's do
//! not stop; a killed chaos, or one stopped past the window's end, leaves the target thawed.
//! `proc kill`: every process of the target, and none beside it, gets the signal once.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;
use serde_json::Value;

/// A shell in `cgroup` printing the monotonic-ish time (ns) every 20 ms.
fn ticker(cgroup: &Path) -> Child {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "while :; do date +%s%N; sleep 0.02; done"]).stdout(Stdio::piped()).stderr(Stdio::null());
    chaos_user::sandbox::spawn_in(&mut cmd, Some(cgroup), None).expect("starting a ticker")
}

fn end(mut t: Child) {
    let _ = t.kill();
    let _ = t.wait();
}

/// Ends a ticker; the longest gap between its ticks, in ms.
fn longest_gap_ms(mut t: Child) -> f64 {
    let _ = t.kill();
    let out = t.stdout.take().expect("piped");
    let ticks: Vec<u64> = BufReader::new(out).lines().map_while(Result::ok).filter_map(|l| l.trim().parse().ok()).collect();
    let _ = t.wait();
    assert!(ticks.len() > 10, "the ticker ticked {} times", ticks.len());
    ticks.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64 / 1e6).fold(0.0, f64::max)
}

#[test]
fn a_paused_target_stops_for_its_window_and_a_bystander_does_not() {
    let sb = Sandbox::new();
    let (target, bystander) = (sb.child_cgroup("paused"), sb.child_cgroup("beside"));
    let (t, b) = (ticker(&target), ticker(&bystander));
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = run_chaos(&["proc", "pause", "--cgroup", target.to_str().unwrap(), "--for", "1s", "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let state = freeze_state(&target);
    let (gap_t, gap_b) = (longest_gap_ms(t), longest_gap_ms(b));
    assert_eq!(code, 0, "{err:?}");
    let summary: Value = serde_json::from_str(&out).expect("a JSON summary");
    eprintln!("longest gap: target {gap_t:.0} ms, bystander {gap_b:.0} ms; {}", summary["rules"][0]);
    assert_eq!(state, ("0".into(), "0".into()), "the target is thawed at the end");
    assert!((950.0..1600.0).contains(&gap_t), "the target stood still for the 1 s window, and went on after it: {gap_t} ms");
    assert!(gap_b < 500.0, "the bystander never stopped: {gap_b} ms");
    assert_eq!(counter(&summary, 0, "paused"), 1, "{summary}");
    assert!(counter(&summary, 0, "processes") >= 1, "{summary}");
}

#[test]
fn a_killed_session_leaves_its_target_thawed() {
    let sb = Sandbox::new();
    let target = sb.child_cgroup("paused");
    let t = ticker(&target);
    let chaos = start_chaos(&["proc", "pause", "--cgroup", target.to_str().unwrap(), "--for", "60s"].map(String::from));
    assert_eq!(freeze_state(&target).0, "1", "frozen while the session runs");
    chaos.signal(libc::SIGKILL);
    let took = thawed_within(&target, Duration::from_secs(5));
    end(t);
    assert!(took.is_some(), "the guardian thawed the target after SIGKILL: {:?}", freeze_state(&target));
    eprintln!("thawed {:?} after SIGKILL", took.unwrap());
}

#[test]
fn a_session_stopped_past_its_end_has_its_target_thawed_by_the_guardian() {
    let sb = Sandbox::new();
    let target = sb.child_cgroup("paused");
    let t = ticker(&target);
    let chaos = start_chaos(&["proc", "pause", "--cgroup", target.to_str().unwrap(), "--for", "1s", "--json"].map(String::from));
    chaos.signal(libc::SIGSTOP);
    // The window ends after 1 s; the guardian acts a grace of 1 s later, at its next look (1 s).
    let took = thawed_within(&target, Duration::from_secs(8));
    chaos.signal(libc::SIGCONT);
    let summary = chaos.json(Duration::from_secs(30));
    end(t);
    assert!(took.is_some(), "the guardian thawed the target of a stopped session: {:?}", freeze_state(&target));
    eprintln!("thawed {:?} after the stop", took.unwrap());
    assert_eq!(counter(&summary, 0, "paused"), 1, "the session, continued, ends cleanly: {summary}");
}

fn sleeper(cgroup: &Path) -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdout(Stdio::null()).stderr(Stdio::null());
    chaos_user::sandbox::spawn_in(&mut cmd, Some(cgroup), None).expect("starting a sleeper")
}

/// How `c` ended within `limit`: the signal that killed it, or None if it still runs (then killed).
fn killed_by(mut c: Child, limit: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(status)) = c.try_wait() {
            return status.signal();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

#[test]
fn a_kill_reaches_every_process_of_the_target_and_none_beside_it() {
    let sb = Sandbox::new();
    let (target, bystander) = (sb.child_cgroup("node"), sb.child_cgroup("beside"));
    let inner = sb.child_cgroup("node/worker");
    let (a, b, c) = (sleeper(&target), sleeper(&inner), sleeper(&bystander));
    let (code, out, err) = run_chaos(&["proc", "kill", "--cgroup", target.to_str().unwrap(), "--signal", "TERM", "--for", "1s", "--json"]);
    assert_eq!(code, 0, "{err:?}");
    let (a, b, c) = (killed_by(a, Duration::from_secs(5)), killed_by(b, Duration::from_secs(5)), killed_by(c, Duration::from_millis(200)));
    assert_eq!((a, b), (Some(libc::SIGTERM), Some(libc::SIGTERM)), "both processes of the target (one in a child cgroup) got TERM");
    assert_eq!(c, None, "the bystander was left alone");
    let summary: Value = serde_json::from_str(&out).expect("a JSON summary");
    assert_eq!(counter(&summary, 0, "signalled"), 2, "{summary}");
}
