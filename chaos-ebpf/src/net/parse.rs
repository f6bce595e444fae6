//! Turns the packet at the network header into a `chaos_common::net::Packet`.

use aya_ebpf::programs::SkBuffContext;
use chaos_common::net::{DIR_EGRESS, PROTO_TCP, PROTO_UDP, Packet, v4_mapped, v6_halves};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// `Ok(None)`: not IP (ARP and the like pass untouched). `Err`: a header could not be read.
#[inline(always)]
pub fn packet(ctx: &SkBuffContext, dir: u8) -> Result<Option<Packet>, i64> {
    // cgroup_skb programs see the packet from its network header on.
    let (proto, remote, l4) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => {
            let h: [u8; 20] = ctx.load(0)?;
            let first_fragment = (u16::from_be_bytes([h[6], h[7]]) & 0x1fff) == 0;
            let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
            let remote = v4_mapped(if dir == DIR_EGRESS { dst } else { src });
            let l4 = if first_fragment { Some(((h[0] & 0x0f) as usize) * 4) } else { None };
            (h[9], remote, l4)
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = ctx.load(0)?;
            let mut addr = [0u8; 16];
            let from = if dir == DIR_EGRESS { 24 } else { 8 };
            let mut i = 0;
            while i < 16 {
                addr[i] = h[from + i];
                i += 1;
            }
            // Extension headers are not walked: a packet that has them matches on address only.
            (h[6], v6_halves(addr), Some(40))
        }
        _ => return Ok(None),
    };
    let mut pkt = Packet { proto, remote_hi: remote.0, remote_lo: remote.1, ..Default::default() };
    if let (PROTO_TCP | PROTO_UDP, Some(off)) = (proto, l4) {
        let ports: [u8; 4] = ctx.load(off)?;
        let (src, dst) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
        (pkt.remote_port, pkt.local_port) = if dir == DIR_EGRESS { (dst, src) } else { (src, dst) };
    }
    Ok(Some(pkt))
}
