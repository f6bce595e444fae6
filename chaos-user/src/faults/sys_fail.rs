//! `sys.fail`: make a syscall fail with an errno for one cgroup, in the kernel.
//!
//! Backends, in the order `--backend auto` tries them:
//! - connect: the target cgroup's `connect4`/`connect6` hooks (any kernel with cgroup BPF and
//!   `bpf_set_retval`, 5.18+; inet sockets only), then fmod_ret, then kprobe;
//! - the open family: BPF LSM on `file_open`, then fmod_ret on `security_file_open`, then kprobe;
//! - any other syscall: fmod_ret on `__x64_sys_<name>` (no kprobe needed), then kprobe +
//!   `bpf_override_return` on it (needs CONFIG_BPF_KPROBE_OVERRIDE).

use chaos_common::{
    Action, Counters, Rule, ppm_to_threshold,
    sys::{HOOK_CONNECT, HOOK_FILE_OPEN, HOOK_SYSCALL},
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};

use super::{Fault, Hook, Kind};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "sys.fail", family: "sys", verb: "fail", command, build };

fn command() -> clap::Command {
    SysFailArgs::augment_args(clap::Command::new("fail"))
        .about("Make a syscall fail with an errno, in the kernel, for the target's processes only.")
        .after_help(
            "Examples:\n  chaos sys fail --cgroup /system.slice/api.service --syscall connect --errno ECONNREFUSED\n  \
             chaos sys fail --cgroup /system.slice/db.service --syscall openat --errno EIO --percent 10\n  \
             chaos sys fail --pid 4242 --syscall fsync --errno ENOSPC --backend kprobe --for 30s",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = SysFailArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let nr: syscalls::Sysno = a
        .syscall
        .parse()
        .map_err(|_| usage!("this machine has no syscall {}(): give one such as openat, read or fsync", a.syscall))?;
    Ok(Box::new(SysFail { syscall: a.syscall, nr: nr.id() as u32, errno: a.errno, ppm: a.percent, backend: a.backend }))
}

#[derive(Args, Debug)]
pub struct SysFailArgs {
    /// The syscall, by name (openat, read, fsync, connect, ...).
    #[arg(long, value_parser = parse_syscall)]
    pub syscall: String,
    /// The error to return: a name (ENOENT, EIO, ...) or a number.
    #[arg(long, value_parser = parse_errno)]
    pub errno: i32,
    /// Probability of failing a call, 0-100.
    #[arg(long, value_parser = cli::parse_percent, value_name = "P", default_value = "100")]
    pub percent: u32,
    /// cgroup covers connect (inet sockets); lsm and fmod-ret (on security_file_open) cover the
    /// open family; fmod-ret (on the syscall entry) and kprobe cover any syscall; auto picks the
    /// first this kernel offers (`chaos probe`).
    #[arg(long, value_enum, default_value_t = SysBackend::Auto)]
    pub backend: SysBackend,
}

/// Which backend the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SysBackend {
    /// The best this kernel offers for the syscall.
    Auto,
    Cgroup,
    Lsm,
    FmodRet,
    Kprobe,
}

/// Syscalls the `file_open` hooks (LSM, fmod_ret on `security_file_open`) fail.
const OPEN_FAMILY: &[&str] = &["open", "openat", "openat2", "creat"];

#[derive(Debug)]
pub struct SysFail {
    pub syscall: String,
    pub nr: u32,
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
    fn is_connect(&self) -> bool {
        self.syscall == "connect"
    }

    fn open_family(&self) -> bool {
        OPEN_FAMILY.contains(&self.syscall.as_str())
    }

    fn entry(&self) -> String {
        format!("__x64_sys_{}", self.syscall)
    }
}

impl Fault for SysFail {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let name = format!("{:?}", nix::errno::Errno::from_raw(self.errno));
        format!("fail {} of {}() calls with {name}", super::percent(self.ppm), self.syscall)
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        if self.is_connect() {
            return vec![match self.backend {
                SysBackend::Cgroup => &[Backend::CgroupSockAddr],
                SysBackend::FmodRet => &[Backend::FmodRetSyscall],
                SysBackend::Kprobe => &[Backend::KprobeOverride],
                SysBackend::Lsm => &[Backend::BpfLsm],
                SysBackend::Auto => &[Backend::CgroupSockAddr, Backend::FmodRetSyscall, Backend::KprobeOverride],
            }];
        }
        vec![match (self.backend, self.open_family()) {
            (SysBackend::Cgroup, _) => &[Backend::CgroupSockAddr],
            (SysBackend::Lsm, _) => &[Backend::BpfLsm],
            (SysBackend::FmodRet, true) => &[Backend::FmodRetSecurity],
            (SysBackend::FmodRet, false) => &[Backend::FmodRetSyscall],
            (SysBackend::Kprobe, _) => &[Backend::KprobeOverride],
            (SysBackend::Auto, true) => &[Backend::BpfLsm, Backend::FmodRetSecurity, Backend::KprobeOverride],
            (SysBackend::Auto, false) => &[Backend::FmodRetSyscall, Backend::KprobeOverride],
        }]
    }

    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>> {
        let backend = match self.backend {
            SysBackend::Auto => {
                let first = self.needs()[0].iter().find(|b| available.contains(b)).copied();
                match first {
                    Some(Backend::CgroupSockAddr) => SysBackend::Cgroup,
                    Some(Backend::BpfLsm) => SysBackend::Lsm,
                    Some(Backend::FmodRetSecurity | Backend::FmodRetSyscall) => SysBackend::FmodRet,
                    _ => SysBackend::Kprobe,
                }
            }
            b => b,
        };
        Ok(vec![match (backend, self.open_family()) {
            (SysBackend::Cgroup, _) if self.is_connect() => Hook::CgroupConnect,
            (SysBackend::Cgroup, _) => {
                return Err(usage!("no cgroup hook fails {}(); the cgroup backend covers connect", self.syscall));
            }
            (SysBackend::Lsm, true) => Hook::LsmFileOpen,
            (SysBackend::Lsm, false) => {
                return Err(usage!(
                    "no LSM hook fails {}(); the lsm backend covers {}: use --backend kprobe or fmod-ret",
                    self.syscall,
                    OPEN_FAMILY.join(", ")
                ));
            }
            (SysBackend::FmodRet, true) => Hook::FmodRetFileOpen,
            (SysBackend::FmodRet, false) => Hook::FmodRetSyscall(self.entry()),
            _ => Hook::Kprobe(self.entry()),
        }])
    }

    fn fill(&self, rule: &mut Rule, hooks: &[Hook]) -> Result<()> {
        rule.action = Action::SysFail as u32;
        rule.threshold = ppm_to_threshold(self.ppm);
        rule.sys.hook = match hooks.first() {
            Some(Hook::CgroupConnect) => HOOK_CONNECT,
            Some(Hook::LsmFileOpen | Hook::FmodRetFileOpen) => HOOK_FILE_OPEN,
            _ => HOOK_SYSCALL,
        };
        rule.sys.syscall_nr = self.nr;
        rule.sys.retval = -(self.errno as i64);
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("failed", c.injected)]
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

    #[test]
    fn auto_picks_the_first_backend_this_kernel_has() {
        let open = SysFail { syscall: "openat".into(), nr: 257, errno: 5, ppm: 0, backend: SysBackend::Auto };
        assert_eq!(open.hooks(&[Backend::FmodRetSecurity, Backend::BpfLsm]).unwrap(), vec![Hook::LsmFileOpen]);
        assert_eq!(open.hooks(&[Backend::FmodRetSecurity]).unwrap(), vec![Hook::FmodRetFileOpen]);
        let fsync = SysFail { syscall: "fsync".into(), nr: 74, errno: 28, ppm: 0, backend: SysBackend::Auto };
        assert_eq!(fsync.hooks(&[Backend::KprobeOverride]).unwrap(), vec![Hook::Kprobe("__x64_sys_fsync".into())]);
        let lsm = SysFail { backend: SysBackend::Lsm, ..fsync };
        assert!(lsm.hooks(&[Backend::BpfLsm]).is_err(), "no LSM hook for fsync");
        let connect = SysFail { syscall: "connect".into(), nr: 42, errno: 111, ppm: 0, backend: SysBackend::Auto };
        assert_eq!(connect.hooks(&[Backend::KprobeOverride, Backend::CgroupSockAddr]).unwrap(), vec![Hook::CgroupConnect]);
        assert_eq!(connect.hooks(&[Backend::KprobeOverride]).unwrap(), vec![Hook::Kprobe("__x64_sys_connect".into())]);
    }
}
