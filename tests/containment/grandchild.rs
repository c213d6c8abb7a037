//! A grandchild that stays in COMMAND's process group and session (`sh -c 'sleep 1000 &
//! wait'`).

use crate::util::{both_mechanisms, leftover_is_stopped, sigterm_stops_tree, Mechanism};

both_mechanisms!(
    grandchild_is_stopped_with_its_parent,
    grandchild_left_over_is_stopped
);

/// Stopped while COMMAND still waits for it.
fn grandchild_is_stopped_with_its_parent(mechanism: Mechanism) {
    sigterm_stops_tree(
        mechanism,
        "grandchild",
        "grandchild",
        &["top", "grandchild"],
    );
}

/// Still running when COMMAND exits 0.
fn grandchild_left_over_is_stopped(mechanism: Mechanism) {
    leftover_is_stopped(
        mechanism,
        "grandchild-left",
        "grandchild",
        "grandchild",
        false,
        false,
    );
}
