//! Packet faults: filters, the packet summary the parser makes, matching, and the IPv6
//! extension-header walk.
//!
//! Data path (docs/design.md has the picture): egress packets are decided by a TC program on
//! the devices of the target's network namespace, from the cgroup of the packet's socket;
//! ingress packets by a `cgroup_skb` program on the target cgroup, or, for the faults that change
//! a received packet (duplicate, corrupt), by a TC ingress program that finds the receiving
//! socket's cgroup by a socket lookup. Only a received packet's copy carries a mark of chaos's.

/// Program names in the kernel object (the function names).
pub const PROG_TC_EGRESS: &str = "chaos_tc_egress";
/// The same, for devices without Ethernet framing (tun, WireGuard, GRE...).
pub const PROG_TC_EGRESS_L3: &str = "chaos_tc_l3";
pub const PROG_CGROUP_INGRESS: &str = "chaos_cgroup_ingress";
/// TC ingress, for the received-packet faults that change the packet (duplicate, corrupt).
pub const PROG_TC_INGRESS: &str = "chaos_tc_ingress";
pub const PROG_TC_INGRESS_L3: &str = "chaos_tc_ingress_l3";

/// `skb->mark` of a received packet's copy (`net duplicate --direction ingress`): the copy is
/// injected at the device's ingress and meets the TC ingress program again, which passes a packet
/// with this mark (clearing it) instead of copying it again.
pub const INGRESS_COPY_MARK: u32 = 0x6368_6473; // "chds"

/// [`NetMatch::directions`] bits.
pub const DIR_EGRESS: u8 = 1;
pub const DIR_INGRESS: u8 = 2;

/// IP protocol numbers the filters understand ([`NetMatch::proto`]); 0 means any.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The filters of a packet rule. Addresses are 128-bit, split into two u64 halves holding the
/// big-endian address bytes as numbers; an IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d)
/// so one comparison serves both families. A zero mask matches any address; a port range of
/// `0..=0` any port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetMatch {
    pub peer_hi: u64,
    pub peer_lo: u64,
    pub peer_mask_hi: u64,
    pub peer_mask_lo: u64,
    /// Remote port range (destination on egress, source on ingress), host order, inclusive.
    pub remote_port_lo: u16,
    pub remote_port_hi: u16,
    /// Local port range, host order, inclusive.
    pub local_port_lo: u16,
    pub local_port_hi: u16,
    /// `DIR_*` bits.
    pub directions: u8,
    /// `PROTO_*`; `PROTO_ICMP` also matches ICMPv6.
    pub proto: u8,
    /// `TCP_*` flag bits: only TCP packets with any of them set (`--tcp-flags syn`); 0: any packet.
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<NetMatch>() == 48);

/// Where a packet stands among the fragments of its IP datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    #[default]
    No,
    /// The first fragment: it carries the transport header, and decides for the datagram.
    First,
    /// A later fragment: no transport header; it follows the first fragment's fate.
    Later,
}

/// What the kernel learned about a packet, in the same representation as [`NetMatch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// The transport protocol (after any IPv6 extension headers).
    pub proto: u8,
    pub remote_hi: u64,
    pub remote_lo: u64,
    /// Whether the ports below were read (TCP or UDP, and not a later fragment).
    pub has_ports: bool,
    pub remote_port: u16,
    pub local_port: u16,
    pub fragment: Fragment,
    /// The IP identification of a fragmented datagram (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub frag_id: u32,
    /// The TCP flags (byte 13 of the TCP header), when the transport header was read.
    pub tcp_flags: u8,
    /// Where the transport header starts, in bytes past the network header.
    pub l4_offset: u32,
}

/// TCP header flag bits ([`NetMatch::tcp_flags`]).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The parameters of a packet action ([`crate::Rule::net_action`]); which fields mean something
/// depends on the action.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetAction {
    /// `NetDelay`: the added delay.
    pub delay_ns: u64,
    /// `NetDelay`: the delay varies uniformly within ± this (netem's `delay D J`).
    pub jitter_ns: u64,
    /// `NetShape`, `NetPolice`: the rate, in bytes per second.
    pub rate_bytes: u64,
    /// `NetPolice`: how far ahead of the rate the traffic may run (the bucket's depth, as time).
    /// `NetStall`: the payload bytes after which a flow goes silent.
    pub burst_ns: u64,
    /// `NetDelay`: 1 when the jitter follows the rule's table in [`DELAY_TABLES_MAP`] (netem's
    /// `distribution`); 0: uniform.
    pub table: u32,
    /// `NetDrop`: 1 to mark an ECN-capable packet Congestion Experienced instead of dropping it
    /// (netem's `ecn`); a packet that is not ECN-capable is dropped.
    pub ecn: u32,
    /// `NetDelay` as `net.reorder` with netem's gap (> 1): packets are held until `gap - 1` have
    /// been, then the next is sent at once with probability `at_once_ppm` (parts per million).
    pub gap: u32,
    pub at_once_ppm: u32,
    /// `NetCorrupt`: 1 to flip a bit anywhere from the network header on (`--where any`, as
    /// netem does: a header's checksum catches most of those); 0: in the payload only.
    pub headers_too: u32,
    pub _pad: u32,
}

/// A flow as the stall fault tracks it, the same from both directions: the rule, the protocol,
/// the remote address and both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub remote_hi: u64,
    pub remote_lo: u64,
    pub rule: u32,
    pub remote_port: u16,
    pub local_port: u16,
    pub proto: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 32);

impl FlowKey {
    #[inline(always)]
    pub const fn of(rule: u32, pkt: &Packet) -> FlowKey {
        FlowKey {
            remote_hi: pkt.remote_hi,
            remote_lo: pkt.remote_lo,
            rule,
            remote_port: pkt.remote_port,
            local_port: pkt.local_port,
            proto: pkt.proto,
            _pad: [0; 7],
        }
    }
}

const _: () = assert!(core::mem::size_of::<NetAction>() == 56);

/// The delay one packet gets: `delay` plus a uniform draw in `-jitter..=+jitter` made from a
/// random u32, never below zero (netem's uniform jitter). Drawn in microseconds, as
/// `random * span / 2^32` taken in two halves of the span: a BPF program has no 128-bit product,
/// and one 64-bit product wraps for a jitter over 35 minutes (found by fuzzing; the command line
/// caps a delay at 60 s, so no rule reached it).
#[inline(always)]
pub const fn jittered_delay(delay_ns: u64, jitter_ns: u64, random: u32) -> u64 {
    if jitter_ns == 0 {
        return delay_ns;
    }
    let span_us = 2 * (jitter_ns / 1000) + 1;
    let r = random as u64;
    let offset_us = r * (span_us >> 32) + ((r * (span_us & 0xffff_ffff)) >> 32);
    let ns = delay_ns + offset_us * 1000;
    let jitter_rounded = (jitter_ns / 1000) * 1000;
    ns.saturating_sub(jitter_rounded)
}

/// Name of the map of delay distribution tables, by rule index (only rules that have one).
pub const DELAY_TABLES_MAP: &str = "CHAOS_DELAY_TABLES";
/// How many delay rules of a session may have a table.
pub const MAX_DELAY_TABLES: u32 = crate::MAX_RULES;
/// netem's fixed-point scale: a table value of `DIST_SCALE` is one standard deviation.
pub const DIST_SCALE: i64 = 8192;
/// The most values a table holds (iproute2's tables have exactly this many).
pub const DIST_MAX: usize = 4096;

/// A delay distribution as netem takes it (iproute2's `normal.dist` and the like): `size` values
/// of a distribution with mean 0 and standard deviation [`DIST_SCALE`], drawn from uniformly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayTable {
    pub size: u32,
    pub _pad: u32,
    pub values: [i16; DIST_MAX],
}

const _: () = assert!(core::mem::size_of::<DelayTable>() == 8 + 2 * DIST_MAX);

impl DelayTable {
    /// The value a random u32 draws (netem: `table[rnd % size]`).
    #[inline(always)]
    pub fn draw(&self, random: u32) -> i16 {
        let size = if self.size > DIST_MAX as u32 { DIST_MAX as u32 } else { self.size };
        // `checked_rem`, not `%`: a BPF program cannot have the panic path of a division by zero.
        let index = match random.checked_rem(size) {
            Some(r) => r as usize,
            None => 0,
        };
        // `black_box` keeps the mask, which the compiler knows to be redundant and the verifier
        // needs (it does not follow that a remainder is below the divisor).
        self.values[core::hint::black_box(index) & (DIST_MAX - 1)]
    }
}

/// netem's `tabledist`: `delay` plus `jitter` times a table value over [`DIST_SCALE`], rounded as
/// netem rounds it; never below zero (netem sends a packet with a negative delay at once).
#[inline(always)]
pub const fn table_delay(delay_ns: u64, jitter_ns: u64, value: i16) -> u64 {
    let (sigma, t) = (jitter_ns as i64, value as i64);
    let mut x = (sigma % DIST_SCALE) * t;
    if x >= 0 {
        x += DIST_SCALE / 2;
    } else {
        x -= DIST_SCALE / 2;
    }
    let d = x / DIST_SCALE + (sigma / DIST_SCALE) * t + delay_ns as i64;
    if d < 0 { 0 } else { d as u64 }
}

/// The departure time a delayed packet gets: `delay` after the later of now and the time it was
/// already due to leave (TCP stamps its own departure times for pacing). A stamp more than a
/// minute ahead is not a departure time (a receive timestamp on another clock) and is ignored.
#[inline(always)]
pub const fn departure(now_ns: u64, stamped_ns: u64, delay_ns: u64) -> u64 {
    let base = if stamped_ns > now_ns && stamped_ns - now_ns < 60_000_000_000 { stamped_ns } else { now_ns };
    base + delay_ns
}

/// The time `bytes` take at `rate_bytes` per second, in ns (at least 1 byte per second).
#[inline(always)]
pub const fn transmit_ns(bytes: u64, rate_bytes: u64) -> u64 {
    let rate = if rate_bytes == 0 { 1 } else { rate_bytes };
    // Below 2^64 for any packet (64 KB) at any rate: 65536 * 1e9 < 2^47.
    bytes * 1_000_000_000 / rate
}

/// A rate fault's step for one packet of `cost_ns` (its transmit time at the rate), given the
/// rule's next free departure time `next` (0 at first) and now: `(departure, new next)` when the
/// packet conforms, `None` when it runs more than `burst_ns` ahead of the rate (a policer drops it,
/// and `next` stays). Shaping passes `u64::MAX` as the burst: every packet conforms and leaves at
/// `departure`. This is the virtual-scheduling form of a token bucket (GCRA): one number of state,
/// so one compare-and-swap moves it.
#[inline(always)]
pub const fn pace(next: u64, now: u64, cost_ns: u64, burst_ns: u64) -> Option<(u64, u64)> {
    let departure = if next > now { next } else { now };
    if departure - now > burst_ns {
        return None;
    }
    Some((departure, departure + cost_ns))
}

/// Which bit of a packet of `len` bytes to flip, payload starting at byte `payload`, from a random
/// u32: (byte offset, bit mask); `None` for a packet without payload.
#[inline(always)]
pub const fn corrupt_bit(payload: u32, len: u32, random: u32) -> Option<(u32, u8)> {
    if payload >= len {
        return None;
    }
    let span = (len - payload) as u64;
    let byte = payload + (((random as u64 >> 3) * span) >> 29) as u32;
    Some((byte, 1u8 << (random & 7)))
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
    let hi = if p >= 64 {
        u64::MAX
    } else if p == 0 {
        0
    } else {
        u64::MAX << (64 - p)
    };
    let lo = if p <= 64 {
        0
    } else if p == 128 {
        u64::MAX
    } else {
        u64::MAX << (128 - p)
    };
    (hi, lo)
}

#[inline(always)]
const fn in_range(port: u16, lo: u16, hi: u16) -> bool {
    lo <= port && port <= hi
}

impl NetMatch {
    /// Whether matching needs the transport header (a port or TCP flags filter).
    pub const fn needs_ports(&self) -> bool {
        self.remote_port_hi != 0 || self.local_port_hi != 0 || self.tcp_flags != 0
    }

    /// Whether `pkt`, travelling in direction `dir` (a `DIR_*` bit), passes every filter.
    /// Time, probability and the cap are not part of matching (see `Rule::live`).
    #[inline(always)]
    pub fn matches(&self, dir: u8, pkt: &Packet) -> bool {
        if self.directions & dir == 0 {
            return false;
        }
        if self.proto != PROTO_ANY {
            let icmp = self.proto == PROTO_ICMP && pkt.proto == PROTO_ICMPV6;
            if self.proto != pkt.proto && !icmp {
                return false;
            }
        }
        if self.tcp_flags != 0 && (pkt.proto != PROTO_TCP || !pkt.has_ports || pkt.tcp_flags & self.tcp_flags == 0) {
            return false;
        }
        let port_filter = self.remote_port_hi != 0 || self.local_port_hi != 0;
        if port_filter {
            if !pkt.has_ports {
                return false;
            }
            if self.remote_port_hi != 0 && !in_range(pkt.remote_port, self.remote_port_lo, self.remote_port_hi) {
                return false;
            }
            if self.local_port_hi != 0 && !in_range(pkt.local_port, self.local_port_lo, self.local_port_hi) {
                return false;
            }
        }
        pkt.remote_hi & self.peer_mask_hi == self.peer_hi && pkt.remote_lo & self.peer_mask_lo == self.peer_lo
    }
}

/// IPv6 extension headers the parser walks (RFC 8200 §4 and the IANA list).
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_MOBILITY: u8 = 135;
/// How many extension headers the parser walks before giving up (real packets carry one or two).
pub const IPV6_MAX_EXT_HEADERS: u32 = 6;

/// One IPv6 extension header, from its first 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Ext {
    /// The header after this one.
    pub next: u8,
    /// This header's length in bytes.
    pub len: u16,
    /// For a fragment header: the fragment offset (in 8-byte units) and the identification.
    pub frag_offset: u16,
    pub frag_id: u32,
}

/// Whether `kind` is an extension header the parser walks.
#[inline(always)]
pub const fn is_ipv6_ext(kind: u8) -> bool {
    matches!(kind, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AH | IPV6_DSTOPTS | IPV6_MOBILITY)
}

/// If `kind` is an extension header the parser walks, what its first 8 bytes say; `None` for a
/// transport header or one that cannot be walked (ESP, No Next Header).
#[inline(always)]
pub const fn ipv6_ext(kind: u8, h: [u8; 8]) -> Option<Ipv6Ext> {
    let len = match kind {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_MOBILITY => (h[1] as u16 + 1) * 8,
        IPV6_FRAGMENT => 8,
        IPV6_AH => (h[1] as u16 + 2) * 4,
        _ => return None,
    };
    let (frag_offset, frag_id) = if kind == IPV6_FRAGMENT {
        (u16::from_be_bytes([h[2], h[3]]) >> 3, u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
    } else {
        (0, 0)
    };
    Some(Ipv6Ext { next: h[0], len, frag_offset, frag_id })
}

/// The fragment position of an IPv4 packet from its flags-and-offset field.
#[inline(always)]
pub const fn ipv4_fragment(flags_offset: u16) -> Fragment {
    let more = flags_offset & 0x2000 != 0;
    let offset = flags_offset & 0x1fff;
    if offset != 0 {
        Fragment::Later
    } else if more {
        Fragment::First
    } else {
        Fragment::No
    }
}

/// The datagram whose first fragment a CPU decided last (per CPU in the kernel: the fragments of
/// one datagram are sent back to back by one `ip_do_fragment` call on one CPU). A later fragment
/// of the same datagram gets the same verdict, so a datagram is one decision however many
/// fragments it becomes, and `dropped` never exceeds `selected`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastDatagram {
    pub remote_hi: u64,
    pub remote_lo: u64,
    pub frag_id: u32,
    /// 1 + the index of the rule that dropped it; 0: not dropped.
    pub dropped_by: u32,
}

const _: () = assert!(core::mem::size_of::<LastDatagram>() == 24);

impl LastDatagram {
    /// The rule that dropped the datagram `pkt` (a later fragment) belongs to, if it was dropped.
    #[inline(always)]
    pub const fn verdict_for(&self, pkt: &Packet) -> Option<u32> {
        if self.dropped_by != 0 && self.frag_id == pkt.frag_id && self.remote_hi == pkt.remote_hi && self.remote_lo == pkt.remote_lo {
            Some(self.dropped_by - 1)
        } else {
            None
        }
    }
}

/// Per-CPU [`LastDatagram`] (one slot).
pub const LAST_DATAGRAM_MAP: &str = "CHAOS_DGRAM";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers with explicit padding, sizes asserted: any bit pattern is valid.
    unsafe impl aya::Pod for super::NetMatch {}
    unsafe impl aya::Pod for super::LastDatagram {}
    unsafe impl aya::Pod for super::NetAction {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::DelayTable {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress() -> NetMatch {
        NetMatch { directions: DIR_EGRESS, ..Default::default() }
    }

    fn udp_to(addr: [u8; 4], port: u16) -> Packet {
        let (remote_hi, remote_lo) = v4_mapped(addr);
        Packet { proto: PROTO_UDP, remote_hi, remote_lo, has_ports: true, remote_port: port, local_port: 40000, ..Default::default() }
    }

    #[test]
    fn wrong_direction_never_matches() {
        let pkt = udp_to([127, 0, 0, 1], 53);
        assert!(egress().matches(DIR_EGRESS, &pkt));
        assert!(!egress().matches(DIR_INGRESS, &pkt));
        assert!(!NetMatch::default().matches(DIR_EGRESS, &pkt), "no direction: nothing");
    }

    #[test]
    fn protocol_filter_and_icmp_covers_icmpv6() {
        let mut r = egress();
        r.proto = PROTO_TCP;
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 53)));
        r.proto = PROTO_ICMP;
        let mut p = udp_to([127, 0, 0, 1], 0);
        p.proto = PROTO_ICMPV6;
        assert!(r.matches(DIR_EGRESS, &p));
    }

    #[test]
    fn port_ranges_must_match_when_set() {
        let mut r = egress();
        (r.remote_port_lo, r.remote_port_hi) = (53, 53);
        assert!(r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 53)));
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 54)));
        (r.remote_port_lo, r.remote_port_hi) = (8000, 8100);
        assert!(r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 8000)));
        assert!(r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 8100)));
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 8101)));
        (r.local_port_lo, r.local_port_hi) = (40001, 40001);
        assert!(!r.matches(DIR_EGRESS, &udp_to([127, 0, 0, 1], 8050)));
    }

    #[test]
    fn a_port_filter_never_matches_a_packet_without_ports() {
        let mut r = egress();
        (r.remote_port_lo, r.remote_port_hi) = (53, 53);
        let mut later = udp_to([127, 0, 0, 1], 0);
        later.has_ports = false;
        later.fragment = Fragment::Later;
        assert!(!r.matches(DIR_EGRESS, &later));
        assert!(egress().matches(DIR_EGRESS, &later), "without a port filter it matches on the rest");
    }

    #[test]
    fn v4_cidr_matches_inside_only_and_never_v6() {
        let mut r = egress();
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
    fn ipv6_extension_headers_have_their_rfc_lengths() {
        // Hop-by-hop and destination options: (hdr ext len + 1) * 8 bytes.
        assert_eq!(ipv6_ext(IPV6_HOPOPTS, [PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]).map(|e| (e.next, e.len)), Some((PROTO_UDP, 8)));
        assert_eq!(ipv6_ext(IPV6_DSTOPTS, [PROTO_TCP, 2, 0, 0, 0, 0, 0, 0]).map(|e| (e.next, e.len)), Some((PROTO_TCP, 24)));
        assert_eq!(ipv6_ext(IPV6_ROUTING, [IPV6_DSTOPTS, 4, 0, 0, 0, 0, 0, 0]).map(|e| e.len), Some(40));
        // AH: (payload len + 2) * 4 bytes.
        assert_eq!(ipv6_ext(IPV6_AH, [PROTO_UDP, 4, 0, 0, 0, 0, 0, 0]).map(|e| e.len), Some(24));
        // Fragment: 8 bytes, offset in 8-byte units in the top 13 bits, 32-bit identification.
        let f = ipv6_ext(IPV6_FRAGMENT, [PROTO_UDP, 0, 0x05, 0xa9, 0xde, 0xad, 0xbe, 0xef]).expect("fragment");
        assert_eq!((f.next, f.len, f.frag_offset, f.frag_id), (PROTO_UDP, 8, 181, 0xdead_beef));
        // Transport headers and ESP end the walk.
        assert_eq!(ipv6_ext(PROTO_UDP, [0; 8]), None);
        assert_eq!(ipv6_ext(50, [0; 8]), None);
        assert!(is_ipv6_ext(IPV6_DSTOPTS) && !is_ipv6_ext(PROTO_TCP) && !is_ipv6_ext(50));
    }

    #[test]
    fn tcp_flag_filters_match_only_tcp_packets_with_those_flags() {
        let r = NetMatch { tcp_flags: TCP_SYN, ..egress() };
        let syn = Packet { proto: PROTO_TCP, has_ports: true, tcp_flags: TCP_SYN, ..Default::default() };
        assert!(r.needs_ports());
        assert!(r.matches(DIR_EGRESS, &syn));
        assert!(r.matches(DIR_EGRESS, &Packet { tcp_flags: TCP_SYN | TCP_ACK, ..syn }), "a SYN-ACK has SYN");
        assert!(!r.matches(DIR_EGRESS, &Packet { tcp_flags: TCP_ACK, ..syn }), "established traffic passes");
        assert!(!r.matches(DIR_EGRESS, &Packet { proto: PROTO_UDP, ..syn }));
        assert!(!r.matches(DIR_EGRESS, &Packet { has_ports: false, ..syn }), "flags never read: no match");
    }

    #[test]
    fn jitter_is_uniform_around_the_delay_and_never_negative() {
        assert_eq!(jittered_delay(5_000_000, 0, 12345), 5_000_000);
        // The extremes of the draw reach delay - jitter and delay + jitter (to the microsecond).
        assert_eq!(jittered_delay(10_000_000, 2_000_000, 0), 8_000_000);
        assert_eq!(jittered_delay(10_000_000, 2_000_000, u32::MAX), 12_000_000);
        // The middle of the draw is the delay.
        assert_eq!(jittered_delay(10_000_000, 2_000_000, 1 << 31), 10_000_000);
        // A jitter larger than the delay is clamped at zero, not wrapped.
        assert_eq!(jittered_delay(1_000_000, 5_000_000, 0), 0);
        // Mean over an even sweep of the u32 range: the delay.
        let n = 100_000u64;
        let sum: u64 = (0..n).map(|i| jittered_delay(50_000_000, 10_000_000, ((i * u32::MAX as u64) / n) as u32)).sum();
        let mean = sum / n;
        assert!(mean.abs_diff(50_000_000) < 1_000, "{mean}");
        // Seconds of jitter do not overflow.
        assert_eq!(jittered_delay(10_000_000_000, 10_000_000_000, u32::MAX), 20_000_000_000);
    }

    #[test]
    fn table_delays_follow_netems_tabledist() {
        // A table value of one scale is one jitter: 10 ms + 2 ms.
        assert_eq!(table_delay(10_000_000, 2_000_000, DIST_SCALE as i16), 12_000_000);
        assert_eq!(table_delay(10_000_000, 2_000_000, -(DIST_SCALE as i16)), 8_000_000);
        assert_eq!(table_delay(10_000_000, 2_000_000, 0), 10_000_000);
        // Four deviations below a delay of one: not below zero.
        assert_eq!(table_delay(1_000_000, 1_000_000, i16::MIN), 0);
        // netem rounds the part of sigma below the scale to the nearest, away from zero at .5:
        // sigma 4097 ns, t = 1: (4097 * 1 + 4096) / 8192 = 1 ns.
        assert_eq!(table_delay(100, 4097, 1), 101);
        assert_eq!(table_delay(100, 4095, 1), 100);
        assert_eq!(table_delay(100, 4097, -1), 99);
        let mut t = DelayTable { size: 3, _pad: 0, values: [0; DIST_MAX] };
        t.values[..3].copy_from_slice(&[-5, 0, 7]);
        assert_eq!((t.draw(0), t.draw(1), t.draw(2), t.draw(3), t.draw(u32::MAX)), (-5, 0, 7, -5, -5));
    }

    #[test]
    fn departures_follow_the_later_of_now_and_the_stamp() {
        assert_eq!(departure(1_000, 0, 50), 1_050, "unstamped");
        assert_eq!(departure(1_000, 2_000, 50), 2_050, "a paced packet keeps its place");
        assert_eq!(departure(1_000, 500, 50), 1_050, "a stamp in the past");
        assert_eq!(departure(1_000, 1_000 + 3_600_000_000_000, 50), 1_050, "another clock's stamp");
    }

    #[test]
    fn pacing_spaces_packets_at_the_rate_and_polices_past_the_burst() {
        // 1000 bytes at 1 MB/s: 1 ms each.
        let cost = transmit_ns(1000, 1_000_000);
        assert_eq!(cost, 1_000_000);
        // Shaping: ten packets sent at once leave 1 ms apart.
        let (mut next, mut departures) = (0, [0u64; 10]);
        for d in departures.iter_mut() {
            let (dep, n) = pace(next, 5_000_000, cost, u64::MAX).expect("shaping never drops");
            (*d, next) = (dep, n);
        }
        assert_eq!(departures[0], 5_000_000, "the first leaves now");
        assert!(departures.windows(2).all(|w| w[1] - w[0] == cost));
        // Policing with a 3 ms burst: of ten sent at once, four conform (0, 1, 2, 3 ms ahead).
        let (mut next, mut passed) = (0, 0);
        for _ in 0..10 {
            if let Some((_, n)) = pace(next, 5_000_000, cost, 3_000_000) {
                next = n;
                passed += 1;
            }
        }
        assert_eq!(passed, 4);
        // Long after, the bucket is full again, and idle time is not saved up beyond it.
        assert_eq!(pace(next, 1_000_000_000, cost, 3_000_000), Some((1_000_000_000, 1_001_000_000)));
        // A steady stream at twice the rate: half conform over a long run.
        let (mut next, mut passed) = (0, 0u64);
        for i in 0..10_000u64 {
            if let Some((_, n)) = pace(next, i * cost / 2, cost, 3_000_000) {
                next = n;
                passed += 1;
            }
        }
        assert!((5_000..=5_004).contains(&passed), "{passed}");
    }

    #[test]
    fn corrupted_bits_are_in_the_payload_and_cover_it() {
        assert_eq!(corrupt_bit(60, 60, 7), None, "no payload");
        assert_eq!(corrupt_bit(42, 43, 0), Some((42, 1)));
        assert_eq!(corrupt_bit(42, 43, u32::MAX), Some((42, 0x80)));
        let mut hit = [false; 100];
        for i in 0..100_000u64 {
            let (byte, bit) = corrupt_bit(28, 128, ((i * u32::MAX as u64) / 100_000) as u32).expect("payload");
            assert!((28..128).contains(&byte) && bit.count_ones() == 1);
            hit[(byte - 28) as usize] = true;
        }
        assert!(hit.iter().all(|&h| h), "every payload byte can be hit");
    }

    #[test]
    fn ipv4_fragments_by_flags_and_offset() {
        assert_eq!(ipv4_fragment(0x4000), Fragment::No, "DF set, no fragment");
        assert_eq!(ipv4_fragment(0x2000), Fragment::First, "MF, offset 0");
        assert_eq!(ipv4_fragment(0x2000 | 185), Fragment::Later);
        assert_eq!(ipv4_fragment(370), Fragment::Later, "the last fragment: no MF, offset set");
    }

    #[test]
    fn later_fragments_follow_the_datagram_that_was_dropped() {
        let mut first = udp_to([10, 0, 0, 2], 53);
        first.fragment = Fragment::First;
        first.frag_id = 77;
        let slot = LastDatagram { remote_hi: first.remote_hi, remote_lo: first.remote_lo, frag_id: 77, dropped_by: 4 };
        let later = Packet { fragment: Fragment::Later, has_ports: false, ..first };
        assert_eq!(slot.verdict_for(&later), Some(3));
        assert_eq!(slot.verdict_for(&Packet { frag_id: 78, ..later }), None, "another datagram");
        assert_eq!(LastDatagram { dropped_by: 0, ..slot }.verdict_for(&later), None, "kept, not dropped");
    }
}
