//! The macOS backend: a process group and libproc walks (`Mechanism::Pgroup`), with the same
//! `Job` API as on Linux (the subset every OS offers). Weaker than Linux; `docs/macos.md`
//! says what it does and does not guarantee.
//!
//! The main process starts in a new process group (`process_group(0)`) whose id is its PID.
//! corral keeps the main process unreaped until the job is over: it learns the exit status
//! with `waitid(WNOWAIT)` and reaps with `waitpid` only in `finish`. So neither the main
//! process's PID nor the group id can be reused while the job lives, and `killpg` to that
//! group always reaches a group corral created.
//!
//! macOS has no subreaper and no cgroups: an orphan goes to launchd. The job's processes are
//! found by walking libproc (`proc_listpgrppids`, `proc_listchildpids`) from the main
//! process, the group, and every process seen before, remembered by PID and start time
//! (`tree.rs`). A kqueue watches the main process and every process found for `NOTE_EXIT |
//! NOTE_FORK`, so a fork wakes corral to walk again at once, and a walk runs at least every
//! [`TRACK`] anyway. A descendant that leaves the group (setsid) and whose parent exits
//! before a walk sees it escapes: nothing on macOS links it to the job any more.
//!
//! Members outside the group are signalled by PID after their identity is checked again
//! (no pidfds on macOS: see `tree.rs` for the residual race). The stop ladder: the polite
//! signal and SIGCONT to the group and to members outside it, the grace (walking again for
//! late members), then SIGKILL to all, repeated until no member is found or [`KILL_WAIT`]
//! passes (the rest are survivors).
//!
//! A job is over when its main process has exited and a walk finds no live member. Nothing
//! is process-wide: no signal handler, no thread; the kqueue is not inherited by children.

mod rules;
mod sys;
mod tree;

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::options::{Leftovers, Signal};
use crate::report::{
    Cleanup, ExitInfo, ProcessInfo, StopOutcome, StopReason, StopReport, StopStep,
};
use crate::{Error, Mechanism, Options, Report, Result};
use sys::{BsdInfo, ExitKind, Kqueue, Pid};
use tree::{Ident, Tree};

/// How often the tree is walked while nothing wakes the job (forks of watched processes
/// wake it at once).
const TRACK: Duration = Duration::from_millis(100);
/// How often the grace and the kill stage walk again (processes that are not our children
/// give no exit event once they left the watch list).
const REWALK: Duration = Duration::from_millis(20);
/// How long the kill stage waits for the job to empty before reporting survivors.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A running job: a main process and everything it starts.
#[derive(Debug)]
pub struct Job {
    id: String,
    main: Pid,
    /// Holds the child's stdio handles; never waited on through it (that would reap).
    _child: Child,
    kq: Option<Kqueue>,
    tree: Tree,
    command: Vec<String>,
    name: Option<String>,
    not_registered: Option<String>,
    grace: Duration,
    polite: libc::c_int,
    leftovers_policy: Leftovers,
    preserve_status: bool,
    deadline: Option<Instant>,
    started: Instant,
    main_sid: Option<libc::pid_t>,
    main_exit: Option<ExitKind>,
    next_track: Instant,
    phase: Phase,
    timed_out: bool,
    leftovers: Vec<ProcessInfo>,
    survivors: Vec<ProcessInfo>,
    report: Option<Report>,
}

#[derive(Debug)]
enum Phase {
    Running,
    /// The main process exited; leftovers policy `wait`.
    Draining,
    Stopping(Box<Stopping>),
    Over,
}

#[derive(Debug)]
struct Stopping {
    reason: StopReason,
    t0: Instant,
    steps: Vec<StopStep>,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Grace {
        end: Instant,
        polite: libc::c_int,
        next_walk: Instant,
        /// Members outside the group that already had the polite signal.
        signalled: HashSet<Ident>,
    },
    Kill {
        until: Instant,
        next: Instant,
        step: usize,
        killed: HashSet<Ident>,
        in_group: usize,
    },
}

/// What [`Job::advance`] says.
enum Progress {
    Done,
    /// Wake at this time at the latest (or on a kqueue event).
    Wait(Option<Instant>),
}

impl Job {
    /// Starts `cmd` as a job under `opts`.
    pub fn spawn(cmd: &mut Command, opts: &Options) -> Result<Job> {
        use std::os::unix::process::CommandExt;
        let polite = rules::check_options(opts)?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut command = vec![program.clone()];
        command.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
        let kq = Kqueue::new().map_err(|e| Error::sys("kqueue()", e))?;
        cmd.process_group(0);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                program: program.clone(),
            },
            std::io::ErrorKind::PermissionDenied => Error::NotExecutable {
                program: program.clone(),
                source: e,
            },
            _ => Error::Spawn {
                program: program.clone(),
                stage: "spawn".into(),
                source: e,
            },
        })?;
        let main = Pid::new(child.id() as libc::pid_t).ok_or_else(|| Error::Process {
            op: "spawn returned an impossible PID".into(),
            pid: child.id(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        // Our unreaped child: the watch is on the right process. ESRCH: it already exited,
        // which `peek_exit` sees; only the wake-up is lost, so fall back to polling.
        let kq = kq.watch(main).is_ok().then_some(kq);
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut job = Job {
            id: format!("corral-{}-{}", std::process::id(), seq),
            main,
            _child: child,
            kq,
            tree: Tree::new(main),
            command,
            name: opts.name.clone(),
            not_registered: opts
                .register
                .then(|| "the job registry exists only on Linux".to_string()),
            grace: opts.grace,
            polite,
            leftovers_policy: opts.leftovers,
            preserve_status: opts.preserve_status,
            deadline: opts.timeout.map(|t| started + t),
            started,
            main_sid: sys::session_of(None),
            main_exit: None,
            next_track: started,
            phase: Phase::Running,
            timed_out: false,
            leftovers: Vec::new(),
            survivors: Vec::new(),
            report: None,
        };
        job.track();
        Ok(job)
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The mechanism the job runs under.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::Pgroup
    }

    /// The main process's PID.
    pub fn pid(&self) -> u32 {
        self.main.get() as u32
    }

    /// The report if the job is over; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<Report>> {
        Ok(match self.advance()? {
            Progress::Done => self.report.clone(),
            Progress::Wait(_) => None,
        })
    }

    /// Waits until the job is over.
    pub fn wait(&mut self) -> Result<Report> {
        loop {
            if let Some(r) = self.drive(None)? {
                return Ok(r);
            }
        }
    }

    /// Waits at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        self.drive(Some(Instant::now() + timeout))
    }

    /// Stops the job with its stop sequence and waits until it is over.
    pub fn stop(&mut self) -> Result<Report> {
        if matches!(self.phase, Phase::Running | Phase::Draining) {
            self.begin_stop(StopReason::Requested, self.polite);
        }
        self.wait()
    }

    /// Kills every process of the job at once and waits until it is over.
    pub fn kill(&mut self) -> Result<Report> {
        self.grace = Duration::ZERO;
        match &mut self.phase {
            Phase::Running | Phase::Draining => {
                self.begin_stop(StopReason::Requested, libc::SIGKILL)
            }
            Phase::Stopping(s) if matches!(s.stage, Stage::Grace { .. }) => {
                s.steps
                    .push(step("grace", None, None, Some("cut short by kill()"), s.t0));
                let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over) else {
                    unreachable!()
                };
                self.enter_kill(&mut s);
                self.phase = Phase::Stopping(s);
            }
            _ => {}
        }
        self.wait()
    }

    /// Runs the job until it is over or `limit` passes.
    fn drive(&mut self, limit: Option<Instant>) -> Result<Option<Report>> {
        loop {
            let wake = match self.advance()? {
                Progress::Done => return Ok(self.report.clone()),
                Progress::Wait(wake) => wake,
            };
            let now = Instant::now();
            if limit.is_some_and(|l| now >= l) {
                return Ok(None);
            }
            let until = [wake, limit].into_iter().flatten().min();
            let mut timeout = until.map(|u| u.saturating_duration_since(now));
            match &self.kq {
                Some(kq) => {
                    kq.wait(timeout)
                        .map_err(|e| Error::sys("kevent(EVFILT_PROC)", e))?;
                }
                None => {
                    // No kqueue watch on the main process: poll.
                    timeout = Some(timeout.map_or(REWALK, |t| t.min(REWALK)));
                    std::thread::sleep(timeout.unwrap_or(REWALK));
                }
            }
        }
    }

    /// Walks the tree (remembering what it finds) and returns the live members.
    fn track(&mut self) -> Vec<BsdInfo> {
        self.next_track = Instant::now() + TRACK;
        self.tree.scan(self.kq.as_ref())
    }

    /// Notices the main process's exit without reaping it.
    fn poll_main(&mut self) -> Result<()> {
        if self.main_exit.is_none() {
            self.main_exit = sys::peek_exit(self.main).map_err(|e| Error::Process {
                op: "waitid(WNOWAIT)".into(),
                pid: self.pid(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// Whether the job is empty: the main process exited and a walk finds no member.
    fn is_empty(&mut self) -> Result<bool> {
        self.poll_main()?;
        Ok(self.main_exit.is_some() && self.track().is_empty())
    }

    /// Does what can be done now without blocking, and says when to look again.
    fn advance(&mut self) -> Result<Progress> {
        loop {
            match &self.phase {
                Phase::Over => return Ok(Progress::Done),
                Phase::Running | Phase::Draining => {
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        self.timed_out = true;
                        self.begin_stop(StopReason::Timeout, self.polite);
                        continue;
                    }
                    self.poll_main()?;
                    let members = self.track();
                    if self.main_exit.is_none() {
                        return Ok(Progress::Wait(earliest(self.deadline, self.next_track)));
                    }
                    if members.is_empty() {
                        self.finish();
                        continue;
                    }
                    if matches!(self.phase, Phase::Draining) {
                        // Members' exits and forks wake the kqueue; the walk backs it up.
                        let wake = earliest(self.deadline, self.next_track);
                        return Ok(Progress::Wait(wake));
                    }
                    self.leftovers = self.describe(&members);
                    match self.leftovers_policy {
                        Leftovers::Kill | Leftovers::Fail => {
                            self.begin_stop(StopReason::Leftovers, self.polite)
                        }
                        Leftovers::Wait => self.phase = Phase::Draining,
                    }
                }
                Phase::Stopping(_) => {
                    let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over)
                    else {
                        unreachable!()
                    };
                    match self.advance_stop(&mut s)? {
                        Some(wake) => {
                            self.phase = Phase::Stopping(s);
                            return Ok(Progress::Wait(Some(wake)));
                        }
                        None => self.end_stop(*s)?,
                    }
                }
            }
        }
    }

    /// The polite signal and SIGCONT, then the grace; or the kill at once.
    fn begin_stop(&mut self, reason: StopReason, polite: libc::c_int) {
        let t0 = Instant::now();
        let mut s = Box::new(Stopping {
            reason,
            t0,
            steps: Vec::new(),
            stage: Stage::Grace {
                end: t0,
                polite,
                next_walk: t0,
                signalled: HashSet::new(),
            },
        });
        if rules::gentle(self.grace, polite) {
            let members = self.track();
            let running = self.main_exit.is_none();
            let none = HashSet::new();
            let sent = self.tree.signal(polite, running, &members, &none);
            let cont = self.tree.signal(libc::SIGCONT, running, &members, &none);
            s.steps
                .push(step_sig("signal", polite, Some(sent.reached), None, t0));
            s.steps.push(step_sig(
                "continue",
                libc::SIGCONT,
                Some(cont.reached),
                None,
                t0,
            ));
            let now = Instant::now();
            s.stage = Stage::Grace {
                end: now + self.grace,
                polite,
                next_walk: now + REWALK,
                signalled: sent.outside,
            };
        } else {
            self.enter_kill(&mut s);
        }
        self.phase = Phase::Stopping(s);
    }

    /// One turn of the ladder. `None`: finished (empty, or survivors after [`KILL_WAIT`]).
    fn advance_stop(&mut self, s: &mut Stopping) -> Result<Option<Instant>> {
        loop {
            let now = Instant::now();
            match &mut s.stage {
                Stage::Grace {
                    end,
                    polite,
                    next_walk,
                    signalled,
                } => {
                    if self.is_empty()? {
                        s.steps
                            .push(step("grace", None, None, Some("all exited"), s.t0));
                        return Ok(None);
                    }
                    if now < *end {
                        if now >= *next_walk {
                            // Members found late (outside the group) get the polite signal
                            // too; the group already had it.
                            let members = self.tree.scan(self.kq.as_ref());
                            let late = self.tree.signal(*polite, false, &members, signalled);
                            let _ = self.tree.signal(libc::SIGCONT, false, &members, signalled);
                            signalled.extend(late.outside);
                            *next_walk = now + REWALK;
                        }
                        return Ok(Some((*end).min(*next_walk)));
                    }
                    let detail = format!("{} ms passed", self.grace.as_millis());
                    s.steps.push(step("grace", None, None, Some(&detail), s.t0));
                    self.enter_kill(s);
                }
                Stage::Kill {
                    until,
                    next,
                    killed,
                    in_group,
                    ..
                } => {
                    if self.is_empty()? || now >= *until {
                        return Ok(None);
                    }
                    if now >= *next {
                        let members = self.tree.scan(self.kq.as_ref());
                        let running = self.main_exit.is_none();
                        let sent = self.tree.signal(libc::SIGKILL, running, &members, killed);
                        *in_group = (*in_group).max(sent.reached - sent.outside.len());
                        killed.extend(sent.outside);
                        *next = now + REWALK;
                        continue;
                    }
                    return Ok(Some((*next).min(*until)));
                }
            }
        }
    }

    /// SIGKILL to the group and to every member outside it.
    fn enter_kill(&mut self, s: &mut Stopping) {
        let members = self.track();
        let running = self.main_exit.is_none();
        let sent = self
            .tree
            .signal(libc::SIGKILL, running, &members, &HashSet::new());
        s.steps
            .push(step_sig("kill", libc::SIGKILL, None, None, s.t0));
        let now = Instant::now();
        s.stage = Stage::Kill {
            until: now + KILL_WAIT,
            next: now + REWALK,
            step: s.steps.len() - 1,
            in_group: sent.reached - sent.outside.len(),
            killed: sent.outside,
        };
    }

    /// The ladder is finished: fill in the kill step, note survivors, clean up.
    fn end_stop(&mut self, mut s: Stopping) -> Result<()> {
        let mut outcome = StopOutcome::Exited;
        if let Stage::Kill {
            step,
            killed,
            in_group,
            ..
        } = &s.stage
        {
            outcome = StopOutcome::Killed;
            let kill = &mut s.steps[*step];
            kill.processes = Some(in_group + killed.len());
            kill.detail = Some(format!(
                "killpg to the job's group, then SIGKILL by PID to {} process(es) outside it, \
                 until none is found",
                killed.len()
            ));
            if !self.is_empty()? {
                outcome = StopOutcome::Survivors;
                let members = self.track();
                self.survivors = self.describe(&members);
            }
        }
        if outcome != StopOutcome::Survivors {
            s.steps.push(step("empty", None, None, None, s.t0));
        }
        let stop = StopReport {
            reason: s.reason,
            requested_by: None,
            steps: s.steps,
            outcome,
        };
        self.finish_with(Some(stop));
        Ok(())
    }

    fn finish(&mut self) {
        self.finish_with(None)
    }

    /// Reaps the main process (it has exited: the job is over or given up on) and builds
    /// the report.
    fn finish_with(&mut self, stop: Option<StopReport>) {
        let mut cleanup = Cleanup::default();
        if self.main_exit.is_some() {
            // It has exited: `waitpid` returns at once.
            if let Err(e) = sys::reap(self.main) {
                cleanup.error = Some(format!("waitpid({}): {e}", self.main.get()));
            }
        } else {
            // Survived SIGKILL for KILL_WAIT (stuck in the kernel): not waited for here;
            // `Drop` reaps it.
            cleanup.error = Some(format!(
                "the main process {} survived SIGKILL and was not reaped",
                self.main.get()
            ));
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
        self.report = Some(Report {
            version: crate::report::REPORT_VERSION,
            id: self.id.clone(),
            name: self.name.clone(),
            not_registered: self.not_registered.clone(),
            command: self.command.clone(),
            pid: self.pid(),
            mechanism: Mechanism::Pgroup,
            mechanism_reason: "macOS: process group and libproc walks (no cgroups, no \
                               subreaper)"
                .into(),
            degraded: false,
            spawn: "std::process::Command with process_group(0)".into(),
            on_supervisor_death: "not covered: macOS has no watchdog or subreaper; the job's \
                                  processes outlive corral"
                .into(),
            pid_namespace: false,
            credentials: None,
            cgroup: None,
            cgroup_parent_source: None,
            exit,
            exit_status: crate::options::leftovers_fail(
                self.leftovers_policy,
                rules::exit_status(self.main_exit, self.timed_out, self.preserve_status),
                !self.leftovers.is_empty(),
            ),
            timed_out: self.timed_out,
            signals_received: Vec::new(),
            stop,
            leftovers: std::mem::take(&mut self.leftovers),
            survivors: std::mem::take(&mut self.survivors),
            limits: None,
            usage: None,
            oom_killed: false,
            cleanup,
            duration_ms: self.started.elapsed().as_millis() as u64,
        });
        self.phase = Phase::Over;
    }

    /// The report's view of `members`.
    fn describe(&self, members: &[BsdInfo]) -> Vec<ProcessInfo> {
        members
            .iter()
            .map(|m| ProcessInfo {
                pid: m.pid.get() as u32,
                cmdline: m.name.clone(),
                left_process_group: m.pgid != self.tree.group().id(),
                left_session: self.main_sid.is_some()
                    && sys::session_of(Some(m.pid)).is_some_and(|s| Some(s) != self.main_sid),
            })
            .collect()
    }
}

impl Drop for Job {
    /// A job dropped while running: SIGKILL to the group and to every member found outside
    /// it, then the main process is reaped (it dies of the SIGKILL, so this is quick).
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Over) {
            // A main process that survived SIGKILL and has died since: reap it now. One that
            // still has not stays our zombie rather than block here.
            let unreaped = self
                .report
                .as_ref()
                .is_some_and(|r| r.cleanup.error.is_some());
            if unreaped && matches!(sys::peek_exit(self.main), Ok(Some(_))) {
                let _ = sys::reap(self.main);
            }
            return;
        }
        let members = self.track();
        let running = sys::peek_exit(self.main).ok().flatten().is_none();
        let _ = self
            .tree
            .signal(libc::SIGKILL, running, &members, &HashSet::new());
        let _ = sys::reap(self.main);
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn step(
    name: &str,
    sig: Option<Signal>,
    processes: Option<usize>,
    detail: Option<&str>,
    t0: Instant,
) -> StopStep {
    StopStep {
        step: name.to_string(),
        signal: sig.map(|s| s.to_string()),
        processes,
        detail: detail.map(str::to_string),
        at_ms: t0.elapsed().as_millis() as u64,
    }
}

/// A step that sends a (macOS-numbered) signal; the report names it as on Linux.
fn step_sig(
    name: &str,
    sig: libc::c_int,
    processes: Option<usize>,
    detail: Option<&str>,
    t0: Instant,
) -> StopStep {
    let mut st = step(name, None, processes, detail, t0);
    st.signal = Some(format!("SIG{}", rules::darwin_name(sig)));
    st
}
