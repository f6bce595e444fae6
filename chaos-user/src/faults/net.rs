//! What every packet fault shares: its filters (the flags and the kernel's `NetMatch`), and the
//! hooks and backends its directions need.

use std::{fmt, path::PathBuf};

use chaos_common::{
    Action, Counters, Rule,
    net::{
        DIR_EGRESS, DIR_INGRESS, NetMatch, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
        prefix_masks, v4_mapped, v6_halves,
    },
    ppm_to_threshold,
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use ipnet::IpNet;

use super::{Fault, Hook};
use crate::{cli, error::Result, probe::Backend, usage};

/// A packet fault that does one thing to a share of the matching packets, sent or received
/// (duplicate, corrupt): its kind, its kernel action and its words. Such a kind is this table and
/// its help.
#[derive(Debug)]
pub struct PercentAction {
    /// As in fault files: "net.duplicate".
    pub kind: &'static str,
    pub action: Action,
    /// "duplicate", for descriptions.
    pub verb: &'static str,
    /// The report's names for the count, the wire segments and the bytes of the packets it acted on.
    pub counters: [&'static str; 3],
    /// Counters of its own, by their names in the report.
    pub more: &'static [NamedCounter],
}

/// A counter by its name in a report, and how to read it.
pub type NamedCounter = (&'static str, fn(&Counters) -> u64);

/// The flags of a [`PercentAction`] fault.
#[derive(Args, Debug)]
pub struct PercentArgs {
    /// Share of the matching packets to act on, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
    #[command(flatten)]
    pub scope: NetScopeArgs,
}

/// A [`PercentAction`] fault as asked for.
#[derive(Debug)]
pub struct PercentFault {
    pub what: &'static PercentAction,
    pub ppm: u32,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl PercentFault {
    /// Builds the fault from its flags ([`PercentArgs`]).
    pub fn build(what: &'static PercentAction, m: &ArgMatches) -> Result<Box<dyn Fault>> {
        let a = PercentArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
        Ok(Box::new(PercentFault::new(what, a)))
    }

    pub fn new(what: &'static PercentAction, a: PercentArgs) -> PercentFault {
        PercentFault { what, ppm: a.percent, filters: a.scope.filters.into(), netns: a.scope.netns }
    }
}

impl Fault for PercentFault {
    fn kind(&self) -> &'static str {
        self.what.kind
    }

    fn describe(&self) -> String {
        format!("{} {} of {}", self.what.verb, super::percent(self.ppm), self.filters)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs_at_tc()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(self.filters.hooks_at_tc())
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = self.what.action as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        let [n, segs, bytes] = self.what.counters;
        let mut report = vec![(n, c.injected), (segs, c.injected_segs), (bytes, c.injected_bytes)];
        report.extend(self.what.more.iter().map(|(name, read)| (*name, read(c))));
        report
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}

/// Where a packet fault applies, the flags every packet fault takes: its filters, and network
/// namespaces beyond the target's own.
#[derive(Args, Debug, Clone)]
pub struct NetScopeArgs {
    #[command(flatten)]
    pub filters: NetFilterArgs,
    /// Also attach device programs in this network namespace (a file such as /run/netns/NAME);
    /// by default, the namespaces of the target's processes.
    #[arg(long, value_name = "FILE")]
    pub netns: Vec<PathBuf>,
}

/// The packet filters every packet fault takes.
#[derive(Args, Debug, Clone)]
pub struct NetFilterArgs {
    /// Which packets of the target: sent, received, or both.
    #[arg(long, value_enum, default_value_t = Direction::Egress)]
    pub direction: Direction,
    /// Only this protocol (icmp covers ICMPv6 too).
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Only packets whose remote port is N, or in N-M (destination when sending, source when receiving).
    #[arg(long, value_name = "N[-M]", value_parser = cli::parse_port_range)]
    pub port: Option<(u16, u16)>,
    /// Only packets whose local port is N, or in N-M.
    #[arg(long, value_name = "N[-M]", value_parser = cli::parse_port_range)]
    pub local_port: Option<(u16, u16)>,
    /// Only packets whose remote address is in CIDR (IPv4 or IPv6; a bare address means /32 or /128).
    #[arg(long, value_name = "CIDR", value_parser = cli::parse_cidr)]
    pub peer: Option<IpNet>,
    /// Only TCP packets with any of these flags set, e.g. `syn` (connection setup fails while
    /// established connections live) or `syn,fin`.
    #[arg(long, value_name = "FLAG,...", value_delimiter = ',', value_enum)]
    pub tcp_flags: Vec<TcpFlag>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcpFlag {
    Syn,
    Ack,
    Fin,
    Rst,
}

impl TcpFlag {
    fn bit(self) -> u8 {
        match self {
            TcpFlag::Syn => TCP_SYN,
            TcpFlag::Ack => TCP_ACK,
            TcpFlag::Fin => TCP_FIN,
            TcpFlag::Rst => TCP_RST,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Egress,
    Ingress,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// Which packets a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetFilters {
    /// `DIR_EGRESS | DIR_INGRESS` bits.
    pub directions: u8,
    /// `PROTO_*`; `PROTO_ANY` for all.
    pub proto: u8,
    /// The remote end's port range (destination on egress, source on ingress).
    pub port: Option<(u16, u16)>,
    pub local_port: Option<(u16, u16)>,
    /// The remote end's address.
    pub peer: Option<IpNet>,
    /// `TCP_*` bits: only TCP packets with any of them; 0: no flag filter.
    pub tcp_flags: u8,
}

impl From<NetFilterArgs> for NetFilters {
    fn from(a: NetFilterArgs) -> NetFilters {
        NetFilters {
            directions: match a.direction {
                Direction::Egress => DIR_EGRESS,
                Direction::Ingress => DIR_INGRESS,
                Direction::Both => DIR_EGRESS | DIR_INGRESS,
            },
            proto: match a.proto {
                None => PROTO_ANY,
                Some(Proto::Tcp) => PROTO_TCP,
                Some(Proto::Udp) => PROTO_UDP,
                Some(Proto::Icmp) => PROTO_ICMP,
            },
            port: a.port,
            local_port: a.local_port,
            peer: a.peer,
            tcp_flags: a.tcp_flags.iter().fold(0, |m, f| m | f.bit()),
        }
    }
}

impl NetFilters {
    pub fn to_match(&self) -> NetMatch {
        let mut m = NetMatch { directions: self.directions, proto: self.proto, tcp_flags: self.tcp_flags, ..Default::default() };
        (m.remote_port_lo, m.remote_port_hi) = self.port.unwrap_or((0, 0));
        (m.local_port_lo, m.local_port_hi) = self.local_port.unwrap_or((0, 0));
        if let Some(net) = self.peer {
            let ((hi, lo), prefix) = match net {
                IpNet::V4(n) => (v4_mapped(n.network().octets()), 96 + n.prefix_len()),
                IpNet::V6(n) => (v6_halves(n.network().octets()), n.prefix_len()),
            };
            let (mh, ml) = prefix_masks(prefix);
            (m.peer_hi, m.peer_lo, m.peer_mask_hi, m.peer_mask_lo) = (hi & mh, lo & ml, mh, ml);
        }
        m
    }

    /// Refuses ingress for a fault that acts at TC egress only (`kind`, and why).
    pub fn egress_only(&self, kind: &str, why: &str) -> Result<()> {
        if self.directions & DIR_INGRESS != 0 {
            return Err(usage!("{kind} acts on sent packets only ({why}): use --direction egress, or put the fault on the sender"));
        }
        Ok(())
    }

    /// The hooks the directions need.
    pub fn hooks(&self) -> Vec<Hook> {
        let mut h = Vec::new();
        if self.directions & DIR_EGRESS != 0 {
            h.push(Hook::TcEgress);
        }
        if self.directions & DIR_INGRESS != 0 {
            h.push(Hook::CgroupIngress);
        }
        h
    }

    /// The hooks of a fault that changes packets: received ones at TC ingress, before the stack
    /// checks them, for the target whose socket they are for (`cgroup_skb/ingress` can only pass
    /// or drop).
    pub fn hooks_at_tc(&self) -> Vec<Hook> {
        self.hooks().into_iter().map(|h| if h == Hook::CgroupIngress { Hook::TcIngress } else { h }).collect()
    }

    /// The backends [`NetFilters::hooks_at_tc`] needs.
    pub fn needs_at_tc(&self) -> Vec<&'static [Backend]> {
        let mut n: Vec<&'static [Backend]> = vec![&[Backend::Tcx, Backend::TcNetlink]];
        if self.directions & DIR_INGRESS != 0 {
            n.push(&[Backend::TcIngressSocket]);
        }
        n
    }

    /// The backends the directions need.
    pub fn needs(&self) -> Vec<&'static [Backend]> {
        let mut n: Vec<&'static [Backend]> = Vec::new();
        if self.directions & DIR_EGRESS != 0 {
            n.push(&[Backend::Tcx, Backend::TcNetlink]);
        }
        if self.directions & DIR_INGRESS != 0 {
            n.push(&[Backend::CgroupSkb]);
        }
        n
    }
}

impl fmt::Display for NetFilters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.directions {
            DIR_EGRESS => "egress",
            DIR_INGRESS => "ingress",
            _ => "egress+ingress",
        };
        let proto = match self.proto {
            PROTO_TCP => " tcp",
            PROTO_UDP => " udp",
            PROTO_ICMP => " icmp",
            _ => "",
        };
        write!(f, "{dir}{proto} packets")?;
        if let Some(p) = self.peer {
            write!(f, " to/from {p}")?;
        }
        let range = |(lo, hi): (u16, u16)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") };
        if let Some(p) = self.port {
            write!(f, ", remote port {}", range(p))?;
        }
        if let Some(p) = self.local_port {
            write!(f, ", local port {}", range(p))?;
        }
        if self.tcp_flags != 0 {
            let names: Vec<&str> = [(TCP_SYN, "syn"), (TCP_ACK, "ack"), (TCP_FIN, "fin"), (TCP_RST, "rst")]
                .iter()
                .filter(|(b, _)| self.tcp_flags & b != 0)
                .map(|(_, n)| *n)
                .collect();
            write!(f, " with TCP flag {}", names.join("|"))?;
        }
        Ok(())
    }
}

