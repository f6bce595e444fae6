//! Wire-like egress loss: takes away the packets this run's cgroup program marked. The stack is
//! told the packet was sent, so TCP recovers by retransmission and UDP senders see no error.
//!
//! `TC_ACT_STOLEN` would say that through cls_bpf (netlink), but tcx (6.6+) maps every verdict
//! other than pass/drop/redirect to "next", and `TC_ACT_SHOT` is reported to the sender as a local
//! drop (TCP then never retransmits). An egress redirect is always reported as sent
//! (`NET_XMIT_SUCCESS`), and `skb_do_redirect` frees the packet when the target ifindex names no
//! device; ifindex 0 never does. So a redirect to 0 is wire loss under both attach modes.

use aya_ebpf::{helpers::bpf_redirect, macros::classifier, programs::TcContext};
use chaos_common::net::{MAX_RULES, NetError, marked_rule};

use super::maps::{count_error, counters};
use crate::globals::run_tag;

/// "No opinion": the next program or filter decides (tcx `TCX_NEXT`, cls_bpf `TC_ACT_UNSPEC`).
const NEXT: i32 = -1;

/// An ifindex no device ever has.
const NOWHERE: u32 = 0;

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
            // SAFETY: bpf_redirect only records the target for after the program returns.
            unsafe { bpf_redirect(NOWHERE, 0) as i32 }
        }
        Some(_) => {
            count_error(NetError::BadMark);
            NEXT
        }
    }
}
