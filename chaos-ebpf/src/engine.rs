//! The engine every hook shares: the session's maps, finding a cgroup's rules by walking its
//! ancestors' ids, and the counted decision (live? filters? dice? cap?). The hook programs in
//! `net/` and `sys/` add only how they see an event and what each action does to it.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use chaos_common::{
    Counters, Family, KERNEL_ERROR_KINDS, KernelError, MAX_CGROUP_DEPTH, MAX_RULES, MAX_TARGETS, Rule,
    SessionConfig, TargetRules, roll, within_cap,

};

// Names must equal chaos_common::{RULES_MAP, TARGETS_MAP, COUNTERS_MAP, INJECTIONS_MAP,
// SESSION_MAP, ERRORS_MAP}.
#[map]
pub static CHAOS_RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

#[map]
pub static CHAOS_TARGETS: HashMap<u64, TargetRules> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static CHAOS_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Shared by all CPUs: the count `--max-injections` is checked against, exactly.
#[map]
pub static CHAOS_INJECTED: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map]
pub static CHAOS_SESSION: Array<SessionConfig> = Array::with_max_entries(1, 0);

#[map]
pub static CHAOS_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_ERROR_KINDS, 0);

/// Adds `n` to a counter with one atomic instruction. Per-CPU slots are not enough on their own:
/// a program in process context (a socket's send path, a syscall) can be interrupted on its CPU
/// by one in softirq context (a TCP timer's send, a received packet) working on the same rule.
#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned for the program's run.
    // The BPF target offers no `AtomicU64::fetch_add`; the intrinsic compiles to the atomic add
    // instruction (BPF_ATOMIC | BPF_ADD), which every kernel chaos supports has.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
pub fn count_error(e: KernelError) {
    if let Some(p) = CHAOS_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: a map value, valid for the program's run.
        add(unsafe { &mut *p }, 1);
    }
}

/// The rules of `family` that apply to a cgroup, given its ancestor at each level (root = 0)
/// through `ancestor`, which returns 0 past the cgroup's own level. A target's rules apply to its
/// descendants too; a cgroup below two nested targets gets the rules of both.
#[inline(always)]
pub fn rules_for(family: Family, ancestor: impl Fn(i32) -> u64) -> u64 {
    let mut mask = 0;
    // Level 0 is the root cgroup, never a target.
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        let id = ancestor(level as i32);
        if id == 0 {
            return mask;
        }
        if let Some(t) = unsafe { CHAOS_TARGETS.get(&id) } {
            mask |= t.mask(family);
        }
        level += 1;
    }
    if ancestor(MAX_CGROUP_DEPTH as i32 + 1) != 0 {
        count_error(KernelError::DeepCgroup);
    }
    mask
}

/// CLOCK_MONOTONIC now, in ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn rule(i: u32) -> Result<&'static Rule, KernelError> {
    CHAOS_RULES.get(i).ok_or(KernelError::RuleLookup)
}

#[inline(always)]
fn counters(i: u32) -> Result<&'static mut Counters, KernelError> {
    // SAFETY: a per-CPU map value, valid for the program's run; only atomics write through it.
    CHAOS_COUNTERS.get_ptr_mut(i).map(|p| unsafe { &mut *p }).ok_or(KernelError::RuleLookup)
}

/// An event (packet, call) that reached rule `i`: counts it, and says whether the fault is to be
/// done: the rule is live, `filters_ok`, the dice select it and the cap allows it. `segs` is how
/// many wire segments the event stands for (1 for a call).
#[inline(always)]
pub fn decide(i: u32, rule: &Rule, now: u64, filters_ok: bool, segs: u64) -> Result<bool, KernelError> {
    let c = counters(i)?;
    add(&mut c.seen, 1);
    add(&mut c.seen_segs, segs);
    if !filters_ok || !rule.live(now) {
        return Ok(false);
    }
    add(&mut c.matched, 1);
    add(&mut c.matched_segs, segs);
    // SAFETY: no preconditions.
    if !roll(unsafe { bpf_get_prandom_u32() }, rule.threshold) {
        return Ok(false);
    }
    add(&mut c.selected, 1);
    add(&mut c.selected_segs, segs);
    if rule.max_injections != 0 {
        let budget = CHAOS_INJECTED.get_ptr_mut(i).ok_or(KernelError::RuleLookup)?;
        // SAFETY: a shared map value, valid for the program's run; only atomics touch it. The
        // value before the add orders the injections of all CPUs: exactly `max` get under it.
        // The fetching form of the atomic add needs BPF ISA v3 (Linux 5.12+). Sequentially
        // consistent, not relaxed: LLVM 22's BPF backend compiles a relaxed add whose result is
        // used into the non-fetching instruction and reads the addend back as the "result"
        // (measured: every packet passed the cap); a stronger ordering selects the fetching one.
        let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(budget, 1) };
        if !within_cap(before, rule.max_injections) {
            add(&mut c.capped, 1);
            return Ok(false);
        }
    }
    Ok(true)
}

/// Counts a fault that was done to an event rule `i` selected.
#[inline(always)]
pub fn injected(i: u32, segs: u64, bytes: u64) {
    if let Ok(c) = counters(i) {
        add(&mut c.injected, 1);
        add(&mut c.injected_segs, segs);
        add(&mut c.injected_bytes, bytes);
    }
}

/// Counts a later IP fragment that followed its datagram's fate under rule `i`.
#[inline(always)]
pub fn fragment_followed(i: u32) {
    if let Ok(c) = counters(i) {
        add(&mut c.fragments, 1);
    }
}

/// Whether the calling process is the session's own (the loader or its guardian).
#[inline(always)]
pub fn is_session_process(tgid: u32) -> bool {
    CHAOS_SESSION.get(0).is_some_and(|s| s.exempt(tgid))
}
