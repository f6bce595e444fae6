//! Turns the packet at the network header into a `chaos_common::net::Packet`. Works for TC and
//! `cgroup_skb` alike. Headers are read straight from the packet where the program knows where the
//! network header starts (`cgroup_skb`: at `data`; TC on an Ethernet or loopback device: 14 bytes
//! in) and the bytes are in the linear area; otherwise, and for IPv6 extension headers, through
//! `bpf_skb_load_bytes_relative`, relative to the network header wherever it is (tun and WireGuard
//! devices have no link-layer header). A helper call costs as much as the rest of a decision on
//! machines with return-thunk mitigations, so the common case makes none.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2},
    helpers::generated::bpf_skb_load_bytes_relative,
};
use chaos_common::{
    KernelError,
    net::{
        DIR_EGRESS, Fragment, IPV6_FRAGMENT, IPV6_MAX_EXT_HEADERS, PROTO_TCP, PROTO_UDP, Packet, ipv4_fragment,
        is_ipv6_ext, ipv6_ext, v4_mapped, v6_halves,
    },
};

use crate::engine::count_error;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const BPF_HDR_START_NET: u32 = 1;

/// Where the network header starts, from the program's point of view.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NetworkHeader {
    /// This many bytes past `data`.
    At(u32),
    /// Unknown: read relative to the network header with the helper.
    Unknown,
}

/// `N` bytes at `offset` past the network header, straight from the packet when they are in its
/// linear part, with the helper otherwise.
#[inline(always)]
fn read<const N: usize>(skb: *mut __sk_buff, nh: NetworkHeader, offset: u32) -> Result<[u8; N], KernelError> {
    if let NetworkHeader::At(l2) = nh {
        // SAFETY: the context the kernel passed in; the verifier turns these fields into the
        // packet's bounds, and the bytes are read only after the bounds check.
        let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
        let start = data + l2 as usize + offset as usize;
        if start + N <= end {
            let mut out = [0u8; N];
            // SAFETY: `start..start + N` lies inside the packet (checked above).
            unsafe { core::ptr::copy_nonoverlapping(start as *const u8, out.as_mut_ptr(), N) };
            return Ok(out);
        }
    }
    load(skb, offset)
}

/// `N` bytes at `offset` past the network header, through the helper.
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Result<[u8; N], KernelError> {
    let mut buf = [0u8; N];
    // SAFETY: `skb` is the context the kernel passed in; the helper writes at most N bytes into
    // the buffer it is given.
    let r = unsafe { bpf_skb_load_bytes_relative(skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32, BPF_HDR_START_NET) };
    if r < 0 { Err(KernelError::HeaderLoad) } else { Ok(buf) }
}

/// `Ok(None)`: not IP (ARP and the like pass untouched). `Err`: a header could not be read.
/// `ports`: read the transport header too (only when a rule filters on ports: one helper call less
/// per packet otherwise).
#[inline(always)]
pub fn packet(skb: *mut __sk_buff, nh: NetworkHeader, dir: u8, ports: bool) -> Result<Option<Packet>, KernelError> {
    // SAFETY: the context the kernel passed in, valid for this run.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut pkt = Packet::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let h: [u8; 20] = read(skb, nh, 0)?;
            let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
            (pkt.remote_hi, pkt.remote_lo) = v4_mapped(if dir == DIR_EGRESS { dst } else { src });
            pkt.proto = h[9];
            pkt.fragment = ipv4_fragment(u16::from_be_bytes([h[6], h[7]]));
            pkt.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
            ((h[0] & 0x0f) as u32) * 4
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = read(skb, nh, 0)?;
            let mut addr = [0u8; 16];
            let from = if dir == DIR_EGRESS { 24 } else { 8 };
            let mut i = 0;
            while i < 16 {
                addr[i] = h[from + i];
                i += 1;
            }
            (pkt.remote_hi, pkt.remote_lo) = v6_halves(addr);
            // Walk the extension headers to the transport header (bounded).
            let (mut next, mut offset, mut walked) = (h[6], 40u32, 0);
            while walked < IPV6_MAX_EXT_HEADERS {
                if !is_ipv6_ext(next) {
                    break;
                }
                let Some(ext) = ipv6_ext(next, load(skb, offset)?) else { break };
                if next == IPV6_FRAGMENT {
                    pkt.fragment = if ext.frag_offset != 0 { Fragment::Later } else { Fragment::First };
                    pkt.frag_id = ext.frag_id;
                }
                next = ext.next;
                offset += ext.len as u32;
                walked += 1;
            }
            if walked == IPV6_MAX_EXT_HEADERS && is_ipv6_ext(next) {
                count_error(KernelError::Ipv6Headers);
            }
            pkt.proto = next;
            offset
        }
        _ => return Ok(None),
    };
    pkt.l4_offset = l4;
    if ports && (pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP) && pkt.fragment != Fragment::Later {
        // The ports, and for TCP the flags (byte 13). The IPv4 header length is 20-60 bytes; past
        // extension headers, read with the helper.
        let (src, dst) = if pkt.proto == PROTO_TCP {
            let h: [u8; 14] = if l4 <= 60 { read(skb, nh, l4)? } else { load(skb, l4)? };
            pkt.tcp_flags = h[13];
            (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]))
        } else {
            let h: [u8; 4] = if l4 <= 60 { read(skb, nh, l4)? } else { load(skb, l4)? };
            (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]))
        };
        (pkt.remote_port, pkt.local_port) = if dir == DIR_EGRESS { (dst, src) } else { (src, dst) };
        pkt.has_ports = true;
    }
    Ok(Some(pkt))
}

/// Where the payload of `pkt` starts, in bytes past the network header: after the TCP header
/// (its data offset read from the packet), the 8-byte UDP header, or the IP headers otherwise.
#[inline(always)]
pub fn payload_offset(skb: *mut __sk_buff, pkt: &Packet) -> Result<u32, KernelError> {
    if pkt.fragment == Fragment::Later {
        return Ok(pkt.l4_offset);
    }
    Ok(match pkt.proto {
        PROTO_TCP => {
            let b: [u8; 1] = load(skb, pkt.l4_offset + 12)?;
            pkt.l4_offset + ((b[0] >> 4) as u32) * 4
        }
        PROTO_UDP => pkt.l4_offset + 8,
        _ => pkt.l4_offset,
    })
}

/// The first two bytes of the network header, `l2` bytes into the packet.
#[inline(always)]
pub fn two_bytes(skb: *mut __sk_buff, l2: u32) -> Result<[u8; 2], KernelError> {
    read(skb, NetworkHeader::At(l2), 0)
}

/// Whether the packet is IPv4 (else IPv6, for the packets the programs act on).
#[inline(always)]
pub fn is_ipv4(skb: *mut __sk_buff) -> bool {
    // SAFETY: the context the kernel passed in.
    u16::from_be(unsafe { (*skb).protocol } as u16) == ETH_P_IP
}

/// One byte at `offset` past the network header.
#[inline(always)]
pub fn byte_at(skb: *mut __sk_buff, offset: u32) -> Result<u8, KernelError> {
    let b: [u8; 1] = load(skb, offset)?;
    Ok(b[0])
}

/// Writes the socket lookup key of a received TCP or UDP packet whose ports were read into
/// `key`: its source and destination, in network byte order; returns the key's size (IPv4's part
/// of the union, or IPv6's). Written field by field into the caller's key: a key built here and
/// returned was copied through the stack in a way the 6.1 and 6.18 verifiers refused on devices
/// without Ethernet framing ("invalid size of register fill").
#[inline(always)]
pub fn received_tuple(skb: *mut __sk_buff, nh: NetworkHeader, pkt: &Packet, key: &mut bpf_sock_tuple) -> Result<u32, KernelError> {
    let (sport, dport) = (pkt.remote_port.to_be(), pkt.local_port.to_be());
    if is_ipv4(skb) {
        let h: [u8; 20] = read(skb, nh, 0)?;
        // SAFETY: writes to the IPv4 member of a plain-data union the caller owns.
        unsafe {
            let k = &mut key.__bindgen_anon_1.ipv4;
            k.saddr = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            k.daddr = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            k.sport = sport;
            k.dport = dport;
        }
        return Ok(core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32);
    }
    let h: [u8; 40] = read(skb, nh, 0)?;
    // SAFETY: writes to the IPv6 member of a plain-data union the caller owns.
    unsafe {
        let k = &mut key.__bindgen_anon_1.ipv6;
        let mut i = 0;
        while i < 4 {
            k.saddr[i] = u32::from_ne_bytes([h[8 + 4 * i], h[9 + 4 * i], h[10 + 4 * i], h[11 + 4 * i]]);
            k.daddr[i] = u32::from_ne_bytes([h[24 + 4 * i], h[25 + 4 * i], h[26 + 4 * i], h[27 + 4 * i]]);
            i += 1;
        }
        k.sport = sport;
        k.dport = dport;
    }
    Ok(core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32)
}
