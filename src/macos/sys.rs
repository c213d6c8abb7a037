//! The few system calls the macOS backend makes, each in one small wrapper; every `unsafe`
//! block of the backend is here.
//!
//! PIDs are a [`Pid`], which cannot hold 0, 1 or a negative number, and a process group is
//! a [`ProcessGroup`]: so `kill(0)`, `kill(-1)`, `kill(1)` and a raw negative PID cannot be
//! written with these types.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A process ID greater than 1 (never 0, init/launchd, or a negative "group" value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Pid(libc::pid_t);

impl Pid {
    /// `None` for anything ≤ 1.
    pub(crate) fn new(raw: libc::pid_t) -> Option<Pid> {
        (raw > 1).then_some(Pid(raw))
    }

    pub(crate) fn get(self) -> libc::pid_t {
        self.0
    }
}

/// A process group corral created: its id is the job's main process's PID, and corral keeps
/// that process unreaped until the job is over, so the id cannot be reused meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessGroup(Pid);

impl ProcessGroup {
    /// The group led by `leader` (made with `setpgid(0, 0)` in the child).
    pub(crate) fn led_by(leader: Pid) -> ProcessGroup {
        ProcessGroup(leader)
    }

    pub(crate) fn id(self) -> libc::pid_t {
        self.0.get()
    }
}

/// How a process ended, in macOS's own numbers.
pub(crate) use crate::exit_status::ExitKind;

/// `kill(2)` to one process. See <https://man.freebsd.org/cgi/man.cgi?kill(2)>.
pub(crate) fn kill_process(pid: Pid, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: `kill` has no memory effects; `pid` is > 1, so this is never kill(0),
    // kill(-1) or launchd.
    if unsafe { libc::kill(pid.get(), sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `killpg(2)` to a group corral created.
pub(crate) fn kill_process_group(group: ProcessGroup, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: `killpg` has no memory effects; the group id is > 1 (see `ProcessGroup`).
    if unsafe { libc::killpg(group.id(), sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling process's session id (`getsid(0)`), or of `pid`.
pub(crate) fn session_of(pid: Option<Pid>) -> Option<libc::pid_t> {
    // SAFETY: `getsid` has no memory effects.
    let sid = unsafe { libc::getsid(pid.map_or(0, Pid::get)) };
    (sid > 0).then_some(sid)
}

/// The PIDs a libproc list call returns: `list(buffer, size_in_bytes)` answers a count of
/// PIDs (`proc_listchildpids`, `proc_listpgrppids`). The buffer grows until the answer fits.
fn list_pids(list: impl Fn(*mut libc::c_void, libc::c_int) -> libc::c_int) -> Vec<Pid> {
    let mut cap = 64usize;
    loop {
        let mut buf: Vec<libc::pid_t> = vec![0; cap];
        let bytes = (cap * std::mem::size_of::<libc::pid_t>()) as libc::c_int;
        let n = list(buf.as_mut_ptr().cast(), bytes);
        if n < 0 {
            return Vec::new();
        }
        let n = n as usize;
        // A full buffer may have cut the list short: ask again with more room.
        if n >= cap && cap < 1 << 20 {
            cap *= 4;
            continue;
        }
        buf.truncate(n.min(cap));
        return buf.into_iter().filter_map(Pid::new).collect();
    }
}

/// The children of `parent` (`proc_listchildpids`, libproc).
pub(crate) fn child_pids(parent: Pid) -> Vec<Pid> {
    list_pids(|buf, size| {
        // SAFETY: `buf` points to `size` writable bytes (a live Vec in `list_pids`); libproc
        // writes at most `size` bytes.
        unsafe { libc::proc_listchildpids(parent.get(), buf, size) }
    })
}

/// The members of `group` (`proc_listpgrppids`, libproc).
pub(crate) fn group_pids(group: ProcessGroup) -> Vec<Pid> {
    list_pids(|buf, size| {
        // SAFETY: as in `child_pids`.
        unsafe { libc::proc_listpgrppids(group.id(), buf, size) }
    })
}

/// What `proc_pidinfo(PROC_PIDTBSDINFO)` says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BsdInfo {
    pub(crate) pid: Pid,
    pub(crate) ppid: libc::pid_t,
    pub(crate) pgid: libc::pid_t,
    /// Start time (seconds, microseconds): with the PID, what identifies the process.
    pub(crate) start: (u64, u64),
    pub(crate) zombie: bool,
    /// The command name (`pbi_name`, else `pbi_comm`): no arguments.
    pub(crate) name: String,
}

/// `proc_pidinfo(pid, PROC_PIDTBSDINFO)`; `None` when the process is gone (or hidden).
pub(crate) fn bsd_info(pid: Pid) -> Option<BsdInfo> {
    // SAFETY: `proc_bsdinfo` is plain old data for which all-zero is valid.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is a writable `proc_bsdinfo` of `size` bytes, as the flavour expects.
    let n = unsafe {
        libc::proc_pidinfo(
            pid.get(),
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    if n != size || info.pbi_pid != pid.get() as u32 {
        return None;
    }
    let text = |chars: &[libc::c_char]| -> String {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut name = text(&info.pbi_name);
    if name.is_empty() {
        name = text(&info.pbi_comm);
    }
    Some(BsdInfo {
        pid,
        ppid: info.pbi_ppid as libc::pid_t,
        pgid: info.pbi_pgid as libc::pid_t,
        start: (info.pbi_start_tvsec, info.pbi_start_tvusec),
        zombie: info.pbi_status == libc::SZOMB,
        name,
    })
}

/// How our child `pid` ended, if it has, without reaping it (`waitid(WNOWAIT)`): it stays a
/// zombie, so its PID (and the group id it leads) cannot be reused.
pub(crate) fn peek_exit(pid: Pid) -> io::Result<Option<ExitKind>> {
    loop {
        // SAFETY: `siginfo_t` is plain old data for which all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is a writable `siginfo_t`; with WNOWAIT nothing is reaped.
        let r = unsafe { libc::waitid(libc::P_PID, pid.get() as libc::id_t, &mut info, flags) };
        if r == 0 {
            if info.si_pid == 0 {
                return Ok(None);
            }
            return Ok(Some(match info.si_code {
                libc::CLD_EXITED => ExitKind::Code(info.si_status),
                _ => ExitKind::Signal(info.si_status),
            }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Reaps our child `pid` (`waitpid`, blocking until it has exited).
pub(crate) fn reap(pid: Pid) -> io::Result<ExitKind> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a writable int; `pid` is our own child.
        let r = unsafe { libc::waitpid(pid.get(), &mut status, 0) };
        if r == pid.get() {
            return Ok(if libc::WIFSIGNALED(status) {
                ExitKind::Signal(libc::WTERMSIG(status))
            } else {
                ExitKind::Code(libc::WEXITSTATUS(status))
            });
        }
        let err = io::Error::last_os_error();
        if r < 0 && err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A kqueue watching processes (`EVFILT_PROC`): it wakes the job when one it watches exits
/// or forks. Events only wake the job; what happened is read again from libproc.
#[derive(Debug)]
pub(crate) struct Kqueue(OwnedFd);

impl Kqueue {
    /// `kqueue(2)`. Not inherited by children: kqueues do not survive `fork` on macOS.
    pub(crate) fn new() -> io::Result<Kqueue> {
        // SAFETY: `kqueue` takes no arguments and returns a new descriptor or -1.
        let fd = unsafe { libc::kqueue() };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `kqueue` and nothing else owns it.
        Ok(Kqueue(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `pid` for `NOTE_EXIT | NOTE_FORK` (a process that exits drops its watch).
    pub(crate) fn watch(&self, pid: Pid) -> io::Result<()> {
        // SAFETY: `kevent` is plain old data for which all-zero is valid.
        let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
        ev.ident = pid.get() as libc::uintptr_t;
        ev.filter = libc::EVFILT_PROC;
        ev.flags = libc::EV_ADD | libc::EV_CLEAR;
        ev.fflags = libc::NOTE_EXIT | libc::NOTE_FORK;
        // SAFETY: one change read from `ev`; no event list is written (nevents 0).
        let r = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                &ev,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for events until `timeout` (`None`: for ever). Returns how many came; an
    /// interrupted wait returns 0.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<usize> {
        const N: usize = 16;
        // SAFETY: an array of plain old data for which all-zero is valid.
        let mut events: [libc::kevent; N] = unsafe { std::mem::zeroed() };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: no changes are read; `events` has room for `N` events; `ts_ptr` is null or
        // points to `ts`, which lives until the call returns.
        let r = unsafe {
            libc::kevent(
                self.0.as_raw_fd(),
                std::ptr::null(),
                0,
                events.as_mut_ptr(),
                N as libc::c_int,
                ts_ptr,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        Err(err)
    }
}
