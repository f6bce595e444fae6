//! `chaos probe`: what this kernel can do, backend by backend, found by loading (and where that is
//! the test, attaching) a tiny program, never by reading the config alone. The config only
//! explains a refusal. Every fault command runs the checks it needs through [`require`] before
//! attaching anything, so a missing feature is exit 3 with the same reason probe prints.

use std::{collections::BTreeMap, fs::File, io};

use aya::{
    Btf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        KProbe, Lsm, ProgramError, SchedClassifier,
        tc::{NlOptions, TcAttachOptions, TcAttachType},
    },
};
use chaos_common::{
    net::{PROG_CGROUP_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS},
    sys::{FMOD_RET_FILE_OPEN_SECTION, FMOD_RET_SYSCALL_SECTION, PROG_CONNECT4},
};
use nix::sched::{CloneFlags, unshare};
use serde::Serialize;

use crate::{
    error::{Result, chain},
    kernel::{Kernel, Needs, config, rtnl},
    target::Cgroup,
    unsupported,
};

/// A way of injecting that a kernel may or may not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    CgroupSkb,
    Tcx,
    TcNetlink,
    CgroupSockAddr,
    TpBtfSignal,
    BpfLsm,
    FmodRetSecurity,
    FmodRetSyscall,
    KprobeOverride,
    SchFq,
    Netem,
    CgroupFreezer,
    TaskFileIter,
    TcIngressSocket,
}

impl Backend {
    pub const ALL: [Backend; 14] = [
        Backend::CgroupSkb,
        Backend::Tcx,
        Backend::TcNetlink,
        Backend::CgroupSockAddr,
        Backend::TpBtfSignal,
        Backend::BpfLsm,
        Backend::FmodRetSecurity,
        Backend::FmodRetSyscall,
        Backend::KprobeOverride,
        Backend::SchFq,
        Backend::Netem,
        Backend::CgroupFreezer,
        Backend::TaskFileIter,
        Backend::TcIngressSocket,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Backend::CgroupSkb => "cgroup_skb",
            Backend::Tcx => "tcx (TC link, 6.6+)",
            Backend::TcNetlink => "TC via netlink (cls_bpf)",
            Backend::CgroupSockAddr => "cgroup sock hooks",
            Backend::TpBtfSignal => "tp_btf + signals",
            Backend::BpfLsm => "BPF LSM",
            Backend::FmodRetSecurity => "fmod_ret on security_*",
            Backend::FmodRetSyscall => "fmod_ret on syscalls",
            Backend::KprobeOverride => "kprobe + override_return",
            Backend::SchFq => "sch_fq (departure times)",
            Backend::Netem => "netem (peer comparison)",
            Backend::CgroupFreezer => "cgroup v2 freezer",
            Backend::TaskFileIter => "task_file iterator",
            Backend::TcIngressSocket => "TC ingress, socket cgroup",
        }
    }

    /// The faults (present and planned) that stand on this backend.
    pub fn faults(self) -> &'static str {
        match self {
            Backend::CgroupSkb => "net faults, ingress",
            Backend::Tcx | Backend::TcNetlink => "net faults, egress; net dns (either one)",
            Backend::CgroupSockAddr => "sys fail: socket, bind, connect, sendto/sendmsg (UDP), get/setsockopt",
            Backend::TpBtfSignal => "sys signal, sys delay: any syscall",
            Backend::BpfLsm | Backend::FmodRetSecurity => "sys fail: the open family",
            Backend::FmodRetSyscall | Backend::KprobeOverride => "sys fail: any syscall",
            Backend::SchFq => "net delay, reorder, rate (shaping)",
            Backend::Netem => "benchmarks against tc netem",
            Backend::CgroupFreezer => "proc pause",
            Backend::TaskFileIter => "sys fail --path on read/write: the files open at the start",
            Backend::TcIngressSocket => "net duplicate, corrupt: ingress",
        }
    }

    /// The programs its check loads that take no load arguments (what [`Kernel::preload`] can
    /// verify beside one another).
    fn programs(self) -> &'static [&'static str] {
        match self {
            Backend::CgroupSkb => &[PROG_CGROUP_INGRESS],
            Backend::Tcx | Backend::TcNetlink => &[PROG_TC_EGRESS],
            Backend::TcIngressSocket => &[PROG_TC_INGRESS],
            Backend::CgroupSockAddr => &[PROG_CONNECT4],
            _ => &[],
        }
    }

    /// Kernel options that explain a refusal.
    fn options(self) -> &'static [&'static str] {
        match self {
            Backend::CgroupSkb | Backend::CgroupSockAddr => &["CONFIG_CGROUP_BPF"],
            Backend::Tcx => &["CONFIG_NET_XGRESS"],
            Backend::TcNetlink => &["CONFIG_NET_CLS_BPF", "CONFIG_NET_SCH_INGRESS"],
            Backend::TpBtfSignal => &["CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_EVENTS"],
            Backend::BpfLsm => &["CONFIG_BPF_LSM", "CONFIG_DEBUG_INFO_BTF"],
            Backend::FmodRetSecurity => &["CONFIG_DYNAMIC_FTRACE", "CONFIG_BPF_LSM"],
            Backend::FmodRetSyscall => &["CONFIG_DYNAMIC_FTRACE", "CONFIG_FUNCTION_ERROR_INJECTION"],
            Backend::KprobeOverride => &["CONFIG_KPROBES", "CONFIG_FUNCTION_ERROR_INJECTION", "CONFIG_BPF_KPROBE_OVERRIDE"],
            Backend::SchFq => &["CONFIG_NET_SCH_FQ"],
            Backend::Netem => &["CONFIG_NET_SCH_NETEM"],
            Backend::CgroupFreezer => &["CONFIG_CGROUPS"],
            Backend::TaskFileIter => &["CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_SYSCALL"],
            Backend::TcIngressSocket => &["CONFIG_DEBUG_INFO_BTF", "CONFIG_NET_CLS_BPF"],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub backend: Backend,
    pub label: &'static str,
    pub faults: &'static str,
    pub works: bool,
    /// Why not, when it does not work.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub checks: Vec<Check>,
}

/// The facts every check may use to explain itself.
struct Facts {
    config: Option<BTreeMap<String, String>>,
    active_lsms: Option<String>,
}

impl Facts {
    fn gather() -> Facts {
        let _ = nix::mount::mount(Some("securityfs"), "/sys/kernel/security", Some("securityfs"), nix::mount::MsFlags::empty(), None::<&str>);
        Facts {
            config: config::read(),
            active_lsms: std::fs::read_to_string("/sys/kernel/security/lsm").ok(),
        }
    }

    /// The kernel's BTF, parsed on first use (tens of ms): only the BTF-typed checks need it.
    fn btf(&self) -> Option<&'static Btf> {
        crate::kernel::vmlinux_btf().ok()
    }

    /// A refusal, explained: the error, then the config options it is missing.
    fn explain(&self, b: Backend, what: &str) -> String {
        let mut s = what.to_string();
        let missing = config::unset(self.config.as_ref(), b.options());
        if !missing.is_empty() {
            s += &format!(" ({} not set)", missing.join(", "));
        }
        s
    }
}

fn errno_of(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn describe_errno(e: &ProgramError) -> String {
    match errno_of(e) {
        Some(libc::EPERM) => "refused with EPERM".into(),
        Some(libc::EINVAL) => "refused with EINVAL".into(),
        Some(libc::ENOENT) => "refused with ENOENT".into(),
        Some(524) | Some(libc::EOPNOTSUPP) => "not supported (ENOTSUPP)".into(), // 524: the kernel-internal ENOTSUPP
        _ => chain(e),
    }
}

/// Runs every check. Needs the same privileges as a fault.
pub fn probe() -> Result<Report> {
    let facts = Facts::gather();
    let mut kernel = Kernel::load(false)?;
    let checks = Backend::ALL.iter().map(|&b| check(&mut kernel, &facts, b)).collect();
    Ok(Report { kernel: crate::kernel::release(), checks })
}

/// Fails with exit 3 unless at least one of each group of backends works, naming why not;
/// returns the backends that work.
/// Each group is checked in order and stops at the first backend that works (the one a fault
/// would pick). Also returns the kernel object the checks loaded, its programs verified, for the
/// session to use: loading and verifying is the slow part of a start.
/// `optional` groups are checked the same way, but a group none of whose backends works is no
/// error (a fault that does better with one, and works without).
pub fn require(groups: &[&[Backend]], optional: &[&[Backend]], object: Needs) -> Result<(Vec<Backend>, Kernel)> {
    let facts = Facts::gather();
    let mut kernel = Kernel::load_with(false, object)?;
    // The first backend of each group is the one a fault picks where it works: verify their
    // programs side by side before checking them one by one.
    let first: Vec<&str> = groups.iter().chain(optional).filter_map(|g| g.first()).flat_map(|b| b.programs().iter().copied()).collect();
    kernel.preload(&first);
    let mut working = Vec::new();
    for group in groups {
        let mut refused = Vec::new();
        for &b in group.iter() {
            if working.contains(&b) {
                refused.clear();
                break;
            }
            let c = check(&mut kernel, &facts, b);
            if c.works {
                working.push(b);
                refused.clear();
                break;
            }
            refused.push(c);
        }
        if !refused.is_empty() {
            let why: Vec<String> = refused.iter().map(|c| format!("{}: {}", c.label, c.reason.as_deref().unwrap_or("?"))).collect();
            return Err(unsupported!("this kernel cannot do it: {} (see `chaos probe`)", why.join("; ")));
        }
    }
    for group in optional {
        for &b in group.iter() {
            if working.contains(&b) {
                break;
            }
            if check(&mut kernel, &facts, b).works {
                working.push(b);
                break;
            }
        }
    }
    Ok((working, kernel))
}

fn check(kernel: &mut Kernel, facts: &Facts, b: Backend) -> Check {
    let outcome = match b {
        Backend::CgroupSkb => check_cgroup_skb(kernel),
        Backend::Tcx => check_tc(kernel, true),
        Backend::TcNetlink => check_tc(kernel, false),
        Backend::CgroupSockAddr => check_sock_addr(kernel),
        Backend::TpBtfSignal => check_btf(kernel, facts, b),
        Backend::BpfLsm => check_btf(kernel, facts, b),
        Backend::KprobeOverride => check_kprobe(kernel),
        Backend::FmodRetSecurity => check_fmod_ret(kernel, facts, FMOD_RET_FILE_OPEN_SECTION, "security_file_open"),
        Backend::FmodRetSyscall => check_fmod_ret(kernel, facts, FMOD_RET_SYSCALL_SECTION, "__x64_sys_openat"),
        Backend::SchFq => throwaway_netns_allowed().and_then(|_| rtnl::try_qdisc("fq").map_err(|e| qdisc_reason("fq", &e))),
        Backend::Netem => throwaway_netns_allowed().and_then(|_| rtnl::try_qdisc("netem").map_err(|e| qdisc_reason("netem", &e))),
        Backend::CgroupFreezer => check_freezer(),
        Backend::TaskFileIter => check_task_file_iter(kernel),
        Backend::TcIngressSocket => check_tc_ingress(kernel),
    };
    let reason = outcome.err().map(|what| facts.explain(b, &what));
    Check { backend: b, label: b.label(), faults: b.faults(), works: reason.is_none(), reason }
}

fn qdisc_reason(kind: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!("the kernel has no {kind} qdisc (creating one: ENOENT)"),
        _ => format!("creating a {kind} qdisc failed: {e}"),
    }
}

type Outcome = std::result::Result<(), String>;

/// A load error, phrased for the matrix.
fn load_failed(what: &str, e: &ProgramError) -> String {
    if let ProgramError::LoadError { verifier_log, .. } = e {
        log::debug!("verifier log for the {what} probe:\n{verifier_log}");
    }
    format!("loading a {what} program {}", describe_errno(e))
}

/// The cgroup v2 freezer (Linux 5.2+): every non-root cgroup has `cgroup.freeze`. A cgroup made
/// for the check and removed shows whether this kernel has it (nothing is frozen).
fn check_freezer() -> Outcome {
    let mount = crate::target::cgroup2_mount().map_err(|e| e.to_string())?.mount_point;
    let dir = mount.join(format!("chaos-probe-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("making a cgroup to look at ({}): {e}", dir.display()))?;
    let has = dir.join("cgroup.freeze").is_file();
    let _ = std::fs::remove_dir(&dir);
    if has { Ok(()) } else { Err("a new cgroup has no cgroup.freeze (the cgroup v2 freezer needs Linux 5.2+)".into()) }
}

/// A task_file BPF iterator (Linux 5.8+): chaos's program loads against the kernel's BTF and an
/// iterator is made (not read: reading it runs the program).
fn check_task_file_iter(kernel: &mut Kernel) -> Outcome {
    let prog = kernel.task_file_iter().map_err(|e| e.to_string())?;
    let id = prog.attach().map_err(|e| format!("making a task_file iterator: {}", describe_errno(&e)))?;
    // Dropping the link lets the iterator go.
    prog.take_link(id).map(drop).map_err(|e| e.to_string())
}

/// TC ingress's program loads: it looks up a received packet's socket and reads the socket's
/// cgroup at offsets from the kernel's BTF with `bpf_probe_read_kernel` (Linux 5.15+ for the
/// layout). Attaching is the TC checks' part.
fn check_tc_ingress(kernel: &mut Kernel) -> Outcome {
    if !kernel.sock_cgroup_known {
        return Err("the kernel's BTF does not say where a socket's cgroup is (struct sock_cgroup_data has a cgroup member from Linux 5.15)".into());
    }
    kernel.program::<SchedClassifier>(PROG_TC_INGRESS, "TC classifier").map(drop).map_err(|e| e.to_string())
}

/// A cgroup to attach the cgroup checks to for a moment: chaos's own (making one may need
/// CAP_DAC_OVERRIDE: a cgroup2 root can be read-only to root). The programs, with no rules,
/// let every packet and call through.
fn probe_cgroup() -> std::result::Result<File, String> {
    let path = match Cgroup::own() {
        Some(cg) => cg.path,
        None => crate::target::cgroup2_mount().map_err(|e| e.to_string())?.mount_point,
    };
    File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))
}

fn check_cgroup_skb(kernel: &mut Kernel) -> Outcome {
    let prog = kernel.program::<CgroupSkb>(PROG_CGROUP_INGRESS, "cgroup_skb").map_err(|e| e.to_string())?;
    let f = probe_cgroup()?;
    let id = prog
        .attach(&f, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
        .map_err(|e| format!("attaching to a cgroup: {}", describe_errno(&e)))?;
    prog.detach(id).map_err(|e| e.to_string())
}

fn check_sock_addr(kernel: &mut Kernel) -> Outcome {
    // The real program: it proves the helpers the connect fault uses (bpf_set_retval: 5.18+).
    let prog: &mut CgroupSockAddr = kernel.get(PROG_CONNECT4).map_err(|e| e.to_string())?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| load_failed("cgroup/connect4 with bpf_set_retval", &e))?;
    }
    let f = probe_cgroup()?;
    let id = prog
        .attach(&f, CgroupAttachMode::Single)
        .map_err(|e| format!("attaching to a cgroup: {}", describe_errno(&e)))?;
    prog.detach(id).map_err(|e| e.to_string())
}

/// TC: the program loads, then tcx by asking `lo` of this namespace for its tcx programs (a query:
/// an attachment and its detachment would cost the start two RCU grace periods, tens of ms;
/// kernels before 6.6 refuse the attach type with EINVAL); netlink by a clsact and a cls_bpf
/// filter on `lo` of a throwaway namespace (adding a qdisc to a device in use blips it), which
/// needs CAP_SYS_ADMIN.
fn check_tc(kernel: &mut Kernel, tcx: bool) -> Outcome {
    let prog = kernel.program::<SchedClassifier>(PROG_TC_EGRESS, "TC classifier").map_err(|e| e.to_string())?;
    if tcx {
        return SchedClassifier::query_tcx("lo", TcAttachType::Egress).map(|_| ()).map_err(|e| {
            if errno_of(&e) == Some(libc::EINVAL) {
                "querying tcx links refused with EINVAL (tcx needs Linux 6.6+)".to_string()
            } else {
                format!("querying tcx links: {}", describe_errno(&e))
            }
        });
    }
    throwaway_netns_allowed()?;
    std::thread::scope(|s| {
        s.spawn(|| -> Outcome {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("creating a network namespace: {e}"))?;
            rtnl::add_clsact(1).map_err(|e| format!("adding a clsact qdisc: {e}"))?;
            let id = prog
                .attach_with_options("lo", TcAttachType::Egress, TcAttachOptions::Netlink(NlOptions::default()))
                .map_err(|e| format!("attaching: {}", describe_errno(&e)))?;
            // Detached here, inside the namespace the filter lives in.
            prog.detach(id).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "the probing thread panicked".to_string())?
    })
}

/// The checks that need a throwaway network namespace say so when they cannot make one.
fn throwaway_netns_allowed() -> Outcome {
    if crate::privileges::has(crate::privileges::CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err("not checked: the check needs a throwaway network namespace, which needs CAP_SYS_ADMIN".into())
    }
}

fn check_btf(kernel: &mut Kernel, facts: &Facts, b: Backend) -> Outcome {
    let btf = facts.btf().ok_or("the kernel exposes no BTF (/sys/kernel/btf/vmlinux)")?;
    if b == Backend::BpfLsm {
        // The real program (its rules are not started, so it allows every open): a kernel whose
        // verifier refuses it says so here, not at the first fault.
        let prog: &mut Lsm = kernel.get(chaos_common::sys::PROG_LSM_FILE_OPEN).map_err(|e| e.to_string())?;
        prog.load("file_open", btf).map_err(|e| {
            let mut s = load_failed("BPF LSM", &e);
            let empty_log = matches!(&e, ProgramError::LoadError { verifier_log, .. } if verifier_log.to_string().trim().is_empty());
            let bpf_active = facts.active_lsms.as_deref().is_some_and(|l| l.split(',').any(|x| x.trim() == "bpf"));
            if errno_of(&e) == Some(libc::EPERM) && empty_log && bpf_active {
                s += " with an empty verifier log although 'bpf' is an active LSM: this kernel's policy refuses BPF trampoline programs (LSM, fentry, fmod_ret)";
            }
            s
        })?;
        if let Some(l) = &facts.active_lsms
            && !l.split(',').any(|x| x.trim() == "bpf")
        {
            return Err(format!("'bpf' is not among the active LSMs ({}); boot with lsm=...,bpf", l.trim()));
        }
        let id = prog.attach().map_err(|e| format!("attaching: {}", describe_errno(&e)))?;
        prog.detach(id).map_err(|e| e.to_string())
    } else {
        let prog: &mut BtfTracePoint = kernel.get("chaos_probe_tp_btf").map_err(|e| e.to_string())?;
        prog.load("sys_enter", btf).map_err(|e| load_failed("tp_btf", &e))?;
        let id = prog.attach().map_err(|e| format!("attaching: {}", describe_errno(&e)))?;
        prog.detach(id).map_err(|e| e.to_string())
    }
}

/// The real fmod_ret program, loaded by hand and attached to `function` (its rule is inactive, so
/// it changes nothing), then detached.
fn check_fmod_ret(kernel: &mut Kernel, facts: &Facts, section: &str, function: &str) -> Outcome {
    let btf = facts.btf().ok_or("the kernel exposes no BTF (/sys/kernel/btf/vmlinux)")?;
    match kernel.fmod_ret(section, function, btf) {
        Ok(attached) => {
            drop(attached);
            Ok(())
        }
        Err(e) => {
            let mut s = match e.errno() {
                Some(libc::EPERM) => format!("loading fmod_ret on {function} refused with EPERM"),
                Some(libc::EINVAL) => format!("loading fmod_ret on {function} refused with EINVAL"),
                _ => e.to_string(),
            };
            if e.errno() == Some(libc::EPERM) {
                s += " (this kernel's policy refuses BPF trampoline programs)";
            } else if e.errno() == Some(libc::EINVAL) && function.starts_with("__x64_sys_") {
                s += " (the function is not on the error-injection list)";
            }
            Err(s)
        }
    }
}

fn check_kprobe(kernel: &mut Kernel) -> Outcome {
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Err("the kernel has no kprobe event source (/sys/bus/event_source/devices/kprobe)".into());
    }
    let prog: &mut KProbe = kernel.get("chaos_probe_kprobe").map_err(|e| e.to_string())?;
    prog.load().map_err(|e| load_failed("kprobe with bpf_override_return", &e))?;
    // Attaching checks that the target is on the error-injection list (every syscall entry is).
    let id = prog
        .attach("__x64_sys_getpid", 0)
        .map_err(|e| format!("attaching to __x64_sys_getpid: {}", describe_errno(&e)))?;
    prog.detach(id).map_err(|e| e.to_string())
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = format!("chaos probe: kernel {}\n\n", self.kernel);
        s += &format!("{:<27} {:<6} {:<44} {}\n", "backend", "works", "used by", "why not");
        for c in &self.checks {
            s += &format!(
                "{:<27} {:<6} {:<44} {}\n",
                c.label,
                if c.works { "yes" } else { "no" },
                c.faults,
                c.reason.as_deref().unwrap_or("")
            );
        }
        s
    }
}
