//! The experiment's clock: services up, faults attached but idle, observation and probes on;
//! baseline, inject, recovery, interval by interval; then the verdict and the report.

use std::{
    io::{IsTerminal, Write},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use chaos_common::observe::CallStats;

use super::{
    EXIT_ABORTED, EXIT_VIOLATED, Experiment, ObserveTarget, RunArgs, Thresholds,
    probe::{self, Attempt, Running},
    report::{self, Check, Point, Report, SourceReport},
    threshold::{Sample, Threshold},
};
use crate::{
    error::{Error, Result},
    faults::sys::resolve_syscalls,
    kernel::Kernel,
    observe::{Counts, Observer},
    privileges,
    sandbox::{TempCgroup, spawn_in},
    session::{self, Options, Session},
    target::Cgroup,
    usage,
};

/// A service of the experiment: killed, and its cgroup removed, when dropped.
struct Service {
    child: Child,
    _cgroup: TempCgroup,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_services(exp: &Experiment, dir: &std::path::Path) -> Result<Vec<Service>> {
    let mut services = Vec::new();
    for s in &exp.services {
        let rel = s.cgroup.strip_prefix("/").unwrap_or(&s.cgroup).to_string_lossy().into_owned();
        let cgroup = service_cgroup(&rel).map_err(|e| usage!("service {:?}: {e:#}", s.name))?;
        let log = std::fs::File::create(dir.join(format!("service-{}.log", s.name))).map_err(|e| Error::Other(e.into()))?;
        // `chaos` is this binary, as the experiment's own fault is.
        let mut cmd = if s.argv[0] == "chaos" { crate::self_command() } else { std::process::Command::new(&s.argv[0]) };
        cmd.args(&s.argv[1..]).stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| Error::Other(e.into()))?).stderr(log);
        // The service dies with chaos, SIGKILL included: the kernel sends it SIGKILL when this
        // (the main) thread exits.
        let parent = std::process::id() as i32;
        // SAFETY: runs in the child between fork and exec, where only async-signal-safe calls
        // are allowed: prctl(2), getppid(2) and _exit(2) are.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Chaos died before the line above: nothing would kill this service later.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_in(&mut cmd, Some(&cgroup.path), None).map_err(|e| usage!("service {:?}: cannot run {}: {e}", s.name, s.argv[0]))?;
        let mut service = Service { child, _cgroup: cgroup };
        if let Some(addr) = s.ready {
            let start = Instant::now();
            loop {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Ok(Some(status)) = service.child.try_wait() {
                    return Err(usage!("service {:?} exited ({status}) before {addr} accepted a connection; see {}", s.name, dir.join(format!("service-{}.log", s.name)).display()));
                }
                if start.elapsed() > Duration::from_secs(15) {
                    return Err(usage!("service {:?}: {addr} accepted no connection within 15s", s.name));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        services.push(service);
    }
    // A service that could not start (its port taken, say) may exit just after another process's
    // listener answered its readiness check: make sure each is still running.
    if !services.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (s, service) in exp.services.iter().zip(services.iter_mut()) {
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(usage!("service {:?} exited ({status}) at its start; see {}", s.name, dir.join(format!("service-{}.log", s.name)).display()));
        }
    }
    Ok(services)
}

/// A service's cgroup: new, or left empty by a run that was killed (its services died with it).
fn service_cgroup(rel: &str) -> anyhow::Result<TempCgroup> {
    let path = crate::target::cgroup2_mount()?.mount_point.join(rel);
    if path.exists() {
        let members = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let children = std::fs::read_dir(&path)?.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        if !members.trim().is_empty() || children {
            anyhow::bail!("cgroup {} exists and is in use; give a cgroup that does not exist (chaos creates and removes it)", path.display());
        }
        return Ok(TempCgroup { path });
    }
    TempCgroup::new(rel)
}

/// An observed cgroup of the experiment: its slot in the observer, the syscalls it counts.
struct Observed {
    slot: u32,
    only: Vec<u32>,
}

/// Error returns that are not failures, left out of an observed cgroup's error rate (they stay in
/// its errors by errno): a non-blocking connect answers EINPROGRESS while it connects, so a client
/// on an event loop would otherwise show a failure per connection.
const NOT_FAILURES: [u32; 1] = [libc::EINPROGRESS as u32];

/// The calls of `slot` (those in `only`, or all) in `counts` as one sample.
fn calls_sample(counts: &Counts, o: &Observed, secs: f64) -> Sample {
    let mine = |slot: u32, nr: u32| slot == o.slot && (o.only.is_empty() || o.only.contains(&nr));
    let mut all = CallStats::default();
    for (k, s) in &counts.calls {
        if mine(k.slot, k.nr) {
            all.merge(s);
        }
    }
    let not_failures: u64 = counts.errors.iter().filter(|(k, _)| mine(k.slot, k.nr) && NOT_FAILURES.contains(&k.errno)).map(|(_, n)| n).sum();
    let errors = all.errors.saturating_sub(not_failures);
    let ms = |q| all.quantile_ns(q) as f64 / 1e6;
    Sample {
        count: all.calls,
        errors,
        rate: all.calls as f64 / secs.max(1e-9),
        error_rate: if all.calls == 0 { 0.0 } else { 100.0 * errors as f64 / all.calls as f64 },
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
    }
}

/// The first threshold of `list` that `sample` breaks.
fn broken<'t>(list: &'t [Threshold], sample: &Sample) -> Option<&'t Threshold> {
    list.iter().find(|t| !t.holds(sample))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Baseline,
    Inject,
    Recovery,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Inject => "inject",
            Phase::Recovery => "recovery",
        }
    }
}

/// The report folder: the one asked for, or a new timestamped one here.
fn report_dir(asked: Option<&std::path::Path>) -> Result<PathBuf> {
    let dir = match asked {
        Some(d) => d.to_path_buf(),
        None => {
            let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().chars().filter(char::is_ascii_digit).collect();
            PathBuf::from(format!("chaos-report-{}-{}", &stamp[..8], &stamp[8..14]))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| usage!("cannot create the report folder {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `chaos run`: returns the exit code (0 held, [`EXIT_VIOLATED`], [`EXIT_ABORTED`]).
pub fn run(args: RunArgs) -> Result<i32> {
    let exp = Experiment::load(&args.file)?;
    if args.check {
        println!(
            "{}: ok: {} fault(s), {} probe(s), {} observed cgroup(s), {} service(s); baseline {}, inject {}, recovery {}",
            exp.path.display(),
            exp.faults.len(),
            exp.probes.len(),
            exp.observes.len(),
            exp.services.len(),
            humantime::format_duration(exp.baseline),
            humantime::format_duration(exp.inject),
            humantime::format_duration(exp.recovery)
        );
        return Ok(0);
    }
    run_loaded(exp, &args)
}

/// Runs a checked experiment (`chaos run`, and `chaos demo` on its built-in one): returns the exit
/// code (0 held, [`EXIT_VIOLATED`], [`EXIT_ABORTED`]).
pub fn run_loaded(mut exp: Experiment, args: &RunArgs) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    let signals = {
        let _in_runtime = rt.enter();
        crate::watch::Signals::register().map_err(anyhow::Error::from)?
    };
    privileges::check()?;
    let dir = report_dir(args.report.as_deref())?;
    let metrics = args.metrics.map(crate::metrics::Exporter::serve).transpose()?;
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());

    let services = start_services(&exp, &dir)?;
    let service_cgroup = |name: &str| exp.services.iter().find(|s| s.name == name).map(|s| s.cgroup.clone());

    // The faults: attached now, idle until the inject phase.
    let fault_count = exp.faults.len();
    let plan = session::plan(std::mem::take(&mut exp.faults))?;
    let swept = crate::session::journal::sweep();
    if swept.undone > 0 {
        eprintln!("chaos: undid {} change(s) left by {} killed session(s)", swept.undone, swept.sessions);
    }
    let mut session = Some(Session::start(plan, &Options { deferred: true, ..Default::default() })?);
    if let Some(s) = &session {
        let a = s.attached();
        let devices: Vec<String> = a.devices.iter().map(|d| format!("{}({})", d.ifname, d.mode)).collect();
        log::info!("attached: programs {:?} links {:?} devices [{}]", a.programs, a.links, devices.join(" "));
    }

    // The observed cgroups: one slot per distinct cgroup.
    let mut cgroups: Vec<Cgroup> = Vec::new();
    let mut observed = Vec::new();
    for o in &exp.observes {
        let cg = match &o.target {
            ObserveTarget::Cgroup(p) => Cgroup::from_arg(p)?,
            ObserveTarget::Pid(pid) => Cgroup::of_pid(*pid)?,
            ObserveTarget::Service(s) => Cgroup::from_arg(&service_cgroup(s).unwrap_or_default())?,
        };
        let slot = match cgroups.iter().position(|c| c.id == cg.id) {
            Some(i) => i,
            None => {
                cgroups.push(cg);
                cgroups.len() - 1
            }
        } as u32;
        let only = resolve_syscalls(&o.syscalls)?.into_iter().map(|(_, nr)| nr).collect();
        observed.push(Observed { slot, only });
    }
    let mut obs_kernel = if cgroups.is_empty() { None } else { Some(Kernel::load(false)?) };
    let observer = match obs_kernel.as_mut() {
        Some(k) => Some(Observer::start(k, &cgroups)?),
        None => None,
    };
    let read_counts = |k: &Option<Kernel>| k.as_ref().map(|k| k.observed()).transpose().map(Option::unwrap_or_default);

    // The sources, probes first, in file order.
    let mut sources: Vec<SourceReport> = exp
        .probes
        .iter()
        .map(|p| SourceReport::new(&p.name, "probe", &p.check.describe(), &p.thresholds))
        .chain(exp.observes.iter().zip(&observed).map(|(o, ob)| {
            let what = match &o.syscalls[..] {
                [] => "all syscalls".to_string(),
                s => s.join(","),
            };
            SourceReport::new(&o.name, "syscalls", &format!("{what} of {}", cgroups[ob.slot as usize].path.display()), &o.thresholds)
        }))
        .collect();
    let thresholds: Vec<Thresholds> = exp.probes.iter().map(|p| p.thresholds.clone()).chain(exp.observes.iter().map(|o| o.thresholds.clone())).collect();

    let origin = Instant::now();
    let origin_wall = std::time::SystemTime::now();
    let total = exp.baseline + exp.inject + exp.recovery;
    let mut probes: Vec<Running> = exp.probes.iter().map(|p| Running::start(p.check.clone(), p.every, p.timeout, origin, total + Duration::from_secs(60))).collect();
    let mut attempts: Vec<Vec<Attempt>> = vec![Vec::new(); probes.len()];

    eprintln!(
        "chaos: experiment {:?}: baseline {}, inject {} ({} fault(s)), recovery {}; report in {}",
        exp.title,
        humantime::format_duration(exp.baseline),
        humantime::format_duration(exp.inject),
        fault_count,
        humantime::format_duration(exp.recovery),
        dir.display()
    );
    let tty = std::io::stderr().is_terminal();
    let mut phase = Phase::Baseline;
    let mut snapshots = vec![read_counts(&obs_kernel)?];
    let mut last_counts = snapshots[0].clone();
    let mut last_injected = 0u64;
    let mut series: Vec<Point> = Vec::new();
    let (mut fault_start, mut fault_end): (Option<f64>, Option<f64>) = (None, None);
    let mut abort: Option<report::Abort> = None;
    let mut steady_baseline: Vec<Check> = Vec::new();
    let mut fault_summary = None;
    let mut in_a_row = 0u32;
    let mut recovered_after: Option<f64> = None;
    let mut recovery_cut: Option<String> = None;
    let mut last_t = 0.0f64;
    let recovery_checked = thresholds.iter().any(|t| !t.steady.is_empty());

    rt.block_on(async {
        let crate::watch::Signals { int: mut sigint, term: mut sigterm, hup: mut sighup } = signals;
        let mut tick = tokio::time::interval(exp.interval);
        tick.tick().await;
        // What the session does itself (proc.pause freezes, proc.kill signals, a restarted
        // target followed, its heartbeat to the guardian), at the pace `chaos apply`'s watch
        // loop does it.
        let mut drive = tokio::time::interval(crate::watch::TICK);
        let mut last_refresh = Instant::now();
        loop {
            let signal = tokio::select! {
                _ = tick.tick() => None,
                _ = drive.tick() => {
                    if let Some(s) = session.as_mut() {
                        s.drive();
                        if last_refresh.elapsed() >= crate::watch::REFRESH {
                            s.refresh();
                            last_refresh = Instant::now();
                        }
                    }
                    continue;
                }
                _ = sigint.recv() => Some("SIGINT"),
                _ = sigterm.recv() => Some("SIGTERM"),
                _ = sighup.recv() => Some("SIGHUP"),
            };
            let t = origin.elapsed().as_secs_f64();
            let secs = (t - last_t).max(1e-3);
            // This interval's numbers, source by source.
            let mut samples = Vec::new();
            for (i, p) in probes.iter().enumerate() {
                let new = p.take();
                samples.push(probe::sample(&new, secs));
                attempts[i].extend(new);
            }
            let now_counts = read_counts(&obs_kernel)?;
            let delta = now_counts.since(&last_counts);
            for o in &observed {
                samples.push(calls_sample(&delta, o, secs));
            }
            last_counts = now_counts;
            let injected = session.as_ref().map_or(last_injected, |s| s.totals().1);
            let injected_per_s = injected.saturating_sub(last_injected) as f64 / secs;
            last_injected = injected;
            series.push(Point { t, phase: phase.name(), samples: samples.clone(), injected_per_s });
            last_t = t;
            live(tty, &exp, phase, t, &sources, &samples, injected_per_s);
            if let Some(m) = &metrics {
                let mut f = crate::metrics::Families::default();
                for p in [Phase::Baseline, Phase::Inject, Phase::Recovery] {
                    f.gauge("chaos_experiment_phase", "1 for the phase the experiment is in.", &[("phase", p.name())], f64::from(u8::from(p == phase)));
                }
                for (i, a) in attempts.iter().enumerate() {
                    let l = [("probe", exp.probes[i].name.as_str())];
                    f.counter("chaos_probe_attempts_total", "Attempts of the steady-state probe.", &l, a.len() as f64);
                    f.counter("chaos_probe_failures_total", "Failed attempts of the steady-state probe.", &l, a.iter().filter(|x| !x.ok).count() as f64);
                }
                if let Some(s) = &session {
                    s.metrics(&mut f);
                }
                f.observed(&last_counts, &cgroups);
                m.publish(&f);
            }

            match phase {
                Phase::Baseline => {
                    if let Some(by) = signal {
                        abort = Some(report::Abort { at_s: t, by: by.into(), reason: format!("{by} during the baseline: no fault was injected") });
                        break;
                    }
                    if t < exp.baseline.as_secs_f64() {
                        continue;
                    }
                    // The steady state must hold before anything is injected.
                    let counts = last_counts.since(&snapshots[0]);
                    for (i, src) in sources.iter().enumerate() {
                        let s = phase_sample(i, &attempts, &counts, &observed, 0.0, t);
                        for th in &thresholds[i].steady {
                            steady_baseline.push(Check::new(&src.name, th, "baseline", &s));
                        }
                    }
                    snapshots.push(last_counts.clone());
                    if let Some(c) = steady_baseline.iter().find(|c| !c.held) {
                        abort = Some(report::Abort { at_s: t, by: "steady state".into(), reason: format!("the steady state did not hold over the baseline ({}: {} was {}): no fault was injected", c.source, c.threshold, c.value_text) });
                        break;
                    }
                    if let Some(s) = session.as_mut() {
                        s.begin()?;
                    }
                    fault_start = Some(origin.elapsed().as_secs_f64());
                    phase = Phase::Inject;
                    eprint_line(tty, &format!("chaos: {t:.1}s: injecting {fault_count} fault(s)"));
                }
                Phase::Inject => {
                    let start = fault_start.unwrap_or(t);
                    let mut by = signal.map(|s| (s.to_string(), format!("{s} during the inject phase")));
                    if by.is_none() && session.as_ref().is_some_and(Session::stop_requested) {
                        by = Some(("chaos stop".into(), "`chaos stop` during the inject phase".into()));
                    }
                    if by.is_none() {
                        for (i, src) in sources.iter().enumerate() {
                            if let Some(th) = thresholds[i].abort.iter().find(|t| t.crossed(&samples[i])) {
                                let v = th.metric.show(samples[i].value(th.metric));
                                by = Some(("abort threshold".into(), format!("{}: {th} crossed ({v}) at {t:.1}s", src.name)));
                                break;
                            }
                        }
                    }
                    // The tick nearest the kernel's deadline (the rules stop there on their own).
                    let ended = t - start >= exp.inject.as_secs_f64() - exp.interval.as_secs_f64() / 2.0;
                    if by.is_none() && !ended {
                        continue;
                    }
                    let ended_by = by.as_ref().map_or("deadline".to_string(), |b| b.0.clone());
                    if let Some(s) = session.take() {
                        fault_summary = Some(s.finish(&ended_by, Duration::from_secs_f64(t - start))?);
                    }
                    let end = origin.elapsed().as_secs_f64();
                    fault_end = Some(end);
                    snapshots.push(read_counts(&obs_kernel)?);
                    if let Some((by, reason)) = by {
                        abort = Some(report::Abort { at_s: end, by, reason });
                        eprint_line(tty, &format!("chaos: {end:.1}s: aborted, every fault removed: {}", abort.as_ref().map_or("", |a| a.reason.as_str())));
                        if signal.is_some() {
                            break;
                        }
                    } else {
                        eprint_line(tty, &format!("chaos: {end:.1}s: faults removed; watching the recovery"));
                    }
                    phase = Phase::Recovery;
                }
                Phase::Recovery => {
                    let end = fault_end.unwrap_or(t);
                    if let Some(by) = signal {
                        recovery_cut = Some(format!("{by} at {t:.1}s"));
                        break;
                    }
                    // Recovered: `recovered_after` intervals in a row within every steady threshold.
                    let steady = sources.iter().enumerate().all(|(i, _)| broken(&thresholds[i].steady, &samples[i]).is_none());
                    in_a_row = if steady { in_a_row + 1 } else { 0 };
                    if recovery_checked && in_a_row == exp.recovered_after && recovered_after.is_none() {
                        let first = series.len() - exp.recovered_after as usize;
                        let began = if first == 0 { 0.0 } else { series[first - 1].t };
                        recovered_after = Some((began - end).max(0.0));
                    }
                    if t - end >= exp.recovery.as_secs_f64() - exp.interval.as_secs_f64() / 2.0 {
                        break;
                    }
                }
            }
        }
        Ok::<(), Error>(())
    })?;
    if tty {
        eprintln!();
    }
    let end_t = origin.elapsed().as_secs_f64();
    for (i, p) in probes.iter_mut().enumerate() {
        p.stop();
        attempts[i].extend(p.take());
    }
    let final_counts = read_counts(&obs_kernel)?;
    drop(observer);
    // A session never begun (aborted in the baseline) is torn down here, nothing injected.
    if let Some(s) = session.take() {
        fault_summary = Some(s.finish(abort.as_ref().map_or("deadline", |a| a.by.as_str()), Duration::ZERO)?);
    }
    drop(services);

    // Phase by phase: the spans, each source's numbers, each observed cgroup's syscalls.
    let b_end = fault_start.unwrap_or(end_t).min(end_t);
    let mut spans = vec![("baseline", 0.0, b_end)];
    if let Some(fs) = fault_start {
        let fe = fault_end.unwrap_or(end_t);
        spans.push(("inject", fs, fe));
        if fault_end.is_some() && end_t > fe {
            spans.push(("recovery", fe, end_t));
        }
    }
    snapshots.push(final_counts);
    let n_probes = attempts.len();
    for (p, (name, from, to)) in spans.iter().enumerate() {
        let counts = snapshots.get(p + 1).unwrap_or(snapshots.last().expect("one snapshot")).since(&snapshots[p]);
        for (i, src) in sources.iter_mut().enumerate() {
            let s = phase_sample(i, &attempts, &counts, &observed, *from, *to);
            src.phases.insert(name.to_string(), s);
            if i >= n_probes {
                let o = &observed[i - n_probes];
                let rows = counts.rows(o.slot, &o.only);
                src.syscalls.insert(name.to_string(), rows);
            }
        }
    }
    for (i, src) in sources.iter_mut().enumerate() {
        if i < n_probes {
            src.failures = first_errors(&attempts[i]);
        }
    }
    let mut hypothesis = Vec::new();
    if fault_start.is_some() {
        for (i, src) in sources.iter().enumerate() {
            if let Some(s) = src.phases.get("inject") {
                for th in thresholds[i].hypothesis() {
                    hypothesis.push(Check::new(&src.name, th, "inject", s));
                }
            }
        }
    }
    let verdict = if abort.is_some() {
        "aborted"
    } else if hypothesis.iter().all(|c| c.held) {
        "held"
    } else {
        "violated"
    };
    let report = Report {
        title: exp.title.clone(),
        file: exp.path.display().to_string(),
        hypothesis_text: exp.hypothesis.clone(),
        started_unix,
        verdict: verdict.into(),
        abort,
        phases: spans.iter().map(|(n, a, b)| report::Span { name: n.to_string(), start_s: *a, end_s: *b }).collect(),
        fault: fault_start.map(|s| report::Span { name: "faults".into(), start_s: s, end_s: fault_end.unwrap_or(end_t) }),
        steady_state: steady_baseline,
        hypothesis,
        recovery: report::Recovery {
            checked: recovery_checked && fault_end.is_some(),
            recovered_after_s: recovered_after,
            intervals_needed: exp.recovered_after,
            watched_s: fault_end.map_or(0.0, |e| end_t - e),
            cut_short: recovery_cut,
        },
        interval_s: exp.interval.as_secs_f64(),
        sources,
        series,
        faults: fault_summary,
    };
    report.write(&dir)?;
    if let Some(url) = &args.otlp {
        send_trace(url, &report, origin_wall);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(anyhow::Error::from)?);
    } else {
        print!("{}", report.text());
        println!("report: {}", dir.join("report.html").display());
    }
    Ok(match verdict {
        "held" => 0,
        "violated" => EXIT_VIOLATED,
        _ => EXIT_ABORTED,
    })
}

/// The experiment as a trace: a root span, a span per phase, one per fault rule, the abort as an
/// event. A failure to send is a warning.
fn send_trace(url: &str, report: &Report, origin: std::time::SystemTime) {
    use crate::otlp::{Attr, Trace};
    let at = |s: f64| origin + Duration::from_secs_f64(s.max(0.0));
    let mut trace = Trace::new();
    for p in &report.phases {
        let events = match (&report.abort, p.name.as_str()) {
            (Some(a), "inject" | "baseline") if a.at_s >= p.start_s && a.at_s <= p.end_s + 0.5 => vec![(format!("abort: {}", a.reason), at(a.at_s))],
            _ => Vec::new(),
        };
        trace.child(&format!("phase {}", p.name), at(p.start_s), at(p.end_s), vec![("chaos.phase", Attr::Str(p.name.clone()))], events);
    }
    if let (Some(f), Some(summary)) = (&report.fault, &report.faults) {
        trace.faults(summary, at(f.start_s), at(f.end_s));
    }
    let end = report.phases.last().map_or(origin, |p| at(p.end_s));
    let attrs = vec![("chaos.experiment", Attr::Str(report.title.clone())), ("chaos.verdict", Attr::Str(report.verdict.clone())), ("chaos.file", Attr::Str(report.file.clone()))];
    let error = (report.verdict != "held").then(|| report.verdict_line());
    if let Err(e) = trace.send(url, &format!("chaos experiment {}", report.title), origin, end, attrs, error) {
        eprintln!("chaos: warning: {e:#}");
    }
}

/// Source `i`'s sample over `[from, to)`: its probe attempts then, or its calls in `counts`
/// (sources are the probes, then the observed cgroups).
fn phase_sample(i: usize, attempts: &[Vec<Attempt>], counts: &Counts, observed: &[Observed], from: f64, to: f64) -> Sample {
    let secs = (to - from).max(1e-3);
    if i < attempts.len() {
        let span: Vec<Attempt> = attempts[i].iter().filter(|a| a.t >= from && a.t < to).cloned().collect();
        probe::sample(&span, secs)
    } else {
        calls_sample(counts, &observed[i - attempts.len()], secs)
    }
}

/// The most frequent failure reasons of a probe, for the report.
fn first_errors(attempts: &[Attempt]) -> Vec<(String, u64)> {
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for a in attempts {
        if let Some(e) = &a.error {
            *by.entry(e.clone()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(5);
    v
}

fn eprint_line(tty: bool, line: &str) {
    if tty {
        eprintln!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// The live display: a progress bar and the golden signals on one rewritten line on a terminal,
/// a plain line per interval elsewhere.
fn live(tty: bool, exp: &Experiment, phase: Phase, t: f64, sources: &[SourceReport], samples: &[Sample], injected_per_s: f64) {
    let total = (exp.baseline + exp.inject + exp.recovery).as_secs_f64();
    let mut parts = Vec::new();
    for (src, s) in sources.iter().zip(samples) {
        parts.push(format!("{} {:.0}/s err {:.1}% p99 {:.1}ms", src.name, s.rate, s.error_rate, s.p99_ms));
    }
    let signals = parts.join(" | ");
    let inj = if phase == Phase::Inject { format!(" | injected {injected_per_s:.0}/s") } else { String::new() };
    let mut e = std::io::stderr().lock();
    if tty {
        let width = 20;
        let done = ((t / total).clamp(0.0, 1.0) * width as f64) as usize;
        let bar = format!("[{}{}]", "#".repeat(done), ".".repeat(width - done));
        let _ = write!(e, "\r\x1b[2K{bar} {:<8} {:>5.0}s/{total:.0}s  {signals}{inj}", phase.name(), t);
    } else {
        let _ = writeln!(e, "chaos: {t:6.1}s {:<8} {signals}{inj}", phase.name());
    }
    let _ = e.flush();
}


#[cfg(test)]
mod tests {
    use chaos_common::observe::{ObsErrKey, ObsKey};

    use super::*;

    #[test]
    fn a_connect_in_progress_is_not_a_failure_but_a_refused_one_is() {
        const CONNECT: u32 = 42;
        let mut counts = Counts::default();
        counts.calls.insert(ObsKey { slot: 0, nr: CONNECT }, CallStats { calls: 10, errors: 6, ..Default::default() });
        // Another cgroup's and another call's errors count for neither.
        counts.calls.insert(ObsKey { slot: 1, nr: CONNECT }, CallStats { calls: 10, errors: 10, ..Default::default() });
        for (slot, errno, n) in [(0, libc::EINPROGRESS, 4), (0, libc::ECONNREFUSED, 2), (1, libc::EINPROGRESS, 10)] {
            counts.errors.insert(ObsErrKey { slot, nr: CONNECT, errno: errno as u32, _pad: 0 }, n);
        }
        let s = calls_sample(&counts, &Observed { slot: 0, only: vec![] }, 1.0);
        assert_eq!((s.count, s.errors), (10, 2));
        assert_eq!(s.error_rate, 20.0);
        let other_call = calls_sample(&counts, &Observed { slot: 0, only: vec![CONNECT + 1] }, 1.0);
        assert_eq!((other_call.count, other_call.errors, other_call.error_rate), (0, 0, 0.0));
    }
}
