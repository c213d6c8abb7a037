//! Signals sent to corral alone (not its process group): SIGTERM starts the stop sequence
//! with SIGTERM as the polite signal, SIGHUP with SIGHUP, and a second SIGTERM skips the
//! rest of the grace; a first one during a stop that began otherwise does not.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{
    both_mechanisms, second_signal_cuts_the_grace, sigterm_stops_tree, Mechanism, Sandbox,
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
    job.wait_signalled(procs.pid("stubborn"), &[libc::SIGTERM]);
    let done = second_signal_cuts_the_grace(
        &sandbox,
        mechanism,
        (job, &procs),
        (libc::SIGTERM, "second SIGTERM"),
        |job| job.signal(Signal::TERM),
    );
    done.assert_stop_outcome("killed");
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
    // The leftovers stop has begun: the stubborn process got corral's polite SIGTERM.
    job.wait_signalled(procs.pid("stubborn"), &[libc::SIGTERM]);
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
    done.assert_stop_outcome("killed");
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
    let got = done.signals_of(stubborn);
    assert!(
        got.contains(&libc::SIGHUP) && !got.contains(&libc::SIGTERM),
        "the polite signal must be SIGHUP (the one corral received); the job got {got:?}"
    );
    done.assert_code(128 + libc::SIGHUP);
    done.assert_report_basics(mechanism);
}
