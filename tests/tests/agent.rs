//! `chaos agent`: sessions held for others through its HTTP/JSON API, and `chaos --agent` using it.
//! Each test runs its own agent on a socket in a temporary directory; the faults drop real UDP
//! traffic of a Sandbox's target cgroup, checked at the sink and in the counters.
//!
//! The requests to the API are written here by hand (HTTP/1.0, so the answer ends with the
//! connection): the tests check the wire, not the CLI's client.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_tests::*;

const T: Duration = Duration::from_secs(60);

/// A running `chaos agent` on a socket of its own; ended with SIGTERM (then SIGKILL) on drop.
struct Agent {
    proc: Option<Proc>,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str]) -> Agent {
        Agent::start_from(&chaos_bin(), dir, extra)
    }

    /// An agent run from the binary at `exe`.
    fn start_from(exe: &Path, dir: &Path, extra: &[&str]) -> Agent {
        let socket = dir.join("agent.sock");
        let mut args: Vec<String> = vec!["agent".into(), "--socket".into(), socket.display().to_string()];
        args.extend(["--state-dir".into(), dir.join("state").display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(exe)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning chaos agent");
        let mut proc = Proc::new(child, format!("chaos {}", args.join(" ")));
        proc.wait_for("chaos: agent listening on", Duration::from_secs(20));
        Agent { proc: Some(proc), socket }
    }

    fn sock(&self) -> &str {
        self.socket.to_str().expect("utf-8 path")
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("running").child.id()
    }

    /// `chaos --agent SOCK ARGS`: (exit code, stdout, stderr lines).
    fn chaos(&self, args: &[&str]) -> (i32, String, Vec<String>) {
        let mut all = vec!["--agent", self.sock()];
        all.extend_from_slice(args);
        run_chaos(&all)
    }

    /// One request to the API: (status, body).
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let stream = std::os::unix::net::UnixStream::connect(&self.socket).expect("connecting to the agent");
        http(stream, method, path, body, &[])
    }

    fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.request(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}")))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(30);
            while p.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An HTTP/1.0 request on `stream`; (status, body) once the agent closes the connection.
fn http(mut stream: impl Read + Write, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: agent\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    let body = body.unwrap_or_default();
    req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(req.as_bytes()).expect("sending the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reading the answer");
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// UDP from the target to a sink in the server namespace: datagrams received of `n` sent.
fn udp(sb: &Sandbox, port: u16, n: u64) -> u64 {
    let mut sink = sb.spawn(Place::Server, &["udp-sink", "--bind", &format!("0.0.0.0:{port}"), "--idle", "500ms"]);
    sink.ready();
    sb.spawn(Place::Target, &["udp-send", "--to", &format!("{SERVER_V4}:{port}"), "--count", &n.to_string(), "--rate", "2000"]).json(T);
    sink.json(T)["received"].as_u64().expect("received")
}

/// A fault file dropping every UDP packet of the sandbox's target for `lifetime`.
fn udp_drop_file(sb: &Sandbox, lifetime: &str) -> TempFile {
    TempFile::new("chaos-agent-faults-", &fault_table(sb, &sb.cgroup.path, "kind = \"net.drop\"\npercent = 100\nproto = \"udp\"", lifetime))
}

fn session<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["sessions"].as_array().expect("sessions").iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("session {id} not listed: {list}"))
}

#[test]
fn a_session_started_through_the_agent_drops_counts_and_stops() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);
    let root_before = sb.client_root_qdisc();
    let file = udp_drop_file(&sb, "30s");

    let (code, out, err) = agent.chaos(&["apply", file.path(), "--detach"]);
    assert_eq!(code, 0, "{err:?}");
    let id = out.trim().to_string();
    assert!(!id.is_empty() && err.iter().any(|l| l.contains(&format!("injecting: session {id}"))), "{out:?} {err:?}");
    // The fault file the agent wrote for the session is gone once it injects.
    assert_eq!(std::fs::read_dir(dir.0.join("state")).expect("the state directory").count(), 0);
    let mode = std::fs::metadata(dir.0.join("state")).expect("the state directory").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory is root's only");
    let mode = std::fs::metadata(&agent.socket).expect("the socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is root's only");

    assert_eq!(udp(&sb, 6341, 80), 0, "every datagram dropped");
    let (code, one) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
    assert_eq!(code, 200, "{one}");
    assert_eq!((one["state"].as_str(), one["name"].as_str()), (Some("injecting"), Some(file.path())), "{one}");
    let f = &one["faults"][0];
    assert_eq!((f["kind"].as_str(), f["matched"].as_u64(), f["injected"].as_u64()), (Some("net.drop"), Some(80), Some(80)), "{one}");
    // The engine's own view agrees: the agent's session is an ordinary session.
    let engine = status();
    let held = session(&engine, &id);
    assert_eq!(held["pid"], one["pid"], "{engine}");
    let (code, out, err) = agent.chaos(&["status", "--json"]);
    assert_eq!(code, 0, "{err:?}");
    let listed: Value = serde_json::from_str(&out).expect("status --json");
    assert_eq!(session(&listed, &id)["faults"][0]["injected"], 80, "{listed}");
    let (code, out, _) = agent.chaos(&["status"]);
    assert!(code == 0 && out.contains(&format!("session {id}")) && out.contains("injected 80"), "{out}");

    let (code, _, err) = agent.chaos(&["stop", &id]);
    assert_eq!(code, 0, "{err:?}");
    assert!(err.iter().any(|l| l.contains(&format!("stopped session {id}"))), "{err:?}");
    let (_, ended) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
    assert_eq!((ended["state"].as_str(), ended["exit_code"].as_i64()), (Some("ended"), Some(0)), "{ended}");
    let summary = &ended["summary"];
    // Stopped as `chaos stop` stops a session (its kernel deadlines shortened), and said so.
    assert_eq!(summary["ended_by"], "chaos stop", "{summary}");
    assert_eq!((counter(summary, 0, "matched"), counter(summary, 0, "dropped")), (80, 80), "{summary}");

    assert_eq!(udp(&sb, 6341, 50), 50, "traffic passes once stopped");
    let pid = ended["pid"].as_u64().expect("pid") as u32;
    let left = leftovers(&sb, &[&sb.cgroup.path], &root_before, pid);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// An agent whose binary is replaced while it runs (a package upgrade, a rebuild) starts its
/// sessions from the binary it runs, not from whatever file now has its name (failed first: "No
/// such file or directory", the path read back as "... (deleted)"); a session is named "chaos" for
/// ps and top, though started through /proc/self/exe.
#[test]
fn sessions_start_from_the_agents_own_binary_after_its_file_is_replaced() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let exe = dir.0.join("chaos");
    std::fs::copy(chaos_bin(), &exe).expect("copying the chaos binary");
    let agent = Agent::start_from(&exe, &dir.0, &[]);
    // Replaced as a package manager does: a new file renamed over the old name.
    let new = dir.0.join("chaos.new");
    std::fs::write(&new, "#!/bin/sh\nexit 42\n").expect("the new file");
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&new, &exe).expect("replacing the binary");

    let file = udp_drop_file(&sb, "30s");
    let (code, out, err) = agent.chaos(&["apply", file.path(), "--detach"]);
    assert_eq!(code, 0, "the session started: {err:?}");
    let id = out.trim().to_string();
    assert_eq!(udp(&sb, 6346, 40), 0, "every datagram dropped");
    let (_, one) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
    let pid = one["pid"].as_u64().expect("pid");
    let comm = |pid: u64| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
    assert_eq!(comm(pid), "chaos", "the session's name");
    let (code, _, err) = agent.chaos(&["stop", &id]);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(udp(&sb, 6346, 20), 20, "traffic passes once stopped");
}

#[test]
fn bad_requests_get_the_line_chaos_prints_and_its_status() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);

    // A bad file (refused before anything runs) and a file the engine refuses (a missing cgroup,
    // refused by the session's own process): the same line as a local `chaos apply`, exit 2 → 400.
    let bad = TempFile::new("chaos-agent-bad-", &fault_table(&sb, &sb.cgroup.path, "kind = \"net.drop\"\npercent = 300", "5s"));
    let gone = TempFile::new("chaos-agent-gone-", &fault_table(&sb, &sb.cgroup.path.join("no-such-child"), "kind = \"net.drop\"\npercent = 5", "5s"));
    // A pod by NAMESPACE/NAME needs an agent run with --kubernetes: this one says so, as chaos does.
    let by_name = TempFile::new("chaos-agent-pod-", "[[fault]]\nkind = \"net.drop\"\npod = \"shop/web-1\"\npercent = 5\n");
    for file in [&bad, &gone, &by_name] {
        let (code, _, local) = run_chaos(&["apply", file.path()]);
        assert_eq!((code, local.len()), (2, 1), "{local:?}");
        let text = std::fs::read_to_string(&file.0).expect("the file");
        let body = serde_json::json!({ "name": file.path(), "faults": text }).to_string();
        let (status, answer) = agent.json("POST", "/v1/sessions", Some(&body));
        assert_eq!(status, 400, "{answer}");
        assert_eq!(format!("chaos: {}", answer["error"].as_str().expect("error")), local[0]);
        let (code, _, remote) = agent.chaos(&["apply", file.path()]);
        assert_eq!((code, remote), (2, local), "the CLI through the agent");
    }
    let (_, list) = agent.json("GET", "/v1/sessions", None);
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(0), "nothing held after refusals: {list}");

    let (status, answer) = agent.json("GET", "/v1/sessions/no-such-id", None);
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.starts_with("no session no-such-id")), "{answer}");
    assert_eq!(agent.json("DELETE", "/v1/sessions/no-such-id", None).0, 404);
    let (code, _, err) = agent.chaos(&["stop", "no-such-id"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    for body in ["{not json", r#"{"name": "x", "faults": "", "colour": "red"}"#, r#"{"faults": ""}"#] {
        let (status, text) = agent.request("POST", "/v1/sessions", Some(body));
        let answer: Value = serde_json::from_str(&text).expect("JSON error");
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.starts_with("bad request body") && !e.contains('\n')), "{answer}");
    }
    assert_eq!(agent.json("GET", "/v1/nowhere", None).0, 404);
    let (status, answer) = agent.json("GET", "/v1/sessions/x/counters?every=forever", None);
    assert_eq!(status, 400, "{answer}");

    // Root's connections only (SO_PEERCRED), even with the socket file opened to all: a thread
    // that dropped to nobody (its own credentials, by the raw syscall) gets no answer.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let socket = agent.socket.clone();
    let answer = std::thread::spawn(move || {
        // SAFETY: the raw setresuid changes only this thread's credentials (glibc's wrapper would
        // change every thread's); the thread ends right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("the socket is open to all");
        let _ = stream.write_all(b"GET /v1/health HTTP/1.0\r\nHost: agent\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    })
    .join()
    .expect("the unprivileged thread");
    assert!(answer.is_empty(), "a non-root peer was answered: {}", String::from_utf8_lossy(&answer));
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(agent.request("GET", "/v1/health", None).0, 200, "root still is");

    // The state directory is the agent's (made 0700 when it started); removed while it runs, it
    // is not made again: a start fails with the line naming it, and nothing runs.
    let state = dir.0.join("state");
    assert_eq!(std::fs::metadata(&state).expect("made at the agent's start").permissions().mode() & 0o777, 0o700);
    std::fs::remove_dir(&state).expect("removing the state directory");
    let good = udp_drop_file(&sb, "5s");
    let body = serde_json::json!({ "name": good.path(), "faults": std::fs::read_to_string(&good.0).expect("the file") }).to_string();
    let (status, answer) = agent.json("POST", "/v1/sessions", Some(&body));
    assert_eq!(status, 500, "{answer}");
    let line = answer["error"].as_str().expect("error");
    assert!(line.contains(&format!("state directory {} is gone", state.display())) && !line.contains('\n'), "{answer}");
    assert!(!state.exists(), "not made again");
    let (_, list) = agent.json("GET", "/v1/sessions", None);
    assert_eq!(list["sessions"], serde_json::json!([]), "{list}");

    // Commands the agent does not run, and an agent that is not there.
    let (code, _, err) = agent.chaos(&["probe"]);
    assert!(code == 2 && err[0].contains("apply, status and stop"), "{err:?}");
    let nowhere = dir.0.join("nobody.sock");
    let (code, _, err) = run_chaos(&["--agent", nowhere.to_str().unwrap(), "status"]);
    assert_eq!((code, err.len()), (1, 1), "{err:?}");
    assert_eq!(err[0], format!("chaos: no agent at {}: is `chaos agent` running?", nowhere.display()));
}

#[test]
fn the_tcp_api_needs_the_token() {
    let dir = temp_dir("chaos-agent-");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-agent-token\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let listen = "127.0.0.1:6343";
    let sock = dir.0.join("agent.sock");
    let (code, _, err) = run_chaos(&["agent", "--socket", sock.to_str().unwrap(), "--listen", listen, "--token-file", token.to_str().unwrap()]);
    assert!(code == 2 && err.len() == 1 && err[0].contains("chmod 600"), "a token others can read is refused: {err:?}");
    let (code, _, err) = run_chaos(&["agent", "--socket", sock.to_str().unwrap(), "--listen", listen]);
    assert!(code == 2 && err[0].contains("--token-file"), "{err:?}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let agent = Agent::start(&dir.0, &["--listen", listen, "--token-file", token.to_str().unwrap()]);
    let tcp = || std::net::TcpStream::connect(listen).expect("connecting over TCP");
    assert_eq!(http(tcp(), "GET", "/v1/health", None, &[]).0, 401, "no token");
    assert_eq!(http(tcp(), "GET", "/v1/health", None, &[("Authorization", "Bearer s3cret-agent-tokeN")]).0, 401, "a wrong token");
    assert_eq!(http(tcp(), "GET", "/v1/sessions", None, &[("Authorization", "Bearer s3cret")]).0, 401, "a prefix of the token");
    let (status, body) = http(tcp(), "GET", "/v1/health", None, &[("Authorization", "Bearer s3cret-agent-token")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("health")["pid"], agent.pid());
    // The unix socket needs no token: it is root's.
    assert_eq!(agent.request("GET", "/v1/health", None).0, 200);
    let url = format!("http://{listen}");
    let (code, out, err) = run_chaos(&["--agent", &url, "--token-file", token.to_str().unwrap(), "status", "--json"]);
    assert_eq!(code, 0, "{err:?}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect("status")["sessions"], serde_json::json!([]));
    let (code, _, err) = run_chaos(&["--agent", &url, "status"]);
    assert!(code == 2 && err[0].contains("bearer token"), "{err:?}");
}

#[test]
fn a_client_that_goes_away_leaves_the_session_to_its_deadline() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);
    let file = udp_drop_file(&sb, "6s");
    let (code, out, err) = agent.chaos(&["apply", file.path(), "--detach"]);
    assert_eq!(code, 0, "{err:?}");
    let id = out.trim().to_string();
    let started = Instant::now();

    // Read two snapshots of the counters stream, then hang up mid-stream.
    {
        let mut stream = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
        write!(stream, "GET /v1/sessions/{id}/counters?every=200ms HTTP/1.0\r\nHost: agent\r\n\r\n").expect("request");
        let mut lines = BufReader::new(stream).lines().map_while(Result::ok);
        assert!(lines.next().is_some_and(|l| l.contains(" 200 ")), "the stream starts");
        let snapshots: Vec<Value> = lines.filter_map(|l| serde_json::from_str(&l).ok()).take(2).collect();
        assert_eq!(snapshots.len(), 2);
        assert!(snapshots.iter().all(|s| s["id"] == id && s["state"] == "injecting"), "{snapshots:?}");
    }
    assert_eq!(udp(&sb, 6345, 60), 0, "still dropping after the client went away");
    let (status, _) = agent.request("GET", "/v1/health", None);
    assert_eq!(status, 200, "the agent still answers");

    // It ends by itself at its deadline, with what it dropped.
    let end = started + Duration::from_secs(20);
    let ended = loop {
        let (_, s) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
        if s["state"] == "ended" {
            break s;
        }
        assert!(Instant::now() < end, "the session did not end at its deadline: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(started.elapsed() >= Duration::from_secs(5), "not before its deadline: {:?}", started.elapsed());
    assert_eq!(ended["summary"]["ended_by"], "deadline", "{ended}");
    assert_eq!(counter(&ended["summary"], 0, "dropped"), 60, "{ended}");
    assert_eq!(udp(&sb, 6345, 40), 40, "traffic passes after the deadline");
}

#[test]
fn a_killed_agent_ends_its_sessions_and_a_new_one_takes_the_socket() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let root_before = sb.client_root_qdisc();
    let mut agent = Agent::start(&dir.0, &[]);
    let file = udp_drop_file(&sb, "60s");
    let (code, out, err) = agent.chaos(&["apply", file.path(), "--detach"]);
    assert_eq!(code, 0, "{err:?}");
    let id = out.trim().to_string();
    let (_, one) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
    let session_pid = one["pid"].as_u64().expect("pid") as u32;
    assert_eq!(udp(&sb, 6347, 40), 0);

    let proc = agent.proc.take().expect("running");
    proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let _ = proc.finish(Duration::from_secs(10));
    // Its session ends by itself (the death signal), long before its 60s.
    let left = leftovers_after(&sb, &[&sb.cgroup.path], &root_before, session_pid, Duration::from_secs(3));
    assert!(left.is_empty(), "left behind {:?} after the agent was killed: {left:?}", killed.elapsed());
    eprintln!("the session of a SIGKILLed agent was gone after {:?}", killed.elapsed());
    // Gone, or a zombie its new parent has not reaped yet: not running either way.
    assert!(matches!(proc_state(session_pid), None | Some('Z')), "the session's process is gone: {:?}", proc_state(session_pid));
    assert_eq!(udp(&sb, 6347, 40), 40, "traffic passes");
    assert!(agent.socket.exists(), "the killed agent's socket file stays");

    let agent = Agent::start(&dir.0, &[]);
    let said = agent.proc.as_ref().expect("running").stderr_seen.clone();
    assert!(said.iter().any(|l| l.contains("swept 0 dead session(s), 0 change(s) undone")), "nothing left to sweep: {said:?}");
    let (_, list) = agent.json("GET", "/v1/sessions", None);
    assert_eq!(list["sessions"], serde_json::json!([]), "a new agent holds nothing");
    // A live agent's socket is not taken.
    let (code, _, err) = run_chaos(&["agent", "--socket", agent.sock(), "--state-dir", dir.0.join("state").to_str().unwrap()]);
    assert_eq!((code, err.last().cloned()), (1, Some(format!("chaos: an agent already listens on {}", agent.sock()))), "{err:?}");

    // SIGINT or SIGTERM end the agent cleanly: its sessions first, then itself, with exit 0.
    let mut agent = agent;
    let (code, out, err) = agent.chaos(&["apply", file.path(), "--detach"]);
    assert_eq!(code, 0, "{err:?}");
    let (_, one) = agent.json("GET", &format!("/v1/sessions/{}", out.trim()), None);
    let session_pid = one["pid"].as_u64().expect("pid") as u32;
    assert_eq!(udp(&sb, 6347, 30), 0);
    let proc = agent.proc.take().expect("running");
    proc.signal(libc::SIGTERM);
    let (code, _, said) = proc.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{said:?}");
    assert!(said.iter().any(|l| l.contains("agent stopping: ending 1 session(s)")), "{said:?}");
    assert!(!agent.socket.exists(), "the agent removes its socket");
    // The kernel frees a session's programs once their last holder (the guardian too) is gone.
    let left = leftovers_after(&sb, &[&sb.cgroup.path], &root_before, session_pid, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind by an agent that ended: {left:?}");
    assert_eq!(udp(&sb, 6347, 30), 30, "traffic passes");
}

#[test]
fn apply_through_the_agent_follows_the_session_like_a_local_apply() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);
    let short = udp_drop_file(&sb, "4s");

    // Text: the local summary's lines, with the counters of the traffic sent meanwhile.
    let mut client = start_chaos(&["--agent".into(), agent.sock().into(), "apply".into(), short.path().into()]);
    let id = session_id(&mut client);
    assert_eq!(udp(&sb, 6349, 30), 0);
    let (code, out, err) = client.finish(T);
    assert_eq!(code, 0, "{err:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&format!("chaos: session {id} ended by deadline after ")), "{out}");
    assert!(lines[1].starts_with("  rule 0 (net.drop) on ") && lines[2].contains("injected 30 (100.0% of matched); dropped 30"), "{out}");

    // JSON: the same keys as a local `chaos apply --json` of the same file.
    let (code, out, err) = agent.chaos(&["apply", short.path(), "--json"]);
    assert_eq!(code, 0, "{err:?}");
    let remote: Value = serde_json::from_str(&out).expect("a JSON summary");
    let (code, out, err) = run_chaos(&["apply", short.path(), "--json"]);
    assert_eq!(code, 0, "{err:?}");
    let local: Value = serde_json::from_str(&out).expect("a JSON summary");
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(&remote), keys(&local));
    assert_eq!(keys(&remote["rules"][0]), keys(&local["rules"][0]));
    assert_eq!(remote["ended_by"], "deadline");

    // Ctrl-C in the client stops the session through the agent (as `chaos stop` does), with its
    // summary.
    let long = udp_drop_file(&sb, "60s");
    let mut client = start_chaos(&["--agent".into(), agent.sock().into(), "apply".into(), long.path().into(), "--json".into()]);
    let id = session_id(&mut client);
    assert_eq!(udp(&sb, 6349, 20), 0);
    client.signal(libc::SIGINT);
    let summary = client.json(T);
    assert_eq!((summary["session"].as_str(), summary["ended_by"].as_str()), (Some(id.as_str()), Some("chaos stop")), "{summary}");
    assert_eq!(counter(&summary, 0, "dropped"), 20);
    let (_, one) = agent.json("GET", &format!("/v1/sessions/{id}"), None);
    assert_eq!(one["state"], "ended", "{one}");
    assert_eq!(udp(&sb, 6349, 20), 20, "traffic passes");
}

/// Everything the agent sent on `stream` until it closed. A read error after some data is the end
/// too: an agent that answers before reading a whole body closes with the rest unread, and the
/// kernel then reports ECONNRESET to this side, but only once the answer queued before it is read.
fn read_answer(stream: &mut std::os::unix::net::UnixStream) -> String {
    stream.set_read_timeout(Some(T)).expect("read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if !answer.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("reading the answer ({} bytes so far): {e}", answer.len()),
        }
    }
    String::from_utf8(answer).expect("a UTF-8 answer")
}

/// The processes whose parent is `pid`, with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command in parentheses may hold spaces: the fields after its last ')' are fixed.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string()));
        }
    }
    out
}

#[test]
fn a_body_over_the_limit_gets_413_and_the_agent_goes_on() {
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);
    let limit = chaos_user::agent::api::MAX_BODY;
    // Well over: the writes past what the socket buffers fail once the agent has closed.
    let len = 2 * limit;

    let mut stream = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connecting to the agent");
    write!(stream, "POST /v1/sessions HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n").expect("the headers");
    // The body from a thread: the agent reads up to the limit, answers and closes with the rest
    // unread, so this side's writes may fail (EPIPE, ECONNRESET) or stop midway: not an error.
    let mut writer = stream.try_clone().expect("a second handle on the stream");
    writer.set_write_timeout(Some(T)).expect("write timeout");
    let body = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            match writer.write(&chunk[..(len - sent).min(chunk.len())]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let answer = read_answer(&mut stream);
    let sent = body.join().expect("the writing thread");
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    assert_eq!(status, "413", "{answer:?}");
    let text = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    assert!(!text.trim_end().contains('\n'), "one line: {text:?}");
    let error: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let line = error["error"].as_str().unwrap_or_else(|| panic!("no error: {error}"));
    assert!(line.contains(&format!("{} KiB", limit / 1024)), "the limit is named: {line:?}");
    eprintln!("413 after {sent} of {len} body bytes sent: {line}");

    // The agent goes on serving.
    let (status, list) = agent.json("GET", "/v1/sessions", None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["sessions"], serde_json::json!([]), "{list}");
    assert_eq!(agent.request("GET", "/v1/health", None).0, 200);
}

#[test]
fn a_client_gone_during_its_start_request_starts_nothing() {
    let sb = Sandbox::new();
    let dir = temp_dir("chaos-agent-");
    let agent = Agent::start(&dir.0, &[]);
    let root_before = sb.client_root_qdisc();
    let file = udp_drop_file(&sb, "30s");
    let text = std::fs::read_to_string(&file.0).expect("the file");
    let body = serde_json::json!({ "name": file.path(), "faults": text }).to_string();

    // The headers and half the body, then the client hangs up.
    {
        let mut stream = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connecting to the agent");
        write!(stream, "POST /v1/sessions HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())
            .expect("headers");
        stream.write_all(&body.as_bytes()[..body.len() / 2]).expect("half the body");
        // Let the agent read what came before the hang-up.
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (status, list) = agent.json("GET", "/v1/sessions", None);
    assert_eq!(status, 200, "the agent still answers: {list}");
    assert_eq!(list["sessions"], serde_json::json!([]), "nothing started: {list}");
    let children = children_of(agent.pid());
    assert!(children.is_empty(), "no chaos apply child of the agent: {children:?}");
    assert_eq!(std::fs::read_dir(dir.0.join("state")).map(|d| d.count()).unwrap_or(0), 0, "no fault file written");
    assert_eq!(udp(&sb, 6351, 30), 30, "nothing dropped");
    let left = leftovers(&sb, &[&sb.cgroup.path], &root_before, agent.pid());
    assert!(left.is_empty(), "left behind: {left:?}");

    // The same body, whole, does start the session: the half was what kept it from starting.
    let (status, one) = agent.json("POST", "/v1/sessions", Some(&body));
    assert_eq!(status, 201, "{one}");
    let id = one["id"].as_str().expect("id").to_string();
    assert_eq!(udp(&sb, 6351, 30), 0, "dropping");
    let (status, stopped) = agent.json("POST", &format!("/v1/sessions/{id}/stop"), None);
    assert_eq!((status, stopped["summary"]["ended_by"].as_str()), (200, Some("chaos stop")), "{stopped}");
    assert!(children_of(agent.pid()).is_empty(), "the stopped session's process is gone");
    let pid = stopped["pid"].as_u64().expect("pid") as u32;
    // The kernel frees the programs once their last holder (the guardian too) is gone.
    let left = leftovers_after(&sb, &[&sb.cgroup.path], &root_before, pid, Duration::from_secs(5));
    assert!(left.is_empty(), "left behind: {left:?}");
}
