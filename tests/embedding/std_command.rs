//! `Job::spawn` takes a `std::process::Command` as the caller set it up (arguments,
//! environment, directory, piped stdio), puts the child in the job's cgroup, and leaves the
//! `Command` reusable: a later plain `spawn` is not put in any job.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use crate::common::{cgroup_of, cgroup_options, read_in_thread, recv_bytes, Outside};
use crate::util::Sandbox;

const SCRIPT: &str = r#"read line; printf '%s|%s|%s|%s|%s\n' "$line" "$0" "$1" "$FOO" "${HOME-unset}"; pwd; echo err >&2; exit 5"#;

#[test]
fn command_is_honoured() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-command") else {
        return;
    };
    let cwd = sandbox.dir.join("work dir");
    fs::create_dir_all(&cwd).unwrap();
    let cwd = cwd.canonicalize().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", SCRIPT, "name zero", "first arg"])
        .env_clear()
        .env("FOO", "bar baz")
        .env("EMPTY", "")
        .current_dir(&cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut job = corral::Job::spawn(&mut cmd, &cgroup_options(&sandbox)).expect("spawn");
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
    let pid = job.pid();

    // While it waits on stdin: where it runs and what it was given, as the kernel says.
    assert_eq!(cgroup_of(Some(pid)), cgroup, "the main process's cgroup");
    assert_eq!(job.members().expect("members"), vec![pid]);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<&OsStr> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(OsStr::from_bytes)
        .collect();
    assert_eq!(
        argv,
        ["/bin/sh", "-c", SCRIPT, "name zero", "first arg"].map(OsStr::new)
    );
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut env: Vec<&[u8]> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .collect();
    env.sort();
    assert_eq!(
        env,
        [&b"EMPTY="[..], &b"FOO=bar baz"[..]],
        "env_clear + env: the environment the main process was started with"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        cwd,
        "current_dir"
    );

    let stdout = read_in_thread(job.stdout.take().expect("stdout was piped"));
    let stderr = read_in_thread(job.stderr.take().expect("stderr was piped"));
    let mut stdin = job.stdin.take().expect("stdin was piped");
    stdin.write_all(b"hello world\n").unwrap();
    drop(stdin);
    let stdout = String::from_utf8(recv_bytes(&stdout, "job stdout")).unwrap();
    let stderr = String::from_utf8(recv_bytes(&stderr, "job stderr")).unwrap();
    assert_eq!(
        stdout,
        format!(
            "hello world|name zero|first arg|bar baz|unset\n{}\n",
            cwd.display()
        )
    );
    assert_eq!(stderr, "err\n");

    let report = job.wait().expect("wait");
    assert_eq!(report.exit_status, 5, "{report:#?}");
    assert_eq!(report.pid, pid);
    assert_eq!(report.mechanism, corral::Mechanism::Cgroup);
    assert!(
        report.spawn.contains("std::process::Command"),
        "report.spawn should name the std path: {:?}",
        report.spawn
    );
    assert_eq!(
        report.command,
        ["/bin/sh", "-c", SCRIPT, "name zero", "first arg"]
    );
    assert_eq!(report.cgroup.as_deref(), Some(cgroup.as_path()));
    assert_eq!(report.cleanup.cgroup_removed, Some(true), "{report:#?}");
    assert!(!cgroup.exists(), "{} not removed", cgroup.display());
    sandbox.assert_clean();
}

#[test]
fn command_can_be_spawned_again_outside_the_job() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-respawn") else {
        return;
    };
    let opts = cgroup_options(&sandbox);
    let mut cmd = Command::new("sleep");
    cmd.arg("1000").stdin(Stdio::null());
    let mut job = corral::Job::spawn(&mut cmd, &opts).expect("spawn");
    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
    assert_eq!(cgroup_of(Some(job.pid())), cgroup);

    // The same Command, spawned by the caller while the job runs.
    let again = Outside::spawn(&mut cmd);
    let own = cgroup_of(None);
    let theirs = cgroup_of(Some(again.pid()));
    assert_ne!(theirs, cgroup, "a plain spawn joined the job's cgroup");
    assert_eq!(theirs, own, "a plain spawn runs where its parent does");
    assert_eq!(job.members().expect("members"), vec![job.pid()]);
    assert!(!again.has_exited());
    drop(again);
    let report = job.kill().expect("kill");
    assert_eq!(report.exit.and_then(|e| e.signal), Some(libc::SIGKILL));

    // Once the job is over, its leaf's descriptor is closed and its number may be reused:
    // a hook still armed would write "0" into whatever holds it now. Hold a few
    // descriptors (the lowest free numbers) while spawning again.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exit 7"]);
    let report = corral::Job::spawn(&mut cmd, &opts)
        .expect("spawn")
        .wait()
        .expect("wait");
    assert_eq!(report.exit_status, 7);
    let decoys: Vec<(std::path::PathBuf, fs::File)> = (0..8)
        .map(|i| {
            let path = sandbox.dir.join(format!("decoy{i}"));
            (path.clone(), fs::File::create(&path).unwrap())
        })
        .collect();
    let status = cmd.status().expect("spawn the Command again after the job");
    assert_eq!(status.code(), Some(7), "{status:?}");
    for (path, mut file) in decoys {
        file.flush().unwrap();
        let written = fs::read(&path).unwrap();
        assert!(
            written.is_empty(),
            "the second spawn wrote {written:?} into {}",
            path.display()
        );
    }
    sandbox.assert_clean();
}
