//! `net.reorder`: netem's `delay D reorder P`: P% of the matching packets are sent at once and the
//! rest are held back by D, so the ones sent at once overtake those held before them. A delay rule
//! for the other (100 - P)% under its own name; it needs sch_fq, as `net.delay` does.

use std::{path::PathBuf, time::Duration};

use chaos_common::{Counters, PPM_ONE, ppm_to_threshold};
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
             as net delay does. With --gap N, packets are held until N-1 have been, then the next is \
             sent at once with probability P (netem's `reorder P gap N`).\n\nExamples:\n  \
             chaos net reorder --cgroup web --percent 25 --delay 10ms\n  \
             chaos net reorder --cgroup web --percent 100 --gap 5 --delay 10ms",
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
    Ok(Box::new(Reorder { percent: a.percent, gap: a.gap, held }))
}

#[derive(Args, Debug)]
pub struct NetReorderArgs {
    /// Share of the matching packets sent at once, 0-100; the rest are held back by --delay.
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
    /// How long the other packets are held back (e.g. 10ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// netem's gap: packets are held until N-1 have been, then the next is sent at once with
    /// probability --percent, and the count starts again (`reorder P gap N`). 1: each packet is
    /// decided alone.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub gap: u32,
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
    /// netem's gap; 1: none.
    gap: u32,
    held: NetDelay,
}

impl Fault for Reorder {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let gap = if self.gap > 1 { format!(" after every {} held", self.gap - 1) } else { String::new() };
        format!(
            "reorder {}: {} sent at once{gap}, the rest held back {}",
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
        self.held.fill(rule, hooks)?;
        if self.gap > 1 {
            // Every matching packet reaches the kernel's delay arm, which counts and decides.
            rule.threshold = ppm_to_threshold(PPM_ONE);
            (rule.net_action.gap, rule.net_action.at_once_ppm) = (self.gap, self.percent);
        }
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        // With a gap every matching packet is selected, and those sent at once are not delayed.
        let at_once = if self.gap > 1 { c.selected.saturating_sub(c.injected) } else { c.matched.saturating_sub(c.selected) };
        vec![("held_back", c.injected), ("sent_at_once", at_once)]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.held.netns
    }

    fn fq(&self) -> Option<FqNeed> {
        self.held.fq()
    }
}
