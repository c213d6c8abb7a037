//! The library API used in-process (cgroup mechanism only: the pgroup mechanism makes the
//! calling process a subreaper and claims all of its children, which in a test binary
//! would include other tests' processes).

use std::time::Duration;

use corral_testkit::poll_until;

use crate::util::{Sandbox, TESTTREE};

fn options(sandbox: &Sandbox) -> corral::Options {
    corral::Options {
        mechanism: corral::MechanismRequest::Cgroup,
        cgroup_parent: Some(sandbox.cgroup().jobs()),
        grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Polls `job.members()` until it lists at least `n` processes, against a deadline.
fn wait_members(job: &corral::Job, n: usize) -> Vec<u32> {
    poll_until(format_args!("{n} members"), Duration::from_secs(15), || {
        let members = job.members().expect("members");
        match members.len() >= n {
            true => Ok(members),
            false => Err(format!("only {members:?}")),
        }
    })
}

#[test]
fn wait_stops_leftovers_and_reports_them() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-wait") else {
        return;
    };
    let cmd = corral::JobCommand::new("sh")
        .arg("-c")
        .arg("sleep 1000 & setsid sleep 1000 & exit 7");
    let mut job = corral::Job::spawn_command(&cmd, &options(&sandbox)).expect("spawn");
    assert_eq!(job.mechanism(), corral::Mechanism::Cgroup);
    let cgroup = job
        .cgroup()
        .expect("a cgroup job has a cgroup")
        .to_path_buf();
    assert!(
        cgroup.starts_with(sandbox.cgroup().jobs()),
        "{}",
        cgroup.display()
    );
    let report = job.wait().expect("wait");
    assert_eq!(report.exit_status, 7);
    assert_eq!(report.leftovers.len(), 2, "{report:#?}");
    assert!(report.survivors.is_empty(), "{report:#?}");
    assert_eq!(report.cleanup.cgroup_removed, Some(true));
    assert!(
        !cgroup.exists(),
        "the job cgroup {} must be removed",
        cgroup.display()
    );
    sandbox.assert_clean();
}

#[test]
fn stop_runs_the_ladder_and_kill_skips_it() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-stop") else {
        return;
    };
    for (kill, outcome) in [
        (false, corral::StopOutcome::Exited),
        (true, corral::StopOutcome::Killed),
    ] {
        let cmd = corral::JobCommand::new("sh")
            .arg("-c")
            .arg("sleep 1000 & sleep 1000 & wait");
        let mut job = corral::Job::spawn_command(&cmd, &options(&sandbox)).expect("spawn");
        wait_members(&job, 3);
        let report = if kill { job.kill() } else { job.stop() }.expect("stop");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, corral::StopReason::Requested);
        assert_eq!(stop.outcome, outcome, "{report:#?}");
        assert!(report.survivors.is_empty(), "{report:#?}");
        assert_eq!(
            stop.steps.first().map(|s| s.step.name()),
            Some(if kill { "kill" } else { "signal" })
        );
    }
    sandbox.assert_clean();
}

#[test]
fn drop_kills_and_removes_the_job() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-drop") else {
        return;
    };
    let cmd = corral::JobCommand::new(TESTTREE).arg("setsid");
    let job = corral::Job::spawn_command(&cmd, &options(&sandbox)).expect("spawn");
    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
    let members = wait_members(&job, 2);
    let pidfds: Vec<_> = members
        .iter()
        .filter_map(|p| rustix::process::Pid::from_raw(*p as i32))
        .filter_map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
        .collect();
    assert!(!pidfds.is_empty());
    drop(job);
    for fd in &pidfds {
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        let n = rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )
        .expect("poll");
        assert_eq!(n, 1, "a member outlived the dropped Job");
    }
    assert!(!cgroup.exists(), "Drop must remove {}", cgroup.display());
    sandbox.assert_clean();
}

#[test]
fn timeout_gives_124_and_preserve_status_the_childs() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-timeout") else {
        return;
    };
    for (preserve, status) in [(false, 124), (true, 128 + libc::SIGTERM)] {
        let opts = corral::Options {
            timeout: Some(Duration::from_millis(200)),
            preserve_status: preserve,
            ..options(&sandbox)
        };
        let report =
            corral::Job::spawn_command(&corral::JobCommand::new("sleep").arg("1000"), &opts)
                .expect("spawn")
                .wait()
                .expect("wait");
        assert!(report.timed_out);
        assert_eq!(report.exit_status, status, "{report:#?}");
        assert_eq!(
            report.stop.as_ref().map(|s| s.reason),
            Some(corral::StopReason::Timeout)
        );
    }
    sandbox.assert_clean();
}

#[test]
fn jobs_from_many_threads_do_not_interfere() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-threads") else {
        return;
    };
    let opts = options(&sandbox);
    std::thread::scope(|s| {
        for i in 0..8 {
            let opts = opts.clone();
            s.spawn(move || {
                let cmd = corral::JobCommand::new("sh")
                    .arg("-c")
                    .arg(format!("sleep 1000 & exit {i}"));
                let report = corral::Job::spawn_command(&cmd, &opts)
                    .expect("spawn")
                    .wait()
                    .expect("wait");
                assert_eq!(report.exit_status, i);
                assert_eq!(report.leftovers.len(), 1, "{report:#?}");
                assert!(report.survivors.is_empty());
            });
        }
    });
    sandbox.assert_clean();
}

#[test]
fn bad_parent_is_an_error_and_leaves_nothing() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-bad-parent") else {
        return;
    };
    let opts = corral::Options {
        cgroup_parent: Some("/tmp".into()),
        ..options(&sandbox)
    };
    let err =
        corral::Job::spawn_command(&corral::JobCommand::new("true"), &opts).expect_err("an error");
    assert!(err.is_usage(), "{err}");
    assert!(err.to_string().contains("cgroup2"), "{err}");
    let err =
        corral::Job::spawn_command(&corral::JobCommand::new("/nonexistent"), &options(&sandbox))
            .expect_err("an error");
    assert!(matches!(err, corral::Error::NotFound { .. }), "{err}");
    sandbox.assert_clean();
}

#[test]
fn signal_reaches_every_member() {
    let Some(sandbox) = Sandbox::with_cgroup("lib-signal") else {
        return;
    };
    // Three processes that each exit 0 on SIGUSR1 and would otherwise sleep.
    let script = "for i in 1 2; do sh -c 'trap \"exit 0\" USR1; sleep 1000 & wait' & done; \
                  trap 'exit 0' USR1; sleep 1000 & wait";
    // The timeout turns a signal that reached nobody into a failure instead of a hang.
    let opts = corral::Options {
        timeout: Some(Duration::from_secs(10)),
        ..options(&sandbox)
    };
    let mut job =
        corral::Job::spawn_command(&corral::JobCommand::new("sh").arg("-c").arg(script), &opts)
            .expect("spawn");
    wait_members(&job, 6);
    let reached = job
        .signal(corral::Signal::from_raw(libc::SIGUSR1).unwrap())
        .expect("signal");
    assert!(reached >= 6, "reached {reached}");
    let report = job.wait().expect("wait");
    assert_eq!(report.exit_status, 0, "{report:#?}");
    assert!(report.survivors.is_empty(), "{report:#?}");
    sandbox.assert_clean();
}

/// `JobCommand`'s stdio: piped streams are the job's `stdin`, `stdout` and `stderr` (the
/// child's ends closed in the caller, so reading ends at the child's exit), and `Null` is
/// `/dev/null`.
#[test]
fn spawn_command_pipes_and_nulls_stdio() {
    use std::io::{Read, Write};
    let Some(sandbox) = Sandbox::with_cgroup("lib-stdio") else {
        return;
    };
    let cmd = corral::JobCommand::new("sh")
        .arg("-c")
        .arg("read line; echo \"out:$line\"; echo err >&2")
        .stdin(corral::JobStdio::Piped)
        .stdout(corral::JobStdio::Piped)
        .stderr(corral::JobStdio::Piped);
    let mut job = corral::Job::spawn_command(&cmd, &options(&sandbox)).expect("spawn");
    let mut stdin = job.stdin.take().expect("piped stdin");
    stdin.write_all(b"hello\n").expect("write stdin");
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    job.stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    job.stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!((out.as_str(), err.as_str()), ("out:hello\n", "err\n"));
    assert_eq!(job.wait().expect("wait").exit_status, 0);

    // `cat` of a null stdin ends at once, and writes nothing to a piped stdout.
    let cmd = corral::JobCommand::new("cat")
        .stdin(corral::JobStdio::Null)
        .stdout(corral::JobStdio::Piped);
    let mut job = corral::Job::spawn_command(&cmd, &options(&sandbox)).expect("spawn");
    assert!(job.stdin.is_none() && job.stderr.is_none());
    let mut out = Vec::new();
    job.stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)
        .expect("read stdout");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(job.wait().expect("wait").exit_status, 0);
    sandbox.assert_clean();
}
