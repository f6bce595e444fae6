//! netem's packet-loss models, deciding each packet exactly as Linux's `net/sched/sch_netem.c`
//! does (`loss_event`, `get_crandom`, `loss_gilb_ell`, `loss_4state`), in code the chaos kernel
//! programs run unchanged: no floats, no allocation, no loops, no indexing; one packet is a
//! handful of compares of uniformly random u32 values against u32 thresholds.
//!
//! The models of tc-netem(8) `loss MODEL`:
//! - `random PERCENT [CORRELATION]` ([`LOSS_RANDOM`]): every packet is lost with the same
//!   probability. A correlation passes the draws through netem's correlated generator
//!   ([`crandom`]), which tc-netem(8) calls "not a true statistical correlation, but an
//!   approximation": it averages each draw with the previous one, which narrows the draws around
//!   the middle of the range, so it lowers the loss *rate* as well (`random 30% 50%` loses about
//!   12.9% of packets, in runs of 1.57 on average). [`expectation`] computes what to expect.
//! - `gemodel P [R [1-H [1-K]]]` ([`LOSS_GEMODEL`]): Gilbert-Elliott. A good and a bad state;
//!   `P` is the probability of moving from good to bad, `R` from bad to good, `1-H` the loss
//!   probability in the bad state, `1-K` in the good one.
//! - `state P13 [P31 [P32 [P23 [P14]]]]` ([`LOSS_4STATE`]): the 4-state Markov chain of the
//!   "General and Intuitive" model (Salsano, Ludovici, Ordine): states [`S4_GAP_RX`],
//!   [`S4_BURST_RX`], [`S4_BURST_LOSS`], [`S4_GAP_LOSS`]; `Pij` is the probability of moving from
//!   state i to state j, and a packet is lost when the chain moves into state 3 or 4.
//!
//! Probabilities are in netem's own representation, the values tc puts in its netlink message:
//! a fraction `f` is the u32 `rint(f * u32::MAX)` (so u32::MAX is 100%), compared against
//! uniformly random u32 draws. One exception, also netem's: for [`LOSS_GEMODEL`] the kernel keeps
//! `h`, not `1-h`, and tc sends `u32::MAX - rint((1-h) * u32::MAX)`; [`LossParams::gemodel`]
//! takes that kernel value.
//!
//! Randomness: [`lost`] takes a source of uniform u32 values, `bpf_get_prandom_u32` in the kernel
//! or [`Prng`] for a rule with `--seed`. [`Prng`] is the kernel's own `prandom_u32_state` seeded
//! by its `prandom_seed_state`, which is exactly what netem uses since Linux 6.7 (the
//! `TCA_NETEM_PRNG_SEED` attribute, tc's `seed VALUE`): with the same seed a model here draws the
//! same numbers as `tc qdisc ... netem loss ... seed VALUE` and so, packet for packet, loses the
//! same packets (netem's other impairments draw from that generator too; with loss alone the
//! sequences are the same). The one draw netem does not take from the seeded generator is the
//! correlated generator's starting value (`init_crandom` uses `get_random_u32`); here it is
//! [`LossState::last`], which the caller sets.

/// tc's `loss random PERCENT [CORRELATION]` (netem's `CLG_RANDOM`).
pub const LOSS_RANDOM: u32 = 0;
/// tc's `loss gemodel P [R [1-H [1-K]]]` (netem's `CLG_GILB_ELL`).
pub const LOSS_GEMODEL: u32 = 1;
/// tc's `loss state P13 [P31 [P32 [P23 [P14]]]]` (netem's `CLG_4_STATES`).
pub const LOSS_4STATE: u32 = 2;

/// Probability 1 in netem's representation (tc: `rint(1.0 * UINT32_MAX)`).
pub const PROB_ONE: u32 = u32::MAX;

/// Gilbert-Elliott states, with netem's values (`GOOD_STATE`, `BAD_STATE`).
pub const GE_GOOD: u32 = 1;
pub const GE_BAD: u32 = 2;

/// 4-state model states, numbered as tc-netem(8) and the GI model number them ("1 good packet
/// reception, 2 good reception within a burst, 3 burst losses, 4 independent losses"), as netem
/// numbered them before its states had names. The kernel's enum now gives `LOST_IN_GAP_PERIOD`
/// the value 3 and `LOST_IN_BURST_PERIOD` the value 4, the other way round; only the names matter
/// there, and the transitions below are the kernel's, name for name.
/// Netem's `TX_IN_GAP_PERIOD`: a packet received, outside bursts.
pub const S4_GAP_RX: u32 = 1;
/// Netem's `TX_IN_BURST_PERIOD`: a packet received within a burst.
pub const S4_BURST_RX: u32 = 2;
/// Netem's `LOST_IN_BURST_PERIOD`: a packet lost within a burst.
pub const S4_BURST_LOSS: u32 = 3;
/// Netem's `LOST_IN_GAP_PERIOD`: an isolated loss.
pub const S4_GAP_LOSS: u32 = 4;

/// A loss model and its parameters: netem's `loss`, `loss_cor.rho` and `clg.a1`..`a5`, as tc
/// sends them. Which fields a model reads:
///
/// | field  | [`LOSS_RANDOM`]        | [`LOSS_GEMODEL`]           | [`LOSS_4STATE`] |
/// |--------|------------------------|----------------------------|-----------------|
/// | `loss` | loss probability       | -                          | -               |
/// | `rho`  | correlation (0: none)  | -                          | -               |
/// | `a1`   | -                      | `p`: good → bad            | `p13`           |
/// | `a2`   | -                      | `r`: bad → good            | `p31`           |
/// | `a3`   | -                      | `h`: kept in bad (kernel form, `u32::MAX - (1-h)`) | `p32` |
/// | `a4`   | -                      | `k1` (tc's `1-k`): lost in good | `p14`      |
/// | `a5`   | -                      | -                          | `p23`           |
///
/// The all-zero value is [`LOSS_RANDOM`] at 0%: it loses nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossParams {
    /// `LOSS_*`; any other value loses nothing.
    pub model: u32,
    /// [`LOSS_RANDOM`]: a packet is lost when the (correlated) draw is `<= loss`, as netem's
    /// `q->loss >= get_crandom()`; 0 loses nothing (and draws nothing), u32::MAX everything.
    pub loss: u32,
    /// [`LOSS_RANDOM`]: netem's `loss_cor.rho`, the correlation: 0 for none (plain Bernoulli).
    pub rho: u32,
    pub a1: u32,
    pub a2: u32,
    pub a3: u32,
    pub a4: u32,
    pub a5: u32,
}

const _: () = assert!(core::mem::size_of::<LossParams>() == 32);
const _: () = assert!(core::mem::align_of::<LossParams>() == 4);

impl LossParams {
    /// `loss random` with netem's `loss` and `rho` (both in netem's scale).
    pub const fn random(loss: u32, rho: u32) -> LossParams {
        LossParams { model: LOSS_RANDOM, loss, rho, a1: 0, a2: 0, a3: 0, a4: 0, a5: 0 }
    }

    /// `loss gemodel` with the values the kernel keeps: `p`, `r`, `h` (not tc's `1-h`: the
    /// complement, `u32::MAX - (1-h)`) and `k1` (tc's `1-k` as is).
    pub const fn gemodel(p: u32, r: u32, h: u32, k1: u32) -> LossParams {
        LossParams { model: LOSS_GEMODEL, loss: 0, rho: 0, a1: p, a2: r, a3: h, a4: k1, a5: 0 }
    }

    /// Whether the model keeps state between packets (and so decides in place of a rule's plain
    /// probability): Gilbert-Elliott, 4-state, or random loss with a correlation.
    pub const fn is_stateful(&self) -> bool {
        matches!(self.model, LOSS_GEMODEL | LOSS_4STATE) || (self.model == LOSS_RANDOM && self.rho != 0)
    }

    /// `loss state`, arguments in tc's order.
    pub const fn four_state(p13: u32, p31: u32, p32: u32, p23: u32, p14: u32) -> LossParams {
        LossParams { model: LOSS_4STATE, loss: 0, rho: 0, a1: p13, a2: p31, a3: p32, a4: p14, a5: p23 }
    }
}

/// Where a model stands between packets: the Markov chain's state and the correlated generator's
/// last value. Make it with [`LossState::start`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossState {
    /// [`GE_GOOD`]/[`GE_BAD`], or `S4_*`; netem starts both chains at 1. 0 (a zeroed map value)
    /// is taken as 1, a value netem never holds; other values lose nothing, as in netem.
    pub state: u32,
    /// [`LOSS_RANDOM`] with a correlation: the previous output of [`crandom`].
    pub last: u32,
}

const _: () = assert!(core::mem::size_of::<LossState>() == 8);

impl LossState {
    /// The state as one u64 (state in the low half, `last` in the high half), for an atomic
    /// compare-and-swap in a map shared by all CPUs.
    #[inline(always)]
    pub const fn pack(self) -> u64 {
        self.state as u64 | ((self.last as u64) << 32)
    }

    #[inline(always)]
    pub const fn unpack(v: u64) -> LossState {
        LossState { state: v as u32, last: (v >> 32) as u32 }
    }
}

impl LossState {
    /// The state netem puts a model in when it is configured (`clg.state = 1`), with the
    /// correlated generator's starting value (netem: `get_random_u32()`).
    pub const fn start(last: u32) -> LossState {
        LossState { state: 1, last }
    }
}

/// Decides one packet: whether `params`' model loses it, moving `state` on. `rnd` gives uniformly
/// random u32 values; each model draws exactly as many, in the same order, as netem does:
/// [`LOSS_RANDOM`] one (none at 0%), [`LOSS_GEMODEL`] two (transition, then loss), [`LOSS_4STATE`]
/// one.
#[inline(always)]
pub fn lost(params: &LossParams, state: &mut LossState, rnd: &mut impl FnMut() -> u32) -> bool {
    match params.model {
        LOSS_RANDOM => random_lost(params, state, rnd),
        LOSS_GEMODEL => gemodel_lost(params, state, rnd),
        LOSS_4STATE => four_state_lost(params, state, rnd),
        _ => false,
    }
}

/// [`lost`] with draws from a seeded [`Prng`].
#[inline(always)]
pub fn lost_seeded(params: &LossParams, state: &mut LossState, prng: &mut Prng) -> bool {
    lost(params, state, &mut || prng.next_u32())
}

/// netem's `loss_event` for `CLG_RANDOM`: `q->loss && q->loss >= get_crandom(&q->loss_cor)`.
#[inline(always)]
fn random_lost(params: &LossParams, state: &mut LossState, rnd: &mut impl FnMut() -> u32) -> bool {
    params.loss != 0 && params.loss >= crandom(params.rho, &mut state.last, rnd)
}

/// netem's correlated random generator (`get_crandom`): with `rho` 0 a plain draw (and `last` is
/// left alone); otherwise the draw averaged with the previous output, weighted `(rho + 1) / 2^32`
/// towards the previous one: `(value * (2^32 - (rho + 1)) + last * (rho + 1)) >> 32`. With
/// `rho` = u32::MAX the output never changes. In 64 bits, without overflow: the two weights add up
/// to 2^32 and both values are below 2^32.
#[inline(always)]
pub fn crandom(rho: u32, last: &mut u32, rnd: &mut impl FnMut() -> u32) -> u32 {
    let value = rnd() as u64;
    if rho == 0 {
        return value as u32;
    }
    let rho = rho as u64 + 1;
    let answer = ((value * ((1u64 << 32) - rho) + (*last as u64) * rho) >> 32) as u32;
    *last = answer;
    answer
}

/// netem's `loss_gilb_ell`: the first draw moves the chain, the second decides the packet by the
/// state the packet arrived in (good: lost when below `k1`; bad: lost when above `h`).
#[inline(always)]
fn gemodel_lost(params: &LossParams, state: &mut LossState, rnd: &mut impl FnMut() -> u32) -> bool {
    let s = if state.state == 0 { GE_GOOD } else { state.state };
    if s == GE_GOOD {
        state.state = if rnd() < params.a1 { GE_BAD } else { GE_GOOD };
        rnd() < params.a4
    } else if s == GE_BAD {
        state.state = if rnd() < params.a2 { GE_GOOD } else { GE_BAD };
        rnd() > params.a3
    } else {
        false
    }
}

/// netem's `loss_4state`: one draw, compared with the thresholds leaving the current state in
/// the kernel's order; the packet is lost when the chain moves into a loss state. The sums wrap
/// at 2^32 as the kernel's u32 sums do (tc does not stop p13 + p14 or p31 + p32 going past 100%).
#[inline(always)]
fn four_state_lost(params: &LossParams, state: &mut LossState, rnd: &mut impl FnMut() -> u32) -> bool {
    let r = rnd();
    let s = if state.state == 0 { S4_GAP_RX } else { state.state };
    let (next, lost) = match s {
        S4_GAP_RX => {
            if r < params.a4 {
                (S4_GAP_LOSS, true)
            } else if r < params.a1.wrapping_add(params.a4) {
                (S4_BURST_LOSS, true)
            } else {
                (S4_GAP_RX, false)
            }
        }
        S4_BURST_RX => {
            if r < params.a5 {
                (S4_BURST_LOSS, true)
            } else {
                (S4_BURST_RX, false)
            }
        }
        S4_BURST_LOSS => {
            if r < params.a3 {
                (S4_BURST_RX, false)
            } else if r < params.a2.wrapping_add(params.a3) {
                (S4_GAP_RX, false)
            } else {
                (S4_BURST_LOSS, true)
            }
        }
        S4_GAP_LOSS => (S4_GAP_RX, false),
        other => (other, false),
    };
    state.state = next;
    lost
}

/// The kernel's seeded generator, `prandom_u32_state` (lib/random32.c): L'Ecuyer's maximally
/// equidistributed combined Tausworthe generator "taus113" (period about 2^113), four u32 words
/// of state, a few shifts and xors a draw. Chosen over a smaller generator (xorshift64*) because
/// it is the generator netem draws from, so a seed here and the same seed given to netem produce
/// the same draws, and because it needs only 32-bit operations, which the BPF verifier and JITs
/// handle plainly. Not cryptographic. Taus113 requires `s1 > 1, s2 > 7, s3 > 15, s4 > 127`; a zeroed
/// state only ever draws 0: make states with [`Prng::seeded`] (see [`Prng::is_seeded`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prng {
    pub s1: u32,
    pub s2: u32,
    pub s3: u32,
    pub s4: u32,
}

const _: () = assert!(core::mem::size_of::<Prng>() == 16);

impl Prng {
    /// The kernel's `prandom_seed_state(state, seed)`, which netem applies to its `seed`: the seed
    /// folded to 32 bits, the same value in every word, raised where a word would be too small.
    /// Like netem, no warm-up draws.
    pub const fn seeded(seed: u64) -> Prng {
        let i = ((seed >> 32) ^ (seed << 10) ^ seed) as u32;
        Prng { s1: at_least(i, 2), s2: at_least(i, 8), s3: at_least(i, 16), s4: at_least(i, 128) }
    }

    /// Whether the state meets taus113's seeding condition (every state [`Prng::seeded`] makes
    /// does, and every draw keeps it so).
    #[inline(always)]
    pub const fn is_seeded(&self) -> bool {
        self.s1 > 1 && self.s2 > 7 && self.s3 > 15 && self.s4 > 127
    }

    /// The next draw: `prandom_u32_state`.
    #[inline(always)]
    pub fn next_u32(&mut self) -> u32 {
        self.s1 = taus_step(self.s1, 6, 13, 0xffff_fffe, 18);
        self.s2 = taus_step(self.s2, 2, 27, 0xffff_fff8, 2);
        self.s3 = taus_step(self.s3, 13, 21, 0xffff_fff0, 7);
        self.s4 = taus_step(self.s4, 3, 12, 0xffff_ff80, 13);
        self.s1 ^ self.s2 ^ self.s3 ^ self.s4
    }
}

/// The kernel's `__seed(x, m)`.
const fn at_least(x: u32, m: u32) -> u32 {
    if x < m { x + m } else { x }
}

/// One Tausworthe component step, `((s & c) << d) ^ (((s << a) ^ s) >> b)`; bits shifted out are
/// dropped (all shift counts are below 32).
#[inline(always)]
const fn taus_step(s: u32, a: u32, b: u32, c: u32, d: u32) -> u32 {
    ((s & c) << d) ^ (((s << a) ^ s) >> b)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` structs of u32 fields only, sizes asserted: no padding, and any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::LossParams {}
    unsafe impl aya::Pod for super::LossState {}
    unsafe impl aya::Pod for super::Prng {}
}

#[cfg(any(test, feature = "user"))]
pub use expect::{Expectation, expectation, mean_burst_length, stationary_loss};

/// What a model implies in the long run (user space and tests only: floats).
#[cfg(any(test, feature = "user"))]
mod expect {
    use super::*;

    /// The long-run behaviour of a model, from a chain started as [`LossState::start`] does.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Expectation {
        /// The fraction of packets lost in the long run.
        pub loss: f64,
        /// The mean length of a run of consecutive lost packets: 0 if nothing is lost, infinite
        /// if, once losing, the model never stops.
        pub mean_burst: f64,
    }

    impl Expectation {
        /// From the loss rate and the rate at which bursts start, P(this packet lost and the one
        /// before it not): the mean burst is their ratio.
        pub(super) fn from_rates(loss: f64, starts: f64) -> Expectation {
            let mean_burst = if loss <= 0.0 {
                0.0
            } else if starts <= 0.0 {
                f64::INFINITY
            } else {
                loss / starts
            };
            Expectation { loss, mean_burst }
        }
    }

    /// The stationary loss probability of the model.
    pub fn stationary_loss(p: &LossParams) -> f64 {
        expectation(p).loss
    }

    /// The mean number of consecutive packets lost in a burst.
    pub fn mean_burst_length(p: &LossParams) -> f64 {
        expectation(p).mean_burst
    }

    /// The probability that a uniform u32 is below `n` (`n` up to 2^32).
    pub(super) fn below(n: u64) -> f64 {
        n as f64 / 4_294_967_296.0
    }

    /// Both at once. Markov chains are solved exactly (in f64). The correlated random generator's
    /// stationary distribution is computed numerically, to about 1e-6 in absolute terms for
    /// correlations up to 99% (so a loss rate below that is "about none", and the mean burst
    /// derived from it rough); it takes longer the closer the correlation is to 100% (release
    /// build: under 1 ms at 50%, 80 ms at 99%, 2 s at 99.9%).
    pub fn expectation(p: &LossParams) -> Expectation {
        match p.model {
            LOSS_RANDOM => random(p),
            LOSS_GEMODEL => gemodel(p),
            LOSS_4STATE => four_state(p),
            _ => Expectation { loss: 0.0, mean_burst: 0.0 },
        }
    }

    fn random(p: &LossParams) -> Expectation {
        if p.loss == 0 {
            return Expectation::from_rates(0.0, 0.0);
        }
        if p.loss == u32::MAX {
            return Expectation::from_rates(1.0, 0.0);
        }
        // Lost when the draw is <= loss, i.e. below loss + 1.
        let q = below(p.loss as u64 + 1);
        if p.rho == 0 {
            return Expectation::from_rates(q, q * (1.0 - q));
        }
        if p.rho == u32::MAX {
            // The generator repeats its starting value forever: lost, all of them, with the
            // probability that a uniform starting value is below the threshold.
            return Expectation::from_rates(q, 0.0);
        }
        let c = below(p.rho as u64 + 1);
        let cdf = CrandomCdf::new(c);
        Expectation::from_rates(cdf.at(q), cdf.starts(q))
    }

    fn gemodel(p: &LossParams) -> Expectation {
        let (to_bad, to_good) = (below(p.a1 as u64), below(p.a2 as u64));
        let lost_good = below(p.a4 as u64);
        // Lost in the bad state when the draw is above h.
        let lost_bad = below(u32::MAX as u64 - p.a3 as u64);
        let (good, bad) = if to_bad + to_good == 0.0 {
            (1.0, 0.0) // never leaves the good state it starts in
        } else {
            (to_good / (to_bad + to_good), to_bad / (to_bad + to_good))
        };
        let loss = good * lost_good + bad * lost_bad;
        // The loss draw depends on the state a packet arrives in, independently of the move.
        let starts = good * (1.0 - lost_good) * ((1.0 - to_bad) * lost_good + to_bad * lost_bad)
            + bad * (1.0 - lost_bad) * (to_good * lost_good + (1.0 - to_good) * lost_bad);
        Expectation::from_rates(loss, starts)
    }

    /// The 4-state chain's transition matrix, from the exact fraction of u32 draws that takes each
    /// branch of [`four_state_lost`] (wrapping sums included). Index `i` is state `i + 1`.
    pub(super) fn four_state_matrix(p: &LossParams) -> [[f64; 4]; 4] {
        const ALL: u64 = 1 << 32;
        let (p13, p31, p32, p14, p23) = (p.a1 as u64, p.a2 as u64, p.a3 as u64, p.a4 as u64, p.a5 as u64);
        let mut m = [[0.0; 4]; 4];
        // From 1: below p14 → 4; below (p13 + p14) mod 2^32 → 3; the rest stays.
        let to3 = ((p13 + p14) % ALL).saturating_sub(p14);
        m[0] = [below(ALL - p14 - to3), 0.0, below(to3), below(p14)];
        // From 2: below p23 → 3.
        m[1] = [0.0, below(ALL - p23), below(p23), 0.0];
        // From 3: below p32 → 2; below (p31 + p32) mod 2^32 → 1; the rest stays (lost).
        let to1 = ((p31 + p32) % ALL).saturating_sub(p32);
        m[2] = [below(to1), below(p32), below(ALL - p32 - to1), 0.0];
        // From 4: back to 1.
        m[3] = [1.0, 0.0, 0.0, 0.0];
        m
    }

    /// The long-run distribution of the chain started in state 1: the stationary distribution of
    /// the states reachable from 1. That set holds exactly one closed class (4 always returns to
    /// 1, so a closed class without 1 lies within {2, 3}, and {2} and {3} cannot both be closed
    /// and reachable), so the distribution is unique.
    pub(super) fn long_run(m: &[[f64; 4]; 4]) -> [f64; 4] {
        let mut reach = [true, false, false, false];
        for _ in 0..4 {
            for i in 0..4 {
                for j in 0..4 {
                    if reach[i] && m[i][j] > 0.0 {
                        reach[j] = true;
                    }
                }
            }
        }
        // pi (M - I) = 0 over the reachable states, the first equation replaced by sum(pi) = 1;
        // pi = 0 elsewhere.
        let mut a = [[0.0; 4]; 4];
        let mut b = [0.0; 4];
        for j in 0..4 {
            if !reach[j] {
                a[j][j] = 1.0;
                continue;
            }
            for i in 0..4 {
                if reach[i] {
                    a[j][i] = m[i][j] - if i == j { 1.0 } else { 0.0 };
                }
            }
        }
        a[0] = reach.map(|r| if r { 1.0 } else { 0.0 });
        b[0] = 1.0;
        solve(a, b)
    }

    fn four_state(p: &LossParams) -> Expectation {
        let m = four_state_matrix(p);
        let pi = long_run(&m);
        let loss = pi[2] + pi[3];
        let starts = pi[0] * (m[0][2] + m[0][3]) + pi[1] * (m[1][2] + m[1][3]);
        Expectation::from_rates(loss, starts)
    }

    /// Solves `a x = b` by Gaussian elimination with partial pivoting.
    pub(super) fn solve(mut a: [[f64; 4]; 4], mut b: [f64; 4]) -> [f64; 4] {
        let abs = |x: f64| if x < 0.0 { -x } else { x };
        for col in 0..4 {
            let mut pivot = col;
            for row in col + 1..4 {
                if abs(a[row][col]) > abs(a[pivot][col]) {
                    pivot = row;
                }
            }
            a.swap(col, pivot);
            b.swap(col, pivot);
            let (pivot_row, d) = (a[col], a[col][col]);
            for row in col + 1..4 {
                let f = a[row][col] / d;
                for (x, p) in a[row][col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                b[row] -= f * b[col];
            }
        }
        let mut x = [0.0; 4];
        for row in (0..4).rev() {
            let mut s = b[row];
            for k in row + 1..4 {
                s -= a[row][k] * x[k];
            }
            x[row] = s / a[row][row];
        }
        x
    }

    /// Grid cells of [`CrandomCdf`].
    const CELLS: usize = 2048;

    /// The stationary distribution of netem's correlated generator, as a fraction of 2^32:
    /// `X = (1 - c) U + c X'` with `U` uniform and `X'` the previous output, independent of `U`
    /// (the integer rounding is below 2^-32 a step). Its CDF `F` is the fixed point of
    /// `F(x) = (1 / (1 - c)) * integral from x - (1 - c) to x of F(z / c) dz`, iterated from the
    /// uniform distribution on a grid where `F` is piecewise linear (each step contracts by `c`).
    pub(super) struct CrandomCdf {
        pub(super) c: f64,
        pub(super) f: [f64; CELLS + 1],
    }

    impl CrandomCdf {
        pub(super) fn new(c: f64) -> CrandomCdf {
            let a = 1.0 - c;
            let h = 1.0 / CELLS as f64;
            let mut f = [0.0; CELLS + 1];
            for (i, v) in f.iter_mut().enumerate() {
                *v = i as f64 * h;
            }
            let mut integral = [0.0; CELLS + 1];
            let mut next = [0.0; CELLS + 1];
            for _ in 0..40_000 {
                for i in 0..CELLS {
                    integral[i + 1] = integral[i] + h * (f[i] + f[i + 1]) / 2.0;
                }
                // The integral of F from 0 to s (F is 0 below 0 and 1 above 1).
                let int_f = |s: f64| -> f64 {
                    if s <= 0.0 {
                        0.0
                    } else if s >= 1.0 {
                        integral[CELLS] + (s - 1.0)
                    } else {
                        let k = ((s * CELLS as f64) as usize).min(CELLS - 1);
                        let u = s - k as f64 * h;
                        integral[k] + f[k] * u + (f[k + 1] - f[k]) * u * u / (2.0 * h)
                    }
                };
                let mut change: f64 = 0.0;
                for (i, v) in next.iter_mut().enumerate() {
                    let x = i as f64 * h;
                    let new = (c / a * (int_f(x / c) - int_f((x - a) / c))).clamp(0.0, 1.0);
                    change = change.max(if new > f[i] { new - f[i] } else { f[i] - new });
                    *v = new;
                }
                f = next;
                if change < 1e-13 {
                    break;
                }
            }
            CrandomCdf { c, f }
        }

        /// P(X < x).
        pub(super) fn at(&self, x: f64) -> f64 {
            if x <= 0.0 {
                return 0.0;
            }
            if x >= 1.0 {
                return 1.0;
            }
            let pos = x * CELLS as f64;
            let k = (pos as usize).min(CELLS - 1);
            self.f[k] + (self.f[k + 1] - self.f[k]) * (pos - k as f64)
        }

        /// P(previous output >= t and this one < t): the rate at which bursts of loss start
        /// for threshold `t`. The integral over the previous output `y` of P((1-c) U + c y < t).
        pub(super) fn starts(&self, t: f64) -> f64 {
            const SUB: usize = 8;
            let (c, a, h) = (self.c, 1.0 - self.c, 1.0 / CELLS as f64);
            let mut sum = 0.0;
            for k in 0..CELLS {
                let (y0, y1) = (k as f64 * h, (k + 1) as f64 * h);
                if y1 <= t {
                    continue;
                }
                if c * y0 >= t {
                    break;
                }
                let lo = if y0 > t { y0 } else { t };
                let mut mean = 0.0;
                for s in 0..SUB {
                    let y = lo + (y1 - lo) * (s as f64 + 0.5) / SUB as f64;
                    mean += ((t - c * y) / a).clamp(0.0, 1.0) / SUB as f64;
                }
                sum += (self.f[k + 1] - self.f[k]) * (y1 - lo) / h * mean;
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::expect::{CrandomCdf, four_state_matrix, long_run, solve};
    use super::*;

    /// tc's `set_percent(rint(percent / 100 * UINT32_MAX))`, for readable test parameters.
    fn pct(percent: f64) -> u32 {
        (percent / 100.0 * u32::MAX as f64).round_ties_even() as u32
    }

    /// A source that hands out the given draws and counts them; panics if asked for one more.
    struct Script<'a> {
        draws: &'a [u32],
        used: usize,
    }

    impl Script<'_> {
        fn new(draws: &[u32]) -> Script<'_> {
            Script { draws, used: 0 }
        }
        fn next(&mut self) -> u32 {
            let v = self.draws[self.used];
            self.used += 1;
            v
        }
    }

    /// One packet with scripted draws: (lost, new state, draws used).
    fn step(p: &LossParams, state: u32, draws: &[u32]) -> (bool, u32, usize) {
        let mut s = LossState { state, last: 0 };
        let mut script = Script::new(draws);
        let l = lost(p, &mut s, &mut || script.next());
        (l, s.state, script.used)
    }

    /// `n` packets from seed `seed`: the decisions.
    fn run(p: &LossParams, seed: u64, n: usize) -> Vec<bool> {
        let mut prng = Prng::seeded(seed);
        let mut s = LossState::start(0);
        (0..n).map(|_| lost_seeded(p, &mut s, &mut prng)).collect()
    }

    /// (loss rate, mean burst length, number of bursts) of a run.
    fn measure(d: &[bool]) -> (f64, f64, usize) {
        let lost = d.iter().filter(|&&l| l).count();
        let bursts = d.iter().enumerate().filter(|&(i, &l)| l && (i == 0 || !d[i - 1])).count();
        let burst = if bursts == 0 { 0.0 } else { lost as f64 / bursts as f64 };
        (lost as f64 / d.len() as f64, burst, bursts)
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol
    }

    // --- The generator ---

    /// The kernel's self-test seeding (lib/random32.c, `prandom_state_selftest_seed`) followed by
    /// `prandom_warmup`'s ten draws.
    fn selftest_state(seed: u32) -> Prng {
        let lcg = |x: u32| x.wrapping_mul(69069);
        let s1 = at_least(lcg(seed), 2);
        let s2 = at_least(lcg(s1), 8);
        let s3 = at_least(lcg(s2), 16);
        let s4 = at_least(lcg(s3), 128);
        let mut p = Prng { s1, s2, s3, s4 };
        for _ in 0..10 {
            p.next_u32();
        }
        p
    }

    #[test]
    fn the_generator_matches_the_kernels_taus113_vectors() {
        // lib/random32.c's self-test: test1 (seed boundaries) and part of test2 (values from
        // GSL's taus113 after `iteration` draws).
        for (seed, want) in [(1, 3484351685u32), (2, 2623130059), (3, 3125133893), (4, 984847254)] {
            assert_eq!(selftest_state(seed).next_u32(), want, "test1 seed {seed}");
        }
        let test2: [(u32, u32, u32); 6] = [
            (931557656, 959, 2975593782),
            (1339693295, 876, 3887776532),
            (1967883163, 508, 10734624),
            (1516232129, 557, 3173877),
            (2012608669, 506, 3362628973),
            (407983964, 921, 728767059),
        ];
        for (seed, iterations, want) in test2 {
            let mut p = selftest_state(seed);
            for _ in 0..iterations - 1 {
                p.next_u32();
            }
            assert_eq!(p.next_u32(), want, "test2 seed {seed}");
        }
    }

    #[test]
    fn seeding_follows_prandom_seed_state() {
        // i = (seed >> 32) ^ (seed << 10) ^ seed, truncated; words below 2, 8, 16, 128 raised by that.
        assert_eq!(Prng::seeded(0), Prng { s1: 2, s2: 8, s3: 16, s4: 128 });
        assert_eq!(Prng::seeded(1), Prng { s1: 1025, s2: 1025, s3: 1025, s4: 1025 });
        // 2^32: only the high half survives the fold: i = 1.
        assert_eq!(Prng::seeded(1 << 32), Prng { s1: 3, s2: 9, s3: 17, s4: 129 });
        // 5 << 22: seed << 10 carries the 5 out of the low 32 bits; i = 5 << 22 = 20971520.
        assert_eq!(Prng::seeded(5 << 22).s1, 20_971_520);
        assert!(Prng::seeded(0).is_seeded() && Prng::seeded(u64::MAX).is_seeded());
        assert!(!Prng::default().is_seeded());
        let mut p = Prng::seeded(7);
        for _ in 0..1000 {
            p.next_u32();
            assert!(p.is_seeded(), "draws keep the seeding condition");
        }
    }

    #[test]
    fn the_generator_is_uniform_enough_for_the_rate_tests() {
        // Mean and the share below a quarter over 1M draws, against the uniform distribution's.
        let mut p = Prng::seeded(1234);
        let n = 1_000_000;
        let (mut sum, mut quarter) = (0.0, 0);
        for _ in 0..n {
            let v = p.next_u32();
            sum += v as f64 / 4_294_967_296.0;
            quarter += (v < 1 << 30) as usize;
        }
        let mean_sigma = (1.0f64 / 12.0 / n as f64).sqrt();
        assert!(close(sum / n as f64, 0.5, 4.5 * mean_sigma), "{}", sum / n as f64);
        let q_sigma = (0.25f64 * 0.75 / n as f64).sqrt();
        assert!(close(quarter as f64 / n as f64, 0.25, 4.5 * q_sigma), "{quarter}");
    }

    // --- Exact transitions, draw by draw ---

    #[test]
    fn random_loss_compares_with_greater_or_equal_and_draws_only_when_set() {
        let p = LossParams::random(1000, 0);
        assert_eq!(step(&p, 1, &[1000]), (true, 1, 1), "a draw equal to the threshold is lost");
        assert_eq!(step(&p, 1, &[1001]), (false, 1, 1));
        assert_eq!(step(&p, 1, &[0]), (true, 1, 1));
        assert_eq!(step(&LossParams::random(0, 0), 1, &[]), (false, 1, 0), "0%: no draw at all");
        assert_eq!(step(&LossParams::random(0, pct(50.0)), 1, &[]), (false, 1, 0));
        assert_eq!(step(&LossParams::random(u32::MAX, 0), 1, &[u32::MAX]), (true, 1, 1), "100% loses every draw");
    }

    #[test]
    fn the_correlated_generator_weights_the_previous_value() {
        // rho = 0: the draw as is, `last` untouched.
        let mut last = 77;
        assert_eq!(crandom(0, &mut last, &mut || 123), 123);
        assert_eq!(last, 77);
        // rho + 1 = 2^31: the mean of the draw and the previous value, rounded down.
        let half = (1u32 << 31) - 1;
        let mut last = u32::MAX - 1; // 2^32 - 2
        assert_eq!(crandom(half, &mut last, &mut || 0), (1 << 31) - 1);
        assert_eq!(last, (1 << 31) - 1);
        let mut last = 1;
        // ((2^32 - 1) * 2^31 + 1 * 2^31) >> 32 = 2^31.
        assert_eq!(crandom(half, &mut last, &mut || u32::MAX), 1 << 31);
        // rho = u32::MAX: the weight of the new draw is 0, the output never moves.
        let mut last = 42;
        for v in [0, u32::MAX, 5] {
            assert_eq!(crandom(u32::MAX, &mut last, &mut || v), 42);
        }
        // rho = 3 (weight 4 / 2^32): value 2^32 - 1, last 2^32 - 1 → exactly 2^32 - 1, no overflow.
        let mut last = u32::MAX;
        assert_eq!(crandom(3, &mut last, &mut || u32::MAX), u32::MAX);
        // Correlated loss compares the generator's output: value 0 with last 2^32 - 2 gives
        // 2^31 - 1, lost at a threshold of 2^31 - 1, not at 2^31 - 2.
        let mut s = LossState { state: 1, last: u32::MAX - 1 };
        assert!(lost(&LossParams::random((1 << 31) - 1, half), &mut s, &mut || 0));
        let mut s = LossState { state: 1, last: u32::MAX - 1 };
        assert!(!lost(&LossParams::random((1 << 31) - 2, half), &mut s, &mut || 0));
    }

    #[test]
    fn gemodel_moves_on_the_first_draw_and_decides_on_the_second_by_the_old_state() {
        let p = LossParams::gemodel(100, 200, 300, 400); // p, r, h, k1
        // Good: first draw < p moves to bad; second draw < k1 loses.
        assert_eq!(step(&p, GE_GOOD, &[99, 399]), (true, GE_BAD, 2));
        assert_eq!(step(&p, GE_GOOD, &[100, 400]), (false, GE_GOOD, 2), "both compares are strict");
        assert_eq!(step(&p, GE_GOOD, &[0, u32::MAX]), (false, GE_BAD, 2), "moving to bad does not lose this packet");
        assert_eq!(step(&p, GE_GOOD, &[u32::MAX, 0]), (true, GE_GOOD, 2));
        // Bad: first draw < r moves to good; second draw > h loses (in the bad state's terms).
        assert_eq!(step(&p, GE_BAD, &[199, 301]), (true, GE_GOOD, 2));
        assert_eq!(step(&p, GE_BAD, &[200, 300]), (false, GE_BAD, 2), "a draw equal to h is kept");
        assert_eq!(step(&p, GE_BAD, &[u32::MAX, 0]), (false, GE_BAD, 2));
        // A zeroed state is the starting state; an unknown one draws nothing and loses nothing.
        assert_eq!(step(&p, 0, &[99, 399]), (true, GE_BAD, 2));
        assert_eq!(step(&p, 3, &[]), (false, 3, 0));
    }

    #[test]
    fn four_state_follows_the_kernels_thresholds_in_order() {
        // p13 = 1000, p31 = 2000, p32 = 500, p23 = 300, p14 = 100.
        let p = LossParams::four_state(1000, 2000, 500, 300, 100);
        // From 1: [0, 100) → 4 (isolated loss), [100, 1100) → 3 (burst), else stay.
        assert_eq!(step(&p, S4_GAP_RX, &[99]), (true, S4_GAP_LOSS, 1));
        assert_eq!(step(&p, S4_GAP_RX, &[100]), (true, S4_BURST_LOSS, 1));
        assert_eq!(step(&p, S4_GAP_RX, &[1099]), (true, S4_BURST_LOSS, 1));
        assert_eq!(step(&p, S4_GAP_RX, &[1100]), (false, S4_GAP_RX, 1));
        // From 2: [0, 300) → 3, else stay.
        assert_eq!(step(&p, S4_BURST_RX, &[299]), (true, S4_BURST_LOSS, 1));
        assert_eq!(step(&p, S4_BURST_RX, &[300]), (false, S4_BURST_RX, 1));
        // From 3: [0, 500) → 2, [500, 2500) → 1, else stay lost.
        assert_eq!(step(&p, S4_BURST_LOSS, &[499]), (false, S4_BURST_RX, 1));
        assert_eq!(step(&p, S4_BURST_LOSS, &[500]), (false, S4_GAP_RX, 1));
        assert_eq!(step(&p, S4_BURST_LOSS, &[2499]), (false, S4_GAP_RX, 1));
        assert_eq!(step(&p, S4_BURST_LOSS, &[2500]), (true, S4_BURST_LOSS, 1));
        // From 4: back to 1, kept, and the draw is still taken.
        assert_eq!(step(&p, S4_GAP_LOSS, &[0]), (false, S4_GAP_RX, 1));
        // A zeroed state is state 1; an unknown one takes its draw and loses nothing.
        assert_eq!(step(&p, 0, &[99]), (true, S4_GAP_LOSS, 1));
        assert_eq!(step(&p, 9, &[0]), (false, 9, 1));
        // p13 + p14 past 100% wraps as the kernel's u32 sum does: (2^32 - 11) + 20 = 9 (mod 2^32),
        // so only draws below p14 lose.
        let wrapped = LossParams::four_state(u32::MAX - 10, 0, 0, 0, 20);
        assert_eq!(step(&wrapped, S4_GAP_RX, &[19]), (true, S4_GAP_LOSS, 1));
        assert_eq!(step(&wrapped, S4_GAP_RX, &[20]), (false, S4_GAP_RX, 1));
        assert_eq!(step(&wrapped, S4_GAP_RX, &[5]), (true, S4_GAP_LOSS, 1));
    }

    #[test]
    fn an_unknown_model_loses_nothing_and_draws_nothing() {
        let p = LossParams { model: 7, loss: u32::MAX, a1: u32::MAX, ..Default::default() };
        assert_eq!(step(&p, 1, &[]), (false, 1, 0));
        assert_eq!(expectation(&p).loss, 0.0);
    }

    /// The first 64 decisions from seed 42 (1 = lost, packet 0 first), from a separate C
    /// implementation of the kernel's prandom_seed_state, prandom_u32_state, get_crandom,
    /// loss_gilb_ell and loss_4state compiled with gcc.
    #[test]
    fn seeded_decisions_match_an_independent_c_implementation() {
        let cases: [(LossParams, &str); 4] = [
            (LossParams::random(pct(30.0), 0), "0111111001010110000000000001000000010111001110010110011010000000"),
            (LossParams::random(pct(30.0), pct(50.0)), "0111111111000110000000000000000000000111000110000110000000000000"),
            (
                LossParams::gemodel(pct(10.0), pct(40.0), u32::MAX - pct(80.0), pct(5.0)),
                "0000000000000100000010001000000000000000000000000000010000001000",
            ),
            (
                LossParams::four_state(pct(10.0), pct(40.0), pct(20.0), pct(30.0), pct(5.0)),
                "0001010001100100000000000001000000000101110100000100010000000000",
            ),
        ];
        for (p, want) in cases {
            let mut prng = Prng::seeded(42);
            let mut s = LossState::start(0x1234_5678);
            let got: std::string::String = (0..64).map(|_| if lost_seeded(&p, &mut s, &mut prng) { '1' } else { '0' }).collect();
            assert_eq!(got, want, "{p:?}");
        }
    }

    // --- The 0% and 100% edges ---

    #[test]
    fn zero_and_hundred_percent() {
        let n = 100_000;
        let count = |p: &LossParams| run(p, 99, n).iter().filter(|&&l| l).count();
        assert_eq!(count(&LossParams::random(0, 0)), 0);
        assert_eq!(count(&LossParams::random(u32::MAX, 0)), n);
        assert_eq!(count(&LossParams::random(u32::MAX, pct(50.0))), n);
        assert_eq!(count(&LossParams::gemodel(0, 0, 0, 0)), 0, "never leaves good, never loses there");
        assert_eq!(count(&LossParams::gemodel(u32::MAX, 0, u32::MAX, 0)), 0, "bad state with 1-h = 0%");
        assert_eq!(count(&LossParams::four_state(0, 0, 0, 0, 0)), 0);
        // gemodel 100% 0% 100% 0%: the first packet arrives in the good state (1-k = 0: kept); from
        // then on the bad state loses every draw above h = 0, i.e. all but a draw of exactly 0.
        assert_eq!(count(&LossParams::gemodel(u32::MAX, 0, 0, 0)), n - 1);
        // state 100%: p13 sends every draw but u32::MAX into the burst, p31 = p32 = 0 keeps it there.
        assert_eq!(count(&LossParams::four_state(u32::MAX, 0, 0, 0, 0)), n);
        // Independent losses only (p14 = 100%): lost, back to 1, lost...: every other packet.
        let alternate = run(&LossParams::four_state(0, 0, 0, 0, u32::MAX), 99, 10);
        assert_eq!(alternate, [true, false, true, false, true, false, true, false, true, false]);
        for p in [LossParams::random(0, 0), LossParams::gemodel(0, 0, u32::MAX, 0), LossParams::four_state(0, 0, 0, 0, 0)] {
            assert_eq!(expectation(&p), Expectation { loss: 0.0, mean_burst: 0.0 });
        }
        let all = expectation(&LossParams::random(u32::MAX, 0));
        assert_eq!((all.loss, all.mean_burst), (1.0, f64::INFINITY));
        let e = expectation(&LossParams::four_state(u32::MAX, 0, 0, 0, 0));
        assert!(close(e.loss, 1.0, 1e-9) && e.mean_burst.is_infinite(), "{e:?}");
    }

    #[test]
    fn correlation_zero_is_plain_bernoulli() {
        let threshold = pct(12.5);
        let p = LossParams::random(threshold, 0);
        let mut prng = Prng::seeded(5);
        let mut reference = Prng::seeded(5);
        let mut s = LossState::start(0xdead_beef);
        for _ in 0..200_000 {
            assert_eq!(lost_seeded(&p, &mut s, &mut prng), reference.next_u32() <= threshold);
        }
        assert_eq!(s.last, 0xdead_beef, "the correlated generator is not used");
        let e = expectation(&p);
        let q = (threshold as f64 + 1.0) / 4_294_967_296.0;
        assert_eq!(e.loss, q);
        assert!(close(e.mean_burst, 1.0 / (1.0 - q), 1e-12));
    }

    // --- Rates and bursts over many seeded draws ---

    /// sigma of a loss-rate estimate over `n` packets for a 0/1 sequence whose asymptotic variance
    /// per packet is `var`.
    fn sigma(var: f64, n: usize) -> f64 {
        (var / n as f64).sqrt()
    }

    /// Checks a run of `n` packets against the model's expectation and returns (rate, burst).
    fn check_run(p: &LossParams, seed: u64, n: usize, var: f64) -> (f64, f64) {
        let e = expectation(p);
        let (rate, burst, bursts) = measure(&run(p, seed, n));
        let tol = 4.5 * sigma(var, n);
        assert!(close(rate, e.loss, tol), "{p:?}: rate {rate} vs {} (4.5 sigma = {tol})", e.loss);
        assert!(close(burst, e.mean_burst, 0.03 * e.mean_burst), "{p:?}: burst {burst} vs {}", e.mean_burst);
        assert!(bursts > 10_000, "{bursts} bursts is too few to judge the mean");
        (rate, burst)
    }

    #[test]
    fn random_loss_rate_and_bursts() {
        let p = LossParams::random(pct(30.0), 0);
        let q = 0.3;
        // Bernoulli: variance q (1 - q), bursts geometric with mean 1 / (1 - q).
        let e = expectation(&p);
        assert!(close(e.loss, q, 1e-9) && close(e.mean_burst, 1.0 / 0.7, 1e-8), "{e:?}");
        check_run(&p, 1, 1_000_000, q * (1.0 - q));
    }

    /// Gilbert-Elliott's loss-rate variance, derived for a two-state chain with eigenvalue
    /// lambda = 1 - p - r: Var = P(1-P) + 2 piG piB (lG - lB)^2 lambda / (1 - lambda).
    fn gemodel_variance(p: f64, r: f64, lost_good: f64, lost_bad: f64) -> f64 {
        let (g, b) = (r / (p + r), p / (p + r));
        let loss = g * lost_good + b * lost_bad;
        let lambda = 1.0 - p - r;
        loss * (1.0 - loss) + 2.0 * g * b * (lost_good - lost_bad).powi(2) * lambda / (1.0 - lambda)
    }

    #[test]
    fn gemodel_rate_and_bursts() {
        // tc: gemodel 5% 30% 90% 2% (1-h = 90%: h = u32::MAX - rint(0.9 u32::MAX)).
        let p = LossParams::gemodel(pct(5.0), pct(30.0), u32::MAX - pct(90.0), pct(2.0));
        // By hand: piB = 0.05 / 0.35 = 1/7; loss = 6/7 * 0.02 + 1/7 * 0.9 = 1.02/7.
        // Burst starts: 6/7 * 0.98 * (0.95 * 0.02 + 0.05 * 0.9) + 1/7 * 0.1 * (0.3 * 0.02 + 0.7 * 0.9)
        //             = (5.88 * 0.064 + 0.1 * 0.636) / 7 = 0.43992 / 7; mean burst 1.02 / 0.43992.
        let e = expectation(&p);
        assert!(close(e.loss, 1.02 / 7.0, 1e-8), "{e:?}");
        assert!(close(e.mean_burst, 1.02 / 0.43992, 1e-7), "{e:?}");
        check_run(&p, 2, 2_000_000, gemodel_variance(0.05, 0.3, 0.02, 0.9));
        // tc's gemodel P alone: r = 1 - p, 1-h = 100%, 1-k = 0%: the state is drawn afresh for
        // each packet, so losses are Bernoulli(p): rate p, bursts 1 / (1 - p).
        let simple = LossParams::gemodel(pct(20.0), pct(80.0), 0, 0);
        let e = expectation(&simple);
        assert!(close(e.loss, 0.2, 1e-8) && close(e.mean_burst, 1.25, 1e-7), "{e:?}");
        check_run(&simple, 3, 1_000_000, 0.2 * 0.8);
    }

    /// Asymptotic variance of the 4-state chain's loss indicator f = 1{state in {3, 4}}:
    /// 2 <fbar, Z fbar>_pi - <fbar, fbar>_pi with Z = (I - M + 1 pi)^-1.
    fn four_state_variance(m: &[[f64; 4]; 4], pi: &[f64; 4]) -> f64 {
        let loss = pi[2] + pi[3];
        let fbar = [-loss, -loss, 1.0 - loss, 1.0 - loss];
        let mut a = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                a[i][j] = if i == j { 1.0 } else { 0.0 } - m[i][j] + pi[j];
            }
        }
        let g = solve(a, fbar);
        (0..4).map(|i| pi[i] * fbar[i] * (2.0 * g[i] - fbar[i])).sum()
    }

    #[test]
    fn four_state_rate_and_bursts() {
        // tc: state 3% 40% 10% 20% 2% (p13 p31 p32 p23 p14).
        let p = LossParams::four_state(pct(3.0), pct(40.0), pct(10.0), pct(20.0), pct(2.0));
        // By hand, with x_i the stationary weights: x4 = 0.02 x1; x2 = 0.1 x3 / 0.2 = x3 / 2;
        // x3 (0.4 + 0.1) = 0.03 x1 + 0.2 x2 → 0.4 x3 = 0.03 x1 → x3 = 0.075 x1, x2 = 0.0375 x1.
        // Total 1.1325 x1; loss = (0.075 + 0.02) / 1.1325.
        // Bursts start from 1 (0.05 x1) and from 2 (0.2 x2 = 0.0075 x1): 0.0575 / 1.1325.
        let e = expectation(&p);
        assert!(close(e.loss, 0.095 / 1.1325, 1e-8), "{e:?}");
        assert!(close(e.mean_burst, 0.095 / 0.0575, 1e-7), "{e:?}");
        let m = four_state_matrix(&p);
        let pi = long_run(&m);
        check_run(&p, 4, 2_000_000, four_state_variance(&m, &pi));
        // tc's state P13 alone: p31 = 1 - p13, p32 = 0, p23 = 100%, p14 = 0: Bernoulli(p13).
        let bernoulli = LossParams::four_state(pct(15.0), pct(85.0), 0, u32::MAX, 0);
        let e = expectation(&bernoulli);
        assert!(close(e.loss, 0.15, 1e-8) && close(e.mean_burst, 1.0 / 0.85, 1e-7), "{e:?}");
        check_run(&bernoulli, 5, 1_000_000, 0.15 * 0.85);
    }

    #[test]
    fn four_state_long_run_with_unreachable_and_transient_states() {
        // (Thresholds are fractions of 2^32 - 1 over 2^32, so the weights differ from the round
        // numbers by about 1e-10.) p32 = 0: state 2 is never reached, and p23 must not matter.
        let p = LossParams::four_state(pct(10.0), pct(50.0), 0, pct(70.0), 0);
        let pi = long_run(&four_state_matrix(&p));
        // 1 → 3 at 0.1, 3 → 1 at 0.5: x3 = 0.2 x1.
        assert!(close(pi[0], 1.0 / 1.2, 1e-9) && pi[1] == 0.0 && close(pi[2], 0.2 / 1.2, 1e-9), "{pi:?}");
        // p31 = 0, p32 > 0: 1 and 4 are transient, the chain ends in {2, 3}: x2 0.3 = x3 0.5.
        let p = LossParams::four_state(pct(10.0), 0, pct(50.0), pct(30.0), pct(5.0));
        let pi = long_run(&four_state_matrix(&p));
        assert!(close(pi[0], 0.0, 1e-9) && close(pi[3], 0.0, 1e-9), "{pi:?}");
        assert!(close(pi[1], 0.5 / 0.8, 1e-9) && close(pi[2], 0.3 / 0.8, 1e-9), "{pi:?}");
        assert!(close(expectation(&p).loss, 0.375, 1e-9));
    }

    // --- netem's correlated random loss ---

    #[test]
    fn the_correlated_generators_distribution_has_the_right_moments() {
        // X = (1-c) U + c X': mean 1/2, variance (1-c)^2 / 12 / (1 - c^2) = (1-c) / (12 (1+c)).
        for c in [0.25, 0.5, 0.9] {
            let cdf = CrandomCdf::new(c);
            let n = 100_000;
            let (mut mean, mut second) = (0.0, 0.0);
            for i in 0..n {
                // E[X] = integral of (1 - F), E[X^2] = integral of 2x (1 - F).
                let x = (i as f64 + 0.5) / n as f64;
                let tail = 1.0 - cdf.at(x);
                mean += tail / n as f64;
                second += 2.0 * x * tail / n as f64;
            }
            let var = second - mean * mean;
            assert!(close(mean, 0.5, 1e-6), "c {c}: mean {mean}");
            assert!(close(var, (1.0 - c) / (12.0 * (1.0 + c)), 1e-6), "c {c}: variance {var}");
            assert!(close(cdf.at(0.5), 0.5, 1e-9), "symmetric about 1/2");
        }
    }

    #[test]
    fn correlated_random_loss_rate_and_bursts() {
        // tc: loss random 30% 50%.
        let p = LossParams::random(pct(30.0), pct(50.0));
        let e = expectation(&p);
        // Far below the nominal 30%: the draws cluster around the middle.
        assert!(e.loss > 0.10 && e.loss < 0.13, "{e:?}");
        // The indicator sequence is correlated; sigma by batch means (1000 batches of 2000: far
        // longer than the correlation, which decays as 0.5^k).
        let n = 2_000_000;
        let d = run(&p, 6, n);
        let batch = 2000;
        let means: Vec<f64> = d.chunks(batch).map(|c| c.iter().filter(|&&l| l).count() as f64 / batch as f64).collect();
        let m = means.iter().sum::<f64>() / means.len() as f64;
        let var_batch = means.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (means.len() - 1) as f64;
        check_run(&p, 6, n, var_batch * batch as f64);
        // Weaker correlation, other threshold: the same checks.
        let p = LossParams::random(pct(10.0), pct(20.0));
        let d = run(&p, 7, n);
        let means: Vec<f64> = d.chunks(batch).map(|c| c.iter().filter(|&&l| l).count() as f64 / batch as f64).collect();
        let m = means.iter().sum::<f64>() / means.len() as f64;
        let var_batch = means.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (means.len() - 1) as f64;
        check_run(&p, 7, n, var_batch * batch as f64);
        // 100% correlation: the starting value decides every packet.
        let stuck = LossParams::random(pct(30.0), u32::MAX);
        let mut s = LossState::start(pct(30.0));
        let mut prng = Prng::seeded(8);
        assert!((0..1000).all(|_| lost_seeded(&stuck, &mut s, &mut prng)));
        let mut s = LossState::start(pct(30.0) + 1);
        assert!((0..1000).all(|_| !lost_seeded(&stuck, &mut s, &mut prng)));
    }
}
