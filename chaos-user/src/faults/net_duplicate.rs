//! `net.duplicate`: send a share of the target's packets twice (netem's `duplicate P`). The TC
//! program clones the packet out of the same device; the copy carries no socket, so it has no
//! cgroup and is never copied again.

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
    egress_only: "copies are made where the packet leaves the target's namespace",
};

fn command() -> clap::Command {
    PercentArgs::augment_args(clap::Command::new("duplicate"))
        .about("Send packets twice (netem's duplicate, for one cgroup).")
        .after_help(
            "Examples:\n  chaos net duplicate --cgroup web --percent 5\n  \
             chaos net duplicate --pid 4242 --percent 50 --proto udp --port 5353",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    PercentFault::build(&WHAT, m)
}
