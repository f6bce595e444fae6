//! The end-of-session summary: one JSON object, or a short text.

use std::collections::BTreeMap;

use chaos_common::{Counters, Family};
use serde::{Deserialize, Serialize};

use crate::{
    session::{Planned, attach::Attached, follow::TargetChange},
    target::Cgroup,
};

/// Deserialize: `chaos --agent ADDR apply` prints the text of the summary an agent's session gave.
#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub session: String,
    pub pid: u32,
    /// "deadline", "chaos stop", or the signal that ended it ("SIGINT", "SIGTERM", "SIGHUP").
    pub ended_by: String,
    /// Seconds the session was in place.
    pub elapsed_s: f64,
    pub rules: Vec<RuleSummary>,
    /// Kernel-side failures by kind (the packet or call passed untouched).
    pub kernel_errors: BTreeMap<String, u64>,
    /// Not read back: the text does not show it.
    #[serde(skip_deserializing)]
    pub attached: Attached,
    /// Targets whose cgroup directory was recreated (a restarted container) or went away while
    /// the session ran, and whether the session followed the new one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets_changed: Vec<TargetChange>,
}

/// One rule's counters, summed over CPUs. Packet rules also count wire segments (`*_segs`): an
/// skb of a GSO packet is one packet here but several on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct RuleSummary {
    pub rule: u32,
    pub kind: String,
    pub description: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub after_s: f64,
    pub for_s: f64,
    pub max_injections: Option<u64>,
    /// Events (packets, calls) of the target that reached the rule.
    pub seen: u64,
    /// ... that matched every filter while the rule was live.
    pub matched: u64,
    /// ... that the dice selected.
    pub selected: u64,
    /// ... to which the fault was done.
    pub injected: u64,
    /// Selected but not injected: the rule had reached --max-injections.
    pub capped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_segs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_segs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_segs: Option<u64>,
    /// The kind's own names for what it did ("dropped", "failed", ...).
    #[serde(flatten)]
    pub detail: BTreeMap<String, u64>,
}

impl RuleSummary {
    pub fn new(rule: u32, f: &Planned, target: &Cgroup, c: &Counters) -> RuleSummary {
        let packets = f.hooks.iter().any(|h| h.family() != Family::Sys);
        let segs = |v: u64| packets.then_some(v);
        RuleSummary {
            rule,
            kind: f.spec.fault.kind().to_string(),
            description: f.spec.fault.describe(),
            cgroup: target.path.display().to_string(),
            cgroup_id: target.id,
            after_s: f.spec.args.after.as_secs_f64(),
            for_s: f.spec.args.duration.as_secs_f64(),
            max_injections: f.spec.args.max_injections,
            seen: c.seen,
            matched: c.matched,
            selected: c.selected,
            injected: c.injected,
            capped: c.capped,
            seen_segs: segs(c.seen_segs),
            matched_segs: segs(c.matched_segs),
            selected_segs: segs(c.selected_segs),
            detail: f.spec.fault.report(c).into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }
}

impl Summary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "chaos: session {} ended by {} after {:.1}s\n",
            self.session, self.ended_by, self.elapsed_s
        );
        for r in &self.rules {
            let pct = if r.matched > 0 { 100.0 * r.injected as f64 / r.matched as f64 } else { 0.0 };
            let detail: Vec<String> = r.detail.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!("  rule {} ({}) on {}: {}\n", r.rule, r.kind, r.cgroup, r.description);
            s += &format!(
                "    seen {}, matched {}, selected {}, injected {} ({pct:.1}% of matched); {}\n",
                r.seen,
                r.matched,
                r.selected,
                r.injected,
                detail.join(", ")
            );
            if let (Some(seen), Some(matched)) = (r.seen_segs, r.matched_segs) {
                s += &format!("    wire segments: seen {seen}, matched {matched}\n");
            }
            if r.capped > 0 {
                s += &format!("    {} more were selected after the rule reached --max-injections\n", r.capped);
            }
        }
        for c in &self.targets_changed {
            s += &match c.new_id {
                Some(new) if c.followed => format!("  {} was recreated at {:.1}s (cgroup id {} → {new}): followed\n", c.cgroup, c.at_s, c.old_id),
                Some(new) => format!(
                    "  {} was recreated at {:.1}s (cgroup id {} → {new}): not followed ({})\n",
                    c.cgroup,
                    c.at_s,
                    c.old_id,
                    c.error.as_deref().unwrap_or("unknown")
                ),
                None => format!("  {} was gone at {:.1}s\n", c.cgroup, c.at_s),
            };
        }
        let errs: Vec<String> = self.kernel_errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
        if !errs.is_empty() {
            s += &format!("  kernel-side errors (passed untouched): {}\n", errs.join(", "));
        }
        s
    }
}
