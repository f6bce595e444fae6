//! The experiment's report: `report.json` (everything, for machines), `report.md` (for a pull
//! request or a terminal) and `report.html` (one self-contained page: the golden signals over
//! time with the phases shaded and the faults' window marked, injections per second, and the
//! tables). Plots are drawn by plotters into inline SVG.

use std::{collections::BTreeMap, path::Path};

use plotters::prelude::*;
use serde::Serialize;

use super::{
    Thresholds,
    threshold::{Metric, Sample, Threshold},
};
use crate::{error::Result, observe::Row, report::Summary};

#[derive(Debug, Serialize)]
pub struct Span {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Abort {
    /// Seconds since the start when every fault was gone.
    pub at_s: f64,
    /// "abort threshold", "steady state", "SIGINT", "chaos stop", ...
    pub by: String,
    pub reason: String,
}

/// One threshold checked against one sample.
#[derive(Debug, Serialize)]
pub struct Check {
    pub source: String,
    pub threshold: String,
    pub phase: String,
    pub value: f64,
    pub value_text: String,
    pub held: bool,
}

impl Check {
    pub fn new(source: &str, th: &Threshold, phase: &str, s: &Sample) -> Check {
        let value = s.value(th.metric);
        Check { source: source.into(), threshold: th.to_string(), phase: phase.into(), value, value_text: th.metric.show(value), held: th.holds(s) }
    }
}

#[derive(Debug, Serialize)]
pub struct Recovery {
    /// Whether there was a fault to recover from and steady thresholds to recover to.
    pub checked: bool,
    /// Seconds from the faults' removal to the first of `intervals_needed` intervals in a row
    /// within every steady-state threshold; None if that did not happen while watched.
    pub recovered_after_s: Option<f64>,
    pub intervals_needed: u32,
    pub watched_s: f64,
    pub cut_short: Option<String>,
}

/// One interval: each source's sample (in `sources` order) and the faults' injections per second.
#[derive(Debug, Serialize)]
pub struct Point {
    /// Seconds since the start, at the interval's end.
    pub t: f64,
    pub phase: &'static str,
    pub samples: Vec<Sample>,
    pub injected_per_s: f64,
}

/// A probe or an observed cgroup.
#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    /// "probe" or "syscalls".
    pub kind: String,
    pub what: String,
    pub steady: Vec<String>,
    pub hypothesis: Vec<String>,
    pub abort: Vec<String>,
    /// By phase name.
    pub phases: BTreeMap<String, Sample>,
    /// Observed cgroups: per phase, per syscall (most time spent first).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub syscalls: BTreeMap<String, Vec<Row>>,
    /// Probes: the most frequent failure reasons and how often.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<(String, u64)>,
}

impl SourceReport {
    pub fn new(name: &str, kind: &str, what: &str, t: &Thresholds) -> SourceReport {
        let text = |v: &[Threshold]| v.iter().map(ToString::to_string).collect();
        SourceReport {
            name: name.into(),
            kind: kind.into(),
            what: what.into(),
            steady: text(&t.steady),
            hypothesis: text(t.hypothesis()),
            abort: text(&t.abort),
            phases: BTreeMap::new(),
            syscalls: BTreeMap::new(),
            failures: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub title: String,
    pub file: String,
    pub hypothesis_text: Option<String>,
    pub started_unix: f64,
    /// "held", "violated" or "aborted".
    pub verdict: String,
    pub abort: Option<Abort>,
    pub phases: Vec<Span>,
    /// When the faults were in place.
    pub fault: Option<Span>,
    /// The steady-state thresholds over the baseline.
    pub steady_state: Vec<Check>,
    /// The hypothesis thresholds over the inject phase.
    pub hypothesis: Vec<Check>,
    pub recovery: Recovery,
    pub interval_s: f64,
    pub sources: Vec<SourceReport>,
    pub series: Vec<Point>,
    /// The faults' session summary: each rule's counters, read after detaching.
    pub faults: Option<Summary>,
}

/// A table written once, rendered as Markdown or HTML.
struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|");
        let mut out = format!("| {} |\n|{}\n", self.head.join(" | "), "---|".repeat(self.head.len()));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")));
        }
        out
    }

    fn html(&self) -> String {
        let mut out = String::from("<table><thead><tr>");
        for h in &self.head {
            out.push_str(&format!("<th>{}</th>", esc(h)));
        }
        out.push_str("</tr></thead><tbody>");
        for r in &self.rows {
            out.push_str("<tr>");
            for c in r {
                out.push_str(&format!("<td>{}</td>", esc(c)));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>\n");
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn ms(v: f64) -> String {
    crate::observe::human_ns((v * 1e6) as u64)
}

impl Report {
    pub fn verdict_line(&self) -> String {
        match (self.verdict.as_str(), &self.abort) {
            ("aborted", Some(a)) => format!("aborted: {}", a.reason),
            ("held", _) => "held: every hypothesis threshold held over the inject phase".into(),
            _ => {
                let broken: Vec<String> = self.hypothesis.iter().filter(|c| !c.held).map(|c| format!("{}: {} was {}", c.source, c.threshold, c.value_text)).collect();
                format!("violated: {}", broken.join("; "))
            }
        }
    }

    fn recovery_line(&self) -> String {
        let r = &self.recovery;
        match (r.checked, r.recovered_after_s, &r.cut_short) {
            (false, _, _) => "not measured (no fault ran, or no steady-state thresholds)".into(),
            (true, Some(s), _) => format!("back to the steady state {s:.1}s after the faults were removed ({} intervals in a row within it)", r.intervals_needed),
            (true, None, Some(cut)) => format!("not seen before the run was cut short ({cut})"),
            (true, None, None) => format!("not back to the steady state within the {:.0}s watched", r.watched_s),
        }
    }

    fn checks_table(checks: &[Check]) -> Table {
        Table {
            head: vec!["source", "threshold", "phase", "value", "held"],
            rows: checks.iter().map(|c| vec![c.source.clone(), c.threshold.clone(), c.phase.clone(), c.value_text.clone(), if c.held { "yes" } else { "NO" }.into()]).collect(),
        }
    }

    fn signals_table(&self) -> Table {
        let mut rows = Vec::new();
        for s in &self.sources {
            let base = s.phases.get("baseline").map_or(0.0, |b| b.rate);
            for p in &self.phases {
                if let Some(x) = s.phases.get(&p.name) {
                    let ratio = if base > 0.0 { format!("×{:.2}", x.rate / base) } else { "-".into() };
                    rows.push(vec![
                        s.name.clone(),
                        p.name.clone(),
                        x.count.to_string(),
                        format!("{:.1}", x.rate),
                        ratio,
                        x.errors.to_string(),
                        format!("{:.2}%", x.error_rate),
                        ms(x.p50_ms),
                        ms(x.p90_ms),
                        ms(x.p99_ms),
                    ]);
                }
            }
        }
        Table { head: vec!["source", "phase", "count", "rate/s", "vs baseline", "errors", "error rate", "p50", "p90", "p99"], rows }
    }

    /// Per observed cgroup: each syscall before, during and after (the 15 with most time in the
    /// inject phase, or in the baseline if none ran).
    fn syscall_tables(&self) -> Vec<(String, Table)> {
        let mut out = Vec::new();
        for s in self.sources.iter().filter(|s| s.kind == "syscalls") {
            let order: Vec<String> = s.syscalls.get("inject").or_else(|| s.syscalls.get("baseline")).map(|rows| rows.iter().take(15).map(|r| r.syscall.clone()).collect()).unwrap_or_default();
            let cell = |phase: &str, name: &str| {
                s.syscalls.get(phase).and_then(|rows| rows.iter().find(|r| r.syscall == name)).map_or("-".to_string(), |r| {
                    let errs: u64 = r.errors.values().sum();
                    let e = if errs > 0 { format!(", {} err ({})", errs, r.errors.keys().cloned().collect::<Vec<_>>().join(",")) } else { String::new() };
                    format!("{} calls, p99 {}{e}", r.calls, crate::observe::human_ns(r.p99_ns))
                })
            };
            let rows = order.iter().map(|n| vec![n.clone(), cell("baseline", n), cell("inject", n), cell("recovery", n)]).collect();
            out.push((format!("{} ({})", s.name, s.what), Table { head: vec!["syscall", "before (baseline)", "during (inject)", "after (recovery)"], rows }));
        }
        out
    }

    fn faults_table(&self) -> Table {
        let rows = self.faults.as_ref().map_or_else(Vec::new, |f| {
            f.rules.iter().map(|r| vec![r.rule.to_string(), r.kind.clone(), r.description.clone(), r.cgroup.clone(), r.matched.to_string(), r.injected.to_string()]).collect()
        });
        Table { head: vec!["rule", "kind", "fault", "cgroup", "matched", "injected"], rows }
    }

    /// The summary printed at the end of `chaos run`.
    pub fn text(&self) -> String {
        let mut out = format!("{}: {}\n", self.title, self.verdict_line());
        for c in self.hypothesis.iter().chain(&self.steady_state) {
            out.push_str(&format!("  {:<8} {:<10} {:<24} {:>10}  {}\n", c.phase, c.source, c.threshold, c.value_text, if c.held { "held" } else { "NOT held" }));
        }
        out.push_str(&format!("recovery: {}\n", self.recovery_line()));
        if let Some(f) = &self.faults {
            for r in &f.rules {
                out.push_str(&format!("fault {}: {} on {}: matched {}, injected {}\n", r.rule, r.description, r.cgroup, r.matched, r.injected));
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = format!("# {}\n\n**Verdict: {}**\n\n", self.title, self.verdict_line());
        if let Some(h) = &self.hypothesis_text {
            md.push_str(&format!("Hypothesis: {h}\n\n"));
        }
        md.push_str(&format!("File: `{}`. Phases: {}.\n\n", self.file, self.phases.iter().map(|p| format!("{} {:.1}–{:.1}s", p.name, p.start_s, p.end_s)).collect::<Vec<_>>().join(", ")));
        md.push_str(&format!("## Steady state (baseline)\n\n{}\n", Self::checks_table(&self.steady_state).markdown()));
        md.push_str(&format!("## Hypothesis (inject)\n\n{}\n", Self::checks_table(&self.hypothesis).markdown()));
        md.push_str(&format!("## Recovery\n\n{}\n\n", self.recovery_line()));
        md.push_str(&format!("## Golden signals by phase\n\n{}\n", self.signals_table().markdown()));
        for (name, t) in self.syscall_tables() {
            md.push_str(&format!("## Syscalls: {name}\n\n{}\n", t.markdown()));
        }
        md.push_str(&format!("## Faults (kernel counters)\n\n{}", self.faults_table().markdown()));
        md
    }

    /// The series of source `i`'s metric over time.
    fn line(&self, i: usize, m: Metric) -> Vec<(f64, f64)> {
        self.series.iter().filter(|p| p.samples[i].count > 0 || m == Metric::Rate).map(|p| (p.t, p.samples[i].value(m))).collect()
    }

    fn html(&self) -> String {
        let mut charts = String::new();
        for (i, s) in self.sources.iter().enumerate() {
            charts.push_str(&format!("<h3>{} <small>{}</small></h3>\n<div class=\"charts\">", esc(&s.name), esc(&s.what)));
            let rate = if s.kind == "probe" { "successes per second" } else { "calls per second" };
            charts.push_str(&self.chart(&format!("{}: {rate}", s.name), "per second", &[("rate", self.line(i, Metric::Rate))]));
            charts.push_str(&self.chart(&format!("{}: error rate", s.name), "%", &[("errors", self.line(i, Metric::ErrorRate))]));
            charts.push_str(&self.chart(&format!("{}: latency", s.name), "ms", &[("p50", self.line(i, Metric::P50)), ("p99", self.line(i, Metric::P99))]));
            charts.push_str("</div>\n");
        }
        let inj: Vec<(f64, f64)> = self.series.iter().map(|p| (p.t, p.injected_per_s)).collect();
        charts.push_str(&format!("<h3>faults</h3><div class=\"charts\">{}</div>\n", self.chart("injections per second", "per second", &[("injected", inj)])));
        let mut tables = format!("<h2>Steady state (baseline)</h2>{}", Self::checks_table(&self.steady_state).html());
        tables.push_str(&format!("<h2>Hypothesis (inject)</h2>{}", Self::checks_table(&self.hypothesis).html()));
        tables.push_str(&format!("<h2>Recovery</h2><p>{}</p>", esc(&self.recovery_line())));
        tables.push_str(&format!("<h2>Golden signals by phase</h2>{}", self.signals_table().html()));
        for (name, t) in self.syscall_tables() {
            tables.push_str(&format!("<h2>Syscalls: {}</h2>{}", esc(&name), t.html()));
        }
        tables.push_str(&format!("<h2>Faults (kernel counters)</h2>{}", self.faults_table().html()));
        let class = match self.verdict.as_str() {
            "held" => "held",
            "violated" => "violated",
            _ => "aborted",
        };
        let hypothesis = self.hypothesis_text.as_ref().map(|h| format!("<p>Hypothesis: {}</p>", esc(h))).unwrap_or_default();
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>\
body{{font-family:sans-serif;margin:2em;max-width:1200px}}.verdict{{padding:.6em 1em;border-radius:4px;font-weight:bold}}\
.held{{background:#d8f5d8}}.violated{{background:#fbd9d9}}.aborted{{background:#fdecc8}}\
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
.charts{{display:flex;flex-wrap:wrap;gap:8px}}.legend span{{display:inline-block;margin-right:1.5em}}\
</style></head><body>\n<h1>{title}</h1>\n<p class=\"verdict {class}\">Verdict: {verdict}</p>\n{hypothesis}<p>File: <code>{file}</code></p>\n\
<p class=\"legend\"><span style=\"background:#f4c7c3\">&nbsp;&nbsp;&nbsp;</span> faults in place \
<span style=\"background:#d4ecd4\">&nbsp;&nbsp;&nbsp;</span> recovery</p>\n{charts}{tables}</body></html>\n",
            title = esc(&self.title),
            verdict = esc(&self.verdict_line()),
            file = esc(&self.file),
        )
    }

    /// One SVG plot: the lines over time, the faults' window shaded red, the recovery green.
    fn chart(&self, title: &str, unit: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> String {
        let mut svg = String::new();
        let xmax = self.phases.last().map_or(1.0, |p| p.end_s).max(1.0);
        let ymax = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(1e-3) * 1.15;
        let drawn: std::result::Result<(), Box<dyn std::error::Error>> = (|| {
            let root = SVGBackend::with_string(&mut svg, (380, 220)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 14))
                .margin(6)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
            chart.configure_mesh().x_desc("seconds").y_desc(unit).label_style(("sans-serif", 11)).draw()?;
            if let Some(f) = &self.fault {
                chart.draw_series(std::iter::once(Rectangle::new([(f.start_s, 0.0), (f.end_s, ymax)], RGBColor(244, 199, 195).mix(0.6).filled())))?;
            }
            if let Some(r) = self.phases.iter().find(|p| p.name == "recovery") {
                chart.draw_series(std::iter::once(Rectangle::new([(r.start_s, 0.0), (r.end_s, ymax)], RGBColor(212, 236, 212).mix(0.6).filled())))?;
            }
            let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
            for (k, (name, points)) in lines.iter().enumerate() {
                let color = colors[k % colors.len()];
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).label_font(("sans-serif", 11)).draw()?;
            root.present()?;
            Ok(())
        })();
        match drawn {
            Ok(()) => svg,
            Err(e) => format!("<p>plot {} not drawn: {}</p>", esc(title), esc(&e.to_string())),
        }
    }

    /// Writes report.json, report.md and report.html into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).map_err(|e| anyhow::anyhow!("writing {}: {e}", dir.join(name).display()));
        write("report.json", serde_json::to_string_pretty(self).map_err(anyhow::Error::from)? + "\n")?;
        write("report.md", self.markdown())?;
        write("report.html", self.html())?;
        Ok(())
    }
}
