//! Expiry with chaos wedged: a session that reaches its faults' end but no longer runs its own end
//! (`CHAOS_TEST_WEDGE_AT_END=1`: it spins there, alive and running, as a busy loop or a deadlock
//! would leave it) stops beating to its guardian, and the guardian ends what only user space ends:
//! it thaws the cgroup `proc pause` froze and continues the process `sys delay` holds, with chaos
//! still spinning. Killed, the wedged chaos leaves nothing behind. A session whose end is slow but
//! that keeps beating (`CHAOS_TEST_WEDGE_AT_END=beat`, as a long fq drain) is left alone.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;

const WEDGE: (&str, &str) = ("CHAOS_TEST_WEDGE_AT_END", "1");
const SLOW_END: (&str, &str) = ("CHAOS_TEST_WEDGE_AT_END", "beat");
/// What the guardian says when it steps in for a wedged session.
const WEDGED_LINE: &str = "is wedged past its faults' end (silent ";

/// By when after the faults' end the guardian has stepped in: its grace (1 s) and bound on silence
/// (3 s) from the last beat, its look (every second), and a margin for a loaded machine.
fn bound() -> Duration {
    if lane() == "host" { Duration::from_secs(8) } else { Duration::from_secs(30) }
}

/// A shell in a cgroup printing the time since boot (/proc/uptime) every 20 ms; killed when dropped.
struct Ticker(Child);

impl Ticker {
    fn start(cgroup: &Path) -> Ticker {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "while :; do read u _ < /proc/uptime; echo $u; sleep 0.02; done"]).stdout(Stdio::piped()).stderr(Stdio::null());
        Ticker(chaos_user::sandbox::spawn_in(&mut cmd, Some(cgroup), None).expect("starting a ticker"))
    }

    /// Ends the ticker; its ticks (uptime ns).
    fn ticks(mut self) -> Vec<u64> {
        let _ = self.0.kill();
        let out = self.0.stdout.take().expect("piped");
        let ticks: Vec<u64> =
            BufReader::new(out).lines().map_while(Result::ok).filter_map(|l| l.trim().parse::<f64>().ok()).map(|s| (s * 1e9) as u64).collect();
        let _ = self.0.wait();
        ticks
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Chaos is alive and running (spinning: state R), neither stopped nor gone.
fn assert_spinning(chaos: &Proc) {
    let state = proc_state(chaos.child.id());
    assert_eq!(state, Some('R'), "chaos is still wedged, spinning (state {state:?})");
}

/// Kills the wedged chaos; nothing of its session is left in `targets` (its guardian undoes what
/// the record still lists).
fn kill_and_check(sb: &Sandbox, chaos: Proc, targets: &[&Path], root_before: &str) -> Vec<String> {
    let pid = chaos.child.id();
    chaos.signal(libc::SIGKILL);
    let (code, _, err) = chaos.finish(Duration::from_secs(10));
    assert_eq!(code, -1, "killed: {err:?}");
    let left = leftovers_after(sb, targets, root_before, pid, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind by the killed, wedged chaos: {left:?}");
    err
}

#[test]
fn a_wedged_session_has_its_paused_target_thawed_by_the_guardian() {
    let sb = Sandbox::new();
    let target = sb.child_cgroup("paused");
    let root_before = sb.client_root_qdisc();
    let ticker = Ticker::start(&target);
    std::thread::sleep(Duration::from_millis(200));
    let window = Duration::from_secs(2);
    let mut chaos = start_chaos_env(&["proc", "pause", "--cgroup", target.to_str().unwrap(), "--for", "2s", "--json"].map(String::from), &[WEDGE]);
    // The window started before chaos said it injects: it ends no later than this.
    let (started, started_up) = (Instant::now(), uptime_ns());
    assert_eq!(freeze_state(&target).0, "1", "frozen while the window is open");
    chaos.wait_for("wedged at the faults' end", window + Duration::from_secs(10));
    assert_eq!(freeze_state(&target).0, "1", "the wedged session has not thawed its target");
    let thawed = thawed_within(&target, (started + window + bound()).saturating_duration_since(Instant::now())).is_some();
    let thawed_after = started.elapsed();
    assert!(thawed, "the target of a wedged session is still frozen {thawed_after:?} after the start: {:?}", freeze_state(&target));
    assert_spinning(&chaos);
    let line = chaos.wait_for(WEDGED_LINE, Duration::from_secs(5));
    assert!(line.contains("thawed the frozen cgroup") && line.contains(target.to_str().unwrap()), "{line}");
    // The target goes on (as it sees it) within the bound of the window's end, not before it.
    std::thread::sleep(Duration::from_millis(300));
    let ticks = ticker.ticks();
    assert!(ticks.len() > 20, "the ticker ticked {} times", ticks.len());
    let (gap, resumed) = ticks.windows(2).map(|w| (w[1].saturating_sub(w[0]), w[1])).max().expect("ticks");
    let resumed_s = resumed.saturating_sub(started_up) as f64 / 1e9;
    eprintln!("the target stood still {:.2} s and went on {resumed_s:.2} s after the start (window {window:?}); {line}", gap as f64 / 1e9);
    assert!(gap as f64 / 1e9 >= window.as_secs_f64() - 0.1, "the target stood still for the window: {} ms", gap / 1_000_000);
    assert!(resumed_s >= window.as_secs_f64() - 0.1, "the target went on before the window's end: {resumed_s:.2} s");
    assert!(resumed_s <= (window + bound()).as_secs_f64(), "the target went on {resumed_s:.2} s after the start");
    assert_spinning(&chaos);
    let err = kill_and_check(&sb, chaos, &[&target], &root_before);
    assert!(!err.iter().any(|l| l.contains("no longer wedged")), "chaos stopped spinning by itself: {err:?}");
}

#[test]
fn a_wedged_session_holds_nobody_past_its_faults_end() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let root_before = sb.client_root_qdisc();
    let mut target = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "getppid", "--count", "2", "--timings"]);
    target.ready();
    let window = Duration::from_secs(3);
    let mut chaos = start_chaos_env(
        &["sys", "delay", "--cgroup", &cg, "--syscall", "getppid", "--delay", "60s", "--when", "1", "--for", "3s", "--json"].map(String::from),
        &[WEDGE],
    );
    let started = Instant::now();
    target.go();
    wait_until_stopped(target.child.id(), window);
    chaos.wait_for("wedged at the faults' end", window + Duration::from_secs(10));
    assert_eq!(proc_state(target.child.id()), Some('T'), "still held once chaos is wedged");
    let out = target.json((started + window + bound()).saturating_duration_since(Instant::now()));
    let continued_after = started.elapsed();
    assert_spinning(&chaos);
    let line = chaos.wait_for(WEDGED_LINE, Duration::from_secs(5));
    assert!(line.contains("continued the processes held in") && line.contains(&cg), "{line}");
    let took: Vec<f64> = out["took_ns"][0].as_array().expect("took_ns").iter().map(|v| v.as_u64().unwrap_or(0) as f64 / 1e6).collect();
    eprintln!("held {:.0} ms, continued {continued_after:.2?} after the start (window {window:?}); {line}", took[0]);
    assert!(took[0] >= 1000.0 && took[1] < 500.0, "the first call was held, the second not: {took:?} ms");
    assert!(continued_after >= window, "continued before the faults' end: {continued_after:?}");
    assert_spinning(&chaos);
    let err = kill_and_check(&sb, chaos, &[&sb.cgroup.path], &root_before);
    assert!(!err.iter().any(|l| l.contains("no longer wedged")), "chaos stopped spinning by itself: {err:?}");
}

/// The negative: a session past its faults' end whose end is slow but that keeps beating is not
/// taken for wedged: its target stays frozen until the session itself thaws it, well past the
/// time the guardian would have stepped in for a silent one; no guardian line; a clean end.
#[test]
fn a_slow_end_that_beats_is_left_to_the_session() {
    let sb = Sandbox::new();
    let target = sb.child_cgroup("paused");
    let root_before = sb.client_root_qdisc();
    let _ticker = Ticker::start(&target);
    let window = Duration::from_secs(2);
    let mut chaos = start_chaos_env(&["proc", "pause", "--cgroup", target.to_str().unwrap(), "--for", "2s", "--json"].map(String::from), &[SLOW_END]);
    let started = Instant::now();
    chaos.wait_for("a slow end", window + Duration::from_secs(10));
    // The guardian's grace and bound on silence, its look and a margin, all past: a silent session
    // would have been thawed by now (the slow end lasts 8 s).
    let look = started + window + Duration::from_millis(6500);
    std::thread::sleep(look.saturating_duration_since(Instant::now()));
    let state = freeze_state(&target);
    let chaos_state = proc_state(chaos.child.id());
    assert!(!chaos.stderr_seen.iter().any(|l| l.contains("slow end is over")), "the slow end ended before the check: raise it");
    assert_eq!(state.0, "1", "the guardian thawed the target of a session that beats ({:?} after the start)", started.elapsed());
    assert!(matches!(chaos_state, Some('S' | 'R')), "chaos runs: {chaos_state:?}");
    let pid = chaos.child.id();
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{err:?}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("no summary ({e}): {out:?}"));
    assert_eq!(counter(&summary, 0, "paused"), 1, "{summary}");
    assert!(err.iter().any(|l| l.contains("the slow end is over")), "{err:?}");
    let guardian: Vec<&String> = err.iter().filter(|l| l.contains("chaos guardian")).collect();
    assert!(guardian.is_empty(), "the guardian stepped in for a session that beats: {guardian:?}");
    assert_eq!(freeze_state(&target), ("0".into(), "0".into()), "the session thawed its target at its end");
    let left = leftovers_after(&sb, &[&target], &root_before, pid, Duration::from_secs(3));
    assert!(left.is_empty(), "left behind: {left:?}");
}
