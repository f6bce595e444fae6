//! What chaos needs from the process: checked before anything is loaded, so a missing capability
//! is one clear line (exit 3) rather than an EPERM from somewhere deep in a load.

use crate::{error::Result, unsupported};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set, from /proc/self/status.
fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities a fault needs that this process lacks, by name.
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
