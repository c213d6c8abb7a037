//! The simplest job: COMMAND itself runs until corral is told to stop.

use crate::util::{both_mechanisms, sigterm_stops_tree, Mechanism};

both_mechanisms!(direct_child_is_stopped);

fn direct_child_is_stopped(mechanism: Mechanism) {
    sigterm_stops_tree(mechanism, "direct-child", "sleep", &["top"]);
}
