//! Syscall faults: one decision shared by every backend, and one thin program per backend. Each
//! program is attached once per session per hook; it finds the calling process's rules by the ids
//! of its cgroup's ancestors (`engine::rules_for`), never by a path or a level.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_override_return, bpf_probe_read_kernel,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_set_retval},
    },
    macros::{cgroup_sock_addr, kprobe},
    programs::{FExitContext, LsmContext, ProbeContext, SockAddrContext},
};
use chaos_common::{
    Action, Family, KernelError, has_rule, more_rules,
    sys::{HOOK_CONNECT, HOOK_FILE_OPEN, HOOK_SYSCALL},
};

use crate::engine::{count_error, decide, injected, is_session_process, now, rule, rules_for};

/// What to return instead of running the call, if a rule of the calling process says so.
#[inline(always)]
fn decide_call(hook: u32, nr: u32) -> Option<i64> {
    match try_decide_call(hook, nr) {
        Ok(r) => r,
        Err(e) => {
            count_error(e);
            None
        }
    }
}

#[inline(always)]
fn try_decide_call(hook: u32, nr: u32) -> Result<Option<i64>, KernelError> {
    // SAFETY: helpers without preconditions.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    let (mask, _, _) = rules_for(Family::Sys, leaf, |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) });
    if mask == 0 {
        return Ok(None);
    }
    // chaos never fails its own calls, even in a target that contains it (`--force`).
    if is_session_process((bpf_get_current_pid_tgid() >> 32) as u32) {
        return Ok(None);
    }
    let now = now();
    let mut i = 0;
    while more_rules(mask, i) {
        if has_rule(mask, i) {
            let r = rule(i)?;
            // Only calls caught where the rule looks reach it (an fsync rule never sees opens).
            if r.sys.matches(hook, nr) && decide::<false>(i, r, now, true, 1)? && Action::from_u32(r.action) == Action::SysFail {
                injected(i, 1, 0);
                return Ok(Some(r.sys.retval));
            }
        }
        i += 1;
    }
    Ok(None)
}

/// The syscall number of a `__x64_sys_*` entry, from the user registers it is given.
#[inline(always)]
fn syscall_nr(user_regs: *const pt_regs) -> u32 {
    // SAFETY: a read through the helper that tolerates a bad pointer (it returns an error).
    unsafe { bpf_probe_read_kernel(&(*user_regs).orig_rax) }.map(|nr| nr as u32).unwrap_or(u32::MAX)
}

/// Attached to `__x64_sys_<name>`: makes the syscall return the rule's value without running it.
#[kprobe]
pub fn chaos_sys_kprobe(ctx: ProbeContext) -> u32 {
    let Some(user_regs) = ctx.arg::<*const pt_regs>(0) else { return 0 };
    if let Some(ret) = decide_call(HOOK_SYSCALL, syscall_nr(user_regs)) {
        // SAFETY: regs is the probed function's register set; the function is on the
        // error-injection list (the kernel refused the attach otherwise).
        unsafe { bpf_override_return(ctx.regs, ret as u64) };
    }
    0
}

/// cgroup `connect4`/`connect6`: 1 lets the connect proceed; 0 refuses it, and `bpf_set_retval`
/// says with which error (EPERM otherwise).
#[inline(always)]
fn connect_verdict() -> i32 {
    match decide_call(HOOK_CONNECT, 0) {
        Some(ret) => {
            // SAFETY: no preconditions; the value is what connect() returns.
            unsafe { bpf_set_retval(ret as i32) };
            0
        }
        None => 1,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_sys_connect4(_ctx: SockAddrContext) -> i32 {
    connect_verdict()
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_sys_connect6(_ctx: SockAddrContext) -> i32 {
    connect_verdict()
}

/// BPF LSM on file_open: a non-zero return denies the open with that error.
///
/// Written without aya's `#[lsm]`, whose wrapper returns an i32 that reaches R0 zero-extended:
/// newer verifiers check that an LSM program returns a value in [-MAX_ERRNO, 0], and
/// refused it (measured on Debian 13's 6.12). The verdict is a sign-extended i64, clamped.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_open")]
pub fn chaos_sys_file_open(ctx: *mut core::ffi::c_void) -> i64 {
    let ctx = LsmContext::new(ctx);
    // file_open has one argument; the slot after it holds the previous BPF LSM verdict.
    let previous: i32 = ctx.arg(1);
    let verdict = if previous != 0 { previous as i64 } else { decide_call(HOOK_FILE_OPEN, 0).unwrap_or(0) };
    verdict.clamp(-MAX_ERRNO, 0)
}

/// The largest errno: an LSM verdict lies in [-MAX_ERRNO, 0].
const MAX_ERRNO: i64 = 4095;

// fmod_ret programs, attached (by chaos-user's own loader, see `kernel/fmod_ret.rs`) with
// `BPF_MODIFY_RETURN`. A non-zero return replaces the function's result and skips its body.
//
// Written without an aya macro, in `lsm/` sections: aya 0.14 rejects `fmod_ret/` sections (the
// whole object would fail to load), it parses `lsm/` ones, and chaos never loads these as LSM.
// aya's `#[fexit]` wrapper would discard the return value, and `#[lsm]` returns an i32, which
// reaches a `long` syscall result zero-extended: the result must be a full 64-bit value.

/// On `__x64_sys_<name>(const struct pt_regs *regs)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/chaos_fmod_ret_syscall")]
pub fn chaos_sys_fmod_ret_syscall(ctx: *mut core::ffi::c_void) -> i64 {
    let ctx = FExitContext::new(ctx);
    // One argument; the slot after it holds the return value so far.
    let previous: i64 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let user_regs: *const pt_regs = ctx.arg(0);
    decide_call(HOOK_SYSCALL, syscall_nr(user_regs)).unwrap_or(0)
}

/// On `security_file_open(struct file *file)`: the open family.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/chaos_fmod_ret_file_open")]
pub fn chaos_sys_fmod_ret_file_open(ctx: *mut core::ffi::c_void) -> i64 {
    let ctx = FExitContext::new(ctx);
    let previous: i64 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    decide_call(HOOK_FILE_OPEN, 0).unwrap_or(0)
}
