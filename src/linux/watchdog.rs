//! The watchdog: a cgroup job dies with the process that supervises it.
//!
//! A job's cgroup outlives its supervisor (the `corral` CLI, or a program embedding the
//! library): killed by any signal, SIGKILL included, it leaves the job running. So each
//! host process that runs cgroup jobs has one watchdog, started at its first cgroup job
//! ([`Watch::add`]) and shared by all of them. It starts in one of two ways:
//!
//! - **Forked**, by a host with one thread (the CLI): a middle process that shares the
//!   host's memory (`clone3(CLONE_VM | CLONE_VFORK)`, like `posix_spawn`'s child) calls
//!   `setsid` and forks the watchdog, which runs the watchdog's loop below without an exec:
//!   a `corral run` pays one `fork` for it, not the exec and start-up of a second `corral`,
//!   and needs no executable to find. (A fork of a process with other threads could copy a
//!   lock one of them held.)
//! - **Exec'd**, otherwise: `corral __watchdog <host pid>`, from the `corral` executable
//!   [`supervise::find_binary`] finds:
//!
//! ```text
//! host --clone--> M: setsid(), fork, exit --> W: execve("corral", ["corral", "__watchdog", "<host>"])
//! ```
//!
//! Either way `W` is in a session of its own from before it exists (`M` calls `setsid`
//! before the fork), so no `killpg` of the host's group and no signal of the host's terminal
//! reaches it, and it is no child of the host (`M` exits at once): a host's `waitpid(-1)`
//! never takes it, and it is never the host's zombie. It has its own memory (a watchdog
//! sharing the host's would die with it of an out-of-memory kill, which the kernel sends to
//! every process sharing the victim's memory). It gets a pidfd of the host at descriptor 3
//! and one end of a `SOCK_SEQPACKET` socketpair at 4, and sleeps in `poll` on both: no
//! timer, no wake-up while the host lives. The host says `add <cgroup>` (then, after NULs,
//! files to unlink once the cgroup is gone) after the leaf is made and before the job's
//! first process starts, and `forget <cgroup>` when the job is over or detached. When the
//! host is gone (its pidfd readable, or end of file while cgroups are registered), `W`
//! reads what is still queued, kills each registered cgroup, waits for it to empty,
//! removes it and the files, and exits; with nothing registered it just exits.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::linux::cgroup::{self, Leaf};
use crate::linux::channel::{self, Received, Take};
use crate::linux::pidfd::{self, Pid};
use crate::linux::spawn::{self, Placement, SpawnSpec};
use crate::linux::supervise;
use crate::options::SignalSet;

/// `argv[1]` that turns a `corral` executable into a watchdog.
pub(crate) const ARG: &str = "__watchdog";
/// Where the watchdog finds the host's pidfd.
const HOST_FD: RawFd = 3;
/// Where the watchdog finds its end of the socket.
const SOCKET_FD: RawFd = 4;
/// The largest message (a cgroup path and the files to unlink with it).
const MAX_MESSAGE: usize = 64 * 1024;
/// How long the host waits for room in the socket (the watchdog reads every message as
/// it comes, so the socket is full only if the watchdog is stuck).
const SEND_DEADLINE: Duration = Duration::from_secs(1);
/// How long the watchdog waits for a cgroup to empty after killing it.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
const ADD: &[u8] = b"add ";
const FORGET: &[u8] = b"forget ";
/// Signals the watchdog ignores (it has no terminal; these come only from a stray `kill`).
/// SIGTERM too: a service manager stopping the unit the watchdog runs in (systemd stopping
/// a scope the CLI bound to a service) sends it to every process there, the watchdog
/// included, and a watchdog that died of it could not kill the job when the host then dies
/// of the SIGKILL that follows. The watchdog ends with its host; SIGKILL still ends it.
const IGNORED: [i32; 8] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGPIPE,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

// ---- host side ---------------------------------------------------------------------------

/// The host's watchdog, once started.
struct Running {
    /// The host's PID when it was started: a forked child of the host has its own.
    host: u32,
    socket: OwnedFd,
    pid: Pid,
    /// A pidfd of the watchdog, only ever polled (never signalled): readable once it has
    /// died. A failed send says so too, but not while another process holds a copy of the
    /// watchdog's end of the socket (a child the host forked meanwhile, before its exec).
    pidfd: Option<OwnedFd>,
    /// The `add` message of each cgroup registered and not forgotten, to give a new
    /// watchdog should this one die.
    watched: Vec<(PathBuf, Vec<u8>)>,
}

static WATCHDOG: Mutex<Option<Running>> = Mutex::new(None);

/// A cgroup registered with the host's watchdog: if the host dies before this is dropped,
/// the watchdog kills everything in the cgroup and removes it. Dropping it (the job is
/// over, or detached) tells the watchdog to forget the cgroup.
#[derive(Debug)]
pub(crate) struct Watch {
    cgroup: PathBuf,
    watchdog: Pid,
}

impl Watch {
    /// Registers `cgroup` with this process's watchdog, starting one if there is none yet
    /// (or it died, or this process is a fork of the one that started it). After the
    /// cgroup is removed, the watchdog unlinks `cleanup_files`. The watchdog runs from the
    /// `corral` executable [`supervise::find_binary`] finds.
    #[allow(dead_code)] // for callers with no `Options` at hand (the job registry)
    pub(crate) fn add(cgroup: &Path, cleanup_files: &[PathBuf]) -> Result<Watch> {
        Watch::add_using(None, cgroup, cleanup_files)
    }

    /// [`Watch::add`], running a new watchdog from `binary` if given.
    pub(crate) fn add_using(
        binary: Option<&Path>,
        cgroup: &Path,
        cleanup_files: &[PathBuf],
    ) -> Result<Watch> {
        let msg = add_message(cgroup, cleanup_files)?;
        let mut state = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
        if state.as_ref().is_some_and(|r| r.host != std::process::id()) {
            // We are a fork of the host that started it: it watches our parent, not us.
            // Dropping it closes only our copy of the socket.
            *state = None;
        }
        let mut restarted = false;
        loop {
            let running = match state.as_mut() {
                Some(r) => r,
                None => state.insert(Running::start(binary)?),
            };
            let sent = if running.has_died() {
                Err(io::Error::from(Errno::PIPE))
            } else {
                send(running.socket.as_fd(), &msg)
            };
            match sent {
                Ok(()) => {
                    running.watched.push((cgroup.to_path_buf(), msg));
                    return Ok(Watch {
                        cgroup: cgroup.to_path_buf(),
                        watchdog: running.pid,
                    });
                }
                // It died: a new one takes over what it watched, then this. If none can be
                // started, the dead one stays, with its list, for the next attempt.
                Err(e) if is_gone(&e) && !restarted => {
                    restarted = true;
                    let old = state.take().expect("running");
                    match Running::start(binary).and_then(|new| new.take_over(old.watched.clone()))
                    {
                        Ok(new) => *state = Some(new),
                        Err(e) => {
                            *state = Some(old);
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(Error::sys("send `add` to the watchdog", e)),
            }
        }
    }

    /// The watchdog's PID.
    pub(crate) fn watchdog_pid(&self) -> u32 {
        self.watchdog.get() as u32
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
        let Some(running) = state.as_mut() else {
            return;
        };
        if running.host != std::process::id() {
            return;
        }
        if let Some(at) = running.watched.iter().position(|(p, _)| *p == self.cgroup) {
            running.watched.remove(at);
        }
        let mut msg = FORGET.to_vec();
        msg.extend_from_slice(self.cgroup.as_os_str().as_bytes());
        // A watchdog that is gone forgets by itself; one that is stuck would kill a
        // cgroup that is no longer the job's only if the host died, and the cgroup is
        // removed (or detached, and then the job is no longer ours to keep).
        let _ = send(running.socket.as_fd(), &msg);
    }
}

/// Ends this process's watchdog if it watches nothing (every job is over, detached or
/// dropped): closes our end of the socket, whose end of file makes an idle watchdog exit.
/// The CLI calls it once its job is over and [`Released::wait`]s before it exits, so that a
/// `corral run` nested in another corral's job leaves no watchdog running in that job's
/// cgroup for a moment after it (the outer corral would stop it as a leftover); the
/// watchdog's exit overlaps what the CLI does in between. A later job starts a new watchdog.
pub(crate) fn release() -> Released {
    let running = {
        let mut state = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_ref() {
            Some(r) if r.host == std::process::id() && r.watched.is_empty() => state.take(),
            _ => None,
        }
    };
    let Some(Running { socket, pidfd, .. }) = running else {
        return Released { pidfd: None };
    };
    drop(socket);
    Released { pidfd }
}

/// A watchdog told to exit (`crate::__release_watchdog`).
#[derive(Debug)]
pub struct Released {
    pidfd: Option<OwnedFd>,
}

impl Released {
    /// Waits up to `timeout` for the watchdog to have exited.
    pub fn wait(self, timeout: Duration) {
        if let Some(pidfd) = self.pidfd {
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            let _ = crate::linux::poll(&mut fds, Some(timeout));
        }
    }
}

impl Running {
    /// Starts a watchdog for this process: a fork of it when it has one thread (the
    /// `corral` CLI), otherwise `corral __watchdog` (see the module docs).
    fn start(binary: Option<&Path>) -> Result<Running> {
        let (ours, theirs) = channel::pair("socketpair for the watchdog")?;
        let host = std::process::id();
        // Our own pidfd: readable once this process has exited, whatever killed it.
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| Error::sys("pidfd_open of this process, for the watchdog", e))?;
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::sys("open /dev/null for the watchdog", e))?;
        if single_threaded() {
            return Running::fork(host, ours, theirs, me, null);
        }
        let binary = supervise::find_binary(binary)?;
        let args = [OsString::from(ARG), OsString::from(host.to_string())];
        let keep = [(me.as_fd(), HOST_FD), (theirs.as_fd(), SOCKET_FD)];
        let spec = SpawnSpec {
            resource_limits: &[],
            program: binary.as_os_str(),
            args: &args,
            env: Some(&[]),
            cwd: Some(Path::new("/")),
            stdio: [Some(null.as_fd()); 3],
            sigmask: Some(SignalSet::empty()),
            placement: Placement::Detached { keep: &keep },
            pid_namespace: false,
            credentials: None,
        };
        let spawned = spawn::spawn(&spec)?;
        // The middle process has exited (or is about to): reap it.
        let _ = pidfd::reap(spawned.pidfd.as_fd(), true);
        let pid = spawned.daemon.ok_or_else(|| {
            Error::sys(
                "start the watchdog",
                io::Error::other("the middle process did not name the watchdog"),
            )
        })?;
        // Not our child (the middle process has exited): opened by PID and then checked
        // by its command line, so the pidfd is this watchdog's or none.
        let pidfd = pidfd::open(pid).ok().filter(|_| {
            let argv = std::fs::read(format!("/proc/{}/cmdline", pid.get())).unwrap_or_default();
            let ours = format!("{ARG}\0{host}\0");
            argv.windows(ours.len()).any(|w| w == ours.as_bytes())
        });
        Ok(Running {
            host,
            socket: ours,
            pid,
            pidfd,
            watched: Vec::new(),
        })
    }

    /// Starts the watchdog as a fork of this single-threaded process, with no `exec` (see
    /// the module docs). On x86_64 the middle process shares our memory until it exits
    /// (nothing is copied for it), so the watchdog is the only copy made; elsewhere both
    /// are `fork`s. The watchdog's command line reads as ours; its name (`comm`) is
    /// `corral-watchdog`.
    fn fork(
        host: u32,
        ours: OwnedFd,
        theirs: OwnedFd,
        me: OwnedFd,
        null: OwnedFd,
    ) -> Result<Running> {
        let fds = forked::Fds {
            host: me.as_raw_fd(),
            socket: theirs.as_raw_fd(),
            null: null.as_raw_fd(),
        };
        let (pid, pidfd) = forked::start(&fds).map_err(|e| Error::sys("fork the watchdog", e))?;
        // The watchdog has its copies; ours go.
        drop((theirs, me, null));
        Ok(Running {
            host,
            socket: ours,
            pid,
            pidfd: Some(pidfd),
            watched: Vec::new(),
        })
    }

    /// Whether the watchdog is known to have died (its pidfd is readable).
    fn has_died(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return false;
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        crate::linux::poll(&mut fds, Some(Duration::ZERO)).is_ok() && !fds[0].revents().is_empty()
    }

    /// Registers the cgroups a watchdog that died was watching.
    fn take_over(mut self, watched: Vec<(PathBuf, Vec<u8>)>) -> Result<Running> {
        for (path, msg) in watched {
            send(self.socket.as_fd(), &msg)
                .map_err(|e| Error::sys("send `add` to a new watchdog", e))?;
            self.watched.push((path, msg));
        }
        Ok(self)
    }
}

/// `add <cgroup>` followed by `\0<file>` for each file.
fn add_message(cgroup: &Path, files: &[PathBuf]) -> Result<Vec<u8>> {
    let mut msg = ADD.to_vec();
    for (i, path) in std::iter::once(cgroup)
        .chain(files.iter().map(PathBuf::as_path))
        .enumerate()
    {
        let bytes = path.as_os_str().as_bytes();
        if bytes.contains(&0) || !path.is_absolute() {
            return Err(Error::InvalidOptions(format!(
                "{} cannot be watched: give an absolute path without NUL bytes",
                path.display()
            )));
        }
        if i > 0 {
            msg.push(0);
        }
        msg.extend_from_slice(bytes);
    }
    if msg.len() > MAX_MESSAGE {
        return Err(Error::InvalidOptions(format!(
            "{} and its {} cleanup files are too long to register with the watchdog \
             ({} bytes, at most {MAX_MESSAGE}); use fewer or shorter paths",
            cgroup.display(),
            files.len(),
            msg.len()
        )));
    }
    Ok(msg)
}

/// Whether a send failed because the watchdog's end is closed (it died).
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNREFUSED)
    )
}

/// Sends one packet, waiting up to [`SEND_DEADLINE`] for room.
fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    channel::send(fd, msg, Some(SEND_DEADLINE)).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the watchdog read nothing for {SEND_DEADLINE:?}"),
            )
        } else {
            e
        }
    })
}

/// Whether this process has one thread (`/proc/self/task` has two links more than
/// threads). Unsure counts as no.
fn single_threaded() -> bool {
    rustix::fs::stat("/proc/self/task").is_ok_and(|st| st.st_nlink == 3)
}

/// Ignores [`IGNORED`] (the watchdog has no terminal; these come only from a stray
/// `kill`, or a service manager's stop).
fn ignore_signals() {
    // SAFETY: plain data in; setting dispositions has no memory effects on us.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = libc::SIG_IGN;
        for sig in IGNORED {
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Starting the forked watchdog: the middle process and the fork.
mod forked {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};

    use super::Watchdog;
    use crate::linux::pidfd::Pid;

    /// The descriptors the watchdog keeps, as numbered in our table (and so in its copy).
    pub(super) struct Fds {
        pub(super) host: RawFd,
        pub(super) socket: RawFd,
        pub(super) null: RawFd,
    }

    /// What the middle process reports: the watchdog's PID and a pidfd of it (made while
    /// the watchdog was its unreaped child, so it is the watchdog's), or -errno.
    #[derive(Default)]
    struct Outcome {
        pid: libc::pid_t,
        pidfd: RawFd,
    }

    /// Runs in the watchdog (a copy of this process, with one thread): never returns.
    fn watchdog(fds: &Fds) -> ! {
        // SAFETY: the descriptors are open in this copy of our table, and ours alone here.
        let (host, socket, null) = unsafe {
            (
                OwnedFd::from_raw_fd(fds.host),
                OwnedFd::from_raw_fd(fds.socket),
                OwnedFd::from_raw_fd(fds.null),
            )
        };
        let code = Watchdog::forked(host, socket, null).map_or(2, Watchdog::run);
        // SAFETY: leaves without running the host's exit handlers.
        unsafe { libc::_exit(code) }
    }

    /// The middle process: a session of its own, the fork, its report, exit.
    ///
    /// # Safety
    /// Only as the middle process: it shares our memory (x86_64) or is a copy of us, and
    /// we have one thread, blocked meanwhile.
    unsafe fn middle(fds: &Fds, out: &mut Outcome) {
        libc::setsid();
        // glibc's `fork`: its own state (the allocator's locks, the thread's id) is right
        // in the copy.
        let pid = libc::fork();
        if pid == 0 {
            watchdog(fds);
        }
        if pid < 0 {
            out.pid = -*libc::__errno_location();
            return;
        }
        // Our unreaped child: its PID is its own.
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        out.pid = pid;
        out.pidfd = if pidfd < 0 {
            -*libc::__errno_location()
        } else {
            pidfd
        };
    }

    /// x86_64: the middle process shares our memory and descriptor table
    /// (`CLONE_VM | CLONE_VFORK | CLONE_FILES`), so its report and the watchdog's pidfd are
    /// ours when it exits.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn start(fds: &Fds) -> io::Result<(Pid, OwnedFd)> {
        use crate::linux::spawn::{self, CloneArgs, Stack};

        struct Ctx<'a> {
            fds: &'a Fds,
            out: Outcome,
        }
        extern "C" fn entry(ctx: *const std::ffi::c_void) -> ! {
            // SAFETY: `ctx` is the host's, which waits for us (CLONE_VFORK).
            unsafe {
                let ctx = &mut *(ctx as *mut Ctx<'_>);
                middle(ctx.fds, &mut ctx.out);
                libc::_exit(0)
            }
        }

        let mut ctx = Ctx {
            fds,
            out: Outcome::default(),
        };
        let stack = Stack::new(64 * 1024)?;
        let mut args = CloneArgs {
            flags: spawn::CLONE_VM | spawn::CLONE_VFORK | spawn::CLONE_FILES,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // No handler of ours may run in the middle process or the watchdog before it sets
        // its own mask.
        let blocked = spawn::BlockedSignals::all()?;
        // SAFETY: `ctx` and `stack` outlive the middle process (CLONE_VFORK: we are
        // suspended until it exits), and `entry` never returns.
        let ret = unsafe {
            spawn::clone3_on_stack(
                &mut args,
                &stack,
                &mut ctx as *mut Ctx<'_> as *const std::ffi::c_void,
                entry,
            )
        };
        drop(blocked);
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        reap(ret as libc::pid_t);
        outcome(&ctx.out)
    }

    /// Elsewhere: the middle process is a `fork` too, and reports through a pipe.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn start(fds: &Fds) -> io::Result<(Pid, OwnedFd)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let blocked = crate::linux::spawn::BlockedSignals::all()?;
        // SAFETY: we have one thread (the caller checked), so the copy holds no lock
        // another thread held; the middle process leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut out = Outcome::default();
            // SAFETY: as the middle process, a copy of us.
            unsafe { middle(fds, &mut out) };
            let bytes = [out.pid.to_ne_bytes(), out.pidfd.to_ne_bytes()].concat();
            let _ = rustix::io::write(&write, &bytes);
            // SAFETY: leaves without running the host's exit handlers.
            unsafe { libc::_exit(0) };
        }
        drop(blocked);
        drop(write);
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut bytes = [0u8; 8];
        let got =
            crate::linux::channel::read_until_closed(std::os::fd::AsFd::as_fd(&read), &mut bytes);
        reap(pid);
        let got = got?;
        if got < bytes.len() {
            return Err(io::Error::other(
                "the middle process did not name the watchdog",
            ));
        }
        let pid = libc::pid_t::from_ne_bytes(bytes[..4].try_into().expect("4 bytes"));
        // The middle process's pidfd is in its table, not ours: ours is made by PID. The
        // watchdog exits only once we are gone or have closed our end of the socket, so
        // the PID is still its own (short of a SIGKILL from elsewhere meanwhile).
        let pidfd = if pid > 0 {
            // SAFETY: pidfd_open takes plain values and makes a new descriptor.
            unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd }
        } else {
            pid
        };
        outcome(&Outcome { pid, pidfd })
    }

    /// Reaps our exited child `pid` (unreaped until here: its PID is its own).
    fn reap(pid: libc::pid_t) {
        // SAFETY: plain waitpid of our own child.
        unsafe {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, libc::__WALL) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }

    fn outcome(out: &Outcome) -> io::Result<(Pid, OwnedFd)> {
        if out.pid <= 0 {
            return Err(io::Error::from_raw_os_error(if out.pid < 0 {
                -out.pid
            } else {
                libc::EINVAL
            }));
        }
        if out.pidfd < 0 {
            return Err(io::Error::from_raw_os_error(-out.pidfd));
        }
        // SAFETY: a pidfd made in our table (shared with, or sent by, the middle process),
        // owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(out.pidfd) };
        Ok((Pid::from_raw(out.pid).expect("positive"), pidfd))
    }
}

// ---- the watchdog process ----------------------------------------------------------------

/// `corral __watchdog <host pid>`, with the host's pidfd at descriptor 3 and the socket at
/// 4. Never returns: exits 0 once the host is gone and its cgroups are dealt with, 2 when
/// run without its descriptors.
pub(crate) fn main() -> ! {
    let code = match Watchdog::start() {
        Some(w) => w.run(),
        None => 2,
    };
    std::process::exit(code)
}

/// A registered cgroup, held open from its `add` on.
struct Entry {
    parent: OwnedFd,
    dir: OwnedFd,
    files: Vec<PathBuf>,
}

struct Watchdog {
    host: OwnedFd,
    socket: OwnedFd,
    watched: HashMap<PathBuf, Entry>,
    /// Where messages are received (allocated once: the watchdog wakes twice per job; never
    /// written beyond the longest message).
    buf: Vec<u8>,
}

/// What reading the socket found.
enum Read {
    /// Everything queued was read; the host may send more.
    Drained,
    /// End of file: the host (and every copy of its end) is gone.
    Eof,
}

impl Watchdog {
    fn start() -> Option<Watchdog> {
        let args: Vec<OsString> = std::env::args_os().collect();
        match args.as_slice() {
            [_, arg, host] if arg == ARG && host.to_str()?.parse::<u32>().is_ok() => {}
            _ => return None,
        }
        ignore_signals();
        crate::linux::postfork::close_descriptors_from(SOCKET_FD + 1);
        // SAFETY: only borrowed for the fstat; ownership is taken below.
        let (host, socket) = unsafe {
            (
                BorrowedFd::borrow_raw(HOST_FD),
                BorrowedFd::borrow_raw(SOCKET_FD),
            )
        };
        let is_socket = rustix::fs::fstat(socket).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
        });
        if !is_socket || rustix::io::fcntl_getfd(host).is_err() {
            return None;
        }
        // SAFETY: both are open (checked above), and by the protocol they are ours.
        Some(unsafe {
            Watchdog::new(
                OwnedFd::from_raw_fd(HOST_FD),
                OwnedFd::from_raw_fd(SOCKET_FD),
            )
        })
    }

    /// The watchdog in a fork of the host ([`Running::fork`]): /dev/null on 0, 1 and 2,
    /// the host's pidfd and the socket at 3 and 4, every other descriptor closed, in `/`,
    /// as the exec'd one has them.
    fn forked(host: OwnedFd, socket: OwnedFd, null: OwnedFd) -> Option<Watchdog> {
        // Fifteen bytes: the kernel's limit for a task's name.
        let _ = rustix::thread::set_name(c"corral-watchdog");
        ignore_signals();
        // Nothing of the host's runs here: no handler of its may run on a signal either
        // (every signal was blocked across the fork already).
        // SAFETY: plain data in and out of sigprocmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        }
        let _ = rustix::process::chdir("/");
        let (host, socket, null) = (host.into_raw_fd(), socket.into_raw_fd(), null.into_raw_fd());
        // First above every descriptor the moves below write to, so none overwrites another.
        // SAFETY: plain descriptor calls; each result is checked, and every descriptor left
        // over (the originals included) is closed by `close_descriptors_from` below, or was
        // overwritten by a `dup2`.
        unsafe {
            let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            let (host, socket, null) = (high(host), high(socket), high(null));
            if host < 0 || socket < 0 || null < 0 {
                return None;
            }
            for (fd, to) in [
                (null, 0),
                (null, 1),
                (null, 2),
                (host, HOST_FD),
                (socket, SOCKET_FD),
            ] {
                if libc::dup2(fd, to) < 0 {
                    return None;
                }
            }
        }
        // Every copy of the host's descriptors goes (its stdio, pipes, the job's leaf...):
        // none may stay open for as long as the watchdog runs.
        crate::linux::postfork::close_descriptors_from(SOCKET_FD + 1);
        // SAFETY: just duplicated there, and owned by nothing else.
        Some(unsafe {
            Watchdog::new(
                OwnedFd::from_raw_fd(HOST_FD),
                OwnedFd::from_raw_fd(SOCKET_FD),
            )
        })
    }

    fn new(host: OwnedFd, socket: OwnedFd) -> Watchdog {
        // A host with many jobs at once: each holds two descriptors here.
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = nofile.maximum {
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit {
                    current: Some(max),
                    maximum: Some(max),
                },
            );
        }
        Watchdog {
            host,
            socket,
            watched: HashMap::new(),
            buf: Vec::with_capacity(MAX_MESSAGE),
        }
    }

    /// Waits for the host to go, then deals with what it left. Returns the exit status.
    fn run(mut self) -> i32 {
        loop {
            let mut fds = [
                PollFd::new(&self.host, PollFlags::IN),
                PollFd::new(&self.socket, PollFlags::IN),
            ];
            if crate::linux::poll(&mut fds, None).is_err() {
                return 1;
            }
            let host_gone = !fds[0].revents().is_empty();
            // Messages queued before the host died count: read them before acting.
            let eof = matches!(self.read_messages(), Read::Eof);
            if host_gone || (eof && !self.watched.is_empty()) {
                self.kill_all();
                return 0;
            }
            if eof {
                // Nothing registered, and no one left to register anything.
                return 0;
            }
        }
    }

    /// Reads every queued message.
    fn read_messages(&mut self) -> Read {
        let mut buf = std::mem::take(&mut self.buf);
        let read = loop {
            // Into the spare capacity: only what a message fills is ever written (and made
            // resident), not the whole buffer.
            match channel::recv(self.socket.as_fd(), &mut buf, Take::Now) {
                Ok(Received::Message) => self.handle(&buf),
                Ok(Received::Closed) => break Read::Eof,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Read::Drained,
                // A failed socket: nobody can talk to us any more.
                Err(_) => break Read::Eof,
            }
        };
        self.buf = buf;
        read
    }

    fn handle(&mut self, msg: &[u8]) {
        if let Some(rest) = msg.strip_prefix(ADD) {
            let mut parts = rest
                .split(|b| *b == 0)
                .map(|p| PathBuf::from(OsStr::from_bytes(p)));
            let Some(cgroup) = parts.next() else { return };
            // A cgroup that is already gone (or was never one) has nothing to kill.
            if let Ok((parent, dir)) = cgroup::open_existing(&cgroup) {
                let files = parts.collect();
                self.watched.insert(cgroup, Entry { parent, dir, files });
            }
        } else if let Some(rest) = msg.strip_prefix(FORGET) {
            self.watched.remove(Path::new(OsStr::from_bytes(rest)));
        }
    }

    /// The host is gone: kill every registered cgroup, wait for each to empty, remove it
    /// and unlink its files. Kills all first, so they die together.
    fn kill_all(&mut self) {
        let deadline = Instant::now() + KILL_DEADLINE;
        let mut leaves = Vec::new();
        for (path, entry) in self.watched.drain() {
            match Leaf::adopt(path, entry.parent, entry.dir) {
                Ok(leaf) => {
                    let _ = leaf.kill_start(false, deadline);
                    leaves.push((Some(leaf), entry.files));
                }
                // Its files are gone with the directory (removed before `forget` came).
                Err(_) => leaves.push((None, entry.files)),
            }
        }
        // (registry directory, cgroup) of each job killed: nested jobs' corrals ran in
        // those cgroups and died with them, before they could remove their records.
        let mut nested: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (leaf, files) in leaves {
            let (removed, path) = match leaf {
                Some(leaf) => {
                    let path = leaf.path.clone();
                    let _ = leaf.kill_all(false, deadline);
                    (leaf.remove().is_ok(), Some(path))
                }
                None => (true, None),
            };
            if removed {
                for file in files {
                    let _ = std::fs::remove_file(&file);
                    if let (Some(dir), Some(path)) = (file.parent(), &path) {
                        let pair = (dir.to_path_buf(), path.clone());
                        if !nested.contains(&pair) {
                            nested.push(pair);
                        }
                    }
                }
            }
        }
        for (dir, cgroup) in nested {
            let _ = crate::registry::sweep_nested(&dir, crate::registry::Outer::Cgroup(&cgroup));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn detached(program: &str, args: &[&str], keep: &[(BorrowedFd<'_>, RawFd)]) -> Result<Pid> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let spec = SpawnSpec {
            resource_limits: &[],
            program: OsStr::new(program),
            args: &args,
            env: Some(&[]),
            cwd: Some(Path::new("/")),
            stdio: [None; 3],
            sigmask: Some(SignalSet::empty()),
            placement: Placement::Detached { keep },
            pid_namespace: false,
            credentials: None,
        };
        let spawned = spawn::spawn(&spec)?;
        pidfd::reap(spawned.pidfd.as_fd(), true).expect("reap the middle process");
        Ok(spawned
            .daemon
            .expect("the middle process names the grandchild"))
    }

    #[test]
    fn a_detached_spawn_runs_outside_our_group_and_session_with_the_descriptors_given() {
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let mut read = std::fs::File::from(read);
        // The grandchild writes its own stat line to descriptor 5: `exec`, so the line is
        // the daemon's own.
        let pid = detached(
            "/bin/sh",
            &["-c", "exec cat /proc/self/stat >&5"],
            &[(write.as_fd(), 5)],
        )
        .expect("spawn");
        drop(write);
        let mut stat = String::new();
        read.read_to_string(&mut stat).expect("read the stat line");
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields: Vec<i32> = after
            .split(' ')
            .skip(1)
            .take(3)
            .map(|f| f.parse().expect("a number"))
            .collect();
        let (ppid, pgid, sid) = (fields[0], fields[1], fields[2]);
        let (our_pgid, our_sid) = crate::linux::own_group_and_session();
        assert!(stat.starts_with(&format!("{} ", pid.get())), "{stat}");
        assert_ne!(
            ppid,
            std::process::id() as i32,
            "the daemon is no child of ours"
        );
        assert!(pgid != our_pgid && sid != our_sid, "{stat}");
    }

    #[test]
    fn a_detached_spawn_reports_a_missing_program() {
        match detached("/nonexistent/corral", &[], &[]) {
            Err(Error::NotFound { .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    /// A watchdog that died is replaced at the next `add`, and the new one is given what the
    /// old one watched. (Paths that are no cgroup: the watchdog ignores them.)
    #[test]
    fn a_dead_watchdog_is_replaced() {
        let first = match Watch::add(Path::new("/nonexistent/corral-test-a"), &[]) {
            Ok(w) => w,
            Err(e @ Error::NoSupervisor { .. }) => {
                if std::env::var_os("CORRAL_REQUIRE_ALL").is_some_and(|v| v == "1") {
                    panic!("test cannot run and CORRAL_REQUIRE_ALL=1: {e}");
                }
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let old = Pid::from_raw(first.watchdog_pid() as i32).expect("a PID");
        // Not our child: opened by PID, then checked to be our watchdog, so the pidfd is.
        let fd = pidfd::open(old).expect("pidfd of the watchdog");
        let argv = std::fs::read(format!("/proc/{}/cmdline", old.get())).unwrap_or_default();
        let ours = format!("{ARG}\0{}\0", std::process::id());
        assert!(
            argv.windows(ours.len()).any(|w| w == ours.as_bytes()),
            "process {} is not our watchdog",
            old.get()
        );
        pidfd::send_signal(fd.as_fd(), crate::options::Signal::KILL).expect("SIGKILL");
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        crate::linux::poll(&mut fds, Some(Duration::from_secs(10))).expect("poll");
        assert!(!fds[0].revents().is_empty(), "the watchdog did not die");
        let second = Watch::add(Path::new("/nonexistent/corral-test-b"), &[]).expect("add");
        assert_ne!(second.watchdog_pid(), first.watchdog_pid());
        let state = WATCHDOG.lock().unwrap();
        let watched: Vec<&PathBuf> = state
            .as_ref()
            .unwrap()
            .watched
            .iter()
            .map(|(p, _)| p)
            .collect();
        assert!(
            watched.contains(&&PathBuf::from("/nonexistent/corral-test-a")),
            "{watched:?}"
        );
        drop(state);
        drop((first, second));
    }

    #[test]
    fn messages_name_absolute_paths_only() {
        let msg = add_message(Path::new("/cg/job"), &[PathBuf::from("/run/a")]).unwrap();
        assert_eq!(msg, b"add /cg/job\0/run/a");
        assert!(add_message(Path::new("cg/job"), &[]).is_err());
        let long = vec![PathBuf::from(format!("/{}", "x".repeat(4000))); 20];
        assert!(add_message(Path::new("/cg/job"), &long).is_err());
    }
}
