//! `sys.fail`: make a syscall fail with an errno for one cgroup, in the kernel.
//!
//! Backends, in the order `--backend auto` tries them:
//! - socket calls a cgroup hook sees (connect, bind, ...): the target cgroup's hooks (any kernel
//!   with cgroup BPF and `bpf_set_retval`, 5.18+; inet sockets only), then fmod_ret, then kprobe,
//!   then the BPF LSM's socket hooks;
//! - the open family: BPF LSM on `file_open`, then fmod_ret on `security_file_open`, then kprobe;
//! - any other syscall: fmod_ret on `__x64_sys_<name>` (no kprobe needed), then kprobe +
//!   `bpf_override_return` on it (needs CONFIG_BPF_KPROBE_OVERRIDE), which skip the call whole;
//!   then, for the calls an LSM hook checks (`sys::LSM_CALLS`: read/write, stat, mkdir, exec,
//!   clone, kill, listen, accept, recv, ...), that hook: the one way on a distribution kernel
//!   without error injection (Debian's).

use chaos_common::{
    Action, Counters, Rule,
    sys::{HOOK_FILE_OPEN, HOOK_FOLLOW_OPEN, HOOK_LSM_FILE_FREE, HOOK_LSM_FILE_PERMISSION, HOOK_SYSCALL, SysMatch},
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};

use super::{
    Fault, Hook, Kind,
    sys::{CGROUP_CALLS, SysCallArgs, cgroup_call, errno_name, lsm_calls, parse_errno},
};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "sys.fail", family: "sys", verb: "fail", command, build };

fn command() -> clap::Command {
    SysFailArgs::augment_args(clap::Command::new("fail"))
        .about("Make a syscall fail with an errno, in the kernel, for the target's processes only.")
        .after_help(
            "Examples:\n  chaos sys fail --cgroup /system.slice/api.service --syscall connect --errno ECONNREFUSED\n  \
             chaos sys fail --cgroup /system.slice/db.service --syscall openat --errno EIO --percent 10\n  \
             chaos sys fail --pid 4242 --syscall fsync --errno ENOSPC --when 3+ --backend kprobe --for 30s\n  \
             chaos sys fail --syscall openat --errno ENOENT --when 3 -- ./app --its-flags\n  \
             chaos sys fail --cgroup /system.slice/api.service --syscall openat --errno EACCES --path /etc/ssl\n\n\
             `chaos sys syscalls` shows, for this kernel, which backend fails each syscall.",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = SysFailArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let calls = a.call.calls()?;
    let result = match (a.errno, a.retval) {
        (Some(e), None) => Failure::Errno(e),
        (None, Some(v)) => Failure::Retval(v),
        _ => return Err(usage!("give one of --errno and --retval: what the failed call returns")),
    };
    if a.path.is_some()
        && let Some((name, _)) = calls.iter().find(|(name, _)| !super::sys::path_filtered(name))
    {
        return Err(usage!(
            "--path applies to the calls whose LSM hook the kernel gives the file ({}), where it tells its path; not {name}",
            super::sys::path_filtered_calls().join(", ")
        ));
    }
    if a.path.is_some() && !matches!(a.backend, SysBackend::Auto | SysBackend::Lsm) {
        return Err(usage!("--path is matched by the BPF LSM's hooks, which resolve the file's path: use --backend lsm (or auto)"));
    }
    Ok(Box::new(SysFail { call: a.call, calls, result, backend: a.backend, path: a.path }))
}

#[derive(Args, Debug)]
pub struct SysFailArgs {
    #[command(flatten)]
    pub call: SysCallArgs,
    /// The error to return: a name (ENOENT, EIO, ...) or a number.
    #[arg(long, value_parser = parse_errno, conflicts_with = "retval")]
    pub errno: Option<i32>,
    /// Any return value instead of an error (strace's retval=): fmod-ret and kprobe only, which
    /// replace the syscall's result; the call is not made.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub retval: Option<i64>,
    /// cgroup covers inet socket calls; lsm covers the calls an LSM hook checks (open, read,
    /// write, stat, mkdir, unlink, exec, clone, kill, socket calls, ...); fmod-ret (on
    /// security_file_open) the open family; fmod-ret (on the syscall entry) and kprobe any
    /// syscall; auto picks the first this kernel offers. `chaos sys syscalls` shows the choice.
    #[arg(long, value_enum, default_value_t = SysBackend::Auto)]
    pub backend: SysBackend,
    /// Only the calls on files under this directory or file (absolute, in the target's own view:
    /// a container's root is its own), resolved by the kernel (symlinks, `..`, relative paths
    /// and descriptors included): the open family, mmap and ioctl, through the BPF LSM; and
    /// read/write and their kin on the files under it that the target has open (those open when
    /// the session starts, and each opened after, followed from its open).
    #[arg(long, value_name = "PREFIX", value_parser = parse_path_prefix)]
    pub path: Option<String>,
}

/// An absolute path of at most `MAX_PATH_PREFIX` bytes, without a trailing `/`.
fn parse_path_prefix(s: &str) -> std::result::Result<String, String> {
    use chaos_common::sys::MAX_PATH_PREFIX;
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not absolute: give the path from the target's root, e.g. /etc/ssl"));
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("/ holds every file: leave --path out".into());
    }
    if trimmed.len() > MAX_PATH_PREFIX {
        return Err(format!("a --path prefix is at most {MAX_PATH_PREFIX} bytes; this one has {}", trimmed.len()));
    }
    Ok(trimmed.to_string())
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

/// What a failed call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A positive errno: the call returns its negative.
    Errno(i32),
    /// Any value (`--retval`).
    Retval(i64),
}

/// Syscalls the `file_open` hooks (LSM, fmod_ret on `security_file_open`) fail.
pub const OPEN_FAMILY: &[&str] = &["open", "openat", "openat2", "creat"];

#[derive(Debug)]
pub struct SysFail {
    pub call: SysCallArgs,
    /// Names and numbers.
    pub calls: Vec<(String, u32)>,
    pub result: Failure,
    pub backend: SysBackend,
    /// `--path`: only opens of files under it.
    pub path: Option<String>,
}

/// The backends that can fail `syscall`, best first (what `--backend auto` tries).
pub fn backends_for(syscall: &str) -> &'static [Backend] {
    if cgroup_call(syscall).is_some() {
        &[Backend::CgroupSockAddr, Backend::FmodRetSyscall, Backend::KprobeOverride, Backend::BpfLsm]
    } else if OPEN_FAMILY.contains(&syscall) {
        &[Backend::BpfLsm, Backend::FmodRetSecurity, Backend::KprobeOverride]
    } else if lsm_calls(syscall).next().is_some() {
        &[Backend::FmodRetSyscall, Backend::KprobeOverride, Backend::BpfLsm]
    } else {
        &[Backend::FmodRetSyscall, Backend::KprobeOverride]
    }
}

fn entry(syscall: &str) -> String {
    format!("__x64_sys_{syscall}")
}

impl SysFail {
    /// Whether `syscall` is failed at `security_file_open` (errno faults on the open family).
    fn via_file_open(&self, syscall: &str) -> bool {
        OPEN_FAMILY.contains(&syscall) && matches!(self.result, Failure::Errno(_))
    }

    /// The backends that can fail `syscall` as asked, best first.
    fn needs_for(&self, syscall: &str) -> &'static [Backend] {
        if self.path.is_some() {
            // Only the LSM's file_open program resolves paths (bpf_d_path).
            return &[Backend::BpfLsm];
        }
        match self.backend {
            SysBackend::Cgroup => &[Backend::CgroupSockAddr],
            SysBackend::Lsm => &[Backend::BpfLsm],
            SysBackend::FmodRet if OPEN_FAMILY.contains(&syscall) => &[Backend::FmodRetSecurity],
            SysBackend::FmodRet => &[Backend::FmodRetSyscall],
            SysBackend::Kprobe => &[Backend::KprobeOverride],
            // Only the backends that replace the result can return any value.
            SysBackend::Auto if matches!(self.result, Failure::Retval(_)) => &[Backend::FmodRetSyscall, Backend::KprobeOverride],
            SysBackend::Auto => backends_for(syscall),
        }
    }

    /// The hooks that fail `syscall` here (two for unlinkat under the LSM: one per flag).
    fn hooks_for(&self, syscall: &str, available: &[Backend]) -> Result<Vec<Hook>> {
        // fmod_ret on the syscall's entry attaches by its BTF id, which a zero-argument syscall's
        // entry (an alias) does not have: such a syscall goes to the next backend.
        let via_file_open = self.via_file_open(syscall);
        let entry_in_btf = || crate::kernel::btf_has_function(&entry(syscall)) != Some(false);
        let usable = |b: &Backend| available.contains(b) && (*b != Backend::FmodRetSyscall || via_file_open || entry_in_btf());
        let backend = match self.backend {
            SysBackend::FmodRet if !via_file_open && !entry_in_btf() => {
                return Err(usage!(
                    "fmod_ret cannot attach to {}: this kernel's BTF has no such function (a zero-argument syscall's entry is an alias); use --backend kprobe",
                    entry(syscall)
                ));
            }
            SysBackend::Auto => match self.needs_for(syscall).iter().find(|b| usable(b)) {
                Some(Backend::CgroupSockAddr) => SysBackend::Cgroup,
                Some(Backend::BpfLsm) => SysBackend::Lsm,
                Some(Backend::FmodRetSecurity | Backend::FmodRetSyscall) => SysBackend::FmodRet,
                _ => SysBackend::Kprobe,
            },
            b => b,
        };
        if let Failure::Retval(_) = self.result
            && matches!(backend, SysBackend::Cgroup | SysBackend::Lsm)
        {
            return Err(usage!(
                "--retval needs a backend that replaces the syscall's result (fmod-ret or kprobe); {} hooks can only return an errno: use --errno",
                if backend == SysBackend::Cgroup { "cgroup" } else { "LSM" }
            ));
        }
        Ok(vec![match backend {
            SysBackend::Cgroup => match cgroup_call(syscall) {
                Some(c) => Hook::CgroupSock(c.hook),
                None => {
                    let covered: Vec<&str> = CGROUP_CALLS.iter().flat_map(|c| c.syscalls.iter().copied()).collect();
                    return Err(usage!("no cgroup hook fails {syscall}(); the cgroup backend covers {}", covered.join(", ")));
                }
            },
            SysBackend::Lsm => {
                let hooks: Vec<Hook> = lsm_calls(syscall).map(|c| Hook::Lsm(c.hook)).collect();
                if hooks.is_empty() {
                    return Err(usage!("no LSM hook fails {syscall}(); `chaos sys syscalls` shows what does: use --backend kprobe or fmod-ret"));
                }
                return Ok(hooks);
            }
            // --retval on the open family: the syscall's own entry, whose result is the value.
            SysBackend::FmodRet if via_file_open => Hook::FmodRetFileOpen,
            SysBackend::FmodRet => Hook::FmodRetSyscall(entry(syscall)),
            _ => Hook::Kprobe(entry(syscall)),
        }])
    }
}

/// The key under which a hook finds the rules for `nr`: a cgroup hook sees one call (or
/// family) and not its number; the others see the number.
fn key_of(hook: &Hook, nr: u32) -> u64 {
    SysMatch::rules_key(hook_id(hook), nr)
}

/// `chaos_common::sys::HOOK_*` of a syscall-failing hook.
fn hook_id(hook: &Hook) -> u32 {
    match hook {
        Hook::CgroupSock(h) | Hook::Lsm(h) => *h,
        Hook::FmodRetFileOpen => HOOK_FILE_OPEN,
        _ => HOOK_SYSCALL,
    }
}

impl Fault for SysFail {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let with = match self.result {
            Failure::Errno(e) => errno_name(e).unwrap_or_else(|| format!("errno {e}")),
            Failure::Retval(v) => format!("return value {v}"),
        };
        let under = self.path.as_ref().map(|p| format!(" on files under {p}")).unwrap_or_default();
        format!("fail {} of {} calls{under} with {with}{}", super::percent(self.call.percent), self.call.names(), self.call.describe_when())
    }

    /// A syscall named on its own needs a backend (checked with the reason if none works); those
    /// of a set are checked too, and `hooks` names the ones this kernel cannot fail.
    fn needs(&self) -> Vec<&'static [Backend]> {
        let mut needs: Vec<&'static [Backend]> = self.calls.iter().filter(|(name, _)| self.call.syscalls.contains(name)).map(|(name, _)| self.needs_for(name)).collect();
        // Read/write under a path follows the files open at the start through an iterator.
        if self.path.is_some() && self.calls.iter().any(|(name, _)| lsm_calls(name).any(|c| c.hook == HOOK_LSM_FILE_PERMISSION)) {
            needs.push(&[Backend::TaskFileIter]);
        }
        needs
    }

    fn wants(&self) -> Vec<&'static [Backend]> {
        self.calls.iter().filter(|(name, _)| !self.call.syscalls.contains(name)).map(|(name, _)| self.needs_for(name)).collect()
    }

    /// One hook per syscall (several syscalls may share one), in the order of `calls`.
    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>> {
        // The syscalls a set brought (one named on its own was checked with its reason).
        let cannot: Vec<&str> = self
            .calls
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !self.call.syscalls.iter().any(|s| s == name) && !self.needs_for(name).iter().any(|b| available.contains(b)))
            .collect();
        if !cannot.is_empty() {
            let can = self.calls.len() - cannot.len();
            return Err(crate::unsupported!(
                "this kernel can fail {can} of the {} syscalls asked for, not {} (`chaos sys syscalls` says why): name the ones it can fail",
                self.calls.len(),
                cannot.join(", ")
            ));
        }
        let mut hooks = Vec::new();
        for (name, _) in &self.calls {
            for hook in self.hooks_for(name, available)? {
                if !hooks.contains(&hook) {
                    hooks.push(hook);
                }
            }
        }
        // Read/write under a path: the file_open program follows the files opened under it, and
        // file_free_security forgets them as they close.
        if self.path.is_some() && hooks.contains(&Hook::Lsm(HOOK_LSM_FILE_PERMISSION)) {
            for follow in [Hook::Lsm(HOOK_FILE_OPEN), Hook::Lsm(HOOK_LSM_FILE_FREE)] {
                if !hooks.contains(&follow) {
                    hooks.push(follow);
                }
            }
        }
        Ok(hooks)
    }

    fn fill(&self, rule: &mut Rule, hooks: &[Hook]) -> Result<()> {
        // The first call's hook and number: what a logged call is named by when its hook does
        // not know the number.
        let hook = hooks.first().map(hook_id).unwrap_or(HOOK_SYSCALL);
        self.call.fill(rule, Action::SysFail, hook, self.calls[0].1);
        rule.sys.retval = match self.result {
            Failure::Errno(e) => -(e as i64),
            Failure::Retval(v) => v,
        };
        if let Some(path) = &self.path {
            let prefix = chaos_common::sys::PathPrefix::of(path.as_bytes());
            (rule.sys.path_len, rule.sys.path_hash) = (prefix.len, prefix.hash);
        }
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("failed", c.injected)]
    }

    fn sys_keys(&self, hooks: &[Hook]) -> Vec<u64> {
        // Which of the hooks serves each call: the one `hook_for` chose, found again by what it
        // reaches.
        // (a syscall of two LSM hooks, unlinkat, has a key at each).
        let mut keys = Vec::new();
        for (name, nr) in &self.calls {
            let serves = |h: &&Hook| match h {
                Hook::CgroupSock(id) => cgroup_call(name).is_some_and(|c| c.hook == *id),
                Hook::Lsm(id) => lsm_calls(name).any(|c| c.hook == *id),
                Hook::FmodRetFileOpen => self.via_file_open(name),
                Hook::FmodRetSyscall(f) | Hook::Kprobe(f) => *f == entry(name),
                _ => false,
            };
            keys.extend(hooks.iter().filter(serves).map(|h| key_of(h, *nr)));
        }
        if hooks.contains(&Hook::Lsm(HOOK_LSM_FILE_FREE)) {
            keys.push(SysMatch::rules_key(HOOK_FOLLOW_OPEN, 0));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(syscall: &str, backend: SysBackend, result: Failure) -> SysFail {
        let call = SysCallArgs { syscalls: syscall.split(',').map(String::from).collect(), when: None, count_per: super::super::sys::CountPer::Thread, percent: 0, log_calls: false };
        SysFail { calls: call.calls().unwrap(), call, result, backend, path: None }
    }

    #[test]
    fn auto_picks_the_first_backend_this_kernel_has() {
        let open = fail("openat", SysBackend::Auto, Failure::Errno(5));
        assert_eq!(open.hooks(&[Backend::FmodRetSecurity, Backend::BpfLsm]).unwrap(), vec![Hook::Lsm(HOOK_FILE_OPEN)]);
        assert_eq!(open.hooks(&[Backend::FmodRetSecurity]).unwrap(), vec![Hook::FmodRetFileOpen]);
        let fsync = fail("fsync", SysBackend::Auto, Failure::Errno(28));
        assert_eq!(fsync.hooks(&[Backend::KprobeOverride]).unwrap(), vec![Hook::Kprobe("__x64_sys_fsync".into())]);
        assert!(fail("fsync", SysBackend::Lsm, Failure::Errno(28)).hooks(&[Backend::BpfLsm]).is_err(), "no LSM hook for fsync");
        let mkdir = fail("mkdir", SysBackend::Auto, Failure::Errno(28));
        assert_eq!(mkdir.hooks(&[Backend::BpfLsm, Backend::KprobeOverride]).unwrap(), vec![Hook::Kprobe("__x64_sys_mkdir".into())], "a whole skipped call first");
        assert_eq!(mkdir.hooks(&[Backend::BpfLsm]).unwrap(), vec![Hook::Lsm(chaos_common::sys::HOOK_LSM_INODE_MKDIR)], "the LSM where nothing else is");
        let connect = fail("connect", SysBackend::Auto, Failure::Errno(111));
        assert_eq!(connect.hooks(&[Backend::KprobeOverride, Backend::CgroupSockAddr]).unwrap(), vec![Hook::CgroupSock(chaos_common::sys::HOOK_CONNECT)]);
        assert_eq!(connect.hooks(&[Backend::KprobeOverride]).unwrap(), vec![Hook::Kprobe("__x64_sys_connect".into())]);
        let sendto = fail("sendto", SysBackend::Auto, Failure::Errno(1));
        assert_eq!(sendto.hooks(&[Backend::CgroupSockAddr]).unwrap(), vec![Hook::CgroupSock(chaos_common::sys::HOOK_SENDMSG)]);
    }

    #[test]
    fn several_syscalls_each_get_their_hook_and_key() {
        use chaos_common::sys::{HOOK_BIND, HOOK_CONNECT};
        let f = fail("connect,bind,fsync,connect", SysBackend::Auto, Failure::Errno(1));
        assert_eq!(f.calls.len(), 3, "each syscall once");
        let hooks = f.hooks(&[Backend::CgroupSockAddr, Backend::KprobeOverride]).unwrap();
        assert_eq!(hooks, vec![Hook::CgroupSock(HOOK_CONNECT), Hook::CgroupSock(HOOK_BIND), Hook::Kprobe("__x64_sys_fsync".into())]);
        assert_eq!(
            f.sys_keys(&hooks),
            vec![SysMatch::rules_key(HOOK_CONNECT, 0), SysMatch::rules_key(HOOK_BIND, 0), SysMatch::rules_key(HOOK_SYSCALL, 74)]
        );
        assert_eq!(f.needs().len(), 3, "one group of backends per syscall");
    }

    #[test]
    fn an_lsm_syscall_is_keyed_at_each_hook_that_sees_it() {
        use chaos_common::sys::{HOOK_LSM_FILE_PERMISSION, HOOK_LSM_INODE_RMDIR, HOOK_LSM_INODE_UNLINK};
        let f = fail("unlinkat,read,pread64", SysBackend::Lsm, Failure::Errno(5));
        let hooks = f.hooks(&[Backend::BpfLsm]).unwrap();
        assert_eq!(hooks, vec![Hook::Lsm(HOOK_LSM_INODE_RMDIR), Hook::Lsm(HOOK_LSM_INODE_UNLINK), Hook::Lsm(HOOK_LSM_FILE_PERMISSION)]);
        assert_eq!(
            f.sys_keys(&hooks),
            vec![
                SysMatch::rules_key(HOOK_LSM_INODE_RMDIR, 263),
                SysMatch::rules_key(HOOK_LSM_INODE_UNLINK, 263),
                SysMatch::rules_key(HOOK_LSM_FILE_PERMISSION, 0),
                SysMatch::rules_key(HOOK_LSM_FILE_PERMISSION, 17),
            ]
        );
        let open = fail("open,openat", SysBackend::Lsm, Failure::Errno(5));
        let hooks = open.hooks(&[Backend::BpfLsm]).unwrap();
        assert_eq!(open.sys_keys(&hooks), vec![SysMatch::rules_key(HOOK_FILE_OPEN, 2), SysMatch::rules_key(HOOK_FILE_OPEN, 257)], "open and openat counted apart");
        let retval = fail("read", SysBackend::Lsm, Failure::Retval(3));
        assert!(retval.hooks(&[Backend::BpfLsm]).unwrap_err().to_string().contains("--retval"));
    }

    #[test]
    fn a_path_on_reads_and_writes_follows_the_files_opened_under_it() {
        let mut f = fail("openat,write", SysBackend::Auto, Failure::Errno(5));
        f.path = Some("/var/lib/db".into());
        assert_eq!(
            f.needs(),
            vec![&[Backend::BpfLsm][..], &[Backend::BpfLsm][..], &[Backend::TaskFileIter][..]],
            "only the LSM sees paths; the task_file iterator finds the files open at the start"
        );
        let mut opens = fail("openat", SysBackend::Auto, Failure::Errno(5));
        opens.path = Some("/var/lib/db".into());
        assert_eq!(opens.needs(), vec![&[Backend::BpfLsm][..]], "opens follow no file");
        let hooks = f.hooks(&[Backend::BpfLsm, Backend::KprobeOverride]).unwrap();
        assert_eq!(hooks, vec![Hook::Lsm(HOOK_FILE_OPEN), Hook::Lsm(HOOK_LSM_FILE_PERMISSION), Hook::Lsm(HOOK_LSM_FILE_FREE)], "file_open once");
        assert_eq!(
            f.sys_keys(&hooks),
            vec![SysMatch::rules_key(HOOK_FILE_OPEN, 257), SysMatch::rules_key(HOOK_LSM_FILE_PERMISSION, 1), SysMatch::rules_key(HOOK_FOLLOW_OPEN, 0)],
            "the open is failed under the path and followed; the writes of followed files fail"
        );
        let mut read = fail("read", SysBackend::Lsm, Failure::Errno(5));
        read.path = Some("/var/lib/db".into());
        let hooks = read.hooks(&[Backend::BpfLsm]).unwrap();
        assert_eq!(hooks, vec![Hook::Lsm(HOOK_LSM_FILE_PERMISSION), Hook::Lsm(HOOK_FILE_OPEN), Hook::Lsm(HOOK_LSM_FILE_FREE)]);
        assert_eq!(read.sys_keys(&hooks), vec![SysMatch::rules_key(HOOK_LSM_FILE_PERMISSION, 0), SysMatch::rules_key(HOOK_FOLLOW_OPEN, 0)], "no open of its own fails");
        let mut rule = Rule::default();
        read.fill(&mut rule, &hooks).unwrap();
        assert_eq!(rule.sys.hook, HOOK_LSM_FILE_PERMISSION, "a logged call is named by its own hook");
        let plain = fail("read", SysBackend::Lsm, Failure::Errno(5));
        assert_eq!(plain.hooks(&[Backend::BpfLsm]).unwrap(), vec![Hook::Lsm(HOOK_LSM_FILE_PERMISSION)], "nothing followed without a path");
    }

    #[test]
    fn retval_needs_a_backend_that_replaces_the_result() {
        let socket = fail("socket", SysBackend::Cgroup, Failure::Retval(7));
        assert!(socket.hooks(&[Backend::CgroupSockAddr]).unwrap_err().to_string().contains("--retval"), "a cgroup hook returns errnos only");
        let auto = fail("socket", SysBackend::Auto, Failure::Retval(7));
        assert_eq!(auto.needs(), vec![&[Backend::FmodRetSyscall, Backend::KprobeOverride][..]]);
        assert_eq!(auto.hooks(&[Backend::CgroupSockAddr, Backend::FmodRetSyscall]).unwrap(), vec![Hook::FmodRetSyscall("__x64_sys_socket".into())]);
        let open = fail("openat", SysBackend::FmodRet, Failure::Retval(99));
        assert_eq!(open.hooks(&[Backend::FmodRetSyscall]).unwrap(), vec![Hook::FmodRetSyscall("__x64_sys_openat".into())]);
    }
}
