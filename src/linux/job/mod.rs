//! The Linux job: spawn ([`spawn`]) -> a state machine ([`machine`]) driven by a blocking
//! loop here or by the tokio driver -> cleanup -> report. The mechanism the job runs under
//! is one value ([`backend`]), chosen once at spawn, whose methods do the mechanism's part
//! of each step.

mod backend;
mod machine;
mod spawn;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::Result;
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::{self, pgroup};
use crate::options::{Options, Signal, SignalSet};
use crate::report::{ProcessInfo, Report, StopReport};
use crate::Credentials;
use crate::Mechanism;
use crate::ResourceLimit;

use backend::Backend;
use machine::Phase;
pub(crate) use machine::{Progress, Wants};
pub(crate) use spawn::Stdio;

/// The program, arguments, environment, directory and stdio of a job's main process, for
/// [`crate::Job::spawn_command`]: the lean path the `corral` CLI takes (the child is born
/// in its cgroup with `clone3`, vfork-style: nothing of the caller's memory is copied,
/// where [`crate::Job::spawn`] with a `std::process::Command` must fork).
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
/// [`crate::Job::stdin`], [`crate::Job::stdout`] or [`crate::Job::stderr`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JobStdio {
    /// The caller's (the default).
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A new pipe, its other end in the [`crate::Job`].
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
    /// Only the raw spawn of [`crate::Job::spawn_command`] can do this: in the cgroup mechanism, or
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

/// Where [`crate::Job::run`] learns about signals sent to the supervising program (the CLI
/// feeds its signalfd here). The library itself never installs signal handlers.
pub trait SignalSource {
    /// A descriptor that becomes readable when a signal is pending.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Takes the pending signals. Must not block: with nothing pending it returns an
    /// empty list (a non-blocking signalfd does exactly that).
    fn take(&mut self) -> Vec<Signal>;
}

/// The Linux job behind [`crate::Job`] (documented there): its state, driven by
/// [`Job::advance`] (`machine.rs`), over the mechanism it runs under ([`Backend`]).
pub(crate) struct Job {
    id: String,
    command: Vec<String>,
    /// The mechanism, with what it holds of the job ([`Backend::Ended`] once the job is over
    /// or detached).
    backend: Backend,
    main_pid: Pid,
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
    /// pgroup: the processes the kill stage sent SIGKILL to, so that the corrals of nested
    /// jobs among them can have their records removed at the end.
    killed_pids: Vec<u32>,
    phase: Phase,
    report: Option<Report>,
    /// What happens to the job if this process dies (the report's `on_supervisor_death`).
    on_supervisor_death: crate::report::OnSupervisorDeath,
    /// The job's record and control socket in the job registry, while it runs.
    registration: Option<crate::registry::Registration>,
    /// Why the job is not in the registry (registration asked for and failed).
    not_registered: Option<String>,
    /// An outside stop request was taken: its polite signal (the CLI's exit status).
    external: Option<Signal>,
}

/// What [`crate::Job::wait_with_output`] returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// The job's report.
    pub report: Report,
    /// Everything read from the piped stdout (empty if stdout was not piped).
    pub stdout: Vec<u8>,
    /// Everything read from the piped stderr (empty if stderr was not piped).
    pub stderr: Vec<u8>,
}

/// A job left running by [`crate::Job::detach`].
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
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.opts.name.as_deref()
    }

    pub(crate) fn not_registered(&self) -> Option<&str> {
        self.not_registered.as_deref()
    }

    pub(crate) fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    pub(crate) fn pid(&self) -> u32 {
        self.main_pid.get() as u32
    }

    pub(crate) fn cgroup(&self) -> Option<&Path> {
        self.backend.cgroup()
    }

    pub(crate) fn members(&self) -> Result<Vec<u32>> {
        Ok(self
            .backend
            .members()?
            .into_iter()
            .map(|p| p.get() as u32)
            .collect())
    }

    pub(crate) fn signal(&self, sig: Signal) -> Result<usize> {
        if sig == Signal::KILL && self.main_exit.is_none() {
            self.sigkill_sent.store(true, Ordering::Relaxed);
        }
        self.backend.signal(sig)
    }

    pub(crate) fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    pub(crate) fn try_wait(&mut self) -> Result<Option<Report>> {
        Ok(match self.advance(Vec::new())? {
            Progress::Done => self.report.clone(),
            Progress::Pending(_) => None,
        })
    }

    pub(crate) fn wait(&mut self) -> Result<Report> {
        self.drive(None, None)?;
        Ok(self.finished_report())
    }

    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        Ok(if self.drive(Some(Instant::now() + timeout), None)? {
            Some(self.finished_report())
        } else {
            None
        })
    }

    pub(crate) fn stop(&mut self) -> Result<Report> {
        self.request_stop(self.opts.signal, false)?;
        self.wait()
    }

    pub(crate) fn kill(&mut self) -> Result<Report> {
        self.request_stop(Signal::KILL, true)?;
        self.wait()
    }

    pub(crate) fn run(&mut self, signals: Option<&mut dyn SignalSource>) -> Result<Report> {
        self.drive(None, signals)?;
        Ok(self.finished_report())
    }

    /// [`crate::Job::wait_with_output`], with the job's piped stdout and stderr (its stdin
    /// closed already).
    pub(crate) fn wait_with_output(
        mut self,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
    ) -> Result<Output> {
        let mut pipes = [
            stdout.map(|p| Pipe::new(p.into())),
            stderr.map(|p| Pipe::new(p.into())),
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

    pub(crate) fn detach(mut self) -> Detached {
        drop(self.registration.take());
        let cgroup = self.backend.detach();
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
        if !self.backend.is_ended() {
            // Not ended through the API: SIGKILL everything, then clean up. If that fails
            // part way, the cgroup leaf's own Drop kills and removes, and a supervisor kills
            // its job when its control socket closes.
            if self.request_stop(Signal::KILL, true).is_ok() {
                let _ = self.drive(None, None);
            }
            if self.main_exit.is_none() {
                if let Some(fd) = self.backend.main_fd() {
                    let _ = pidfd::reap(fd, true);
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
