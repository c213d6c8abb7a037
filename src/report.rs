//! What happened to a job: the typed report, its JSON form and the one-line summary.
//!
//! The JSON schema is documented in `docs/report.md` and versioned by [`REPORT_VERSION`].

use std::path::PathBuf;

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
    /// How the main process was started (`clone3(CLONE_INTO_CGROUP|CLONE_PIDFD)`, ...).
    pub spawn: String,
    /// The job's cgroup (cgroup mechanism only).
    pub cgroup: Option<PathBuf>,
    /// How the cgroup parent was chosen: `option`, `env` or `default`.
    pub cgroup_parent_source: Option<String>,
    /// How the main process ended (`None` if it could not be observed).
    pub exit: Option<ExitInfo>,
    /// The exit status the CLI returns.
    pub exit_status: i32,
    /// Whether the timeout fired.
    pub timed_out: bool,
    /// Signals corral received and passed to the job.
    pub signals_received: Vec<String>,
    /// The stop sequence, if one ran.
    pub stop: Option<StopReport>,
    /// Processes still running when the main process exited.
    pub leftovers: Vec<ProcessInfo>,
    /// Processes still present after the stop sequence (must be empty).
    pub survivors: Vec<ProcessInfo>,
    /// Cleanup of the job's resources.
    pub cleanup: Cleanup,
    /// Wall time from spawn to the end of cleanup, in milliseconds.
    pub duration_ms: u64,
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
    /// `freeze`, `signal`, `continue`, `grace`, `kill` or `empty`.
    pub step: String,
    /// The signal sent, where the step sends one.
    pub signal: Option<String>,
    /// How many processes it reached, where it counts them.
    pub processes: Option<usize>,
    /// Free-form detail (`cgroup.kill`, `grace skipped by a second signal`, ...).
    pub detail: Option<String>,
    /// Milliseconds since the stop sequence began.
    pub at_ms: u64,
}

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
            parts.push(format!("received {}", self.signals_received.join(", ")));
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
        if !self.survivors.is_empty() {
            parts.push(format!("{} process(es) SURVIVED", self.survivors.len()));
        }
        if let Some(e) = &self.cleanup.error {
            parts.push(format!("cleanup failed: {e}"));
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
            command: vec!["true".into()],
            pid: 2,
            mechanism: crate::Mechanism::Cgroup,
            mechanism_reason: "cgroup parent /x (given)".into(),
            degraded: false,
            spawn: "clone3".into(),
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
            "cgroup",
            "cgroup_parent_source",
            "exit",
            "exit_status",
            "timed_out",
            "signals_received",
            "stop",
            "leftovers",
            "survivors",
            "cleanup",
            "duration_ms",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["mechanism"], "cgroup");
        assert_eq!(v["version"], REPORT_VERSION);
    }
}
