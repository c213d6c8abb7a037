//! The watchdog: a cgroup job dies with the process that supervises it.
//!
//! A job's cgroup outlives its supervisor (the `corral` CLI, or a program embedding the
//! library): killed by any signal, SIGKILL included, it leaves the job running. So each
//! host process that runs cgroup jobs has one watchdog, started at its first cgroup job
//! ([`Watch::add`]) and shared by all of them. The watchdog is in a session of its own from
//! before it exists (a middle process calls `setsid` and creates it), so no `killpg` of the
//! host's group and no signal of the host's terminal reaches it, and it is no child of the
//! host (the middle process exits at once): a host's `waitpid(-1)` never takes it.
//!
//! The host says `add <cgroup>` (then, after NULs, files to unlink once the cgroup is gone)
//! over a `SOCK_SEQPACKET` socketpair after the leaf is made and before the job's first
//! process starts, and `forget <cgroup>` when the job is over or detached. When the host is
//! gone (its pidfd readable, or end of file while cgroups are registered), the watchdog
//! reads what is still queued, kills each registered cgroup, waits for it to empty, removes
//! it and the files, and exits; with nothing registered it just exits.
//!
//! It starts in one of three ways, the cheapest the host allows:
//!
//! - **Lazy** (x86_64, Linux 5.16 on): a process that shares the host's memory
//!   (`clone3(CLONE_VM)` on a stack of its own) and sleeps in `ppoll` on the host's pidfd
//!   and a wake-up pipe. Nothing is sent to it: each `add` and `forget` replaces a plan in
//!   the host's memory ([`PLAN`]). Once the host is gone with cgroups registered
//!   ([`WATCHED`]), it writes the plan to a memfd and execs `corral __watchdog <host>`,
//!   which reads it from there and acts. A host whose jobs end normally thus pays two
//!   `clone3`s, no exec, no message per job and no memory of the watchdog's own.
//! - **Forked**, elsewhere, by a host with one thread (the CLI): a `fork` that runs the
//!   watchdog's loop without an exec.
//! - **Exec'd**, otherwise: `corral __watchdog <host>`, run from the `corral` executable
//!   [`supervise::find_binary`] finds, with the host's pidfd at descriptor 3 and its end of
//!   the socket at 4.
//!
//! ```text
//! host --clone--> M: setsid(), clone/fork, exit --> W (lazy: shares the host's memory)
//!                                                     \--(when it must act)--> execve("corral", ["corral", "__watchdog", "<host>"])
//! ```

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::error::{Error, Result};
use crate::linux::cgroup::{self, Leaf};
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
    /// Where messages go; none for a lazy watchdog, which reads [`PLAN`] instead.
    socket: Option<OwnedFd>,
    pid: Pid,
    /// A pidfd of the watchdog, only ever polled (never signalled): readable once it has
    /// died. A failed send says so too, but not while another process holds a copy of the
    /// watchdog's end of the socket (a child the host forked meanwhile, before its exec).
    pidfd: Option<OwnedFd>,
    /// The `add` message of each cgroup registered and not forgotten, to give a new
    /// watchdog should this one die.
    watched: Vec<(PathBuf, Vec<u8>)>,
    /// A lazy watchdog ([`Running::lazy`]) that may not have exec'd yet: what it runs on.
    lazy: Option<Lazy>,
}

static WATCHDOG: Mutex<Option<Running>> = Mutex::new(None);

/// How many cgroups are registered (and not forgotten) with this process's watchdog: what a
/// lazy watchdog reads, in our memory, to decide between exiting and acting.
static WATCHED: AtomicUsize = AtomicUsize::new(0);

/// For a lazy watchdog: the `add` message of every cgroup registered, each after its
/// length (a native-endian `u32`), which it hands to the watchdog it execs once we are
/// gone. Replaced whole at each change (the old one freed: the lazy watchdog reads it only
/// after we have exited, when nothing changes it any more).
static PLAN: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

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
            // Dropping it closes only our copy of the socket; what we copied of the
            // parent's registrations is not ours.
            *state = None;
            publish_plan(None);
            WATCHED.store(0, Ordering::SeqCst);
        }
        let mut restarted = false;
        loop {
            let running = match state.as_mut() {
                Some(r) => r,
                None => state.insert(Running::start(binary)?),
            };
            let sent = if running.has_died() {
                Err(io::Error::from(Errno::PIPE))
            } else if let Some(socket) = &running.socket {
                send(socket.as_fd(), &msg)
            } else {
                Ok(())
            };
            match sent {
                Ok(()) => {
                    running.watched.push((cgroup.to_path_buf(), msg));
                    running.publish();
                    return Ok(Watch {
                        cgroup: cgroup.to_path_buf(),
                        watchdog: running.pid,
                    });
                }
                // It died: a new one takes over what it watched, then this. If none can be
                // started, the dead one stays, with its list, for the next attempt.
                Err(e) if is_gone(&e) && !restarted => {
                    restarted = true;
                    let mut old = state.take().expect("running");
                    match Running::start(binary).and_then(|new| new.take_over(old.watched.clone()))
                    {
                        Ok(new) => {
                            // Dead (its pidfd is readable, or its end of the socket is
                            // closed): off our memory.
                            drop(old.lazy.take());
                            *state = Some(new);
                        }
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
        if let Some(socket) = &running.socket {
            let _ = send(socket.as_fd(), &msg);
        }
        running.publish();
    }
}

/// Ends this process's watchdog if it watches nothing (every job is over, detached or
/// dropped): closes our end of the socket, whose end of file makes an idle watchdog exit,
/// and waits up to `timeout` for it to be gone. The CLI calls it before it exits, so that a
/// `corral run` nested in another corral's job leaves no watchdog running in that job's
/// cgroup for a moment after it (the outer corral would stop it as a leftover). A later
/// job starts a new watchdog.
pub(crate) fn release(timeout: Duration) {
    let running = {
        let mut state = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_ref() {
            Some(r) if r.host == std::process::id() && r.watched.is_empty() => state.take(),
            _ => None,
        }
    };
    let Some(Running {
        socket,
        pidfd,
        lazy,
        ..
    }) = running
    else {
        return;
    };
    drop(socket);
    // A lazy watchdog wakes when the pipe hangs up, finds nothing registered, and exits.
    let mut lazy = lazy;
    if let Some(lazy) = lazy.as_mut() {
        lazy.hang_up();
    }
    let exited = pidfd.is_some_and(|pidfd| {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        crate::linux::poll(&mut fds, Some(timeout)).is_ok() && !fds[0].revents().is_empty()
    });
    if !exited {
        // It may still run on our memory: what it uses stays (a few pages).
        std::mem::forget(lazy);
    }
}

impl Running {
    /// Starts a watchdog for this process: lazy where it can, a fork of it when it has one
    /// thread (the `corral` CLI), otherwise `corral __watchdog` (see the module docs).
    fn start(binary: Option<&Path>) -> Result<Running> {
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
        let binary = supervise::find_binary(binary);
        #[cfg(target_arch = "x86_64")]
        if let (Ok(binary), true) = (&binary, lazy::kernel_confines_core_dumps()) {
            return Running::lazy(host, me, null, binary);
        }
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::sys("socketpair for the watchdog", e))?;
        if single_threaded() {
            return Running::fork(host, ours, theirs, me, null);
        }
        let binary = binary?;
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
            socket: Some(ours),
            pid,
            pidfd,
            watched: Vec::new(),
            lazy: None,
        })
    }

    /// Starts the watchdog lazily (x86_64): a process that shares our memory
    /// (`clone3(CLONE_VM)` on a stack of its own, like `posix_spawn`'s child, but not
    /// waited for) and sleeps in `ppoll` on our pidfd and a pipe we hold, with no message
    /// ever sent: each `add` and `forget` only replaces [`PLAN`]. Once we are gone with
    /// cgroups registered ([`WATCHED`] above zero), it writes the plan to a memfd and execs
    /// `corral __watchdog`, which reads it from there and acts. When the pipe hangs up (we
    /// released it, or closed our descriptors) with nothing registered, it exits; with
    /// cgroups registered it waits for our end. A host whose jobs end normally thus pays two
    /// `clone3`s, no exec and no message, and the watchdog has no memory of its own beyond
    /// its stack. Until it execs, its command line reads as ours; its name (`comm`) is
    /// `corral-watchdog`.
    #[cfg(target_arch = "x86_64")]
    fn lazy(host: u32, me: OwnedFd, null: OwnedFd, binary: &Path) -> Result<Running> {
        let (wake_read, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("pipe for the watchdog", e))?;
        let plan =
            rustix::fs::memfd_create("corral-watchdog-plan", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| Error::sys("memfd for the watchdog", e))?;
        let mut ctx = lazy::Ctx::new(binary, host, [&me, &plan, &wake_read, &null])?;
        let stack = spawn::Stack::new(lazy::STACK)
            .map_err(|e| Error::sys("map a stack for the watchdog", e))?;
        let (pid, pidfd) =
            lazy::start(&mut ctx, &stack).map_err(|e| Error::sys("start the watchdog", e))?;
        // Its copies are its own now; ours go.
        drop((me, null, wake_read, plan));
        Ok(Running {
            host,
            socket: None,
            pid,
            pidfd: Some(pidfd),
            watched: Vec::new(),
            lazy: Some(Lazy {
                _ctx: ctx,
                _stack: stack,
                wake: Some(wake),
            }),
        })
    }

    /// Starts the watchdog as a fork of this single-threaded process, with no `exec`: the
    /// `corral` CLI's way, which spares each `corral run` the exec and start-up of a second
    /// `corral` (and needs no executable to find). The shape is the exec'd watchdog's: a
    /// middle process calls `setsid` and forks the watchdog, sends its PID and exits, so
    /// the watchdog is in a session of its own from before it exists and is no child of
    /// ours. Its memory is a copy of ours (shared until either side writes a page); its
    /// command line reads as ours, and its name (`comm`) is `corral-watchdog`.
    fn fork(
        host: u32,
        ours: OwnedFd,
        theirs: OwnedFd,
        me: OwnedFd,
        null: OwnedFd,
    ) -> Result<Running> {
        let (pid_read, pid_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("pipe for the watchdog", e))?;
        // SAFETY: this process has one thread (checked by the caller just before), so the
        // copy holds no lock another thread held; glibc's `fork` keeps its own state
        // consistent in the child. The middle process and the watchdog run only the code
        // below and leave with `_exit`, never returning into the caller.
        let middle = unsafe { libc::fork() };
        if middle < 0 {
            return Err(Error::sys("fork the watchdog", io::Error::last_os_error()));
        }
        if middle == 0 {
            // SAFETY: as above; `setsid` and `fork` in the middle process, `_exit` to leave.
            unsafe {
                libc::setsid();
                let watchdog = libc::fork();
                if watchdog == 0 {
                    drop((ours, pid_read, pid_write));
                    let code = Watchdog::forked(me, theirs, null).map_or(2, Watchdog::run);
                    libc::_exit(code);
                }
                let bytes = watchdog.to_ne_bytes();
                let ok = watchdog > 0 && rustix::io::write(&pid_write, &bytes).is_ok();
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        drop((theirs, me, null, pid_write));
        let mut bytes = [0u8; 4];
        let mut got = 0;
        while got < bytes.len() {
            match rustix::io::read(&pid_read, &mut bytes[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::INTR) => continue,
                Err(_) => break,
            }
        }
        // SAFETY: our own unreaped child: its PID cannot have been reused.
        unsafe {
            let mut status = 0;
            while libc::waitpid(middle, &mut status, libc::__WALL) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
        let pid = Pid::from_raw(i32::from_ne_bytes(bytes))
            .filter(|_| got == bytes.len())
            .ok_or_else(|| {
                Error::sys(
                    "fork the watchdog",
                    io::Error::other("the middle process did not name the watchdog"),
                )
            })?;
        // Not our child. The watchdog exits only once we are gone or have closed our end of
        // the socket, so the PID is still its own (short of a SIGKILL from elsewhere in
        // these few microseconds); the pidfd is only ever polled, never signalled.
        let pidfd = pidfd::open(pid).ok();
        Ok(Running {
            host,
            socket: Some(ours),
            pid,
            pidfd,
            watched: Vec::new(),
            lazy: None,
        })
    }

    /// Makes what is registered now what a lazy watchdog would act on, were we to die.
    fn publish(&self) {
        if self.lazy.is_some() {
            let mut plan = Vec::new();
            for (_, msg) in &self.watched {
                plan.extend_from_slice(&(msg.len() as u32).to_ne_bytes());
                plan.extend_from_slice(msg);
            }
            publish_plan(Some(plan));
        }
        WATCHED.store(self.watched.len(), Ordering::SeqCst);
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
            if let Some(socket) = &self.socket {
                send(socket.as_fd(), &msg)
                    .map_err(|e| Error::sys("send `add` to a new watchdog", e))?;
            }
            self.watched.push((path, msg));
        }
        self.publish();
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

/// Sends one packet, without SIGPIPE, waiting up to [`SEND_DEADLINE`] for room.
fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + SEND_DEADLINE;
    loop {
        match rustix::net::send(fd, msg, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the watchdog read nothing for {SEND_DEADLINE:?}"),
                    ));
                }
                let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
                crate::linux::poll(&mut fds, Some(left)).map_err(io::Error::other)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
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

/// Replaces [`PLAN`] (freeing the one before: only a lazy watchdog reads it, and only once
/// we are gone).
fn publish_plan(plan: Option<Vec<u8>>) {
    let new = plan.map_or(std::ptr::null_mut(), |p| Box::into_raw(Box::new(p)));
    let old = PLAN.swap(new, Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: made by `Box::into_raw` above, and swapped out: ours alone.
        drop(unsafe { Box::from_raw(old) });
    }
}

/// What a lazy watchdog runs on and reads, kept while it may still use our memory.
#[cfg(target_arch = "x86_64")]
struct Lazy {
    _ctx: Box<lazy::Ctx>,
    _stack: spawn::Stack,
    /// Its end of file wakes the watchdog (we released it, or are gone).
    wake: Option<OwnedFd>,
}

#[cfg(target_arch = "x86_64")]
impl Lazy {
    /// Closes our end of the wake-up pipe.
    fn hang_up(&mut self) {
        self.wake = None;
    }
}

// Without this, `Running` (in a static `Mutex`) would not be `Send`: the context holds raw
// pointers into itself and to the stack.
// SAFETY: the pointers are into the context's own strings (heap, moving with it) and to
// the stack, which lives as long as the context.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Lazy {}

/// No lazy watchdog elsewhere (its processes need a stack switch written per architecture).
#[cfg(not(target_arch = "x86_64"))]
enum Lazy {}

#[cfg(not(target_arch = "x86_64"))]
impl Lazy {
    fn hang_up(&mut self) {
        match *self {}
    }
}

/// The lazy watchdog's two processes: the middle one and the watchdog until it execs. Both
/// share our memory and run on stacks of their own while our threads go on, so they make
/// raw system calls only (no libc wrapper, which would set our `errno`), allocate nothing
/// and touch nothing but their context, their stacks and [`WATCHED`].
#[cfg(target_arch = "x86_64")]
mod lazy {
    use std::ffi::{c_char, c_void, CString};
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicI32, Ordering};

    use super::{Pid, HOST_FD, PLAN, SOCKET_FD, WATCHED};
    use crate::error::{Error, Result};
    use crate::linux::spawn::{self, CloneArgs, Stack};

    /// The watchdog's stack until it execs: it makes a few system calls in one frame.
    pub(super) const STACK: usize = 64 * 1024;
    /// The middle process's stack (freed once it has exited).
    const MIDDLE_STACK: usize = 16 * 1024;
    /// Where the wake-up pipe goes, next to the descriptors the watchdog keeps.
    const WAKE_FD: RawFd = 5;
    /// Where the plan's memfd goes: where the exec'd watchdog finds its socket otherwise.
    const PLAN_FD: RawFd = SOCKET_FD;

    /// Read by both processes; written by the middle one (the watchdog's PID and pidfd).
    #[repr(C)]
    pub(super) struct Ctx {
        /// Our pidfd, the plan's memfd, the wake-up pipe, /dev/null: as numbered in our table.
        fds: [RawFd; 4],
        program: CString,
        _args: [CString; 2],
        argv: [*const c_char; 4],
        envp: [*const c_char; 1],
        stack: *const Stack,
        pid: AtomicI32,
        pidfd: AtomicI32,
    }

    impl Ctx {
        pub(super) fn new(binary: &Path, host: u32, fds: [&OwnedFd; 4]) -> Result<Box<Ctx>> {
            let cstr = |b: &[u8]| {
                CString::new(b).map_err(|_| {
                    Error::InvalidOptions(format!(
                        "{} has a NUL byte in its path: move it",
                        binary.display()
                    ))
                })
            };
            let program = cstr(binary.as_os_str().as_bytes())?;
            let args = [
                cstr(super::ARG.as_bytes())?,
                cstr(host.to_string().as_bytes())?,
            ];
            let mut ctx = Box::new(Ctx {
                fds: fds.map(AsRawFd::as_raw_fd),
                program,
                _args: args,
                argv: [std::ptr::null(); 4],
                envp: [std::ptr::null()],
                stack: std::ptr::null(),
                pid: AtomicI32::new(0),
                pidfd: AtomicI32::new(-1),
            });
            ctx.argv = [
                ctx.program.as_ptr(),
                ctx._args[0].as_ptr(),
                ctx._args[1].as_ptr(),
                std::ptr::null(),
            ];
            Ok(ctx)
        }
    }

    /// Whether a process dumping core takes only its own threads down (Linux 5.16,
    /// "coredump: Limit coredumps to a single thread group"): before, every process sharing
    /// its memory died with it, and a lazy watchdog would die of the host's crash.
    pub(super) fn kernel_confines_core_dumps() -> bool {
        static AT_LEAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AT_LEAST.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut parts = text.trim().split(['.', '-']).map(|p| p.parse::<u32>().ok());
            matches!((parts.next(), parts.next()), (Some(Some(a)), Some(Some(b))) if (a, b) >= (5, 16))
        })
    }

    /// Creates the middle process (which creates the watchdog on `stack`) and waits for it
    /// to exit. Returns the watchdog's PID and pidfd.
    pub(super) fn start(ctx: &mut Ctx, stack: &Stack) -> io::Result<(Pid, OwnedFd)> {
        // The watchdog's stack, for the middle process to give it.
        ctx.stack = stack;
        let middle_stack = Stack::new(MIDDLE_STACK)?;
        // Shares our descriptor table, so that the watchdog's pidfd lands in it.
        let mut args = CloneArgs {
            flags: spawn::CLONE_VM | spawn::CLONE_VFORK | spawn::CLONE_FILES,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // Every signal blocked across the clone: no handler of ours may run on the middle
        // process's stack (it inherits the mask, and sets the watchdog's).
        let _blocked = spawn::BlockedSignals::all()?;
        // SAFETY: `ctx` and `middle_stack` outlive the middle process (CLONE_VFORK: we are
        // suspended until it exits), and `middle` never returns.
        let ret = unsafe {
            spawn::clone3_on_stack(
                &mut args,
                &middle_stack,
                ctx as *const Ctx as *const c_void,
                middle,
            )
        };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        // SAFETY: our own child, exited (CLONE_VFORK), unreaped: its PID is still its own.
        unsafe {
            let mut status = 0;
            while libc::waitpid(ret as libc::pid_t, &mut status, libc::__WALL) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
        let pid = ctx.pid.load(Ordering::SeqCst);
        let pidfd = ctx.pidfd.load(Ordering::SeqCst);
        if pid <= 0 || pidfd < 0 {
            return Err(io::Error::from_raw_os_error(if pid < 0 {
                -pid
            } else {
                libc::EINVAL
            }));
        }
        // SAFETY: the middle process stored a pidfd CLONE_PIDFD made in our table (it
        // shared it), close-on-exec, owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok((Pid::from_raw(pid).expect("positive"), pidfd))
    }

    /// One raw system call (x86_64: number in rax, arguments in rdi rsi rdx r10 r8 r9).
    ///
    /// # Safety
    /// As the system call `n` with these arguments.
    #[inline(always)]
    unsafe fn sys(n: libc::c_long, a: [usize; 6]) -> isize {
        let ret: isize;
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }

    /// The middle process: a session of its own, then the watchdog, then exit.
    extern "C" fn middle(ctx: *const c_void) -> ! {
        // SAFETY: `ctx` is the host's context, valid while we run (the host waits for us);
        // raw system calls only.
        unsafe {
            let ctx = &*(ctx as *const Ctx);
            sys(libc::SYS_setsid, [0; 6]);
            let mut pidfd: libc::c_int = -1;
            let mut args = CloneArgs {
                flags: spawn::CLONE_VM | spawn::CLONE_PIDFD,
                pidfd: &mut pidfd as *mut libc::c_int as u64,
                exit_signal: libc::SIGCHLD as u64,
                ..CloneArgs::default()
            };
            let ret = spawn::clone3_on_stack(
                &mut args,
                &*ctx.stack,
                ctx as *const Ctx as *const c_void,
                watchdog,
            );
            if ret > 0 {
                ctx.pidfd.store(pidfd, Ordering::SeqCst);
                ctx.pid.store(ret as i32, Ordering::SeqCst);
            } else {
                ctx.pid.store(ret as i32, Ordering::SeqCst);
            }
            sys(libc::SYS_exit, [0; 6]);
        }
        unreachable_exit()
    }

    /// Never reached (the `exit` system call does not return); no panic machinery here.
    fn unreachable_exit() -> ! {
        loop {
            // SAFETY: `exit` of this task.
            unsafe { sys(libc::SYS_exit, [1, 0, 0, 0, 0, 0]) };
        }
    }

    /// The watchdog until it execs.
    extern "C" fn watchdog(ctx: *const c_void) -> ! {
        // SAFETY: `ctx` is the host's, kept while we may run on its memory; raw system
        // calls only, on descriptors of our own table (a copy of the host's).
        unsafe {
            let ctx = &*(ctx as *const Ctx);
            sys(
                libc::SYS_prctl,
                [
                    libc::PR_SET_NAME as usize,
                    c"corral-watchdog".as_ptr() as usize,
                    0,
                    0,
                    0,
                    0,
                ],
            );
            let all: u64 = !0;
            sys(
                libc::SYS_rt_sigprocmask,
                [
                    libc::SIG_SETMASK as usize,
                    &all as *const u64 as usize,
                    0,
                    8,
                    0,
                    0,
                ],
            );
            // Ours at 3 (the host's pidfd), 4 (the socket), 5 (the wake-up pipe), /dev/null
            // at 0-2, each first moved above them all so that no move overwrites another.
            let mut high = [0usize; 4];
            let mut i = 0;
            while i < 4 {
                let fd = sys(
                    libc::SYS_fcntl,
                    [
                        ctx.fds[i] as usize,
                        libc::F_DUPFD_CLOEXEC as usize,
                        10,
                        0,
                        0,
                        0,
                    ],
                );
                if fd < 0 {
                    unreachable_exit();
                }
                high[i] = fd as usize;
                i += 1;
            }
            let moves: [(usize, usize, usize); 6] = [
                (high[3], 0, 0),
                (high[3], 1, 0),
                (high[3], 2, 0),
                (high[0], HOST_FD as usize, 0),
                (high[1], PLAN_FD as usize, 0),
                (high[2], WAKE_FD as usize, libc::O_CLOEXEC as usize),
            ];
            let mut i = 0;
            while i < moves.len() {
                let (from, to, flags) = moves[i];
                if sys(libc::SYS_dup3, [from, to, flags, 0, 0, 0]) < 0 {
                    unreachable_exit();
                }
                i += 1;
            }
            sys(
                libc::SYS_close_range,
                [WAKE_FD as usize + 1, u32::MAX as usize, 0, 0, 0, 0],
            );
            // Until the pipe hangs up, both; then our pidfd alone (a negative descriptor
            // is skipped by `ppoll`).
            let mut wake = WAKE_FD;
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: HOST_FD,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: wake,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                let n = sys(libc::SYS_ppoll, [fds.as_mut_ptr() as usize, 2, 0, 0, 0, 0]);
                if n == -(libc::EINTR as isize) || n == 0 {
                    continue;
                }
                let registered = WATCHED.load(Ordering::SeqCst) > 0;
                if n < 0 || fds[0].revents != 0 {
                    // The host is gone (or we cannot tell: act as if).
                    if !registered {
                        sys(libc::SYS_exit, [0; 6]);
                    }
                    break;
                }
                if fds[1].revents != 0 {
                    if !registered {
                        sys(libc::SYS_exit, [0; 6]);
                    }
                    wake = -1;
                }
            }
            // The host has exited: the plan is what it last published, and nothing changes
            // it any more. Into the memfd, for the watchdog we exec to read.
            let plan = PLAN.load(Ordering::SeqCst);
            if !plan.is_null() {
                let plan = &*plan;
                let (mut at, len) = (plan.as_ptr() as usize, plan.len());
                let end = at + len;
                while at < end {
                    let n = sys(libc::SYS_write, [PLAN_FD as usize, at, end - at, 0, 0, 0]);
                    if n == -(libc::EINTR as isize) {
                        continue;
                    }
                    if n <= 0 {
                        break;
                    }
                    at += n as usize;
                }
            }
            sys(
                libc::SYS_execve,
                [
                    ctx.program.as_ptr() as usize,
                    ctx.argv.as_ptr() as usize,
                    ctx.envp.as_ptr() as usize,
                    0,
                    0,
                    0,
                ],
            );
        }
        unreachable_exit()
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
    /// The host's messages; none when a lazy watchdog handed us its host's plan instead.
    socket: Option<OwnedFd>,
    watched: HashMap<PathBuf, Entry>,
    /// Where messages are received (allocated once: the watchdog wakes twice per job).
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
        supervise::close_descriptors_from(SOCKET_FD + 1);
        // SAFETY: only borrowed for the fstat; ownership is taken below.
        let (host, socket) = unsafe {
            (
                BorrowedFd::borrow_raw(HOST_FD),
                BorrowedFd::borrow_raw(SOCKET_FD),
            )
        };
        let kind = rustix::fs::fstat(socket)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode))
            .ok()?;
        if rustix::io::fcntl_getfd(host).is_err() {
            return None;
        }
        // SAFETY: both are open (checked above), and by the protocol they are ours.
        let (host, socket) = unsafe {
            (
                OwnedFd::from_raw_fd(HOST_FD),
                OwnedFd::from_raw_fd(SOCKET_FD),
            )
        };
        match kind {
            rustix::fs::FileType::Socket => Some(Watchdog::new(host, Some(socket))),
            // A lazy watchdog's memfd: its host's plan, the host gone.
            rustix::fs::FileType::RegularFile => {
                let mut w = Watchdog::new(host, None);
                w.read_plan(socket);
                Some(w)
            }
            _ => None,
        }
    }

    /// Handles each message of a plan ([`PLAN`]'s form: each after its length).
    fn read_plan(&mut self, plan: OwnedFd) {
        let mut bytes = Vec::new();
        let mut file = std::fs::File::from(plan);
        if std::io::Seek::rewind(&mut file).is_err()
            || std::io::Read::read_to_end(&mut file, &mut bytes).is_err()
        {
            return;
        }
        let mut rest = &bytes[..];
        while let Some((len, after)) = rest.split_first_chunk::<4>() {
            let len = u32::from_ne_bytes(*len) as usize;
            let Some((msg, after)) = after.split_at_checked(len) else {
                return;
            };
            self.handle(msg);
            rest = after;
        }
    }

    /// The watchdog in a fork of the host ([`Running::fork`]): /dev/null on 0, 1 and 2,
    /// the host's pidfd and the socket at 3 and 4, every other descriptor closed, as the
    /// exec'd one has them.
    fn forked(host: OwnedFd, socket: OwnedFd, null: OwnedFd) -> Option<Watchdog> {
        // Fifteen bytes: the kernel's limit for a task's name.
        let _ = rustix::thread::set_name(c"corral-watchdog");
        ignore_signals();
        // Nothing of the host's runs here: no handler of its may run on a signal either.
        // SAFETY: plain data in and out of sigprocmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        }
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
        supervise::close_descriptors_from(SOCKET_FD + 1);
        // SAFETY: just duplicated there, and owned by nothing else.
        Some(unsafe {
            Watchdog::new(
                OwnedFd::from_raw_fd(HOST_FD),
                Some(OwnedFd::from_raw_fd(SOCKET_FD)),
            )
        })
    }

    fn new(host: OwnedFd, socket: Option<OwnedFd>) -> Watchdog {
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
        let socket_given = socket.is_some();
        Watchdog {
            host,
            socket,
            watched: HashMap::new(),
            buf: if socket_given {
                vec![0u8; MAX_MESSAGE]
            } else {
                Vec::new()
            },
        }
    }

    /// Waits for the host to go, then deals with what it left. Returns the exit status.
    fn run(mut self) -> i32 {
        let Some(socket) = self.socket.take() else {
            // Handed a plan: the host is gone, and that is all there is.
            self.kill_all();
            return 0;
        };
        self.socket = Some(socket);
        loop {
            let socket = self.socket.as_ref().expect("kept");
            let mut fds = [
                PollFd::new(&self.host, PollFlags::IN),
                PollFd::new(socket, PollFlags::IN),
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
        let Some(socket) = self.socket.take() else {
            return Read::Eof;
        };
        let read = loop {
            match rustix::net::recv(&socket, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => break Read::Eof,
                Ok((n, _)) => self.handle(&buf[..n]),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break Read::Drained,
                // A reset or failed socket: nobody can talk to us any more.
                Err(_) => break Read::Eof,
            }
        };
        self.buf = buf;
        self.socket = Some(socket);
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
    /// The tests that look at this process's one watchdog run one at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// A lazy watchdog is sent nothing: the plan it would act on holds every cgroup
    /// registered and not forgotten, each as its `add` message after its length.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_lazy_watchdogs_plan_holds_what_is_registered() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        if !lazy::kernel_confines_core_dumps() {
            eprintln!("SKIPPED: no lazy watchdog before Linux 5.16");
            return;
        }
        let plan = || -> Vec<Vec<u8>> {
            let _state = WATCHDOG.lock().unwrap();
            let p = PLAN.load(Ordering::SeqCst);
            let bytes = if p.is_null() {
                Vec::new()
            } else {
                // SAFETY: replaced (and freed) only under the lock we hold.
                unsafe { (*p).clone() }
            };
            let mut out = Vec::new();
            let mut rest = &bytes[..];
            while let Some((len, after)) = rest.split_first_chunk::<4>() {
                let (msg, after) = after.split_at(u32::from_ne_bytes(*len) as usize);
                out.push(msg.to_vec());
                rest = after;
            }
            out
        };
        let a = match Watch::add(
            Path::new("/nonexistent/corral-test-plan-a"),
            &[PathBuf::from("/run/x")],
        ) {
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
        let b = Watch::add(Path::new("/nonexistent/corral-test-plan-b"), &[]).expect("add");
        let msgs = plan();
        assert!(
            msgs.contains(&b"add /nonexistent/corral-test-plan-a\0/run/x".to_vec()),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&b"add /nonexistent/corral-test-plan-b".to_vec()),
            "{msgs:?}"
        );
        drop(a);
        let msgs = plan();
        assert!(
            !msgs.iter().any(|m| m.ends_with(b"plan-a\0/run/x")),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&b"add /nonexistent/corral-test-plan-b".to_vec()),
            "{msgs:?}"
        );
        drop(b);
    }

    #[test]
    fn a_dead_watchdog_is_replaced() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
        // Exec'd, it is `corral __watchdog <us>`; lazy or forked, `corral-watchdog` with
        // our command line.
        // A lazy one names itself as it starts, while we go on: looked at until it has.
        let fd = pidfd::open(old).expect("pidfd of the watchdog");
        let ours = format!("{ARG}\0{}\0", std::process::id());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let argv = std::fs::read(format!("/proc/{}/cmdline", old.get())).unwrap_or_default();
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", old.get())).unwrap_or_default();
            let execd = argv.windows(ours.len()).any(|w| w == ours.as_bytes());
            let shared = comm.trim_end() == "corral-watchdog"
                && std::fs::read("/proc/self/cmdline").is_ok_and(|me| me == argv);
            if execd || shared {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {} is not our watchdog: {comm:?}",
                old.get()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
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
