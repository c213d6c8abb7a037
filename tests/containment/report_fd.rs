//! `--report-fd N`: the report goes to a descriptor the caller opened (a pipe, a file, 2
//! for stderr), once, after the job, and never mixes with what the job writes: COMMAND does
//! not inherit N, so a leftover process cannot write into it nor hold a pipe reader up. A
//! descriptor that is not open, open for reading only, or not a number is refused before
//! anything starts (125, one line, no record); a reader that went away is one line with
//! COMMAND's status kept.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Sandbox, CORRAL};

/// `corral run --mechanism pgroup --report-fd N ARGS...` with `fd` as descriptor 3.
fn corral_with_fd3(sandbox: &Sandbox, n: &str, fd: Option<&OwnedFd>, args: &[&str]) -> Command {
    let mut command = Command::new(CORRAL);
    command
        .args(["run", "--mechanism", "pgroup", "--report-fd", n])
        .args(args)
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null());
    let raw = fd.map(AsRawFd::as_raw_fd);
    // SAFETY: dup2/fcntl between fork and exec, on a descriptor the parent keeps open.
    unsafe {
        command.pre_exec(move || {
            match raw {
                Some(3) => {
                    if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Some(fd) => {
                    if libc::dup2(fd, 3) != 3 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                None => {
                    libc::close(3);
                }
            }
            Ok(())
        });
    }
    command
}

fn registry_is_empty(sandbox: &Sandbox) -> bool {
    std::fs::read_dir(&sandbox.runtime).map_or(true, |mut d| d.next().is_none())
}

/// The report arrives through a pipe, whole and alone (COMMAND's output goes to stdout),
/// and COMMAND sees no descriptor 3.
#[test]
fn the_report_goes_to_a_pipe_that_command_never_sees() {
    let sandbox = Sandbox::new("report-fd-pipe");
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    let mut reader = std::fs::File::from(reader);
    let mut command = corral_with_fd3(
        &sandbox,
        "3",
        Some(&writer),
        &[
            "--",
            "sh",
            "-c",
            "[ ! -e /proc/self/fd/3 ] && echo out && exit 5",
        ],
    );
    let child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn corral");
    drop(writer);
    let started = Instant::now();
    let mut report = String::new();
    reader.read_to_string(&mut report).expect("read the report");
    let out = child.wait_with_output().expect("wait for corral");
    assert_eq!(
        out.status.code(),
        Some(5),
        "COMMAND saw descriptor 3 or failed"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let value: serde_json::Value = serde_json::from_str(&report)
        .unwrap_or_else(|e| panic!("not one JSON report ({e}): {report}"));
    assert_eq!(value["exit_status"], 5, "{report}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(registry_is_empty(&sandbox));
}

/// Not open, open for reading only, not a number: refused up front, nothing left.
#[test]
fn a_descriptor_that_cannot_take_the_report_is_refused_up_front() {
    let sandbox = Sandbox::new("report-fd-bad");
    let marker = sandbox.dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let read_only = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    for (n, fd, needle) in [
        ("3", None, "not an open descriptor"),
        ("3", Some(&read_only), "open for reading only"),
        ("-1", None, "not a descriptor number"),
    ] {
        let out = corral_with_fd3(&sandbox, n, fd, &[])
            .args(["--", "sh", "-c", &touch])
            .output()
            .expect("run corral");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{needle}: {stderr}");
        assert!(
            stderr.lines().count() == 1
                && stderr.starts_with("corral: error: ")
                && stderr.contains(needle),
            "{needle}: one line naming it: {stderr:?}"
        );
        assert!(!marker.exists(), "{needle}: COMMAND ran");
        assert!(registry_is_empty(&sandbox), "{needle}: a record is left");
    }
}

/// A reader that went away: one line, COMMAND's status stands.
#[test]
fn a_reader_gone_is_one_line_and_the_status_stands() {
    let sandbox = Sandbox::new("report-fd-gone");
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    let out = corral_with_fd3(&sandbox, "3", Some(&writer), &["--", "sh", "-c", "exit 4"])
        .output()
        .expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("failed to write the report to descriptor 3"),
        "{stderr:?}"
    );
}
