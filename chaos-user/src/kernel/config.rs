//! The running kernel's build configuration, to explain a refusal by the option behind it.
//! Never the basis of a "works" verdict: that comes from loading a program for real.

use std::{collections::BTreeMap, io::Read};

/// Options and their values ("y", "m", a string), or `None` when no config can be read.
pub fn read() -> Option<BTreeMap<String, String>> {
    let text = read_proc_config().or_else(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
    })?;
    Some(parse(&text))
}

fn read_proc_config() -> Option<String> {
    let gz = std::fs::File::open("/proc/config.gz").ok()?;
    let mut s = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut s).ok()?;
    Some(s)
}

pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("CONFIG_")?.split_once('='))
        .map(|(k, v)| (format!("CONFIG_{k}"), v.trim_matches('"').to_string()))
        .collect()
}

/// Of `options`, those the config shows unset ("CONFIG_X is not set"); empty if unknown.
pub fn unset<'a>(cfg: Option<&BTreeMap<String, String>>, options: &[&'a str]) -> Vec<&'a str> {
    let Some(cfg) = cfg else { return Vec::new() };
    options.iter().copied().filter(|o| !cfg.get(*o).is_some_and(|v| v == "y" || v == "m")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_reports_unset_options() {
        let cfg = parse("CONFIG_BPF=y\n# CONFIG_KPROBES is not set\nCONFIG_NET_SCH_FQ=m\nCONFIG_LSM=\"lockdown,bpf\"\n");
        assert_eq!(cfg.get("CONFIG_LSM").map(String::as_str), Some("lockdown,bpf"));
        assert_eq!(unset(Some(&cfg), &["CONFIG_BPF", "CONFIG_KPROBES", "CONFIG_NET_SCH_FQ"]), vec!["CONFIG_KPROBES"]);
        assert!(unset(None, &["CONFIG_KPROBES"]).is_empty());
    }
}
