//! `corral timeout` beside coreutils `timeout`, case by case (docs/timeout.md): the same
//! command lines, the same statuses (a re-raised signal included), the same refusals; and
//! what only corral does: the processes COMMAND left behind are stopped too. Also corral
//! called as `timeout` (a link), and `--help`/`--version`.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

use corral_testkit::poll_until;

use crate::util::{describe_status, Sandbox, CORRAL};

/// The status as a shell sees it, and whether it was a signal.
fn shown(s: ExitStatus) -> (Option<i32>, Option<i32>) {
    (s.code(), s.signal())
}

fn ours(sandbox: &Sandbox, program: &std::path::Path, args: &[&str]) -> (ExitStatus, String) {
    let mut c = Command::new(program);
    if program == std::path::Path::new(CORRAL) {
        c.arg("timeout");
    }
    let out = c
        .args(args)
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run corral timeout");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn theirs(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new("timeout")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run timeout");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every case: the same status from both (a TERM-ignorer's `-k` kill is 137 for both,
/// though `timeout` dies of SIGKILL itself and corral exits 137: see docs/timeout.md).
#[test]
fn corral_timeout_matches_timeout_case_by_case() {
    let sandbox = Sandbox::new("timeout-side-by-side");
    // The timeout leaves the shell time to set its trap first, even in an emulated VM.
    let stubborn = "trap '' TERM; sleep 4";
    let cases: &[&[&str]] = &[
        &["0.2", "sleep", "5"],
        &["0", "sleep", "0.2"],
        &["0.2s", "sleep", "5"],
        &["1e-1", "sleep", "5"],
        &["0.005m", "sleep", "5"],
        &["-s", "INT", "0.2", "sleep", "5"],
        &["--signal=KILL", "0.2", "sleep", "5"],
        &["-s9", "0.2", "sleep", "5"],
        &["--preserve-status", "0.2", "sleep", "5"],
        &[
            "--preserve-status",
            "1.5",
            "sh",
            "-c",
            "trap 'exit 42' TERM; sleep 3 & wait",
        ],
        &["-k", "0.3", "1.5", "sh", "-c", stubborn],
        &[
            "--kill-after=0.3",
            "--preserve-status",
            "1.5",
            "sh",
            "-c",
            stubborn,
        ],
        &["--foreground", "0.2", "sleep", "5"],
        &["5", "sh", "-c", "exit 3"],
        &["5", "true"],
        &["5", "sh", "-c", "kill -SEGV $$"],
        &["5", "sh", "-c", "kill -INT $$"],
        &["5", "corral-no-such-command"],
        &["5", "/etc"],
        &["x", "sleep", "1"],
        &["-s", "NOPE", "1", "sleep", "1"],
        &["--bogus", "1", "true"],
        &[],
        &["5"],
        &["--", "0.2", "sleep", "5"],
        &["-v", "0.2", "sleep", "5"],
    ];
    let mut differ = Vec::new();
    for args in cases {
        let (a, a_err) = ours(&sandbox, std::path::Path::new(CORRAL), args);
        let (b, b_err) = theirs(args);
        let same = shown(a) == shown(b)
            // timeout dies of the SIGKILL it sends its own group after -k; corral exits 137.
            || (b.signal() == Some(libc::SIGKILL) && a.code() == Some(137));
        if !same {
            differ.push(format!(
                "{args:?}: corral {} ({a_err:?}), timeout {} ({b_err:?})",
                describe_status(a),
                describe_status(b)
            ));
        }
        if args.first() == Some(&"-v") {
            assert!(
                a_err.contains("sending signal TERM to command 'sleep'"),
                "-v says the signal: {a_err:?}"
            );
        }
        if a.code() == Some(125) {
            assert_eq!(a_err.lines().count(), 1, "{args:?}: one line: {a_err:?}");
        }
    }
    assert!(
        differ.is_empty(),
        "corral timeout differs:\n  {}",
        differ.join("\n  ")
    );
}

/// What `timeout` leaves and corral does not: a daemon started by COMMAND (`setsid`, its
/// own session). The real `timeout` run is the control: its escapee is found, then killed.
#[test]
fn corral_timeout_leaves_no_escapee_where_timeout_does() {
    let sandbox = Sandbox::new("timeout-escapee");
    let marker = format!("corral-timeout-escapee-{}", std::process::id());
    // The escapee lets go of the output pipes, which `output()` waits on.
    let script =
        format!("setsid bash -c 'exec -a {marker} sleep 30' </dev/null >/dev/null 2>&1 & sleep 5");
    let (theirs_status, _) = theirs(&["0.3", "sh", "-c", &script]);
    assert_eq!(theirs_status.code(), Some(124));
    let within = std::time::Duration::from_secs(5);
    poll_until(
        format_args!("the control: timeout leaving an escapee named {marker}"),
        within,
        || !crate::util::processes_with_arg0(&marker).is_empty(),
    );
    crate::util::kill_by_arg0(&marker);
    poll_until("the control's escapee's death", within, || {
        crate::util::processes_with_arg0(&marker).is_empty()
    });
    let (ours_status, _) = ours(
        &sandbox,
        std::path::Path::new(CORRAL),
        &["0.3", "sh", "-c", &script],
    );
    assert_eq!(
        ours_status.code(),
        Some(124),
        "{}",
        describe_status(ours_status)
    );
    let left = crate::util::processes_with_arg0(&marker);
    crate::util::kill_by_arg0(&marker);
    assert!(left.is_empty(), "corral timeout left {left:?}");
}

/// A link named `timeout` to corral is `corral timeout`; `--help` and `--version` exit 0.
#[test]
fn called_as_timeout_it_is_corral_timeout() {
    let sandbox = Sandbox::new("timeout-link");
    let link = sandbox.dir.join("timeout");
    std::os::unix::fs::symlink(CORRAL, &link).unwrap();
    let (status, err) = ours(&sandbox, &link, &["0.2", "sleep", "5"]);
    assert_eq!(status.code(), Some(124), "{err}");
    let (status, err) = ours(&sandbox, &link, &["x", "true"]);
    assert_eq!(status.code(), Some(125), "{err}");
    for flag in ["--help", "--version"] {
        let out = Command::new(&link).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty(), "{flag} prints something");
    }
}
