//! Tiny programs `chaos probe` loads (and attaches where that is the test) to learn what this
//! kernel really accepts, one per backend. None of them changes anything: each acts only when the
//! loader sets `PROBE_ARMED`, which it never does; the branch keeps the helper call in the program
//! so the verifier must accept that helper.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_override_return, bpf_send_signal_thread},
    macros::{btf_tracepoint, cgroup_skb, classifier, kprobe, map},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, ProbeContext, SkBuffContext, TcContext},
};

/// A map value, not a constant, so the verifier cannot prove the armed branches dead.
#[map]
static PROBE_ARMED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn armed() -> bool {
    PROBE_ARMED.get(0).is_some_and(|v| *v == 0x5eed)
}

/// tp_btf on sys_enter with the signal helper the syscall "signal" fault uses.
#[btf_tracepoint(function = "sys_enter")]
pub fn chaos_probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    if armed() {
        // SAFETY: no preconditions; never reached unless armed.
        unsafe { bpf_send_signal_thread(0) };
    }
    0
}

/// kprobe with bpf_override_return, the "any syscall" failure backend.
#[kprobe]
pub fn chaos_probe_kprobe(ctx: ProbeContext) -> u32 {
    if armed() {
        // SAFETY: regs is the probed function's register set, valid for this run.
        unsafe { bpf_override_return(ctx.regs, 0) };
    }
    0
}

/// The delay, in ns, `chaos_probe_edt` gives every packet (0: none). Set by the EDT experiment.
#[map]
static PROBE_EDT_DELAY: Array<u64> = Array::with_max_entries(1, 0);

/// The ground of the delay fault: an Earliest Departure Time. A TC egress program sets
/// `skb->tstamp` in the future and sch_fq on the device holds the packet until then. Without fq
/// the timestamp is ignored, which is why delay faults must check for fq first.
#[classifier]
pub fn chaos_probe_edt(ctx: TcContext) -> i32 {
    if let Some(&delay) = PROBE_EDT_DELAY.get(0)
        && delay != 0
    {
        // SAFETY: `ctx.skb.skb` is the __sk_buff of this run; tstamp is writable at TC egress,
        // where the kernel records it as a monotonic delivery time.
        unsafe { (*ctx.skb.skb).tstamp = bpf_ktime_get_ns() + delay };
    }
    0 // TC_ACT_OK / TCX_PASS
}

/// The floors `cargo xtask bench` measures chaos's per-packet kernel time against, in the same
/// run: the least a program on these hooks can do that still does what every chaos decision does
/// (count, and draw a random number). Never attached outside the benchmark.
#[map]
static BENCH_FLOOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn floor_work() {
    if let Some(p) = BENCH_FLOOR.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value, valid for this run; the helper has no preconditions.
        unsafe { *p += (bpf_get_prandom_u32() & 1) as u64 + 1 };
    }
}

/// An empty `cgroup_skb` program with one counter and one random draw.
#[cgroup_skb(egress)]
pub fn chaos_bench_floor(_ctx: SkBuffContext) -> i32 {
    floor_work();
    1
}

/// The same at TC egress, beside `chaos_tc_egress`.
#[classifier]
pub fn chaos_bench_floor_tc(_ctx: TcContext) -> i32 {
    floor_work();
    -1 // TC_ACT_UNSPEC / TCX_NEXT
}
