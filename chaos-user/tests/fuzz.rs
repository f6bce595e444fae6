//! Hostile input: every parser a user or a file reaches, and the packet parser's pure logic in
//! chaos-common, fed generated input (proptest). Each target asserts what must hold for any input
//! (no panic; an error is one line; arithmetic results inside the bounds wide arithmetic gives, so
//! a wrap shows even in a release build), and where there is one, agreement with a plain
//! reference written here.
//!
//! `cargo test -p chaos-user --test fuzz` runs a bounded number of cases per target (CI);
//! `cargo xtask fuzz` runs many more (`CHAOS_FUZZ_CASES`). Each target prints its case count.

use std::path::Path;

use chaos_common::{
    dns::{self, DnsMatch, NAME_MAX},
    loss::Prng,
    net::{self, Fragment},
};
use chaos_user::{
    cli,
    experiment::{EXAMPLES, Experiment, threshold::Threshold},
    faults::{self, loss_model, net_rate, sys},
};
use clap::Parser;
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};

/// What a property says of an input it accepts: whether the parser refused it (with one line).
type Verdict = Result<Refused, TestCaseError>;

#[derive(PartialEq)]
enum Refused {
    No,
    Yes,
}

/// Runs `property` on `cases(default)` inputs from `strategy`; panics with the smallest failing
/// input proptest finds. Prints the count and how many were refused (so a run shows it reached
/// the error paths), for the record of a long run.
fn fuzz<S: Strategy>(name: &str, default: u32, strategy: S, property: impl Fn(S::Value) -> Verdict) {
    let cases = std::env::var("CHAOS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let refused = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |input| {
        let verdict = property(input)?;
        refused.fetch_add(u32::from(verdict == Refused::Yes), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    let refused = refused.into_inner();
    println!("fuzz {name}: {cases} cases ({refused} refused), 0 failures");
    // The row of `cargo xtask fuzz`'s table in BENCHMARKS.md.
    println!("LONG| | {name} | {cases} | {refused} | 0 |");
}

/// A pass of a property with no refusal to count.
const HOLDS: Verdict = Ok(Refused::No);

/// Any text, weighted towards what parsers split on.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-zA-Z%./:+,=<>\\-_ \\[\\]\"#]{0,40}",
        "[0-9]{1,30}(\\.[0-9]{0,20})?(ns|us|ms|s|m|h|d|%|b|kb|mb|gb|kbit|mbit|gbit)?",
    ]
}

fn one_line(e: &str) -> Verdict {
    prop_assert!(!e.is_empty() && !e.contains('\n'), "not one line: {e:?}");
    Ok(Refused::Yes)
}

/// Every value parser: any input gives a value or one line, never a panic.
#[test]
fn value_parsers_take_any_text() {
    type Parser = fn(&str) -> Result<(), String>;
    let parsers: &[(&str, Parser)] = &[
        ("percent", |s| cli::parse_percent(s).map(drop)),
        ("port range", |s| cli::parse_port_range(s).map(drop)),
        ("cidr", |s| cli::parse_cidr(s).map(drop)),
        ("duration", |s| cli::parse_duration(s).map(drop)),
        ("offset", |s| cli::parse_offset(s).map(drop)),
        ("rate", |s| net_rate::parse_rate(s).map(drop)),
        ("size", |s| net_rate::parse_size(s).map(drop)),
        ("loss model", |s| loss_model::parse_model(s).map(drop)),
        ("syscall", |s| sys::parse_syscall(s).map(drop)),
        ("when", |s| sys::parse_when(s).map(drop)),
        ("errno", |s| sys::parse_errno(s).map(drop)),
        ("signal", |s| sys::parse_signal(s).map(drop)),
        ("threshold", |s| Threshold::parse(s).map(drop)),
        ("otlp url", |s| chaos_user::otlp::parse_url(s).map(drop)),
    ];
    for (name, parse) in parsers {
        fuzz(&format!("value parser {name}"), 2000, text(), |s| match parse(&s) {
            Ok(()) => HOLDS,
            Err(e) => one_line(&e),
        });
    }
}

/// strace's `when=` spec: what parses, printed back, parses to the same.
#[test]
fn when_specs_round_trip() {
    let spec = (1u32..=65535, proptest::option::of(1u32..=65534), proptest::option::of(proptest::option::of(1u32..=65535)));
    fuzz("when round trip", 2000, spec, |(first, last, step)| {
        let mut s = first.to_string();
        if let Some(l) = last {
            s += &format!("..{l}");
        }
        match step {
            Some(None) => s += "+",
            Some(Some(st)) => s += &format!("+{st}"),
            None => {}
        }
        match sys::parse_when(&s) {
            Ok(w) => {
                let again = sys::parse_when(&sys::format_when(&w)).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
                prop_assert_eq!(w, again, "{}", s);
                prop_assert_eq!(w.first, first);
                HOLDS
            }
            Err(e) => {
                prop_assert!(last.is_some_and(|l| l < first), "{s} refused: {e}");
                one_line(&e)
            }
        }
    });
}

/// Whole command lines of real subcommands and flags with generated values: clap's answer or
/// one line (what `chaos` prints), never a panic.
#[test]
fn command_lines_parse_or_give_one_line() {
    let words = prop_oneof![
        Just("net".to_string()),
        Just("sys".to_string()),
        Just("drop".to_string()),
        Just("delay".to_string()),
        Just("fail".to_string()),
        Just("rate".to_string()),
        Just("apply".to_string()),
        Just("run".to_string()),
        Just("observe".to_string()),
        Just("--percent".to_string()),
        Just("--cgroup".to_string()),
        Just("--for".to_string()),
        Just("--after".to_string()),
        Just("--syscall".to_string()),
        Just("--errno".to_string()),
        Just("--when".to_string()),
        Just("--delay".to_string()),
        Just("--jitter".to_string()),
        Just("--rate".to_string()),
        Just("--port".to_string()),
        Just("--peer".to_string()),
        Just("--model".to_string()),
        Just("--json".to_string()),
        Just("--".to_string()),
        text(),
    ];
    fuzz("command lines", 3000, proptest::collection::vec(words, 0..10), |args| {
        let argv = std::iter::once("chaos".to_string()).chain(args);
        if let Err(e) = cli::Cli::try_parse_from(argv) {
            use clap::error::ErrorKind::*;
            if !matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
                return one_line(&cli::one_line(&e));
            }
        }
        HOLDS
    });
}

/// Edits of a valid file: one of a few tokens, or any text, put in or over a random place.
fn edited(valid: &'static str) -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_string()),
        Just("[[fault]]\n".to_string()),
        Just("[experiment]\n".to_string()),
        Just("=".to_string()),
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("#".to_string()),
        Just("kind = \"net.drop\"\n".to_string()),
        Just("for = \"0s\"\n".to_string()),
        text(),
    ];
    let edit = (any::<prop::sample::Index>(), 0usize..20, token);
    proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut s = valid.to_string();
        for (at, cut, token) in edits {
            let mut i = at.index(s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + cut).min(s.len());
            while !s.is_char_boundary(j) {
                j -= 1;
            }
            s.replace_range(i..j, &token);
        }
        s
    })
}

const FAULT_FILE: &str = r#"# two faults
[[fault]]
kind = "net.drop"
cgroup = "/"
percent = 5
proto = "udp"
for = "30s"

[[fault]]
kind = "sys.fail"
cgroup = "/"
syscall = "fsync"
errno = "EIO"
after = "10s"
max-injections = 100
when = "2..5+1"
"#;

/// A file's error names the file, in one line.
fn file_error(path: &Path, e: &str) -> Verdict {
    one_line(e)?;
    prop_assert!(e.contains(&path.display().to_string()), "the error does not name the file: {e:?}");
    Ok(Refused::Yes)
}

#[test]
fn fault_files_parse_or_give_one_line_naming_the_place() {
    let path = Path::new("/fuzz/faults.toml");
    faults::file_specs(path, FAULT_FILE).expect("the valid file parses");
    fuzz("fault files", 1500, edited(FAULT_FILE), |text| match faults::file_specs(path, &text) {
        Ok(_) => HOLDS,
        Err(e) => file_error(path, &e.to_string()),
    });
}

#[test]
fn experiment_files_parse_or_give_one_line_naming_the_place() {
    for (name, valid) in EXAMPLES {
        let path = Path::new("/fuzz").join(name);
        Experiment::parse(&path, valid).unwrap_or_else(|e| panic!("{name} parses: {e}"));
        fuzz(&format!("experiment {name}"), 400, edited(valid), |text| match Experiment::parse(&path, &text) {
            Ok(_) => HOLDS,
            Err(e) => file_error(&path, &e.to_string()),
        });
    }
}

// ---- chaos-common: the kernel programs' pure logic ----

/// A query name's labels as plain code reads them: `(starts, length with the root byte)`.
fn labels_reference(buf: &[u8; NAME_MAX], avail: u32) -> Option<(Vec<u32>, u32)> {
    let mut starts = Vec::new();
    let mut pos = 0u32;
    loop {
        if pos >= avail || pos >= 255 {
            return None;
        }
        let len = buf[pos as usize] as u32;
        if len == 0 {
            return Some((starts, pos + 1));
        }
        if len > 63 {
            return None;
        }
        starts.push(pos);
        pos += len + 1;
    }
}

/// A buffer holding a name in wire form (labels of random bytes) then garbage, or only garbage.
fn name_buffer() -> impl Strategy<Value = ([u8; NAME_MAX], u32)> {
    let labels = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..70), 0..40);
    (labels, proptest::collection::vec(any::<u8>(), NAME_MAX), 0u32..300, any::<bool>()).prop_map(|(labels, garbage, avail, named)| {
        let mut buf = [0u8; NAME_MAX];
        buf.copy_from_slice(&garbage);
        if named {
            let mut p = 0usize;
            for l in labels {
                if p + 1 + l.len() >= NAME_MAX {
                    break;
                }
                buf[p] = l.len() as u8;
                buf[p + 1..p + 1 + l.len()].copy_from_slice(&l);
                p += 1 + l.len();
            }
            buf[p] = 0;
        }
        (buf, avail)
    })
}

#[test]
fn dns_label_walk_agrees_with_a_plain_reading() {
    fuzz("dns label walk", 5000, name_buffer(), |(buf, avail)| {
        let walked = dns::walk_labels(&buf, avail);
        let want = labels_reference(&buf, avail);
        match (walked, want) {
            (None, None) => {}
            (Some(w), Some((starts, len))) => {
                prop_assert_eq!(w.len, len);
                let got: Vec<u32> = (0..256u32).filter(|p| (w.starts[(p >> 6) as usize] >> (p & 63)) & 1 != 0).collect();
                prop_assert_eq!(got, starts);
            }
            (w, r) => prop_assert!(false, "walk {w:?}, reference {r:?}"),
        }
        HOLDS
    });
}

/// A DNS name of a few labels from a small alphabet (so suffixes are shared often).
fn dns_name() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-cA-C0-9-]{1,4}", 0..5)
}

#[test]
fn dns_rules_match_as_names_compare() {
    // A rule names at least one label: `--name '*'` and `'*.'` are DnsMatch::any (net_dns.rs).
    let rule = dns_name().prop_filter("a named rule", |r| !r.is_empty());
    fuzz("dns name match", 5000, (dns_name(), rule, any::<bool>()), |(query, rule, below)| {
        let (mut q, mut r) = ([0u8; NAME_MAX], [0u8; NAME_MAX]);
        let qlen = dns::wire_name(&query.join("."), &mut q).expect("a valid name");
        let rlen = dns::wire_name(&rule.join("."), &mut r).expect("a valid name");
        let w = dns::walk_labels(&q, qlen as u32).expect("a wire name walks");
        let m = DnsMatch::for_name(&r[..rlen as usize], below, dns::RCODE_SERVFAIL);
        let lower = |v: &[String]| v.iter().map(|l| l.to_ascii_lowercase()).collect::<Vec<_>>();
        let (ql, rl) = (lower(&query), lower(&rule));
        let want = if below { ql.len() > rl.len() && ql.ends_with(&rl) } else { ql == rl };
        prop_assert_eq!(dns::name_matches(&q, &w, &m), want, "{:?} vs {:?} below {}", query, rule, below);
        HOLDS
    });
}

#[test]
fn header_parsing_is_total_and_consistent() {
    fuzz("ipv6 extension headers", 5000, (any::<u8>(), any::<[u8; 8]>()), |(kind, h)| {
        match net::ipv6_ext(kind, h) {
            Some(e) => {
                prop_assert!(net::is_ipv6_ext(kind));
                prop_assert_eq!(e.next, h[0]);
                prop_assert!(e.len >= 8 && e.len % 4 == 0, "length {}", e.len);
            }
            None => prop_assert!(!net::is_ipv6_ext(kind)),
        }
        HOLDS
    });
    fuzz("ipv4 fragments", 5000, any::<u16>(), |f| {
        let want = match (f & 0x1fff, f & 0x2000 != 0) {
            (0, false) => Fragment::No,
            (0, true) => Fragment::First,
            _ => Fragment::Later,
        };
        prop_assert_eq!(net::ipv4_fragment(f), want);
        HOLDS
    });
}

#[test]
fn packet_arithmetic_stays_in_range() {
    const HOURS: u64 = 10 * 3600 * 1_000_000_000;
    fuzz("corrupt bit", 5000, (any::<u32>(), any::<u32>(), any::<u32>()), |(payload, len, random)| {
        match net::corrupt_bit(payload, len, random) {
            Some((byte, mask)) => {
                prop_assert!(payload < len && (payload..len).contains(&byte), "byte {byte} of {payload}..{len}");
                prop_assert_eq!(mask.count_ones(), 1);
            }
            None => prop_assert!(payload >= len),
        }
        HOLDS
    });
    fuzz("jittered delay", 5000, (0..HOURS, 0..HOURS, any::<u32>()), |(delay, jitter, random)| {
        let d = net::jittered_delay(delay, jitter, random);
        prop_assert!(d >= delay.saturating_sub(jitter) && d <= delay + jitter, "{d} for {delay}±{jitter}");
        // The draw exactly, in 128 bits: uniform over the span.
        let span_us = 2 * (jitter as u128 / 1000) + 1;
        let want = (delay as u128 + ((random as u128 * span_us) >> 32) * 1000).saturating_sub(jitter as u128 / 1000 * 1000);
        prop_assert_eq!(d as u128, want, "{}±{} drawing {}", delay, jitter, random);
        HOLDS
    });
    fuzz("table delay", 5000, (0..HOURS, 0..HOURS, any::<i16>()), |(delay, jitter, value)| {
        let d = net::table_delay(delay, jitter, value) as i128;
        let exact = delay as i128 + jitter as i128 * value as i128 / net::DIST_SCALE as i128;
        prop_assert!((d - exact.max(0)).abs() <= 1, "{d} vs {exact}");
        HOLDS
    });
    fuzz("departure", 5000, (0..u64::MAX / 4, 0..u64::MAX / 4, 0..HOURS), |(now, stamped, delay)| {
        let t = net::departure(now, stamped, delay);
        prop_assert!(t >= now + delay && t <= now.max(stamped) + delay);
        HOLDS
    });
    fuzz("pace", 5000, (0..u64::MAX / 4, 0..u64::MAX / 4, 0..HOURS, any::<u64>()), |(next, now, cost, burst)| {
        match net::pace(next, now, cost, burst) {
            Some((dep, after)) => {
                prop_assert!(dep >= now && dep - now <= burst && after == dep + cost);
            }
            None => prop_assert!(next > now && next - now > burst),
        }
        HOLDS
    });
    fuzz("prefix masks", 2000, any::<u8>(), |p| {
        let (hi, lo) = net::prefix_masks(p);
        let ones = hi.count_ones() + lo.count_ones();
        prop_assert_eq!(ones, (p as u32).min(128));
        prop_assert_eq!(hi.leading_ones() + if hi == u64::MAX { lo.leading_ones() } else { 0 }, ones);
        HOLDS
    });
}

#[test]
fn loss_models_take_any_parameters() {
    fuzz("loss models", 2000, ("(gemodel|state):[0-9.,%]{0,20}", any::<u64>()), |(spec, seed)| {
        if let Ok(params) = loss_model::parse_model(&spec) {
            let mut state = chaos_common::loss::LossState::start(seed as u32);
            let mut prng = Prng::seeded(seed);
            for _ in 0..100 {
                chaos_common::loss::lost_seeded(&params, &mut state, &mut prng);
            }
        }
        HOLDS
    });
}
