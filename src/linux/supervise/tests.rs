//! The host side and the hook, with the real `corral` binary (found as `Job::spawn`
//! finds it: next to the test binary's directory, where `cargo test` builds it).
//! Processes are only signalled through pidfds opened on processes verified to be
//! descendants of the supervisor; a guard kills what a test started even if it fails.

use super::*;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::host::*;
use crate::error::Error;
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::procs;
use crate::options::Signal;
use rustix::event::{PollFd, PollFlags};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

const DEADLINE: Duration = Duration::from_secs(10);

fn skip(reason: impl std::fmt::Display) {
    if std::env::var_os("CORRAL_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("test cannot run and CORRAL_REQUIRE_ALL=1: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A supervised job and the pidfds of the processes the test learned of; dropping it
/// kills them, closes the socket (the supervisor kills the rest) and reaps the
/// supervisor.
struct Guard {
    sup: Option<Supervised>,
    fds: Vec<OwnedFd>,
    seen: Vec<SupervisorEvent>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for fd in &self.fds {
            let _ = pidfd::send_signal(fd.as_fd(), Signal::KILL);
        }
        if let Some(sup) = self.sup.take() {
            let fd = sup.supervisor_fd.try_clone().expect("dup");
            drop(sup);
            if !wait_readable(fd.as_fd(), DEADLINE) {
                let _ = pidfd::send_signal(fd.as_fd(), Signal::KILL);
            }
            let _ = pidfd::reap(fd.as_fd(), true);
        }
    }
}

impl Guard {
    fn sup(&mut self) -> &mut Supervised {
        self.sup.as_mut().expect("supervised")
    }

    /// Opens a pidfd for `pid` and checks it is the process expected: alive, and its
    /// parent one of `parents`.
    fn track(&mut self, pid: Pid, parents: &[Pid]) -> usize {
        let fd = pidfd::open(pid).expect("pidfd_open");
        let st = procs::stat(pid).expect("the process is there");
        assert!(st.alive(), "{pid:?} is alive");
        assert!(
            parents.iter().any(|p| p.get() == st.ppid),
            "{pid:?} has parent {} (expected one of {parents:?})",
            st.ppid
        );
        self.fds.push(fd);
        self.fds.len() - 1
    }

    /// Reads events until `want` has been seen.
    fn wait_for(&mut self, want: SupervisorEvent) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.sup().read_events().expect("read_events");
            self.seen.extend(events);
            if self.seen.contains(&want) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero() && !self.sup().closed,
                "no {want:?} from the supervisor; seen {:?}",
                self.seen
            );
            let mut fds = [PollFd::from_borrowed_fd(
                self.sup().control_fd(),
                PollFlags::IN,
            )];
            crate::linux::poll(&mut fds, Some(left)).unwrap();
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, d: Duration) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    crate::linux::poll(&mut fds, Some(d)).unwrap() > 0
}

fn start(cmd: &mut Command) -> Option<Guard> {
    let binary = match find_binary(None) {
        Ok(b) => b,
        Err(e) => {
            skip(format!("{e}"));
            return None;
        }
    };
    let armed = arm(cmd, &binary).expect("arm");
    let child = cmd.spawn().expect("spawn");
    let sup = armed.finish(child).expect("finish");
    Some(Guard {
        sup: Some(sup),
        fds: Vec::new(),
        seen: Vec::new(),
    })
}

/// (blocked, ignored) signal masks of a process.
fn masks(pid: Pid) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.get())).unwrap();
    let mask = |field: &str| {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
    };
    (mask("SigBlk:"), mask("SigIgn:"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-sup-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    cmd
}

/// The main process exits, leaving an orphan: the supervisor reports the exit, adopts
/// the orphan, holds none of the user's descriptors, and is done only once the orphan
/// is gone.
#[test]
fn reports_the_main_exit_and_waits_for_the_orphan() {
    let mut cmd = sh("sleep 1000 >/dev/null 2>&1 & echo $!; exit 0");
    cmd.stdout(Stdio::piped());
    let Some(mut g) = start(&mut cmd) else { return };
    let (s, main) = (g.sup().supervisor, g.sup().main);
    // EOF once sh has exited: nobody else holds the pipe (the supervisor has
    // /dev/null, the orphan its own redirection).
    let mut out = String::new();
    g.sup()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let orphan = Pid::from_raw(out.trim().parse().unwrap()).unwrap();
    g.track(orphan, &[main, s]);
    g.wait_for(SupervisorEvent::MainExited(ExitKind::Code(0)));
    // Adopted: the supervisor is the subreaper.
    assert_eq!(procs::stat(orphan).unwrap().ppid, s.get());
    assert!(!g
        .seen
        .iter()
        .any(|e| matches!(e, SupervisorEvent::Done { .. })));
    assert_eq!(
        g.sup().try_reap().unwrap(),
        None,
        "the supervisor waits for the orphan"
    );

    // What the supervisor is: argv, no environment, /dev/null and the socket only,
    // the terminal's signals ignored, SIGCHLD blocked (read from a signalfd).
    let proc_dir = PathBuf::from(format!("/proc/{}", s.get()));
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap();
    assert_eq!(
        cmdline,
        format!("corral\0__supervise\0{}\0", main.get()).as_bytes()
    );
    assert!(std::fs::read(proc_dir.join("environ")).unwrap().is_empty());
    let mut fds: Vec<(i32, PathBuf)> = std::fs::read_dir(proc_dir.join("fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let n = e.file_name().to_str().unwrap().parse().unwrap();
            (n, std::fs::read_link(e.path()).unwrap())
        })
        .collect();
    fds.sort();
    let names: Vec<String> = fds
        .iter()
        .map(|(n, p)| format!("{n} {}", p.display()))
        .collect();
    assert_eq!(fds.len(), 5, "0-2, the socket, the signalfd: {names:?}");
    for (n, path) in &fds[..3] {
        assert_eq!(path, Path::new("/dev/null"), "fd {n}: {names:?}");
    }
    assert!(
        fds[3].1.to_string_lossy().starts_with("socket:"),
        "{names:?}"
    );
    assert_eq!(fds[4].1, Path::new("anon_inode:[signalfd]"), "{names:?}");
    let (blocked, ignored) = masks(s);
    let want: u64 = IGNORED.iter().map(|sig| 1 << (sig - 1)).sum();
    // (glibc in an exec'd program may ignore its internal signals 32 and 33 itself.)
    assert_eq!(ignored & want, want, "ignored: {ignored:x}");
    assert_eq!(blocked, 1 << (libc::SIGCHLD - 1), "blocked: {blocked:x}");

    pidfd::send_signal(g.fds[0].as_fd(), Signal::KILL).unwrap();
    g.wait_for(SupervisorEvent::Done { reaped: 1 });
    let fd = g.sup().supervisor_fd.try_clone().unwrap();
    assert!(
        wait_readable(fd.as_fd(), DEADLINE),
        "the supervisor exits when done"
    );
    assert_eq!(g.sup().try_reap().unwrap(), Some(ExitKind::Code(0)));
}

/// Closing our end without `detach` makes the supervisor kill everything, including a
/// descendant in a session of its own, before it exits.
#[test]
fn dropping_the_job_kills_it() {
    let mut cmd = sh("setsid sleep 1000 >/dev/null 2>&1 & echo $!; exec sleep 1000 >/dev/null");
    cmd.stdout(Stdio::piped());
    let Some(mut g) = start(&mut cmd) else { return };
    let (s, main) = (g.sup().supervisor, g.sup().main);
    let mut line = String::new();
    BufReader::new(g.sup().stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let escaped = Pid::from_raw(line.trim().parse().unwrap()).unwrap();
    g.track(main, &[s]);
    g.track(escaped, &[main, s]);
    // `echo $!` may run before the child has called setsid.
    let deadline = Instant::now() + DEADLINE;
    while procs::stat(escaped).unwrap().sid != escaped.get() {
        assert!(Instant::now() < deadline, "never setsid'd");
        std::thread::yield_now();
    }
    let m = procs::stat(main).unwrap();
    assert_eq!(m.pgid, main.get(), "the main process leads its own group");
    assert_ne!(procs::stat(s).unwrap().pgid, main.get());
    // The user's program gets the signal state std gives it, none of the hook's: what
    // this test process ignores it inherits (a shell's background job ignores SIGINT
    // and SIGQUIT, nohup SIGHUP), nothing more.
    let (blocked, ignored) = masks(main);
    let (_, ours) = masks(Pid::current());
    assert_eq!(blocked, 0, "blocked in the main process: {blocked:x}");
    for sig in IGNORED.into_iter().filter(|&sig| sig != libc::SIGPIPE) {
        let bit = 1 << (sig - 1);
        assert_eq!(
            ignored & bit,
            ours & bit,
            "signal {sig}: ignored in the main process {}, in the test process {}",
            ignored & bit != 0,
            ours & bit != 0
        );
    }
    // std resets SIGPIPE (which the Rust runtime ignores in this process).
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored in main"
    );

    let s_fd = g.sup().supervisor_fd.try_clone().unwrap();
    drop(g.sup.take());
    assert!(
        wait_readable(s_fd.as_fd(), DEADLINE),
        "the supervisor exits"
    );
    // It exits only once it has no child left: everything is gone already.
    for fd in &g.fds {
        assert!(
            wait_readable(fd.as_fd(), Duration::ZERO),
            "killed before it exited"
        );
    }
    assert_eq!(
        pidfd::reap(s_fd.as_fd(), false).unwrap(),
        Some(ExitKind::Code(0))
    );
}

/// The signals the supervisor ignores are ignored from before its exec: sent the
/// moment `finish` returns, they neither kill nor stop it.
#[test]
fn ignores_signals_from_the_start() {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let Some(mut g) = start(&mut cmd) else { return };
    let (s, main) = (g.sup().supervisor, g.sup().main);
    for sig in IGNORED {
        let sig = Signal::from_raw(sig).unwrap();
        pidfd::send_signal(g.sup().supervisor_fd.as_fd(), sig).unwrap();
    }
    let m = g.track(main, &[s]);
    pidfd::send_signal(g.fds[m].as_fd(), Signal::KILL).unwrap();
    g.wait_for(SupervisorEvent::MainExited(ExitKind::Signal(libc::SIGKILL)));
    g.wait_for(SupervisorEvent::Done { reaped: 0 });
    let fd = g.sup().supervisor_fd.try_clone().unwrap();
    assert!(wait_readable(fd.as_fd(), DEADLINE));
    assert_eq!(g.sup().try_reap().unwrap(), Some(ExitKind::Code(0)));
}

/// The hook does nothing once the spawn is over: the same `Command` spawns a plain child.
#[test]
fn the_command_can_be_spawned_again() {
    let mut cmd = sh("echo $PPID");
    cmd.stdout(Stdio::piped());
    let Some(mut g) = start(&mut cmd) else { return };
    let mut out = String::new();
    g.sup()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), g.sup().supervisor.get().to_string());
    g.wait_for(SupervisorEvent::Done { reaped: 0 });

    let again = cmd.output().unwrap();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        std::process::id().to_string()
    );
}

/// The user's program cannot be exec'd: std reports it, and waits for the supervisor,
/// which must exit on its own.
#[test]
fn a_failed_exec_of_the_command_does_not_hang() {
    let Ok(binary) = find_binary(None) else {
        return skip("no corral binary");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new("/nonexistent/corral-test-program");
        let armed = arm(&mut cmd, &binary).unwrap();
        let result = cmd.spawn().map(|_| ());
        drop(armed);
        let _ = tx.send(result.map_err(|e| e.kind()));
    });
    let result = rx.recv_timeout(DEADLINE).expect("spawn returns");
    assert_eq!(result, Err(io::ErrorKind::NotFound));
}

/// The supervisor binary cannot be exec'd (ENOEXEC): `finish` says so, and the main
/// process, already running, is killed.
#[test]
fn a_failed_exec_of_the_supervisor_is_reported() {
    let dir = scratch_dir("enoexec");
    let bogus = dir.join("corral");
    std::fs::write(&bogus, b"\x7fnot an executable").unwrap();
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = loop {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let armed = arm(&mut cmd, &bogus).unwrap();
        let child = cmd.spawn().unwrap();
        let err = armed.finish(child).err().expect("finish fails");
        // ETXTBSY while a child another test thread forked still holds our copy of
        // the file open for writing (until it execs).
        if !matches!(&err, Error::Spawn { source, .. } if source.raw_os_error() == Some(libc::ETXTBSY))
        {
            break err;
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    match &err {
        Error::Spawn { stage, source, .. } => {
            assert_eq!(stage, "exec the supervisor");
            assert_eq!(source.raw_os_error(), Some(libc::ENOEXEC), "{err}");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

/// A binary that does not answer `__supervise --protocol` (an unrelated `corral`, or
/// another version) is refused before any job runs under it.
#[test]
fn a_binary_that_does_not_speak_the_protocol_is_refused() {
    let dir = scratch_dir("protocol");
    let other = dir.join("corral");
    std::fs::write(&other, b"#!/bin/sh\necho corral-supervise 0\n").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = loop {
        match find_binary(Some(&other)) {
            // ETXTBSY: see a_failed_exec_of_the_supervisor_is_reported.
            Err(e) if e.to_string().contains("os error 26") => continue,
            other => break other.expect_err("refused"),
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, Error::NoSupervisor { .. }), "{err}");
    assert!(err.to_string().contains("does not speak"), "{err}");
}

#[test]
fn an_unusable_binary_is_refused() {
    let err = find_binary(Some(Path::new("/nonexistent/corral"))).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NoSupervisor { .. }));
    assert!(text.contains("/nonexistent/corral: not found"), "{text}");
    assert!(
        text.contains("install corral or set CORRAL_SUPERVISOR"),
        "{text}"
    );
    assert!(!err.is_usage());
    let plain = scratch_dir("unusable").join("corral");
    std::fs::write(&plain, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut cmd = Command::new("true");
    let err = arm(&mut cmd, &plain).err().expect("refused");
    let _ = std::fs::remove_dir_all(plain.parent().unwrap());
    assert!(err.to_string().contains("not executable"), "{err}");
    // Nothing was installed that changes the command.
    assert!(cmd.status().unwrap().success());
}
