//! `chaos workload retry-client`: callers of an rr-server that retry as real clients do, for the
//! retry-storm experiment. Requests arrive at --rate per second whatever happened to the earlier
//! ones (open loop: a fleet of callers), each in a thread of its own (at most --concurrency at
//! once). A failed try is retried by --policy:
//! - `immediate`: at once, up to --attempts tries;
//! - `backoff`: after a random wait of up to --backoff·2^k ("full jitter"), up to --attempts
//!   tries, and only while a token bucket allows, as gRPC throttles retries (10 tokens; a failed
//!   try takes one, a success gives back 0.1; retries stop below half);
//! - `breaker`: one try per request, and a circuit breaker that stops trying for a second after 5
//!   failures in a row.
//!
//! Each try is a connect(2) call, so the kernel counts a client's load per cgroup.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;

use chaos_common::loss::Prng;

use super::http_service::Breaker;

#[derive(Args, Debug, Clone)]
pub struct RetryClientArgs {
    #[arg(long)]
    pub to: SocketAddr,
    #[arg(long, value_parser = ["immediate", "backoff", "breaker"])]
    pub policy: String,
    /// Requests per second.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Requests in flight at most (more are dropped, not queued).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Tries per request (immediate, backoff).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// How long one try may take.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The first backoff's upper bound; each later one doubles it.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max: Duration,
}

/// gRPC's retry throttling: retries only while the tokens are above half of the maximum.
#[derive(Debug)]
struct Throttle {
    tokens: f64,
}

impl Throttle {
    const MAX: f64 = 10.0;

    fn record(&mut self, ok: bool) {
        self.tokens = if ok { (self.tokens + 0.1).min(Self::MAX) } else { (self.tokens - 1.0).max(0.0) };
    }

    fn may_retry(&self) -> bool {
        self.tokens > Self::MAX / 2.0
    }
}

/// What the policies share across requests.
struct Shared {
    args: RetryClientArgs,
    breaker: Mutex<Breaker>,
    throttle: Mutex<Throttle>,
    in_flight: AtomicU32,
}

pub fn run(a: RetryClientArgs) -> Result<()> {
    let start = Instant::now();
    let every = Duration::from_secs(1) / a.rate;
    let shared = Arc::new(Shared { args: a.clone(), breaker: Mutex::default(), throttle: Mutex::new(Throttle { tokens: Throttle::MAX }), in_flight: AtomicU32::new(0) });
    super::ready();
    let mut next = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < a.max {
        if shared.in_flight.load(Ordering::Relaxed) < a.concurrency {
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let s = shared.clone();
            let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            std::thread::spawn(move || {
                request(&s, &mut Prng::seeded(seed));
                s.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        n += 1;
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// A random wait in [0, max): the project's taus113 generator (netem's), seeded per request.
fn jitter(prng: &mut Prng, max: Duration) -> Duration {
    let max_ns = max.as_nanos().min(u128::from(u32::MAX)) as u64;
    Duration::from_nanos((u64::from(prng.next_u32()) * max_ns) >> 32)
}

/// One request under the policy: whether it got an answer.
fn request(s: &Shared, prng: &mut Prng) -> bool {
    let a = &s.args;
    let once = || super::rr_once(a.to, a.timeout).is_ok();
    let throttle = || s.throttle.lock().unwrap_or_else(|e| e.into_inner());
    match a.policy.as_str() {
        "immediate" => (0..a.attempts).any(|_| once()),
        "backoff" => {
            for k in 0..a.attempts {
                let ok = once();
                throttle().record(ok);
                if ok {
                    return true;
                }
                if k + 1 == a.attempts || !throttle().may_retry() {
                    break;
                }
                std::thread::sleep(jitter(prng, a.backoff * 2u32.pow(k.min(16))));
            }
            false
        }
        _ => {
            let breaker = || s.breaker.lock().unwrap_or_else(|e| e.into_inner());
            if !breaker().allow(Instant::now()) {
                return false;
            }
            let ok = once();
            breaker().record(ok, 5, Duration::from_secs(1), Instant::now());
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_stops_retries_after_failures_and_earns_them_back() {
        let mut t = Throttle { tokens: Throttle::MAX };
        assert!(t.may_retry());
        for _ in 0..5 {
            t.record(false);
        }
        assert!(!t.may_retry(), "5 failures take half the bucket");
        t.record(true);
        assert!(t.may_retry(), "a success earns a retry back");
        t.record(false);
        assert!(!t.may_retry());
        for _ in 0..20 {
            t.record(false);
        }
        assert_eq!(t.tokens, 0.0, "the bucket does not go below empty");
    }
}
