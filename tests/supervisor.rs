//! `corral __supervise`, the per-job supervisor of pgroup jobs, driven directly.
//!
//! Each test builds the layout the library's hook builds, with a shell instead of the
//! hook: a child made a subreaper in `pre_exec`, with the control socket at descriptor 3,
//! runs `sh -c 'JOB 3<&- & exec corral __supervise $!'`, so the job's main process is the
//! supervisor's child. The test holds the other end of the socket.
//!
//! Rules: processes are signalled only through pidfds, opened on processes verified to be
//! the job's (their parent is the main process or the supervisor) or on the supervisor
//! while it is our unreaped child. Waits are polls against deadlines. A guard kills what a
//! test started and reaps the supervisor, also when the test fails.
#![cfg(target_os = "linux")]

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use corral_testkit::poll_until;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, Signal};

const CORRAL: &str = corral_testkit::CORRAL;
const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `fd` is readable (a pidfd: the process exited) or `d` passes.
fn readable(fd: BorrowedFd<'_>, d: Duration) -> bool {
    let ts = Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos() as _,
    };
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// (ppid, sid) of a live process, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state ppid pgrp session ...
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    if f[0] == "Z" || f[0] == "X" {
        return None;
    }
    Some((f[1].parse().ok()?, f[3].parse().ok()?))
}

/// A supervisor started the way the hook starts it, and what the test learned of its job.
struct Supervised {
    child: Child,
    /// The supervisor's pidfd (opened while it is our unreaped child).
    fd: OwnedFd,
    control: Option<OwnedFd>,
    main: i32,
    /// Pidfds of the job's processes the test verified.
    tracked: Vec<OwnedFd>,
    dir: PathBuf,
}

impl Supervised {
    /// Starts `job` (`{dir}` replaced by a scratch directory) under a supervisor.
    fn start(name: &str, job: &str) -> Supervised {
        let dir =
            std::env::temp_dir().join(format!("corral-supervisor-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let job = job.replace("{dir}", dir.to_str().unwrap());
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{job} 3<&- & exec \"$0\" __supervise $!"))
            .arg(CORRAL)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
                let ok = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(raw, 3) == 3
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        // Our unreaped child: its PID cannot have been reused.
        let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let mut s = Supervised {
            child,
            fd,
            control: Some(ours),
            main: 0,
            tracked: Vec::new(),
            dir,
        };
        let proc_dir = PathBuf::from(format!("/proc/{}", s.pid()));
        s.main = poll_until("the supervisor to start", DEADLINE, || {
            let text = fs::read(proc_dir.join("cmdline")).ok()?;
            let args: Vec<&[u8]> = text.split(|b| *b == 0).collect();
            (args.get(1) == Some(&&b"__supervise"[..]))
                .then(|| std::str::from_utf8(args[2]).unwrap().parse().unwrap())
        });
        // Set up once SIGCHLD is blocked (its last step before it waits): the shell that
        // exec'd it did not ignore any signal for it, as the hook does.
        poll_until("the supervisor to block SIGCHLD", DEADLINE, || {
            let status = fs::read_to_string(proc_dir.join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("SigBlk:"))?;
            let mask = u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).ok()?;
            (mask & (1 << (libc::SIGCHLD - 1)) != 0).then_some(())
        });
        s
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Opens a pidfd for `pid` and checks it is one of the job's processes: alive, with the
    /// main process or the supervisor as its parent. Returns the pidfd's index.
    fn track(&mut self, pid: i32) -> usize {
        let fd =
            rustix::process::pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap();
        let (ppid, _) = stat(pid).expect("alive");
        assert!(
            ppid == self.main || ppid == self.pid(),
            "{pid} is a child of {ppid}, not of the job"
        );
        self.tracked.push(fd);
        self.tracked.len() - 1
    }

    /// A PID the job wrote to `{dir}/name`.
    fn pid_file(&self, name: &str) -> i32 {
        let path = self.dir.join(name);
        poll_until(path.display(), DEADLINE, || {
            let text = fs::read_to_string(&path).ok()?;
            text.ends_with('\n').then(|| text.trim().parse().unwrap())
        })
    }

    fn kill(&self, i: usize) {
        rustix::process::pidfd_send_signal(self.tracked[i].as_fd(), Signal::KILL).unwrap();
    }

    fn send(&self, msg: &str) {
        let control = self.control.as_ref().unwrap();
        rustix::net::send(control, msg.as_bytes(), SendFlags::NOSIGNAL).unwrap();
    }

    /// The next message, waiting for it; `None` at end of file.
    fn recv(&self) -> Option<String> {
        let control = self.control.as_ref().unwrap();
        assert!(
            readable(control.as_fd(), DEADLINE),
            "no message from the supervisor"
        );
        self.pending()
    }

    /// The next message if one is there; `None` if none is (or at end of file).
    fn pending(&self) -> Option<String> {
        let control = self.control.as_ref().unwrap();
        let mut buf = [0u8; 64];
        match rustix::net::recv(control, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) | Err(rustix::io::Errno::AGAIN) => None,
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Waits for the supervisor to exit, and reaps it.
    fn exit_status(&mut self) -> ExitStatus {
        assert!(
            readable(self.fd.as_fd(), DEADLINE),
            "the supervisor did not exit"
        );
        self.child.wait().unwrap()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        for fd in &self.tracked {
            let _ = rustix::process::pidfd_send_signal(fd.as_fd(), Signal::KILL);
        }
        // Without `detach`, end of file makes it kill the rest.
        drop(self.control.take());
        if !readable(self.fd.as_fd(), DEADLINE) {
            let _ = rustix::process::pidfd_send_signal(self.fd.as_fd(), Signal::KILL);
        }
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The main process exits and leaves an orphan: the supervisor says how the main process
/// ended, adopts the orphan, and is done (and exits) only once the orphan is gone too.
#[test]
fn reports_the_main_exit_then_waits_for_the_orphan() {
    let mut s = Supervised::start(
        "orphan",
        "sh -c 'sleep 1000 >/dev/null 2>&1 & echo $! >{dir}/orphan; exit 3'",
    );
    let orphan = s.pid_file("orphan");
    let i = s.track(orphan);
    assert_eq!(s.recv().as_deref(), Some("exit code 3"));
    // Its parent is gone: the subreaper adopted it.
    assert_eq!(stat(orphan).map(|(ppid, _)| ppid), Some(s.pid()));
    assert_eq!(s.pending(), None, "not done while the orphan lives");
    assert!(!readable(s.fd.as_fd(), Duration::ZERO), "still running");

    s.kill(i);
    assert_eq!(s.recv().as_deref(), Some("done 1"));
    assert_eq!(s.exit_status().code(), Some(0));
}

/// The host closes its end without `detach` (it dropped the job, or died): the supervisor
/// kills every descendant, also one in a session of its own, and exits once they are gone.
#[test]
fn end_of_file_kills_every_descendant() {
    let mut s = Supervised::start(
        "eof",
        "sh -c 'setsid sleep 1000 >/dev/null 2>&1 & echo $! >{dir}/escaped; exec sleep 1000'",
    );
    let escaped = s.pid_file("escaped");
    poll_until("setsid", DEADLINE, || {
        (stat(escaped)?.1 == escaped).then_some(())
    });
    s.track(escaped);
    let main = s.main;
    s.track(main);

    drop(s.control.take());
    assert_eq!(s.exit_status().code(), Some(0));
    // It exits only when it has no child left: everything is gone by then.
    for fd in &s.tracked {
        assert!(
            readable(fd.as_fd(), Duration::ZERO),
            "killed before it exited"
        );
    }
}

/// `detach`, then end of file: the supervisor lets the job be, and keeps reaping until the
/// job ends by itself (here: we kill it).
#[test]
fn detach_then_end_of_file_leaves_the_job_alone() {
    let mut s = Supervised::start(
        "detach",
        "sh -c 'setsid sleep 1000 >/dev/null 2>&1 & echo $! >{dir}/escaped; exec sleep 1000'",
    );
    let escaped = s.pid_file("escaped");
    let e = s.track(escaped);
    let main = s.main;
    let m = s.track(main);

    s.send("detach");
    drop(s.control.take());
    // After `detach` and end of file it closes its socket; were it to kill, it would kill
    // first (and exit).
    let fd3 = format!("/proc/{}/fd/3", s.pid());
    poll_until("the supervisor to close its socket", DEADLINE, || {
        fs::symlink_metadata(&fd3).is_err().then_some(())
    });
    for fd in &s.tracked {
        assert!(!readable(fd.as_fd(), Duration::ZERO), "left alone");
    }
    assert!(!readable(s.fd.as_fd(), Duration::ZERO), "still reaping");

    s.kill(m);
    s.kill(e);
    assert_eq!(s.exit_status().code(), Some(0));
}

/// Ctrl+C, Ctrl+\, Ctrl+Z, hang-up and the job's polite signal do not stop the supervisor:
/// after all of them it still reports the main process's end.
#[test]
fn survives_the_terminal_and_polite_signals() {
    let mut s = Supervised::start("signals", "sleep 1000");
    let main = s.main;
    let m = s.track(main);
    for sig in [
        Signal::INT,
        Signal::TERM,
        Signal::HUP,
        Signal::QUIT,
        Signal::TSTP,
        Signal::TTIN,
        Signal::TTOU,
        Signal::PIPE,
    ] {
        rustix::process::pidfd_send_signal(s.fd.as_fd(), sig).unwrap();
    }
    // A fatal signal would act before the supervisor ran again; a stop would keep it
    // from answering.
    s.kill(m);
    assert_eq!(s.recv().as_deref(), Some("exit signal 9 last"));
    assert_eq!(s.recv().as_deref(), Some("done 0"));
    let status = s.exit_status();
    assert_eq!((status.code(), status.signal()), (Some(0), None));
}

/// Run by hand (no socket at 3, or no PID): exits 2 at once, and says nothing (a
/// supervisor never writes to stdout or stderr).
#[test]
fn misuse_exits_at_once_and_silently() {
    for args in [
        &["__supervise"][..],
        &["__supervise", "12345"],
        &["__supervise", "-1"],
    ] {
        let mut child = Command::new(CORRAL)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let exited = readable(fd.as_fd(), DEADLINE);
        if !exited {
            let _ = rustix::process::pidfd_send_signal(fd.as_fd(), Signal::KILL);
        }
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        child.stderr.take().unwrap().read_to_end(&mut out).unwrap();
        let status = child.wait().unwrap();
        assert!(exited, "{args:?} did not exit");
        assert_eq!(status.code(), Some(2), "{args:?}");
        assert!(
            out.is_empty(),
            "{args:?} wrote {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// What the hook relies on: `PR_SET_CHILD_SUBREAPER` survives `execve` (the attribute
/// set in the hook holds from before the supervisor's exec), and is not inherited by
/// `fork` (the user's processes are not subreapers).
///
/// P (subreaper, set before exec) runs Q, which runs R, which starts a sleep and exits
/// while Q still runs: the sleep goes to P, not Q, nor init.
#[test]
fn the_subreaper_attribute_survives_exec_and_is_not_inherited() {
    let dir = std::env::temp_dir().join(format!("corral-supervisor-{}-attr", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sleep");
    // R writes the sleep's PID and its own.
    let script = format!(
        "sh -c 'sh -c \"sleep 1000 >/dev/null 2>&1 & echo \\$! \\$\\$ >{f}.tmp; mv {f}.tmp {f}\"; read x'; read x",
        f = file.display()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    // SAFETY: one system call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
            Ok(())
        });
    }
    let mut p = cmd.spawn().unwrap();
    let p_pid = p.id() as i32;
    struct Cleanup(Option<OwnedFd>, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(fd) = &self.0 {
                let _ = rustix::process::pidfd_send_signal(fd.as_fd(), Signal::KILL);
            }
            let _ = fs::remove_dir_all(&self.1);
        }
    }
    let mut cleanup = Cleanup(None, dir.clone());
    let (sleep, r): (i32, i32) = poll_until("the PIDs", DEADLINE, || {
        let text = fs::read_to_string(&file).ok()?;
        let mut w = text.split_whitespace().map(|w| w.parse().unwrap());
        Some((w.next()?, w.next()?))
    });
    let fd =
        rustix::process::pidfd_open(Pid::from_raw(sleep).unwrap(), PidfdFlags::empty()).unwrap();
    // Open while the sleep is R's child or, once R has exited, adopted: alive either way.
    assert!(stat(sleep).is_some());
    cleanup.0 = Some(fd);
    let ppid = poll_until("R to exit", DEADLINE, || {
        let (ppid, _) = stat(sleep)?;
        (ppid != r).then_some(ppid)
    });
    assert_eq!(
        ppid, p_pid,
        "adopted by P (the attribute survived exec), not by Q (it is not inherited) or init"
    );
    let fd = cleanup.0.take().unwrap();
    rustix::process::pidfd_send_signal(fd.as_fd(), Signal::KILL).unwrap();
    assert!(readable(fd.as_fd(), DEADLINE));
    drop(p.stdin.take());
    p.wait().unwrap();
}
