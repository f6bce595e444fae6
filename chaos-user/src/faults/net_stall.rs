//! `net.stall`: every matching flow goes silent after it has carried N bytes of payload: the
//! half-dead connection that only timeouts catch (a qdisc cannot do this: it does not know flows
//! by their history). Flows are tracked in an LRU map by protocol, remote address and both ports;
//! with `--direction both` a flow stalls both ways at once, its bytes counted in both directions.

use std::path::PathBuf;

use chaos_common::{Action, Counters, MAX_FLOWS, PPM_ONE, Rule, ppm_to_threshold};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, Hook, Kind, net::{NetFilters, NetScopeArgs}, net_rate::parse_size};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.stall", family: "net", verb: "stall", command, build };

fn command() -> clap::Command {
    NetStallArgs::augment_args(clap::Command::new("stall"))
        .about("Make each matching flow go silent after it carried some bytes: a half-dead connection.")
        .after_help(format!(
            "Payload bytes (after the TCP or UDP header) are counted per flow (protocol, remote address, \
             both ports); once a flow has carried --after-bytes, each of its later packets is lost like \
             on a dead wire, pure ACKs included, until the fault ends. Up to {MAX_FLOWS} flows are \
             tracked; the least recently used are forgotten first.\n\n\
             Examples:\n  chaos net stall --cgroup web --after-bytes 64kb --proto tcp --port 5432\n  \
             chaos net stall --pid 4242 --after-bytes 1mb --direction both"
        ))
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetStallArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    Ok(Box::new(NetStall { after: a.after_bytes, filters: a.scope.filters.into(), netns: a.scope.netns }))
}

#[derive(Args, Debug)]
pub struct NetStallArgs {
    /// Payload bytes a flow carries before it goes silent (e.g. 4096, 64kb, 1mb).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub after_bytes: u64,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

#[derive(Debug)]
pub struct NetStall {
    pub after: u64,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetStall {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!("stall every flow of {} after {} bytes of payload", self.filters, self.after)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(self.filters.hooks())
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetStall as u32;
        rule.threshold = ppm_to_threshold(PPM_ONE);
        rule.net = self.filters.to_match();
        rule.net_action.burst_ns = self.after;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("dropped", c.injected), ("dropped_segs", c.injected_segs), ("dropped_bytes", c.injected_bytes)]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
