//! A grandchild stopped with SIGSTOP that has a SIGTERM handler: the stop sequence's
//! SIGCONT must let the handler run (its marker exists) instead of the process being
//! SIGKILLed while stopped.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(
    stopped_leftover_runs_its_sigterm_handler,
    stopped_grandchild_runs_its_sigterm_handler,
    stopped_command_is_stopped_on_timeout,
);

/// COMMAND exits 0 leaving the stopped process behind.
fn stopped_leftover_runs_its_sigterm_handler(mechanism: Mechanism) {
    stopped(mechanism, "stopped-left", true);
}

/// corral gets SIGTERM while COMMAND still waits for the stopped process.
fn stopped_grandchild_runs_its_sigterm_handler(mechanism: Mechanism) {
    stopped(mechanism, "stopped", false);
}

fn stopped(mechanism: Mechanism, name: &str, left_over: bool) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.grace("5s", Duration::from_secs(5));
    if left_over {
        run.tree(&["--exit", "0", "stopped"]);
    } else {
        run.tree(&["stopped"]);
    }
    let job = run.spawn();
    // `top` is listed only after it saw the child stopped (waitpid WUNTRACED).
    let procs = job.wait_ready(&["stopped", "top"]);
    if left_over {
        job.go();
    } else {
        job.signal(Signal::TERM);
    }
    let done = job.finish();
    let stopped = procs.pid("stopped");
    assert!(
        done.marker_lines()
            .contains(&("stopped".to_string(), stopped, libc::SIGTERM)),
        "the stopped process's SIGTERM handler did not run (marker: {:?}); report:\n{}",
        done.marker_lines(),
        done.report_text()
    );
    procs.assert_all_gone(name);
    sandbox.assert_clean();
    done.assert_code(if left_over { 0 } else { 128 + libc::SIGTERM });
    done.assert_report_basics(mechanism);
    done.assert_stop_outcome("exited");
}

/// COMMAND stops itself (SIGSTOP) and is never continued: the timeout's stop sequence must
/// still end it.
fn stopped_command_is_stopped_on_timeout(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("stopped-command", mechanism) else {
        return;
    };
    let done = sandbox
        .corral(mechanism)
        .args(["--timeout", "300ms"])
        .grace("5s", Duration::from_secs(5))
        .tree(&["kill", &libc::SIGSTOP.to_string()])
        .run();
    sandbox.assert_clean();
    done.assert_code(124);
    done.assert_report_basics(mechanism);
    assert_eq!(done.report()["timed_out"], true, "{}", done.report_text());
}
