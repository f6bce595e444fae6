//! What a node does for a `ChaosFault`, as pure functions: which pods are chosen (the same choice
//! on every node), and the fault file its session runs (every table × every chosen local pod, the
//! windows counted from the resource's creation so restarts and other nodes agree).

use std::time::Duration;

use serde_json::{Map, Value};

use super::resource::Mode;

/// A matching pod anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    pub name: String,
    pub uid: String,
    pub node: String,
}

/// How many of `n` matching pods `mode` chooses.
pub fn count(mode: Mode, value: Option<u32>, n: usize) -> Result<usize, String> {
    Ok(match (mode, value) {
        (Mode::All, _) => n,
        (Mode::One, _) => n.min(1),
        (Mode::Fixed, Some(v)) if v >= 1 => n.min(v as usize),
        (Mode::Fixed, _) => {
            return Err("spec.value must be the number of pods (1 or more) for mode fixed".into());
        }
        // Rounded up, so a percentage of a few pods still hits one.
        (Mode::Percent, Some(p)) if (1..=100).contains(&p) => (n * p as usize).div_ceil(100),
        (Mode::Percent, _) => {
            return Err("spec.value must be a percentage from 1 to 100 for mode percent".into());
        }
    })
}

/// The chosen pods: every candidate for `all`; otherwise the first `count` in the order of a hash
/// seeded by `seed` (the resource's uid), ties broken by name. Every node computes the same set
/// from the same candidates, whatever order it listed them in.
pub fn choose(
    mode: Mode,
    value: Option<u32>,
    seed: &str,
    candidates: &[Candidate],
) -> Result<Vec<Candidate>, String> {
    let n = count(mode, value, candidates.len())?;
    let mut ranked: Vec<(u64, &Candidate)> = candidates
        .iter()
        .map(|c| (fnv1a(seed, &c.name), c))
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let mut chosen: Vec<Candidate> = ranked.into_iter().take(n).map(|(_, c)| c.clone()).collect();
    chosen.sort();
    Ok(chosen)
}

/// FNV-1a over `seed`, a separator and `name`: stable across builds and machines (std's hasher
/// promises neither), and spread well enough for picking pods.
fn fnv1a(seed: &str, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Keys a table may not have: the chosen pods are the target.
const TARGET_KEYS: [&str; 6] = ["cgroup", "pid", "container", "pod", "pods", "command"];

/// Checks every table with the fault file parser (the engine's own checks), each on its own, so
/// a message names the table: `spec.faults[1] (sys.fail): unknown key ...`.
pub fn check_tables(tables: &[Map<String, Value>]) -> Result<(), String> {
    for (i, table) in tables.iter().enumerate() {
        let place = format!("spec.faults[{i}]");
        let kind = table.get("kind").and_then(Value::as_str).unwrap_or("?");
        let named = format!("{place} ({kind})");
        if let Some(key) = TARGET_KEYS.iter().find(|k| table.contains_key(**k)) {
            return Err(format!(
                "{named} has `{key}`; the ChaosFault's selector picks the pods: remove it"
            ));
        }
        // A placeholder pod: only the table's own keys are checked here, nothing is resolved.
        let text = fault_file_text(&[(
            table.clone(),
            "00000000-0000-0000-0000-000000000000".to_string(),
        )])
        .map_err(|e| format!("{named}: {e}"))?;
        if let Err(e) = crate::faults::file_specs(std::path::Path::new(&place), &text) {
            return Err(format!(
                "{named}: {}",
                without_place(&e.to_string(), &place)
            ));
        }
    }
    Ok(())
}

/// The message of `PLACE:LINE:COLUMN: message` (the lines are of the generated file, not the
/// resource's, so they would only mislead).
fn without_place<'a>(message: &'a str, place: &str) -> &'a str {
    let Some(rest) = message.strip_prefix(place) else {
        return message;
    };
    let rest = rest.trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
    rest.trim_start()
}

/// The session's fault file at `elapsed` into the resource's `total` duration: every table for
/// every pod (by uid), each table's window (`after`, `for`, counted from the resource's creation,
/// `for` by default to the end) cut to what is left. None when every window is over.
pub fn fault_file(
    tables: &[Map<String, Value>],
    pod_uids: &[String],
    elapsed: Duration,
    total: Duration,
) -> Result<Option<String>, String> {
    let mut faults = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let duration_of = |key: &str| -> Result<Option<Duration>, String> {
            match table.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => crate::cli::parse_offset(s)
                    .map(Some)
                    .map_err(|e| format!("spec.faults[{i}].{key}: {e}")),
                Some(other) => Err(format!(
                    "spec.faults[{i}].{key} is {other}; give a duration such as \"30s\""
                )),
            }
        };
        let after = duration_of("after")?.unwrap_or_default();
        let end = match duration_of("for")? {
            Some(f) => (after + f).min(total),
            None => total,
        };
        let start = after.max(elapsed);
        if end <= start {
            continue;
        }
        let mut table = table.clone();
        table.insert(
            "after".into(),
            Value::String(format!("{}ms", (start - elapsed).as_millis())),
        );
        table.insert("for".into(), Value::String(millis(end - start)));
        for uid in pod_uids {
            faults.push((table.clone(), uid.clone()));
        }
    }
    if faults.is_empty() {
        return Ok(None);
    }
    fault_file_text(&faults).map(Some)
}

/// A duration as whole milliseconds, at least 1 (the engine refuses a `for` of 0).
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// `[[fault]]` tables of (table, pod uid) as TOML.
fn fault_file_text(faults: &[(Map<String, Value>, String)]) -> Result<String, String> {
    let mut list = Vec::new();
    for (table, uid) in faults {
        let mut t = toml::Table::new();
        for (key, value) in table {
            t.insert(key.clone(), toml_value(key, value)?);
        }
        t.insert("pod".into(), toml::Value::String(uid.clone()));
        list.push(toml::Value::Table(t));
    }
    let mut doc = toml::Table::new();
    doc.insert("fault".into(), toml::Value::Array(list));
    toml::to_string(&doc).map_err(|e| format!("writing the fault file: {e}"))
}

/// A table's value in TOML: strings, numbers, booleans and lists of them, as a fault file has.
fn toml_value(key: &str, v: &Value) -> Result<toml::Value, String> {
    Ok(match v {
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(
                n.as_f64()
                    .ok_or_else(|| format!("`{key}` = {n} is out of range"))?,
            ),
        },
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|i| toml_value(key, i))
                .collect::<Result<_, _>>()?,
        ),
        Value::Null | Value::Object(_) => {
            return Err(format!(
                "`{key}` is {}; a fault table's values are strings, numbers, booleans or lists",
                if v.is_null() { "null" } else { "a map" }
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Candidate {
                name: n.to_string(),
                uid: format!("uid-{n}"),
                node: format!("n{}", i % 3),
            })
            .collect()
    }

    fn table(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn counts_per_mode() {
        assert_eq!(count(Mode::All, None, 7), Ok(7));
        assert_eq!(count(Mode::One, None, 7), Ok(1));
        assert_eq!(count(Mode::One, None, 0), Ok(0));
        assert_eq!(count(Mode::Fixed, Some(3), 7), Ok(3));
        assert_eq!(count(Mode::Fixed, Some(9), 7), Ok(7));
        assert_eq!(count(Mode::Percent, Some(10), 7), Ok(1));
        assert_eq!(count(Mode::Percent, Some(50), 7), Ok(4));
        assert_eq!(count(Mode::Percent, Some(100), 7), Ok(7));
        assert!(count(Mode::Fixed, None, 7).is_err());
        assert!(count(Mode::Percent, Some(0), 7).is_err());
        assert!(count(Mode::Percent, Some(101), 7).is_err());
    }

    #[test]
    fn the_choice_ignores_listing_order_and_depends_on_the_seed() {
        let all = pods(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let mut reversed = all.clone();
        reversed.reverse();
        let one = choose(Mode::Fixed, Some(3), "uid-1", &all).unwrap();
        assert_eq!(
            one,
            choose(Mode::Fixed, Some(3), "uid-1", &reversed).unwrap()
        );
        assert_eq!(one.len(), 3);
        // Over 20 seeds the choice is not always the same three pods.
        let sets: std::collections::BTreeSet<Vec<String>> = (0..20)
            .map(|s| {
                choose(Mode::Fixed, Some(3), &format!("seed-{s}"), &all)
                    .unwrap()
                    .into_iter()
                    .map(|c| c.name)
                    .collect()
            })
            .collect();
        assert!(sets.len() > 1, "{sets:?}");
        assert_eq!(choose(Mode::All, None, "x", &all).unwrap().len(), 8);
    }

    #[test]
    fn windows_count_from_creation_and_end_with_the_resource() {
        let tables = vec![
            table(&[("kind", "net.drop".into()), ("percent", 100.into())]),
            table(&[
                ("kind", "sys.fail".into()),
                ("syscall", "connect".into()),
                ("errno", "EIO".into()),
                ("after", "10s".into()),
                ("for", "20s".into()),
            ]),
            table(&[
                ("kind", "net.drop".into()),
                ("percent", 5.into()),
                ("for", "5s".into()),
            ]),
        ];
        let uids = vec!["u1".to_string(), "u2".to_string()];
        let text = fault_file(
            &tables,
            &uids,
            Duration::from_secs(15),
            Duration::from_secs(60),
        )
        .unwrap()
        .unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let faults = doc["fault"].as_array().unwrap();
        // The third table's window (0-5s) is over: two tables × two pods.
        assert_eq!(faults.len(), 4, "{text}");
        let f = |i: usize, k: &str| faults[i][k].as_str().unwrap().to_string();
        assert_eq!(
            (f(0, "after"), f(0, "for"), f(0, "pod")),
            ("0ms".into(), "45000ms".into(), "u1".into())
        );
        assert_eq!(f(1, "pod"), "u2");
        assert_eq!(
            (f(2, "kind"), f(2, "after"), f(2, "for")),
            ("sys.fail".into(), "0ms".into(), "15000ms".into())
        );
        // Before the second table's start its after is what is left of it.
        let text = fault_file(
            &tables,
            &uids,
            Duration::from_secs(4),
            Duration::from_secs(60),
        )
        .unwrap()
        .unwrap();
        assert!(
            text.contains("after = \"6000ms\"") && text.contains("for = \"20000ms\""),
            "{text}"
        );
        assert_eq!(
            fault_file(
                &tables,
                &uids,
                Duration::from_secs(60),
                Duration::from_secs(60)
            ),
            Ok(None)
        );
    }

    #[test]
    fn tables_are_checked_by_the_fault_file_parser() {
        let good = table(&[
            ("kind", "net.drop".into()),
            ("percent", 30.into()),
            ("proto", "udp".into()),
        ]);
        assert_eq!(check_tables(std::slice::from_ref(&good)), Ok(()));
        let with_target = table(&[("kind", "net.drop".into()), ("cgroup", "/x".into())]);
        let e = check_tables(&[good.clone(), with_target]).unwrap_err();
        assert!(
            e.starts_with("spec.faults[1] (net.drop) has `cgroup`"),
            "{e}"
        );
        let bad = table(&[("kind", "net.drop".into()), ("percent", 300.into())]);
        let e = check_tables(&[bad]).unwrap_err();
        assert!(
            e.starts_with("spec.faults[0] (net.drop): ") && !e.contains(":1:") && e.contains("300"),
            "{e}"
        );
        let unknown = table(&[("kind", "net.explode".into())]);
        assert!(
            check_tables(&[unknown])
                .unwrap_err()
                .contains("net.explode")
        );
        let nested = table(&[
            ("kind", "net.drop".into()),
            ("peer", serde_json::json!({"a": 1})),
        ]);
        assert!(
            check_tables(&[nested])
                .unwrap_err()
                .contains("`peer` is a map")
        );
    }
}
