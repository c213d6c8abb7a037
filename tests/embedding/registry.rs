//! A library job is in the job registry: `corral kill NAME` from another process stops it
//! while the embedding program waits for it, and the report names the requester; a
//! detached job leaves the registry.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral::{Job, StopReason};

use crate::common::{self, Held};
use crate::util::{both_mechanisms, Mechanism, Sandbox, CORRAL, TESTTREE};

both_mechanisms!(outside_kill_ends_wait);

/// A job name no other test (or test process) uses.
fn unique_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether `corral ps --json` lists a job named `name` (the library's jobs go to the
/// default registry of the user running the tests).
fn listed(name: &str) -> bool {
    let out = Command::new(CORRAL)
        .args(["ps", "--json"])
        .output()
        .expect("run corral ps");
    assert!(out.status.success(), "corral ps: {out:?}");
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps --json");
    jobs.as_array()
        .expect("an array")
        .iter()
        .any(|j| j["name"] == name)
}

fn outside_kill_ends_wait(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("outside-kill", mechanism) else {
        return;
    };
    let name = unique_name("lib");
    let mut opts = common::options(&sandbox, mechanism);
    opts.name = Some(name.clone());
    opts.grace = Duration::from_secs(60);
    let pids = sandbox.dir.join("pids");
    let mut job = Job::spawn(
        Command::new(TESTTREE)
            .arg("--pids")
            .arg(&pids)
            .arg("setsid"),
        &opts,
    )
    .expect("spawn");
    assert_eq!(job.not_registered(), None);
    let held = Held::from_tree(&pids, &["top", "setsid"], &job);
    assert!(listed(&name), "corral ps does not list {name}");
    let killer = {
        let name = name.clone();
        std::thread::spawn(move || {
            Command::new(CORRAL)
                .args(["kill", &name, "--grace", "1s"])
                .output()
        })
    };
    let report = job.wait().expect("wait");
    let out = killer.join().unwrap().expect("run corral kill");
    assert!(out.status.success(), "corral kill: {out:?}");
    held.assert_all_gone("outside kill");
    let stop = report.stop.as_ref().expect("a stop report");
    assert_eq!(stop.reason, StopReason::External, "{report:#?}");
    let by = stop.requested_by.expect("the requester");
    assert_eq!(by.uid, rustix::process::geteuid().as_raw(), "{report:#?}");
    assert_eq!(report.exit_status, 128 + 15, "{report:#?}");
    assert_eq!(report.name.as_deref(), Some(name.as_str()));
    common::assert_cleaned_up(&report, mechanism);
    assert!(!listed(&name), "{name} still listed after it ended");
}

/// A detached job is no longer corral's to stop: its record goes with `detach`.
#[test]
fn detach_leaves_the_registry() {
    let Some(sandbox) = Sandbox::with_cgroup("detach-registry") else {
        return;
    };
    let name = unique_name("detached");
    let mut opts = common::cgroup_options(&sandbox);
    opts.name = Some(name.clone());
    let job = Job::spawn(&mut Command::new("true"), &opts).expect("spawn");
    assert!(listed(&name), "corral ps does not list {name}");
    let detached = job.detach();
    assert!(!listed(&name), "{name} still listed after detach");
    // The main process is our unreaped child (its PID cannot have been reused): reap it
    // as a caller of detach would. The sandbox's cgroup tree removes the job's leaf.
    let pid = rustix::process::Pid::from_raw(detached.pid as i32).expect("a PID");
    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
        .expect("reap the detached main process");
}
