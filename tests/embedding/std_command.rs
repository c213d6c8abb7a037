//! `Job::spawn` takes a `std::process::Command` as the caller set it up (arguments,
//! environment, directory, piped stdio), puts the child in the job (its cgroup, or a
//! process group of its own under a supervisor), and leaves the `Command` reusable: a
//! later plain `spawn` is not put in any job.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use corral_testkit::poll_until;

use crate::common::{
    assert_cleaned_up, cgroup_of, options, ppid_of, read_in_thread, recv_bytes, stat_field,
    Outside, OwnChild,
};
use crate::util::{both_mechanisms, Mechanism, Sandbox};

const SCRIPT: &str = r#"read line; printf '%s|%s|%s|%s|%s\n' "$line" "$0" "$1" "$FOO" "${HOME-unset}"; pwd; echo err >&2; exit 5"#;

both_mechanisms!(
    command_is_honoured,
    command_can_be_spawned_again_outside_the_job
);

fn command_is_honoured(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-command", mechanism) else {
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
    let mut job = corral::Job::spawn(&mut cmd, &options(&sandbox, mechanism)).expect("spawn");
    let pid = job.pid();
    let own_child = OwnChild::of(&job);

    // While it waits on stdin: where it runs and what it was given, as the kernel says.
    assert_eq!(job.members().expect("members"), vec![pid]);
    let cgroup = job.cgroup().map(|c| c.to_path_buf());
    match mechanism {
        Mechanism::Cgroup => {
            assert_eq!(job.mechanism(), corral::Mechanism::Cgroup);
            let cgroup = cgroup.as_ref().expect("a cgroup job has a cgroup");
            assert!(
                cgroup.starts_with(sandbox.cgroup().jobs()),
                "{}",
                cgroup.display()
            );
            assert_eq!(&cgroup_of(Some(pid)), cgroup, "the main process's cgroup");
        }
        Mechanism::Pgroup => {
            assert_eq!(job.mechanism(), corral::Mechanism::Pgroup);
            assert!(cgroup.is_none());
            // Under its supervisor (our child, found by OwnChild), in a group of its own.
            assert_eq!(ppid_of(pid), Some(own_child.pid), "the main's parent");
            assert_ne!(own_child.pid, pid);
            assert_eq!(
                stat_field(pid, 5),
                Some(pid.into()),
                "the main's process group"
            );
        }
    }
    // The main process may still be on its way to exec (the forked image's arguments, or
    // inside execve, none yet): read until it shows /bin/sh's, against a deadline.
    let within = std::time::Duration::from_secs(10);
    let cmdline = poll_until("the main process's exec of /bin/sh", within, || {
        let text = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        match text.starts_with(b"/bin/sh\0") {
            true => Ok(text),
            false => Err(format!("cmdline {:?}", String::from_utf8_lossy(&text))),
        }
    });
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
    assert_cleaned_up(&report, mechanism);
    own_child.assert_reaped();
    assert!(
        report.spawn.to_string().contains("std::process::Command"),
        "report.spawn should name the std path: {:?}",
        report.spawn
    );
    assert_eq!(
        report.command,
        ["/bin/sh", "-c", SCRIPT, "name zero", "first arg"]
    );
    assert_eq!(report.cgroup, cgroup);
    sandbox.assert_clean();
}

fn command_can_be_spawned_again_outside_the_job(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-respawn", mechanism) else {
        return;
    };
    let opts = options(&sandbox, mechanism);
    let mut cmd = Command::new("sleep");
    cmd.arg("1000").stdin(Stdio::null());
    let mut job = corral::Job::spawn(&mut cmd, &opts).expect("spawn");
    let job_cgroup = job.cgroup().map(|c| c.to_path_buf());

    // The same Command, spawned by the caller while the job runs: an ordinary child of
    // ours, in our cgroup and our process group, and no member of the job.
    let again = Outside::spawn(&mut cmd);
    let theirs = cgroup_of(Some(again.pid()));
    if let Some(cgroup) = &job_cgroup {
        assert_eq!(&cgroup_of(Some(job.pid())), cgroup);
        assert_ne!(&theirs, cgroup, "a plain spawn joined the job's cgroup");
    }
    assert_eq!(
        theirs,
        cgroup_of(None),
        "a plain spawn runs where its parent does"
    );
    assert_eq!(ppid_of(again.pid()), Some(std::process::id()));
    assert_eq!(
        stat_field(again.pid(), 5),
        stat_field(std::process::id(), 5),
        "a plain spawn stays in our process group"
    );
    assert_eq!(
        fs::read(format!("/proc/{}/cmdline", again.pid())).unwrap(),
        b"sleep\x001000\x00",
        "a plain spawn runs the program itself (not a supervisor)"
    );
    let children = format!("/proc/{0}/task/{0}/children", again.pid());
    assert_eq!(
        fs::read_to_string(children).unwrap(),
        "",
        "it forked nothing"
    );
    assert_eq!(job.members().expect("members"), vec![job.pid()]);
    assert!(!again.has_exited());
    drop(again);
    let report = job.kill().expect("kill");
    assert_eq!(report.exit.and_then(|e| e.signal), Some(libc::SIGKILL));
    assert_cleaned_up(&report, mechanism);

    // Once the job is over, the descriptor its hook used (the leaf's `cgroup.procs`, the
    // supervisor's socket) is closed and its number may be reused: a hook still armed
    // would write into whatever holds it now. Hold a few descriptors (the lowest free
    // numbers) while spawning again.
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
