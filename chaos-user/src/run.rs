//! From parsed arguments to an exit code.

use std::time::Duration;

use crate::{
    cli::{Cli, Command, FamilyCommand, FaultCommand, NetCommand, ProcCommand, SessionArgs, SysCommand},
    error::{EXIT_USAGE, Error, Result},
    faults::{self, FaultSpec},
    privileges,
    session::{self, Options, Session, journal},
    usage,
};

/// Parses the command line, runs it and returns the exit code. Every failure is one line on
/// stderr.
pub fn main() -> i32 {
    crate::name_self();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chaos: {e}");
            e.exit_code()
        }
    }
}

/// Help and version go to stdout with exit 0; a usage error becomes one line and exit 2.
fn clap_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind::*;
    match e.kind() {
        DisplayHelp | DisplayVersion => {
            let _ = e.print();
            0
        }
        DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            EXIT_USAGE
        }
        _ => {
            eprintln!("chaos: {} (see --help)", crate::cli::one_line(&e));
            EXIT_USAGE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(addr) = &cli.agent {
        return crate::agent::client::run(addr, cli.token_file.as_deref(), cli.command);
    }
    if cli.token_file.is_some() && !matches!(cli.command, Command::Agent(_)) {
        return Err(usage!("--token-file is for `chaos agent --listen` and for --agent http://HOST:PORT"));
    }
    match cli.command {
        Command::Net(NetCommand(FamilyCommand::Fault(fc)))
        | Command::Sys(SysCommand(FamilyCommand::Fault(fc)))
        | Command::Proc(ProcCommand(FamilyCommand::Fault(fc))) => fault_command(fc),
        Command::Proc(ProcCommand(FamilyCommand::List { what, .. })) => Err(usage!("no listing {what} for proc")),
        Command::Net(NetCommand(FamilyCommand::List { what, .. })) => Err(usage!("no listing {what} for net")),
        Command::Sys(SysCommand(FamilyCommand::List { what: "errnos", json })) => {
            let list = crate::sys_list::errnos();
            print_report(json, &list, || crate::sys_list::errnos_text(&list))
        }
        Command::Sys(SysCommand(FamilyCommand::List { what: "sets", json })) => {
            let sets: std::collections::BTreeMap<&str, &[&str]> = faults::syscall_sets::SYSCALL_SETS.iter().copied().collect();
            print_report(json, &sets, || sets.iter().map(|(set, calls)| format!("{set:<10} {}\n", calls.join(" "))).collect())
        }
        Command::Sys(SysCommand(FamilyCommand::List { json, .. })) => {
            privileges::check()?;
            let list = crate::sys_list::syscalls(&crate::probe::probe()?);
            print_report(json, &list, || crate::sys_list::syscalls_text(&list))
        }
        Command::Apply(a) if a.detach => Err(usage!("--detach is for `chaos --agent ADDR apply`: a session of your own ends with this command")),
        Command::Apply(a) => {
            let text = std::fs::read_to_string(&a.file).map_err(|e| usage!("cannot read {}: {e}", a.file.display()))?;
            run_session(faults::file_specs(&a.file, &text)?, &a.session, None)
        }
        Command::Status { json } => {
            privileges::check()?;
            privileges::require(privileges::CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "reading other sessions' maps")?;
            let report = crate::status::status()?;
            print_report(json, &report, || report.text())
        }
        Command::Stop(a) => {
            privileges::check()?;
            privileges::require(privileges::CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "stopping a session through its maps")?;
            let stopped = crate::status::stop(a.id.as_deref(), a.all)?;
            if stopped.is_empty() {
                eprintln!("chaos: no session is running");
            }
            for s in stopped {
                eprintln!("chaos: stopped session {} (pid {}) in {:.2}s", s.id, s.pid, s.seconds);
            }
            Ok(())
        }
        Command::Demo(args) => match crate::demo::run(args)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::Observe(args) => crate::observe::run(args),
        Command::Run(args) => match crate::experiment::run(args)? {
            0 => Ok(()),
            // The verdict's code, after every fault, service and cgroup of the run is gone.
            code => std::process::exit(code),
        },
        Command::Probe { json } => {
            privileges::check()?;
            let report = crate::probe::probe()?;
            print_report(json, &report, || report.text())
        }
        Command::Agent(args) => crate::agent::run(args, cli.token_file.as_deref()),
        Command::Cleanup { json } => {
            privileges::check()?;
            let swept = journal::sweep();
            if json {
                println!("{}", serde_json::to_string(&swept).map_err(anyhow::Error::from)?);
            } else {
                println!("chaos cleanup: {} dead sessions, {} changes undone", swept.sessions, swept.undone);
                for r in &swept.refused {
                    println!("chaos cleanup: refused: {r}");
                }
            }
            Ok(())
        }
        Command::Workload(args) => crate::workload::run(args).map_err(Error::Other),
        Command::Guardian { session } => session::guardian::run(&session).map_err(Error::Other),
    }
}

/// `chaos net drop ...`, `chaos sys fail ...`: a session of one fault.
fn fault_command(fc: FaultCommand) -> Result<()> {
    let mut spec = FaultSpec::from_matches(fc.kind, &fc.matches, String::new())?;
    let command = std::mem::take(&mut spec.args.target.command);
    if command.is_empty() {
        return run_session(vec![spec], &fc.session_args(), None);
    }
    // `-- CMD`: a cgroup of its own, the session in place, then CMD in the cgroup.
    if which::which(&command[0]).is_err() {
        return Err(usage!("cannot run {}: no such executable (give a path, or a name on PATH)", command[0]));
    }
    privileges::check()?;
    let cgroup = crate::sandbox::TempCgroup::new(&format!("chaos-run-{}", std::process::id()))?;
    spec.args.target.cgroup = Some(cgroup.path.clone());
    let status = {
        let mut run = CommandRun { argv: command, cgroup: cgroup.path.clone(), child: None, status: None };
        run_session(vec![spec], &fc.session_args(), Some(&mut run))?;
        run.wait()?
    };
    drop(cgroup);
    // CMD's status: its exit code, or 128 + the signal that ended it, as a shell reports it.
    use std::os::unix::process::ExitStatusExt;
    std::process::exit(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The command of `chaos ... -- CMD`: started once the session is in place, waited for after.
pub struct CommandRun {
    argv: Vec<String>,
    cgroup: std::path::PathBuf,
    child: Option<std::process::Child>,
    status: Option<std::process::ExitStatus>,
}

impl CommandRun {
    fn start(&mut self) -> Result<()> {
        let mut cmd = std::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        let child = crate::sandbox::spawn_in(&mut cmd, Some(&self.cgroup), None).map_err(|e| usage!("cannot run {}: {e}", self.argv[0]))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether CMD has exited (its status kept).
    pub fn exited(&mut self) -> bool {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
        {
            self.status = c.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    fn wait(mut self) -> Result<std::process::ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut child = self.child.take().ok_or_else(|| Error::Other(anyhow::anyhow!("the command was not started")))?;
        Ok(child.wait().map_err(anyhow::Error::from)?)
    }
}

/// The life of a session: check, sweep, plan, start, watch, finish, report.
/// With `command` (`-- CMD`), CMD starts once the faults are in place, the session ends when it
/// exits (or at the deadline, whichever is first), and the summary goes to stderr: stdout is CMD's.
pub fn run_session(specs: Vec<FaultSpec>, args: &SessionArgs, mut command: Option<&mut CommandRun>) -> Result<()> {
    // Signals first: from here on Ctrl-C, SIGTERM or SIGHUP end the run cleanly, whenever they come.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    let signals = {
        let _in_runtime = rt.enter();
        crate::watch::Signals::register().map_err(anyhow::Error::from)?
    };
    privileges::check()?;
    let plan = session::plan(specs)?;
    if args.dry_run {
        let view = plan.view();
        return print_report(args.json, &view, || view.text());
    }
    let metrics = args.metrics.map(crate::metrics::Exporter::serve).transpose()?;
    let swept = journal::sweep();
    if swept.undone > 0 {
        eprintln!("chaos: undid {} change(s) left by {} killed session(s)", swept.undone, swept.sessions);
    }
    for r in &swept.refused {
        log::warn!("{r}");
    }
    let mut session = Session::start(plan, &Options { log_packets: args.log_packets, ..Default::default() })?;
    let a = session.attached();
    let devices: Vec<String> = a.devices.iter().map(|d| format!("{}({})", d.ifname, d.mode)).collect();
    log::info!("attached: programs {:?} links {:?} devices [{}]", a.programs, a.links, devices.join(" "));
    let left = Duration::from_nanos(session.end_ns().saturating_sub(crate::kernel::monotonic_ns()));
    if session.stop_requested() {
        // `chaos stop` (its `--all`, say) came while the hooks were attaching: no rule started.
        eprintln!("chaos: session {} was stopped before its faults started", session.id);
    } else {
        eprintln!(
            "chaos: injecting: session {} with {} fault(s) for {} (Ctrl-C or `chaos stop {}` ends it early)",
            session.id,
            session.rules(),
            humantime::format_duration(Duration::from_secs(left.as_secs_f64().round() as u64)),
            session.id
        );
    }
    let started = std::time::SystemTime::now();
    if let Some(run) = command.as_deref_mut() {
        run.start()?;
    }
    let ended = rt.block_on(crate::watch::watch(&mut session, signals, command, metrics.as_ref())).map_err(anyhow::Error::from)?;
    let summary = session.finish(&ended.by, ended.elapsed)?;
    if let Some(url) = &args.otlp {
        crate::otlp::send_session(url, &summary, started, std::time::SystemTime::now());
    }
    if ended.by == crate::watch::COMMAND_EXITED {
        let text = if args.json { serde_json::to_string(&summary).map_err(anyhow::Error::from)? + "\n" } else { summary.text() };
        eprint!("{text}");
        return Ok(());
    }
    print_report(args.json, &summary, || summary.text())
}

/// A report on stdout: one JSON object, or its text. A reader that has gone (`| head`) ends the
/// output quietly: the report was not wanted further.
fn print_report(json: bool, report: &impl serde::Serialize, text: impl FnOnce() -> String) -> Result<()> {
    use std::io::Write;
    let out = if json { serde_json::to_string(report).map_err(anyhow::Error::from)? + "\n" } else { text() };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::from(e).context("writing the report").into()),
        _ => Ok(()),
    }
}
