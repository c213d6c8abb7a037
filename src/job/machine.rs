//! The job as a state machine: running -> (draining leftovers) -> stopping -> over.
//!
//! [`Job::advance`] does all the work that can be done now without blocking and says what
//! to wait for next ([`Wants`]: descriptors, a deadline). The blocking driver
//! (`Job::drive`) polls those; the tokio driver registers them with the reactor. So the stop
//! ladder exists once, and neither driver needs a thread per job.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::PollFlags;

use super::{Backend, Job};
use crate::error::{Error, Result};
use crate::linux::cgroup::KillMethod;
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::supervise::SupervisorEvent;
use crate::linux::{pgroup, procs};
use crate::options::{Leftovers, Signal};
use crate::report::{
    Cleanup, ExitInfo, ProcessInfo, Report, Requester, StopOutcome, StopReason, StopReport,
    StopStep,
};
use crate::Mechanism;

/// How often a job whose main process exited, with no leftover found, looks for leftovers
/// again while it waits to become empty.
const SETTLE: Duration = Duration::from_millis(250);
/// pgroup: how often the grace walks the tree again for members the freeze missed.
const GRACE_REWALK: Duration = Duration::from_millis(50);
/// A stop begun with SIGINT (Ctrl+C) sends SIGTERM to what is left this long after it,
/// still within the grace: a shell starts its `&` commands with SIGINT ignored, and a
/// Ctrl+C must not wait out the whole grace on them in silence.
const INT_THEN_TERM: Duration = Duration::from_millis(500);
/// How long the kill stage waits for the job to empty before reporting survivors, unless
/// it is making progress (see [`KILL_WAIT_MAX`]).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// A kill that is making progress (fewer live members than at the last check, every
/// [`KILL_WAIT`]) is waited for up to this long in all: on a slow machine (an emulated VM,
/// thousands of processes) dying processes can take longer than one `KILL_WAIT` to exit,
/// and reporting them as survivors would be wrong. A member that does not die (stuck in
/// uninterruptible sleep) stops the progress and is reported after one more `KILL_WAIT`.
const KILL_WAIT_MAX: Duration = Duration::from_secs(120);
/// cgroup: how soon after `cgroup.kill` the members it missed get SIGKILL through pidfds.
const CGROUP_RESIGNAL: Duration = Duration::from_millis(100);
/// A second SIGINT or SIGTERM cuts the grace short, but only when it comes at least this
/// long after the first signal of the stop: a service manager or batch system often
/// delivers one stop twice at once (systemd to the main process and to a bound scope's
/// cgroup, Slurm's linuxproc to each process in turn), and no person presses Ctrl+C twice
/// in under a tenth of a second.
pub(crate) const SECOND_SIGNAL_AFTER: Duration = Duration::from_millis(100);
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

/// A stop ladder in progress.
pub(super) struct Stopping {
    reason: StopReason,
    /// Reason `external`: who asked.
    requested_by: Option<Requester>,
    t0: Instant,
    steps: Vec<StopStep>,
    /// When the first SIGINT or SIGTERM of this stop arrived (the one that began it, for a
    /// stop of reason `signal`): a second one cuts the grace short.
    first_signal: Option<Instant>,
    /// pgroup: the processes stopped with SIGSTOP before the polite signal.
    held: Option<pgroup::Frozen>,
    stage: Stage,
}

enum Stage {
    /// The polite signal went out; waiting for the job to empty until `end`. pgroup: at
    /// `next_walk` the tree is walked again, and a member the freeze did not hold (a walk
    /// can miss a process being re-parented while it reads) gets the polite signal too.
    Grace {
        end: Instant,
        grace: Duration,
        polite: Signal,
        next_walk: Option<Instant>,
        late: HashSet<(Pid, u64)>,
        /// When SIGTERM follows a polite SIGINT ([`INT_THEN_TERM`]); `None` once sent, or
        /// for another polite signal.
        term_at: Option<Instant>,
    },
    /// SIGKILL went out; waiting for the job to empty until `until`, signalling again at
    /// `next`.
    Kill {
        until: Instant,
        next: Instant,
        step: usize,
        method: Option<KillMethod>,
        killed: HashSet<Pid>,
        /// When SIGKILL went out, and the live members at the last progress check
        /// (`None` before the first check).
        since: Instant,
        live: Option<usize>,
    },
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
            match (&self.phase, req.stop) {
                (Phase::Over, _) => {}
                (Phase::Stopping(_), stop) => {
                    if stop.is_none() {
                        self.request_stop(Signal::KILL, true)?;
                    }
                }
                (_, stop) => {
                    let polite = match stop {
                        Some((sig, grace)) => {
                            self.opts.grace = grace;
                            sig
                        }
                        None => {
                            self.opts.grace = Duration::ZERO;
                            Signal::KILL
                        }
                    };
                    self.external = Some(polite);
                    self.begin_stop(StopReason::External, polite, false)?;
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
                        self.signals.extend(sigs.iter().map(|s| s.to_string()));
                        // SIGINT/SIGQUIT are the terminal's signals: members still in our
                        // process group got them from the terminal (or whoever signalled it).
                        let group_delivered = matches!(first, Signal::INT | Signal::QUIT);
                        // Signals read together arrived together: one request (see
                        // `SECOND_SIGNAL_AFTER`).
                        self.begin_stop(StopReason::Signal, first, group_delivered)?;
                        continue;
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        self.timed_out = true;
                        self.begin_stop(StopReason::Timeout, self.opts.signal, false)?;
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
                        && matches!(self.backend, Some(Backend::Supervised(_)))
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
                    let leftovers = if self.supervisor_last_child {
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
                    let result = self.advance_stop(&mut s, std::mem::take(&mut signals));
                    match result {
                        Ok(Some(wants)) => {
                            self.phase = Phase::Stopping(s);
                            return Ok(Progress::Pending(wants));
                        }
                        Ok(None) => self.end_stop(*s)?,
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
                self.begin_stop(StopReason::Leftovers, self.opts.signal, false)
            }
            Leftovers::Wait => {
                self.phase = Phase::Draining;
                Ok(())
            }
        }
    }

    /// Starts the stop ladder (or moves a ladder in its grace on to the kill, for
    /// [`Job::kill`]). Does nothing once the job is over.
    pub(crate) fn request_stop(&mut self, polite: Signal, at_once: bool) -> Result<()> {
        if at_once {
            self.opts.grace = Duration::ZERO;
        }
        match &mut self.phase {
            Phase::Over => Ok(()),
            Phase::Stopping(s) => {
                if at_once && matches!(s.stage, Stage::Grace { .. }) {
                    let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over)
                    else {
                        unreachable!()
                    };
                    s.steps.push(step(
                        "grace",
                        None,
                        None,
                        Some("cut short by kill()".into()),
                        s.t0,
                    ));
                    let entered = self.enter_kill(&mut s);
                    self.phase = Phase::Stopping(s);
                    entered?;
                }
                Ok(())
            }
            Phase::Running | Phase::Settling { .. } | Phase::Draining => {
                self.begin_stop(StopReason::Requested, polite, false)
            }
        }
    }

    /// The ladder's first steps: [freeze (pgroup)], the polite signal and SIGCONT, then the
    /// grace; or straight to the kill when there is no grace.
    fn begin_stop(
        &mut self,
        reason: StopReason,
        polite: Signal,
        group_delivered: bool,
    ) -> Result<()> {
        if matches!(self.phase, Phase::Draining) {
            self.refresh_leftovers();
        }
        let t0 = Instant::now();
        let grace = self.opts.grace;
        let gentle = !grace.is_zero() && polite != Signal::KILL;
        let mut s = Box::new(Stopping {
            reason,
            requested_by: None,
            t0,
            steps: Vec::new(),
            first_signal: (reason == StopReason::Signal).then_some(t0),
            held: None,
            stage: Stage::Grace {
                end: t0,
                grace,
                polite,
                next_walk: None,
                late: HashSet::new(),
                term_at: None,
            },
        });
        if let Some(root) = self.walk_root() {
            if !grace.is_zero() {
                let held = pgroup::freeze(root);
                s.steps.push(step(
                    "freeze",
                    Some(Signal::STOP),
                    Some(held.len()),
                    None,
                    t0,
                ));
                s.held = Some(held);
            }
        }
        if gentle {
            let own_pgid = self.own_pgid;
            let skip_group = group_delivered && self.mechanism == Mechanism::Cgroup;
            let filter = move |pid: Pid| -> bool {
                !skip_group
                    || procs::stat(pid)
                        .map(|st| st.pgid != own_pgid)
                        .unwrap_or(true)
            };
            let (n_polite, n_cont, cgroup_frozen) = match self.backend.as_ref().expect("backend") {
                Backend::Cgroup(leaf) => leaf.signal_then_continue(polite, &filter)?,
                Backend::Pgroup { .. } | Backend::Supervised(_) => {
                    let h = s.held.as_ref().expect("frozen set");
                    (
                        h.signal_all(polite, &filter).len(),
                        h.signal_all(Signal::CONT, &|_| true).len(),
                        false,
                    )
                }
            };
            let mut notes = Vec::new();
            if cgroup_frozen {
                notes.push("members forked meanwhile got it with the cgroup frozen");
            }
            if skip_group {
                notes.push("members in corral's process group got it from the terminal");
            }
            if self.opts.pid_namespace && self.main_exit.is_none() {
                notes.push(
                    "COMMAND is PID 1 of its PID namespace: it gets the signal only if it \
                     handles it, else the kill after the grace ends it",
                );
            }
            let detail = (!notes.is_empty()).then(|| notes.join("; "));
            s.steps
                .push(step("signal", Some(polite), Some(n_polite), detail, t0));
            s.steps
                .push(step("continue", Some(Signal::CONT), Some(n_cont), None, t0));
            // The grace runs from the polite signal (a freeze before it may take a while).
            let now = Instant::now();
            s.stage = Stage::Grace {
                end: now + grace,
                grace,
                polite,
                next_walk: self.walk_root().map(|_| now + GRACE_REWALK),
                late: HashSet::new(),
                term_at: (polite == Signal::INT && INT_THEN_TERM < grace)
                    .then(|| now + INT_THEN_TERM),
            };
        } else {
            self.enter_kill(&mut s)?;
        }
        self.phase = Phase::Stopping(s);
        Ok(())
    }

    /// One turn of the ladder. `Ok(None)`: the ladder is finished (empty, or survivors).
    fn advance_stop(&mut self, s: &mut Stopping, signals: Vec<Signal>) -> Result<Option<Wants>> {
        if !signals.is_empty() {
            self.signals.extend(signals.iter().map(|s| s.to_string()));
        }
        let stop_signal = signals
            .iter()
            .any(|s| matches!(*s, Signal::INT | Signal::TERM));
        let cut_short = stop_signal
            && match s.first_signal {
                Some(first) => first.elapsed() >= SECOND_SIGNAL_AFTER,
                // The stop began for another reason (leftovers, a timeout, `corral kill`):
                // this is the first signal, not a second one.
                None => {
                    s.first_signal = Some(Instant::now());
                    false
                }
            };
        loop {
            let now = Instant::now();
            match &mut s.stage {
                Stage::Grace {
                    end,
                    grace,
                    polite,
                    next_walk,
                    late,
                    term_at,
                } => {
                    let (end, grace, polite) = (*end, *grace, *polite);
                    let late_note = |late: &HashSet<(Pid, u64)>| {
                        (!late.is_empty()).then(|| {
                            format!(
                                "; {} found after the freeze got the polite signal then",
                                late.len()
                            )
                        })
                    };
                    if self.is_empty()? {
                        let detail = format!("all exited{}", late_note(late).unwrap_or_default());
                        s.steps.push(step("grace", None, None, Some(detail), s.t0));
                        return Ok(None);
                    }
                    let detail = if cut_short {
                        "cut short by a second signal".to_string()
                    } else if now >= end {
                        format!(
                            "{} ms passed{}",
                            grace.as_millis(),
                            late_note(late).unwrap_or_default()
                        )
                    } else {
                        if term_at.is_some_and(|at| now >= at) {
                            *term_at = None;
                            let n = match self.backend.as_ref().expect("backend") {
                                Backend::Cgroup(leaf) => {
                                    leaf.signal_then_continue(Signal::TERM, &|_| true)?.0
                                }
                                Backend::Pgroup { .. } | Backend::Supervised(_) => {
                                    let h = s.held.as_ref().expect("frozen set");
                                    let n = h.signal_all(Signal::TERM, &|_| true).len();
                                    h.signal_all(Signal::CONT, &|_| true);
                                    n
                                }
                            };
                            s.steps.push(step(
                                "signal",
                                Some(Signal::TERM),
                                Some(n),
                                Some(format!(
                                    "{} ms after SIGINT, to what was left: a shell starts its \
                                     background commands with SIGINT ignored",
                                    INT_THEN_TERM.as_millis()
                                )),
                                s.t0,
                            ));
                        }
                        if let (Some(at), Some(root)) = (*next_walk, self.walk_root()) {
                            if now >= at {
                                let held = s.held.as_ref();
                                signal_late(root, polite, held, late);
                                *next_walk = Some(now + GRACE_REWALK);
                            }
                        }
                        let wake =
                            super::earliest(super::earliest(Some(end), *next_walk), *term_at);
                        return Ok(Some(self.wants_empty(wake)));
                    };
                    s.steps.push(step("grace", None, None, Some(detail), s.t0));
                    self.enter_kill(s)?;
                }
                Stage::Kill {
                    until,
                    next,
                    killed,
                    method,
                    since,
                    live,
                    ..
                } => {
                    if self.is_empty()? {
                        return Ok(None);
                    }
                    if now >= *until {
                        // Still dying, only slowly: wait another KILL_WAIT.
                        let left = self.snapshot().len();
                        let progress = live.map_or(true, |before| left < before);
                        if progress && now + KILL_WAIT <= *since + KILL_WAIT_MAX {
                            *live = Some(left);
                            *until = now + KILL_WAIT;
                            continue;
                        }
                        return Ok(None);
                    }
                    if now >= *next {
                        match self.backend.as_ref().expect("backend") {
                            Backend::Cgroup(leaf) => {
                                // cgroup.kill misses a process whose main thread exited while
                                // other threads run; a process-directed SIGKILL does not.
                                *method = Some(KillMethod::CgroupKillThenSignal);
                                leaf.for_each_member(&mut |_, fd| {
                                    let _ = pidfd::send_signal(fd, Signal::KILL);
                                })?;
                                *next = now + CGROUP_RESIGNAL;
                            }
                            Backend::Pgroup { supervisor, .. } => {
                                kill_pass(*supervisor, true, killed);
                                *next = now + PGROUP_REWALK;
                            }
                            Backend::Supervised(sup) => {
                                kill_pass(sup.supervisor, false, killed);
                                *next = now + PGROUP_REWALK;
                            }
                        }
                        continue;
                    }
                    let wake = (*next).min(*until);
                    return Ok(Some(self.wants_empty(Some(wake))));
                }
            }
        }
    }

    /// SIGKILL to everything: `cgroup.kill` (or the freezer loop), or a walk.
    fn enter_kill(&mut self, s: &mut Stopping) -> Result<()> {
        if self.main_exit.is_none() {
            self.sigkill_sent.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        let at_ms = at(s.t0);
        let mut killed = HashSet::new();
        let (present, method, next) = match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => {
                let present = leaf.members()?.len();
                let method = leaf.kill_start(self.opts.debug.no_cgroup_kill, now + KILL_WAIT)?;
                (Some(present), Some(method), now + CGROUP_RESIGNAL)
            }
            Backend::Pgroup { supervisor, .. } => {
                if let Some(h) = &s.held {
                    killed = h.signal_all(Signal::KILL, &|_| true);
                }
                kill_pass(*supervisor, true, &mut killed);
                (None, None, now + PGROUP_REWALK)
            }
            Backend::Supervised(sup) => {
                if let Some(h) = &s.held {
                    killed = h.signal_all(Signal::KILL, &|_| true);
                }
                kill_pass(sup.supervisor, false, &mut killed);
                (None, None, now + PGROUP_REWALK)
            }
        };
        let mut kill_step = step("kill", Some(Signal::KILL), present, None, s.t0);
        kill_step.at_ms = at_ms;
        s.steps.push(kill_step);
        // What the progress checks compare with: the members at the kill (cgroup), or the
        // processes the first pass signalled (pgroup).
        let live = present.or(Some(killed.len()));
        s.stage = Stage::Kill {
            until: now + KILL_WAIT,
            next,
            step: s.steps.len() - 1,
            method,
            killed,
            since: now,
            live,
        };
        Ok(())
    }

    /// The ladder is finished: fill in the kill step, note survivors, clean up.
    fn end_stop(&mut self, mut s: Stopping) -> Result<()> {
        let mut outcome = StopOutcome::Exited;
        if let Stage::Kill {
            step,
            method,
            killed,
            ..
        } = &s.stage
        {
            outcome = StopOutcome::Killed;
            let kill = &mut s.steps[*step];
            kill.detail = Some(
                match method {
                    Some(KillMethod::CgroupKill) => "cgroup.kill",
                    Some(KillMethod::CgroupKillThenSignal) => {
                        "cgroup.kill, then SIGKILL through pidfds to members it missed"
                    }
                    Some(KillMethod::FreezeAndSignal) => {
                        "freeze, SIGKILL each member, thaw (no cgroup.kill)"
                    }
                    None => "SIGKILL to every descendant until none is found",
                }
                .to_string(),
            );
            if method.is_none() {
                kill.processes = Some(killed.len());
                self.killed_pids = killed.iter().map(|p| p.get() as u32).collect();
            }
            if !self.is_empty()? {
                outcome = StopOutcome::Survivors;
            }
        }
        if outcome == StopOutcome::Survivors {
            self.survivors = self.snapshot();
        } else {
            s.steps.push(step("empty", None, None, None, s.t0));
        }
        drop(s.held.take());
        self.stop = Some(StopReport {
            reason: s.reason,
            requested_by: s.requested_by,
            steps: s.steps,
            outcome,
        });
        self.finish()
    }

    /// The process whose descendants make up a pgroup job (ourselves in-process, or the
    /// supervisor); `None` for a cgroup job.
    fn walk_root(&self) -> Option<Pid> {
        match self.backend.as_ref()? {
            Backend::Cgroup(_) => None,
            Backend::Pgroup { supervisor, .. } => Some(*supervisor),
            Backend::Supervised(sup) => Some(sup.supervisor),
        }
    }

    /// Passes `sig` on to the main process ([`Options::forward_signals`]) while it runs.
    fn forward(&mut self, sig: Signal) -> Result<()> {
        self.poll_main()?;
        let sent = match (&self.main_exit, &self.main_fd) {
            (None, Some(fd)) => pidfd::send_signal(fd.as_fd(), sig).is_ok(),
            _ => false,
        };
        self.signals.push(format!(
            "{sig} ({})",
            if sent {
                "passed on to COMMAND"
            } else {
                "dropped: COMMAND has exited"
            }
        ));
        Ok(())
    }

    /// Notices the main process's exit without blocking.
    fn poll_main(&mut self) -> Result<()> {
        if self.main_exit.is_some() {
            return Ok(());
        }
        if let Some(fd) = &self.main_fd {
            self.main_exit = pidfd::reap(fd.as_fd(), false)
                .map_err(|e| Error::process("waitid(P_PIDFD)", self.main_pid, e))?;
            return Ok(());
        }
        self.pump_supervisor()
    }

    /// Takes the supervisor's pending messages.
    fn pump_supervisor(&mut self) -> Result<()> {
        if let Some(Backend::Supervised(sup)) = self.backend.as_mut() {
            for event in sup.read_events()? {
                match event {
                    SupervisorEvent::MainExited(kind) => self.main_exit = Some(kind),
                    SupervisorEvent::LastChild => self.supervisor_last_child = true,
                    SupervisorEvent::Done { reaped } => {
                        self.reaped = reaped;
                        self.supervisor_done = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether no process of the job is left. pgroup in-process: reaps exited children on
    /// the way (the kernel's answer is the test). Supervised: the supervisor exits exactly
    /// when it has no child left.
    pub(super) fn is_empty(&mut self) -> Result<bool> {
        match self.backend.as_mut() {
            None => Ok(true),
            Some(Backend::Cgroup(leaf)) => Ok(!leaf.populated()?),
            Some(Backend::Pgroup { .. }) => {
                let fd = self
                    .main_fd
                    .as_ref()
                    .expect("in-process jobs hold the main pidfd");
                let settled = pgroup::settle(self.main_pid, fd.as_fd(), &mut self.main_exit)?;
                self.reaped += settled.reaped;
                Ok(settled.empty)
            }
            Some(Backend::Supervised(_)) => {
                self.pump_supervisor()?;
                if self.supervisor_exit.is_none() {
                    if let Some(Backend::Supervised(sup)) = self.backend.as_mut() {
                        self.supervisor_exit = sup.try_reap()?;
                    }
                    // Messages sent just before it exited.
                    self.pump_supervisor()?;
                }
                Ok(self.supervisor_exit.is_some())
            }
        }
    }

    fn wants_main(&self) -> Wants {
        let fds = match self.backend.as_ref().expect("backend") {
            Backend::Supervised(sup) => vec![
                (sup.control_fd().as_raw_fd(), PollFlags::IN),
                (sup.supervisor_fd.as_raw_fd(), PollFlags::IN),
            ],
            _ => vec![(
                self.main_fd.as_ref().expect("main pidfd").as_raw_fd(),
                PollFlags::IN,
            )],
        };
        Wants {
            fds,
            children_of: None,
            deadline: self.deadline,
        }
    }

    fn wants_empty(&self, deadline: Option<Instant>) -> Wants {
        let (fds, children_of) = match self.backend.as_ref().expect("backend") {
            Backend::Cgroup(leaf) => (vec![(leaf.events_fd().as_raw_fd(), PollFlags::PRI)], None),
            Backend::Pgroup { supervisor, .. } => (Vec::new(), Some(*supervisor)),
            Backend::Supervised(sup) => (
                vec![
                    (sup.control_fd().as_raw_fd(), PollFlags::IN),
                    (sup.supervisor_fd.as_raw_fd(), PollFlags::IN),
                ],
                None,
            ),
        };
        Wants {
            fds,
            children_of,
            deadline,
        }
    }

    /// The job's live processes with the facts the report wants.
    pub(super) fn snapshot(&self) -> Vec<ProcessInfo> {
        let stats: Vec<procs::Stat> = match self.backend.as_ref() {
            None => Vec::new(),
            Some(Backend::Cgroup(leaf)) => leaf
                .members()
                .unwrap_or_default()
                .into_iter()
                .filter_map(procs::stat)
                .collect(),
            Some(Backend::Pgroup { supervisor, .. }) => pgroup::members(*supervisor),
            Some(Backend::Supervised(sup)) => pgroup::members(sup.supervisor),
        };
        stats
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
            if let Some(fd) = &self.main_fd {
                // Everything is dead by now; this returns at once.
                self.main_exit = pidfd::reap(fd.as_fd(), true)
                    .map_err(|e| Error::process("waitid(P_PIDFD)", self.main_pid, e))?;
            }
        }
        let mut cleanup = Cleanup::default();
        let mut cgroup = None;
        let mut usage = None;
        match self.backend.take() {
            None => {}
            Some(Backend::Cgroup(leaf)) => {
                cgroup = Some(leaf.path.clone());
                // The job is empty: the figures are final.
                usage = Some(leaf.usage());
                match leaf.remove() {
                    Ok(()) => cleanup.cgroup_removed = Some(true),
                    Err(e) => {
                        cleanup.cgroup_removed = Some(false);
                        cleanup.error = Some(super::error_chain(&e));
                    }
                }
                // The job is empty: nothing left for the watchdog to do.
                drop(self.watch.take());
            }
            Some(Backend::Pgroup { .. }) => {
                let fd = self
                    .main_fd
                    .as_ref()
                    .expect("in-process jobs hold the main pidfd");
                match pgroup::settle(self.main_pid, fd.as_fd(), &mut self.main_exit) {
                    Ok(settled) => self.reaped += settled.reaped,
                    Err(e) => cleanup.error = Some(super::error_chain(&e)),
                }
                cleanup.reaped = Some(self.reaped);
            }
            Some(Backend::Supervised(sup)) => {
                drop(sup);
                cleanup.reaped = Some(self.reaped);
                if !self.supervisor_done {
                    cleanup.error = Some(format!(
                        "the supervisor exited ({}) before the job was empty; processes of \
                         the job may have escaped",
                        match self.supervisor_exit {
                            Some(ExitKind::Code(c)) => format!("status {c}"),
                            Some(ExitKind::Signal(s)) => format!("signal {s}"),
                            None => "unknown status".into(),
                        }
                    ));
                }
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
        // The OOM killer's SIGKILL looks like anyone's: it is the OOM killer's when the
        // cgroup counted an OOM kill and corral sent no SIGKILL while the main process lived.
        let oom_killed = self.main_exit == Some(ExitKind::Signal(Signal::KILL.as_raw()))
            && usage
                .as_ref()
                .and_then(|u: &crate::report::Usage| u.oom_kills)
                .is_some_and(|n| n > 0)
            && !self.sigkill_sent.load(Ordering::Relaxed);
        let exit_status = if oom_killed {
            128 + Signal::KILL.as_raw()
        } else if self.timed_out && !self.opts.preserve_status {
            // As coreutils `timeout`: 124, or 128 + 9 when COMMAND had to be killed (scripts
            // test for 137 after `timeout -k`).
            if self.main_exit == Some(ExitKind::Signal(Signal::KILL.as_raw())) {
                128 + Signal::KILL.as_raw()
            } else {
                124
            }
        } else if let (Some(sig), false) = (self.external, self.opts.preserve_status) {
            // Stopped from outside (`corral kill`): the status of a process killed by the
            // signal asked for, whatever the main process made of it.
            128 + sig.as_raw()
        } else {
            own_status
        };
        let exit_status = crate::options::leftovers_fail(
            self.opts.leftovers,
            exit_status,
            !self.leftovers.is_empty(),
        );
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
            spawn: self.spawn_method.to_string(),
            on_supervisor_death: self.on_supervisor_death.clone(),
            pid_namespace: self.opts.pid_namespace,
            credentials: self.credentials.clone(),
            cgroup,
            cgroup_parent_source: self.parent_source.map(str::to_string),
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

/// The polite signal, then SIGCONT, to every member under `root` that the freeze did not
/// hold and that has not had them yet (recorded in `late`, by PID and start time).
fn signal_late(
    root: Pid,
    polite: Signal,
    held: Option<&pgroup::Frozen>,
    late: &mut HashSet<(Pid, u64)>,
) {
    for st in pgroup::members(root) {
        if held.is_some_and(|h| h.holds(&st)) || late.contains(&(st.pid, st.starttime)) {
            continue;
        }
        if let Some(fd) = procs::open_verified(&st) {
            let _ = pidfd::send_signal(fd.as_fd(), polite);
            let _ = pidfd::send_signal(fd.as_fd(), Signal::CONT);
            late.insert((st.pid, st.starttime));
        }
    }
}

/// SIGKILL to every process found under `root`: its direct children first (one small read,
/// then a pidfd each), then a full walk. `own_children`: `root` is this process, so its
/// children are unreaped children of ours whose PIDs cannot have been reused; otherwise each
/// is checked by its start time.
fn kill_pass(root: Pid, own_children: bool, killed: &mut HashSet<Pid>) {
    for pid in procs::children(root) {
        let fd = if own_children {
            pidfd::open(pid).ok()
        } else {
            procs::stat(pid).and_then(|s| procs::open_verified(&s))
        };
        if let Some(fd) = fd {
            if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    for s in pgroup::members(root) {
        if let Some(fd) = procs::open_verified(&s) {
            if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                killed.insert(s.pid);
            }
        }
    }
}

fn at(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

fn step(
    name: &str,
    sig: Option<Signal>,
    processes: Option<usize>,
    detail: Option<String>,
    t0: Instant,
) -> StopStep {
    StopStep {
        step: name.to_string(),
        signal: sig.map(|s| s.to_string()),
        processes,
        detail,
        at_ms: at(t0),
    }
}
