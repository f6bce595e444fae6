//! A corpus of malformed command lines and files, each with the exact line chaos must answer it
//! with and its exit code (tests/corpus/). A changed message fails here until the corpus is
//! regenerated on purpose: `CHAOS_CORPUS_BLESS=1 cargo test --release -p chaos-tests --test
//! corpus`, after which every changed line is read in the diff.

use std::path::{Path, PathBuf};

use chaos_tests::*;
use chaos_user::sandbox::TempCgroup;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// One entry: what is run, the exact stderr line, the exit code.
struct Entry {
    input: String,
    line: String,
    code: i32,
}

fn read_entries(path: &Path) -> (String, Vec<Entry>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
fn check(path: &Path, run: impl Fn(&str) -> (i32, Vec<String>)) {
    let (header, entries) = read_entries(path);
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
    check(&corpus_dir().join("command-lines.txt"), |input| {
        let args: Vec<String> = input.split(' ').map(|a| a.replace("{cg}", &cgs)).collect();
        let (code, _, err) = run_chaos(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (code, err.iter().map(|l| l.replace(&cgs, "{cg}")).collect())
    });
}

#[test]
fn malformed_files_get_their_exact_line() {
    let cg = test_cgroup();
    let cgs = cg.path.display().to_string();
    let dir = corpus_dir().join("files");
    check(&corpus_dir().join("files.txt"), |name| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let file = TempFile::new("chaos-corpus-", &text.replace("{cg}", &cgs));
        let args: Vec<&str> = if name.ends_with(".experiment.toml") { vec!["run", "--check", file.path()] } else { vec!["apply", file.path(), "--dry-run"] };
        let (code, _, err) = run_chaos(&args);
        (code, err.iter().map(|l| l.replace(file.path(), "{file}").replace(&cgs, "{cg}")).collect())
    });
}
