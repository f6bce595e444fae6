//! Running commands with a clear error when they fail.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// A `cargo` command from the same toolchain that runs xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(crate::workspace_root());
    c
}

/// Runs with inherited stdio; fails naming the command if it fails.
pub fn run(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("could not start {}", show(c)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(c));
    }
    Ok(())
}

/// Runs and captures output; fails naming the command, with its stderr, if it fails.
pub fn output(c: &mut Command) -> Result<Output> {
    let out = c.output().with_context(|| format!("could not start {}", show(c)))?;
    if !out.status.success() {
        bail!("{} failed ({}): {}", show(c), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Whether the command runs and exits 0 (output discarded).
pub fn succeeds(c: &mut Command) -> bool {
    c.output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
