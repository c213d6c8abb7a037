//! The library embedded in a program (issue 3): `Job::spawn` with a
//! `std::process::Command`, the waiting calls, piped output, drop and detach, many jobs
//! from many threads, a stop racing a fork, and no process-wide side effects on the
//! program. One module per behaviour, in `tests/embedding/`; each behaviour runs in both
//! mechanisms, as `<module>::<behaviour>::{cgroup,pgroup}`.
//!
//! cgroup jobs run in a cgroup subtree owned by the test (`util::CgroupTree`, shared with
//! `tests/containment`), removed even when the test fails. pgroup jobs run under the
//! default supervisor (`Supervisor::Auto`, which finds `target/<profile>/corral`); the
//! processes a test knows of are held by pidfds and killed if it fails. Tests that cannot
//! run (no writable cgroup2) print `SKIPPED: <reason>`, or fail when
//! `CORRAL_REQUIRE_ALL=1`.
#![cfg(target_os = "linux")]

// The crate root is not a mod.rs, so each module file's path is given.

#[path = "containment/util.rs"]
mod util;

#[path = "embedding/common.rs"]
mod common;

#[path = "embedding/credentials.rs"]
mod credentials;
#[path = "embedding/drop_detach.rs"]
mod drop_detach;
#[path = "embedding/host.rs"]
mod host;
#[path = "embedding/many_jobs.rs"]
mod many_jobs;
#[path = "embedding/output.rs"]
mod output;
#[path = "embedding/pid_namespace.rs"]
mod pid_namespace;
#[path = "embedding/registry.rs"]
mod registry;
#[path = "embedding/std_command.rs"]
mod std_command;
#[path = "embedding/stop_race.rs"]
mod stop_race;
#[path = "embedding/waiting.rs"]
mod waiting;
