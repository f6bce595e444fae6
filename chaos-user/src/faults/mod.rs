//! Fault kinds. A kind is one [`Fault`] impl and one entry in [`KINDS`]: its command-line flags
//! (which are also its keys in a fault file), what it needs from the kernel, the hooks it is
//! decided at, how it fills its rule, and how its counters are named. The session
//! (`session/`), the CLI (`cli.rs`), fault files (`file.rs`), the watch loop and the report are
//! shared by every kind. docs/design.md, "Adding a fault", lists the files a new kind touches.

pub mod delay_table;
pub mod loss_model;
pub mod net;
pub mod net_corrupt;
pub mod net_delay;
pub mod net_dns;
pub mod net_drop;
pub mod net_duplicate;
pub mod net_partition;
pub mod net_rate;
pub mod net_reorder;
pub mod net_stall;
pub mod proc_kill;
pub mod proc_pause;
pub mod sys;
pub mod sys_delay;
pub mod sys_fail;
pub mod sys_signal;
pub mod syscall_sets;

use std::{path::PathBuf, time::Duration};

use chaos_common::{Counters, Family, Rule};
use clap::{ArgMatches, Args, FromArgMatches};
use serde::Serialize;

use crate::{error::Result, probe::Backend};

/// Where a fault is decided. A session attaches each hook once per target (cgroup hooks), per
/// device (TC), or once (syscall hooks), whatever the number of rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// TC egress on every device of the network namespaces the target's processes use.
    TcEgress,
    /// TC ingress on the same devices: received packets copied or changed before the stack sees
    /// them, for the target whose socket they are for.
    TcIngress,
    /// `cgroup_skb/ingress` on the target cgroup.
    CgroupIngress,
    /// The programs of one call that cgroup hooks fail (`sys::CGROUP_CALLS`, by its
    /// `chaos_common::sys::HOOK_*`) on the target cgroup.
    CgroupSock(u32),
    /// A BPF LSM hook (`sys::LSM_CALLS`, by its `chaos_common::sys::HOOK_*`).
    Lsm(u32),
    /// fmod_ret on `security_file_open`.
    FmodRetFileOpen,
    /// fmod_ret on a syscall's entry function (`__x64_sys_NAME`).
    FmodRetSyscall(String),
    /// kprobe + `bpf_override_return` on a syscall's entry function.
    Kprobe(String),
    /// tp_btf `sys_enter`: every syscall's entry, where signals are sent and holds start.
    SysEnter,
    /// tp_btf `sys_exit`: every syscall's exit (holds after the call).
    SysExit,
}

impl Hook {
    /// Whether the hook is attached to each target cgroup (rather than to devices or once per
    /// session).
    pub fn per_cgroup(&self) -> bool {
        matches!(self, Hook::CgroupIngress | Hook::CgroupSock(_))
    }

    /// Whether the hook is attached to the devices of the targets' network namespaces.
    pub fn per_device(&self) -> bool {
        matches!(self, Hook::TcEgress | Hook::TcIngress)
    }

    /// The rule mask of a target this hook reads.
    pub fn family(&self) -> Family {
        match self {
            Hook::TcEgress => Family::Egress,
            Hook::CgroupIngress => Family::Ingress,
            Hook::TcIngress => Family::IngressTc,
            _ => Family::Sys,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Hook::TcEgress => "TC egress on the target's devices".into(),
            Hook::TcIngress => "TC ingress on the target's devices".into(),
            Hook::CgroupIngress => "cgroup_skb/ingress on the target".into(),
            Hook::CgroupSock(hook) => match sys::cgroup_call_by_hook(*hook) {
                Some(c) => format!("cgroup hooks {} on the target", c.programs.join(", ")),
                None => format!("cgroup hook {hook}"),
            },
            Hook::Lsm(hook) => match sys::lsm_call_by_hook(*hook) {
                Some(c) => format!("BPF LSM {}", c.lsm),
                None => format!("BPF LSM hook {hook}"),
            },
            Hook::FmodRetFileOpen => "fmod_ret on security_file_open".into(),
            Hook::FmodRetSyscall(f) => format!("fmod_ret on {f}"),
            Hook::Kprobe(f) => format!("kprobe + bpf_override_return on {f}"),
            Hook::SysEnter => "tp_btf sys_enter".into(),
            Hook::SysExit => "tp_btf sys_exit".into(),
        }
    }
}

/// One fault kind's validated parameters.
pub trait Fault: std::fmt::Debug {
    /// The kind, as in fault files: "net.drop".
    fn kind(&self) -> &'static str;
    /// One line saying what it does, e.g. "drop 30% of egress udp packets".
    fn describe(&self) -> String;
    /// Backends it needs: at least one of each group must work (checked before anything attaches).
    fn needs(&self) -> Vec<&'static [Backend]>;
    /// Backends it does better with, and works without: checked too, each group until one works.
    fn wants(&self) -> Vec<&'static [Backend]> {
        Vec::new()
    }
    /// The hooks it is decided at, given the backends that work on this kernel.
    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>>;
    /// Fills the rule's action, filters and parameters (the engine sets the window and the cap).
    fn fill(&self, rule: &mut Rule, hooks: &[Hook]) -> Result<()>;
    /// The kind's names for what it did, from the rule's counters ("dropped", "failed", ...).
    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)>;
    /// Syscall faults: the keys of the calls the rule is for
    /// ([`chaos_common::sys::SysMatch::rules_key`]), given its hooks; the hooks find the rule
    /// through them.
    fn sys_keys(&self, _hooks: &[Hook]) -> Vec<u64> {
        Vec::new()
    }
    /// `sys.delay`: how long each call the rule selects holds its process (chaos continues it).
    fn hold(&self) -> Option<sys_delay::HoldSpec> {
        None
    }
    /// `proc.pause`: the session freezes the target (cgroup v2 `cgroup.freeze`) for the rule's
    /// window itself; no kernel hook decides it.
    fn freezes(&self) -> bool {
        false
    }
    /// `proc.kill`: the signal the session sends every process of the target as the rule's
    /// window opens; no kernel hook decides it.
    fn kills(&self) -> Option<i32> {
        None
    }
    /// Network namespaces whose devices the fault's TC hook must also sit on (`--netns`).
    fn netns(&self) -> &[PathBuf] {
        &[]
    }
    /// The distribution table of a delay's jitter (netem's `distribution`), if it has one.
    fn delay_table(&self) -> Option<&chaos_common::net::DelayTable> {
        None
    }
    /// Whether the fault needs sch_fq as the root qdisc of the devices its TC program sits on
    /// (faults that set departure times), and for what.
    fn fq(&self) -> Option<FqNeed> {
        None
    }
}

/// What a fault that sets departure times needs of the devices' root qdisc: sch_fq, whose horizon
/// reaches past the longest delay, and whether chaos may put one there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FqNeed {
    /// The longest delay the fault sets.
    pub max_delay: Duration,
    /// `--keep-qdisc`: refuse rather than change a device's root qdisc.
    pub keep_qdisc: bool,
}

/// One fault kind: its name, its flags, and how its flags become a [`Fault`].
#[derive(Debug)]
pub struct Kind {
    /// As in fault files (`kind = "net.drop"`).
    pub name: &'static str,
    /// As on the command line (`chaos net drop`): the family and the verb.
    pub family: &'static str,
    pub verb: &'static str,
    /// The kind's own flags (clap builder); [`FaultArgs`] are added to them.
    pub command: fn() -> clap::Command,
    pub build: fn(&ArgMatches) -> Result<Box<dyn Fault>>,
}

/// Every fault kind. Adding one is a line here.
pub const KINDS: &[Kind] = &[
    net_drop::KIND,
    net_partition::KIND,
    net_delay::KIND,
    net_duplicate::KIND,
    net_corrupt::KIND,
    net_rate::KIND,
    net_reorder::KIND,
    net_stall::KIND,
    net_dns::KIND,
    sys_fail::KIND,
    sys_signal::KIND,
    sys_delay::KIND,
    proc_pause::KIND,
    proc_kill::KIND,
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The names of all kinds, for messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// The faults of a fault file's `text` (read from `path`): every problem is one line naming the
/// place, `PATH:LINE[:COLUMN]: what`.
pub fn file_specs(path: &std::path::Path, text: &str) -> Result<Vec<FaultSpec>> {
    let command_for = |kind: &str| self::kind(kind).map(|k| k.fault_command());
    let parsed = crate::file::parse(path, text, &command_for, &kind_names()).map_err(|e| crate::error::Error::Usage(e.0))?;
    let mut specs = Vec::new();
    for f in parsed {
        let kind = self::kind(&f.kind).ok_or_else(|| crate::usage!("{}:{}: unknown fault kind {}", path.display(), f.line, f.kind))?;
        specs.push(FaultSpec::from_matches(kind, &f.matches, format!("{}:{}", path.display(), f.line))?);
    }
    Ok(specs)
}

impl Kind {
    /// The kind's flags and the flags every fault has: the same on the command line and as the
    /// keys of a `[[fault]]` table.
    pub fn fault_command(&self) -> clap::Command {
        keep_about((self.command)().name(self.name), FaultArgs::augment_args)
    }
}

/// Adds flags to a command with `add` but keeps the command's own description: clap's derived
/// `augment_args` also sets `about` from the flags struct's doc comment.
pub fn keep_about(cmd: clap::Command, add: impl FnOnce(clap::Command) -> clap::Command) -> clap::Command {
    let about = cmd.get_about().cloned();
    let cmd = add(cmd);
    match about {
        Some(a) => cmd.about(a),
        None => cmd,
    }
}

/// The flags every fault has, whatever its kind.
#[derive(Args, Clone, Debug)]
pub struct FaultArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How long the fault lasts, counted from when it starts; it ends by itself (e.g. 30s, 5m).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s", value_parser = crate::cli::parse_duration)]
    pub duration: Duration,
    /// Start this long after the session is in place (fault files: stagger faults).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = crate::cli::parse_offset)]
    pub after: Duration,
    /// Stop injecting after N injections: a bound the kernel keeps even if chaos is frozen.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_injections: Option<u64>,
    /// Inject even into a cgroup that contains chaos itself (chaos's own process stays exempt).
    #[arg(long)]
    pub force: bool,
    /// Packet faults: draw from a generator seeded with N (netem's `seed`), per CPU, so the same
    /// packets sent from one CPU meet the same fate in every run.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// The target cgroup v2 directory: absolute, or relative to the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Target the cgroup v2 that this process is in.
    #[arg(long, value_name = "PID", value_parser = crate::cli::parse_pid)]
    pub pid: Option<u32>,
    /// Target a container: its ID, a unique prefix of it, or its name (podman, Docker,
    /// containerd, CRI-O; found by their cgroup layouts, names through podman or docker).
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
    /// Target every container of a Kubernetes pod on this node: its UID, or NAMESPACE/NAME (asked
    /// of the Kubernetes API, as --pods is).
    #[arg(long, value_name = "UID|NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Target the pods of a namespace that match a label selector and run on this node, each pod
    /// its own rule (`shop/app=payment,tier!=db`). Asks the Kubernetes API (KUBECONFIG, or the
    /// pod's service account); this node is $NODE_NAME, or else the hostname.
    #[arg(long, value_name = "NAMESPACE/SELECTOR")]
    pub pods: Option<String>,
    /// `-- CMD ARGS...`: run CMD in a fresh cgroup of its own, the fault live from its first
    /// instruction; the fault and the cgroup go when CMD ends, and chaos exits with CMD's status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl TargetArgs {
    pub fn named(&self) -> crate::error::Result<crate::target::Named<'_>> {
        if let Some(pods) = &self.pods {
            return Err(crate::usage!("--pods {pods} is chosen through the Kubernetes API when a session is planned: give it to a fault command"));
        }
        crate::target::Named::from_options(self.cgroup.as_deref(), self.pid, self.container.as_deref(), self.pod.as_deref())
    }
}

/// A fault as the user asked for it, validated: a kind's parameters plus the common flags.
#[derive(Debug)]
pub struct FaultSpec {
    pub fault: Box<dyn Fault>,
    pub args: FaultArgs,
    /// Where it was written ("faults.toml:12"), for messages; empty on the command line.
    pub origin: String,
    /// What it was built from, to build it again for another target ([`FaultSpec::for_pod`]).
    kind: &'static Kind,
    matches: ArgMatches,
}

impl FaultSpec {
    /// Builds the spec from clap's matches of [`Kind::fault_command`]: the one path the command
    /// line and fault files share.
    pub fn from_matches(kind: &'static Kind, m: &ArgMatches, origin: String) -> Result<FaultSpec> {
        let at = place(&origin);
        let args = FaultArgs::from_arg_matches(m).map_err(|e| crate::usage!("{at}{}", crate::cli::one_line(&e)))?;
        let fault = (kind.build)(m).map_err(|e| e.at(&at))?;
        Ok(FaultSpec { fault, args, origin, kind, matches: m.clone() })
    }

    /// The same fault aimed at the pod with UID `uid` (one of those `--pods` chose).
    pub fn for_pod(&self, uid: &str) -> Result<FaultSpec> {
        let fault = (self.kind.build)(&self.matches).map_err(|e| e.at(&self.at()))?;
        let mut args = self.args.clone();
        args.target.pod = Some(uid.to_string());
        args.target.pods = None;
        Ok(FaultSpec { fault, args, origin: self.origin.clone(), kind: self.kind, matches: self.matches.clone() })
    }

    /// "faults.toml:12: " or "".
    pub fn at(&self) -> String {
        place(&self.origin)
    }
}

/// "faults.toml:12: " for origin "faults.toml:12", "" for none.
fn place(origin: &str) -> String {
    if origin.is_empty() { String::new() } else { format!("{origin}: ") }
}

/// Per-cent as parts per million, for descriptions.
pub fn percent(ppm: u32) -> String {
    format!("{}%", ppm as f64 / 10_000.0)
}
