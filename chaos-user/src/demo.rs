//! `chaos demo`: the method in one minute. A sandbox cgroup with a request/response client in it
//! and a server outside it, both on loopback; measure the steady state, inject a packet drop on
//! the client's cgroup, watch the impact, remove it, and check the return to the steady state.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use chaos_common::net::{DIR_EGRESS, PROTO_TCP};

use crate::{
    cli::DemoArgs,
    error::Result,
    faults::{
        FaultArgs, FaultSpec, TargetArgs,
        net_drop::{NetDrop, NetFilters},
    },
    privileges,
    session::{self, Options, Session},
    sandbox::{TempCgroup, spawn_in},
    target::Cgroup,
    workload::RrInterval,
};

/// Set by Ctrl-C or SIGTERM: the demo stops early and still removes its sandbox.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Kills a child process when dropped (Ctrl-C, errors).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Phase {
    name: &'static str,
    ok: u64,
    errors: u64,
    secs: f64,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl Phase {
    fn add(&mut self, i: &RrInterval, secs: f64) {
        self.ok += i.ok;
        self.errors += i.errors;
        self.secs += secs;
        if i.ok > 0 {
            self.p50.push(i.p50_ms);
            self.p99.push(i.p99_ms);
        }
    }
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
    fn error_pct(&self) -> f64 {
        100.0 * self.errors as f64 / (self.ok + self.errors).max(1) as f64
    }
    /// The median of the interval percentiles: robust to one odd second.
    fn p(&self, which: &[f64]) -> f64 {
        let mut v = which.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

/// How many intervals past the recovery phase the demo waits for the steady state to return.
const RECOVERY_GRACE: usize = 10;

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(args: DemoArgs) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
    privileges::check()?;
    let me = std::env::current_exe().context("finding the chaos binary")?;
    let cg = TempCgroup::new(&format!("chaos-demo-{}", std::process::id()))?;
    let target = Cgroup::from_arg(&cg.path)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port().context("finding a free port")?).parse().expect("valid");
    let phase = args.phase;
    // Phases are counted in the client's one-second intervals, not by the wall clock, so a slow
    // machine (or a slow fault start) cannot squeeze one phase into another. The client runs long
    // enough for all three and the recovery grace, and is stopped after the last.
    let per_phase = phase.as_secs().max(1) as usize;
    let total = phase * 3 + Duration::from_secs(30);

    println!("chaos demo: a client in cgroup {} makes TCP requests to a server on {addr}", target.path.display());
    println!("  method: measure the steady state, inject {}% egress packet drop on the client's cgroup for {}, remove it, check recovery\n", args.percent as f64 / 10_000.0, humantime::format_duration(phase));

    // The session is set up now, its rule waiting; at the phase boundary the rule's window is
    // opened in the kernel, which takes no time, so the fault phase is all fault however long
    // loading and attaching take (seconds under software emulation).
    let fault = NetDrop {
        ppm: args.percent,
        model: None,
        ecn: false,
        filters: NetFilters { directions: DIR_EGRESS, proto: PROTO_TCP, port: None, local_port: None, peer: None, tcp_flags: 0 },
        netns: Vec::new(),
    };
    let description = format!("drop {}% of the client's egress TCP packets", args.percent as f64 / 10_000.0);
    let spec = FaultSpec {
        fault: Box::new(fault),
        args: FaultArgs {
            target: TargetArgs { cgroup: Some(target.path.clone()), pid: None, container: None, pod: None, command: Vec::new() },
            duration: total,
            after: crate::cli::MAX_DURATION,
            max_injections: None,
            force: false,
            seed: None,
        },
        origin: String::new(),
    };
    let mut injection = Some(Session::start(session::plan(vec![spec])?, &Options::default())?);
    let mut started = std::time::Instant::now();

    let mut server = Command::new(&me);
    server.args(["workload", "rr-server", "--bind", &addr.to_string(), "--max"]).arg(format!("{}s", total.as_secs() + 5));
    let mut server = Reaped(server.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().context("starting the demo server")?);
    let mut ready = String::new();
    BufReader::new(server.0.stderr.take().expect("piped")).read_line(&mut ready).context("waiting for the demo server")?;

    let mut client = Command::new(&me);
    client
        .args(["workload", "rr-client", "--to", &addr.to_string(), "--rate", &args.rate.to_string(), "--interval", "1s", "--timeout", "1s"])
        .arg("--duration")
        .arg(format!("{}ms", total.as_millis()))
        .stdout(Stdio::piped());
    let mut client = Reaped(spawn_in(&mut client, Some(&cg.path), None).context("starting the demo client in its cgroup")?);
    let lines = BufReader::new(client.0.stdout.take().expect("piped")).lines();

    let mut seen = 0usize;
    let mut phases = [
        Phase { name: "steady state", ..Default::default() },
        Phase { name: "fault", ..Default::default() },
        Phase { name: "recovery", ..Default::default() },
    ];

    // Recovery is watched, not assumed: after the fault is removed the client still drains the
    // requests it delayed (TCP retransmission timers backed off under loss), so the demo waits
    // for two intervals in a row that look like the steady state, up to `RECOVERY_GRACE` more
    // intervals than the phase, and reports how long that took.
    let mut removed_at = 0.0;
    let mut good_in_a_row = 0;
    let mut good_since = 0.0;
    let mut recovered_after: Option<f64> = None;
    let mut recovery_intervals = 0;
    let mut last_t = 0.0;
    println!("{:>6}  {:<13} {:>8} {:>7} {:>9} {:>9}  kernel: matched/dropped", "t(s)", "phase", "req/s", "errors", "p50(ms)", "p99(ms)");
    for line in lines {
        if STOP.load(std::sync::atomic::Ordering::SeqCst) {
            println!("        --- stopped early: removing the fault and the sandbox ---");
            break;
        }
        let line = line.context("reading the client's output")?;
        let Ok(i) = serde_json::from_str::<RrInterval>(&line) else { continue };
        let idx = (seen / per_phase).min(2);
        seen += 1;
        let secs = i.t - last_t;
        last_t = i.t;
        phases[idx].add(&i, secs);
        if idx == 2 {
            recovery_intervals += 1;
            let steady = &phases[0];
            let like_steady = i.ok as f64 / secs.max(1e-9) > 0.8 * steady.rate()
                && 100.0 * i.errors as f64 / (i.ok + i.errors).max(1) as f64 <= steady.error_pct() + 1.0
                && i.p50_ms < 3.0 * steady.p(&steady.p50).max(1.0);
            good_in_a_row = if like_steady { good_in_a_row + 1 } else { 0 };
            if good_in_a_row == 1 {
                good_since = i.t - secs;
            }
            if good_in_a_row == 2 && recovered_after.is_none() {
                recovered_after = Some(good_since - removed_at);
            }
        }
        let kernel = match &injection {
            Some(s) if idx == 1 => {
                let (matched, injected) = s.totals();
                format!("{matched}/{injected}")
            }
            _ => String::new(),
        };
        println!(
            "{:>6.1}  {:<13} {:>8.0} {:>7} {:>9.2} {:>9.2}  {kernel}",
            i.t, phases[idx].name, i.ok as f64 / secs.max(1e-9), i.errors, i.p50_ms, i.p99_ms
        );
        // Enter and leave the fault at phase boundaries.
        if seen == per_phase {
            if let Some(s) = injection.as_mut() {
                // The kernel's deadline is a bound in case the demo is stopped; removal is below.
                s.start_rule_now(0, phase + Duration::from_secs(30))?;
                started = std::time::Instant::now();
            }
            println!("        --- injecting: {description} ---");
        }
        if seen == 2 * per_phase
            && let Some(s) = injection.take()
        {
            let summary = s.finish("demo", started.elapsed())?;
            let (matched, dropped) = summary.rules.first().map(|r| (r.matched, r.injected)).unwrap_or_default();
            println!("        --- fault removed: kernel matched {matched} packets, dropped {dropped} ---");
            removed_at = i.t;
        }
        if recovery_intervals >= per_phase && (recovered_after.is_some() || recovery_intervals >= per_phase + RECOVERY_GRACE) {
            break;
        }
    }
    drop(injection);
    drop(client);
    drop(server);

    println!("\n{:<13} {:>8} {:>8} {:>9} {:>9}", "phase", "req/s", "errors", "p50(ms)", "p99(ms)");
    for p in &phases {
        println!("{:<13} {:>8.0} {:>7.1}% {:>9.2} {:>9.2}", p.name, p.rate(), p.error_pct(), p.p(&p.p50), p.p(&p.p99));
    }
    if STOP.load(std::sync::atomic::Ordering::SeqCst) {
        println!("\nstopped early: no verdict. The fault was detached and the sandbox removed.");
        return Ok(());
    }
    let (steady, fault) = (&phases[0], &phases[1]);
    let impact = fault.p(&fault.p99) > 2.0 * steady.p(&steady.p99) || fault.errors > steady.errors;
    let recovery = match recovered_after {
        Some(after) if after < 0.5 => "yes, in the first interval after the fault was removed".to_string(),
        Some(after) => format!("yes, {after:.0} s after the fault was removed"),
        None => format!("no, not within {recovery_intervals} s of the fault's removal"),
    };
    println!(
        "\nimpact during the fault: {}\nreturned to the steady state (two intervals in a row at its rate, errors and p50): {recovery}\nnothing left attached: the fault's programs were detached when it ended.",
        if impact { "yes (p99 latency or errors rose)" } else { "none measured" },
    );
    Ok(())
}
