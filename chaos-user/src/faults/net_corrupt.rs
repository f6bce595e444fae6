//! `net.corrupt`: flip one random bit in the payload of a share of the target's sent (or
//! received, at TC ingress) packets (netem's `corrupt P`). Whether the receiver's checksum catches it depends on where the checksum
//! is computed: docs/design.md, "Corruption and checksums".

use chaos_common::Action;
use clap::{ArgMatches, Args};

use super::{
    Fault, Kind,
    net::{PercentAction, PercentArgs, PercentFault},
};
use crate::error::Result;

pub const KIND: Kind = Kind { name: "net.corrupt", family: "net", verb: "corrupt", command, build };

static WHAT: PercentAction = PercentAction {
    kind: KIND.name,
    action: Action::NetCorrupt,
    verb: "corrupt one bit in",
    counters: ["corrupted", "corrupted_segs", "corrupted_bytes"],
    // Of the corrupted, those whose checksum will not catch the change: they reach the
    // application, and the rest are dropped by the receiver's check.
    more: &[("corrupted_checksum_offloaded", |c| c.checksum_offloaded)],
};

fn command() -> clap::Command {
    PercentArgs::augment_args(clap::Command::new("corrupt"))
        .about("Flip one random bit in the payload of packets (netem's corrupt, for one cgroup).")
        .after_help(
            "On devices that leave the checksum to the hardware (veth, lo and most NICs: the kernel \
             computes it after chaos, or never), the corrupted payload reaches the receiving \
             application; where the checksum was already computed, the receiver's check drops the \
             packet as it would a corrupted frame. The summary counts the first kind apart \
             (corrupted_checksum_offloaded: the checksum was left to the device, or was already \
             checked as received); the receiver drops the rest. One GSO packet is one decision: \
             one bit in up to 64 KB. With --direction ingress (or both), received TCP and UDP packets of the \
             target's sockets are changed at the device's ingress, before the receiver's checksum \
             check: a packet whose checksum the sender's device left unchecked (a local veth peer) \
             reaches the application changed.\n\n\
             Examples:\n  chaos net corrupt --cgroup web --percent 1\n  \
             chaos net corrupt --pid 4242 --percent 10 --proto udp --port 9000\n  \
             chaos net corrupt --cgroup web --percent 1 --direction ingress --proto tcp",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    PercentFault::build(&WHAT, m)
}
