//! netem's delay distributions (`tc ... netem delay D J distribution normal`): the tables are
//! iproute2's own files (`normal.dist`, `pareto.dist`, `paretonormal.dist`, or one made with its
//! `maketable`), read here, never typed in. Each is a list of values of a distribution with mean 0
//! and standard deviation `DIST_SCALE`; the kernel program draws one uniformly per packet and
//! scales it by the jitter as netem's `tabledist` does (`chaos_common::net::table_delay`).

use std::path::PathBuf;

use chaos_common::net::{DIST_MAX, DelayTable};

use crate::{error::Result, usage};

/// Where iproute2 installs its tables: `TC_LIB_DIR` as tc honours it, Debian's multiarch folder,
/// then the usual others.
fn folders() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("TC_LIB_DIR").map(PathBuf::from).into_iter().collect();
    dirs.push(format!("/usr/lib/{}-linux-gnu/tc", std::env::consts::ARCH).into());
    dirs.extend(["/usr/lib64/tc", "/usr/lib/tc", "/usr/local/lib/tc"].map(PathBuf::from));
    dirs
}

/// The table called `name` (`normal`, `pareto`, ...: a file NAME.dist where tc keeps them), or the
/// file at `name` when it is a path.
pub fn load(name: &str) -> Result<DelayTable> {
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        let file = format!("{name}.dist");
        let dirs = folders();
        dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()).ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            usage!(
                "--distribution {name}: no {file} in {} (iproute2 installs netem's tables there): install iproute2, or give the path of a .dist file",
                looked.join(", ")
            )
        })?
    };
    let text = std::fs::read_to_string(&path).map_err(|e| usage!("--distribution: cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| usage!("--distribution: {}: {e}", path.display()))
}

/// A table from the text of a `.dist` file: `#` comment lines, then whitespace-separated values.
pub fn parse(text: &str) -> std::result::Result<DelayTable, String> {
    let mut t = DelayTable { size: 0, _pad: 0, values: [0; DIST_MAX] };
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for word in line.split_whitespace() {
            let v: i16 = word.parse().map_err(|_| format!("'{word}' is not a table value (a whole number from -32768 to 32767)"))?;
            if t.size as usize == DIST_MAX {
                return Err(format!("more than {DIST_MAX} values (netem's tables have {DIST_MAX})"));
            }
            t.values[t.size as usize] = v;
            t.size += 1;
        }
    }
    if t.size == 0 {
        return Err("no values".into());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use chaos_common::net::DIST_SCALE;

    use super::*;

    #[test]
    fn a_dist_file_is_comments_then_values() {
        let t = parse("# a table\n -3 0 2\n7\n# trailing comment\n").unwrap();
        assert_eq!((t.size, &t.values[..4]), (4, &[-3, 0, 2, 7][..]));
        assert!(parse("# nothing\n").unwrap_err().contains("no values"));
        assert!(parse("1 2 40000").unwrap_err().contains("'40000'"));
        assert!(parse(&"1 ".repeat(DIST_MAX + 1)).unwrap_err().contains("more than"));
    }

    #[test]
    fn iproute2s_normal_table_has_mean_0_and_one_scale_of_deviation() {
        // The host lane installs iproute2 (cargo xtask setup), and with it the tables.
        let t = load("normal").expect("iproute2's normal.dist");
        let n = t.size as usize;
        assert_eq!(n, DIST_MAX);
        let values = &t.values[..n];
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let sd = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 0.01 * DIST_SCALE as f64, "mean {mean}");
        assert!((sd / DIST_SCALE as f64 - 1.0).abs() < 0.05, "standard deviation {sd} against {DIST_SCALE}");
        let missing = load("no-such-distribution").unwrap_err().to_string();
        assert!(missing.contains("no-such-distribution.dist") && missing.contains("iproute2"), "{missing}");
    }
}
