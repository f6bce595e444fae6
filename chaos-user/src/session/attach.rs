//! Everything a session attaches, held so that it can only be detached where it was attached.
//!
//! - cgroup links (`cgroup_skb/ingress`), one per target that needs one: fd-based, gone with the
//!   process.
//! - syscall hooks (LSM, fmod_ret, kprobe), one per hook: fd-based.
//! - TC egress (and ingress, for faults that copy or change received packets) on every device of
//!   the targets' network namespaces: a tcx link (6.6+, fd-based, placed before every other
//!   program) or a netlink cls_bpf filter (before 6.6: outlives the process, so it is journaled
//!   before it is made, proved ours by its program id). A device link
//!   carries its namespace and is detached inside it; if that namespace cannot be entered, the
//!   link is leaked rather than detached elsewhere, and the journal keeps it for the guardian.

use std::{
    collections::BTreeSet,
    fs::File,
    mem::ManuallyDrop,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use aya::{
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt, KProbe, Lsm,
        SchedClassifier,
        cgroup_sockopt::CgroupSockoptLink,
        links::{FdLink, Link, LinkOrder},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType},
    },
};
use chaos_common::{
    net::{PROG_CGROUP_INGRESS, PROG_TC_EGRESS, PROG_TC_EGRESS_L3, PROG_TC_INGRESS, PROG_TC_INGRESS_L3},
    sys::{FMOD_RET_FILE_OPEN_SECTION, FMOD_RET_SYSCALL_SECTION, PROG_KPROBE, PROG_SYS_ENTER, PROG_SYS_EXIT},
};
use serde::Serialize;

use super::{
    journal::{self, Change, Journal, NetnsRef},
    killpoint, qdisc,
};
use crate::{
    error::{Error, Result, chain},
    faults::{
        FqNeed, Hook,
        sys::{CgroupProgram, cgroup_call_by_hook, lsm_call_by_hook},
    },
    kernel::{
        Kernel,
        fmod_ret::{FmodRet, FmodRetError},
        netdev::{self, Netns},
        rtnl,
    },
    target::Cgroup,
    unsupported, usage,
};

/// Kernel objects a session holds, for the report and for tests that check nothing stays behind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Attached {
    pub programs: Vec<u32>,
    pub links: Vec<u32>,
    pub devices: Vec<AttachedDevice>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttachedDevice {
    pub netns_ino: u64,
    pub ifname: String,
    /// "egress" or "ingress".
    pub direction: &'static str,
    /// "tcx" (a link the kernel removes when chaos exits) or "netlink" (a filter chaos removes).
    pub mode: &'static str,
}

/// What goes on each device of the targets' namespaces.
pub struct DeviceHooks<'a> {
    /// The TC programs' directions, egress first (it adds any clsact, which the egress link, the
    /// last detached, removes).
    pub directions: &'a [TcAttachType],
    /// tcx links (6.6+) rather than netlink filters.
    pub tcx: bool,
    /// The session's delay faults need fq as each device's root qdisc (`qdisc.rs`), and the
    /// session's fq handle.
    pub fq: Option<(FqNeed, u32)>,
}

/// A TC direction as the summary and `--dry-run` name it.
pub(crate) fn direction_name(d: TcAttachType) -> &'static str {
    if d == TcAttachType::Ingress { "ingress" } else { "egress" }
}

/// What keeps a syscall hook attached; dropping it detaches.
enum SysHeld {
    Link(FdLink),
    FmodRet(FmodRet),
}

struct SysLink {
    held: SysHeld,
    link_id: u32,
}

/// A TC program on one device, in one direction.
struct DeviceLink {
    ns: Arc<Netns>,
    ifindex: u32,
    ifname: String,
    direction: TcAttachType,
    /// `Some` while attached.
    link: Option<SchedClassifierLink>,
    link_id: Option<u32>,
    /// The journal entries of a netlink filter and of a clsact chaos added for it.
    filter: Option<Change>,
    clsact: Option<Change>,
    /// The journal entry of an fq root qdisc chaos put on the device (delay faults).
    fq: Option<Change>,
    /// The session needs fq and the device was down (sending nothing) when the program went on:
    /// fq goes on when it comes up.
    fq_when_up: bool,
}

impl Drop for DeviceLink {
    /// A last resort (the normal path is [`Attachments::detach_all`]): detaches inside the link's
    /// own namespace, or leaks the link if the namespace cannot be entered.
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let link = ManuallyDrop::new(link);
            if let Err(e) = self.ns.run(move || ManuallyDrop::into_inner(link).detach()) {
                log::warn!("{e}");
            }
        }
    }
}

/// A test hook: `CHAOS_TEST_FAIL_ATTACH=N` makes the N-th device attachment of a session fail, to
/// show that a half-attached session undoes exactly what it did.
fn injected_failure(count: u32) -> bool {
    std::env::var("CHAOS_TEST_FAIL_ATTACH").ok().and_then(|v| v.parse::<u32>().ok()) == Some(count)
}

/// A link on a cgroup, held until the session ends (dropping it detaches the program). aya 0.14
/// turns every cgroup link but the sockopt one into an [`FdLink`].
#[allow(dead_code)] // held for its Drop
enum CgroupLink {
    Fd(FdLink),
    Sockopt(CgroupSockoptLink),
}

/// The id of the link the kernel made for program `prog_id` most recently (links of one
/// program on several cgroups are told apart by being new).
fn newest_link_of(prog_id: u32) -> u32 {
    aya::programs::loaded_links().filter_map(|l| l.ok()).filter(|l| l.program_id() == prog_id).map(|l| l.id()).max().unwrap_or(0)
}

#[derive(Default)]
pub struct Attachments {
    cgroup: Vec<(PathBuf, CgroupLink, u32)>,
    sys: Vec<SysLink>,
    devices: Vec<DeviceLink>,
    namespaces: Vec<Arc<Netns>>,
    device_attempts: u32,
}

impl Attachments {
    /// The programs `hooks` need whose load takes no arguments, for [`Kernel::preload`] to verify
    /// side by side before anything attaches; `tc`: the TC programs' directions too.
    pub fn programs(hooks: &[&Hook], tc: &[TcAttachType]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = tc.iter().map(|&d| tc_program(d, true)).collect();
        for hook in hooks {
            match hook {
                Hook::CgroupIngress => names.push(PROG_CGROUP_INGRESS),
                Hook::CgroupSock(h) => names.extend(cgroup_call_by_hook(*h).map(|c| c.programs).unwrap_or_default()),
                Hook::Kprobe(_) => names.push(PROG_KPROBE),
                _ => {}
            }
        }
        names
    }

    /// A per-cgroup hook on `target`: `cgroup_skb/ingress`, or `connect4` and `connect6`. A
    /// cgroup link always coexists with other programs on the cgroup (link-based attachment is
    /// multi-attach by nature; the kernel refuses the ALLOW_MULTI flag there).
    pub fn attach_cgroup(&mut self, kernel: &mut Kernel, hook: &Hook, target: &Cgroup) -> Result<()> {
        let cg = File::open(&target.path).map_err(|e| Error::Other(anyhow::anyhow!("opening {}: {e}", target.path.display())))?;
        let fail = |name: &str, e: &dyn std::error::Error| Error::Other(anyhow::anyhow!("attaching {name} to {}: {}", target.path.display(), chain(e)));
        let mut links = Vec::new();
        match hook {
            Hook::CgroupIngress => {
                let prog = kernel.program::<CgroupSkb>(PROG_CGROUP_INGRESS, "cgroup_skb")?;
                let id = prog.attach(&cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single).map_err(|e| fail(PROG_CGROUP_INGRESS, &e))?;
                links.push(FdLink::try_from(prog.take_link(id).map_err(|e| fail(PROG_CGROUP_INGRESS, &e))?).map_err(|e| fail(PROG_CGROUP_INGRESS, &e))?);
            }
            Hook::CgroupSock(hook) => {
                let call = cgroup_call_by_hook(*hook).ok_or_else(|| Error::Other(anyhow::anyhow!("no cgroup hook {hook}")))?;
                for &name in call.programs {
                    let link = match call.kind {
                        CgroupProgram::SockAddr => {
                            let prog = kernel.program::<CgroupSockAddr>(name, "cgroup sock_addr")?;
                            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| fail(name, &e))?;
                            FdLink::try_from(prog.take_link(id).map_err(|e| fail(name, &e))?)
                        }
                        CgroupProgram::Sock => {
                            let prog = kernel.program::<CgroupSock>(name, "cgroup sock")?;
                            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| fail(name, &e))?;
                            FdLink::try_from(prog.take_link(id).map_err(|e| fail(name, &e))?)
                        }
                        CgroupProgram::Sockopt => {
                            let prog = kernel.program::<CgroupSockopt>(name, "cgroup sockopt")?;
                            let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| fail(name, &e))?;
                            let link = prog.take_link(id).map_err(|e| fail(name, &e))?;
                            let prog_id = prog.info().map(|i| i.id()).unwrap_or(0);
                            self.cgroup.push((target.path.clone(), CgroupLink::Sockopt(link), newest_link_of(prog_id)));
                            continue;
                        }
                    };
                    links.push(link.map_err(|e| fail(name, &e))?);
                }
            }
            _ => return Ok(()),
        }
        for link in links {
            let link_id = link.info().map(|i| i.id()).unwrap_or(0);
            self.cgroup.push((target.path.clone(), CgroupLink::Fd(link), link_id));
        }
        killpoint::step(|| format!("attached {} to {}", hook.describe(), target.path.display()));
        Ok(())
    }

    /// One syscall hook.
    pub fn attach_sys(&mut self, kernel: &mut Kernel, hook: &Hook) -> Result<()> {
        let btf = || crate::kernel::vmlinux_btf().map_err(|e| unsupported!("the kernel exposes no BTF ({e}); {} needs it", hook.describe()));
        let held = match hook {
            Hook::Lsm(id) => {
                let btf = btf()?;
                let call = lsm_call_by_hook(*id).ok_or_else(|| Error::Other(anyhow::anyhow!("no LSM hook {id}")))?;
                let prog: &mut Lsm = kernel.get(call.program)?;
                if prog.fd().is_err() {
                    prog.load(call.lsm, btf).map_err(|e| load_refused("BPF LSM", &e))?;
                }
                let id = prog.attach().map_err(|e| Error::Other(anyhow::anyhow!("attaching the LSM program: {}", chain(&e))))?;
                SysHeld::Link(prog.take_link(id).map_err(|e| Error::Other(e.into()))?.into())
            }
            Hook::FmodRetFileOpen | Hook::FmodRetSyscall(_) => {
                let (section, function) = match hook {
                    Hook::FmodRetSyscall(f) => (FMOD_RET_SYSCALL_SECTION, f.as_str()),
                    _ => (FMOD_RET_FILE_OPEN_SECTION, "security_file_open"),
                };
                let btf = btf()?;
                SysHeld::FmodRet(kernel.fmod_ret(section, function, btf).map_err(|e| match e {
                    FmodRetError::NoFunction(_) => usage!("this kernel has no function {function} in its BTF: check the syscall name"),
                    FmodRetError::Load { .. } | FmodRetError::Attach { .. } => {
                        unsupported!("this kernel refused fmod_ret on {function} ({e}); see `chaos probe`")
                    }
                    other => Error::Other(other.into()),
                })?)
            }
            Hook::Kprobe(symbol) => {
                let prog = kernel.program::<KProbe>(PROG_KPROBE, "kprobe")?;
                let id = prog.attach(symbol, 0).map_err(|e| {
                    if crate::kernel::kallsyms_has(symbol) == Some(false) {
                        usage!("this kernel has no function {symbol}: check the syscall name")
                    } else {
                        Error::Other(anyhow::anyhow!("attaching a kprobe to {symbol}: {}", chain(&e)))
                    }
                })?;
                let link = prog.take_link(id).map_err(|e| Error::Other(e.into()))?;
                SysHeld::Link(FdLink::try_from(link).map_err(|e| Error::Other(e.into()))?)
            }
            Hook::SysEnter | Hook::SysExit => {
                let btf = btf()?;
                let (name, point) = if *hook == Hook::SysEnter { (PROG_SYS_ENTER, "sys_enter") } else { (PROG_SYS_EXIT, "sys_exit") };
                let prog: &mut BtfTracePoint = kernel.get(name)?;
                if prog.fd().is_err() {
                    prog.load(point, btf).map_err(|e| load_refused("tp_btf", &e))?;
                }
                let id = prog.attach().map_err(|e| Error::Other(anyhow::anyhow!("attaching tp_btf {point}: {}", chain(&e))))?;
                SysHeld::Link(prog.take_link(id).map_err(|e| Error::Other(e.into()))?.into())
            }
            Hook::TcEgress | Hook::TcIngress | Hook::CgroupIngress | Hook::CgroupSock(_) => return Ok(()),
        };
        let link_id = match &held {
            SysHeld::Link(l) => l.info().map(|i| i.id()).unwrap_or(0),
            SysHeld::FmodRet(f) => f.link_id,
        };
        self.sys.push(SysLink { held, link_id });
        killpoint::step(|| format!("attached {}", hook.describe()));
        Ok(())
    }

    /// The TC programs `to` names on every device, not yet attached, of the namespaces `paths`
    /// name. `strict` (at the start): the first failure ends the attachment with an error, after
    /// which [`Attachments::detach_all`] undoes exactly what was done. Otherwise (refreshing while
    /// running): failures are logged and the rest goes on.
    pub fn attach_devices(&mut self, kernel: &mut Kernel, journal: &mut Journal, paths: &[(u64, PathBuf)], to: &DeviceHooks, strict: bool) -> Result<()> {
        let (tcx, fq) = (to.tcx, to.fq);
        for (ino, path) in paths {
            if *ino != 0 && self.namespaces.iter().any(|n| n.ino == *ino) {
                continue;
            }
            match Netns::open(path) {
                Ok(mut ns) => {
                    if self.namespaces.iter().any(|n| n.ino == ns.ino) {
                        continue;
                    }
                    // Keep /proc/self paths meaningful in the journal: name our own pid.
                    if path.starts_with("/proc/self") {
                        ns.path = format!("/proc/{}/ns/net", std::process::id()).into();
                    }
                    self.namespaces.push(Arc::new(ns));
                }
                Err(e) if strict => return Err(e),
                Err(e) => log::debug!("{e}"),
            }
        }
        let known: BTreeSet<(u64, u32, bool)> = self.devices.iter().map(|d| (d.ns.ino, d.ifindex, d.direction == TcAttachType::Ingress)).collect();
        for ns in self.namespaces.clone() {
            let kernel = &mut *kernel;
            let attempts = &mut self.device_attempts;
            let devices = &mut self.devices;
            // Every result is handled inside the namespace: a link is never dropped (detached)
            // on another thread, where its ifindex would name another namespace's device.
            let outcome = ns.run(|| -> Result<()> {
                for ((ifindex, ifname), &direction) in netdev::devices().into_iter().flat_map(|d| to.directions.iter().map(move |t| (d.clone(), t))) {
                    let ingress = direction == TcAttachType::Ingress;
                    if known.contains(&(ns.ino, ifindex, ingress)) {
                        if let Some((need, handle)) = fq
                            && !ingress
                            && let Some(d) = devices.iter_mut().find(|d| d.ns.ino == ns.ino && d.ifindex == ifindex && d.fq_when_up)
                            && netdev::is_up(&ifname)
                        {
                            d.fq_when_up = false;
                            match qdisc::ensure_fq(journal, &ns, ifindex, &ifname, need, handle) {
                                Ok(change) => d.fq = change,
                                Err(e) => log::warn!("{e}"),
                            }
                        }
                        continue;
                    }
                    *attempts += 1;
                    let attached = if injected_failure(*attempts) {
                        Err(Error::Other(anyhow::anyhow!("attaching to {ifname}: failed on purpose (CHAOS_TEST_FAIL_ATTACH={attempts})")))
                    } else {
                        // The program that reads headers in place where the framing is known.
                        let name = tc_program(direction, netdev::ethernet_framing(&ifname));
                        let fq = if ingress { None } else { fq };
                        kernel
                            .program::<SchedClassifier>(name, "TC classifier (sched_cls)")
                            .and_then(|prog| attach_device(prog, journal, &ns, (ifindex, &ifname, direction), tcx, fq))
                    };
                    match attached {
                        Ok(d) => devices.push(d),
                        Err(e) if strict => return Err(e),
                        Err(e) => log::warn!("{e}"),
                    }
                }
                Ok(())
            });
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) if strict => return Err(e),
                Ok(Err(e)) | Err(e) => log::warn!("{e}"),
            }
        }
        Ok(())
    }

    /// Detaches everything: the cgroup and syscall hooks first, then each device's program inside
    /// its own namespace, then any clsact qdisc chaos added that nothing uses any more. Journal
    /// entries go as their changes are undone. Idempotent.
    pub fn detach_all(&mut self, journal: &mut Journal) {
        if !self.cgroup.is_empty() {
            self.cgroup.clear();
            killpoint::step(|| "detached the cgroup hooks".into());
        }
        if !self.sys.is_empty() {
            self.sys.clear();
            killpoint::step(|| "detached the syscall hooks".into());
        }
        // Ingress first: a clsact the session added was added with the egress link, which removes
        // it once the device has no filter left.
        let mut devices = std::mem::take(&mut self.devices);
        devices.sort_by_key(|d| d.direction != TcAttachType::Ingress);
        for mut d in devices {
            let ns = d.ns.clone();
            let link = d.link.take().map(ManuallyDrop::new);
            let (filter, clsact, fq) = (d.filter.take(), d.clsact.take(), d.fq.take());
            let ifindex = d.ifindex;
            let added_clsact = clsact.is_some();
            let fq_handle = match &fq {
                Some(Change::RootFq { handle, hold_ms, ifname, .. }) => Some((*handle, Duration::from_millis(*hold_ms), ifname.clone())),
                _ => None,
            };
            let done = ns.run(move || {
                let detached = match link {
                    Some(l) => ManuallyDrop::into_inner(l).detach().map_err(|e| log::warn!("detaching the TC program: {e}")).is_ok(),
                    None => true,
                };
                // What fq holds leaves before the clsact goes: removing a clsact resets the
                // device's root qdisc, dropping the delayed packets.
                if let Some((h, hold, ifname)) = &fq_handle
                    && let Err(e) = super::qdisc::wait_until_sent(ifindex, ifname, *h, *hold)
                {
                    log::warn!("reading what fq holds on {ifname}: {e}");
                }
                if added_clsact && detached && let Err(e) = rtnl::remove_clsact_if_unused(ifindex) {
                    log::warn!("removing the clsact qdisc chaos added: {e}");
                }
                // The device's default qdisc back; an error leaves the fq in the journal.
                let restored = fq_handle.is_none_or(|(h, _, _)| {
                    rtnl::delete_root_qdisc(ifindex, h).map_err(|e| log::warn!("restoring the default qdisc: {e}")).is_ok()
                });
                (detached, restored)
            });
            match done {
                // Detached: the filter and the clsact (removed, or kept because another tool's
                // filter now uses it) are no longer ours to undo. Not detached: both stay in the
                // journal for the guardian and the sweep.
                Ok((detached, restored)) => {
                    if detached {
                        for c in filter.iter().chain(clsact.iter()) {
                            let _ = journal.forget(c);
                        }
                    }
                    if restored && let Some(c) = &fq {
                        let _ = journal.forget(c);
                    }
                }
                Err(e) => log::warn!("{e}: its TC program stays attached and recorded for `chaos cleanup`"),
            }
            killpoint::step(|| format!("detached from {}{}", d.ifname, if d.direction == TcAttachType::Ingress { " ingress" } else { "" }));
        }
    }

    /// Kernel ids of what is attached.
    pub fn attached(&self, kernel: &Kernel) -> Attached {
        let mut programs: Vec<u32> = kernel.ebpf.programs().filter_map(|(_, p)| p.info().ok().map(|i| i.id())).collect();
        programs.extend(self.sys.iter().filter_map(|s| match &s.held {
            SysHeld::FmodRet(f) => Some(f.prog_id),
            SysHeld::Link(_) => None,
        }));
        let mut links: Vec<u32> = self.cgroup.iter().map(|(_, _, id)| *id).collect();
        links.extend(self.sys.iter().map(|s| s.link_id));
        links.extend(self.devices.iter().filter_map(|d| d.link_id));
        let devices = self
            .devices
            .iter()
            .map(|d| AttachedDevice {
                netns_ino: d.ns.ino,
                ifname: d.ifname.clone(),
                direction: direction_name(d.direction),
                mode: if d.filter.is_some() { "netlink" } else { "tcx" },
            })
            .collect();
        Attached { programs, links, devices }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        // Device links detach in their own namespaces (DeviceLink::drop); the journal keeps any
        // netlink filter for the guardian and the sweep, which verify by program id.
        self.cgroup.clear();
        self.sys.clear();
    }
}

/// The TC program for `direction` on a device with Ethernet framing or without.
fn tc_program(direction: TcAttachType, ethernet: bool) -> &'static str {
    match (direction, ethernet) {
        (TcAttachType::Ingress, true) => PROG_TC_INGRESS,
        (TcAttachType::Ingress, false) => PROG_TC_INGRESS_L3,
        (_, true) => PROG_TC_EGRESS,
        (_, false) => PROG_TC_EGRESS_L3,
    }
}

/// Runs inside `ns`: puts fq on the device if the session needs it, then attaches `prog` to it in
/// `direction`. A failure to attach undoes the fq.
fn attach_device(
    prog: &mut SchedClassifier,
    journal: &mut Journal,
    ns: &Arc<Netns>,
    (ifindex, ifname, direction): (u32, &str, TcAttachType),
    tcx: bool,
    fq: Option<(FqNeed, u32)>,
) -> Result<DeviceLink> {
    // Read before: a device that comes up in between gets its fq now, or at the next refresh.
    let was_down = !netdev::is_up(ifname);
    let fq_change = match fq {
        Some((need, handle)) => qdisc::ensure_fq(journal, ns, ifindex, ifname, need, handle)?,
        None => None,
    };
    match attach_program(prog, journal, ns, (ifindex, ifname, direction), tcx) {
        Ok(mut d) => {
            d.fq_when_up = fq.is_some() && was_down && fq_change.is_none();
            d.fq = fq_change;
            Ok(d)
        }
        Err(e) => {
            if let Some(c @ Change::RootFq { handle, .. }) = &fq_change
                && rtnl::delete_root_qdisc(ifindex, *handle).is_ok()
            {
                let _ = journal.forget(c);
            }
            Err(e)
        }
    }
}

/// Runs inside `ns`: attaches `prog` to device `ifindex` in `direction`.
fn attach_program(
    prog: &mut SchedClassifier,
    journal: &mut Journal,
    ns: &Arc<Netns>,
    (ifindex, ifname, direction): (u32, &str, TcAttachType),
    tcx: bool,
) -> Result<DeviceLink> {
    let dir = direction_name(direction);
    // Kill-point steps name the direction for ingress only (egress's names predate it).
    let at = if direction == TcAttachType::Ingress { format!("{ifname} ingress") } else { ifname.to_string() };
    let fail = |e: &dyn std::error::Error| Error::Other(anyhow::anyhow!("attaching to {ifname} {dir}: {}", chain(e)));
    let prog_id = prog.info().map(|i| i.id()).map_err(|e| fail(&e))?;
    let nsref = NetnsRef { ino: ns.ino, path: ns.path.clone() };
    let mut d = DeviceLink { ns: ns.clone(), ifindex, ifname: ifname.to_string(), direction, link: None, link_id: None, filter: None, clsact: None, fq: None, fq_when_up: false };
    if tcx {
        // First in the device's chain: a program before chaos that returns "pass" would end the
        // chain and let the packets chaos was to act on leave.
        let id = prog
            .attach_with_options(ifname, direction, TcAttachOptions::TcxOrder(LinkOrder::first()))
            .map_err(|e| fail(&e))?;
        let link = prog.take_link(id).map_err(|e| fail(&e))?;
        let fd: Option<&FdLink> = (&link).try_into().ok();
        d.link_id = fd.and_then(|l| l.info().ok()).map(|i| i.id());
        d.link = Some(link);
        killpoint::step(|| format!("attached a tcx link to {at}"));
        return Ok(d);
    }
    // Netlink (before 6.6): a clsact qdisc first, if the device has none, then the filter. Each
    // is journaled before it is made.
    let journal_err = |e: anyhow::Error| Error::Other(e.context("writing the session record"));
    // A clsact another live session added is shared: both journal it, and whichever ends last
    // removes it (unused by then). Without this, the one that added it ended first, kept it for
    // the other's filter, and the other, which had not added it, left it behind.
    let change = Change::Clsact { netns: nsref.clone(), ifindex, ifname: ifname.to_string() };
    let own_id = journal.record().id.clone();
    let shared = || journal::live_owner(&own_id, |c| *c == change).is_some();
    if !rtnl::has_qdisc(ifindex, "clsact").map_err(|e| fail(&e))? {
        journal.before(change.clone()).map_err(journal_err)?;
        match rtnl::add_clsact(ifindex) {
            Ok(()) => {
                d.clsact = Some(change);
                killpoint::step(|| format!("added a clsact qdisc to {ifname}"));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && shared() => d.clsact = Some(change),
            Err(e) => {
                let _ = journal.forget(&change);
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(fail(&e));
                }
            }
        }
    } else if shared() {
        journal.before(change.clone()).map_err(journal_err)?;
        d.clsact = Some(change);
    }
    // First in the chain: a priority below every existing filter's. (Left to choose, the kernel
    // gives a new filter a lower number than the last one but appends it after it: measured on
    // 6.1, another tool's filter at priority 100 ran first.) Priority 0 with no filter there: the
    // kernel's default (49152).
    let parent = if direction == TcAttachType::Ingress { rtnl::CLSACT_INGRESS } else { rtnl::CLSACT_EGRESS };
    let existing = rtnl::filters(ifindex, parent).map_err(|e| fail(&e))?;
    let priority = match existing.iter().map(|f| f.priority).min() {
        None => 0,
        Some(p) if p > 1 => p - 1,
        Some(_) => {
            log::warn!("{ifname} has a filter at priority 1 already; chaos's filter runs after it, and that filter's verdict may let packets chaos was to act on leave");
            0
        }
    };
    let change = Change::TcFilter { netns: nsref, ifindex, ifname: ifname.to_string(), parent, prog_id };
    journal.before(change.clone()).map_err(journal_err)?;
    match prog.attach_with_options(ifname, direction, TcAttachOptions::Netlink(NlOptions { priority, ..Default::default() })) {
        Ok(id) => {
            d.link = Some(prog.take_link(id).map_err(|e| fail(&e))?);
            d.filter = Some(change);
            killpoint::step(|| format!("attached a TC filter to {at}"));
            Ok(d)
        }
        Err(e) => {
            let _ = journal.forget(&change);
            if let Some(c) = d.clsact.take()
                && rtnl::remove_clsact_if_unused(ifindex).is_ok()
            {
                let _ = journal.forget(&c);
            }
            Err(fail(&e))
        }
    }
}

pub(crate) fn load_refused(kind: &str, e: &aya::programs::ProgramError) -> Error {
    // The verifier's log goes to the debug log (RUST_LOG=debug), never into the one line.
    let why = match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            log::debug!("verifier log:\n{verifier_log}");
            format!("BPF_PROG_LOAD: {io_error}")
        }
        other => chain(other),
    };
    unsupported!("this kernel refused the {kind} program ({why}); see `chaos probe`")
}
