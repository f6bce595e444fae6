//! `proc.kill`: every process of the target gets a signal (SIGKILL by default) once, when the
//! fault's window opens: "shut down a node" of the method, one container at a time. What restarts
//! it (a supervisor, a runtime's restart policy) and how the rest of the system copes is the
//! experiment. Done by the session itself (`Session::drive`), not by a kernel hook.

use chaos_common::{Action, Counters, Rule};
use clap::{ArgMatches, Args, FromArgMatches};

use super::{Fault, Hook, Kind, sys::parse_signal};
use crate::{cli, error::Result, probe::Backend, usage};

pub const KIND: Kind = Kind { name: "proc.kill", family: "proc", verb: "kill", command, build };

fn command() -> clap::Command {
    ProcKillArgs::augment_args(clap::Command::new("kill"))
        .about("Send every process of the target a signal (KILL by default) once, when the fault starts.")
        .after_help(
            "Every process of the target cgroup and its descendants gets the signal once, as the fault's window \
             opens (use --after to choose the moment); a process that starts later does not. --for bounds the \
             session as with any fault.\n\n\
             Examples:\n  chaos proc kill --container 3f5c1d2e4b6a\n  \
             chaos proc kill --cgroup /system.slice/worker.service --signal TERM --after 30s --for 1m",
        )
}

fn build(m: &ArgMatches) -> Result<Box<dyn Fault>> {
    let a = ProcKillArgs::from_arg_matches(m).map_err(|e| usage!("{}", cli::one_line(&e)))?;
    Ok(Box::new(ProcKill { signal: a.signal }))
}

#[derive(Args, Debug)]
pub struct ProcKillArgs {
    /// The signal: a name (KILL, TERM, INT, ...) or a number.
    #[arg(long, value_parser = parse_signal, default_value = "KILL")]
    pub signal: i32,
}

#[derive(Debug)]
pub struct ProcKill {
    pub signal: i32,
}

impl Fault for ProcKill {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        let name = nix::sys::signal::Signal::try_from(self.signal).map(|s| s.as_str().to_string()).unwrap_or_else(|_| self.signal.to_string());
        format!("send {name} to every process once")
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        Vec::new()
    }

    fn hooks(&self, _: &[Backend]) -> Result<Vec<Hook>> {
        Ok(Vec::new())
    }

    fn fill(&self, rule: &mut Rule, _: &[Hook]) -> Result<()> {
        rule.action = Action::ProcKill as u32;
        Ok(())
    }

    /// Written by the session: the processes found, and those the signal reached.
    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("signalled", c.injected)]
    }

    fn kills(&self) -> Option<i32> {
        Some(self.signal)
    }
}
