//! A running job: spawn -> wait (child exit, signal, timeout) -> stop ladder -> cleanup ->
//! report.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, Result};
use crate::linux::cgroup::{KillMethod, Leaf, WaitEmpty};
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::spawn::{self, Placement, SpawnSpec};
use crate::linux::{self, pgroup, procs};
use crate::options::{Leftovers, Options, Signal, SignalSet};
use crate::report::{
    Cleanup, ExitInfo, ProcessInfo, Report, StopOutcome, StopReason, StopReport, StopStep,
};
use crate::Mechanism;

/// The program, arguments, environment and directory of a job's main process.
#[derive(Debug, Clone, Default)]
pub struct JobCommand {
    program: OsString,
    args: Vec<OsString>,
    env: Option<Vec<(OsString, OsString)>>,
    cwd: Option<PathBuf>,
    signal_mask: Option<SignalSet>,
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

    /// Replaces the whole environment (default: corral's own).
    pub fn env_replace(mut self, vars: Vec<(OsString, OsString)>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Runs in `dir` (default: corral's working directory).
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

    fn display(&self) -> Vec<String> {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }
}

/// Where a job's run loop learns about signals sent to the supervising program (the CLI
/// feeds its signalfd here). The library itself never installs signal handlers.
pub trait SignalSource {
    /// A descriptor that becomes readable when a signal is pending.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Takes the pending signals. Must not block: with nothing pending it returns an
    /// empty list (a non-blocking signalfd does exactly that).
    fn take(&mut self) -> Vec<Signal>;
}

enum Backend {
    Cgroup(Leaf),
    Pgroup {
        supervisor: Pid,
        /// Keeps the process a subreaper while the job lasts.
        _subreaper: pgroup::Subreaper,
    },
}

/// A running job. Obtain one with [`Job::spawn`]; end it with [`Job::wait`], [`Job::run`],
/// [`Job::stop`] or [`Job::kill`], each of which returns the [`Report`].
///
/// # Caveats
/// Dropping a `Job` that has not ended kills every process in it with SIGKILL and cleans up,
/// blocking until that is done (normally milliseconds).
///
/// The pgroup mechanism makes the calling process a child subreaper (process-wide) and
/// treats every descendant of the calling process as part of the job: use it only from a
/// process that has no other children (such as the `corral` CLI).
pub struct Job {
    id: String,
    command: Vec<String>,
    backend: Option<Backend>,
    main_pid: Pid,
    main_fd: OwnedFd,
    main_exit: Option<ExitKind>,
    main_pgid: i32,
    main_sid: i32,
    own_pgid: i32,
    opts: Options,
    mechanism: Mechanism,
    mechanism_reason: String,
    degraded: bool,
    spawn_method: &'static str,
    parent_source: Option<&'static str>,
    started: Instant,
    deadline: Option<Instant>,
    timed_out: bool,
    signals: Vec<String>,
    leftovers: Vec<ProcessInfo>,
    stop: Option<StopReport>,
    survivors: Vec<ProcessInfo>,
    /// Orphans re-parented to us and reaped (pgroup).
    reaped: usize,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Why the waiting loop woke up.
enum Wake {
    MainExited,
    Empty,
    Signal(Vec<Signal>),
    Deadline,
    Nothing,
}

impl Job {
    /// Starts `cmd` as a job under `opts`.
    pub fn spawn(cmd: &JobCommand, opts: &Options) -> Result<Job> {
        let choice = linux::choose(opts)?;
        let (own_pgid, own_sid) = linux::own_group_and_session();
        let started = Instant::now();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut id = format!("corral-{}-{}", std::process::id(), seq);
        let env = cmd.env.as_deref();
        let mut spec = SpawnSpec {
            program: &cmd.program,
            args: &cmd.args,
            env,
            cwd: cmd.cwd.as_deref(),
            stdio: [None, None, None],
            sigmask: cmd.signal_mask,
            placement: Placement::NewProcessGroup,
        };
        let (backend, spawned, mechanism, reason, degraded, parent_source) = match choice {
            linux::Choice::Cgroup { parent, reason } => {
                let source = match parent.source {
                    linux::cgroup::ParentSource::Option => "option",
                    linux::cgroup::ParentSource::Env => "env",
                    linux::cgroup::ParentSource::Default => "default",
                };
                let leaf = Leaf::create(parent, &id)?;
                id = leaf.name().to_string();
                spec.placement = Placement::Cgroup {
                    dir: leaf.dir_fd(),
                    procs: leaf.procs_fd(),
                    forbid_clone3: opts.debug.no_clone_into_cgroup,
                };
                // On failure `leaf` drops here and removes itself.
                let spawned = spawn::spawn(&spec)?;
                (
                    Backend::Cgroup(leaf),
                    spawned,
                    Mechanism::Cgroup,
                    reason,
                    false,
                    Some(source),
                )
            }
            linux::Choice::Pgroup { reason, degraded } => {
                let subreaper = pgroup::Subreaper::acquire()?;
                let spawned = spawn::spawn(&spec)?;
                (
                    Backend::Pgroup {
                        supervisor: Pid::current(),
                        _subreaper: subreaper,
                    },
                    spawned,
                    Mechanism::Pgroup,
                    reason,
                    degraded,
                    None,
                )
            }
        };
        let main_pgid = match backend {
            Backend::Cgroup(_) => own_pgid,
            Backend::Pgroup { .. } => spawned.pid.get(),
        };
        Ok(Job {
            id,
            command: cmd.display(),
            backend: Some(backend),
            main_pid: spawned.pid,
            main_fd: spawned.pidfd,
            main_exit: None,
            main_pgid,
            main_sid: own_sid,
            own_pgid,
            deadline: opts.timeout.map(|t| started + t),
            opts: opts.clone(),
            mechanism,
            mechanism_reason: reason,
            degraded,
            spawn_method: spawned.method.name(),
            parent_source,
            started,
            timed_out: false,
            signals: Vec::new(),
            leftovers: Vec::new(),
            stop: None,
            survivors: Vec::new(),
            reaped: 0,
        })
    }

    /// The job's id (the name of its cgroup leaf in cgroup mode).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The mechanism actually in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The main process's PID.
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

    /// The PIDs of the job's live processes right now.
    pub fn members(&self) -> Result<Vec<u32>> {
        Ok(match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => leaf
                .members()?
                .into_iter()
                .map(|p| p.get() as u32)
                .collect(),
            Backend::Pgroup { supervisor, .. } => pgroup::members(*supervisor)
                .into_iter()
                .map(|s| s.pid.get() as u32)
                .collect(),
        })
    }

    /// Sends `sig` to every process of the job now (through pidfds; a PID reused by a
    /// process outside the job is never signalled). Returns how many it reached.
    pub fn signal(&self, sig: Signal) -> Result<usize> {
        Ok(match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => {
                let mut n = 0;
                leaf.for_each_member(&mut |_, fd| {
                    if pidfd::send_signal(fd, sig).is_ok() {
                        n += 1;
                    }
                })?;
                n
            }
            Backend::Pgroup { supervisor, .. } => pgroup::members(*supervisor)
                .iter()
                .filter_map(procs::open_verified)
                .filter(|fd| pidfd::send_signal(fd.as_fd(), sig).is_ok())
                .count(),
        })
    }

    /// Waits until the job is over (applying the timeout and leftovers policy), then cleans
    /// up and reports.
    pub fn wait(self) -> Result<Report> {
        self.run(None)
    }

    /// Stops the job now with the full sequence (polite signal, SIGCONT, grace, SIGKILL).
    pub fn stop(mut self) -> Result<Report> {
        let sig = self.opts.signal;
        self.stop_sequence(StopReason::Requested, sig, false, &mut None)?;
        self.finish()
    }

    /// Kills every process of the job at once (SIGKILL), then cleans up and reports.
    pub fn kill(mut self) -> Result<Report> {
        self.opts.grace = Duration::ZERO;
        self.stop()
    }

    /// Like [`Job::wait`], also watching `signals`: a signal received starts the stop
    /// sequence with that signal as the polite one; a second SIGINT or SIGTERM cuts the grace
    /// short.
    pub fn run(mut self, mut signals: Option<&mut dyn SignalSource>) -> Result<Report> {
        loop {
            let wake = self.wait_event(&mut signals)?;
            match wake {
                Wake::Nothing => continue,
                Wake::MainExited => {
                    if self.main_exit.is_none() {
                        self.main_exit = pidfd::reap(self.main_fd.as_fd(), false)
                            .map_err(|e| Error::sys("waitid(P_PIDFD)", e))?;
                        if self.main_exit.is_none() {
                            continue;
                        }
                    }
                    if self.job_empty()? {
                        break;
                    }
                    self.leftovers = self.snapshot();
                    if self.leftovers.is_empty() && self.job_empty()? {
                        break;
                    }
                    if self.opts.leftovers == Leftovers::Kill {
                        let sig = self.opts.signal;
                        self.stop_sequence(StopReason::Leftovers, sig, false, &mut signals)?;
                        break;
                    }
                }
                Wake::Empty => {
                    if self.main_exit.is_some() {
                        break;
                    }
                }
                Wake::Signal(sigs) => {
                    let Some(first) = sigs.first().copied() else {
                        continue;
                    };
                    self.signals.extend(sigs.iter().map(|s| s.to_string()));
                    // SIGINT/SIGQUIT are the terminal's signals: members still in our process
                    // group got them from the terminal (or whoever signalled the group).
                    let group_delivered = matches!(first, Signal::INT | Signal::QUIT);
                    let second = sigs
                        .iter()
                        .skip(1)
                        .any(|s| matches!(*s, Signal::INT | Signal::TERM));
                    if second {
                        self.opts.grace = Duration::ZERO;
                    }
                    self.stop_sequence(StopReason::Signal, first, group_delivered, &mut signals)?;
                    break;
                }
                Wake::Deadline => {
                    self.timed_out = true;
                    let sig = self.opts.signal;
                    self.stop_sequence(StopReason::Timeout, sig, false, &mut signals)?;
                    break;
                }
            }
        }
        self.finish()
    }

    /// Blocks until something happens: the main process exits, the job empties (after the
    /// main process exited), a signal arrives, or the deadline passes. No periodic wake-ups
    /// in cgroup mode.
    fn wait_event(&mut self, signals: &mut Option<&mut dyn SignalSource>) -> Result<Wake> {
        let now = Instant::now();
        if let Some(d) = self.deadline {
            if now >= d {
                return Ok(Wake::Deadline);
            }
        }
        let timeout = self.deadline.map(|d| d - now);
        let sig_fd = signals.as_ref().map(|s| s.fd());
        // While the main process runs, both mechanisms wait on its pidfd (and the signals);
        // afterwards (leftovers `wait`) each waits on its own emptiness event.
        let (wait_fd, flags) = match self.backend.as_ref().expect("backend") {
            _ if self.main_exit.is_none() => (self.main_fd.as_fd(), PollFlags::IN),
            Backend::Cgroup(leaf) => {
                if !leaf.populated()? {
                    return Ok(Wake::Empty);
                }
                (leaf.events_fd(), PollFlags::PRI)
            }
            Backend::Pgroup { supervisor, .. } => {
                let supervisor = *supervisor;
                let settled =
                    pgroup::settle(self.main_pid, self.main_fd.as_fd(), &mut self.main_exit)?;
                self.reaped += settled.reaped;
                if settled.empty {
                    return Ok(Wake::Empty);
                }
                pgroup::wait_any_child_exit(supervisor, self.deadline, sig_fd)?;
                return Ok(take_signals(signals).map_or(Wake::Nothing, Wake::Signal));
            }
        };
        let mut fds = vec![PollFd::from_borrowed_fd(wait_fd, flags)];
        if let Some(fd) = sig_fd {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
        }
        linux::poll(&mut fds, timeout)?;
        let first_ready = !fds[0].revents().is_empty();
        let sig_ready = fds.len() > 1 && !fds[1].revents().is_empty();
        drop(fds);
        if sig_ready {
            if let Some(sigs) = take_signals(signals) {
                return Ok(Wake::Signal(sigs));
            }
        }
        Ok(if first_ready && self.main_exit.is_none() {
            Wake::MainExited
        } else {
            Wake::Nothing
        })
    }

    fn job_empty(&mut self) -> Result<bool> {
        match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => Ok(!leaf.populated()?),
            Backend::Pgroup { .. } => {
                let settled =
                    pgroup::settle(self.main_pid, self.main_fd.as_fd(), &mut self.main_exit)?;
                self.reaped += settled.reaped;
                Ok(settled.empty)
            }
        }
    }

    /// The job's live processes with the facts the report wants.
    fn snapshot(&self) -> Vec<ProcessInfo> {
        let stats: Vec<procs::Stat> = match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => leaf
                .members()
                .unwrap_or_default()
                .into_iter()
                .filter_map(procs::stat)
                .collect(),
            Backend::Pgroup { supervisor, .. } => pgroup::members(*supervisor),
        };
        stats
            .into_iter()
            .filter(procs::Stat::alive)
            .map(|s| ProcessInfo {
                pid: s.pid.get() as u32,
                cmdline: procs::cmdline(s.pid),
                left_process_group: s.pgid != self.main_pgid,
                left_session: s.sid != self.main_sid,
            })
            .collect()
    }

    /// The stop ladder: [freeze (pgroup)], polite signal, SIGCONT, grace, SIGKILL, empty.
    ///
    /// `group_delivered`: the polite signal already reached members in our own process
    /// group (terminal Ctrl+C), so only members outside it get it from us.
    fn stop_sequence(
        &mut self,
        reason: StopReason,
        polite: Signal,
        group_delivered: bool,
        signals: &mut Option<&mut dyn SignalSource>,
    ) -> Result<()> {
        let t0 = Instant::now();
        let at = |t0: Instant| t0.elapsed().as_millis() as u64;
        let mut steps = Vec::new();
        let step = |name: &str,
                    sig: Option<Signal>,
                    n: Option<usize>,
                    detail: Option<String>,
                    t0: Instant| StopStep {
            step: name.to_string(),
            signal: sig.map(|s| s.to_string()),
            processes: n,
            detail,
            at_ms: at(t0),
        };
        let own_pgid = self.own_pgid;
        let skip_group = group_delivered && self.mechanism == Mechanism::Cgroup;
        let filter = move |pid: Pid| -> bool {
            if !skip_group {
                return true;
            }
            procs::stat(pid).map(|s| s.pgid != own_pgid).unwrap_or(true)
        };
        let grace = self.opts.grace;
        let mut outcome = StopOutcome::Killed;
        let main_pid = self.main_pid;
        let backend = self.backend.as_ref().expect("backend");
        let mut held = None;
        let mut reaped = 0;
        if let Backend::Pgroup { supervisor, .. } = backend {
            if !grace.is_zero() {
                let h = pgroup::freeze(*supervisor);
                steps.push(step("freeze", Some(Signal::STOP), Some(h.len()), None, t0));
                held = Some(h);
            }
        }
        let mut emptied = false;
        if !grace.is_zero() && polite != Signal::KILL {
            let (n_polite, n_cont) = match backend {
                Backend::Cgroup(leaf) => leaf.signal_then_continue(polite, &filter)?,
                Backend::Pgroup { .. } => {
                    let h = held.as_ref().expect("frozen set");
                    (
                        h.signal_all(polite, &filter).len(),
                        h.signal_all(Signal::CONT, &|_| true).len(),
                    )
                }
            };
            let detail = skip_group
                .then(|| "members in corral's process group got it from the terminal".to_string());
            steps.push(step("signal", Some(polite), Some(n_polite), detail, t0));
            steps.push(step("continue", Some(Signal::CONT), Some(n_cont), None, t0));
            // The grace runs from the polite signal (a freeze before it may take a while).
            let grace_end = Instant::now() + grace;
            let mut cut_short = false;
            loop {
                let sig_fd = signals.as_ref().map(|s| s.fd());
                let state = match backend {
                    Backend::Cgroup(leaf) => leaf.wait_empty(Some(grace_end), sig_fd)?,
                    Backend::Pgroup { supervisor, .. } => {
                        let settled =
                            pgroup::settle(main_pid, self.main_fd.as_fd(), &mut self.main_exit)?;
                        reaped += settled.reaped;
                        if settled.empty {
                            WaitEmpty::Empty
                        } else if Instant::now() >= grace_end {
                            WaitEmpty::TimedOut
                        } else {
                            let ready =
                                pgroup::wait_any_child_exit(*supervisor, Some(grace_end), sig_fd)?;
                            let sig_ready =
                                sig_fd.is_some_and(|fd| linux::readable(fd).unwrap_or(false));
                            if ready && sig_ready {
                                WaitEmpty::Interrupted
                            } else {
                                continue;
                            }
                        }
                    }
                };
                match state {
                    WaitEmpty::Empty => {
                        emptied = true;
                        break;
                    }
                    WaitEmpty::TimedOut => break,
                    WaitEmpty::Interrupted => {
                        let more = signals.as_mut().map(|s| s.take()).unwrap_or_default();
                        self.signals.extend(more.iter().map(|s| s.to_string()));
                        if more
                            .iter()
                            .any(|s| matches!(*s, Signal::INT | Signal::TERM))
                        {
                            cut_short = true;
                            break;
                        }
                    }
                }
            }
            let detail = if emptied {
                Some("all exited".to_string())
            } else if cut_short {
                Some("cut short by a second signal".to_string())
            } else {
                Some(format!("{} ms passed", grace.as_millis()))
            };
            steps.push(step("grace", None, None, detail, t0));
            if emptied {
                outcome = StopOutcome::Exited;
            }
        }
        if !emptied {
            match backend {
                Backend::Cgroup(leaf) => {
                    let present = leaf.members()?.len();
                    let kill_at = at(t0);
                    let method = leaf.kill_all(
                        self.opts.debug.no_cgroup_kill,
                        Instant::now() + Duration::from_secs(10),
                    )?;
                    let detail = match method {
                        KillMethod::CgroupKill => "cgroup.kill",
                        KillMethod::CgroupKillThenSignal => {
                            "cgroup.kill, then SIGKILL through pidfds to members it missed"
                        }
                        KillMethod::FreezeAndSignal => {
                            "freeze, SIGKILL each member, thaw (no cgroup.kill)"
                        }
                    };
                    let mut kill_step = step(
                        "kill",
                        Some(Signal::KILL),
                        Some(present),
                        Some(detail.into()),
                        t0,
                    );
                    kill_step.at_ms = kill_at;
                    steps.push(kill_step);
                    let state = leaf.wait_empty(Some(Instant::now()), None)?;
                    if state != WaitEmpty::Empty {
                        outcome = StopOutcome::Survivors;
                    }
                }
                Backend::Pgroup { supervisor, .. } => {
                    let already = held
                        .as_ref()
                        .map(|h| h.signal_all(Signal::KILL, &|_| true))
                        .unwrap_or_default();
                    let main_fd = self.main_fd.as_fd();
                    let main_exit = &mut self.main_exit;
                    let mut settle = || -> Result<bool> {
                        let settled = pgroup::settle(main_pid, main_fd, main_exit)?;
                        reaped += settled.reaped;
                        Ok(settled.empty)
                    };
                    let (killed, left) = pgroup::kill_all(
                        *supervisor,
                        Instant::now() + Duration::from_secs(10),
                        already,
                        &mut settle,
                    )?;
                    steps.push(step(
                        "kill",
                        Some(Signal::KILL),
                        Some(killed),
                        Some("SIGKILL to every descendant until none is found".into()),
                        t0,
                    ));
                    if !left.is_empty() {
                        outcome = StopOutcome::Survivors;
                    }
                }
            }
        }
        if outcome == StopOutcome::Survivors {
            self.survivors = self.snapshot();
        } else {
            steps.push(step("empty", None, None, None, t0));
        }
        drop(held);
        self.reaped += reaped;
        self.stop = Some(StopReport {
            reason,
            steps,
            outcome,
        });
        Ok(())
    }

    /// Reaps the main process, removes the cgroup (or reaps orphans), and builds the report.
    fn finish(mut self) -> Result<Report> {
        if self.main_exit.is_none() {
            // Everything is dead by now; this returns at once.
            self.main_exit = pidfd::reap(self.main_fd.as_fd(), true)
                .map_err(|e| Error::sys("waitid(P_PIDFD)", e))?;
        }
        let mut cleanup = Cleanup::default();
        let mut cgroup = None;
        match self.backend.take().expect("backend") {
            Backend::Cgroup(leaf) => {
                cgroup = Some(leaf.path.clone());
                match leaf.remove() {
                    Ok(()) => cleanup.cgroup_removed = Some(true),
                    Err(e) => {
                        cleanup.cgroup_removed = Some(false);
                        cleanup.error = Some(error_chain(&e));
                    }
                }
            }
            Backend::Pgroup { .. } => {
                match pgroup::settle(self.main_pid, self.main_fd.as_fd(), &mut self.main_exit) {
                    Ok(settled) => self.reaped += settled.reaped,
                    Err(e) => cleanup.error = Some(error_chain(&e)),
                }
                cleanup.reaped = Some(self.reaped);
            }
        }
        let exit = self.main_exit.map(|e| match e {
            ExitKind::Code(c) => ExitInfo {
                code: Some(c),
                signal: None,
            },
            ExitKind::Signal(s) => ExitInfo {
                code: None,
                signal: Some(s),
            },
        });
        let own_status = match self.main_exit {
            Some(ExitKind::Code(c)) => c,
            Some(ExitKind::Signal(s)) => 128 + s,
            None => 125,
        };
        let exit_status = if self.timed_out && !self.opts.preserve_status {
            124
        } else {
            own_status
        };
        Ok(Report {
            version: crate::report::REPORT_VERSION,
            id: self.id.clone(),
            command: std::mem::take(&mut self.command),
            pid: self.main_pid.get() as u32,
            mechanism: self.mechanism,
            mechanism_reason: std::mem::take(&mut self.mechanism_reason),
            degraded: self.degraded,
            spawn: self.spawn_method.to_string(),
            cgroup,
            cgroup_parent_source: self.parent_source.map(str::to_string),
            exit,
            exit_status,
            timed_out: self.timed_out,
            signals_received: std::mem::take(&mut self.signals),
            stop: self.stop.take(),
            leftovers: std::mem::take(&mut self.leftovers),
            survivors: std::mem::take(&mut self.survivors),
            cleanup,
            duration_ms: self.started.elapsed().as_millis() as u64,
        })
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.backend.is_some() {
            // Not ended through the API: SIGKILL everything, then clean up.
            self.opts.grace = Duration::ZERO;
            let _ = self.stop_sequence(StopReason::Requested, Signal::KILL, false, &mut None);
            if self.main_exit.is_none() {
                let _ = pidfd::reap(self.main_fd.as_fd(), true);
            }
            match self.backend.take() {
                Some(Backend::Cgroup(leaf)) => {
                    let _ = leaf.remove();
                }
                Some(Backend::Pgroup { .. }) => {
                    let mut exit = self.main_exit;
                    let _ = pgroup::settle(self.main_pid, self.main_fd.as_fd(), &mut exit);
                }
                None => {}
            }
        }
    }
}

/// The pending signals, if any (reading a signalfd that is not ready returns nothing).
fn take_signals(signals: &mut Option<&mut dyn SignalSource>) -> Option<Vec<Signal>> {
    let sigs = signals.as_mut()?.take();
    (!sigs.is_empty()).then_some(sigs)
}

/// `a: b: c` for an error and its sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
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
    }
}
