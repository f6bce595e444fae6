//! Wire-like egress loss: steals the packets this run's cgroup program marked. The stack is told
//! the packet was sent, so TCP recovers by retransmission and UDP senders see no error.

use aya_ebpf::{bindings::TC_ACT_STOLEN, macros::classifier, programs::TcContext};
use chaos_common::net::{MAX_RULES, NetError, marked_rule};

use super::maps::{count_error, counters};
use crate::globals::run_tag;

/// "No opinion": the next program or filter decides (tcx `TCX_NEXT`, cls_bpf `TC_ACT_UNSPEC`).
const NEXT: i32 = -1;

#[classifier]
pub fn chaos_tc_steal(ctx: TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the __sk_buff the kernel passed in, valid for this run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    match marked_rule(run_tag(), mark) {
        None => NEXT,
        Some(i) if i < MAX_RULES => {
            if let Some(c) = counters(i) {
                c.dropped += 1;
                c.dropped_bytes += ctx.len() as u64;
            }
            TC_ACT_STOLEN as i32
        }
        Some(_) => {
            count_error(NetError::BadMark);
            NEXT
        }
    }
}
