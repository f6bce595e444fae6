//! `chaos workload http-client`: users of an HTTP service, for the experiments' load. Each of
//! --workers GETs --url, pauses --every, and again (each waits for its answer: a slow service
//! slows its users, as in life).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct HttpClientArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub every: Duration,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max: Duration,
}

pub fn run(a: HttpClientArgs) -> Result<()> {
    let start = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(a.timeout)).build().into();
    super::ready();
    let workers: Vec<_> = (0..a.workers)
        .map(|_| {
            let (a, agent) = (a.clone(), agent.clone());
            std::thread::spawn(move || {
                while start.elapsed() < a.max {
                    if let Ok(mut r) = agent.get(&a.url).call() {
                        let _ = r.body_mut().read_to_vec();
                    }
                    std::thread::sleep(a.every);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
    }
    Ok(())
}
