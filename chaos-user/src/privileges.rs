//! What chaos needs from the process: checked before anything is loaded, so a missing capability
//! is one clear line (exit 3) rather than an EPERM from somewhere deep in a load.
//!
//! The set (docs/capabilities.md says why each one):
//! - always: CAP_BPF (maps, programs), CAP_PERFMON (tracing programs, kernel pointers),
//!   CAP_NET_ADMIN (cgroup_skb and TC attachment, rtnetlink); CAP_SYS_ADMIN stands in for the
//!   first two on kernels before 5.8;
//! - CAP_SYS_ADMIN to enter another network namespace (a container's: `setns`), for `chaos
//!   probe`'s throwaway namespace, and for `chaos status`/`stop` (another session's maps by id);
//! - CAP_SYS_PTRACE to open another user's process's namespace (`/proc/PID/ns/net`).
//!
//! Checked where needed: [`check`] at every start, the others where they are used.

use crate::{error::Result, unsupported};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set, from /proc/self/status.
fn effective() -> u64 {
    procfs::process::Process::myself().and_then(|p| p.status()).map(|s| s.capeff).unwrap_or(0)
}

/// Whether this process has capability `cap`.
pub fn has(cap: u32) -> bool {
    effective() & (1u64 << cap) != 0
}

/// The capabilities every command that loads programs needs that this process lacks, by name.
pub fn missing(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut out = Vec::new();
    // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON (kernels before 5.8 only know it).
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    out
}

/// Fails with exit 3 naming what is missing.
pub fn check() -> Result<()> {
    let missing = missing(effective());
    if missing.is_empty() {
        return Ok(());
    }
    Err(unsupported!(
        "chaos needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; this process lacks {}: run it as root",
        missing.join(", ")
    ))
}

/// Fails with exit 3 unless this process has `cap` (named `name`), saying what needs it.
pub fn require(cap: u32, name: &str, why: &str) -> Result<()> {
    if has(cap) { Ok(()) } else { Err(unsupported!("{why} needs {name}, which this process lacks: run chaos as root or add {name}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lacks_nothing_and_sys_admin_covers_bpf_and_perfmon() {
        assert!(missing(u64::MAX).is_empty());
        assert!(missing((1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(missing(1 << CAP_BPF | 1 << CAP_PERFMON), vec!["CAP_NET_ADMIN"]);
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
    }
}
