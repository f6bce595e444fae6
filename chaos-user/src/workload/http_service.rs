//! `chaos workload http-service`: the small HTTP service of the experiments. It answers GET; with
//! an upstream (an rr-server) for the path, each request first makes one call there, and the
//! service's resilience is set by flags: a timeout on the call, a fallback answer when it fails, a
//! circuit breaker that stops calling a failing upstream for a while, and bulkheads (a worker pool
//! per upstream instead of one shared pool). The experiments compare these settings under the
//! same fault.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct HttpServiceArgs {
    #[arg(long)]
    pub bind: SocketAddr,
    /// Make one call to the rr-server here per request (of any path without a --route).
    #[arg(long)]
    pub upstream: Option<SocketAddr>,
    /// GET PATH calls the rr-server at ADDR (PATH=ADDR; repeatable).
    #[arg(long, value_name = "PATH=ADDR", value_parser = parse_route)]
    pub route: Vec<(String, SocketAddr)>,
    /// A pool of --workers per route (and one for the rest) instead of one pool for all: a slow
    /// upstream then holds only its own route's workers.
    #[arg(long)]
    pub bulkhead: bool,
    /// How long the upstream call may take.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// When the upstream call fails (or the breaker is open), answer 200 "fallback" instead of 503.
    #[arg(long)]
    pub fallback: bool,
    /// Open the circuit breaker after this many failed upstream calls in a row.
    #[arg(long)]
    pub breaker: Option<u32>,
    /// How long an open breaker skips the upstream before one trial call (half-open).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub open_for: Duration,
    /// Per request, write a line at the end of this file with pwrite(2) and fdatasync it (a
    /// journal); a failed write gives 503, or with --fallback 200 "buffered" (kept in memory).
    #[arg(long, value_name = "PATH")]
    pub write: Option<std::path::PathBuf>,
    /// Requests served at once (per pool).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Exit after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max: Duration,
}

/// A circuit breaker: closed (calls go through), open until an instant (calls skipped), and
/// half-open once that passed (one trial call; success closes it, failure opens it again).
#[derive(Debug, Default)]
pub(super) struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    trial: bool,
}

impl Breaker {
    /// Whether this request may call the upstream.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(t) if now >= t && !self.trial => {
                self.trial = true;
                true
            }
            Some(_) => false,
        }
    }

    pub(super) fn record(&mut self, ok: bool, threshold: u32, open_for: Duration, now: Instant) {
        self.trial = false;
        if ok {
            self.failures = 0;
            self.open_until = None;
        } else {
            self.failures += 1;
            if self.failures >= threshold || self.open_until.is_some() {
                self.open_until = Some(now + open_for);
            }
        }
    }
}

fn parse_route(s: &str) -> Result<(String, SocketAddr), String> {
    let (path, addr) = s.split_once('=').ok_or_else(|| format!("'{s}' is not PATH=ADDR"))?;
    Ok((path.to_string(), addr.parse().map_err(|e| format!("'{addr}': {e}"))?))
}

/// A worker pool's queue.
type Queue = Arc<Mutex<std::sync::mpsc::Receiver<tiny_http::Request>>>;

pub fn run(a: HttpServiceArgs) -> Result<()> {
    let server = tiny_http::Server::http(a.bind).map_err(|e| anyhow::anyhow!("binding {}: {e}", a.bind))?;
    let start = Instant::now();
    // Route i (and the default, last) with its own breaker.
    let mut routes: Vec<(String, Option<SocketAddr>)> = a.route.iter().map(|(p, u)| (p.clone(), Some(*u))).collect();
    routes.push(("*".into(), a.upstream));
    let breakers: Arc<Vec<Mutex<Breaker>>> = Arc::new(routes.iter().map(|_| Mutex::new(Breaker::default())).collect());
    let journal = match &a.write {
        Some(p) => {
            let f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(p).map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?;
            Some(Arc::new(Mutex::new((f, 0u64))))
        }
        None => None,
    };
    // One pool, or one per route: the pool a request goes to is its route's index (or 0).
    let pools = if a.bulkhead { routes.len() } else { 1 };
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..pools {
        let (tx, rx) = std::sync::mpsc::channel::<tiny_http::Request>();
        senders.push(tx);
        let queue: Queue = Arc::new(Mutex::new(rx));
        for _ in 0..a.workers {
            let (queue, breakers, a, journal, routes) = (queue.clone(), breakers.clone(), a.clone(), journal.clone(), routes.clone());
            workers.push(std::thread::spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(req) = next else { break };
                    let r = route_of(&routes, req.url());
                    let (code, body) = answer(&a, routes[r].1, &breakers[r], journal.as_deref());
                    let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
                }
            }));
        }
    }
    super::ready();
    while start.elapsed() < a.max {
        let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else { continue };
        let pool = if a.bulkhead { route_of(&routes, req.url()) } else { 0 };
        let _ = senders[pool].send(req);
    }
    drop(senders);
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    }
    Ok(())
}

/// The index of the route for `url` (the default, last, if none names its path).
fn route_of(routes: &[(String, Option<SocketAddr>)], url: &str) -> usize {
    let path = url.split('?').next().unwrap_or(url);
    routes.iter().position(|(p, _)| p == path).unwrap_or(routes.len() - 1)
}

/// The journal: the file and where its next line goes.
type Journal = Mutex<(std::fs::File, u64)>;

fn answer(a: &HttpServiceArgs, upstream: Option<SocketAddr>, breaker: &Mutex<Breaker>, journal: Option<&Journal>) -> (u16, &'static str) {
    if let Some(j) = journal {
        use std::os::unix::fs::FileExt;
        let line = b"order accepted\n";
        let mut j = j.lock().unwrap_or_else(|e| e.into_inner());
        let (file, end) = &mut *j;
        let written = file.write_all_at(line, *end).and_then(|_| file.sync_data());
        if written.is_ok() {
            *end += line.len() as u64;
        } else {
            return if a.fallback { (200, "buffered\n") } else { (503, "write failed\n") };
        }
    }
    let Some(upstream) = upstream else { return (200, "ok\n") };
    let failed = if a.fallback { (200, "fallback\n") } else { (503, "upstream failed\n") };
    let lock = || breaker.lock().unwrap_or_else(|e| e.into_inner());
    if a.breaker.is_some() && !lock().allow(Instant::now())
    {
        return failed;
    }
    let ok = super::rr_once(upstream, a.timeout).is_ok();
    if let Some(threshold) = a.breaker {
        lock().record(ok, threshold, a.open_for, Instant::now());
    }
    if ok { (200, "ok\n") } else { failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_skips_then_tries_once() {
        let mut b = Breaker::default();
        let t0 = Instant::now();
        let open = Duration::from_secs(2);
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.record(false, 3, open, t0);
        }
        assert!(!b.allow(t0 + Duration::from_secs(1)), "open: calls are skipped");
        assert!(b.allow(t0 + open), "half-open: one trial");
        assert!(!b.allow(t0 + open), "only one trial at a time");
        b.record(false, 3, open, t0 + open);
        assert!(!b.allow(t0 + open + Duration::from_secs(1)), "a failed trial opens it again");
        assert!(b.allow(t0 + open * 2));
        b.record(true, 3, open, t0 + open * 2);
        assert!(b.allow(t0 + open * 2) && b.allow(t0 + open * 2), "a good trial closes it");
    }
}
