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
//! (no pidfds on macOS: see `tree.rs` for the residual race). The stop ladder
//! (`crate::ladder`, over [`TreeMembers`]): the polite signal and SIGCONT to the group and
//! to members outside it, the grace (walking again for late members), then SIGKILL to all,
//! repeated until no member is found or `KILL_WAIT` passes (the rest are survivors).
//!
//! A job is over when its main process has exited and a walk finds no live member. Nothing
//! is process-wide: no signal handler, no thread; the kqueue is not inherited by children.

mod rules;
mod sys;
mod tree;

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::exit_status::Ending;
use crate::ladder::{self, Kill, Ladder, Next, Pace, Sent, KILL_WAIT};
use crate::options::{Leftovers, Signal};
use crate::report::{
    Cleanup, OnSupervisorDeath, ProcessInfo, Spawn, StopOutcome, StopReason, StopReport, Uncovered,
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

/// The macOS job behind [`crate::Job`] (documented there).
#[derive(Debug)]
pub(crate) struct Job {
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
    /// The polite signal (valid on macOS: `rules::check_options` said so).
    signal: Signal,
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

/// A stop in progress: the ladder, and what the walks keep for it.
#[derive(Debug)]
struct Stopping {
    ladder: Ladder,
    kept: Kept,
}

/// What a stop keeps between the ladder's steps.
#[derive(Debug, Default)]
struct Kept {
    /// Members outside the group that already had the polite signal.
    signalled: HashSet<Ident>,
    /// Members outside the group that got SIGKILL by PID.
    killed: HashSet<Ident>,
    /// The most members the group's SIGKILL reached.
    in_group: usize,
}

/// What [`Job::advance`] says.
enum Progress {
    Done,
    /// Wake at this time at the latest (or on a kqueue event).
    Wait(Option<Instant>),
}

impl Job {
    /// Starts `cmd` as a job under `opts`.
    pub(crate) fn spawn(cmd: &mut Command, opts: &Options) -> Result<Job> {
        use std::os::unix::process::CommandExt;
        rules::check_options(opts)?;
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
            signal: opts.signal,
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
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The mechanism the job runs under.
    pub(crate) fn mechanism(&self) -> Mechanism {
        Mechanism::Pgroup
    }

    /// The main process's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.main.get() as u32
    }

    /// The report if the job is over; never blocks.
    pub(crate) fn try_wait(&mut self) -> Result<Option<Report>> {
        Ok(match self.advance()? {
            Progress::Done => self.report.clone(),
            Progress::Wait(_) => None,
        })
    }

    /// Waits until the job is over.
    pub(crate) fn wait(&mut self) -> Result<Report> {
        loop {
            if let Some(r) = self.drive(None)? {
                return Ok(r);
            }
        }
    }

    /// Waits at most `timeout`.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        self.drive(Some(Instant::now() + timeout))
    }

    /// Stops the job with its stop sequence and waits until it is over.
    pub(crate) fn stop(&mut self) -> Result<Report> {
        if matches!(self.phase, Phase::Running | Phase::Draining) {
            self.begin_stop(StopReason::Requested, self.signal, self.grace)?;
        }
        self.wait()
    }

    /// Kills every process of the job at once and waits until it is over.
    pub(crate) fn kill(&mut self) -> Result<Report> {
        match &self.phase {
            Phase::Running | Phase::Draining => {
                self.begin_stop(StopReason::Requested, Signal::KILL, Duration::ZERO)?
            }
            Phase::Stopping(_) => {
                let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over) else {
                    unreachable!()
                };
                let Stopping { ladder, kept } = &mut *s;
                let result = ladder.kill_now(&mut TreeMembers { job: self, kept });
                self.phase = Phase::Stopping(s);
                result?;
            }
            Phase::Over => {}
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
                        self.begin_stop(StopReason::Timeout, self.signal, self.grace)?;
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
                            self.begin_stop(StopReason::Leftovers, self.signal, self.grace)?
                        }
                        Leftovers::Wait => self.phase = Phase::Draining,
                    }
                }
                Phase::Stopping(_) => {
                    let Phase::Stopping(mut s) = std::mem::replace(&mut self.phase, Phase::Over)
                    else {
                        unreachable!()
                    };
                    let Stopping { ladder, kept } = &mut *s;
                    match ladder.advance(&mut TreeMembers { job: self, kept }, &[]) {
                        Ok(Next::Wait(wake)) => {
                            self.phase = Phase::Stopping(s);
                            return Ok(Progress::Wait(Some(wake)));
                        }
                        Ok(Next::Done(stop)) => self.end_stop(stop),
                        Err(e) => {
                            self.phase = Phase::Stopping(s);
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Starts the ladder: the polite signal and SIGCONT, then the grace; or the kill at once.
    fn begin_stop(&mut self, reason: StopReason, polite: Signal, grace: Duration) -> Result<()> {
        let mut kept = Kept::default();
        let members = &mut TreeMembers {
            job: self,
            kept: &mut kept,
        };
        let ladder = Ladder::start(members, reason, polite, grace)?;
        self.phase = Phase::Stopping(Box::new(Stopping { ladder, kept }));
        Ok(())
    }

    /// The ladder is finished: note survivors, clean up.
    fn end_stop(&mut self, stop: StopReport) {
        if stop.outcome == StopOutcome::Survivors {
            let members = self.track();
            self.survivors = self.describe(&members);
        }
        self.finish_with(Some(stop));
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
        let exit = self.main_exit.map(ExitKind::info);
        let exit_status = Ending {
            main: self.main_exit,
            oom_killed: false,
            timed_out: self.timed_out,
            external: None,
            preserve_status: self.preserve_status,
            leftovers: self.leftovers_policy,
            left: !self.leftovers.is_empty(),
        }
        .status();
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
            spawn: Spawn::CommandProcessGroup,
            on_supervisor_death: OnSupervisorDeath::NotCovered(Uncovered::MacOs),
            pid_namespace: false,
            credentials: None,
            cgroup: None,
            cgroup_parent_source: None,
            exit,
            exit_status,
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

/// The polite signal's macOS number.
fn darwin(sig: Signal) -> Result<libc::c_int> {
    rules::darwin_signal(sig).map_err(Error::InvalidOptions)
}

/// The job's processes as the ladder sees them: the group (`killpg`), and the members the
/// walks found outside it (by PID, each checked again just before).
struct TreeMembers<'a> {
    job: &'a mut Job,
    kept: &'a mut Kept,
}

impl ladder::Members for TreeMembers<'_> {
    fn is_empty(&mut self) -> Result<bool> {
        self.job.is_empty()
    }

    fn signal(&mut self, polite: Signal) -> Result<Sent> {
        let polite = darwin(polite)?;
        let members = self.job.track();
        let running = self.job.main_exit.is_none();
        let none = HashSet::new();
        let sent = self.job.tree.signal(polite, running, &members, &none);
        let cont = self
            .job
            .tree
            .signal(libc::SIGCONT, running, &members, &none);
        self.kept.signalled = sent.outside;
        Ok(Sent {
            reached: sent.reached,
            continued: Some(cont.reached),
            detail: None,
        })
    }

    /// Members found late (outside the group) get the polite signal too; the group already
    /// had it.
    fn signal_late(&mut self, polite: Signal) -> Result<usize> {
        let polite = darwin(polite)?;
        let job = &mut *self.job;
        let members = job.tree.scan(job.kq.as_ref());
        let signalled = &mut self.kept.signalled;
        let late = job.tree.signal(polite, false, &members, signalled);
        let _ = job.tree.signal(libc::SIGCONT, false, &members, signalled);
        let n = late.outside.len();
        signalled.extend(late.outside);
        Ok(n)
    }

    /// SIGKILL to the group and to every member outside it.
    fn kill(&mut self) -> Result<Kill> {
        let members = self.job.track();
        let running = self.job.main_exit.is_none();
        let sent = self
            .job
            .tree
            .signal(libc::SIGKILL, running, &members, &HashSet::new());
        self.kept.in_group = sent.reached - sent.outside.len();
        self.kept.killed = sent.outside;
        Ok(Kill::default())
    }

    fn kill_again(&mut self) -> Result<()> {
        let job = &mut *self.job;
        let members = job.tree.scan(job.kq.as_ref());
        let running = job.main_exit.is_none();
        let kept = &mut *self.kept;
        let sent = job
            .tree
            .signal(libc::SIGKILL, running, &members, &kept.killed);
        kept.in_group = kept.in_group.max(sent.reached - sent.outside.len());
        kept.killed.extend(sent.outside);
        Ok(())
    }

    fn live(&mut self) -> Result<usize> {
        Ok(self.job.track().len())
    }

    fn kill_report(&mut self) -> (Option<usize>, String) {
        let outside = self.kept.killed.len();
        (
            Some(self.kept.in_group + outside),
            format!(
                "killpg to the job's group, then SIGKILL by PID to {outside} process(es) \
                 outside it, until none is found"
            ),
        )
    }

    fn pace(&self) -> Pace {
        Pace {
            late: Some(REWALK),
            kill_again: Some(REWALK),
            kill_wait_max: KILL_WAIT,
            int_then_term: false,
        }
    }
}
