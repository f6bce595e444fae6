//! The command line (clap derive). Parsing and value checks only; `run.rs` does the work.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::workload::WorkloadArgs;

/// Longest fault chaos accepts in one run: every fault ends by itself, and soon.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    version,
    about = "Kernel fault injection for one cgroup at a time (eBPF): drop, delay, corrupt or fail packets and syscalls, and count what it did.",
    after_help = "Examples:\n  chaos net drop --cgroup /system.slice/api.service --percent 5 --for 30s\n  chaos net drop --pid 4242 --percent 30 --proto udp --port 53 --json\n  chaos demo\n  chaos probe\n  chaos cleanup"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Packet faults for one cgroup.
    #[command(subcommand)]
    Net(NetCommand),
    /// Syscall faults for one cgroup.
    #[command(subcommand)]
    Sys(SysCommand),
    /// Build a sandbox, inject a packet drop into a small client/server workload, show the impact
    /// and the return to the steady state.
    Demo(DemoArgs),
    /// Show what this kernel can do, backend by backend (each found by loading a tiny program).
    Probe {
        /// Print the matrix as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove what a killed chaos left in the kernel (netlink TC filters on pre-6.6 kernels).
    Cleanup {
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Test and demo workloads (internal).
    #[command(hide = true)]
    Workload(WorkloadArgs),
}

#[derive(Subcommand, Debug)]
pub enum NetCommand {
    /// Drop packets as a lossy wire would: senders see no error, TCP retransmits.
    #[command(after_help = "Examples:\n  chaos net drop --cgroup /system.slice/api.service --percent 5\n  chaos net drop --pid 4242 --percent 30 --direction both --proto tcp --port 443 --for 2m\n  chaos net drop --cgroup web --percent 100 --peer 10.0.0.0/8 --proto udp")]
    Drop(NetDropArgs),
}

#[derive(Subcommand, Debug)]
pub enum SysCommand {
    /// Make a syscall fail with an errno, in the kernel, for the target's processes only.
    #[command(after_help = "Examples:\n  chaos sys fail --cgroup /system.slice/db.service --syscall openat --errno EIO --percent 10\n  chaos sys fail --pid 4242 --syscall fsync --errno ENOSPC --backend kprobe --for 30s")]
    Fail(SysFailArgs),
}

#[derive(Args, Debug)]
pub struct SysFailArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The syscall, by name (openat, read, fsync, connect, ...).
    #[arg(long, value_parser = crate::faults::sys::parse_syscall)]
    pub syscall: String,
    /// The error to return: a name (ENOENT, EIO, ...) or a number.
    #[arg(long, value_parser = crate::faults::sys::parse_errno)]
    pub errno: i32,
    /// Probability of failing a call, 0-100.
    #[arg(long, value_parser = parse_percent, value_name = "P", default_value = "100")]
    pub percent: u32,
    /// lsm and fmod-ret (on security_file_open) cover the open family; fmod-ret (on the syscall
    /// entry) and kprobe cover any syscall; auto picks the first this kernel offers (`chaos probe`).
    #[arg(long, value_enum, default_value_t = crate::faults::sys::SysBackend::Auto)]
    pub backend: crate::faults::sys::SysBackend,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
pub struct NetDropArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Probability of dropping a matching packet, 0-100 (decimals allowed).
    #[arg(long, value_parser = parse_percent, value_name = "P")]
    pub percent: u32,
    #[command(flatten)]
    pub filters: NetFilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// The target cgroup v2 directory: absolute, or relative to the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Target the cgroup v2 that this process is in.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

#[derive(Args, Debug)]
pub struct NetFilterArgs {
    /// Which packets of the target: sent, received, or both.
    #[arg(long, value_enum, default_value_t = Direction::Egress)]
    pub direction: Direction,
    /// Only this protocol (icmp covers ICMPv6 too).
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Only packets whose remote port is N (destination when sending, source when receiving).
    #[arg(long, value_name = "N", value_parser = parse_port)]
    pub port: Option<u16>,
    /// Only packets whose local port is N.
    #[arg(long, value_name = "N", value_parser = parse_port)]
    pub local_port: Option<u16>,
    /// Only packets whose remote address is in CIDR (IPv4 or IPv6; a bare address means /32 or /128).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub peer: Option<IpNet>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// How long the fault lasts; it ends by itself (e.g. 30s, 5m, 1h30m).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Log every packet the kernel drops, with its rule, direction, protocol and length (shown with
    /// RUST_LOG=debug); for debugging.
    #[arg(long)]
    pub log_packets: bool,
    /// Also attach device programs in this network namespace (a file such as /run/netns/NAME);
    /// by default, the namespaces of the target's processes.
    #[arg(long, value_name = "FILE")]
    pub netns: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Drop probability during the fault phase.
    #[arg(long, value_parser = parse_percent, value_name = "P", default_value = "10")]
    pub percent: u32,
    /// Length of each phase (steady state, fault, recovery).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub phase: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Egress,
    Ingress,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
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

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{s}' is not a port; give a number from 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or CIDR; give one such as 10.0.0.0/8 or ::1"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}); give one such as 30s or 5m"))?;
    if d.is_zero() {
        return Err("a fault must last longer than 0s".into());
    }
    if d > MAX_DURATION {
        return Err(format!("'{s}' is longer than the 24h chaos allows in one run"));
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
    fn ports_and_cidrs() {
        assert_eq!(parse_port("53"), Ok(53));
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn target_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5", "--cgroup", "x", "--pid", "1"]).is_err());
        assert!(Cli::try_parse_from(["chaos", "net", "drop", "--percent", "5", "--cgroup", "x"]).is_ok());
    }
}
