//! corral's exit status: COMMAND's own; 128+N when COMMAND was killed by signal N; 124 on
//! timeout (COMMAND's own with `--preserve-status`); 127 not found; 126 not executable.

use std::os::unix::fs::PermissionsExt;

use crate::util::{both_mechanisms, Finished, Mechanism, Run, Sandbox};

both_mechanisms!(
    exit_0,
    exit_3,
    exit_3_with_sigchld_ignored_by_the_caller,
    exit_255,
    killed_by_sigkill_is_137,
    killed_by_sigterm_is_143,
    timeout_is_124,
    timeout_with_preserve_status_gives_the_signal_status,
    timeout_with_preserve_status_gives_the_exit_code,
    timeout_without_preserve_status_hides_the_exit_code,
    not_found_is_127,
    not_found_in_path_is_127,
    not_executable_is_126,
    directory_is_126,
);

/// Runs corral as `configure` says and checks that nothing is left; returns the result.
fn status(
    mechanism: Mechanism,
    name: &str,
    roles: &[&str],
    configure: impl FnOnce(&mut Run),
) -> Option<Finished> {
    let sandbox = Sandbox::for_mechanism(name, mechanism)?;
    let mut run = sandbox.corral(mechanism);
    configure(&mut run);
    let job = run.spawn();
    // With a short --timeout the tree may be stopping already: tolerate listed processes
    // that are gone.
    let procs = job.wait_listed(roles);
    let done = job.finish();
    let mut procs = procs;
    procs.open_late(&done.listed());
    procs.assert_all_gone(name);
    sandbox.assert_clean();
    Some(done)
}

fn expect(
    mechanism: Mechanism,
    name: &str,
    code: i32,
    roles: &[&str],
    configure: impl FnOnce(&mut Run),
) -> Option<Finished> {
    let done = status(mechanism, name, roles, configure)?;
    done.assert_code(code);
    done.assert_report_basics(mechanism);
    Some(done)
}

/// The report's `exit`: how COMMAND itself ended.
fn assert_exit(done: Option<Finished>, code: Option<i32>, signal: Option<i32>) {
    let Some(done) = done else { return };
    let exit = &done.report()["exit"];
    assert_eq!(
        (exit["code"].as_i64(), exit["signal"].as_i64()),
        (code.map(i64::from), signal.map(i64::from)),
        "report's exit (code, signal):\n{}",
        done.report_text()
    );
}

fn exit_0(mechanism: Mechanism) {
    expect(mechanism, "exit-0", 0, &[], |run| {
        run.tree(&["exit", "0"]);
    });
}

fn exit_3(mechanism: Mechanism) {
    let done = expect(mechanism, "exit-3", 3, &[], |run| {
        run.tree(&["exit", "3"]);
    });
    assert_exit(done, Some(3), None);
}

/// A caller that ignores SIGCHLD (inherited through exec) must not cost COMMAND's status:
/// the kernel would reap corral's children itself, and every wait would fail.
fn exit_3_with_sigchld_ignored_by_the_caller(mechanism: Mechanism) {
    let done = expect(mechanism, "exit-3-sigchld", 3, &[], |run| {
        run.ignore_sigchld().tree(&["exit", "3"]);
    });
    assert_exit(done, Some(3), None);
}

fn exit_255(mechanism: Mechanism) {
    expect(mechanism, "exit-255", 255, &[], |run| {
        run.tree(&["exit", "255"]);
    });
}

fn killed_by_sigkill_is_137(mechanism: Mechanism) {
    let done = expect(mechanism, "sigkill", 137, &[], |run| {
        run.tree(&["kill", "9"]);
    });
    assert_exit(done, None, Some(9));
}

fn killed_by_sigterm_is_143(mechanism: Mechanism) {
    expect(mechanism, "sigterm-self", 143, &[], |run| {
        run.tree(&["kill", "15"]);
    });
}

fn timeout_is_124(mechanism: Mechanism) {
    if let Some(done) = status(mechanism, "timeout", &["top"], |run| {
        run.args(["--timeout", "300ms"]).tree(&["sleep"]);
    }) {
        done.assert_code(124);
        done.assert_report_basics(mechanism);
        assert_eq!(done.report()["timed_out"], true, "{}", done.report_text());
    }
}

fn timeout_with_preserve_status_gives_the_signal_status(mechanism: Mechanism) {
    expect(mechanism, "timeout-preserve-signal", 143, &["top"], |run| {
        run.args(["--timeout", "300ms", "--preserve-status"])
            .tree(&["sleep"]);
    });
}

fn timeout_with_preserve_status_gives_the_exit_code(mechanism: Mechanism) {
    let done = expect(mechanism, "timeout-preserve-code", 42, &["top"], |run| {
        run.args(["--timeout", "300ms", "--preserve-status"])
            .tree(&["term-exit", "42"]);
    });
    assert_exit(done, Some(42), None);
}

fn timeout_without_preserve_status_hides_the_exit_code(mechanism: Mechanism) {
    expect(mechanism, "timeout-code", 124, &["top"], |run| {
        run.args(["--timeout", "300ms"]).tree(&["term-exit", "42"]);
    });
}

fn not_found_is_127(mechanism: Mechanism) {
    not_started(mechanism, "not-found", 127, |run| {
        run.args(["--", "/nonexistent-corral-test-dir/no-such-command"]);
    });
}

fn not_found_in_path_is_127(mechanism: Mechanism) {
    not_started(mechanism, "not-found-path", 127, |run| {
        run.args(["--", "corral-test-no-such-command-in-path"]);
    });
}

fn not_executable_is_126(mechanism: Mechanism) {
    not_started(mechanism, "not-executable", 126, |run| {
        let file = run.dir.join("not-executable");
        std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        run.arg("--").arg(file);
    });
}

fn directory_is_126(mechanism: Mechanism) {
    not_started(mechanism, "directory", 126, |run| {
        let dir = run.dir.clone();
        run.arg("--").arg(dir);
    });
}

/// COMMAND cannot be started: corral returns `code`, and leaves no cgroup or process.
fn not_started(mechanism: Mechanism, name: &str, code: i32, configure: impl FnOnce(&mut Run)) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    configure(&mut run);
    let done = run.run();
    done.assert_code(code);
    sandbox.assert_clean();
}
