//! `net.corrupt`: flip one random bit in the payload of a share of the target's sent (or
//! received, at TC ingress) packets (netem's `corrupt P`). Whether the receiver's checksum catches it depends on where the checksum
//! is computed: docs/design.md, "Corruption and checksums".

use std::path::PathBuf;

use chaos_common::{Action, Counters, Rule};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};

use super::{
    Fault, Hook, Kind,
    net::{PercentAction, PercentArgs, PercentFault},
};
use crate::{cli, error::Result, probe::Backend, usage};

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

/// Which bits a corruption may flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Where {
    /// The payload, after the TCP or UDP header.
    Payload,
    /// Anywhere from the network header on, headers included, as netem.
    Any,
}

#[derive(Args, Debug)]
struct CorruptArgs {
    #[command(flatten)]
    percent: PercentArgs,
    /// Which bits: the payload's, or any from the network header on (the IPv4 header's checksum
    /// then drops what hits it, as a receiver does a wire's corruption)
    #[arg(long = "where", value_enum, default_value = "payload", value_name = "WHERE")]
    place: Where,
}

/// The percent fault, with where its bit may be.
#[derive(Debug)]
struct Corrupt {
    fault: PercentFault,
    headers_too: bool,
}

fn command() -> clap::Command {
    CorruptArgs::augment_args(clap::Command::new("corrupt"))
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
             --where any flips a bit anywhere from the network header on, as netem does: a bit \
             of an IPv4 header is caught by its checksum, and one of a TCP or UDP header whose \
             checksum the device computes changes the header (a port, a length) instead.\n\n\
             Examples:\n  chaos net corrupt --cgroup web --percent 1\n  \
             chaos net corrupt --pid 4242 --percent 10 --proto udp --port 9000\n  \
             chaos net corrupt --cgroup web --percent 1 --direction ingress --proto tcp\n  \
             chaos net corrupt --cgroup web --percent 5 --where any",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = CorruptArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    Ok(Box::new(Corrupt { fault: PercentFault::new(&WHAT, a.percent), headers_too: a.place == Where::Any }))
}

impl Fault for Corrupt {
    fn kind(&self) -> &'static str {
        self.fault.kind()
    }

    fn describe(&self) -> String {
        let d = self.fault.describe();
        if self.headers_too { format!("{d}, headers included") } else { d }
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.fault.needs()
    }

    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>> {
        self.fault.hooks(available)
    }

    fn fill(&self, rule: &mut Rule, hooks: &[Hook]) -> Result<()> {
        self.fault.fill(rule, hooks)?;
        rule.net_action.headers_too = self.headers_too as u32;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        self.fault.report(c)
    }

    fn netns(&self) -> &[PathBuf] {
        self.fault.netns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule a `net corrupt` command line makes.
    fn rule(args: &[&str]) -> Rule {
        let m = command().no_binary_name(true).try_get_matches_from(["--percent", "5"].iter().chain(args)).expect("valid flags");
        let mut rule = Rule::default();
        build(&m).expect("a fault").fill(&mut rule, &[]).expect("filled");
        rule
    }

    #[test]
    fn where_says_whether_headers_may_be_hit() {
        assert_eq!(rule(&[]).net_action.headers_too, 0, "the payload by default");
        assert_eq!(rule(&["--where", "payload"]).net_action.headers_too, 0);
        assert_eq!(rule(&["--where", "any"]).net_action.headers_too, 1);
        assert_eq!(rule(&["--where", "any"]).action, Action::NetCorrupt as u32);
        assert!(command().no_binary_name(true).try_get_matches_from(["--percent", "5", "--where", "all"]).is_err());
    }
}
