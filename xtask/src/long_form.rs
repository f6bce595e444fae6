//! The long forms' figures in BENCHMARKS.md. `cargo xtask fuzz` and `cargo xtask soak` each write
//! a section of their own at the end of the file, between markers, replaced by their next run;
//! `cargo xtask bench` keeps those sections when it writes the rest. The tests they run print
//! their figures on lines that start with [`MARK`]: the section is those lines, in order.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context, Result, bail};

/// What a test prints before a line of the section.
const MARK: &str = "LONG| ";

fn benchmarks_md() -> PathBuf {
    crate::workspace_root().join("BENCHMARKS.md")
}

fn markers(name: &str) -> (String, String) {
    (format!("<!-- long form: {name} -->"), format!("<!-- /long form: {name} -->"))
}

/// Runs `c` with its output shown as it comes; returns the lines it marked for the section.
pub fn run_marked(c: &mut Command) -> Result<Vec<String>> {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("could not start {}", crate::cmd::show(c)))?;
    let marked = Mutex::new(Vec::new());
    let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    std::thread::scope(|s| {
        s.spawn(|| keep_marked(out, &marked, |line| println!("{line}")));
        keep_marked(err, &marked, |line| eprintln!("{line}"));
    });
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed ({status})", crate::cmd::show(c));
    }
    Ok(marked.into_inner().expect("not poisoned"))
}

/// Passes `from`'s lines to `echo`, but those marked for the section into `marked`.
fn keep_marked(from: impl Read, marked: &Mutex<Vec<String>>, echo: impl Fn(&str)) {
    for line in BufReader::new(from).lines().map_while(Result::ok) {
        match line.strip_prefix(MARK) {
            Some(text) => marked.lock().expect("not poisoned").push(text.to_string()),
            None => echo(&line),
        }
    }
}

/// Writes section `name` (a heading, then `lines`) into BENCHMARKS.md in place of its last run's.
pub fn write(name: &str, heading: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        bail!("the {name} run printed no figures (lines starting {MARK:?})");
    }
    let path = benchmarks_md();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, with_section(&old, name, heading, lines))?;
    eprintln!("xtask: wrote the {name} section of {}", path.display());
    Ok(())
}

/// `md` with section `name` replaced (or added at the end).
fn with_section(md: &str, name: &str, heading: &str, lines: &[String]) -> String {
    let (start, end) = markers(name);
    let section = format!("{start}\n{heading}\n\n{}\n{end}", lines.join("\n"));
    match (md.find(&start), md.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &md[..a], &md[b + end.len()..]),
        _ => format!("{}\n\n{section}\n", md.trim_end_matches('\n')),
    }
}

/// Every long-form section of `md`, in order, for a regenerated BENCHMARKS.md to keep.
pub fn kept(md: &str) -> String {
    let mut out = String::new();
    let mut rest = md;
    while let Some(a) = rest.find("<!-- long form: ") {
        let Some(name_end) = rest[a..].find(" -->").map(|i| a + i) else { break };
        let name = &rest[a + "<!-- long form: ".len()..name_end];
        let (_, end) = markers(name);
        let Some(b) = rest[a..].find(&end).map(|i| a + i + end.len()) else { break };
        out.push('\n');
        out.push_str(&rest[a..b]);
        out.push('\n');
        rest = &rest[b..];
    }
    out
}

/// The day and the commit a run measured, for its heading.
pub fn when() -> String {
    let day = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let rev = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(crate::workspace_root()).output().ok();
    let rev = rev.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    format!("{} at {}", day.unwrap_or_default(), rev.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regenerated_file_keeps_every_long_form_section() {
        let md = "# Benchmarks\n\ntable\n\n<!-- long form: fuzz -->\n### Fuzzing\n\n| a |\n<!-- /long form: fuzz -->\n\n<!-- long form: soak -->\n### Soak\n\n- b\n<!-- /long form: soak -->\n";
        let sections = kept(md);
        assert!(sections.contains("### Fuzzing\n\n| a |\n<!-- /long form: fuzz -->"), "{sections}");
        assert!(sections.contains("<!-- long form: soak -->\n### Soak\n\n- b\n<!-- /long form: soak -->"), "{sections}");
        assert!(!sections.contains("table"), "{sections}");
        assert_eq!(kept(&format!("# Benchmarks\n{sections}")), sections, "kept again unchanged");
    }

    #[test]
    fn a_run_replaces_its_own_section_and_leaves_the_rest() {
        let md = "# Benchmarks\n\ntable\n";
        let once = with_section(md, "soak", "### Soak", &["- 1".to_string()]);
        assert_eq!(once, "# Benchmarks\n\ntable\n\n<!-- long form: soak -->\n### Soak\n\n- 1\n<!-- /long form: soak -->\n");
        let fuzzed = with_section(&once, "fuzz", "### Fuzzing", &["| x |".to_string()]);
        let again = with_section(&fuzzed, "soak", "### Soak", &["- 2".to_string()]);
        assert!(again.contains("- 2") && !again.contains("- 1") && again.contains("| x |") && again.starts_with("# Benchmarks\n\ntable\n"), "{again}");
        assert_eq!(again.matches("<!-- long form: soak -->").count(), 1, "{again}");
        assert!(again.ends_with("<!-- /long form: soak -->\n\n<!-- long form: fuzz -->\n### Fuzzing\n\n| x |\n<!-- /long form: fuzz -->\n"), "the sections stay apart: {again}");
    }
}
