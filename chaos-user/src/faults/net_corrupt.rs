//! `net.corrupt`: flip one random bit in the payload of a share of the target's sent packets
//! (netem's `corrupt P`). Whether the receiver's checksum catches it depends on where the checksum
//! is computed: docs/design.md, "Corruption and checksums".

use std::path::PathBuf;

use chaos_common::{Action, Counters, Rule, ppm_to_threshold};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, Hook, Kind, net::{NetFilterArgs, NetFilters}};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.corrupt", family: "net", verb: "corrupt", command, build };

fn command() -> clap::Command {
    NetCorruptArgs::augment_args(clap::Command::new("corrupt"))
        .about("Flip one random bit in the payload of sent packets (netem's corrupt, for one cgroup).")
        .after_help(
            "On devices that leave the checksum to the hardware (veth, lo and most NICs: the kernel \
             computes it after chaos, or never), the corrupted payload reaches the receiving \
             application; where the checksum was already computed, the receiver's check drops the \
             packet as it would a corrupted frame. One GSO packet is one decision: one bit in up to \
             64 KB.\n\n\
             Examples:\n  chaos net corrupt --cgroup web --percent 1\n  \
             chaos net corrupt --pid 4242 --percent 10 --proto udp --port 9000",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetCorruptArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters: NetFilters = a.filters.into();
    filters.egress_only(KIND.name, "received packets were checked and handed to the socket before chaos could change them")?;
    Ok(Box::new(NetCorrupt { ppm: a.percent, filters, netns: a.netns }))
}

#[derive(Args, Debug)]
pub struct NetCorruptArgs {
    /// Probability of corrupting a matching packet, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
    #[command(flatten)]
    pub filters: NetFilterArgs,
    /// Also attach device programs in this network namespace (a file such as /run/netns/NAME).
    #[arg(long, value_name = "FILE")]
    pub netns: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct NetCorrupt {
    pub ppm: u32,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetCorrupt {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!("corrupt one bit in {} of {}", super::percent(self.ppm), self.filters)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(vec![Hook::TcEgress])
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetCorrupt as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("corrupted", c.injected), ("corrupted_bytes", c.injected_bytes)]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
