//! `chaos demo`: the method in a minute, on the built-in experiment `experiments/demo.toml`. A web
//! service in a cgroup of its own, a probe making requests to it, a packet loss on its cgroup:
//! the steady state is measured, the fault injected and removed, the hypothesis checked and the
//! return to the steady state watched, by the same runner as `chaos run`, with its report.

use std::{net::TcpListener, path::PathBuf};

use anyhow::Context;

use crate::{
    cli::DemoArgs,
    error::Result,
    experiment::{Experiment, RunArgs},
};

/// The built-in experiment, a file a user can run and copy.
fn template() -> &'static str {
    crate::experiment::EXAMPLES.iter().find(|(name, _)| *name == "demo.toml").map(|(_, text)| *text).expect("experiments/demo.toml is built in")
}

/// The template's values that the demo replaces: its port, its cgroup, the loss, the phases' length
/// and the probe's period.
const PORT: &str = "127.0.0.1:18090";
const CGROUP: &str = "/chaos-example-demo";
const PERCENT: &str = "percent = 10\n";
const TITLE: &str = "under 10% packet loss";
const HYPOTHESIS: &str = "if 10% of the service's";
const PHASES: [&str; 3] = ["baseline = \"5s\"", "inject = \"5s\"", "recovery = \"5s\""];
const EVERY: &str = "every = \"5ms\"";

/// The demo's experiment: the template with this run's free port, a cgroup named after this
/// process, and the command line's loss, phase length and request rate.
fn experiment_text(args: &DemoArgs, port: u16) -> String {
    let percent = format!("{}", args.percent as f64 / 10_000.0);
    let phase = humantime::format_duration(args.phase).to_string();
    let mut text = template()
        .replace(PORT, &format!("127.0.0.1:{port}"))
        .replace(CGROUP, &format!("/chaos-demo-{}", std::process::id()))
        .replace(PERCENT, &format!("percent = {percent}\n"))
        .replace(TITLE, &format!("under {percent}% packet loss"))
        .replace(HYPOTHESIS, &format!("if {percent}% of the service's"))
        .replace(EVERY, &format!("every = \"{}us\"", 1_000_000 / args.rate.max(1)));
    for p in PHASES {
        let key = p.split(" = ").next().unwrap_or_default();
        text = text.replace(p, &format!("{key} = \"{phase}\""));
    }
    text
}

pub fn run(args: DemoArgs) -> Result<i32> {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("finding a free port")?.port();
    let exp = Experiment::parse(&PathBuf::from("experiments/demo.toml (built in)"), &experiment_text(&args, port))?;
    let report = std::env::temp_dir().join(format!("chaos-demo-{}", std::process::id()));
    println!("chaos demo: {}", exp.title);
    println!("  hypothesis: {}", exp.hypothesis.as_deref().unwrap_or_default());
    println!(
        "  method: a web service in cgroup {} on 127.0.0.1:{port}, probed {} times a second; {} to measure its steady state, {} of packet loss on its cgroup, {} to watch it recover",
        exp.services.first().map(|s| s.cgroup.display().to_string()).unwrap_or_default(),
        args.rate,
        humantime::format_duration(exp.baseline),
        humantime::format_duration(exp.inject),
        humantime::format_duration(exp.recovery),
    );
    println!("  the same as `sudo chaos run experiments/demo.toml`; the report goes to {}\n", report.display());
    let run = RunArgs { file: exp.path.clone(), check: false, report: Some(report), json: false, metrics: None, otlp: None };
    crate::experiment::run_loaded(exp, &run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_replaces_every_value_it_takes_from_the_command_line() {
        for literal in [PORT, CGROUP, PERCENT, TITLE, HYPOTHESIS, EVERY].iter().chain(PHASES.iter()) {
            assert!(template().contains(literal), "experiments/demo.toml no longer has {literal:?}: the demo would not replace it");
        }
        let args = DemoArgs { percent: 250_000, phase: std::time::Duration::from_secs(3), rate: 50 };
        let text = experiment_text(&args, 40123);
        for gone in [PORT, CGROUP, PERCENT, EVERY, "\"5s\""] {
            assert!(!text.contains(gone), "{gone:?} left in {text}");
        }
        let exp = Experiment::parse(&PathBuf::from("demo.toml"), &text).expect("the demo's experiment parses");
        assert_eq!((exp.baseline, exp.inject, exp.recovery), (args.phase, args.phase, args.phase));
        assert_eq!(exp.probes[0].every, std::time::Duration::from_millis(20));
        assert!(exp.title.contains("25% packet loss"), "{}", exp.title);
        assert_eq!(exp.services[0].cgroup, PathBuf::from(format!("/chaos-demo-{}", std::process::id())));
        assert!(text.contains("percent = 25\n") && text.contains("127.0.0.1:40123"), "{text}");
    }
}
