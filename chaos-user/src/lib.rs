//! The chaos loader library: fault kinds, sessions (the kernel object, rules, attachments, the
//! undo journal), the watch loop and reports. The `chaos` binary is a thin shell around
//! [`run::main`].

pub mod agent;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod error;
pub mod experiment;
pub mod faults;
pub mod file;
pub mod kernel;
pub mod kubernetes;
pub mod metrics;
pub mod observe;
pub mod otlp;
pub mod privileges;
pub mod probe;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod session;
pub mod status;
pub mod strace_sets;
pub mod sys_list;
pub mod target;
pub mod watch;
pub mod workload;

/// The kernel object, built by build.rs and embedded so `chaos` is one file to copy to a host.
pub static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));

/// The executable of the processes chaos starts itself (its guardian, an agent's sessions, an
/// experiment's `chaos` services): `/proc/self/exe`, which the kernel resolves at exec, in the
/// forked child, to the file this process runs, even once that file was replaced (a package
/// upgrade, a rebuild) or deleted; `current_exe()`'s path would then name a new binary, or none.
/// Its argv[0] stays "chaos", and [`name_self`] gives the process its name back.
pub const SELF_EXE: &str = "/proc/self/exe";

/// A command that runs this chaos binary ([`SELF_EXE`]).
pub fn self_command() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(SELF_EXE);
    cmd.arg0("chaos");
    cmd
}

/// The kernel names a process after the file it executed: "exe" for one started through
/// [`SELF_EXE`]. Named "chaos" again, for ps and top.
pub fn name_self() {
    if std::fs::read_to_string("/proc/self/comm").is_ok_and(|c| c.trim_end() == "exe") {
        let _ = nix::sys::prctl::set_name(c"chaos");
    }
}
