//! Benchmarks against the peers: `strace -e inject=` for syscall faults and `tc netem` for packet
//! faults, each side by side with the workload alone and with chaos, in one run, as ratios.
//! `cargo xtask bench` runs this inside the errinj guest (the kernel that has every backend, fq and
//! netem); each row is printed as a `BENCH| {json}` line in the schema xtask/src/bench.rs owns, and
//! lands in BENCHMARKS.md. Ignored in test runs: a timing is never a pass/fail assertion.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use chaos_tests::*;
use chaos_user::sandbox::{TempCgroup, spawn_in};

const ROUNDS: usize = 3;
const OPENS: u64 = 10_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One row of the benchmark table (see xtask/src/bench.rs): `rounds` are (baseline, chaos, peer)
/// per round; the ratio is chaos over the baseline.
/// A goal as shown and whether a ratio meets it.
type Goal<'a> = Option<(&'a str, fn(f64) -> bool)>;

fn row(section: &str, measure: &str, rounds: &[(f64, f64, Option<f64>)], peer_name: Option<&str>, goal: Goal) {
    let ratios: Vec<f64> = rounds.iter().map(|(b, c, _)| c / b).collect();
    let (b, c) = (median(rounds.iter().map(|r| r.0).collect()), median(rounds.iter().map(|r| r.1).collect()));
    let peer = rounds.iter().filter_map(|r| r.2).collect::<Vec<_>>();
    let peer = (!peer.is_empty()).then(|| median(peer));
    let spread = (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(f64::MIN, f64::max));
    let json = serde_json::json!({
        "section": section, "measure": measure, "baseline": b, "chaos": c, "peer": peer, "peer_name": peer_name,
        "ratio": c / b, "spread": spread, "goal": goal.map(|g| g.0), "met": goal.map(|g| g.1(c / b)),
    });
    eprintln!("BENCH| {json}");
}

/// Seconds for OPENS open+close calls by a process in `cg`, optionally under strace.
fn open_loop(cg: &TempCgroup, path: &str, strace: bool) -> f64 {
    let count = OPENS.to_string();
    let chaos = chaos_bin().display().to_string();
    let mut argv: Vec<&str> = Vec::new();
    if strace {
        // Traces openat and arms an injection that never fires (at call 65535, strace's largest; OPENS is below it): the cost of the peer's
        // mechanism itself, as chaos's rules below run at 0%.
        argv.extend(["strace", "-f", "-o", "/dev/null", "-e", "trace=openat", "-e", "inject=openat:error=ENOENT:when=65535"]);
    }
    argv.extend([chaos.as_str(), "workload", "syscall-loop", "--call", "open", "--path", path, "--count", &count]);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = Proc::new(spawn_in(&mut cmd, Some(&cg.path), None).expect("spawn"), "open loop".into()).json(Duration::from_secs(600));
    assert_eq!(out["ok"].as_u64(), Some(OPENS), "{out}");
    out["secs"].as_f64().expect("secs")
}

fn syscalls(report: &Value) {
    let cg = TempCgroup::new(&unique("bench")).expect("cgroup");
    let file = std::env::temp_dir().join(unique("bench-file"));
    std::fs::write(&file, b"x").expect("file");
    let path = file.display().to_string();
    let cgs = cg.path.display().to_string();
    let backends: Vec<(&str, &str)> = [("lsm", "bpf_lsm"), ("fmod-ret", "fmod_ret_security"), ("kprobe", "kprobe_override")]
        .into_iter()
        .filter(|(_, probe_name)| backend(report, probe_name).0)
        .collect();
    let mut base = Vec::new();
    let mut with: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
    let mut traced = Vec::new();
    for _ in 0..ROUNDS {
        base.push(open_loop(&cg, &path, false));
        for (i, (b, _)) in backends.iter().enumerate() {
            let chaos = start_chaos(
                &["sys", "fail", "--cgroup", &cgs, "--syscall", "openat", "--errno", "ENOENT", "--percent", "0", "--backend", b, "--for", "10m", "--json"]
                    .map(String::from),
            );
            with[i].push(open_loop(&cg, &path, false));
            stop_chaos(chaos);
        }
        traced.push(open_loop(&cg, &path, true));
    }
    let section = format!("Syscall faults in the errinj guest: {OPENS} open+close calls by a process in the target cgroup (µs per call; baseline: the workload alone; peer: strace -e inject=, armed, not firing)");
    let us = |secs: f64| secs * 1e6 / OPENS as f64;
    for (i, (b, _)) in backends.iter().enumerate() {
        let rounds: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|r| (us(base[r]), us(with[i][r]), Some(us(traced[r])))).collect();
        row(&section, &format!("chaos sys fail --backend {b}, rule at 0% (every call decided, none failed)"), &rounds, Some("strace"), Some(("≤ ×1.05", |r| r <= 1.05)));
    }
    let _ = std::fs::remove_file(&file);
}

/// (request p50 µs, request p99 µs, TCP MiB/s) from the target to the server across the veth.
fn traffic(sb: &Sandbox, port: u16) -> (f64, f64, f64) {
    let to = format!("{SERVER_V4}:{port}");
    let rr = sb
        .spawn(Place::Target, &["rr-client", "--to", &to, "--rate", "200", "--duration", "3s", "--interval", "4s"])
        .json(Duration::from_secs(60));
    let bytes: u64 = 64 << 20;
    let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", &format!("0.0.0.0:{}", port + 1)]);
    sink.ready();
    let tcp = sb
        .spawn(Place::Target, &["tcp-send", "--to", &format!("{SERVER_V4}:{}", port + 1), "--bytes", &bytes.to_string()])
        .json(Duration::from_secs(120));
    sink.json(Duration::from_secs(120));
    let mibs = bytes as f64 / (1 << 20) as f64 / tcp["secs"].as_f64().expect("secs");
    (rr["p50_ms"].as_f64().unwrap_or(0.0) * 1000.0, rr["p99_ms"].as_f64().unwrap_or(0.0) * 1000.0, mibs)
}

fn packets() {
    let sb = Sandbox::new();
    let mut server = sb.spawn(Place::Server, &["rr-server", "--bind", &format!("{SERVER_V4}:5701"), "--max", "20m"]);
    server.ready();
    let mut drop_args: Vec<String> = ["net", "drop", "--percent", "0", "--direction", "both", "--for", "10m", "--json"].map(String::from).to_vec();
    drop_args.extend(sb.target_args());
    let (mut base, mut chaos, mut netem) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(traffic(&sb, 5701));
        let run = start_chaos(&drop_args);
        chaos.push(traffic(&sb, 5701));
        stop_chaos(run);
        sb.client_tc(&["qdisc", "replace", "dev", &sb.client_dev, "root", "netem", "loss", "0%"]);
        netem.push(traffic(&sb, 5701));
        sb.client_tc(&["qdisc", "del", "dev", &sb.client_dev, "root"]);
    }
    let section = "Packet faults in the errinj guest: traffic from the target cgroup over a veth pair (baseline: the workload alone; chaos: net drop --percent 0 --direction both, every packet decided; peer: tc netem loss 0% on the same device)";
    for (name, f, goal) in [
        ("request latency p50 (µs)", (|t: &(f64, f64, f64)| t.0) as fn(&(f64, f64, f64)) -> f64, None),
        ("request latency p99 (µs)", |t| t.1, None),
        ("TCP bulk throughput (MiB/s)", |t| t.2, Some(("≥ ×0.97", (|r| r >= 0.97) as fn(f64) -> bool))),
    ] {
        let rounds: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|r| (f(&base[r]), f(&chaos[r]), Some(f(&netem[r])))).collect();
        row(section, name, &rounds, Some("netem"), goal);
    }
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it inside the errinj guest"]
fn bench_peers_side_by_side() {
    let report = probe_report();
    syscalls(&report);
    packets();
}
