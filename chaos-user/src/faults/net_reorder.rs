//! `net.reorder`: netem's `delay D reorder P`: P% of the matching packets are sent at once and the
//! rest are held back by D, so the ones sent at once overtake those held before them. A delay rule
//! for the other (100 - P)% under its own name; it needs sch_fq, as `net.delay` does.

use std::{path::PathBuf, time::Duration};

use chaos_common::{Counters, PPM_ONE};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, FqNeed, Kind, net::{NetFilters, NetScopeArgs}, net_delay::NetDelay};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.reorder", family: "net", verb: "reorder", command, build };

fn command() -> clap::Command {
    NetReorderArgs::augment_args(clap::Command::new("reorder"))
        .about("Reorder sent packets: send some at once and hold the rest back (netem's reorder).")
        .after_help(
            "--percent P of the matching packets leave at once, the others --delay later, so a packet \
             sent at once overtakes those held before it (netem's `delay D reorder P`). Needs sch_fq, \
             as net delay does.\n\nExample:\n  chaos net reorder --cgroup web --percent 25 --delay 10ms",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetReorderArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters: NetFilters = a.scope.filters.into();
    filters.egress_only(KIND.name, "reordering needs a queue, and a cgroup's received packets have none of their own")?;
    if a.delay.is_zero() || a.delay > super::net_delay::MAX_DELAY {
        return Err(usage!("--delay must be above 0 and at most {:?}", super::net_delay::MAX_DELAY));
    }
    let held = NetDelay {
        delay: a.delay,
        jitter: Duration::ZERO,
        table: None,
        ppm: PPM_ONE - a.percent,
        keep_qdisc: a.keep_qdisc,
        filters,
        netns: a.scope.netns,
    };
    Ok(Box::new(Reorder { percent: a.percent, held }))
}

#[derive(Args, Debug)]
pub struct NetReorderArgs {
    /// Share of the matching packets sent at once, 0-100; the rest are held back by --delay.
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
    /// How long the other packets are held back (e.g. 10ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Refuse to change a device's root qdisc: the devices must already have sch_fq.
    #[arg(long)]
    pub keep_qdisc: bool,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

/// A delay rule for the packets not sent at once.
#[derive(Debug)]
pub struct Reorder {
    /// Parts per million sent at once.
    percent: u32,
    held: NetDelay,
}

impl Fault for Reorder {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!(
            "reorder {}: {} sent at once, the rest held back {}",
            self.held.filters,
            super::percent(self.percent),
            humantime::format_duration(self.held.delay)
        )
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.held.needs()
    }

    fn hooks(&self, available: &[Backend]) -> Result<Vec<super::Hook>> {
        self.held.hooks(available)
    }

    fn fill(&self, rule: &mut chaos_common::Rule, hooks: &[super::Hook]) -> Result<()> {
        self.held.fill(rule, hooks)
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("held_back", c.injected), ("sent_at_once", c.matched.saturating_sub(c.selected))]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.held.netns
    }

    fn fq(&self) -> Option<FqNeed> {
        self.held.fq()
    }
}
