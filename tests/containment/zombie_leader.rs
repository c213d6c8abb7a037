//! A process whose main thread has exited while another thread runs on: its thread-group
//! leader is a zombie (`Z` in `/proc/<pid>/stat`), yet the process is alive and must be
//! stopped like any other.

use crate::util::{both_mechanisms, leftover_is_stopped, sigterm_stops_tree, Mechanism};

both_mechanisms!(zombie_leader_is_stopped, zombie_leader_left_over_is_stopped);

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
