//! Egress packet faults, decided and done at TC egress on the devices of the target's network
//! namespace. The packet's socket says which cgroup sent it (`bpf_skb_cgroup_id`), so a packet
//! of any other process passes after one lookup, and nothing is handed over in `skb->mark`.
//!
//! Drop as a lossy wire: the stack must believe the packet left, so TCP recovers by
//! retransmission and UDP senders see no error. `TC_ACT_SHOT` is reported to the sender as a local
//! drop (TCP then never retransmits), and tcx (6.6+) maps every verdict other than
//! pass/drop/redirect to "next", so `TC_ACT_STOLEN` would let the packet through there. An egress
//! redirect is always reported as sent, and `skb_do_redirect` frees the packet when the target
//! ifindex names no device; ifindex 0 never does. So a redirect to 0 is wire loss under both
//! attach modes.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, __sk_buff},
    helpers::{
        bpf_redirect,
        generated::{bpf_clone_redirect, bpf_l3_csum_replace, bpf_probe_read_kernel, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_skb_set_tstamp, bpf_skb_store_bytes},
    },
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use chaos_common::{
    Action, Family, KernelError, Rule, feature, has_rule,
    net::{DIR_EGRESS, DelayTable, Fragment, LastDatagram, MAX_DELAY_TABLES, Packet, corrupt_bit, departure, jittered_delay, table_delay},
};

use super::{
    dns,
    parse::{self, NetworkHeader},
};
use crate::{
    engine::{Segs, checksum_offloaded, count_error, draw, flow_stalled, fragment_followed, injected, marked, now, paced, rules_for, sent_at_once},
    globals::{log_packets, skb_ip_summed_bit, uses},
};

/// "No opinion": the next program or filter decides (tcx `TCX_NEXT`, cls_bpf `TC_ACT_UNSPEC`).
pub(super) const NEXT: i32 = -1;

/// An ifindex no device ever has.
const NOWHERE: u32 = 0;

/// `bpf_skb_set_tstamp`'s type of a monotonic delivery time (uapi `BPF_SKB_TSTAMP_DELIVERY_MONO`,
/// `BPF_SKB_CLOCK_MONOTONIC` since 6.11; aya's bindings name it by an anonymous enum).
const TSTAMP_DELIVERY_MONO: u32 = 1;

/// Name must equal chaos_common::net::DELAY_TABLES_MAP: the distribution of a delay rule's
/// jitter, by rule index, for the rules that have one (allocated as they are written).
#[map]
static CHAOS_DELAY_TABLES: HashMap<u32, DelayTable> = HashMap::with_max_entries(MAX_DELAY_TABLES, BPF_F_NO_PREALLOC);

/// Name must equal chaos_common::net::LAST_DATAGRAM_MAP.
#[map]
static CHAOS_DGRAM: PerCpuArray<LastDatagram> = PerCpuArray::with_max_entries(1, 0);

/// For devices with Ethernet framing (Ethernet, veth, loopback): the network header is 14
/// bytes past the start of the packet.
#[classifier]
pub fn chaos_tc_egress(ctx: TcContext) -> i32 {
    egress(&ctx, NetworkHeader::At(ETH_HLEN))
}

/// For every other device (tun, WireGuard, GRE...): headers read relative to the network header.
#[classifier]
pub fn chaos_tc_l3(ctx: TcContext) -> i32 {
    egress(&ctx, NetworkHeader::Unknown)
}

pub(super) const ETH_HLEN: u32 = 14;

#[inline(always)]
fn egress(ctx: &TcContext, nh: NetworkHeader) -> i32 {
    match try_egress(ctx, nh) {
        Ok(verdict) => verdict,
        Err(e) => {
            count_error(e);
            NEXT
        }
    }
}

#[inline(always)]
fn wire_loss() -> i32 {
    // SAFETY: bpf_redirect only records the target for after the program returns.
    unsafe { bpf_redirect(NOWHERE, 0) as i32 }
}

#[inline(always)]
fn try_egress(ctx: &TcContext, nh: NetworkHeader) -> Result<i32, KernelError> {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed in. 0: no socket, or one that is not a full socket
    // (a TIME_WAIT reply): no cgroup, so no target.
    let leaf = unsafe { bpf_skb_cgroup_id(skb) };
    if leaf == 0 {
        return Ok(NEXT);
    }
    // SAFETY: as above.
    let (mask, port_rules, dns_rules) = rules_for(Family::Egress, leaf, |level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) });
    if mask == 0 {
        return Ok(NEXT);
    }
    let Some(pkt) = parse::packet(skb, nh, DIR_EGRESS, port_rules != 0)? else { return Ok(NEXT) };
    if pkt.fragment == Fragment::Later {
        let slot = CHAOS_DGRAM.get_ptr_mut(0).ok_or(KernelError::RuleLookup)?;
        // SAFETY: a per-CPU map value, valid for this run.
        if let Some(i) = unsafe { (*slot).verdict_for(&pkt) }
            && has_rule(mask, i)
        {
            fragment_followed(i);
            return Ok(wire_loss());
        }
        return Ok(NEXT);
    }
    // SAFETY: as above.
    let segs = Segs::Of(skb.cast());
    let len = ctx.len() as u64;
    // A target's DNS rules first: the query is read once for all of them.
    if dns_rules != 0
        && uses(feature::action(Action::NetDns))
        && let NetworkHeader::At(l2) = nh
    {
        let verdict = dns_first(skb, l2, &pkt, dns_rules, segs);
        if verdict != NOT_TAKEN {
            return Ok(verdict);
        }
    }
    match super::selected(mask & !dns_rules, DIR_EGRESS, &pkt, segs)? {
        Some((i, Action::NetDrop, r)) => {
            if r.net_action.ecn != 0
                && uses(feature::ECN)
                && let NetworkHeader::At(l2) = nh
                && mark_ce(skb, l2)?
            {
                marked(i);
                remember(&pkt, 0);
                return Ok(NEXT);
            }
            injected(i, segs, len);
            remember(&pkt, i + 1);
            if log_packets() {
                debug!(ctx, "chaos: drop rule={} dir=egress proto={} len={}", i, pkt.proto, len);
            }
            Ok(wire_loss())
        }
        Some((i, Action::NetDelay, r)) => {
            let p = &r.net_action;
            if p.gap > 1 && sent_at_once(i, r) {
                remember(&pkt, 0);
                return Ok(NEXT);
            }
            // SAFETY: as above; reads of the context's fields.
            let (departs, ifindex) = unsafe {
                let random = draw(i, r);
                let delay = match (p.table, CHAOS_DELAY_TABLES.get(&i)) {
                    (0, _) | (_, None) => jittered_delay(p.delay_ns, p.jitter_ns, random),
                    (_, Some(t)) => table_delay(p.delay_ns, p.jitter_ns, t.draw(random)),
                };
                (departure(now(), (*skb).tstamp, delay), (*skb).ifindex)
            };
            injected(i, segs, len);
            remember(&pkt, 0);
            Ok(delay_orphaned(skb, departs, ifindex))
        }
        Some((i, Action::NetShape, r)) => {
            let p = &r.net_action;
            if let Some(departure) = paced(i, len, p.rate_bytes, u64::MAX) {
                // SAFETY: as for a delay.
                unsafe {
                    if departure > (*skb).tstamp {
                        (*skb).tstamp = departure;
                    }
                }
            }
            injected(i, segs, len);
            remember(&pkt, 0);
            Ok(NEXT)
        }
        Some((i, Action::NetPolice, r)) => {
            let p = &r.net_action;
            if paced(i, len, p.rate_bytes, p.burst_ns).is_some() {
                remember(&pkt, 0);
                return Ok(NEXT);
            }
            injected(i, segs, len);
            remember(&pkt, i + 1);
            Ok(wire_loss())
        }
        Some((i, Action::NetStall, r)) => {
            let net = match nh {
                NetworkHeader::At(l2) => l2,
                NetworkHeader::Unknown => 0,
            };
            let payload = (len as u32).saturating_sub(net + parse::payload_offset(skb, &pkt)?) as u64;
            if flow_stalled(i, &pkt, payload, r.net_action.burst_ns) {
                injected(i, segs, len);
                remember(&pkt, i + 1);
                return Ok(wire_loss());
            }
            remember(&pkt, 0);
            Ok(NEXT)
        }
        Some((i, Action::NetDuplicate, _)) => {
            // The copy goes out of the same device through the same egress path, so it meets this
            // program again; a clone carries no socket (`skb_clone` leaves `sk` empty), so it has
            // no cgroup and passes at the first check: a copy is never copied again.
            // SAFETY: the context the kernel passed in; the helper clones it.
            if unsafe { bpf_clone_redirect(skb, (*skb).ifindex, 0) } == 0 {
                injected(i, segs, len);
            } else {
                count_error(KernelError::PacketWrite);
            }
            remember(&pkt, 0);
            Ok(NEXT)
        }
        Some((i, Action::NetCorrupt, r)) => {
            corrupt(skb, nh, &pkt, i, r, len, false)?;
            remember(&pkt, 0);
            Ok(NEXT)
        }
        // DNS rules were walked above; answers are made on devices with Ethernet framing only
        // (the answer's link-layer addresses are the query's, swapped).
        Some((_, Action::NetDns | Action::SysFail | Action::SysSignal | Action::SysDelay | Action::ProcPause | Action::ProcKill | Action::None, _)) | None => {
            remember(&pkt, 0);
            Ok(NEXT)
        }
    }
}

/// Flips one random bit of the payload of `pkt` (`len` bytes long, headers `nh`) for rule `i`,
/// where it has one (or of the packet from its network header on), and counts apart a packet
/// whose checksum will not catch the change. Shared by both directions (`received`: at ingress).
#[inline(always)]
pub(super) fn corrupt(skb: *mut __sk_buff, nh: NetworkHeader, pkt: &Packet, i: u32, r: &Rule, len: u64, received: bool) -> Result<(), KernelError> {
    let net = match nh {
        NetworkHeader::At(l2) => l2,
        // Devices without a link-layer header: the packet starts at the network header.
        NetworkHeader::Unknown => 0,
    };
    // `--where any`: from the network header on, as netem (which flips a bit anywhere).
    let first = if r.net_action.headers_too != 0 { 0 } else { parse::payload_offset(skb, pkt)? };
    if let Some((offset, bit)) = corrupt_bit(first, (len as u32).saturating_sub(net), draw(i, r)) {
        let flipped = parse::byte_at(skb, offset)? ^ bit;
        let summed = ip_summed(skb);
        // SAFETY: the context the kernel passed in; the helper copies one byte from the stack into
        // the packet (making that part of it writable first). No checksum update: see
        // docs/design.md, "Corruption and checksums".
        let r = unsafe { bpf_skb_store_bytes(skb.cast(), net + offset, (&raw const flipped).cast(), 1, 0) };
        if r == 0 {
            injected(i, Segs::One, len);
            // Sent: the device (or the stack's fallback) computes the checksum over the changed
            // payload. Received: the stack takes the checksum as checked and looks no further.
            if summed == Some(CHECKSUM_PARTIAL) || (received && summed == Some(CHECKSUM_UNNECESSARY)) {
                checksum_offloaded(i);
            }
        } else {
            count_error(KernelError::PacketWrite);
        }
    }
    Ok(())
}

/// `skb->ip_summed` values (include/linux/skbuff.h).
const CHECKSUM_UNNECESSARY: u8 = 1;
const CHECKSUM_PARTIAL: u8 = 3;

/// The packet's `ip_summed` (whether its checksum is computed, left to the device, or checked),
/// read from the kernel's `sk_buff` at the bit the loader found in the BTF; None where unknown.
#[inline(always)]
fn ip_summed(skb: *mut __sk_buff) -> Option<u8> {
    let bit = skb_ip_summed_bit()?;
    let mut byte = 0u8;
    // SAFETY: a TC program's context is the kernel's `sk_buff` itself (`__sk_buff` is the view
    // whose field accesses the verifier rewrites), and the offset lies inside it (from the BTF);
    // the helper copies that one byte to the stack, failing rather than faulting.
    let r = unsafe { bpf_probe_read_kernel((&raw mut byte).cast(), 1, skb.cast::<u8>().wrapping_add((bit / 8) as usize).cast()) };
    (r == 0).then_some((byte >> (bit % 8)) & 3)
}

/// Sends the packet at `departs` (CLOCK_MONOTONIC ns), which sch_fq holds it until, charged to
/// no socket, as netem's delay does (it orphans the packets it holds): a packet held for its
/// socket counts against the sender's buffer and TCP Small Queues' budget until it leaves, which
/// throttled a bulk TCP flow under 100 ms to a hundredth of netem's throughput. The copy that waits
/// is a clone (`skb_clone` leaves its socket empty; it passes this program at the first check, as
/// a duplicate does) stamped as a delivery time, which a redirect keeps; the packet itself goes
/// nowhere, reported sent. Where the clone cannot be made, the packet waits as it is.
#[inline(always)]
fn delay_orphaned(skb: *mut __sk_buff, departs: u64, ifindex: u32) -> i32 {
    // SAFETY: the context the kernel passed in. The helper sets `tstamp` and marks it a
    // monotonic delivery time (Linux 5.18+), so `skb_clear_tstamp` keeps it through the redirect.
    if unsafe { bpf_skb_set_tstamp(skb, departs, TSTAMP_DELIVERY_MONO) } != 0 {
        count_error(KernelError::PacketWrite);
        // SAFETY: as above; `tstamp` is writable at TC egress, a departure time for sch_fq.
        unsafe { (*skb).tstamp = departs };
        return NEXT;
    }
    // SAFETY: as above; the helper clones the packet and queues the clone on `ifindex`.
    if unsafe { bpf_clone_redirect(skb, ifindex, 0) } != 0 {
        count_error(KernelError::PacketWrite);
        return NEXT;
    }
    wire_loss()
}

/// [`dns_first`]: no DNS rule took the packet.
const NOT_TAKEN: i32 = i32::MIN;

/// The target's DNS `rules` for `pkt` (network header `l2` bytes in, `segs` wire segments): the
/// verdict for a query one of them took, or [`NOT_TAKEN`]. Out of line, in a stack frame of its
/// own, so the main rule walk is verified from one state whether or not the target has DNS rules
/// (inlined, it left the walk to be verified twice).
#[inline(never)]
fn dns_first(skb: *mut __sk_buff, l2: u32, pkt: &Packet, rules: u64, segs: Segs) -> i32 {
    // SAFETY: the context the kernel passed in.
    let len = unsafe { (*skb).len } as u64;
    let taken = match dns::select(rules, pkt, dns::Frame { skb, l2, len: len as u32 }, segs) {
        Ok(Some(taken)) => taken,
        Ok(None) => return NOT_TAKEN,
        Err(e) => {
            count_error(e);
            return NOT_TAKEN;
        }
    };
    let (i, r) = taken;
    remember(pkt, 0);
    injected(i, segs, len);
    if r.dns.rcode == chaos_common::dns::TIMEOUT {
        return wire_loss();
    }
    if log_packets() {
        debug!(&TcContext::new(skb), "chaos: dns answer rule={} rcode={}", i, r.dns.rcode);
    }
    match dns::answer(skb, l2, pkt, r.dns.rcode) {
        Ok(verdict) => verdict,
        Err(e) => {
            // The answer is half made: lose it rather than send it on.
            count_error(e);
            wire_loss()
        }
    }
}

/// Marks the packet (network header `l2` bytes in) Congestion Experienced if it is ECN-capable
/// (RFC 3168: ECT(0), ECT(1), or already CE); whether it was. IPv4's header checksum is updated
/// for the changed byte; IPv6's header has none.
#[inline(always)]
pub(super) fn mark_ce(skb: *mut __sk_buff, l2: u32) -> Result<bool, KernelError> {
    const ECN_MASK: u8 = 0b11;
    let ipv4 = parse::is_ipv4(skb);
    let head = parse::two_bytes(skb, l2)?;
    // IPv4: the TOS byte is the second; IPv6: the traffic class spans the first two, its ECN bits
    // being bits 5-4 of the second.
    let (ecn, shift) = if ipv4 { (head[1] & ECN_MASK, 0) } else { ((head[1] >> 4) & ECN_MASK, 4) };
    if ecn == 0 {
        return Ok(false);
    }
    let new = [head[0], head[1] | (ECN_MASK << shift)];
    if new == head {
        return Ok(true);
    }
    if ipv4 {
        // SAFETY: the context the kernel passed in; the helper updates the checksum at that offset
        // for a 2-byte change (big-endian words, as in the packet).
        let r = unsafe {
            bpf_l3_csum_replace(skb, l2 + 10, u16::from_ne_bytes(head) as u64, u16::from_ne_bytes(new) as u64, 2)
        };
        if r < 0 {
            return Err(KernelError::PacketWrite);
        }
    }
    // SAFETY: as for corrupt: the helper copies two bytes from the stack into the packet.
    if unsafe { bpf_skb_store_bytes(skb.cast(), l2, new.as_ptr().cast(), 2, 0) } < 0 {
        return Err(KernelError::PacketWrite);
    }
    Ok(true)
}

/// Records the fate of a first fragment for the fragments that follow it on this CPU.
#[inline(always)]
fn remember(pkt: &Packet, dropped_by: u32) {
    if pkt.fragment == Fragment::First
        && let Some(slot) = CHAOS_DGRAM.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU map value, valid for this run; only this CPU's programs use it, and
        // a datagram's fragments are sent by one call on one CPU.
        unsafe {
            *slot = LastDatagram { remote_hi: pkt.remote_hi, remote_lo: pkt.remote_lo, frag_id: pkt.frag_id, dropped_by };
        }
    }
}
