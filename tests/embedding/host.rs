//! No process-wide side effects: a fresh program embedding the library (`corral-host`, see
//! `testkit/src/bin/corral-host.rs`) runs jobs of each mechanism, pgroup ones under the default
//! supervisor (found next to `corral-host`), and checks that it is still no child
//! subreaper, that its own child's exit status is still its to collect, that its SIGINT
//! handler still runs, and that its thread count, signal dispositions and signal mask are
//! as before. A fresh process, so that other tests' children and threads cannot blur the
//! checks.
//!
//! The host runs in the test's cgroup sandbox (when there is one), so anything it leaves
//! behind is found there.

use std::ffi::OsString;
use std::process::{Command, ExitStatus, Stdio};

use crate::common::{read_in_thread, recv_bytes, Outside, DEADLINE};
use crate::util::{both_mechanisms, describe_status, place_in_cgroup, Mechanism, Sandbox};

const HOST: &str = corral_testkit::HOST;

/// Every check the host must report as passed.
const CHECKS: &[&str] = &[
    "(a) no child subreaper before the jobs",
    "(a) no child subreaper while a job runs",
    "(a) no child subreaper after the jobs",
    "(b) the host's own child still gives its status 42 to the host",
    "(c) the host's SIGINT handler runs while a job runs",
    "(c) the host's SIGINT handler runs after the jobs",
    "(d) thread count",
    "(e) signal dispositions while a job runs",
    "(e) signal dispositions 1..=31",
    "(f) blocked signals",
    "(g) no child of the host left",
    "job mechanism",
    "wait: status 3, one leftover stopped",
    "wait_timeout: still running",
    "stop: the main process died of SIGTERM",
    "kill: everything killed",
    "wait_with_output: stdout and stderr",
    "try_wait: the report once over",
    "drop: the job's tree started",
];

both_mechanisms!(no_side_effects_on_the_host);

fn no_side_effects_on_the_host(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-host", mechanism) else {
        return;
    };
    let mut args = vec![mechanism.name().into()];
    if mechanism == Mechanism::Cgroup {
        args.push("--cgroup-parent".into());
        args.push(sandbox.cgroup().jobs().into_os_string());
    }
    let host = run_host(&sandbox, &args);
    assert!(
        host.status.success(),
        "corral-host {}: {}\n{}",
        mechanism.name(),
        describe_status(host.status),
        host.output()
    );
    let missing: Vec<&&str> = CHECKS
        .iter()
        .filter(|c| !host.stdout.contains(&format!("check {c}: ok\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "corral-host did not pass {missing:?}\n{}",
        host.output()
    );
    // Nothing the host started outlived it (the host ran in the sandbox's `corral` leaf).
    sandbox.assert_clean();
}

/// The checks can fail: `Supervisor::InProcess` makes the host a child subreaper while a
/// job runs and reaps the host's own child, and the host says so.
#[test]
fn checks_catch_an_in_process_supervisor() {
    let sandbox = Sandbox::new("embed-host-in-process");
    let host = run_host(&sandbox, &["pgroup".into(), "--in-process".into()]);
    assert!(
        !host.status.success(),
        "the host found no side effect of an in-process supervisor\n{}",
        host.output()
    );
    for failure in [
        "FAIL (a) no child subreaper while a job runs:",
        "FAIL (b) the host's own child still gives its status 42 to the host:",
    ] {
        assert!(
            host.stdout.contains(failure),
            "expected `{failure}`\n{}",
            host.output()
        );
    }
    sandbox.assert_clean();
}

/// What a `corral-host` run printed.
struct HostRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl HostRun {
    fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `corral-host ARGS` in the sandbox's `corral` leaf (when it has a cgroup subtree)
/// and waits for it, against a deadline.
fn run_host(sandbox: &Sandbox, args: &[OsString]) -> HostRun {
    let mut cmd = Command::new(HOST);
    cmd.args(args)
        .env_remove("CORRAL_SUPERVISOR")
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(tree) = &sandbox.cgroup {
        place_in_cgroup(&mut cmd, &tree.corral_leaf());
    }
    let mut host = Outside::spawn(&mut cmd);
    let stdout = read_in_thread(host.child_mut().stdout.take().unwrap());
    let stderr = read_in_thread(host.child_mut().stderr.take().unwrap());
    let status = host.wait_within(DEADLINE);
    // Killed here if it did not finish; then its pipes reach EOF unless something it
    // started holds them (found by the deadline of `recv_bytes`, then the sandbox).
    drop(host);
    let stdout = String::from_utf8_lossy(&recv_bytes(&stdout, "host stdout")).into_owned();
    let stderr = String::from_utf8_lossy(&recv_bytes(&stderr, "host stderr")).into_owned();
    let status = status.unwrap_or_else(|| {
        panic!(
            "corral-host {args:?} did not finish within {DEADLINE:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )
    });
    HostRun {
        status,
        stdout,
        stderr,
    }
}
