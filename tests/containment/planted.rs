//! Paths others can plant (issue 16, the report): a device, a pipe or a link at the
//! `--report` path is never replaced nor written through, a pipe nobody reads never blocks,
//! a report that cannot be written after the job costs one line on stderr and never
//! COMMAND's status, and a report is refused up front in the registry or on a cgroup
//! filesystem. A stderr that is closed or a pipe nobody reads is never a panic.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Sandbox, CORRAL};

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path, mode: u32) {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(mode))
        .expect("mkfifo");
}

/// `corral run --mechanism pgroup --report PATH -- sh -c 'exit 3'` in the sandbox.
fn run_with_report(sandbox: &Sandbox, path: &Path) -> crate::util::Finished {
    let mut run = sandbox.corral_bare();
    run.args(["run", "--mechanism", "pgroup", "--report"])
        .arg(path)
        .args(["--", "sh", "-c", "exit 3"]);
    run.run()
}

#[test]
fn a_device_is_written_in_place_never_replaced_and_the_status_stands() {
    let sandbox = Sandbox::new("planted-device");
    let done = run_with_report(&sandbox, Path::new("/dev/full"));
    // /dev/full refuses every write: one line says so, and COMMAND's status stands.
    done.assert_code(3);
    assert!(
        done.stderr
            .starts_with("corral: error: failed to write the report to /dev/full")
            && done.stderr.lines().count() == 1,
        "{:?}",
        done.stderr
    );
    let meta = fs::symlink_metadata("/dev/full").expect("/dev/full");
    assert!(
        meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 7),
        "/dev/full is still the device"
    );
}

#[test]
fn a_pipe_nobody_reads_is_an_error_not_a_hang() {
    let sandbox = Sandbox::new("planted-fifo");
    let fifo = sandbox.dir.join("report.fifo");
    mkfifo(&fifo, 0o644);
    // `finish` fails the test if corral does not return within its deadline.
    let done = run_with_report(&sandbox, &fifo);
    done.assert_code(3);
    assert!(
        done.stderr.contains("a pipe that no one reads"),
        "{:?}",
        done.stderr
    );
    assert!(
        fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
        "the pipe is still a pipe"
    );
}

#[test]
fn a_pipe_someone_reads_gets_the_report_in_place() {
    let sandbox = Sandbox::new("planted-fifo-read");
    let fifo = sandbox.dir.join("report.fifo");
    mkfifo(&fifo, 0o644);
    // The read end is open before corral runs (non-blocking, so the open does not wait for
    // a writer), and the pipe's buffer holds the whole report until it is read.
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the pipe for reading")
    };
    let flags = rustix::fs::fcntl_getfl(&reader).unwrap();
    rustix::fs::fcntl_setfl(&reader, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    let done = run_with_report(&sandbox, &fifo);
    done.assert_code(3);
    let mut text = String::new();
    reader.read_to_string(&mut text).expect("read the pipe");
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report, whole");
    assert_eq!(report["exit_status"], 3, "{text}");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_link_is_never_written_through() {
    let sandbox = Sandbox::new("planted-link");
    let target = sandbox.dir.join("someone-elses");
    fs::write(&target, "theirs\n").unwrap();
    let link = sandbox.dir.join("report.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut run = sandbox.corral_bare();
    run.args(["run", "--report"])
        .arg(&link)
        .tree(&["--exit", "0", "sleep"]);
    let done = run.run();
    done.assert_refused(&["symbolic link"]);
    assert_eq!(fs::read_to_string(&target).unwrap(), "theirs\n");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn the_registry_and_cgroup_filesystems_are_refused_up_front() {
    let Some(sandbox) = Sandbox::with_cgroup("planted-places") else {
        return;
    };
    for path in [
        sandbox.runtime.join("report.json"),
        sandbox.cgroup().other_leaf().join("report.json"),
    ] {
        let mut run = sandbox.corral_bare();
        run.args(["run", "--report"])
            .arg(&path)
            .tree(&["--exit", "0", "sleep"]);
        let done = run.run();
        done.assert_refused(&[]);
        assert!(!path.exists(), "nothing written at {}", path.display());
    }
}

#[test]
fn a_closed_stderr_or_a_pipe_nobody_reads_is_no_panic() {
    let sandbox = Sandbox::new("planted-stderr");
    for closed in [false, true] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut command = Command::new(CORRAL);
        command
            .args([
                "run",
                "-v",
                "--mechanism",
                "pgroup",
                "--",
                "sh",
                "-c",
                "exit 4",
            ])
            .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if closed {
            // SAFETY: close(2) in the child before exec; no allocation, no lock.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    libc::close(2);
                    Ok(())
                });
            }
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(writer);
        }
        let started = Instant::now();
        let status = command.status().expect("run corral");
        assert_eq!(
            status.code(),
            Some(4),
            "COMMAND's status, no panic (closed: {closed})"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

/// A FIFO and a link planted under record names in the registry: `corral ps` and
/// `corral sweep` neither block on the FIFO nor follow the link; each is skipped with a
/// warning, and both are still there afterwards.
#[test]
fn planted_records_never_block_nor_are_followed() {
    let sandbox = Sandbox::new("planted-records");
    let fifo = sandbox.runtime.join("corral-1-0.json");
    mkfifo(&fifo, 0o600);
    let target = sandbox.dir.join("elsewhere.json");
    fs::write(&target, "{}").unwrap();
    let link = sandbox.runtime.join("corral-2-0.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for sub in ["ps", "sweep"] {
        let started = Instant::now();
        let out = Command::new(CORRAL)
            .arg(sub)
            .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
            .stdin(Stdio::null())
            .output()
            .expect("run corral");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "corral {sub}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "corral {sub} took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains("not a regular file") && stderr.contains("symbolic link"),
            "corral {sub} says why it skipped them: {stderr}"
        );
    }
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A user's record that names a cgroup the user does not own (root's, here): root's
/// `corral ps` lists the job but reads nothing of that cgroup. The same record naming a
/// cgroup the user owns gets its figures, so the check is what makes the difference.
#[test]
fn roots_ps_reads_no_cgroup_a_users_record_does_not_own() {
    const NOBODY: u32 = 65534;
    let Some(sandbox) = Sandbox::with_cgroup("planted-cgroup") else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        crate::util::skip("planted-cgroup: needs root (a registry of another user's)");
        return;
    }
    // Someone else's process, in a cgroup of root's.
    let leaf = sandbox.cgroup().other_leaf();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60").stdin(Stdio::null());
    crate::util::place_in_cgroup(&mut sleeper, &leaf);
    let mut sleeper = sleeper.spawn().expect("spawn sleep");
    // nobody's registry, beside the sandbox's (removed with it), and a record in it that
    // is live (its supervisor: this test process) and names that cgroup.
    let mut rt = sandbox.runtime.clone().into_os_string();
    rt.push(format!("-u{NOBODY}"));
    let rt = std::path::PathBuf::from(rt);
    fs::create_dir(&rt).unwrap();
    std::os::unix::fs::chown(&rt, Some(NOBODY), Some(NOBODY)).unwrap();
    let me = std::process::id();
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let start_time: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .and_then(|f| f.parse().ok())
        .expect("starttime in /proc/self/stat");
    let id = format!("corral-{me}-0");
    let record = rt.join(format!("{id}.json"));
    fs::write(
        &record,
        serde_json::json!({
            "version": 1, "id": id, "uid": NOBODY,
            "supervisor": {"pid": me, "start_time": start_time}, "mechanism": "cgroup",
            "cgroup": leaf, "command": ["planted"], "started": 0, "limits": {},
            "socket": rt.join(format!("{id}.sock")),
        })
        .to_string(),
    )
    .unwrap();
    std::os::unix::fs::chown(&record, Some(NOBODY), Some(NOBODY)).unwrap();
    let processes = |context: &str| -> serde_json::Value {
        let out = Command::new(CORRAL)
            .args(["ps", "--json"])
            .env("CORRAL_RUNTIME_DIR", &rt)
            .stdin(Stdio::null())
            .output()
            .expect("run corral ps");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{context}: corral ps: {text}");
        let jobs: serde_json::Value = serde_json::from_str(&text).expect("ps --json");
        assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{context}: {text}");
        jobs[0]["processes"].clone()
    };
    std::os::unix::fs::chown(&leaf, Some(NOBODY), None).unwrap();
    let owned = processes("the cgroup is nobody's");
    std::os::unix::fs::chown(&leaf, Some(0), None).unwrap();
    let not_owned = processes("the cgroup is root's");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(owned, 1, "a cgroup the record's user owns is read");
    assert!(
        not_owned.is_null(),
        "root's cgroup, named by nobody's record, was read: {not_owned}"
    );
}

/// A registry directory replaced by a link (its owner can do so at any moment): root's
/// `ps` and `sweep` skip it with a warning and touch nothing where it points, not even a
/// stale record there that a sweep of the real directory would remove.
#[test]
fn a_registry_that_is_a_link_is_not_followed() {
    let sandbox = Sandbox::new("planted-registry-link");
    let elsewhere = sandbox.dir.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    // A stale record (its supervisor, PID 2^23, cannot exist) and a socket without one.
    let gone = 1u32 << 23;
    let id = format!("corral-{gone}-0");
    let record = elsewhere.join(format!("{id}.json"));
    fs::write(
        &record,
        serde_json::json!({
            "version": 1, "id": id, "uid": rustix::process::geteuid().as_raw(),
            "supervisor": {"pid": gone, "start_time": 1}, "mechanism": "pgroup",
            "command": ["planted"], "started": 0, "limits": {},
            "socket": elsewhere.join(format!("{id}.sock")),
        })
        .to_string(),
    )
    .unwrap();
    let link = sandbox.dir.join("registry-link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    for (registry, followed) in [(&link, false), (&elsewhere, true)] {
        let out = Command::new(CORRAL)
            .arg("sweep")
            .env("CORRAL_RUNTIME_DIR", registry)
            .stdin(Stdio::null())
            .output()
            .expect("run corral sweep");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if !followed {
            assert!(stderr.contains("symbolic link"), "says why: {stderr}");
        }
        assert_eq!(
            record.exists(),
            !followed,
            "the record where {} points (followed: {followed}); {stderr}",
            registry.display()
        );
    }
}
