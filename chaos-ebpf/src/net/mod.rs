//! Packet faults: egress decided at TC on the devices of the target's network namespace, from the
//! cgroup of the packet's socket; ingress decided at `cgroup_skb` on the target cgroup. Neither
//! reads or writes `skb->mark`.

mod cgroup_skb;
mod parse;
mod tc;

use chaos_common::{Action, KernelError, has_rule, more_rules, net::Packet};

use crate::engine::{decide, now_coarse, rule};

/// The first of the rules in `mask` that selects `pkt` (travelling in `dir`, standing for `segs`
/// wire segments) for a packet action, and that action. Every rule it walks counts the packet.
#[inline(always)]
fn selected(mask: u64, dir: u8, pkt: &Packet, segs: u64) -> Result<Option<(u32, Action)>, KernelError> {
    let now = now_coarse();
    let mut i = 0;
    while more_rules(mask, i) {
        if has_rule(mask, i) {
            let r = rule(i)?;
            if decide(i, r, now, r.net.matches(dir, pkt), segs)? {
                match Action::from_u32(r.action) {
                    Action::NetDrop => return Ok(Some((i, Action::NetDrop))),
                    Action::SysFail | Action::None => {}
                }
            }
        }
        i += 1;
    }
    Ok(None)
}
