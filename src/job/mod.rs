//! A job: spawn ([`spawn`]) -> a state machine ([`machine`]) driven by a blocking loop here
//! or by the tokio driver -> cleanup -> report.

mod machine;
mod spawn;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::Result;
use crate::linux::cgroup::Leaf;
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::supervise::Supervised;
use crate::linux::{self, pgroup, procs};
use crate::options::{Options, Signal, SignalSet};
use crate::report::{ProcessInfo, Report, StopReport};
use crate::Credentials;
use crate::Mechanism;
use crate::ResourceLimit;

use machine::Phase;
pub(crate) use machine::{Progress, Wants};

/// The program, arguments, environment, directory and stdio of a job's main process, for
/// [`Job::spawn_command`]: the lean path the `corral` CLI takes (the child is born in its
/// cgroup with `clone3`, vfork-style: nothing of the caller's memory is copied, where
/// [`Job::spawn`] with a `std::process::Command` must fork).
#[derive(Debug, Clone, Default)]
pub struct JobCommand {
    program: OsString,
    args: Vec<OsString>,
    env: Option<Vec<(OsString, OsString)>>,
    cwd: Option<PathBuf>,
    signal_mask: Option<SignalSet>,
    credentials: Option<Credentials>,
    resource_limits: Vec<ResourceLimit>,
    /// stdin, stdout, stderr.
    stdio: [JobStdio; 3],
}

/// What one of the main process's standard streams is, for [`JobCommand`]: as
/// `std::process::Stdio`'s `inherit`, `null` and `piped`. A piped stream's other end is
/// [`Job::stdin`], [`Job::stdout`] or [`Job::stderr`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobStdio {
    /// The caller's (the default).
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe, its other end in the [`Job`].
    Piped,
}

impl JobCommand {
    /// A command running `program` (looked up in `PATH` unless it contains a `/`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        JobCommand {
            program: program.as_ref().to_owned(),
            ..Default::default()
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Replaces the whole environment (default: the calling process's own).
    pub fn env_replace(mut self, vars: Vec<(OsString, OsString)>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Runs in `dir` (default: the calling process's working directory).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The signals blocked when the main process starts (default: those blocked in the
    /// thread that spawns it). A program that blocks signals for itself (to read them from
    /// a signalfd, say) passes the mask it started with, so the job does not inherit its
    /// own: a blocked SIGTERM would turn every polite stop into SIGKILL.
    pub fn signal_mask(mut self, mask: SignalSet) -> Self {
        self.signal_mask = Some(mask);
        self
    }

    /// Starts the main process as `creds`, with no privilege left: for a privileged
    /// program (root, or a setuid-root helper) that runs jobs for other users.
    ///
    /// The child switches between its placement and `exec`, so the job's cgroup (or
    /// process group) is still joined with the spawner's privileges. In this order, each
    /// a raw system call of the child's own thread:
    /// 1. every capability leaves the bounding set (`prctl(PR_CAPBSET_DROP)`, up to the
    ///    kernel's `cap_last_cap`);
    /// 2. the ambient set is cleared (`prctl(PR_CAP_AMBIENT_CLEAR_ALL)`);
    /// 3. `setgroups(creds.groups)`;
    /// 4. `setresgid(gid, gid, gid)`;
    /// 5. `setresuid(uid, uid, uid)`;
    /// 6. `capset` with the effective, permitted and inheritable sets empty;
    /// 7. `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    ///
    /// Then the rest of the set-up (process group, stdio, [`JobCommand::current_dir`],
    /// signals) and `exec`, all as the new user: the working directory and the program
    /// must be reachable by it. The job ends up with no capability in any set, `uid` 0
    /// included: its bounding set is empty, so not even an `exec` as root gains one, and
    /// with `no_new_privs` neither does a setuid or file-capability program. Nothing else
    /// changes: the environment (`HOME`, `USER`, ...; see [`JobCommand::env_replace`]),
    /// stdio and the resource limits are the caller's.
    ///
    /// The switch needs privileges of the spawner's (`CAP_SETPCAP` for the bounding set,
    /// `CAP_SETGID` for the groups and gid, `CAP_SETUID` for the uid): without one the
    /// spawn fails with [`crate::Error::Spawn`] naming the step, and nothing is left
    /// behind.
    ///
    /// Only the raw spawn of [`Job::spawn_command`] can do this: in the cgroup mechanism, or
    /// the pgroup one with [`crate::Supervisor::InProcess`]; a pgroup job under a
    /// supervisor process is refused ([`crate::Error::InvalidOptions`]). With
    /// [`Options::pid_namespace`] it needs `CAP_SYS_ADMIN` (without it the job would get a
    /// user namespace of its own, where these ids mean something else): refused otherwise,
    /// before anything starts. On x86_64 such a spawn copies the
    /// caller's page tables (a `fork`) instead of sharing its memory until `exec`: a child
    /// sharing it would change the dumpable flag of the caller's memory when it changes
    /// its ids.
    pub fn credentials(mut self, creds: Credentials) -> Self {
        self.credentials = Some(creds);
        self
    }

    /// The main process's stdin (default: [`JobStdio::Inherit`]).
    pub fn stdin(mut self, how: JobStdio) -> Self {
        self.stdio[0] = how;
        self
    }

    /// The main process's stdout (default: [`JobStdio::Inherit`]).
    pub fn stdout(mut self, how: JobStdio) -> Self {
        self.stdio[1] = how;
        self
    }

    /// The main process's stderr (default: [`JobStdio::Inherit`]).
    pub fn stderr(mut self, how: JobStdio) -> Self {
        self.stdio[2] = how;
        self
    }

    /// Starts the main process with these resource limits in place of the ones it would
    /// inherit; the others stay inherited. For a program that raised its own limits to do
    /// its work (a setuid helper whose caller set `ulimit -f 0`, say) and gives COMMAND the
    /// caller's. Set in the child before [`JobCommand::credentials`] takes effect, so a
    /// limit above the spawner's hard limit needs `CAP_SYS_RESOURCE`; a limit that cannot
    /// be set fails the spawn ([`crate::Error::Spawn`], naming the limit).
    pub fn resource_limits(mut self, limits: impl IntoIterator<Item = ResourceLimit>) -> Self {
        self.resource_limits.extend(limits);
        self
    }

    /// The same command as a `std::process::Command` (the signal mask aside: std starts
    /// children with none blocked).
    fn to_std(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(env) = &self.env {
            cmd.env_clear();
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let std = |how: JobStdio| match how {
            JobStdio::Inherit => std::process::Stdio::inherit(),
            JobStdio::Null => std::process::Stdio::null(),
            JobStdio::Piped => std::process::Stdio::piped(),
        };
        cmd.stdin(std(self.stdio[0]))
            .stdout(std(self.stdio[1]))
            .stderr(std(self.stdio[2]));
        if !self.resource_limits.is_empty() {
            let raw = linux::spawn::raw_rlimits(&self.resource_limits);
            // SAFETY: `set_rlimits` makes raw system calls only, on values prepared before
            // the fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    linux::spawn::set_rlimits(&raw)
                        .map_err(|(_, errno)| std::io::Error::from_raw_os_error(errno))
                });
            }
        }
        cmd
    }

    fn display(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }
}

/// Where [`Job::run`] learns about signals sent to the supervising program (the CLI feeds
/// its signalfd here). The library itself never installs signal handlers.
pub trait SignalSource {
    /// A descriptor that becomes readable when a signal is pending.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Takes the pending signals. Must not block: with nothing pending it returns an
    /// empty list (a non-blocking signalfd does exactly that).
    fn take(&mut self) -> Vec<Signal>;
}

enum Backend {
    Cgroup(Leaf),
    /// In-process pgroup: this process is the subreaper ([`crate::Supervisor::InProcess`]).
    Pgroup {
        supervisor: Pid,
        /// Keeps the process a subreaper while the job lasts.
        _subreaper: pgroup::Subreaper,
    },
    /// pgroup under a `corral __supervise` process of its own.
    Supervised(Supervised),
}

/// A running job: a main process and everything it starts. Obtain one with [`Job::spawn`]
/// (or [`Job::spawn_command`]); wait for it with [`Job::wait`], [`Job::wait_timeout`] or
/// [`Job::try_wait`]; end it early with [`Job::stop`] or [`Job::kill`]. Each of these
/// returns the [`Report`] once the job is over.
///
/// A `Job` is `Send` and `Sync`: jobs can be started, waited for and stopped from any
/// thread, and many at once; they share nothing but a counter.
///
/// # Caveats
/// - Dropping a `Job` that has not ended kills every process in it with SIGKILL, reaps the
///   main process and removes the cgroup, blocking until that is done (normally
///   milliseconds). To leave a job running, call [`Job::detach`].
/// - The pgroup mechanism (no writable cgroup) runs each job under a small supervisor
///   process (the `corral` binary, see [`crate::Supervisor`]), which is the job's child
///   subreaper. It is weaker than a cgroup: see `docs/design.md`.
/// - [`crate::Supervisor::InProcess`] makes the calling process itself a child subreaper
///   and treats every child of the process as part of the job: only for a program that
///   has no other children (the `corral` CLI).
/// - [`Options::pid_namespace`] makes the main process PID 1 of a new PID namespace (with
///   a user namespace mapping its own uid and gid where the caller lacks `CAP_SYS_ADMIN`).
///   Only [`Job::spawn_command`] offers it (in cgroup mode or with
///   [`crate::Supervisor::InProcess`]; [`Job::spawn`] returns an error): the child must be
///   made with `clone3`, which std's `Command` cannot be asked for. The main process gets
///   SIGKILL as its parent-death signal, and the kernel sends that when the *thread* that
///   spawned it exits, not the process; so the spawn is refused on any thread but the main
///   one, and a job cannot outlive the main thread (not even after [`Job::detach`]). When
///   the main process exits, the kernel kills every other process of the namespace at once,
///   without a grace, so [`crate::Leftovers::Wait`] is refused and `leftovers` stays empty.
///   As PID 1, the main process receives from outside only the signals it has a handler
///   for (SIGKILL and SIGSTOP aside): the polite signal of a stop, or a terminal's Ctrl+C,
///   may not reach it, and the stop then ends it with SIGKILL after the grace. `/proc` in
///   the job is still the host's (there is no new mount namespace): a program that reads
///   `/proc/<getpid()>` there reads another process.
pub struct Job {
    /// The main process's stdin, if the `Command` asked for a pipe.
    pub stdin: Option<ChildStdin>,
    /// The main process's stdout, if the `Command` asked for a pipe.
    pub stdout: Option<ChildStdout>,
    /// The main process's stderr, if the `Command` asked for a pipe.
    pub stderr: Option<ChildStderr>,
    id: String,
    command: Vec<String>,
    backend: Option<Backend>,
    main_pid: Pid,
    /// The main process's pidfd; `None` under a supervisor (the supervisor is its parent).
    main_fd: Option<OwnedFd>,
    main_exit: Option<ExitKind>,
    main_pgid: i32,
    main_sid: i32,
    own_pgid: i32,
    deadline: Option<Instant>,
    opts: Options,
    mechanism: Mechanism,
    mechanism_reason: String,
    degraded: bool,
    spawn: crate::report::Spawn,
    /// Who the main process runs as ([`JobCommand::credentials`]).
    credentials: Option<Credentials>,
    parent_source: Option<crate::report::CgroupParentSource>,
    /// The limits applied to the job's cgroup.
    limits: Option<crate::report::LimitsReport>,
    /// corral sent SIGKILL to the job (the ladder's kill, or [`Job::signal`]) while the main
    /// process was alive: a SIGKILL death is then not the OOM killer's.
    sigkill_sent: AtomicBool,
    started: Instant,
    timed_out: bool,
    signals: Vec<crate::report::SignalReceived>,
    leftovers: Vec<ProcessInfo>,
    stop: Option<StopReport>,
    survivors: Vec<ProcessInfo>,
    /// Orphans re-parented to the subreaper and reaped (pgroup).
    reaped: usize,
    /// Supervised: the supervisor said it is done (job empty, orphans counted).
    supervisor_done: bool,
    /// pgroup: the processes the kill stage sent SIGKILL to, so that the corrals of nested
    /// jobs among them can have their records removed at the end.
    killed_pids: Vec<u32>,
    /// Supervised: the main process was the supervisor's last child when it exited.
    supervisor_last_child: bool,
    /// Supervised: the supervisor has exited and been reaped.
    supervisor_exit: Option<ExitKind>,
    phase: Phase,
    report: Option<Report>,
    /// cgroup: the leaf's registration with the watchdog (dropped, so forgotten, once the
    /// job is over or detached).
    watch: Option<crate::linux::watchdog::Watch>,
    /// What happens to the job if this process dies (the report's `on_supervisor_death`).
    on_supervisor_death: crate::report::OnSupervisorDeath,
    /// The job's record and control socket in the job registry, while it runs.
    registration: Option<crate::registry::Registration>,
    /// Why the job is not in the registry (registration asked for and failed).
    not_registered: Option<String>,
    /// An outside stop request was taken: its polite signal (the CLI's exit status).
    external: Option<Signal>,
}

/// What [`Job::wait_with_output`] returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// The job's report.
    pub report: Report,
    /// Everything read from the piped stdout (empty if stdout was not piped).
    pub stdout: Vec<u8>,
    /// Everything read from the piped stderr (empty if stderr was not piped).
    pub stderr: Vec<u8>,
}

/// A job left running by [`Job::detach`].
#[derive(Debug, Clone)]
pub struct Detached {
    /// The job's id.
    pub id: String,
    /// The main process's PID.
    pub pid: u32,
    /// The job's cgroup (cgroup mechanism): it stays, and whoever takes the job over
    /// removes it once empty.
    pub cgroup: Option<PathBuf>,
}

impl Job {
    /// The job's id (the name of its cgroup leaf in cgroup mode).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The job's name ([`Options::name`]).
    pub fn name(&self) -> Option<&str> {
        self.opts.name.as_deref()
    }

    /// Why the job is not in the job registry, when [`Options::register`] asked for it and
    /// the record could not be written (the job runs all the same).
    pub fn not_registered(&self) -> Option<&str> {
        self.not_registered.as_deref()
    }

    /// The mechanism actually in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The main process's PID (never the supervisor's).
    pub fn pid(&self) -> u32 {
        self.main_pid.get() as u32
    }

    /// The job's cgroup, in cgroup mode.
    pub fn cgroup(&self) -> Option<&Path> {
        match &self.backend {
            Some(Backend::Cgroup(leaf)) => Some(&leaf.path),
            _ => None,
        }
    }

    /// The PIDs of the job's live processes right now (empty once the job is over).
    pub fn members(&self) -> Result<Vec<u32>> {
        Ok(match self.backend.as_ref() {
            None => Vec::new(),
            Some(Backend::Cgroup(leaf)) => leaf
                .members()?
                .into_iter()
                .map(|p| p.get() as u32)
                .collect(),
            Some(Backend::Pgroup { supervisor, .. }) => pgroup::members(*supervisor)
                .into_iter()
                .map(|s| s.pid.get() as u32)
                .collect(),
            Some(Backend::Supervised(sup)) => pgroup::members(sup.supervisor)
                .into_iter()
                .map(|s| s.pid.get() as u32)
                .collect(),
        })
    }

    /// Sends `sig` to every process of the job now (through pidfds; a PID reused by a
    /// process outside the job is never signalled). Returns how many it reached.
    pub fn signal(&self, sig: Signal) -> Result<usize> {
        if sig == Signal::KILL && self.main_exit.is_none() {
            self.sigkill_sent.store(true, Ordering::Relaxed);
        }
        Ok(match self.backend.as_ref() {
            None => 0,
            Some(Backend::Cgroup(leaf)) => {
                let mut n = 0;
                leaf.for_each_member(&mut |_, fd| {
                    if pidfd::send_signal(fd, sig).is_ok() {
                        n += 1;
                    }
                })?;
                n
            }
            Some(Backend::Pgroup { supervisor, .. }) => signal_walk(*supervisor, sig),
            Some(Backend::Supervised(sup)) => signal_walk(sup.supervisor, sig),
        })
    }

    /// The report, once the job is over.
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Returns the report if the job is over, `None` if not; never blocks. Each call moves
    /// the job on as far as it can go without waiting: it notices the main process's exit,
    /// applies the timeout and the leftovers policy, and runs the stop ladder as far as its
    /// deadlines have passed (so a job stopping its leftovers needs calls until the grace
    /// is over).
    pub fn try_wait(&mut self) -> Result<Option<Report>> {
        Ok(match self.advance(Vec::new())? {
            Progress::Done => self.report.clone(),
            Progress::Pending(_) => None,
        })
    }

    /// Waits until the job is over (the main process exited and the leftovers policy has
    /// been applied, or the timeout stopped it), then cleans up and reports.
    pub fn wait(&mut self) -> Result<Report> {
        self.drive(None, None)?;
        Ok(self.finished_report())
    }

    /// Like [`Job::wait`], for at most `timeout`; `None` if the job is not over by then (it
    /// goes on, and a later call picks up where this one stopped).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        Ok(if self.drive(Some(Instant::now() + timeout), None)? {
            Some(self.finished_report())
        } else {
            None
        })
    }

    /// Stops the job now with the full sequence (polite signal, SIGCONT, grace, SIGKILL) and
    /// waits until it is over.
    pub fn stop(&mut self) -> Result<Report> {
        self.request_stop(self.opts.signal, false)?;
        self.wait()
    }

    /// Kills every process of the job at once (SIGKILL) and waits until it is over.
    pub fn kill(&mut self) -> Result<Report> {
        self.request_stop(Signal::KILL, true)?;
        self.wait()
    }

    /// Like [`Job::wait`], also watching `signals`: a signal received starts the stop
    /// sequence with that signal as the polite one; a second SIGINT or SIGTERM, 100 ms or
    /// more after the first, cuts the grace short (one that comes sooner is the same stop
    /// delivered twice, as service managers do).
    pub fn run(&mut self, signals: Option<&mut dyn SignalSource>) -> Result<Report> {
        self.drive(None, signals)?;
        Ok(self.finished_report())
    }

    /// Waits like [`Job::wait`] while collecting the piped stdout and stderr (closing stdin
    /// first). Returns once the job is over, with what was read by then: a process outside
    /// the job that still holds the pipe (one it was passed to, or a detached one) does not
    /// make it hang.
    pub fn wait_with_output(mut self) -> Result<Output> {
        drop(self.stdin.take());
        let mut pipes = [
            self.stdout.take().map(|p| Pipe::new(p.into())),
            self.stderr.take().map(|p| Pipe::new(p.into())),
        ];
        for p in pipes.iter().flatten() {
            p.set_nonblocking()?;
        }
        loop {
            let progress = self.advance(Vec::new())?;
            let Progress::Pending(wants) = progress else {
                for p in pipes.iter_mut().flatten() {
                    p.drain();
                }
                break;
            };
            // In-process pgroup gives no descriptor for a child's exit: look again soon.
            let deadline = match wants.children_of {
                Some(_) => earliest(
                    wants.deadline,
                    Some(Instant::now() + Duration::from_millis(10)),
                ),
                None => wants.deadline,
            };
            let extra: Vec<BorrowedFd<'_>> = pipes
                .iter()
                .flatten()
                .filter(|p| !p.eof)
                .map(|p| p.fd.as_fd())
                .collect();
            poll_wants(&wants, &extra, deadline)?;
            drop(extra);
            for p in pipes.iter_mut().flatten() {
                p.drain();
            }
        }
        let [out, err] = pipes;
        Ok(Output {
            report: self.finished_report(),
            stdout: out.map(|p| p.buf).unwrap_or_default(),
            stderr: err.map(|p| p.buf).unwrap_or_default(),
        })
    }

    /// Leaves the job running and gives up control of it: nothing is stopped, the cgroup is
    /// not removed, and the main process is not reaped. The job leaves the job registry (its
    /// record and control socket are removed): it is no longer corral's to stop or sweep.
    ///
    /// # Caveats
    /// The main process is a child of the calling process: when it exits it stays a zombie
    /// until the caller reaps it (by PID) or exits, as with a dropped
    /// `std::process::Child`. Under a supervisor, the supervisor is told to let the job be;
    /// it reaps the job's processes and exits once the job is empty, and it is then the
    /// zombie child of the caller in the same way.
    pub fn detach(mut self) -> Detached {
        drop(self.registration.take());
        let cgroup = match self.backend.take() {
            Some(Backend::Cgroup(leaf)) => Some(leaf.forget()),
            Some(Backend::Supervised(sup)) => {
                let _ = sup.detach();
                None
            }
            Some(Backend::Pgroup { .. }) | None => None,
        };
        // A detached job is no longer ours to stop, not even when we die.
        drop(self.watch.take());
        self.phase = Phase::Over;
        Detached {
            id: self.id.clone(),
            pid: self.pid(),
            cgroup,
        }
    }

    /// Drives the state machine, blocking, until the job is over (`true`) or `until` passes
    /// (`false`).
    pub(crate) fn drive(
        &mut self,
        until: Option<Instant>,
        mut signals: Option<&mut dyn SignalSource>,
    ) -> Result<bool> {
        let mut received = Vec::new();
        loop {
            let wants = match self.advance(std::mem::take(&mut received))? {
                Progress::Done => return Ok(true),
                Progress::Pending(wants) => wants,
            };
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(false);
            }
            let deadline = earliest(wants.deadline, until);
            let sig_fd = signals.as_ref().map(|s| s.fd());
            match wants.children_of {
                Some(root) => {
                    // The signalfd, and the job's own descriptors (its control socket).
                    let mut extra: Vec<BorrowedFd<'_>> = sig_fd.into_iter().collect();
                    for &(raw, _) in &wants.fds {
                        // SAFETY: `wants` names descriptors the job owns and keeps open
                        // while it is pending; the borrow ends with this call.
                        extra.push(unsafe { BorrowedFd::borrow_raw(raw) });
                    }
                    pgroup::wait_any_child_exit(root, deadline, &extra)?;
                }
                None => {
                    poll_wants(&wants, sig_fd.as_slice(), deadline)?;
                }
            }
            if let Some(s) = signals.as_mut() {
                received = s.take();
            }
        }
    }

    fn finished_report(&self) -> Report {
        self.report.clone().expect("a finished job has a report")
    }

    /// The polite signal of the stop sequence ([`Options::signal`]), for the tokio driver.
    #[cfg(feature = "tokio")]
    pub(crate) fn stop_signal(&self) -> Signal {
        self.opts.signal
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.backend.is_some() {
            // Not ended through the API: SIGKILL everything, then clean up. If that fails
            // part way, the cgroup leaf's own Drop kills and removes, and a supervisor kills
            // its job when its control socket closes.
            if self.request_stop(Signal::KILL, true).is_ok() {
                let _ = self.drive(None, None);
            }
            if self.main_exit.is_none() {
                if let Some(fd) = &self.main_fd {
                    let _ = pidfd::reap(fd.as_fd(), true);
                }
            }
        }
    }
}

/// Polls the descriptors `wants` names plus `extra` (readable) until one is ready or
/// `deadline` passes.
fn poll_wants(wants: &Wants, extra: &[BorrowedFd<'_>], deadline: Option<Instant>) -> Result<()> {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(wants.fds.len() + extra.len());
    for &(raw, flags) in &wants.fds {
        // SAFETY: `wants` names descriptors the job owns and keeps open while it is pending;
        // the borrow ends with this call.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        fds.push(PollFd::from_borrowed_fd(fd, flags));
    }
    for fd in extra {
        fds.push(PollFd::from_borrowed_fd(*fd, PollFlags::IN));
    }
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    linux::poll(&mut fds, timeout)?;
    Ok(())
}

pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Sends `sig` to every descendant of `root` (verified through pidfds).
fn signal_walk(root: Pid, sig: Signal) -> usize {
    pgroup::members(root)
        .iter()
        .filter_map(procs::open_verified)
        .filter(|fd| pidfd::send_signal(fd.as_fd(), sig).is_ok())
        .count()
}

/// One piped output stream being collected (both drivers).
pub(crate) struct Pipe {
    pub(crate) fd: OwnedFd,
    pub(crate) buf: Vec<u8>,
    pub(crate) eof: bool,
}

impl Pipe {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Pipe {
            fd,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub(crate) fn set_nonblocking(&self) -> Result<()> {
        rustix::io::ioctl_fionbio(&self.fd, true)
            .map_err(|e| crate::Error::sys("ioctl(FIONBIO) on an output pipe", e))
    }

    /// Reads whatever is there now (the descriptor is non-blocking).
    pub(crate) fn drain(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        while !self.eof {
            match rustix::io::read(&self.fd, &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::INTR) => {}
                // EAGAIN: nothing more for now. Anything else: the pipe is unusable.
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Handles move between threads and can be shared (checked at compile time).
    #[test]
    fn handles_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<super::Job>();
        is::<crate::Report>();
        is::<crate::Error>();
        is::<super::JobCommand>();
        is::<super::Output>();
        is::<super::Detached>();
    }
}
