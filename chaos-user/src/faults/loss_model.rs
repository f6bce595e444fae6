//! `--model`: one of netem's loss models (tc-netem(8) `loss random|gemodel|state`) written as one
//! value, `random:P[,CORR]`, `gemodel:P[,R[,1-H[,1-K]]]` or `state:P13[,P31[,P32[,P23[,P14]]]]`,
//! in percent. The values become [`LossParams`] exactly as iproute2's tc turns its arguments into
//! the netlink message netem reads (tc/q_netem.c): `rint(percent / 100 * UINT32_MAX)`, tc's
//! complement for `1-h`, and tc's defaults for the values left out, so a model here and the same
//! `tc qdisc ... netem loss ...` put the same numbers in front of the same decisions
//! (`chaos_common::loss`).

use chaos_common::loss::{self, LOSS_4STATE, LOSS_GEMODEL, LOSS_RANDOM, LossParams};

/// The accepted forms, for help texts and messages.
pub const FORMS: &str = "gemodel:P[,R[,1-H[,1-K]]], state:P13[,P31[,P32[,P23[,P14]]]] or random:P[,CORR], \
                         in percent (e.g. gemodel:1,10,70,0.1)";

/// A model's name, the names of its values in order, and its form.
struct Model {
    name: &'static str,
    values: &'static [&'static str],
    form: &'static str,
}

const MODELS: [Model; 3] = [
    Model { name: "gemodel", values: &["P", "R", "1-H", "1-K"], form: "gemodel:P[,R[,1-H[,1-K]]] in percent" },
    Model { name: "state", values: &["P13", "P31", "P32", "P23", "P14"], form: "state:P13[,P31[,P32[,P23[,P14]]]] in percent" },
    Model { name: "random", values: &["P", "CORR"], form: "random:P[,CORR] in percent" },
];

/// Parses a `--model` value (a clap `value_parser`): the error is one line naming the problem and
/// the form expected.
pub fn parse_model(s: &str) -> Result<LossParams, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("no loss model given; expected {FORMS}"));
    }
    let (name, rest) = text.split_once(':').unwrap_or((text, ""));
    let name = name.trim();
    let Some(model) = MODELS.iter().find(|m| m.name == name) else {
        return Err(format!("unknown loss model '{name}' in '{s}'; expected {FORMS}"));
    };
    if rest.trim().is_empty() {
        return Err(format!("'{s}' gives no values; expected {} (e.g. {}:1)", model.form, model.name));
    }
    let raw: Vec<&str> = rest.split(',').map(str::trim).collect();
    if raw.len() > model.values.len() {
        return Err(format!(
            "'{s}' has {} values, {} takes at most {}; expected {}",
            raw.len(),
            model.name,
            model.values.len(),
            model.form
        ));
    }
    let mut f = Vec::with_capacity(raw.len());
    for (v, what) in raw.iter().zip(model.values) {
        f.push(fraction(v, what, s, model.form)?);
    }
    let given = |i: usize| f.get(i).copied();
    Ok(match model.name {
        // tc: `loss random PERCENT [CORRELATION]`.
        "random" => LossParams::random(scaled(f[0]), given(1).map_or(0, scaled)),
        // tc: `loss gemodel`: r defaults to 1 - p; h (the kernel's, tc's 1-h complemented)
        // to 0, that is 1-h = 100%; 1-k to 0.
        "gemodel" => LossParams::gemodel(
            scaled(f[0]),
            scaled(given(1).unwrap_or(1.0 - f[0])),
            given(2).map_or(0, |one_minus_h| u32::MAX - scaled(one_minus_h)),
            given(3).map_or(0, scaled),
        ),
        // tc: `loss state`: p31 defaults to 1 - p13, p32 to 0, p23 to 1, p14 to 0.
        _ => LossParams::four_state(
            scaled(f[0]),
            scaled(given(1).unwrap_or(1.0 - f[0])),
            scaled(given(2).unwrap_or(0.0)),
            scaled(given(3).unwrap_or(1.0)),
            scaled(given(4).unwrap_or(0.0)),
        ),
    })
}

/// tc's `parse_percent`: a number of percent, optionally followed by '%', from 0 to 100; as a
/// fraction (the number divided by 100, as tc divides it).
fn fraction(v: &str, what: &str, whole: &str, form: &str) -> Result<f64, String> {
    if v.is_empty() {
        return Err(format!("'{whole}' leaves {what} empty; expected {form}"));
    }
    let number = v.strip_suffix('%').unwrap_or(v).trim();
    let x: f64 = match number.parse() {
        Ok(x) if f64::is_finite(x) => x,
        _ => return Err(format!("{what} '{v}' in '{whole}' is not a number; expected {form}")),
    };
    if !(0.0..=100.0).contains(&x) {
        return Err(format!("{what} {v} in '{whole}' is outside 0-100%; expected {form}"));
    }
    Ok(x / 100.0)
}

/// tc's `set_percent`: `rint(fraction * UINT32_MAX)` (round half to even, as `rint` does in the
/// default rounding mode).
fn scaled(fraction: f64) -> u32 {
    (fraction * u32::MAX as f64).round_ties_even() as u32
}

/// A threshold in percent, as tc prints it (`100 * value / UINT32_MAX`, `%g`).
fn percent(value: u32) -> String {
    g(100.0 * value as f64 / u32::MAX as f64, 6) + "%"
}

/// `%g`-like: `digits` significant digits, no trailing zeros.
fn g(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (digits - 1 - x.abs().log10().floor() as i32).clamp(0, 17) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// One line: the model in tc's words and what it implies in the long run.
pub fn describe(p: &LossParams) -> String {
    let model = match p.model {
        LOSS_RANDOM if p.rho == 0 => format!("loss random {}", percent(p.loss)),
        LOSS_RANDOM => format!("loss random {} correlation {}", percent(p.loss), percent(p.rho)),
        LOSS_GEMODEL => {
            format!("loss gemodel p {} r {} 1-h {} 1-k {}", percent(p.a1), percent(p.a2), percent(u32::MAX - p.a3), percent(p.a4))
        }
        LOSS_4STATE => format!(
            "loss state p13 {} p31 {} p32 {} p23 {} p14 {}",
            percent(p.a1),
            percent(p.a2),
            percent(p.a3),
            percent(p.a5),
            percent(p.a4)
        ),
        other => return format!("unknown loss model {other}: loses nothing"),
    };
    let e = loss::expectation(p);
    let expect = if e.loss == 0.0 {
        "loses nothing".to_string()
    } else if e.loss < 1e-6 {
        "expect almost no packets lost: under 0.0001%".to_string()
    } else if e.mean_burst.is_infinite() {
        format!("expect {}% of packets lost, and once one is lost every later one is", g(100.0 * e.loss, 3))
    } else {
        format!("expect {}% of packets lost, {} in a row on average", g(100.0 * e.loss, 3), g(e.mean_burst, 3))
    };
    format!("{model} ({expect})")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected thresholds: tc's arithmetic, rint(strtod(x) / 100. * UINT32_MAX), computed by a C
    // program built with gcc and glibc (not by this code).
    const P0_1: u32 = 4294967;
    const P1: u32 = 42949673;
    const P2: u32 = 85899346;
    const P3: u32 = 128849019;
    const P10: u32 = 429496730;
    const P12_5: u32 = 536870912;
    const P20: u32 = 858993459;
    const P30: u32 = 1288490188;
    const P40: u32 = 1717986918;
    const P50: u32 = 2147483648;

    #[test]
    fn gemodel_values_are_converted_as_tc_converts_them() {
        // 1-h = 70%: the kernel's h is UINT32_MAX - rint(0.7 * UINT32_MAX) = 1288490189.
        assert_eq!(parse_model("gemodel:1,10,70,0.1"), Ok(LossParams::gemodel(P1, P10, 1288490189, P0_1)));
        assert_eq!(parse_model("gemodel:1%,10%,70%,0.1%"), Ok(LossParams::gemodel(P1, P10, 1288490189, P0_1)));
        assert_eq!(parse_model(" gemodel: 1 , 10 "), Ok(LossParams::gemodel(P1, P10, 0, 0)));
        // 1-h = 100% and 0%: h = 0 and UINT32_MAX.
        assert_eq!(parse_model("gemodel:30,50,100,0"), Ok(LossParams::gemodel(P30, P50, 0, 0)));
        assert_eq!(parse_model("gemodel:30,50,0"), Ok(LossParams::gemodel(P30, P50, u32::MAX, 0)));
    }

    #[test]
    fn gemodel_defaults_are_tcs() {
        // tc: r = rint((1 - p) * UINT32_MAX): for p = 10%, 3865470566, one more than
        // UINT32_MAX - rint(0.1 * UINT32_MAX); h = 0 (1-h = 100%); 1-k = 0.
        assert_eq!(parse_model("gemodel:10"), Ok(LossParams::gemodel(P10, 3865470566, 0, 0)));
        assert_eq!(parse_model("gemodel:1"), Ok(LossParams::gemodel(P1, 4252017622, 0, 0)));
        assert_eq!(parse_model("gemodel:1,10"), Ok(LossParams::gemodel(P1, P10, 0, 0)));
        assert_eq!(parse_model("gemodel:1,10,70"), Ok(LossParams::gemodel(P1, P10, 1288490189, 0)));
    }

    #[test]
    fn state_values_and_defaults_are_tcs() {
        // tc's order: p13 p31 p32 p23 p14.
        assert_eq!(parse_model("state:3,40,10,20,2"), Ok(LossParams::four_state(P3, P40, P10, P20, P2)));
        // p31 = rint((1 - p13) * UINT32_MAX) = 3758096383 for 12.5%; p32 = 0; p23 = 100%; p14 = 0.
        assert_eq!(parse_model("state:12.5"), Ok(LossParams::four_state(P12_5, 3758096383, 0, u32::MAX, 0)));
        assert_eq!(parse_model("state:1,2"), Ok(LossParams::four_state(P1, P2, 0, u32::MAX, 0)));
        assert_eq!(parse_model("state:1,2,3"), Ok(LossParams::four_state(P1, P2, P3, u32::MAX, 0)));
        assert_eq!(parse_model("state:1,2,3,0"), Ok(LossParams::four_state(P1, P2, P3, 0, 0)));
        assert_eq!(parse_model("state:100"), Ok(LossParams::four_state(u32::MAX, 0, 0, u32::MAX, 0)));
        assert_eq!(parse_model("state:0"), Ok(LossParams::four_state(0, u32::MAX, 0, u32::MAX, 0)));
    }

    #[test]
    fn random_with_and_without_correlation() {
        assert_eq!(parse_model("random:30"), Ok(LossParams::random(P30, 0)));
        assert_eq!(parse_model("random:30%,50%"), Ok(LossParams::random(P30, P50)));
        assert_eq!(parse_model("random:0.0001"), Ok(LossParams::random(4295, 0)));
        assert_eq!(parse_model("random:100"), Ok(LossParams::random(u32::MAX, 0)));
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_the_problem_and_the_form() {
        let cases = [
            ("gemodel:1,10,170", "170", "gemodel:P[,R[,1-H[,1-K]]]"),
            ("state:101", "101", "state:P13["),
            ("random:-1", "-1", "random:P[,CORR]"),
            ("gemodel:1,2,3,4,5", "5 values", "gemodel:P[,R[,1-H[,1-K]]]"),
            ("state:1,2,3,4,5,6", "at most 5", "state:P13[,P31[,P32[,P23[,P14]]]]"),
            ("random:1,2,3", "at most 2", "random:P[,CORR]"),
            ("bursty:5", "unknown loss model 'bursty'", "gemodel:P[,R[,1-H[,1-K]]], state:"),
            ("5", "unknown loss model '5'", "random:P[,CORR]"),
            ("", "no loss model", "gemodel:P"),
            ("   ", "no loss model", "gemodel:P"),
            ("gemodel", "no values", "gemodel:P[,R[,1-H[,1-K]]]"),
            ("state:", "no values", "state:P13"),
            ("gemodel:1,,3", "R empty", "gemodel:P[,R"),
            ("gemodel:abc", "'abc'", "not a number"),
            ("random:nan", "not a number", "random:P"),
            ("state:inf", "not a number", "state:P13"),
            ("gemodel:1%%", "not a number", "gemodel:P"),
        ];
        for (input, problem, form) in cases {
            let e = parse_model(input).expect_err(input);
            assert!(e.contains(problem) && e.contains(form), "{input:?}: {e}");
            assert!(!e.contains('\n'), "{input:?}: one line: {e}");
        }
    }

    #[test]
    fn descriptions_state_the_model_and_its_long_run() {
        // Gilbert-Elliott p 1%, r 10%, loss 70% in bad, 0.1% in good: piB = 1/11, loss =
        // 10/11 * 0.001 + 1/11 * 0.7 = 6.4545%; mean burst 2.6409 (worked by hand in Python).
        assert_eq!(
            describe(&parse_model("gemodel:1,10,70,0.1").unwrap()),
            "loss gemodel p 1% r 10% 1-h 70% 1-k 0.1% (expect 6.45% of packets lost, 2.64 in a row on average)"
        );
        // state P13 alone is Bernoulli(P13): bursts 1 / (1 - 0.1).
        assert_eq!(
            describe(&parse_model("state:10").unwrap()),
            "loss state p13 10% p31 90% p32 0% p23 100% p14 0% (expect 10% of packets lost, 1.11 in a row on average)"
        );
        assert_eq!(describe(&parse_model("random:30").unwrap()), "loss random 30% (expect 30% of packets lost, 1.43 in a row on average)");
        // The correlated generator loses far less than asked (chaos_common::loss tests the number
        // against a million seeded draws).
        let d = describe(&parse_model("random:30,50").unwrap());
        assert!(d.starts_with("loss random 30% correlation 50% (expect 12.9% of packets lost"), "{d}");
        assert_eq!(describe(&parse_model("random:0").unwrap()), "loss random 0% (loses nothing)");
        assert_eq!(
            describe(&parse_model("state:100").unwrap()),
            "loss state p13 100% p31 0% p32 0% p23 100% p14 0% \
             (expect 100% of packets lost, and once one is lost every later one is)"
        );
        // 30% through a 99% correlation: the draws hardly ever stray that far from the middle.
        assert_eq!(
            describe(&parse_model("random:30,99").unwrap()),
            "loss random 30% correlation 99% (expect almost no packets lost: under 0.0001%)"
        );
        assert!(!describe(&parse_model("gemodel:0.0001,50").unwrap()).contains('\n'));
    }
}
