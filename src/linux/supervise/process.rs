//! The supervisor process, `corral __supervise`: reaps every child, reports how the main
//! process ended, and kills what is left if the host goes away without `detach`.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use super::binary::{PROTOCOL, PROTOCOL_ARG};
use super::wire::{parse_pid, recv_message, send, Message};
use super::{ARG, CONTROL_FD, EXIT_NO_MAIN, EXIT_USAGE, IGNORED};
use crate::error::{Error, Result};
use crate::linux::pgroup;
use crate::linux::pidfd::Pid;
use crate::linux::postfork::close_descriptors_from;

/// `corral __supervise <main pid>`, with the control socket at descriptor 3. Never
/// returns: exits 0 once the job is empty, [`EXIT_USAGE`] when run without its socket or
/// PID, [`EXIT_NO_MAIN`] when the main process was never its child, 1 on a system error.
pub(crate) fn main() -> ! {
    let code = match Reaper::start() {
        Ok(s) => s.run(),
        Err(code) => code,
    };
    std::process::exit(code)
}

/// The state of `S`.
struct Reaper {
    me: Pid,
    main: Pid,
    /// The control socket; closed once the host has closed its end after `detach`.
    control: Option<OwnedFd>,
    sigchld: OwnedFd,
    main_reaped: bool,
    orphans: usize,
    detached: bool,
}

/// What the host said.
enum Heard {
    Nothing,
    /// End of file (or a failed socket): nobody can tell us to detach any more.
    Gone,
}

impl Reaper {
    fn start() -> std::result::Result<Reaper, i32> {
        let args: Vec<_> = std::env::args_os().collect();
        let main = match args.as_slice() {
            [_, arg, flag] if arg == ARG && flag == PROTOCOL_ARG => {
                println!("{PROTOCOL}");
                std::process::exit(0);
            }
            [_, arg, pid] if arg == ARG => pid.to_str().and_then(parse_pid).ok_or(EXIT_USAGE)?,
            _ => return Err(EXIT_USAGE),
        };
        // SAFETY: plain data in; setting dispositions has no memory effects on us. SIGCHLD
        // back to its default: an ignored SIGCHLD (inherited from the host) would make the
        // kernel reap our children itself and hide the main process's status.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_IGN;
            for sig in IGNORED {
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut());
        }
        close_descriptors_from(CONTROL_FD + 1);
        // SAFETY: only borrowed for the fstat; ownership is taken below.
        let fd3 = unsafe { BorrowedFd::borrow_raw(CONTROL_FD) };
        let is_socket = rustix::fs::fstat(fd3).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
        });
        if !is_socket {
            return Err(EXIT_USAGE);
        }
        // SAFETY: descriptor 3 is open (fstat said so), and by the protocol it is ours.
        let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
        // Already set by C before exec (it survives exec); again in case we were started
        // some other way.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|_| 1)?;
        let sigchld = sigchld_fd().map_err(|_| 1)?;
        Ok(Reaper {
            me: Pid::current(),
            main,
            control: Some(control),
            sigchld,
            main_reaped: false,
            orphans: 0,
            detached: false,
        })
    }

    /// Reaps until no child is left; kills everything first if the host goes away without
    /// `detach`. Returns the exit status.
    fn run(mut self) -> i32 {
        // Reaping comes first and after every wake-up: SIGCHLDs that arrived before the
        // signalfd existed are not lost.
        loop {
            match self.reap() {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => return 1,
            }
            let mut fds = vec![PollFd::new(&self.sigchld, PollFlags::IN)];
            if let Some(control) = &self.control {
                fds.push(PollFd::new(control, PollFlags::IN));
            }
            if crate::linux::poll(&mut fds, None).is_err() {
                return 1;
            }
            let sigchld = !fds[0].revents().is_empty();
            let control = fds.get(1).is_some_and(|p| !p.revents().is_empty());
            drop(fds);
            if sigchld {
                drain(self.sigchld.as_fd());
            }
            if control {
                if let Heard::Gone = self.read_control() {
                    if !self.detached {
                        if self.kill_everything().is_err() {
                            return 1;
                        }
                        break;
                    }
                    // Detached and alone: nothing more to say or hear.
                    self.control = None;
                }
            }
        }
        self.tell(&format!("done {}", self.orphans));
        if self.main_reaped {
            0
        } else {
            EXIT_NO_MAIN
        }
    }

    /// Sends a message to the host if it still listens; never blocks.
    fn tell(&self, msg: &str) {
        if let Some(control) = &self.control {
            let _ = send(control.as_fd(), msg.as_bytes());
        }
    }

    /// Reaps every exited child, reporting the main process. False once no child is left.
    fn reap(&mut self) -> io::Result<bool> {
        // The main process's end is told once this pass is over, marked `last` when no
        // child is left: then the host knows `done` follows and need not walk /proc.
        let mut exit: Option<String> = None;
        let result = self.reap_pass(&mut exit);
        if let Some(msg) = exit {
            let last = matches!(result, Ok(false));
            self.tell(&if last { format!("{msg} last") } else { msg });
        }
        result
    }

    fn reap_pass(&mut self, exit: &mut Option<String>) -> io::Result<bool> {
        loop {
            // SAFETY: `info` is plain data the kernel fills in.
            let info = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let flags = libc::WEXITED | libc::WNOHANG | libc::__WALL;
                if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::ECHILD) => return Ok(false),
                        _ => return Err(err),
                    }
                }
                info
            };
            // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed: no child has
            // exited), for which si_pid and si_status are the valid fields.
            let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
            if pid == 0 {
                return Ok(true);
            }
            if pid != self.main.get() {
                self.orphans += 1;
                continue;
            }
            self.main_reaped = true;
            *exit = Some(match info.si_code {
                libc::CLD_EXITED => format!("exit code {status}"),
                _ => format!("exit signal {status}"),
            });
        }
    }

    /// Reads the host's messages: notes `detach`, and says whether the host is gone.
    fn read_control(&mut self) -> Heard {
        let Some(control) = &self.control else {
            return Heard::Nothing;
        };
        loop {
            match recv_message(control.as_fd(), None) {
                Ok(Some(Message::Detach)) => self.detached = true,
                Ok(Some(_)) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Heard::Nothing,
                Ok(None) | Err(_) => return Heard::Gone,
            }
        }
    }

    /// SIGKILLs every descendant through verified pidfds, again and again, reaping, until
    /// no child is left.
    fn kill_everything(&mut self) -> Result<()> {
        let me = self.me;
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let (_, left) = pgroup::kill_all(me, far, HashSet::new(), &mut || {
                self.reap()
                    .map(|any| !any)
                    .map_err(|e| Error::sys("waitid(P_ALL)", e))
            })?;
            if left.is_empty() {
                return Ok(());
            }
        }
    }
}

/// A non-blocking signalfd for SIGCHLD, which is blocked from now on, and only it (`C`
/// exec'd us with every signal blocked).
fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: plain data in and out; the new descriptor is owned by the OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Empties a non-blocking signalfd (the pending signals are only a wake-up).
fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8 * 128];
    while matches!(rustix::io::read(fd, &mut buf[..]), Ok(n) if n > 0) {}
}
