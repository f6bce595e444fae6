//! Fault files: a TOML list of `[[fault]]` tables to run together.
//!
//! Each table's keys mirror the long flags of its kind's command (`max-injections = 100` is
//! `--max-injections=100`). A table is turned into an argument vector and parsed by the kind's own
//! `clap::Command`, so the file and the command line share value parsers, required arguments and
//! conflicts. Errors are one line, `PATH:LINE:COLUMN: what is wrong; what was expected`.

use std::borrow::Cow;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, ArgMatches, Command};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One fault of a file: its kind, clap's matches for its table, and where the table starts.
#[derive(Debug, Clone)]
pub struct FileFault {
    pub kind: String,
    pub matches: ArgMatches,
    /// 1-based line of the table's `[[fault]]` header.
    pub line: usize,
}

/// A fault file error, already formatted as `PATH:LINE:COLUMN: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

type Key<'i> = Spanned<Cow<'i, str>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// Parses the fault file `text` read from `path`. `command_for(kind)` gives the clap Command for a
/// kind (None: unknown kind); `kinds` lists the known kinds for error messages.
pub fn parse(
    path: &Path,
    text: &str,
    command_for: &dyn Fn(&str) -> Option<Command>,
    kinds: &[&str],
) -> Result<Vec<FileFault>, FileError> {
    Ok(parse_document(path, text, &[], command_for, kinds)?.faults)
}

/// A part of a file beside its `[[fault]]` tables: `[key]` (one table) or `[[key]]` (`many`),
/// whose keys are the long flags of `command`, as a fault table's are its kind's.
pub struct Section {
    pub key: &'static str,
    pub many: bool,
    pub command: Command,
}

/// One table of a [`Section`]: clap's matches and the line of its header.
#[derive(Debug, Clone)]
pub struct SectionTable {
    pub matches: ArgMatches,
    pub line: usize,
}

/// A parsed file: its faults and, by section key, its other tables (in file order).
#[derive(Debug, Default)]
pub struct Document {
    pub faults: Vec<FileFault>,
    pub sections: std::collections::BTreeMap<&'static str, Vec<SectionTable>>,
}

/// Parses a file of `[[fault]]` tables and the `sections` given (an experiment file's
/// `[experiment]`, `[[probe]]`, ...). At least one `[[fault]]` is required.
pub fn parse_document(
    path: &Path,
    text: &str,
    sections: &[Section],
    command_for: &dyn Fn(&str) -> Option<Command>,
    kinds: &[&str],
) -> Result<Document, FileError> {
    let at = Locator { path, text };
    let root = DeTable::parse(text).map_err(|e| toml_error(&at, &e))?;
    let what = if sections.is_empty() { "a fault file" } else { "this file" };
    let mut doc = Document::default();
    let mut fault = None;
    for (key, value) in in_source_order(root.get_ref()) {
        let name = key.get_ref();
        if name == "fault" {
            fault = Some((key, value));
            continue;
        }
        let Some(section) = sections.iter().find(|s| s.key == *name) else {
            let mut valid: Vec<String> = sections.iter().map(|s| if s.many { format!("[[{}]]", s.key) } else { format!("[{}]", s.key) }).collect();
            valid.push("[[fault]]".into());
            let hint = closest(name, sections.iter().map(|s| s.key).chain(["fault"])).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
            let holds = if sections.is_empty() { "holds only `fault` arrays, written as [[fault]] tables".to_string() } else { format!("holds {}", valid.join(", ")) };
            return Err(at.error(key.span().start, format!("unknown top-level key `{}`{hint}; {what} {holds}", shown(name))));
        };
        let header = if section.many { format!("[[{}]]", section.key) } else { format!("[{}]", section.key) };
        let tables: Vec<&Value> = match (value.get_ref(), section.many) {
            (DeValue::Array(items), true) => items.iter().collect(),
            (DeValue::Table(_), false) => vec![value],
            (other, _) => return Err(at.error(value.span().start, format!("`{}` is {}; expected {header}", section.key, a(other)))),
        };
        let mut parsed = Vec::new();
        for table in tables {
            let DeValue::Table(t) = table.get_ref() else {
                return Err(at.error(table.span().start, format!("`{}` lists {}; expected {header} tables", section.key, a(table.get_ref()))));
            };
            let matches = table_matches(&at, table.span().start, &in_source_order(t), section.command.clone(), section.key, &header, section.key)?;
            parsed.push(SectionTable { matches, line: at.line_col(table.span().start).0 });
        }
        doc.sections.insert(section.key, parsed);
    }
    let no_fault = format!("no [[fault]] table; {what} lists faults as [[fault]] tables");
    let Some((key, value)) = fault else {
        return Err(at.error(0, no_fault));
    };
    let DeValue::Array(tables) = value.get_ref() else {
        return Err(at.error(
            key.span().start,
            format!(
                "`fault` is {}; expected [[fault]] tables",
                a(value.get_ref())
            ),
        ));
    };
    if tables.is_empty() {
        return Err(at.error(key.span().start, no_fault));
    }
    doc.faults = tables
        .iter()
        .map(|table| parse_fault(&at, table, command_for, kinds))
        .collect::<Result<_, _>>()?;
    Ok(doc)
}

/// Turns one `[[fault]]` table into clap matches for its kind.
fn parse_fault(
    at: &Locator,
    table: &Value,
    command_for: &dyn Fn(&str) -> Option<Command>,
    kinds: &[&str],
) -> Result<FileFault, FileError> {
    let header = table.span().start;
    let DeValue::Table(table) = table.get_ref() else {
        // `fault = [1]`: an inline array whose items are not tables.
        return Err(at.error(
            header,
            format!(
                "`fault` lists {}; expected [[fault]] tables",
                a(table.get_ref())
            ),
        ));
    };
    let entries = in_source_order(table);
    let known = kinds.join(", ");

    let Some((_, kind_value)) = entries.iter().find(|(k, _)| k.get_ref() == "kind") else {
        return Err(at.error(header, format!("missing `kind`; expected one of: {known}")));
    };
    let DeValue::String(kind) = kind_value.get_ref() else {
        return Err(at.error(
            kind_value.span().start,
            format!(
                "`kind` is {}; expected a string, one of: {known}",
                a(kind_value.get_ref())
            ),
        ));
    };
    let Some(command) = command_for(kind) else {
        let hint = closest(kind, kinds.iter().copied())
            .map(|k| format!(" (did you mean \"{k}\"?)"))
            .unwrap_or_default();
        return Err(at.error(
            kind_value.span().start,
            format!("unknown kind {kind:?}{hint}; expected one of: {known}"),
        ));
    };
    let matches = table_matches(at, header, &entries, command, kind, "[[fault]]", "kind")?;
    Ok(FileFault { kind: kind.to_string(), matches, line: at.line_col(header).0 })
}

/// Turns a table's entries (but `skip`, the kind) into clap matches for `command`. `label` names
/// the table in messages ("net.drop", "probe"), `header` as written (`[[fault]]`).
fn table_matches(
    at: &Locator,
    header: usize,
    entries: &[(&Key, &Value)],
    command: Command,
    label: &str,
    header_text: &str,
    skip: &str,
) -> Result<ArgMatches, FileError> {
    let kind = label;
    // A table with only `kind` should get clap's "missing required" error, not its help page.
    let mut command = command.arg_required_else_help(false);
    // Building resolves each argument's action (SetTrue for plain flags) and is idempotent.
    command.build();
    let flags: Vec<Flag> = command
        .get_arguments()
        .filter(|arg| {
            !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
        })
        .filter_map(|arg| {
            Some(Flag {
                key: arg.get_long()?.to_string(),
                takes_values: arg.get_action().takes_values(),
                repeats: matches!(arg.get_action(), ArgAction::Append),
            })
        })
        .collect();

    let mut argv = vec![kind.to_string()];
    let mut used = Vec::new();
    for (key, value) in entries {
        if key.get_ref() == skip {
            continue;
        }
        let flag = find_flag(at, kind, &flags, key)?;
        used.push(push_flag(at, flag, key, value, &mut argv)?);
    }

    command
        .try_get_matches_from_mut(&argv)
        .map_err(|err| clap_error(at, header, kind, header_text, &used, &err))
}

/// A long flag of the kind's command, i.e. a key a table may hold.
struct Flag {
    key: String,
    takes_values: bool,
    repeats: bool,
}

/// Where a key and its values sit in the file, to point clap's errors back at them.
struct Used {
    key: String,
    key_at: usize,
    value_at: usize,
    /// Each value passed to clap, with its offset (several for an array).
    values: Vec<(String, usize)>,
}

fn find_flag<'f>(
    at: &Locator,
    kind: &str,
    flags: &'f [Flag],
    key: &Key,
) -> Result<&'f Flag, FileError> {
    let name = key.get_ref();
    if let Some(flag) = flags.iter().find(|f| f.key == *name) {
        return Ok(flag);
    }
    let keys = || flags.iter().map(|f| f.key.as_str());
    let dashed = name.replace('_', "-");
    let hint = if name.contains('_') && keys().any(|k| k == dashed) {
        format!(" (keys use dashes: did you mean `{dashed}`?)")
    } else if let Some(near) = closest(name, keys()) {
        format!(" (did you mean `{near}`?)")
    } else {
        String::new()
    };
    Err(at.error(
        key.span().start,
        format!(
            "unknown key `{}` for {kind}{hint}; valid keys: {}",
            shown(name),
            keys().collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Appends the arguments for one key to `argv`, checking the TOML type against the flag.
fn push_flag(
    at: &Locator,
    flag: &Flag,
    key: &Key,
    value: &Value,
    argv: &mut Vec<String>,
) -> Result<Used, FileError> {
    let name = &flag.key;
    let mut used = Used {
        key: name.clone(),
        key_at: key.span().start,
        value_at: value.span().start,
        values: Vec::new(),
    };
    let wrong = |what: &str, found: &DeValue, expected: &str| {
        let quote = if found.is_datetime() {
            " (put it in quotes)"
        } else {
            ""
        };
        at.error(
            value.span().start,
            format!(
                "`{name}` {what}, found {}; expected {expected}{quote}",
                a(found)
            ),
        )
    };

    if !flag.takes_values {
        // A switch: present when true, left out when false.
        match value.get_ref() {
            DeValue::Boolean(true) => argv.push(format!("--{name}")),
            DeValue::Boolean(false) => {}
            other => return Err(wrong("is a switch", other, "true or false")),
        }
        return Ok(used);
    }

    let expected = if flag.repeats {
        "a string, a number or an array of them"
    } else {
        "a string or number"
    };
    let items: Vec<&Value> = match value.get_ref() {
        DeValue::Array(items) if flag.repeats => items.iter().collect(),
        DeValue::Array(_) => return Err(wrong("takes one value", value.get_ref(), expected)),
        single => match scalar_text(single) {
            Some(_) => vec![value],
            None => return Err(wrong("takes a value", single, expected)),
        },
    };
    for item in items {
        let Some(text) = scalar_text(item.get_ref()) else {
            // Only array elements get here: a single value was checked above.
            return Err(at.error(
                item.span().start,
                format!(
                    "`{name}` lists {}; expected strings or numbers",
                    a(item.get_ref())
                ),
            ));
        };
        // `--key=value` keeps a value such as "-5" from being read as a flag.
        argv.push(format!("--{name}={text}"));
        used.values.push((text, item.span().start));
    }
    Ok(used)
}

/// The command-line text of a string or number; None for other TOML types.
fn scalar_text(value: &DeValue) -> Option<String> {
    match value {
        DeValue::String(s) => Some(s.to_string()),
        // Hex, octal and binary integers are written out in decimal, as a user would type them.
        DeValue::Integer(i) => Some(
            i128::from_str_radix(i.as_str(), i.radix())
                .map(|n| n.to_string())
                .unwrap_or_else(|_| i.to_string()),
        ),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        _ => None,
    }
}

/// Points a clap error back at the key (or value) it is about.
fn clap_error(
    at: &Locator,
    header: usize,
    kind: &str,
    header_text: &str,
    used: &[Used],
    err: &clap::Error,
) -> FileError {
    if err.kind() == ErrorKind::MissingRequiredArgument
        && let Some(message) = missing_message(err, kind, header_text)
    {
        return at.error(header, message);
    }
    let reason = clap_reason(err);
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        Some(ContextValue::Strings(list)) => list.first().map(String::as_str),
        _ => None,
    };
    let Some(used) = arg
        .and_then(long_name)
        .and_then(|name| used.iter().find(|u| u.key == name))
    else {
        return at.error(header, reason);
    };
    let offset = match err.get(ContextKind::InvalidValue) {
        // Point at the array element clap refused, else at the whole value.
        Some(ContextValue::String(bad)) => used
            .values
            .iter()
            .find(|(text, _)| text == bad)
            .map_or(used.value_at, |(_, offset)| *offset),
        _ => used.key_at,
    };
    at.error(offset, reason)
}

/// "missing required key(s) for KIND: `a`, one of `b` or `c`; ..." from clap's list of missing
/// arguments ("--a <A>", "<--b <B>|--c <C>>"). None if an entry is not a long flag.
fn missing_message(err: &clap::Error, kind: &str, header_text: &str) -> Option<String> {
    let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let mut items = Vec::new();
    for entry in missing {
        let members = entry.strip_prefix('<').and_then(|s| s.strip_suffix('>'));
        match members {
            Some(members) if members.contains('|') => {
                // A positional member (`-- CMD`) has no key in a file.
                let names: Vec<&str> = members.split('|').filter_map(long_name).collect();
                if names.is_empty() {
                    return None;
                }
                items.push(format!("one of {}", or_list(&names)));
            }
            _ => items.push(format!("`{}`", long_name(entry)?)),
        }
    }
    let (keys, them) = if items.len() == 1 {
        ("key", "it")
    } else {
        ("keys", "them")
    };
    Some(format!(
        "missing required {keys} for {kind}: {}; add {them} to this {header_text} table",
        items.join(", ")
    ))
}

/// "--percent <P>" -> "percent".
fn long_name(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix("--")?;
    let end = name.find([' ', '=', '>', '|']).unwrap_or(name.len());
    Some(&name[..end]).filter(|n| !n.is_empty())
}

/// "`a` or `b`", "`a`, `b` or `c`".
fn or_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// clap's own explanation on one line: no "error: " prefix, usage or "--help" tip.
fn clap_reason(err: &clap::Error) -> String {
    // Display of a StyledStr drops the styling, so no ANSI codes get through.
    let rendered = err.render().to_string();
    let mut reason = String::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = line.strip_prefix("tip: ").unwrap_or(line);
        let line = line
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if !reason.is_empty() {
            reason.push_str(if reason.ends_with(':') { " " } else { "; " });
        }
        reason.push_str(line);
    }
    if reason.is_empty() {
        reason = format!("{:?}", err.kind());
    }
    reason
}

fn toml_error(at: &Locator, err: &toml::de::Error) -> FileError {
    let message = err.message().replacen(", expected ", "; expected ", 1);
    let message = message
        .strip_suffix("; expected nothing")
        .unwrap_or(&message);
    let message = if message == "duplicate key" {
        "duplicate key; each key may appear once per table"
    } else {
        message
    };
    let offset = err.span().map_or(0, |span| span.start);
    at.error(offset, format!("invalid TOML: {message}"))
}

/// A table's entries in the order they appear in the file (the map itself is sorted by name).
fn in_source_order<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Key<'i>, &'t Value<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// The candidate within edit distance 2 of `word`, if any (the first of the nearest).
fn closest<'c>(word: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// "an integer", "a table", ... for a TOML value.
fn a(value: &DeValue) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// A key as written, with control characters escaped so the message stays on one line.
fn shown(key: &str) -> String {
    key.escape_debug().to_string()
}

/// Turns byte offsets into `PATH:LINE:COLUMN: ` prefixes.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let (mut line, mut column) = (1, 1);
        for (_, c) in self.text.char_indices().take_while(|(i, _)| *i < offset) {
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        (line, column)
    }

    fn error(&self, offset: usize, message: String) -> FileError {
        let (line, column) = self.line_col(offset);
        // Messages quote user text; keep them on one line whatever it holds.
        let message = message.replace('\n', "\\n").replace('\r', "\\r");
        FileError(format!(
            "{}:{line}:{column}: {message}",
            self.path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgGroup, value_parser};

    /// Accepts "0".."100" with optional decimals and '%', like the real net.drop.
    fn percent(s: &str) -> Result<f64, String> {
        let digits = s.strip_suffix('%').unwrap_or(s);
        let well_formed = !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.matches('.').count() <= 1
            && digits.chars().any(|c| c.is_ascii_digit());
        let number = match digits.parse::<f64>() {
            Ok(n) if well_formed => n,
            _ => {
                return Err(format!(
                    "'{s}' is not a number; give a percentage such as 30 or 0.5"
                ));
            }
        };
        if number > 100.0 {
            return Err(format!("{s} is outside 0-100"));
        }
        Ok(number)
    }

    fn target(cmd: Command) -> Command {
        cmd.arg(Arg::new("cgroup").long("cgroup").value_name("PATH"))
            .arg(
                Arg::new("pid")
                    .long("pid")
                    .value_name("PID")
                    .value_parser(value_parser!(u32)),
            )
            .group(
                ArgGroup::new("target")
                    .args(["cgroup", "pid"])
                    .required(true)
                    .multiple(false),
            )
    }

    fn command_for(kind: &str) -> Option<Command> {
        match kind {
            "net.drop" => Some(
                target(Command::new("net.drop"))
                    .arg(
                        Arg::new("percent")
                            .long("percent")
                            .value_name("P")
                            .required(true)
                            .value_parser(percent),
                    )
                    .arg(
                        Arg::new("proto")
                            .long("proto")
                            .value_parser(["tcp", "udp", "icmp"]),
                    )
                    .arg(
                        Arg::new("port")
                            .long("port")
                            .value_parser(value_parser!(u16).range(1..)),
                    )
                    .arg(Arg::new("for").long("for").value_name("DURATION"))
                    .arg(
                        Arg::new("max-injections")
                            .long("max-injections")
                            .value_name("N")
                            .value_parser(value_parser!(u64)),
                    )
                    .arg(
                        Arg::new("netns")
                            .long("netns")
                            .value_name("FILE")
                            .action(ArgAction::Append),
                    )
                    .arg(Arg::new("force").long("force").action(ArgAction::SetTrue)),
            ),
            "sys.fail" => Some(
                target(Command::new("sys.fail"))
                    .arg(Arg::new("syscall").long("syscall").required(true))
                    .arg(Arg::new("errno").long("errno").required(true)),
            ),
            _ => None,
        }
    }

    const KINDS: &[&str] = &["net.drop", "sys.fail"];

    fn run(text: &str) -> Result<Vec<FileFault>, FileError> {
        parse(Path::new("faults.toml"), text, &command_for, KINDS)
    }

    fn err(text: &str) -> String {
        match run(text) {
            Ok(faults) => panic!("expected an error, got {} faults", faults.len()),
            Err(e) => e.0,
        }
    }

    const VALID: &str = r#"# chaos fault file

# two faults at once
[[fault]]
kind = "net.drop"
cgroup = "/system.slice/api.service"
percent = 5            # a number or a string
proto = "udp"
port = 8000
for = "30s"
max-injections = 100
netns = ["/run/netns/a", "/run/netns/b"]
force = true

[[fault]]
kind = "sys.fail"
pid = 4242
syscall = "openat"
errno = "EIO"
"#;

    #[test]
    fn valid_file_round_trips() {
        let faults = run(VALID).unwrap();
        assert_eq!(faults.len(), 2);

        let drop = &faults[0];
        assert_eq!((drop.kind.as_str(), drop.line), ("net.drop", 4));
        let m = &drop.matches;
        assert_eq!(
            m.get_one::<String>("cgroup").unwrap(),
            "/system.slice/api.service"
        );
        assert_eq!(m.get_one::<u32>("pid"), None);
        assert_eq!(m.get_one::<f64>("percent"), Some(&5.0));
        assert_eq!(m.get_one::<String>("proto").unwrap(), "udp");
        assert_eq!(m.get_one::<u16>("port"), Some(&8000));
        assert_eq!(m.get_one::<String>("for").unwrap(), "30s");
        assert_eq!(m.get_one::<u64>("max-injections"), Some(&100));
        let netns: Vec<&String> = m.get_many("netns").unwrap().collect();
        assert_eq!(netns, ["/run/netns/a", "/run/netns/b"]);
        assert!(m.get_flag("force"));

        // The argument vector follows the order of the keys in the table.
        let order = [
            "cgroup",
            "percent",
            "proto",
            "port",
            "for",
            "max-injections",
            "netns",
            "force",
        ];
        let indices: Vec<usize> = order.iter().map(|id| m.index_of(id).unwrap()).collect();
        assert!(indices.is_sorted(), "{indices:?}");

        let fail = &faults[1];
        assert_eq!((fail.kind.as_str(), fail.line), ("sys.fail", 15));
        assert_eq!(fail.matches.get_one::<u32>("pid"), Some(&4242));
        assert_eq!(fail.matches.get_one::<String>("syscall").unwrap(), "openat");
        assert_eq!(fail.matches.get_one::<String>("errno").unwrap(), "EIO");
    }

    fn drop_with(extra: &str) -> Result<ArgMatches, FileError> {
        let text = format!("[[fault]]\nkind = \"net.drop\"\npid = 1\n{extra}\n");
        run(&text).map(|mut faults| faults.remove(0).matches)
    }

    #[test]
    fn numbers_and_strings_reach_percent_as_text() {
        for (value, expected) in [
            ("5", 5.0),
            ("12.5", 12.5),
            ("\"12.5%\"", 12.5),
            ("0", 0.0),
            ("+7", 7.0),
        ] {
            let m = drop_with(&format!("percent = {value}")).unwrap();
            assert_eq!(
                m.get_one::<f64>("percent"),
                Some(&expected),
                "percent = {value}"
            );
        }
        // Hex integers are written out in decimal.
        let m = drop_with("percent = 1\nmax-injections = 0x10").unwrap();
        assert_eq!(m.get_one::<u64>("max-injections"), Some(&16));
    }

    #[test]
    fn switches_follow_booleans() {
        assert!(
            !drop_with("percent = 1\nforce = false")
                .unwrap()
                .get_flag("force")
        );
        assert!(
            drop_with("percent = 1\nforce = true")
                .unwrap()
                .get_flag("force")
        );
        let m = drop_with("percent = 1\nforce = false").unwrap();
        // Not on the command line: the value is clap's default.
        assert_eq!(
            m.value_source("force"),
            Some(clap::parser::ValueSource::DefaultValue)
        );
    }

    #[test]
    fn an_empty_array_passes_nothing() {
        let m = drop_with("percent = 1\nnetns = []").unwrap();
        assert_eq!(m.get_many::<String>("netns").map(|v| v.count()), None);
    }

    #[test]
    fn lines_count_comments_and_blank_lines() {
        let text = "# a\n\n   # b\n\n[[fault]] # c\nkind = \"sys.fail\"\npid = 1\nsyscall = \"read\"\nerrno = \"EIO\"\n\n\n# d\n[[fault]]\nkind = \"sys.fail\"\ncgroup = \"/\"\nsyscall = \"write\"\nerrno = \"EIO\"\n";
        let lines: Vec<usize> = run(text).unwrap().iter().map(|f| f.line).collect();
        assert_eq!(lines, [5, 13]);
        let text = "# a\n\n[[fault]]\nkind = \"sys.fail\"\n# b\n\npid = \"x\"\n";
        assert_eq!(
            err(text),
            "faults.toml:7:7: invalid value 'x' for '--pid <PID>': invalid digit found in string"
        );
    }

    /// (file text, the whole expected error).
    const ERRORS: &[(&str, &str)] = &[
        // TOML syntax, positioned by the toml crate's span.
        (
            "[[fault]]\nkind = \"net.drop\npid = 1\n",
            "faults.toml:2:17: invalid TOML: invalid basic string; expected `\"`",
        ),
        (
            "[[fault]\nkind = \"net.drop\"\n",
            "faults.toml:1:9: invalid TOML: unclosed array table; expected `]`",
        ),
        (
            "[[fault]]\nkind = \"sys.fail\"\nkind = \"net.drop\"\n",
            "faults.toml:3:1: invalid TOML: duplicate key; each key may appear once per table",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npercent = 1 2\n",
            "faults.toml:3:11: invalid TOML: string values must be quoted; expected literal string",
        ),
        // Top level.
        (
            "",
            "faults.toml:1:1: no [[fault]] table; a fault file lists faults as [[fault]] tables",
        ),
        (
            "# only a comment\n\n",
            "faults.toml:1:1: no [[fault]] table; a fault file lists faults as [[fault]] tables",
        ),
        (
            "fault = []\n",
            "faults.toml:1:1: no [[fault]] table; a fault file lists faults as [[fault]] tables",
        ),
        (
            "kind = \"net.drop\"\n[[fault]]\nkind = \"net.drop\"\n",
            "faults.toml:1:1: unknown top-level key `kind`; a fault file holds only `fault` arrays, written as [[fault]] tables",
        ),
        (
            "[[fault]]\nkind = \"sys.fail\"\npid = 1\nsyscall = \"read\"\nerrno = \"EIO\"\n\n[faults]\n",
            "faults.toml:7:2: unknown top-level key `faults` (did you mean `fault`?); a fault file holds only `fault` arrays, written as [[fault]] tables",
        ),
        (
            "fault = 1\n",
            "faults.toml:1:1: `fault` is an integer; expected [[fault]] tables",
        ),
        (
            "[fault]\nkind = \"net.drop\"\n",
            "faults.toml:1:2: `fault` is a table; expected [[fault]] tables",
        ),
        (
            "fault = [1]\n",
            "faults.toml:1:10: `fault` lists an integer; expected [[fault]] tables",
        ),
        // kind.
        (
            "[[fault]]\npid = 1\n",
            "faults.toml:1:1: missing `kind`; expected one of: net.drop, sys.fail",
        ),
        (
            "[[fault]]\nkind = 3\n",
            "faults.toml:2:8: `kind` is an integer; expected a string, one of: net.drop, sys.fail",
        ),
        (
            "[[fault]]\nkind = \"net.dorp\"\n",
            "faults.toml:2:8: unknown kind \"net.dorp\" (did you mean \"net.drop\"?); expected one of: net.drop, sys.fail",
        ),
        (
            "[[fault]]\nkind = \"disk.fill\"\n",
            "faults.toml:2:8: unknown kind \"disk.fill\"; expected one of: net.drop, sys.fail",
        ),
        // Keys.
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nmax_injections = 100\n",
            "faults.toml:5:1: unknown key `max_injections` for net.drop (keys use dashes: did you mean `max-injections`?); valid keys: cgroup, pid, percent, proto, port, for, max-injections, netns, force",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\nprecent = 5\n",
            "faults.toml:4:1: unknown key `precent` for net.drop (did you mean `percent`?); valid keys: cgroup, pid, percent, proto, port, for, max-injections, netns, force",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nhelp = true\n",
            "faults.toml:5:1: unknown key `help` for net.drop; valid keys: cgroup, pid, percent, proto, port, for, max-injections, netns, force",
        ),
        (
            "[[fault]]\nkind = \"sys.fail\"\npid = 1\nsyscall = \"read\"\nerrno = \"EIO\"\npercent = 5\n",
            "faults.toml:6:1: unknown key `percent` for sys.fail; valid keys: cgroup, pid, syscall, errno",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\n[fault.pid]\n",
            "faults.toml:3:1: `pid` takes a value, found a table; expected a string or number",
        ),
        // TOML types.
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = { value = 5 }\n",
            "faults.toml:4:11: `percent` takes a value, found a table; expected a string or number",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = [5, 6]\n",
            "faults.toml:4:11: `percent` takes one value, found an array; expected a string or number",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = true\n",
            "faults.toml:4:11: `percent` takes a value, found a boolean; expected a string or number",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nforce = \"yes\"\n",
            "faults.toml:5:9: `force` is a switch, found a string; expected true or false",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nforce = 1\n",
            "faults.toml:5:9: `force` is a switch, found an integer; expected true or false",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nfor = 00:00:30\n",
            "faults.toml:5:7: `for` takes a value, found a datetime; expected a string or number (put it in quotes)",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nnetns = true\n",
            "faults.toml:5:9: `netns` takes a value, found a boolean; expected a string, a number or an array of them",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nnetns = [\"/run/netns/é\", [\"b\"]]\n",
            "faults.toml:5:26: `netns` lists an array; expected strings or numbers",
        ),
        // clap's value parsers, at the value (or the array element) it refused.
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = \"lots\"\n",
            "faults.toml:4:11: invalid value 'lots' for '--percent <P>': 'lots' is not a number; give a percentage such as 30 or 0.5",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 100.5\n",
            "faults.toml:4:11: invalid value '100.5' for '--percent <P>': 100.5 is outside 0-100",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = -5\n",
            "faults.toml:4:11: invalid value '-5' for '--percent <P>': '-5' is not a number; give a percentage such as 30 or 0.5",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nproto = \"sctp\"\n",
            "faults.toml:5:9: invalid value 'sctp' for '--proto <proto>'; possible values: tcp, udp, icmp; a similar value exists: 'tcp'",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nport = 0\n",
            "faults.toml:5:8: invalid value '0' for '--port <port>': 0 is not in 1..=65535",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nport = \"8000-8100\"\n",
            "faults.toml:5:8: invalid value '8000-8100' for '--port <port>': invalid digit found in string",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 4242\npercent = 5\nmax-injections = -1\n",
            "faults.toml:5:18: invalid value '-1' for '--max-injections <N>': invalid digit found in string",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = 5\nnetns = [\"a\", 2]\nmax-injections = 1.5\n",
            "faults.toml:6:18: invalid value '1.5' for '--max-injections <N>': invalid digit found in string",
        ),
        // Conflicts, at the key clap names.
        (
            "[[fault]]\nkind = \"net.drop\"\ncgroup = \"/a\"\npid = 1\npercent = 5\n",
            "faults.toml:3:1: the argument '--cgroup <PATH>' cannot be used with '--pid <PID>'",
        ),
        // Missing required arguments and groups, at the header.
        (
            "\n[[fault]]\nkind = \"net.drop\"\npid = 1\n",
            "faults.toml:2:1: missing required key for net.drop: `percent`; add it to this [[fault]] table",
        ),
        (
            "[[fault]]\nkind = \"net.drop\"\npercent = 5\n",
            "faults.toml:1:1: missing required key for net.drop: one of `cgroup` or `pid`; add it to this [[fault]] table",
        ),
        (
            "[[fault]]\nkind = \"sys.fail\"\n",
            "faults.toml:1:1: missing required keys for sys.fail: `syscall`, `errno`, one of `cgroup` or `pid`; add them to this [[fault]] table",
        ),
        // The second table is checked too.
        (
            "[[fault]]\nkind = \"sys.fail\"\npid = 1\nsyscall = \"read\"\nerrno = \"EIO\"\n\n  [[fault]]\nkind = \"sys.fail\"\npid = 1\nerrno = \"EIO\"\n",
            "faults.toml:7:3: missing required key for sys.fail: `syscall`; add it to this [[fault]] table",
        ),
        // Quoted keys may hold anything; the message stays on one line.
        (
            "[[fault]]\nkind = \"net.drop\"\n\"per\\ncent\" = 5\n",
            "faults.toml:3:1: unknown key `per\\ncent` for net.drop (did you mean `percent`?); valid keys: cgroup, pid, percent, proto, port, for, max-injections, netns, force",
        ),
    ];

    #[test]
    fn errors_name_the_place_and_the_fix() {
        for (text, expected) in ERRORS {
            assert_eq!(err(text), *expected, "for {text:?}");
        }
    }

    #[test]
    fn garbage_gives_errors_not_panics() {
        let garbage = [
            "[[fault]]\nkind = 3",
            "fault = 1",
            "[[fault]]\n[fault.x]",
            "[[fault]]\nkind = \"net.drop\"\n[fault.x]",
            "[[fault]]\n[[fault.x]]",
            "fault = [[]]",
            "fault = [{}]",
            "fault = \"\"",
            "fault.kind = \"net.drop\"",
            "[[fault]]\nkind = \"\"",
            "[[fault]]\nkind = [\"net.drop\"]",
            "[[fault]]\nkind = {}",
            "\u{feff}",
            "\0",
            "[[",
            "]]",
            "=",
            "\"\" = 1",
            "[[fault]]\nkind = \"net.drop\"\n\"\" = 1",
            "[[fault]]\nkind = \"net.drop\"\n\"--pid\" = 1",
            "[[fault]]\nkind = \"net.drop\"\npid = \"1\\n\"\npercent = 5",
            "[[fault]]\nkind = \"net.drop\"\npid = 99999999999999999999999999\npercent = 5",
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = nan",
            "[[fault]]\nkind = \"net.drop\"\npid = 1\npercent = -inf",
        ];
        for text in garbage {
            let e = run(text).expect_err(text).0;
            assert!(
                e.starts_with("faults.toml:") && !e.contains('\n') && !e.contains('\x1b'),
                "{e:?}"
            );
        }
        // Every prefix of a valid file parses or fails cleanly.
        for (end, _) in VALID.char_indices() {
            if let Err(e) = run(&VALID[..end]) {
                assert!(!e.0.contains('\n') && !e.0.contains('\x1b'), "{:?}", e.0);
            }
        }
    }

    #[test]
    fn edit_distance_counts_chars() {
        assert_eq!(edit_distance("percent", "precent"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
        assert_eq!(
            closest("prot", ["proto", "port"].into_iter()),
            Some("proto")
        );
        assert_eq!(closest("zzzz", ["proto"].into_iter()), None);
    }
}
