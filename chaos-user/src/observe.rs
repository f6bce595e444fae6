//! `chaos observe`: per syscall, what a cgroup's processes (and its descendants') calls did —
//! how many, which errors, how long they took (p50/p90/p99 from the kernel's log2 histograms) —
//! live while it runs (a top-like table on a terminal, sorted by time spent) and summed at the end.
//! The kernel side is `chaos-ebpf/src/observe.rs`; its links are never pinned, so the observation
//! ends with the process, SIGKILL included.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SockOps, links::FdLink};
use chaos_common::observe::{CallStats, NetStats, ObsErrKey, ObsKey};
use clap::Args;
use serde::Serialize;

use crate::{
    error::{Error, Result},
    faults::sys::{errno_name, resolve_syscalls},
    kernel::Kernel,
    target::Cgroup,
    unsupported, usage,
};

#[derive(Args, Debug)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub target: ObserveTarget,
    /// Show only these syscalls (names or strace's sets such as %file, separated by commas); all
    /// are measured.
    #[arg(long = "syscall", value_name = "NAME[,NAME...]", value_delimiter = ',')]
    pub syscalls: Vec<String>,
    /// Stop after this long (default: at Ctrl-C or SIGTERM).
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::cli::parse_duration)]
    pub duration: Option<Duration>,
    /// How often the live table is redrawn (on a terminal).
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics: per syscall, calls, errors by errno and a
    /// latency histogram; packets, bytes and TCP retransmissions (updated every --interval).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ObserveTarget {
    /// The cgroup v2 directory to observe, with its descendants.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Observe the cgroup v2 this process is in.
    #[arg(long, value_name = "PID", value_parser = crate::cli::parse_pid)]
    pub pid: Option<u32>,
    /// Observe a container: its ID, a unique prefix of it, or its name.
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
    /// Observe every container of a Kubernetes pod on this node: its UID, or NAMESPACE/NAME (asked
    /// of the Kubernetes API).
    #[arg(long, value_name = "UID|NAMESPACE/NAME")]
    pub pod: Option<String>,
}

/// The observed calls so far, summed over the CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub calls: BTreeMap<ObsKey, CallStats>,
    pub errors: BTreeMap<ObsErrKey, u64>,
    /// By slot.
    pub net: BTreeMap<u32, NetStats>,
}

impl Counts {
    /// What happened since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        let calls = self.calls.iter().map(|(k, s)| (*k, before.calls.get(k).map_or(*s, |b| s.since(b)))).filter(|(_, s)| s.calls > 0).collect();
        let errors = self.errors.iter().map(|(k, n)| (*k, n - before.errors.get(k).copied().unwrap_or(0).min(*n))).filter(|(_, n)| *n > 0).collect();
        let net = self.net.iter().map(|(k, n)| (*k, before.net.get(k).map_or(*n, |b| n.since(b)))).collect();
        Counts { calls, errors, net }
    }

    /// One row per syscall of `slot` (those `only` names, if any), most time spent first.
    pub fn rows(&self, slot: u32, only: &[u32]) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .calls
            .iter()
            .filter(|(k, _)| k.slot == slot && (only.is_empty() || only.contains(&k.nr)))
            .map(|(k, s)| {
                let errors = self
                    .errors
                    .iter()
                    .filter(|(e, _)| e.slot == slot && e.nr == k.nr)
                    .map(|(e, n)| (errno_name(e.errno as i32).unwrap_or_else(|| e.errno.to_string()), *n))
                    .collect();
                Row {
                    syscall: syscalls::Sysno::new(k.nr as usize).map_or_else(|| format!("syscall_{}", k.nr), |s| s.name().to_string()),
                    nr: k.nr,
                    calls: s.calls,
                    errors,
                    total_ns: s.total_ns,
                    p50_ns: s.quantile_ns(0.5),
                    p90_ns: s.quantile_ns(0.9),
                    p99_ns: s.quantile_ns(0.99),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.nr.cmp(&b.nr)));
        rows
    }
}

/// One syscall's calls, as `chaos observe` reports them.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub syscall: String,
    pub nr: u32,
    pub calls: u64,
    /// Calls that failed, by errno name.
    pub errors: BTreeMap<String, u64>,
    /// Time in the calls, summed.
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

/// The kernel programs of an observation: attached while this lives (links, never pinned).
pub struct Observer {
    _links: Vec<FdLink>,
}

/// Where a program of the observation attaches.
fn attach_error(what: &str, e: impl std::error::Error) -> Error {
    Error::Other(anyhow::anyhow!("attaching {what}: {}", crate::error::chain(&e)))
}

impl Observer {
    /// Observes each of `cgroups` (slot = its index) with its descendants. Nothing is recorded
    /// until both programs are attached; a kernel without tp_btf is told so by name.
    pub fn start(kernel: &mut Kernel, cgroups: &[Cgroup]) -> Result<Observer> {
        for (slot, cg) in cgroups.iter().enumerate() {
            kernel.observe_cgroup(cg.id, slot as u32)?;
        }
        let btf = crate::kernel::vmlinux_btf().map_err(|e| unsupported!("the kernel exposes no BTF ({e}); chaos observe needs tp_btf sys_enter/sys_exit"))?;
        let mut links = Vec::new();
        for (name, point) in [("chaos_observe_exit", "sys_exit"), ("chaos_observe_enter", "sys_enter")] {
            let prog: &mut BtfTracePoint = kernel.get(name)?;
            prog.load(point, btf).map_err(|e| crate::session::attach::load_refused(&format!("tp_btf {point}"), &e))?;
            let id = prog.attach().map_err(|e| Error::Other(anyhow::anyhow!("attaching tp_btf {point}: {e}")))?;
            links.push(prog.take_link(id).map_err(|e| Error::Other(e.into()))?.into());
        }
        // Traffic: on each observed cgroup, beside any program already there (a fault's): a
        // cgroup link always lets others attach (the kernel treats it as multi).
        for cg in cgroups {
            let dir = std::fs::File::open(&cg.path).map_err(|e| usage!("cannot open cgroup {}: {e}", cg.path.display()))?;
            for (name, direction) in [("chaos_observe_egress", CgroupSkbAttachType::Egress), ("chaos_observe_ingress", CgroupSkbAttachType::Ingress)] {
                let prog: &mut CgroupSkb = kernel.program(name, "cgroup_skb")?;
                let id = prog.attach(&dir, direction, CgroupAttachMode::Single).map_err(|e| attach_error(name, e))?;
                links.push(FdLink::try_from(prog.take_link(id).map_err(|e| Error::Other(e.into()))?).map_err(|e| Error::Other(e.into()))?);
            }
            let prog: &mut SockOps = kernel.program("chaos_observe_sockops", "sock_ops")?;
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(|e| attach_error("sock_ops", e))?;
            links.push(FdLink::try_from(prog.take_link(id).map_err(|e| Error::Other(e.into()))?).map_err(|e| Error::Other(e.into()))?);
        }
        let link_ids: Vec<u32> = links.iter().filter_map(|l| l.info().ok().map(|i| i.id())).collect();
        let mut program_ids = Vec::new();
        for name in ["chaos_observe_enter", "chaos_observe_exit", "chaos_observe_egress", "chaos_observe_ingress", "chaos_observe_sockops"] {
            if let Some(p) = kernel.program_info_id(name) {
                program_ids.push(p);
            }
        }
        log::info!("attached: programs {program_ids:?} links {link_ids:?}");
        Ok(Observer { _links: links })
    }
}

/// "1.2 ms", "840 µs", "35 ns": a duration for a table.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// The table of `rows`: one line per syscall.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!("{:<20} {:>10} {:>10} {:>10} {:>10} {:>10}  errors\n", "syscall", "calls", "time", "p50", "p90", "p99");
    for r in rows {
        let errors: Vec<String> = r.errors.iter().map(|(e, n)| format!("{e} {n}")).collect();
        out.push_str(&format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10}  {}\n",
            r.syscall,
            r.calls,
            human_ns(r.total_ns),
            human_ns(r.p50_ns),
            human_ns(r.p90_ns),
            human_ns(r.p99_ns),
            errors.join(", ")
        ));
    }
    out
}

/// The traffic line under the table.
pub fn net_line(n: &NetStats) -> String {
    format!(
        "network: in {} packets ({} bytes), out {} packets ({} bytes), {} TCP retransmissions\n",
        n.packets_in, n.bytes_in, n.packets_out, n.bytes_out, n.retransmits
    )
}

pub fn run(args: ObserveArgs) -> Result<()> {
    let only: Vec<u32> = resolve_syscalls(&args.syscalls)?.into_iter().map(|(_, nr)| nr).collect();
    let t = &args.target;
    let pod = t.pod.as_deref().map(crate::kubernetes::pods::pod_uid).transpose()?;
    let cgroup = Cgroup::of_target(crate::target::Named::from_options(t.cgroup.as_deref(), t.pid, t.container.as_deref(), pod.as_deref())?)?;
    crate::privileges::check()?;
    let mut kernel = Kernel::load(false)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Other(e.into()))?;
    let _guard = runtime.enter();
    let signals = crate::watch::Signals::register().map_err(|e| Error::Other(e.into()))?;
    let metrics = args.metrics.map(crate::metrics::Exporter::serve).transpose()?;
    let observer = Observer::start(&mut kernel, std::slice::from_ref(&cgroup))?;
    let start = Instant::now();
    eprintln!("chaos: observing {} (Ctrl-C to stop)", cgroup.path.display());
    let tty = std::io::stdout().is_terminal() && !args.json;
    let ended = runtime.block_on(async {
        let crate::watch::Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(args.interval);
        let mut last = Counts::default();
        loop {
            let until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = until => break "deadline",
                _ = sigint.recv() => break "SIGINT",
                _ = sigterm.recv() => break "SIGTERM",
                _ = sighup.recv() => break "SIGHUP",
                _ = tick.tick() => {
                    let Ok(now) = kernel.observed() else { continue };
                    if let Some(m) = metrics.as_ref() {
                        let mut f = crate::metrics::Families::default();
                        f.observed(&now, std::slice::from_ref(&cgroup));
                        m.publish(&f);
                    }
                    if tty {
                        let delta = now.since(&last);
                        let rows = delta.rows(0, &only);
                        let net = delta.net.get(&0).copied().unwrap_or_default();
                        last = now;
                        let mut out = std::io::stdout().lock();
                        let _ = write!(out, "\x1b[H\x1b[2J{} — {:.0}s, last {:?}\n{}{}", cgroup.path.display(), start.elapsed().as_secs_f64(), args.interval, table(&rows), net_line(&net));
                        let _ = out.flush();
                    }
                }
            }
        }
    });
    let counts = kernel.observed()?;
    drop(observer);
    let rows = counts.rows(0, &only);
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        let n = counts.net.get(&0).copied().unwrap_or_default();
        let network = serde_json::json!({"packets_in": n.packets_in, "bytes_in": n.bytes_in, "packets_out": n.packets_out, "bytes_out": n.bytes_out, "tcp_retransmits": n.retransmits});
        let summary = serde_json::json!({"cgroup": cgroup.path, "seconds": secs, "ended_by": ended, "syscalls": rows, "network": network});
        println!("{summary}");
    } else {
        print!("{} for {secs:.1}s (ended by {ended}):\n{}{}", cgroup.path.display(), table(&rows), net_line(&counts.net.get(&0).copied().unwrap_or_default()));
    }
    Ok(())
}
