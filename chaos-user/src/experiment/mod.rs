//! `chaos run EXPERIMENT.toml`: the method as a file. Probes define the steady state, thresholds
//! the hypothesis and the abort conditions; the faults are the engine's `[[fault]]` tables, run in
//! one session between a baseline and a recovery phase; the observed cgroups' syscalls are
//! measured throughout; the verdict and a report (JSON, Markdown, HTML) come at the end.
//!
//! Every table is parsed the way fault tables are (`file.rs`): its keys are the long flags of a
//! clap command, so values, required keys and errors (`FILE:LINE:COLUMN: ...`) work alike.

pub mod probe;
mod report;
mod runner;
pub mod threshold;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, FromArgMatches, parser::ValueSource};

use crate::{
    cli::parse_duration,
    error::{Error, Result},
    faults::{self, FaultSpec},
    file::{self, Section, SectionTable},
    usage,
};
use probe::Check;
use threshold::Threshold;

pub use runner::{run, run_loaded};

/// Exit codes of `chaos run` beyond the usual ones: the experiment ran and its hypothesis did not
/// hold, or it was aborted (an abort threshold, Ctrl-C, `chaos stop`, a steady state not met).
pub const EXIT_VIOLATED: i32 = 4;
pub const EXIT_ABORTED: i32 = 5;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Check the file (syntax, keys, values, thresholds, phases) and exit; run nothing.
    #[arg(long)]
    pub check: bool,
    /// Where to write report.json, report.md and report.html (default: a new folder
    /// chaos-report-YYYYMMDD-HHMMSS in the current directory).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the report as one JSON object on stdout (it is written to the folder too).
    #[arg(long)]
    pub json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics while it runs: the phase, each probe's
    /// attempts and failures, the faults' counters, the observed cgroups' syscalls and traffic.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// At the end, send the experiment as OpenTelemetry spans (its phases, each fault with its
    /// counters, the abort) to this OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces.
    #[arg(long, value_name = "URL", value_parser = crate::otlp::parse_url)]
    pub otlp: Option<String>,
}

/// `[experiment]`: the phases.
#[derive(Args, Debug, Clone)]
struct ExperimentTable {
    /// What is being tested, for the report's title.
    #[arg(long)]
    title: Option<String>,
    /// The hypothesis in words, for the report.
    #[arg(long)]
    hypothesis: Option<String>,
    /// Length of the baseline phase (steady state measured, no fault).
    #[arg(long, value_parser = parse_duration)]
    baseline: Duration,
    /// Length of the inject phase; faults' `after` counts from its start, and a fault without
    /// `for` lasts to its end.
    #[arg(long, value_parser = parse_duration)]
    inject: Duration,
    /// Length of the recovery phase (faults removed, return to the steady state watched).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    recovery: Duration,
    /// The interval thresholds are checked over (abort, recovery) and the report's plots step by.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    /// Intervals in a row within every steady-state threshold that count as recovered.
    #[arg(long = "recovered-after", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    recovered_after: u32,
}

/// The thresholds every source may have.
#[derive(Args, Debug, Clone, Default)]
struct ThresholdKeys {
    /// Thresholds that define the steady state: checked over the baseline (not met: no fault is
    /// injected) and per interval in recovery.
    #[arg(long, value_parser = Threshold::parse, action = clap::ArgAction::Append)]
    steady: Vec<Threshold>,
    /// Thresholds that must hold over the inject phase (default: the steady ones).
    #[arg(long, value_parser = Threshold::parse, action = clap::ArgAction::Append)]
    hypothesis: Vec<Threshold>,
    /// Thresholds that, crossed in any interval of the inject phase, remove every fault at once.
    #[arg(long, value_parser = Threshold::parse, action = clap::ArgAction::Append)]
    abort: Vec<Threshold>,
}

/// `[[probe]]`.
#[derive(Args, Debug, Clone)]
#[group(id = "check", required = true, multiple = false, args = ["http", "tcp", "command"])]
struct ProbeTable {
    /// The probe's name in the report.
    #[arg(long)]
    name: String,
    /// GET this http:// URL; success is a 2xx answer.
    #[arg(long)]
    http: Option<String>,
    /// Connect to this address; success is an established connection.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Run this command (a string for `sh -c`, or an argv array); success is exit status 0.
    #[arg(long, action = clap::ArgAction::Append)]
    command: Vec<String>,
    /// How often the probe runs.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    every: Duration,
    /// How long one attempt may take before it counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    timeout: Duration,
    #[command(flatten)]
    thresholds: ThresholdKeys,
}

/// `[[observe]]`: a cgroup whose syscalls are measured (calls, errors, latency).
#[derive(Args, Debug, Clone)]
#[group(id = "target", required = true, multiple = false, args = ["cgroup", "pid", "service"])]
struct ObserveTable {
    #[arg(long)]
    name: String,
    #[arg(long)]
    cgroup: Option<PathBuf>,
    #[arg(long)]
    pid: Option<u32>,
    /// The cgroup of this [[service]].
    #[arg(long)]
    service: Option<String>,
    /// The syscalls thresholds and the report's table count (names or sets such as %file); all
    /// when left out.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append)]
    syscall: Vec<String>,
    #[command(flatten)]
    thresholds: ThresholdKeys,
}

/// `[[service]]`: a process chaos starts in a new cgroup for the experiment and kills after it.
#[derive(Args, Debug, Clone)]
struct ServiceTable {
    #[arg(long)]
    name: String,
    /// The cgroup to create for it (relative to the cgroup2 mount); it must not exist.
    #[arg(long)]
    cgroup: PathBuf,
    /// The command (a string for `sh -c`, or an argv array); `chaos` is this chaos binary.
    #[arg(long, required = true, action = clap::ArgAction::Append)]
    command: Vec<String>,
    /// Wait until this address accepts a connection before going on.
    #[arg(long)]
    ready: Option<SocketAddr>,
}

#[derive(Clone, Debug, Default)]
pub struct Thresholds {
    pub steady: Vec<Threshold>,
    pub hypothesis: Vec<Threshold>,
    pub abort: Vec<Threshold>,
}

impl From<ThresholdKeys> for Thresholds {
    fn from(k: ThresholdKeys) -> Thresholds {
        Thresholds { steady: k.steady, hypothesis: k.hypothesis, abort: k.abort }
    }
}

impl Thresholds {
    /// What must hold over the inject phase: the hypothesis, or else the steady state.
    pub fn hypothesis(&self) -> &[Threshold] {
        if self.hypothesis.is_empty() { &self.steady } else { &self.hypothesis }
    }
}

pub struct ProbeSpec {
    pub name: String,
    pub check: Check,
    pub every: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
}

pub enum ObserveTarget {
    Cgroup(PathBuf),
    Pid(u32),
    Service(String),
}

pub struct ObserveSpec {
    pub name: String,
    pub target: ObserveTarget,
    pub syscalls: Vec<String>,
    pub thresholds: Thresholds,
}

pub struct ServiceSpec {
    pub name: String,
    pub cgroup: PathBuf,
    pub argv: Vec<String>,
    pub ready: Option<SocketAddr>,
}

/// A checked experiment file.
pub struct Experiment {
    pub path: PathBuf,
    pub title: String,
    pub hypothesis: Option<String>,
    pub baseline: Duration,
    pub inject: Duration,
    pub recovery: Duration,
    pub interval: Duration,
    pub recovered_after: u32,
    pub probes: Vec<ProbeSpec>,
    pub observes: Vec<ObserveSpec>,
    pub services: Vec<ServiceSpec>,
    pub faults: Vec<FaultSpec>,
}

/// A string is a shell command, an array an argv.
fn argv_of(command: Vec<String>) -> Vec<String> {
    if command.len() == 1 { vec!["sh".into(), "-c".into(), command[0].clone()] } else { command }
}

fn from_table<T: FromArgMatches>(path: &Path, t: &SectionTable, what: &str) -> Result<T> {
    T::from_arg_matches(&t.matches).map_err(|e| usage!("{}:{}: {what}: {}", path.display(), t.line, crate::cli::one_line(&e)))
}

/// The example experiments of `experiments/`, built in: the tests run each one (in the guests
/// too, which have no source tree) and the fuzzer edits them.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("demo.toml", include_str!("../../../experiments/demo.toml")),
    ("breaker.toml", include_str!("../../../experiments/breaker.toml")),
    ("disk-errors.toml", include_str!("../../../experiments/disk-errors.toml")),
    ("bulkhead.toml", include_str!("../../../experiments/bulkhead.toml")),
    ("retry-storm.toml", include_str!("../../../experiments/retry-storm.toml")),
    ("slow-dependency.toml", include_str!("../../../experiments/slow-dependency.toml")),
];

impl Experiment {
    /// Reads and checks an experiment file; every problem is one line naming the place.
    pub fn load(path: &Path) -> Result<Experiment> {
        let text = std::fs::read_to_string(path).map_err(|e| usage!("cannot read {}: {e}", path.display()))?;
        Experiment::parse(path, &text)
    }

    /// An experiment file's `text`, read from `path` (which the messages name).
    pub fn parse(path: &Path, text: &str) -> Result<Experiment> {
        let sections = [
            Section { key: "experiment", many: false, command: ExperimentTable::augment_args(clap::Command::new("experiment")) },
            Section { key: "probe", many: true, command: ProbeTable::augment_args(clap::Command::new("probe")) },
            Section { key: "observe", many: true, command: ObserveTable::augment_args(clap::Command::new("observe")) },
            Section { key: "service", many: true, command: ServiceTable::augment_args(clap::Command::new("service")) },
        ];
        let command_for = |kind: &str| faults::kind(kind).map(|k| k.fault_command());
        let doc = file::parse_document(path, text, &sections, &command_for, &faults::kind_names()).map_err(|e| Error::Usage(e.0))?;
        let table = |key: &str| doc.sections.get(key).cloned().unwrap_or_default();
        let at = |line: usize| format!("{}:{line}", path.display());

        let Some(e) = table("experiment").into_iter().next() else {
            return Err(usage!("{}: no [experiment] table; add one with `baseline` and `inject` (the phases' lengths)", path.display()));
        };
        let exp: ExperimentTable = from_table(path, &e, "[experiment]")?;
        if exp.interval > exp.baseline.min(exp.inject) {
            return Err(usage!("{}: `interval` ({}) is longer than a phase; give a shorter interval or longer phases", at(e.line), humantime::format_duration(exp.interval)));
        }

        // Probes and observes name the report's sources; services are named apart.
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut service_names: Vec<(String, usize)> = Vec::new();
        let unique = |names: &mut Vec<(String, usize)>, what: &str, name: &str, line: usize| -> Result<()> {
            if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
                return Err(usage!("{}: the name {name:?} is taken (line {first}); give each {what} its own name", at(line)));
            }
            names.push((name.to_string(), line));
            Ok(())
        };

        let mut services = Vec::new();
        for t in table("service") {
            let s: ServiceTable = from_table(path, &t, "[[service]]")?;
            unique(&mut service_names, "service", &s.name, t.line)?;
            services.push(ServiceSpec { name: s.name, cgroup: s.cgroup, argv: argv_of(s.command), ready: s.ready });
        }
        let mut probes = Vec::new();
        for t in table("probe") {
            let p: ProbeTable = from_table(path, &t, "[[probe]]")?;
            unique(&mut names, "probe and observe", &p.name, t.line)?;
            let check = match (p.http, p.tcp) {
                (Some(url), _) if url.starts_with("http://") => Check::Http(url),
                (Some(url), _) => return Err(usage!("{}: probe {:?}: '{url}' is not an http:// URL (chaos's probes speak plain HTTP)", at(t.line), p.name)),
                (None, Some(addr)) => Check::Tcp(addr),
                (None, None) => Check::Command(argv_of(p.command)),
            };
            probes.push(ProbeSpec { name: p.name, check, every: p.every, timeout: p.timeout, thresholds: p.thresholds.into() });
        }
        let mut observes = Vec::new();
        for t in table("observe") {
            let o: ObserveTable = from_table(path, &t, "[[observe]]")?;
            unique(&mut names, "probe and observe", &o.name, t.line)?;
            crate::faults::sys::resolve_syscalls(&o.syscall).map_err(|e| usage!("{}: observe {:?}: {e}", at(t.line), o.name))?;
            let target = match (o.cgroup, o.pid, o.service) {
                (Some(c), _, _) => ObserveTarget::Cgroup(c),
                (_, Some(p), _) => ObserveTarget::Pid(p),
                (_, _, Some(s)) if services.iter().any(|x| x.name == s) => ObserveTarget::Service(s),
                (_, _, Some(s)) => return Err(usage!("{}: observe {:?}: no [[service]] named {s:?}", at(t.line), o.name)),
                _ => unreachable!("clap requires one target"),
            };
            observes.push(ObserveSpec { name: o.name, target, syscalls: o.syscall, thresholds: o.thresholds.into() });
        }

        let mut faults = Vec::new();
        for f in doc.faults {
            let kind = faults::kind(&f.kind).ok_or_else(|| usage!("{}: unknown fault kind {}", at(f.line), f.kind))?;
            let mut spec = FaultSpec::from_matches(kind, &f.matches, at(f.line))?;
            if spec.args.after >= exp.inject {
                return Err(usage!("{}: `after` ({}) is not inside the inject phase ({}); start the fault earlier or lengthen [experiment] inject", at(f.line), humantime::format_duration(spec.args.after), humantime::format_duration(exp.inject)));
            }
            let left = exp.inject - spec.args.after;
            if f.matches.value_source("duration") == Some(ValueSource::DefaultValue) {
                spec.args.duration = left;
            } else if spec.args.duration > left {
                return Err(usage!("{}: the fault would outlast the inject phase ({} after its start, `for` {}); shorten `for` or lengthen [experiment] inject", at(f.line), humantime::format_duration(spec.args.after), humantime::format_duration(spec.args.duration)));
            }
            faults.push(spec);
        }
        if probes.is_empty() && observes.is_empty() {
            return Err(usage!("{}: nothing measures the experiment; add a [[probe]] (the steady state) or an [[observe]] (a cgroup's syscalls)", path.display()));
        }
        let thresholds = probes.iter().map(|p| &p.thresholds).chain(observes.iter().map(|o| &o.thresholds));
        if thresholds.clone().all(|t| t.steady.is_empty() && t.hypothesis.is_empty()) {
            return Err(usage!("{}: nothing decides the verdict; give a probe or observe `steady` or `hypothesis` thresholds such as [\"error-rate < 1%\"]", path.display()));
        }
        Ok(Experiment {
            path: path.to_path_buf(),
            title: exp.title.unwrap_or_else(|| path.file_stem().map_or("experiment".into(), |s| s.to_string_lossy().into_owned())),
            hypothesis: exp.hypothesis,
            baseline: exp.baseline,
            inject: exp.inject,
            recovery: exp.recovery,
            interval: exp.interval,
            recovered_after: exp.recovered_after,
            probes,
            observes,
            services,
            faults,
        })
    }
}
