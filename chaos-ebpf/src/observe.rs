//! `chaos observe`: each syscall of an observed cgroup's processes, timed from tp_btf `sys_enter`
//! to `sys_exit` and added to its per-CPU stats (see `chaos_common::observe`).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use chaos_common::{
    MAX_CGROUP_DEPTH,
    observe::{CallStats, InFlight, LAT_BUCKETS, bucket, MAX_OBS_CALLS, MAX_OBS_ERRORS, MAX_OBS_INFLIGHT, MAX_OBSERVED, ObsErrKey, ObsKey, is_error},
};

use crate::engine::now;

/// Observed cgroup id -> slot + 1 (chaos-user fills it before attaching).
#[map]
static CHAOS_OBSERVED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_OBSERVED, 0);

/// A cgroup's observed slot + 1, or 0 for "not observed": the walk up its ancestors done once per
/// cgroup, not once per syscall.
#[map]
static CHAOS_OBS_LEAVES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

#[map]
static CHAOS_OBS_INFLIGHT: LruHashMap<u32, InFlight> = LruHashMap::with_max_entries(MAX_OBS_INFLIGHT, 0);

#[map]
static CHAOS_OBS_CALLS: PerCpuHashMap<ObsKey, CallStats> = PerCpuHashMap::with_max_entries(MAX_OBS_CALLS, 0);

#[map]
static CHAOS_OBS_ERRORS: PerCpuHashMap<ObsErrKey, u64> = PerCpuHashMap::with_max_entries(MAX_OBS_ERRORS, 0);

/// The calling process's observed slot + 1 (0: not observed): the nearest observed ancestor of
/// its cgroup (itself included).
#[inline(always)]
fn observed_slot() -> u32 {
    // SAFETY: helpers without preconditions.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a map value, valid for this run.
    if let Some(slot) = unsafe { CHAOS_OBS_LEAVES.get(&leaf) } {
        return *slot;
    }
    let mut slot = 0;
    let mut level = MAX_CGROUP_DEPTH as i32;
    // Deepest first: the nearest observed ancestor names the slot.
    while level >= 1 {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id != 0
            // SAFETY: a map value, valid for this run.
            && let Some(s) = unsafe { CHAOS_OBSERVED.get(&id) }
        {
            slot = *s;
            break;
        }
        level -= 1;
    }
    let _ = CHAOS_OBS_LEAVES.insert(&leaf, &slot, 0);
    slot
}

/// tp_btf `sys_enter(struct pt_regs *regs, long id)`: an observed thread's call starts.
#[btf_tracepoint(function = "sys_enter")]
pub fn chaos_observe_enter(ctx: BtfTracePointContext) -> i32 {
    let slot = observed_slot();
    if slot != 0 {
        let nr: i64 = ctx.arg(1);
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = CHAOS_OBS_INFLIGHT.insert(&tid, &InFlight { since_ns: now(), nr: nr as u32, slot: slot - 1 }, 0);
    }
    0
}

/// tp_btf `sys_exit(struct pt_regs *regs, long ret)`: the call ends; it joins its syscall's stats.
#[btf_tracepoint(function = "sys_exit")]
pub fn chaos_observe_exit(ctx: BtfTracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a map value, copied before it is removed.
    let Some(call) = (unsafe { CHAOS_OBS_INFLIGHT.get(&tid) }).copied() else { return 0 };
    let _ = CHAOS_OBS_INFLIGHT.remove(&tid);
    let ret: i64 = ctx.arg(1);
    let took = now().saturating_sub(call.since_ns);
    let key = ObsKey { slot: call.slot, nr: call.nr };
    let stats = match CHAOS_OBS_CALLS.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let _ = CHAOS_OBS_CALLS.insert(&key, &CallStats::default(), 0);
            match CHAOS_OBS_CALLS.get_ptr_mut(&key) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // The bucket, bounded where the verifier can see it.
    let b = core::hint::black_box(bucket(took));
    let b = if b < LAT_BUCKETS { b } else { LAT_BUCKETS - 1 };
    // SAFETY: this CPU's map value, valid for this run; only this CPU writes it; b < LAT_BUCKETS.
    unsafe {
        (*stats).calls += 1;
        (*stats).errors += is_error(ret) as u64;
        (*stats).total_ns += took;
        (*stats).hist[b] += 1;
    }
    if is_error(ret) {
        let key = ObsErrKey { slot: call.slot, nr: call.nr, errno: (-ret) as u32, _pad: 0 };
        match CHAOS_OBS_ERRORS.get_ptr_mut(&key) {
            // SAFETY: as above.
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = CHAOS_OBS_ERRORS.insert(&key, &1, 0);
            }
        }
    }
    0
}
