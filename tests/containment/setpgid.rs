//! A grandchild that calls `setpgid(0, 0)`: it leaves COMMAND's process group, so a
//! process-group kill alone would miss it.

use crate::util::{both_mechanisms, leftover_is_stopped, sigterm_stops_tree, Mechanism};

both_mechanisms!(
    setpgid_escapee_is_stopped,
    setpgid_escapee_left_over_is_stopped
);

fn setpgid_escapee_is_stopped(mechanism: Mechanism) {
    sigterm_stops_tree(mechanism, "setpgid", "setpgid", &["top", "setpgid"]);
}

fn setpgid_escapee_left_over_is_stopped(mechanism: Mechanism) {
    leftover_is_stopped(mechanism, "setpgid-left", "setpgid", "setpgid", true, false);
}
