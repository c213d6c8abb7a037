//! Starting a job's main process, three ways:
//! - a `std::process::Command` in cgroup mode: std forks, and a `pre_exec` hook moves the
//!   child into the fresh leaf before it execs (it runs nothing of its own before that, so
//!   nothing escapes);
//! - a `std::process::Command` in pgroup mode: the child becomes the job's supervisor, which
//!   forks the real main process ([`crate::linux::supervise`]); or, in-process, the child
//!   only takes a process group of its own;
//! - a [`JobCommand`] (the CLI's lean path): `clone3(CLONE_INTO_CGROUP)`, born in the leaf.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::machine::Phase;
use super::{Backend, Job, JobCommand, JobStdio};
use crate::error::{error_chain, Error, Result};
use crate::linux::cgroup::Leaf;
use crate::linux::pidfd::{self, Pid};
use crate::linux::spawn::{self as raw_spawn, Placement, SpawnSpec};
use crate::linux::watchdog::Watch;
use crate::linux::{self, pgroup, supervise};
use crate::options::{Leftovers, Options, Supervisor};
use crate::registry;
use crate::report::{CgroupParentSource, LimitsReport, Spawn, Uncovered};
use crate::Credentials;
use crate::Mechanism;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// What a spawn path hands to [`Job::assemble`].
struct Started {
    backend: Backend,
    main_pid: Pid,
    /// The main process's own group, when it got one; else it shares ours.
    own_group: bool,
    method: Spawn,
    stdio: Stdio,
    /// Who the main process runs as, when not as the caller ([`JobCommand::credentials`]).
    credentials: Option<Credentials>,
}

/// The main process's piped stdin, stdout and stderr.
pub(crate) type Stdio = (Option<ChildStdin>, Option<ChildStdout>, Option<ChildStderr>);

/// The mechanism as chosen, for the report.
struct Chosen {
    mechanism: Mechanism,
    reason: String,
    degraded: bool,
    parent_source: Option<CgroupParentSource>,
    /// The limits applied to the leaf (cgroup, with limits asked for).
    limits: Option<LimitsReport>,
    /// cgroup: the leaf registered with the watchdog, or why it is not.
    watch: Option<std::result::Result<Watch, Uncovered>>,
    /// The job's registry record and control socket, or why there is none (`None`: not
    /// asked for).
    registration: Option<std::result::Result<registry::Registration, registry::Error>>,
}

impl Job {
    /// [`crate::Job::spawn`]: the job, and the main process's piped stdio.
    pub(crate) fn spawn(cmd: &mut Command, opts: &Options) -> Result<(Job, Stdio)> {
        check_name(opts)?;
        check_sigchld()?;
        if opts.pid_namespace {
            return Err(Error::InvalidOptions(
                "pid_namespace needs the clone3 spawn path: use Job::spawn_command with a \
                 JobCommand, or drop pid_namespace"
                    .into(),
            ));
        }
        Job::spawn_std(cmd, opts, linux::choose(opts)?)
    }

    /// [`Job::spawn`] once the options are checked and the mechanism chosen.
    fn spawn_std(cmd: &mut Command, opts: &Options, choice: linux::Choice) -> Result<(Job, Stdio)> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let command: Vec<String> = std::iter::once(program.clone())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let mut id = new_id();
        let (chosen, started) = match place(choice, opts, &mut id, &command)? {
            Placed::Cgroup(leaf, chosen) => {
                let child = {
                    let _hook = Hook::install(cmd, Action::JoinCgroup(leaf.procs_fd()));
                    cmd.spawn().map_err(|e| spawn_error(cmd, &program, e))?
                };
                // On failure above, `leaf` drops and removes itself.
                let (main_pid, main_fd, stdio) = adopt(child)?;
                (
                    chosen,
                    Started {
                        backend: Backend::Cgroup {
                            leaf,
                            main: main_fd,
                            watch: None,
                        },
                        main_pid,
                        own_group: false,
                        method: Spawn::CommandJoinedCgroup,
                        stdio,
                        credentials: None,
                    },
                )
            }
            Placed::Pgroup { reason, degraded } => {
                let mut chosen = Chosen::pgroup(reason, degraded);
                chosen.register(opts, &id, &command, None);
                let started = match &opts.supervisor {
                    Supervisor::InProcess => {
                        let subreaper = pgroup::Subreaper::acquire()?;
                        let child = {
                            let _hook = Hook::install(cmd, Action::NewProcessGroup);
                            cmd.spawn().map_err(|e| spawn_error(cmd, &program, e))?
                        };
                        let (main_pid, main_fd, stdio) = adopt(child)?;
                        Started {
                            backend: Backend::InProcess {
                                root: Pid::current(),
                                main: main_fd,
                                reaped: 0,
                                _subreaper: subreaper,
                            },
                            main_pid,
                            own_group: true,
                            method: Spawn::CommandInProcessSubreaper,
                            stdio,
                            credentials: None,
                        }
                    }
                    Supervisor::Auto | Supervisor::Binary(_) => {
                        let explicit = match &opts.supervisor {
                            Supervisor::Binary(path) => Some(path.as_path()),
                            _ => None,
                        };
                        let binary = supervise::find_binary(explicit)?;
                        let armed = supervise::arm(cmd, &binary)?;
                        let child = cmd.spawn().map_err(|e| spawn_error(cmd, &program, e))?;
                        let mut sup = armed.finish(child)?;
                        let stdio = (sup.stdin.take(), sup.stdout.take(), sup.stderr.take());
                        Started {
                            main_pid: sup.main,
                            backend: Backend::supervised(sup),
                            own_group: true,
                            method: Spawn::CommandUnderSupervisor,
                            stdio,
                            credentials: None,
                        }
                    }
                };
                (chosen, started)
            }
        };
        Ok(Job::assemble(id, command, opts, chosen, started))
    }

    /// [`crate::Job::spawn_command`]: the job, and the main process's piped stdio.
    pub(crate) fn spawn_command(cmd: &JobCommand, opts: &Options) -> Result<(Job, Stdio)> {
        check_name(opts)?;
        check_sigchld()?;
        if opts.pid_namespace && opts.leftovers == Leftovers::Wait {
            return Err(Error::InvalidOptions(
                "--pid-namespace cannot be combined with --leftovers wait: when COMMAND exits, \
                 the kernel kills every process left in its PID namespace; drop one of them"
                    .into(),
            ));
        }
        let choice = linux::choose(opts)?;
        if matches!(choice, linux::Choice::Pgroup { .. })
            && opts.supervisor != Supervisor::InProcess
        {
            if opts.pid_namespace {
                return Err(Error::InvalidOptions(
                    "pid_namespace is not available under a supervisor process: use the \
                     cgroup mechanism or Supervisor::InProcess, or drop pid_namespace"
                        .into(),
                ));
            }
            if cmd.credentials.is_some() {
                return Err(Error::InvalidOptions(
                    "credentials are not available under a supervisor process: use \
                     Job::spawn_command with the cgroup mechanism or Supervisor::InProcess, or \
                     drop credentials"
                        .into(),
                ));
            }
            return Job::spawn_std(&mut cmd.to_std(), opts, choice);
        }
        let mut id = new_id();
        let mut streams = Streams::new(&cmd.stdio)?;
        let mut spec = SpawnSpec {
            program: &cmd.program,
            args: &cmd.args,
            env: cmd.env.as_deref(),
            cwd: cmd.cwd.as_deref(),
            stdio: streams.child_ends(),
            sigmask: cmd.signal_mask,
            placement: Placement::NewProcessGroup,
            pid_namespace: opts.pid_namespace,
            credentials: cmd.credentials.as_ref(),
            resource_limits: &cmd.resource_limits,
        };
        let display = cmd.display();
        let (chosen, started) = match place(choice, opts, &mut id, &display)? {
            Placed::Cgroup(leaf, mut chosen) => {
                spec.placement = Placement::Cgroup {
                    dir: leaf.dir_fd(),
                    procs: leaf.procs_fd(),
                    forbid_clone3: opts.debug.no_clone_into_cgroup,
                };
                // On failure `leaf` drops here and removes itself.
                let spawned = raw_spawn::spawn(&spec)?;
                note_pid_namespace(&mut chosen, &spawned);
                let method = spawned.spawn();
                (
                    chosen,
                    Started {
                        backend: Backend::Cgroup {
                            leaf,
                            main: spawned.pidfd,
                            watch: None,
                        },
                        main_pid: spawned.pid,
                        own_group: false,
                        method,
                        stdio: streams.take_ours(),
                        credentials: cmd.credentials.clone(),
                    },
                )
            }
            Placed::Pgroup { reason, degraded } => {
                let subreaper = pgroup::Subreaper::acquire()?;
                let mut chosen = Chosen::pgroup(reason, degraded);
                chosen.register(opts, &id, &display, None);
                let spawned = raw_spawn::spawn(&spec)?;
                note_pid_namespace(&mut chosen, &spawned);
                let method = spawned.spawn();
                (
                    chosen,
                    Started {
                        backend: Backend::InProcess {
                            root: Pid::current(),
                            main: spawned.pidfd,
                            reaped: 0,
                            _subreaper: subreaper,
                        },
                        main_pid: spawned.pid,
                        own_group: true,
                        method,
                        stdio: streams.take_ours(),
                        credentials: cmd.credentials.clone(),
                    },
                )
            }
        };
        Ok(Job::assemble(id, display, opts, chosen, started))
    }

    fn assemble(
        id: String,
        command: Vec<String>,
        opts: &Options,
        chosen: Chosen,
        started: Started,
    ) -> (Job, Stdio) {
        let begun = Instant::now();
        let (own_pgid, own_sid) = linux::own_group_and_session();
        let main_pgid = if started.own_group {
            started.main_pid.get()
        } else {
            own_pgid
        };
        let mut backend = started.backend;
        let on_supervisor_death = backend.cover(chosen.watch, opts);
        let (registration, not_registered) = match chosen.registration {
            Some(Ok(r)) => (Some(r), None),
            Some(Err(why)) => (None, Some(why.to_string())),
            None => (None, None),
        };
        let job = Job {
            id,
            command,
            backend,
            main_pid: started.main_pid,
            main_exit: None,
            main_pgid,
            main_sid: own_sid,
            own_pgid,
            deadline: opts.timeout.map(|t| begun + t),
            opts: opts.clone(),
            mechanism: chosen.mechanism,
            mechanism_reason: chosen.reason,
            degraded: chosen.degraded,
            spawn: started.method,
            credentials: started.credentials,
            parent_source: chosen.parent_source,
            limits: chosen.limits,
            sigkill_sent: AtomicBool::new(false),
            started: begun,
            timed_out: false,
            signals: Vec::new(),
            leftovers: Vec::new(),
            stop: None,
            survivors: Vec::new(),
            killed_pids: Vec::new(),
            phase: Phase::Running,
            report: None,
            on_supervisor_death,
            registration,
            not_registered,
            external: None,
        };
        (job, started.stdio)
    }
}

/// A name asked for must be valid and not taken by a running job of this user; checked
/// before anything is created.
/// A process that ignores SIGCHLD (or sets `SA_NOCLDWAIT`) has its children reaped by the
/// kernel: a job's exit status could never be known, and every wait would fail with
/// ECHILD. Refused up front, with the fix; a disposition is the program's to choose, so the
/// library does not change it. (The `corral` binaries reset it to the default first.)
fn check_sigchld() -> Result<()> {
    // SAFETY: reads the current disposition into a zeroed struct; changes nothing.
    let (ignored, nocldwait) = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return Ok(());
        }
        (
            old.sa_sigaction == libc::SIG_IGN,
            old.sa_flags & libc::SA_NOCLDWAIT != 0,
        )
    };
    if ignored || nocldwait {
        return Err(Error::InvalidOptions(format!(
            "this process {} SIGCHLD, so the kernel reaps its children and a job's exit \
             status cannot be known; restore SIGCHLD's default disposition before starting jobs",
            if ignored {
                "ignores"
            } else {
                "sets SA_NOCLDWAIT for"
            }
        )));
    }
    Ok(())
}

fn check_name(opts: &Options) -> Result<()> {
    match &opts.name {
        Some(name) if opts.register => {
            registry::check_name(name, opts.helper.as_ref().map(|h| h.caller))
        }
        Some(name) => registry::validate(name),
        None => Ok(()),
    }
}

impl Chosen {
    /// Records the job in the job registry (when `opts.register`), before its first
    /// process starts, so `corral ps` and `corral kill` know it from its first instant. On
    /// failure the job runs all the same and its report says why; on a failed spawn the
    /// registration drops and removes its files.
    fn register(
        &mut self,
        opts: &Options,
        id: &str,
        command: &[String],
        cgroup: Option<&std::path::Path>,
    ) {
        if !opts.register {
            return;
        }
        let limits = self
            .limits
            .as_ref()
            .map(|l| l.applied.clone())
            .unwrap_or_default();
        let new = registry::NewRecord {
            id,
            name: opts.name.as_deref(),
            mechanism: self.mechanism.name(),
            cgroup,
            command,
            limits,
            on_behalf_of: opts.helper.as_ref().map(|h| h.caller),
        };
        self.registration = Some(registry::register(&new));
    }

    fn pgroup(reason: String, degraded: bool) -> Chosen {
        Chosen {
            mechanism: Mechanism::Pgroup,
            reason,
            degraded,
            parent_source: None,
            limits: None,
            watch: None,
            registration: None,
        }
    }
}

/// Adds to the mechanism's reason what a PID namespace changes (the report's
/// `mechanism_reason`).
fn note_pid_namespace(chosen: &mut Chosen, spawned: &raw_spawn::Spawned) {
    if let Some(user) = spawned.pid_namespace {
        chosen.reason.push_str(if user {
            "; COMMAND is PID 1 of a new PID namespace (in a new user namespace, its uid and \
             gid mapped to themselves): when it exits, the kernel kills every process left in \
             the namespace"
        } else {
            "; COMMAND is PID 1 of a new PID namespace: when it exits, the kernel kills every \
             process left in the namespace"
        });
    }
}

/// Where a job goes once its leaf is made (or could not be). Short-lived, once per spawn.
#[allow(clippy::large_enum_variant)]
enum Placed {
    Cgroup(Leaf, Chosen),
    Pgroup { reason: String, degraded: bool },
}

/// Makes the job's leaf for a cgroup `choice`. A parent that takes no more cgroups
/// (`cgroup.max.depth` or `cgroup.max.descendants` reached, `Error::NoCgroup`) sends an
/// `auto` job without limits to pgroup, which keeps it where corral runs: the job still
/// never leaves what contains its caller, and the report says why.
fn place(
    choice: linux::Choice,
    opts: &Options,
    id: &mut String,
    command: &[String],
) -> Result<Placed> {
    match choice {
        linux::Choice::Cgroup {
            parent,
            reason,
            limits,
        } => match new_leaf(parent, reason, limits, opts, id, command) {
            Ok((leaf, chosen)) => Ok(Placed::Cgroup(leaf, chosen)),
            Err(Error::NoCgroup { reason, .. })
                if opts.mechanism == crate::options::MechanismRequest::Auto
                    && opts.limits.is_empty() =>
            {
                Ok(Placed::Pgroup {
                    reason: format!("fallback: {reason}"),
                    degraded: true,
                })
            }
            Err(e) => Err(e),
        },
        linux::Choice::Pgroup { reason, degraded } => Ok(Placed::Pgroup { reason, degraded }),
    }
}

/// The job's fresh leaf under `parent`, named after `id` (which becomes the leaf's name),
/// with the limits of `opts` written in it, recorded in the job registry and registered
/// with the watchdog; and the choice as the report gives it. On failure the leaf removes
/// itself.
fn new_leaf(
    parent: crate::linux::cgroup::Parent,
    reason: String,
    enabled: Option<crate::linux::cgroup::Enabled>,
    opts: &Options,
    id: &mut String,
    command: &[String],
) -> Result<(Leaf, Chosen)> {
    let parent_source = parent.source;
    let degraded = parent.bound_to.is_some();
    let leaf = Leaf::create(parent, id)?;
    *id = leaf.name().to_string();
    let limits = apply_limits(&leaf, opts, enabled)?;
    let mut chosen = Chosen {
        mechanism: Mechanism::Cgroup,
        reason,
        degraded,
        parent_source: Some(parent_source),
        limits,
        watch: None,
        registration: None,
    };
    chosen.register(opts, id, command, Some(&leaf.path));
    // Should this process die, the watchdog also removes the job's registry files.
    let files = match &chosen.registration {
        Some(Ok(r)) => r.files(),
        _ => Vec::new(),
    };
    // The helper's privileged process stands in for the watchdog.
    chosen.watch = opts.helper.is_none().then(|| watch(&leaf, opts, &files));
    Ok((leaf, chosen))
}

/// Registers the fresh `leaf` with this process's watchdog, before anything runs in it,
/// so the job is covered from its first instant. Where that fails the job still runs, and
/// the report (and the CLI's summary) says it is not covered.
fn watch(
    leaf: &Leaf,
    opts: &Options,
    files: &[std::path::PathBuf],
) -> std::result::Result<Watch, Uncovered> {
    if opts.debug.no_watchdog {
        return Err(Uncovered::WatchdogOff);
    }
    let binary = match &opts.supervisor {
        Supervisor::Binary(path) => Some(path.as_path()),
        _ => None,
    };
    Watch::add_using(binary, &leaf.path, files)
        .map_err(|e| Uncovered::WatchdogFailed(error_chain(&e)))
}

/// Writes the limit files of `opts` in the fresh `leaf` (the controllers were enabled in
/// its parent by `linux::choose`), and says what was done for the report.
fn apply_limits(
    leaf: &Leaf,
    opts: &Options,
    enabled: Option<crate::linux::cgroup::Enabled>,
) -> Result<Option<LimitsReport>> {
    let Some(enabled) = enabled else {
        return Ok(None);
    };
    let files: Vec<(&str, String)> = opts
        .limits
        .files()
        .into_iter()
        .map(|(_, file, value)| (file, value))
        .collect();
    leaf.apply_limits(&files)?;
    Ok(Some(LimitsReport {
        applied: files.into_iter().map(|(f, v)| (f.to_string(), v)).collect(),
        controllers_enabled: enabled.controllers,
        moved_self_to: enabled.moved_self_to,
    }))
}

fn new_id() -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("corral-{}-{}", crate::linux::procs::own_pid(), seq)
}

/// Takes a freshly spawned child's PID, pidfd and stdio. The child is ours and unreaped, so
/// its PID cannot have been reused: the pidfd is the right process.
fn adopt(mut child: Child) -> Result<(Pid, OwnedFd, Stdio)> {
    let raw = child.id() as i32;
    let pid = Pid::from_raw(raw).expect("a spawned child has a positive PID");
    let stdio = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    match pidfd::open(pid) {
        Ok(fd) => Ok((pid, fd, stdio)),
        Err(e) => {
            // Without a pidfd the job cannot be watched: do not leave the child behind.
            let _ = child.kill();
            let _ = child.wait();
            Err(Error::process("pidfd_open", pid, e))
        }
    }
}

/// The library error for a failed `Command::spawn`.
fn spawn_error(cmd: &Command, program: &str, e: io::Error) -> Error {
    let program = program.to_string();
    if let Some(dir) = cmd.get_current_dir() {
        if !dir.is_dir() {
            return Error::Spawn {
                program,
                stage: format!("chdir to {}", dir.display()),
                source: e,
            };
        }
    }
    match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound { program },
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => {
            Error::NotExecutable { program, source: e }
        }
        _ => Error::Spawn {
            program,
            stage: "spawn (fork, set up, exec)".into(),
            source: e,
        },
    }
}

/// What corral's `pre_exec` hook does in the child.
enum Action<'a> {
    /// Write `0` to the job's `cgroup.procs`.
    JoinCgroup(BorrowedFd<'a>),
    /// `setpgid(0, 0)`.
    NewProcessGroup,
}

const DISARMED: i32 = -1;
const SETPGID: i32 = -2;

/// corral's `pre_exec` hook in a caller's `Command`. Hooks cannot be removed from a
/// `Command`, so this one acts only while its guard lives (the spawn call); afterwards it
/// does nothing, and the caller can spawn the `Command` again on its own.
struct Hook {
    state: Arc<AtomicI32>,
}

impl Hook {
    fn install(cmd: &mut Command, action: Action<'_>) -> Hook {
        use std::os::fd::AsRawFd;
        let value = match action {
            Action::JoinCgroup(fd) => fd.as_fd().as_raw_fd(),
            Action::NewProcessGroup => SETPGID,
        };
        let state = Arc::new(AtomicI32::new(value));
        let shared = Arc::clone(&state);
        // SAFETY: the closure runs in the forked child before exec. It loads an atomic and
        // makes at most one raw system call (write(2) or setpgid(2)), both async-signal-safe,
        // and allocates nothing (an io::Error from an errno holds just the number). A
        // descriptor number it writes to is open: the guard disarms the hook before the
        // leaf (which owns the descriptor) can be dropped.
        unsafe {
            cmd.pre_exec(move || match shared.load(Ordering::Acquire) {
                DISARMED => Ok(()),
                SETPGID => rustix::process::setpgid(None, None).map_err(io::Error::from),
                fd => {
                    let fd = BorrowedFd::borrow_raw(fd);
                    rustix::io::write(fd, b"0")
                        .map(drop)
                        .map_err(io::Error::from)
                }
            });
        }
        Hook { state }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.state.store(DISARMED, Ordering::Release);
    }
}

/// The pipes and `/dev/null` a [`JobCommand`]'s stdio asks for: the child's ends, lent to
/// the spawn, and ours, which become the job's `stdin`, `stdout` and `stderr`.
struct Streams {
    child: [Option<OwnedFd>; 3],
    ours: [Option<OwnedFd>; 3],
}

impl Streams {
    fn new(how: &[JobStdio; 3]) -> Result<Streams> {
        let mut streams = Streams {
            child: [None, None, None],
            ours: [None, None, None],
        };
        for (i, how) in how.iter().enumerate() {
            match how {
                JobStdio::Inherit => {}
                JobStdio::Null => {
                    let mode = if i == 0 {
                        rustix::fs::OFlags::RDONLY
                    } else {
                        rustix::fs::OFlags::WRONLY
                    };
                    let fd = rustix::fs::open(
                        "/dev/null",
                        mode | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .map_err(|e| Error::sys("open /dev/null for the job's stdio", e))?;
                    streams.child[i] = Some(fd);
                }
                JobStdio::Piped => {
                    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                        .map_err(|e| Error::sys("pipe for the job's stdio", e))?;
                    let (child, ours) = if i == 0 { (read, write) } else { (write, read) };
                    streams.child[i] = Some(child);
                    streams.ours[i] = Some(ours);
                }
            }
        }
        Ok(streams)
    }

    fn child_ends(&self) -> [Option<BorrowedFd<'_>>; 3] {
        [0, 1, 2].map(|i| self.child[i].as_ref().map(|fd| fd.as_fd()))
    }

    /// Our ends, as std's types. The child's close when `self` drops (after the spawn).
    fn take_ours(&mut self) -> Stdio {
        (
            self.ours[0].take().map(ChildStdin::from),
            self.ours[1].take().map(ChildStdout::from),
            self.ours[2].take().map(ChildStderr::from),
        )
    }
}
