//! `wait_with_output` collects the piped stdout and stderr, keeps reading while it waits
//! (a job writing more than a pipe holds does not deadlock), and returns once the job is
//! over even when a process outside the job still holds the pipe.

use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;

use rustix::pipe::{pipe_with, PipeFlags};

use crate::common::{assert_cleaned_up, options, Outside, DEADLINE};
use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(
    collects_stdout_and_stderr,
    reads_more_than_a_pipe_holds,
    returns_while_a_process_outside_the_job_holds_the_pipe,
);

fn collects_stdout_and_stderr(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-output", mechanism) else {
        return;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo out; echo err >&2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let output = job.wait_with_output().expect("wait_with_output");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    assert_eq!(output.report.exit_status, 0, "{:#?}", output.report);
    assert_cleaned_up(&output.report, mechanism);
    sandbox.assert_clean();
}

fn reads_more_than_a_pipe_holds(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-output-big", mechanism) else {
        return;
    };
    // 1 MB: far more than a pipe buffer (64 KiB), so the job blocks unless it is read
    // while being waited for.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "head -c 1000000 /dev/zero; echo done >&2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let output = wait_with_output_within(job).expect("wait_with_output");
    assert_eq!(output.stdout.len(), 1_000_000);
    assert!(output.stdout.iter().all(|b| *b == 0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "done\n");
    assert_eq!(output.report.exit_status, 0, "{:#?}", output.report);
    assert_cleaned_up(&output.report, mechanism);
    sandbox.assert_clean();
}

fn returns_while_a_process_outside_the_job_holds_the_pipe(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-output-held", mechanism) else {
        return;
    };
    let (read, write) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
    let outside_end = write.try_clone().expect("dup the write end");

    // Outside any job: inherits the write end and keeps it open.
    let mut cmd = Command::new("sleep");
    cmd.arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::from(outside_end));
    let outside = Outside::spawn(&mut cmd);
    drop(cmd);

    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo from the job"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write));
    let mut job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    // The Command holds a copy of the write end until dropped.
    drop(cmd);
    // We made the pipe ourselves, so std has no ChildStdout for it: hand the read end over.
    job.stdout = Some(ChildStdout::from(read));

    let result = wait_with_output_within(job);
    assert!(
        !outside.has_exited(),
        "the outside process holding the pipe should still run"
    );
    let status = outside.kill();
    let output =
        result.expect("wait_with_output hung while a process outside the job held the pipe");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from the job\n");
    assert_eq!(output.report.exit_status, 0, "{:#?}", output.report);
    assert!(output.report.leftovers.is_empty(), "{:#?}", output.report);
    assert_cleaned_up(&output.report, mechanism);
    assert!(status.code().is_none(), "outside process: {status:?}");
    sandbox.assert_clean();
}

/// `wait_with_output` on a thread; `None` if it has not returned within [`DEADLINE`] (the
/// thread is left to finish once the test's cleanup closes the pipe).
fn wait_with_output_within(job: corral::Job) -> Option<corral::Output> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job.wait_with_output().expect("wait_with_output"));
    });
    rx.recv_timeout(DEADLINE).ok()
}
