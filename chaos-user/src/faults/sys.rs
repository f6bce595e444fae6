//! `chaos sys fail`: make one syscall fail with a chosen errno for one cgroup.
//!
//! Backends, in the order `--backend auto` tries them:
//! - the open family: BPF LSM on `file_open`, then fmod_ret on `security_file_open`, then kprobe;
//! - any other syscall: fmod_ret on `__x64_sys_<name>` (no kprobe needed), then kprobe +
//!   `bpf_override_return` on it (needs CONFIG_BPF_KPROBE_OVERRIDE).

use aya::{
    Btf,
    maps::{Array, PerCpuArray},
    programs::{KProbe, Lsm, ProgramError, links::FdLink},
};
use chaos_common::{
    ppm_to_threshold,
    sys::{COUNTERS_MAP, PROG_KPROBE, PROG_LSM_FILE_OPEN, RULES_MAP, SysCounters, SysRule},
};

use super::{Attached, Counters, Fault, Injection, RuleCounters, RunOptions};
use crate::{
    error::{Error, Result, chain},
    kernel::{
        Kernel,
        fmod_ret::{FmodRet, FmodRetError},
    },
    probe::Backend,
    target::{Cgroup, cgroup2_mount},
    unsupported, usage,
};

/// Which backend the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SysBackend {
    /// The best this kernel offers for the syscall.
    Auto,
    Lsm,
    FmodRet,
    Kprobe,
}

/// Syscalls a BPF LSM hook can fail, with that hook.
const LSM_HOOKS: &[(&str, &str)] = &[("open", "file_open"), ("openat", "file_open"), ("openat2", "file_open"), ("creat", "file_open")];

#[derive(Debug)]
pub struct SysFail {
    pub syscall: String,
    /// Positive errno.
    pub errno: i32,
    pub ppm: u32,
    pub backend: SysBackend,
}

/// "ENOENT", "enoent" or "2" → 2.
pub fn parse_errno(s: &str) -> std::result::Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..4096).contains(&n) { Ok(n) } else { Err(format!("errno {n} is outside 1-4095")) };
    }
    let want = s.to_ascii_uppercase();
    (1..4096)
        .find(|&n| format!("{:?}", nix::errno::Errno::from_raw(n)) == want)
        .ok_or_else(|| format!("'{s}' is not an errno name; give one such as ENOENT, EIO or EACCES, or a number"))
}

/// A syscall name: lower-case letters, digits and underscores.
pub fn parse_syscall(s: &str) -> std::result::Result<String, String> {
    if !s.is_empty() && s.len() < 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not a syscall name; give one such as openat, read or connect"))
    }
}

impl SysFail {
    fn lsm_hook(&self) -> Option<&'static str> {
        LSM_HOOKS.iter().find(|(s, _)| *s == self.syscall).map(|(_, h)| *h)
    }
}

impl Fault for SysFail {
    fn name(&self) -> &'static str {
        "sys fail"
    }

    fn describe(&self) -> String {
        let name = format!("{:?}", nix::errno::Errno::from_raw(self.errno));
        format!("fail {}% of {}() calls with {name}", self.ppm as f64 / 10_000.0, self.syscall)
    }

    fn needs(&self) -> &'static [&'static [Backend]] {
        match (self.backend, self.lsm_hook().is_some()) {
            (SysBackend::Lsm, _) => &[&[Backend::BpfLsm]],
            (SysBackend::FmodRet, true) => &[&[Backend::FmodRetSecurity]],
            (SysBackend::FmodRet, false) => &[&[Backend::FmodRetSyscall]],
            (SysBackend::Kprobe, _) => &[&[Backend::KprobeOverride]],
            (SysBackend::Auto, true) => &[&[Backend::BpfLsm, Backend::FmodRetSecurity, Backend::KprobeOverride]],
            (SysBackend::Auto, false) => &[&[Backend::FmodRetSyscall, Backend::KprobeOverride]],
        }
    }

    fn start(&self, target: &Cgroup, deadline_ns: u64, opts: &RunOptions, available: &[Backend]) -> Result<Box<dyn Injection>> {
        let open_family = self.lsm_hook().is_some();
        let backend = match self.backend {
            SysBackend::Auto => {
                let first = self.needs()[0].iter().find(|b| available.contains(b)).copied();
                match first {
                    Some(Backend::BpfLsm) => SysBackend::Lsm,
                    Some(Backend::FmodRetSecurity | Backend::FmodRetSyscall) => SysBackend::FmodRet,
                    _ => SysBackend::Kprobe,
                }
            }
            b => b,
        };
        let use_lsm = backend == SysBackend::Lsm;
        if use_lsm && !open_family {
            let known: Vec<&str> = LSM_HOOKS.iter().map(|(s, _)| *s).collect();
            return Err(usage!("no LSM hook fails {}(); the lsm backend covers {}: use --backend kprobe", self.syscall, known.join(", ")));
        }
        let mount = cgroup2_mount()?;
        let level = target.path.strip_prefix(&mount).map(|p| p.components().count()).unwrap_or(0) as u32;
        let mut kernel = Kernel::load(0x100, opts.log_packets)?;
        let rule = SysRule {
            deadline_ns,
            threshold: ppm_to_threshold(self.ppm),
            cgroup_id: target.id,
            cgroup_level: level,
            errno: self.errno as u32,
            active: 1,
            _pad: 0,
        };
        let mut rules: Array<_, SysRule> =
            Array::try_from(kernel.ebpf.map_mut(RULES_MAP).ok_or_else(no_map)?).map_err(|e| Error::Other(e.into()))?;
        rules.set(0, rule, 0).map_err(|e| Error::Other(e.into()))?;

        if backend == SysBackend::FmodRet {
            // The open family through the LSM layer (one hook covers them all), others directly.
            let function = if open_family { "security_file_open".to_string() } else { format!("__x64_sys_{}", self.syscall) };
            let btf = Btf::from_sys_fs().map_err(|e| unsupported!("the kernel exposes no BTF ({e}); fmod_ret needs it"))?;
            let attached = kernel.fmod_ret(&function, &btf).map_err(|e| match e {
                FmodRetError::NoFunction(_) => usage!("this kernel has no syscall {}() (no {function} in its BTF): check the name", self.syscall),
                FmodRetError::Load { .. } | FmodRetError::Attach { .. } => unsupported!("this kernel refused fmod_ret on {function} ({e}); see `chaos probe`"),
                other => Error::Other(other.into()),
            })?;
            let link_id = Some(attached.link_id);
            return Ok(Box::new(SysInjection { kernel, link: Some(Held::FmodRet(attached)), link_id, backend: "fmod_ret" }));
        }
        let (link, backend) = if use_lsm {
            let btf = Btf::from_sys_fs().map_err(|e| unsupported!("the kernel exposes no BTF ({e}); the lsm backend needs it"))?;
            let prog: &mut Lsm = kernel.get(PROG_LSM_FILE_OPEN)?;
            prog.load("file_open", &btf).map_err(|e| load_refused("BPF LSM", &e))?;
            let id = prog.attach().map_err(|e| Error::Other(anyhow::anyhow!("attaching the LSM program: {}", chain(&e))))?;
            (prog.take_link(id).map_err(|e| Error::Other(e.into()))?.into(), "lsm")
        } else {
            let prog: &mut KProbe = kernel.get(PROG_KPROBE)?;
            prog.load().map_err(|e| load_refused("kprobe", &e))?;
            let symbol = format!("__x64_sys_{}", self.syscall);
            let id = prog.attach(&symbol, 0).map_err(|e| {
                if kallsyms_has(&symbol) == Some(false) {
                    usage!("this kernel has no syscall {}() (no {symbol}): check the name", self.syscall)
                } else {
                    Error::Other(anyhow::anyhow!("attaching a kprobe to {symbol}: {}", chain(&e)))
                }
            })?;
            let link = prog.take_link(id).map_err(|e| Error::Other(e.into()))?;
            (FdLink::try_from(link).map_err(|e| Error::Other(e.into()))?, "kprobe")
        };
        let link_id = link.info().map(|i| i.id()).ok();
        Ok(Box::new(SysInjection { kernel, link: Some(Held::Link(link)), link_id, backend }))
    }
}

fn no_map() -> Error {
    Error::Other(anyhow::anyhow!("the embedded kernel object lacks a map chaos needs"))
}

fn load_refused(kind: &str, e: &ProgramError) -> Error {
    if let ProgramError::LoadError { verifier_log, .. } = e {
        log::debug!("verifier log:\n{verifier_log}");
    }
    unsupported!("this kernel refused the {kind} program ({}); see `chaos probe`", chain(e))
}

/// Whether /proc/kallsyms lists `symbol` (None if it cannot be read).
fn kallsyms_has(symbol: &str) -> Option<bool> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    Some(text.lines().any(|l| l.split_whitespace().nth(2) == Some(symbol)))
}

/// What keeps the program attached; dropping it detaches.
#[allow(dead_code, reason = "held for its Drop")]
enum Held {
    Link(FdLink),
    FmodRet(FmodRet),
}

struct SysInjection {
    kernel: Kernel,
    /// `None` once detached.
    link: Option<Held>,
    link_id: Option<u32>,
    backend: &'static str,
}

impl Injection for SysInjection {
    fn detach(&mut self) {
        self.link = None;
    }

    fn set_deadline(&mut self, deadline_ns: u64) -> Result<()> {
        self.kernel.update_rule::<SysRule>(RULES_MAP, 0, |r| r.deadline_ns = deadline_ns)
    }

    fn refresh(&mut self) {}

    fn counters(&self) -> Result<Counters> {
        let map = self.kernel.ebpf.map(COUNTERS_MAP).ok_or_else(no_map)?;
        let per_cpu: PerCpuArray<_, SysCounters> = PerCpuArray::try_from(map).map_err(|e| Error::Other(e.into()))?;
        let mut sum = SysCounters::default();
        for c in per_cpu.get(&0, 0).map_err(|e| Error::Other(e.into()))?.iter() {
            sum.add(c);
        }
        Ok(Counters {
            rules: vec![RuleCounters {
                rule: 0,
                fault: format!("fail ({})", self.backend),
                seen: sum.seen,
                matched: sum.matched,
                injected: sum.failed,
                detail: [("failed".to_string(), sum.failed)].into_iter().collect(),
            }],
            kernel_errors: Default::default(),
        })
    }

    fn attached(&self) -> Attached {
        let mut programs: Vec<u32> = self.kernel.ebpf.programs().filter_map(|(_, p)| p.info().ok().map(|i| i.id())).collect();
        if let Some(Held::FmodRet(f)) = &self.link {
            programs.push(f.prog_id);
        }
        Attached { programs, links: self.link_id.into_iter().collect(), devices: Vec::new() }
    }

    fn flush_log(&mut self) {
        self.kernel.flush_log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_by_name_or_number() {
        assert_eq!(parse_errno("ENOENT"), Ok(2));
        assert_eq!(parse_errno("eacces"), Ok(13));
        assert_eq!(parse_errno("5"), Ok(5));
        assert!(parse_errno("0").is_err());
        assert!(parse_errno("EWHATEVER").is_err());
    }

    #[test]
    fn syscall_names_are_plain() {
        assert_eq!(parse_syscall("openat"), Ok("openat".into()));
        assert!(parse_syscall("open at").is_err());
        assert!(parse_syscall("../x").is_err());
        assert!(parse_syscall("").is_err());
    }
}
