//! `chaos observe`: what a cgroup's processes do at the syscall level, measured by the kernel.
//!
//! tp_btf `sys_enter` stamps each call of an observed process (by thread, with its syscall and
//! the observed cgroup it belongs to); `sys_exit` adds the call to that syscall's [`CallStats`]
//! (calls, errors, time, a log2 latency histogram) and counts its errno. Per-CPU maps, summed by
//! user space: no atomics and no contention on the hot path.

/// Name of the map from an observed cgroup's id to its slot + 1 (`HashMap<u64, u32>`).
pub const OBSERVED_MAP: &str = "CHAOS_OBSERVED";
/// Name of the per-CPU map from [`ObsKey`] to [`CallStats`].
pub const OBS_CALLS_MAP: &str = "CHAOS_OBS_CALLS";
/// Name of the per-CPU map from [`ObsErrKey`] to a count.
pub const OBS_ERRORS_MAP: &str = "CHAOS_OBS_ERRORS";

/// Name of the per-CPU array of [`NetStats`], by observed slot.
pub const OBS_NET_MAP: &str = "CHAOS_OBS_NET";

/// Every map only `chaos observe`'s programs use: a session of faults, which never attaches them,
/// has them made with a few entries (their memory and the time to make them saved from its start).
pub const OBSERVE_ONLY_MAPS: [&str; 7] =
    [OBSERVED_MAP, OBS_CALLS_MAP, OBS_ERRORS_MAP, OBS_NET_MAP, "CHAOS_OBS_LEAVES", "CHAOS_OBS_INFLIGHT", "CHAOS_OBS_SOCKS"];

/// Observed cgroups at once (each with its descendants).
pub const MAX_OBSERVED: u32 = 16;
/// Entries of the stats map: (observed cgroup, syscall) pairs.
pub const MAX_OBS_CALLS: u32 = 4096;
/// Entries of the errno map: (observed cgroup, syscall, errno) triples.
pub const MAX_OBS_ERRORS: u32 = 4096;
/// Threads in a call at once (an LRU map: a thread that never returns, as from exit, ages out).
pub const MAX_OBS_INFLIGHT: u32 = 16384;

/// Latency buckets: bucket `b` holds calls that took [2^(b-1), 2^b) ns (bucket 0: under 1 ns),
/// the last everything from 2^(LAT_BUCKETS-2) ns (about 68 s) on.
pub const LAT_BUCKETS: usize = 38;

/// A syscall of one observed cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObsKey {
    /// The observed cgroup's slot (`OBSERVED_MAP`'s value - 1).
    pub slot: u32,
    pub nr: u32,
}

/// An errno a syscall of one observed cgroup returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObsErrKey {
    pub slot: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
}

/// One CPU's count of a syscall's calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallStats {
    pub calls: u64,
    /// Calls that returned an error (-4095..-1).
    pub errors: u64,
    /// Time in the call, summed (ns).
    pub total_ns: u64,
    pub hist: [u64; LAT_BUCKETS],
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats { calls: 0, errors: 0, total_ns: 0, hist: [0; LAT_BUCKETS] }
    }
}

const _: () = assert!(core::mem::size_of::<CallStats>() == 8 * (3 + LAT_BUCKETS));

/// One CPU's count of an observed cgroup's traffic: what its sockets sent and received (IP
/// packets and bytes, as its cgroup_skb hooks see them) and their TCP retransmissions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub retransmits: u64,
}

impl NetStats {
    pub fn merge(&mut self, o: &NetStats) {
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.retransmits += o.retransmits;
    }

    pub fn since(&self, b: &NetStats) -> NetStats {
        NetStats {
            packets_in: self.packets_in.saturating_sub(b.packets_in),
            bytes_in: self.bytes_in.saturating_sub(b.bytes_in),
            packets_out: self.packets_out.saturating_sub(b.packets_out),
            bytes_out: self.bytes_out.saturating_sub(b.bytes_out),
            retransmits: self.retransmits.saturating_sub(b.retransmits),
        }
    }
}

/// A thread in an observed call: since when, which syscall, which observed cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub since_ns: u64,
    pub nr: u32,
    pub slot: u32,
}

/// The bucket of a call that took `ns`.
#[inline(always)]
pub const fn bucket(ns: u64) -> usize {
    let b = (64 - ns.leading_zeros()) as usize;
    if b < LAT_BUCKETS { b } else { LAT_BUCKETS - 1 }
}

impl CallStats {
    /// The sum of CPUs' counts, or of two snapshots.
    pub fn merge(&mut self, other: &CallStats) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.total_ns += other.total_ns;
        let mut i = 0;
        while i < LAT_BUCKETS {
            self.hist[i] += other.hist[i];
            i += 1;
        }
    }

    /// What was added since `before`.
    pub fn since(&self, before: &CallStats) -> CallStats {
        let mut d = CallStats {
            calls: self.calls.saturating_sub(before.calls),
            errors: self.errors.saturating_sub(before.errors),
            total_ns: self.total_ns.saturating_sub(before.total_ns),
            ..CallStats::default()
        };
        let mut i = 0;
        while i < LAT_BUCKETS {
            d.hist[i] = self.hist[i].saturating_sub(before.hist[i]);
            i += 1;
        }
        d
    }

    /// The `q` quantile (0..=1) of the calls' latency, in ns: within the bucket holding it, by
    /// linear interpolation (so at most a factor of 2 off, and exact at bucket edges). 0 without calls.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (b, &n) in self.hist.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let (lo, hi) = if b == 0 { (0.0, 1.0) } else { ((1u64 << (b - 1)) as f64, (1u64 << b) as f64) };
                let within = (rank - seen as f64) / n as f64;
                return (lo + (hi - lo) * within) as u64;
            }
            seen += n;
        }
        1u64 << (LAT_BUCKETS - 2)
    }
}

/// Whether a syscall's return value is an error (-4095..-1).
#[inline(always)]
pub const fn is_error(ret: i64) -> bool {
    ret < 0 && ret >= -4095
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!((bucket(0), bucket(1), bucket(2), bucket(3), bucket(4)), (0, 1, 2, 2, 3));
        assert_eq!(bucket(1_000_000), 20, "1 ms is in [2^19, 2^20) ns");
        assert_eq!(bucket(u64::MAX), LAT_BUCKETS - 1);
    }

    /// One call that took `ns` and returned `ret`, as the kernel program adds it.
    fn add(s: &mut CallStats, ns: u64, ret: i64) {
        s.calls += 1;
        s.errors += is_error(ret) as u64;
        s.total_ns += ns;
        s.hist[bucket(ns)] += 1;
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let mut s = CallStats::default();
        for _ in 0..90 {
            add(&mut s, 1_000, 0);
        }
        for _ in 0..10 {
            add(&mut s, 5_000_000, -2);
        }
        assert_eq!((s.calls, s.errors), (100, 10));
        let p50 = s.quantile_ns(0.5);
        assert!((512..=1024).contains(&p50), "{p50}");
        let p99 = s.quantile_ns(0.99);
        assert!((4_194_304..=8_388_608).contains(&p99), "{p99}");
        assert_eq!(CallStats::default().quantile_ns(0.5), 0);
        let mut twice = s;
        twice.merge(&s);
        assert_eq!(twice.since(&s), s);
    }
}
