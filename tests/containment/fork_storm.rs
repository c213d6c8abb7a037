//! Fork storms that are still forking while corral stops them: nothing may survive.
//!
//! - A bounded storm (at most 2000 processes, each forking every 50 ms and ignoring
//!   SIGTERM), in COMMAND's process group, or with every process escaping by `setsid()`.
//! - A fork-and-exit chain (each link forks the next and exits at once, so the one live
//!   process keeps changing PID and parent), in the group or escaping by `setsid()`.
//!
//! Processes listed before the stop are held by pidfd; with a cgroup around corral its
//! emptiness covers those listed later or never listed.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(
    fork_storm_leaves_no_survivors,
    fork_storm_of_setsid_escapees_leaves_no_survivors,
    fork_and_exit_chain_leaves_no_survivors,
    fork_and_exit_chain_of_setsid_escapees_leaves_no_survivors,
);

fn fork_storm_leaves_no_survivors(mechanism: Mechanism) {
    storm(
        mechanism,
        "fork-storm",
        &["storm"],
        "storm",
        30,
        128 + libc::SIGKILL,
    );
}

fn fork_storm_of_setsid_escapees_leaves_no_survivors(mechanism: Mechanism) {
    storm(
        mechanism,
        "fork-storm-setsid",
        &["storm", "--escape"],
        "storm",
        30,
        128 + libc::SIGKILL,
    );
}

fn fork_and_exit_chain_leaves_no_survivors(mechanism: Mechanism) {
    // The top keeps the default SIGTERM disposition.
    storm(
        mechanism,
        "chain",
        &["chain"],
        "link",
        20,
        128 + libc::SIGTERM,
    );
}

fn fork_and_exit_chain_of_setsid_escapees_leaves_no_survivors(mechanism: Mechanism) {
    storm(
        mechanism,
        "chain-setsid",
        &["chain", "--escape"],
        "link",
        20,
        128 + libc::SIGTERM,
    );
}

/// Starts the tree, waits until `ready` processes of `role` were listed, sends corral
/// SIGTERM (grace 300 ms, during which the storm goes on) and checks nothing survived.
fn storm(mechanism: Mechanism, name: &str, mode: &[&str], role: &str, ready: usize, code: i32) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("300ms", Duration::from_millis(300))
        .tree(mode)
        .spawn();
    let mut roles = vec![role; ready];
    roles.push("top");
    // A chain's links exit on their own: hold only the ones still running.
    let mut procs = if role == "link" {
        job.wait_listed(&roles)
    } else {
        job.wait_ready(&roles)
    };
    job.signal(Signal::TERM);
    let done = job.finish();
    let listed = done.listed();
    eprintln!(
        "{name} ({}): {} processes listed, {} held by pidfd before the stop",
        mechanism.name(),
        listed.len(),
        procs.procs.len()
    );
    if sandbox.cgroup.is_none() {
        // Without a cgroup around corral, check the late ones one by one.
        procs.open_late(&listed);
    }
    procs.assert_all_gone(name);
    sandbox.assert_clean();
    done.assert_code(code);
    done.assert_report_basics(mechanism);
}
