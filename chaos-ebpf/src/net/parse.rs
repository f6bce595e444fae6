//! Turns the packet at the network header into a `chaos_common::net::Packet`. Works for TC and
//! `cgroup_skb` alike: offsets are read relative to the network header, wherever the link-layer
//! header ends (or whether there is one: tun and WireGuard devices have none).

use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_skb_load_bytes_relative};
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

/// `N` bytes at `offset` past the network header.
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, offset: u32) -> Result<[u8; N], KernelError> {
    let mut buf = [0u8; N];
    // SAFETY: `skb` is the context the kernel passed in; the helper writes at most N bytes into
    // the buffer it is given.
    let r = unsafe { bpf_skb_load_bytes_relative(skb.cast(), offset, buf.as_mut_ptr().cast(), N as u32, BPF_HDR_START_NET) };
    if r < 0 { Err(KernelError::HeaderLoad) } else { Ok(buf) }
}

/// `Ok(None)`: not IP (ARP and the like pass untouched). `Err`: a header could not be read.
#[inline(always)]
pub fn packet(skb: *mut __sk_buff, dir: u8) -> Result<Option<Packet>, KernelError> {
    // SAFETY: the context the kernel passed in, valid for this run.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16);
    let mut pkt = Packet::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let h: [u8; 20] = load(skb, 0)?;
            let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
            (pkt.remote_hi, pkt.remote_lo) = v4_mapped(if dir == DIR_EGRESS { dst } else { src });
            pkt.proto = h[9];
            pkt.fragment = ipv4_fragment(u16::from_be_bytes([h[6], h[7]]));
            pkt.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
            ((h[0] & 0x0f) as u32) * 4
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = load(skb, 0)?;
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
    if (pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP) && pkt.fragment != Fragment::Later {
        let ports: [u8; 4] = load(skb, l4)?;
        let (src, dst) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
        (pkt.remote_port, pkt.local_port) = if dir == DIR_EGRESS { (dst, src) } else { (src, dst) };
        pkt.has_ports = true;
    }
    Ok(Some(pkt))
}
