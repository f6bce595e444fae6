//! DNS faults at TC egress: a query a rule selected is answered by the kernel, or lost.
//!
//! A target's DNS rules are walked before its other rules, for UDP packets only ([`select`]): the
//! query is read once ([`read_query`]), then each rule in turn matches its filters and name
//! against it, so rules for different names share one packet, and the first that selects the
//! query answers it; a packet no DNS rule takes goes on to the other rules. The answer is the query itself turned around ([`answer`]): Ethernet and IP
//! addresses and UDP ports swapped, the header's flags those of a response with the rule's code,
//! everything else (the question, an EDNS record) echoed. It is redirected into the same device's
//! receive path, so the resolver gets it from the server's address and port as if the server had
//! answered. Swapping addresses and ports leaves the IPv4 header checksum and the UDP checksum
//! as they were (a one's complement sum does not depend on order); the flags change is applied
//! to the UDP checksum.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, __sk_buff},
    helpers::{
        bpf_redirect,
        generated::{bpf_l4_csum_replace, bpf_loop, bpf_skb_load_bytes, bpf_skb_store_bytes},
    },
    macros::map,
    maps::PerCpuArray,
};
use chaos_common::{
    KernelError, MAX_RULES, Rule,
    dns::{self, Labels, NAME_MAX},
    has_rule,
    net::{DIR_EGRESS, Fragment, PROTO_UDP, Packet},
};

use crate::engine::{Segs, decide, now_coarse, rule};

/// The packet as a whole: the context, where its network header starts, its length.
#[derive(Clone, Copy)]
pub struct Frame {
    pub skb: *mut __sk_buff,
    pub l2: u32,
    pub len: u32,
}

/// [`read_query`]'s answers.
const QUERY: u8 = 1;
const NOT_A_QUERY: u8 = 2;

/// The query [`select`] read: its name, the labels found in it, the hash of the name's suffix
/// from each byte on, and its header's flags.
#[repr(C)]
pub struct Query {
    name: [u8; NAME_MAX],
    suffix: [u64; NAME_MAX],
    labels: Labels,
    /// The bytes of `name` that came from the packet.
    avail: u32,
    flags: u16,
    /// The back-to-front pass's hash so far.
    hash: u64,
    /// Where the answer is assembled, field by field.
    scratch: [u8; 32],
}

/// One per CPU: a packet's programs run start to end on one CPU (too large for the stack).
#[map]
static CHAOS_DNS_QUERY: PerCpuArray<Query> = PerCpuArray::with_max_entries(1, 0);

const ETH_ALEN: u32 = 6;

/// `N` bytes at `offset` from the start of the packet.
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Result<[u8; N], KernelError> {
    let mut buf = [0u8; N];
    // SAFETY: `skb` is the context the kernel passed in; the helper writes at most N bytes into
    // the buffer it is given.
    let r = unsafe { bpf_skb_load_bytes(skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32) };
    if r < 0 { Err(KernelError::HeaderLoad) } else { Ok(buf) }
}

/// Whether `pkt` (in `frame`) is a DNS query with a plain name; if so, it is read into this CPU's
/// [`Query`]. [`QUERY`] or [`NOT_A_QUERY`]. Out of line, like [`answer`]: the stack of a chain of
/// calls is limited to 512 bytes, and this way their buffers never meet.
#[inline(never)]
fn read_query(frame: &Frame, pkt: &Packet) -> Result<u8, KernelError> {
    if pkt.proto != PROTO_UDP || !pkt.has_ports || pkt.fragment != Fragment::No {
        return Ok(NOT_A_QUERY);
    }
    let header = frame.l2 + pkt.l4_offset + 8;
    let h: [u8; dns::HEADER_LEN as usize] = load(frame.skb, header)?;
    let flags = u16::from_be_bytes([h[2], h[3]]);
    let qname = header + dns::HEADER_LEN;
    if !dns::is_query(flags, u16::from_be_bytes([h[4], h[5]])) || frame.len <= qname {
        return Ok(NOT_A_QUERY);
    }
    let avail = (frame.len - qname).min(NAME_MAX as u32);
    // The same 1..=256 bytes written so that every verifier sees the bounds the helper's length
    // needs: `black_box` stops the compiler from folding the arithmetic away (it knows `avail` is in
    // range; the verifier of older kernels does not follow how).
    let avail = ((core::hint::black_box(avail).wrapping_sub(1)) & (NAME_MAX as u32 - 1)) + 1;
    let q = CHAOS_DNS_QUERY.get_ptr_mut(0).ok_or(KernelError::RuleLookup)?;
    // SAFETY: this CPU's map value, valid for this run and used by nothing else meanwhile; the
    // helper writes at most `avail` (<= NAME_MAX) bytes into the name.
    if unsafe { bpf_skb_load_bytes(frame.skb.cast(), qname, (*q).name.as_mut_ptr().cast(), avail) } < 0 {
        return Err(KernelError::HeaderLoad);
    }
    // SAFETY: as above.
    let query = unsafe { &mut *q };
    query.flags = flags;
    query.avail = avail;
    query.labels = Labels::default();
    query.hash = dns::SUFFIX_START;
    // The walks keep their state in the map value, not on the stack: the stack of a chain of
    // calls (program, this function, the loop's callback) is limited to 512 bytes.
    let mut at = QueryRef { query: q };
    // SAFETY: the callbacks have the signature the helper expects, and `at` lives until it returns.
    unsafe { bpf_loop(dns::MAX_LABEL_STEPS, label_turn as *mut c_void, (&raw mut at).cast(), 0) };
    // SAFETY: as above.
    let labels = unsafe { &(*q).labels };
    if labels.bad || labels.len == 0 {
        return Ok(NOT_A_QUERY);
    }
    // SAFETY: as above.
    unsafe { bpf_loop(labels.len & (NAME_MAX as u32 - 1), suffix_turn as *mut c_void, (&raw mut at).cast(), 0) };
    Ok(QUERY)
}

/// The `bpf_loop` context of the walks over a query: this CPU's [`Query`].
#[repr(C)]
struct QueryRef {
    query: *mut Query,
}

/// One label of the walk. Returns 1 to stop.
extern "C" fn label_turn(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `QueryRef` on the stack of `read_query`, which outlives the loop, and
    // its pointer is this CPU's map value.
    let q = unsafe { &mut *(*(ctx as *mut QueryRef)).query };
    dns::label_step(&q.name, q.avail, &mut q.labels) as i64
}

/// One byte of the back-to-front pass: the suffix from byte `len - 1 - index` on. Returns 0.
extern "C" fn suffix_turn(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: as for `label_turn`.
    let q = unsafe { &mut *(*(ctx as *mut QueryRef)).query };
    let p = (q.labels.len.wrapping_sub(1).wrapping_sub(index as u32) & (NAME_MAX as u32 - 1)) as usize;
    q.hash = dns::suffix_step(q.hash, q.name[p]);
    q.suffix[p] = q.hash;
    0
}

/// The first of `rules` (a target's DNS rules) that selects the query `pkt` (in `frame`), and that
/// rule; `None` when the packet is not a query or no rule takes it. Every rule walked counts the
/// packet, as in the main walk.
///
/// The query is read before the rules are walked, for every UDP packet of a target that has DNS
/// rules: a packet that is not one costs one 12-byte read. Reading it lazily, at the first rule
/// whose filters match, spared that read but made the verifier walk the rules' loop with one more
/// state: 40% more instructions to verify at every session start.
#[inline(always)]
pub fn select(rules: u64, pkt: &Packet, frame: Frame, segs: Segs) -> Result<Option<(u32, &'static Rule)>, KernelError> {
    if read_query(&frame, pkt)? != QUERY {
        return Ok(None);
    }
    let q = CHAOS_DNS_QUERY.get_ptr(0).ok_or(KernelError::RuleLookup)?;
    let mut w = RuleWalk { rules, pkt, query: q, segs, now: now_coarse(), found: 0, error: 0 };
    // SAFETY: the callback has the signature the helper expects, and `w` lives until it returns.
    unsafe { bpf_loop(MAX_RULES, rule_turn as *mut c_void, (&raw mut w).cast(), 0) };
    if w.error != 0 {
        return Err(KernelError::RuleLookup);
    }
    if w.found == 0 {
        return Ok(None);
    }
    Ok(Some((w.found - 1, rule(w.found - 1)?)))
}

/// What the `bpf_loop` turns over a target's DNS rules share with [`select`].
#[repr(C)]
struct RuleWalk<'a> {
    rules: u64,
    pkt: &'a Packet,
    query: *const Query,
    segs: Segs,
    now: u64,
    /// 1 + the index of the rule that selected the query; 0: none.
    found: u32,
    error: u32,
}

/// Rule `index`, if it is one of the walk's. Returns 1 to stop.
extern "C" fn rule_turn(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `RuleWalk` on the stack of `select`, which outlives the loop.
    let w = unsafe { &mut *(ctx as *mut RuleWalk) };
    let i = index as u32;
    if i >= MAX_RULES || w.rules >> i == 0 {
        return 1;
    }
    if !has_rule(w.rules, i) {
        return 0;
    }
    let Ok(r) = rule(i) else {
        w.error = 1;
        return 1;
    };
    // SAFETY: this CPU's map value, written by `read_query` in this run.
    let q = unsafe { &*w.query };
    let filters_ok = r.net.matches(DIR_EGRESS, w.pkt)
        && match dns::match_start(&q.labels, &r.dns) {
            Some(start) => dns::suffix_matches(q.suffix[(start & (NAME_MAX as u32 - 1)) as usize], &r.dns),
            None => false,
        };
    match decide::<true>(i, r, w.now, filters_ok, w.segs) {
        Ok(true) => {
            w.found = i + 1;
            1
        }
        Ok(false) => 0,
        Err(_) => {
            w.error = 1;
            1
        }
    }
}

/// Swaps the `n`-byte fields at `a` and `a + n` (source and destination, always adjacent; `n` at
/// most 16) through `scratch`, this CPU's map value: buffers on the stack made the answer's frame
/// too large for the chain of calls it sits in.
#[inline(always)]
fn swap(skb: *mut __sk_buff, a: u32, n: u32, scratch: &mut [u8; 32]) -> Result<(), KernelError> {
    let both = 2 * n;
    // SAFETY: the context the kernel passed in; the helpers copy `both` (<= 32) bytes between
    // the packet and the map value.
    if unsafe { bpf_skb_load_bytes(skb.cast(), a, scratch.as_mut_ptr().cast(), both) } < 0 {
        return Err(KernelError::HeaderLoad);
    }
    let mut i = 0;
    while i < 16 && i < n as usize {
        scratch.swap(i, (n as usize + i) & 31);
        i += 1;
    }
    // SAFETY: as above.
    if unsafe { bpf_skb_store_bytes(skb.cast(), a, scratch.as_ptr().cast(), both, 0) } < 0 {
        return Err(KernelError::PacketWrite);
    }
    Ok(())
}

/// Turns the query the walk matched (`pkt`, network header `l2` bytes in) into its answer with
/// `rcode`, and returns the verdict that hands it to the device's receive path.
#[inline(never)]
pub fn answer(skb: *mut __sk_buff, l2: u32, pkt: &Packet, rcode: u8) -> Result<i32, KernelError> {
    let q = CHAOS_DNS_QUERY.get_ptr_mut(0).ok_or(KernelError::RuleLookup)?;
    // SAFETY: this CPU's map value, written by `read_query` in this run.
    let q = unsafe { &mut *q };
    let ipv4 = super::parse::is_ipv4(skb);
    // SAFETY: the context the kernel passed in.
    let ifindex = unsafe { (*skb).ifindex };
    let udp = l2 + pkt.l4_offset;
    swap(skb, 0, ETH_ALEN, &mut q.scratch)?;
    if ipv4 {
        swap(skb, l2 + 12, 4, &mut q.scratch)?;
    } else {
        swap(skb, l2 + 8, 16, &mut q.scratch)?;
    }
    swap(skb, udp, 2, &mut q.scratch)?;
    let answer = dns::answer_flags(q.flags, rcode);
    // An IPv4 UDP checksum of 0 means "none" and stays 0.
    let csum_flags = 2 | if ipv4 { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    // SAFETY: the context the kernel passed in; the helper updates the 2-byte checksum at that
    // offset for a 2-byte change (big-endian values, as in the packet).
    if unsafe { bpf_l4_csum_replace(skb, udp + 6, q.flags.to_be() as u64, answer.to_be() as u64, csum_flags) } < 0 {
        return Err(KernelError::PacketWrite);
    }
    q.scratch[..2].copy_from_slice(&answer.to_be_bytes());
    // SAFETY: as for `swap`.
    if unsafe { bpf_skb_store_bytes(skb.cast(), udp + 8 + 2, q.scratch.as_ptr().cast(), 2, 0) } < 0 {
        return Err(KernelError::PacketWrite);
    }
    // SAFETY: bpf_redirect only records the target for after the program returns.
    Ok(unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) } as i32)
}
