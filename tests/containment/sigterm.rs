//! Signals sent to corral alone (not its process group): SIGTERM starts the stop sequence
//! with SIGTERM as the polite signal, SIGHUP with SIGHUP, and a second SIGTERM skips the
//! rest of the grace; a first one during a stop that began otherwise does not.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::util::{
    both_mechanisms, read_marker, sigterm_stops_tree, Mechanism, Sandbox, SECOND_SIGNAL_AFTER,
};

both_mechanisms!(
    sigterm_to_corral_stops_the_tree_and_escapee,
    second_sigterm_skips_the_rest_of_the_grace,
    a_first_sigterm_during_a_leftovers_stop_keeps_the_grace,
    sighup_to_corral_is_the_polite_signal,
);

fn sigterm_to_corral_stops_the_tree_and_escapee(mechanism: Mechanism) {
    sigterm_stops_tree(mechanism, "sigterm", "setsid", &["top", "setsid"]);
}

fn second_sigterm_skips_the_rest_of_the_grace(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("second-sigterm", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("60s", Duration::from_secs(60))
        .tree(&["stubborn"])
        .spawn();
    let procs = job.wait_ready(&["top", "stubborn"]);
    job.signal(Signal::TERM);
    // The stubborn process records the polite SIGTERM and carries on: corral is now in
    // its 60 s grace.
    let stubborn = procs.pid("stubborn");
    wait_for_mark(
        &job.dir.join("marker"),
        ("stubborn", stubborn, libc::SIGTERM),
    );
    // A second signal counts from 100 ms after corral took the first in (a stop delivered
    // twice at once is one stop), which it had by the mark seen above: wait that long, with
    // a margin. A timing condition, not a proof of anything.
    std::thread::sleep(SECOND_SIGNAL_AFTER + Duration::from_millis(50));
    let second = Instant::now();
    job.signal(Signal::TERM);
    let done = job.finish();
    let after_second = second.elapsed();
    procs.assert_all_gone("second sigterm");
    sandbox.assert_clean();
    assert!(
        after_second < Duration::from_secs(30),
        "corral took {after_second:?} after the second SIGTERM; it must skip the 60s grace"
    );
    let grace = done.step("grace");
    assert_eq!(
        grace["detail"],
        "cut short by a second signal",
        "{}",
        done.report_text()
    );
    // The second signal sends SIGKILL at once: COMMAND dies of the first signal or of
    // SIGKILL, whichever the scheduler lets happen first.
    done.assert_code_in(&[128 + libc::SIGTERM, 128 + libc::SIGKILL]);
    done.assert_report_basics(mechanism);
    assert!(
        done.stop_steps().iter().any(|s| s == "kill"),
        "{}",
        done.report_text()
    );
    assert_eq!(
        done.stop_outcome().as_deref(),
        Some("killed"),
        "{}",
        done.report_text()
    );
}

/// COMMAND exits leaving a stubborn process, so corral stops it (reason `leftovers`); then
/// SIGTERM reaches corral, as when a batch system (Slurm's linuxproc) signals each process
/// of a job in turn and COMMAND happened to go first. That is the first signal of the stop,
/// not a second one: the grace runs its course.
fn a_first_sigterm_during_a_leftovers_stop_keeps_the_grace(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("leftovers-then-sigterm", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("1s", Duration::from_secs(1))
        .tree(&["--exit", "0", "stubborn"])
        .spawn();
    let procs = job.wait_ready(&["top", "stubborn"]);
    job.go();
    let stubborn = procs.pid("stubborn");
    // The leftovers stop has begun: the stubborn process got corral's polite SIGTERM.
    wait_for_mark(
        &job.dir.join("marker"),
        ("stubborn", stubborn, libc::SIGTERM),
    );
    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone("leftovers stop, then sigterm");
    sandbox.assert_clean();
    let grace = done.step("grace");
    assert_eq!(
        grace["detail"],
        "1000 ms passed",
        "the grace is not cut short:\n{}",
        done.report_text()
    );
    assert_eq!(
        done.stop_outcome().as_deref(),
        Some("killed"),
        "{}",
        done.report_text()
    );
}

fn sighup_to_corral_is_the_polite_signal(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("sighup", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("300ms", Duration::from_millis(300))
        .tree(&["stubborn"])
        .spawn();
    let procs = job.wait_ready(&["top", "stubborn"]);
    job.signal(Signal::HUP);
    let done = job.finish();
    procs.assert_all_gone("sighup");
    sandbox.assert_clean();
    let stubborn = procs.pid("stubborn");
    let got: Vec<i32> = done
        .marker_lines()
        .iter()
        .filter(|(_, p, _)| *p == stubborn)
        .map(|m| m.2)
        .collect();
    assert!(
        got.contains(&libc::SIGHUP) && !got.contains(&libc::SIGTERM),
        "the polite signal must be SIGHUP (the one corral received); the job got {got:?}"
    );
    done.assert_code(128 + libc::SIGHUP);
    done.assert_report_basics(mechanism);
}

/// Waits until the marker file holds `mark`.
fn wait_for_mark(path: &std::path::Path, (role, pid, signo): (&str, i32, i32)) {
    let deadline = Instant::now() + crate::util::READY_DEADLINE;
    while !read_marker(path)
        .iter()
        .any(|(r, p, s)| r == role && *p == pid && *s == signo)
    {
        assert!(
            Instant::now() < deadline,
            "{role} never recorded signal {signo}; marker: {:?}",
            read_marker(path)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
