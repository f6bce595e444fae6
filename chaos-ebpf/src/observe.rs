//! `chaos observe`: each syscall of an observed cgroup's processes, timed from tp_btf `sys_enter`
//! to `sys_exit` and added to its per-CPU stats (see `chaos_common::observe`); its sockets'
//! packets and bytes from cgroup_skb hooks on the cgroup, and their TCP retransmissions from a
//! sock_ops program (the socket found by its cookie, which the egress hook tied to the slot).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    },
    macros::{btf_tracepoint, cgroup_skb, map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, SkBuffContext, SockOpsContext},
};
use chaos_common::{
    MAX_CGROUP_DEPTH,
    observe::{CallStats, InFlight, LAT_BUCKETS, NetStats, bucket, MAX_OBS_CALLS, MAX_OBS_ERRORS, MAX_OBS_INFLIGHT, MAX_OBSERVED, ObsErrKey, ObsKey, is_error},
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

#[map]
static CHAOS_OBS_NET: PerCpuArray<NetStats> = PerCpuArray::with_max_entries(MAX_OBSERVED, 0);

/// A TCP socket's cookie -> its observed slot + 1, for the retransmit callback.
#[map]
static CHAOS_OBS_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// The calling process's observed slot + 1 (0: not observed): the nearest observed ancestor of
/// its cgroup (itself included).
#[inline(always)]
fn observed_slot() -> u32 {
    // SAFETY: helpers without preconditions.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    slot_of(leaf, |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The observed slot + 1 of cgroup `leaf` (0: not observed), whose ancestor at each level
/// `ancestor` gives.
#[inline(always)]
fn slot_of(leaf: u64, ancestor: impl Fn(i32) -> u64) -> u32 {
    // SAFETY: a map value, valid for this run.
    if let Some(slot) = unsafe { CHAOS_OBS_LEAVES.get(&leaf) } {
        return *slot;
    }
    let mut slot = 0;
    let mut level = MAX_CGROUP_DEPTH as i32;
    // Deepest first: the nearest observed ancestor names the slot.
    while level >= 1 {
        let id = ancestor(level);
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

/// Counts a packet of an observed socket; `out`: sent.
#[inline(always)]
fn count_packet(ctx: &SkBuffContext, out: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed in; these hooks run with skb->sk set.
    let leaf = unsafe { bpf_skb_cgroup_id(skb.cast()) };
    // SAFETY: as above.
    let slot = slot_of(leaf, |level| unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) });
    if slot == 0 {
        return;
    }
    let Some(n) = CHAOS_OBS_NET.get_ptr_mut(slot - 1) else { return };
    let len = ctx.len() as u64;
    // SAFETY: this CPU's map value, valid for this run.
    unsafe {
        if out {
            (*n).packets_out += 1;
            (*n).bytes_out += len;
        } else {
            (*n).packets_in += 1;
            (*n).bytes_in += len;
        }
    }
    if out {
        // SAFETY: as above; the cookie of skb->sk (0 without one).
        let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
        if cookie != 0 {
            let _ = CHAOS_OBS_SOCKS.insert(&cookie, &slot, 0);
        }
    }
}

/// cgroup_skb egress on an observed cgroup: counts, never drops.
#[cgroup_skb]
pub fn chaos_observe_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, true);
    1
}

/// cgroup_skb ingress on an observed cgroup: counts, never drops.
#[cgroup_skb]
pub fn chaos_observe_ingress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, false);
    1
}

/// include/uapi/linux/bpf.h: sock_ops callbacks and flags.
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RETRANS_CB: u32 = 9;
const BPF_SOCK_OPS_RETRANS_CB_FLAG: u32 = 2;

/// sock_ops on an observed cgroup: asks for the retransmit callback on each TCP connection (from
/// its connect, or once accepted), and counts the segments each retransmission resends for the socket's slot.
#[sock_ops]
pub fn chaos_observe_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        // From the connect on, so a resent SYN counts too.
        BPF_SOCK_OPS_TCP_CONNECT_CB | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RETRANS_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_RETRANS_CB => {
            // SAFETY: the context the kernel passed in.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            // SAFETY: a map value, valid for this run.
            if let Some(&slot) = unsafe { CHAOS_OBS_SOCKS.get(&cookie) }
                && slot != 0
                && let Some(n) = CHAOS_OBS_NET.get_ptr_mut(slot - 1)
            {
                // The callback's second argument: how many segments were resent (a GSO packet
                // holds several), as the socket's own count (tcpi_total_retrans) has them.
                // SAFETY: this CPU's map value, valid for this run.
                unsafe { (*n).retransmits += u64::from(ctx.arg(1)) };
            }
        }
        _ => {}
    }
    1
}
