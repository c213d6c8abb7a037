//! A bounded fork storm (at most 2000 processes, each forking every 50 ms and ignoring
//! SIGTERM) that is still forking while corral stops it: nothing may survive.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(fork_storm_leaves_no_survivors);

fn fork_storm_leaves_no_survivors(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("fork-storm", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("300ms", Duration::from_millis(300))
        .tree(&["storm", "--max", "2000", "--interval", "50ms"])
        .spawn();
    let mut roles = vec!["storm"; 30];
    roles.push("top");
    let mut procs = job.wait_ready(&roles);
    job.signal(Signal::TERM);
    let done = job.finish();
    let listed = done.listed();
    eprintln!(
        "fork storm ({}): {} processes listed, {} held by pidfd before the stop",
        mechanism.name(),
        listed.len(),
        procs.procs.len()
    );
    if sandbox.cgroup.is_none() {
        // Without a cgroup around corral, check the late ones one by one.
        procs.open_late(&listed);
    }
    procs.assert_all_gone("fork storm");
    // With a cgroup around corral this also covers processes that were never listed.
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGKILL);
    done.assert_report_basics(mechanism);
    assert_eq!(
        done.stop_outcome().as_deref(),
        Some("killed"),
        "{}",
        done.report_text()
    );
}
