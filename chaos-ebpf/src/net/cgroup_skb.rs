//! Ingress packet faults, at `cgroup_skb/ingress` on the target cgroup: only its processes' (and
//! its descendants') packets reach the program. The packet already crossed the wire, so to the
//! remote sender a drop here is exactly wire loss.

use aya_ebpf::{
    helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use chaos_common::{Action, Family, KernelError, net::DIR_INGRESS};

use super::parse::{self, NetworkHeader};
use crate::{
    engine::{Segs, count_error, flow_stalled, injected, paced, rules_for},
    globals::log_packets,
};

/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn chaos_cgroup_ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(e) => {
            count_error(e);
            PASS
        }
    }
}

/// cgroup_skb programs see the packet from its network header on.
fn try_ingress(ctx: &SkBuffContext) -> Result<i32, KernelError> {
    let skb = ctx.skb.skb;
    // The kernel sets skb->sk to the receiving socket for the run of these programs, so the
    // socket's cgroup and its ancestors are at hand.
    // SAFETY: the context the kernel passed in.
    let leaf = unsafe { bpf_skb_cgroup_id(skb.cast()) };
    // SAFETY: as above.
    let (mask, port_rules, _) = rules_for(Family::Ingress, leaf, |level| unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) });
    if mask == 0 {
        return Ok(PASS);
    }
    let Some(pkt) = parse::packet(skb, NetworkHeader::At(0), DIR_INGRESS, port_rules != 0)? else { return Ok(PASS) };
    // SAFETY: as above.
    let segs = Segs::Of(skb.cast());
    let len = ctx.len() as u64;
    match super::selected(mask, DIR_INGRESS, &pkt, segs)? {
        Some((i, Action::NetDrop, _)) => {
            injected(i, segs, len);
            if log_packets() {
                debug!(ctx, "chaos: drop rule={} dir=ingress proto={} len={}", i, pkt.proto, len);
            }
            Ok(DROP)
        }
        Some((i, Action::NetStall, r)) => {
            let payload = (len as u32).saturating_sub(parse::payload_offset(skb.cast(), &pkt)?) as u64;
            if flow_stalled(i, &pkt, payload, r.net_action.burst_ns) {
                injected(i, segs, len);
                return Ok(DROP);
            }
            Ok(PASS)
        }
        Some((i, Action::NetPolice, r)) => {
            let p = &r.net_action;
            if paced(i, len, p.rate_bytes, p.burst_ns).is_some() {
                return Ok(PASS);
            }
            injected(i, segs, len);
            Ok(DROP)
        }
        // Delay, duplicate, corrupt, shaping and DNS answers act at TC egress only (user space
        // refuses them on ingress).
        Some((
            _,
            Action::NetDelay | Action::NetDuplicate | Action::NetCorrupt | Action::NetShape | Action::NetDns | Action::SysFail | Action::SysSignal | Action::SysDelay | Action::ProcPause | Action::ProcKill | Action::None,
            _,
        ))
        | None => Ok(PASS),
    }
}
