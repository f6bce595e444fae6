//! The per-cgroup decision. Attached to the target cgroup, so only its processes (and those of
//! its descendants) ever reach these programs.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use chaos_common::{
    net::{DIR_EGRESS, DIR_INGRESS, MAX_RULES, NetError, NetFault, steal_mark},
    roll,
};

use super::{
    maps::{NET_RULES, count_error, counters},
    parse,
};
use crate::globals::{log_packets, run_tag};

/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn chaos_net_egress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, DIR_EGRESS)
}

#[cgroup_skb(ingress)]
pub fn chaos_net_ingress(ctx: SkBuffContext) -> i32 {
    decide(&ctx, DIR_INGRESS)
}

#[inline(always)]
fn decide(ctx: &SkBuffContext, dir: u8) -> i32 {
    match try_decide(ctx, dir) {
        Ok(verdict) => verdict,
        Err(e) => {
            count_error(e);
            PASS
        }
    }
}

fn try_decide(ctx: &SkBuffContext, dir: u8) -> Result<i32, NetError> {
    let Some(pkt) = parse::packet(ctx, dir).map_err(|_| NetError::HeaderLoad)? else {
        return Ok(PASS);
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut i = 0;
    while i < MAX_RULES {
        let rule = NET_RULES.get(i).ok_or(NetError::RuleLookup)?;
        if rule.fault != NetFault::None as u8 && rule.directions & dir != 0 {
            let c = counters(i).ok_or(NetError::RuleLookup)?;
            c.seen += 1;
            if rule.live(now) && rule.matches(dir, &pkt) {
                c.matched += 1;
                // SAFETY: bpf_get_prandom_u32 has no preconditions.
                if roll(unsafe { bpf_get_prandom_u32() }, rule.threshold) {
                    c.selected += 1;
                    if log_packets() {
                        debug!(ctx, "chaos: drop rule={} dir={} proto={} len={}", i, dir, pkt.proto, ctx.len());
                    }
                    if dir == DIR_EGRESS {
                        // Let it go on to the device, where chaos_tc_steal drops it as the wire
                        // would; dropping here would tell the sender "not sent" (see design.md).
                        ctx.set_mark(steal_mark(run_tag(), i));
                        return Ok(PASS);
                    }
                    c.dropped += 1;
                    c.dropped_bytes += ctx.len() as u64;
                    return Ok(DROP);
                }
            }
        }
        i += 1;
    }
    Ok(PASS)
}
