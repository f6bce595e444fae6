//! Syscall faults: the filter of a syscall rule, the hooks, program names.
//!
//! A syscall program is attached once per session per hook (the LSM hook, or the entry function
//! of each syscall a rule names), whatever the number of rules and targets. It finds the rules of
//! the calling process through [`crate::TARGETS_MAP`], by walking the ids of the process's cgroup
//! ancestors: cgroup ids are global, so this is right at any depth and from inside a cgroup
//! namespace or a bind-mounted subtree, where paths and levels are not.

/// kprobe on `__x64_sys_<name>` + `bpf_override_return`: any syscall on the error-injection list.
pub const PROG_KPROBE: &str = "chaos_sys_kprobe";
/// BPF LSM on `file_open`: fails open/openat/creat (and anything else that opens a file).
pub const PROG_LSM_FILE_OPEN: &str = "chaos_sys_file_open";
/// cgroup `connect4`/`connect6` hooks with `bpf_set_retval`: fail connect() on inet sockets,
/// attached to the target cgroup (works on any kernel with cgroup BPF, 5.18+).
pub const PROG_CONNECT4: &str = "chaos_sys_connect4";
pub const PROG_CONNECT6: &str = "chaos_sys_connect6";
/// fmod_ret programs, in ELF sections aya parses but chaos loads by hand (`kernel/fmod_ret.rs`):
/// on a `__x64_sys_*` entry, and on `security_file_open`.
pub const FMOD_RET_SYSCALL_SECTION: &str = "lsm/chaos_fmod_ret_syscall";
pub const FMOD_RET_FILE_OPEN_SECTION: &str = "lsm/chaos_fmod_ret_file_open";

/// [`SysMatch::hook`]: where the rule's calls are caught.
/// Opening a file (`file_open` LSM hook, or fmod_ret on `security_file_open`): the open family,
/// each syscall told apart by the calling thread's syscall number.
pub const HOOK_FILE_OPEN: u32 = 1;
/// The entry of one syscall, `SysMatch::syscall_nr` (fmod_ret or kprobe on `__x64_sys_<name>`).
pub const HOOK_SYSCALL: u32 = 2;
/// connect() on an inet socket, at the target cgroup's `connect4`/`connect6` hooks.
pub const HOOK_CONNECT: u32 = 3;
/// bind() of an inet socket (`bind4`/`bind6`).
pub const HOOK_BIND: u32 = 4;
/// socket() creating an inet socket (`sock_create`).
pub const HOOK_SOCKET: u32 = 5;
/// sendto()/sendmsg() on an unconnected UDP socket (`sendmsg4`/`sendmsg6`).
pub const HOOK_SENDMSG: u32 = 6;
/// getsockopt() on an inet socket (`cgroup/getsockopt`, after the call did its work).
pub const HOOK_GETSOCKOPT: u32 = 7;
/// setsockopt() on an inet socket (`cgroup/setsockopt`).
pub const HOOK_SETSOCKOPT: u32 = 8;
/// Every syscall's entry (tp_btf `sys_enter`), `SysMatch::syscall_nr`: the call itself runs.
pub const HOOK_SYS_ENTER: u32 = 9;
/// Every syscall's exit (tp_btf `sys_exit`), `SysMatch::syscall_nr`: the call has run.
pub const HOOK_SYS_EXIT: u32 = 10;
/// Not a call: the key (`SysMatch::rules_key`) of the `--path` rules whose calls act on a file
/// already open (read/write at `file_permission`, where the kernel cannot tell a path). The
/// `file_open` program follows each file a target opens under such a rule's prefix.
pub const HOOK_FOLLOW_OPEN: u32 = 11;

// BPF LSM hooks (one program each, `lsm/<hook>`), each failing the syscalls chaos-user's table
// (`faults::sys::LSM_CALLS`) maps to it. The hook reads the calling thread's syscall number from
// its registers, so a rule fails only its own syscall's calls of the hook: exec reading its
// binary is no `read`, a socket's `read` no `recvfrom`.
/// The first LSM hook id: every hook from here on sees the syscall number.
pub const HOOK_LSM: u32 = 32;
pub const HOOK_LSM_FILE_PERMISSION: u32 = HOOK_LSM;
pub const HOOK_LSM_MMAP_FILE: u32 = HOOK_LSM + 1;
pub const HOOK_LSM_FILE_MPROTECT: u32 = HOOK_LSM + 2;
pub const HOOK_LSM_FILE_IOCTL: u32 = HOOK_LSM + 3;
pub const HOOK_LSM_FILE_FCNTL: u32 = HOOK_LSM + 4;
pub const HOOK_LSM_FILE_LOCK: u32 = HOOK_LSM + 5;
pub const HOOK_LSM_INODE_GETATTR: u32 = HOOK_LSM + 6;
pub const HOOK_LSM_INODE_SETATTR: u32 = HOOK_LSM + 7;
pub const HOOK_LSM_INODE_MKDIR: u32 = HOOK_LSM + 8;
pub const HOOK_LSM_INODE_RMDIR: u32 = HOOK_LSM + 9;
pub const HOOK_LSM_INODE_UNLINK: u32 = HOOK_LSM + 10;
pub const HOOK_LSM_INODE_RENAME: u32 = HOOK_LSM + 11;
pub const HOOK_LSM_INODE_LINK: u32 = HOOK_LSM + 12;
pub const HOOK_LSM_INODE_SYMLINK: u32 = HOOK_LSM + 13;
pub const HOOK_LSM_INODE_READLINK: u32 = HOOK_LSM + 14;
pub const HOOK_LSM_BPRM_CHECK: u32 = HOOK_LSM + 15;
pub const HOOK_LSM_TASK_ALLOC: u32 = HOOK_LSM + 16;
pub const HOOK_LSM_TASK_KILL: u32 = HOOK_LSM + 17;
pub const HOOK_LSM_SOCKET_CREATE: u32 = HOOK_LSM + 18;
pub const HOOK_LSM_SOCKET_SOCKETPAIR: u32 = HOOK_LSM + 19;
pub const HOOK_LSM_SOCKET_BIND: u32 = HOOK_LSM + 20;
pub const HOOK_LSM_SOCKET_CONNECT: u32 = HOOK_LSM + 21;
pub const HOOK_LSM_SOCKET_LISTEN: u32 = HOOK_LSM + 22;
pub const HOOK_LSM_SOCKET_ACCEPT: u32 = HOOK_LSM + 23;
pub const HOOK_LSM_SOCKET_SENDMSG: u32 = HOOK_LSM + 24;
pub const HOOK_LSM_SOCKET_RECVMSG: u32 = HOOK_LSM + 25;
pub const HOOK_LSM_SOCKET_GETSOCKNAME: u32 = HOOK_LSM + 26;
pub const HOOK_LSM_SOCKET_GETPEERNAME: u32 = HOOK_LSM + 27;
pub const HOOK_LSM_SOCKET_GETSOCKOPT: u32 = HOOK_LSM + 28;
pub const HOOK_LSM_SOCKET_SETSOCKOPT: u32 = HOOK_LSM + 29;
pub const HOOK_LSM_SOCKET_SHUTDOWN: u32 = HOOK_LSM + 30;
/// Not a call: `file_free_security`, where a followed file (`HOOK_FOLLOW_OPEN`) is forgotten.
pub const HOOK_LSM_FILE_FREE: u32 = HOOK_LSM + 31;

/// cgroup programs, attached to the target cgroup, failing calls with `bpf_set_retval`.
pub const PROG_BIND4: &str = "chaos_sys_bind4";
pub const PROG_BIND6: &str = "chaos_sys_bind6";
pub const PROG_SENDMSG4: &str = "chaos_sys_sendmsg4";
pub const PROG_SENDMSG6: &str = "chaos_sys_sendmsg6";
pub const PROG_SOCK_CREATE: &str = "chaos_sys_sock_create";
pub const PROG_GETSOCKOPT: &str = "chaos_sys_getsockopt";
pub const PROG_SETSOCKOPT: &str = "chaos_sys_setsockopt";
/// tp_btf `sys_enter`: signals, and holds at a call's entry.
pub const PROG_SYS_ENTER: &str = "chaos_sys_enter";
/// tp_btf `sys_exit`: holds at a call's exit.
pub const PROG_SYS_EXIT: &str = "chaos_sys_exit";

/// How many of the rules that match one call it is decided against (in rule order, until one
/// acts): each is verified as its own copy of the decision, and a session rarely has two rules
/// for one syscall of one process. More are counted as `sys_rules_skipped`.
pub const RULES_PER_CALL: u32 = 4;

/// [`When::scope`]: whose calls are counted together.
pub const COUNT_THREAD: u32 = 0;
pub const COUNT_PROCESS: u32 = 1;
pub const COUNT_CGROUP: u32 = 2;

/// strace's `when=FIRST[..LAST][+[STEP]]`: which of the calls counted in one scope (per syscall)
/// are candidates. `first == 0`: every call, nothing counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct When {
    pub first: u32,
    pub last: u32,
    pub step: u32,
    /// `COUNT_*`.
    pub scope: u32,
}

impl When {
    /// Whether the `n`-th call (from 1) is selected.
    #[inline(always)]
    pub const fn selects(&self, n: u64) -> bool {
        let (first, last, step) = (self.first as u64, self.last as u64, self.step as u64);
        n >= first && n <= last && step != 0 && (n - first).is_multiple_of(step)
    }

    pub const fn counts(&self) -> bool {
        self.first != 0
    }
}

/// A thread `sys.delay` stopped at a call's entry, in [`crate::HELD_MAP`]: which call, and how far
/// its hold went. The states are `HELD_*`.
#[inline(always)]
pub const fn held_call(nr: u32, state: u32) -> u32 {
    (nr << 2) | state
}
/// Stopped at the entry of call `nr`; a hook that sees the call next may refuse it to be restarted.
pub const HELD_AT_ENTRY: u32 = 1;
/// Refused with `-ERESTARTNOINTR` by such a hook: the kernel restarts it after the hold; its
/// next entry is that restart, already decided.
pub const HELD_RESTARTING: u32 = 2;
/// The kernel's "restart this call" (include/linux/errno.h): on the way back to user mode it is
/// never seen by the process; the call is made again once the stop has ended.
pub const ERESTARTNOINTR: i64 = 513;

/// The key of a call count for `--when`: whose calls (`id`: a thread or process id, or 0 for the
/// whole target), of which rule, of which syscall (`what`: its number, or 1000 + the hook where
/// the hook does not know it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallKey {
    pub id: u64,
    pub rule: u32,
    pub what: u32,
}

/// One injected call, as `--log-calls` prints it (from [`crate::CALL_LOG_MAP`], a ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallRecord {
    pub pid: u32,
    pub tid: u32,
    pub rule: u32,
    /// The syscall: as the hook saw it, or the rule's own (a cgroup hook does not know the
    /// number: sendto for every send its hook sees); `u32::MAX`: the hook's calls (`hook`).
    pub nr: u32,
    /// `HOOK_*`: where it was caught.
    pub hook: u32,
    /// `Action` as u32: what was done.
    pub action: u32,
    pub signal: u32,
    pub _pad: u32,
    /// What the call returned instead (`SysFail`).
    pub retval: i64,
}

const _: () = assert!(core::mem::size_of::<CallRecord>() == 40);

/// A call `sys.delay` holds: the kernel has sent SIGSTOP to its thread (so its process stops on
/// the way back to user mode), and chaos continues it `at_ns` + the rule's delay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldRecord {
    pub pid: u32,
    pub tid: u32,
    pub rule: u32,
    pub nr: u32,
    /// When the stop was sent (CLOCK_MONOTONIC ns, `bpf_ktime_get_ns`).
    pub at_ns: u64,
}

const _: () = assert!(core::mem::size_of::<HoldRecord>() == 24);

/// The filter and effect of a syscall rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysMatch {
    /// `HOOK_*`; 0 in a packet rule.
    pub hook: u32,
    /// The x86_64 syscall number, for `HOOK_SYSCALL` and `HOOK_SYS_ENTER`.
    pub syscall_nr: u32,
    /// What the failed call returns: a negative errno, or any value (`--retval`).
    pub retval: i64,
    pub when: When,
    /// `SysSignal`: the signal's number.
    pub signal: u32,
    /// 1: every call the rule injects is logged to [`crate::CALL_LOG_MAP`] (`--log-calls`).
    pub log: u32,
    /// `--path`: the length of the path prefix whose files the rule's calls open (0: any file),
    /// and its [`path_step`] hash; see [`PathPrefix`].
    pub path_len: u32,
    pub _pad: u32,
    pub path_hash: u64,
}

const _: () = assert!(core::mem::size_of::<SysMatch>() == 56);

/// The longest `--path` prefix, in bytes: a hook hashes this much of a path, once per call.
pub const MAX_PATH_PREFIX: usize = 255;

/// FNV-1a (64-bit) offset basis and prime: the hash of a path prefix, byte by byte.
pub const PATH_HASH_START: u64 = 0xcbf2_9ce4_8422_2325;
const PATH_HASH_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a prefix one byte longer.
#[inline(always)]
pub const fn path_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(PATH_HASH_PRIME)
}

/// A `--path` prefix as a rule holds it. A hook resolves the path of the file being opened once
/// per call (`bpf_d_path`, in the calling process's own root: a container's paths are its own)
/// and hashes each of its first [`MAX_PATH_PREFIX`] prefixes, so a rule costs one comparison,
/// not a loop: the file is under the prefix when the hash of its first `len` bytes is the rule's
/// and the path ends there or goes on with `/` (`/etc` is no prefix of `/etcd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathPrefix {
    pub len: u32,
    pub hash: u64,
}

impl PathPrefix {
    /// The prefix of `path` (absolute, without a trailing `/`, at most [`MAX_PATH_PREFIX`] bytes:
    /// user space checks).
    pub const fn of(path: &[u8]) -> PathPrefix {
        let mut hash = PATH_HASH_START;
        let mut i = 0;
        while i < path.len() {
            hash = path_step(hash, path[i]);
            i += 1;
        }
        PathPrefix { len: path.len() as u32, hash }
    }

    /// Whether a path whose first `len` bytes hash to `hash_at_len`, and whose byte after them
    /// is `next` (0 at its end), is under this prefix.
    #[inline(always)]
    pub const fn covers(&self, hash_at_len: u64, next: u8) -> bool {
        hash_at_len == self.hash && (next == b'/' || next == 0)
    }
}

impl SysMatch {
    /// Whether a call caught at `hook` (for the per-syscall hooks: syscall `nr`) is this rule's.
    #[inline(always)]
    pub const fn matches(&self, hook: u32, nr: u32) -> bool {
        self.hook == hook && (!Self::per_syscall(hook) || self.syscall_nr == nr)
    }

    /// Hooks that see the syscall number (the others, cgroup hooks, see one syscall or a family).
    #[inline(always)]
    pub const fn per_syscall(hook: u32) -> bool {
        hook == HOOK_SYSCALL || hook == HOOK_SYS_ENTER || hook == HOOK_SYS_EXIT || hook == HOOK_FILE_OPEN || hook >= HOOK_LSM
    }

    /// The key of [`crate::SYS_RULES_MAP`] for a call caught at `hook` (syscall `nr`): the
    /// rules that match it, so a hook finds them without walking every rule.
    #[inline(always)]
    pub const fn rules_key(hook: u32, nr: u32) -> u64 {
        ((hook as u64) << 32) | if Self::per_syscall(hook) { nr as u64 } else { 0 }
    }

    /// What `--when` counts a call at `hook` as.
    #[inline(always)]
    pub const fn counted_as(hook: u32, nr: u32) -> u32 {
        if Self::per_syscall(hook) { nr } else { 1000 + hook }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    #[test]
    fn a_rule_matches_its_hook_and_syscall_only() {
        let fsync = SysMatch { hook: HOOK_SYSCALL, syscall_nr: 74, retval: -28, ..Default::default() };
        assert!(fsync.matches(HOOK_SYSCALL, 74));
        assert!(!fsync.matches(HOOK_SYSCALL, 75));
        assert!(!fsync.matches(HOOK_FILE_OPEN, 74));
        let openat = SysMatch { hook: HOOK_FILE_OPEN, syscall_nr: 257, retval: -5, ..Default::default() };
        assert!(openat.matches(HOOK_FILE_OPEN, 257));
        assert!(!openat.matches(HOOK_FILE_OPEN, 59), "an exec opening its binary is no openat");
        assert!(!SysMatch::default().matches(HOOK_FILE_OPEN, 0), "a packet rule is no syscall rule");
        let read = SysMatch { hook: HOOK_LSM_FILE_PERMISSION, syscall_nr: 0, ..Default::default() };
        assert!(read.matches(HOOK_LSM_FILE_PERMISSION, 0) && !read.matches(HOOK_LSM_FILE_PERMISSION, 59));
        assert_ne!(SysMatch::rules_key(HOOK_LSM_FILE_PERMISSION, 0), SysMatch::rules_key(HOOK_LSM_SOCKET_RECVMSG, 0));
        let write = SysMatch { hook: HOOK_SYS_ENTER, syscall_nr: 1, ..Default::default() };
        assert!(write.matches(HOOK_SYS_ENTER, 1) && !write.matches(HOOK_SYS_ENTER, 0));
        assert_ne!(SysMatch::rules_key(HOOK_SYS_ENTER, 1), SysMatch::rules_key(HOOK_SYSCALL, 1), "hooks are told apart");
        assert_eq!(SysMatch::rules_key(HOOK_CONNECT, 42), SysMatch::rules_key(HOOK_CONNECT, 0), "a cgroup hook does not know the number");
    }

    #[test]
    fn a_path_prefix_covers_its_own_files_only() {
        let etc = PathPrefix::of(b"/etc");
        let covered = |path: &[u8]| {
            let n = etc.len as usize;
            path.len() >= n && etc.covers(PathPrefix::of(&path[..n]).hash, path.get(n).copied().unwrap_or(0))
        };
        assert!(covered(b"/etc") && covered(b"/etc/passwd") && covered(b"/etc/ssl/certs"));
        assert!(!covered(b"/etcd/x") && !covered(b"/et") && !covered(b"/var/etc/x") && !covered(b"/ETC/passwd"));
    }

    /// man strace, `-e inject=...:when=`.
    #[test]
    fn when_selects_as_strace_does() {
        let sel = |first, last, step| (1..=12).filter(|&n| When { first, last, step, scope: 0 }.selects(n)).collect::<Vec<u64>>();
        assert_eq!(sel(3, 3, 1), vec![3], "first: that call only");
        assert_eq!(sel(3, 5, 1), vec![3, 4, 5], "first..last, inclusive");
        assert_eq!(sel(10, u32::MAX, 1), vec![10, 11, 12], "first+");
        assert_eq!(sel(2, u32::MAX, 3), vec![2, 5, 8, 11], "first+step");
        assert_eq!(sel(2, 8, 3), vec![2, 5, 8], "first..last+step");
        assert!(!When::default().counts());
    }
}
