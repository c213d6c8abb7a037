//! corral's integration tests: one test binary, one module per behaviour. Each behaviour
//! runs in both mechanisms (`--mechanism cgroup` and `--mechanism pgroup`) where it
//! applies, as `<module>::<behaviour>::{cgroup,pgroup}`.
//!
//! Process trees come from the `corral-testtree` helper (`testkit/src/bin/corral-testtree.rs`),
//! which lists every process it creates once the process is ready; the tests hold each one
//! by a pidfd and check it is gone after corral returns. Each test owns a cgroup subtree
//! (see `util::CgroupTree`) in which corral runs, so anything that escaped every check is
//! still found (and killed) there.
//!
//! Tests that cannot run (no writable cgroup2) print `SKIPPED: <reason>`, or fail when
//! `CORRAL_REQUIRE_ALL=1`.
#![cfg(target_os = "linux")]

// The crate root is not a mod.rs, so each module file's path is given.

#[path = "containment/util.rs"]
mod util;

#[path = "containment/bad_input.rs"]
mod bad_input;
#[path = "containment/bystander.rs"]
mod bystander;
#[path = "containment/cgroup_parent.rs"]
mod cgroup_parent;
#[path = "containment/clean_start.rs"]
mod clean_start;
#[path = "containment/ctrl_c.rs"]
mod ctrl_c;
#[path = "containment/daemon.rs"]
mod daemon;
#[path = "containment/delegation.rs"]
mod delegation;
#[path = "containment/direct_child.rs"]
mod direct_child;
#[path = "containment/escalation.rs"]
mod escalation;
#[path = "containment/exit_status.rs"]
mod exit_status;
#[path = "containment/fallbacks.rs"]
mod fallbacks;
#[path = "containment/fork_storm.rs"]
mod fork_storm;
#[path = "containment/graceful.rs"]
mod graceful;
#[path = "containment/grandchild.rs"]
mod grandchild;
#[path = "containment/helper.rs"]
mod helper;
#[path = "containment/integrations.rs"]
mod integrations;
#[path = "containment/interleave.rs"]
mod interleave;
#[path = "containment/killed_early.rs"]
mod killed_early;
#[path = "containment/leftovers_policy.rs"]
mod leftovers_policy;
#[path = "containment/library.rs"]
mod library;
#[path = "containment/limits.rs"]
mod limits;
#[path = "containment/nested_cgroups.rs"]
mod nested_cgroups;
#[path = "containment/nesting.rs"]
mod nesting;
#[path = "containment/parallel.rs"]
mod parallel;
#[path = "containment/pid_namespace.rs"]
mod pid_namespace;
#[path = "containment/pipe.rs"]
mod pipe;
#[path = "containment/planted.rs"]
mod planted;
#[path = "containment/registry.rs"]
mod registry;
#[path = "containment/report_fd.rs"]
mod report_fd;
#[path = "containment/setpgid.rs"]
mod setpgid;
#[path = "containment/setsid.rs"]
mod setsid;
#[path = "containment/signal_option.rs"]
mod signal_option;
#[path = "containment/sigterm.rs"]
mod sigterm;
#[path = "containment/slurm.rs"]
mod slurm;
#[path = "containment/slurm_cluster.rs"]
mod slurm_cluster;
#[path = "containment/stopped.rs"]
mod stopped;
#[path = "containment/timeout.rs"]
mod timeout;
#[path = "containment/watchdog.rs"]
mod watchdog;
#[path = "containment/workloads.rs"]
mod workloads;
#[path = "containment/wrapper.rs"]
mod wrapper;
#[path = "containment/zombie_leader.rs"]
mod zombie_leader;
