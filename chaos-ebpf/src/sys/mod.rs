//! Syscall faults: one decision shared by every backend, and one thin program per backend. Each
//! program is attached once per session per hook; it finds the calling process's rules by the ids
//! of its cgroup's ancestors (`engine::rules_for`), never by a path or a level.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, pt_regs},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_override_return, bpf_probe_read_kernel, bpf_send_signal_thread,
        bpf_d_path, bpf_task_pt_regs,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_set_retval},
    },
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, kprobe, map},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, FExitContext, LsmContext, ProbeContext, SockAddrContext, SockContext, SockoptContext},
};
use chaos_common::{
    Action, Family, KernelError, MAX_FOLLOWED, MAX_FOLLOW_TGIDS, MAX_RULES, Rule, has_rule,
    // Every hook id, the call keys and records, `--when` and `--path` matching.
    sys::*,
};

use core::hint::black_box;

use crate::{
    engine::{
        CHAOS_CALL_LOG, CHAOS_CALLS, CHAOS_HELD, CHAOS_HOLDS, CHAOS_SESSION, CHAOS_SYS_RULES, Segs, count_error, decide, fetch_add_slot, injected, now, rule,
        rules_for,
    },
    globals::{file_f_path_offset, task_tgid_offset},
};

/// Counts this call for rule `i`'s `--when` and says whether the call is one it selects.
#[inline(always)]
fn when_selects(i: u32, r: &Rule, hook: u32, nr: u32, pid_tgid: u64) -> bool {
    let when = &r.sys.when;
    let id = match when.scope {
        COUNT_THREAD => pid_tgid & 0xffff_ffff,
        COUNT_PROCESS => pid_tgid >> 32,
        _ => 0,
    };
    let key = CallKey { id, rule: i, what: SysMatch::counted_as(hook, nr) };
    match fetch_add_slot(&CHAOS_CALLS, &key, 1) {
        Some(before) => when.selects(before + 1),
        None => false,
    }
}

/// What a hook does with a call.
enum Verdict {
    /// Nothing.
    Pass,
    /// Rule `.0` acts on it.
    Rule(u32, &'static Rule),
    /// The call's thread was stopped at its entry by a delay rule: refuse the call with
    /// `-ERESTARTNOINTR`, so the kernel makes it after the hold, as strace's `delay_enter`.
    Restart,
}

/// The rule to apply to this call (what to return, or what to send), and its index, if a rule of
/// the calling process says so. `nr` gives the syscall's number, asked only for a target's calls.
#[inline(always)]
fn decide_call(hook: u32, nr: impl FnOnce() -> u32) -> Verdict {
    decide_call_on(hook, nr, &mut NoPath)
}

/// [`decide_call`] for a call that opens a file, whose path rules with `--path` filter on.
#[inline(always)]
fn decide_call_on(hook: u32, nr: impl FnOnce() -> u32, path: &mut impl CallPath) -> Verdict {
    match try_decide_call(hook, nr, path) {
        Ok(v) => v,
        Err(e) => {
            count_error(e);
            Verdict::Pass
        }
    }
}

/// Hooks that run before the call does its work (so refusing it and making it again is the same
/// as making it once, later): every hook but the `file_open` ones, which run once a created file
/// exists, `task_kill` (a signal to a group may have reached some of it), and the exit. As
/// chaos-user's `lsm_refusers` has it.
#[inline(always)]
const fn restartable(hook: u32) -> bool {
    hook != HOOK_FILE_OPEN && hook != HOOK_LSM_TASK_KILL && hook != HOOK_SYS_ENTER && hook != HOOK_SYS_EXIT
}

#[inline(always)]
fn try_decide_call(hook: u32, nr: impl FnOnce() -> u32, path: &mut impl CallPath) -> Result<Verdict, KernelError> {
    // SAFETY: helpers without preconditions.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    let (mask, _, _) = rules_for(Family::Sys, leaf, |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) });
    if mask == 0 {
        return Ok(Verdict::Pass);
    }
    let nr = nr();
    // The session's settings: an array's value, looked up in line (no helper call).
    let Some(session) = CHAOS_SESSION.get(0).copied() else { return Err(KernelError::RuleLookup) };
    // A thread a delay rule stopped, or a signal rule signalled, at this call's entry: only a
    // session with such a rule marks any, and a hash lookup for every call of a target is not free.
    if session.marks_threads != 0
        && let Some(verdict) = held(hook, nr)
    {
        return Ok(verdict);
    }
    // The rules of this call's hook and syscall, from one lookup, before any other helper: a
    // target's other syscalls (sys_enter sees them all) stop here. Each is decided by one copy of
    // the decision for an index the verifier does not know (found without a branch per bit), so
    // verification walks RULES_PER_CALL copies of it, not one per rule slot.
    // SAFETY: a map value, valid for this run.
    let of_call = unsafe { CHAOS_SYS_RULES.get(&SysMatch::rules_key(hook, nr)) }.copied().unwrap_or(0);
    let mut todo = mask & of_call;
    if todo == 0 {
        return Ok(Verdict::Pass);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // chaos never fails its own calls, even in a target that contains it (`--force`).
    if session.exempt((pid_tgid >> 32) as u32) {
        return Ok(Verdict::Pass);
    }
    // Not the coarse clock of the packet hooks: tracing and cgroup sockopt programs may not read
    // it (the verifier refuses the helper).
    let now = now();
    let mut n = 0;
    while todo != 0 && n < RULES_PER_CALL {
        let lowest = todo & todo.wrapping_neg();
        todo &= !lowest;
        let i = (lowest - 1).count_ones() & (MAX_RULES - 1);
        let r = rule(i)?;
        n += 1;
        // A `--path` rule sees only the calls on a file under its prefix.
        if r.sys.path_len != 0 && !path.under(i, r) {
            continue;
        }
        // `--when` counts the calls of a live rule, then samples among those it selects.
        let candidate = !r.sys.when.counts() || !r.live(now) || when_selects(i, r, hook, nr, pid_tgid);
        if decide::<false>(i, r, now, candidate, Segs::One)? {
            injected(i, Segs::One, 0);
            if r.sys.log != 0 {
                log_call(i, r, hook, nr, pid_tgid);
            }
            return Ok(Verdict::Rule(i, r));
        }
    }
    if todo != 0 {
        count_error(KernelError::SysRulesSkipped);
    }
    Ok(Verdict::Pass)
}

/// What a call of a thread marked at a call's entry (held by a delay rule, signalled by a signal
/// rule) comes to, if the mark decides it: the marked call is refused by its later hooks, and
/// when the kernel restarts it, passes (it was decided at its first entry).
#[inline(always)]
fn held(hook: u32, nr: u32) -> Option<Verdict> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if hook == HOOK_SYS_ENTER {
        // A new call of the thread: the mark is done with.
        // SAFETY: a map value, valid for this run.
        if let Some(mark) = unsafe { CHAOS_HELD.get(&tid) }.copied() {
            let _ = CHAOS_HELD.remove(&tid);
            if mark == held_call(nr, HELD_RESTARTING) {
                return Some(Verdict::Pass);
            }
        }
    } else if restartable(hook)
        && let Some(mark) = CHAOS_HELD.get_ptr_mut(&tid)
    {
        // SAFETY: a map value, valid for this run; a thread's entry is written by that thread only.
        unsafe {
            let held_nr = *mark >> 2;
            // A hook that sees the number checks it; a cgroup hook sees the call of this thread's
            // current syscall, whatever its number.
            if *mark & 3 == HELD_AT_ENTRY && (!SysMatch::per_syscall(hook) || held_nr == nr) {
                *mark = held_call(held_nr, HELD_RESTARTING);
                return Some(Verdict::Restart);
            }
        }
    }
    None
}

/// `--log-calls`: a record of the call rule `i` injected, for chaos to print.
#[inline(always)]
fn log_call(i: u32, r: &Rule, hook: u32, nr: u32, pid_tgid: u64) {
    let nr = if SysMatch::per_syscall(hook) {
        nr
    } else if hook == r.sys.hook {
        r.sys.syscall_nr
    } else {
        u32::MAX
    };
    let record = CallRecord {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        rule: i,
        nr,
        hook,
        action: r.action,
        signal: r.sys.signal,
        _pad: 0,
        retval: r.sys.retval,
    };
    if CHAOS_CALL_LOG.output::<CallRecord>(&record, 0).is_err() {
        count_error(KernelError::CallLogFull);
    }
}

/// The path of the file a call acts on, for `--path` rules.
trait CallPath {
    /// Whether the file is under the prefix of rule `i`, `r` (`r.sys.path_len` bytes hashing to
    /// `r.sys.path_hash`: `PathPrefix`).
    fn under(&mut self, i: u32, r: &Rule) -> bool;
}

/// A call on no file (or whose hook cannot tell it): no `--path` rule takes it.
struct NoPath;

impl CallPath for NoPath {
    #[inline(always)]
    fn under(&mut self, _: u32, _: &Rule) -> bool {
        false
    }
}

/// Files a target opened under the prefix of a read/write `--path` rule (`struct file` address →
/// those rules), written by the `file_open` program and forgotten at `file_free_security`.
/// `file_permission` is given the file but is no hook where the kernel tells a path (`bpf_d_path`
/// is for sleepable LSM hooks), so its calls are matched by the open that made the file. Not
/// preallocated: a session without such a rule pays for its buckets only (65,536 preallocated LRU entries
/// were 5 MB of every session's kernel memory, measured); an entry lives while its file is open.
#[map]
static CHAOS_FOLLOWED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_FOLLOWED, BPF_F_NO_PREALLOC);

/// A call on a file already open (read, write: `file_permission`): under a rule's prefix if its
/// open was followed for that rule.
struct FollowedFile(u64);

impl CallPath for FollowedFile {
    #[inline(always)]
    fn under(&mut self, i: u32, _: &Rule) -> bool {
        // SAFETY: a map value, valid for this run.
        unsafe { CHAOS_FOLLOWED.get(&self.0) }.is_some_and(|rules| has_rule(*rules, i))
    }
}

/// After a target's open went through: if the file is under the prefix of rules whose calls act on
/// open files (`HOOK_FOLLOW_OPEN`), follows it for them. A rule not yet in its window follows too:
/// its window is checked at each call.
#[inline(always)]
fn follow_open(file: *const u8, path: &mut FilePath) {
    // SAFETY: helpers without preconditions.
    let leaf = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    let (mask, _, _) = rules_for(Family::Sys, leaf, |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) });
    if mask == 0 {
        return;
    }
    // SAFETY: a map value, valid for this run.
    let followed = unsafe { CHAOS_SYS_RULES.get(&SysMatch::rules_key(HOOK_FOLLOW_OPEN, 0)) }.copied().unwrap_or(0);
    follow(file, path, mask & followed);
}

/// Follows `file` for those of `rules` whose prefix its path is under (besides the rules it is
/// followed for already).
#[inline(always)]
fn follow(file: *const u8, path: &mut FilePath, rules: u64) {
    let mut todo = rules;
    let (mut under, mut n) = (0u64, 0);
    while todo != 0 && n < RULES_PER_CALL {
        let lowest = todo & todo.wrapping_neg();
        todo &= !lowest;
        let i = (lowest - 1).count_ones() & (MAX_RULES - 1);
        let Ok(r) = rule(i) else { return };
        if path.under(i, r) {
            under |= lowest;
        }
        n += 1;
    }
    if under == 0 {
        return;
    }
    // SAFETY: a map value, valid for this run.
    let already = unsafe { CHAOS_FOLLOWED.get(&(file as u64)) }.copied().unwrap_or(0);
    if CHAOS_FOLLOWED.insert(&(file as u64), &(already | under), 0).is_err() {
        count_error(KernelError::FollowedFull);
    }
}

/// The processes whose open files a session follows from its start: tgid → the read/write
/// `--path` rules of their targets. The loader fills it from the targets' cgroup.procs just
/// before it runs [`chaos_follow_open_files`] once.
#[map]
static CHAOS_FOLLOW_TGIDS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_FOLLOW_TGIDS, BPF_F_NO_PREALLOC);

/// `iter/task_file`: given each open file of every process, follows those of the processes in
/// `CHAOS_FOLLOW_TGIDS` that are under their rules' prefixes, as `file_open` would have had it
/// seen them opened. Run once per session start, after `file_open` is attached: a file opened
/// meanwhile is followed by one or the other.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn chaos_follow_open_files(ctx: *mut core::ffi::c_void) -> i32 {
    // The context is `struct bpf_iter__task_file { meta; task; u32 fd; file; }`, each member in
    // a u64 slot: the task at 8, the file at 24.
    let slots = ctx as *const u64;
    // SAFETY: reads of the context's slots at the offsets of its members, which the verifier
    // checks; both pointers may be null (at the end of the walk).
    let (task, file) = unsafe { (*slots.add(1) as *const u8, *slots.add(3) as *const u8) };
    if task.is_null() || file.is_null() {
        return 0;
    }
    // SAFETY: the helper reads 4 bytes of the task at the offset of `tgid` the loader read from
    // this kernel's BTF; a failed read gives 0, which no process has.
    let tgid = unsafe { bpf_probe_read_kernel(task.add(task_tgid_offset()) as *const u32) }.unwrap_or(0);
    // SAFETY: a map value, valid for this run.
    let Some(rules) = (unsafe { CHAOS_FOLLOW_TGIDS.get(&tgid) }).copied() else { return 0 };
    follow(file, &mut FilePath::new(file), rules);
    0
}

/// The file a `file_open` hook is given, its path resolved (`bpf_d_path`, in the calling
/// process's root) and its prefixes hashed on the first `under`, once per call.
struct FilePath {
    file: *const u8,
    resolved: Option<*const PathScratch>,
    tried: bool,
}

impl FilePath {
    fn new(file: *const u8) -> FilePath {
        FilePath { file, resolved: None, tried: false }
    }

    #[inline(always)]
    fn resolve(&mut self) -> Option<*const PathScratch> {
        // An anonymous mapping has no file.
        if self.file.is_null() {
            return None;
        }
        if !self.tried {
            self.tried = true;
            self.resolved = resolve_path(self.file);
        }
        self.resolved
    }
}

impl CallPath for FilePath {
    #[inline(always)]
    fn under(&mut self, _: u32, r: &Rule) -> bool {
        let Some(s) = self.resolve() else { return false };
        let hash = r.sys.path_hash;
        let len = black_box(r.sys.path_len as usize);
        if len > MAX_PATH_PREFIX {
            return false;
        }
        // SAFETY: this CPU's scratch value, valid for this run, filled by `resolve_path`; both
        // indexes are at most MAX_PATH_PREFIX, within the arrays.
        unsafe { len <= (*s).len as usize && PathPrefix { len: len as u32, hash }.covers((*s).hashes[len], (*s).path[len]) }
    }
}

/// Per-CPU room for one path and the hashes of its first `MAX_PATH_PREFIX` prefixes.
#[repr(C)]
pub struct PathScratch {
    /// The path, NUL-terminated (`bpf_d_path` writes at most `PATH_MAX` bytes).
    path: [u8; PATH_MAX],
    /// `hashes[k]`: the hash of the path's first k bytes.
    hashes: [u64; MAX_PATH_PREFIX + 1],
    /// The path's length (without its NUL), at most `MAX_PATH_PREFIX` counted.
    len: u32,
}

/// The kernel's longest path (PATH_MAX), with its NUL.
const PATH_MAX: usize = 4096;

#[map]
static CHAOS_PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Resolves the path of `file` (a `struct file *` the hook was given) into this CPU's scratch
/// and hashes its prefixes; `None` if the kernel cannot tell it (a deleted or too long path).
#[inline(always)]
fn resolve_path(file: *const u8) -> Option<*const PathScratch> {
    let s = CHAOS_PATH_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `file` is the hook's `struct file *` (a pointer the verifier types by BTF), and
    // `f_path` is at the offset the loader read from the same kernel's BTF; the helper writes at
    // most PATH_MAX bytes into this CPU's scratch, valid for this run.
    let written = unsafe { bpf_d_path(file.add(file_f_path_offset()) as *mut _, (*s).path.as_mut_ptr() as *mut _, PATH_MAX as u32) };
    if written <= 0 {
        return None;
    }
    // SAFETY: as above; every index is below MAX_PATH_PREFIX + 1, within both arrays.
    unsafe {
        let len = core::cmp::min(written as usize - 1, MAX_PATH_PREFIX);
        (*s).len = len as u32;
        (*s).hashes[0] = PATH_HASH_START;
        let mut k = 0;
        while k < MAX_PATH_PREFIX {
            let i = black_box(k);
            if i >= len {
                break;
            }
            (*s).hashes[i + 1] = path_step((*s).hashes[i], (*s).path[i]);
            k += 1;
        }
    }
    Some(s)
}

/// What a failing hook returns for the call: the rule's value, if a fail rule took it, or "restart
/// it" for a call held at its entry.
#[inline(always)]
fn fail_call(hook: u32, nr: impl FnOnce() -> u32) -> Option<i64> {
    fail_call_on(hook, nr, &mut NoPath)
}

#[inline(always)]
fn fail_call_on(hook: u32, nr: impl FnOnce() -> u32, path: &mut impl CallPath) -> Option<i64> {
    match decide_call_on(hook, nr, path) {
        Verdict::Rule(_, r) if Action::from_u32(r.action) == Action::SysFail => Some(r.sys.retval),
        Verdict::Restart => Some(-ERESTARTNOINTR),
        _ => None,
    }
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
    if let Some(ret) = fail_call(HOOK_SYSCALL, || syscall_nr(user_regs)) {
        // SAFETY: regs is the probed function's register set; the function is on the
        // error-injection list (the kernel refused the attach otherwise).
        unsafe { bpf_override_return(ctx.regs, ret as u64) };
    }
    0
}

/// A cgroup hook's verdict on the call it sees (`hook`): 1 lets it proceed; 0 refuses it, and
/// `bpf_set_retval` says with which error (EPERM otherwise).
#[inline(always)]
fn cgroup_verdict(hook: u32) -> i32 {
    match fail_call(hook, || 0) {
        Some(ret) => {
            // SAFETY: no preconditions; the value is what the syscall returns.
            unsafe { bpf_set_retval(ret as i32) };
            0
        }
        None => 1,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn chaos_sys_connect4(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn chaos_sys_connect6(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_CONNECT)
}

#[cgroup_sock_addr(bind4)]
pub fn chaos_sys_bind4(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_BIND)
}

#[cgroup_sock_addr(bind6)]
pub fn chaos_sys_bind6(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_BIND)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn chaos_sys_sendmsg4(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn chaos_sys_sendmsg6(_ctx: SockAddrContext) -> i32 {
    cgroup_verdict(HOOK_SENDMSG)
}

#[cgroup_sock(sock_create)]
pub fn chaos_sys_sock_create(_ctx: SockContext) -> i32 {
    cgroup_verdict(HOOK_SOCKET)
}

#[cgroup_sockopt(getsockopt)]
pub fn chaos_sys_getsockopt(_ctx: SockoptContext) -> i32 {
    cgroup_verdict(HOOK_GETSOCKOPT)
}

#[cgroup_sockopt(setsockopt)]
pub fn chaos_sys_setsockopt(_ctx: SockoptContext) -> i32 {
    cgroup_verdict(HOOK_SETSOCKOPT)
}

/// tp_btf `sys_enter(struct pt_regs *regs, long id)`: every syscall's entry. A signal rule sends
/// its signal to the calling thread, a delay rule holds it; either lands on the way back to user
/// mode, so the call runs first (a blocking call is interrupted at once), unless a hook of the
/// call refuses it before its work (`Verdict::Restart`), to be made again after.
#[btf_tracepoint(function = "sys_enter")]
pub fn chaos_sys_enter(ctx: BtfTracePointContext) -> i32 {
    // sys_enter's second argument is the syscall number.
    let nr: i64 = ctx.arg(1);
    signal_or_hold(HOOK_SYS_ENTER, nr as u32);
    0
}

/// tp_btf `sys_exit(struct pt_regs *regs, long ret)`: every syscall's exit, where a delay rule
/// `--on exit` holds the thread after its call has run (strace's `delay_exit`).
#[btf_tracepoint(function = "sys_exit")]
pub fn chaos_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    signal_or_hold(HOOK_SYS_EXIT, syscall_nr(regs));
    0
}

#[inline(always)]
fn signal_or_hold(hook: u32, nr: u32) {
    let Verdict::Rule(i, r) = decide_call(hook, || nr) else { return };
    match Action::from_u32(r.action) {
        Action::SysSignal => {
            // SAFETY: no preconditions; tracing programs run in the calling task's context.
            if unsafe { bpf_send_signal_thread(r.sys.signal) } == 0 && hook == HOOK_SYS_ENTER {
                // A hook of this call that runs before its work refuses it, to be made again once
                // the signal's handler returns: a signal that kills ends the process first, and
                // the call is never made (strace skips it).
                mark_held(nr);
            }
        }
        Action::SysDelay => hold(i, hook, nr),
        _ => {}
    }
}

/// Stops the calling thread's process (SIGSTOP, delivered on its way back to user mode) and tells
/// chaos, which continues it when the hold ends. The record is reserved first: a process is never
/// stopped unless chaos will hear of it.
#[inline(always)]
fn hold(i: u32, hook: u32, nr: u32) {
    let Some(mut entry) = CHAOS_HOLDS.reserve::<HoldRecord>(0) else {
        count_error(KernelError::HoldsFull);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(HoldRecord { pid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, rule: i, nr, at_ns: now() });
    // SAFETY: no preconditions; tracing programs run in the calling task's context.
    if unsafe { bpf_send_signal_thread(SIGSTOP) } == 0 {
        // Wake chaos at once, whatever the ring's fill: the hold's accuracy depends on it.
        entry.submit(BPF_RB_FORCE_WAKEUP);
        if hook == HOOK_SYS_ENTER {
            // A hook of this call that runs before its work refuses it, to be made after the hold.
            mark_held(nr);
        }
    } else {
        entry.discard(0);
    }
}

/// Marks the calling thread as stopped or signalled at the entry of call `nr`.
#[inline(always)]
fn mark_held(nr: u32) {
    let _ = CHAOS_HELD.insert(&(bpf_get_current_pid_tgid() as u32), &held_call(nr, HELD_AT_ENTRY), 0);
}

/// signal(7): SIGSTOP on x86_64.
const SIGSTOP: u32 = 19;
/// `bpf_ringbuf_submit` flag: notify the reader now.
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// The syscall the calling thread is in, from its user registers (`orig_ax`): how a hook that
/// is given no syscall number (an LSM hook, `security_file_open`) tells whose work it checks.
#[inline(always)]
fn current_syscall_nr() -> u32 {
    // SAFETY: bpf_get_current_task_btf returns the running task, trusted by the verifier, which is
    // what bpf_task_pt_regs needs; the registers are then read through the checked helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    syscall_nr(regs)
}

/// A BPF LSM hook's verdict: a negative errno denies the operation (and so fails the syscall
/// doing it), 0 lets it proceed. One copy shared by every LSM program (a BPF-to-BPF call).
///
/// Newer verifiers check that an LSM program returns a value in [-MAX_ERRNO, 0] (aya's `#[lsm]`
/// returns an i32 that reaches R0 zero-extended, refused on Debian 13's 6.12): the verdict is a
/// sign-extended i64, clamped. A BPF LSM program runs only while the ones before it on the hook
/// allowed the operation (the kernel's trampoline stops at the first refusal), so no earlier
/// verdict is overridden.
#[inline(never)]
fn lsm_verdict(hook: u32) -> i64 {
    fail_call(hook, current_syscall_nr).unwrap_or(0).clamp(-MAX_ERRNO, 0)
}

/// On `file_open(struct file *file)`: fails the open family, its `--path` rules filtering on the
/// file's path; an open that goes through is followed for the read/write `--path` rules.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_open")]
pub fn chaos_sys_file_open(ctx: *mut core::ffi::c_void) -> i64 {
    let file: *const u8 = LsmContext::new(ctx).arg(0);
    let mut path = FilePath::new(file);
    match fail_call_on(HOOK_FILE_OPEN, current_syscall_nr, &mut path) {
        Some(verdict) => verdict.clamp(-MAX_ERRNO, 0),
        None => {
            follow_open(file, &mut path);
            0
        }
    }
}

/// On `file_permission(struct file *file, int mask)`: read/write and their kin, `--path` rules
/// taking the calls on the files their open was followed for.
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_permission")]
pub fn chaos_sys_lsm_file_permission(ctx: *mut core::ffi::c_void) -> i64 {
    let file: *const u8 = LsmContext::new(ctx).arg(0);
    fail_call_on(HOOK_LSM_FILE_PERMISSION, current_syscall_nr, &mut FollowedFile(file as u64)).unwrap_or(0).clamp(-MAX_ERRNO, 0)
}

/// On `file_free_security(struct file *file)`: a freed file is followed no more (its address
/// may be a new file's next).
#[unsafe(no_mangle)]
#[unsafe(link_section = "lsm/file_free_security")]
pub fn chaos_sys_lsm_file_free_security(ctx: *mut core::ffi::c_void) -> i64 {
    let file: *const u8 = LsmContext::new(ctx).arg(0);
    let _ = CHAOS_FOLLOWED.remove(&(file as u64));
    0
}

/// BPF LSM programs on hooks given the file first (`mmap_file`, `file_ioctl`): sleepable hooks,
/// where the kernel allows `bpf_d_path`, so `--path` rules filter their calls. Each has its own
/// decision, inlined: it carries the file.
macro_rules! lsm_file_programs {
    ($($name:ident = $section:literal => $hook:ident;)*) => {$(
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $section)]
        pub fn $name(ctx: *mut core::ffi::c_void) -> i64 {
            let file: *const u8 = LsmContext::new(ctx).arg(0);
            fail_call_on($hook, current_syscall_nr, &mut FilePath::new(file)).unwrap_or(0).clamp(-MAX_ERRNO, 0)
        }
    )*};
}

lsm_file_programs! {
    chaos_sys_lsm_mmap_file = "lsm/mmap_file" => HOOK_LSM_MMAP_FILE;
    chaos_sys_lsm_file_ioctl = "lsm/file_ioctl" => HOOK_LSM_FILE_IOCTL;
}

/// One BPF LSM program per hook, each `lsm/<hook>`: aya loads it against `bpf_lsm_<hook>`.
/// Which syscalls each fails is chaos-user's table (`faults::sys::LSM_CALLS`).
macro_rules! lsm_programs {
    ($($name:ident = $section:literal => $hook:ident;)*) => {$(
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $section)]
        pub fn $name(_ctx: *mut core::ffi::c_void) -> i64 {
            lsm_verdict($hook)
        }
    )*};
}

lsm_programs! {
    chaos_sys_lsm_file_mprotect = "lsm/file_mprotect" => HOOK_LSM_FILE_MPROTECT;
    chaos_sys_lsm_file_fcntl = "lsm/file_fcntl" => HOOK_LSM_FILE_FCNTL;
    chaos_sys_lsm_file_lock = "lsm/file_lock" => HOOK_LSM_FILE_LOCK;
    chaos_sys_lsm_inode_getattr = "lsm/inode_getattr" => HOOK_LSM_INODE_GETATTR;
    chaos_sys_lsm_inode_setattr = "lsm/inode_setattr" => HOOK_LSM_INODE_SETATTR;
    chaos_sys_lsm_inode_mkdir = "lsm/inode_mkdir" => HOOK_LSM_INODE_MKDIR;
    chaos_sys_lsm_inode_rmdir = "lsm/inode_rmdir" => HOOK_LSM_INODE_RMDIR;
    chaos_sys_lsm_inode_unlink = "lsm/inode_unlink" => HOOK_LSM_INODE_UNLINK;
    chaos_sys_lsm_inode_rename = "lsm/inode_rename" => HOOK_LSM_INODE_RENAME;
    chaos_sys_lsm_inode_link = "lsm/inode_link" => HOOK_LSM_INODE_LINK;
    chaos_sys_lsm_inode_symlink = "lsm/inode_symlink" => HOOK_LSM_INODE_SYMLINK;
    chaos_sys_lsm_inode_readlink = "lsm/inode_readlink" => HOOK_LSM_INODE_READLINK;
    chaos_sys_lsm_bprm_check_security = "lsm/bprm_check_security" => HOOK_LSM_BPRM_CHECK;
    chaos_sys_lsm_task_alloc = "lsm/task_alloc" => HOOK_LSM_TASK_ALLOC;
    chaos_sys_lsm_task_kill = "lsm/task_kill" => HOOK_LSM_TASK_KILL;
    chaos_sys_lsm_socket_create = "lsm/socket_create" => HOOK_LSM_SOCKET_CREATE;
    chaos_sys_lsm_socket_socketpair = "lsm/socket_socketpair" => HOOK_LSM_SOCKET_SOCKETPAIR;
    chaos_sys_lsm_socket_bind = "lsm/socket_bind" => HOOK_LSM_SOCKET_BIND;
    chaos_sys_lsm_socket_connect = "lsm/socket_connect" => HOOK_LSM_SOCKET_CONNECT;
    chaos_sys_lsm_socket_listen = "lsm/socket_listen" => HOOK_LSM_SOCKET_LISTEN;
    chaos_sys_lsm_socket_accept = "lsm/socket_accept" => HOOK_LSM_SOCKET_ACCEPT;
    chaos_sys_lsm_socket_sendmsg = "lsm/socket_sendmsg" => HOOK_LSM_SOCKET_SENDMSG;
    chaos_sys_lsm_socket_recvmsg = "lsm/socket_recvmsg" => HOOK_LSM_SOCKET_RECVMSG;
    chaos_sys_lsm_socket_getsockname = "lsm/socket_getsockname" => HOOK_LSM_SOCKET_GETSOCKNAME;
    chaos_sys_lsm_socket_getpeername = "lsm/socket_getpeername" => HOOK_LSM_SOCKET_GETPEERNAME;
    chaos_sys_lsm_socket_getsockopt = "lsm/socket_getsockopt" => HOOK_LSM_SOCKET_GETSOCKOPT;
    chaos_sys_lsm_socket_setsockopt = "lsm/socket_setsockopt" => HOOK_LSM_SOCKET_SETSOCKOPT;
    chaos_sys_lsm_socket_shutdown = "lsm/socket_shutdown" => HOOK_LSM_SOCKET_SHUTDOWN;
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
    fail_call(HOOK_SYSCALL, || syscall_nr(user_regs)).unwrap_or(0)
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
    fail_call(HOOK_FILE_OPEN, current_syscall_nr).unwrap_or(0)
}
