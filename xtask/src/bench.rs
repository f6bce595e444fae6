//! `cargo xtask bench`: what chaos costs the workload it watches, measured side by side with the
//! baseline and the peers in one run (interleaved rounds, medians), reported as ratios in
//! BENCHMARKS.md.
//!
//! Two parts. On the host: chaos's own workloads over loopback, the client in a cgroup made for the
//! run, with and without `chaos net drop --percent 0` (both programs attached, every packet parsed,
//! matched and rolled, none dropped: the pure overhead). In the errinj qemu guest, where every
//! syscall backend, fq and netem exist: `tests/tests/bench_peers.rs`, chaos against
//! `strace -e inject=` and `tc netem`; its table comes back as the guest's `BENCH| ` lines.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const ROUNDS: usize = 3;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chaos() -> PathBuf {
    crate::workspace_root().join("target/release/chaos")
}

fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount")
}

/// Runs `chaos workload ARGS` inside `cgroup` and returns its last stdout line as JSON.
fn workload_in(cgroup: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let procs = cgroup.join("cgroup.procs");
    let script = format!("echo 0 > {} && exec \"$0\" workload \"$@\"", procs.display());
    let out = Command::new("sh").arg("-c").arg(script).arg(chaos()).args(args).output()?;
    if !out.status.success() {
        bail!("workload {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(text.lines().last().unwrap_or("{}"))?)
}

fn spawn_ready(args: &[&str]) -> Result<Killed> {
    let mut c = Killed(Command::new(chaos()).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?);
    let mut line = String::new();
    BufReader::new(c.0.stderr.take().expect("piped")).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("workload {args:?} did not start: {}", line.trim());
    }
    Ok(c)
}

/// A port the kernel says is free now, on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a 0% drop on `cgroup` and waits until it is injecting.
fn start_chaos(cgroup: &Path) -> Result<(Killed, u64)> {
    let mut c = Command::new(chaos())
        .args(["net", "drop", "--percent", "0", "--direction", "both", "--for", "10m", "--cgroup"])
        .arg(cgroup)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut r = BufReader::new(c.stderr.take().expect("piped"));
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 && !line.contains("injecting") {
        line.clear();
    }
    let pid = c.id();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))))
        .unwrap_or(0);
    Ok((Killed(c), rss))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Sample {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    mbps: Vec<f64>,
}

fn measure(cg: &Path, port: u16, s: &mut Sample) -> Result<()> {
    let to = format!("127.0.0.1:{port}");
    let rr = workload_in(cg, &["rr-client", "--to", &to, "--rate", "2000", "--duration", "4s", "--interval", "5s"])?;
    s.rps.push(rr["ok"].as_f64().unwrap_or(0.0) / 4.0);
    s.p50.push(rr["p50_ms"].as_f64().unwrap_or(0.0) * 1000.0);
    s.p99.push(rr["p99_ms"].as_f64().unwrap_or(0.0) * 1000.0);
    let bind = format!("127.0.0.1:{}", free_port()?);
    let _sink = spawn_ready(&["workload", "tcp-sink", "--bind", &bind])?;
    let bytes = 512u64 << 20;
    let tcp = workload_in(cg, &["tcp-send", "--to", &bind, "--bytes", &bytes.to_string()])?;
    s.mbps.push(bytes as f64 / (1 << 20) as f64 / tcp["secs"].as_f64().unwrap_or(1.0));
    Ok(())
}

pub fn run() -> Result<()> {
    let cg = cgroup2_mount()?.join(format!("chaos-bench-{}", std::process::id()));
    std::fs::create_dir(&cg).with_context(|| format!("creating {}", cg.display()))?;
    let result = bench(&cg);
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir(&cg);
    result
}

fn bench(cg: &Path) -> Result<()> {
    let port = free_port()?;
    let _server = spawn_ready(&["workload", "rr-server", "--bind", &format!("127.0.0.1:{port}"), "--max", "10m"])?;
    let (mut base, mut with) = (Sample::default(), Sample::default());
    let mut rss = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        eprintln!("bench: round {}/{ROUNDS}", round + 1);
        measure(cg, port, &mut base)?;
        let (chaos, r) = start_chaos(cg)?;
        rss = rss.max(r);
        measure(cg, port, &mut with)?;
        drop(chaos);
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rows = [
        ("request/response rate (req/s, offered 2000/s)", median(base.rps), median(with.rps)),
        ("request latency p50 (µs)", median(base.p50), median(with.p50)),
        ("request latency p99 (µs)", median(base.p99), median(with.p99)),
        ("TCP bulk throughput over lo (MiB/s)", median(base.mbps), median(with.mbps)),
    ];
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "`cargo xtask bench` on kernel {} ({} rounds interleaved, medians; {:.0} s).", kernel.trim(), ROUNDS, started.elapsed().as_secs_f64())?;
    writeln!(md, "Baseline: the workload alone. With chaos: `chaos net drop --percent 0 --direction both` on the")?;
    writeln!(md, "workload's cgroup, so both programs parse, match and roll every packet and drop none.\n")?;
    writeln!(md, "| measure | baseline | with chaos | ratio |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (name, b, w) in rows {
        writeln!(md, "| {name} | {b:.1} | {w:.1} | {:.3} |", w / b.max(1e-9))?;
    }
    writeln!(md, "\nchaos's own resident memory while injecting: {rss} kB.")?;
    writeln!(md, "\n## Against the peers, in the errinj qemu guest\n")?;
    writeln!(md, "`tc netem` and `strace -e inject=` have nothing to compare against on this host (no sch_netem; no")?;
    writeln!(md, "syscall backend for chaos here), so `tests/tests/bench_peers.rs` measures them inside the errinj")?;
    writeln!(md, "kernel's guest, side by side with chaos and the workload alone.\n")?;
    match crate::vm::run_lane(crate::vm::Lane::Errinj, &["--ignored".into(), "--nocapture".into(), "bench_peers_side_by_side".into()]) {
        Ok(outcome) if outcome.problem.is_none() && !outcome.bench.is_empty() => {
            for line in outcome.bench {
                writeln!(md, "{line}")?;
            }
        }
        Ok(outcome) => bail!("the guest benchmark did not complete: {}", outcome.problem.unwrap_or_else(|| "no table".into())),
        Err(e) => bail!("the guest benchmark lane failed: {e:#}"),
    }
    print!("{md}");
    std::fs::write(crate::workspace_root().join("BENCHMARKS.md"), md)?;
    Ok(())
}
