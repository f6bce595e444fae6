//! A corpus of malformed command lines and files, each with the exact line chaos must answer it
//! with and its exit code (tests/corpus/). A changed message fails here until the corpus is
//! regenerated on purpose: `CHAOS_CORPUS_BLESS=1 cargo test --release -p chaos-tests --test
//! corpus`, after which every changed line is read in the diff.

use std::path::{Path, PathBuf};

use chaos_tests::*;
use chaos_user::sandbox::TempCgroup;

/// Where the corpus lives in the source tree (for blessing, and to check the list below).
fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The corpus is built in, so the tests run where the source tree is not (a guest).
const COMMAND_LINES: &str = include_str!("../corpus/command-lines.txt");
const FILES_EXPECTED: &str = include_str!("../corpus/files.txt");
const FILES: &[(&str, &str)] = &[
    ("bad-threshold.experiment.toml", include_str!("../corpus/files/bad-threshold.experiment.toml")),
    ("duplicate-key.toml", include_str!("../corpus/files/duplicate-key.toml")),
    ("duplicate-names.experiment.toml", include_str!("../corpus/files/duplicate-names.experiment.toml")),
    ("empty.toml", include_str!("../corpus/files/empty.toml")),
    ("flag-of-another-kind.toml", include_str!("../corpus/files/flag-of-another-kind.toml")),
    ("long-interval.experiment.toml", include_str!("../corpus/files/long-interval.experiment.toml")),
    ("misspelt-key.toml", include_str!("../corpus/files/misspelt-key.toml")),
    ("no-errno.toml", include_str!("../corpus/files/no-errno.toml")),
    ("no-experiment.experiment.toml", include_str!("../corpus/files/no-experiment.experiment.toml")),
    ("no-fault.toml", include_str!("../corpus/files/no-fault.toml")),
    ("no-kind.toml", include_str!("../corpus/files/no-kind.toml")),
    ("out-of-range.toml", include_str!("../corpus/files/out-of-range.toml")),
    ("probe-without-target.experiment.toml", include_str!("../corpus/files/probe-without-target.experiment.toml")),
    ("second-table-bad.toml", include_str!("../corpus/files/second-table-bad.toml")),
    ("unclosed-string.toml", include_str!("../corpus/files/unclosed-string.toml")),
    ("unknown-kind.toml", include_str!("../corpus/files/unknown-kind.toml")),
    ("unknown-metric.experiment.toml", include_str!("../corpus/files/unknown-metric.experiment.toml")),
    ("unknown-service.experiment.toml", include_str!("../corpus/files/unknown-service.experiment.toml")),
    ("wrong-type.toml", include_str!("../corpus/files/wrong-type.toml")),
];

/// One entry: what is run, the exact stderr line, the exit code.
struct Entry {
    input: String,
    line: String,
    code: i32,
}

fn read_entries(path: &Path, text: &str) -> (String, Vec<Entry>) {
    let header: String = text.lines().take_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    let mut lines = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let mut entries = Vec::new();
    while let Some(input) = lines.next() {
        let input = input.strip_prefix("$ ").unwrap_or_else(|| panic!("{}: an entry starts with '$ ': {input:?}", path.display()));
        let line = lines.next().unwrap_or_else(|| panic!("{}: no expected line for {input:?}", path.display()));
        let code = lines.next().and_then(|l| l.strip_prefix("exit ")).and_then(|c| c.parse().ok());
        let code = code.unwrap_or_else(|| panic!("{}: no 'exit N' for {input:?}", path.display()));
        entries.push(Entry { input: input.to_string(), line: line.to_string(), code });
    }
    (header, entries)
}

/// Runs each entry through `run` (which gives exit code and stderr lines) and compares, or with
/// CHAOS_CORPUS_BLESS set, writes what it got back into the corpus file.
fn check(path: &Path, text: &str, run: impl Fn(&str) -> (i32, Vec<String>)) {
    let (header, entries) = read_entries(path, text);
    assert!(!entries.is_empty(), "{}: no entries", path.display());
    let bless = std::env::var_os("CHAOS_CORPUS_BLESS").is_some();
    let mut out = header + "\n";
    let mut wrong = Vec::new();
    for e in &entries {
        let (code, err) = run(&e.input);
        let got = err.join(" | ");
        assert_eq!(err.len(), 1, "{}: `{}` must give one line, gave {err:?}", path.display(), e.input);
        assert!(!got.contains("panicked") && !got.contains("RUST_BACKTRACE"), "{got}");
        if got != e.line || code != e.code {
            wrong.push(format!("`{}`\n  want: {} (exit {})\n  got:  {got} (exit {code})", e.input, e.line, e.code));
        }
        out += &format!("$ {}\n{got}\nexit {code}\n\n", e.input);
    }
    if bless {
        std::fs::write(path, out.trim_end().to_string() + "\n").expect("writing the corpus");
        return;
    }
    assert!(wrong.is_empty(), "{}: {} of {} entries differ:\n{}", path.display(), wrong.len(), entries.len(), wrong.join("\n"));
    eprintln!("{}: {} entries, each exactly as expected", path.display(), entries.len());
}

fn test_cgroup() -> TempCgroup {
    TempCgroup::new(&format!("chaos-test-{}", unique("corpus"))).expect("a test cgroup")
}

#[test]
fn malformed_command_lines_get_their_exact_line() {
    let cg = test_cgroup();
    let cgs = cg.path.display().to_string();
    check(&corpus_dir().join("command-lines.txt"), COMMAND_LINES, |input| {
        let args: Vec<String> = input.split(' ').map(|a| a.replace("{cg}", &cgs)).collect();
        let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (code, err.iter().map(|l| l.replace(&cgs, "{cg}")).collect())
    });
}

#[test]
fn malformed_files_get_their_exact_line() {
    let cg = test_cgroup();
    let cgs = cg.path.display().to_string();
    if let Ok(listing) = std::fs::read_dir(corpus_dir().join("files")) {
        let mut on_disk: Vec<String> = listing.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        let built_in: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, built_in, "tests/corpus/files/ and FILES in corpus.rs must list the same files");
    }
    check(&corpus_dir().join("files.txt"), FILES_EXPECTED, |name| {
        let text = FILES.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name} is not in FILES")).1;
        let file = TempFile::new("chaos-corpus-", &text.replace("{cg}", &cgs));
        let args: Vec<&str> = if name.ends_with(".experiment.toml") { vec!["run", "--check", file.path()] } else { vec!["apply", file.path(), "--dry-run"] };
        let (code, _, err) = run_chaos(&args);
        (code, err.iter().map(|l| l.replace(file.path(), "{file}").replace(&cgs, "{cg}")).collect())
    });
}
