//! `--leftovers kill|wait`: a grandchild that would exit 0 by itself 300 ms after COMMAND
//! exits. With `wait` the job lasts until it does (its exit marker exists, nothing is
//! stopped); with `kill` (the default) it is stopped before it gets there.

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(leftovers_wait_lets_them_finish, leftovers_kill_stops_them);

fn leftovers_wait_lets_them_finish(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("leftovers-wait", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .args(["--leftovers", "wait"])
        .tree(&["--exit", "0", "late-exit", "--delay", "300ms"])
        .spawn();
    let procs = job.wait_ready(&["top", "late-exit"]);
    job.go();
    let done = job.finish();
    let late = procs.pid("late-exit");
    assert!(
        done.marker_lines()
            .contains(&("late-exit".to_string(), late, 0)),
        "with --leftovers wait the grandchild must be allowed to exit by itself; report:\n{}",
        done.report_text()
    );
    procs.assert_all_gone("leftovers wait");
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    assert!(
        done.report()["stop"].is_null(),
        "nothing needed stopping:\n{}",
        done.report_text()
    );
}

fn leftovers_kill_stops_them(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("leftovers-kill", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .args(["--leftovers", "kill"])
        .tree(&["--exit", "0", "late-exit", "--delay", "5s"])
        .spawn();
    let procs = job.wait_ready(&["top", "late-exit"]);
    job.go();
    let done = job.finish();
    // Not a timing check (flaky under load): the leftover records its own exit in the marker,
    // and the report says why the stop sequence ran.
    assert!(
        done.marker_lines().is_empty(),
        "the leftover exited by itself instead of being stopped (after {:?}):\n{}",
        done.returned_after,
        done.report_text()
    );
    assert_eq!(
        done.report()["stop"]["reason"],
        "leftovers",
        "{}",
        done.report_text()
    );
    procs.assert_all_gone("leftovers kill");
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    done.leftover(procs.pid("late-exit"));
}
