//! The CLI's signals: every signal whose default action would end corral (INT, TERM, HUP,
//! QUIT, ALRM, USR1, USR2, VTALRM, PROF, IO, PWR, STKFLT and the real-time ones), and those
//! the caller asked to pass on (`--forward`), are blocked and read from a signalfd, so the
//! run loop sees them as ordinary readable events (no handler, no self-pipe). A terminating
//! signal stops the job with that signal (as coreutils `timeout` passes it on) instead of
//! killing corral and leaving the job to its watchdog. The mask found at start-up is kept
//! so the job's child starts with it, not with ours. (SIGPIPE is the Rust runtime's to
//! ignore; SEGV, BUS, FPE, ILL, TRAP, SYS, XCPU and XFSZ are about corral itself.)

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use corral::Signal;

pub struct Signals {
    fd: OwnedFd,
    original_mask: libc::sigset_t,
}

/// The signals whose default action would end corral, and that corral reads instead.
fn terminating() -> impl Iterator<Item = i32> {
    [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGALRM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSTKFLT,
    ]
    .into_iter()
    // The real-time signals but the two glibc keeps for itself (32, 33).
    .chain(libc::SIGRTMIN() + 2..=libc::SIGRTMAX())
}

impl Signals {
    /// Blocks the terminating signals and `forward` for this (still single-threaded)
    /// process and opens the signalfd.
    pub fn install(forward: &corral::SignalSet) -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset before use;
        // pthread_sigmask and signalfd only read/write the sets we pass.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in terminating().chain(forward.iter().map(Signal::as_raw)) {
                libc::sigaddset(&mut set, s);
            }
            let mut original: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut original);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
                original_mask: original,
            })
        }
    }

    /// The mask the process had before `install`.
    pub fn original_mask(&self) -> corral::SignalSet {
        (1..=64)
            .filter_map(Signal::from_raw)
            // SAFETY: reads a set initialised by pthread_sigmask.
            .filter(|s| unsafe { libc::sigismember(&self.original_mask, s.as_raw()) } == 1)
            .collect()
    }
}

impl corral::SignalSource for Signals {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn take(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        // SAFETY: signalfd_siginfo is plain data; we read whole records into it.
        unsafe {
            loop {
                let mut info: libc::signalfd_siginfo = std::mem::zeroed();
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                let n = libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                );
                if n != size as isize {
                    break;
                }
                if let Some(sig) = Signal::from_raw(info.ssi_signo as i32) {
                    out.push(sig);
                }
            }
        }
        out
    }
}
