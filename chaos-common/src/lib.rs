//! The one vocabulary the chaos kernel programs and user space share.
//!
//! Everything here is `#[repr(C)]`, made of fixed-width integers with explicit padding, and
//! size-checked at compile time: the kernel object and the loader are built by different
//! compilers for different targets, and a silent layout difference would corrupt every rule.
//! Decision logic that does not need the kernel (rule matching, probability thresholds, the
//! rule schedule) lives here as plain functions so it is unit-tested on the host and runs
//! unchanged in the kernel.
//!
//! The engine's maps, one set per session (docs/design.md has the picture):
//! - [`RULES_MAP`]: every rule of the session, of any fault kind, indexed 0..[`MAX_RULES`].
//! - [`TARGETS_MAP`]: target cgroup id → which rules apply to it, per hook family ([`TargetRules`]).
//! - [`COUNTERS_MAP`]: per-CPU [`Counters`] per rule, updated with atomic adds.
//! - [`INJECTIONS_MAP`]: one shared count per rule, the budget of `--max-injections`.
//! - [`SESSION_MAP`]: the session's own processes, exempt from every fault ([`SessionConfig`]).
//! - [`ERRORS_MAP`]: per-CPU counts of kernel-side failures, by [`KernelError`].
#![no_std]

pub mod dns;
pub mod loss;
pub mod net;
pub mod observe;
pub mod sys;

/// Rules one session can hold. A target's rules are a bit mask of this width.
pub const MAX_RULES: u32 = 64;
/// Distinct target cgroups one session can hold.
pub const MAX_TARGETS: u32 = 64;
/// How many cgroup levels the kernel walks looking for a target among a cgroup's ancestors.
pub const MAX_CGROUP_DEPTH: u32 = 32;
/// Cgroups whose rules the kernel remembers (targets' descendants and bystanders alike).
pub const MAX_CACHED_CGROUPS: u32 = 8192;

pub const RULES_MAP: &str = "CHAOS_RULES";
pub const TARGETS_MAP: &str = "CHAOS_TARGETS";
/// The leaf-cgroup cache of the targets' rules (an LRU hash) and each CPU's last lookup.
pub const TARGET_CACHE_MAP: &str = "CHAOS_CACHE";
pub const LAST_LEAF_MAP: &str = "CHAOS_LAST_LEAF";
pub const COUNTERS_MAP: &str = "CHAOS_COUNTERS";
pub const INJECTIONS_MAP: &str = "CHAOS_INJECTED";
pub const SESSION_MAP: &str = "CHAOS_SESSION";
pub const ERRORS_MAP: &str = "CHAOS_ERRORS";
/// Per rule, shared by all CPUs: the state of its loss model, a [`loss::LossState`] packed in a
/// u64 (state in the low half) so that one compare-and-swap moves it.
pub const LOSS_STATE_MAP: &str = "CHAOS_LOSS_STATE";
/// Per rule, shared by all CPUs: the rate faults' next free departure time (CLOCK_MONOTONIC ns).
pub const PACE_MAP: &str = "CHAOS_PACE";
/// Each seeded rule's generator (a [`loss::Prng`]), one per CPU: netem's seeded generator, started
/// from the rule's seed on every CPU.
pub const PRNG_MAP: &str = "CHAOS_PRNG";
/// Flows the stall fault tracks ([`net::FlowKey`] → payload bytes so far), least recently used
/// ones forgotten first.
pub const FLOWS_MAP: &str = "CHAOS_FLOWS";
/// Name of the ring buffer of injected calls (`--log-calls`, [`sys::CallRecord`]).
pub const CALL_LOG_MAP: &str = "CHAOS_CALL_LOG";
/// Its size in bytes: 8192 records (and their headers).
pub const CALL_LOG_BYTES: u32 = 8192 * 64;
/// Name of the ring buffer of calls `sys.delay` holds ([`sys::HoldRecord`]): chaos reads it at
/// once (each record wakes it) to continue each process at its hold's end.
pub const HOLDS_MAP: &str = "CHAOS_HOLDS";
/// Its size in bytes: 4096 records in flight (and their headers).
pub const HOLDS_BYTES: u32 = 4096 * 64;
/// Name of the map of threads `sys.delay` stopped at a call's entry (thread id →
/// [`sys::HeldCall`]), so a hook that can refuse the call before its work makes the kernel restart
/// it after the hold (`-ERESTARTNOINTR`), and the restarted call is not decided again.
pub const HELD_MAP: &str = "CHAOS_HELD";
/// Threads held at once, at most (least recently used ones forgotten first).
pub const MAX_HELD: u32 = 8192;
/// Name of the map from a call's key ([`sys::SysMatch::rules_key`]) to the rules that match it.
pub const SYS_RULES_MAP: &str = "CHAOS_SYS_RULES";
/// Its size: a session's (hook, syscall) keys, sets of syscalls included.
pub const MAX_SYS_KEYS: u32 = 4096;
/// Name of the map of calls counted for `--when` ([`sys::CallKey`] → calls so far).
pub const CALLS_MAP: &str = "CHAOS_CALLS";
/// How many flows the stall fault tracks at once.
pub const MAX_FLOWS: u32 = 16384;
/// Call counts kept for `--when` (threads × rules × syscalls).
pub const MAX_CALL_COUNTS: u32 = 65536;
/// Name of the map of files followed from their open for read/write `--path` rules (the kernel's
/// `struct file` address → the rules whose prefix the file's path is under).
pub const FOLLOWED_MAP: &str = "CHAOS_FOLLOWED";
/// Files followed at once, at most: open files under a read/write `--path` rule's prefix (a file
/// beyond them is not followed, counted as a kernel error).
pub const MAX_FOLLOWED: u32 = 8192;

/// Name of the global the loader sets to make the kernel programs log, through aya-log, every
/// injection they make (`--log-packets`). Off by default: nothing is logged per packet or call.
pub const LOG_PACKETS_GLOBAL: &str = "LOG_PACKETS";
/// Every map only the syscall programs use: a session with no syscall fault has them made with a
/// few entries (the ring buffers with one page).
pub const SYSCALL_ONLY_MAPS: [&str; 7] = [CALLS_MAP, SYS_RULES_MAP, CALL_LOG_MAP, HELD_MAP, HOLDS_MAP, FOLLOWED_MAP, FOLLOW_TGIDS_MAP];
/// The ring buffers among the maps above (their size is in bytes, a power of two pages).
pub const RING_BUFFER_MAPS: [&str; 2] = [CALL_LOG_MAP, HOLDS_MAP];

/// Name of the global that says how many of a target's packet rules the packet programs walk in
/// line before the rest go to `bpf_loop` (at most 4): set at load rather than built in, as it sets
/// how much the verifier has to walk (the loader's value and its measurements:
/// `chaos-user/src/kernel/mod.rs`).
pub const INLINE_RULES_GLOBAL: &str = "INLINE_RULES";
/// Name of the global that says what of the packet programs a session's rules use
/// ([`feature`]): the code of the rest is unreachable, and the verifier, which sees the global as
/// a constant, does not walk it.
pub const PACKET_FEATURES_GLOBAL: &str = "PACKET_FEATURES";
/// Name of the global holding the byte offset of `f_path` in `struct file` (from the kernel's BTF).
pub const FILE_F_PATH_OFFSET_GLOBAL: &str = "FILE_F_PATH_OFFSET";
/// Name of the global holding the byte offset of `tgid` in `struct task_struct` (kernel BTF).
pub const TASK_TGID_OFFSET_GLOBAL: &str = "TASK_TGID_OFFSET";
/// Names of the globals that say where a socket's cgroup lies (kernel BTF), for TC ingress: 1
/// where all are known, then the offsets of `sock.sk_cgrp_data.cgroup`, `cgroup.kn`,
/// `kernfs_node.id`, `cgroup.level`, the cgroup's array of ancestors by level, and 1 where that
/// array holds ids (`ancestor_ids`, before 6.2) rather than cgroups (`ancestors`).
pub const SOCK_CGROUP_KNOWN_GLOBAL: &str = "SOCK_CGROUP_KNOWN";
/// Name of the global holding the bit offset of `ip_summed` (two bits) in `struct sk_buff`
/// (kernel BTF), or `u32::MAX` where the BTF does not say: a corrupted packet's checksum state.
pub const SKB_IP_SUMMED_BIT_GLOBAL: &str = "SKB_IP_SUMMED_BIT";
pub const SOCK_CGROUP_OFFSET_GLOBALS: [&str; 6] = [
    "SOCK_CGROUP_OFFSET",
    "CGROUP_KN_OFFSET",
    "KERNFS_NODE_ID_OFFSET",
    "CGROUP_LEVEL_OFFSET",
    "CGROUP_ANCESTORS_OFFSET",
    "CGROUP_ANCESTORS_ARE_IDS",
];
/// Name of the map of the processes whose open files a session follows from its start (tgid →
/// the read/write `--path` rules of their targets), read by [`FOLLOW_OPEN_FILES_PROGRAM`].
pub const FOLLOW_TGIDS_MAP: &str = "CHAOS_FOLLOW_TGIDS";
/// The `iter/task_file` program that follows the files the targets have open when a session
/// starts, as `file_open` follows those opened after.
pub const FOLLOW_OPEN_FILES_PROGRAM: &str = "chaos_follow_open_files";
/// Processes whose open files one session start follows, at most.
pub const MAX_FOLLOW_TGIDS: u32 = 8192;

/// What a rule does to an event (a packet, a call) it selects. One variant per fault kind; the
/// kernel programs dispatch on it, user space builds it (`chaos-user/src/faults/`). Stored as a
/// u32 in [`Rule::action`]. Adding a fault kind starts here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Slot unused.
    None = 0,
    /// Lose the packet as a lossy wire would (`net.drop`).
    NetDrop = 1,
    /// Make the call fail with `sys.errno` (`sys.fail`).
    SysFail = 2,
    /// Hold the packet back: an Earliest Departure Time `net.delay_ns` (± `net.jitter_ns`) ahead,
    /// which sch_fq on the device honours (`net.delay`).
    NetDelay = 3,
    /// Send the packet twice (`net.duplicate`).
    NetDuplicate = 4,
    /// Flip one random bit of the packet's payload (`net.corrupt`).
    NetCorrupt = 5,
    /// Shape to `net.rate_bytes` per second by departure times, which sch_fq honours
    /// (`net.rate`).
    NetShape = 6,
    /// Drop what exceeds `net.rate_bytes` per second beyond a burst of `net.burst_ns` (a token
    /// bucket, as a policer; no qdisc needed) (`net.rate --police`).
    NetPolice = 7,
    /// Lose every packet of a flow once it has carried `net.burst_ns` payload bytes (`net.stall`):
    /// the connection goes silent, half-dead.
    NetStall = 8,
    /// Answer a DNS query in the kernel with `dns.rcode`, or lose it (`net.dns`): the name
    /// service fails for the target alone.
    NetDns = 9,
    /// Send the calling thread `sys.signal` as the call enters (`sys.signal`); the call runs.
    SysSignal = 10,
    /// Stop the calling process (SIGSTOP) at the call's entry or exit and tell chaos, which
    /// continues it when the hold ends (`sys.delay`).
    SysDelay = 11,
    /// Freeze every process of the target (cgroup v2 `cgroup.freeze`) for the rule's window
    /// (`proc.pause`): done by chaos itself, not by a kernel hook; ended by the guardian if chaos
    /// dies or is stopped.
    ProcPause = 12,
    /// Send every process of the target a signal once as the window opens (`proc.kill`): done by
    /// chaos itself.
    ProcKill = 13,
}

impl Action {
    /// Whether it marks a thread at a call's entry (`sys.delay` holds it, `sys.signal` signals
    /// it) for the call's later hooks to refuse the call ([`SessionConfig::marks_threads`]).
    pub const fn marks_threads(self) -> bool {
        matches!(self, Action::SysDelay | Action::SysSignal)
    }

    /// Whether the packet hooks act on it (every `Net*` action).
    pub const fn is_packet(self) -> bool {
        matches!(
            self,
            Action::NetDrop
                | Action::NetDelay
                | Action::NetDuplicate
                | Action::NetCorrupt
                | Action::NetShape
                | Action::NetPolice
                | Action::NetStall
                | Action::NetDns
        )
    }

    pub const fn from_u32(v: u32) -> Action {
        match v {
            1 => Action::NetDrop,
            2 => Action::SysFail,
            3 => Action::NetDelay,
            4 => Action::NetDuplicate,
            5 => Action::NetCorrupt,
            6 => Action::NetShape,
            7 => Action::NetPolice,
            8 => Action::NetStall,
            9 => Action::NetDns,
            10 => Action::SysSignal,
            11 => Action::SysDelay,
            12 => Action::ProcPause,
            13 => Action::ProcKill,
            _ => Action::None,
        }
    }
}

/// One rule of a session: when it is live, how often it fires, how many times at most, what it
/// does, and the filters of its hook family (`net` for packets, `sys` for calls). The target is
/// not in the rule: [`TARGETS_MAP`] maps target cgroups to rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`): the rule injects from `start_ns` ...
    pub start_ns: u64,
    /// ... until `deadline_ns` (exclusive). Every rule has one: nothing is forever.
    pub deadline_ns: u64,
    /// Inject when `bpf_get_prandom_u32() < threshold` (see [`ppm_to_threshold`]).
    pub threshold: u64,
    /// The rule stops after this many injections (`--max-injections`); 0: no cap.
    pub max_injections: u64,
    /// [`Action`] as u32.
    pub action: u32,
    /// 1: the rule draws from its own generator seeded with `seed` (`--seed`, packet faults).
    pub seeded: u32,
    pub net: net::NetMatch,
    pub sys: sys::SysMatch,
    /// The parameters of a packet action.
    pub net_action: net::NetAction,
    /// A loss model that decides in place of `threshold` when it keeps state
    /// ([`loss::LossParams::is_stateful`]): netem's Gilbert-Elliott, 4-state, correlated loss.
    pub loss: loss::LossParams,
    /// `NetDns`: the queries it answers, and the answer.
    pub dns: dns::DnsMatch,
    /// With `seeded`: the seed of the rule's generator ([`PRNG_MAP`]).
    pub seed: u64,
}

const _: () = assert!(core::mem::size_of::<Rule>() == 40 + 48 + 56 + 56 + 32 + 16 + 8);

/// What of the packet programs a rule uses beyond the rule walk, one bit each: its action's arm,
/// a loss model that keeps state, ECN marking. A session's kernel object is loaded with the union
/// over its rules ([`PACKET_FEATURES_GLOBAL`]).
pub mod feature {
    use super::{Action, Rule};

    /// The arm of packet action `a`.
    pub const fn action(a: Action) -> u64 {
        1 << a as u32
    }
    /// A loss model that keeps state ([`super::loss::LossParams::is_stateful`]).
    pub const LOSS_MODEL: u64 = 1 << 32;
    /// Marking Congestion Experienced instead of dropping (`net.drop --ecn`).
    pub const ECN: u64 = 1 << 33;
    /// Everything: an object that any rule can be written to.
    pub const ALL: u64 = u64::MAX;

    /// What `rule` uses.
    pub const fn of_rule(rule: &Rule) -> u64 {
        let mut f = action(Action::from_u32(rule.action));
        if rule.loss.is_stateful() {
            f |= LOSS_MODEL;
        }
        if rule.net_action.ecn != 0 {
            f |= ECN;
        }
        f
    }
}

impl Rule {
    /// Whether the packet hooks must read the transport header for this rule: a port or TCP
    /// flags filter, or an action that tracks flows.
    pub const fn needs_transport(&self) -> bool {
        self.net.needs_ports() || self.action == Action::NetStall as u32
    }

    /// Whether the rule injects at monotonic time `now_ns`: in its window, and not a free slot.
    #[inline(always)]
    pub const fn live(&self, now_ns: u64) -> bool {
        self.action != Action::None as u32 && self.start_ns <= now_ns && now_ns < self.deadline_ns
    }

    /// A rule that was written but has not started: the loader writes rules this way, attaches
    /// everything, then sets the real window.
    pub const NOT_STARTED: u64 = u64::MAX;
}

/// Which rules apply to one target cgroup (and its descendants), one bit per rule index, per hook
/// family: the packet programs read `egress`/`ingress`/`ingress_tc`, the syscall programs `sys`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetRules {
    pub egress: u64,
    /// Received packets, decided at `cgroup_skb/ingress` (drop, stall, police).
    pub ingress: u64,
    /// Received packets, changed at TC ingress before the stack sees them (duplicate, corrupt).
    pub ingress_tc: u64,
    pub sys: u64,
    /// Rules with a port filter: the packet programs read the transport header only for them.
    pub ports: u64,
    /// Rules that answer DNS queries (`NetDns`): walked before the others, for UDP packets only.
    pub dns: u64,
}

const _: () = assert!(core::mem::size_of::<TargetRules>() == 48);

/// The hook families a [`TargetRules`] mask is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Egress,
    Ingress,
    IngressTc,
    Sys,
}

impl TargetRules {
    #[inline(always)]
    pub const fn mask(&self, f: Family) -> u64 {
        match f {
            Family::Egress => self.egress,
            Family::Ingress => self.ingress,
            Family::IngressTc => self.ingress_tc,
            Family::Sys => self.sys,
        }
    }

    pub fn add(&mut self, f: Family, rule: u32) {
        let bit = 1u64 << (rule % MAX_RULES);
        match f {
            Family::Egress => self.egress |= bit,
            Family::Ingress => self.ingress |= bit,
            Family::IngressTc => self.ingress_tc |= bit,
            Family::Sys => self.sys |= bit,
        }
    }
}

/// The session's own processes, which no rule ever touches (the loader, its guardian): a target
/// that contains chaos itself (`--force`) must not fail chaos's own calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionConfig {
    pub loader_tgid: u32,
    pub guardian_tgid: u32,
    /// Set by `chaos stop` (user space reads it; the kernel ends rules by their deadline).
    pub stop_requested: u32,
    /// Nonzero when a rule of the session may mark a thread at a call's entry (`sys.delay` holds
    /// it, `sys.signal` signals it; the call's later hooks refuse the call): only then do the
    /// syscall hooks look the calling thread up among the marked.
    pub marks_threads: u32,
}

const _: () = assert!(core::mem::size_of::<SessionConfig>() == 16);

impl SessionConfig {
    #[inline(always)]
    pub const fn exempt(&self, tgid: u32) -> bool {
        tgid != 0 && (tgid == self.loader_tgid || tgid == self.guardian_tgid)
    }
}

/// Counters of one rule. Per CPU in the kernel, updated with atomic adds (a program in process
/// context and one in softirq context can run for the same rule on the same CPU), summed by user
/// space. Packet rules count both skbs and wire segments (`*_segs`: an skb of a GSO packet on
/// `lo`, a veth or a TSO device carries up to 64 KB, many segments on the wire). In the kernel's
/// copy the `*_segs` fields hold only the segments past each event's first ([`Counters::from_kernel`]):
/// most packets are one segment, and a counter left alone is an atomic add fewer per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events (packets, calls) of the target that reached the rule.
    pub seen: u64,
    /// ... of which matched every filter while the rule was live.
    pub matched: u64,
    /// ... of which the dice selected.
    pub selected: u64,
    /// ... to which the fault was done.
    pub injected: u64,
    pub seen_segs: u64,
    pub matched_segs: u64,
    pub selected_segs: u64,
    pub injected_segs: u64,
    /// Bytes of the injected packets.
    pub injected_bytes: u64,
    /// Selected, but not injected: the rule had reached `max_injections`.
    pub capped: u64,
    /// Non-first IP fragments that followed their datagram's fate (dropped with it); not counted
    /// as packets above, where the datagram counts once.
    pub fragments: u64,
    /// Selected packets marked Congestion Experienced instead of dropped (`net.drop --ecn`): not
    /// counted as injected.
    pub marked: u64,
    /// Injected packets a receiver's checksum will not catch (`net.corrupt`): sent with the
    /// checksum left to the device (`CHECKSUM_PARTIAL`: it is computed after the change), or
    /// received with it already checked (`CHECKSUM_PARTIAL` from a local peer, or
    /// `CHECKSUM_UNNECESSARY`). The change reaches the application; the rest of the injected
    /// are dropped by the receiver's check, as a wire's corruption would be.
    pub checksum_offloaded: u64,
}

const _: () = assert!(core::mem::size_of::<Counters>() == 104);

impl Counters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &Counters) {
        self.seen += o.seen;
        self.matched += o.matched;
        self.selected += o.selected;
        self.injected += o.injected;
        self.seen_segs += o.seen_segs;
        self.matched_segs += o.matched_segs;
        self.selected_segs += o.selected_segs;
        self.injected_segs += o.injected_segs;
        self.injected_bytes += o.injected_bytes;
        self.capped += o.capped;
        self.fragments += o.fragments;
        self.marked += o.marked;
        self.checksum_offloaded += o.checksum_offloaded;
    }

    /// The counters the kernel keeps (summed or not), with each event's first segment counted in
    /// the `*_segs` fields.
    pub const fn from_kernel(mut self) -> Counters {
        self.seen_segs += self.seen;
        self.matched_segs += self.matched;
        self.selected_segs += self.selected;
        self.injected_segs += self.injected;
        self
    }

    /// The kernel's form of these counters: [`Counters::from_kernel`] undone.
    pub const fn to_kernel(mut self) -> Counters {
        self.seen_segs = self.seen_segs.saturating_sub(self.seen);
        self.matched_segs = self.matched_segs.saturating_sub(self.matched);
        self.selected_segs = self.selected_segs.saturating_sub(self.selected);
        self.injected_segs = self.injected_segs.saturating_sub(self.injected);
        self
    }
}

/// Kernel-side failures, counted per CPU in [`ERRORS_MAP`] rather than dropped on the floor. The
/// event they happened on passed untouched.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A header could not be read (`bpf_skb_load_bytes_relative` failed).
    HeaderLoad = 0,
    /// A rule or counter slot could not be read.
    RuleLookup = 1,
    /// A cgroup deeper than [`MAX_CGROUP_DEPTH`]: targets below that level are not found.
    DeepCgroup = 2,
    /// An IPv6 packet with more extension headers than the parser walks: matched on address only.
    Ipv6Headers = 3,
    /// A packet could not be changed or copied (`bpf_skb_store_bytes`, `bpf_clone_redirect`).
    PacketWrite = 4,
    /// A loss model's shared state kept changing under this CPU: the packet was decided from the
    /// state read, which did not move.
    ModelContended = 5,
    /// `--log-calls`: an injected call's record did not fit in the ring buffer (chaos reads it
    /// ten times a second); the call was injected and counted all the same.
    CallLogFull = 6,
    /// A call that more than [`sys::RULES_PER_CALL`] rules of its caller match: it was decided
    /// against the first ones only.
    SysRulesSkipped = 7,
    /// `sys.delay`: a call chosen for a hold ran without one, its record not fitting in the ring
    /// buffer (chaos continues every held process as it reads it; it reads it at once). Counted
    /// as injected all the same.
    HoldsFull = 8,
    /// A file opened under a read/write `--path` rule's prefix when [`MAX_FOLLOWED`] files were
    /// followed already: its reads and writes are no rule's.
    FollowedFull = 9,
}
pub const KERNEL_ERROR_KINDS: u32 = 10;
/// Names for reports, by [`KernelError`] value.
pub const KERNEL_ERROR_NAMES: [&str; KERNEL_ERROR_KINDS as usize] =
    ["header_load", "rule_lookup", "deep_cgroup", "ipv6_headers", "packet_write", "model_contended", "call_log_full", "sys_rules_skipped", "holds_full", "followed_full"];

/// Converts a probability in parts per million (0..=1_000_000) into the threshold the kernel
/// compares a `bpf_get_prandom_u32()` value against: inject when `random < threshold`.
/// 1_000_000 ppm maps to 2^32, which every u32 is below, so 100% always injects and 0% never does.
pub const fn ppm_to_threshold(ppm: u32) -> u64 {
    let ppm = if ppm > PPM_ONE { PPM_ONE } else { ppm };
    // Rounded to the nearest; cannot overflow: 1e6 * 2^32 < 2^52.
    ((ppm as u64) * (1u64 << 32) + (PPM_ONE as u64 / 2)) / PPM_ONE as u64
}

/// One million parts per million: a probability of 1.
pub const PPM_ONE: u32 = 1_000_000;

/// The kernel-side decision: does a uniformly random u32 fall below the threshold?
#[inline(always)]
pub const fn roll(random: u32, threshold: u64) -> bool {
    (random as u64) < threshold
}

/// Whether an injection may happen under the rule's cap, given the count of injections before
/// this one (the value an atomic fetch-and-add returned): exactly `max` of them pass.
#[inline(always)]
pub const fn within_cap(before: u64, max: u64) -> bool {
    max == 0 || before < max
}

/// How the hooks walk a target's rule mask: `while more_rules(mask, i) { if has_rule(mask, i)
/// {..} i += 1 }`. The constant bound lets the verifier see the loop end; the shift ends it after
/// the highest rule, so one rule costs one turn, not [`MAX_RULES`].
#[inline(always)]
pub const fn more_rules(mask: u64, i: u32) -> bool {
    i < MAX_RULES && (mask >> i) != 0
}

#[inline(always)]
pub const fn has_rule(mask: u64, i: u32) -> bool {
    i < MAX_RULES && (mask >> i) & 1 != 0
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding fields and no
    // implicit padding (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::TargetRules {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::SessionConfig {}
    unsafe impl aya::Pod for super::observe::ObsKey {}
    unsafe impl aya::Pod for super::observe::ObsErrKey {}
    unsafe impl aya::Pod for super::observe::CallStats {}
    unsafe impl aya::Pod for super::observe::NetStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_uses_its_actions_arm_and_the_options_it_sets() {
        let drop = Rule { action: Action::NetDrop as u32, ..Default::default() };
        assert_eq!(feature::of_rule(&drop), feature::action(Action::NetDrop));
        let mut modelled = drop;
        modelled.loss = loss::LossParams::four_state(10, 20, 30, 40, 50);
        modelled.net_action.ecn = 1;
        assert_eq!(feature::of_rule(&modelled), feature::action(Action::NetDrop) | feature::LOSS_MODEL | feature::ECN);
        let delay = Rule { action: Action::NetDelay as u32, ..Default::default() };
        assert_eq!(feature::of_rule(&delay) & feature::of_rule(&drop), 0, "each action its own bit");
        // Every action's bit lies below the options'.
        assert!(feature::action(Action::ProcKill) < feature::LOSS_MODEL);
    }

    #[test]
    fn the_kernels_counters_count_each_events_first_segment_back_in() {
        // Per CPU, as the kernel keeps them: 3 packets of 1 segment and one GSO packet of 5 seen;
        // the GSO packet's 4 later segments are all the kernel added to seen_segs.
        let cpu0 = Counters { seen: 3, matched: 3, selected: 1, injected: 1, seen_segs: 0, matched_segs: 0, ..Default::default() };
        let cpu1 = Counters { seen: 1, matched: 1, selected: 1, injected: 1, seen_segs: 4, matched_segs: 4, selected_segs: 4, injected_segs: 4, ..Default::default() };
        let mut total = Counters::default();
        total.add(&cpu0);
        total.add(&cpu1);
        let c = total.from_kernel();
        assert_eq!((c.seen, c.seen_segs, c.matched_segs, c.selected_segs, c.injected_segs), (4, 8, 8, 6, 6));
        assert_eq!(c.to_kernel(), total, "and back");
    }

    #[test]
    fn thresholds_at_the_edges() {
        assert_eq!(ppm_to_threshold(0), 0);
        assert_eq!(ppm_to_threshold(PPM_ONE), 1 << 32);
        assert_eq!(ppm_to_threshold(PPM_ONE + 5), 1 << 32, "clamped above 100%");
        assert!(!roll(0, ppm_to_threshold(0)), "0% never injects, even for random = 0");
        assert!(roll(u32::MAX, ppm_to_threshold(PPM_ONE)), "100% always injects");
    }

    #[test]
    fn threshold_is_proportional() {
        // 30% of the u32 range, to within one part in 2^32.
        let t = ppm_to_threshold(300_000);
        let exact = (1u64 << 32) as f64 * 0.3;
        assert!((t as f64 - exact).abs() <= 1.0, "{t} vs {exact}");
        // A 1-ppm probability is still reachable.
        assert!(ppm_to_threshold(1) > 0);
    }

    #[test]
    fn roll_counts_match_the_probability_over_a_sweep() {
        // An evenly spaced sweep of the u32 range stands in for uniform randomness.
        let t = ppm_to_threshold(250_000);
        let n = 100_000u64;
        let hits = (0..n).filter(|i| roll(((i * (u32::MAX as u64)) / n) as u32, t)).count();
        assert!((24_999..=25_001).contains(&hits), "{hits}");
    }

    #[test]
    fn a_rule_is_live_only_inside_its_window() {
        let r = Rule { action: Action::NetDrop as u32, start_ns: 10, deadline_ns: 100, ..Default::default() };
        assert!(!r.live(9));
        assert!(r.live(10));
        assert!(r.live(99));
        assert!(!r.live(100), "the deadline is exclusive");
        assert!(!Rule { action: Action::None as u32, ..r }.live(50), "a free slot is never live");
        let waiting = Rule { start_ns: Rule::NOT_STARTED, deadline_ns: u64::MAX, ..r };
        assert!(!waiting.live(u64::MAX - 1), "a rule not yet started never injects");
    }

    #[test]
    fn the_cap_lets_exactly_max_injections_through() {
        assert_eq!((0..1000u64).filter(|&before| within_cap(before, 7)).count(), 7);
        assert!(within_cap(123_456, 0), "0 means no cap");
    }

    #[test]
    fn rule_masks_are_walked_lowest_first_and_bounded() {
        let mask = (1u64 << 0) | (1 << 5) | (1 << 63);
        let mut seen = [0u32; 4];
        let (mut n, mut i, mut turns) = (0, 0, 0);
        while more_rules(mask, i) {
            if has_rule(mask, i) {
                seen[n] = i;
                n += 1;
            }
            i += 1;
            turns += 1;
        }
        assert_eq!(&seen[..n], &[0, 5, 63]);
        assert_eq!(turns, 64);
        let (mut i, mut turns) = (0, 0);
        while more_rules(1, i) {
            i += 1;
            turns += 1;
        }
        assert_eq!(turns, 1, "one rule, one turn");
        assert!(!more_rules(0, 0));
        let mut t = TargetRules::default();
        t.add(Family::Ingress, 3);
        t.add(Family::IngressTc, 4);
        t.add(Family::Sys, 63);
        assert_eq!(
            (t.mask(Family::Egress), t.mask(Family::Ingress), t.mask(Family::IngressTc), t.mask(Family::Sys)),
            (0, 8, 16, 1 << 63)
        );
    }

    #[test]
    fn only_the_sessions_own_processes_are_exempt() {
        let s = SessionConfig { loader_tgid: 100, guardian_tgid: 101, ..Default::default() };
        assert!(s.exempt(100) && s.exempt(101));
        assert!(!s.exempt(102));
        assert!(!SessionConfig::default().exempt(0), "an unset config exempts nobody");
    }
}
