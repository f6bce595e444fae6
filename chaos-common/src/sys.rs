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
/// Opening a file (`file_open` LSM hook, or fmod_ret on `security_file_open`): the open family.
pub const HOOK_FILE_OPEN: u32 = 1;
/// The entry of one syscall, `SysMatch::syscall_nr` (fmod_ret or kprobe on `__x64_sys_<name>`).
pub const HOOK_SYSCALL: u32 = 2;
/// connect() on an inet socket, at the target cgroup's `connect4`/`connect6` hooks.
pub const HOOK_CONNECT: u32 = 3;

/// The filter and effect of a syscall rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysMatch {
    /// `HOOK_*`; 0 in a packet rule.
    pub hook: u32,
    /// The x86_64 syscall number, for `HOOK_SYSCALL`.
    pub syscall_nr: u32,
    /// What the failed call returns: a negative errno.
    pub retval: i64,
}

const _: () = assert!(core::mem::size_of::<SysMatch>() == 16);

impl SysMatch {
    /// Whether a call caught at `hook` (for `HOOK_SYSCALL`: syscall `nr`) is this rule's.
    #[inline(always)]
    pub const fn matches(&self, hook: u32, nr: u32) -> bool {
        self.hook == hook && (hook != HOOK_SYSCALL || self.syscall_nr == nr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_matches_its_hook_and_syscall_only() {
        let fsync = SysMatch { hook: HOOK_SYSCALL, syscall_nr: 74, retval: -28 };
        assert!(fsync.matches(HOOK_SYSCALL, 74));
        assert!(!fsync.matches(HOOK_SYSCALL, 75));
        assert!(!fsync.matches(HOOK_FILE_OPEN, 74));
        let open = SysMatch { hook: HOOK_FILE_OPEN, syscall_nr: 0, retval: -5 };
        assert!(open.matches(HOOK_FILE_OPEN, 0));
        assert!(open.matches(HOOK_FILE_OPEN, 257), "the open hook does not know the syscall");
        assert!(!SysMatch::default().matches(HOOK_FILE_OPEN, 0), "a packet rule is no syscall rule");
    }
}
