//! `net.drop`: lose packets as a lossy wire would. Egress at TC (the sender's stack is told the
//! packet left: TCP retransmits, UDP sees no error), ingress at `cgroup_skb` before the socket.

use std::path::PathBuf;

use chaos_common::{Action, Counters, PPM_ONE, Rule, loss::LossParams, ppm_to_threshold};
use clap::{ArgMatches, Args, FromArgMatches};

pub use super::net::{NetFilters, NetScopeArgs};
use super::{Fault, Hook, Kind, loss_model};
use crate::{cli, error::Result, probe::Backend};

pub const KIND: Kind = Kind { name: "net.drop", family: "net", verb: "drop", command, build };

fn command() -> clap::Command {
    NetDropArgs::augment_args(clap::Command::new("drop"))
        .about("Drop packets as a lossy wire would: senders see no error, TCP retransmits.")
        .after_help(
            "--percent applies to packets as the kernel hands them to chaos: on lo, veth and TSO devices \
             one TCP packet (a GSO packet) can be up to 64 KB, several segments on the wire; the summary \
             counts both (seen/matched/selected/dropped and their _segs). An IP datagram in fragments \
             is one decision.\n\n\
             Examples:\n  chaos net drop --cgroup /system.slice/api.service --percent 5\n  \
             chaos net drop --pid 4242 --percent 30 --direction both --proto tcp --port 443 --for 2m\n  \
             chaos net drop --cgroup web --percent 100 --peer 10.0.0.0/8 --proto udp --max-injections 50",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetDropArgs::from_arg_matches(m).map_err(|e| crate::usage!("{}", cli::one_line(&e)))?;
    let model = match (a.model, a.correlation) {
        (Some(m), _) => Some(m),
        (None, Some(c)) if c > 0 => Some(LossParams::random(ppm_to_netem(a.percent.unwrap_or(0)), ppm_to_netem(c))),
        _ => None,
    };
    let filters: NetFilters = a.scope.filters.into();
    Ok(Box::new(NetDrop { ppm: a.percent.unwrap_or(0), model, ecn: a.ecn, filters, netns: a.scope.netns }))
}

/// A probability in parts per million in netem's scale (`rint(p * UINT32_MAX)`, as tc sends it).
fn ppm_to_netem(ppm: u32) -> u32 {
    ((ppm.min(PPM_ONE) as u64 * u32::MAX as u64 + PPM_ONE as u64 / 2) / PPM_ONE as u64) as u32
}

#[derive(Args, Debug)]
pub struct NetDropArgs {
    /// Probability of dropping a matching packet, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P", required_unless_present = "model", conflicts_with = "model")]
    pub percent: Option<u32>,
    /// A loss model with tc-netem(8)'s meaning, in place of --percent: gemodel:P[,R[,1-H[,1-K]]]
    /// (Gilbert-Elliott) or state:P13[,P31[,P32[,P23[,P14]]]] (4-state), in percent. One model
    /// state per rule, shared by all CPUs.
    #[arg(long, value_name = "MODEL", value_parser = loss_model::parse_model)]
    pub model: Option<LossParams>,
    /// netem's (deprecated) loss correlation, 0-100, for compatibility: each draw is averaged with
    /// the previous one, which also lowers the loss rate well below --percent (netem's own
    /// algorithm, kept as is).
    #[arg(long, value_parser = cli::parse_percent, value_name = "C", requires = "percent")]
    pub correlation: Option<u32>,
    /// Mark ECN-capable packets Congestion Experienced instead of dropping them (netem's ecn);
    /// packets that are not ECN-capable are dropped. Received packets (--direction ingress) are
    /// marked at TC ingress, before the stack reads them, as a router on the way would have.
    #[arg(long)]
    pub ecn: bool,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

#[derive(Debug)]
pub struct NetDrop {
    /// Probability in parts per million (when there is no model).
    pub ppm: u32,
    /// A loss model that decides instead of `ppm`.
    pub model: Option<LossParams>,
    /// Mark ECN-capable packets instead of dropping them.
    pub ecn: bool,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetDrop {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let what = match &self.model {
            Some(m) => format!("drop {} by {}", self.filters, loss_model::describe(m)),
            None => format!("drop {} of {}", super::percent(self.ppm), self.filters),
        };
        if self.ecn { format!("{what} (ECN-capable ones marked CE instead)") } else { what }
    }

    // `--ecn` changes packets: received ones are marked where they still can be, at TC ingress.
    fn needs(&self) -> Vec<&'static [Backend]> {
        if self.ecn { self.filters.needs_at_tc() } else { self.filters.needs() }
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(if self.ecn { self.filters.hooks_at_tc() } else { self.filters.hooks() })
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetDrop as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        if let Some(m) = self.model {
            rule.loss = m;
        }
        rule.net_action.ecn = self.ecn as u32;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![
            ("dropped", c.injected),
            ("dropped_segs", c.injected_segs),
            ("dropped_bytes", c.injected_bytes),
            ("dropped_fragments", c.fragments),
            ("marked_ce", c.marked),
        ]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
