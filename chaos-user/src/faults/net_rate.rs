//! `net.rate`: limit the rate of the target's sent packets, as netem's `rate` or a policer does,
//! for one cgroup. Shaping (the default) gives each packet a departure time at the rate, which
//! sch_fq honours (like `net.delay`, it needs fq on the devices); `--police` drops what runs more
//! than `--burst` ahead of the rate instead (a token bucket), needs no qdisc, and works on received
//! packets too. Both keep one "next free departure time" per rule, shared by every CPU.

use std::{path::PathBuf, time::Duration};

use chaos_common::{
    Action, Counters, PPM_ONE, Rule,
    net::{DIR_INGRESS, transmit_ns},
    ppm_to_threshold,
};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, FqNeed, Hook, Kind, net::{NetFilters, NetScopeArgs}};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.rate", family: "net", verb: "rate", command, build };

/// The horizon a shaped queue may build up to: sch_fq holds packets up to its horizon ahead.
const SHAPING_HORIZON: Duration = Duration::from_secs(10);

fn command() -> clap::Command {
    NetRateArgs::augment_args(clap::Command::new("rate"))
        .about("Limit the rate of sent packets: shape them (netem's rate, by departure times) or police them (drop the excess).")
        .after_help(
            "Rates as tc writes them: 1mbit, 500kbit, 10mbps (bytes), 1gibit; a bare number is bits per \
             second. The rate counts whole packets as the kernel hands them to chaos (a GSO packet's \
             bytes at once).\n\n\
             Shaping needs sch_fq as the root qdisc of the target's devices (CONFIG_NET_SCH_FQ); chaos \
             puts it there as for net delay. --police needs no qdisc, drops like a lossy wire, and can \
             act on received packets (--direction ingress|both).\n\n\
             Examples:\n  chaos net rate --cgroup web --rate 1mbit\n  \
             chaos net rate --pid 4242 --rate 20mbit --police --burst 64kb --direction both",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetRateArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let filters: NetFilters = a.scope.filters.into();
    if !a.police {
        filters.egress_only(KIND.name, "shaping needs a queue, and a cgroup's received packets have none of their own; --police works both ways")?;
    }
    if a.burst.is_some() && !a.police {
        return Err(usage!("--burst applies to --police (shaping sends at the rate, with no burst)"));
    }
    // A policer's default bucket: 10 ms at the rate, and at least two full-size frames.
    let burst = a.burst.unwrap_or_else(|| (a.rate / 100).max(2 * 1514));
    Ok(Box::new(NetRate { rate: a.rate, police: a.police, burst, keep_qdisc: a.keep_qdisc, filters, netns: a.scope.netns }))
}

#[derive(Args, Debug)]
pub struct NetRateArgs {
    /// The rate (e.g. 1mbit, 500kbit, 10mbps).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: u64,
    /// Drop what exceeds the rate (beyond --burst) instead of shaping it.
    #[arg(long)]
    pub police: bool,
    /// With --police: how many bytes may pass at once above the rate (e.g. 32kb); default 10 ms
    /// worth, at least two 1514-byte frames.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub burst: Option<u64>,
    /// Shaping: refuse to change a device's root qdisc (the devices must already have sch_fq).
    #[arg(long)]
    pub keep_qdisc: bool,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

#[derive(Debug)]
pub struct NetRate {
    /// Bytes per second.
    pub rate: u64,
    pub police: bool,
    /// Bytes.
    pub burst: u64,
    pub keep_qdisc: bool,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetRate {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let how = if self.police { format!("police (drop beyond a {} B burst)", self.burst) } else { "shape".into() };
        format!("{how} {} to {}", self.filters, format_rate(self.rate))
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        let mut n = self.filters.needs();
        if !self.police {
            n.push(&[Backend::SchFq]);
        }
        n
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(self.filters.hooks())
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = if self.police { Action::NetPolice } else { Action::NetShape } as u32;
        rule.threshold = ppm_to_threshold(PPM_ONE);
        rule.net = self.filters.to_match();
        rule.net_action.rate_bytes = self.rate;
        rule.net_action.burst_ns = transmit_ns(self.burst, self.rate);
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        if self.police {
            vec![("dropped", c.injected), ("dropped_segs", c.injected_segs), ("dropped_bytes", c.injected_bytes)]
        } else {
            vec![("shaped", c.injected), ("shaped_segs", c.injected_segs), ("shaped_bytes", c.injected_bytes)]
        }
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }

    fn fq(&self) -> Option<FqNeed> {
        (!self.police && self.filters.directions & DIR_INGRESS == 0)
            .then_some(FqNeed { max_delay: SHAPING_HORIZON, keep_qdisc: self.keep_qdisc })
    }
}

/// A rate as tc writes it, in bytes per second: `bit`, `kbit`, `mbit`, `gbit`, `tbit` (and the
/// binary `kibit`, `mibit`, `gibit`) are bits per second, `bps`, `kbps`, `mbps`, `gbps` bytes per
/// second; a bare number is bits per second.
pub fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("'{s}' is not a rate; give one such as 1mbit, 500kbit or 10mbps");
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bits_per_unit = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "kibit" => 1024.0,
        "mibit" => 1024.0 * 1024.0,
        "gibit" => 1024.0 * 1024.0 * 1024.0,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return Err(bad()),
    };
    let bytes = n * bits_per_unit / 8.0;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("'{s}' is below one byte per second"));
    }
    if bytes > 1e12 {
        return Err(format!("'{s}' is above 8 Tbit/s"));
    }
    Ok(bytes.round() as u64)
}

/// A size as tc writes it, in bytes: `b`, `kb`/`k`, `mb`/`m` (1024-based); a bare number is bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("'{s}' is not a size; give one such as 1500b, 32kb or 1mb");
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 && v <= 1 << 30 => Ok(v),
        _ => Err(format!("'{s}': give a size from 1 byte to 1 GB")),
    }
}

/// Bytes per second as tc would print the rate.
pub fn format_rate(bytes: u64) -> String {
    let bits = bytes as f64 * 8.0;
    if bits >= 1e9 {
        format!("{}gbit", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{}mbit", bits / 1e6)
    } else if bits >= 1e3 {
        format!("{}kbit", bits / 1e3)
    } else {
        format!("{bits}bit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_tc_units() {
        assert_eq!(parse_rate("1mbit"), Ok(125_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("10mbps"), Ok(10_000_000));
        assert_eq!(parse_rate("1gibit"), Ok(134_217_728));
        assert_eq!(parse_rate("8000"), Ok(1000), "a bare number is bits per second");
        assert_eq!(parse_rate("1.5Mbit"), Ok(187_500));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1mbitz").is_err());
        assert!(parse_rate("4bit").is_err(), "below a byte per second");
        assert_eq!(format_rate(125_000), "1mbit");
    }

    #[test]
    fn sizes_in_tc_units() {
        assert_eq!(parse_size("1500b"), Ok(1500));
        assert_eq!(parse_size("32kb"), Ok(32 * 1024));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.5kb").is_err());
        assert!(parse_size("5gb").is_err());
    }
}
