//! The `pre_exec` hook, run by std's forked child `C` between fork and exec: only
//! async-signal-safe calls, no allocation.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use super::{CONTROL_FD, EXIT_EXEC_FAILED, IGNORED};
use crate::linux::postfork::{put_decimal, raw_fork};

/// What the `pre_exec` hook needs, prepared before the fork.
pub(super) struct Hook {
    /// The supervisor's end of the control socket while armed; -1 once disarmed, when the
    /// hook does nothing (so the caller's `Command` can be spawned again as usual).
    pub(super) fd: AtomicI32,
    /// The absolute path of the `corral` executable.
    pub(super) binary: CString,
}

impl Hook {
    /// The hook in `C`, std's child. Returns in the main process `M`; never returns in `C`.
    pub(super) fn run(&self) -> io::Result<()> {
        let sock = self.fd.load(Ordering::SeqCst);
        if sock < 0 {
            return Ok(());
        }
        // SAFETY (whole function): only async-signal-safe system calls, on descriptors and
        // C strings prepared before the fork and on stack buffers; nothing allocates, locks
        // or unwinds (`io::Error::last_os_error` stores the errno without allocating).
        unsafe {
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // From the fork on, no signal acts on C: no host handler runs in it, and no
            // Ctrl+C kills it before the supervisor ignores it. The supervisor starts with
            // every signal blocked and sets its own mask.
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, &mut before);
            let main = raw_fork();
            if main <= 0 {
                // M (or C, when the fork failed): the mask std set up again.
                let err = io::Error::last_os_error();
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                if main < 0 {
                    return Err(err);
                }
                // The job's own process group, then back to std, which execs the user's
                // program.
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                return Ok(());
            }
            // Also from this side, so the group exists before `main` is announced whichever
            // runs first (EACCES once M has exec'd: then it did it itself).
            libc::setpgid(main, main);
            // A session of its own (M stays in the host's): a SIGKILL to the host's whole
            // process group then leaves the supervisor alive to see the host go and kill the
            // job. C is no group leader (std's child, in the host's group), so this works
            // unless the caller's `Command` asked for a process group; then C stays where it
            // is, as before.
            libc::setsid();
            self.become_supervisor(sock, main)
        }
    }

    /// `C` after the fork: announce `M`, then exec the supervisor.
    ///
    /// # Safety
    /// Only in the forked child, with `main` its unreaped child.
    unsafe fn become_supervisor(&self, sock: RawFd, main: libc::pid_t) -> ! {
        let errno = || *libc::__errno_location();
        let mut buf = [0u8; 32];
        let n = put_message(&mut buf, b"main ", main as u32);
        if libc::send(
            sock,
            buf.as_ptr().cast(),
            n,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        ) != n as isize
        {
            give_up(sock, main, errno());
        }
        // Ignored dispositions survive exec (and discard what is pending): the supervisor
        // ignores these from the start.
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        for sig in IGNORED {
            libc::sigaction(sig, &ign, std::ptr::null_mut());
        }
        if sock == CONTROL_FD {
            if libc::fcntl(sock, libc::F_SETFD, 0) != 0 {
                give_up(sock, main, errno());
            }
        } else {
            // Whatever is at 3 (std's close-on-exec status pipe, say) moves out of the way
            // but stays open until exec, so std still learns when we have exec'd.
            libc::fcntl(CONTROL_FD, libc::F_DUPFD_CLOEXEC, CONTROL_FD + 1);
            // dup2 clears close-on-exec on the new descriptor.
            if libc::dup2(sock, CONTROL_FD) < 0 {
                give_up(sock, main, errno());
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            give_up(sock, main, errno());
        }
        for fd in 0..=2 {
            if fd != null && libc::dup2(null, fd) < 0 {
                give_up(sock, main, errno());
            }
        }
        if null > 2 {
            libc::close(null);
        }
        let mut pid = [0u8; 12];
        put_decimal(&mut pid, main as u32);
        let argv: [*const libc::c_char; 4] = [
            c"corral".as_ptr(),
            c"__supervise".as_ptr(),
            pid.as_ptr().cast(),
            std::ptr::null(),
        ];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        libc::execve(self.binary.as_ptr(), argv.as_ptr(), envp.as_ptr());
        give_up(sock, main, errno())
    }
}

/// `C` could not become the supervisor: say why, kill and reap `M`, exit.
///
/// # Safety
/// Only in the forked child, with `main` its unreaped child (so its PID cannot be reused
/// before the `waitpid` here).
unsafe fn give_up(sock: RawFd, main: libc::pid_t, errno: i32) -> ! {
    let mut buf = [0u8; 32];
    let n = put_message(&mut buf, b"exec-failed ", errno as u32);
    libc::send(
        sock,
        buf.as_ptr().cast(),
        n,
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
    );
    libc::kill(main, libc::SIGKILL);
    while libc::waitpid(main, std::ptr::null_mut(), libc::__WALL) < 0
        && *libc::__errno_location() == libc::EINTR
    {}
    libc::_exit(EXIT_EXEC_FAILED)
}

/// `prefix` and the decimal `n` into `buf`; returns the length. Allocation-free.
pub(super) fn put_message(buf: &mut [u8; 32], prefix: &[u8], n: u32) -> usize {
    buf[..prefix.len()].copy_from_slice(prefix);
    prefix.len() + put_decimal(&mut buf[prefix.len()..], n)
}
