//! The one error type of the library.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when setting up, running or cleaning up a job.
///
/// Messages name the problem and, where there is one, the fix; the underlying cause is kept
/// in the `#[source]` field so `{:#}`-style printers show each layer once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options cannot work as given (a bad value, a combination that makes no sense).
    #[error("{0}")]
    InvalidOptions(String),

    /// The cgroup parent given (option or `CORRAL_CGROUP_PARENT`) cannot be used.
    #[error("cgroup parent {path:?} {problem}; {fix}")]
    CgroupParent {
        /// The parent as given.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What the user can do about it.
        fix: String,
    },

    /// `--mechanism cgroup` was asked for and no writable cgroup v2 directory can be had.
    #[error("no writable cgroup available: {reason}; {fix}")]
    NoCgroup {
        /// Why none could be had.
        reason: String,
        /// What would work instead.
        fix: String,
    },

    /// A resource limit ([`crate::Limits`]) was asked for and cannot be enforced: the job
    /// would not run in a cgroup, the cgroup parent does not offer the controller (on a
    /// hybrid host the controller may be bound to cgroup v1), or the controller cannot be
    /// enabled in the parent (not delegated, or the parent has processes of its own).
    #[error("cannot apply {file}: {reason}; {fix}")]
    LimitUnavailable {
        /// The cgroup file the limit goes to (`memory.max`, `pids.max`, `cpu.max`, ...).
        file: String,
        /// The controller it needs (`memory`, `pids`, `cpu`).
        controller: String,
        /// Why it cannot be had.
        reason: String,
        /// What the user can do about it.
        fix: String,
    },

    /// No `corral` executable could be found to run a pgroup job's supervisor from (see
    /// `Supervisor::Auto`), or the one given cannot be run.
    #[error("no corral executable for the job's supervisor: {reason}; install corral or set CORRAL_SUPERVISOR")]
    NoSupervisor {
        /// What was searched, or what is wrong with the executable given.
        reason: String,
    },

    /// A new PID namespace was asked for ([`crate::Options::pid_namespace`]) and the kernel
    /// refused to make one (no `clone3`, namespaces not allowed to this user, a limit
    /// reached).
    #[error("cannot run the job in a new PID namespace: {reason}; {fix}")]
    PidNamespace {
        /// What the kernel refused.
        reason: String,
        /// What the user can do about it.
        fix: String,
        /// The error of the call.
        #[source]
        source: io::Error,
    },

    /// The command was not found (exit status 127 in the CLI).
    #[error("{program}: command not found; check the name or PATH")]
    NotFound {
        /// The program as given.
        program: String,
    },

    /// The command exists but cannot be executed (exit status 126 in the CLI).
    #[error("{program}: cannot execute; check its permissions and format")]
    NotExecutable {
        /// The program as given.
        program: String,
        /// The error `execve` returned.
        #[source]
        source: io::Error,
    },

    /// The child could not be started or set up before `exec` (other than not found / not
    /// executable).
    #[error("failed to start {program}: {stage}")]
    Spawn {
        /// The program as given.
        program: String,
        /// What step failed (for example "chdir to /nope").
        stage: String,
        /// The error of that step.
        #[source]
        source: io::Error,
    },

    /// An operation on a cgroup file or directory failed.
    #[error("failed to {op} {path:?}")]
    Cgroup {
        /// What was attempted ("write 1 to", "create", "remove", ...).
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// An operation on one process failed.
    #[error("{op} for process {pid} failed")]
    Process {
        /// The call and what it was for.
        op: String,
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A system call that is not about one file or process failed.
    #[error("{op} failed")]
    Sys {
        /// The call and what it was for.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn cgroup(
        op: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Error::Cgroup {
            op: op.into(),
            path: path.into(),
            source,
        }
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn process(
        op: impl Into<String>,
        pid: crate::linux::pidfd::Pid,
        source: impl Into<io::Error>,
    ) -> Self {
        Error::Process {
            op: op.into(),
            pid: pid.get() as u32,
            source: source.into(),
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn sys(op: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            op: op.into(),
            source: source.into(),
        }
    }

    /// True when the error is the user's input (options, parent, command name) rather than a
    /// failure of the machine. The CLI exits 125 for both, but tests and embedders may care.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::InvalidOptions(_)
                | Error::CgroupParent { .. }
                | Error::NoCgroup { .. }
                | Error::LimitUnavailable { .. }
                | Error::PidNamespace { .. }
        )
    }
}

/// `a: b: c` for an error and its sources: one line for a report or a log.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
