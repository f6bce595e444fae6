//! From parsed arguments to an exit code.

use std::time::Duration;

use chaos_common::net::{DIR_EGRESS, DIR_INGRESS, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    cli::{Cli, Command, Direction, NetCommand, NetDropArgs, Proto, RunArgs, SysCommand, TargetArgs},
    error::{EXIT_USAGE, Error, Result},
    faults::{
        Fault, RunOptions,
        net::{Drop, NetFilters, NetSpec},
        sys::SysFail,
    },
    kernel::state,
    privileges,
    report::Summary,
    target::Cgroup,
};

/// Parses the command line, runs it and returns the exit code. Every failure is one line on
/// stderr.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chaos: {e}");
            e.exit_code()
        }
    }
}

/// Help and version go to stdout with exit 0; a usage error becomes one line and exit 2.
fn clap_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind::*;
    match e.kind() {
        DisplayHelp | DisplayVersion => {
            let _ = e.print();
            0
        }
        DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            EXIT_USAGE
        }
        _ => {
            let text = e.render().to_string();
            // The first paragraph, joined: clap puts the problem there and usage after a blank line.
            let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let msg = first.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("chaos: {msg} (see --help)");
            EXIT_USAGE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Net(NetCommand::Drop(args)) => net_drop(args),
        Command::Sys(SysCommand::Fail(a)) => run_fault(
            &SysFail { syscall: a.syscall, errno: a.errno, ppm: a.percent, backend: a.backend },
            &a.target,
            &a.run,
        ),
        Command::Demo(args) => crate::demo::run(args),
        Command::Probe { json } => {
            privileges::check()?;
            let report = crate::probe::probe()?;
            if json {
                println!("{}", serde_json::to_string(&report).map_err(anyhow::Error::from)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Cleanup { json } => {
            privileges::check()?;
            let swept = state::sweep();
            if json {
                println!("{}", serde_json::to_string(&swept).map_err(anyhow::Error::from)?);
            } else {
                println!("chaos cleanup: {} dead runs, {} TC filters removed", swept.runs, swept.filters_removed);
            }
            Ok(())
        }
        Command::Workload(args) => crate::workload::run(args).map_err(Error::Other),
    }
}

fn net_drop(a: NetDropArgs) -> Result<()> {
    let filters = NetFilters {
        directions: match a.filters.direction {
            Direction::Egress => DIR_EGRESS,
            Direction::Ingress => DIR_INGRESS,
            Direction::Both => DIR_EGRESS | DIR_INGRESS,
        },
        proto: match a.filters.proto {
            None => PROTO_ANY,
            Some(Proto::Tcp) => PROTO_TCP,
            Some(Proto::Udp) => PROTO_UDP,
            Some(Proto::Icmp) => PROTO_ICMP,
        },
        port: a.filters.port,
        local_port: a.filters.local_port,
        peer: a.filters.peer,
    };
    run_fault(&NetSpec { action: Drop { ppm: a.percent }, filters }, &a.target, &a.run)
}

/// CLOCK_MONOTONIC in ns, read through the clock_gettime system call: the kernel's own
/// timekeeping, which `bpf_ktime_get_ns` reads, so a rule's deadline means the same on both sides.
/// The vDSO (what libc's clock_gettime uses) reads the TSC directly; where vCPUs' TSCs disagree with
/// the kernel's clock (measured under qemu TCG) that put deadlines seconds early or late.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the kernel writes one timespec into the valid, exclusively borrowed `ts`.
    let r = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn resolve(t: &TargetArgs) -> Result<Cgroup> {
    match (&t.cgroup, t.pid) {
        (Some(p), _) => Cgroup::from_arg(p),
        (None, Some(pid)) => Cgroup::of_pid(pid),
        (None, None) => Err(crate::usage!("give a target: --cgroup PATH or --pid PID")),
    }
}

/// The life of one fault: check, sweep, start, watch, detach, report.
pub fn run_fault(fault: &dyn Fault, target: &TargetArgs, run: &RunArgs) -> Result<()> {
    // Signals first: from here on Ctrl-C, SIGTERM or SIGHUP end the run cleanly, whenever they come.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    let signals = {
        let _in_runtime = rt.enter();
        crate::watch::Signals::register().map_err(anyhow::Error::from)?
    };
    privileges::check()?;
    let target = resolve(target)?;
    let available = crate::probe::require(fault.needs())?;
    let swept = state::sweep();
    if swept.filters_removed > 0 {
        eprintln!("chaos: removed {} TC filters left by {} killed runs", swept.filters_removed, swept.runs);
    }
    let opts = RunOptions { log_packets: run.log_packets, netns: run.netns.clone() };
    // A bound while attaching; once attached, the fault lasts its full --for from now.
    let mut inj = fault.start(&target, monotonic_ns() + run.duration.as_nanos() as u64, &opts, &available)?;
    let deadline_ns = monotonic_ns() + run.duration.as_nanos() as u64;
    inj.set_deadline(deadline_ns)?;
    let a = inj.attached();
    let devices: Vec<String> = a.devices.iter().map(|d| format!("{}({})", d.ifname, d.mode)).collect();
    log::info!("attached: programs {:?} links {:?} devices [{}]", a.programs, a.links, devices.join(" "));
    eprintln!(
        "chaos: injecting: {} into {} for {} (Ctrl-C ends it early)",
        fault.describe(),
        target.path.display(),
        humantime::format_duration(Duration::from_secs(run.duration.as_secs().max(1)))
    );
    let ended = rt
        .block_on(crate::watch::watch(inj.as_mut(), fault.name(), deadline_ns, signals))
        .map_err(anyhow::Error::from)?;
    // What was attached, then detach, then the counters: a packet decided just before the end is
    // still counted where it is finally dropped.
    let attached = inj.attached();
    inj.detach();
    let counters = inj.counters()?;
    drop(inj);
    let summary = Summary {
        fault: fault.name().into(),
        description: fault.describe(),
        cgroup: target.path.display().to_string(),
        cgroup_id: target.id,
        elapsed_s: ended.elapsed.as_secs_f64(),
        ended_by: ended.by,
        counters,
        attached,
    };
    if run.json {
        println!("{}", serde_json::to_string(&summary).map_err(anyhow::Error::from)?);
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}
