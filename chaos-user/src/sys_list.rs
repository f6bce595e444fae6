//! `chaos sys syscalls` and `chaos sys errnos`: what this kernel lets chaos do to each syscall,
//! from `chaos probe`'s findings and the kernel's own symbols, and the errno names.

use std::fmt::Write;

use serde::Serialize;

use crate::{
    faults::{
        sys::{cgroup_call, lsm_calls},
        sys_fail::backends_for,
    },
    probe::{Backend, Report},
};

#[derive(Debug, Serialize)]
pub struct SyscallRow {
    pub name: &'static str,
    pub nr: u32,
    /// The backend `chaos sys fail --backend auto` would use, or "none".
    pub fail: String,
    /// `chaos sys signal`: "tp_btf" or "none".
    pub signal: &'static str,
    /// `chaos sys delay` at a call's entry: "before" (a hook refuses the call, which the kernel
    /// makes after the hold), "after" (the call runs, then the hold) or "none".
    pub delay: &'static str,
    /// Why: which calls a cgroup hook sees, or why nothing can fail the syscall here.
    pub note: String,
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::CgroupSockAddr => "cgroup",
        Backend::BpfLsm => "lsm",
        Backend::FmodRetSecurity | Backend::FmodRetSyscall => "fmod-ret",
        Backend::KprobeOverride => "kprobe",
        _ => "other",
    }
}

/// Which calls of `syscall` backend `b` sees, where it does not see them all.
fn note_of(b: Backend, syscall: &str) -> String {
    match b {
        Backend::CgroupSockAddr => cgroup_call(syscall).map(|c| c.note.to_string()).unwrap_or_default(),
        Backend::BpfLsm => lsm_calls(syscall).map(|c| format!("LSM {}: {}", c.lsm, c.note)).collect::<Vec<_>>().join("; "),
        _ => String::new(),
    }
}

/// Every x86_64 syscall (the `syscalls` crate's table), with what this kernel offers for it.
pub fn syscalls(report: &Report) -> Vec<SyscallRow> {
    let works = |b: Backend| report.checks.iter().any(|c| c.backend == b && c.works);
    let reason = |b: Backend| report.checks.iter().find(|c| c.backend == b).and_then(|c| c.reason.clone()).unwrap_or_default();
    let signal = if works(Backend::TpBtfSignal) { "tp_btf" } else { "none" };
    syscalls::Sysno::iter()
        .map(|s| {
            let name = s.name();
            let entry = format!("__x64_sys_{name}");
            // fmod_ret and kprobes need the syscall's entry function in this kernel.
            let has_entry = crate::kernel::kallsyms_has(&entry);
            let usable = |b: Backend| {
                works(b)
                    && (!matches!(b, Backend::FmodRetSyscall | Backend::KprobeOverride) || has_entry != Some(false))
                    && (b != Backend::FmodRetSyscall || crate::kernel::btf_has_function(&entry) != Some(false))
            };
            let (fail, note) = match backends_for(name).iter().copied().find(|&b| usable(b)) {
                Some(b) => (backend_name(b).to_string(), note_of(b, name)),
                None if has_entry == Some(false) && cgroup_call(name).is_none() => {
                    ("none".into(), format!("this kernel has no __x64_sys_{name}"))
                }
                None => {
                    let first = backends_for(name)[0];
                    ("none".into(), format!("{}: {}", first.label(), reason(first)))
                }
            };
            let delay = match (signal, crate::faults::sys::refusers_for(name).iter().any(|&b| usable(b))) {
                ("none", _) => "none",
                (_, true) => "before",
                (_, false) => "after",
            };
            SyscallRow { name, nr: s.id() as u32, fail, signal, delay, note }
        })
        .collect()
}

pub fn syscalls_text(rows: &[SyscallRow]) -> String {
    let mut out = format!("{:<24} {:>4}  {:<9} {:<7} {:<7} note\n", "syscall", "nr", "fail", "signal", "delay");
    for r in rows {
        let _ = writeln!(out, "{:<24} {:>4}  {:<9} {:<7} {:<7} {}", r.name, r.nr, r.fail, r.signal, r.delay, r.note);
    }
    let failing = rows.iter().filter(|r| r.fail != "none").count();
    let _ = writeln!(out, "\n{failing} of {} syscalls can be failed on this kernel; `chaos probe` explains each backend.", rows.len());
    out
}

#[derive(Debug, Serialize)]
pub struct ErrnoRow {
    pub name: String,
    pub number: i32,
    pub description: &'static str,
}

pub fn errnos() -> Vec<ErrnoRow> {
    (1..4096)
        .filter_map(|n| {
            crate::faults::sys::errno_name(n).map(|name| ErrnoRow { name, number: n, description: nix::errno::Errno::from_raw(n).desc() })
        })
        .collect()
}

pub fn errnos_text(rows: &[ErrnoRow]) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(out, "{:<16} {:>4}  {}", r.name, r.number, r.description);
    }
    out
}
