//! Syscall faults: rule layout, counters, map and program names.
//!
//! One rule per run. The target is a cgroup and all its descendants, matched in the kernel with
//! `bpf_get_current_ancestor_cgroup_id(level) == cgroup_id`; the backend program is attached to the
//! one syscall (kprobe on its entry function) or the one LSM hook the fault is about.

pub const RULES_MAP: &str = "SYS_RULES";
pub const COUNTERS_MAP: &str = "SYS_COUNTERS";

/// kprobe on `__x64_sys_<name>` + `bpf_override_return`: any syscall on the error-injection list.
pub const PROG_KPROBE: &str = "chaos_sys_fail_kprobe";
/// fmod_ret on `security_file_open` or `__x64_sys_<name>`; its ELF section (aya cannot load it).
pub const PROG_FMOD_RET: &str = "chaos_sys_fail_fmod_ret";
pub const FMOD_RET_SECTION: &str = "lsm/chaos_fmod_ret";
/// BPF LSM on `file_open`: fails open/openat/creat (and anything else that opens a file).
pub const PROG_LSM_FILE_OPEN: &str = "chaos_sys_fail_file_open";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysRule {
    /// `bpf_ktime_get_ns()` after which nothing is injected.
    pub deadline_ns: u64,
    /// Inject when `bpf_get_prandom_u32() < threshold`.
    pub threshold: u64,
    /// The target cgroup's id (the inode of its cgroup2 directory) ...
    pub cgroup_id: u64,
    /// ... and its depth below the cgroup2 root (root = 0).
    pub cgroup_level: u32,
    /// The errno to fail with, positive (the program returns its negation).
    pub errno: u32,
    /// 0 = slot unused.
    pub active: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SysRule>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysCounters {
    /// Calls made by processes of the target cgroup.
    pub seen: u64,
    /// ... while the rule was live.
    pub matched: u64,
    /// ... that were failed.
    pub failed: u64,
}

const _: () = assert!(core::mem::size_of::<SysCounters>() == 24);

impl SysCounters {
    pub fn add(&mut self, o: &SysCounters) {
        self.seen += o.seen;
        self.matched += o.matched;
        self.failed += o.failed;
    }
}

impl SysRule {
    /// Whether a call by a process whose ancestor at `cgroup_level` is `ancestor` is targeted.
    #[inline(always)]
    pub fn targets(&self, ancestor: u64) -> bool {
        self.active != 0 && ancestor == self.cgroup_id
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers with explicit padding, sizes asserted: any bit pattern is valid.
    unsafe impl aya::Pod for super::SysRule {}
    unsafe impl aya::Pod for super::SysCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_rule_targets_its_cgroup() {
        let r = SysRule { cgroup_id: 42, cgroup_level: 2, active: 1, ..Default::default() };
        assert!(r.targets(42));
        assert!(!r.targets(41));
        assert!(!SysRule { active: 0, ..r }.targets(42));
    }
}
