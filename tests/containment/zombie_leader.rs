//! A process whose main thread has exited while another thread runs on: its thread-group
//! leader is a zombie (`Z` in `/proc/<pid>/stat`), yet the process is alive and must be
//! stopped like any other. Note that `cgroup.kill` alone does not kill such a process
//! (the kernel sends the SIGKILL to the exited leader thread only, which never acts on it),
//! so the escalation case checks that SIGKILL reaches it anyway.

use std::time::Duration;

use crate::util::{both_mechanisms, leftover_is_stopped, sigterm_stops_tree, Mechanism, Sandbox};

both_mechanisms!(
    zombie_leader_is_stopped,
    zombie_leader_left_over_is_stopped,
    zombie_leader_ignoring_sigterm_is_killed,
);

fn zombie_leader_is_stopped(mechanism: Mechanism) {
    sigterm_stops_tree(
        mechanism,
        "zombie-leader",
        "zombie-leader",
        &["top", "zombie-leader"],
    );
}

fn zombie_leader_left_over_is_stopped(mechanism: Mechanism) {
    leftover_is_stopped(
        mechanism,
        "zombie-leader-left",
        "zombie-leader",
        "zombie-leader",
        false,
        false,
    );
}

/// Ignores SIGTERM too: only SIGKILL ends it, after a 300 ms grace.
fn zombie_leader_ignoring_sigterm_is_killed(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("zombie-leader-kill", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("300ms", Duration::from_millis(300))
        .tree(&["--exit", "0", "zombie-leader", "--ignore-term"])
        .spawn();
    let (_procs, done) = job.exit_leaving(
        &sandbox,
        mechanism,
        &["top", "zombie-leader"],
        "zombie leader ignoring SIGTERM",
    );
    done.assert_stop_outcome("killed");
}
