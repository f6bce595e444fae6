//! The engine every hook shares: the session's maps, finding a cgroup's rules by walking its
//! ancestors' ids, and the counted decision (live? filters? dice? cap?). The hook programs in
//! `net/` and `sys/` add only how they see an event and what each action does to it.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use chaos_common::{
    CALL_LOG_BYTES, Counters, HOLDS_BYTES, Family, KERNEL_ERROR_KINDS, KernelError, MAX_CACHED_CGROUPS, MAX_CALL_COUNTS, MAX_CGROUP_DEPTH, MAX_FLOWS, MAX_HELD, MAX_SYS_KEYS, MAX_RULES, MAX_TARGETS, Rule,
    SessionConfig, TargetRules,
    loss::{LossState, Prng, lost},
    net::{FlowKey, Packet, pace, transmit_ns},
    ppm_to_threshold, roll,
    sys::CallKey,
    within_cap,
};

// Names must equal chaos_common::{RULES_MAP, TARGETS_MAP, COUNTERS_MAP, INJECTIONS_MAP,
// SESSION_MAP, ERRORS_MAP}.
#[map]
pub static CHAOS_RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

#[map]
pub static CHAOS_TARGETS: HashMap<u64, TargetRules> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Name must equal chaos_common::TARGET_CACHE_MAP. Leaf cgroup id → the rules of all its targets
/// (every family), found once by the ancestor walk. A session's targets never change once written
/// and cgroup ids are never reused; entries made before that (the kernel checks attach a program
/// of the same object, with no targets, for an instant) are cleared by user space once the targets
/// are in. A bystander's cgroup is cached too (all masks 0), so its packets and calls cost one
/// lookup. Least recently used entries make room.
#[map]
pub static CHAOS_CACHE: LruHashMap<u64, TargetRules> = LruHashMap::with_max_entries(MAX_CACHED_CGROUPS, 0);

/// The last leaf cgroup each CPU looked up, and its rules: packets and calls come in runs from
/// one socket or process, and a per-CPU array lookup is compiled inline, where the cache's
/// lookup is a call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastLeaf {
    pub leaf: u64,
    pub rules: TargetRules,
}

/// Name must equal chaos_common::LAST_LEAF_MAP (cleared with the cache).
#[map]
pub static CHAOS_LAST_LEAF: PerCpuArray<LastLeaf> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static CHAOS_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Shared by all CPUs: the count `--max-injections` is checked against, exactly.
#[map]
pub static CHAOS_INJECTED: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map]
pub static CHAOS_SESSION: Array<SessionConfig> = Array::with_max_entries(1, 0);

#[map]
pub static CHAOS_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_ERROR_KINDS, 0);

/// Name must equal chaos_common::LOSS_STATE_MAP: each rule's loss-model state, one for all CPUs.
#[map]
pub static CHAOS_LOSS_STATE: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// Name must equal chaos_common::PRNG_MAP: each seeded rule's generator, per CPU.
#[map]
pub static CHAOS_PRNG: PerCpuArray<Prng> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// A uniformly random u32 for packet rule `i`: from the rule's seeded generator on this CPU
/// (`--seed`: the same draws in the same order in every run, as netem's `seed`), or the kernel's.
#[inline(always)]
pub fn draw(i: u32, rule: &Rule) -> u32 {
    if rule.seeded != 0
        && let Some(p) = CHAOS_PRNG.get_ptr_mut(i)
    {
        // SAFETY: this CPU's map value, valid for this run. A program interrupted on this CPU by
        // another for the same rule (process context by softirq) may interleave their draws, as
        // it may with netem's one generator; each draw still comes from the sequence.
        return unsafe { (*p).next_u32() };
    }
    // SAFETY: no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// Name must equal chaos_common::PACE_MAP: each rate rule's next free departure time.
#[map]
pub static CHAOS_PACE: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// One packet of `bytes` through rate rule `i` (`rate_bytes` per second, `burst_ns` ahead at
/// most: `u64::MAX` to shape rather than police): its departure time, or `None` to drop it. The
/// rule's next free departure time is shared by every CPU and moved by compare-and-swap; after
/// [`MODEL_ATTEMPTS`] collisions the packet leaves at the time it read (counted).
#[inline(always)]
pub fn paced(i: u32, bytes: u64, rate_bytes: u64, burst_ns: u64) -> Option<u64> {
    let Some(slot) = CHAOS_PACE.get_ptr_mut(i) else {
        count_error(KernelError::RuleLookup);
        return Some(0);
    };
    let cost = transmit_ns(bytes, rate_bytes);
    let mut attempt = 0;
    while attempt < MODEL_ATTEMPTS {
        // SAFETY: a shared map value, valid for this run, written only by the compare-and-swap.
        let next = unsafe { core::ptr::read_volatile(slot) };
        let t = now();
        let (departure, after) = pace(next, t, cost, burst_ns)?;
        // SAFETY: as above.
        let (_, swapped) = unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(slot, next, after) };
        attempt += 1;
        if swapped || attempt == MODEL_ATTEMPTS {
            if !swapped {
                count_error(KernelError::ModelContended);
            }
            return Some(departure);
        }
    }
    Some(0)
}

/// netem's reorder with a gap, for reorder rule `i` (a delay rule with `net_action.gap` > 1):
/// whether this packet is sent at once. netem's counter (`q->counter`), shared by all CPUs, is
/// the rule's slot in [`CHAOS_PACE`] (a reorder rule never paces): packets are held (and counted)
/// until `gap - 1` have been; then the next goes at once with probability `at_once_ppm`, and the
/// count starts again.
#[inline(always)]
pub fn sent_at_once(i: u32, rule: &Rule) -> bool {
    let Some(slot) = CHAOS_PACE.get_ptr_mut(i) else {
        count_error(KernelError::RuleLookup);
        return false;
    };
    let p = &rule.net_action;
    // SAFETY: a shared map value, valid for this run; only atomics touch it. The fetching form,
    // sequentially consistent (see the cap in `decide`).
    let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(slot, 1) };
    if before + 1 < p.gap as u64 || !roll(draw(i, rule), ppm_to_threshold(p.at_once_ppm)) {
        return false;
    }
    // SAFETY: as above.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(slot, 0) };
    true
}

/// Name must equal chaos_common::CALLS_MAP: how many calls of each rule's syscall each thread
/// (process, target) made while the rule was live, for `--when`. Least recently used counts make
/// room (a thread long gone); a count lost that way starts again from 1. Public, as every map:
/// the hand loader of fmod_ret programs finds maps by their global symbols.
#[map]
pub static CHAOS_CALLS: LruHashMap<CallKey, u64> = LruHashMap::with_max_entries(MAX_CALL_COUNTS, 0);

/// Name must equal chaos_common::SYS_RULES_MAP: a call's key (hook, syscall) → the rules that
/// match it.
#[map]
pub static CHAOS_SYS_RULES: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SYS_KEYS, 0);

/// Name must equal chaos_common::CALL_LOG_MAP: the calls `--log-calls` rules injected.
#[map]
pub static CHAOS_CALL_LOG: RingBuf = RingBuf::with_byte_size(CALL_LOG_BYTES, 0);

/// Name must equal chaos_common::HELD_MAP: threads held at a call's entry (see `sys::held_call`).
#[map]
pub static CHAOS_HELD: LruHashMap<u32, u32> = LruHashMap::with_max_entries(MAX_HELD, 0);

/// Name must equal chaos_common::HOLDS_MAP: the calls `sys.delay` holds, for chaos to continue.
#[map]
pub static CHAOS_HOLDS: RingBuf = RingBuf::with_byte_size(HOLDS_BYTES, 0);

/// Name must equal chaos_common::FLOWS_MAP: the payload bytes each flow of a stall rule carried.
#[map]
pub static CHAOS_FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Adds a packet's `payload` bytes to its flow under stall rule `i`; whether the flow had already
/// carried `after` bytes (so the packet is lost: the flow has gone silent). The packet that
/// crosses the mark still passes; every later one, pure ACKs included, does not.
#[inline(always)]
pub fn flow_stalled(i: u32, pkt: &Packet, payload: u64, after: u64) -> bool {
    fetch_add_slot(&CHAOS_FLOWS, &FlowKey::of(i, pkt), payload).is_some_and(|before| before >= after)
}

/// Adds `n` to `key`'s count in `map`, inserting it at 0 first; the count before the add.
#[inline(always)]
pub fn fetch_add_slot<K>(map: &LruHashMap<K, u64>, key: &K, n: u64) -> Option<u64> {
    let slot = match map.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            // BPF_NOEXIST: of two CPUs starting the same count, one inserts, both then add. The
            // zero on the stack, not a constant in .rodata, which the hand-loaded fmod_ret
            // programs (`chaos-user/src/kernel/fmod_ret.rs`) cannot refer to.
            let zero: u64 = core::hint::black_box(0);
            let _ = map.insert(key, &zero, 1);
            match map.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    count_error(KernelError::RuleLookup);
                    return None;
                }
            }
        }
    };
    // SAFETY: a map value, valid for the program's run; only atomics touch it. Sequentially
    // consistent for the fetching form (see the cap in `decide`).
    Some(unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(slot, n) })
}

/// How many times a model or pacing step is retried when another CPU moved the state in between
/// (each attempt is code the verifier walks for every path that reaches it).
const MODEL_ATTEMPTS: u32 = 2;

/// One step of rule `i`'s loss model: whether it loses this packet. The model's state is shared by
/// every CPU, as netem's is by its one queue: read, step, and compare-and-swap, again with fresh
/// draws if another CPU stepped in between. After [`MODEL_ATTEMPTS`] collisions the packet is
/// decided from the state it read, without moving it (counted as `model_contended`).
#[inline(always)]
fn model_lost(i: u32, rule: &Rule) -> bool {
    let params = &rule.loss;
    let Some(slot) = CHAOS_LOSS_STATE.get_ptr_mut(i) else {
        count_error(KernelError::RuleLookup);
        return false;
    };
    let mut attempt = 0;
    while attempt < MODEL_ATTEMPTS {
        // SAFETY: a shared map value, valid for the program's run; written only by the atomic
        // compare-and-swap below. A torn read is impossible: it is one aligned 8-byte load.
        let before = unsafe { core::ptr::read_volatile(slot) };
        let mut state = LossState::unpack(before);
        // SAFETY: no preconditions.
        let verdict = lost(params, &mut state, &mut || draw(i, rule));
        // SAFETY: as above; BPF_ATOMIC | BPF_CMPXCHG (ISA v3, Linux 5.12+).
        let (_, swapped) =
            unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(slot, before, state.pack()) };
        if swapped {
            return verdict;
        }
        attempt += 1;
        if attempt == MODEL_ATTEMPTS {
            count_error(KernelError::ModelContended);
            return verdict;
        }
    }
    false
}

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

/// How many wire segments an event stands for: one for a call, a packet's `gso_segs` for a
/// packet (an skb of a GSO packet is many segments on the wire).
#[derive(Clone, Copy)]
pub enum Segs {
    One,
    Of(*mut __sk_buff),
}

impl Segs {
    /// The segments past the event's first: read from the packet afresh at each count, so that
    /// the verifier learns nothing from one count's test that makes the next one's a foregone
    /// conclusion (which would make it track the value exactly, and walk everything after the
    /// first count twice: 26-39% more instructions processed for the packet programs, measured).
    #[inline(always)]
    fn past_first(self) -> u64 {
        match self {
            Segs::One => 0,
            // SAFETY: the context the kernel passed in, valid for this run; a field read.
            Segs::Of(skb) => (unsafe { core::ptr::read_volatile(&(*skb).gso_segs) } as u64).saturating_sub(1),
        }
    }
}

/// Counts an event of `segs` in a `*_segs` counter, which holds the segments past each event's
/// first (see `Counters::from_kernel`): no atomic add at all for the usual packet.
#[inline(always)]
fn add_segments(counter: &mut u64, segs: Segs) {
    let more = segs.past_first();
    if more != 0 {
        add(counter, more);
    }
}

#[inline(always)]
pub fn count_error(e: KernelError) {
    if let Some(p) = CHAOS_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: a map value, valid for the program's run.
        add(unsafe { &mut *p }, 1);
    }
}

/// The rules of `family` that apply to cgroup `leaf`, which of them filter on ports, and which
/// answer DNS queries, given
/// its ancestor at each level (root = 0) through `ancestor`, which returns 0 past the cgroup's own
/// level. A target's rules apply to its descendants too; a cgroup below two nested targets gets
/// the rules of both. Cached per leaf (see [`CHAOS_CACHE`]).
#[inline(always)]
pub fn rules_for(family: Family, leaf: u64, ancestor: impl Fn(i32) -> u64) -> (u64, u64, u64) {
    let last = CHAOS_LAST_LEAF.get_ptr_mut(0);
    // SAFETY: a per-CPU map value, valid for this run. A program preempted between this read and
    // the write below can at worst leave another cgroup's correct entry: each entry is complete.
    let all = match last.map(|p| unsafe { *p }) {
        Some(l) if l.leaf == leaf && leaf != 0 => l.rules,
        _ => {
            let all = match unsafe { CHAOS_CACHE.get(&leaf) } {
                Some(t) => *t,
                None => {
                    let t = walk(ancestor);
                    // A full cache only costs the next packet another walk.
                    let _ = CHAOS_CACHE.insert(&leaf, &t, 0);
                    t
                }
            };
            if let Some(p) = last {
                // SAFETY: as above.
                unsafe { *p = LastLeaf { leaf, rules: all } };
            }
            all
        }
    };
    let mask = all.mask(family);
    (mask, all.ports & mask, all.dns & mask)
}

/// Every target among a cgroup's ancestors (itself included), their rules merged. Accumulated in
/// scalars: a zeroed struct on the stack becomes a call to `memset`, which the hand-loaded
/// fmod_ret programs (`chaos-user/src/kernel/fmod_ret.rs`) cannot have.
#[inline(always)]
fn walk(ancestor: impl Fn(i32) -> u64) -> TargetRules {
    let (mut egress, mut ingress, mut ingress_tc, mut sys, mut ports, mut dns) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    // Level 0 is the root cgroup, never a target.
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        let id = ancestor(level as i32);
        if id == 0 {
            break;
        }
        if let Some(t) = unsafe { CHAOS_TARGETS.get(&id) } {
            egress |= t.egress;
            ingress |= t.ingress;
            ingress_tc |= t.ingress_tc;
            sys |= t.sys;
            ports |= t.ports;
            dns |= t.dns;
        }
        level += 1;
    }
    if level > MAX_CGROUP_DEPTH && ancestor(MAX_CGROUP_DEPTH as i32 + 1) != 0 {
        count_error(KernelError::DeepCgroup);
    }
    TargetRules { egress, ingress, ingress_tc, sys, ports, dns }
}

/// CLOCK_MONOTONIC_COARSE now, in ns: the packet hooks' clock (a tick coarse; no clocksource read,
/// which costs about as much as the rest of a decision on some machines). A rule may start and
/// end up to one tick late.
#[inline(always)]
pub fn now_coarse() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
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
///
/// `MODELS` (the packet hooks): a rule whose loss model keeps state claims every packet it
/// matches, undecided: the caller steps the model once, after walking the rules
/// ([`model_decides`]). So each program holds one copy of the model's code, not one per rule it
/// unrolls (which made the syscall programs too large to verify in time under emulation).
#[inline(always)]
pub fn decide<const MODELS: bool>(i: u32, rule: &Rule, now: u64, filters_ok: bool, segs: Segs) -> Result<bool, KernelError> {
    let c = counters(i)?;
    add(&mut c.seen, 1);
    add_segments(&mut c.seen_segs, segs);
    if !filters_ok || !rule.live(now) {
        return Ok(false);
    }
    add(&mut c.matched, 1);
    add_segments(&mut c.matched_segs, segs);
    if MODELS && crate::globals::uses(chaos_common::feature::LOSS_MODEL) && rule.loss.is_stateful() {
        return Ok(true);
    }
    // 0% and 100% need no random number (and a helper call is not free). Only packet rules may be
    // seeded (the syscall hooks include tracing programs, which keep to the kernel's generator).
    // SAFETY: no preconditions.
    let random = || if MODELS { draw(i, rule) } else { unsafe { bpf_get_prandom_u32() } };
    let selected = rule.threshold != 0 && (rule.threshold > u32::MAX as u64 || roll(random(), rule.threshold));
    if !selected {
        return Ok(false);
    }
    chosen(i, rule, c, segs)
}

/// For a packet that [`decide`] let through to rule `i`'s loss model: steps the model and, if it
/// loses the packet, counts and caps it as `decide` does.
#[inline(always)]
pub fn model_decides(i: u32, rule: &Rule, segs: Segs) -> Result<bool, KernelError> {
    if !model_lost(i, rule) {
        return Ok(false);
    }
    chosen(i, rule, counters(i)?, segs)
}

/// An event rule `i` selected: counted, and held to the rule's cap.
#[inline(always)]
fn chosen(i: u32, rule: &Rule, c: &mut Counters, segs: Segs) -> Result<bool, KernelError> {
    add(&mut c.selected, 1);
    add_segments(&mut c.selected_segs, segs);
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
pub fn injected(i: u32, segs: Segs, bytes: u64) {
    if let Ok(c) = counters(i) {
        add(&mut c.injected, 1);
        add_segments(&mut c.injected_segs, segs);
        add(&mut c.injected_bytes, bytes);
    }
}

/// Counts a packet rule `i` selected and marked Congestion Experienced instead of dropping it.
#[inline(always)]
pub fn marked(i: u32) {
    if let Ok(c) = counters(i) {
        add(&mut c.marked, 1);
    }
}

/// Counts a packet rule `i` changed whose checksum the receiver will not check against the change.
#[inline(always)]
pub fn checksum_offloaded(i: u32) {
    if let Ok(c) = counters(i) {
        add(&mut c.checksum_offloaded, 1);
    }
}

/// Counts a later IP fragment that followed its datagram's fate under rule `i`.
#[inline(always)]
pub fn fragment_followed(i: u32) {
    if let Ok(c) = counters(i) {
        add(&mut c.fragments, 1);
    }
}
