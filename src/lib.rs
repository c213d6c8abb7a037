//! corral: run a command as a *job*, and when the job ends, every process it started is
//! gone, and nothing else is touched.
//!
//! ```no_run
//! use std::process::Command;
//! use std::time::Duration;
//!
//! let opts = corral::Options { grace: Duration::from_secs(2), ..Default::default() };
//! let mut job = corral::Job::spawn(
//!     Command::new("sh").arg("-c").arg("sleep 1000 & setsid sleep 1000 & exit 0"),
//!     &opts,
//! )?;
//! let report = job.wait()?; // sh exits; both sleeps are stopped as leftovers
//! assert_eq!(report.leftovers.len(), 2);
//! assert!(report.survivors.is_empty());
//! # Ok::<(), corral::Error>(())
//! ```
//!
//! On Linux a job lives in its own cgroup v2 leaf when one can be written (its processes
//! cannot leave it), else in a process group under a small supervisor process that is the
//! job's child subreaper. The library changes nothing about the calling process: no signal
//! handlers, no subreaper flag, no reaping of children it did not start, no threads. See
//! `docs/design.md` for how a job flows through the code.
//!
//! With the `tokio` feature, `Job::wait_async`, `stop_async`, `kill_async` and
//! `wait_with_output_async` do the same on a tokio runtime, the job's pidfds and
//! `cgroup.events` registered with the reactor: no thread per job, no blocking call (see
//! the module `corral::tokio`).
#![warn(missing_docs)]

mod error;
mod exit_status;
#[cfg(any(target_os = "linux", target_os = "macos", windows))]
mod job;
mod ladder;
mod options;
mod report;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(windows)]
mod windows;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
mod control;
#[cfg(all(target_os = "linux", feature = "serde"))]
pub mod registry;
#[cfg(all(target_os = "linux", not(feature = "serde")))]
#[path = "registry_off.rs"]
mod registry;
#[cfg(target_os = "linux")]
pub mod safe_file;

#[cfg(all(feature = "tokio", target_os = "linux"))]
pub mod tokio;

pub use error::{Error, Result};
#[cfg(any(target_os = "linux", target_os = "macos", windows))]
pub use job::Job;
#[cfg(target_os = "linux")]
pub use linux::job::{Detached, JobCommand, JobStdio, Output, SignalSource};
pub use options::{
    parse_duration, CpuMax, Credentials, DebugKnobs, HelperJob, Leftovers, LimitValue, Limits,
    MechanismRequest, Options, Resource, ResourceLimit, Signal, SignalSet, Supervisor,
    LEFTOVERS_FAILED, MAX_DURATION,
};
pub use report::{
    CgroupParentSource, Cleanup, ExitInfo, LimitsReport, OnSupervisorDeath, ProcessInfo, Report,
    Requester, SignalReceived, Spawn, StepKind, StepSignal, StopOutcome, StopReason, StopReport,
    StopStep, Uncovered, Usage, UsageField, REPORT_VERSION,
};

/// The entry point of `corral __supervise`, the per-job supervisor process of a pgroup job
/// (see `src/linux/supervise/`). Called by the `corral` binary; not for other programs.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn __supervise() -> ! {
    linux::supervise::main()
}

/// The entry point of `corral __watchdog`, the process that kills a host's cgroup jobs
/// when the host dies (see `src/linux/watchdog.rs`). Called by the `corral` binary; not
/// for other programs.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn __watchdog() -> ! {
    linux::watchdog::main()
}

/// Tells this process's watchdog to exit once no job needs it: the CLI calls it when its
/// job is over, and waits (`__ReleasedWatchdog::wait`) before it exits (see
/// `linux::watchdog::release`).
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn __release_watchdog() -> __ReleasedWatchdog {
    linux::watchdog::release()
}

#[cfg(target_os = "linux")]
#[doc(hidden)]
pub use linux::watchdog::Released as __ReleasedWatchdog;

/// The `systemd-run` command line (program first) that would give this process a delegated
/// scope, when it needs one: systemd manages the cgroup tree, the cgroup this process runs
/// in is not delegated to it, and the systemd manager for its user can be reached. Used by
/// the `corral` CLI to re-run itself there; see `docs/delegation.md`.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub const __SCOPE_ENV: &str = linux::delegate::SCOPE_ENV;

/// See [`__systemd_scope_command`]'s caller in the CLI.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn __systemd_scope_command() -> Option<(Vec<std::ffi::OsString>, String)> {
    linux::delegate::scope_command()
}

/// The cgroup2 mount point, found in `/proc/self/mountinfo` (`None`: no cgroup2 mount).
/// For `corral-helper`, which resolves its policy's cgroup parents against it.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub fn __cgroup2_mount() -> Option<std::path::PathBuf> {
    linux::cgroup::find_mount().ok().flatten().map(|m| m.path)
}

/// The containment mechanism a job actually runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Mechanism {
    /// A cgroup v2 leaf per job: complete containment (Linux).
    Cgroup,
    /// Process group + child subreaper + `/proc` walk: weaker (members are found by walks,
    /// not by the kernel; no limits; see `docs/guarantees.md`). On macOS: the process group
    /// and `libproc`'s child lists (a descendant that leaves the group can escape).
    Pgroup,
    /// A Windows Job Object with kill-on-close: complete containment (Windows).
    #[cfg(windows)]
    JobObject,
    /// `taskkill /T /F` over parent links, where no Job Object could be had: weaker (a
    /// descendant whose parent already exited is missed) (Windows).
    #[cfg(windows)]
    Taskkill,
}

impl Mechanism {
    /// `cgroup` or `pgroup`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Cgroup => "cgroup",
            Mechanism::Pgroup => "pgroup",
            #[cfg(windows)]
            Mechanism::JobObject => "job-object",
            #[cfg(windows)]
            Mechanism::Taskkill => "taskkill",
        }
    }
}
