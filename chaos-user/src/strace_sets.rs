//! strace's syscall sets (`%file`, `%network`, ...), learned from strace itself rather than typed
//! by hand: a helper process denies itself every syscall with a seccomp filter (ENOSYS, so none
//! does anything) and then makes each one; `strace -e trace=%SET` prints the ones in the set.
//! `cargo xtask syscall-sets` writes the result to `faults/syscall_sets.rs`; a test on every lane
//! with strace checks that the table still says what strace does.

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

/// The sets strace documents (man strace, `-e trace=`), as `--syscall` takes them.
pub const SETS: &[&str] = &[
    "%file", "%process", "%network", "%signal", "%ipc", "%desc", "%memory", "%creds", "%stat", "%lstat", "%fstat", "%%stat", "%statfs",
    "%fstatfs", "%%statfs", "%clock", "%pure",
];

/// The exit status the helper asks for with the one call its filter allows.
const HELPER_EXIT: i32 = 0x5c;

/// `chaos workload every-syscall`: makes every x86_64 syscall once, each denied (ENOSYS) by a
/// seccomp filter this process installs first, then exits with [`HELPER_EXIT`]: the only call the
/// filter allows is `exit_group(HELPER_EXIT)`.
pub fn call_every_syscall() -> anyhow::Result<()> {
    // Everything allocated before the filter: after it, no call (mmap, brk) can succeed. The
    // kernel passes uretprobe/uprobe by seccomp (they belong to probe trampolines, and kill any
    // other caller with SIGILL): they are left out, and in no strace set.
    let numbers: Vec<libc::c_long> =
        syscalls::Sysno::iter().filter(|s| !matches!(s.name(), "uretprobe" | "uprobe")).map(|s| s.id() as libc::c_long).collect();
    // seccomp_data: nr at offset 0, args[0] (low half) at 16.
    let filter = [
        libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 },                                    // ld nr
        libc::sock_filter { code: 0x15, jt: 0, jf: 3, k: libc::SYS_exit_group as u32 },         // nr == exit_group?
        libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 16 },                                   // ld args[0]
        libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: HELPER_EXIT as u32 },                   // == HELPER_EXIT?
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },              // allow
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32 }, // deny
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prctl with integer arguments; then a filter program that lives until exit.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0
        {
            bail!("installing the seccomp filter: {}", std::io::Error::last_os_error());
        }
        for nr in numbers {
            // SAFETY: the filter denies the call before the kernel runs it: no argument is read.
            libc::syscall(nr, 0, 0, 0, 0, 0, 0);
        }
        libc::syscall(libc::SYS_exit_group, HELPER_EXIT);
    }
    unreachable!("exit_group returned")
}

/// Each set and its syscalls (sorted), as the strace at `strace` traces them.
pub fn learn(strace: &Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let exe = std::env::current_exe().context("finding the chaos executable")?;
    let dir = tempfile_dir()?;
    let mut out = Vec::new();
    for set in SETS {
        let log = dir.join("trace");
        let status = Command::new(strace)
            .args(["-qq", "-e", &format!("trace={set}"), "-e", "signal=none", "-o"])
            .arg(&log)
            .arg(&exe)
            .args(["workload", "every-syscall"])
            .status()
            .with_context(|| format!("running {}", strace.display()))?;
        if status.code() != Some(HELPER_EXIT) {
            bail!("strace -e trace={set} ran the helper to {status}");
        }
        let text = std::fs::read_to_string(&log)?;
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.split_once('(').map(|(name, _)| name.trim().to_string()))
            .filter(|n| n.parse::<syscalls::Sysno>().is_ok())
            .collect();
        names.sort();
        names.dedup();
        out.push((set.to_string(), names));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// A fresh private directory for strace's output.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("chaos-strace-sets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The table as the Rust source of `faults/syscall_sets.rs`.
pub fn rust_source(sets: &[(String, Vec<String>)], strace_version: &str) -> String {
    let mut s = format!(
        "//! strace's syscall sets, as {strace_version} traces them on x86_64. Generated by `cargo xtask\n\
         //! syscall-sets` (see `strace_sets.rs`): do not edit.\n\n\
         /// Each set (`--syscall %file`) and its syscalls.\n\
         pub const SYSCALL_SETS: &[(&str, &[&str])] = &[\n"
    );
    for (set, names) in sets {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        s += &format!("    (\"{set}\", &[{}]),\n", list.join(", "));
    }
    s += "];\n";
    s
}
