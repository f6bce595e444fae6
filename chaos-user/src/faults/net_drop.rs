//! `net.drop`: lose packets as a lossy wire would. Egress at TC (the sender's stack is told the
//! packet left: TCP retransmits, UDP sees no error), ingress at `cgroup_skb` before the socket.

use std::{fmt, path::PathBuf};

use chaos_common::{
    Action, Counters, Rule,
    net::{DIR_EGRESS, DIR_INGRESS, NetMatch, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, prefix_masks, v4_mapped, v6_halves},
    ppm_to_threshold,
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use ipnet::IpNet;

use super::{Fault, Hook, Kind};
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
    Ok(Box::new(NetDrop { ppm: a.percent, filters: a.filters.into(), netns: a.netns }))
}

#[derive(Args, Debug)]
pub struct NetDropArgs {
    /// Probability of dropping a matching packet, 0-100 (decimals allowed).
    #[arg(long, value_parser = cli::parse_percent, value_name = "P")]
    pub percent: u32,
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
        }
    }
}

impl NetFilters {
    pub fn to_match(&self) -> NetMatch {
        let mut m = NetMatch { directions: self.directions, proto: self.proto, ..Default::default() };
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
        Ok(())
    }
}

#[derive(Debug)]
pub struct NetDrop {
    /// Probability in parts per million.
    pub ppm: u32,
    pub filters: NetFilters,
    pub netns: Vec<PathBuf>,
}

impl Fault for NetDrop {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        format!("drop {} of {}", super::percent(self.ppm), self.filters)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        self.filters.needs()
    }

    fn hooks(&self, _available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(self.filters.hooks())
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        rule.action = Action::NetDrop as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.net = self.filters.to_match();
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![
            ("dropped", c.injected),
            ("dropped_segs", c.injected_segs),
            ("dropped_bytes", c.injected_bytes),
            ("dropped_fragments", c.fragments),
        ]
    }

    fn netns(&self) -> &[PathBuf] {
        &self.netns
    }
}
