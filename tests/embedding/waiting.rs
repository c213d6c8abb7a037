//! `try_wait`, `wait_timeout`, `stop` and `kill`: the non-blocking calls do not block, a
//! timed wait leaves a running job alone, and every call made after the job is over
//! returns the same report.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cgroup_options, pidfd, wait_until, DEADLINE};
use crate::util::{exited, Sandbox};

#[test]
fn try_wait_is_none_while_running_then_the_report() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-try-wait") else {
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "read x; exit 3"]).stdin(Stdio::piped());
    let mut job = corral::Job::spawn(&mut cmd, &cgroup_options(&sandbox)).expect("spawn");
    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
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
    wait_until(DEADLINE, "try_wait returns the report", || {
        report = job.try_wait().expect("try_wait");
        report.is_some()
    });
    let report = report.unwrap();
    assert_eq!(report.exit_status, 3, "{report:#?}");
    assert_eq!(report.exit.and_then(|e| e.code), Some(3));
    assert!(report.stop.is_none(), "{report:#?}");
    assert!(report.leftovers.is_empty(), "{report:#?}");
    assert_eq!(report.cleanup.cgroup_removed, Some(true));
    assert!(!cgroup.exists());
    assert!(job.members().expect("members").is_empty());

    assert_eq!(
        job.try_wait().expect("try_wait again").as_ref(),
        Some(&report)
    );
    assert_eq!(job.report(), Some(&report));
    assert_eq!(job.wait().expect("wait after try_wait"), report);
    sandbox.assert_clean();
}

#[test]
fn wait_timeout_leaves_the_job_running_and_stop_ends_it() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-wait-timeout") else {
        return;
    };
    let mut cmd = Command::new("sleep");
    cmd.arg("1000");
    let mut job = corral::Job::spawn(&mut cmd, &cgroup_options(&sandbox)).expect("spawn");
    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
    // Our unreaped child (the job has not been waited for): its PID is its own.
    let main = pidfd(job.pid());

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
    assert!(report.survivors.is_empty());
    assert!(exited(main.as_fd()));
    assert!(!cgroup.exists());

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

#[test]
fn kill_after_exit_returns_the_same_report() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-kill-after") else {
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 0"]);
    let mut job = corral::Job::spawn(&mut cmd, &cgroup_options(&sandbox)).expect("spawn");
    let report = job.wait().expect("wait");
    assert_eq!(report.exit_status, 0);
    assert!(report.stop.is_none(), "{report:#?}");
    assert_eq!(job.kill().expect("kill after wait"), report);
    assert_eq!(job.stop().expect("stop after wait"), report);
    sandbox.assert_clean();
}
