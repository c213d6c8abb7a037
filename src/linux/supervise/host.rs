//! The host's side of a supervised job: the control socket, the armed `Command`, and the
//! events the supervisor reports.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::binary::{executable, no_supervisor};
use super::hook::Hook;
use super::wire::{peek_message, recv_message, send, Message};
use super::{ARG, CONTROL_FD, MAIN_DEADLINE};
use crate::error::{Error, Result};
use crate::linux::channel;
use crate::linux::pidfd::{self, ExitKind, Pid};

/// A `Command` whose next spawn starts a supervised job; see [`arm`].
pub(crate) struct Armed {
    hook: Arc<Hook>,
    /// Our end of the control socket.
    control: Option<OwnedFd>,
    /// The supervisor's end, kept open until the spawn is over.
    theirs: Option<OwnedFd>,
    binary: PathBuf,
}

/// Prepares `cmd` so that its next `spawn` runs under a supervisor from `binary`: creates
/// the control socket and installs the `pre_exec` hook. `pre_exec` hooks cannot be
/// removed, so the hook stays on `cmd` but does nothing once [`Armed`] is finished or
/// dropped. Hooks the caller installs after this one run in the main process only.
pub(crate) fn arm(cmd: &mut Command, binary: &Path) -> Result<Armed> {
    let binary =
        executable(binary).map_err(|why| no_supervisor(format!("{}: {why}", binary.display())))?;
    let path = CString::new(binary.as_os_str().as_bytes()).map_err(|_| {
        Error::InvalidOptions(format!("{:?} contains a NUL byte; remove it", binary))
    })?;
    let (ours, theirs) = channel::pair("socketpair(AF_UNIX, SOCK_SEQPACKET) for the supervisor")?;
    // In the child std puts the command's stdio on 0, 1 and 2 before our hook runs: a
    // socket there (the host had closed one of them) would be gone by then.
    let theirs = if theirs.as_raw_fd() <= 2 {
        rustix::io::fcntl_dupfd_cloexec(&theirs, CONTROL_FD)
            .map_err(|e| Error::sys("fcntl(F_DUPFD_CLOEXEC) on the supervisor's socket", e))?
    } else {
        theirs
    };
    let hook = Arc::new(Hook {
        fd: AtomicI32::new(theirs.as_raw_fd()),
        binary: path,
    });
    let in_child = Arc::clone(&hook);
    // SAFETY: the closure runs in the forked child between fork and exec. `Hook::run` only
    // makes async-signal-safe system calls on data prepared here (see there); it never
    // allocates, locks or unwinds.
    unsafe {
        cmd.pre_exec(move || in_child.run());
    }
    Ok(Armed {
        hook,
        control: Some(ours),
        theirs: Some(theirs),
        binary,
    })
}

impl Armed {
    /// Disarms the hook and takes over what `cmd.spawn()` returned: `child` is the
    /// supervisor (our unreaped child, so opening its pidfd is race-free), and its first
    /// message names the main process. Its stdio handles are the main process's.
    pub(crate) fn finish(mut self, mut child: Child) -> Result<Supervised> {
        self.disarm();
        // With our copy of its end closed, a supervisor that is gone reads as end of file.
        drop(self.theirs.take());
        let control = self.control.take().expect("finish runs once");
        let supervisor = Pid::from_raw(child.id() as i32).expect("a child's PID is positive");
        match self.handshake(control.as_fd(), supervisor) {
            Ok((main, supervisor_fd)) => Ok(Supervised {
                supervisor,
                supervisor_fd,
                main,
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
                control,
                closed: false,
                exit: None,
            }),
            Err(e) => {
                // Closing our end makes a supervisor that runs kill the job and exit; a `C`
                // that failed has exited already. Either way, reap it.
                drop(control);
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Reads `main <pid>` and checks that no `exec-failed` follows; opens the pidfd.
    fn handshake(&self, control: BorrowedFd<'_>, supervisor: Pid) -> Result<(Pid, OwnedFd)> {
        rustix::io::ioctl_fionbio(control, true)
            .map_err(|e| Error::sys("ioctl(FIONBIO) on the supervisor's socket", e))?;
        // std returns from spawn once every copy of its close-on-exec status pipe is
        // closed, and the hook keeps its copy open until the supervisor's exec (or its
        // exit): `main`, and `exec-failed` if the exec failed, are there already. The
        // deadline is a backstop.
        let main = match recv_message(control, Some(Instant::now() + MAIN_DEADLINE)) {
            Ok(Some(Message::Main(pid))) => pid,
            Ok(other) => {
                let what = match other {
                    None => "it exited without a word".to_string(),
                    Some(m) => format!("it said {m:?} first"),
                };
                let e = io::Error::new(io::ErrorKind::InvalidData, what);
                return Err(self.spawn_error("name the main process", e));
            }
            Err(e) => return Err(self.spawn_error("name the main process", e)),
        };
        match peek_message(control) {
            Ok(Some(Message::ExecFailed(errno))) => {
                let e = io::Error::from_raw_os_error(errno);
                return Err(self.spawn_error("exec the supervisor", e));
            }
            Ok(_) => {}
            Err(e) => return Err(self.spawn_error("read the supervisor's socket", e)),
        }
        // Our unreaped child: its PID cannot have been reused.
        let fd =
            pidfd::open(supervisor).map_err(|e| Error::process("pidfd_open", supervisor, e))?;
        Ok((main, fd))
    }

    fn disarm(&self) {
        self.hook.fd.store(-1, Ordering::SeqCst);
    }

    fn spawn_error(&self, stage: &str, source: io::Error) -> Error {
        Error::Spawn {
            program: format!("{} {ARG}", self.binary.display()),
            stage: stage.into(),
            source,
        }
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// What the supervisor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SupervisorEvent {
    /// The main process exited (and was reaped by the supervisor).
    MainExited(ExitKind),
    /// Sent right after `MainExited`: the main process was the supervisor's last child,
    /// so `Done` follows (the host need not look for leftovers).
    LastChild,
    /// The supervisor has no child left (`reaped` orphans reaped in all); it exits now.
    Done { reaped: usize },
}

/// A running job under its supervisor.
///
/// Dropping it closes the control socket: unless [`Supervised::detach`] was sent, the
/// supervisor then kills the whole job and exits. It stays our child until reaped
/// ([`Supervised::try_reap`]).
pub(crate) struct Supervised {
    /// The supervisor process (our child).
    pub(crate) supervisor: Pid,
    /// Its pidfd: readable once it has exited.
    pub(crate) supervisor_fd: OwnedFd,
    /// The job's main process (the supervisor's child).
    pub(crate) main: Pid,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
    /// Our end of the control socket, non-blocking.
    control: OwnedFd,
    /// The supervisor's end is closed (it exited, or is about to).
    pub(super) closed: bool,
    /// The supervisor's own end, once reaped.
    exit: Option<ExitKind>,
}

impl Supervised {
    /// Readable when a message is pending, and for good once the supervisor has closed its
    /// end (it exits right after): then wait on `supervisor_fd`.
    pub(crate) fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// Every message pending, without blocking.
    pub(crate) fn read_events(&mut self) -> Result<Vec<SupervisorEvent>> {
        let mut events = Vec::new();
        while !self.closed {
            match recv_message(self.control.as_fd(), None) {
                Ok(Some(Message::Exit(kind, last))) => {
                    events.push(SupervisorEvent::MainExited(kind));
                    if last {
                        events.push(SupervisorEvent::LastChild);
                    }
                }
                Ok(Some(Message::Done(reaped))) => events.push(SupervisorEvent::Done { reaped }),
                Ok(Some(other)) => {
                    return Err(Error::sys(
                        "read the supervisor's messages",
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unexpected message {other:?}"),
                        ),
                    ))
                }
                Ok(None) => self.closed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Error::sys("recv from the supervisor", e)),
            }
        }
        Ok(events)
    }

    /// Tells the supervisor to let the job be: it will never kill, and exits once the job
    /// is empty. A supervisor that is already gone has nothing to detach.
    pub(crate) fn detach(&self) -> Result<()> {
        match send(self.control.as_fd(), b"detach") {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => Ok(()),
            Err(e) => Err(Error::sys("send detach to the supervisor", e)),
        }
    }

    /// Reaps the supervisor if it has exited (never blocks). Its status afterwards, again.
    pub(crate) fn try_reap(&mut self) -> Result<Option<ExitKind>> {
        if self.exit.is_none() {
            self.exit = pidfd::reap(self.supervisor_fd.as_fd(), false).map_err(|e| {
                Error::process("waitid(P_PIDFD) on the supervisor", self.supervisor, e)
            })?;
        }
        Ok(self.exit)
    }
}
