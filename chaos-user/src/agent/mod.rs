//! `chaos agent`: a node agent that holds fault sessions for others (an HTTP/JSON API on a unix
//! socket, and optionally TCP with a bearer token), and the CLI's client for it (`chaos --agent`).
//!
//! Each session is a child `chaos apply FILE --json` with its own kernel deadlines, so an agent
//! that dies or a client that goes away leaves nothing running past a fault's `for`.

pub mod api;
pub mod client;
pub mod sessions;

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

pub use sessions::{ApiError, SessionInfo, Sessions, StartRequest};

use crate::{error::Result, session::journal, usage};

/// Where `chaos agent` listens, and where `chaos --agent` looks, by default.
pub const DEFAULT_SOCKET: &str = "/run/chaos/agent.sock";
/// Where the agent writes the fault files of its sessions.
pub const DEFAULT_STATE_DIR: &str = "/run/chaos/agent";

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The unix socket of the API (root only).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve the API on TCP at ADDR (e.g. 127.0.0.1:7070); every request must then carry
    /// `Authorization: Bearer <token>`, the token read from --token-file.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Where the agent keeps its sessions' fault files.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Also run the Kubernetes controller: act on ChaosFault resources for the pods of this node.
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name, for --kubernetes (default: $NODE_NAME, as the downward API sets it).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub node: Option<String>,
}

/// Runs the agent until SIGINT or SIGTERM, then ends every session cleanly.
pub fn run(args: AgentArgs, token_file: Option<&Path>) -> Result<()> {
    let token = match (args.listen, token_file) {
        (Some(_), Some(f)) => Some(read_token(f)?),
        (Some(addr), None) => {
            return Err(usage!("--listen {addr} needs --token-file FILE: the token every TCP request must carry"));
        }
        (None, Some(_)) => {
            return Err(usage!("--token-file is for --listen (the agent's TCP API) or for a client with --agent http://..."));
        }
        (None, None) => None,
    };
    let node = match (args.kubernetes, args.node.clone().or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))) {
        (true, None) => {
            return Err(usage!("--kubernetes needs this node's name: give --node NAME or set NODE_NAME"));
        }
        (true, node) => node,
        (false, _) => None,
    };
    crate::privileges::check()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(anyhow::Error::from)?;
    rt.block_on(serve(args, token, node))
}

async fn serve(args: AgentArgs, token: Option<String>, node: Option<String>) -> Result<()> {
    let mut signals = crate::watch::Signals::register().map_err(anyhow::Error::from)?;
    // The state directory is made (and given its mode) once, here, before the socket is there to
    // be asked for sessions.
    let sessions = Sessions::new(args.state_dir.clone());
    sessions.make_state_dir()?;
    let unix = bind_unix(&args.socket)?;
    // What a predecessor killed mid-fault (or any dead session) left behind goes first.
    let swept = journal::sweep();
    eprintln!("chaos: agent swept {} dead session(s), {} change(s) undone", swept.sessions, swept.undone);
    for r in &swept.refused {
        eprintln!("chaos: agent sweep refused: {r}");
    }
    sessions.remove_stale_files();
    let tcp = match args.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| usage!("cannot listen on {addr}: {e}"))?),
        None => None,
    };
    let unix_api = axum::serve(RootOnly(unix), api::router(sessions.clone(), None));
    let tcp_api = async {
        match (tcp, token) {
            (Some(l), Some(t)) => axum::serve(l, api::router(sessions.clone(), Some(api::Token(Arc::new(t))))).await,
            _ => std::future::pending().await,
        }
    };
    let kubernetes = async {
        match node {
            Some(node) => kubernetes(node, sessions.clone()).await,
            None => std::future::pending().await,
        }
    };
    match args.listen {
        Some(addr) => eprintln!("chaos: agent listening on {} and http://{addr}", args.socket.display()),
        None => eprintln!("chaos: agent listening on {}", args.socket.display()),
    }
    let outcome: Result<()> = tokio::select! {
        r = unix_api => r.map_err(|e| anyhow::Error::from(e).context("serving the unix socket").into()),
        r = tcp_api => r.map_err(|e| anyhow::Error::from(e).context("serving TCP").into()),
        r = kubernetes => r,
        _ = signals.int.recv() => Ok(()),
        _ = signals.term.recv() => Ok(()),
    };
    let running = sessions.list().await.iter().filter(|s| s.state == "injecting").count();
    eprintln!("chaos: agent stopping: ending {running} session(s)");
    sessions.stop_all().await;
    let _ = std::fs::remove_file(&args.socket);
    outcome
}

/// The Kubernetes controller (`--kubernetes`); it returns only on failure.
async fn kubernetes(node: String, sessions: Arc<Sessions>) -> Result<()> {
    eprintln!("chaos: agent: Kubernetes controller for node {node}");
    crate::kubernetes::serve(node, sessions).await.map_err(crate::error::Error::Other)
}

/// The token of `--token-file`: the file must be readable by its owner only.
fn read_token(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| usage!("cannot read the token file {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(usage!("the token file {} is readable by group or others (mode {:o}): chmod 600 it", path.display(), meta.permissions().mode() & 0o777));
    }
    let token = std::fs::read_to_string(path).map_err(|e| usage!("cannot read the token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(usage!("the token file {} must hold one token (a line without spaces)", path.display()));
    }
    Ok(token.to_string())
}

/// Binds the API's unix socket, mode 0600. A socket file that nobody answers on (an agent that was
/// killed) is replaced; one a live agent answers on is left alone.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(usage!("{} exists and is not a socket: give another --socket", path.display()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(crate::error::Error::Other(anyhow::anyhow!("an agent already listens on {}", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("removing the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| anyhow::anyhow!("chmod 600 {}: {e}", path.display()))?;
    Ok(listener)
}

/// The unix socket's listener, accepting only root's connections (SO_PEERCRED): the mode 0600 of
/// the socket file already says so; this holds even if the file's mode is changed.
struct RootOnly(tokio::net::UnixListener);

impl axum::serve::Listener for RootOnly {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == 0 => return (stream, addr),
                Ok(cred) => log::warn!("refused a connection from uid {}: the agent's socket is root's", cred.uid()),
                Err(e) => log::warn!("refused a connection whose peer is unknown: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
