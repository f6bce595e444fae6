//! What every syscall fault shares: which call (by name), strace's `--when`, whose calls are
//! counted, the sampling percentage, and the table of calls that cgroup hooks can fail.

use chaos_common::sys::{
    COUNT_CGROUP, COUNT_PROCESS, COUNT_THREAD, HOOK_BIND, HOOK_CONNECT, HOOK_GETSOCKOPT, HOOK_SENDMSG, HOOK_SETSOCKOPT, HOOK_SOCKET,
    PROG_BIND4, PROG_BIND6, PROG_CONNECT4, PROG_CONNECT6, PROG_GETSOCKOPT, PROG_SENDMSG4, PROG_SENDMSG6, PROG_SETSOCKOPT,
    PROG_SOCK_CREATE, When,
};
use clap::{Args, ValueEnum};

use crate::cli;

/// A call that a hook on the target cgroup can fail with `bpf_set_retval`, on any kernel with
/// cgroup BPF (5.18+), without LSM or error injection. These hooks see only some of the calls
/// of their syscall: `note` says which.
#[derive(Debug)]
pub struct CgroupCall {
    /// `chaos_common::sys::HOOK_*`.
    pub hook: u32,
    /// The syscalls whose calls reach the hook.
    pub syscalls: &'static [&'static str],
    /// The programs attached to the target cgroup, and what aya calls their kind.
    pub programs: &'static [&'static str],
    pub kind: CgroupProgram,
    /// Which calls the hook sees, and so which `--when` counts.
    pub note: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupProgram {
    SockAddr,
    Sock,
    Sockopt,
}

/// Every call a cgroup hook can fail. `recvfrom`/`recvmsg` cannot be: their hooks
/// (`recvmsg4/6`) only rewrite the source address and cannot set an error; `accept`, `listen`,
/// `shutdown` and AF_UNIX sockets before 6.7 have no hook at all.
pub const CGROUP_CALLS: &[CgroupCall] = &[
    CgroupCall {
        hook: HOOK_SOCKET,
        syscalls: &["socket"],
        programs: &[PROG_SOCK_CREATE],
        kind: CgroupProgram::Sock,
        note: "inet sockets (AF_INET, AF_INET6) only",
    },
    CgroupCall {
        hook: HOOK_BIND,
        syscalls: &["bind"],
        programs: &[PROG_BIND4, PROG_BIND6],
        kind: CgroupProgram::SockAddr,
        note: "inet sockets only",
    },
    CgroupCall {
        hook: HOOK_CONNECT,
        syscalls: &["connect"],
        programs: &[PROG_CONNECT4, PROG_CONNECT6],
        kind: CgroupProgram::SockAddr,
        note: "inet sockets only",
    },
    CgroupCall {
        hook: HOOK_SENDMSG,
        syscalls: &["sendto", "sendmsg", "sendmmsg"],
        programs: &[PROG_SENDMSG4, PROG_SENDMSG6],
        kind: CgroupProgram::SockAddr,
        note: "unconnected UDP sockets only; one hook for sendto, sendmsg and sendmmsg",
    },
    CgroupCall {
        hook: HOOK_GETSOCKOPT,
        syscalls: &["getsockopt"],
        programs: &[PROG_GETSOCKOPT],
        kind: CgroupProgram::Sockopt,
        note: "sockets made in the target; the call has done its work when it fails",
    },
    CgroupCall {
        hook: HOOK_SETSOCKOPT,
        syscalls: &["setsockopt"],
        programs: &[PROG_SETSOCKOPT],
        kind: CgroupProgram::Sockopt,
        note: "sockets made in the target",
    },
];

/// A BPF LSM hook that fails the syscalls whose work it checks (one program each, chaos-ebpf's
/// `lsm_programs!`). The program reads the calling thread's syscall number, so a rule fails only
/// its own syscall's passes through the hook. Where the hook sees more or fewer calls than the
/// syscall makes, `note` says so (and `--when` counts what the hook sees).
#[derive(Debug)]
pub struct LsmCall {
    /// `chaos_common::sys::HOOK_LSM_*` (or `HOOK_FILE_OPEN`).
    pub hook: u32,
    /// The LSM hook: the program attaches to `bpf_lsm_<lsm>`.
    pub lsm: &'static str,
    pub program: &'static str,
    pub syscalls: &'static [&'static str],
    pub note: &'static str,
    /// Whether `--path` filters its calls: the program resolves the file's path (hooks given the
    /// file, where the kernel allows `bpf_d_path`), or, at `file_permission`, the file was
    /// followed from its open (`HOOK_FOLLOW_OPEN`).
    pub path: bool,
}

macro_rules! lsm_call {
    ($hook:ident, $lsm:literal, [$($call:literal),*], $note:literal) => {
        lsm_call!($hook, $lsm, [$($call),*], $note, false)
    };
    ($hook:ident, $lsm:literal, [$($call:literal),*], $note:literal, $path:literal) => {
        LsmCall { hook: chaos_common::sys::$hook, lsm: $lsm, program: concat!("chaos_sys_lsm_", $lsm), syscalls: &[$($call),*], note: $note, path: $path }
    };
}

/// Every syscall a BPF LSM hook fails. unlinkat is in two: the hook its flags lead to sees it.
pub const LSM_CALLS: &[LsmCall] = &[
    LsmCall {
        hook: chaos_common::sys::HOOK_FILE_OPEN,
        lsm: "file_open",
        program: chaos_common::sys::PROG_LSM_FILE_OPEN,
        syscalls: &["open", "openat", "openat2", "creat"],
        note: "after the path resolves: a file O_CREAT makes exists by then",
        path: true,
    },
    lsm_call!(
        HOOK_LSM_FILE_PERMISSION,
        "file_permission",
        ["read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2"],
        "calls on a descriptor open for the access (a bad descriptor fails first); with --path, on the files opened under it while the rule is in place",
        true
    ),
    lsm_call!(HOOK_LSM_MMAP_FILE, "mmap_file", ["mmap"], "every mapping, anonymous ones too", true),
    lsm_call!(HOOK_LSM_FILE_MPROTECT, "file_mprotect", ["mprotect", "pkey_mprotect"], "once per mapping the range covers"),
    lsm_call!(HOOK_LSM_FILE_IOCTL, "file_ioctl", ["ioctl"], "calls on a valid descriptor", true),
    lsm_call!(HOOK_LSM_FILE_FCNTL, "file_fcntl", ["fcntl"], "calls on a valid descriptor"),
    lsm_call!(HOOK_LSM_FILE_LOCK, "file_lock", ["flock"], "calls on a valid descriptor"),
    lsm_call!(HOOK_LSM_INODE_GETATTR, "inode_getattr", ["stat", "lstat", "fstat", "newfstatat", "statx"], "once the file is found"),
    lsm_call!(
        HOOK_LSM_INODE_SETATTR,
        "inode_setattr",
        ["chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "truncate", "ftruncate", "utime", "utimes", "utimensat", "futimesat"],
        "once the file is found"
    ),
    lsm_call!(HOOK_LSM_INODE_MKDIR, "inode_mkdir", ["mkdir", "mkdirat"], "once the parent is found and the name is free"),
    lsm_call!(HOOK_LSM_INODE_RMDIR, "inode_rmdir", ["rmdir", "unlinkat"], "once the directory is found; unlinkat with AT_REMOVEDIR"),
    lsm_call!(HOOK_LSM_INODE_UNLINK, "inode_unlink", ["unlink", "unlinkat"], "once the file is found; unlinkat without AT_REMOVEDIR"),
    lsm_call!(HOOK_LSM_INODE_RENAME, "inode_rename", ["rename", "renameat", "renameat2"], "once both names are found"),
    lsm_call!(HOOK_LSM_INODE_LINK, "inode_link", ["link", "linkat"], "once the file is found and the new name is free"),
    lsm_call!(HOOK_LSM_INODE_SYMLINK, "inode_symlink", ["symlink", "symlinkat"], "once the new name is free"),
    lsm_call!(HOOK_LSM_INODE_READLINK, "inode_readlink", ["readlink", "readlinkat"], "once the link is found"),
    lsm_call!(HOOK_LSM_BPRM_CHECK, "bprm_check_security", ["execve", "execveat"], "once per binary tried: a script's interpreter again"),
    lsm_call!(HOOK_LSM_TASK_ALLOC, "task_alloc", ["fork", "vfork", "clone", "clone3"], "threads too (pthread_create is clone3)"),
    lsm_call!(HOOK_LSM_TASK_KILL, "task_kill", ["kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"], "once per process signalled (kill(-pgid) counts each)"),
    lsm_call!(HOOK_LSM_SOCKET_CREATE, "socket_create", ["socket"], "every family (the cgroup hook sees inet only)"),
    lsm_call!(HOOK_LSM_SOCKET_SOCKETPAIR, "socket_socketpair", ["socketpair"], "once both sockets exist"),
    lsm_call!(HOOK_LSM_SOCKET_BIND, "socket_bind", ["bind"], "every family"),
    lsm_call!(HOOK_LSM_SOCKET_CONNECT, "socket_connect", ["connect"], "every family, AF_UNIX too"),
    lsm_call!(HOOK_LSM_SOCKET_LISTEN, "socket_listen", ["listen"], "every family"),
    lsm_call!(HOOK_LSM_SOCKET_ACCEPT, "socket_accept", ["accept", "accept4"], "before waiting for a connection"),
    lsm_call!(HOOK_LSM_SOCKET_SENDMSG, "socket_sendmsg", ["sendto", "sendmsg", "sendmmsg"], "every socket; sendmmsg once per message"),
    lsm_call!(HOOK_LSM_SOCKET_RECVMSG, "socket_recvmsg", ["recvfrom", "recvmsg", "recvmmsg"], "every socket, before waiting; recvmmsg once per message"),
    lsm_call!(HOOK_LSM_SOCKET_GETSOCKNAME, "socket_getsockname", ["getsockname"], "every family"),
    lsm_call!(HOOK_LSM_SOCKET_GETPEERNAME, "socket_getpeername", ["getpeername"], "every family"),
    lsm_call!(HOOK_LSM_SOCKET_GETSOCKOPT, "socket_getsockopt", ["getsockopt"], "before the option is read"),
    lsm_call!(HOOK_LSM_SOCKET_SETSOCKOPT, "socket_setsockopt", ["setsockopt"], "before the option is set"),
    lsm_call!(HOOK_LSM_SOCKET_SHUTDOWN, "socket_shutdown", ["shutdown"], "every family"),
    // No call: where a file followed for a read/write --path rule is forgotten.
    lsm_call!(HOOK_LSM_FILE_FREE, "file_free_security", [], "no call: files followed for --path are forgotten as they close"),
];

/// The LSM hooks that fail `syscall` (two for unlinkat), best first.
pub fn lsm_calls(syscall: &str) -> impl Iterator<Item = &'static LsmCall> + '_ {
    LSM_CALLS.iter().filter(move |c| c.syscalls.contains(&syscall))
}

/// Whether `--path` can filter `syscall`'s calls: its LSM hook resolves the file's path.
pub fn path_filtered(syscall: &str) -> bool {
    lsm_calls(syscall).any(|c| c.path)
}

/// The syscalls `--path` can filter, for messages.
pub fn path_filtered_calls() -> Vec<&'static str> {
    LSM_CALLS.iter().filter(|c| c.path).flat_map(|c| c.syscalls.iter().copied()).collect()
}

/// The LSM hook with id `hook`.
pub fn lsm_call_by_hook(hook: u32) -> Option<&'static LsmCall> {
    LSM_CALLS.iter().find(|c| c.hook == hook)
}

/// The cgroup hook that fails `syscall`, if one does.
pub fn cgroup_call(syscall: &str) -> Option<&'static CgroupCall> {
    CGROUP_CALLS.iter().find(|c| c.syscalls.contains(&syscall))
}

/// The cgroup hook with id `hook`.
pub fn cgroup_call_by_hook(hook: u32) -> Option<&'static CgroupCall> {
    CGROUP_CALLS.iter().find(|c| c.hook == hook)
}

/// Backends that can refuse `syscall` before its work, best first.
pub fn refusers_for(syscall: &str) -> &'static [crate::probe::Backend] {
    use crate::probe::Backend;
    if cgroup_call(syscall).is_some() {
        &[Backend::CgroupSockAddr, Backend::FmodRetSyscall, Backend::KprobeOverride]
    } else if lsm_refusers(syscall).next().is_some() {
        &[Backend::FmodRetSyscall, Backend::KprobeOverride, Backend::BpfLsm]
    } else {
        &[Backend::FmodRetSyscall, Backend::KprobeOverride]
    }
}

/// The LSM hooks that can refuse `syscall` to have it made again: all that check a call before
/// its work, but `file_open` (a file O_CREAT makes exists by then) and `task_kill` (a signal to a
/// process group may have reached some of it).
fn lsm_refusers(syscall: &str) -> impl Iterator<Item = &'static LsmCall> + '_ {
    use chaos_common::sys::{HOOK_FILE_OPEN, HOOK_LSM_TASK_KILL};
    lsm_calls(syscall).filter(|c| c.hook != HOOK_FILE_OPEN && c.hook != HOOK_LSM_TASK_KILL)
}

/// The hooks that refuse a call stopped or signalled at its entry so the kernel makes it again
/// once the stop or the signal's handler is over (`-ERESTARTNOINTR`), if this kernel has them for
/// `syscall` (two LSM hooks for unlinkat): a held call is made after its hold (strace's
/// `delay_enter`), and a call whose signal kills is never made (as strace skips it). Without
/// one, the call runs first.
pub fn refuser(syscall: &str, available: &[crate::probe::Backend]) -> Vec<super::Hook> {
    use super::Hook;
    use crate::probe::Backend;
    let entry = format!("__x64_sys_{syscall}");
    refusers_for(syscall)
        .iter()
        .filter(|b| available.contains(b))
        .map(|b| match b {
            Backend::CgroupSockAddr => cgroup_call(syscall).map(|c| Hook::CgroupSock(c.hook)).into_iter().collect(),
            // fmod_ret attaches by BTF id, which a zero-argument syscall's entry (an alias) lacks.
            Backend::FmodRetSyscall => (crate::kernel::btf_has_function(&entry) == Some(true)).then(|| Hook::FmodRetSyscall(entry.clone())).into_iter().collect(),
            Backend::KprobeOverride => (crate::kernel::kallsyms_has(&entry) == Some(true)).then(|| Hook::Kprobe(entry.clone())).into_iter().collect(),
            Backend::BpfLsm => lsm_refusers(syscall).map(|c| Hook::Lsm(c.hook)).collect(),
            _ => Vec::new(),
        })
        .find(|hooks: &Vec<Hook>| !hooks.is_empty())
        .unwrap_or_default()
}

/// The refusing hooks of `calls` on this kernel (see [`refuser`]), each once.
pub fn refusers(calls: &[(String, u32)], available: &[crate::probe::Backend]) -> Vec<super::Hook> {
    let mut hooks = Vec::new();
    for h in calls.iter().flat_map(|(name, _)| refuser(name, available)) {
        if !hooks.contains(&h) {
            hooks.push(h);
        }
    }
    hooks
}

/// What a fault that refuses `calls` where it can wants of the kernel (`Fault::wants`).
pub fn refusers_wanted(calls: &[(String, u32)]) -> Vec<&'static [crate::probe::Backend]> {
    calls.iter().map(|(name, _)| refusers_for(name)).collect()
}

/// The flags of every syscall fault: which call, which of its calls, and how often.
#[derive(Args, Debug, Clone)]
pub struct SysCallArgs {
    /// The syscalls, by their x86_64 names (openat, read, fsync, connect, ...) or strace's sets
    /// (%file, %network, %process, ...: `chaos sys sets`): one, or several separated by commas
    /// (each syscall counted on its own for --when, as strace does).
    #[arg(long = "syscall", value_name = "NAME[,NAME...]", value_parser = parse_syscall, value_delimiter = ',', required = true)]
    pub syscalls: Vec<String>,
    /// strace's when=FIRST[..LAST][+[STEP]]: only calls FIRST to LAST (default: no end), every
    /// STEP-th; `3` is the third call only, `3+` the third and later, `2+2` every second from
    /// the second. Counted per syscall while the fault is live, per thread unless --count-per.
    /// Cgroup hooks count the calls they see (see `chaos sys syscalls`).
    #[arg(long, value_name = "SPEC", value_parser = parse_when)]
    pub when: Option<When>,
    /// Whose calls --when counts together: each thread's (as strace does), each process's, or
    /// the whole target's.
    #[arg(long, value_enum, default_value_t = CountPer::Thread, requires = "when")]
    pub count_per: CountPer,
    /// Probability of acting on a call (--when chooses the candidates, this samples them), 0-100.
    #[arg(long, value_parser = cli::parse_percent, value_name = "P", default_value = "100")]
    pub percent: u32,
    /// Print a line for every call the fault hits (pid, tid, syscall, what was done), as
    /// strace marks (INJECTED) calls; on stderr, from a ring buffer read ten times a second.
    #[arg(long)]
    pub log_calls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CountPer {
    Thread,
    Process,
    Cgroup,
}

impl SysCallArgs {
    /// The syscalls with their x86_64 numbers, each once (a set's syscalls in its place), or a
    /// usage error naming close matches.
    pub fn calls(&self) -> crate::error::Result<Vec<(String, u32)>> {
        resolve_syscalls(&self.syscalls)
    }

    /// What every syscall rule holds: the action, how often, which call it is named by (`hook`,
    /// and the number of the first syscall), `--when` and `--log-calls`.
    pub fn fill(&self, rule: &mut chaos_common::Rule, action: chaos_common::Action, hook: u32, first_nr: u32) {
        rule.action = action as u32;
        rule.threshold = chaos_common::ppm_to_threshold(self.percent);
        rule.sys.hook = hook;
        rule.sys.syscall_nr = first_nr;
        rule.sys.when = self.when();
        rule.sys.log = self.log_calls as u32;
    }

    /// "connect()", "connect(), bind()" or "%network (20 syscalls)", for descriptions.
    pub fn names(&self) -> String {
        let name = |s: &String| match syscall_set(s) {
            Ok(calls) if s.starts_with('%') => format!("{s} ({} syscalls)", calls.len()),
            _ => format!("{s}()"),
        };
        self.syscalls.iter().map(name).collect::<Vec<_>>().join(", ")
    }

    /// The rule's `--when`, with its counting scope.
    pub fn when(&self) -> When {
        match self.when {
            Some(w) => When {
                scope: match self.count_per {
                    CountPer::Thread => COUNT_THREAD,
                    CountPer::Process => COUNT_PROCESS,
                    CountPer::Cgroup => COUNT_CGROUP,
                },
                ..w
            },
            None => When::default(),
        }
    }

    /// " (calls 3+ of each thread)" or "", for descriptions.
    pub fn describe_when(&self) -> String {
        match &self.when {
            None => String::new(),
            Some(w) => {
                let who = match self.count_per {
                    CountPer::Thread => "thread",
                    CountPer::Process => "process",
                    CountPer::Cgroup => "target",
                };
                format!(", calls {} of each {who}", format_when(w))
            }
        }
    }
}

/// Syscall names and strace's sets (`%file`) as (name, x86_64 number), each once, a set's
/// syscalls in its place; or a usage error naming close matches.
pub fn resolve_syscalls(given: &[String]) -> crate::error::Result<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for given in given {
        let names: Vec<String> = match given.strip_prefix('%') {
            Some(_) => syscall_set(given)?.iter().map(|s| s.to_string()).collect(),
            None => vec![given.clone()],
        };
        for name in names {
            let nr = syscall_number(&name)?;
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, nr));
            }
        }
    }
    Ok(out)
}

/// A syscall's x86_64 number by name (the `syscalls` crate's table), or a usage error that
/// names the closest names.
pub fn syscall_number(name: &str) -> crate::error::Result<u32> {
    if let Ok(nr) = name.parse::<syscalls::Sysno>() {
        return Ok(nr.id() as u32);
    }
    let mut close: Vec<(f64, &str)> =
        syscalls::Sysno::iter().map(|s| (strsim::jaro_winkler(name, s.name()), s.name())).filter(|(d, _)| *d > 0.85).collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let names: Vec<&str> = close.iter().take(3).map(|(_, n)| *n).collect();
    Err(if names.is_empty() {
        crate::usage!("there is no x86_64 syscall {name}(): `chaos sys syscalls` lists them")
    } else {
        crate::usage!("there is no x86_64 syscall {name}(): did you mean {}?", names.join(", "))
    })
}

/// The syscalls of strace's set `set` (`%file`), or a usage error naming the sets.
pub fn syscall_set(set: &str) -> crate::error::Result<&'static [&'static str]> {
    super::syscall_sets::SYSCALL_SETS.iter().find(|(name, _)| *name == set).map(|(_, calls)| *calls).ok_or_else(|| {
        let names: Vec<&str> = super::syscall_sets::SYSCALL_SETS.iter().map(|(n, _)| *n).collect();
        crate::usage!("there is no syscall set {set}: give one of {} (`chaos sys sets` lists their syscalls)", names.join(", "))
    })
}

/// A syscall name (lower-case letters, digits and underscores), or a set's (`%file`, `%%stat`).
pub fn parse_syscall(s: &str) -> Result<String, String> {
    let name = s.trim_start_matches('%');
    if !name.is_empty() && s.len() < 64 && s.len() - name.len() <= 2 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        Ok(s.to_string())
    } else {
        Err(format!("'{s}' is not a syscall name; give one such as openat, read or connect, or a set such as %file"))
    }
}

/// strace's `when=` bounds: FIRST and STEP in 1..65535, LAST in 1..65534.
const WHEN_MAX: u32 = 65535;

/// `FIRST[..LAST][+[STEP]]`, as strace reads it (man strace, `-e inject`).
pub fn parse_when(s: &str) -> Result<When, String> {
    let bad = |why: &str| format!("--when {s:?}: {why}; give FIRST[..LAST][+[STEP]] as strace's when=, e.g. 3, 2..5, 10+ or 1+2");
    let number = |t: &str, what: &str, max: u32| -> Result<u32, String> {
        match t.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(&format!("{what} must be a number from 1 to {max}"))),
        }
    };
    let (range, step) = match s.split_once('+') {
        Some((r, "")) => (r, Some(1)),
        Some((r, st)) => (r, Some(number(st, "STEP", WHEN_MAX)?)),
        None => (s, None),
    };
    let (first, last) = match range.split_once("..") {
        Some((f, l)) => (number(f, "FIRST", WHEN_MAX)?, Some(number(l, "LAST", WHEN_MAX - 1)?)),
        None => (number(range, "FIRST", WHEN_MAX)?, None),
    };
    if last.is_some_and(|l| l < first) {
        return Err(bad("LAST is before FIRST"));
    }
    Ok(match (last, step) {
        // FIRST: that call only.
        (None, None) => When { first, last: first, step: 1, scope: 0 },
        (None, Some(step)) => When { first, last: u32::MAX, step, scope: 0 },
        (Some(last), step) => When { first, last, step: step.unwrap_or(1), scope: 0 },
    })
}

/// The spec back in strace's words.
pub fn format_when(w: &When) -> String {
    let range = if w.last == w.first {
        return w.first.to_string();
    } else if w.last == u32::MAX {
        w.first.to_string()
    } else {
        format!("{}..{}", w.first, w.last)
    };
    match (w.last == u32::MAX, w.step) {
        (true, 1) => format!("{range}+"),
        (_, 1) => range,
        (_, step) => format!("{range}+{step}"),
    }
}

/// "ENOENT", "enoent" or "2" → 2.
pub fn parse_errno(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..4096).contains(&n) { Ok(n) } else { Err(format!("errno {n} is outside 1-4095")) };
    }
    let want = s.to_ascii_uppercase();
    (1..4096)
        .find(|&n| errno_name(n).as_deref() == Some(want.as_str()))
        .ok_or_else(|| format!("'{s}' is not an errno name; give one such as ENOENT, EIO or EACCES, or a number (`chaos sys errnos` lists them)"))
}

/// An errno's name (`ENOENT`), if this platform names it.
pub fn errno_name(n: i32) -> Option<String> {
    let name = format!("{:?}", nix::errno::Errno::from_raw(n));
    (name != "UnknownErrno").then_some(name)
}

/// "KILL", "SIGKILL", "sigsegv" or "9" → 9.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map(|sig| sig as i32).map_err(|_| format!("{n} is not a signal number"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("'{s}' is not a signal name; give one such as KILL, SEGV, BUS or ABRT, or a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_reads_as_strace_reads_it() {
        let w = |first, last, step| When { first, last, step, scope: 0 };
        assert_eq!(parse_when("3"), Ok(w(3, 3, 1)));
        assert_eq!(parse_when("2..5"), Ok(w(2, 5, 1)));
        assert_eq!(parse_when("2..5+"), Ok(w(2, 5, 1)));
        assert_eq!(parse_when("10+"), Ok(w(10, u32::MAX, 1)));
        assert_eq!(parse_when("1+2"), Ok(w(1, u32::MAX, 2)));
        assert_eq!(parse_when("4..10+3"), Ok(w(4, 10, 3)));
        for bad in ["0", "", "5..2", "1..65535", "65536", "x", "3+0", "1...4", "+2", "3-"] {
            assert!(parse_when(bad).is_err(), "{bad:?}");
        }
        for spec in ["3", "2..5", "10+", "1+2", "4..10+3"] {
            assert_eq!(format_when(&parse_when(spec).unwrap()), spec);
        }
    }

    #[test]
    fn errnos_and_signals_by_name_or_number() {
        assert_eq!(parse_errno("ENOENT"), Ok(2));
        assert_eq!(parse_errno("eacces"), Ok(13));
        assert_eq!(parse_errno("5"), Ok(5));
        assert!(parse_errno("0").is_err());
        assert!(parse_errno("EWHATEVER").is_err());
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigsegv"), Ok(11));
        assert_eq!(parse_signal("7"), Ok(7));
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn syscall_names_are_checked_with_close_matches() {
        assert_eq!(parse_syscall("openat"), Ok("openat".into()));
        assert_eq!(parse_syscall("%%stat"), Ok("%%stat".into()));
        assert!(parse_syscall("%%%stat").is_err() && parse_syscall("%").is_err());
        assert!(parse_syscall("open at").is_err());
        assert!(parse_syscall("../x").is_err());
        assert_eq!(syscall_number("fsync").unwrap(), 74);
        let e = syscall_number("opnat").unwrap_err().to_string();
        assert!(e.contains("did you mean") && e.contains("openat"), "{e}");
    }

    #[test]
    fn a_set_stands_for_its_syscalls() {
        let args = |list: &[&str]| SysCallArgs {
            syscalls: list.iter().map(|s| s.to_string()).collect(),
            when: None,
            count_per: CountPer::Thread,
            percent: 1_000_000,
            log_calls: false,
        };
        let file = syscall_set("%file").unwrap();
        assert!(file.contains(&"openat") && file.contains(&"unlink") && !file.contains(&"read"), "{file:?}");
        let calls = args(&["openat", "%file"]).calls().unwrap();
        assert_eq!(calls.len(), file.len(), "each syscall once");
        let e = args(&["%files"]).calls().unwrap_err().to_string();
        assert!(e.contains("no syscall set %files") && e.contains("%file"), "{e}");
        for (set, calls) in super::super::syscall_sets::SYSCALL_SETS {
            assert!(!calls.is_empty(), "{set}");
            assert!(calls.iter().all(|c| syscall_number(c).is_ok()), "{set}");
        }
    }

    #[test]
    fn every_cgroup_call_is_a_syscall_once() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CGROUP_CALLS {
            for s in c.syscalls {
                assert!(syscall_number(s).is_ok(), "{s}");
                assert!(seen.insert(*s), "{s} twice");
            }
        }
    }
}

#[cfg(test)]
mod lsm_table_tests {
    use super::*;

    #[test]
    fn every_lsm_call_is_a_syscall_with_its_own_program_and_hook() {
        let object = aya_obj::Object::parse(crate::KERNEL_OBJECT).expect("the embedded kernel object parses");
        let mut hooks = std::collections::BTreeSet::new();
        for c in LSM_CALLS {
            assert!(hooks.insert(c.hook), "hook id {} twice", c.hook);
            assert!(object.programs.contains_key(c.program), "no program {} in the kernel object: {:?}", c.program, object.programs.keys().filter(|k| k.contains("lsm") || k.contains("open")).collect::<Vec<_>>());
            for s in c.syscalls {
                assert!(syscall_number(s).is_ok(), "{s} is no x86_64 syscall");
            }
        }
        let twice: Vec<&str> = LSM_CALLS.iter().flat_map(|c| c.syscalls.iter().copied()).filter(|s| lsm_calls(s).count() > 1).collect();
        assert_eq!(twice, ["unlinkat", "unlinkat"], "only unlinkat reaches two hooks (by its flag)");
    }
}
