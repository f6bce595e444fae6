//! `chaos sys signal`: the target's thread gets the signal at exactly the call `--when` selects
//! (tp_btf sys_enter, on every lane: the host too), the call itself having run; a bystander
//! making the same calls is untouched; the kernel counts the signals.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use chaos_tests::*;

#[test]
fn signal_kills_the_target_at_exactly_the_selected_call() {
    assert!(lane_has("tp_btf_signal"), "every lane has tp_btf");
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    for (signal, number, when, first) in [("KILL", libc::SIGKILL, "5", 5u64), ("TERM", libc::SIGTERM, "3..9+3", 3)] {
        // Each call appends a byte to its file, so the file's length is the number of calls that
        // did their work. A signal that kills (no handler) is made fatal as it is sent, and a
        // write to a regular file gives up when a fatal signal is pending: the calls before the
        // selected one wrote, the selected one did not (as under strace, which skips it).
        let (target_file, bystander_file) = (TempFile::new("chaos-sig-t-", ""), TempFile::new("chaos-sig-b-", ""));
        let args = |f: &TempFile| ["syscall-loop", "--wait", "--call", "write", "--path", f.path(), "--count", "20"].map(String::from);
        let mut target = sb.spawn(Place::Target, &args(&target_file).iter().map(String::as_str).collect::<Vec<_>>());
        let mut bystander = sb.spawn(Place::Bystander, &args(&bystander_file).iter().map(String::as_str).collect::<Vec<_>>());
        target.ready();
        bystander.ready();
        let chaos = start_chaos(
            &["sys", "signal", "--cgroup", &cg, "--syscall", "write", "--signal", signal, "--when", when, "--for", "60s", "--json"].map(String::from),
        );
        target.go();
        bystander.go();
        let status = wait_exit(&mut target, Duration::from_secs(60));
        let bystander = bystander.json(Duration::from_secs(60));
        let summary = stop_chaos(chaos);
        assert_eq!(status.signal(), Some(number), "the target died by SIG{signal}: {status:?}");
        let made = std::fs::metadata(&target_file.0).map(|m| m.len()).unwrap_or(0);
        assert_eq!(made, first - 1, "SIG{signal} at write {first} (--when {when}): the file shows {made} writes");
        assert_eq!((bystander["ok"].as_u64(), std::fs::metadata(&bystander_file.0).map(|m| m.len()).ok()), (Some(20), Some(20)), "{bystander}");
        assert_eq!(counter(&summary, 0, "signalled"), 1, "one signal, counted: {summary}");
    }
}

/// Where a hook can refuse the call before its work (sendto on an unconnected UDP socket: the
/// cgroup hook, on every lane), a call whose signal kills is never made, as strace skips it: the
/// receiver gets the datagrams of the calls before the selected one, not its own (a send to
/// loopback does not look for a pending fatal signal: without the refusal it would arrive).
#[test]
fn a_call_whose_signal_kills_is_not_made_where_a_hook_can_refuse_it() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let receiver = in_netns(&sb.netns_path(Place::Target), || std::net::UdpSocket::bind("127.0.0.1:0").expect("receiver"));
    let to = receiver.local_addr().expect("address").to_string();
    let mut target = sb.spawn(Place::Target, &["syscall-loop", "--wait", "--call", "sendto", "--to", &to, "--count", "10"]);
    target.ready();
    let chaos = start_chaos(&["sys", "signal", "--cgroup", &cg, "--syscall", "sendto", "--signal", "KILL", "--when", "3", "--json"].map(String::from));
    target.go();
    let status = wait_exit(&mut target, Duration::from_secs(60));
    let summary = stop_chaos(chaos);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    receiver.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut buf = [0u8; 16];
    let received = std::iter::from_fn(|| receiver.recv(&mut buf).ok()).take(20).count();
    assert_eq!(received, 2, "the sends before the third arrived, the third was never made");
    assert_eq!(counter(&summary, 0, "signalled"), 1, "{summary}");
}

/// The process's exit status, waited for (bounded).
fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = p.child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(std::time::Instant::now() < end, "the target did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_unknown_signal_is_bad_input() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let (code, _, err) = run_chaos(&["sys", "signal", "--cgroup", &cg, "--syscall", "write", "--signal", "SIGNOPE"]);
    assert_eq!((code, err.len()), (2, 1), "{err:?}");
    assert!(err[0].contains("not a signal name"), "{err:?}");
}

/// Every syscall hook that works on every lane (the six cgroup hooks, tp_btf sys_enter and
/// sys_exit) in one session: live while chaos runs, gone after SIGKILL with nothing else acting, and the
/// target's calls succeed again.
#[test]
fn nothing_of_the_syscall_hooks_stays_after_sigkill() {
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let mut text = String::new();
    for call in ["socket", "bind", "connect", "sendto", "getsockopt", "setsockopt"] {
        text += &format!("[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cg}\"\nsyscall = \"{call}\"\nerrno = \"EPERM\"\nbackend = \"cgroup\"\nfor = \"60s\"\n\n");
    }
    text += &format!("[[fault]]\nkind = \"sys.signal\"\ncgroup = \"{cg}\"\nsyscall = \"getppid\"\nsignal = \"KILL\"\nfor = \"60s\"\n\n");
    text += &format!("[[fault]]\nkind = \"sys.delay\"\ncgroup = \"{cg}\"\nsyscall = \"getpid\"\ndelay = \"1ms\"\non = \"exit\"\nfor = \"60s\"\n");
    let file = TempFile::new("chaos-syshooks-", &text);
    let mut chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let (programs, links) = attached_ids(&chaos.wait_for("attached:", Duration::from_secs(5)));
    assert_eq!(links.len(), 11, "two links each for bind, connect and sendto, one for the others, sys_enter and sys_exit: {links:?}");
    let sockets = |n: &str| sb.spawn(Place::Target, &["syscall-loop", "--call", "socket", "--count", n]).json(Duration::from_secs(30));
    assert_eq!(sockets("5")["ok"], 0, "the fault is live before the kill");
    chaos.signal(libc::SIGKILL);
    let _ = chaos.finish(Duration::from_secs(10));
    assert_all_gone(&programs, &links, "after SIGKILL");
    assert_eq!(sockets("5")["ok"], 5, "socket() works again after SIGKILL");
}

/// The kernel ends syscall rules at their deadline, whether or not chaos is there to detach them:
/// with chaos stopped (SIGSTOP), calls fail (and a signal rule kills) before the deadline, and
/// succeed after it.
#[test]
fn a_stopped_chaos_stops_failing_calls_at_the_deadline() {
    // The window is the engine's, the same on every kernel (the packet faults' deadline tests
    // run on every lane): the host lane shows it for syscall rules.
    if lane() != "host" {
        eprintln!("the syscall deadline test runs on the host lane");
        return;
    }
    let sb = Sandbox::new();
    let cg = sb.cgroup.path.display().to_string();
    let lifetime = Duration::from_secs(6);
    let text = format!(
        "[[fault]]\nkind = \"sys.fail\"\ncgroup = \"{cg}\"\nsyscall = \"socket\"\nerrno = \"EMFILE\"\nfor = \"6s\"\n\n\
         [[fault]]\nkind = \"sys.signal\"\ncgroup = \"{cg}\"\nsyscall = \"getppid\"\nsignal = \"KILL\"\nfor = \"6s\"\n"
    );
    let file = TempFile::new("chaos-sysdeadline-", &text);
    let chaos = start_chaos(&["apply".into(), file.path().into(), "--json".into()]);
    let started = std::time::Instant::now();
    chaos.signal(libc::SIGSTOP);
    let sockets = || sb.spawn(Place::Target, &["syscall-loop", "--call", "socket", "--count", "5"]).json(Duration::from_secs(30));
    let getppid = || sb.spawn(Place::Target, &["syscall-loop", "--call", "getppid", "--count", "5"]).finish(Duration::from_secs(30));
    let before = sockets();
    let (killed, _, _) = getppid();
    still_before(started, lifetime, "the first calls");
    assert_eq!(before["ok"], 0, "the fail rule is live before its deadline: {before}");
    assert_eq!(killed, -1, "the signal rule is live before its deadline (killed, no exit code)");
    sleep_past(started, lifetime);
    assert_eq!(sockets()["ok"], 5, "the kernel ended the fail rule at its deadline, chaos stopped");
    assert_eq!(getppid().0, 0, "the kernel ended the signal rule at its deadline, chaos stopped");
    chaos.signal(libc::SIGCONT);
    let summary = chaos.json(Duration::from_secs(30));
    assert_eq!((counter(&summary, 0, "failed"), counter(&summary, 1, "signalled")), (5, 1), "{summary}");
}
