//! Packet faults on one cgroup: rules in `NET_RULES`, a `cgroup_skb` program per direction on the
//! target cgroup, and (for egress) the stealing TC program on every device of the namespaces the
//! target's processes use.

use std::{collections::BTreeSet, fmt, fs::File, mem::ManuallyDrop};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier,
        links::{FdLink, Link},
        tc::{SchedClassifierLink, TcAttachType, qdisc_add_clsact},
    },
};
use chaos_common::{
    net::{
        COUNTERS_MAP, DIR_EGRESS, DIR_INGRESS, ERRORS_MAP, NET_ERROR_KINDS, NetCounters, NetFault, NetRule,
        PROG_EGRESS, PROG_INGRESS, PROG_TC_STEAL, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RULES_MAP,
        prefix_masks, v4_mapped, v6_halves,
    },
    ppm_to_threshold,
};
use ipnet::IpNet;

use super::{Attached, AttachedDevice, Counters, Fault, Injection, RuleCounters, RunOptions};
use crate::{
    error::{Error, Result},
    probe::Backend,
    kernel::{
        Kernel,
        netdev::{self, Netns},
        state::{Record, TcFilter},
    },
    target::Cgroup,
};

/// Which packets a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetFilters {
    /// `DIR_EGRESS | DIR_INGRESS` bits.
    pub directions: u8,
    /// `PROTO_*`; `PROTO_ANY` for all.
    pub proto: u8,
    /// The remote end's port (destination on egress, source on ingress).
    pub port: Option<u16>,
    pub local_port: Option<u16>,
    /// The remote end's address.
    pub peer: Option<IpNet>,
}

impl Default for NetFilters {
    fn default() -> Self {
        NetFilters { directions: DIR_EGRESS, proto: PROTO_ANY, port: None, local_port: None, peer: None }
    }
}

impl NetFilters {
    fn fill(&self, r: &mut NetRule) {
        r.directions = self.directions;
        r.proto = self.proto;
        r.remote_port = self.port.unwrap_or(0);
        r.local_port = self.local_port.unwrap_or(0);
        if let Some(net) = self.peer {
            let ((hi, lo), prefix) = match net {
                IpNet::V4(n) => (v4_mapped(n.network().octets()), 96 + n.prefix_len()),
                IpNet::V6(n) => (v6_halves(n.network().octets()), n.prefix_len()),
            };
            let (mh, ml) = prefix_masks(prefix);
            (r.peer_hi, r.peer_lo, r.peer_mask_hi, r.peer_mask_lo) = (hi & mh, lo & ml, mh, ml);
        }
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
        if let Some(p) = self.port {
            write!(f, ", remote port {p}")?;
        }
        if let Some(p) = self.local_port {
            write!(f, ", local port {p}")?;
        }
        Ok(())
    }
}

/// What a packet fault does to the packets it selects. One impl per packet fault.
pub trait NetAction: fmt::Debug {
    /// The command, e.g. "net drop".
    fn name(&self) -> &'static str;
    fn fault(&self) -> NetFault;
    /// Fills the fault's own fields of the rule (probability, parameters).
    fn fill(&self, r: &mut NetRule);
    fn describe(&self) -> String;
}

/// `chaos net drop`: drop with a probability, as a lossy wire would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    /// Probability in parts per million.
    pub ppm: u32,
}

impl NetAction for Drop {
    fn name(&self) -> &'static str {
        "net drop"
    }
    fn fault(&self) -> NetFault {
        NetFault::Drop
    }
    fn fill(&self, r: &mut NetRule) {
        r.threshold = ppm_to_threshold(self.ppm);
    }
    fn describe(&self) -> String {
        format!("drop {}%", self.ppm as f64 / 10_000.0)
    }
}

/// A packet fault: an action and the packets it applies to.
#[derive(Debug)]
pub struct NetSpec<A: NetAction> {
    pub action: A,
    pub filters: NetFilters,
}

impl<A: NetAction> NetSpec<A> {
    pub fn rule(&self, deadline_ns: u64) -> NetRule {
        let mut r = NetRule { deadline_ns, fault: self.action.fault() as u8, ..Default::default() };
        self.filters.fill(&mut r);
        self.action.fill(&mut r);
        r
    }
}

impl<A: NetAction> Fault for NetSpec<A> {
    fn name(&self) -> &'static str {
        self.action.name()
    }

    fn describe(&self) -> String {
        format!("{} of {}", self.action.describe(), self.filters)
    }

    fn needs(&self) -> &'static [&'static [Backend]] {
        if self.filters.directions & DIR_EGRESS != 0 {
            &[&[Backend::CgroupSkb], &[Backend::Tcx, Backend::TcNetlink]]
        } else {
            &[&[Backend::CgroupSkb]]
        }
    }

    fn start(&self, target: &Cgroup, deadline_ns: u64, opts: &RunOptions, _available: &[Backend]) -> Result<Box<dyn Injection>> {
        let run_tag = loop {
            // Any nonzero upper 24 bits; the low byte carries the rule index.
            let t = rand_u32() & !0xff;
            if t != 0 {
                break t;
            }
        };
        let mut kernel = Kernel::load(run_tag, opts.log_packets)?;
        let mut rules: Array<_, NetRule> = Array::try_from(kernel.ebpf.map_mut(RULES_MAP).ok_or_else(no_map)?)
            .map_err(|e| Error::Other(e.into()))?;
        rules.set(0, self.rule(deadline_ns), 0).map_err(|e| Error::Other(e.into()))?;

        let mut inj = NetInjection {
            kernel,
            target: target.clone(),
            directions: self.filters.directions,
            explicit_netns: opts.netns.clone(),
            netns: Vec::new(),
            devices: Vec::new(),
            cgroup_links: Vec::new(),
            link_ids: Vec::new(),
            record: Record::for_self(),
            fault: self.action.fault(),
        };
        if inj.directions & DIR_EGRESS != 0 {
            // The stealer first, so no marked packet can pass before it is in place; then a
            // device-attach failure is reported before anything touches the target.
            inj.kernel.program::<SchedClassifier>(PROG_TC_STEAL, "TC classifier (sched_cls)")?;
            inj.attach_devices(true)?;
        }
        let cg = File::open(&target.path).map_err(|e| Error::Other(anyhow::anyhow!("opening {}: {e}", target.path.display())))?;
        for (dir, name, kind) in [
            (DIR_EGRESS, PROG_EGRESS, CgroupSkbAttachType::Egress),
            (DIR_INGRESS, PROG_INGRESS, CgroupSkbAttachType::Ingress),
        ] {
            if inj.directions & dir == 0 {
                continue;
            }
            let prog = inj.kernel.program::<CgroupSkb>(name, "cgroup_skb")?;
            // A cgroup link always coexists with other programs on the cgroup (link-based
            // attachment is multi-attach by nature; the kernel refuses the ALLOW_MULTI flag there).
            let id = prog.attach(&cg, kind, CgroupAttachMode::Single).map_err(|e| {
                Error::Other(anyhow::anyhow!("attaching {name} to {}: {}", target.path.display(), crate::error::chain(&e)))
            })?;
            let link: FdLink = prog.take_link(id).map_err(|e| Error::Other(e.into()))?.try_into().map_err(|e: aya::programs::links::LinkError| Error::Other(e.into()))?;
            if let Ok(info) = link.info() {
                inj.link_ids.push(info.id());
            }
            inj.cgroup_links.push(link);
        }
        Ok(Box::new(inj))
    }
}

fn no_map() -> Error {
    Error::Other(anyhow::anyhow!("the embedded kernel object lacks a map chaos needs"))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom(2) never fails for 4 bytes once the pool is initialised; fall back to the clock.
    // SAFETY: the buffer is valid for 4 bytes of writes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(1) << 8
    }
}

/// The stealing program on one device.
struct DeviceLink {
    netns_ino: u64,
    ifindex: u32,
    ifname: String,
    /// `Some` while attached; taken when detaching.
    link: Option<SchedClassifierLink>,
    /// Set for a netlink filter (it outlives the process and is recorded for the sweep).
    filter: Option<TcFilter>,
}

struct NetInjection {
    kernel: Kernel,
    target: Cgroup,
    directions: u8,
    explicit_netns: Vec<std::path::PathBuf>,
    netns: Vec<Netns>,
    devices: Vec<DeviceLink>,
    cgroup_links: Vec<FdLink>,
    link_ids: Vec<u32>,
    record: Record,
    fault: NetFault,
}

impl NetInjection {
    /// Attaches the stealer to every device of every namespace the target uses that does not have
    /// it yet. `strict`: fail on the first error (at start); otherwise log and go on (refresh).
    fn attach_devices(&mut self, strict: bool) -> Result<()> {
        let mut paths: Vec<(u64, std::path::PathBuf)> = netdev::netns_of(&self.target);
        for p in &self.explicit_netns {
            match Netns::open(p) {
                Ok(ns) => paths.push((ns.ino, p.clone())),
                Err(e) if strict => return Err(crate::usage!("{e:#}: give a network namespace file such as /run/netns/NAME or /proc/PID/ns/net")),
                Err(e) => log::warn!("{e:#}"),
            }
        }
        if paths.is_empty() {
            // An empty cgroup: its processes will most likely start in our namespace.
            paths.push((netdev::own_netns_ino(), "/proc/self/ns/net".into()));
        }
        for (ino, path) in paths {
            if !self.netns.iter().any(|n| n.ino == ino) {
                match Netns::open(&path) {
                    // Keep /proc/self paths meaningful for the record: name our own pid.
                    Ok(mut ns) => {
                        if path.starts_with("/proc/self") {
                            ns.path = format!("/proc/{}/ns/net", std::process::id()).into();
                        }
                        self.netns.push(ns)
                    }
                    Err(e) if strict => return Err(Error::Other(e)),
                    Err(e) => {
                        log::debug!("{e:#}");
                        continue;
                    }
                }
            }
        }
        let known: BTreeSet<(u64, u32)> = self.devices.iter().map(|d| (d.netns_ino, d.ifindex)).collect();
        let prog = self.kernel.program::<SchedClassifier>(PROG_TC_STEAL, "TC classifier (sched_cls)")?;
        for ns in &self.netns {
            let attached = ns.run(|| attach_in_netns(prog, ns, &known))?;
            for d in attached {
                match d {
                    Ok(d) => {
                        if let Some(f) = &d.filter {
                            self.record.filters.push(f.clone());
                            if let Err(e) = self.record.save() {
                                log::warn!("could not record TC filter for cleanup in {}: {e:#}", crate::kernel::state::state_dir().display());
                            }
                        }
                        self.devices.push(d);
                    }
                    Err(e) if strict => return Err(e),
                    Err(e) => log::warn!("{e}"),
                }
            }
        }
        Ok(())
    }
}

/// Runs inside `ns`: attaches `prog` at egress of each device not in `known`.
fn attach_in_netns(prog: &mut SchedClassifier, ns: &Netns, known: &BTreeSet<(u64, u32)>) -> Vec<Result<DeviceLink>> {
    let mut out = Vec::new();
    for (ifindex, ifname) in netdev::devices() {
        if known.contains(&(ns.ino, ifindex)) {
            continue;
        }
        out.push((|| {
            let fail = |e: &dyn std::error::Error| Error::Other(anyhow::anyhow!("attaching to {ifname} egress: {}", crate::error::chain(e)));
            let mut clsact_added = false;
            let id = match prog.attach(&ifname, TcAttachType::Egress) {
                Ok(id) => id,
                // Netlink attach (kernels before 6.6) needs the clsact qdisc; add it and retry.
                Err(_) => {
                    match qdisc_add_clsact(&ifname) {
                        Ok(()) => clsact_added = true,
                        Err(e) => log::debug!("adding clsact to {ifname}: {e}"),
                    }
                    prog.attach(&ifname, TcAttachType::Egress).map_err(|e| fail(&e))?
                }
            };
            let link = prog.take_link(id).map_err(|e| fail(&e))?;
            let filter = match (link.priority(), link.handle()) {
                (Ok(priority), Ok(handle)) => Some(TcFilter {
                    netns_path: ns.path.clone(),
                    netns_ino: ns.ino,
                    ifindex,
                    ifname: ifname.clone(),
                    egress: true,
                    priority,
                    handle: handle.into(),
                    clsact_added,
                }),
                _ => None,
            };
            Ok(DeviceLink { netns_ino: ns.ino, ifindex, ifname: ifname.clone(), link: Some(link), filter })
        })());
    }
    out
}

impl Injection for NetInjection {
    fn detach(&mut self) {
        self.detach_all();
    }

    fn set_deadline(&mut self, deadline_ns: u64) -> Result<()> {
        self.kernel.update_rule::<NetRule>(RULES_MAP, 0, |r| r.deadline_ns = deadline_ns)
    }

    fn refresh(&mut self) {
        if self.directions & DIR_EGRESS != 0
            && let Err(e) = self.attach_devices(false)
        {
            log::warn!("{e}");
        }
    }

    fn counters(&self) -> Result<Counters> {
        let map = |name| self.kernel.ebpf.map(name).ok_or_else(no_map);
        let per_rule: PerCpuArray<_, NetCounters> = PerCpuArray::try_from(map(COUNTERS_MAP)?).map_err(|e| Error::Other(e.into()))?;
        let mut sum = NetCounters::default();
        for c in per_rule.get(&0, 0).map_err(|e| Error::Other(e.into()))?.iter() {
            sum.add(c);
        }
        let errors: PerCpuArray<_, u64> = PerCpuArray::try_from(map(ERRORS_MAP)?).map_err(|e| Error::Other(e.into()))?;
        let mut kernel_errors = std::collections::BTreeMap::new();
        for (i, name) in ["header_load", "rule_lookup", "bad_mark"].iter().enumerate().take(NET_ERROR_KINDS as usize) {
            let n: u64 = errors.get(&(i as u32), 0).map_err(|e| Error::Other(e.into()))?.iter().sum();
            kernel_errors.insert(name.to_string(), n);
        }
        Ok(Counters {
            rules: vec![RuleCounters {
                rule: 0,
                fault: format!("{:?}", self.fault).to_lowercase(),
                seen: sum.seen,
                matched: sum.matched,
                injected: sum.dropped,
                detail: [("selected", sum.selected), ("dropped", sum.dropped), ("dropped_bytes", sum.dropped_bytes)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }],
            kernel_errors,
        })
    }

    fn attached(&self) -> Attached {
        let programs = self
            .kernel
            .ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect();
        let mut links = self.link_ids.clone();
        links.extend(self.devices.iter().filter_map(|d| {
            let fd: &FdLink = d.link.as_ref()?.try_into().ok()?;
            fd.info().ok().map(|i| i.id())
        }));
        let devices = self
            .devices
            .iter()
            .map(|d| AttachedDevice {
                netns_ino: d.netns_ino,
                ifname: d.ifname.clone(),
                mode: if d.filter.is_some() { "netlink" } else { "tcx" },
            })
            .collect();
        Attached { programs, links, devices }
    }

    fn flush_log(&mut self) {
        self.kernel.flush_log();
    }
}

impl std::ops::Drop for NetInjection {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl NetInjection {
    fn detach_all(&mut self) {
        // The cgroup programs first, so nothing new is marked; then the device programs, each
        // inside its own namespace (a netlink filter is named by ifindex, which only means
        // something there). The links travel as ManuallyDrop: if the namespace cannot be entered,
        // they are leaked rather than detached in the wrong namespace, and the record stays for
        // the next sweep.
        self.cgroup_links.clear();
        let mut clean = true;
        for ns in &self.netns {
            let mine: Vec<ManuallyDrop<SchedClassifierLink>> = self
                .devices
                .iter_mut()
                .filter(|d| d.netns_ino == ns.ino)
                .filter_map(|d| d.link.take().map(ManuallyDrop::new))
                .collect();
            let added_clsact: Vec<u32> = self
                .devices
                .iter()
                .filter(|d| d.netns_ino == ns.ino && d.filter.as_ref().is_some_and(|f| f.clsact_added))
                .map(|d| d.ifindex)
                .collect();
            let detached = ns.run(move || {
                let mut ok = true;
                for l in mine {
                    if let Err(e) = ManuallyDrop::into_inner(l).detach() {
                        log::warn!("detaching TC program: {e}");
                        ok = false;
                    }
                }
                // The clsact qdiscs chaos added go too, unless someone attached a filter since.
                for ifindex in added_clsact {
                    if let Err(e) = crate::kernel::qdisc::remove_clsact_if_unused(ifindex) {
                        log::warn!("removing the clsact qdisc chaos added to device {ifindex}: {e}");
                    }
                }
                ok
            });
            match detached {
                Ok(ok) => clean &= ok,
                Err(e) => {
                    log::warn!("{e:#}");
                    clean = false;
                }
            }
        }
        // Forget what was handled, so a second call (Drop after detach) does nothing.
        self.devices.clear();
        if clean {
            self.record.remove();
        }
    }
}
