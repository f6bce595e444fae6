//! Steady-state probes: an HTTP GET, a TCP connect or a command, started every `every` from a
//! thread of their own (so a slow probe never delays the experiment's clock), each attempt timed
//! and run on a thread of its own: an attempt that hangs until its timeout does not hold back the
//! next ones, so a probe keeps its rate while the service is slow, as real clients do (up to
//! [`MAX_IN_FLIGHT`] attempts at once).

use std::{
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::threshold::{Sample, quantile};

/// What a probe does.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// GET the URL: success is a 2xx answer within the timeout.
    Http(String),
    /// Connect: success is an established connection within the timeout.
    Tcp(SocketAddr),
    /// Run the argv: success is exit status 0 within the timeout (killed after it).
    Command(Vec<String>),
}

impl Check {
    pub fn describe(&self) -> String {
        match self {
            Check::Http(u) => format!("GET {u}"),
            Check::Tcp(a) => format!("TCP connect {a}"),
            Check::Command(argv) => argv.join(" "),
        }
    }

    /// One attempt: Ok, or the reason it failed.
    fn attempt(&self, timeout: Duration, http: &ureq::Agent) -> Result<(), String> {
        match self {
            Check::Http(url) => {
                let mut resp = http.get(url).call().map_err(|e| e.to_string())?;
                // The whole answer, so the time includes the body.
                resp.body_mut().read_to_vec().map_err(|e| e.to_string())?;
                Ok(())
            }
            Check::Tcp(addr) => TcpStream::connect_timeout(addr, timeout).map(drop).map_err(|e| e.to_string()),
            Check::Command(argv) => {
                let mut child = Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
                let start = Instant::now();
                loop {
                    if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                        return if status.success() { Ok(()) } else { Err(format!("exited with {status}")) };
                    }
                    if start.elapsed() >= timeout {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err("timed out".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

/// One attempt's outcome.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Seconds since the experiment started, when the attempt began.
    pub t: f64,
    pub ok: bool,
    pub ms: f64,
    pub error: Option<String>,
}

/// The attempts over a span of time, as a [`Sample`] (latency over all attempts, failures at
/// the time they took to fail).
pub fn sample(attempts: &[Attempt], secs: f64) -> Sample {
    let mut ms: Vec<f64> = attempts.iter().map(|a| a.ms).collect();
    ms.sort_by(f64::total_cmp);
    let errors = attempts.iter().filter(|a| !a.ok).count() as u64;
    let count = attempts.len() as u64;
    Sample {
        count,
        errors,
        rate: (count - errors) as f64 / secs.max(1e-9),
        error_rate: if count == 0 { 0.0 } else { 100.0 * errors as f64 / count as f64 },
        p50_ms: quantile(&ms, 0.5),
        p90_ms: quantile(&ms, 0.9),
        p99_ms: quantile(&ms, 0.99),
    }
}

/// The most attempts of one probe that run at once; past it, the next attempt waits for one to
/// end (a probe every 10 ms with a 2 s timeout against a hung service would otherwise make 200).
pub const MAX_IN_FLIGHT: usize = 64;

/// A probe running in its thread until dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Starts probing now. `origin` is the experiment's start; `bound` the longest it may run.
    pub fn start(check: Check, every: Duration, timeout: Duration, origin: Instant, bound: Duration) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let http: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into();
            let check = Arc::new(check);
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) && origin.elapsed() < bound {
                if in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (check, http, a, in_flight) = (check.clone(), http.clone(), a.clone(), in_flight.clone());
                workers.push(std::thread::spawn(move || {
                    let begun = Instant::now();
                    let result = check.attempt(timeout, &http);
                    let attempt = Attempt {
                        t: begun.duration_since(origin).as_secs_f64(),
                        ok: result.is_ok(),
                        ms: begun.elapsed().as_secs_f64() * 1e3,
                        error: result.err(),
                    };
                    a.lock().unwrap_or_else(|e| e.into_inner()).push(attempt);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }));
                workers.retain(|w| !w.is_finished());
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    // Behind (attempts at the limit): start again from now rather than in a burst.
                    next = now;
                }
            }
            // Each attempt ends within its timeout.
            for w in workers {
                let _ = w.join();
            }
        });
        Running { stop, attempts, thread: Some(thread) }
    }

    /// The attempts finished since the last call.
    pub fn take(&self) -> Vec<Attempt> {
        std::mem::take(&mut *self.attempts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, getsockname, socket};

    use super::*;

    #[test]
    fn a_sample_of_attempts() {
        let a = |ok, ms| Attempt { t: 0.0, ok, ms, error: None };
        let s = sample(&[a(true, 1.0), a(true, 3.0), a(false, 100.0), a(true, 2.0)], 2.0);
        assert_eq!((s.count, s.errors), (4, 1));
        assert_eq!(s.rate, 1.5);
        assert_eq!(s.error_rate, 25.0);
        assert_eq!((s.p50_ms, s.p99_ms), (2.0, 100.0));
        assert_eq!(sample(&[], 1.0).error_rate, 0.0);
    }

    #[test]
    fn tcp_and_command_probes_succeed_and_fail() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http: ureq::Agent = ureq::Agent::config_builder().build().into();
        let t = Duration::from_secs(2);
        assert!(Check::Tcp(listener.local_addr().unwrap()).attempt(t, &http).is_ok());
        // A port bound but not listening refuses connections, and stays this test's: a listener's
        // port, once closed, could be taken by another test running beside this one.
        let held = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
        bind(held.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        let closed: SockaddrIn = getsockname(held.as_raw_fd()).unwrap();
        assert!(Check::Tcp(SocketAddr::from(std::net::SocketAddrV4::from(closed))).attempt(t, &http).is_err());
        assert!(Check::Command(vec!["true".into()]).attempt(t, &http).is_ok());
        assert!(Check::Command(vec!["false".into()]).attempt(t, &http).is_err());
        let slow = Check::Command(vec!["sleep".into(), "5".into()]);
        let start = Instant::now();
        assert_eq!(slow.attempt(Duration::from_millis(100), &http), Err("timed out".into()));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_slow_attempt_does_not_hold_back_the_next_ones() {
        // Attempts of half a second every 50 ms for 1.2 s: one at a time, two or three would
        // start; each on its own, about 14 start by 0.7 s and end within the run.
        let origin = Instant::now();
        let sleepy = Check::Command(vec!["sleep".into(), "0.5".into()]);
        let mut probe = Running::start(sleepy, Duration::from_millis(50), Duration::from_secs(2), origin, Duration::from_millis(1200));
        std::thread::sleep(Duration::from_millis(1300));
        probe.stop();
        let attempts = probe.take();
        assert!(attempts.iter().all(|a| a.ok && a.ms >= 500.0), "{attempts:?}");
        assert!(attempts.len() >= 6, "only {} attempts in 1.2 s, 50 ms apart", attempts.len());
        let mut starts: Vec<f64> = attempts.iter().map(|a| a.t).collect();
        starts.sort_by(f64::total_cmp);
        assert!(starts.windows(2).all(|w| w[1] - w[0] < 0.4), "attempts waited for each other: {starts:?}");
    }
}
