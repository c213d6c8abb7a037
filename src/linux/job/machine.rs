//! The job as a state machine: running -> (draining leftovers) -> stopping -> over.
//!
//! [`Job::advance`] does all the work that can be done now without blocking and says what
//! to wait for next ([`Wants`]: descriptors, a deadline). The blocking driver
//! (`Job::drive`) polls those; the tokio driver registers them with the reactor. So the stop
//! ladder exists once, and neither driver needs a thread per job.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;

use super::backend::Kept;
use super::Job;
use crate::control::Request;
use crate::error::{Error, Result};
use crate::exit_status::Ending;
use crate::ladder::{self, Kill, Ladder, Next, Pace, Sent};
use crate::linux::cgroup::KillMethod;
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::procs;
use crate::options::{Leftovers, Signal};
use crate::report::{
    Cleanup, ProcessInfo, Report, Requester, SignalReceived, StopOutcome, StopReason, StopReport,
};
use crate::Mechanism;

/// How often a job whose main process exited, with no leftover found, looks for leftovers
/// again while it waits to become empty.
const SETTLE: Duration = Duration::from_millis(250);
/// pgroup: how often the grace walks the tree again for members the freeze missed.
const GRACE_REWALK: Duration = Duration::from_millis(50);
/// How long in all a kill that is making progress is waited for ([`Pace::kill_wait_max`]):
/// on a slow machine (an emulated VM, thousands of processes) dying processes can take
/// longer than one [`KILL_WAIT`] to exit, and reporting them as survivors would be wrong.
const KILL_WAIT_MAX: Duration = Duration::from_secs(120);
/// cgroup: how soon after `cgroup.kill` the members it missed get SIGKILL through pidfds.
const CGROUP_RESIGNAL: Duration = Duration::from_millis(100);
/// pgroup: how often the kill stage walks `/proc` again (descendants that are not our
/// children give no event when they exit).
const PGROUP_REWALK: Duration = Duration::from_millis(20);

/// Where a job is.
pub(super) enum Phase {
    /// The main process runs.
    Running,
    /// The main process exited and no leftover was found, but the job is not empty yet
    /// (a supervisor still reaping the main process, a cgroup not yet unpopulated): wait
    /// for emptiness until `until`, then look for leftovers again.
    Settling { until: Instant },
    /// The main process exited; leftovers policy `wait`: the job lasts until it is empty.
    Draining,
    /// The stop ladder runs.
    Stopping(Box<Stopping>),
    /// Cleaned up; the report is ready.
    Over,
}

/// A stop in progress: the ladder (`crate::ladder`), and what the mechanism keeps for it.
pub(super) struct Stopping {
    ladder: Ladder,
    /// Reason `external`: who asked.
    requested_by: Option<Requester>,
    kept: Kept,
}

/// What a pending job waits for. The descriptors belong to the job and stay open (and keep
/// their numbers) for as long as it has not ended.
pub(crate) struct Wants {
    /// Descriptors and the events to poll them for (`IN` or `PRI`).
    pub(crate) fds: Vec<(RawFd, PollFlags)>,
    /// In-process pgroup: wake when a child of this process exits; no descriptor says that.
    pub(crate) children_of: Option<Pid>,
    /// Wake at this time at the latest.
    pub(crate) deadline: Option<Instant>,
}

/// The answer of [`Job::advance`].
pub(crate) enum Progress {
    /// The job is over: the report is in `Job::report`.
    Done,
    /// Nothing more can be done until one of these happens.
    Pending(Wants),
}

impl Job {
    /// Does everything that can be done now without blocking: notices the main process's
    /// exit, applies the leftovers policy and the timeout, runs the stop ladder as far as
    /// its deadlines allow, and cleans up at the end. `signals` are signals the supervising
    /// program received (the CLI's), in order. Serves outside stop requests on the job's
    /// control socket (the job registry), whose descriptor it adds to the [`Wants`].
    pub(crate) fn advance(&mut self, signals: Vec<Signal>) -> Result<Progress> {
        self.serve_requests()?;
        let (forward, signals): (Vec<Signal>, Vec<Signal>) = signals
            .into_iter()
            .partition(|s| self.opts.forward_signals.contains(*s));
        for sig in forward {
            self.forward(sig)?;
        }
        Ok(match self.advance_job(signals)? {
            Progress::Pending(mut wants) => {
                if let Some(reg) = &self.registration {
                    wants.fds.push((reg.listener().as_raw_fd(), PollFlags::IN));
                }
                Progress::Pending(wants)
            }
            Progress::Done => Progress::Done,
        })
    }

    /// Takes the stop requests waiting on the control socket: the first one starts the
    /// ladder (reason `external`); a `kill` during the grace cuts it short.
    fn serve_requests(&mut self) -> Result<()> {
        let Some(reg) = self.registration.as_mut() else {
            return Ok(());
        };
        let requests = reg.accept();
        for req in requests {
            let requester = Requester {
                pid: req.pid,
                uid: req.uid,
            };
            match (&self.phase, req.request) {
                (Phase::Over, _) => {}
                (Phase::Stopping(_), Request::Kill) => self.request_stop(Signal::KILL, true)?,
                (Phase::Stopping(_), Request::Stop { .. }) => {}
                (_, request) => {
                    let (polite, grace) = request.ladder();
                    self.external = Some(polite);
                    self.begin_stop(StopReason::External, polite, grace, false)?;
                    if let Phase::Stopping(s) = &mut self.phase {
                        s.requested_by = Some(requester);
                    }
                }
            }
            if let Some(reg) = self.registration.as_mut() {
                reg.accepted(req);
            }
        }
        Ok(())
    }

    fn advance_job(&mut self, mut signals: Vec<Signal>) -> Result<Progress> {
        loop {
            match self.phase {
                Phase::Over => return Ok(Progress::Done),
                Phase::Running | Phase::Settling { .. } | Phase::Draining => {
                    if let Some(&first) = signals.first() {
                        let sigs = std::mem::take(&mut signals);
                        self.signals
                            .extend(sigs.iter().map(|&s| SignalReceived::Stop(s)));
                        // SIGINT/SIGQUIT are the terminal's signals: members still in our
                        // process group got them from the terminal (or whoever signalled it).
                        let group_delivered = matches!(first, Signal::INT | Signal::QUIT);
                        // Signals read together arrived together: one request (see
                        // `SECOND_SIGNAL_AFTER`).
                        let grace = self.opts.grace;
                        self.begin_stop(StopReason::Signal, first, grace, group_delivered)?;
                        continue;
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        self.timed_out = true;
                        let (polite, grace) = (self.opts.signal, self.opts.grace);
                        self.begin_stop(StopReason::Timeout, polite, grace, false)?;
                        continue;
                    }
                    if matches!(self.phase, Phase::Draining) {
                        if self.is_empty()? {
                            self.finish()?;
                            continue;
                        }
                        return Ok(Progress::Pending(self.wants_empty(self.deadline)));
                    }
                    if let Phase::Settling { until } = self.phase {
                        if self.is_empty()? {
                            self.finish()?;
                            continue;
                        }
                        if Instant::now() < until {
                            let wake = super::earliest(Some(until), self.deadline);
                            return Ok(Progress::Pending(self.wants_empty(wake)));
                        }
                        // Look again; stop (or wait for) leftovers only once a look finds
                        // some. A slow supervisor or a loaded machine is no reason to run
                        // a stop with nothing to signal.
                        self.leftovers = self.snapshot();
                        if self.leftovers.is_empty() {
                            self.phase = Phase::Settling {
                                until: Instant::now() + SETTLE,
                            };
                        } else {
                            self.apply_leftovers_policy()?;
                        }
                        continue;
                    }
                    self.poll_main()?;
                    // A supervisor that exits before reporting the main process's exit (it
                    // was killed) ends the job too: there is no one left to wait for.
                    let supervisor_gone = self.main_exit.is_none()
                        && self.backend.is_supervised()
                        && self.is_empty()?;
                    if self.main_exit.is_none() && !supervisor_gone {
                        return Ok(Progress::Pending(self.wants_main()));
                    }
                    if self.is_empty()? {
                        self.finish()?;
                        continue;
                    }
                    // The supervisor said the main process was its last child: `done`
                    // is on its way, and a walk of /proc would find nothing.
                    let leftovers = if self.backend.main_was_last_child() {
                        Vec::new()
                    } else {
                        self.snapshot()
                    };
                    self.leftovers = leftovers;
                    if self.leftovers.is_empty() {
                        // Nothing is left running, but the job is not empty yet: the
                        // cgroup or the supervisor has not caught up with the main
                        // process's exit. Normally a matter of microseconds.
                        self.phase = Phase::Settling {
                            until: Instant::now() + SETTLE,
                        };
                        continue;
                    }
                    self.apply_leftovers_policy()?;
                }
                Phase::Stopping(_) => {
                    let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over)
                    else {
                        unreachable!()
                    };
                    let signals = std::mem::take(&mut signals);
                    self.signals
                        .extend(signals.iter().map(|&s| SignalReceived::Stop(s)));
                    let Stopping { ladder, kept, .. } = &mut *s;
                    let next = ladder.advance(&mut JobMembers { job: self, kept }, &signals);
                    match next {
                        Ok(Next::Wait(wake)) => {
                            self.phase = Phase::Stopping(s);
                            return Ok(Progress::Pending(self.wants_empty(Some(wake))));
                        }
                        Ok(Next::Done(stop)) => self.end_stop(*s, stop)?,
                        Err(e) => {
                            self.phase = Phase::Stopping(s);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Leftovers were found after the main process exited: stop them, or wait for them.
    fn apply_leftovers_policy(&mut self) -> Result<()> {
        match self.opts.leftovers {
            Leftovers::Kill | Leftovers::Fail => {
                let (polite, grace) = (self.opts.signal, self.opts.grace);
                self.begin_stop(StopReason::Leftovers, polite, grace, false)
            }
            Leftovers::Wait => {
                self.phase = Phase::Draining;
                Ok(())
            }
        }
    }

    /// Starts the stop ladder (or moves a ladder in its grace on to the kill, for
    /// [`Job::kill`]: `at_once`). Does nothing once the job is over.
    pub(crate) fn request_stop(&mut self, polite: Signal, at_once: bool) -> Result<()> {
        match &self.phase {
            Phase::Over => Ok(()),
            Phase::Stopping(_) if at_once => {
                let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over) else {
                    unreachable!()
                };
                let Stopping { ladder, kept, .. } = &mut *s;
                let result = ladder.kill_now(&mut JobMembers { job: self, kept });
                self.phase = Phase::Stopping(s);
                result
            }
            Phase::Stopping(_) => Ok(()),
            Phase::Running | Phase::Settling { .. } | Phase::Draining => {
                let grace = if at_once {
                    Duration::ZERO
                } else {
                    self.opts.grace
                };
                self.begin_stop(StopReason::Requested, polite, grace, false)
            }
        }
    }

    /// Starts the ladder. `group_delivered`: the stop began with a signal the terminal
    /// delivered to corral's whole process group (members still in it have it already).
    fn begin_stop(
        &mut self,
        reason: StopReason,
        polite: Signal,
        grace: Duration,
        group_delivered: bool,
    ) -> Result<()> {
        if matches!(self.phase, Phase::Draining) {
            self.refresh_leftovers();
        }
        let mut kept = Kept::new(group_delivered);
        let members = &mut JobMembers {
            job: self,
            kept: &mut kept,
        };
        let ladder = Ladder::start(members, reason, polite, grace)?;
        self.phase = Phase::Stopping(Box::new(Stopping {
            ladder,
            requested_by: None,
            kept,
        }));
        Ok(())
    }

    /// The ladder is finished: note survivors, clean up.
    fn end_stop(&mut self, s: Stopping, mut stop: StopReport) -> Result<()> {
        if stop.outcome == StopOutcome::Survivors {
            self.survivors = self.snapshot();
        }
        stop.requested_by = s.requested_by;
        drop(s.kept);
        self.stop = Some(stop);
        self.finish()
    }

    /// Passes `sig` on to the main process ([`Options::forward_signals`]) while it runs.
    fn forward(&mut self, sig: Signal) -> Result<()> {
        self.poll_main()?;
        let sent = match (&self.main_exit, self.backend.main_fd()) {
            (None, Some(fd)) => pidfd::send_signal(fd, sig).is_ok(),
            _ => false,
        };
        self.signals.push(if sent {
            SignalReceived::PassedOn(sig)
        } else {
            SignalReceived::Dropped(sig)
        });
        Ok(())
    }

    /// Notices the main process's exit without blocking.
    fn poll_main(&mut self) -> Result<()> {
        if self.main_exit.is_some() {
            return Ok(());
        }
        self.backend.poll_main(self.main_pid, &mut self.main_exit)
    }

    /// Whether no process of the job is left ([`super::backend::Backend::is_empty`]).
    pub(super) fn is_empty(&mut self) -> Result<bool> {
        self.backend.is_empty(self.main_pid, &mut self.main_exit)
    }

    fn wants_main(&self) -> Wants {
        self.backend.wants_main(self.deadline)
    }

    fn wants_empty(&self, deadline: Option<Instant>) -> Wants {
        self.backend.wants_empty(deadline)
    }

    /// The job's live processes with the facts the report wants.
    pub(super) fn snapshot(&self) -> Vec<ProcessInfo> {
        self.backend
            .stats()
            .into_iter()
            // One already exiting is no leftover (a nested corral's watchdog, released just
            // before that corral exited, can still be in the cgroup for a moment).
            .filter(|s| s.alive() && !(s.exiting && s.threads <= 1))
            .map(|s| ProcessInfo {
                pid: s.pid.get() as u32,
                cmdline: procs::cmdline(s.pid),
                left_process_group: s.pgid != self.main_pgid,
                left_session: s.sid != self.main_sid,
            })
            .collect()
    }

    /// A job that waited for its leftovers (`Leftovers::Wait`) is being stopped: the list
    /// taken when the main process exited is brought up to date with what the stop acts on.
    /// A daemon forks its workers and renames itself after the command that started it
    /// exits (nginx's master becomes `nginx: master process ...` after `setsid`), so an
    /// entry still running gets its current name and sessions, and processes started since
    /// are added; an entry that exited meanwhile stays as it was.
    fn refresh_leftovers(&mut self) {
        for now in self.snapshot() {
            match self.leftovers.iter_mut().find(|l| l.pid == now.pid) {
                Some(entry) => *entry = now,
                None => self.leftovers.push(now),
            }
        }
    }

    /// Reaps the main process, removes the cgroup (or reaps orphans), and builds the report.
    pub(super) fn finish(&mut self) -> Result<()> {
        if self.main_exit.is_none() {
            if let Some(fd) = self.backend.main_fd() {
                // Everything is dead by now; this returns at once.
                self.main_exit = pidfd::reap(fd, true)
                    .map_err(|e| Error::process("waitid(P_PIDFD)", self.main_pid, e))?;
            }
        }
        let mut cleanup = Cleanup::default();
        let (cgroup, usage) = self
            .backend
            .end(self.main_pid, &mut self.main_exit, &mut cleanup);
        let exit = self.main_exit.map(ExitKind::info);
        // The OOM killer's SIGKILL looks like anyone's: it is the OOM killer's when the
        // cgroup counted an OOM kill and corral sent no SIGKILL while the main process lived.
        let oom_killed = self.main_exit.is_some_and(ExitKind::killed)
            && usage
                .as_ref()
                .and_then(|u: &crate::report::Usage| u.oom_kills)
                .is_some_and(|n| n > 0)
            && !self.sigkill_sent.load(Ordering::Relaxed);
        let exit_status = Ending {
            main: self.main_exit,
            oom_killed,
            timed_out: self.timed_out,
            external: self.external,
            preserve_status: self.opts.preserve_status,
            leftovers: self.opts.leftovers,
            left: !self.leftovers.is_empty(),
        }
        .status();
        self.report = Some(Report {
            version: crate::report::REPORT_VERSION,
            id: self.id.clone(),
            name: self.opts.name.clone(),
            not_registered: self.not_registered.clone(),
            command: self.command.clone(),
            pid: self.main_pid.get() as u32,
            mechanism: self.mechanism,
            mechanism_reason: self.mechanism_reason.clone(),
            degraded: self.degraded,
            spawn: self.spawn,
            on_supervisor_death: self.on_supervisor_death.clone(),
            pid_namespace: self.opts.pid_namespace,
            credentials: self.credentials.clone(),
            cgroup,
            cgroup_parent_source: self.parent_source,
            exit,
            exit_status,
            timed_out: self.timed_out,
            signals_received: std::mem::take(&mut self.signals),
            stop: self.stop.take(),
            leftovers: std::mem::take(&mut self.leftovers),
            survivors: std::mem::take(&mut self.survivors),
            limits: self.limits.take(),
            usage,
            oom_killed,
            cleanup,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
        self.phase = Phase::Over;
        // The record and the control socket go; requesters waiting see their connection
        // close.
        let registration = self.registration.take();
        let dir = registration
            .as_ref()
            .and_then(|r| r.dir().map(std::path::Path::to_path_buf));
        drop(registration);
        // A killed job may have held corrals of nested jobs, killed before they could
        // remove their records: remove those now rather than at the next sweep.
        if let (true, Some(dir)) = (self.sigkill_sent.load(Ordering::Relaxed), dir) {
            let killed = std::mem::take(&mut self.killed_pids);
            let outer = match self.report.as_ref().and_then(|r| r.cgroup.as_deref()) {
                Some(leaf) => crate::registry::Outer::Cgroup(leaf),
                None => crate::registry::Outer::Killed(&killed),
            };
            let swept = crate::registry::sweep_nested(&dir, outer);
            if let Some(report) = self.report.as_mut() {
                report.cleanup.swept = swept;
            }
        }
        Ok(())
    }
}

/// The job's processes as the ladder sees them: the cgroup, or the processes under the
/// supervisor (ourselves in-process), walked through `/proc`.
struct JobMembers<'a> {
    job: &'a mut Job,
    kept: &'a mut Kept,
}

impl ladder::Members for JobMembers<'_> {
    fn is_empty(&mut self) -> Result<bool> {
        self.job.is_empty()
    }

    /// pgroup: SIGSTOP to everything found, until a walk finds nothing new.
    fn hold(&mut self) -> Option<usize> {
        self.job.backend.hold(self.kept)
    }

    fn signal(&mut self, polite: Signal) -> Result<Sent> {
        let job = &*self.job;
        let own_pgid = job.own_pgid;
        let skip_group = self.kept.group_delivered && job.mechanism == Mechanism::Cgroup;
        let filter = move |pid: Pid| -> bool {
            !skip_group
                || procs::stat(pid)
                    .map(|st| st.pgid != own_pgid)
                    .unwrap_or(true)
        };
        let (n_polite, n_cont, cgroup_frozen) = job
            .backend
            .signal_then_continue(self.kept, polite, &filter)?;
        let mut notes = Vec::new();
        if cgroup_frozen {
            notes.push("members forked meanwhile got it with the cgroup frozen");
        }
        if skip_group {
            notes.push("members in corral's process group got it from the terminal");
        }
        if job.opts.pid_namespace && job.main_exit.is_none() {
            notes.push(
                "COMMAND is PID 1 of its PID namespace: it gets the signal only if it \
                 handles it, else the kill after the grace ends it",
            );
        }
        Ok(Sent {
            reached: n_polite,
            continued: Some(n_cont),
            detail: (!notes.is_empty()).then(|| notes.join("; ")),
        })
    }

    fn signal_again(&mut self, sig: Signal) -> Result<usize> {
        let (n, _, _) = self
            .job
            .backend
            .signal_then_continue(self.kept, sig, &|_| true)?;
        Ok(n)
    }

    /// pgroup: a member the freeze did not hold (a walk can miss a process being
    /// re-parented while it reads) gets the polite signal too.
    fn signal_late(&mut self, polite: Signal) -> Result<usize> {
        Ok(self.job.backend.signal_late(self.kept, polite))
    }

    /// `cgroup.kill` (or the freezer loop), or SIGKILL to what the freeze held and a walk.
    fn kill(&mut self) -> Result<Kill> {
        let job = &*self.job;
        if job.main_exit.is_none() {
            job.sigkill_sent.store(true, Ordering::Relaxed);
        }
        job.backend.kill(self.kept, job.opts.debug.no_cgroup_kill)
    }

    fn kill_again(&mut self) -> Result<()> {
        self.job.backend.kill_again(self.kept)
    }

    fn live(&mut self) -> Result<usize> {
        Ok(self.job.snapshot().len())
    }

    fn kill_report(&mut self) -> (Option<usize>, String) {
        let detail = match self.kept.method {
            Some(KillMethod::CgroupKill) => "cgroup.kill",
            Some(KillMethod::CgroupKillThenSignal) => {
                "cgroup.kill, then SIGKILL through pidfds to members it missed"
            }
            Some(KillMethod::FreezeAndSignal) => {
                "freeze, SIGKILL each member, thaw (no cgroup.kill)"
            }
            None => "SIGKILL to every descendant until none is found",
        };
        if self.kept.method.is_some() {
            return (None, detail.to_string());
        }
        let killed = &self.kept.killed;
        self.job.killed_pids = killed.iter().map(|p| p.get() as u32).collect();
        (Some(killed.len()), detail.to_string())
    }

    fn pace(&self) -> Pace {
        let walked = self.job.backend.walk_root().is_some();
        Pace {
            late: walked.then_some(GRACE_REWALK),
            kill_again: Some(if walked {
                PGROUP_REWALK
            } else {
                CGROUP_RESIGNAL
            }),
            kill_wait_max: KILL_WAIT_MAX,
            int_then_term: true,
        }
    }
}
