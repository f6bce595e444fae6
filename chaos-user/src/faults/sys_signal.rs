//! `sys.signal`: the calling thread gets a signal as it enters a syscall (strace's `signal=`),
//! from tp_btf `sys_enter` and `bpf_send_signal_thread`, on any kernel with BTF (the host too).
//! Where a hook can refuse the call before its work, it does (`-ERESTARTNOINTR`): a signal that
//! kills ends the process before the call is made, as strace skips it.
//! The kernel makes a signal that kills fatal as it is sent (`complete_signal`), so a call that
//! checks `fatal_signal_pending` (a write to a regular file, measured) gives up before its work.

use chaos_common::{
    Action, Counters, Rule,
    sys::{HOOK_SYS_ENTER, SysMatch},
};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{
    Fault, Hook, Kind,
    sys::{SysCallArgs, parse_signal, refusers, refusers_wanted},
};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "sys.signal", family: "sys", verb: "signal", command, build };

fn command() -> clap::Command {
    SysSignalArgs::augment_args(clap::Command::new("signal"))
        .about("Send a signal to the thread that makes a syscall, for the target's processes only (strace's signal=).")
        .after_help(
            "The signal is sent as the call enters. Where a hook can refuse the call before its work (socket \
             calls through the cgroup hooks on any kernel; any syscall through fmod_ret or a kprobe where the \
             kernel allows error injection: `chaos sys syscalls`), it does, and the kernel makes the call again \
             once the signal is dealt with: a signal that kills ends the process and the call is never made (as \
             strace skips it); a handled signal's handler runs before the call. Elsewhere the call runs: a signal \
             that kills (KILL, or one with no handler whose default action is to end the process) is fatal at \
             once, so a call that checks for a fatal signal gives up without doing its work (a write to a \
             regular file, a read or wait that would block) and one that does not completes (getpid, a write to \
             a pipe with room); a handled signal is delivered on the way back to user mode, after the call (a \
             blocking call is interrupted: EINTR, or restarted as signal(7) says for the handler).\n\n\
             Examples:\n  chaos sys signal --cgroup /system.slice/api.service --syscall write --signal KILL --when 1000\n  \
             chaos sys signal --pid 4242 --syscall mmap --signal SEGV --percent 1 --for 5m",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = SysSignalArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    let calls = a.call.calls()?;
    Ok(Box::new(SysSignal { call: a.call, calls, signal: a.signal }))
}

#[derive(Args, Debug)]
pub struct SysSignalArgs {
    #[command(flatten)]
    pub call: SysCallArgs,
    /// The signal: a name (KILL, SEGV, BUS, ABRT, TERM, ...) or a number.
    #[arg(long, value_parser = parse_signal)]
    pub signal: i32,
}

#[derive(Debug)]
pub struct SysSignal {
    pub call: SysCallArgs,
    /// Names and numbers.
    pub calls: Vec<(String, u32)>,
    pub signal: i32,
}

impl Fault for SysSignal {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let name = nix::sys::signal::Signal::try_from(self.signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| self.signal.to_string());
        format!("send {name} on {} of {} calls{}", super::percent(self.call.percent), self.call.names(), self.call.describe_when())
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        vec![&[Backend::TpBtfSignal]]
    }

    /// A backend that refuses the call before its work, for each syscall: a call whose signal
    /// kills is then never made.
    fn wants(&self) -> Vec<&'static [Backend]> {
        refusers_wanted(&self.calls)
    }

    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>> {
        Ok([vec![Hook::SysEnter], refusers(&self.calls, available)].concat())
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        self.call.fill(rule, Action::SysSignal, HOOK_SYS_ENTER, self.calls[0].1);
        rule.sys.signal = self.signal as u32;
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("signalled", c.injected)]
    }

    fn sys_keys(&self, _hooks: &[Hook]) -> Vec<u64> {
        self.calls.iter().map(|(_, nr)| SysMatch::rules_key(HOOK_SYS_ENTER, *nr)).collect()
    }
}
