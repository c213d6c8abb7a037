//! corral: run a command as a *job*, and when the job ends, every process it started is
//! gone, and nothing else is touched.
//!
//! ```no_run
//! use std::time::Duration;
//! let cmd = corral::JobCommand::new("sh").arg("-c").arg("sleep 1000 & setsid sleep 1000 & exit 0");
//! let opts = corral::Options { grace: Duration::from_secs(2), ..Default::default() };
//! let job = corral::Job::spawn(&cmd, &opts)?;
//! let report = job.wait()?;          // the sh exits; both sleeps are stopped as leftovers
//! assert!(report.survivors.is_empty());
//! # Ok::<(), corral::Error>(())
//! ```
//!
//! On Linux a job lives in its own cgroup v2 leaf when one can be written (the child is born
//! in it, so nothing escapes), else in a process group with corral as child subreaper. See
//! `docs/design.md` for the map of the code.
#![warn(missing_docs)]

mod error;
mod job;
mod options;
mod report;

#[cfg(target_os = "linux")]
mod linux;

pub use error::{Error, Result};
pub use job::{Job, JobCommand, SignalSource};
pub use options::{
    parse_duration, DebugKnobs, Leftovers, MechanismRequest, Options, Signal, SignalSet,
};
pub use report::{
    Cleanup, ExitInfo, ProcessInfo, Report, StopOutcome, StopReason, StopReport, StopStep,
    REPORT_VERSION,
};

/// The containment mechanism a job actually runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Mechanism {
    /// A cgroup v2 leaf per job: complete containment.
    Cgroup,
    /// Process group + child subreaper + `/proc` walk: weaker (a process that stops being a
    /// descendant without being re-parented to corral is lost).
    Pgroup,
}

impl Mechanism {
    /// `cgroup` or `pgroup`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Cgroup => "cgroup",
            Mechanism::Pgroup => "pgroup",
        }
    }
}
