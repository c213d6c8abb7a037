//! `try_wait`, `wait_timeout`, `stop` and `kill`: the non-blocking calls do not block, a
//! timed wait leaves a running job alone, and every call made after the job is over
//! returns the same report.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;

use crate::common::{assert_cleaned_up, assert_in_job, options, pidfd, OwnChild, DEADLINE};
use crate::util::{both_mechanisms, exited, Mechanism, Sandbox};

both_mechanisms!(
    try_wait_is_none_while_running_then_the_report,
    wait_timeout_leaves_the_job_running_and_stop_ends_it,
    kill_after_exit_returns_the_same_report,
);

fn try_wait_is_none_while_running_then_the_report(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-try-wait", mechanism) else {
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "read x; exit 3"]).stdin(Stdio::piped());
    let mut job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let own_child = OwnChild::of(&job);
    for _ in 0..3 {
        let started = Instant::now();
        assert!(job.try_wait().expect("try_wait").is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "try_wait blocked for {:?}",
            started.elapsed()
        );
    }
    assert!(job.report().is_none());
    assert_eq!(job.members().expect("members"), vec![job.pid()]);

    let mut stdin = job.stdin.take().expect("stdin was piped");
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let mut report = None;
    poll_until("try_wait returns the report", DEADLINE, || {
        report = job.try_wait().expect("try_wait");
        report.is_some()
    });
    let report = report.unwrap();
    assert_eq!(report.exit_status, 3, "{report:#?}");
    assert_eq!(report.exit.and_then(|e| e.code), Some(3));
    assert!(report.stop.is_none(), "{report:#?}");
    assert!(report.leftovers.is_empty(), "{report:#?}");
    assert_cleaned_up(&report, mechanism);
    own_child.assert_reaped();
    assert!(job.members().expect("members").is_empty());

    assert_eq!(
        job.try_wait().expect("try_wait again").as_ref(),
        Some(&report)
    );
    assert_eq!(job.report(), Some(&report));
    assert_eq!(job.wait().expect("wait after try_wait"), report);
    sandbox.assert_clean();
}

fn wait_timeout_leaves_the_job_running_and_stop_ends_it(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-wait-timeout", mechanism) else {
        return;
    };
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let mut job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let own_child = OwnChild::of(&job);
    let main = pidfd(job.pid());
    // Opened by PID: check it is the job's main process.
    assert_in_job(&job, job.pid(), "main process");

    let started = Instant::now();
    assert!(job
        .wait_timeout(Duration::from_millis(50))
        .expect("wait_timeout")
        .is_none());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(50),
        "wait_timeout(50ms) returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "wait_timeout(50ms) took {waited:?}"
    );
    assert!(!exited(main.as_fd()), "wait_timeout touched the job");
    assert_eq!(job.members().expect("members"), vec![job.pid()]);
    assert!(job
        .wait_timeout(Duration::ZERO)
        .expect("wait_timeout(0)")
        .is_none());
    assert!(job.report().is_none());

    let report = job.stop().expect("stop");
    assert_eq!(report.exit.and_then(|e| e.signal), Some(libc::SIGTERM));
    assert_eq!(report.exit_status, 128 + libc::SIGTERM);
    let stop = report.stop.as_ref().expect("a stop report");
    assert_eq!(stop.reason, corral::StopReason::Requested);
    assert_eq!(stop.outcome, corral::StopOutcome::Exited, "{report:#?}");
    assert_cleaned_up(&report, mechanism);
    assert!(exited(main.as_fd()));
    own_child.assert_reaped();

    // Over: every call gives the same report back, and nothing is signalled again.
    assert_eq!(job.stop().expect("stop again"), report);
    assert_eq!(job.kill().expect("kill after stop"), report);
    assert_eq!(job.wait().expect("wait after stop"), report);
    assert_eq!(
        job.try_wait().expect("try_wait after stop"),
        Some(report.clone())
    );
    assert_eq!(
        job.wait_timeout(Duration::from_millis(10))
            .expect("wait_timeout after stop"),
        Some(report.clone())
    );
    assert_eq!(
        job.signal(corral::Signal::TERM).expect("signal after stop"),
        0
    );
    sandbox.assert_clean();
}

fn kill_after_exit_returns_the_same_report(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-kill-after", mechanism) else {
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 0"]);
    let mut job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let report = job.wait().expect("wait");
    assert_eq!(report.exit_status, 0);
    assert!(report.stop.is_none(), "{report:#?}");
    assert_cleaned_up(&report, mechanism);
    assert_eq!(job.kill().expect("kill after wait"), report);
    assert_eq!(job.stop().expect("stop after wait"), report);
    sandbox.assert_clean();
}

both_mechanisms!(no_stop_without_leftovers);

/// A job whose main process exits and leaves nothing behind ends without a stop sequence:
/// `stop` is `None` (a stop "for leftovers" with no leftovers is a wrong report). Many
/// jobs, from 4 threads at once, since a wrong answer here comes from a race with the
/// job's end.
fn no_stop_without_leftovers(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-no-stop", mechanism) else {
        return;
    };
    let opts = options(&sandbox, mechanism);
    let wrong = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    let mut cmd = Command::new("true");
                    let report = corral::Job::spawn(&mut cmd, &opts)
                        .expect("spawn")
                        .wait()
                        .expect("wait");
                    assert_eq!(report.exit_status, 0, "{report:#?}");
                    assert!(report.leftovers.is_empty(), "{report:#?}");
                    assert_cleaned_up(&report, mechanism);
                    if let Some(stop) = report.stop {
                        let steps: Vec<&str> = stop.steps.iter().map(|s| s.step.name()).collect();
                        wrong
                            .lock()
                            .unwrap()
                            .push(format!("{:?}, steps {steps:?}", stop.reason));
                    }
                }
            });
        }
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "{} of 100 jobs with no leftovers ran a stop sequence:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    sandbox.assert_clean();
}
