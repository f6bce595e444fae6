//! Packet faults: rule layout, packet summary, matching, counters and map names.
//!
//! Data path (docs/design.md has the picture): a `cgroup_skb` program attached to the target
//! cgroup parses each packet into a [`Packet`], walks the [`NetRule`]s and rolls the dice.
//! Ingress drops happen right there. Egress drops are handed to a TC program on the device
//! through `skb->mark` ([`steal_mark`]) so the stack believes the packet left, as on a lossy wire.

/// Rules of one `chaos` run, indexed 0..MAX_RULES. An `Array` map.
pub const RULES_MAP: &str = "NET_RULES";
/// Per-CPU [`NetCounters`], same index as the rule. A `PerCpuArray` map.
pub const COUNTERS_MAP: &str = "NET_COUNTERS";
/// Per-CPU error counts, indexed by [`NetError`]. A `PerCpuArray<u64>` map.
pub const ERRORS_MAP: &str = "NET_ERRORS";
/// The global holding this run's mark tag (see [`steal_mark`]).
pub const RUN_TAG_GLOBAL: &str = "RUN_TAG";

/// Rules one run can hold. Small: every packet of the target walks them.
pub const MAX_RULES: u32 = 8;

/// Program names in the kernel object (the function names).
pub const PROG_EGRESS: &str = "chaos_net_egress";
pub const PROG_INGRESS: &str = "chaos_net_ingress";
pub const PROG_TC_STEAL: &str = "chaos_tc_steal";

/// `NetRule::directions` bits.
pub const DIR_EGRESS: u8 = 1;
pub const DIR_INGRESS: u8 = 2;

/// IP protocol numbers the filters understand (`NetRule::proto`); 0 means any.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// What a rule does to a packet it selects. One variant per packet fault; the kernel
/// dispatches on it, user space builds it. Stored as a u8 in the rule.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetFault {
    /// Slot unused.
    None = 0,
    Drop = 1,
}

impl NetFault {
    pub const fn from_u8(v: u8) -> NetFault {
        match v {
            1 => NetFault::Drop,
            _ => NetFault::None,
        }
    }
}

/// One packet-fault rule. Addresses are 128-bit, split into two u64 halves holding the
/// big-endian address bytes as numbers; an IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d)
/// so one comparison serves both families. A zero mask matches any address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) after which the rule injects nothing.
    pub deadline_ns: u64,
    /// Inject when `bpf_get_prandom_u32() < threshold` (see [`crate::ppm_to_threshold`]).
    pub threshold: u64,
    pub peer_hi: u64,
    pub peer_lo: u64,
    pub peer_mask_hi: u64,
    pub peer_mask_lo: u64,
    /// Remote port (destination on egress, source on ingress), host order; 0 = any.
    pub remote_port: u16,
    /// Local port, host order; 0 = any.
    pub local_port: u16,
    /// [`NetFault`] as u8.
    pub fault: u8,
    /// `DIR_*` bits.
    pub directions: u8,
    /// `PROTO_*`; `PROTO_ICMP` also matches ICMPv6.
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<NetRule>() == 56);

/// Counters of one rule. Per CPU in the kernel, summed by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Packets of the target cgroup that reached the rule in one of its directions.
    pub seen: u64,
    /// ... of which matched every filter while the rule was live.
    pub matched: u64,
    /// ... of which the dice selected for the fault.
    pub selected: u64,
    /// ... of which were really dropped. Egress drops are counted by the device program when it
    /// steals the marked packet, so `selected - dropped` is what left through a device without
    /// chaos's TC program.
    pub dropped: u64,
    pub dropped_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<NetCounters>() == 40);

impl NetCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &NetCounters) {
        self.seen += o.seen;
        self.matched += o.matched;
        self.selected += o.selected;
        self.dropped += o.dropped;
        self.dropped_bytes += o.dropped_bytes;
    }
}

/// Kernel-side failures, counted in [`ERRORS_MAP`] rather than dropped on the floor.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// A header could not be read (`bpf_skb_load_bytes` failed): the packet passed untouched.
    HeaderLoad = 0,
    /// A rule slot could not be read.
    RuleLookup = 1,
    /// A marked packet named a rule index out of range.
    BadMark = 2,
}
pub const NET_ERROR_KINDS: u32 = 3;

/// What the kernel learned about a packet, in the same representation as [`NetRule`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    pub proto: u8,
    pub remote_hi: u64,
    pub remote_lo: u64,
    /// 0 when unknown (not TCP/UDP, or a non-first fragment).
    pub remote_port: u16,
    pub local_port: u16,
}

/// The upper bits of `skb->mark` a run uses to tell its TC program "drop this": a random tag
/// per run, so runs on other cgroups never steal each other's packets; the low byte is the rule
/// index, so the TC program counts the drop against the right rule.
pub const MARK_RULE_BITS: u32 = 0xff;

#[inline(always)]
pub const fn steal_mark(run_tag: u32, rule: u32) -> u32 {
    (run_tag & !MARK_RULE_BITS) | (rule & MARK_RULE_BITS)
}

/// If `mark` carries `run_tag`, the rule index it names.
#[inline(always)]
pub const fn marked_rule(run_tag: u32, mark: u32) -> Option<u32> {
    if run_tag & !MARK_RULE_BITS != 0 && mark & !MARK_RULE_BITS == run_tag & !MARK_RULE_BITS {
        Some(mark & MARK_RULE_BITS)
    } else {
        None
    }
}

/// IPv4-mapped representation of an IPv4 address given as its four bytes.
#[inline(always)]
pub const fn v4_mapped(addr: [u8; 4]) -> (u64, u64) {
    (0, 0x0000_ffff_0000_0000 | u32::from_be_bytes(addr) as u64)
}

/// Representation of an IPv6 address given as its sixteen bytes.
#[inline(always)]
pub const fn v6_halves(addr: [u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        hi[i] = addr[i];
        lo[i] = addr[i + 8];
        i += 1;
    }
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Masks selecting the first `prefix` bits of a 128-bit address.
pub const fn prefix_masks(prefix: u8) -> (u64, u64) {
    let p = if prefix > 128 { 128 } else { prefix as u32 };
    let hi = if p >= 64 { u64::MAX } else if p == 0 { 0 } else { u64::MAX << (64 - p) };
    let lo = if p <= 64 { 0 } else if p == 128 { u64::MAX } else { u64::MAX << (128 - p) };
    (hi, lo)
}

impl NetRule {
    /// Whether `pkt`, travelling in direction `dir` (a `DIR_*` bit), passes every filter.
    /// Time and probability are not part of matching; see [`NetRule::live`] and [`crate::roll`].
    #[inline(always)]
    pub fn matches(&self, dir: u8, pkt: &Packet) -> bool {
        if self.fault == NetFault::None as u8 || self.directions & dir == 0 {
            return false;
        }
        if self.proto != PROTO_ANY {
            let icmp = self.proto == PROTO_ICMP && pkt.proto == PROTO_ICMPV6;
            if self.proto != pkt.proto && !icmp {
                return false;
            }
        }
        if self.remote_port != 0 && self.remote_port != pkt.remote_port {
            return false;
        }
        if self.local_port != 0 && self.local_port != pkt.local_port {
            return false;
        }
        pkt.remote_hi & self.peer_mask_hi == self.peer_hi
            && pkt.remote_lo & self.peer_mask_lo == self.peer_lo
    }

    /// Whether the rule still injects at monotonic time `now_ns`.
    #[inline(always)]
    pub const fn live(&self, now_ns: u64) -> bool {
        now_ns < self.deadline_ns
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding fields and no
    // implicit padding (sizes asserted above): every bit pattern is a valid value.
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::NetCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_rule() -> NetRule {
        NetRule {
            fault: NetFault::Drop as u8,
            directions: DIR_EGRESS,
            deadline_ns: 100,
            ..Default::default()
        }
    }

    fn udp_to(addr: [u8; 4], port: u16) -> Packet {
        let (remote_hi, remote_lo) = v4_mapped(addr);
        Packet { proto: PROTO_UDP, remote_hi, remote_lo, remote_port: port, local_port: 40000 }
    }

    #[test]
    fn empty_slot_and_wrong_direction_never_match() {
        let pkt = udp_to([127, 0, 0, 1], 53);
        assert!(!NetRule::default().matches(DIR_EGRESS, &pkt));
        assert!(drop_rule().matches(DIR_EGRESS, &pkt));
        assert!(!drop_rule().matches(DIR_INGRESS, &pkt));
    }

    #[test]
    fn protocol_filter_and_icmp_covers_icmpv6() {
        let mut r = drop_rule();
        r.proto = PROTO_TCP;
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 53)));
        r.proto = PROTO_ICMP;
        let mut p = udp_to([127, 0, 0, 1], 0);
        p.proto = PROTO_ICMPV6;
        assert!(r.matches(DIR_EGRESS, &p));
    }

    #[test]
    fn ports_must_match_when_set() {
        let mut r = drop_rule();
        r.remote_port = 53;
        assert!(r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 53)));
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 54)));
        r.local_port = 40001;
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 53)));
    }

    #[test]
    fn v4_cidr_matches_inside_only_and_never_v6() {
        let mut r = drop_rule();
        let (hi, lo) = v4_mapped([127, 1, 0, 0]);
        let (mh, ml) = prefix_masks(96 + 16);
        (r.peer_hi, r.peer_lo, r.peer_mask_hi, r.peer_mask_lo) = (hi, lo, mh, ml);
        assert!(r.matches(DIR_EGRESS, &udp_to([127, 1, 200, 3], 9)));
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 2, 0, 1], 9)));
        let (remote_hi, remote_lo) = v6_halves([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let v6 = Packet { proto: PROTO_UDP, remote_hi, remote_lo, ..Default::default() };
        assert!(!r.matches(DIR_EGRESS, &v6));
    }

    #[test]
    fn prefix_masks_cover_every_boundary() {
        assert_eq!(prefix_masks(0), (0, 0));
        assert_eq!(prefix_masks(1), (1 << 63, 0));
        assert_eq!(prefix_masks(64), (u64::MAX, 0));
        assert_eq!(prefix_masks(65), (u64::MAX, 1 << 63));
        assert_eq!(prefix_masks(128), (u64::MAX, u64::MAX));
        assert_eq!(prefix_masks(200), (u64::MAX, u64::MAX));
    }

    #[test]
    fn marks_round_trip_and_foreign_tags_are_ignored() {
        let tag = 0x5a5a_1200;
        let m = steal_mark(tag, 3);
        assert_eq!(marked_rule(tag, m), Some(3));
        assert_eq!(marked_rule(0x7777_0000, m), None, "another run's tag");
        assert_eq!(marked_rule(tag, 0), None, "an unmarked packet");
        assert_eq!(marked_rule(0, 3), None, "a zero tag is never valid");
    }

    #[test]
    fn deadline_is_exclusive() {
        let r = drop_rule();
        assert!(r.live(99));
        assert!(!r.live(100));
    }
}
