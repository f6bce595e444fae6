//! The command line (clap). Parsing and value checks only; `run.rs` does the work.
//!
//! The fault commands (`chaos net drop`, `chaos sys fail`, ...) are made from the fault kinds'
//! table (`faults::KINDS`): each kind's flags are also its keys in a fault file, so the command
//! line and `chaos apply` parse a fault the same way.

use std::{path::PathBuf, time::Duration};

use clap::{ArgMatches, Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{faults::{KINDS, Kind}, workload::WorkloadArgs};

/// Longest fault chaos accepts: every fault ends by itself, and soon.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    version,
    about = "Kernel fault injection for one cgroup at a time (eBPF): drop packets and fail syscalls for a container or service, and count what it did.",
    after_help = "Examples:\n  chaos net drop --cgroup /system.slice/api.service --percent 5 --for 30s\n  chaos sys fail --pid 4242 --syscall fsync --errno ENOSPC\n  chaos apply faults.toml\n  chaos status\n  chaos stop --all\n  chaos demo\n  chaos probe"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Do apply, status and stop through the agent at ADDR (`chaos agent`): its unix socket, or
    /// http://HOST:PORT (with --token-file).
    #[arg(long, global = true, value_name = "ADDR")]
    pub agent: Option<String>,
    /// The bearer token of the agent's TCP API (a file readable by its owner only): for
    /// `chaos agent --listen`, and for a client with --agent http://...
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Packet faults for one cgroup.
    #[command(subcommand)]
    Net(NetCommand),
    /// Syscall faults for one cgroup.
    #[command(subcommand)]
    Sys(SysCommand),
    /// Process faults for one cgroup: pause its processes.
    #[command(subcommand)]
    Proc(ProcCommand),
    /// Run every fault of a fault file in one session, until the last one ends.
    #[command(after_help = "A fault file lists [[fault]] tables whose keys are the flags of the fault's command:\n\n  [[fault]]\n  kind = \"net.drop\"\n  cgroup = \"/system.slice/api.service\"\n  percent = 5\n  proto = \"udp\"\n  for = \"30s\"\n\n  [[fault]]\n  kind = \"sys.fail\"\n  cgroup = \"/system.slice/db.service\"\n  syscall = \"fsync\"\n  errno = \"EIO\"\n  after = \"10s\"\n  max-injections = 100\n\nExamples:\n  chaos apply faults.toml\n  chaos apply faults.toml --dry-run\n  chaos apply faults.toml --json")]
    Apply(ApplyArgs),
    /// Run an experiment: probes define the steady state, faults are injected between a baseline
    /// and a recovery phase, thresholds decide the verdict; writes report.json/.md/.html.
    #[command(after_help = EXPERIMENT_HELP)]
    Run(crate::experiment::RunArgs),
    /// Measure a cgroup's syscalls (calls, errors by errno, latency p50/p90/p99) and traffic
    /// (packets, bytes, TCP retransmissions), live and summed at the end.
    #[command(after_help = "Examples:\n  chaos observe --cgroup /system.slice/api.service\n  chaos observe --pid 4242 --syscall %file,connect --for 30s --json")]
    Observe(crate::observe::ObserveArgs),
    /// List the sessions running on this host: faults, targets, time left, live counters.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// End sessions cleanly (each prints its summary); returns once they are gone.
    Stop(StopArgs),
    /// Run the built-in experiment (experiments/demo.toml): a web service in a cgroup of its own,
    /// a probe, packet loss on its cgroup; the steady state, the hypothesis, the return to the
    /// steady state, and a report.
    Demo(DemoArgs),
    /// Show what this kernel can do, backend by backend (each found by loading a tiny program).
    Probe {
        /// Print the matrix as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Hold fault sessions for others: an HTTP/JSON API on a unix socket (root only) and, with
    /// --listen, on TCP with a bearer token; `chaos --agent PATH apply|status|stop` use it.
    #[command(after_help = "Each session is a `chaos apply` process of the agent's with its own in-kernel deadlines: an agent that dies or a client that goes away leaves nothing running past a fault's `for`, and a restarted agent sweeps what a killed one left.\n\nAPI (JSON): POST /v1/sessions {\"name\": ..., \"faults\": \"<fault file TOML>\"}, GET /v1/sessions, GET|DELETE /v1/sessions/ID, GET /v1/sessions/ID/counters?every=1s (newline-delimited JSON), GET /v1/health.\n\nExamples:\n  chaos agent\n  chaos agent --listen 127.0.0.1:7070 --token-file /etc/chaos/token\n  chaos --agent /run/chaos/agent.sock apply faults.toml --detach\n  chaos --agent /run/chaos/agent.sock status")]
    Agent(crate::agent::AgentArgs),
    /// Undo what killed sessions left (netlink TC filters and qdiscs on pre-6.6 kernels).
    Cleanup {
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Test and demo workloads (internal).
    #[command(hide = true)]
    Workload(WorkloadArgs),
    /// Undoes a session's changes when its process dies (internal: started by the session).
    #[command(hide = true)]
    Guardian {
        #[arg(long)]
        session: String,
    },
}

const EXPERIMENT_HELP: &str = "An experiment file holds [experiment] (the phases), [[probe]] (the steady state: an HTTP GET, a TCP connect or a command), [[observe]] (a cgroup's syscalls), [[service]] (processes chaos starts in new cgroups for the run) and [[fault]] tables (as in `chaos apply`; `after` counts from the inject phase, `for` defaults to its end). Thresholds are \"METRIC OP VALUE\" with metrics error-rate, rate, p50, p90, p99:\n\n  [experiment]\n  baseline = \"10s\"\n  inject = \"20s\"\n  recovery = \"20s\"\n\n  [[probe]]\n  name = \"api\"\n  http = \"http://127.0.0.1:8080/health\"\n  steady = [\"error-rate < 1%\", \"p99 < 200ms\"]\n  abort = [\"error-rate > 50%\"]\n\n  [[fault]]\n  kind = \"net.drop\"\n  cgroup = \"/system.slice/db.service\"\n  percent = 10\n\nExit status: 0 the hypothesis held, 4 it was violated, 5 the run was aborted (an abort threshold, a steady state not met in the baseline, Ctrl-C or `chaos stop`); 2 a bad file, 3 a kernel that cannot.\n\nExamples:\n  chaos run experiments/breaker.toml\n  chaos run --check experiments/breaker.toml\n  chaos run experiments/breaker.toml --report out/ --json";

/// Flags of a session, whatever its faults.
#[derive(Args, Debug, Clone, Default)]
pub struct SessionArgs {
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Log every packet the kernel drops, with its rule, direction, protocol and length (shown with
    /// RUST_LOG=debug); for debugging.
    #[arg(long)]
    pub log_packets: bool,
    /// Resolve the targets, check the kernel and print what would attach; attach nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics while the session runs: per rule, matched
    /// and injected; the faults active and the time left.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// At the end, send each fault as an OpenTelemetry span (its window, target and counters) to
    /// this OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces.
    #[arg(long, value_name = "URL", value_parser = crate::otlp::parse_url)]
    pub otlp: Option<String>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The fault file (TOML).
    pub file: PathBuf,
    #[command(flatten)]
    pub session: SessionArgs,
    /// With --agent: return once the session injects, printing its id (the agent holds it).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct StopArgs {
    /// The session to stop (as `chaos status` lists it).
    pub id: Option<String>,
    /// Stop every session on this host.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The share of the service's packets lost during the fault phase.
    #[arg(long, value_parser = parse_percent, value_name = "P", default_value = "10")]
    pub percent: u32,
    /// Length of each phase (steady state, fault, recovery).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub phase: Duration,
    /// Requests per second the probe makes (one at a time). Keep it below what the machine
    /// sustains, so the steady state measures the service and not the CPU left over.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub rate: u32,
}

/// A fault command of one family: the kind and clap's matches of its flags.
#[derive(Debug)]
pub struct FaultCommand {
    pub kind: &'static Kind,
    pub matches: ArgMatches,
}

impl FaultCommand {
    pub fn session_args(&self) -> SessionArgs {
        <SessionArgs as clap::FromArgMatches>::from_arg_matches(&self.matches).unwrap_or_default()
    }
}

/// `chaos net <verb>` and `chaos sys <verb>`: the family's fault kinds from [`KINDS`], and the
/// family's listings (`chaos sys syscalls`), each with `--json`.
#[derive(Debug)]
pub enum FamilyCommand {
    Fault(FaultCommand),
    List { what: &'static str, json: bool },
}

macro_rules! family_command {
    ($name:ident, $family:literal, $lists:expr) => {
        #[derive(Debug)]
        pub struct $name(pub FamilyCommand);

        impl $name {
            const LISTS: &'static [(&'static str, &'static str)] = $lists;
        }

        impl clap::FromArgMatches for $name {
            fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
                let (verb, sub) = m.subcommand().ok_or_else(|| clap::Error::new(clap::error::ErrorKind::MissingSubcommand))?;
                if let Some((what, _)) = Self::LISTS.iter().find(|(l, _)| *l == verb) {
                    return Ok($name(FamilyCommand::List { what, json: sub.get_flag("json") }));
                }
                let kind = KINDS
                    .iter()
                    .find(|k| k.family == $family && k.verb == verb)
                    .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
                Ok($name(FamilyCommand::Fault(FaultCommand { kind, matches: sub.clone() })))
            }
            fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(m)?;
                Ok(())
            }
        }

        impl clap::Subcommand for $name {
            fn augment_subcommands(cmd: clap::Command) -> clap::Command {
                let cmd = KINDS
                    .iter()
                    .filter(|k| k.family == $family)
                    .fold(cmd, |c, k| c.subcommand(crate::faults::keep_about(k.fault_command().name(k.verb), SessionArgs::augment_args)));
                Self::LISTS
                    .iter()
                    .fold(cmd, |c, (name, about)| {
                        c.subcommand(clap::Command::new(*name).about(*about).arg(
                            clap::Arg::new("json").long("json").action(clap::ArgAction::SetTrue).help("Print one JSON object."),
                        ))
                    })
                    .subcommand_required(true)
            }
            fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_subcommands(cmd)
            }
            fn has_subcommand(name: &str) -> bool {
                KINDS.iter().any(|k| k.family == $family && k.verb == name) || Self::LISTS.iter().any(|(l, _)| *l == name)
            }
        }
    };
}
family_command!(NetCommand, "net", &[]);
family_command!(ProcCommand, "proc", &[]);
family_command!(
    SysCommand,
    "sys",
    &[
        ("syscalls", "List every x86_64 syscall with the backend this kernel would fail it with, and why."),
        ("errnos", "List the errno names --errno takes."),
        ("sets", "List strace's syscall sets (%file, %network, ...) that --syscall takes, and their syscalls."),
    ]
);

/// A clap error as one line: clap puts the problem in its first paragraph and usage after a
/// blank line.
pub fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // clap takes "-1" or "-5s" after an option for another option; say what it is.
    if e.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
        && arg.strip_prefix('-').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit() || c == '.'))
    {
        // clap names only the first "flag" of "-1s" ("-1"): the whole word, from the command line.
        let word = std::env::args().find(|a| a.starts_with(arg.as_str())).unwrap_or_else(|| arg.clone());
        return format!("'{word}' is negative: counts, percentages and durations here are 0 or more");
    }
    let text = e.render().to_string();
    let first: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let msg = first.join(" ");
    msg.strip_prefix("error: ").unwrap_or(&msg).to_string()
}

/// A process id: a positive number.
pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("'{s}' is not a process id; give the number of a running process, such as 1234")),
        Ok(p) => Ok(p),
    }
}

/// "30", "0.5", "12.5%" → parts per million.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t.parse().map_err(|_| format!("'{s}' is not a number; give a percentage such as 30 or 0.5"))?;
    if !(0.0..=100.0).contains(&v) || v.is_nan() {
        return Err(format!("{s} is outside 0-100"));
    }
    Ok((v * 10_000.0).round() as u32)
}

/// "53" → (53, 53); "8000-8100" → (8000, 8100).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{s}' is not a port or range; give a number from 1 to 65535, or two such as 8000-8100")),
        Ok(p) => Ok(p),
    };
    match s.split_once('-') {
        None => port(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi { Err(format!("'{s}' is an empty range: give the lower port first")) } else { Ok((lo, hi)) }
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or CIDR; give one such as 10.0.0.0/8 or ::1"))
}

/// A fault's length: more than 0, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_offset(s)?;
    if d.is_zero() {
        return Err(format!("'{s}' is no time at all; give a duration longer than 0s, such as 30s or 5m"));
    }
    Ok(d)
}

/// A start offset: 0 or more, at most [`MAX_DURATION`].
pub fn parse_offset(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}); give one such as 30s or 5m"))?;
    if d > MAX_DURATION {
        return Err(format!("'{s}' is longer than the 24h chaos allows"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_accepts_decimals_and_a_percent_sign() {
        assert_eq!(parse_percent("30"), Ok(300_000));
        assert_eq!(parse_percent("0.5"), Ok(5_000));
        assert_eq!(parse_percent("12.5%"), Ok(125_000));
        assert_eq!(parse_percent("100"), Ok(1_000_000));
        assert!(parse_percent("100.1").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("abc").is_err());
        assert!(parse_percent("NaN").is_err());
    }

    #[test]
    fn ports_ranges_and_cidrs() {
        assert_eq!(parse_port_range("53"), Ok((53, 53)));
        assert_eq!(parse_port_range("8000-8100"), Ok((8000, 8100)));
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("70000").is_err());
        assert!(parse_port_range("9-8").is_err());
        assert!(parse_port_range("1-").is_err());
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_offset("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn fault_commands_come_from_the_kinds_table() {
        let cli = Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5", "--cgroup", "x", "--json"]).expect("parses");
        let Command::Net(NetCommand(FamilyCommand::Fault(fc))) = cli.command else { panic!("not a net fault command") };
        assert_eq!(fc.kind.name, "net.drop");
        assert!(fc.session_args().json);
        assert!(Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5"]).is_err(), "a target is required");
        assert!(Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5", "--cgroup", "x", "--pid", "1"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "sys", "fail", "--cgroup", "x", "--syscall", "openat", "--errno", "EIO"]).is_ok());
        assert!(Cli::try_parse_from(["chaos", "net", "explode", "--cgroup", "x"]).is_err());
        let cli = Cli::try_parse_from(["chaos", "sys", "syscalls", "--json"]).expect("parses");
        assert!(matches!(cli.command, Command::Sys(SysCommand(FamilyCommand::List { what: "syscalls", json: true }))));
        assert!(Cli::try_parse_from(["chaos", "net", "syscalls"]).is_err(), "listings belong to their family");
    }
}
