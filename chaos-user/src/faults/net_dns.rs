//! `net.dns`: the name service fails for the target alone. A matching DNS query (UDP) that the
//! target sends is answered by the kernel, at TC egress, with the chosen response code, or lost
//! (`timeout`); other queries, and everyone else's, reach the server. The kernel side is
//! `chaos-ebpf/src/net/dns.rs`; which names match is decided by `chaos_common::dns`.

use std::path::PathBuf;

use chaos_common::{
    Action, Counters, Rule,
    dns::{self, DnsMatch},
    net::{DIR_EGRESS, PROTO_ANY, PROTO_UDP},
    ppm_to_threshold,
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};

use super::{
    Fault, Hook, Kind,
    net::{NetFilters, NetScopeArgs},
};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "net.dns", family: "net", verb: "dns", command, build };

fn command() -> clap::Command {
    NetDnsArgs::augment_args(clap::Command::new("dns"))
        .about("Answer the target's DNS queries with an error, or not at all (the name service fails).")
        .after_help(
            "The kernel answers a matching query as it leaves the target (UDP, by default to port 53): \
             the resolver gets a response from the server's address with the chosen code, or, with \
             --rcode timeout, nothing. Other names, and other processes, are untouched. Queries over \
             TCP (DNS over TCP, DoT, DoH) are not answered; neither are queries a caching daemon \
             outside the target's cgroup (systemd-resolved, nscd, dnsmasq) sends on its behalf: put \
             the fault on that daemon's cgroup, or target the port the application itself queries.\n\n\
             Examples:\n  chaos net dns --cgroup cart --rcode servfail --name '*.payments.internal'\n  \
             chaos net dns --pid 4242 --rcode timeout --percent 50\n  \
             chaos net dns --cgroup web --rcode nxdomain --name api.example.com --port 5353",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = NetDnsArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let mut filters: NetFilters = a.scope.filters.into();
    filters.egress_only(KIND.name, "queries are answered as they leave the target")?;
    if filters.proto != PROTO_ANY && filters.proto != PROTO_UDP {
        return Err(usage!("net.dns answers queries sent over UDP: drop --proto, or use --proto udp"));
    }
    if filters.tcp_flags != 0 {
        return Err(usage!("net.dns answers queries sent over UDP: --tcp-flags does not apply"));
    }
    filters.proto = PROTO_UDP;
    filters.directions = DIR_EGRESS;
    filters.port.get_or_insert((dns::PORT, dns::PORT));
    let mut dns = DnsMatch::any(a.rcode.code());
    if let Some(pattern) = &a.name {
        let (below, base) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None if pattern == "*" => (false, ""),
            None => (false, pattern.as_str()),
        };
        if base.contains('*') {
            return Err(usage!("--name {pattern}: a wildcard is allowed only as the first label ('*.example.com')"));
        }
        if !base.is_empty() {
            let mut wire = [0u8; dns::NAME_MAX];
            let len = dns::wire_name(base, &mut wire).ok_or_else(|| {
                usage!("--name {pattern}: not a DNS name (labels of 1-63 bytes separated by dots, 253 characters at most)")
            })?;
            dns = DnsMatch::for_name(&wire[..len as usize], below, a.rcode.code());
        }
    }
    Ok(Box::new(NetDns { ppm: a.percent, rcode: a.rcode, name: a.name, dns, filters, netns: a.scope.netns }))
}

#[derive(Args, Debug)]
pub struct NetDnsArgs {
    /// The answer: a response with this code, or (timeout) none at all.
    #[arg(long, value_enum)]
    pub rcode: Rcode,
    /// Only queries for this name (case does not matter); `*.NAME` for every name below NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Share of the matching queries to answer, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P", default_value = "100")]
    pub percent: u32,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rcode {
    /// The server failed (glibc: EAI_AGAIN, "Temporary failure in name resolution").
    Servfail,
    /// The name does not exist (glibc: EAI_NONAME).
    Nxdomain,
    /// The server refuses to answer.
    Refused,
    /// No answer: the resolver waits out its timeout and retries.
    Timeout,
}

impl Rcode {
    fn code(self) -> u8 {
        match self {
            Rcode::Servfail => dns::RCODE_SERVFAIL,
            Rcode::Nxdomain => dns::RCODE_NXDOMAIN,
            Rcode::Refused => dns::RCODE_REFUSED,
            Rcode::Timeout => dns::TIMEOUT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Rcode::Servfail => "SERVFAIL",
            Rcode::Nxdomain => "NXDOMAIN",
            Rcode::Refused => "REFUSED",
            Rcode::Timeout => "no answer",
        }
    }
}

#[derive(Debug)]
pub struct NetDns {
    pub ppm: u32,
    pub rcode: Rcode,
    pub name: Option<String>,
    pub dns: DnsMatch,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetDns {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let names = self.name.as_deref().map(|n| format!(" for {n}")).unwrap_or_default();
        format!("answer {} of DNS queries{names} with {} ({})", super::percent(self.ppm), self.rcode.name(), self.filters)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(vec![Hook::TcEgress])
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetDns as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        rule.dns = self.dns;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        match self.rcode {
            Rcode::Timeout => vec![("queries_dropped", c.injected)],
            _ => vec![("queries_answered", c.injected)],
        }
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
