//! The Windows backend: a job is a Job Object.
//!
//! **Spawn.** corral creates an anonymous Job Object (no security attributes: its handle is
//! never inheritable, so no child holds it) with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` and
//! the limits asked for, starts the command with `CREATE_SUSPENDED |
//! CREATE_NEW_PROCESS_GROUP` (replacing any creation flags set on the `Command`), assigns
//! it to the job, and only then resumes its main thread (found in a Toolhelp thread
//! snapshot, since std closes the thread handle): not even the first instruction of the
//! command runs outside the job, and every process it starts is born in the job.
//!
//! **Breakaway.** corral never sets `JOB_OBJECT_LIMIT_BREAKAWAY_OK` (nor the silent
//! variant): a process of the job that asks for `CREATE_BREAKAWAY_FROM_JOB` gets an error,
//! so nothing can leave the job.
//!
//! **Nesting.** If corral itself already runs in a job (`IsProcessInJob`), the new job is
//! nested in that one (Windows 8 and later); the report says so. Where assignment is
//! refused (Windows 7 under a job without breakaway, a job that forbids nesting), corral
//! falls back to [`Mechanism::Taskkill`]: `taskkill /T /F` over parent links at stop, which
//! misses descendants whose parent already exited (the report says it is weaker).
//!
//! **Stop.** The stop ladder (`crate::ladder`, over [`JobMembers`]). The polite step, when
//! `opts.signal` is not `KILL` and the grace is not zero: `CTRL_BREAK_EVENT` to the main
//! process's console process group (every process of the job that shares corral's console
//! and did not make its own group) and `WM_CLOSE` to the top-level windows of the job's
//! processes; then the grace, polling the job until it is empty. Then `TerminateJobObject`
//! (exit code [`TERMINATED_EXIT_CODE`] for every process), and a wait until the job is
//! empty. The job is over when it has no active process
//! (`JobObjectBasicAccountingInformation.ActiveProcesses == 0`, polled against a deadline:
//! completion-port notifications are not delivered under Wine) and the main process is
//! reaped.
//!
//! **Exit status.** The main process's exit code as Windows gives it (a `u32` shown as
//! `i32`: `0xC000013A`, the default Ctrl+Break exit, is negative); a terminated main
//! process's is [`TERMINATED_EXIT_CODE`]; 124 on timeout unless `preserve_status` (never
//! 137 as on Unix after a kill: a terminated process's code, 1, is also an ordinary one).
//!
//! **Supervisor death.** The job handle lives only in this process: when it dies, the
//! handle closes and kill-on-close ends every process of the job.
//!
//! **Limits.** `memory_max` → `JobMemoryLimit`, `pids_max` → `ActiveProcessLimit`
//! (processes, not threads as on Linux); the others are refused at spawn.

mod job_object;
mod process;

use std::io;
use std::os::windows::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED};

use crate::exit_status::{Ending, ExitKind};
use crate::ladder::{self, Dialect, Kill, Ladder, Next, Pace, Sent, KILL_WAIT};
use crate::{
    Cleanup, Error, Leftovers, LimitValue, Limits, LimitsReport, Mechanism, MechanismRequest,
    OnSupervisorDeath, Options, ProcessInfo, Report, Result, Signal, Spawn, StopOutcome,
    StopReason, StopReport, Supervisor, Uncovered, REPORT_VERSION,
};
use job_object::{JobLimits, JobObject};

/// The exit code `TerminateJobObject` (and the taskkill fallback's `/F`) gives every
/// process it ends.
pub const TERMINATED_EXIT_CODE: u32 = 1;

/// How often a waiting job is polled.
const POLL: Duration = Duration::from_millis(10);

/// What holds the job's processes.
#[derive(Debug)]
enum Containment {
    /// A Job Object with kill-on-close.
    JobObject(JobObject),
    /// No Job Object: `taskkill /T /F` over parent links at stop.
    Taskkill,
}

/// The Windows job behind [`crate::Job`] (documented there).
#[derive(Debug)]
pub(crate) struct Job {
    id: String,
    command: Vec<String>,
    name: Option<String>,
    child: Child,
    pid: u32,
    containment: Containment,
    mechanism_reason: String,
    opts: Options,
    started: Instant,
    deadline: Option<Instant>,
    limits: Option<LimitsReport>,
    main_exit: Option<i32>,
    leftovers: Vec<ProcessInfo>,
    report: Option<Report>,
}

impl Job {
    /// Starts `cmd` as a job under `opts`. corral sets the command's creation flags
    /// (`CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP`), replacing any set before.
    pub(crate) fn spawn(cmd: &mut Command, opts: &Options) -> Result<Job> {
        check_options(opts)?;
        let (job_limits, limits) = job_limits(&opts.limits)?;
        let nested = job_object::current_process_in_job().unwrap_or(false);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut command = vec![program.clone()];
        command.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));

        let job = JobObject::create(job_limits);
        if let (Err(e), Some(_)) = (&job, &limits) {
            return Err(limit_needs_job(
                &opts.limits,
                format!("CreateJobObjectW failed: {e}"),
            ));
        }
        cmd.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP);
        let mut child = cmd.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound {
                program: program.clone(),
            },
            io::ErrorKind::PermissionDenied => Error::NotExecutable {
                program: program.clone(),
                source,
            },
            _ => Error::Spawn {
                program: program.clone(),
                stage: "CreateProcessW (suspended)".into(),
                source,
            },
        })?;
        let pid = child.id();
        let fallback = |why: String| {
            format!(
                "fallback: {why}; taskkill /T /F follows parent PIDs and misses descendants \
                 whose parent already exited"
            )
        };
        let (containment, mechanism_reason) = match job {
            Ok(job) => match job.assign(&child) {
                Ok(()) if nested => (
                    Containment::JobObject(job),
                    "job object, nested in the job corral runs in".to_string(),
                ),
                Ok(()) => (Containment::JobObject(job), "job object".to_string()),
                Err(e) => {
                    if limits.is_some() {
                        kill_suspended(&mut child);
                        return Err(limit_needs_job(
                            &opts.limits,
                            format!("AssignProcessToJobObject refused: {e}"),
                        ));
                    }
                    let why = format!("AssignProcessToJobObject refused: {e}");
                    (Containment::Taskkill, fallback(why))
                }
            },
            Err(e) => (
                Containment::Taskkill,
                fallback(format!("CreateJobObjectW failed: {e}")),
            ),
        };
        if let Err(source) = process::resume_threads(pid) {
            kill_suspended(&mut child);
            return Err(Error::Process {
                op: "resuming the main thread (Toolhelp snapshot + ResumeThread)".into(),
                pid,
                source,
            });
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let started = Instant::now();
        Ok(Job {
            id: format!(
                "corral-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            command,
            name: opts.name.clone(),
            child,
            pid,
            containment,
            mechanism_reason,
            opts: opts.clone(),
            started,
            deadline: opts.timeout.map(|t| started + t),
            limits,
            main_exit: None,
            leftovers: Vec::new(),
            report: None,
        })
    }

    /// The job's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The mechanism the job runs under.
    pub(crate) fn mechanism(&self) -> Mechanism {
        match self.containment {
            Containment::JobObject(_) => Mechanism::JobObject,
            Containment::Taskkill => Mechanism::Taskkill,
        }
    }

    /// The main process's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The report if the job is over; never blocks (beyond a stop sequence the timeout or
    /// the leftovers policy starts now).
    pub(crate) fn try_wait(&mut self) -> Result<Option<Report>> {
        self.poll(Some(Instant::now()))
    }

    /// Waits until the job is over.
    pub(crate) fn wait(&mut self) -> Result<Report> {
        loop {
            if let Some(r) = self.poll(None)? {
                return Ok(r);
            }
        }
    }

    /// Waits at most `timeout`.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        self.poll(Some(Instant::now() + timeout))
    }

    /// Stops the job with its stop sequence and waits until it is over.
    pub(crate) fn stop(&mut self) -> Result<Report> {
        self.stop_now(self.opts.signal, self.opts.grace)
    }

    /// Kills every process of the job at once and waits until it is over.
    pub(crate) fn kill(&mut self) -> Result<Report> {
        self.stop_now(Signal::KILL, Duration::ZERO)
    }

    fn stop_now(&mut self, polite: Signal, grace: Duration) -> Result<Report> {
        if let Some(r) = &self.report {
            return Ok(r.clone());
        }
        let stop = self.stop_sequence(StopReason::Requested, polite, grace)?;
        self.finish(Some(stop), false)
    }

    /// Advances the job until it is over (`Some`) or `until` passes (`None`).
    fn poll(&mut self, until: Option<Instant>) -> Result<Option<Report>> {
        loop {
            if let Some(r) = &self.report {
                return Ok(Some(r.clone()));
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                let (polite, grace) = (self.opts.signal, self.opts.grace);
                let stop = self.stop_sequence(StopReason::Timeout, polite, grace)?;
                return self.finish(Some(stop), true).map(Some);
            }
            if self.main_exit.is_none() && self.reap_main()? {
                let members = self.members()?;
                if !members.is_empty() {
                    self.leftovers = describe(&members);
                    if matches!(self.opts.leftovers, Leftovers::Kill | Leftovers::Fail) {
                        let (polite, grace) = (self.opts.signal, self.opts.grace);
                        let stop = self.stop_sequence(StopReason::Leftovers, polite, grace)?;
                        return self.finish(Some(stop), false).map(Some);
                    }
                }
            }
            if self.main_exit.is_some() && self.is_empty()? {
                return self.finish(None, false).map(Some);
            }
            let mut nap = POLL;
            if let Some(u) = until {
                if now >= u {
                    return Ok(None);
                }
                nap = nap.min(u - now);
            }
            if let Some(d) = self.deadline {
                nap = nap.min(d.saturating_duration_since(now));
            }
            thread::sleep(nap);
        }
    }

    /// Reaps the main process if it exited; true once it has.
    fn reap_main(&mut self) -> Result<bool> {
        if self.main_exit.is_some() {
            return Ok(true);
        }
        let status = self.child.try_wait().map_err(|source| Error::Process {
            op: "WaitForSingleObject/GetExitCodeProcess on the main process".into(),
            pid: self.pid,
            source,
        })?;
        // On Windows an exit status always has a code.
        self.main_exit = status.map(|s| s.code().unwrap_or(TERMINATED_EXIT_CODE as i32));
        Ok(self.main_exit.is_some())
    }

    /// The running processes of the job (the main process included while it runs).
    fn members(&self) -> Result<Vec<u32>> {
        match &self.containment {
            Containment::JobObject(job) => job.pids().map_err(|e| {
                Error::sys("QueryInformationJobObject(JobObjectBasicProcessIdList)", e)
            }),
            Containment::Taskkill => {
                let all = process::list_processes()
                    .map_err(|e| Error::sys("CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS)", e))?;
                let mut pids = process::descendants(&all, self.pid);
                if self.main_exit.is_none() && all.contains_key(&self.pid) {
                    pids.insert(0, self.pid);
                }
                pids.retain(|&p| process::is_running(p));
                Ok(pids)
            }
        }
    }

    /// True when no process of the job runs and the main process is reaped.
    fn is_empty(&mut self) -> Result<bool> {
        if !self.reap_main()? {
            return Ok(false);
        }
        match &self.containment {
            Containment::JobObject(job) => job.active_processes().map(|n| n == 0).map_err(|e| {
                Error::sys(
                    "QueryInformationJobObject(JobObjectBasicAccountingInformation)",
                    e,
                )
            }),
            Containment::Taskkill => Ok(self.members()?.is_empty()),
        }
    }

    /// Ends every process of the job at once; returns how, for the report.
    fn terminate(&mut self) -> Result<String> {
        match &self.containment {
            Containment::JobObject(job) => {
                job.terminate(TERMINATED_EXIT_CODE)
                    .map_err(|e| Error::sys("TerminateJobObject", e))?;
                Ok("TerminateJobObject".into())
            }
            Containment::Taskkill => {
                let pids = self.members()?;
                if pids.is_empty() {
                    return Ok("taskkill: nothing left".into());
                }
                let mut cmd = Command::new("taskkill");
                cmd.args(["/T", "/F"]);
                for p in &pids {
                    cmd.arg("/PID").arg(p.to_string());
                }
                let out = cmd
                    .output()
                    .map_err(|e| Error::sys("running taskkill /T /F", e))?;
                Ok(format!("taskkill /T /F ({})", out.status))
            }
        }
    }

    /// The stop ladder, polled every [`POLL`] (the job gives no event of its own:
    /// completion-port notifications are not delivered under Wine).
    fn stop_sequence(
        &mut self,
        reason: StopReason,
        polite: Signal,
        grace: Duration,
    ) -> Result<StopReport> {
        let members = &mut JobMembers {
            job: self,
            how: String::new(),
        };
        let mut ladder = Ladder::start(members, reason, polite, grace)?;
        loop {
            match ladder.advance(members, &[])? {
                Next::Done(stop) => return Ok(stop),
                Next::Wait(wake) => {
                    thread::sleep(POLL.min(wake.saturating_duration_since(Instant::now())))
                }
            }
        }
    }

    /// Builds the report once the job is over, and keeps it.
    fn finish(&mut self, stop: Option<StopReport>, timed_out: bool) -> Result<Report> {
        let survivors = match stop.as_ref().map(|s| s.outcome) {
            Some(StopOutcome::Survivors) => describe(&self.members()?),
            _ => Vec::new(),
        };
        self.reap_main()?;
        let code = self.main_exit;
        let exit_status = Ending {
            // A main process not seen to exit (it survived the kill) counts as terminated.
            main: Some(ExitKind::Code(code.unwrap_or(TERMINATED_EXIT_CODE as i32))),
            oom_killed: false,
            timed_out,
            external: None,
            preserve_status: self.opts.preserve_status,
            leftovers: self.opts.leftovers,
            left: !self.leftovers.is_empty(),
        }
        .status();
        let mechanism = self.mechanism();
        let on_supervisor_death = match mechanism {
            Mechanism::JobObject => OnSupervisorDeath::JobObject,
            _ => OnSupervisorDeath::NotCovered(Uncovered::NoJobObject),
        };
        let report = Report {
            version: REPORT_VERSION,
            id: self.id.clone(),
            name: self.name.clone(),
            not_registered: self
                .opts
                .register
                .then(|| "the job registry is Linux-only".to_string()),
            command: self.command.clone(),
            pid: self.pid,
            mechanism,
            mechanism_reason: self.mechanism_reason.clone(),
            degraded: mechanism == Mechanism::Taskkill,
            spawn: Spawn::CreateProcessSuspended,
            on_supervisor_death,
            pid_namespace: false,
            credentials: None,
            cgroup: None,
            cgroup_parent_source: None,
            exit: code.map(|c| ExitKind::Code(c).info()),
            exit_status,
            timed_out,
            signals_received: Vec::new(),
            stop,
            leftovers: std::mem::take(&mut self.leftovers),
            survivors,
            limits: self.limits.clone(),
            usage: None,
            oom_killed: false,
            cleanup: Cleanup::default(),
            duration_ms: self.started.elapsed().as_millis() as u64,
        };
        self.report = Some(report.clone());
        Ok(report)
    }
}

impl Drop for Job {
    /// Dropping a running job kills it: `TerminateJobObject` (or taskkill) and the main
    /// process, then reaps the main process (already terminated, so the wait is short).
    fn drop(&mut self) {
        if self.report.is_some() {
            return;
        }
        let _ = self.terminate();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job's processes as the ladder sees them: the Job Object's (or those taskkill would
/// find by parent links).
struct JobMembers<'a> {
    job: &'a mut Job,
    /// How the kill was done, for the kill step.
    how: String,
}

impl ladder::Members for JobMembers<'_> {
    fn is_empty(&mut self) -> Result<bool> {
        self.job.is_empty()
    }

    /// `CTRL_BREAK_EVENT` to the main process's console process group and `WM_CLOSE` to
    /// the top-level windows of the job's processes, whatever the polite signal.
    fn signal(&mut self, _polite: Signal) -> Result<Sent> {
        let members = self.job.members()?;
        let pid = self.job.pid;
        let mut detail = Vec::new();
        match process::ctrl_break(pid) {
            Ok(()) => detail.push(format!("CTRL_BREAK_EVENT to process group {pid}")),
            Err(e) => detail.push(format!(
                "CTRL_BREAK_EVENT to process group {pid} failed: {e}"
            )),
        }
        let windows = process::close_windows(&members);
        detail.push(format!("WM_CLOSE to {windows} window(s)"));
        Ok(Sent {
            reached: members.len(),
            continued: None,
            detail: Some(detail.join("; ")),
        })
    }

    /// `TerminateJobObject`, or taskkill.
    fn kill(&mut self) -> Result<Kill> {
        let members = self.job.members()?.len();
        self.how = self.job.terminate()?;
        Ok(Kill {
            counted: Some(members),
            live: None,
        })
    }

    fn live(&mut self) -> Result<usize> {
        Ok(self.job.members()?.len())
    }

    fn kill_report(&mut self) -> (Option<usize>, String) {
        (None, std::mem::take(&mut self.how))
    }

    fn pace(&self) -> Pace {
        Pace {
            late: None,
            kill_again: None,
            kill_wait_max: KILL_WAIT,
            int_then_term: false,
        }
    }

    fn dialect(&self) -> Dialect {
        Dialect::Windows
    }
}

/// Kills a main process that never ran (still suspended) and reaps it.
fn kill_suspended(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The report's view of the job's processes (the exe name from a process snapshot; the
/// group and session fields are Unix notions and stay false).
fn describe(pids: &[u32]) -> Vec<ProcessInfo> {
    let all = process::list_processes().unwrap_or_default();
    pids.iter()
        .map(|&pid| ProcessInfo {
            pid,
            cmdline: all.get(&pid).map(|p| p.exe.clone()).unwrap_or_default(),
            left_process_group: false,
            left_session: false,
        })
        .collect()
}

/// Refuses the options that have no meaning on Windows, rather than ignoring them.
fn check_options(opts: &Options) -> Result<()> {
    let linux_only = |what: &str| {
        Err(Error::InvalidOptions(format!(
            "{what} is Linux-only; on Windows a job is a Job Object"
        )))
    };
    match opts.mechanism {
        MechanismRequest::Auto => {}
        MechanismRequest::Cgroup => return linux_only("mechanism `cgroup`"),
        MechanismRequest::Pgroup => return linux_only("mechanism `pgroup`"),
    }
    if opts.cgroup_parent.is_some() {
        return linux_only("a cgroup parent");
    }
    if opts.pid_namespace {
        return linux_only("a PID namespace");
    }
    if opts.supervisor != Supervisor::Auto {
        return linux_only("choosing the pgroup supervisor");
    }
    if opts.helper.is_some() {
        return linux_only("corral-helper");
    }
    Ok(())
}

/// Maps `Limits` onto a Job Object's: `memory_max` → `JobMemoryLimit`, `pids_max` →
/// `ActiveProcessLimit`; the others are an error.
fn job_limits(limits: &Limits) -> Result<(JobLimits, Option<LimitsReport>)> {
    if limits.is_empty() {
        return Ok((JobLimits::default(), None));
    }
    limits.validate().map_err(Error::InvalidOptions)?;
    let unavailable = |file: &str, controller: &str, reason: &str| Error::LimitUnavailable {
        file: file.into(),
        controller: controller.into(),
        reason: reason.into(),
        fix: "on Windows only memory max (JobMemoryLimit) and pids max (ActiveProcessLimit) \
              apply; drop this one"
            .into(),
    };
    if limits.memory_high.is_some() {
        return Err(unavailable(
            "memory.high",
            "memory",
            "a Job Object has a hard memory limit only, no throttle",
        ));
    }
    if limits.cpu_max.is_some() {
        return Err(unavailable(
            "cpu.max",
            "cpu",
            "Job Object CPU rate control is not supported by corral yet",
        ));
    }
    if limits.cpu_weight.is_some() {
        return Err(unavailable(
            "cpu.weight",
            "cpu",
            "Job Object CPU weights are not supported by corral yet",
        ));
    }
    let mut out = JobLimits::default();
    let mut report = LimitsReport::default();
    if let Some(v) = limits.memory_max {
        if let LimitValue::Value(bytes) = v {
            out.memory = Some(usize::try_from(bytes).map_err(|_| {
                Error::InvalidOptions(format!("memory max {bytes} does not fit this platform"))
            })?);
        }
        report
            .applied
            .insert("JobMemoryLimit".into(), v.to_string());
    }
    if let Some(v) = limits.pids_max {
        if let LimitValue::Value(n) = v {
            out.processes = Some(u32::try_from(n).map_err(|_| {
                Error::InvalidOptions(format!("pids max {n} is above a Job Object's 2^32-1"))
            })?);
        }
        report
            .applied
            .insert("ActiveProcessLimit".into(), v.to_string());
    }
    Ok((out, Some(report)))
}

/// The error when limits were asked for and no Job Object could hold the job.
fn limit_needs_job(limits: &Limits, reason: String) -> Error {
    let (file, controller) = if limits.memory_max.is_some() {
        ("memory.max", "memory")
    } else {
        ("pids.max", "pids")
    };
    Error::LimitUnavailable {
        file: file.into(),
        controller: controller.into(),
        reason,
        fix: "limits need a Job Object; run without limits to get the taskkill fallback".into(),
    }
}
