//! Read-only globals the loader sets before load (`EbpfLoader::override_global`). They live in
//! `.rodata`, so the verifier sees them as constants and prunes what they switch off.

/// Nonzero when the user asked for a log line per injection (`--log-packets`).
#[unsafe(no_mangle)]
static LOG_PACKETS: u8 = 0;

#[inline(always)]
pub fn log_packets() -> bool {
    // SAFETY: a plain read of an immutable static; volatile so the compiler does not fold the
    // value it saw at build time (the loader rewrites it before the kernel sees the program).
    unsafe { core::ptr::read_volatile(&LOG_PACKETS) != 0 }
}

/// How many of a target's packet rules are walked in line before the rest go to `bpf_loop`
/// (`net::walk`): at most `net::MAX_INLINE_RULES`. The verifier's work, most of a session's
/// start, depends on it; the loader sets it (`INLINE_RULES_GLOBAL`).
#[unsafe(no_mangle)]
static INLINE_RULES: u32 = 4;

#[inline(always)]
pub fn inline_rules() -> u32 {
    // SAFETY: as in `log_packets`.
    unsafe { core::ptr::read_volatile(&INLINE_RULES) }
}

/// What of the packet programs the session's rules use (`chaos_common::feature`); the loader sets
/// it (`PACKET_FEATURES_GLOBAL`). Each action's arm and each option is tested against it first,
/// so the verifier walks only the code a session can reach.
#[unsafe(no_mangle)]
static PACKET_FEATURES: u64 = chaos_common::feature::ALL;

/// Whether the session's rules use `feature` (a constant at every call, so the test is a
/// constant to the verifier).
#[inline(always)]
pub fn uses(feature: u64) -> bool {
    // SAFETY: as in `log_packets`.
    unsafe { core::ptr::read_volatile(&PACKET_FEATURES) & feature != 0 }
}

/// The byte offset of `f_path` in the kernel's `struct file` (from its BTF; aya has no CO-RE):
/// `bpf_d_path` takes `&file->f_path`, a pointer the verifier checks by type at that offset.
#[unsafe(no_mangle)]
static FILE_F_PATH_OFFSET: u32 = 0;

#[inline(always)]
pub fn file_f_path_offset() -> usize {
    // SAFETY: as in `log_packets`.
    unsafe { core::ptr::read_volatile(&FILE_F_PATH_OFFSET) as usize }
}

/// The byte offset of `tgid` in the kernel's `struct task_struct` (from its BTF, as above): the
/// task_file iterator reads the process id of each task it is given.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u32 = 0;

#[inline(always)]
pub fn task_tgid_offset() -> usize {
    // SAFETY: as in `log_packets`.
    unsafe { core::ptr::read_volatile(&TASK_TGID_OFFSET) as usize }
}

/// Where a socket's cgroup lies, from the kernel's BTF (as above), for TC ingress, which has no
/// helper that gives a looked-up socket's cgroup: `struct sock`'s `sk_cgrp_data.cgroup`, then
/// `struct cgroup`'s `kn` (its kernfs node, whose `id` is the cgroup id), `level`, and its
/// ancestors by level (`ancestors[]`, cgroups, or before 6.2 `ancestor_ids[]`, ids).
/// `SOCK_CGROUP_KNOWN` is 0 where the BTF lacks any of them (the loader then refuses the faults
/// that need them).
#[unsafe(no_mangle)]
static SOCK_CGROUP_KNOWN: u8 = 0;
#[unsafe(no_mangle)]
static SOCK_CGROUP_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_LEVEL_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_ANCESTORS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static CGROUP_ANCESTORS_ARE_IDS: u32 = 0;

/// The offsets above, as (sock→cgroup, cgroup→kn, kn→id, cgroup→level, cgroup→ancestors, whether
/// those are ids), or None.
#[inline(always)]
pub fn sock_cgroup_offsets() -> Option<[u64; 6]> {
    // SAFETY: as in `log_packets`.
    unsafe {
        if core::ptr::read_volatile(&SOCK_CGROUP_KNOWN) == 0 {
            return None;
        }
        Some([
            core::ptr::read_volatile(&SOCK_CGROUP_OFFSET) as u64,
            core::ptr::read_volatile(&CGROUP_KN_OFFSET) as u64,
            core::ptr::read_volatile(&KERNFS_NODE_ID_OFFSET) as u64,
            core::ptr::read_volatile(&CGROUP_LEVEL_OFFSET) as u64,
            core::ptr::read_volatile(&CGROUP_ANCESTORS_OFFSET) as u64,
            core::ptr::read_volatile(&CGROUP_ANCESTORS_ARE_IDS) as u64,
        ])
    }
}

/// The bit offset of `ip_summed` (two bits) in the kernel's `struct sk_buff`, from its BTF, or
/// `u32::MAX` where the BTF does not say (`chaos_common::SKB_IP_SUMMED_BIT_GLOBAL`).
#[unsafe(no_mangle)]
static SKB_IP_SUMMED_BIT: u32 = u32::MAX;

#[inline(always)]
pub fn skb_ip_summed_bit() -> Option<u32> {
    // SAFETY: as in `log_packets`.
    let bit = unsafe { core::ptr::read_volatile(&SKB_IP_SUMMED_BIT) };
    (bit != u32::MAX).then_some(bit)
}
