//! The one vocabulary the chaos kernel programs and user space share.
//!
//! Everything here is `#[repr(C)]`, made of fixed-width integers with explicit padding, and
//! size-checked at compile time: the kernel object and the loader are built by different
//! compilers for different targets, and a silent layout difference would corrupt every rule.
//! Decision logic that does not need the kernel (rule matching, probability thresholds) lives
//! here as plain functions so it is unit-tested on the host and runs unchanged in the kernel.
#![no_std]

pub mod net;
pub mod sys;

/// Name of the global the loader sets to make the kernel programs log, through aya-log, every packet
/// they drop (`chaos ... --log-packets`). Off by default: nothing is logged per packet.
pub const LOG_PACKETS_GLOBAL: &str = "LOG_PACKETS";

/// Converts a probability in parts per million (0..=1_000_000) into the threshold the kernel
/// compares a `bpf_get_prandom_u32()` value against: inject when `random < threshold`.
/// 1_000_000 ppm maps to 2^32, which every u32 is below, so 100% always injects and 0% never does.
pub const fn ppm_to_threshold(ppm: u32) -> u64 {
    let ppm = if ppm > PPM_ONE { PPM_ONE } else { ppm };
    // Rounded to the nearest; cannot overflow: 1e6 * 2^32 < 2^52.
    ((ppm as u64) * (1u64 << 32) + (PPM_ONE as u64 / 2)) / PPM_ONE as u64
}

/// One million parts per million: a probability of 1.
pub const PPM_ONE: u32 = 1_000_000;

/// The kernel-side decision: does a uniformly random u32 fall below the threshold?
#[inline(always)]
pub const fn roll(random: u32, threshold: u64) -> bool {
    (random as u64) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_at_the_edges() {
        assert_eq!(ppm_to_threshold(0), 0);
        assert_eq!(ppm_to_threshold(PPM_ONE), 1 << 32);
        assert_eq!(ppm_to_threshold(PPM_ONE + 5), 1 << 32, "clamped above 100%");
        assert!(!roll(0, ppm_to_threshold(0)), "0% never injects, even for random = 0");
        assert!(roll(u32::MAX, ppm_to_threshold(PPM_ONE)), "100% always injects");
    }

    #[test]
    fn threshold_is_proportional() {
        // 30% of the u32 range, to within one part in 2^32.
        let t = ppm_to_threshold(300_000);
        let exact = (1u64 << 32) as f64 * 0.3;
        assert!((t as f64 - exact).abs() <= 1.0, "{t} vs {exact}");
        // A 1-ppm probability is still reachable.
        assert!(ppm_to_threshold(1) > 0);
    }

    #[test]
    fn roll_counts_match_the_probability_over_a_sweep() {
        // An evenly spaced sweep of the u32 range stands in for uniform randomness.
        let t = ppm_to_threshold(250_000);
        let n = 100_000u64;
        let hits = (0..n)
            .filter(|i| roll(((i * (u32::MAX as u64)) / n) as u32, t))
            .count();
        assert!((24_999..=25_001).contains(&hits), "{hits}");
    }
}
