//! Syscall faults: the decision shared by every backend, and one thin program per backend.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_override_return},
    macros::{kprobe, lsm, map},
    maps::{Array, PerCpuArray},
    programs::{FExitContext, LsmContext, ProbeContext},
};
use chaos_common::{
    roll,
    sys::{SysCounters, SysRule},
};

// Names must equal chaos_common::sys::{RULES_MAP, COUNTERS_MAP}.
#[map]
static SYS_RULES: Array<SysRule> = Array::with_max_entries(1, 0);

#[map]
static SYS_COUNTERS: PerCpuArray<SysCounters> = PerCpuArray::with_max_entries(1, 0);

/// The errno to fail this call with, if the rule targets the calling process and the dice say so.
#[inline(always)]
fn decide() -> Option<u32> {
    let rule = SYS_RULES.get(0)?;
    if rule.active == 0 {
        return None;
    }
    // SAFETY: helpers without preconditions.
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(rule.cgroup_level as i32) };
    if !rule.targets(ancestor) {
        return None;
    }
    // SAFETY: a per-CPU slot, valid for this run and not shared with another CPU.
    let c = unsafe { &mut *SYS_COUNTERS.get_ptr_mut(0)? };
    c.seen += 1;
    if unsafe { bpf_ktime_get_ns() } >= rule.deadline_ns {
        return None;
    }
    c.matched += 1;
    if !roll(unsafe { bpf_get_prandom_u32() }, rule.threshold) {
        return None;
    }
    c.failed += 1;
    Some(rule.errno)
}

/// Attached to `__x64_sys_<name>`: makes the syscall return -errno without running it.
#[kprobe]
pub fn chaos_sys_fail_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(errno) = decide() {
        // SAFETY: regs is the probed function's register set; the function is on the
        // error-injection list (the kernel refused the attach otherwise).
        unsafe { bpf_override_return(ctx.regs, (-(errno as i64)) as u64) };
    }
    0
}

/// BPF LSM on file_open: a non-zero return denies the open with that error.
#[lsm(hook = "file_open")]
pub fn chaos_sys_fail_file_open(ctx: LsmContext) -> i32 {
    // file_open has one argument; the slot after it holds the previous BPF LSM verdict.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide().map(|e| -(e as i32)).unwrap_or(0)
}

/// fmod_ret: attached (by chaos-user's own loader, see `kernel/fmod_ret.rs`) with
/// `BPF_MODIFY_RETURN` to `security_file_open` or a `__x64_sys_*` entry. A non-zero return replaces
/// the function's result and skips its body.
///
/// Written without an aya macro, in an `lsm/` section: aya 0.14 rejects `fmod_ret/` sections (the
/// whole object would fail to load), it parses `lsm/` ones, and chaos never loads this one as LSM.
/// aya's `#[fexit]` wrapper would discard the return value, and `#[lsm]` returns an i32, which
/// reaches a `long` syscall result zero-extended: -errno must be a full 64-bit value.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/chaos_fmod_ret")]
pub fn chaos_sys_fail_fmod_ret(ctx: *mut core::ffi::c_void) -> i64 {
    let ctx = FExitContext::new(ctx);
    // Both targets take one argument; the slot after it holds the return value so far.
    let previous: i64 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide().map(|e| -(e as i64)).unwrap_or(0)
}
