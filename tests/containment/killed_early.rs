//! A corral SIGKILLed at any moment of its start leaves nothing that one `corral sweep`
//! does not remove: no record, control socket or temporary file in the registry, no leaf
//! under the cgroup parent, no process of the job.
//!
//! The kill lands at 200 moments spread over the first 5 ms after corral's `exec` (while it
//! sweeps, makes the leaf, binds the socket, writes the record, starts its watchdog and the
//! job). What the watchdog cleans up on its own is waited for (its processes live in the
//! test's cgroup for corral, and are gone once that is empty); then one sweep, then
//! nothing may be left.

use std::fs;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::util::{CgroupTree, Sandbox};

/// How many moments, and how far apart.
const MOMENTS: u32 = 200;
const STEP: Duration = Duration::from_micros(25);
/// How long corral's watchdogs may take to finish what they clean up themselves.
const WATCHDOGS_DONE: Duration = Duration::from_secs(20);

#[test]
fn a_corral_killed_in_its_first_milliseconds_leaves_nothing_after_one_sweep() {
    let Some(sandbox) = Sandbox::with_cgroup("killed-early") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    for i in 0..MOMENTS {
        let mut run = sandbox.corral_bare();
        run.args(["run", "--mechanism", "cgroup", "--cgroup-parent"])
            .arg(&jobs)
            .args(["--", "sleep", "60"]);
        let job = run.spawn();
        let at = Instant::now() + STEP * i;
        // A busy wait: a sleep this short oversleeps by more than the step.
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        job.signal(Signal::KILL);
        let _ = job.finish();
    }
    // The watchdogs of the corrals that got to start one clean up on their own, from the
    // cgroup they share with corral; once it is empty, all of them are done.
    let corral_leaf = sandbox.cgroup().corral_leaf();
    CgroupTree::wait_empty(&corral_leaf, WATCHDOGS_DONE, "corral's watchdogs done");
    let before = litter(&sandbox, &jobs);
    let mut sweep = sandbox.corral_bare();
    sweep.arg("sweep").env("CORRAL_CGROUP_PARENT", &jobs);
    let swept = sweep.run();
    assert!(
        swept.status.success(),
        "corral sweep failed ({:?}):\n{}",
        swept.status,
        swept.stderr
    );
    let after = litter(&sandbox, &jobs);
    assert!(
        after.is_empty(),
        "one sweep left, of the {} things the killed corrals left:\n  {}\nsweep said:\n{}",
        before.len(),
        after.join("\n  "),
        swept.stderr
    );
    eprintln!(
        "killed {MOMENTS} corrals over their first {:?}: {} things left, all swept",
        STEP * MOMENTS,
        before.len()
    );
}

/// What is in the registry, the leaves under `jobs` and the processes in them.
fn litter(sandbox: &Sandbox, jobs: &std::path::Path) -> Vec<String> {
    let mut left = Vec::new();
    for entry in fs::read_dir(&sandbox.runtime)
        .into_iter()
        .flatten()
        .flatten()
    {
        left.push(format!("registry file {}", entry.path().display()));
    }
    for leaf in CgroupTree::children(jobs) {
        left.push(format!(
            "leaf {} with {:?}",
            leaf.display(),
            CgroupTree::procs_recursive(&leaf)
        ));
    }
    left
}
