//! The manners of coreutils `timeout` that wrapped commands and their callers rely on,
//! checked side by side with the real `timeout` where it has the case:
//! - COMMAND's death by signal N is re-raised (corral dies of N, without a core dump),
//!   after the report is written; `--no-reraise` gives 128 + N instead;
//! - `--timeout 0` is no timeout; durations take exponents, and huge ones saturate;
//! - a timeout that had to kill COMMAND is 137, as `timeout -k`'s;
//! - Ctrl+C in a shell loop around corral stops the loop (the shell sees its child die of
//!   SIGINT).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;

use crate::util::{describe_status, exited, pidfd_of_child, wait_exited, Sandbox, CORRAL};

/// `corral run --mechanism pgroup ARGS` in the sandbox (its registry, no cgroup parent).
fn corral(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut c = Command::new(CORRAL);
    c.arg("run")
        .args(["--mechanism", "pgroup"])
        .args(args)
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// coreutils `timeout ARGS`.
fn timeout(args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn status(mut c: Command) -> ExitStatus {
    c.status().expect("run it")
}

#[test]
fn a_signal_death_is_reraised_without_a_core_dump_as_timeout_does() {
    let sandbox = Sandbox::new("wrapper-reraise");
    for sig in [libc::SIGSEGV, libc::SIGINT, libc::SIGTERM, libc::SIGABRT] {
        let script = format!("kill -{sig} $$");
        let report = sandbox.dir.join(format!("report-{sig}.json"));
        let report_arg = report.to_string_lossy().into_owned();
        let ours = status(corral(
            &sandbox,
            &["--report", &report_arg, "--", "sh", "-c", &script],
        ));
        let theirs = status(timeout(&["100", "sh", "-c", &script]));
        assert_eq!(
            (ours.signal(), ours.core_dumped()),
            (Some(sig), false),
            "corral for COMMAND killed by {sig}: {}",
            describe_status(ours)
        );
        assert_eq!(
            ours.signal(),
            theirs.signal(),
            "corral {} vs timeout {}",
            describe_status(ours),
            describe_status(theirs)
        );
        // The report came first.
        let text = std::fs::read_to_string(&report).expect("the report is written first");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["exit"]["signal"], sig, "{text}");
        // And --no-reraise gives the shell's number.
        let plain = status(corral(
            &sandbox,
            &["--no-reraise", "--", "sh", "-c", &script],
        ));
        assert_eq!(plain.code(), Some(128 + sig), "{}", describe_status(plain));
    }
}

#[test]
fn timeout_zero_is_no_timeout_and_huge_durations_saturate() {
    let sandbox = Sandbox::new("wrapper-durations");
    for (t, expect) in [
        ("0", 0),
        ("0s", 0),
        ("1e3", 0),
        ("99999999999999999999h", 0),
        ("1e400", 0),
        ("inf", 0),
    ] {
        let ours = status(corral(&sandbox, &["--timeout", t, "--", "sleep", "0.3"]));
        let theirs = status(timeout(&[t, "sleep", "0.3"]));
        assert_eq!(
            ours.code(),
            Some(expect),
            "--timeout {t}: {}",
            describe_status(ours)
        );
        assert_eq!(ours.code(), theirs.code(), "--timeout {t}: as timeout");
    }
    let long_grace = status(corral(
        &sandbox,
        &["--grace", "18446744073709551615h", "--", "true"],
    ));
    assert_eq!(
        long_grace.code(),
        Some(0),
        "{}",
        describe_status(long_grace)
    );
}

/// A COMMAND that ignores the polite signal and is killed after the grace: 137, as
/// `timeout -k` gives; one that obeys it: 124.
#[test]
fn a_timeout_that_had_to_kill_is_137_as_timeout_k() {
    let sandbox = Sandbox::new("wrapper-137");
    // The timeout leaves the shell time to set its trap first, even in an emulated VM.
    let stubborn = "trap '' TERM; sleep 4";
    let ours = status(corral(
        &sandbox,
        &[
            "--timeout",
            "1.5",
            "--grace",
            "0.3",
            "--",
            "sh",
            "-c",
            stubborn,
        ],
    ));
    let theirs = status(timeout(&["-k", "0.3", "1.5", "sh", "-c", stubborn]));
    let shell = |s: ExitStatus| s.code().or(s.signal().map(|n| 128 + n));
    assert_eq!(shell(ours), Some(137), "{}", describe_status(ours));
    assert_eq!(shell(ours), shell(theirs), "as timeout -k");
    let obeys = status(corral(&sandbox, &["--timeout", "0.2", "--", "sleep", "5"]));
    assert_eq!(obeys.code(), Some(124), "{}", describe_status(obeys));
}

/// Ctrl+C (SIGINT to the foreground process group) during a shell loop of corral runs
/// ends the loop: the shell sees its child die of SIGINT and dies of it too. Before, corral
/// exited 130 and the loop went on to the next iteration.
#[test]
fn ctrl_c_stops_a_shell_loop_around_corral() {
    let sandbox = Sandbox::new("wrapper-loop");
    let marker = sandbox.dir.join("iterations");
    let script = format!(
        "for i in 1 2 3; do echo $i >> {m}; \"{CORRAL}\" run --mechanism pgroup -- sleep 5; done",
        m = marker.display()
    );
    let mut shell = Command::new("bash");
    shell
        .args(["-c", &script])
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = shell.spawn().expect("spawn bash");
    let pidfd = pidfd_of_child(&child);
    // Wait until the first corral runs its sleep.
    poll_until("the loop's start", Duration::from_secs(10), || {
        std::fs::read_to_string(&marker).is_ok_and(|t| t.lines().count() == 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !exited(std::os::fd::AsFd::as_fd(&pidfd)),
        "bash ended early"
    );
    // Our own unreaped child leads this group: the group id is still its.
    let group = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process_group(group, rustix::process::Signal::INT)
        .expect("SIGINT to the loop's group");
    let ended = wait_exited(
        std::os::fd::AsFd::as_fd(&pidfd),
        Instant::now() + Duration::from_secs(20),
    );
    if !ended {
        // The group this test made, led by its unreaped child: everything in it goes.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let status = child.wait().expect("reap bash");
    assert!(ended, "bash went on after Ctrl+C");
    let iterations = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        (status.signal(), iterations.lines().count()),
        (Some(libc::SIGINT), 1),
        "the loop stops at the first Ctrl+C: bash {}, iterations:\n{iterations}",
        describe_status(status)
    );
}

/// Spawns `corral run --mechanism pgroup ARGS` in the sandbox, returns it with its pidfd
/// once COMMAND wrote `ready` (a file in the sandbox).
fn spawn_ready(
    sandbox: &Sandbox,
    args: &[&str],
    ready: &std::path::Path,
) -> (std::process::Child, std::os::fd::OwnedFd) {
    let mut command = corral(sandbox, args);
    command.stdout(Stdio::piped());
    let child = command.spawn().expect("spawn corral");
    let pidfd = pidfd_of_child(&child);
    poll_until("COMMAND's start", Duration::from_secs(10), || {
        ready.exists()
    });
    (child, pidfd)
}

/// SIGALRM, SIGUSR1, SIGUSR2 (terminating by default) sent to corral stop the job with
/// that signal, and corral ends as COMMAND did; before, corral died of them at once and left
/// the job to its watchdog.
#[test]
fn terminating_signals_to_corral_stop_the_job_with_them() {
    let sandbox = Sandbox::new("wrapper-terminating");
    for sig in [libc::SIGALRM, libc::SIGUSR1, libc::SIGUSR2] {
        let ready = sandbox.dir.join(format!("ready-{sig}"));
        let script = format!("touch {}; exec sleep 30", ready.display());
        let (mut child, pidfd) = spawn_ready(&sandbox, &["--", "sh", "-c", &script], &ready);
        rustix::process::pidfd_send_signal(
            &pidfd,
            rustix::process::Signal::from_named_raw(sig).unwrap(),
        )
        .expect("signal corral");
        let ended = wait_exited(
            std::os::fd::AsFd::as_fd(&pidfd),
            Instant::now() + Duration::from_secs(10),
        );
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("reap corral");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(ended, "corral did not stop the job on signal {sig}");
        assert_eq!(
            out.status.signal(),
            Some(sig),
            "{}: {stderr}",
            describe_status(out.status)
        );
        assert!(
            stderr.contains("received SIG"),
            "the summary line names the signal: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(&sandbox.runtime).map_or(true, |mut d| d.next().is_none()),
        "a record is left: the job was not corral's to the end"
    );
}

/// `--forward HUP,USR1` passes those on to COMMAND, which goes on running; the report lists
/// them as passed on; `--forward KILL` is refused before anything runs.
#[test]
fn forwarded_signals_reach_command_without_stopping_the_job() {
    let sandbox = Sandbox::new("wrapper-forward");
    let ready = sandbox.dir.join("ready");
    let go = sandbox.dir.join("go");
    let report = sandbox.dir.join("report.json");
    let script = format!(
        "trap 'echo hup' HUP; trap 'echo usr1' USR1; trap 'echo winch' WINCH; touch {r}; \
         while [ ! -e {g} ]; do sleep 0.05; done; echo done",
        r = ready.display(),
        g = go.display()
    );
    let report_arg = report.to_string_lossy().into_owned();
    let (child, pidfd) = spawn_ready(
        &sandbox,
        &[
            "--forward",
            "HUP,USR1,WINCH",
            "--report",
            &report_arg,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &ready,
    );
    for sig in [
        rustix::process::Signal::HUP,
        rustix::process::Signal::USR1,
        rustix::process::Signal::WINCH,
    ] {
        rustix::process::pidfd_send_signal(&pidfd, sig).expect("signal corral");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !exited(std::os::fd::AsFd::as_fd(&pidfd)),
            "corral stopped on {sig:?}"
        );
    }
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().expect("reap corral");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hup\nusr1\nwinch\ndone\n");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        value["signals_received"],
        serde_json::json!([
            "SIGHUP (passed on to COMMAND)",
            "SIGUSR1 (passed on to COMMAND)",
            "SIGWINCH (passed on to COMMAND)"
        ]),
    );
    let refused = corral(&sandbox, &["--forward", "KILL", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--forward SIGKILL"));
}

/// Ctrl+C on `sh -c 'sleep 300 & sleep 300'`: the shell started the first sleep with SIGINT
/// ignored, so SIGINT alone leaves it running; SIGTERM follows within the second (not at
/// the end of the 10 s grace), in both mechanisms.
#[test]
fn ctrl_c_reaches_processes_ignoring_sigint_within_a_second() {
    let sandbox = Sandbox::new("wrapper-ctrl-c-ignored");
    for mechanism in ["pgroup", "auto"] {
        let ready = sandbox.dir.join(format!("ready-{mechanism}"));
        let report = sandbox.dir.join(format!("report-{mechanism}.json"));
        let script = format!("sleep 300 & touch {}; sleep 300", ready.display());
        let mut command = Command::new(CORRAL);
        command
            .args(["run", "--mechanism", mechanism, "--report"])
            .arg(&report)
            .args(["--", "sh", "-c", &script])
            .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
            .env_remove("CORRAL_CGROUP_PARENT")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn().expect("spawn corral");
        let pidfd = pidfd_of_child(&child);
        poll_until("COMMAND's start", Duration::from_secs(10), || {
            ready.exists()
        });
        // As a terminal's Ctrl+C: to the group corral leads (this test made it; corral is
        // our unreaped child, so the id is still its).
        let group = rustix::process::Pid::from_child(&child);
        let sent = Instant::now();
        rustix::process::kill_process_group(group, rustix::process::Signal::INT)
            .expect("SIGINT to corral's group");
        let ended = wait_exited(
            std::os::fd::AsFd::as_fd(&pidfd),
            Instant::now() + Duration::from_secs(30),
        );
        let took = sent.elapsed();
        if !ended {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
        assert!(ended, "{mechanism}: corral did not end");
        let text = std::fs::read_to_string(&report).expect("a report");
        assert!(
            took < Duration::from_secs(2),
            "{mechanism}: Ctrl+C took {took:?} to end the job:\n{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let signals: Vec<&str> = value["stop"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["step"] == "signal")
            .filter_map(|s| s["signal"].as_str())
            .collect();
        assert_eq!(signals, ["SIGINT", "SIGTERM"], "{mechanism}:\n{text}");
        assert_eq!(value["survivors"], serde_json::json!([]), "{text}");
    }
}

/// `--leftovers fail`: a COMMAND that exits 0 but leaves a process behind makes corral exit
/// 120 (the leftover stopped as with `kill`); COMMAND's own failure stands; no leftover, no
/// change. Before, a leak under corral was a pass.
#[test]
fn leftovers_fail_turns_a_leak_into_a_failure() {
    let sandbox = Sandbox::new("wrapper-leftovers-fail");
    for (script, expect) in [
        ("sleep 30 & exit 0", 120),
        ("sleep 30 & exit 3", 3),
        ("exit 0", 0),
    ] {
        let report = sandbox.dir.join("report.json");
        let report_arg = report.to_string_lossy().into_owned();
        let out = corral(
            &sandbox,
            &[
                "--leftovers",
                "fail",
                "--grace",
                "2s",
                "--report",
                &report_arg,
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .output()
        .expect("run corral");
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            Some(expect),
            "{script}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["survivors"], serde_json::json!([]), "{text}");
        assert_eq!(
            value["leftovers"].as_array().map(Vec::len),
            Some(usize::from(script.contains('&'))),
            "{text}"
        );
    }
}

/// `--summary leftovers`: the line only when COMMAND left processes behind (a timeout, a
/// signal are the test runner's to report); `--summary never` is `-q`.
#[test]
fn summary_leftovers_speaks_only_of_leftovers() {
    let sandbox = Sandbox::new("wrapper-summary");
    for (args, speaks) in [
        (
            &[
                "--summary",
                "leftovers",
                "--timeout",
                "0.2",
                "--",
                "sleep",
                "5",
            ][..],
            false,
        ),
        (
            &[
                "--summary",
                "leftovers",
                "--",
                "sh",
                "-c",
                "sleep 30 & exit 0",
            ][..],
            true,
        ),
        (
            &[
                "--summary",
                "notable",
                "--timeout",
                "0.2",
                "--",
                "sleep",
                "5",
            ][..],
            true,
        ),
        (
            &["--summary", "never", "--", "sh", "-c", "sleep 30 & exit 0"][..],
            false,
        ),
    ] {
        let out = corral(&sandbox, args).output().expect("run corral");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(!stderr.is_empty(), speaks, "{args:?}: {stderr:?}");
        if speaks && args.contains(&"leftovers") {
            assert!(stderr.contains("leftover"), "{stderr}");
        }
    }
    let both = corral(&sandbox, &["-q", "--summary", "always", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(125),
        "-q with --summary is a usage error"
    );
}

/// Directories named in the environment that do not exist yet are made: the registry in
/// `CORRAL_RUNTIME_DIR` (mode 0700, this user's), the cgroup in `CORRAL_CGROUP_PARENT`
/// (below an existing cgroup). Before, every job failed or ran unregistered. A link there
/// is still refused, and `--cgroup-parent` (an explicit choice) is still not made.
#[test]
fn directories_named_in_the_environment_are_made() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(sandbox) = Sandbox::with_cgroup("wrapper-env-dirs") else {
        return;
    };
    let registry = sandbox.dir.join("new-registry");
    let parent = sandbox.cgroup().root().join("new-parent");
    let report = sandbox.dir.join("report.json");
    let out = Command::new(CORRAL)
        .args(["run", "--mechanism", "cgroup", "--report"])
        .arg(&report)
        .args(["--", "true"])
        .env("CORRAL_RUNTIME_DIR", &registry)
        .env("CORRAL_CGROUP_PARENT", &parent)
        .stdin(Stdio::null())
        .output()
        .expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "registered, no line about it");
    let meta = std::fs::symlink_metadata(&registry).expect("the registry was made");
    assert!(meta.is_dir());
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o700, rustix::process::geteuid().as_raw())
    );
    assert!(parent.is_dir(), "the cgroup parent was made");
    let text = std::fs::read_to_string(&report).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        value["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with(parent.to_str().unwrap())),
        "{text}"
    );
    assert_eq!(value["not_registered"], serde_json::Value::Null, "{text}");
    // A link where the registry should be is not followed (nor replaced).
    let link = sandbox.dir.join("link-registry");
    std::os::unix::fs::symlink(&registry, &link).unwrap();
    let out = Command::new(CORRAL)
        .args(["run", "--mechanism", "pgroup", "--", "true"])
        .env("CORRAL_RUNTIME_DIR", &link)
        .stdin(Stdio::null())
        .output()
        .expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not registered") && stderr.contains("symlink"),
        "{stderr}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o700));
    // --cgroup-parent is not made.
    let missing = sandbox.cgroup().root().join("not-made");
    let out = Command::new(CORRAL)
        .args(["run", "--mechanism", "cgroup", "--cgroup-parent"])
        .arg(&missing)
        .args(["--", "true"])
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .output()
        .expect("run corral");
    assert_eq!(out.status.code(), Some(125));
    assert!(!missing.exists());
}
