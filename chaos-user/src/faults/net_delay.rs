//! `net.delay`: hold sent packets back, as netem's `delay D [J]` does, but for one cgroup. The TC
//! program gives each selected packet an Earliest Departure Time (`skb->tstamp`), and sch_fq, the
//! device's root qdisc, holds it until then. The session puts fq there if the device has the
//! kernel's default qdisc, journals it, and restores the default at the end (session/qdisc.rs).

use std::{path::PathBuf, time::Duration};

use chaos_common::{Action, Counters, Rule, net::DelayTable, ppm_to_threshold};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, FqNeed, Hook, Kind, delay_table, net::{NetFilters, NetScopeArgs}};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.delay", family: "net", verb: "delay", command, build };

/// A table value reaches at most this many standard deviations (i16::MAX over netem's scale of
/// 8192), so a delay with a distribution is at most this many jitters above the delay.
const DEVIATIONS: u32 = 4;

/// The longest delay (plus jitter) a rule may set: departure times further ahead are taken for
/// another clock's timestamps by the kernel program (`chaos_common::net::departure`).
pub const MAX_DELAY: Duration = Duration::from_secs(60);

fn command() -> clap::Command {
    NetDelayArgs::augment_args(clap::Command::new("delay"))
        .about("Delay sent packets (netem's delay, for one cgroup), by departure times that sch_fq honours.")
        .after_help(
            "Needs sch_fq (CONFIG_NET_SCH_FQ) as the root qdisc of the target's devices: chaos puts it \
             there in place of the kernel's default qdisc (noqueue, pfifo_fast, fq_codel; under a \
             multi-queue device's mq, fq on each queue) and restores the default when the fault ends, however chaos ends; --keep-qdisc refuses instead. fq keeps \
             each flow in departure-time order, so jitter reorders packets within a flow, as netem does.\n\n\
             Examples:\n  chaos net delay --cgroup /system.slice/payments.service --delay 2s --for 5m\n  \
             chaos net delay --pid 4242 --delay 100ms --jitter 20ms --proto tcp --port 5432\n  \
             chaos net delay --cgroup web --delay 60ms --jitter 20ms --distribution normal",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetDelayArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters: NetFilters = a.scope.filters.into();
    filters.egress_only(KIND.name, "a delay needs a queue, and a cgroup's received packets have none of their own")?;
    let table = match a.distribution.as_deref() {
        None | Some("uniform") => None,
        Some(name) if a.jitter.is_zero() => {
            return Err(usage!("--distribution {name} shapes the jitter: give --jitter too (the spread, one standard deviation)"));
        }
        Some(name) => Some((name.to_string(), delay_table::load(name)?)),
    };
    let longest = if table.is_some() { a.delay + DEVIATIONS * a.jitter } else { a.delay + a.jitter };
    if longest > MAX_DELAY {
        return Err(usage!("the longest delay this sets is {longest:?} (--delay plus {} --jitter): at most {MAX_DELAY:?}", if table.is_some() { "4 x" } else { "" }));
    }
    if a.delay.is_zero() && a.jitter.is_zero() {
        return Err(usage!("--delay 0 with no --jitter delays nothing: give a delay such as 100ms"));
    }
    Ok(Box::new(NetDelay { delay: a.delay, jitter: a.jitter, table, ppm: a.percent, keep_qdisc: a.keep_qdisc, filters, netns: a.scope.netns }))
}

#[derive(Args, Debug)]
pub struct NetDelayArgs {
    /// The added delay (e.g. 100ms, 2s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// The delay varies uniformly within plus or minus this (netem's `delay D J`); with
    /// --distribution, this is the standard deviation.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub jitter: Duration,
    /// How the jitter is distributed: uniform (the default), normal, pareto, paretonormal (netem's
    /// tables, from iproute2's files), or the path of a .dist table made with iproute2's maketable.
    #[arg(long, value_name = "NAME|FILE")]
    pub distribution: Option<String>,
    /// Delay this share of the matching packets, 0-100.
    #[arg(long, value_parser = cli::parse_percent, value_name = "P", default_value = "100")]
    pub percent: u32,
    /// Refuse to change a device's root qdisc: the devices must already have sch_fq.
    #[arg(long)]
    pub keep_qdisc: bool,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

#[derive(Debug)]
pub struct NetDelay {
    pub delay: Duration,
    pub jitter: Duration,
    /// The jitter's distribution, by name, when not uniform.
    pub table: Option<(String, DelayTable)>,
    pub ppm: u32,
    pub keep_qdisc: bool,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetDelay {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let jitter = match &self.table {
            _ if self.jitter.is_zero() => String::new(),
            None => format!(" ± {}", humantime::format_duration(self.jitter)),
            Some((name, _)) => format!(" ± {} ({name})", humantime::format_duration(self.jitter)),
        };
        let share = if self.ppm == chaos_common::PPM_ONE { String::new() } else { format!("{} of ", super::percent(self.ppm)) };
        format!("delay {share}{} by {}{jitter}", self.filters, humantime::format_duration(self.delay))
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        let mut n = self.filters.needs();
        n.push(&[Backend::SchFq]);
        n
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(vec![Hook::TcEgress])
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetDelay as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        rule.net_action.delay_ns = self.delay.as_nanos() as u64;
        rule.net_action.jitter_ns = self.jitter.as_nanos() as u64;
        rule.net_action.table = self.table.is_some() as u32;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("delayed", c.injected), ("delayed_segs", c.injected_segs), ("delayed_bytes", c.injected_bytes)]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }

    fn fq(&self) -> Option<FqNeed> {
        let spread = if self.table.is_some() { DEVIATIONS * self.jitter } else { self.jitter };
        Some(FqNeed { max_delay: self.delay + spread, keep_qdisc: self.keep_qdisc })
    }

    fn delay_table(&self) -> Option<&DelayTable> {
        self.table.as_ref().map(|(_, t)| t)
    }
}
