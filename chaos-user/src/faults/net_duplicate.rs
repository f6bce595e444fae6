//! `net.duplicate`: send (or receive) a share of the target's packets twice (netem's `duplicate
//! P`). Egress: the TC program clones the packet out of the same device; the copy carries no
//! socket, so it has no cgroup and is never copied again. Ingress: the TC ingress program injects
//! a marked copy at the device's ingress, and lets a marked packet pass uncopied.

use chaos_common::Action;
use clap::{ArgMatches, Args};

use super::{
    Fault, Kind,
    net::{PercentAction, PercentArgs, PercentFault},
};
use crate::error::Result;

pub const KIND: Kind = Kind { name: "net.duplicate", family: "net", verb: "duplicate", command, build };

static WHAT: PercentAction = PercentAction {
    kind: KIND.name,
    action: Action::NetDuplicate,
    verb: "duplicate",
    counters: ["duplicated", "duplicated_segs", "duplicated_bytes"],
    more: &[],
};

fn command() -> clap::Command {
    PercentArgs::augment_args(clap::Command::new("duplicate"))
        .about("Send packets twice (netem's duplicate, for one cgroup).")
        .after_help(
            "With --direction ingress (or both), the target's received TCP and UDP packets are \
             copied at the device's ingress, before the stack sees them: the packets of a local \
             socket of the target's (found as the stack will find it), never ICMP or a packet no \
             socket takes. A copy is never copied again.\n\n\
             Examples:\n  chaos net duplicate --cgroup web --percent 5\n  \
             chaos net duplicate --pid 4242 --percent 50 --proto udp --port 5353\n  \
             chaos net duplicate --cgroup web --percent 10 --direction ingress",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    PercentFault::build(&WHAT, m)
}
