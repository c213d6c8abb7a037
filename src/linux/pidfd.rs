//! pidfd: race-free signalling and waiting for one process.
//!
//! A pidfd names one process for as long as the fd is open, so a signal sent through it
//! can never reach a process that later got the same PID. corral signals single processes
//! only through pidfds (`pidfd_send_signal`, Linux 5.1), opens them with `pidfd_open`
//! (5.3) or receives them from `clone3(CLONE_PIDFD)` (5.3; 5.7 with `CLONE_INTO_CGROUP`),
//! waits with `poll` (readable when the process exits) and reaps with `waitid(P_PIDFD)`
//! (5.4).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::process::{PidfdFlags, WaitIdOptions};

use crate::options::Signal;

/// A process ID that is known to be > 0. It is never turned into a process-group or
/// "all processes" target: there is no API here that takes a negative or zero PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Pid(rustix::process::Pid);

impl Pid {
    pub(crate) fn from_raw(raw: i32) -> Option<Pid> {
        rustix::process::Pid::from_raw(raw).map(Pid)
    }

    pub(crate) fn get(self) -> i32 {
        self.0.as_raw_nonzero().get()
    }

    pub(crate) fn rustix(self) -> rustix::process::Pid {
        self.0
    }

    pub(crate) fn current() -> Pid {
        Pid(rustix::process::getpid())
    }
}

/// Opens a pidfd for `pid`. Refuses PID 1 (and the kernel refuses <= 0): corral never has
/// a reason to signal init.
pub(crate) fn open(pid: Pid) -> io::Result<OwnedFd> {
    if pid.get() <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to open a pidfd for PID 1",
        ));
    }
    Ok(rustix::process::pidfd_open(
        pid.rustix(),
        PidfdFlags::empty(),
    )?)
}

/// Sends `sig` to the process behind `fd`. ESRCH (already exited) is not an error.
pub(crate) fn send_signal(fd: BorrowedFd<'_>, sig: Signal) -> io::Result<()> {
    let s = rustix::process::Signal::from_named_raw(sig.as_raw())
        .or_else(|| {
            // SAFETY: `Signal` only holds numbers 1..=64, all valid for the kernel; real-time
            // signals have no named constant in rustix.
            Some(unsafe { rustix::process::Signal::from_raw_unchecked(sig.as_raw()) })
        })
        .expect("signal");
    match rustix::process::pidfd_send_signal(fd, s) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::SRCH => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How a reaped child ended.
pub(crate) use crate::exit_status::ExitKind;

/// Reaps the child behind `fd` if it has exited (non-blocking), or blocks until it does.
pub(crate) fn reap(fd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ExitKind>> {
    let mut opts = WaitIdOptions::EXITED;
    if !block {
        opts |= WaitIdOptions::NOHANG;
    }
    loop {
        match rustix::process::waitid(rustix::process::WaitId::PidFd(fd), opts) {
            Ok(Some(st)) => {
                if let Some(code) = st.exit_status() {
                    return Ok(Some(ExitKind::Code(code)));
                }
                if let Some(sig) = st.terminating_signal() {
                    return Ok(Some(ExitKind::Signal(sig)));
                }
                // Stopped/continued notifications are not requested; treat anything else
                // as not exited yet.
                if !block {
                    return Ok(None);
                }
            }
            Ok(None) => return Ok(None),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
