//! Per-packet kernel time of chaos's packet programs beside floor programs built by the project,
//! measured in one run (`chaos workload packet-time`, which `cargo xtask bench` runs): the kernel's
//! own accounting (`BPF_ENABLE_STATS`: run_time_ns / run_cnt per program) while a sender in the
//! target cgroup sends small UDP datagrams over loopback.
//!
//! Configurations: 1 rule on the target; 1 rule on the target and 63 on 63 other cgroups (a full
//! session of 64); 64 rules on the target itself. Those rules are `net.drop` at 1 in a million:
//! each packet is parsed, matched, rolled and counted, and almost none dropped (0% and 100% need
//! no random number and would flatter the figure). Then one rule of each action that keeps
//! per-packet state (a loss model's chain, a token bucket, a flow table), set to act on nothing. The floors, attached in the same run to
//! the same cgroup and device: an empty `cgroup_skb` program and an empty TC program, each with
//! one counter and one random draw (`chaos-ebpf/src/probe.rs`).

use std::{
    fs::File,
    net::UdpSocket,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramInfo, SchedClassifier, links::LinkOrder, tc::{TcAttachOptions, TcAttachType}},
    sys::{Stats, enable_stats},
};
use serde::Serialize;

use crate::{
    faults::{self, FaultSpec},
    kernel::Kernel,
    sandbox::{TempCgroup, spawn_in},
    session::{self, Options, Session},
};

#[derive(Debug, Serialize)]
pub struct Sample {
    pub config: &'static str,
    /// The chaos program timed (its kernel name).
    pub program: &'static str,
    pub round: usize,
    pub packets: u64,
    /// Mean ns per run of each program over the sender's packets.
    pub chaos_tc_ns: f64,
    pub floor_cgroup_skb_ns: f64,
    pub floor_tc_ns: f64,
}

/// A fault on `cgroup` written as on the command line (`chaos net drop --percent …`), parsed by
/// the parser the command line and fault files use.
fn spec(kind: &str, cgroup: &std::path::Path, words: &[&str]) -> Result<FaultSpec> {
    let kind = faults::kind(kind).context("a known kind")?;
    let m = kind
        .fault_command()
        .try_get_matches_from(std::iter::once(kind.name).chain(words.iter().copied()).chain(["--for", "10m", "--proto", "udp"]).chain(["--cgroup", &cgroup.to_string_lossy()]))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(FaultSpec::from_matches(kind, &m, String::new())?)
}

/// The rule most configurations repeat: 1 in a million (a random draw for every packet).
fn drop_spec(cgroup: &std::path::Path) -> Result<FaultSpec> {
    spec("net.drop", cgroup, &["--percent", "0.0001"])
}

/// (run_time_ns, run_cnt) of a program, now.
fn stats(id: u32) -> Result<(u64, u64)> {
    let info = aya::programs::loaded_programs().flatten().find(|p: &ProgramInfo| p.id() == id).context("a measured program is gone")?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

fn per_run(before: (u64, u64), after: (u64, u64)) -> f64 {
    (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
}

/// A configuration: its name, and the faults of its session.
/// A configuration: its name, the chaos program timed, and the faults.
type Config<'a> = (&'static str, &'static str, Box<dyn Fn() -> Result<Vec<FaultSpec>> + 'a>);

/// Runs every configuration `rounds` times, interleaved; prints one JSON line per sample.
pub fn run(rounds: usize, packets: u64) -> Result<()> {
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
    let me = std::env::current_exe()?;
    let tag = std::process::id();
    let target = TempCgroup::new(&format!("chaos-bench-pt-{tag}"))?;
    let others: Vec<TempCgroup> = (0..63).map(|i| TempCgroup::new(&format!("chaos-bench-pt-{tag}-o{i}"))).collect::<Result<_>>()?;

    // The floors, loaded from the same object and attached for the whole run.
    let mut floors = Kernel::load(false)?;
    let floor_cg = {
        let prog: &mut CgroupSkb = floors.ebpf.program_mut("chaos_bench_floor").context("no floor program")?.try_into()?;
        prog.load()?;
        let id = prog.attach(File::open(&target.path)?, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)?;
        let info = prog.info()?.id();
        (prog.take_link(id)?, info)
    };
    let floor_tc = {
        let prog: &mut SchedClassifier = floors.ebpf.program_mut("chaos_bench_floor_tc").context("no floor program")?.try_into()?;
        prog.load()?;
        let id = prog.attach_with_options("lo", TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::last()))?;
        let info = prog.info()?.id();
        (prog.take_link(id)?, info)
    };

    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let to = sink.local_addr()?.to_string();
    let t = &target.path;
    const EGRESS: &str = chaos_common::net::PROG_TC_EGRESS;
    let configs: [Config; 8] = [
        ("1 rule on the target", EGRESS, Box::new(|| Ok(vec![drop_spec(t)?]))),
        ("1 rule on the target, 63 on other cgroups", EGRESS, Box::new(|| std::iter::once(t).chain(others.iter().map(|o| &o.path)).map(|c| drop_spec(c)).collect())),
        ("64 rules on the target", EGRESS, Box::new(|| (0..64).map(|_| drop_spec(t)).collect())),
        // The packet actions with per-packet state of their own, each set so it acts on nothing:
        ("1 loss-model rule (Gilbert-Elliott, stepped every packet)", EGRESS, Box::new(|| Ok(vec![spec("net.drop", t, &["--model", "gemodel:0.0001"])?]))),
        ("1 police rule (10 Gbit/s token bucket, every packet)", EGRESS, Box::new(|| Ok(vec![spec("net.rate", t, &["--police", "--rate", "10gbit"])?]))),
        ("1 stall rule (flow table, every packet)", EGRESS, Box::new(|| Ok(vec![spec("net.stall", t, &["--after-bytes", "1000mb"])?]))),
        // A DNS rule's cost to the target's other UDP traffic (its queries are read only on port 53).
        ("1 DNS rule (the traffic is not DNS)", EGRESS, Box::new(|| Ok(vec![spec("net.dns", t, &["--rcode", "servfail"])?]))),
        // TC ingress: each received packet's socket looked up and its cgroup read (the receiver
        // here is this process, not a target: the cost every received packet on the device pays).
        (
            "1 ingress duplicate rule (socket lookup, its cgroup read; the receiver not a target)",
            chaos_common::net::PROG_TC_INGRESS,
            Box::new(|| Ok(vec![spec("net.duplicate", t, &["--percent", "0", "--direction", "ingress"])?])),
        ),
    ];
    for round in 0..rounds {
        for (name, program, specs) in &configs {
            let plan = session::plan(specs()?)?;
            let s = Session::start(plan, &Options::default())?;
            // The TC program on lo (Ethernet framing).
            let prog = s.program_id(program).with_context(|| format!("the session loaded no {program}"))?;
            let before = (stats(prog)?, stats(floor_cg.1)?, stats(floor_tc.1)?);
            let mut cmd = Command::new(&me);
            cmd.args(["workload", "udp-send", "--to", &to, "--count", &packets.to_string(), "--rate", "50000"]).stdout(Stdio::null()).stderr(Stdio::null());
            let status = spawn_in(&mut cmd, Some(&target.path), None)?.wait()?;
            anyhow::ensure!(status.success(), "the sender failed");
            let after = (stats(prog)?, stats(floor_cg.1)?, stats(floor_tc.1)?);
            drop(s.finish("bench", Duration::ZERO)?);
            let sample = Sample {
                config: name,
                program,
                round,
                packets,
                chaos_tc_ns: per_run(before.0, after.0),
                floor_cgroup_skb_ns: per_run(before.1, after.1),
                floor_tc_ns: per_run(before.2, after.2),
            };
            println!("{}", serde_json::to_string(&sample)?);
        }
    }
    drop((floor_cg, floor_tc, sink));
    Ok(())
}
