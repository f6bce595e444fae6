//! Faults. A fault is validated input that knows how to start itself on a target; a running
//! fault is an [`Injection`] that reports its counters and detaches everything when dropped.
//! Adding a fault means one new impl here, one kernel function, one test file.

pub mod net;
pub mod sys;

use std::path::PathBuf;

use serde::Serialize;

use crate::{error::Result, target::Cgroup};

/// Options every fault run shares.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Log each kernel decision through aya-log (`--log-packets`).
    pub log_packets: bool,
    /// Network namespaces to attach device programs in, besides those the target's processes use.
    pub netns: Vec<PathBuf>,
}

/// A validated fault, ready to start.
pub trait Fault {
    /// The command that asked for it, e.g. "net drop".
    fn name(&self) -> &'static str;
    /// Backends it needs: at least one of each group must work (checked before anything attaches).
    fn needs(&self) -> &'static [&'static [crate::probe::Backend]];
    /// One line saying what it does, e.g. "drop 30% of egress udp packets".
    fn describe(&self) -> String;
    /// Loads, writes rules and attaches; injecting until monotonic time `deadline_ns` at the latest
    /// (`Injection::set_deadline` then sets the real end, once everything is attached).
    /// `available`: the backends `probe::require` found working for [`Fault::needs`].
    fn start(&self, target: &Cgroup, deadline_ns: u64, opts: &RunOptions, available: &[crate::probe::Backend]) -> Result<Box<dyn Injection>>;
}

/// A fault being injected. Dropping it detaches everything it attached.
pub trait Injection {
    /// Detaches every program, keeping the maps, so the final counters can be read after the
    /// last packet or call was decided. Idempotent; dropping also detaches.
    fn detach(&mut self);
    /// Rewrites the rules' deadline (CLOCK_MONOTONIC ns): the fault's `--for` counts from when it
    /// is fully attached, however long attaching took.
    fn set_deadline(&mut self, deadline_ns: u64) -> Result<()>;
    /// Picks up namespaces and devices that appeared since the start.
    fn refresh(&mut self);
    /// Counters read from the kernel now.
    fn counters(&self) -> Result<Counters>;
    /// What is attached, by kernel id (programs, links, TC filters).
    fn attached(&self) -> Attached;
    /// Forwards pending kernel log records.
    fn flush_log(&mut self);
}

/// Per-rule counters, summed over CPUs.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    pub rules: Vec<RuleCounters>,
    /// Kernel-side failures by kind (a packet that could not be parsed passes untouched).
    pub kernel_errors: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RuleCounters {
    pub rule: u32,
    /// What the rule does: "drop", "fail".
    pub fault: String,
    /// Events (packets, calls) of the target that reached the rule.
    pub seen: u64,
    /// ... that matched every filter while the rule was live.
    pub matched: u64,
    /// ... to which the fault was done.
    pub injected: u64,
    /// The fault's own counters by name ("dropped", "dropped_bytes", "failed", ...).
    #[serde(flatten)]
    pub detail: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    pub fn matched(&self) -> u64 {
        self.rules.iter().map(|r| r.matched).sum()
    }
    pub fn injected(&self) -> u64 {
        self.rules.iter().map(|r| r.injected).sum()
    }
}

/// Kernel objects a run holds, for the report and for tests that check nothing stays behind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Attached {
    pub programs: Vec<u32>,
    pub links: Vec<u32>,
    pub devices: Vec<AttachedDevice>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttachedDevice {
    pub netns_ino: u64,
    pub ifname: String,
    /// "tcx" (a link the kernel removes when chaos exits) or "netlink" (a filter chaos removes).
    pub mode: &'static str,
}
