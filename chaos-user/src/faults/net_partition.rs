//! `net.partition`: cut the target off from a set of peers, both ways: the "shut down a node /
//! split the network" experiment. Shorthand for `net drop --percent 100 --direction both --peer
//! CIDR`; the same rule, the same counters.

use std::path::PathBuf;

use chaos_common::PPM_ONE;
use clap::{ArgMatches, Args, FromArgMatches};
use ipnet::IpNet;

use super::{Fault, Kind, net::NetFilters, net_drop::NetDrop};
use crate::{cli, error::Result, usage};

pub const KIND: Kind = Kind { name: "net.partition", family: "net", verb: "partition", command, build };

fn command() -> clap::Command {
    NetPartitionArgs::augment_args(clap::Command::new("partition"))
        .about("Cut the target off from peers, both ways (every packet to or from them is lost).")
        .after_help(
            "The same as `chaos net drop --percent 100 --direction both --peer CIDR`.\n\n\
             Examples:\n  chaos net partition --cgroup web --peer 10.0.2.0/24 --for 2m\n  \
             chaos net partition --pid 4242 --peer 10.0.0.7 --port 5432",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetPartitionArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters = NetFilters {
        directions: chaos_common::net::DIR_EGRESS | chaos_common::net::DIR_INGRESS,
        proto: chaos_common::net::PROTO_ANY,
        port: a.port,
        local_port: None,
        peer: Some(a.peer),
        tcp_flags: 0,
    };
    Ok(Box::new(Partition(NetDrop { ppm: PPM_ONE, model: None, ecn: false, filters, netns: a.netns })))
}

#[derive(Args, Debug)]
pub struct NetPartitionArgs {
    /// The peers the target loses (IPv4 or IPv6 CIDR; a bare address means /32 or /128).
    #[arg(long, value_name = "CIDR", value_parser = cli::parse_cidr)]
    pub peer: IpNet,
    /// Only packets whose remote port is N, or in N-M.
    #[arg(long, value_name = "N[-M]", value_parser = cli::parse_port_range)]
    pub port: Option<(u16, u16)>,
    /// Also attach device programs in this network namespace (a file such as /run/netns/NAME).
    #[arg(long, value_name = "FILE")]
    pub netns: Vec<PathBuf>,
}

/// A drop rule under its own name.
#[derive(Debug)]
pub struct Partition(NetDrop);

impl Fault for Partition {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!("partition: lose every packet to and from {}", self.0.filters.peer.map(|p| p.to_string()).unwrap_or_default())
    }

    fn needs(&self) -> Vec<&'static [crate::probe::Backend]> {
        self.0.needs()
    }

    fn hooks(&self, available: &[crate::probe::Backend]) -> Result<Vec<super::Hook>> {
        self.0.hooks(available)
    }

    fn fill(&self, rule: &mut chaos_common::Rule, hooks: &[super::Hook]) -> Result<()> {
        self.0.fill(rule, hooks)
    }

    fn report(&self, c: &chaos_common::Counters) -> Vec<(&'static str, u64)> {
        self.0.report(c)
    }

    fn netns(&self) -> &[PathBuf] {
        self.0.netns()
    }
}
