//! What happened to a job: the typed report, its JSON form and the one-line summary.
//!
//! The JSON schema is documented in `docs/report.md` and versioned by [`REPORT_VERSION`].

use std::collections::BTreeMap;
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
    /// How the main process was started (`clone3(CLONE_INTO_CGROUP|CLONE_PIDFD)`, ...).
    pub spawn: String,
    /// What happens to the job if the process supervising it (the `corral` CLI, or the
    /// program using the library) dies without ending it: `killed by the watchdog (pid N)`
    /// (cgroup), `killed by its supervisor process when the host goes away` (pgroup under
    /// a supervisor process), or `not covered: <why>`.
    pub on_supervisor_death: String,
    /// The main process ran as PID 1 of a new PID namespace
    /// ([`crate::Options::pid_namespace`]): when it exited, the kernel killed every process
    /// left in the namespace before corral could see it, so `leftovers` stays empty.
    pub pid_namespace: bool,
    /// Who the main process ran as, with no capability and `no_new_privs`
    /// ([`crate::JobCommand::credentials`]); `None`: as the caller.
    pub credentials: Option<crate::Credentials>,
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
    /// The names of the fields above that are `None`.
    pub unavailable: Vec<String>,
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
        if self.mechanism == crate::Mechanism::Cgroup
            && self.on_supervisor_death.starts_with("not covered")
        {
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
            spawn: "clone3".into(),
            on_supervisor_death: "killed by the watchdog (pid 3)".into(),
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
        r.on_supervisor_death = "not covered: no corral executable found".into();
        assert_eq!(
            r.summary().unwrap(),
            "corral: job corral-1-0: if its supervisor dies, the job is not covered: no corral \
             executable found"
        );
        r.mechanism = crate::Mechanism::Pgroup;
        assert_eq!(
            r.summary(),
            None,
            "a pgroup job's mechanism says it already"
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
