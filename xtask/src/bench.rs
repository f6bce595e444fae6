//! `cargo xtask bench`: what chaos costs, measured side by side with the baseline and the peers in
//! one run (interleaved rounds, medians, the spread of the per-round ratios), written to
//! BENCHMARKS.md as one table schema every part adds rows to:
//!
//! | measure | baseline | with chaos | peer | ratio | spread over rounds | goal | met? |
//!
//! Parts: per-packet kernel time beside floor programs (`chaos workload packet-time`, host); the
//! cost to a workload's traffic (host, loopback); then `tests/tests/bench_peers.rs`, whose rows
//! come back as `BENCH| {json}` lines: on the host (chaos beside `strace -e inject=` for the calls
//! this kernel can fail, the cost over a veth pair), in the errinj qemu guest where every backend,
//! fq and netem exist (chaos beside strace and `tc netem`), and a session's footprint on the host
//! and in every guest lane. Timings are never test assertions; goals are reported, met or not.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::vm::{Lane, Tests};

const ROUNDS: usize = 3;
const PACKET_ROUNDS: usize = 5;

/// One row of the table. `ratio` is chaos over baseline (over the peer where there is no
/// baseline, or where `ratio_of` is "peer"); `spread` the lowest and highest per-round ratio.
#[derive(Debug, Default, Deserialize)]
pub struct Row {
    pub section: String,
    pub measure: String,
    pub baseline: Option<f64>,
    pub chaos: f64,
    pub peer: Option<f64>,
    pub peer_name: Option<String>,
    pub ratio: Option<f64>,
    pub spread: Option<(f64, f64)>,
    pub goal: Option<String>,
    pub met: Option<bool>,
    /// "peer" when `ratio` is chaos over the peer although there is a baseline (a delay's
    /// quantiles, where netem configured the same way is the reference and the workload alone
    /// only shows the floor); the peer's cell then leaves out its own ratio to the baseline.
    #[serde(default)]
    pub ratio_of: Option<String>,
    /// For a figure of chaos's own (no baseline): the lowest and highest of its rounds.
    #[serde(default)]
    pub range: Option<(f64, f64)>,
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        // Two significant digits, so that a small figure (0.0021 MiB/s) does not show as 0.00.
        format!("{v:.*}", (1 - a.log10().floor() as i32) as usize)
    }
}

/// A ratio as its cell shows it (after the ×): two decimals, or two significant digits below 0.1.
fn times(x: f64) -> String {
    if x != 0.0 && x.abs() < 0.1 { num(x) } else { format!("{x:.2}") }
}

fn render(rows: &[Row]) -> String {
    let mut md = String::new();
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = &r.section;
            let _ = writeln!(md, "\n### {section}\n");
            let _ = writeln!(md, "| measure | baseline | with chaos | peer | ratio | spread over rounds | goal | met? |");
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
        }
        let peer = match (r.peer, &r.peer_name) {
            (Some(p), Some(n)) => match r.baseline {
                Some(b) if r.ratio_of.as_deref() != Some("peer") => format!("{n}: {} (×{})", num(p), times(p / b)),
                _ => format!("{n}: {}", num(p)),
            },
            _ => "—".into(),
        };
        let measure = match r.range {
            Some((lo, hi)) => format!("{}; rounds {}–{}", r.measure, num(lo), num(hi)),
            None => r.measure.clone(),
        };
        let _ = writeln!(
            md,
            "| {measure} | {} | {} | {peer} | {} | {} | {} | {} |",
            r.baseline.map(num).unwrap_or_else(|| "—".into()),
            num(r.chaos),
            r.ratio.map(|x| format!("×{}", times(x))).unwrap_or_else(|| "—".into()),
            r.spread.map(|(a, b)| format!("×{}–{}", times(a), times(b))).unwrap_or_else(|| "—".into()),
            r.goal.as_deref().unwrap_or("—"),
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    md
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(ratios: &[f64]) -> (f64, f64) {
    (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(f64::MIN, f64::max))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chaos() -> PathBuf {
    crate::chaos_binary()
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = procfs::process::Process::myself().and_then(|p| p.mountinfo()).context("reading /proc/self/mountinfo")?;
    mounts.into_iter().find(|m| m.fs_type == "cgroup2").map(|m| m.mount_point).context("no cgroup2 mount")
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

/// Ends a session as an operator would (SIGTERM) and waits for it to exit.
fn end_chaos(mut k: Killed) -> Result<()> {
    Command::new("kill").args(["-TERM", &k.0.id().to_string()]).status()?;
    k.0.wait()?;
    Ok(())
}

/// Starts a 0% drop on `cgroup` (both directions) and waits until it is injecting.
fn start_chaos(cgroup: &Path) -> Result<Killed> {
    let mut c = Killed(
        Command::new(chaos())
            .args(["net", "drop", "--percent", "0", "--direction", "both", "--for", "10m", "--cgroup"])
            .arg(cgroup)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let mut r = BufReader::new(c.0.stderr.take().expect("piped"));
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 && !line.contains("injecting") {
        line.clear();
    }
    if !line.contains("injecting") {
        bail!("chaos net drop on {} ended before injecting", cgroup.display());
    }
    Ok(c)
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
    let started = Instant::now();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut rows = packet_time()?;
    let cg = cgroup2_mount()?.join(format!("chaos-bench-{}", std::process::id()));
    std::fs::create_dir(&cg).with_context(|| format!("creating {}", cg.display()))?;
    let traffic = traffic(&cg);
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_dir(&cg);
    rows.extend(traffic?);

    let host = host_rows(HOST_SECTIONS)?;
    let errinj = guest_rows(Lane::Errinj, ERRINJ_SECTIONS)?;
    let (mut footprints, host): (Vec<Row>, Vec<Row>) = host.into_iter().partition(is_footprint);
    let (errinj_footprint, errinj): (Vec<Row>, Vec<Row>) = errinj.into_iter().partition(is_footprint);
    footprints.extend(errinj_footprint);
    for lane in [Lane::DebianCloud, Lane::Debian612Cloud] {
        footprints.extend(guest_rows(lane, "footprint")?);
    }

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "`cargo xtask bench` on kernel {} ({} CPUs), {:.0} s. Every figure is measured side by side with its baseline in one run,\n\
         in interleaved rounds; the value is the median, the spread the lowest and highest per-round ratio. Goals are\n\
         reported, not test gates.",
        kernel.trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        started.elapsed().as_secs_f64()
    )?;
    writeln!(md, "\n## On the host\n")?;
    writeln!(
        md,
        "Per-packet kernel time: the kernel's own accounting (`BPF_ENABLE_STATS`: run_time_ns / run_cnt) while a sender in the\n\
         target cgroup sends 100,000 64-byte UDP datagrams over loopback. The first three rows' rules are `net.drop` at 1 in a\n\
         million, so each packet is parsed, matched, rolled and counted; the last three are one rule of each action with\n\
         per-packet state of its own (a loss model's chain, a police token bucket, a stall's flow table), set to act on\n\
         nothing. The baseline is the floor: an empty `cgroup_skb` program with one\n\
         counter and one random draw, built by the project and attached to the same cgroup in the same run. On this machine\n\
         (return-thunk and retpoline mitigations) a helper call costs tens of ns: the floor makes one, chaos's decision three\n\
         (the packet's cgroup, the clock, the draw)."
    )?;
    part(
        &mut md,
        "Traffic: chaos's own workloads over loopback, the client in a cgroup made for the run, alone and with\n\
         `chaos net drop --percent 0 --direction both` on its cgroup.",
        &rows,
    );
    part(
        &mut md,
        "Then `tests/tests/bench_peers.rs`, natively: chaos beside `strace -e inject=` for the calls this kernel can fail, and\n\
         the cost to traffic over a veth pair; a section whose fault or peer the kernel lacks is left out (`chaos probe`\n\
         shows what it has).",
        &host,
    );
    part(
        &mut md,
        "## Against the peers, in the errinj qemu guest\n\n\
         The errinj kernel has every backend, sch_fq and netem: `tests/tests/bench_peers.rs` measures chaos there beside\n\
         `strace -e inject=` and `tc netem` and the workload alone. Software emulation (TCG): absolute times are slow;\n\
         compare the ratios. The socket calls besides connect, which use the same cgroup hooks, are measured on the host only.",
        &errinj,
    );
    part(
        &mut md,
        "## A session's footprint, per lane\n\n\
         The same measurement (`tests/tests/bench_peers.rs`, section `footprint`) natively on the host and in each qemu\n\
         guest lane, under software emulation there: a guest's times are slow, its memory comparable.",
        &footprints,
    );
    // The long forms' sections (`cargo xtask fuzz`, `soak`) are theirs to rewrite: kept as they are.
    let path = crate::workspace_root().join("BENCHMARKS.md");
    md.push_str(&crate::long_form::kept(&std::fs::read_to_string(&path).unwrap_or_default()));
    print!("{md}");
    std::fs::write(path, md)?;
    Ok(())
}

/// Adds a part of the document: its text (a paragraph, or a heading and one), then its rows.
fn part(md: &mut String, text: &str, rows: &[Row]) {
    let _ = writeln!(md, "\n{text}");
    *md += &render(rows);
}

/// The sections of tests/tests/bench_peers.rs each place runs (CHAOS_BENCH_SECTIONS). The host
/// lacks netem and fq (their sections would leave themselves out); the errinj guest leaves out the
/// socket calls besides connect (the same cgroup hooks, and a chaos start takes seconds under
/// emulation); the Debian lanes run the footprint only.
const HOST_SECTIONS: &str = "observe,syscalls,sockcalls,holds,packets,footprint";
const ERRINJ_SECTIONS: &str = "observe,syscalls,holds,packets,delay,faults,footprint";

/// The start of the footprint section's title in tests/tests/bench_peers.rs, whose rows from every
/// lane make one table.
const FOOTPRINT: &str = "A session's footprint";

fn is_footprint(r: &Row) -> bool {
    r.section.starts_with(FOOTPRINT)
}

/// A benchmark row's JSON in a line of output (`BENCH| {json}`), if the line has one.
pub fn bench_line(line: &str) -> Option<&str> {
    line.split_once("BENCH| ").map(|(_, b)| b.trim_end())
}

/// The rows of `lines` (`bench_line`s) that `place` printed; an error if none, or one is not a row.
fn rows_of(lines: &[String], place: &str) -> Result<Vec<Row>> {
    let rows = lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("the benchmark {place} printed a row that is not one: {l}")))
        .collect::<Result<Vec<Row>>>()?;
    if rows.is_empty() {
        bail!("the benchmark {place} printed no rows");
    }
    Ok(rows)
}

const BENCH_TEST: [&str; 3] = ["--ignored", "--nocapture", "bench_peers_side_by_side"];

/// tests/tests/bench_peers.rs natively, its `sections`: its rows. Its output passes through.
fn host_rows(sections: &str) -> Result<Vec<Row>> {
    eprintln!("bench: tests/tests/bench_peers.rs on the host ({sections})");
    let mut c = crate::cmd::cargo();
    c.args(["test", "--release", "-p", "chaos-tests", "--test", "bench_peers", "--"])
        .args(BENCH_TEST)
        .env("CHAOS_BENCH_SECTIONS", sections)
        .env("CHAOS_LANE", "host")
        .env("CHAOS_BIN", chaos())
        .stderr(Stdio::piped());
    let mut child = Killed(c.spawn().with_context(|| format!("could not start {}", crate::cmd::show(&c)))?);
    let mut lines = Vec::new();
    for line in BufReader::new(child.0.stderr.take().expect("piped")).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(b) = bench_line(&line) {
            lines.push(b.to_string());
        }
    }
    let status = child.0.wait()?;
    if !status.success() {
        bail!("the benchmark on the host failed ({status}): its output is above");
    }
    rows_of(&lines, "on the host")
}

/// tests/tests/bench_peers.rs in `lane`'s qemu guest, its `sections`: its rows.
fn guest_rows(lane: Lane, sections: &str) -> Result<Vec<Row>> {
    let place = format!("in the {} guest", lane.name());
    let outcome = crate::vm::prepare(lane, &BENCH_TEST.map(String::from), Tests::Only(&["bench_peers"]), &[("CHAOS_BENCH_SECTIONS", sections.into())])?
        .boot()
        .with_context(|| format!("the benchmark {place}"))?;
    if let Some(problem) = outcome.problem {
        bail!("the benchmark {place} did not complete: {problem}");
    }
    rows_of(&outcome.bench, &place)
}

/// `chaos workload packet-time`: rows per configuration, the floor as baseline.
fn packet_time() -> Result<Vec<Row>> {
    eprintln!("bench: per-packet kernel time ({PACKET_ROUNDS} rounds)");
    let out = Command::new(chaos())
        .args(["workload", "packet-time", "--rounds", &PACKET_ROUNDS.to_string(), "--packets", "100000"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("chaos workload packet-time failed");
    }
    let samples: Vec<serde_json::Value> = String::from_utf8(out.stdout)?.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mut configs: Vec<String> = Vec::new();
    for s in &samples {
        let c = s["config"].as_str().unwrap_or_default().to_string();
        if !configs.contains(&c) {
            configs.push(c);
        }
    }
    let mut rows = Vec::new();
    for c in configs {
        let of = |k: &str| -> Vec<f64> { samples.iter().filter(|s| s["config"] == c.as_str()).map(|s| s[k].as_f64().unwrap_or(0.0)).collect() };
        let (chaos, floor, floor_tc) = (of("chaos_tc_ns"), of("floor_cgroup_skb_ns"), of("floor_tc_ns"));
        let ratios: Vec<f64> = chaos.iter().zip(&floor).map(|(c, f)| c / f.max(1e-9)).collect();
        let (m, f) = (median(chaos), median(floor));
        let goal = c.contains("other cgroups").then(|| "≤ ×2 the floor".to_string());
        rows.push(Row {
            section: "Per-packet kernel time (ns per packet; baseline: the floor program)".into(),
            measure: format!("{}, {c}", samples.iter().find(|s| s["config"] == c.as_str()).and_then(|s| s["program"].as_str()).unwrap_or("chaos_tc_egress")),
            baseline: Some(f),
            chaos: m,
            peer: Some(median(floor_tc)),
            peer_name: Some("empty TC floor".into()),
            ratio: Some(m / f),
            spread: Some(spread(&ratios)),
            met: goal.as_ref().map(|_| m / f <= 2.0),
            goal,
            ..Default::default()
        });
    }
    Ok(rows)
}

/// A goal as shown and whether a ratio meets it.
type Goal = Option<(&'static str, fn(f64) -> bool)>;

/// The cost to a workload's traffic over loopback, alone and with a 0% rule.
fn traffic(cg: &Path) -> Result<Vec<Row>> {
    let port = free_port()?;
    let _server = spawn_ready(&["workload", "rr-server", "--bind", &format!("127.0.0.1:{port}"), "--max", "10m"])?;
    let (mut base, mut with) = (Sample::default(), Sample::default());
    for round in 0..ROUNDS {
        eprintln!("bench: traffic round {}/{ROUNDS}", round + 1);
        measure(cg, port, &mut base)?;
        let chaos = start_chaos(cg)?;
        measure(cg, port, &mut with)?;
        end_chaos(chaos)?;
    }
    let row = |measure: &str, b: &[f64], w: &[f64], goal: Goal| {
        let ratios: Vec<f64> = w.iter().zip(b).map(|(w, b)| w / b.max(1e-9)).collect();
        let (bm, wm) = (median(b.to_vec()), median(w.to_vec()));
        Row {
            section: "Cost to the target's traffic (loopback; baseline: the workload alone)".into(),
            measure: measure.into(),
            baseline: Some(bm),
            chaos: wm,
            ratio: Some(wm / bm),
            spread: Some(spread(&ratios)),
            goal: goal.map(|g| g.0.to_string()),
            met: goal.map(|g| g.1(wm / bm)),
            ..Default::default()
        }
    };
    Ok(vec![
            row("request/response rate (req/s, offered 2000/s)", &base.rps, &with.rps, None),
            row("request latency p50 (µs)", &base.p50, &with.p50, None),
            row("request latency p99 (µs)", &base.p99, &with.p99, None),
            row("TCP bulk throughput over lo (MiB/s)", &base.mbps, &with.mbps, Some(("≥ ×0.97", |r| r >= 0.97))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_figures_keep_two_significant_digits() {
        assert_eq!(num(0.0021), "0.0021");
        assert_eq!(num(0.049), "0.049");
        assert_eq!(num(0.5), "0.50");
        assert_eq!(num(-0.35), "-0.35");
        assert_eq!(num(0.0), "0.00");
        assert_eq!(num(2.5), "2.50");
        assert_eq!(num(42.0), "42.0");
        assert_eq!(num(101.9), "102");
        assert_eq!(times(0.00028), "0.00028");
        assert_eq!(times(0.5), "0.50");
        assert_eq!(times(1.0), "1.00");
    }

    #[test]
    fn a_row_over_the_peer_leaves_out_the_peers_ratio_to_the_baseline() {
        let over_peer = r#"{"section":"s","measure":"m","baseline":1.05,"chaos":101.96,"peer":101.93,"peer_name":"netem",
            "ratio":1.0003,"ratio_of":"peer","spread":[1.0002,1.0029],"goal":null,"met":null}"#;
        let over_baseline = r#"{"section":"s","measure":"t","baseline":170.0,"chaos":0.049,"peer":6.5,"peer_name":"netem",
            "ratio":0.00029,"spread":[0.00026,0.0028],"goal":null,"met":null}"#;
        let rows: Vec<Row> = [over_peer, over_baseline].iter().map(|j| serde_json::from_str(j).expect("a row")).collect();
        let md = render(&rows);
        assert!(md.contains("| m | 1.05 | 102 | netem: 102 | ×1.00 | ×1.00–1.00 | — | — |"), "{md}");
        assert!(md.contains("| t | 170 | 0.049 | netem: 6.50 (×0.038) | ×0.00029 | ×0.00026–0.0028 | — | — |"), "{md}");
    }

    #[test]
    fn a_figure_of_chaos_own_shows_the_range_of_its_rounds() {
        let line = r#"BENCH| {"section":"f","measure":"host (6.18, native): from the command to the fault active (ms)","chaos":434.2,"range":[415.27,468.9],"goal":"≤ 100 ms on the host","met":false}"#;
        let rows = rows_of(&[bench_line(line).expect("a row's line").to_string()], "here").expect("rows");
        let md = render(&rows);
        assert!(md.contains("| host (6.18, native): from the command to the fault active (ms); rounds 415–469 | — | 434 | — | — | — | ≤ 100 ms on the host | **no** |"), "{md}");
        assert!(rows_of(&["{\"section\":1}".to_string()], "here").is_err(), "a line that is not a row is an error");
        assert!(rows_of(&[], "here").is_err(), "no rows is an error");
    }
}
