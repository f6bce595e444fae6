//! Benchmarks against the peers: `strace -e inject=` for syscall faults and `tc netem` for packet
//! faults (loss at 0%, and delay: accuracy, jitter, TCP throughput and a long delay at a high
//! rate), each side by side with the workload alone and with chaos, in one run, as ratios; and a
//! session's own footprint. `cargo xtask bench` runs this on the host and inside the guests (the
//! errinj kernel has every backend, fq and netem; the Debian lanes run the footprint); a section
//! whose fault or peer this kernel lacks is left out, and every section's title says where it ran.
//! Each row is printed as a `BENCH| {json}` line in the schema xtask/src/bench.rs owns, and lands
//! in BENCHMARKS.md. Ignored in test runs: a timing is never a pass/fail assertion.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;
use chaos_user::sandbox::{TempCgroup, spawn_in};

const ROUNDS: usize = 3;
const OPENS: u64 = 10_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest and highest of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(f64::MIN, f64::max))
}

/// What this run measures on, for the rows' labels: "host (6.18, native)" (the running kernel's
/// version), "errinj guest (TCG)".
fn machine() -> String {
    match lane() {
        "host" => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let version: Vec<&str> = release.trim().split(['.', '-']).take(2).collect();
            format!("host ({}, native)", version.join("."))
        }
        guest => format!("{guest} guest (TCG)"),
    }
}

/// Where this run measures, for the sections' titles: "on the host (6.18, native)", "in the errinj
/// guest (TCG)".
fn place() -> String {
    format!("{} the {}", if lane() == "host" { "on" } else { "in" }, machine())
}

/// A goal as shown and whether a ratio meets it.
type Goal<'a> = Option<(&'a str, fn(f64) -> bool)>;

/// One row of the benchmark table (see xtask/src/bench.rs): `rounds` are (baseline, chaos, peer)
/// per round; the ratio is chaos over the baseline.
fn row(section: &str, measure: &str, rounds: &[(f64, f64, Option<f64>)], peer_name: Option<&str>, goal: Goal) {
    let ratios: Vec<f64> = rounds.iter().map(|(b, c, _)| c / b).collect();
    let (b, c) = (median(rounds.iter().map(|r| r.0).collect()), median(rounds.iter().map(|r| r.1).collect()));
    let peer = rounds.iter().filter_map(|r| r.2).collect::<Vec<_>>();
    let peer = (!peer.is_empty()).then(|| median(peer));
    let json = serde_json::json!({
        "section": section, "measure": measure, "baseline": b, "chaos": c, "peer": peer, "peer_name": peer_name,
        "ratio": c / b, "spread": spread(&ratios), "goal": goal.map(|g| g.0), "met": goal.map(|g| g.1(c / b)),
    });
    eprintln!("BENCH| {json}");
}

/// A row of a figure of chaos's own, with neither baseline nor peer: the median of `values` (one a
/// round) and their range; `goal` is a bound the median meets when at most it.
fn row_own(section: &str, measure: &str, values: &[f64], goal: Option<(&str, f64)>) {
    let m = median(values.to_vec());
    let json = serde_json::json!({
        "section": section, "measure": measure, "chaos": m, "range": spread(values), "goal": goal.map(|g| g.0), "met": goal.map(|g| m <= g.1),
    });
    eprintln!("BENCH| {json}");
}

/// Connect calls per round (a TCP connection to a listener on loopback, closed at once).
const CONNECTS: u64 = 2_000;

/// Seconds for `count` calls of `syscall-loop ARGS` by a process in `cg`, optionally under
/// `strace -e inject=INJECT` (tracing the injected syscall, with `filter`: strace's `-P PATH`
/// keeps its injection to the workload's own calls, off the dynamic loader's opens). The process
/// is started and made ready first; `armed` runs then, before its first call (a fault that fails
/// every open must not fail its exec). Returns (seconds, calls that failed).
fn call_loop(cg: &std::path::Path, args: &[&str], count: u64, strace: Option<(&str, &[&str])>, armed: &mut dyn FnMut()) -> (f64, u64) {
    let out = call_loop_out(cg, args, count, strace, armed);
    let failed: u64 = out["errors"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
    assert_eq!(out["ok"].as_u64().unwrap_or(0) + failed, count, "{out}");
    (out["secs"].as_f64().expect("secs"), failed)
}

/// [`call_loop`]'s workload report, whole.
fn call_loop_out(cg: &std::path::Path, args: &[&str], count: u64, strace: Option<(&str, &[&str])>, armed: &mut dyn FnMut()) -> Value {
    let chaos = chaos_bin().display().to_string();
    let mut argv: Vec<String> = Vec::new();
    if let Some((inject, filter)) = strace {
        let traced = inject.split(':').next().unwrap_or_default();
        argv.extend(["strace", "-f", "-o", "/dev/null"].map(String::from));
        argv.extend(filter.iter().map(|a| a.to_string()));
        argv.extend(["-e".to_string(), format!("trace={traced}"), "-e".to_string(), format!("inject={inject}")]);
    }
    argv.extend([chaos.as_str(), "workload", "syscall-loop", "--wait"].map(String::from));
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend(["--count".to_string(), count.to_string()]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = Proc::new(spawn_in(&mut cmd, Some(cg), None).expect("spawn"), format!("{args:?} loop"));
    p.ready();
    armed();
    p.go();
    p.json(Duration::from_secs(600))
}

/// One syscall workload measured every way the issue asks: the workload alone; with a chaos rule
/// at 0% (every call decided, none failed) and at 100%, in the target and, for the rule at 0%,
/// in a bystander cgroup beside it; and strace's inject, armed and not firing (at call 65535,
/// strace's largest; the counts are below it) and firing on every call. µs per call.
struct CallBench<'a> {
    what: &'a str,
    args: &'a [&'a str],
    count: u64,
    /// strace's inject=, e.g. "openat:error=ENOENT", and its filter options.
    inject: &'a str,
    filter: &'a [&'a str],
}

/// `fault`: the chaos command without target, percent or backend (`sys fail --syscall openat
/// --errno ENOENT`); `backends`: (label, flags) for each way measured (`--backend lsm`).
/// With no backend (this kernel can fail none of these calls), nothing is measured.
fn call_bench(b: &CallBench, cg: &TempCgroup, bystander: &TempCgroup, fault: &[&str], backends: &[(String, Vec<String>)]) {
    if backends.is_empty() {
        eprintln!("bench: {}: no backend on this kernel can inject the fault; left out", b.what);
        return;
    }
    let (target_s, us) = (cg.path.display().to_string(), |secs: f64| secs * 1e6 / b.count as f64);
    let run = |at: &TempCgroup, strace: Option<&str>, armed: &mut dyn FnMut()| us(call_loop(&at.path, b.args, b.count, strace.map(|i| (i, b.filter)), armed).0);
    let start = |flags: &[String], percent: &str| {
        let mut a: Vec<String> = fault.iter().map(|s| s.to_string()).collect();
        a.extend(["--cgroup", &target_s, "--percent", percent, "--for", "10m", "--json"].map(String::from));
        a.extend(flags.iter().cloned());
        start_chaos(&a)
    };
    // Per backend: (0% target, 0% bystander, 100% target) per round.
    let mut with: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); backends.len()];
    let (mut base, mut base_by, mut armed, mut firing) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The workload alone before and after chaos, each round: (before, after), target and bystander.
    let (mut alone, mut alone_by) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let before = (run(cg, None, &mut || {}), run(bystander, None, &mut || {}));
        for (i, (_, flags)) in backends.iter().enumerate() {
            let chaos = start(flags, "0");
            let (t, by) = (run(cg, None, &mut || {}), run(bystander, None, &mut || {}));
            stop_chaos(chaos);
            let mut session = None;
            let all = run(cg, None, &mut || session = Some(start(flags, "100")));
            stop_chaos(session.expect("started"));
            with[i].push((t, by, all));
        }
        let after = (run(cg, None, &mut || {}), run(bystander, None, &mut || {}));
        // The baseline is the mean of the two, so a drift over the round (a cache warming, the
        // kernel's state growing) favours neither; their ratio is the measurement's own noise.
        base.push((before.0 + after.0) / 2.0);
        base_by.push((before.1 + after.1) / 2.0);
        alone.push((before.0, after.0, None));
        alone_by.push((before.1, after.1, None));
        armed.push(run(cg, Some(&format!("{}:when=65535", b.inject)), &mut || {}));
        firing.push(run(cg, Some(b.inject), &mut || {}));
    }
    let section = format!(
        "Syscall faults {}: {} {} calls by a process in the target cgroup, or in a bystander cgroup beside it (µs per call; baseline: the workload alone in the same cgroup, the mean of a run before chaos and one after in each round; peer: strace -e inject=, armed and not firing for the 0% rows, firing on every call for the 100% rows)",
        place(),
        b.count,
        b.what
    );
    // What a ratio of one is worth here: a "with chaos" no different from the workload alone would
    // read like these.
    row(&section, &format!("{}: the workload alone after chaos, beside alone before it (the noise), target", b.what), &alone, None, None);
    row(&section, &format!("{}: the workload alone after chaos, beside alone before it (the noise), bystander", b.what), &alone_by, None, None);
    for (i, (label, _)) in backends.iter().enumerate() {
        let r = &with[i];
        let at0: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|k| (base[k], r[k].0, Some(armed[k]))).collect();
        row(&section, &format!("{}: chaos {label}, rule at 0%, target", b.what), &at0, Some("strace"), Some(("≤ ×1.05", |r| r <= 1.05)));
        let by: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|k| (base_by[k], r[k].1, None)).collect();
        row(&section, &format!("{}: chaos {label}, rule at 0%, bystander", b.what), &by, None, Some(("≤ ×1.01", |r| r <= 1.01)));
        let at100: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|k| (base[k], r[k].2, Some(firing[k]))).collect();
        row(&section, &format!("{}: chaos {label}, rule at 100% (every call hit)", b.what), &at100, Some("strace"), None);
    }
}

/// (label, `--backend NAME`) for each of `list`'s (backend, its name in `chaos probe`) this kernel
/// has.
fn backends(report: &Value, list: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    list.iter()
        .filter(|(_, probe_name)| backend(report, probe_name).0)
        .map(|(name, _)| (format!("--backend {name}"), vec!["--backend".to_string(), name.to_string()]))
        .collect()
}

fn syscalls(report: &Value) {
    let cg = TempCgroup::new(&unique("bench")).expect("cgroup");
    let bystander = TempCgroup::new(&unique("bench-by")).expect("cgroup");
    let file = std::env::temp_dir().join(unique("bench-file"));
    std::fs::write(&file, b"x").expect("file");
    let path = file.display().to_string();
    let opens = CallBench { what: "open+close", args: &["--call", "open", "--path", &path], count: OPENS, inject: "openat:error=ENOENT", filter: &["-P", &path] };
    call_bench(&opens, &cg, &bystander, &["sys", "fail", "--syscall", "openat", "--errno", "ENOENT"], &backends(report, &[("lsm", "bpf_lsm"), ("fmod-ret", "fmod_ret_security"), ("kprobe", "kprobe_override")]));
    // A listener on loopback for the connect loop, outside both cgroups, with room in its queue
    // for a whole loop's connections: with the standard library's 128, the loop outran the
    // accepting thread natively, and each connection refused then cost the client a SYN
    // retransmitted a second later (1.5 ms a call on average, the spread ×0.6-2.4).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), CONNECTS as i32 * 2) }, 0, "listen");
    let to = listener.local_addr().expect("address").to_string();
    let accepting = std::thread::spawn(move || {
        for c in listener.incoming() {
            if c.is_err() {
                break;
            }
        }
    });
    let connects = CallBench { what: "connect", args: &["--call", "connect", "--to", &to], count: CONNECTS, inject: "connect:error=ECONNREFUSED", filter: &[] };
    call_bench(&connects, &cg, &bystander, &["sys", "fail", "--syscall", "connect", "--errno", "ECONNREFUSED"], &backends(report, &[("cgroup", "cgroup_sock_addr"), ("fmod-ret", "fmod_ret_syscall"), ("kprobe", "kprobe_override")]));
    // sys signal: tp_btf sys_enter runs for every syscall of the machine. SIGCHLD, ignored by
    // default, so the loop lives through a rule at 100%.
    let getppids = CallBench { what: "getppid", args: &["--call", "getppid"], count: OPENS, inject: "getppid:signal=SIGCHLD", filter: &[] };
    let tp_btf = if backend(report, "tp_btf_signal").0 { vec![("sys signal --signal CHLD (tp_btf)".to_string(), Vec::new())] } else { Vec::new() };
    call_bench(&getppids, &cg, &bystander, &["sys", "signal", "--syscall", "getppid", "--signal", "CHLD"], &tp_btf);
    drop(accepting);
    let _ = std::fs::remove_file(&file);
}

/// Calls per round of each loop of [`sockcalls`]: each call takes a few µs natively, so that a
/// loop lasts long enough to measure (and stays below strace's largest `when=`, 65535).
const SOCKCALLS: u64 = 50_000;

/// The other calls the cgroup hooks fail besides connect (socket, bind, sendto, getsockopt,
/// setsockopt), with the cgroup backend: on a kernel without the BPF LSM or error injection (this
/// project's host), these and connect are the calls `sys fail` has. sendto's datagrams go to a
/// socket on loopback that never reads them.
fn sockcalls(report: &Value) {
    let cg = TempCgroup::new(&unique("bench-sock")).expect("cgroup");
    let bystander = TempCgroup::new(&unique("bench-sock-by")).expect("cgroup");
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let to = sink.local_addr().expect("address").to_string();
    let cgroup = backends(report, &[("cgroup", "cgroup_sock_addr")]);
    for (call, errno) in [("socket", "EMFILE"), ("bind", "EADDRINUSE"), ("sendto", "ENOBUFS"), ("getsockopt", "ENOPROTOOPT"), ("setsockopt", "EINVAL")] {
        let inject = format!("{call}:error={errno}");
        let calls = CallBench { what: call, args: &["--call", call, "--to", &to], count: SOCKCALLS, inject: &inject, filter: &[] };
        call_bench(&calls, &cg, &bystander, &["sys", "fail", "--syscall", call, "--errno", errno], &cgroup);
    }
}

/// `sys delay`'s accuracy beside strace's `delay_enter=`: every getppid of a process in the target
/// held for D; a hold's error is the call's time less the call alone (the round's median) less D,
/// as the process sees it (for strace, its stops included).
fn holds() {
    let started = Instant::now();
    let cg = TempCgroup::new(&unique("bench-hold")).expect("cgroup");
    let target = cg.path.display().to_string();
    let args = ["--call", "getppid", "--timings"];
    let took_us = |out: &Value| -> Vec<f64> { out["took_ns"][0].as_array().expect("took_ns").iter().map(|v| v.as_f64().unwrap() / 1e3).collect() };
    let quantile = |mut v: Vec<f64>, q: f64| -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let section = format!("Syscall delay {}: every getppid of a process in the target cgroup held for D (error of a hold in µs: the call's time less the call alone less D, as the process sees it; baseline: the call alone, µs; chaos: sys delay --delay D, tp_btf sys_enter + SIGSTOP, SIGCONT from chaos; peer: strace -e inject=getppid:delay_enter=D)", place());
    for (delay_ms, n) in [(1u64, 100u64), (10, 50), (100, 20)] {
        let mut by_q: Vec<Vec<(Option<f64>, f64, f64)>> = vec![Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            let alone = median(took_us(&call_loop_out(&cg.path, &args, n, None, &mut || {})));
            let mut session = None;
            let chaos = took_us(&call_loop_out(&cg.path, &args, n, None, &mut || {
                session = Some(start_chaos(
                    &["sys", "delay", "--cgroup", &target, "--syscall", "getppid", "--delay", &format!("{delay_ms}ms"), "--for", "10m", "--json"]
                        .map(String::from),
                ))
            }));
            stop_chaos(session.expect("started"));
            let inject = format!("getppid:delay_enter={}", delay_ms * 1000);
            let strace = took_us(&call_loop_out(&cg.path, &args, n, Some((&inject, &[])), &mut || {}));
            let err = |v: &[f64]| v.iter().map(|t| t - alone - (delay_ms * 1000) as f64).collect::<Vec<f64>>();
            for (i, q) in [0.5, 0.99].into_iter().enumerate() {
                by_q[i].push((Some(alone), quantile(err(&chaos), q), quantile(err(&strace), q)));
            }
        }
        for (i, q) in ["p50", "p99"].into_iter().enumerate() {
            row_vs(&section, &format!("D = {delay_ms} ms, {n} calls: {q} error (µs)"), &by_q[i], false, None, "strace");
        }
    }
    eprintln!("bench: holds section took {:.0} s", started.elapsed().as_secs_f64());
}

/// (request p50 µs, request p99 µs, TCP MiB/s) from the target to the server across the veth.
/// The transfer lasts a fraction of a second either way: 1 GiB natively (about 2 GB/s), 64 MiB
/// under emulation.
fn traffic(sb: &Sandbox, port: u16) -> (f64, f64, f64) {
    let to = format!("{SERVER_V4}:{port}");
    let rr = sb
        .spawn(Place::Target, &["rr-client", "--to", &to, "--rate", "200", "--duration", "3s", "--interval", "4s"])
        .json(Duration::from_secs(60));
    let bytes: u64 = if lane() == "host" { 1 << 30 } else { 64 << 20 };
    let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", &format!("0.0.0.0:{}", port + 1)]);
    sink.ready();
    let tcp = sb
        .spawn(Place::Target, &["tcp-send", "--to", &format!("{SERVER_V4}:{}", port + 1), "--bytes", &bytes.to_string()])
        .json(Duration::from_secs(120));
    sink.json(Duration::from_secs(120));
    let mibs = bytes as f64 / (1 << 20) as f64 / tcp["secs"].as_f64().expect("secs");
    (rr["p50_ms"].as_f64().unwrap_or(0.0) * 1000.0, rr["p99_ms"].as_f64().unwrap_or(0.0) * 1000.0, mibs)
}

/// Remote ports of the 64 rules that match nothing in [`packets`]: the traffic's are 5701 and 5702.
const UNUSED_PORTS: u16 = 6001;

/// The cost to the target's traffic over a veth pair: alone, with one rule at 0% (every packet
/// decided), with a session's 64 rules none of which matches (each on a port the traffic does not
/// use), and with netem at 0% on the same device where this kernel has it. Interleaved rounds.
fn packets(has_netem: bool) {
    let sb = Sandbox::new();
    let mut server = sb.spawn(Place::Server, &["rr-server", "--bind", &format!("{SERVER_V4}:5701"), "--max", "20m"]);
    server.ready();
    let mut drop_args: Vec<String> = ["net", "drop", "--percent", "0", "--direction", "both", "--for", "10m", "--json"].map(String::from).to_vec();
    drop_args.extend(sb.target_args());
    // At 100%: a rule that matched would stop the traffic, not go unnoticed.
    let (cg, netns) = (sb.cgroup.path.display(), sb.netns_path(Place::Target));
    let many: String = (UNUSED_PORTS..UNUSED_PORTS + 64)
        .map(|port| {
            format!(
                "[[fault]]\nkind = \"net.drop\"\ncgroup = \"{cg}\"\nnetns = [\"{}\"]\npercent = 100\ndirection = \"both\"\nport = {port}\nfor = \"10m\"\n\n",
                netns.display()
            )
        })
        .collect();
    let many = TempFile::new("chaos-bench-64-", &many);
    let (mut base, mut chaos, mut chaos64, mut netem) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(traffic(&sb, 5701));
        let run = start_chaos(&drop_args);
        chaos.push(traffic(&sb, 5701));
        stop_chaos(run);
        let run = start_chaos(&["apply".into(), many.path().into(), "--json".into()]);
        chaos64.push(traffic(&sb, 5701));
        stop_chaos(run);
        if has_netem {
            sb.client_tc(&["qdisc", "replace", "dev", &sb.client_dev, "root", "netem", "loss", "0%"]);
            netem.push(traffic(&sb, 5701));
            sb.client_tc(&["qdisc", "del", "dev", &sb.client_dev, "root"]);
        }
    }
    let peer = if has_netem { "tc netem loss 0% on the same device" } else { "none, this kernel has no sch_netem" };
    let section = format!(
        "Packet faults {}: traffic from the target cgroup over a veth pair (baseline: the workload alone; chaos: net drop --percent 0 --direction both, every packet decided, or a session of 64 net.drop rules at 100% on remote ports {UNUSED_PORTS}–{}, none of which the traffic uses; peer: {peer})",
        place(),
        UNUSED_PORTS + 63
    );
    type Figure = fn(&(f64, f64, f64)) -> f64;
    let figures: [(&str, Figure, Goal); 3] = [
        ("request latency p50 (µs)", |t| t.0, None),
        ("request latency p99 (µs)", |t| t.1, None),
        ("TCP bulk throughput (MiB/s)", |t| t.2, Some(("≥ ×0.97", |r| r >= 0.97))),
    ];
    for (name, f, goal) in figures {
        let rounds: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|r| (f(&base[r]), f(&chaos[r]), netem.get(r).map(f))).collect();
        row(&section, &format!("{name}, 1 rule at 0%"), &rounds, has_netem.then_some("netem"), goal);
    }
    for (name, f, _) in figures {
        let rounds: Vec<(f64, f64, Option<f64>)> = (0..ROUNDS).map(|r| (f(&base[r]), f(&chaos64[r]), None)).collect();
        row(&section, &format!("{name}, 64 rules matching nothing"), &rounds, None, None);
    }
}

/// Whether a section runs: all of them, or those named in CHAOS_BENCH_SECTIONS (a comma-separated
/// list of `observe`, `syscalls`, `sockcalls`, `holds`, `packets`, `delay`, `faults`, `footprint`;
/// `cargo xtask bench` chooses them per lane, and `cargo xtask vm-test` passes the variable on to
/// the guest, for running one part by hand).
fn wanted(section: &str) -> bool {
    std::env::var("CHAOS_BENCH_SECTIONS").map_or(true, |v| v.split(',').any(|s| s.trim() == section))
}

/// A goal as shown and whether chaos's median meets it, given the peer's.
type PeerGoal<'a> = Option<(&'a str, fn(f64, f64) -> bool)>;

/// A row whose ratio is chaos over the peer configured the same way, not over the baseline: for a
/// delay's quantiles and counts, where netem is the reference and the workload alone only shows
/// the floor. `rounds` are (baseline, chaos, peer); the spread is of the per-round chaos/peer
/// ratios. Without `with_ratio` (a figure whose quotient means nothing, such as a signed error) the
/// row has neither. `goal` is shown with whether the medians meet it.
fn row_vs_peer(section: &str, measure: &str, rounds: &[(Option<f64>, f64, f64)], with_ratio: bool, goal: PeerGoal) {
    row_vs(section, measure, rounds, with_ratio, goal, "netem");
}

/// [`row_vs_peer`] beside a peer other than netem.
fn row_vs(section: &str, measure: &str, rounds: &[(Option<f64>, f64, f64)], with_ratio: bool, goal: PeerGoal, peer_name: &str) {
    let b: Vec<f64> = rounds.iter().filter_map(|r| r.0).collect();
    let b = (!b.is_empty()).then(|| median(b));
    let (c, p) = (median(rounds.iter().map(|r| r.1).collect()), median(rounds.iter().map(|r| r.2).collect()));
    let ratios: Vec<f64> = rounds.iter().filter(|r| r.2 != 0.0).map(|r| r.1 / r.2).collect();
    let ratio = (with_ratio && p != 0.0).then(|| c / p);
    let spread = (with_ratio && !ratios.is_empty()).then(|| spread(&ratios));
    let json = serde_json::json!({
        "section": section, "measure": measure, "baseline": b, "chaos": c, "peer": p, "peer_name": peer_name,
        "ratio": ratio, "ratio_of": "peer", "spread": spread, "goal": goal.map(|g| g.0), "met": goal.map(|g| g.1(c, p)),
    });
    eprintln!("BENCH| {json}");
}

/// Datagrams of one delay-accuracy run, sent at UDP_RATE per second (1.5 s of traffic).
const UDP_N: u64 = 300;
const UDP_RATE: u64 = 200;
/// Datagrams of the long-delay run, sent at LOSS_RATE per second: half a second of traffic, every
/// datagram of it under way at once under a 2 s delay (when the sender keeps the pace).
const LOSS_N: u64 = 1000;
const LOSS_RATE: u64 = 2000;
/// One TCP transfer (each configuration bounds its time).
const TCP_BYTES: u64 = 8 << 20;
/// Any one workload's bound (a UDP sender slowed by a full send buffer included).
const WORKLOAD_MAX: Duration = Duration::from_secs(120);

/// A UDP run from the target to a sink in the server namespace: the sink's report (received,
/// unique, duplicates, reordered, delay_ms) with the sender's `sent` and `secs` added.
fn udp_run(sb: &Sandbox, port: u16, count: u64, rate: u64, idle: &str) -> Value {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", idle, "--max", "120s"]);
    sink.ready();
    let sent = sb
        .spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &count.to_string(), "--rate", &rate.to_string()])
        .json(WORKLOAD_MAX);
    sink.close_stdin();
    let mut got = sink.json(WORKLOAD_MAX);
    got["sent"] = sent["sent"].clone();
    got["send_secs"] = sent["secs"].clone();
    got
}

/// What one TCP transfer did: MiB/s, the bytes the sink received, the seconds they took, and the
/// sender's retransmissions (when it reported them).
#[derive(Clone, Copy, Debug)]
struct Tcp {
    mibs: f64,
    bytes: u64,
    secs: f64,
    retransmits: Option<u64>,
}

/// TCP_BYTES from the target to a sink in the server namespace, within about `max`: the sender
/// stops writing and the sink stops reading `max` after they started. The
/// throughput is the bytes the sink received over the transfer's seconds: tcp-send's own (from
/// before its connect until the sink closed after the last byte) when every byte arrived, or, when
/// the time bound cut the transfer short, from the sender's start to the sink's end as this test
/// saw them (tcp-send's byte count then holds what it wrote, not what arrived).
fn tcp_run(sb: &Sandbox, port: u16, max: Duration) -> Tcp {
    let max = format!("{}s", max.as_secs());
    let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", &format!("0.0.0.0:{port}"), "--max", &max]);
    sink.ready();
    let started = Instant::now();
    let send = sb.spawn(
        Place::Target,
        &["tcp-send", "--to", &format!("{SERVER_V4}:{port}"), "--bytes", &TCP_BYTES.to_string(), "--max", &max],
    );
    let got = sink.json(WORKLOAD_MAX);
    let window = started.elapsed().as_secs_f64();
    // A sender cut short may end with an error (its write timed out, or the sink's close reset
    // the connection).
    let (_, out, _) = send.finish(WORKLOAD_MAX);
    let sent: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_default();
    let bytes = got["bytes"].as_u64().expect("bytes");
    let secs = match sent["secs"].as_f64() {
        Some(s) if bytes == TCP_BYTES && sent["bytes"] == TCP_BYTES => s,
        _ => window,
    };
    Tcp { mibs: bytes as f64 / (1 << 20) as f64 / secs, bytes, secs, retransmits: sent["retransmits"].as_u64() }
}

/// A delay, configured the same way for chaos and netem, and the server ports of the workloads run
/// under it (a UDP_N run, a TCP transfer, a LOSS_N run).
struct DelayCfg {
    delay: &'static str,
    jitter: Option<&'static str>,
    /// netem's `distribution` (chaos's `--distribution`), with the jitter.
    dist: Option<&'static str>,
    udp: Option<u16>,
    tcp: Option<u16>,
    loss: Option<u16>,
    /// The TCP transfer's bound.
    tcp_max: Duration,
}

impl DelayCfg {
    fn name(&self) -> String {
        format!(
            "delay {}{}{}",
            self.delay,
            self.jitter.map(|j| format!(" ± {j}")).unwrap_or_default(),
            self.dist.map(|d| format!(" ({d})")).unwrap_or_default()
        )
    }

    /// The lowest and highest of its ports (a chaos rule's --port range).
    fn ports(&self) -> (u16, u16) {
        let p: Vec<u16> = [self.udp, self.tcp, self.loss].into_iter().flatten().collect();
        (*p.iter().min().expect("a port"), *p.iter().max().expect("a port"))
    }
}

// Bounds of the TCP transfers: netem moves the 8 MiB in 1-3 s under 100 ms; under 2 s, the
// connection's set-up alone takes 2-3 s (both bounds keep the section within about 4 minutes
// under emulation, where each chaos start takes about 15 s).
const DELAYS: [DelayCfg; 4] = [
    DelayCfg { delay: "100ms", jitter: None, dist: None, udp: Some(5801), tcp: Some(5802), loss: None, tcp_max: Duration::from_secs(3) },
    DelayCfg { delay: "60ms", jitter: Some("20ms"), dist: None, udp: Some(5803), tcp: None, loss: None, tcp_max: Duration::ZERO },
    DelayCfg { delay: "2s", jitter: None, dist: None, udp: None, tcp: Some(5804), loss: Some(5805), tcp_max: Duration::from_secs(4) },
    DelayCfg { delay: "60ms", jitter: Some("20ms"), dist: Some("normal"), udp: Some(5806), tcp: None, loss: None, tcp_max: Duration::ZERO },
];
/// The workloads alone.
const ALONE: DelayCfg =
    DelayCfg { delay: "0s", jitter: None, dist: None, udp: Some(5801), tcp: Some(5802), loss: Some(5805), tcp_max: Duration::from_secs(3) };

/// What the workloads of one configuration measured in one round.
#[derive(Clone, Debug, Default)]
struct Got {
    udp: Value,
    tcp: Option<Tcp>,
    loss: Value,
}

fn delay_workloads(sb: &Sandbox, cfg: &DelayCfg, who: &str, started: Instant) -> Got {
    // The sink ends after this much quiet once the sender is done: more than the delay, since the
    // last datagrams are still under way then.
    let idle = if cfg.delay == "2s" { "2500ms" } else { "1s" };
    let got = Got {
        udp: cfg.udp.map_or(Value::Null, |port| udp_run(sb, port, UDP_N, UDP_RATE, idle)),
        tcp: cfg.tcp.map(|port| tcp_run(sb, port, cfg.tcp_max)),
        loss: cfg.loss.map_or(Value::Null, |port| udp_run(sb, port, LOSS_N, LOSS_RATE, idle)),
    };
    let at = started.elapsed().as_secs_f64();
    let what = format!("{who} {}", cfg.name());
    for (name, v) in [(format!("{UDP_N} at {UDP_RATE}/s"), &got.udp), (format!("{LOSS_N} at {LOSS_RATE}/s"), &got.loss)] {
        if !v.is_null() {
            eprintln!("bench: {at:.0} s: {what}: udp {name}: {v}");
        }
    }
    if let Some(t) = got.tcp {
        eprintln!("bench: {at:.0} s: {what}: tcp: {:.4} MiB/s, {} bytes in {:.2} s, retransmissions {:?}", t.mibs, t.bytes, t.secs, t.retransmits);
    }
    got
}

/// chaos's delay (a departure time set by the TC egress program, held by sch_fq) beside tc netem
/// delay configured the same way on the same device (the client's veth), and the workloads alone,
/// in interleaved rounds. chaos runs one session per round with a rule per configuration, each on
/// its workloads' ports (a start costs seconds under emulation); netem, one configuration after
/// the other on the device.
fn delay() {
    let started = Instant::now();
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let mut file = String::new();
    for cfg in &DELAYS {
        let (lo, hi) = cfg.ports();
        file += &format!("[[fault]]\nkind = \"net.delay\"\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\ndelay = \"{}\"\nport = \"{lo}-{hi}\"\nfor = \"10m\"\n", cfg.delay);
        if let Some(j) = cfg.jitter {
            file += &format!("jitter = \"{j}\"\n");
        }
        if let Some(d) = cfg.dist {
            file += &format!("distribution = \"{d}\"\n");
        }
        file += "\n";
    }
    let file = TempFile::new("chaos-bench-delay-", &file);
    let (mut base, mut chaos, mut netem) = (Vec::new(), vec![Vec::new(); DELAYS.len()], vec![Vec::new(); DELAYS.len()]);
    for round in 0..ROUNDS {
        eprintln!("bench: {:.0} s: delay round {}/{ROUNDS}", started.elapsed().as_secs_f64(), round + 1);
        base.push(delay_workloads(&sb, &ALONE, "no", started));
        // No --proto: each rule delays every packet to its ports, as netem delays every packet of
        // the device.
        let run = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
        eprintln!("bench: {:.0} s: chaos injecting", started.elapsed().as_secs_f64());
        for (i, cfg) in DELAYS.iter().enumerate() {
            chaos[i].push(delay_workloads(&sb, cfg, "chaos", started));
        }
        let summary = stop_chaos(run);
        for (i, cfg) in DELAYS.iter().enumerate() {
            eprintln!("bench: chaos {}: rule {i} delayed {} packets", cfg.name(), counter(&summary, i, "delayed"));
        }
        for (i, cfg) in DELAYS.iter().enumerate() {
            let mut tc: Vec<&str> = vec!["qdisc", "replace", "dev", &sb.client_dev, "root", "netem", "delay", cfg.delay];
            tc.extend(cfg.jitter);
            if let Some(d) = cfg.dist {
                tc.extend(["distribution", d]);
            }
            tc.extend(["limit", "100000"]);
            sb.client_tc(&tc);
            netem[i].push(delay_workloads(&sb, cfg, "netem", started));
            // chaos needs the kernel's default qdisc back, to put its fq in its place.
            sb.client_tc(&["qdisc", "del", "dev", &sb.client_dev, "root"]);
        }
    }

    let section = &format!("Delay {}: traffic from the target cgroup over a veth pair (baseline: the workload alone; chaos: net.delay rules, a departure time that sch_fq honours; peer: tc netem delay D [J] limit 100000 on the same device)", place());
    let ms = |v: &Value, q: &str| v["delay_ms"][q].as_f64().unwrap_or_else(|| panic!("no delay_ms.{q} in {v}"));
    let n = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let vs_peer = |cfg: usize, f: &dyn Fn(&Got) -> f64| -> Vec<(Option<f64>, f64, f64)> {
        (0..ROUNDS).map(|r| (Some(f(&base[r])), f(&chaos[cfg][r]), f(&netem[cfg][r]))).collect()
    };
    let vs_alone = |cfg: usize, f: &dyn Fn(&Got) -> f64| -> Vec<(f64, f64, Option<f64>)> {
        (0..ROUNDS).map(|r| (f(&base[r]), f(&chaos[cfg][r]), Some(f(&netem[cfg][r])))).collect()
    };

    // 1. 100 ms: the one-way delay's quantiles, and the p50's error against the delay configured.
    for q in ["p50", "p99"] {
        let measure = format!("UDP one-way delay {q} (ms), 100 ms configured, {UDP_N} datagrams at {UDP_RATE}/s; ratio: chaos / netem");
        row_vs_peer(section, &measure, &vs_peer(0, &|g| ms(&g.udp, q)), true, None);
    }
    let err = |g: &Got, alone: &Got| (ms(&g.udp, "p50") - ms(&alone.udp, "p50") - 100.0) / 100.0 * 100.0;
    let rounds: Vec<(Option<f64>, f64, f64)> = (0..ROUNDS).map(|r| (None, err(&chaos[0][r], &base[r]), err(&netem[0][r], &base[r]))).collect();
    let measure = "UDP added delay p50, error against the 100 ms configured (%: the p50 minus the baseline's p50 minus 100 ms, over 100 ms)";
    row_vs_peer(section, measure, &rounds, false, Some(("within ±5%", |c, _| c.abs() <= 5.0)));

    // 2. 60 ms ± 20 ms: quantiles and reordering.
    for q in ["p50", "p99", "min"] {
        let measure = format!("UDP one-way delay {q} (ms), 60 ms ± 20 ms configured, {UDP_N} datagrams at {UDP_RATE}/s; ratio: chaos / netem");
        row_vs_peer(section, &measure, &vs_peer(1, &|g| ms(&g.udp, q)), true, None);
    }
    let measure = format!("UDP datagrams reordered of {UDP_N}, 60 ms ± 20 ms; ratio: chaos / netem");
    row_vs_peer(section, &measure, &vs_peer(1, &|g| n(&g.udp, "reordered")), true, None);
    // The same with netem's normal table (iproute2's normal.dist, read by both).
    for q in ["p50", "p99", "min"] {
        let measure = format!("UDP one-way delay {q} (ms), 60 ms ± 20 ms normal configured, {UDP_N} datagrams at {UDP_RATE}/s; ratio: chaos / netem");
        row_vs_peer(section, &measure, &vs_peer(3, &|g| ms(&g.udp, q)), true, None);
    }

    // 3. TCP bulk throughput: chaos over netem (both far below the workload alone, the baseline).
    for (cfg, d) in [(0, "100 ms"), (2, "2 s")] {
        let measure = format!(
            "TCP bulk throughput under a {d} delay (MiB/s: bytes received over the seconds from connect to the sink's end; {} MiB, sending and receiving for at most {} s; ratio: chaos / netem)",
            TCP_BYTES >> 20,
            DELAYS[cfg].tcp_max.as_secs()
        );
        row_vs_peer(section, &measure, &vs_peer(cfg, &|g| g.tcp.expect("tcp").mibs), true, None);
    }

    // 4. A 2 s delay at 2000 datagrams/s: what arrives, and how fast the sender could send.
    let measure = format!("UDP datagrams received (unique) of {LOSS_N} sent at {LOSS_RATE}/s under a 2 s delay; ratio: chaos / no delay");
    row(section, &measure, &vs_alone(2, &|g| n(&g.loss, "unique")), Some("netem"), Some(("≥ ×0.99", |r| r >= 0.99)));
    let measure = format!("UDP sender's achieved rate under a 2 s delay (datagrams/s, {LOSS_RATE}/s offered; ratio: chaos / no delay)");
    row(section, &measure, &vs_alone(2, &|g| n(&g.loss, "sent") / n(&g.loss, "send_secs")), Some("netem"), None);
    eprintln!("bench: delay section took {:.0} s", started.elapsed().as_secs_f64());
}

/// One packet fault configured the same way for chaos (a rule of a fault file, on its own port)
/// and netem (on the client's veth), and what the benchmark reads from a UDP run under it.
struct FaultCfg {
    name: &'static str,
    /// The fault-file keys (after kind).
    chaos: &'static str,
    netem: &'static [&'static str],
    port: u16,
    /// The figure, from the sink's report (`unique`, `duplicates`, ...) and the datagrams sent.
    figure: &'static str,
    read: fn(&Value) -> f64,
}

const FAULT_N: u64 = 2000;
const FAULT_RATE: u64 = 2000;

fn count(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

const FAULTS: [FaultCfg; 4] = [
    FaultCfg {
        name: "duplicate 10%",
        chaos: "kind = \"net.duplicate\"\npercent = 10",
        netem: &["duplicate", "10%"],
        port: 5901,
        figure: "datagrams received twice, of 2000",
        read: |v| count(v, "duplicates"),
    },
    FaultCfg {
        name: "corrupt 10%, any bit",
        chaos: "kind = \"net.corrupt\"\npercent = 10\nwhere = \"any\"",
        netem: &["corrupt", "10%"],
        port: 5902,
        // Both flip any bit. chaos leaves an offloaded checksum to the device, so a payload bit
        // arrives changed; netem computes the checksum first, so the receiver's check drops most
        // of its packets: both count here.
        figure: "datagrams corrupted or lost, of 2000",
        read: |v| count(v, "corrupted") + (FAULT_N as f64 - count(v, "unique") - count(v, "corrupted")).max(0.0),
    },
    FaultCfg {
        name: "reorder 25% (the rest 10 ms late)",
        chaos: "kind = \"net.reorder\"\npercent = 25\ndelay = \"10ms\"",
        netem: &["delay", "10ms", "reorder", "25%"],
        port: 5903,
        figure: "datagrams that arrived after a later one, of 2000",
        read: |v| count(v, "reordered"),
    },
    FaultCfg {
        name: "rate 1mbit (shaped)",
        chaos: "kind = \"net.rate\"\nrate = \"1mbit\"",
        netem: &["rate", "1mbit"],
        port: 5904,
        figure: "datagrams per second arriving (2000/s offered, 64-byte payloads)",
        read: |v| count(v, "unique") / (count(v, "arrival_span_ms") / 1000.0),
    },
];

/// Duplicate, corrupt, reorder and rate, each beside netem configured the same on the same device,
/// in interleaved rounds: chaos as one session with a rule per fault, netem one fault after the
/// other.
fn faults() {
    let started = Instant::now();
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let netns = sb.netns_path(Place::Target).display().to_string();
    let file: String = FAULTS
        .iter()
        .map(|f| format!("[[fault]]\n{}\ncgroup = \"{cg}\"\nnetns = [\"{netns}\"]\nproto = \"udp\"\nport = {}\nfor = \"10m\"\n\n", f.chaos, f.port))
        .collect();
    let file = TempFile::new("chaos-bench-faults-", &file);
    let run = |port: u16| udp_run(&sb, port, FAULT_N, FAULT_RATE, "1s");
    let (mut chaos, mut netem) = (vec![Vec::new(); FAULTS.len()], vec![Vec::new(); FAULTS.len()]);
    for round in 0..ROUNDS {
        eprintln!("bench: {:.0} s: faults round {}/{ROUNDS}", started.elapsed().as_secs_f64(), round + 1);
        let session = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
        for (i, f) in FAULTS.iter().enumerate() {
            let got = run(f.port);
            eprintln!("bench: chaos {}: {got}", f.name);
            chaos[i].push((f.read)(&got));
        }
        stop_chaos(session);
        for (i, f) in FAULTS.iter().enumerate() {
            let mut tc: Vec<&str> = vec!["qdisc", "replace", "dev", &sb.client_dev, "root", "netem"];
            tc.extend(f.netem);
            tc.extend(["limit", "100000"]);
            sb.client_tc(&tc);
            let got = run(f.port);
            eprintln!("bench: netem {}: {got}", f.name);
            netem[i].push((f.read)(&got));
            sb.client_tc(&["qdisc", "del", "dev", &sb.client_dev, "root"]);
        }
    }
    let section = &format!("Packet faults beside netem {}: 2000 datagrams at 2000/s from the target cgroup over a veth pair (chaos: a rule per fault, on its own port; peer: tc netem configured the same on the same device)", place());
    for (i, f) in FAULTS.iter().enumerate() {
        let rounds: Vec<(Option<f64>, f64, f64)> = (0..ROUNDS).map(|r| (None, chaos[i][r], netem[i][r])).collect();
        row_vs_peer(section, &format!("{}: {}; ratio: chaos / netem", f.name, f.figure), &rounds, true, None);
    }
    eprintln!("bench: faults section took {:.0} s", started.elapsed().as_secs_f64());
}

/// `chaos observe`'s own cost: a getppid loop and an open+close loop, alone and while their
/// cgroup is observed, by a process in the observed cgroup and in a bystander beside it (tp_btf
/// sys_enter/sys_exit run for every syscall of the machine). µs per call.
fn observe_cost() {
    let cg = TempCgroup::new(&unique("bench-obs")).expect("cgroup");
    let bystander = TempCgroup::new(&unique("bench-obs-by")).expect("cgroup");
    let file = std::env::temp_dir().join(unique("bench-obs-file"));
    std::fs::write(&file, b"x").expect("file");
    let path = file.display().to_string();
    let loops: [(&str, Vec<&str>); 2] = [("getppid", vec!["--call", "getppid"]), ("open+close", vec!["--call", "open", "--path", &path])];
    let section = format!("chaos observe's cost {}: {OPENS} calls by a process in the observed cgroup, or in a bystander cgroup beside it (µs per call; baseline: the workload alone)", place());
    for (what, args) in &loops {
        let us = |at: &TempCgroup| call_loop(&at.path, args, OPENS, None, &mut || {}).0 * 1e6 / OPENS as f64;
        let (mut target, mut by) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (base, base_by) = (us(&cg), us(&bystander));
            let observe = start_observe(&["--cgroup", &cg.path.display().to_string(), "--json"]);
            let (t, b) = (us(&cg), us(&bystander));
            let summary = stop_chaos(observe);
            assert!(summary["syscalls"].as_array().is_some_and(|r| !r.is_empty()), "the observation saw the loop: {summary}");
            target.push((base, t, None));
            by.push((base_by, b, None));
        }
        row(&section, &format!("{what}: observed, target"), &target, None, None);
        row(&section, &format!("{what}: observed, bystander"), &by, None, None);
    }
    let _ = std::fs::remove_file(&file);
}

/// The memory the kernel charges for the BPF maps process `pid` holds open (fdinfo's memlock), kB.
fn maps_kb(pid: u32) -> f64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0.0 };
    let bytes: u64 = fds
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("memlock:").and_then(|v| v.trim().parse::<u64>().ok())))
        .sum();
    bytes as f64 / 1024.0
}

/// What a session costs to have, on this lane: from the command to its fault active, its memory
/// while injecting, its maps' memory, and from SIGTERM to its exit (everything detached: the fault
/// gone). One session a round, on a sandbox's cgroup and network namespace. The rows of every lane
/// share one section, each labelled with its lane.
fn footprint() {
    let sb = Sandbox::new();
    let mut args: Vec<String> = ["net", "drop", "--percent", "0", "--direction", "both", "--for", "10m", "--json"].map(String::from).to_vec();
    args.extend(sb.target_args());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let (mut active, mut rss, mut peak, mut maps, mut gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("bench: footprint round {}/{ROUNDS}", round + 1);
        let t = Instant::now();
        let mut chaos = start_chaos(&args);
        active.push(ms(t));
        let pid = chaos.child.id();
        let memory = proc_status(pid);
        rss.push(memory.as_ref().and_then(|s| s.vmrss).unwrap_or(0) as f64);
        peak.push(memory.as_ref().and_then(|s| s.vmhwm).unwrap_or(0) as f64);
        maps.push(maps_kb(pid));
        let t = Instant::now();
        chaos.signal(libc::SIGTERM);
        let status = chaos.child.wait().expect("waiting for chaos");
        gone.push(ms(t));
        assert!(status.success(), "chaos ended by SIGTERM exited {status}: {:?}", chaos.stderr_seen);
    }
    let section = format!("A session's footprint, per lane (`chaos net drop --percent 0 --direction both` on a test cgroup and its network namespace; the median of {ROUNDS} rounds and their range)");
    let on = machine();
    let host = lane() == "host";
    row_own(&section, &format!("{on}: from the command to the fault active (ms)"), &active, host.then_some(("≤ 100 ms on the host", 100.0)));
    row_own(&section, &format!("{on}: from SIGTERM to the fault gone and chaos exited (ms)"), &gone, None);
    row_own(&section, &format!("{on}: resident memory while injecting (kB)"), &rss, None);
    row_own(&section, &format!("{on}: peak resident memory (kB)"), &peak, None);
    row_own(&section, &format!("{on}: BPF map memory the kernel charges (kB)"), &maps, None);
}

/// Says that a section is left out, and why.
fn left_out(section: &str, why: &str) {
    eprintln!("bench: section {section} left out: {why}");
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench` runs it on the host and inside the guests"]
fn bench_peers_side_by_side() {
    let report = probe_report();
    let has = |name: &str| backend(&report, name).0;
    eprintln!("bench: {}", place());
    if wanted("observe") {
        observe_cost();
    }
    if wanted("syscalls") {
        syscalls(&report);
    }
    if wanted("sockcalls") {
        sockcalls(&report);
    }
    if wanted("holds") {
        holds();
    }
    if wanted("packets") {
        packets(has("netem"));
    }
    // chaos's delay, reorder and rate need sch_fq; the peer, netem.
    for (section, run) in [("delay", delay as fn()), ("faults", faults)] {
        if wanted(section) {
            if has("sch_fq") && has("netem") {
                run();
            } else {
                left_out(section, "this kernel lacks sch_fq or netem");
            }
        }
    }
    if wanted("footprint") {
        footprint();
    }
}
