//! What happened to a job: the typed report, its JSON form and the one-line summary.
//!
//! The JSON schema is documented in `docs/report.md` and versioned by [`REPORT_VERSION`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::options::Signal;

/// Version of the report schema; bumped on any incompatible change.
pub const REPORT_VERSION: u32 = 1;

/// The full account of one job.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// Schema version ([`REPORT_VERSION`]).
    pub version: u32,
    /// The job's id (also the name of its cgroup leaf).
    pub id: String,
    /// The job's name ([`crate::Options::name`]).
    pub name: Option<String>,
    /// Why the job was not recorded in the job registry, when registration was asked for
    /// and failed (`None`: it was, or [`crate::Options::register`] was off).
    pub not_registered: Option<String>,
    /// The command line as given.
    pub command: Vec<String>,
    /// The main process's PID.
    pub pid: u32,
    /// The containment mechanism actually used.
    pub mechanism: crate::Mechanism,
    /// Why that mechanism (and why not a stronger one, when it is a fallback).
    pub mechanism_reason: String,
    /// True when the mechanism is weaker than what `auto` would give on a capable host.
    pub degraded: bool,
    /// How the main process was started.
    pub spawn: Spawn,
    /// What happens to the job if the process supervising it (the `corral` CLI, or the
    /// program using the library) dies without ending it.
    pub on_supervisor_death: OnSupervisorDeath,
    /// The main process ran as PID 1 of a new PID namespace
    /// ([`crate::Options::pid_namespace`]): when it exited, the kernel killed every process
    /// left in the namespace before corral could see it, so `leftovers` stays empty.
    pub pid_namespace: bool,
    /// Who the main process ran as, with no capability and `no_new_privs`
    /// (`JobCommand::credentials`, Linux); `None`: as the caller.
    pub credentials: Option<crate::Credentials>,
    /// The job's cgroup (cgroup mechanism only).
    pub cgroup: Option<PathBuf>,
    /// How the cgroup parent was chosen (cgroup mechanism only).
    pub cgroup_parent_source: Option<CgroupParentSource>,
    /// How the main process ended (`None` if it could not be observed).
    pub exit: Option<ExitInfo>,
    /// The exit status the CLI returns.
    pub exit_status: i32,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Signals corral received, in order, and what became of each.
    pub signals_received: Vec<SignalReceived>,
    /// The stop sequence, if one ran.
    pub stop: Option<StopReport>,
    /// Processes still running when the main process exited. With `Leftovers::Wait`, a
    /// stop that ends the wait (timeout, signal, outside stop) brings the list up to date:
    /// processes started since are added, and those still running get their current
    /// command line (a daemon renames itself after it forks).
    pub leftovers: Vec<ProcessInfo>,
    /// Processes still present after the stop sequence (must be empty).
    pub survivors: Vec<ProcessInfo>,
    /// The resource limits applied to the job's cgroup (`None` when none were asked for).
    pub limits: Option<LimitsReport>,
    /// What the job's cgroup accounted, read once the job was empty, just before the cgroup
    /// was removed (cgroup mechanism only).
    pub usage: Option<Usage>,
    /// The main process was killed by the kernel's OOM killer (it died of SIGKILL that
    /// corral did not send, and the cgroup counted an OOM kill). The exit status is 137.
    pub oom_killed: bool,
    /// Cleanup of the job's resources.
    pub cleanup: Cleanup,
    /// Wall time from spawn to the end of cleanup, in milliseconds.
    pub duration_ms: u64,
}

/// How the main process was started (the report's `spawn`; its text is the [`Display`]
/// form).
///
/// [`Display`]: fmt::Display
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spawn {
    /// `clone3(CLONE_INTO_CGROUP|CLONE_PIDFD)` and the like: `clone3` with `CLONE_PIDFD`,
    /// the child born in the job's cgroup when `into_cgroup`, in a new PID namespace when
    /// `new_pid_namespace` (and a new user namespace too when `new_user_namespace`).
    Clone3 {
        /// `CLONE_INTO_CGROUP`.
        into_cgroup: bool,
        /// `CLONE_NEWPID`.
        new_pid_namespace: bool,
        /// `CLONE_NEWUSER` (only with `new_pid_namespace`).
        new_user_namespace: bool,
    },
    /// `fork + write to cgroup.procs before exec`: the fallback without `clone3`.
    ForkThenJoinCgroup,
    /// `fork + pidfd_open`: the fallback without `clone3`, no cgroup.
    ForkThenPidfd,
    /// `std::process::Command (fork), joined the cgroup before exec`.
    CommandJoinedCgroup,
    /// `std::process::Command (fork), in-process subreaper`.
    CommandInProcessSubreaper,
    /// `std::process::Command under a corral supervisor (subreaper)`.
    CommandUnderSupervisor,
    /// `std::process::Command with process_group(0)` (macOS).
    CommandProcessGroup,
    /// `CreateProcessW(CREATE_SUSPENDED|CREATE_NEW_PROCESS_GROUP), AssignProcessToJobObject,
    /// ResumeThread` (Windows).
    CreateProcessSuspended,
}

impl fmt::Display for Spawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match *self {
            Spawn::Clone3 {
                into_cgroup,
                new_pid_namespace,
                new_user_namespace,
            } => {
                f.write_str("clone3(")?;
                if into_cgroup {
                    f.write_str("CLONE_INTO_CGROUP|")?;
                }
                f.write_str("CLONE_PIDFD")?;
                if new_pid_namespace {
                    f.write_str("|CLONE_NEWPID")?;
                }
                if new_user_namespace {
                    f.write_str("|CLONE_NEWUSER")?;
                }
                return f.write_str(")");
            }
            Spawn::ForkThenJoinCgroup => "fork + write to cgroup.procs before exec",
            Spawn::ForkThenPidfd => "fork + pidfd_open",
            Spawn::CommandJoinedCgroup => {
                "std::process::Command (fork), joined the cgroup before exec"
            }
            Spawn::CommandInProcessSubreaper => {
                "std::process::Command (fork), in-process subreaper"
            }
            Spawn::CommandUnderSupervisor => {
                "std::process::Command under a corral supervisor (subreaper)"
            }
            Spawn::CommandProcessGroup => "std::process::Command with process_group(0)",
            Spawn::CreateProcessSuspended => {
                "CreateProcessW(CREATE_SUSPENDED|CREATE_NEW_PROCESS_GROUP), \
                 AssignProcessToJobObject, ResumeThread"
            }
        };
        f.write_str(text)
    }
}

/// What ends the job if the process supervising it (the `corral` CLI, or the program using
/// the library) dies without ending it (the report's `on_supervisor_death`; its text is the
/// [`Display`] form).
///
/// [`Display`]: fmt::Display
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnSupervisorDeath {
    /// `killed by the watchdog (pid N)`: the host's watchdog kills the cgroup job and
    /// removes its cgroup; with `pid_namespace`, `, and by the kernel (PID namespace)` too.
    Watchdog {
        /// The watchdog's PID.
        pid: u32,
        /// The main process is PID 1 of its own PID namespace as well.
        pid_namespace: bool,
    },
    /// `killed by corral-helper's privileged process (pid N)`: a job of the privileged
    /// helper, whose root guardian kills the job's cgroup when the supervisor ends.
    HelperGuardian {
        /// The guardian's PID.
        pid: u32,
    },
    /// `killed by its supervisor process when the host goes away`: a pgroup job under a
    /// `corral __supervise` process.
    SupervisorProcess,
    /// `killed by the kernel: ... (no watchdog)`: a cgroup job whose main process is PID 1
    /// of its own PID namespace, without a watchdog.
    PidNamespace,
    /// `killed by the kernel: ... (parent-death signal), ...`: an in-process pgroup job
    /// whose main process is PID 1 of its own PID namespace.
    PidNamespaceParentDeathSignal,
    /// `killed by Windows when the job handle closes with the supervisor
    /// (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE)`.
    JobObject,
    /// `not covered: <why>`.
    NotCovered(Uncovered),
}

impl OnSupervisorDeath {
    /// Whether something ends the job if its supervisor dies.
    pub fn is_covered(&self) -> bool {
        !matches!(self, OnSupervisorDeath::NotCovered(_))
    }
}

impl fmt::Display for OnSupervisorDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnSupervisorDeath::Watchdog { pid, pid_namespace } => {
                write!(f, "killed by the watchdog (pid {pid})")?;
                if *pid_namespace {
                    f.write_str(", and by the kernel (PID namespace)")?;
                }
                Ok(())
            }
            OnSupervisorDeath::HelperGuardian { pid } => {
                write!(
                    f,
                    "killed by corral-helper's privileged process (pid {pid})"
                )
            }
            OnSupervisorDeath::SupervisorProcess => {
                f.write_str("killed by its supervisor process when the host goes away")
            }
            OnSupervisorDeath::PidNamespace => f.write_str(
                "killed by the kernel: COMMAND is PID 1 of its own PID namespace and dies with \
                 this process (no watchdog)",
            ),
            OnSupervisorDeath::PidNamespaceParentDeathSignal => f.write_str(
                "killed by the kernel: COMMAND is PID 1 of its own PID namespace and dies with \
                 this process (parent-death signal), which ends every process in the namespace",
            ),
            OnSupervisorDeath::JobObject => f.write_str(
                "killed by Windows when the job handle closes with the supervisor \
                 (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE)",
            ),
            OnSupervisorDeath::NotCovered(why) => write!(f, "not covered: {why}"),
        }
    }
}

/// Why nothing ends a job whose supervisor dies ([`OnSupervisorDeath::NotCovered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Uncovered {
    /// The watchdog is turned off ([`crate::DebugKnobs::no_watchdog`]).
    WatchdogOff,
    /// The watchdog could not be started; the error, with its causes.
    WatchdogFailed(String),
    /// A cgroup job with neither a watchdog nor the helper's guardian.
    NoWatchdog,
    /// An in-process pgroup job: its subreaper is the supervisor itself.
    InProcessPgroup,
    /// macOS has no watchdog or subreaper.
    MacOs,
    /// A Windows job without a Job Object.
    NoJobObject,
}

impl fmt::Display for Uncovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Uncovered::WatchdogOff => "the watchdog is turned off (--debug-no-watchdog)",
            Uncovered::WatchdogFailed(e) => {
                return write!(f, "the watchdog could not be started: {e}")
            }
            Uncovered::NoWatchdog => "no watchdog",
            Uncovered::InProcessPgroup => {
                "the job's subreaper is this process itself (in-process pgroup), and nothing \
                 outlives it to stop the job: its processes are re-parented and keep running"
            }
            Uncovered::MacOs => {
                "macOS has no watchdog or subreaper; the job's processes outlive corral"
            }
            Uncovered::NoJobObject => {
                "no job object, so nothing ends the job when its supervisor dies"
            }
        };
        f.write_str(text)
    }
}

/// Where the parent directory of the job's cgroup came from (the report's
/// `cgroup_parent_source`: `option`, `env`, `default`, `delegated` or `caller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum CgroupParentSource {
    /// [`crate::Options::cgroup_parent`] (`--cgroup-parent`).
    Option,
    /// `CORRAL_CGROUP_PARENT`.
    Env,
    /// `<mount>/corral`, created by corral when missing (corral runs in the root cgroup).
    Default,
    /// The cgroup corral runs in, delegated to it (or a scope the CLI obtained from
    /// systemd).
    Delegated,
    /// The cgroup corral runs in, not delegated but writable, on a host whose tree systemd
    /// does not manage (inside another corral's job, a Slurm step, a container): a job
    /// stays inside what contains its caller.
    Caller,
}

impl CgroupParentSource {
    /// The name the report gives it.
    pub fn name(self) -> &'static str {
        match self {
            CgroupParentSource::Option => "option",
            CgroupParentSource::Env => "env",
            CgroupParentSource::Default => "default",
            CgroupParentSource::Delegated => "delegated",
            CgroupParentSource::Caller => "caller",
        }
    }
}

impl fmt::Display for CgroupParentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A signal corral received while the job ran, and what became of it (an entry of the
/// report's `signals_received`: `SIGINT`, `SIGUSR1 (passed on to COMMAND)`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalReceived {
    /// It stopped the job (or, during a stop, may have cut the grace short).
    Stop(Signal),
    /// One of [`crate::Options::forward_signals`], passed on to the main process.
    PassedOn(Signal),
    /// One of [`crate::Options::forward_signals`], dropped: the main process had exited.
    Dropped(Signal),
}

impl SignalReceived {
    /// The signal.
    pub fn signal(self) -> Signal {
        match self {
            SignalReceived::Stop(s) | SignalReceived::PassedOn(s) | SignalReceived::Dropped(s) => s,
        }
    }
}

impl fmt::Display for SignalReceived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalReceived::Stop(s) => write!(f, "{s}"),
            SignalReceived::PassedOn(s) => write!(f, "{s} (passed on to COMMAND)"),
            SignalReceived::Dropped(s) => write!(f, "{s} (dropped: COMMAND has exited)"),
        }
    }
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ExitInfo {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// Why a stop sequence ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum StopReason {
    /// The timeout passed.
    Timeout,
    /// The main process exited and others were still running (`leftovers kill`).
    Leftovers,
    /// corral received a signal.
    Signal,
    /// The embedding program asked for it.
    Requested,
    /// Another process asked for it through the job registry (`corral kill`); see
    /// [`StopReport::requested_by`].
    External,
}

/// Who asked for an external stop (from the control socket's `SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Requester {
    /// The requesting process's PID.
    pub pid: u32,
    /// Its effective uid.
    pub uid: u32,
}

/// The stop sequence as it ran.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StopReport {
    /// Why it ran.
    pub reason: StopReason,
    /// Each step, in order.
    pub steps: Vec<StopStep>,
    /// How it ended.
    pub outcome: StopOutcome,
    /// Reason `external`: the process that asked.
    pub requested_by: Option<Requester>,
}

/// How a stop sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum StopOutcome {
    /// Everything exited within the grace after the polite signal.
    Exited,
    /// Something had to be killed with SIGKILL.
    Killed,
    /// Something survived even SIGKILL (see `survivors`).
    Survivors,
}

/// One step of the stop sequence.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StopStep {
    /// What the step did.
    pub step: StepKind,
    /// The signal sent, where the step sends one.
    pub signal: Option<StepSignal>,
    /// How many processes it reached, where it counts them.
    pub processes: Option<usize>,
    /// Free-form detail (`cgroup.kill`, `grace skipped by a second signal`, ...).
    pub detail: Option<String>,
    /// Milliseconds since the stop sequence began.
    pub at_ms: u64,
}

/// What one step of the stop sequence did (the report's `step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum StepKind {
    /// Every member held still before the polite signal (pgroup's SIGSTOP).
    Freeze,
    /// The polite signal (or SIGTERM after a polite SIGINT).
    Signal,
    /// SIGCONT after the polite signal.
    Continue,
    /// The grace ended (see the step's detail for how).
    Grace,
    /// SIGKILL to everything.
    Kill,
    /// The job was empty.
    Empty,
}

impl StepKind {
    /// The name the report gives it (`freeze`, `signal`, `continue`, `grace`, `kill`,
    /// `empty`).
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Freeze => "freeze",
            StepKind::Signal => "signal",
            StepKind::Continue => "continue",
            StepKind::Grace => "grace",
            StepKind::Kill => "kill",
            StepKind::Empty => "empty",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The signal a stop step sent, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSignal {
    /// With its `SIG` prefix (`SIGTERM`): Linux and macOS.
    Prefixed(Signal),
    /// Bare (`TERM`): the Windows backend's word for its polite step, kept since reports
    /// are read by programs.
    Bare(Signal),
}

impl StepSignal {
    /// The signal.
    pub fn signal(self) -> Signal {
        match self {
            StepSignal::Prefixed(s) | StepSignal::Bare(s) => s,
        }
    }
}

impl fmt::Display for StepSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepSignal::Prefixed(s) => write!(f, "{s}"),
            StepSignal::Bare(s) => f.write_str(&s.name()),
        }
    }
}

/// The report's fields whose JSON is their [`Display`](fmt::Display) text: the strings the
/// schema (`docs/report.md`) has always had.
#[cfg(feature = "serde")]
macro_rules! serialize_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
#[cfg(feature = "serde")]
serialize_as_text!(Spawn, OnSupervisorDeath, SignalReceived, StepSignal);

/// One process of the job, as seen when it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ProcessInfo {
    /// Its PID.
    pub pid: u32,
    /// Its command line.
    pub cmdline: String,
    /// Whether it had left the main process's process group.
    pub left_process_group: bool,
    /// Whether it had left the main process's session.
    pub left_session: bool,
}

/// The resource limits a job's cgroup got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LimitsReport {
    /// Each file written in the job's cgroup, with the value written
    /// (`"memory.max": "268435456"`, `"cpu.max": "50000 100000"`).
    pub applied: BTreeMap<String, String>,
    /// Controllers corral enabled in the parent's `cgroup.subtree_control` for this job
    /// (those already enabled are not listed).
    pub controllers_enabled: Vec<String>,
    /// Where the calling process moved itself before enabling them, when the parent was its
    /// own cgroup (cgroup v2 allows controllers only in a cgroup without processes).
    pub moved_self_to: Option<PathBuf>,
}

/// What a job's cgroup accounted over the job's life (its whole subtree). A figure is
/// `None` where this kernel or this cgroup does not keep it (the controller is not enabled
/// for the job, or the kernel predates the file); `unavailable` names those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Usage {
    /// User CPU time, in microseconds (`cpu.stat` `user_usec`; kept with or without the
    /// cpu controller).
    pub cpu_user_usec: Option<u64>,
    /// System CPU time, in microseconds (`cpu.stat` `system_usec`).
    pub cpu_system_usec: Option<u64>,
    /// Periods in which `cpu.max` throttled the job (`cpu.stat` `nr_throttled`; cpu
    /// controller only).
    pub cpu_nr_throttled: Option<u64>,
    /// Total time the job was throttled, in microseconds (`cpu.stat` `throttled_usec`; cpu
    /// controller only).
    pub cpu_throttled_usec: Option<u64>,
    /// The most memory the job used at once, in bytes (`memory.peak`; memory controller,
    /// Linux 5.19).
    pub memory_peak_bytes: Option<u64>,
    /// The most tasks the job had at once (`pids.peak`; pids controller, Linux 6.1).
    pub pids_peak: Option<u64>,
    /// Processes of the job the OOM killer killed (`memory.events` `oom_kill`; memory
    /// controller).
    pub oom_kills: Option<u64>,
    /// The fields above that are `None` (in the JSON, their names).
    pub unavailable: Vec<UsageField>,
}

/// A figure of [`Usage`], named in its `unavailable` as the JSON names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum UsageField {
    /// [`Usage::cpu_user_usec`].
    CpuUserUsec,
    /// [`Usage::cpu_system_usec`].
    CpuSystemUsec,
    /// [`Usage::cpu_nr_throttled`].
    CpuNrThrottled,
    /// [`Usage::cpu_throttled_usec`].
    CpuThrottledUsec,
    /// [`Usage::memory_peak_bytes`].
    MemoryPeakBytes,
    /// [`Usage::pids_peak`].
    PidsPeak,
    /// [`Usage::oom_kills`].
    OomKills,
}

impl Usage {
    /// Each figure with its value.
    pub fn figures(&self) -> [(UsageField, Option<u64>); 7] {
        [
            (UsageField::CpuUserUsec, self.cpu_user_usec),
            (UsageField::CpuSystemUsec, self.cpu_system_usec),
            (UsageField::CpuNrThrottled, self.cpu_nr_throttled),
            (UsageField::CpuThrottledUsec, self.cpu_throttled_usec),
            (UsageField::MemoryPeakBytes, self.memory_peak_bytes),
            (UsageField::PidsPeak, self.pids_peak),
            (UsageField::OomKills, self.oom_kills),
        ]
    }
}

impl UsageField {
    /// The field's name (`cpu_user_usec`, `memory_peak_bytes`, ...).
    pub fn name(self) -> &'static str {
        match self {
            UsageField::CpuUserUsec => "cpu_user_usec",
            UsageField::CpuSystemUsec => "cpu_system_usec",
            UsageField::CpuNrThrottled => "cpu_nr_throttled",
            UsageField::CpuThrottledUsec => "cpu_throttled_usec",
            UsageField::MemoryPeakBytes => "memory_peak_bytes",
            UsageField::PidsPeak => "pids_peak",
            UsageField::OomKills => "oom_kills",
        }
    }
}

impl fmt::Display for UsageField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cleanup {
    /// The cgroup was removed (cgroup mechanism).
    pub cgroup_removed: Option<bool>,
    /// Orphans re-parented to corral and reaped (pgroup mechanism).
    pub reaped: Option<usize>,
    /// An error during cleanup, if any.
    pub error: Option<String>,
    /// What the clean-up after a killed job did, one line per action: the records (and any
    /// cgroups left) of jobs whose corral ran inside this job and was killed with it
    /// before it could clean up. Empty when the job was not killed or held no such job.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Vec::is_empty")
    )]
    pub swept: Vec<String>,
}

impl Report {
    /// The JSON form (schema `docs/report.md`).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// One short line for stderr when something notable happened (timeout, leftovers
    /// killed, escalation to SIGKILL, fallback mechanism, survivors); `None` otherwise.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.degraded {
            parts.push(format!(
                "mechanism {} ({})",
                self.mechanism.name(),
                self.mechanism_reason
            ));
        }
        if self.timed_out {
            parts.push("timed out".to_string());
        }
        if !self.signals_received.is_empty() {
            let received: Vec<String> = self
                .signals_received
                .iter()
                .map(|s| s.to_string())
                .collect();
            parts.push(format!("received {}", received.join(", ")));
        }
        if !self.leftovers.is_empty() {
            let n = self.leftovers.len();
            let verb = match self.stop.as_ref().map(|s| s.reason) {
                Some(StopReason::Leftovers) => "stopped",
                _ => "waited for",
            };
            parts.push(format!(
                "{verb} {n} leftover process{}",
                if n == 1 { "" } else { "es" }
            ));
        }
        if let Some(stop) = &self.stop {
            if stop.outcome == StopOutcome::Killed {
                parts.push("escalated to SIGKILL".to_string());
            }
        }
        let oom_kills = self.usage.as_ref().and_then(|u| u.oom_kills).unwrap_or(0);
        if self.oom_killed || oom_kills > 0 {
            let limit = self
                .limits
                .as_ref()
                .and_then(|l| l.applied.get("memory.max"))
                .map(|v| format!(" (memory.max {v})"))
                .unwrap_or_default();
            let what = if self.oom_killed {
                let command = self
                    .command
                    .first()
                    .map(String::as_str)
                    .unwrap_or("COMMAND");
                match oom_kills {
                    0 | 1 => format!("{command} killed by the OOM killer"),
                    n => format!(
                        "{command} and {} other process(es) killed by the OOM killer",
                        n - 1
                    ),
                }
            } else {
                format!("{oom_kills} process(es) killed by the OOM killer")
            };
            parts.push(format!("{what}{limit}"));
        }
        if !self.survivors.is_empty() {
            parts.push(format!("{} process(es) SURVIVED", self.survivors.len()));
        }
        if let Some(e) = &self.cleanup.error {
            parts.push(format!("cleanup failed: {e}"));
        }
        // Weaker than a cgroup job should be: say so (a pgroup job's mechanism says it).
        if self.mechanism == crate::Mechanism::Cgroup && !self.on_supervisor_death.is_covered() {
            parts.push(format!(
                "if its supervisor dies, the job is {}",
                self.on_supervisor_death
            ));
        }
        if let Some(r) = self.stop.as_ref().and_then(|s| s.requested_by) {
            parts.push(format!(
                "stopped from outside by pid {} (uid {})",
                r.pid, r.uid
            ));
        }
        if let Some(why) = &self.not_registered {
            parts.push(format!("not registered: {why}"));
        }
        if parts.is_empty() {
            return None;
        }
        Some(format!("corral: job {}: {}", self.id, parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: REPORT_VERSION,
            id: "corral-1-0".into(),
            name: None,
            not_registered: None,
            command: vec!["true".into()],
            pid: 2,
            mechanism: crate::Mechanism::Cgroup,
            mechanism_reason: "cgroup parent /x (given)".into(),
            degraded: false,
            spawn: Spawn::Clone3 {
                into_cgroup: true,
                new_pid_namespace: false,
                new_user_namespace: false,
            },
            on_supervisor_death: OnSupervisorDeath::Watchdog {
                pid: 3,
                pid_namespace: false,
            },
            pid_namespace: false,
            credentials: None,
            cgroup: None,
            cgroup_parent_source: None,
            exit: Some(ExitInfo {
                code: Some(0),
                signal: None,
            }),
            exit_status: 0,
            timed_out: false,
            signals_received: vec![],
            stop: None,
            leftovers: vec![],
            survivors: vec![],
            limits: None,
            usage: None,
            oom_killed: false,
            cleanup: Cleanup::default(),
            duration_ms: 1,
        }
    }

    #[test]
    fn nothing_notable_prints_nothing() {
        assert_eq!(report().summary(), None);
    }

    #[test]
    fn summary_names_what_happened() {
        let mut r = report();
        r.degraded = true;
        r.mechanism = crate::Mechanism::Pgroup;
        r.mechanism_reason = "fallback: no writable cgroup".into();
        r.timed_out = true;
        r.leftovers = vec![ProcessInfo {
            pid: 3,
            cmdline: "sleep 1000".into(),
            left_process_group: false,
            left_session: true,
        }];
        r.stop = Some(StopReport {
            reason: StopReason::Leftovers,
            requested_by: None,
            steps: vec![],
            outcome: StopOutcome::Killed,
        });
        let line = r.summary().expect("a summary");
        assert_eq!(
            line,
            "corral: job corral-1-0: mechanism pgroup (fallback: no writable cgroup); timed out; \
             stopped 1 leftover process; escalated to SIGKILL"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn summary_names_oom_kills() {
        let mut r = report();
        r.command = vec!["make".into()];
        r.oom_killed = true;
        r.exit_status = 137;
        r.limits = Some(LimitsReport {
            applied: [("memory.max".to_string(), "33554432".to_string())].into(),
            ..LimitsReport::default()
        });
        r.usage = Some(Usage {
            oom_kills: Some(1),
            ..Usage::default()
        });
        assert_eq!(
            r.summary().unwrap(),
            "corral: job corral-1-0: make killed by the OOM killer (memory.max 33554432)"
        );
        r.oom_killed = false;
        r.usage.as_mut().unwrap().oom_kills = Some(2);
        assert_eq!(
            r.summary().unwrap(),
            "corral: job corral-1-0: 2 process(es) killed by the OOM killer (memory.max 33554432)"
        );
    }

    #[test]
    fn summary_says_when_a_cgroup_job_is_not_covered() {
        let mut r = report();
        r.on_supervisor_death = OnSupervisorDeath::NotCovered(Uncovered::WatchdogFailed(
            "no corral executable found".into(),
        ));
        assert_eq!(
            r.summary().unwrap(),
            "corral: job corral-1-0: if its supervisor dies, the job is not covered: the \
             watchdog could not be started: no corral executable found"
        );
        r.mechanism = crate::Mechanism::Pgroup;
        assert_eq!(
            r.summary(),
            None,
            "a pgroup job's mechanism says it already"
        );
    }

    /// The typed fields give the JSON the strings they always had (`docs/report.md`).
    #[cfg(feature = "serde")]
    #[test]
    fn typed_fields_keep_their_json_text() {
        fn text<T: serde::Serialize>(value: T) -> String {
            match serde_json::to_value(value).unwrap() {
                serde_json::Value::String(s) => s,
                other => panic!("not a string: {other}"),
            }
        }
        let clone3 = |into_cgroup, new_pid_namespace, new_user_namespace| Spawn::Clone3 {
            into_cgroup,
            new_pid_namespace,
            new_user_namespace,
        };
        let spawns = [
            (
                clone3(true, false, false),
                "clone3(CLONE_INTO_CGROUP|CLONE_PIDFD)",
            ),
            (
                clone3(true, true, false),
                "clone3(CLONE_INTO_CGROUP|CLONE_PIDFD|CLONE_NEWPID)",
            ),
            (
                clone3(true, true, true),
                "clone3(CLONE_INTO_CGROUP|CLONE_PIDFD|CLONE_NEWPID|CLONE_NEWUSER)",
            ),
            (clone3(false, false, false), "clone3(CLONE_PIDFD)"),
            (
                clone3(false, true, false),
                "clone3(CLONE_PIDFD|CLONE_NEWPID)",
            ),
            (
                clone3(false, true, true),
                "clone3(CLONE_PIDFD|CLONE_NEWPID|CLONE_NEWUSER)",
            ),
            (
                Spawn::ForkThenJoinCgroup,
                "fork + write to cgroup.procs before exec",
            ),
            (Spawn::ForkThenPidfd, "fork + pidfd_open"),
            (
                Spawn::CommandJoinedCgroup,
                "std::process::Command (fork), joined the cgroup before exec",
            ),
            (
                Spawn::CommandInProcessSubreaper,
                "std::process::Command (fork), in-process subreaper",
            ),
            (
                Spawn::CommandUnderSupervisor,
                "std::process::Command under a corral supervisor (subreaper)",
            ),
            (
                Spawn::CommandProcessGroup,
                "std::process::Command with process_group(0)",
            ),
            (
                Spawn::CreateProcessSuspended,
                "CreateProcessW(CREATE_SUSPENDED|CREATE_NEW_PROCESS_GROUP), \
                 AssignProcessToJobObject, ResumeThread",
            ),
        ];
        for (spawn, want) in spawns {
            assert_eq!(text(spawn), want);
        }
        let not_covered = OnSupervisorDeath::NotCovered;
        let deaths = [
            (
                OnSupervisorDeath::Watchdog {
                    pid: 7,
                    pid_namespace: false,
                },
                "killed by the watchdog (pid 7)",
            ),
            (
                OnSupervisorDeath::Watchdog {
                    pid: 7,
                    pid_namespace: true,
                },
                "killed by the watchdog (pid 7), and by the kernel (PID namespace)",
            ),
            (
                OnSupervisorDeath::HelperGuardian { pid: 8 },
                "killed by corral-helper's privileged process (pid 8)",
            ),
            (
                OnSupervisorDeath::SupervisorProcess,
                "killed by its supervisor process when the host goes away",
            ),
            (
                OnSupervisorDeath::PidNamespace,
                "killed by the kernel: COMMAND is PID 1 of its own PID namespace and dies with \
                 this process (no watchdog)",
            ),
            (
                OnSupervisorDeath::PidNamespaceParentDeathSignal,
                "killed by the kernel: COMMAND is PID 1 of its own PID namespace and dies with \
                 this process (parent-death signal), which ends every process in the namespace",
            ),
            (
                OnSupervisorDeath::JobObject,
                "killed by Windows when the job handle closes with the supervisor \
                 (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE)",
            ),
            (
                not_covered(Uncovered::WatchdogOff),
                "not covered: the watchdog is turned off (--debug-no-watchdog)",
            ),
            (
                not_covered(Uncovered::WatchdogFailed("EPERM".into())),
                "not covered: the watchdog could not be started: EPERM",
            ),
            (
                not_covered(Uncovered::NoWatchdog),
                "not covered: no watchdog",
            ),
            (
                not_covered(Uncovered::InProcessPgroup),
                "not covered: the job's subreaper is this process itself (in-process pgroup), \
                 and nothing outlives it to stop the job: its processes are re-parented and \
                 keep running",
            ),
            (
                not_covered(Uncovered::MacOs),
                "not covered: macOS has no watchdog or subreaper; the job's processes outlive \
                 corral",
            ),
            (
                not_covered(Uncovered::NoJobObject),
                "not covered: no job object, so nothing ends the job when its supervisor dies",
            ),
        ];
        for (death, want) in deaths {
            assert_eq!(text(&death), want);
        }
        for source in [
            CgroupParentSource::Option,
            CgroupParentSource::Env,
            CgroupParentSource::Default,
            CgroupParentSource::Delegated,
            CgroupParentSource::Caller,
        ] {
            assert_eq!(text(source), source.name());
        }
        let usage = Usage::default();
        for (field, _) in usage.figures() {
            assert_eq!(text(field), field.name());
            let json = serde_json::to_value(&usage).unwrap();
            assert!(json.get(field.name()).is_some(), "no field {field}");
        }
        for kind in [
            StepKind::Freeze,
            StepKind::Signal,
            StepKind::Continue,
            StepKind::Grace,
            StepKind::Kill,
            StepKind::Empty,
        ] {
            assert_eq!(text(kind), kind.name());
        }
        let usr1 = Signal::from_raw(10).unwrap();
        assert_eq!(text(StepSignal::Prefixed(Signal::TERM)), "SIGTERM");
        assert_eq!(text(StepSignal::Bare(Signal::TERM)), "TERM");
        assert_eq!(text(SignalReceived::Stop(Signal::INT)), "SIGINT");
        assert_eq!(
            text(SignalReceived::PassedOn(usr1)),
            "SIGUSR1 (passed on to COMMAND)"
        );
        assert_eq!(
            text(SignalReceived::Dropped(usr1)),
            "SIGUSR1 (dropped: COMMAND has exited)"
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_has_the_documented_fields() {
        let v: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        for field in [
            "version",
            "id",
            "command",
            "pid",
            "mechanism",
            "mechanism_reason",
            "degraded",
            "spawn",
            "on_supervisor_death",
            "pid_namespace",
            "credentials",
            "cgroup",
            "cgroup_parent_source",
            "exit",
            "exit_status",
            "timed_out",
            "signals_received",
            "stop",
            "leftovers",
            "survivors",
            "limits",
            "usage",
            "oom_killed",
            "cleanup",
            "duration_ms",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["mechanism"], "cgroup");
        assert_eq!(v["version"], REPORT_VERSION);
    }
}
