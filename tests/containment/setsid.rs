//! A grandchild that calls `setsid()`: it leaves COMMAND's process group and session.

use crate::util::{both_mechanisms, leftover_is_stopped, sigterm_stops_tree, Mechanism};

both_mechanisms!(
    setsid_escapee_is_stopped,
    setsid_escapee_left_over_is_stopped
);

fn setsid_escapee_is_stopped(mechanism: Mechanism) {
    sigterm_stops_tree(mechanism, "setsid", "setsid", &["top", "setsid"]);
}

fn setsid_escapee_left_over_is_stopped(mechanism: Mechanism) {
    leftover_is_stopped(mechanism, "setsid-left", "setsid", "setsid", true, true);
}
