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
