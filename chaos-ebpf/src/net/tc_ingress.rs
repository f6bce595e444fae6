//! Received-packet faults that change the packet (duplicate, corrupt, drop --ecn's CE mark), at
//! TC ingress on the devices of the target's network namespace: `cgroup_skb/ingress` sees the
//! packet only once the stack has checked it and found its socket, too late to copy or change it.
//!
//! At TC ingress a packet has no socket yet, so the program looks up the one the stack will hand
//! it to (`bpf_sk_lookup_tcp`/`_udp` in the device's namespace, as the stack does) and takes that
//! socket's cgroup. A packet no local socket takes (ICMP, a closed port) belongs to no target.
//! No helper gives a TC program the cgroup of a socket it looked up (`bpf_sk_cgroup_id` is not
//! among TC's helpers), so the program reads it from the socket, at offsets the loader found in
//! the kernel's BTF ([`sock_cgroup_offsets`]), with `bpf_probe_read_kernel`, while it holds the
//! socket's reference.
//!
//! A duplicate is injected at the same device's ingress and meets this program again; nothing in
//! it says it is a copy but its mark, [`INGRESS_COPY_MARK`], which the program clears as it lets
//! the copy pass. Packets arrive with no mark from a veth peer in another namespace (the kernel
//! scrubs it there) and from a wire.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_F_INGRESS, bpf_sock, bpf_sock_tuple},
    helpers::generated::{bpf_clone_redirect, bpf_probe_read_kernel, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use chaos_common::{
    Action, Family, KernelError, MAX_CGROUP_DEPTH, feature,
    net::{DIR_INGRESS, INGRESS_COPY_MARK, PROTO_TCP, PROTO_UDP},
};

use super::{
    parse::{self, NetworkHeader},
    tc::{ETH_HLEN, NEXT, corrupt, mark_ce},
};
use crate::{
    engine::{Segs, count_error, injected, marked, rules_for},
    globals::{log_packets, sock_cgroup_offsets, uses},
};

/// Where a looked-up socket's address is turned into a number (see [`address_of`]).
#[map]
static CHAOS_SOCK_ADDRESS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Drop (tcx `TCX_DROP`, cls_bpf `TC_ACT_SHOT`): the packet already crossed the wire, so for its
/// sender this is wire loss.
const DROP: i32 = 2;

/// For devices with Ethernet framing: the program runs with the packet from its link-layer header.
#[classifier]
pub fn chaos_tc_ingress(ctx: TcContext) -> i32 {
    ingress(&ctx, NetworkHeader::At(ETH_HLEN))
}

/// For every other device (tun, WireGuard, GRE...).
#[classifier]
pub fn chaos_tc_ingress_l3(ctx: TcContext) -> i32 {
    ingress(&ctx, NetworkHeader::Unknown)
}

#[inline(always)]
fn ingress(ctx: &TcContext, nh: NetworkHeader) -> i32 {
    match try_ingress(ctx, nh) {
        Ok(verdict) => verdict,
        Err(e) => {
            count_error(e);
            NEXT
        }
    }
}

#[inline(always)]
fn try_ingress(ctx: &TcContext, nh: NetworkHeader) -> Result<i32, KernelError> {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed in; `mark` is readable and writable at TC.
    unsafe {
        if (*skb).mark == INGRESS_COPY_MARK {
            (*skb).mark = 0;
            return Ok(NEXT);
        }
    }
    let Some(pkt) = parse::packet(skb, nh, DIR_INGRESS, true)? else { return Ok(NEXT) };
    if !pkt.has_ports || (pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP) {
        return Ok(NEXT);
    }
    // SAFETY: an all-zero key is a valid value of this plain-data union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = parse::received_tuple(skb, nh, &pkt, &mut tuple)?;
    // SAFETY: the context the kernel passed in and a key on the stack of the size given. The
    // socket returned holds a reference, released below on every path.
    let sk = unsafe {
        if pkt.proto == PROTO_TCP {
            bpf_sk_lookup_tcp(skb.cast(), &raw mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_udp(skb.cast(), &raw mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        }
    };
    if sk.is_null() {
        return Ok(NEXT);
    }
    let mask = match (address_of(sk), sock_cgroup_offsets()) {
        (Some(sock), Some(off)) => {
            let cgroup = read_u64(sock + off[0]);
            let leaf = cgroup_id(cgroup, &off);
            if leaf == 0 { 0 } else { rules_for(Family::IngressTc, leaf, |level| ancestor_id(cgroup, level, &off)).0 }
        }
        _ => 0,
    };
    // SAFETY: the socket the lookup returned, released once, after its last use above.
    unsafe { bpf_sk_release(sk.cast()) };
    if mask == 0 {
        return Ok(NEXT);
    }
    // SAFETY: as above.
    let segs = Segs::Of(skb.cast());
    let len = ctx.len() as u64;
    match super::selected(mask, DIR_INGRESS, &pkt, segs)? {
        Some((i, Action::NetDuplicate, _)) => {
            // SAFETY: the context the kernel passed in: the copy is made with the mark that tells
            // it apart, then the packet gets its own back.
            let copied = unsafe {
                let mark = (*skb).mark;
                (*skb).mark = INGRESS_COPY_MARK;
                let r = bpf_clone_redirect(skb, (*skb).ifindex, BPF_F_INGRESS as u64);
                (*skb).mark = mark;
                r
            };
            if copied == 0 {
                injected(i, segs, len);
                if log_packets() {
                    debug!(ctx, "chaos: duplicate rule={} dir=ingress proto={} len={}", i, pkt.proto, len);
                }
            } else {
                count_error(KernelError::PacketWrite);
            }
            Ok(NEXT)
        }
        Some((i, Action::NetCorrupt, r)) => {
            corrupt(skb, nh, &pkt, i, r, len, true)?;
            Ok(NEXT)
        }
        // `drop --ecn`: other drop rules act at cgroup_skb/ingress.
        Some((i, Action::NetDrop, r)) => {
            if r.net_action.ecn != 0
                && uses(feature::ECN)
                && let NetworkHeader::At(l2) = nh
                && mark_ce(skb, l2)?
            {
                marked(i);
                return Ok(NEXT);
            }
            injected(i, segs, len);
            Ok(DROP)
        }
        // Only duplicate, corrupt and drop --ecn rules are put in this family (user space sees to
        // it).
        Some(_) | None => Ok(NEXT),
    }
}

/// The address of the socket `sk` as a number, to read its fields at offsets: the verifier
/// forbids arithmetic on a socket pointer, but lets a program loaded with CAP_PERFMON (chaos runs
/// as root) store a pointer in a map, where it reads back as a number.
#[inline(always)]
fn address_of(sk: *mut bpf_sock) -> Option<u64> {
    let slot = CHAOS_SOCK_ADDRESS.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, valid for this run; volatile, so the store and the load stay.
    unsafe {
        core::ptr::write_volatile(slot, sk as u64);
        Some(core::ptr::read_volatile(slot))
    }
}

/// The u64 at kernel address `at`; 0 if it cannot be read.
#[inline(always)]
fn read_u64(at: u64) -> u64 {
    let mut v = 0u64;
    // SAFETY: the helper reads 8 bytes of kernel memory into `v` and fails (leaving it 0) where
    // the address cannot be read; nothing is written to the kernel.
    unsafe { bpf_probe_read_kernel((&raw mut v).cast(), 8, at as *const c_void) };
    v
}

/// The id of the cgroup at kernel address `cgroup` (its kernfs node's id); 0 for none.
#[inline(always)]
fn cgroup_id(cgroup: u64, off: &[u64; 6]) -> u64 {
    if cgroup == 0 {
        return 0;
    }
    let kn = read_u64(cgroup + off[1]);
    if kn == 0 { 0 } else { read_u64(kn + off[2]) }
}

/// The id of the ancestor at `level` of the cgroup at address `cgroup` (itself at its own level),
/// as `bpf_skb_ancestor_cgroup_id` gives it; 0 past the cgroup's level. The cgroup keeps its
/// ancestors in an array by level (the kernel's own `cgroup_ancestor`), so no loop: one loop per
/// level, inside the walk over levels, took the 6.1 verifier past its limit.
#[inline(always)]
fn ancestor_id(cgroup: u64, level: i32, off: &[u64; 6]) -> u64 {
    let own = (read_u64(cgroup + off[3]) & 0xffff_ffff) as i32;
    if level < 0 || level > own || level > MAX_CGROUP_DEPTH as i32 {
        return 0;
    }
    let entry = read_u64(cgroup + off[4] + 8 * level as u64);
    if off[5] != 0 { entry } else { cgroup_id(entry, off) }
}
