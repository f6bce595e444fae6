//! A session: one loaded kernel object, many rules of any kind on any number of target cgroups,
//! every attachment, and the journal of every change that outlives the process.
//!
//! Its life: [`plan`] (resolve the targets, check the kernel, decide what attaches where: what
//! `--dry-run` prints), [`Session::start`] (write the rules, not yet started; attach each hook once
//! per target, device or syscall hook; then start every rule's window), the watch loop
//! (`watch.rs`), and [`Session::finish`] (detach, read the counters, undo, report).

pub mod attach;
pub mod follow;
pub mod guardian;
pub mod holds;
pub mod journal;
pub mod killpoint;
pub mod qdisc;

use std::{path::PathBuf, time::Duration};

use aya::programs::tc::TcAttachType;
use chaos_common::{Action, MAX_RULES, MAX_TARGETS, Rule, SessionConfig, TargetRules, loss::Prng};
use serde::Serialize;

use self::{
    attach::{Attached, Attachments, DeviceHooks},
    journal::{Change, FaultInfo, Journal, Record},
};
use crate::{
    error::{Error, Result},
    faults::{FaultSpec, FqNeed, Hook},
    kernel::{Kernel, Needs, monotonic_ns, netdev, wait_for_coarse_clock},
    privileges,
    probe::{self, Backend},
    report::{RuleSummary, Summary},
    target::Cgroup,
    usage,
};

/// One fault of a plan: the spec, its target's index, its hooks and its rule (not yet started).
#[derive(Debug)]
pub struct Planned {
    pub spec: FaultSpec,
    pub target: usize,
    pub hooks: Vec<Hook>,
    pub rule: Rule,
}

/// What a session will do, decided before anything is attached.
pub struct Plan {
    pub faults: Vec<Planned>,
    /// Distinct target cgroups (a rule's target is an index into this).
    pub targets: Vec<Cgroup>,
    /// Per-cgroup hooks and the targets that get them: those with rules at that hook, except the
    /// ones inside another such target (its program already runs for their packets and calls,
    /// and finds their rules by their ancestors' ids).
    pub cgroup_at: Vec<(Hook, usize)>,
    /// Targets with rules at TC (egress, or ingress to copy or change a received packet): the TC
    /// programs go on the devices of their namespaces.
    pub device_targets: Vec<usize>,
    /// The TC directions the session's rules need, egress first.
    pub tc_directions: Vec<TcAttachType>,
    /// Namespaces named explicitly (`--netns`).
    pub extra_netns: Vec<PathBuf>,
    /// Syscall hooks, each once.
    pub sys_hooks: Vec<Hook>,
    /// TC through tcx links (6.6+) rather than netlink filters.
    pub tcx: bool,
    /// What the delay faults need of the devices' root qdisc (the longest delay; `--keep-qdisc`
    /// if any of them says so).
    pub fq: Option<FqNeed>,
    /// The kernel object the checks loaded (its programs verified), for the session to use.
    pub kernel: Option<Kernel>,
}

/// Resolves targets, checks that this kernel can do every fault, and decides what attaches where.
pub fn plan(specs: Vec<FaultSpec>) -> Result<Plan> {
    let specs = crate::kubernetes::pods::resolve(specs)?;
    if specs.is_empty() {
        return Err(usage!("no fault to run"));
    }
    if specs.len() > MAX_RULES as usize {
        return Err(usage!("{} faults: a session holds at most {MAX_RULES}; split them across sessions", specs.len()));
    }
    let own = Cgroup::own();
    let mut targets: Vec<Cgroup> = Vec::new();
    let mut target_of = Vec::new();
    for spec in &specs {
        if spec.args.seed.is_some() && !spec.fault.kind().starts_with("net.") {
            return Err(usage!(
                "{}--seed applies to packet faults: {} draws from the kernel's generator (remove --seed)",
                spec.at(),
                spec.fault.kind()
            ));
        }
        let t = &spec.args.target;
        let cg = t.named().and_then(Cgroup::of_target).map_err(|e| e.at(&spec.at()))?;
        if let Some(own) = &own
            && cg.contains(own)
            && !spec.args.force
        {
            return Err(usage!(
                "{}the target {} contains chaos itself (it runs in {}): give --force to inject anyway (chaos's own process stays exempt)",
                spec.at(),
                cg.path.display(),
                own.path.display()
            ));
        }
        if (spec.fault.freezes() || spec.fault.kills().is_some()) && own.as_ref().is_some_and(|own| cg.contains(own)) {
            return Err(usage!("{}the target {} contains chaos itself: {} would reach chaos too (even with --force)", spec.at(), cg.path.display(), spec.fault.kind()));
        }
        let index = match targets.iter().position(|x| x.id == cg.id) {
            Some(i) => i,
            None => {
                targets.push(cg);
                targets.len() - 1
            }
        };
        target_of.push(index);
    }
    if targets.len() > MAX_TARGETS as usize {
        return Err(usage!("{} target cgroups: a session holds at most {MAX_TARGETS}", targets.len()));
    }
    // One kernel check for the whole session, with the reasons of what is missing.
    let mut needs: Vec<&'static [Backend]> = Vec::new();
    for spec in &specs {
        for group in spec.fault.needs() {
            if !needs.contains(&group) {
                needs.push(group);
            }
        }
    }
    let mut wants: Vec<&'static [Backend]> = Vec::new();
    for spec in &specs {
        for group in spec.fault.wants() {
            if !wants.contains(&group) {
                wants.push(group);
            }
        }
    }
    // The kernel object the check loads is the session's: it is made for the rules as they will
    // be. A rule's action and options do not depend on the backends its hooks are chosen from; one
    // that cannot be written yet gets an object made for anything (its error comes below).
    let previews: Option<Vec<Rule>> = specs.iter().map(|spec| rule_of(spec, &spec.fault.hooks(&Backend::ALL).ok()?).ok()).collect();
    let object = previews.map_or(Needs::ALL, |rules| Needs::of_rules(&rules));
    let (available, kernel) = probe::require(&needs, &wants, object)?;
    let mut faults = Vec::new();
    for (spec, target) in specs.into_iter().zip(target_of) {
        let hooks = spec.fault.hooks(&available).map_err(|e| e.at(&spec.at()))?;
        let rule = rule_of(&spec, &hooks).map_err(|e| e.at(&spec.at()))?;
        faults.push(Planned { spec, target, hooks, rule });
    }
    let with_hook = |h: &Hook| -> Vec<usize> {
        let mut v: Vec<usize> = faults.iter().filter(|f| f.hooks.contains(h)).map(|f| f.target).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut cgroup_at = Vec::new();
    let mut per_cgroup: Vec<Hook> = faults.iter().flat_map(|f| f.hooks.iter().filter(|h| h.per_cgroup()).cloned()).collect();
    per_cgroup.sort();
    per_cgroup.dedup();
    for hook in per_cgroup {
        let at = with_hook(&hook);
        for &t in &at {
            if !at.iter().any(|&o| o != t && targets[o].contains(&targets[t])) {
                cgroup_at.push((hook.clone(), t));
            }
        }
    }
    let mut sys_hooks: Vec<Hook> =
        faults.iter().flat_map(|f| f.hooks.iter().cloned()).filter(|h| !h.per_device() && !h.per_cgroup()).collect();
    sys_hooks.sort();
    sys_hooks.dedup();
    // The program that forgets closed files first, before file_open follows any.
    sys_hooks.sort_by_key(|h| *h != Hook::Lsm(chaos_common::sys::HOOK_LSM_FILE_FREE));
    let mut extra_netns: Vec<PathBuf> = faults.iter().flat_map(|f| f.spec.fault.netns().to_vec()).collect();
    extra_netns.sort();
    extra_netns.dedup();
    let fq = faults.iter().filter_map(|f| f.spec.fault.fq()).reduce(|a, b| FqNeed {
        max_delay: a.max_delay.max(b.max_delay),
        keep_qdisc: a.keep_qdisc || b.keep_qdisc,
    });
    let plan = Plan {
        fq,
        device_targets: {
            let mut t = [with_hook(&Hook::TcEgress), with_hook(&Hook::TcIngress)].concat();
            t.sort_unstable();
            t.dedup();
            t
        },
        tc_directions: [(Hook::TcEgress, TcAttachType::Egress), (Hook::TcIngress, TcAttachType::Ingress)]
            .into_iter()
            .filter(|(h, _)| faults.iter().any(|f| f.hooks.contains(h)))
            .map(|(_, d)| d)
            .collect(),
        cgroup_at,
        sys_hooks,
        extra_netns,
        tcx: available.contains(&Backend::Tcx),
        targets,
        faults,
        kernel: Some(kernel),
    };
    // Entering another network namespace needs CAP_SYS_ADMIN: say so before anything attaches.
    let own = netdev::own_netns_ino();
    if plan.device_namespaces().iter().any(|(ino, _)| *ino != own) {
        privileges::require(privileges::CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "entering the target's network namespace (setns)")?;
    }
    Ok(plan)
}

/// What the plan attaches, as text (`--dry-run`).
#[derive(Debug, Serialize)]
pub struct PlanView {
    pub faults: Vec<PlannedView>,
    pub attach: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlannedView {
    pub rule: usize,
    pub kind: &'static str,
    pub description: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub after_s: f64,
    pub for_s: f64,
    pub max_injections: Option<u64>,
    pub hooks: Vec<Hook>,
}

impl Plan {
    pub fn view(&self) -> PlanView {
        let faults = self
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| PlannedView {
                rule: i,
                kind: f.spec.fault.kind(),
                description: f.spec.fault.describe(),
                cgroup: self.targets[f.target].path.display().to_string(),
                cgroup_id: self.targets[f.target].id,
                after_s: f.spec.args.after.as_secs_f64(),
                for_s: f.spec.args.duration.as_secs_f64(),
                max_injections: f.spec.args.max_injections,
                hooks: f.hooks.clone(),
            })
            .collect();
        let mut attach = Vec::new();
        for (h, t) in &self.cgroup_at {
            attach.push(format!("{} {}", h.describe().trim_end_matches("the target"), self.targets[*t].path.display()));
        }
        let directions: Vec<&str> = self.tc_directions.iter().map(|d| attach::direction_name(*d)).collect();
        for (ino, path) in self.device_namespaces() {
            let devices = netdev::Netns::open(&path).and_then(|ns| ns.run(netdev::devices)).map(|d| {
                d.into_iter().map(|(_, n)| n).collect::<Vec<_>>().join(", ")
            });
            attach.push(format!(
                "TC {} ({}) on every device of network namespace {} (inode {ino}): {}",
                directions.join(" and "),
                if self.tcx { "tcx link, first in the chain" } else { "netlink cls_bpf filter, journaled" },
                path.display(),
                devices.unwrap_or_else(|e| format!("cannot list ({e})"))
            ));
        }
        if let Some(fq) = self.fq {
            attach.push(if fq.keep_qdisc {
                "sch_fq must already be the root qdisc of each of those devices (--keep-qdisc)".to_string()
            } else {
                format!(
                    "sch_fq as the root qdisc of each of those devices that has the kernel's default one (journaled; the default back at the end), horizon {}",
                    humantime::format_duration(Duration::from_micros(qdisc::options_for(fq.max_delay).horizon_us as u64))
                )
            });
        }
        for h in &self.sys_hooks {
            attach.push(format!("{}, once", h.describe()));
        }
        for f in self.faults.iter().filter(|f| f.spec.fault.freezes()) {
            attach.push(format!("nothing for proc.pause: chaos freezes {} itself while the rule is live (cgroup.freeze, journaled)", self.targets[f.target].path.display()));
        }
        for f in self.faults.iter().filter(|f| f.spec.fault.kills().is_some()) {
            attach.push(format!("nothing for proc.kill: chaos signals every process of {} itself as the rule starts", self.targets[f.target].path.display()));
        }
        PlanView { faults, attach }
    }

    /// The namespaces whose devices the TC program goes on: those of the egress targets'
    /// processes, the ones named with `--netns`, or this process's own for a target with no
    /// process yet (its processes will most likely start there).
    pub fn device_namespaces(&self) -> Vec<(u64, PathBuf)> {
        if self.device_targets.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<(u64, PathBuf)> = Vec::new();
        for &t in &self.device_targets {
            for (ino, path) in netdev::netns_of(&self.targets[t]) {
                if ino == 0 || !out.iter().any(|(i, _)| *i == ino) {
                    out.push((ino, path));
                }
            }
        }
        for p in &self.extra_netns {
            out.push((0, p.clone()));
        }
        if out.is_empty() {
            out.push((netdev::own_netns_ino(), "/proc/self/ns/net".into()));
        }
        out
    }
}

impl PlanView {
    pub fn text(&self) -> String {
        let mut s = String::from("chaos: dry run: nothing was attached\n");
        for f in &self.faults {
            s += &format!(
                "  rule {} ({}) on {}: {}; from +{}s for {}s{}\n",
                f.rule,
                f.kind,
                f.cgroup,
                f.description,
                f.after_s,
                f.for_s,
                f.max_injections.map(|n| format!(", at most {n} injections")).unwrap_or_default()
            );
        }
        s += "  would attach:\n";
        for a in &self.attach {
            s += &format!("    {a}\n");
        }
        s
    }
}

/// Options of a session's run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Log each injection through aya-log (`--log-packets`).
    pub log_packets: bool,
    /// Attach everything but start no rule until [`Session::begin`] (an experiment's baseline runs
    /// with the programs in place and idle, so the inject phase starts on time).
    pub deferred: bool,
}

/// A running session.
pub struct Session {
    pub id: String,
    kernel: Kernel,
    plan: Plan,
    attachments: Attachments,
    journal: Journal,
    /// Each rule's window once started (CLOCK_MONOTONIC ns).
    windows: Vec<(u64, u64)>,
    /// `sys.delay`: the thread that continues held processes.
    holder: Option<holds::Holder>,
    /// `proc.pause`: each rule that freezes its target, and where it stands.
    pauses: Vec<Pause>,
    /// `proc.kill`: each rule that signals its target's processes once, and whether it has.
    kills: Vec<Kill>,
    /// Targets whose directory was recreated or is gone since the start (`follow.rs`).
    followed: follow::Followed,
    /// The processes of read/write `--path` rules' targets at the last look, whose files open
    /// then are followed.
    files_followed_of: std::collections::BTreeSet<u32>,
    finished: bool,
}

/// One `proc.kill` rule: its target's processes get `signal` as its window opens.
#[derive(Clone, Copy)]
struct Kill {
    rule: usize,
    target: usize,
    signal: i32,
    done: bool,
}

/// One `proc.pause` rule: its target is frozen while its window is open (`Session::drive`).
#[derive(Clone, Copy)]
struct Pause {
    rule: usize,
    target: usize,
    frozen: bool,
    done: bool,
}

/// A short random session id.
fn new_id() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n != 4 {
        b = (monotonic_ns() as u32 ^ std::process::id()).to_ne_bytes();
    }
    format!("{:08x}", u32::from_ne_bytes(b))
}

/// Fault `spec`'s rule at `hooks`, not started.
fn rule_of(spec: &FaultSpec, hooks: &[Hook]) -> Result<Rule> {
    let mut rule = Rule {
        start_ns: Rule::NOT_STARTED,
        deadline_ns: u64::MAX,
        max_injections: spec.args.max_injections.unwrap_or(0),
        ..Default::default()
    };
    spec.fault.fill(&mut rule, hooks)?;
    if let Some(seed) = spec.args.seed {
        (rule.seeded, rule.seed) = (1, seed);
    }
    Ok(rule)
}

impl Session {
    /// Loads the object, writes the rules (not started) and targets, records the session, attaches
    /// every hook, then starts every rule's window: `--for` counts from when the session is in
    /// place, however long attaching took. On failure, everything done so far is undone.
    pub fn start(mut plan: Plan, opts: &Options) -> Result<Session> {
        let id = new_id();
        // The checks' object, unless the programs must log (a load-time setting).
        let mut kernel = match plan.kernel.take() {
            Some(k) if !opts.log_packets => k,
            _ => Kernel::load_with(opts.log_packets, Needs::of_rules(plan.faults.iter().map(|f| &f.rule)))?,
        };
        let pid = std::process::id();
        let marks_threads = plan.faults.iter().any(|f| Action::from_u32(f.rule.action).marks_threads()) as u32;
        kernel.set_session(&SessionConfig { loader_tgid: pid, marks_threads, ..Default::default() })?;
        let mut masks = vec![TargetRules::default(); plan.targets.len()];
        for (i, f) in plan.faults.iter().enumerate() {
            kernel.set_rule(i as u32, &f.rule)?;
            if let Some(t) = f.spec.fault.delay_table() {
                kernel.set_delay_table(i as u32, t)?;
            }
            if f.rule.seeded != 0 {
                kernel.set_prng(i as u32, Prng::seeded(f.rule.seed))?;
            }
            for h in &f.hooks {
                masks[f.target].add(h.family(), i as u32);
            }
            if f.rule.needs_transport() {
                masks[f.target].ports |= 1 << i;
            }
            if f.rule.action == Action::NetDns as u32 {
                masks[f.target].dns |= 1 << i;
            }
        }
        let mut sys_rules = std::collections::BTreeMap::<u64, u64>::new();
        for (i, f) in plan.faults.iter().enumerate() {
            for key in f.spec.fault.sys_keys(&f.hooks) {
                *sys_rules.entry(key).or_default() |= 1 << i;
            }
        }
        for (key, rules) in sys_rules {
            kernel.set_sys_rules(key, rules)?;
        }
        for (t, m) in plan.targets.iter().zip(&masks) {
            kernel.set_target(t.id, m)?;
        }
        kernel.forget_cached_targets()?;
        let mut record = Record::new(&id);
        record.maps = kernel.map_ids()?;
        record.faults = plan
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| FaultInfo {
                rule: i as u32,
                kind: f.spec.fault.kind().to_string(),
                description: f.spec.fault.describe(),
                cgroup: plan.targets[f.target].path.display().to_string(),
                cgroup_id: plan.targets[f.target].id,
                start_ns: 0,
                deadline_ns: 0,
            })
            .collect();
        let journal = Journal::new(record);
        journal.save().map_err(|e| Error::Other(e.context("writing the session record")))?;
        let pauses = plan.faults.iter().enumerate().filter(|(_, f)| f.spec.fault.freezes()).map(|(rule, f)| Pause { rule, target: f.target, frozen: false, done: false }).collect();
        let kills = plan.faults.iter().enumerate().filter_map(|(rule, f)| Some(Kill { rule, target: f.target, signal: f.spec.fault.kills()?, done: false })).collect();
        let mut s = Session { id, kernel, plan, attachments: Attachments::default(), journal, windows: Vec::new(), holder: None, pauses, kills, followed: Default::default(), files_followed_of: Default::default(), finished: false };
        if let Err(e) = s.start_holder().and_then(|_| s.journal_pauses()).and_then(|_| s.attach_all()) {
            s.teardown();
            return Err(e);
        }
        if !opts.deferred {
            s.set_windows()?;
        }
        Ok(s)
    }

    /// Starts every rule's window now (each after its `after`): for a session started deferred.
    pub fn begin(&mut self) -> Result<()> {
        self.set_windows()
    }

    /// `sys.delay`: journals each target whose processes its rules stop (so a guardian continues
    /// them if this process dies), then starts the thread that continues each at its hold's end.
    /// Before anything is attached or any rule starts: no stop comes before both are in place.
    fn start_holder(&mut self) -> Result<()> {
        let specs: Vec<_> = self.plan.faults.iter().map(|f| f.spec.fault.hold()).collect();
        if specs.iter().all(Option::is_none) {
            return Ok(());
        }
        let targets: std::collections::BTreeSet<usize> = self.plan.faults.iter().filter(|f| f.spec.fault.hold().is_some()).map(|f| f.target).collect();
        for t in targets {
            let t = &self.plan.targets[t];
            self.journal.before(Change::Stopped { cgroup: t.path.clone(), cgroup_id: t.id }).map_err(Error::Other)?;
        }
        self.note_guardian()?;
        self.holder = Some(holds::Holder::start(self.kernel.holds_ring()?, specs).map_err(|e| Error::Other(e.context("starting the holder")))?);
        Ok(())
    }

    /// `proc.pause`: journals each target a rule freezes (so a guardian thaws it if this process
    /// dies, or is stopped past the rule's end), before any window opens.
    fn journal_pauses(&mut self) -> Result<()> {
        if self.pauses.is_empty() {
            return Ok(());
        }
        let targets: std::collections::BTreeSet<usize> = self.pauses.iter().map(|p| p.target).collect();
        for t in targets {
            let t = &self.plan.targets[t];
            self.journal.before(Change::Frozen { cgroup: t.path.clone(), cgroup_id: t.id }).map_err(Error::Other)?;
        }
        self.note_guardian()
    }

    /// Does what the session does itself rather than the kernel, as the windows open and close:
    /// `proc.pause` freezes its target while its window is open (called every watch tick).
    /// Also the session's heartbeat to its guardian (`guardian::beat`): the watch loop calls this
    /// every tick, so a session that stops calling it (wedged) is noticed.
    pub fn drive(&mut self) {
        let now = monotonic_ns();
        if !self.windows.is_empty() && now >= self.end_ns() {
            killpoint::wedge_at_end();
        }
        guardian::beat();
        self.drive_kills(now);
        for i in 0..self.pauses.len() {
            let Pause { rule, target, frozen, done } = self.pauses[i];
            let Some(&(start, end)) = self.windows.get(rule) else { continue };
            let open = start <= now && now < end;
            let path = self.plan.targets[target].path.clone();
            if open && !frozen && !done {
                let processes = self.plan.targets[target].pids().len() as u64;
                match crate::target::set_frozen(&path, true) {
                    Ok(_) => {
                        killpoint::step(|| format!("froze {}", path.display()));
                        self.pauses[i].frozen = true;
                        let c = chaos_common::Counters { seen: processes, matched: processes, selected: 1, injected: 1, ..Default::default() };
                        if let Err(e) = self.kernel.set_counters(rule as u32, &c) {
                            log::warn!("{e}");
                        }
                    }
                    Err(e) => log::warn!("freezing {}: {e}", path.display()),
                }
            } else if now >= end && !done {
                self.thaw(i);
            }
        }
    }

    /// `proc.kill`: signals every process of each target whose rule's window has opened, once.
    fn drive_kills(&mut self, now: u64) {
        for i in 0..self.kills.len() {
            let Kill { rule, target, signal, done } = self.kills[i];
            let Some(&(start, end)) = self.windows.get(rule) else { continue };
            if done || now < start || now >= end {
                continue;
            }
            self.kills[i].done = true;
            let pids = self.plan.targets[target].pids();
            let own = std::process::id();
            let mut reached = 0u64;
            for &pid in pids.iter().filter(|&&p| p != own) {
                // SAFETY: kill(2) with a pid read from the target's cgroup.procs; a pid that ended
                // meanwhile gives ESRCH (counted as not reached).
                if unsafe { libc::kill(pid as i32, signal) } == 0 {
                    reached += 1;
                }
            }
            killpoint::step(|| format!("signalled the processes of {}", self.plan.targets[target].path.display()));
            let c = chaos_common::Counters { seen: pids.len() as u64, matched: pids.len() as u64, selected: pids.len() as u64, injected: reached, ..Default::default() };
            if let Err(e) = self.kernel.set_counters(rule as u32, &c) {
                log::warn!("{e}");
            }
        }
    }

    /// Thaws pause `i`'s target if no other open pause of it holds it.
    fn thaw(&mut self, i: usize) {
        let (target, was) = (self.pauses[i].target, self.pauses[i].frozen);
        self.pauses[i].done = true;
        self.pauses[i].frozen = false;
        if !was || self.pauses.iter().any(|p| p.target == target && p.frozen) {
            return;
        }
        let path = &self.plan.targets[target].path;
        match crate::target::set_frozen(path, false) {
            Ok(_) => killpoint::step(|| format!("thawed {}", path.display())),
            Err(e) => log::warn!("thawing {}: {e}", path.display()),
        }
    }

    fn attach_all(&mut self) -> Result<()> {
        let namespaces = self.plan.device_namespaces();
        let hooks: Vec<&Hook> = self.plan.cgroup_at.iter().map(|(h, _)| h).chain(&self.plan.sys_hooks).collect();
        self.kernel.preload(&Attachments::programs(&hooks, &self.plan.tc_directions));
        if !namespaces.is_empty() {
            let fq = self.plan.fq.map(|need| (need, qdisc::handle_for(&self.id)));
            let to = DeviceHooks { directions: &self.plan.tc_directions, tcx: self.plan.tcx, fq };
            self.attachments.attach_devices(&mut self.kernel, &mut self.journal, &namespaces, &to, true)?;
            self.note_guardian()?;
        }
        for (h, t) in &self.plan.cgroup_at.clone() {
            self.attachments.attach_cgroup(&mut self.kernel, h, &self.plan.targets[*t])?;
        }
        for h in &self.plan.sys_hooks.clone() {
            self.attachments.attach_sys(&mut self.kernel, h)?;
        }
        self.follow_open_files()?;
        // A harmless journaled change, for the guardian's test.
        if let Some(path) = std::env::var_os("CHAOS_TEST_FAKE_CHANGE") {
            let change = Change::TestFile { path: PathBuf::from(path), marker: self.id.clone() };
            self.journal.before(change.clone()).map_err(Error::Other)?;
            self.note_guardian()?;
            if let Change::TestFile { path, marker } = &change {
                std::fs::write(path, format!("{marker}\n")).map_err(|e| Error::Other(e.into()))?;
            }
        }
        Ok(())
    }

    /// Read/write `--path` rules act on files followed from their open: the files their targets'
    /// processes have open already are followed too (after `file_open` is attached, which follows
    /// those opened from then on), at the start and then at each refresh for the processes that
    /// joined a target meanwhile (moved in, with files open). A process born of one already
    /// looked at is left out: its files are its parent's or opened in the target, followed
    /// either way.
    fn follow_open_files(&mut self) -> Result<()> {
        let mut tgids = std::collections::BTreeMap::<u32, u64>::new();
        let own = std::process::id();
        for (i, f) in self.plan.faults.iter().enumerate() {
            if f.hooks.contains(&Hook::Lsm(chaos_common::sys::HOOK_LSM_FILE_FREE)) {
                for pid in self.plan.targets[f.target].pids().into_iter().filter(|&p| p != own) {
                    *tgids.entry(pid).or_default() |= 1 << i;
                }
            }
        }
        let before = std::mem::replace(&mut self.files_followed_of, tgids.keys().copied().collect());
        let parent = |pid: u32| procfs::process::Process::new(pid as i32).and_then(|p| p.stat()).map(|s| s.ppid as u32).ok();
        let joined: Vec<(u32, u64)> =
            tgids.into_iter().filter(|(pid, _)| !before.contains(pid) && !parent(*pid).is_some_and(|pp| before.contains(&pp))).collect();
        if joined.is_empty() {
            return Ok(());
        }
        if !before.is_empty() {
            log::debug!("following the open files of {} process(es) that joined the targets: {joined:?}", joined.len());
        }
        self.kernel.follow_open_files(&joined)
    }

    /// Exempts a newly started guardian from the session's faults.
    fn note_guardian(&mut self) -> Result<()> {
        if let Some(g) = self.journal.record().guardian {
            let mut s = self.kernel.session()?;
            if s.guardian_tgid != g {
                s.guardian_tgid = g;
                self.kernel.set_session(&s)?;
            }
        }
        Ok(())
    }

    fn set_windows(&mut self) -> Result<()> {
        // `chaos stop` may have come while attaching: then nothing starts.
        if self.stop_requested() {
            return Ok(());
        }
        let now = monotonic_ns();
        self.windows.clear();
        for (i, f) in self.plan.faults.iter_mut().enumerate() {
            let start = now + f.spec.args.after.as_nanos() as u64;
            let deadline = start + f.spec.args.duration.as_nanos() as u64;
            f.rule.start_ns = start;
            f.rule.deadline_ns = deadline;
            self.kernel.set_rule(i as u32, &f.rule)?;
            self.windows.push((start, deadline));
            let info = &mut self.journal.record_mut().faults[i];
            (info.start_ns, info.deadline_ns) = (start, deadline);
        }
        self.journal.save().map_err(|e| Error::Other(e.context("writing the session record")))?;
        killpoint::step(|| "rules started".into());
        // What the session does itself starts with the rules (a pause from +0s is in place when
        // chaos says "injecting").
        self.drive();
        // The packet hooks read the coarse clock, up to a tick behind: measured, a sender that
        // started the moment chaos said "injecting" had its first packets pass.
        wait_for_coarse_clock(now);
        Ok(())
    }

    /// Opens rule `i`'s window now, for `duration` (the demo's phases).
    pub fn start_rule_now(&mut self, i: usize, duration: Duration) -> Result<()> {
        let now = monotonic_ns();
        let f = self.plan.faults.get_mut(i).ok_or_else(|| usage!("no rule {i}"))?;
        (f.rule.start_ns, f.rule.deadline_ns) = (now, now + duration.as_nanos() as u64);
        self.kernel.set_rule(i as u32, &f.rule)?;
        self.windows[i] = (f.rule.start_ns, f.rule.deadline_ns);
        wait_for_coarse_clock(now);
        Ok(())
    }

    /// When the last rule ends (CLOCK_MONOTONIC ns).
    pub fn end_ns(&self) -> u64 {
        self.windows.iter().map(|w| w.1).max().unwrap_or(0)
    }

    pub fn rules(&self) -> usize {
        self.plan.faults.len()
    }

    /// Picks up namespaces and devices that appeared since the start, targets whose cgroup
    /// directory was made anew (a restarted container), and the open files of processes that
    /// joined a target of a read/write `--path` rule.
    pub fn refresh(&mut self) {
        self.follow_targets();
        if let Err(e) = self.follow_open_files() {
            log::warn!("{e}");
        }
        let namespaces = self.plan.device_namespaces();
        if namespaces.is_empty() {
            return;
        }
        let fq = self.plan.fq.map(|need| (need, qdisc::handle_for(&self.id)));
        let to = DeviceHooks { directions: &self.plan.tc_directions, tcx: self.plan.tcx, fq };
        if let Err(e) = self.attachments.attach_devices(&mut self.kernel, &mut self.journal, &namespaces, &to, false) {
            log::warn!("{e}");
        }
        if let Err(e) = self.note_guardian() {
            log::warn!("{e}");
        }
    }

    /// Whether `chaos stop` asked this session to end.
    pub fn stop_requested(&self) -> bool {
        self.kernel.session().is_ok_and(|s| s.stop_requested != 0)
    }

    /// (matched, injected) over all rules, now.
    pub fn totals(&self) -> (u64, u64) {
        let mut t = (0, 0);
        for i in 0..self.rules() {
            if let Ok(c) = self.kernel.counters(i as u32) {
                t.0 += c.matched;
                t.1 += c.injected;
            }
        }
        t
    }

    /// Each rule's counters and the session's state, for `--metrics`.
    pub fn metrics(&self, f: &mut crate::metrics::Families) {
        let now = monotonic_ns();
        let mut active = 0;
        for (i, p) in self.plan.faults.iter().enumerate() {
            let Ok(c) = self.kernel.counters(i as u32) else { continue };
            let (rule, kind, cgroup) = (i.to_string(), p.spec.fault.kind().to_string(), self.plan.targets[p.target].path.display().to_string());
            let l = [("session", self.id.as_str()), ("rule", rule.as_str()), ("kind", kind.as_str()), ("cgroup", cgroup.as_str())];
            f.counter("chaos_rule_matched_total", "Events (packets, calls) of the target that matched the rule while it was live.", &l, c.matched as f64);
            f.counter("chaos_rule_injected_total", "Events the rule's fault was done to.", &l, c.injected as f64);
            active += u32::from(self.windows.get(i).is_some_and(|w| w.0 <= now && now < w.1));
        }
        let l = [("session", self.id.as_str())];
        f.gauge("chaos_session_faults_active", "Rules whose window is open now.", &l, active as f64);
        let left = self.end_ns().saturating_sub(now) as f64 / 1e9;
        f.gauge("chaos_session_seconds_left", "Seconds until the session's last rule ends.", &l, left);
    }

    pub fn attached(&self) -> Attached {
        self.attachments.attached(&self.kernel)
    }

    /// The kernel id of the session's program `name`, if it is loaded (the kernel keeps only 15
    /// characters of a program's name, so the benchmark asks by the object's).
    pub fn program_id(&self, name: &str) -> Option<u32> {
        self.kernel.ebpf.program(name)?.info().ok().map(|i| i.id())
    }

    pub fn flush_log(&mut self) {
        self.kernel.flush_log();
    }

    /// Detaches everything (so a packet decided just before is counted where it is finally dealt
    /// with), reads the counters, undoes the journal, and reports.
    pub fn finish(mut self, ended_by: &str, elapsed: Duration) -> Result<Summary> {
        let attached = self.attached();
        self.teardown();
        let mut rules = Vec::new();
        for (i, f) in self.plan.faults.iter().enumerate() {
            let c = self.kernel.counters(i as u32)?;
            rules.push(RuleSummary::new(i as u32, f, &self.plan.targets[f.target], &c));
        }
        Ok(Summary {
            session: self.id.clone(),
            pid: std::process::id(),
            ended_by: ended_by.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            rules,
            kernel_errors: self.kernel.errors()?,
            attached,
            targets_changed: std::mem::take(&mut self.followed.changes),
        })
    }

    fn teardown(&mut self) {
        if self.finished {
            return;
        }
        if !self.windows.is_empty() {
            killpoint::wedge_at_end();
        }
        self.finished = true;
        guardian::beat();
        // The rules first: nothing is injected from here on, whatever detaching takes.
        let now = monotonic_ns();
        for (i, f) in self.plan.faults.iter_mut().enumerate() {
            if f.rule.deadline_ns > now {
                f.rule.deadline_ns = now;
                let _ = self.kernel.set_rule(i as u32, &f.rule);
            }
        }
        killpoint::step(|| "rules ended".into());
        self.attachments.detach_all(&mut self.journal);
        guardian::beat();
        // Nothing stops a process from here on: continue every held one.
        if let Some(mut h) = self.holder.take() {
            h.finish();
            for c in self.journal.changes().to_vec() {
                if matches!(c, Change::Stopped { .. }) {
                    let _ = self.journal.forget(&c);
                }
            }
        }
        // Nothing freezes from here on: thaw every frozen target.
        for i in 0..self.pauses.len() {
            self.thaw(i);
        }
        for c in self.journal.changes().to_vec() {
            if matches!(c, Change::Frozen { .. }) {
                let _ = self.journal.forget(&c);
            }
        }
        // Changes not undone by detaching (the test file) are undone here.
        for c in self.journal.changes().to_vec().iter().rev() {
            if matches!(c, Change::TestFile { .. }) {
                match journal::undo(c) {
                    Ok(_) => {
                        let _ = self.journal.forget(c);
                    }
                    Err(e) => log::warn!("{e:#}"),
                }
            }
        }
        self.journal.close();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.teardown();
    }
}
