//! A grandchild whose SIGTERM handler needs 300 ms: with a 5 s grace it must be allowed to
//! finish (its marker exists), nothing is killed, and corral returns as soon as the job is
//! empty rather than at the end of the grace.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(slow_sigterm_handler_finishes_within_the_grace);

fn slow_sigterm_handler_finishes_within_the_grace(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("graceful", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("5s", Duration::from_secs(5))
        .tree(&["slow-term", "--delay", "300ms"])
        .spawn();
    let procs = job.wait_ready(&["top", "slow-term"]);
    job.signal(Signal::TERM);
    let done = job.finish();
    // The handler writes its marker just before it exits, so the marker must be there the
    // moment corral returns.
    let slow = procs.pid("slow-term");
    let marks: Vec<_> = done
        .marker_lines()
        .into_iter()
        .filter(|(_, pid, _)| *pid == slow)
        .collect();
    assert_eq!(
        marks,
        vec![("slow-term".to_string(), slow, libc::SIGTERM)],
        "the slow SIGTERM handler did not finish before corral returned; report:\n{}",
        done.report_text()
    );
    procs.assert_all_gone("graceful");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(mechanism);
    assert!(
        !done.stop_steps().iter().any(|s| s == "kill"),
        "nothing needed SIGKILL:\n{}",
        done.report_text()
    );
    done.assert_stop_outcome("exited");
    // It must return once the job is empty, not wait out the grace: the grace step says so
    // (not a timing check, which would be flaky under load).
    let grace = done.step("grace");
    assert_eq!(
        grace["detail"],
        "all exited",
        "the grace must end when the job is empty (after {:?}):\n{}",
        done.returned_after,
        done.report_text()
    );
}
