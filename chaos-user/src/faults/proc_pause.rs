//! `proc.pause`: every process of the target stops for the fault's window and goes on where it
//! was afterwards, as a container paused by its runtime (`podman pause`): the cgroup v2 freezer
//! (`cgroup.freeze`, Linux 5.2+). Timers, connections and peers go on meanwhile: what a stalled
//! node or a long GC pause looks like to the rest of the system.
//!
//! No kernel hook decides it: the session freezes the target when the rule's window opens and
//! thaws it when it closes (`session::freezer`), journaled, so the guardian thaws it if chaos dies,
//! or is stopped past the window's end.

use chaos_common::{Action, Counters, Rule};

use super::{Fault, Hook, Kind};
use crate::{error::Result, probe::Backend};

pub const KIND: Kind = Kind { name: "proc.pause", family: "proc", verb: "pause", command, build };

fn command() -> clap::Command {
    clap::Command::new("pause")
        .about("Freeze every process of the target for --for (the cgroup v2 freezer), then let them go on.")
        .after_help(
            "The processes stop where they are, as under `podman pause`, and go on where they were when the \
             fault ends; their timers, sockets and peers do not wait. A process that joins the target meanwhile \
             is frozen too. If chaos is killed, or stopped past the fault's end, its guardian thaws the target.\n\n\
             Examples:\n  chaos proc pause --container 3f5c1d2e4b6a --for 20s\n  \
             chaos proc pause --cgroup /system.slice/db.service --after 10s --for 5s",
        )
}

fn build(_: &clap::ArgMatches) -> Result<Box<dyn Fault>> {
    Ok(Box::new(ProcPause))
}

#[derive(Debug)]
pub struct ProcPause;

impl Fault for ProcPause {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn describe(&self) -> String {
        "freeze every process".into()
    }

    fn needs(&self) -> Vec<&'static [Backend]> {
        vec![&[Backend::CgroupFreezer]]
    }

    fn hooks(&self, _: &[Backend]) -> Result<Vec<Hook>> {
        Ok(Vec::new())
    }

    fn fill(&self, rule: &mut Rule, _: &[Hook]) -> Result<()> {
        rule.action = Action::ProcPause as u32;
        Ok(())
    }

    /// Written by the session, not the kernel: the processes frozen at the start, and the times
    /// the target was frozen (1, or 0 if the fault ended before its window opened).
    fn report(&self, c: &Counters) -> Vec<(&'static str, u64)> {
        vec![("processes", c.matched), ("paused", c.injected)]
    }

    fn freezes(&self) -> bool {
        true
    }
}
