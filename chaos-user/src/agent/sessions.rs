//! The sessions an agent holds for others. Each is a child process `chaos apply FILE --json`, so
//! the engine, its guardian and its kernel deadlines work exactly as for a user's own `chaos apply`,
//! and a crash of one session touches neither the agent nor the others.

use std::{
    collections::HashMap,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    sync::{oneshot, watch},
};

/// What to start: a fault file's text, named for the listing (and for its error messages).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub name: String,
    /// The fault file (TOML), as `chaos apply` reads it.
    pub faults: String,
    /// Who asked (e.g. "api" or "kubernetes:NAMESPACE/NAME"); only reported.
    #[serde(default)]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The engine's session id (as `chaos status` lists it).
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    /// The `chaos apply` process holding the session.
    pub pid: u32,
    /// "injecting" or "ended".
    pub state: String,
    pub exit_code: Option<i32>,
    /// The session's one-line error, when it ended with one.
    pub error: Option<String>,
    /// While injecting: its faults with live counters (`chaos status`'s fault entries); once
    /// ended: the summary's rules.
    pub faults: serde_json::Value,
    /// The `chaos apply --json` summary once the session ended.
    pub summary: Option<serde_json::Value>,
}

/// A failure with the HTTP status it maps to: 400 bad input, 404 no such session, 422 this
/// machine cannot, 500 anything else. The message is the one line `chaos` would print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// The HTTP status of a `chaos` exit code (2 usage, 3 unsupported, anything else a failure).
    pub fn status_of_exit(code: Option<i32>) -> u16 {
        match code {
            Some(crate::error::EXIT_USAGE) => 400,
            Some(crate::error::EXIT_UNSUPPORTED) => 422,
            _ => 500,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> ApiError {
        ApiError::new(ApiError::status_of_exit(Some(e.exit_code())), e.to_string())
    }
}

/// How long a session may take from its process starting to injecting (loading and verifying the
/// programs, attaching) before the agent gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits for a session's end to be recorded once `chaos stop`'s mechanism saw its
/// process gone, and for a process to end after SIGTERM (the fallback, and the agent's shutdown).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Ended sessions stay listed (with their summary) this long, and at most this many.
const KEEP_ENDED: Duration = Duration::from_secs(600);
const KEEP_ENDED_MAX: usize = 100;

/// The sessions of one agent.
pub struct Sessions {
    state_dir: PathBuf,
    spawner: OnceLock<Spawner>,
    held: Mutex<Vec<Arc<Held>>>,
    next_file: AtomicU64,
    /// This node's name, with --kubernetes: its sessions' `chaos apply` gets it as $NODE_NAME, to
    /// choose the pods a fault file names by name or label on this node.
    node: OnceLock<String>,
}

/// One session's process and what is known of it.
struct Held {
    name: String,
    owner: Option<String>,
    pid: u32,
    /// Set once the child says it injects.
    id: OnceLock<String>,
    end: Mutex<Option<Ended>>,
    /// Turns true when the process has exited and `end` is set.
    ended: watch::Sender<bool>,
    /// Asks the task that owns the process to SIGTERM it (the task knows whether it is reaped).
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

struct Ended {
    at: Instant,
    exit_code: Option<i32>,
    error: Option<String>,
    summary: Option<serde_json::Value>,
}

impl Sessions {
    /// Sessions whose fault files go in `state_dir`; the agent makes it with
    /// [`Sessions::make_state_dir`] when it starts.
    pub fn new(state_dir: PathBuf) -> Arc<Sessions> {
        Arc::new(Sessions { state_dir, spawner: OnceLock::new(), held: Mutex::new(Vec::new()), next_file: AtomicU64::new(0), node: OnceLock::new() })
    }

    /// Starts a session and returns once it injects, or with the error its `chaos apply` gave.
    pub async fn start(&self, req: StartRequest) -> Result<SessionInfo, ApiError> {
        if req.name.trim().is_empty() || req.name.contains('\n') || req.name.len() > 256 {
            return Err(ApiError::new(400, "a session's name must be one line of 1 to 256 characters"));
        }
        // A bad file is refused here, with the line `chaos apply NAME` prints, and nothing spawned.
        crate::faults::file_specs(Path::new(&req.name), &req.faults)?;
        let file = self.write_fault_file(&req.faults).map_err(|e| ApiError::new(500, format!("{e:#}")))?;
        let held = self.run(&req, file).await?;
        Ok(self.info(&held, &HashMap::new()))
    }

    /// Names this node to the sessions' processes (`chaos agent --kubernetes`), which choose the
    /// pods a fault file names by `NAMESPACE/NAME` or by label on it.
    pub fn set_node(&self, node: String) {
        let _ = self.node.set(node);
    }

    /// Every session held, running ones with live counters.
    pub async fn list(&self) -> Vec<SessionInfo> {
        // Those still starting have no id yet: not listed.
        let held: Vec<Arc<Held>> = self.prune().into_iter().filter(|h| h.id.get().is_some()).collect();
        let live = live_faults(held.iter().any(|h| !h.is_ended())).await;
        held.iter().map(|h| self.info(h, &live)).collect()
    }

    pub async fn get(&self, id: &str) -> Option<SessionInfo> {
        let held = self.find(id)?;
        let live = live_faults(!held.is_ended()).await;
        Some(self.info(&held, &live))
    }

    /// Ends a session as `chaos stop` does: its faults end in the kernel at once (their deadlines
    /// shortened through the session's maps) and its process, seeing the request, undoes
    /// everything and prints its summary (`ended_by: "chaos stop"`). SIGTERM only if that cannot
    /// be done or the process does not end after it. Waits for the end and returns the session
    /// with its summary; an ended session is returned as is.
    pub async fn stop(&self, id: &str) -> Result<SessionInfo, ApiError> {
        let held = self.find(id).ok_or_else(|| no_session(id))?;
        if !held.is_ended() {
            let asked = {
                let id = id.to_string();
                // Opening the maps and waiting for the process (polled) block: not on the runtime.
                tokio::task::spawn_blocking(move || crate::status::stop(Some(&id), false)).await
            };
            let stopped = match asked.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                Ok(_) => tokio::time::timeout(STOP_TIMEOUT, held.wait_end()).await.is_ok(),
                Err(e) => {
                    // Also a session that ended meanwhile ("no running session"): its end follows,
                    // and the SIGTERM asked of the task that owns a reaped process is a no-op.
                    log::warn!("stopping session {id} (pid {}) through its maps: {e}; sending SIGTERM instead", held.pid);
                    false
                }
            };
            if !stopped {
                held.signal_stop();
                if tokio::time::timeout(STOP_TIMEOUT, held.wait_end()).await.is_err() {
                    return Err(ApiError::new(
                        500,
                        format!(
                            "session {id} (pid {}) did not end within {}s of SIGTERM; its faults still end at their deadline in the kernel",
                            held.pid,
                            STOP_TIMEOUT.as_secs()
                        ),
                    ));
                }
            }
        }
        Ok(self.info(&held, &HashMap::new()))
    }

    /// Stops every session, those still starting too (the agent's own shutdown), and waits for
    /// them all.
    pub async fn stop_all(&self) {
        let running: Vec<Arc<Held>> = self.prune().into_iter().filter(|h| !h.is_ended()).collect();
        for h in &running {
            h.signal_stop();
        }
        for h in &running {
            if tokio::time::timeout(STOP_TIMEOUT, h.wait_end()).await.is_err() {
                eprintln!(
                    "chaos: session (pid {}) did not end within {}s of SIGTERM; its faults still end at their deadline in the kernel",
                    h.pid,
                    STOP_TIMEOUT.as_secs()
                );
            }
        }
    }

    /// Resolves once the session has ended (at once for an unknown one).
    pub async fn wait_ended(&self, id: &str) {
        if let Some(held) = self.find(id) {
            held.wait_end().await;
        }
    }

    /// Removes fault files left by earlier agents (killed before their session started).
    pub fn remove_stale_files(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.state_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let alive = pid == std::process::id() as i32 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if name.ends_with(".toml") && !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Makes the state directory, mode 0700 (an existing one too: the fault files name cgroups and
    /// are the agent's business). Once, when the agent starts.
    pub fn make_state_dir(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .with_context(|| format!("creating the agent's state directory {}", self.state_dir.display()))?;
        std::fs::set_permissions(&self.state_dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod 700 {}", self.state_dir.display()))
    }

    /// Writes a session's fault file in the state directory. A directory removed while the agent
    /// runs is not made again here: whoever removed it meant something (a cleanup, a mistake), and
    /// a start that remakes it per session would hide that and redo, at each start, what the
    /// agent's start did once (with its mode). That start fails with a line naming the directory.
    fn write_fault_file(&self, text: &str) -> anyhow::Result<PathBuf> {
        use anyhow::Context;
        use std::io::Write;
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        // The agent's pid first: a later agent removes the files of one that is gone.
        let path = self.state_dir.join(format!("{}-{n}.toml", std::process::id()));
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "the agent's state directory {} is gone (the agent makes it when it starts): restart the agent, or make it again with mode 0700",
                self.state_dir.display()
            ),
            Err(e) => return Err(anyhow::Error::from(e).context(format!("writing {}", path.display()))),
        };
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Spawns `chaos apply FILE --json` and waits until it injects or exits. The session is held
    /// from the spawn on, so a caller that gives up waiting (a client gone) leaves it listed once
    /// it injects, and stoppable.
    async fn run(&self, req: &StartRequest, file: PathBuf) -> Result<Arc<Held>, ApiError> {
        // The agent's own binary, even if its file was replaced since the agent started.
        let mut cmd = tokio::process::Command::from(crate::self_command());
        cmd.arg("apply").arg(&file).arg("--json").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        if let Some(node) = self.node.get() {
            cmd.env("NODE_NAME", node);
        }
        let agent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated between fork and exec.
        // The death signal makes an agent that dies, even by SIGKILL, end its sessions cleanly: the
        // session's own SIGTERM handling undoes everything. It fires when the thread that forked
        // exits, hence the spawner thread, which lives as long as the agent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent died before the prctl: nobody would end this session.
                if libc::getppid() != agent {
                    return Err(std::io::Error::other("the agent is gone"));
                }
                Ok(())
            });
        }
        let spawner = self.spawner.get_or_init(Spawner::start);
        let mut child = match spawner.spawn(cmd).await {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                return Err(ApiError::new(500, format!("starting chaos apply: {e}")));
            }
        };
        let pid = child.id().unwrap_or(0);
        let (stderr, stdout) = (child.stderr.take(), child.stdout.take());
        let (stop_tx, stop_rx) = oneshot::channel();
        let held = Arc::new(Held {
            name: req.name.clone(),
            owner: req.owner.clone(),
            pid,
            id: OnceLock::new(),
            end: Mutex::new(None),
            ended: watch::channel(false).0,
            stop: Mutex::new(Some(stop_tx)),
        });
        self.held.lock().unwrap_or_else(|e| e.into_inner()).push(held.clone());
        let (injecting_tx, injecting_rx) = oneshot::channel();
        tokio::spawn(watch_child(child, stderr, stdout, stop_rx, injecting_tx, file, held.clone()));

        tokio::select! {
            injecting = injecting_rx => {
                if injecting.is_ok() {
                    return Ok(held);
                }
                // The stderr reader ended without the line: the process exited; its end follows.
                held.wait_end().await;
            }
            _ = held.wait_end() => {}
            _ = tokio::time::sleep(START_TIMEOUT) => {
                self.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|h| !Arc::ptr_eq(h, &held));
                held.signal_stop();
                let _ = tokio::time::timeout(STOP_TIMEOUT, held.wait_end()).await;
                return Err(ApiError::new(500, format!("chaos apply (pid {pid}) did not start injecting within {}s; stopped it", START_TIMEOUT.as_secs())));
            }
        }
        // A session that never injected is not kept.
        self.held.lock().unwrap_or_else(|e| e.into_inner()).retain(|h| !Arc::ptr_eq(h, &held));
        let end = held.end.lock().unwrap_or_else(|e| e.into_inner());
        let (code, error) = end.as_ref().map(|e| (e.exit_code, e.error.clone())).unwrap_or((None, None));
        Err(ApiError::new(ApiError::status_of_exit(code), error.unwrap_or_else(|| format!("chaos apply exited ({}) before injecting", describe_exit(code)))))
    }

    fn find(&self, id: &str) -> Option<Arc<Held>> {
        self.prune().into_iter().find(|h| h.id.get().is_some_and(|i| i == id))
    }

    /// Forgets sessions that ended long ago (or too many), and returns those left.
    fn prune(&self) -> Vec<Arc<Held>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|h| h.ended_at().is_none_or(|at| at.elapsed() < KEEP_ENDED));
        let ended = held.iter().filter(|h| h.is_ended()).count();
        let mut extra = ended.saturating_sub(KEEP_ENDED_MAX);
        held.retain(|h| {
            let drop = extra > 0 && h.is_ended();
            extra -= drop as usize;
            !drop
        });
        held.clone()
    }

    fn info(&self, h: &Held, live: &HashMap<String, serde_json::Value>) -> SessionInfo {
        let id = h.id.get().cloned().unwrap_or_default();
        let end = h.end.lock().unwrap_or_else(|e| e.into_inner());
        let (state, faults) = match end.as_ref() {
            None => ("injecting", live.get(&id).cloned().unwrap_or(serde_json::Value::Array(Vec::new()))),
            Some(e) => ("ended", e.summary.as_ref().and_then(|s| s.get("rules").cloned()).unwrap_or(serde_json::Value::Array(Vec::new()))),
        };
        SessionInfo {
            id,
            name: h.name.clone(),
            owner: h.owner.clone(),
            pid: h.pid,
            state: state.to_string(),
            exit_code: end.as_ref().and_then(|e| e.exit_code),
            error: end.as_ref().and_then(|e| e.error.clone()),
            faults,
            summary: end.as_ref().and_then(|e| e.summary.clone()),
        }
    }
}

impl Held {
    fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    fn ended_at(&self) -> Option<Instant> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| e.at)
    }

    /// Resolves once the process has exited and its end is recorded.
    async fn wait_end(&self) {
        let mut rx = self.ended.subscribe();
        // Only whether it happened: the watch's read guard must not live across an await.
        let _ended: bool = rx.wait_for(|e| *e).await.is_ok();
    }

    fn signal_stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

pub(super) fn no_session(id: &str) -> ApiError {
    ApiError::new(404, format!("no session {id} at this agent: GET /v1/sessions lists them"))
}

fn describe_exit(code: Option<i32>) -> String {
    code.map(|c| format!("exit code {c}")).unwrap_or_else(|| "killed by a signal".into())
}

/// Owns a session's process: reads its stderr (so it never blocks on a full pipe) for the
/// injecting line and its last error, keeps its stdout (the `--json` summary), SIGTERMs it when
/// asked, and records how it ended.
async fn watch_child(
    mut child: tokio::process::Child,
    stderr: Option<tokio::process::ChildStderr>,
    stdout: Option<tokio::process::ChildStdout>,
    mut stop: oneshot::Receiver<()>,
    injecting: oneshot::Sender<()>,
    file: PathBuf,
    held: Arc<Held>,
) {
    // The child's errors name its file as the user named it.
    let rename = (file.display().to_string(), held.name.clone());
    let reader = held.clone();
    let errors = tokio::spawn(async move {
        let mut injecting = Some(injecting);
        let mut last_error = None;
        let Some(stderr) = stderr else { return last_error };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(id) = injecting_id(&line)
                && let Some(tx) = injecting.take()
            {
                let _ = reader.id.set(id.to_string());
                // It has read its file long since.
                let _ = std::fs::remove_file(&file);
                let _ = tx.send(());
            }
            if let Some(msg) = line.strip_prefix("chaos: ") {
                last_error = Some(msg.replace(&rename.0, &rename.1));
            }
            log::info!("{}: {line}", rename.1);
        }
        // The process is gone (its stderr closed): a file it never got to is gone with it.
        let _ = std::fs::remove_file(&file);
        last_error
    });
    let output = tokio::spawn(async move {
        let mut out = Vec::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_end(&mut out).await;
        }
        out
    });
    let mut stop_pending = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            asked = &mut stop, if stop_pending => {
                stop_pending = false;
                // `id()` is Some until the process is reaped, so the pid is still this child's.
                if asked.is_ok() && let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
    };
    let last_error = errors.await.ok().flatten();
    let out = output.await.unwrap_or_default();
    let exit_code = status.as_ref().ok().and_then(|s| s.code());
    let summary = serde_json::from_slice::<serde_json::Value>(&out).ok();
    let error = match exit_code {
        Some(0) => None,
        _ => Some(last_error.unwrap_or_else(|| format!("chaos apply (pid {}) ended: {}", held.pid, describe_exit(exit_code)))),
    };
    *held.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ended { at: Instant::now(), exit_code, error, summary });
    held.ended.send_replace(true);
}

/// The session id in `chaos apply`'s "chaos: injecting: session ID with ..." line.
fn injecting_id(line: &str) -> Option<&str> {
    line.strip_prefix("chaos: injecting: session ")?.split_whitespace().next()
}

/// Live counters of every running session on the host, by session id (`chaos status`'s faults).
async fn live_faults(wanted: bool) -> HashMap<String, serde_json::Value> {
    if !wanted {
        return HashMap::new();
    }
    // Reading the kernel's maps blocks briefly; nothing is spawned there.
    let report = tokio::task::spawn_blocking(crate::status::status).await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    match report {
        Ok(report) => report.sessions.into_iter().map(|s| (s.id, serde_json::to_value(&s.faults).unwrap_or(serde_json::Value::Null))).collect(),
        Err(e) => {
            log::warn!("reading live counters: {e}");
            HashMap::new()
        }
    }
}

type SpawnRequest = (tokio::process::Command, oneshot::Sender<std::io::Result<tokio::process::Child>>);

/// A thread that lives as long as the agent and forks every session: the death signal of a child
/// fires when the thread that forked it exits, and tokio's blocking threads exit when idle.
struct Spawner {
    requests: Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
}

impl Spawner {
    /// Must be called inside the runtime: the children are tokio's (their exit is awaited there).
    fn start() -> Spawner {
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("chaos-agent-spawner".into())
            .spawn(move || {
                let _in_runtime = runtime.enter();
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the agent's spawner thread");
        Spawner { requests: Mutex::new(tx) }
    }

    async fn spawn(&self, cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
        let (tx, rx) = oneshot::channel();
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, tx)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        rx.await.map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injecting_line_gives_the_session_id() {
        assert_eq!(injecting_id("chaos: injecting: session 4f2a-1 with 2 fault(s) for 30s (Ctrl-C ...)"), Some("4f2a-1"));
        assert_eq!(injecting_id("chaos: undid 1 change(s) left by 1 killed session(s)"), None);
    }

    #[test]
    fn exit_codes_become_http_statuses() {
        assert_eq!(ApiError::status_of_exit(Some(2)), 400);
        assert_eq!(ApiError::status_of_exit(Some(3)), 422);
        assert_eq!(ApiError::status_of_exit(Some(1)), 500);
        assert_eq!(ApiError::status_of_exit(None), 500);
        assert_eq!(ApiError::from(crate::usage!("bad")).status, 400);
    }

    #[tokio::test]
    async fn a_bad_file_is_refused_without_a_process() {
        let dir = std::env::temp_dir().join(format!("chaos-agent-unit-{}", std::process::id()));
        let sessions = Sessions::new(dir.clone());
        let req = StartRequest { name: "bad.toml".into(), faults: "[[fault]]\nkind = \"net.explode\"\n".into(), owner: None };
        let err = sessions.start(req).await.expect_err("an unknown kind is refused");
        assert_eq!(err.status, 400);
        assert!(err.message.starts_with("bad.toml:"), "{err}");
        assert!(sessions.list().await.is_empty());
        assert!(!dir.exists(), "nothing written for a refused file");
    }

    #[tokio::test]
    async fn a_start_without_the_state_directory_fails_with_a_line_naming_it() {
        let dir = std::env::temp_dir().join(format!("chaos-agent-unit-gone-{}", std::process::id()));
        let sessions = Sessions::new(dir.clone());
        sessions.make_state_dir().expect("the state directory");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).expect("made").permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir(&dir).expect("removing it");
        let req =
            StartRequest { name: "ok.toml".into(), faults: "[[fault]]\nkind = \"net.drop\"\npercent = 5\ncgroup = \"/\"\nfor = \"1s\"\n".into(), owner: None };
        let err = sessions.start(req).await.expect_err("no directory for the fault file");
        assert_eq!(err.status, 500);
        assert!(err.message.contains(&dir.display().to_string()) && !err.message.contains('\n'), "{err}");
        assert!(!dir.exists(), "not made again");
        assert!(sessions.list().await.is_empty());
    }
}
