//! `sys.delay`: the calling process is held for a while at a syscall's entry or exit (strace's
//! `delay_enter=`/`delay_exit=`). There is no sleep in eBPF: tp_btf `sys_enter`/`sys_exit` sends
//! SIGSTOP to the calling thread and tells chaos through a ring buffer; chaos continues the
//! process (SIGCONT) when the hold ends (`session/holds.rs`). The stop lands on the way back to
//! user mode, so the whole process is held, after the call ran (a blocking call is interrupted
//! at once and restarted after the hold). The session journals every target whose processes it
//! may stop: if chaos dies, SIGKILL included, its guardian continues them.

use std::time::Duration;

use chaos_common::{
    Action, Counters, Rule,
    sys::{HOOK_SYS_ENTER, HOOK_SYS_EXIT, SysMatch},
};
use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};

use super::{
    Fault, Hook, Kind,
    sys::{SysCallArgs, refusers, refusers_wanted},
};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "sys.delay", family: "sys", verb: "delay", command, build };

fn command() -> clap::Command {
    SysDelayArgs::augment_args(clap::Command::new("delay"))
        .about("Hold the target's processes for a while at a syscall (strace's delay_enter= and delay_exit=).")
        .after_help(
            "The kernel stops the calling process (SIGSTOP) as the call enters (or exits, --on exit) and chaos \
             continues it (SIGCONT) when the delay is over. What the process observes:\n  \
             - held at entry, the call is made after the hold (strace's delay_enter) where a hook can refuse it \
             before its work: the kernel makes it again once the hold ends (socket calls through the cgroup \
             hooks on any kernel; any syscall through fmod_ret or a kprobe where the kernel allows error \
             injection; `chaos sys syscalls` says which). Elsewhere the stop lands on the way back to user mode: \
             a call that does not block has run when the hold starts, and one that would block (a read with \
             nothing to read, a wait) is interrupted at once, held, and restarted by the kernel. Some calls are \
             not restarted after a stop and return EINTR (signal(7): epoll_wait, semop, sigtimedwait, calls with \
             timeouts);\n  \
             - the whole process is held, its other threads too (strace holds one thread); a delayed call of \
             another thread while it is held extends the hold to that call's end;\n  \
             - its parent gets SIGCHLD (CLD_STOPPED, then CLD_CONTINUED) unless it set SA_NOCLDSTOP.\n\
             A hold never outlasts the session: chaos continues every held process when it ends, and its \
             guardian continues the stopped processes of the target if chaos is killed.\n\n\
             Examples:\n  chaos sys delay --cgroup /system.slice/api.service --syscall fsync --delay 200ms --for 5m\n  \
             chaos sys delay --syscall connect --delay 2s --when 1 -- ./client",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = SysDelayArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    if a.delay.is_zero() {
        return Err(usage!("--delay must be longer than 0: give one such as 100ms or 2s"));
    }
    if a.jitter > a.delay {
        return Err(usage!("--jitter {} is more than --delay {}: a hold cannot be shorter than 0", humantime::format_duration(a.jitter), humantime::format_duration(a.delay)));
    }
    let calls = a.call.calls()?;
    Ok(Box::new(SysDelay { call: a.call, calls, hold: HoldSpec { delay: a.delay, jitter: a.jitter }, on: a.on }))
}

#[derive(Args, Debug)]
pub struct SysDelayArgs {
    #[command(flatten)]
    pub call: SysCallArgs,
    /// How long the calling process is held (e.g. 50ms, 2s).
    #[arg(long, value_parser = cli::parse_offset)]
    pub delay: Duration,
    /// Each hold is the delay plus or minus up to this much, uniformly (netem's jitter).
    #[arg(long, value_parser = cli::parse_offset, default_value = "0s")]
    pub jitter: Duration,
    /// Hold as the call enters (strace's delay_enter) or once it has run (delay_exit).
    #[arg(long, value_enum, default_value_t = On::Enter)]
    pub on: On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum On {
    Enter,
    Exit,
}

/// How long a rule holds each call it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldSpec {
    pub delay: Duration,
    pub jitter: Duration,
}

#[derive(Debug)]
pub struct SysDelay {
    pub call: SysCallArgs,
    /// Names and numbers.
    pub calls: Vec<(String, u32)>,
    pub hold: HoldSpec,
    pub on: On,
}

impl SysDelay {
    fn hook(&self) -> u32 {
        match self.on {
            On::Enter => HOOK_SYS_ENTER,
            On::Exit => HOOK_SYS_EXIT,
        }
    }
}

impl Fault for SysDelay {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let jitter = if self.hold.jitter.is_zero() { String::new() } else { format!(" ± {}", humantime::format_duration(self.hold.jitter)) };
        let on = match self.on {
            On::Enter => "entry",
            On::Exit => "exit",
        };
        format!(
            "hold {}{jitter} at the {on} of {} of {} calls{}",
            humantime::format_duration(self.hold.delay),
            super::percent(self.call.percent),
            self.call.names(),
            self.call.describe_when()
        )
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        vec![&[Backend::TpBtfSignal]]
    }

    /// A backend that fails the call before its work, for each syscall (the order of `sys fail
    /// --backend auto`, without the `file_open` hooks, which run once a created file exists).
    fn wants(&self) -> Vec<&'static [Backend]> {
        match self.on {
            On::Enter => refusers_wanted(&self.calls),
            On::Exit => Vec::new(),
        }
    }

    fn hooks(&self, available: &[Backend]) -> Result<Vec<Hook>> {
        Ok(match self.on {
            On::Enter => [vec![Hook::SysEnter], refusers(&self.calls, available)].concat(),
            On::Exit => vec![Hook::SysExit],
        })
    }

    fn fill(&self, rule: &mut Rule, _hooks: &[Hook]) -> Result<()> {
        self.call.fill(rule, Action::SysDelay, self.hook(), self.calls[0].1);
        Ok(())
    }

    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("held", c.injected)]
    }

    fn sys_keys(&self, _hooks: &[Hook]) -> Vec<u64> {
        self.calls.iter().map(|(_, nr)| SysMatch::rules_key(self.hook(), *nr)).collect()
    }

    fn hold(&self) -> Option<HoldSpec> {
        Some(self.hold)
    }
}
