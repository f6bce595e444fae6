//! The end-of-run summary: one JSON object, or a short text.

use serde::Serialize;

use crate::faults::{Attached, Counters};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub fault: String,
    pub description: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Seconds the fault was in place.
    pub elapsed_s: f64,
    /// "deadline", or the signal that ended it ("SIGINT", "SIGTERM", "SIGHUP").
    pub ended_by: String,
    #[serde(flatten)]
    pub counters: Counters,
    pub attached: Attached,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "chaos: {} on {} ended by {} after {:.1}s\n",
            self.description, self.cgroup, self.ended_by, self.elapsed_s
        );
        for r in &self.counters.rules {
            let pct = if r.matched > 0 { 100.0 * r.injected as f64 / r.matched as f64 } else { 0.0 };
            let detail: Vec<String> = r.detail.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!(
                "  rule {} ({}): seen {}, matched {}, injected {} ({pct:.1}% of matched); {}\n",
                r.rule,
                r.fault,
                r.seen,
                r.matched,
                r.injected,
                detail.join(", ")
            );
            let (selected, dropped) = (r.detail.get("selected"), r.detail.get("dropped"));
            if let (Some(&s_), Some(&d)) = (selected, dropped)
                && s_ > d
            {
                s += &format!("  note: {} packets selected for dropping left through a device chaos was not attached to\n", s_ - d);
            }
        }
        let errs: Vec<String> =
            self.counters.kernel_errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        if !errs.is_empty() {
            s += &format!("  kernel-side errors (packets passed untouched): {}\n", errs.join(", "));
        }
        s
    }
}
