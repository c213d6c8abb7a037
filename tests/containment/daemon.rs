//! A classic double-fork daemon (`setsid`, fork, the middle process exits, stdio on
//! /dev/null, cwd /), after which COMMAND exits 0. The daemon is a leftover: corral must
//! kill it and name it in the report with `left_session: true`.

use crate::util::{both_mechanisms, leftover_is_stopped, Mechanism};

both_mechanisms!(double_fork_daemon_is_killed_and_reported);

fn double_fork_daemon_is_killed_and_reported(mechanism: Mechanism) {
    leftover_is_stopped(mechanism, "daemon", "daemon", "daemon", true, true);
}
