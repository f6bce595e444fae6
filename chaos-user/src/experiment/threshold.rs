//! Thresholds of an experiment ("error-rate < 1%", "p99 < 200ms", "rate > 50") and the numbers
//! they are checked against: one [`Sample`] per source (probe or observed cgroup) per interval or
//! per phase.

use std::fmt;

use serde::Serialize;

/// What one source did over a span of time.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Probe attempts, or observed syscalls.
    pub count: u64,
    /// Failed attempts, or calls that returned an error.
    pub errors: u64,
    /// Successful attempts per second (probes), calls per second (syscalls).
    pub rate: f64,
    /// Per cent of `count` that failed.
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

impl Sample {
    pub fn value(&self, m: Metric) -> f64 {
        match m {
            Metric::ErrorRate => self.error_rate,
            Metric::Rate => self.rate,
            Metric::P50 => self.p50_ms,
            Metric::P90 => self.p90_ms,
            Metric::P99 => self.p99_ms,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    ErrorRate,
    Rate,
    P50,
    P90,
    P99,
}

impl Metric {
    const ALL: [(&'static str, Metric); 5] =
        [("error-rate", Metric::ErrorRate), ("rate", Metric::Rate), ("p50", Metric::P50), ("p90", Metric::P90), ("p99", Metric::P99)];

    fn name(self) -> &'static str {
        Metric::ALL.iter().find(|(_, m)| *m == self).map_or("?", |(n, _)| n)
    }

    /// The value as a person writes it: "1.5%", "200ms", "50/s".
    pub fn show(self, v: f64) -> String {
        match self {
            Metric::ErrorRate => format!("{}%", round(v)),
            Metric::Rate => format!("{}/s", round(v)),
            _ => format!("{}ms", round(v)),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

/// `METRIC OP VALUE`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Threshold {
    pub metric: Metric,
    pub op: Op,
    /// In the metric's unit: per cent, per second, milliseconds.
    pub value: f64,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        };
        write!(f, "{} {op} {}", self.metric.name(), self.metric.show(self.value))
    }
}

impl Threshold {
    /// "error-rate < 1%", "p99 <= 250ms", "rate > 100" (or "100/s").
    pub fn parse(s: &str) -> Result<Threshold, String> {
        let expected = "give METRIC OP VALUE, such as \"error-rate < 1%\", \"p99 < 200ms\" or \"rate > 50\" (metrics: error-rate, rate, p50, p90, p99)";
        let t = s.trim();
        let at = t.find(['<', '>']).ok_or_else(|| format!("'{s}' has no < or >; {expected}"))?;
        let (name, rest) = (t[..at].trim(), &t[at..]);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else {
            (Op::Gt, &rest[1..])
        };
        let metric = Metric::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("unknown metric '{name}' in '{s}'; {expected}"))?;
        let value = value.trim();
        let number = |v: &str| v.trim().parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0);
        let value = match metric {
            Metric::ErrorRate => {
                let n = number(value.trim_end_matches('%')).ok_or_else(|| format!("'{value}' in '{s}' is not a percentage such as 1% or 0.5%"))?;
                if n > 100.0 {
                    return Err(format!("'{value}' in '{s}' is over 100%"));
                }
                n
            }
            Metric::Rate => number(value.trim_end_matches("/s")).ok_or_else(|| format!("'{value}' in '{s}' is not a rate such as 50 or 50/s"))?,
            _ => humantime::parse_duration(value)
                .map(|d| d.as_secs_f64() * 1e3)
                .map_err(|_| format!("'{value}' in '{s}' is not a duration such as 200ms or 1.5s"))?,
        };
        Ok(Threshold { metric, op, value })
    }

    /// Whether `sample` crossed an abort threshold: the condition is true of it, and it has
    /// something in it (an empty interval aborts nothing, but on a rate).
    pub fn crossed(&self, sample: &Sample) -> bool {
        (sample.count > 0 || self.metric == Metric::Rate) && self.test(sample.value(self.metric))
    }

    fn test(&self, v: f64) -> bool {
        match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
        }
    }

    /// Whether `sample` is within the threshold. A sample with nothing in it says nothing about
    /// latencies or errors (a probe slower than the interval, a cgroup that made no call then),
    /// so only a rate is held against it.
    pub fn holds(&self, sample: &Sample) -> bool {
        if sample.count == 0 && self.metric != Metric::Rate {
            return true;
        }
        self.test(sample.value(self.metric))
    }
}

/// The p-quantile (0..1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_in_their_units() {
        let t = Threshold::parse("error-rate < 1%").unwrap();
        assert_eq!((t.metric, t.op, t.value), (Metric::ErrorRate, Op::Lt, 1.0));
        let t = Threshold::parse(" p99<=1.5s ").unwrap();
        assert_eq!((t.metric, t.op, t.value), (Metric::P99, Op::Le, 1500.0));
        let t = Threshold::parse("rate >= 50/s").unwrap();
        assert_eq!((t.metric, t.op, t.value), (Metric::Rate, Op::Ge, 50.0));
        assert_eq!(Threshold::parse("p50 > 200ms").unwrap().to_string(), "p50 > 200ms");
        for bad in ["error-rate 1%", "latency < 1s", "error-rate < 150%", "p99 < fast", "rate > -1", "p99 <"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_threshold_holds_or_not_and_an_empty_sample_only_fails_rates() {
        let s = Sample { count: 10, errors: 1, rate: 9.0, error_rate: 10.0, p50_ms: 5.0, p90_ms: 8.0, p99_ms: 20.0 };
        assert!(Threshold::parse("error-rate < 11%").unwrap().holds(&s));
        assert!(!Threshold::parse("error-rate < 10%").unwrap().holds(&s));
        assert!(Threshold::parse("error-rate <= 10%").unwrap().holds(&s));
        assert!(!Threshold::parse("p99 < 20ms").unwrap().holds(&s));
        assert!(Threshold::parse("rate > 8").unwrap().holds(&s));
        let empty = Sample::default();
        assert!(Threshold::parse("p99 < 1ms").unwrap().holds(&empty));
        assert!(!Threshold::parse("rate > 1").unwrap().holds(&empty));
        let abort = Threshold::parse("error-rate > 5%").unwrap();
        assert!(abort.crossed(&s) && !abort.crossed(&empty), "an abort needs data");
        assert!(!Threshold::parse("error-rate > 50%").unwrap().crossed(&s));
        assert!(Threshold::parse("rate < 1").unwrap().crossed(&empty), "a rate fallen to nothing crosses");
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
