//! The supervisor process of a pgroup job started from a `std::process::Command`.
//!
//! The pgroup mechanism needs a child subreaper above the job, so that orphans of the job
//! stay descendants of someone who watches them. A library must not make its host process
//! a subreaper (every orphan of every other child would then land on the host), so
//! [`Job::spawn`](crate::Job::spawn) runs each pgroup job under its own supervisor `S`:
//!
//! ```text
//! host --std fork--> C --raw fork--> M   (setpgid(0, 0), then std execs the user's program)
//!                    |
//!                    +-- execve("corral", ["corral", "__supervise", "<M>"], []) = S
//! ```
//!
//! `C` is std's forked child; our `pre_exec` hook ([`arm`]) runs in it. It makes itself a
//! child subreaper (the attribute survives `execve`, and is not inherited across `fork`),
//! forks the main process `M` with a bare `clone` system call (no `pthread_atfork`
//! handlers, which could deadlock in the child of a multi-threaded host), starts a session
//! of its own (so a SIGKILL to the host's process group does not reach it), sends
//! `main <pid>` to the host, puts `/dev/null` on its stdio (the supervisor never holds the
//! user's pipes), puts the control socket at descriptor 3, and execs `corral __supervise`.
//! `M` returns from the hook, so std goes on to exec the user's program with the user's
//! stdio, environment and directory, and reports an exec failure as usual.
//!
//! `S` ([`main`]) ignores the terminal's and the job's polite signals, reaps every child
//! (`waitid(P_ALL)` on each SIGCHLD from a signalfd), reports how `M` ended, and exits
//! when it has no child left: the job is empty. If the host closes the control socket
//! without saying `detach` first (it dropped the job, or died), `S` SIGKILLs every
//! descendant through pidfds until none is left.
//!
//! # Protocol
//! One message per `SOCK_SEQPACKET` packet, ASCII, on a socketpair created by the host:
//!
//! | from | message | meaning |
//! |---|---|---|
//! | C | `main <pid>` | the main process (always the first message) |
//! | C | `exec-failed <errno>` | `S` could not be set up or exec'd; `M` was killed, `C` exits 127 |
//! | S | `exit code <n>` / `exit signal <n>` | how the main process ended; ` last` appended when `S` had no other child left as it reaped it (a `done` follows) |
//! | S | `done <n>` | no child left, `n` orphans reaped; `S` exits 0 right after |
//! | host | `detach` | never kill: keep reaping until empty, then exit |
//!
//! End of file from the host without `detach`: kill everything, reap, exit. After
//! `detach`, end of file: `S` closes its end and goes on reaping until the job is empty.
//!
//! # Signals
//! `C` blocks every signal before the fork (`M` restores std's mask), so no handler of the
//! host runs in it and no Ctrl+C kills it; it sets the ignored ones to `SIG_IGN`, which
//! survives `execve`. `S` starts with everything blocked and unblocks all but SIGCHLD.
//!
//! # Limits
//! `S` is the host's child: after `detach` it is a zombie once it exits, until the host
//! reaps it or exits. Should the exec of `S` fail, `C` kills `M` at once, but a process
//! `M` forked meanwhile is orphaned to the host's own reaper.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::error::{Error, Result};
use crate::linux::pgroup;
use crate::linux::pidfd::{self, ExitKind, Pid};

/// `argv[1]` that turns a `corral` executable into a supervisor.
pub(crate) const ARG: &str = "__supervise";
/// Names the `corral` executable supervisors are run from.
pub(crate) const ENV: &str = "CORRAL_SUPERVISOR";
/// The executable's name, looked for next to the current executable and in `PATH`.
const BINARY_NAME: &str = "corral";
/// The descriptor the supervisor finds its control socket at.
const CONTROL_FD: RawFd = 3;
/// Exit status of `C` when the supervisor could not be exec'd.
const EXIT_EXEC_FAILED: i32 = 127;
/// Exit status of `corral __supervise` run without its socket or a main PID.
const EXIT_USAGE: i32 = 2;
/// Exit status of a supervisor whose main process was never its child.
const EXIT_NO_MAIN: i32 = 3;
/// How long [`Armed::finish`] waits for `main <pid>`; it is normally there already.
const MAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Signals the supervisor ignores: the terminal's (Ctrl+C, Ctrl+\, Ctrl+Z, hang-up,
/// background I/O) and the polite signal a stop sends to the job.
const IGNORED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGPIPE,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

// ---- host side ---------------------------------------------------------------------------

/// The `corral` executable to run supervisors from: `explicit`, else `CORRAL_SUPERVISOR`,
/// else `corral` next to the current executable, or in its parent directory (cargo puts
/// test binaries in `target/*/deps`, the `corral` binary in `target/*`), else in `PATH`.
/// An explicit path or the variable is used as given or refused, never skipped.
pub(crate) fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return usable(path).map_err(|why| no_supervisor(format!("{}: {why}", path.display())));
    }
    if let Some(path) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return usable(&path)
            .map_err(|why| no_supervisor(format!("{ENV}={}: {why}", path.display())));
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            searched.push(dir.join(BINARY_NAME));
            if let Some(up) = dir.parent() {
                searched.push(up.join(BINARY_NAME));
            }
        }
    }
    if let Some(found) = searched.iter().find_map(|c| usable(c).ok()) {
        return Ok(found);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(found) = usable(&dir.join(BINARY_NAME)) {
                return Ok(found);
            }
        }
    }
    let mut places: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    places.push("PATH".into());
    Err(no_supervisor(format!(
        "no executable `{BINARY_NAME}` found (searched {})",
        places.join(", ")
    )))
}

fn no_supervisor(reason: String) -> Error {
    Error::NoSupervisor { reason }
}

/// What `corral __supervise --protocol` prints: the version of the message protocol.
/// 2: the binary also runs the watchdog (`corral __watchdog`, see `watchdog.rs`).
const PROTOCOL: &str = "corral-supervise 2";
const PROTOCOL_ARG: &str = "--protocol";

/// `path` made absolute, if it is a `corral` that speaks our protocol; else what is wrong.
/// A binary that would not understand `__supervise` would exit at once and leave the main
/// process uncontained, so each binary is asked once per process (`__supervise
/// --protocol`) before its first job; the answer is kept with the file's identity (device,
/// inode, modification time), so a binary replaced meanwhile is asked again.
fn usable(path: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    /// A file's identity: device, inode, modification time (seconds, nanoseconds).
    type Identity = (u64, u64, i64, i64);
    static CHECKED: Mutex<Vec<(PathBuf, Identity)>> = Mutex::new(Vec::new());
    let path = executable(path)?;
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    let identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
    let known =
        |list: &Vec<(PathBuf, Identity)>| list.iter().any(|(p, id)| *p == path && *id == identity);
    if known(&CHECKED.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(path);
    }
    // This very program (the `corral` CLI finds itself next to its own executable) speaks
    // the protocol of the library it was built with: no need to run it to ask.
    if std::fs::metadata("/proc/self/exe")
        .is_ok_and(|me| me.dev() == meta.dev() && me.ino() == meta.ino())
    {
        return Ok(path);
    }
    let out = Command::new(&path)
        .args([ARG, PROTOCOL_ARG])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it ({e})"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || said.trim_end() != PROTOCOL {
        return Err(format!(
            "it does not speak `{PROTOCOL}` (a different corral version?); point \
             CORRAL_SUPERVISOR at the corral built with this library"
        ));
    }
    let mut list = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !known(&list) {
        list.push((path.clone(), identity));
    }
    Ok(path)
}

/// `path` made absolute (the hook runs after std's `chdir` to the command's directory), if
/// it is an executable regular file; else what is wrong with it.
fn executable(path: &Path) -> Result<PathBuf, String> {
    let path = std::path::absolute(path).map_err(|e| e.to_string())?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err("not a regular file".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("not found".into()),
        Err(e) => return Err(e.to_string()),
    }
    rustix::fs::access(&path, rustix::fs::Access::EXEC_OK)
        .map_err(|e| format!("not executable ({})", io::Error::from(e)))?;
    Ok(path)
}

/// What the `pre_exec` hook needs, prepared before the fork.
struct Hook {
    /// The supervisor's end of the control socket while armed; -1 once disarmed, when the
    /// hook does nothing (so the caller's `Command` can be spawned again as usual).
    fd: AtomicI32,
    /// The absolute path of the `corral` executable.
    binary: CString,
}

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
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socketpair(AF_UNIX, SOCK_SEQPACKET) for the supervisor", e))?;
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
    closed: bool,
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

// ---- the hook, between fork and exec -----------------------------------------------------

impl Hook {
    /// The hook in `C`, std's child. Returns in the main process `M`; never returns in `C`.
    fn run(&self) -> io::Result<()> {
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

/// `fork` as a bare system call: unlike libc's `fork`, it runs no `pthread_atfork`
/// handlers, which may take locks that another thread of the host held when std forked.
/// (rustix has this as `kernel_fork`, in a module whose name it rotates on purpose.)
///
/// # Safety
/// The child must keep to async-signal-safe calls until it execs or exits. libc's cached
/// thread ID is stale in the child: nothing here may use it (`raise`, `pthread_kill`).
pub(crate) unsafe fn raw_fork() -> libc::pid_t {
    // clone(flags, stack = 0: the child continues on a copy of our stack, ...): argument
    // order differs on s390x, where the stack comes first.
    #[cfg(target_arch = "s390x")]
    let ret = libc::syscall(
        libc::SYS_clone,
        0 as libc::c_long,
        libc::SIGCHLD as libc::c_long,
        0,
        0,
        0,
    );
    #[cfg(not(target_arch = "s390x"))]
    let ret = libc::syscall(
        libc::SYS_clone,
        libc::SIGCHLD as libc::c_long,
        0 as libc::c_long,
        0,
        0,
        0,
    );
    ret as libc::pid_t
}

/// `prefix` and the decimal `n` into `buf`; returns the length. Allocation-free.
fn put_message(buf: &mut [u8; 32], prefix: &[u8], n: u32) -> usize {
    buf[..prefix.len()].copy_from_slice(prefix);
    prefix.len() + put_decimal(&mut buf[prefix.len()..], n)
}

/// The decimal digits of `n` at the start of `out` (followed by a NUL if there is room);
/// returns how many digits. Allocation-free.
fn put_decimal(out: &mut [u8], n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    if let Some(nul) = out.get_mut(len) {
        *nul = 0;
    }
    len
}

// ---- messages ----------------------------------------------------------------------------

/// One packet of the protocol (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    Main(Pid),
    ExecFailed(i32),
    /// How the main process ended, and whether it was the supervisor's last child.
    Exit(ExitKind, bool),
    Done(usize),
    Detach,
    /// Anything else, as received.
    Unknown(String),
}

impl Message {
    fn parse(bytes: &[u8]) -> Message {
        let text = String::from_utf8_lossy(bytes);
        let words: Vec<&str> = text.split(' ').collect();
        let parsed = match words.as_slice() {
            ["main", pid] => parse_pid(pid).map(Message::Main),
            ["exec-failed", errno] => errno.parse().ok().map(Message::ExecFailed),
            ["exit", "code", n, rest @ ..] if last(rest).is_some() => n
                .parse()
                .ok()
                .map(|n| Message::Exit(ExitKind::Code(n), last(rest) == Some(true))),
            ["exit", "signal", n, rest @ ..] if last(rest).is_some() => n
                .parse()
                .ok()
                .map(|n| Message::Exit(ExitKind::Signal(n), last(rest) == Some(true))),
            ["done", n] => n.parse().ok().map(Message::Done),
            ["detach"] => Some(Message::Detach),
            _ => None,
        };
        parsed.unwrap_or_else(|| Message::Unknown(text.into_owned()))
    }
}

/// The optional `last` word of an `exit` message: `Some(flag)`, or `None` when the words
/// are something else.
fn last(rest: &[&str]) -> Option<bool> {
    match rest {
        [] => Some(false),
        ["last"] => Some(true),
        _ => None,
    }
}

/// A PID in decimal (`Pid::from_raw` asserts on negative numbers).
fn parse_pid(text: &str) -> Option<Pid> {
    text.parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .and_then(Pid::from_raw)
}

/// Sends one packet without blocking and without SIGPIPE.
fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    loop {
        match rustix::net::send(fd, msg, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet: `None` at end of file (or a reset connection, which is the same
/// to us: the peer is gone). Without a deadline, `WouldBlock` when nothing is pending.
fn recv_message(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<Option<Message>> {
    recv_with(fd, RecvFlags::DONTWAIT, deadline)
}

/// The next packet, left in the socket; `Ok(None)` if none is pending or at end of file.
fn peek_message(fd: BorrowedFd<'_>) -> io::Result<Option<Message>> {
    match recv_with(fd, RecvFlags::DONTWAIT | RecvFlags::PEEK, None) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        other => other,
    }
}

fn recv_with(
    fd: BorrowedFd<'_>,
    flags: RecvFlags,
    deadline: Option<Instant>,
) -> io::Result<Option<Message>> {
    let mut buf = [0u8; 64];
    loop {
        match rustix::net::recv(fd, &mut buf[..], flags) {
            Ok((0, _)) => return Ok(None),
            Ok((n, _)) => return Ok(Some(Message::parse(&buf[..n]))),
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Ok(None),
            Err(Errno::AGAIN) if deadline.is_some() => {
                let left = deadline
                    .expect("checked")
                    .saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no message within {MAIN_DEADLINE:?}"),
                    ));
                }
                let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
                crate::linux::poll(&mut fds, Some(left)).map_err(io::Error::other)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

// ---- the supervisor process --------------------------------------------------------------

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

/// Closes every descriptor from `first` up: the host's descriptors that were not
/// close-on-exec (they are the user's command's business, not ours).
pub(crate) fn close_descriptors_from(first: RawFd) {
    // SAFETY: close_range(2) (Linux 5.9) on descriptors nothing in this process uses yet.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if ret == 0 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory's own descriptor is closed already (EBADF).
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    //! The host side and the hook, with the real `corral` binary (found as `Job::spawn`
    //! finds it: next to the test binary's directory, where `cargo test` builds it).
    //! Processes are only signalled through pidfds opened on processes verified to be
    //! descendants of the supervisor; a guard kills what a test started even if it fails.

    use super::*;
    use crate::linux::procs;
    use crate::options::Signal;
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

    #[test]
    fn messages_round_trip() {
        let mut buf = [0u8; 32];
        let n = put_message(&mut buf, b"main ", 4_000_000);
        assert_eq!(&buf[..n], b"main 4000000");
        assert_eq!(
            Message::parse(&buf[..n]),
            Message::Main(Pid::from_raw(4_000_000).unwrap())
        );
        let n = put_message(&mut buf, b"exec-failed ", 0);
        assert_eq!(Message::parse(&buf[..n]), Message::ExecFailed(0));
        assert_eq!(
            Message::parse(b"exit code 3"),
            Message::Exit(ExitKind::Code(3), false)
        );
        assert_eq!(
            Message::parse(b"exit signal 9"),
            Message::Exit(ExitKind::Signal(9), false)
        );
        assert_eq!(
            Message::parse(b"exit code 0 last"),
            Message::Exit(ExitKind::Code(0), true)
        );
        assert!(matches!(
            Message::parse(b"exit code 0 later"),
            Message::Unknown(_)
        ));
        assert_eq!(Message::parse(b"done 12"), Message::Done(12));
        assert_eq!(Message::parse(b"detach"), Message::Detach);
        assert!(matches!(Message::parse(b"main -1"), Message::Unknown(_)));
        let mut pid = [0xffu8; 12];
        assert_eq!(put_decimal(&mut pid, u32::MAX), 10);
        assert_eq!(&pid[..11], b"4294967295\0");
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
        std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
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
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let mut cmd = Command::new("true");
        let err = arm(&mut cmd, &plain).err().expect("refused");
        let _ = std::fs::remove_dir_all(plain.parent().unwrap());
        assert!(err.to_string().contains("not executable"), "{err}");
        // Nothing was installed that changes the command.
        assert!(cmd.status().unwrap().success());
    }
}
