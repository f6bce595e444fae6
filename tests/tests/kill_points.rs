//! Kill points: `chaos` SIGKILLed right after each step of a session's life (every journal write,
//! the guardian's start, each attach, the clsact and fq changes, the first held process, the
//! rules' start and end, each detach; the steps `CHAOS_TEST_KILL_AT` names) and at random
//! moments, with one rule of every fault kind this kernel can run, in one session. Afterwards,
//! once the guardian (or, failing it, `chaos cleanup`) has acted, nothing of the session is left:
//! no program or link of it (any would hold its maps, which name the target), TC filter, clsact
//! or changed qdisc, stopped process, record or made cgroup.
//!
//! The host runs every step and `CHAOS_KILL_RANDOM` random moments (12 unless set; `cargo xtask
//! soak` sets 100); a guest lane every fifth step and 3 random moments.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_common::loss::Prng;
use chaos_tests::*;
use chaos_user::sandbox::{TempCgroup, spawn_in};

const KILL_AT_ENV: &str = "CHAOS_TEST_KILL_AT";

/// One table per fault kind (net.rate twice: shaping and policing), with the backends it needs
/// (`chaos probe`'s names). `{cg}` and `{ns}` are the target's cgroup and network namespace. Every
/// rule ends by itself after a second.
const CANDIDATES: &[(&[&str], &str)] = &[
    (&["cgroup_skb"], "kind = \"net.drop\"\npercent = 10\nproto = \"udp\"\nport = 7101"),
    (&["cgroup_skb"], "kind = \"net.partition\"\npeer = \"192.0.2.0/24\""),
    (&["sch_fq"], "kind = \"net.delay\"\ndelay = \"20ms\""),
    // Both directions: TC ingress (a second tcx link or netlink filter per device) joins in.
    (&["tc_ingress_socket"], "kind = \"net.duplicate\"\npercent = 10\ndirection = \"both\""),
    (&["cgroup_skb"], "kind = \"net.corrupt\"\npercent = 10"),
    (&["sch_fq"], "kind = \"net.rate\"\nrate = \"10mbit\""),
    (&["cgroup_skb"], "kind = \"net.rate\"\nrate = \"10mbit\"\npolice = true"),
    (&["sch_fq"], "kind = \"net.reorder\"\npercent = 50\ndelay = \"10ms\""),
    (&["cgroup_skb"], "kind = \"net.stall\"\nafter-bytes = \"1mb\""),
    (&["cgroup_skb"], "kind = \"net.dns\"\nrcode = \"servfail\""),
    (&["cgroup_sock_addr"], "kind = \"sys.fail\"\nsyscall = \"connect\"\nerrno = \"ECONNREFUSED\""),
    (&["fmod_ret_syscall"], "kind = \"sys.fail\"\nsyscall = \"mkdir\"\nerrno = \"EACCES\""),
    (&["tp_btf_signal"], "kind = \"sys.signal\"\nsyscall = \"rmdir\"\nsignal = \"TERM\""),
    (&["tp_btf_signal"], "kind = \"sys.delay\"\nsyscall = \"nanosleep\"\ndelay = \"100ms\""),
];

/// Process faults, on a cgroup of their own holding one sleeper: a freeze on the sandbox's target
/// would keep sys.delay's worker from ever calling, and a kill would end it. proc.kill sends URG,
/// which the sleeper ignores, so every run finds it there.
const OWN_CGROUP: &[(&[&str], &str)] = &[
    (&["cgroup_freezer"], "kind = \"proc.pause\""),
    (&[], "kind = \"proc.kill\"\nsignal = \"URG\""),
];

/// The fault file: every candidate whose backends this lane has (`lane_has`, which
/// `tests/tests/probe.rs` holds `chaos probe` to), each lasting a second. Chosen by expectation,
/// not by a dry run per kind: fourteen at once, each verifying its programs, took over two minutes
/// in an emulated guest.
fn every_kind_here(sb: &Sandbox, own: &Path) -> (TempFile, Vec<&'static str>) {
    let mut kinds = Vec::new();
    let mut text = String::new();
    let on_target = CANDIDATES.iter().map(|(needs, body)| (needs, body, sb.cgroup.path.as_path()));
    let on_own = OWN_CGROUP.iter().map(|(needs, body)| (needs, body, own));
    for (_, body, cgroup) in on_target.chain(on_own).filter(|(needs, _, _)| needs.iter().all(|b| lane_has(b))) {
        text += &fault_table(sb, cgroup, body, "1s");
        text += "\n";
        kinds.push(body.lines().next().unwrap_or_default().trim_start_matches("kind = ").trim_matches('"'));
    }
    assert!(kinds.len() >= 4, "too few fault kinds run here to test: {kinds:?}");
    (TempFile::new("chaos-kill-points-", &text), kinds)
}

/// One run of the session: killed after step `at` (or at `after`, or never).
struct Run {
    killed: bool,
    pid: u32,
    steps: Vec<String>,
    /// From the start to the first step (loading and verifying the programs came before), and
    /// to the end.
    first_step: Option<Duration>,
    took: Duration,
}

fn run_session(file: &TempFile, at: Option<u32>, after: Option<Duration>) -> Run {
    let mut cmd = Command::new(chaos_bin());
    cmd.args(["apply", file.path()]).env(KILL_AT_ENV, at.unwrap_or(0).to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().expect("spawning chaos");
    let pid = child.id();
    let mut p = Proc::new(child, format!("chaos apply (kill at {at:?} / {after:?})"));
    let mut first_step = None;
    match after {
        Some(d) => {
            std::thread::sleep(d);
            p.signal(libc::SIGKILL);
        }
        None if at.is_none() => {
            p.wait_for("chaos: step 1:", Duration::from_secs(60));
            first_step = Some(started.elapsed());
        }
        None => {}
    }
    let status_of = |p: Proc| {
        let (code, _, err) = p.finish(Duration::from_secs(60));
        (code, err)
    };
    let (code, err) = status_of(p);
    let took = started.elapsed();
    let steps: Vec<String> = err.iter().filter(|l| l.starts_with("chaos: step ")).cloned().collect();
    // Proc::finish gives -1 for a death by signal.
    let killed = code == -1;
    assert!(killed || code == 0, "chaos exited {code} (kill at {at:?}/{after:?}): {err:?}");
    Run { killed, pid, steps, first_step, took }
}

/// Kills, then checks: what was found at once, and that the guardian (within 3 s) or else
/// `chaos cleanup` left nothing. Returns a line for the report.
fn kill_and_check(s: &Setup, at: Option<u32>, after: Option<Duration>) -> (Run, String) {
    let (sb, root_before) = (&s.sb, s.root_before.as_str());
    let run = run_session(&s.file, at, after);
    let targets = [sb.cgroup.path.as_path(), s.own.path.as_path()];
    let at_kill = leftovers(sb, &targets, root_before, run.pid);
    let mut left = leftovers_after(sb, &targets, root_before, run.pid, Duration::from_secs(3));
    let by = if left.is_empty() {
        "the guardian"
    } else {
        let (code, _, err) = run_chaos(&["cleanup"]);
        assert_eq!(code, 0, "chaos cleanup: {err:?}");
        left = leftovers(sb, &targets, root_before, run.pid);
        "chaos cleanup"
    };
    let last = run.steps.last().map(String::as_str).unwrap_or("(before the first step)");
    assert!(left.is_empty(), "killed after {last}: still there after the guardian and chaos cleanup: {left:?} (found at the kill: {at_kill:?})");
    let line = format!("{last}: {} found at the kill {at_kill:?}, none after {by}", at_kill.len());
    (run, line)
}

struct Setup {
    // Dropped in this order: the processes before their cgroups.
    _worker: Proc,
    _sleeper: Proc,
    sb: Sandbox,
    own: TempCgroup,
    file: TempFile,
    root_before: String,
    _dir: RemoveOnDrop,
}

fn setup() -> Setup {
    let sb = Sandbox::new();
    let own = TempCgroup::new(&format!("chaos-test-{}", unique("kp"))).expect("a cgroup for the process faults");
    let mut sleep = Command::new("sleep");
    sleep.arg("300").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let sleeper = Proc::new(spawn_in(&mut sleep, Some(&own.path), None).expect("a sleeper"), "sleep 300".into());
    let (file, kinds) = every_kind_here(&sb, &own.path);
    eprintln!("kinds in the session: {}", kinds.join(", "));
    // A process of the target that sys.delay holds (the "first stopped process" step): 5 ms
    // sleeps, bounded to 5 minutes.
    let dir = temp_dir("chaos-kill-worker-");
    let mut worker = sb.spawn(Place::Target, &["syscall-loop", "--call", "nanosleep", "--path", dir.0.to_str().expect("utf-8"), "--count", "60000", "--wait"]);
    worker.ready();
    worker.go();
    let root_before = sb.client_root_qdisc();
    Setup { _worker: worker, _sleeper: sleeper, sb, own, file, root_before, _dir: dir }
}

fn guest() -> bool {
    lane() != "host"
}

#[test]
fn a_kill_after_any_step_of_a_session_leaves_nothing_behind() {
    let s = setup();
    // A whole run, counting the steps.
    let (full, _) = kill_and_check(&s, None, None);
    assert!(!full.killed, "the full run was killed");
    let n = full.steps.len() as u32;
    for want in ["attached", "journal: saved", "rules started", "rules ended"] {
        assert!(full.steps.iter().any(|l| l.contains(want)), "no step '{want}' among {:?}", full.steps);
    }
    if lane_has("tp_btf_signal") {
        assert!(full.steps.iter().any(|l| l.contains("the first stopped")), "sys.delay held nobody: {:?}", full.steps);
    }
    let every = if guest() { 5 } else { 1 };
    let mut report = Vec::new();
    for at in (1..=n).filter(|k| k % every == 0 || *k == n) {
        let (run, line) = kill_and_check(&s, Some(at), None);
        assert!(run.killed, "not killed at step {at} of {n}: {:?}", run.steps);
        assert_eq!(run.steps.len() as u32, at, "steps seen before the kill at {at}: {:?}", run.steps);
        report.push(format!("  step {at}/{n} {line}"));
    }
    eprintln!("kill points ({} of {n} steps):\n{}", report.len(), report.join("\n"));
}

#[test]
fn a_kill_at_a_random_moment_leaves_nothing_behind() {
    let s = setup();
    let (full, _) = kill_and_check(&s, None, None);
    let count: u32 = std::env::var("CHAOS_KILL_RANDOM").ok().and_then(|v| v.parse().ok()).unwrap_or(if guest() { 3 } else { 12 });
    let seed = std::env::var("CHAOS_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::process::id() as u64);
    let mut rng = Prng::seeded(seed);
    // Moments from a little before the first step (loading the programs: seconds in an emulated
    // guest, where a moment drawn from the whole run mostly fell there) to the end.
    let from = full.first_step.expect("the full run's first step").mul_f64(0.8).as_micros() as u64;
    let span = (full.took.as_micros() as u64).saturating_sub(from).max(1);
    let mut report = Vec::new();
    let mut killed = 0;
    for i in 0..count {
        let after = Duration::from_micros(from + rng.next_u32() as u64 % span);
        let (run, line) = kill_and_check(&s, None, Some(after));
        killed += u32::from(run.killed);
        report.push(format!("  {i}: at {after:?} ({} steps) {line}", run.steps.len()));
    }
    eprintln!("random kills (seed {seed}, a full run {:?}): {killed} of {count} killed chaos before it ended\n{}", full.took, report.join("\n"));
    // For `cargo xtask soak`'s section of BENCHMARKS.md.
    eprintln!(
        "LONG| - SIGKILL at {count} random moments of a session with a rule of every fault kind the kernel runs (seed {seed}; a whole run {:.1} s): {killed} landed before chaos ended; after each, the guardian or `chaos cleanup` left nothing (the test checks programs, links, TC filters, clsact, changed qdiscs, stopped processes, records and made cgroups).",
        full.took.as_secs_f64()
    );
}
