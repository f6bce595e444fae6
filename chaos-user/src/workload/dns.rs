//! The DNS workloads: a small authoritative server that answers every A and AAAA query with a
//! documentation address (never contacted), and a client that resolves a name through glibc's
//! `getaddrinfo`, as applications do, with a resolv.conf of its own.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::json;
use simple_dns::{
    CLASS, Packet, PacketFlag, QTYPE, ResourceRecord, TYPE,
    rdata::{A, AAAA, RData},
};

/// 192.0.2.1 and 2001:db8::1 (RFC 5737, RFC 3849): answers nobody sends traffic to.
const ANSWER_V4: u32 = 0xc000_0201;
const ANSWER_V6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0001;

/// Answers queries on `bind` until stdin closes or `max` passes; prints {"queries": {name: n}}.
pub fn server(bind: SocketAddr, max: Duration) -> Result<()> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::SeqCst);
    });
    super::ready();
    let (start, mut buf) = (Instant::now(), vec![0u8; 4096]);
    let mut queries = BTreeMap::<String, u64>::new();
    while start.elapsed() < max && !done.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(query) = Packet::parse(&buf[..n]) else { continue };
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
        for q in &query.questions {
            *queries.entry(q.qname.to_string().to_ascii_lowercase()).or_default() += 1;
            reply.questions.push(q.clone());
            let rdata = match q.qtype {
                QTYPE::TYPE(TYPE::A) => RData::A(A { address: ANSWER_V4 }),
                QTYPE::TYPE(TYPE::AAAA) => RData::AAAA(AAAA { address: ANSWER_V6 }),
                _ => continue,
            };
            reply.answers.push(ResourceRecord::new(q.qname.clone(), CLASS::IN, 60, rdata));
        }
        if let Ok(bytes) = reply.build_bytes_vec() {
            let _ = sock.send_to(&bytes, from);
        }
    }
    println!("{}", json!({ "queries": queries }));
    Ok(())
}

/// Resolves `name` `count` times with `getaddrinfo`; with `resolv_conf`, in a mount namespace of
/// its own where that file is /etc/resolv.conf. Prints {"lookups", "results": {outcome: n},
/// "max_ms"}; an outcome is "ok" or glibc's error ("EAI_AGAIN", "EAI_NONAME", ...).
pub fn resolve(name: &str, count: u64, resolv_conf: Option<&Path>) -> Result<()> {
    if let Some(conf) = resolv_conf {
        use nix::{
            mount::{MsFlags, mount},
            sched::{CloneFlags, unshare},
        };
        unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).context("making / private")?;
        mount(Some(conf), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {} on /etc/resolv.conf", conf.display()))?;
    }
    super::ready();
    let mut results = BTreeMap::<&'static str, u64>::new();
    let mut max = Duration::ZERO;
    for _ in 0..count {
        let t = Instant::now();
        let outcome = match dns_lookup::getaddrinfo(Some(name), None, None) {
            Ok(_) => "ok",
            Err(e) => eai_name(e.kind()),
        };
        max = max.max(t.elapsed());
        *results.entry(outcome).or_default() += 1;
    }
    println!("{}", json!({ "lookups": count, "results": results, "max_ms": max.as_secs_f64() * 1000.0 }));
    Ok(())
}

fn eai_name(kind: dns_lookup::LookupErrorKind) -> &'static str {
    use dns_lookup::LookupErrorKind as K;
    match kind {
        K::Again => "EAI_AGAIN",
        K::NoName => "EAI_NONAME",
        K::NoData => "EAI_NODATA",
        K::Fail => "EAI_FAIL",
        K::System | K::IO => "EAI_SYSTEM",
        _ => "EAI_OTHER",
    }
}
