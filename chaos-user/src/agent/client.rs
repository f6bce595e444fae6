//! `chaos --agent ADDR apply|status|stop`: the same commands, done by an agent (hyper's HTTP/1
//! client over its unix socket, or TCP with a bearer token).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::SessionInfo;
use crate::{
    cli::{ApplyArgs, Command, StopArgs},
    error::{Error, Result},
    usage,
};

/// An agent: its unix socket, or `http://HOST:PORT`.
pub struct Client {
    addr: Addr,
    /// As the user gave it, for messages.
    shown: String,
    token: Option<String>,
}

enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

/// Runs a command through the agent at `addr`.
pub fn run(addr: &str, token_file: Option<&Path>, command: Command) -> Result<()> {
    let client = Client::new(addr, token_file)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    match command {
        Command::Apply(a) => rt.block_on(client.apply(a)),
        Command::Status { json } => rt.block_on(client.status(json)),
        Command::Stop(a) => rt.block_on(client.stop(a)),
        Command::Agent(_) => Err(usage!("--agent is for the client commands; `chaos agent` is the agent itself")),
        _ => Err(usage!("--agent works with apply, status and stop; run other commands without it")),
    }
}

impl Client {
    pub fn new(addr: &str, token_file: Option<&Path>) -> Result<Client> {
        let parsed = match addr.strip_prefix("http://") {
            Some(rest) => {
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(usage!("--agent {addr}: give a socket path or http://HOST:PORT"));
                }
                Addr::Tcp(authority.to_string())
            }
            None if addr.contains("://") => {
                return Err(usage!("--agent {addr}: give a socket path or http://HOST:PORT (https is not served)"));
            }
            None => Addr::Unix(PathBuf::from(addr)),
        };
        let token = token_file.map(super::read_token).transpose()?;
        Ok(Client { addr: parsed, shown: addr.to_string(), token })
    }

    /// One request on a connection of its own; the response with its body still to read.
    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = Request::builder().method(method).uri(path).header(header::HOST, "chaos-agent");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(anyhow::Error::from)?;
        let result = match &self.addr {
            Addr::Unix(p) => match tokio::net::UnixStream::connect(p).await {
                Ok(s) => exchange(TokioIo::new(s), req).await,
                Err(_) => return Err(self.absent()),
            },
            Addr::Tcp(a) => match tokio::net::TcpStream::connect(a.as_str()).await {
                Ok(s) => exchange(TokioIo::new(s), req).await,
                Err(_) => return Err(self.absent()),
            },
        };
        result.map_err(|e| Error::Other(anyhow::anyhow!("the agent at {}: {}", self.shown, crate::error::chain(&e))))
    }

    fn absent(&self) -> Error {
        Error::Other(anyhow::anyhow!("no agent at {}: is `chaos agent` running?", self.shown))
    }

    /// A request whose answer is one JSON value; an error answer becomes the error `chaos` would
    /// give locally (400/401/404 usage, 422 unsupported, others a failure).
    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Value> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("reading the agent's answer: {e}"))?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("the agent at {} answered {status} with no JSON: {e}", self.shown))?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value.get("error").and_then(Value::as_str).unwrap_or("the agent refused without a reason").to_string();
        Err(error_of(status, message))
    }

    async fn apply(&self, a: ApplyArgs) -> Result<()> {
        let s = &a.session;
        for (given, flag) in [(s.dry_run, "--dry-run"), (s.metrics.is_some(), "--metrics"), (s.otlp.is_some(), "--otlp"), (s.log_packets, "--log-packets")] {
            if given {
                return Err(usage!("{flag} is not available with --agent: run `chaos apply` on the host for it"));
            }
        }
        let text = std::fs::read_to_string(&a.file).map_err(|e| usage!("cannot read {}: {e}", a.file.display()))?;
        // Followed: Ctrl-C from here on stops the session, even one that is still starting.
        let signals = if a.detach { None } else { Some(Signals::register()?) };
        let body = serde_json::json!({ "name": a.file.display().to_string(), "faults": text });
        let info: SessionInfo = parse(self.call(Method::POST, "/v1/sessions", Some(body.to_string().into_bytes())).await?)?;
        if a.detach {
            eprintln!("chaos: injecting: session {} at the agent {} (`chaos --agent {} stop {}` ends it early)", info.id, self.shown, self.shown, info.id);
            return print(if s.json { serde_json::to_string(&info).map_err(anyhow::Error::from)? + "\n" } else { format!("{}\n", info.id) });
        }
        eprintln!(
            "chaos: injecting: session {} at the agent {} (Ctrl-C or `chaos --agent {} stop {}` ends it early)",
            info.id, self.shown, self.shown, info.id
        );
        let Some(signals) = signals else { return Ok(()) };
        let ended = self.follow(&info.id, signals).await?;
        if ended.exit_code != Some(0) {
            let message = ended.error.unwrap_or_else(|| format!("session {} ended without a summary", ended.id));
            return Err(match ended.exit_code {
                Some(crate::error::EXIT_USAGE) => Error::Usage(message),
                Some(crate::error::EXIT_UNSUPPORTED) => Error::Unsupported(message),
                _ => Error::Other(anyhow::anyhow!(message)),
            });
        }
        let summary = ended.summary.ok_or_else(|| anyhow::anyhow!("session {} ended without a summary", ended.id))?;
        if s.json {
            return print(summary.to_string() + "\n");
        }
        let summary: crate::report::Summary = serde_json::from_value(summary).map_err(|e| anyhow::anyhow!("the agent's summary: {e}"))?;
        print(summary.text())
    }

    /// Follows a session's counters stream to its end; Ctrl-C or SIGTERM stops the session
    /// through the agent instead. Returns the ended session.
    async fn follow(&self, id: &str, signals: Signals) -> Result<SessionInfo> {
        let Signals { mut int, mut term } = signals;
        let resp = self.send(Method::GET, &format!("/v1/sessions/{id}/counters?every=1s"), None).await?;
        if !resp.status().is_success() {
            return Err(error_of(resp.status(), format!("session {id}: the agent answered {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut last: Option<SessionInfo> = None;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = int.recv() => return self.stop_one(id).await,
                _ = term.recv() => return self.stop_one(id).await,
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        buf.extend_from_slice(&data);
                    }
                    while let Some(n) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=n).collect();
                        if let Ok(info) = serde_json::from_slice::<SessionInfo>(&line) {
                            last = Some(info);
                        }
                    }
                    if let Some(info) = last.take_if(|i| i.state == "ended") {
                        return Ok(info);
                    }
                }
                Some(Err(_)) | None => {
                    return Err(Error::Other(anyhow::anyhow!(
                        "the agent at {} went away while session {id} ran; its faults end at their deadline in the kernel",
                        self.shown
                    )));
                }
            }
        }
    }

    async fn stop_one(&self, id: &str) -> Result<SessionInfo> {
        parse(self.call(Method::DELETE, &format!("/v1/sessions/{id}"), None).await?)
    }

    async fn list(&self) -> Result<Vec<SessionInfo>> {
        let value = self.call(Method::GET, "/v1/sessions", None).await?;
        parse(value.get("sessions").cloned().unwrap_or(Value::Null))
    }

    async fn status(&self, json: bool) -> Result<()> {
        let sessions = self.list().await?;
        if json {
            return print(serde_json::json!({ "sessions": sessions }).to_string() + "\n");
        }
        print(status_text(&sessions))
    }

    async fn stop(&self, a: StopArgs) -> Result<()> {
        let ids: Vec<String> = match (a.id, a.all) {
            (_, true) => self.list().await?.into_iter().filter(|s| s.state == "injecting").map(|s| s.id).collect(),
            (Some(id), false) => vec![id],
            (None, false) => return Err(usage!("give a session id, or --all")),
        };
        if ids.is_empty() {
            eprintln!("chaos: no session is running at the agent {}", self.shown);
        }
        for id in ids {
            let started = std::time::Instant::now();
            let info = self.stop_one(&id).await?;
            eprintln!("chaos: stopped session {} (pid {}) in {:.2}s", info.id, info.pid, started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// SIGINT and SIGTERM, caught while a client follows a session.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime.
    fn register() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
        let term = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
        Ok(Signals { int, term })
    }
}

/// Sends one request on a fresh HTTP/1 connection.
async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> hyper::Result<hyper::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection is driven beside the request; it ends when the response body is read.
    tokio::spawn(conn);
    sender.send_request(req).await
}

fn error_of(status: StatusCode, message: String) -> Error {
    match status.as_u16() {
        400 | 401 | 404 | 413 => Error::Usage(message),
        422 => Error::Unsupported(message),
        _ => Error::Other(anyhow::anyhow!(message)),
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Other(anyhow::anyhow!("the agent's answer: {e}")))
}

/// Writes to stdout; a reader that has gone (`| head`) ends the output quietly.
fn print(out: String) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::from(e).context("writing the report").into()),
        _ => Ok(()),
    }
}

/// `chaos --agent ADDR status` as text: each session and its faults' counters.
pub fn status_text(sessions: &[SessionInfo]) -> String {
    let mut s = String::new();
    if sessions.is_empty() {
        s += "chaos: no session at this agent\n";
    }
    let num = |f: &Value, k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = |f: &Value, k: &str| f.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    for x in sessions {
        let owner = x.owner.as_deref().map(|o| format!(", for {o}")).unwrap_or_default();
        let state = match (&x.state[..], x.exit_code, &x.error) {
            ("ended", _, Some(e)) => format!("ended: {e}"),
            ("ended", _, None) => {
                let by = x.summary.as_ref().and_then(|s| s.get("ended_by")).and_then(Value::as_str).unwrap_or("?");
                format!("ended by {by}")
            }
            (state, _, _) => state.to_string(),
        };
        s += &format!("session {} ({}, pid {}{owner}): {state}\n", x.id, x.name, x.pid);
        for f in x.faults.as_array().into_iter().flatten() {
            let left = f.get("left_s").and_then(Value::as_f64).map(|l| format!("; {l:.0}s left")).unwrap_or_default();
            s += &format!(
                "  rule {} {} on {}: {}{left}; seen {}, matched {}, injected {}\n",
                num(f, "rule"),
                text(f, "kind"),
                text(f, "cgroup"),
                text(f, "description"),
                num(f, "seen"),
                num(f, "matched"),
                num(f, "injected")
            );
        }
    }
    s
}
