//! `net.duplicate`: send a share of the target's packets twice (netem's `duplicate P`). The TC
//! program clones the packet out of the same device; the copy carries no socket, so it has no
//! cgroup and is never copied again.

use std::path::PathBuf;

use chaos_common::{Action, Counters, Rule, ppm_to_threshold};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, Hook, Kind, net::{NetFilterArgs, NetFilters}};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.duplicate", family: "net", verb: "duplicate", command, build };

fn command() -> clap::Command {
    NetDuplicateArgs::augment_args(clap::Command::new("duplicate"))
        .about("Send packets twice (netem's duplicate, for one cgroup).")
        .after_help(
            "Examples:\n  chaos net duplicate --cgroup web --percent 5\n  \
             chaos net duplicate --pid 4242 --percent 50 --proto udp --port 5353",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetDuplicateArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters: NetFilters = a.filters.into();
    filters.egress_only(KIND.name, "copies are made where the packet leaves the target's namespace")?;
    Ok(Box::new(NetDuplicate { ppm: a.percent, filters, netns: a.netns }))
}

#[derive(Args, Debug)]
pub struct NetDuplicateArgs {
    /// Probability of duplicating a matching packet, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
    #[command(flatten)]
    pub filters: NetFilterArgs,
    /// Also attach device programs in this network namespace (a file such as /run/netns/NAME).
    #[arg(long, value_name = "FILE")]
    pub netns: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct NetDuplicate {
    pub ppm: u32,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetDuplicate {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!("duplicate {} of {}", super::percent(self.ppm), self.filters)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(vec![Hook::TcEgress])
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetDuplicate as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("duplicated", c.injected), ("duplicated_segs", c.injected_segs), ("duplicated_bytes", c.injected_bytes)]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
