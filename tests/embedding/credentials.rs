//! `JobCommand::credentials`: the main process runs as the user given with no privilege
//! (no capability in any set, the bounding set included, and `no_new_privs`), root as
//! much as anyone; a spawner that lacks a privilege a step needs gets an error naming the
//! step, and nothing is left; the paths that cannot switch are refused up front.
//!
//! What the job runs as is read from `/proc/<pid>/status` while it runs. The in-process
//! pgroup mechanism claims every child of the calling process, and a PID namespace job must
//! be spawned from the main thread, so those run in `corral-host spawn-command`, a fresh
//! program of their own. Everything here needs root (to give the privileges away).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use corral_testkit::poll_until;
use rustix::thread::{CapabilitySet, CapabilitySets};

use crate::common::{assert_cleaned_up, cgroup_of, cgroup_options, pidfd, Outside, DEADLINE};
use crate::util::{self, place_in_cgroup, skip, CgroupTree, Sandbox, GONE_DEADLINE};

const HOST: &str = corral_testkit::HOST;
const NOBODY: u32 = 65534;

fn nobody() -> corral::Credentials {
    corral::Credentials {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![NOBODY],
    }
}

fn root() -> corral::Credentials {
    corral::Credentials {
        uid: 0,
        gid: 0,
        groups: vec![],
    }
}

/// Whether this process can give privileges away (root); says `SKIPPED` if not.
fn privileged(test: &str) -> bool {
    let caps = rustix::thread::capabilities(None).expect("capget");
    let needed = CapabilitySet::SETUID
        | CapabilitySet::SETGID
        | CapabilitySet::SETPCAP
        | CapabilitySet::SYS_ADMIN;
    if !caps.effective.contains(needed) {
        skip(format!(
            "{test}: needs root (CAP_SETUID, CAP_SETGID, CAP_SETPCAP, CAP_SYS_ADMIN)"
        ));
        return false;
    }
    true
}

/// The `Name:\tvalue` lines of `/proc/<pid>/status`.
fn status_of(pid: u32) -> BTreeMap<String, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Asserts that `pid` runs as `creds` (real, effective, saved and filesystem ids; exactly
/// those groups) with no capability in any set and `no_new_privs`.
fn assert_runs_as(pid: u32, creds: &corral::Credentials, what: &str) {
    let status = status_of(pid);
    let field = |name: &str| {
        status
            .get(name)
            .unwrap_or_else(|| panic!("{what} ({pid}): no {name} in {status:#?}"))
            .as_str()
    };
    let ids = |id: u32| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(field("Uid"), ids(creds.uid), "{what} ({pid}): Uid");
    assert_eq!(field("Gid"), ids(creds.gid), "{what} ({pid}): Gid");
    let mut groups: Vec<u32> = field("Groups")
        .split_whitespace()
        .map(|g| g.parse().expect("a group id"))
        .collect();
    groups.sort_unstable();
    let mut want = creds.groups.clone();
    want.sort_unstable();
    assert_eq!(groups, want, "{what} ({pid}): Groups");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), "0000000000000000", "{what} ({pid}): {set}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "{what} ({pid}): NoNewPrivs");
}

/// The calling process's dumpable flag (`prctl(PR_GET_DUMPABLE)`).
fn dumpable() -> i32 {
    // SAFETY: PR_GET_DUMPABLE takes no pointer and changes nothing.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }
}

/// A cgroup job as `creds`: `sh`, and the `sleep` it starts, both run as `creds` with no
/// privilege; the report says who they ran as; the caller stays dumpable (a child that
/// shared its memory would have made it not); nothing is left. `fork_fallback`: spawned
/// with `fork` + a write to `cgroup.procs`, which the child makes before the switch.
fn cgroup_job_as(test: &str, creds: corral::Credentials, fork_fallback: bool) {
    if !privileged(test) {
        return;
    }
    let Some(sandbox) = Sandbox::with_cgroup(test) else {
        return;
    };
    let dumpable_before = dumpable();
    let cmd = corral::JobCommand::new("sh")
        .args(["-c", "sleep 1000 & wait"])
        .current_dir("/")
        .credentials(creds.clone());
    let mut opts = cgroup_options(&sandbox);
    opts.debug.no_clone_into_cgroup = fork_fallback;
    let mut job = corral::Job::spawn_command(&cmd, &opts).expect("spawn");
    let mut members = Vec::new();
    poll_until("sh and sleep in the job", DEADLINE, || {
        members = job.members().expect("members");
        members.len() >= 2
    });
    for pid in &members {
        assert_runs_as(*pid, &creds, "a process of the job");
    }
    assert_eq!(
        dumpable(),
        dumpable_before,
        "the spawn changed the caller's dumpable flag"
    );
    let report = job.kill().expect("kill");
    assert_eq!(report.credentials.as_ref(), Some(&creds), "{report:#?}");
    let spawn = if fork_fallback {
        "fork + write to cgroup.procs"
    } else {
        "clone3("
    };
    assert!(report.spawn.to_string().starts_with(spawn), "{report:#?}");
    #[cfg(feature = "serde")]
    {
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(
            json["credentials"],
            serde_json::json!({ "uid": creds.uid, "gid": creds.gid, "groups": creds.groups }),
        );
    }
    assert_cleaned_up(&report, util::Mechanism::Cgroup);
    sandbox.assert_clean();
}

#[test]
fn cgroup_job_runs_as_nobody_with_no_privilege() {
    cgroup_job_as("embed-cred-nobody", nobody(), false);
}

#[test]
fn cgroup_job_as_root_has_no_capability_either() {
    cgroup_job_as("embed-cred-root", root(), false);
}

#[test]
fn fork_fallback_joins_the_cgroup_before_the_switch() {
    cgroup_job_as("embed-cred-fork", nobody(), true);
}

/// Runs `f` on a thread of its own whose effective capabilities lack `drop` (a thread's
/// capabilities are its own: the rest of the test process keeps them, and they go with the
/// thread).
fn on_a_thread_without<T: Send + 'static>(
    drop: CapabilitySet,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let caps = rustix::thread::capabilities(None).expect("capget");
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: caps.effective - drop,
                ..caps
            },
        )
        .expect("capset");
        f()
    })
    .join()
    .expect("the spawning thread panicked")
}

/// A spawner without a privilege one step needs: that step fails with EPERM, the error is
/// one line naming it, and no job cgroup is left.
#[test]
fn a_spawner_without_the_privilege_gets_the_step_and_leaves_nothing() {
    let test = "embed-cred-eperm";
    if !privileged(test) {
        return;
    }
    let Some(sandbox) = Sandbox::with_cgroup(test) else {
        return;
    };
    for (cap, step) in [
        (CapabilitySet::SETPCAP, "PR_CAPBSET_DROP"),
        (CapabilitySet::SETGID, "setgroups"),
        (CapabilitySet::SETUID, "setresuid"),
    ] {
        let opts = cgroup_options(&sandbox);
        let result = on_a_thread_without(cap, move || {
            let cmd = corral::JobCommand::new("true").credentials(nobody());
            corral::Job::spawn_command(&cmd, &opts).map(|_| ())
        });
        match result {
            Err(e @ corral::Error::Spawn { .. }) => {
                let corral::Error::Spawn { stage, source, .. } = &e else {
                    unreachable!()
                };
                assert!(stage.contains(step), "without {cap:?}: {e} ({stage})");
                assert_eq!(source.raw_os_error(), Some(libc::EPERM), "{e}: {source}");
                assert!(!e.to_string().contains('\n'), "{e}");
            }
            other => panic!("without {cap:?}: expected Error::Spawn at {step}, got {other:?}"),
        }
        let jobs = sandbox.cgroup().jobs();
        assert!(
            CgroupTree::children(&jobs).is_empty(),
            "a failed spawn left a job cgroup under {}",
            jobs.display()
        );
    }
    sandbox.assert_clean();
}

#[test]
fn under_a_supervisor_process_credentials_are_refused() {
    let opts = corral::Options {
        mechanism: corral::MechanismRequest::Pgroup,
        supervisor: corral::Supervisor::Auto,
        ..Default::default()
    };
    let cmd = corral::JobCommand::new("true").credentials(nobody());
    match corral::Job::spawn_command(&cmd, &opts) {
        Err(e @ corral::Error::InvalidOptions(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("Job::spawn_command") && msg.contains("Supervisor::InProcess"),
                "{msg}"
            );
            assert!(e.is_usage());
        }
        Err(e) => panic!("expected InvalidOptions, got {e:?}"),
        Ok(_) => panic!("credentials under a supervisor process must be refused"),
    }
}

/// Without `CAP_SYS_ADMIN`, a PID namespace comes with a user namespace, where the ids
/// given mean something else: refused before anything starts.
#[test]
fn with_a_user_namespace_credentials_are_refused() {
    let test = "embed-cred-userns";
    if !privileged(test) {
        return;
    }
    let Some(sandbox) = Sandbox::with_cgroup(test) else {
        return;
    };
    let opts = corral::Options {
        pid_namespace: true,
        ..cgroup_options(&sandbox)
    };
    let result = on_a_thread_without(CapabilitySet::SYS_ADMIN, move || {
        let cmd = corral::JobCommand::new("true").credentials(nobody());
        corral::Job::spawn_command(&cmd, &opts).map(|_| ())
    });
    match result {
        Err(e @ corral::Error::InvalidOptions(_)) => {
            assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
            assert!(e.is_usage());
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    let jobs = sandbox.cgroup().jobs();
    assert!(
        CgroupTree::children(&jobs).is_empty(),
        "a refused spawn left a job cgroup under {}",
        jobs.display()
    );
    sandbox.assert_clean();
}

/// A `corral-host spawn-command` run: its stdin (the job's), and its stdout by lines.
struct Host {
    process: Outside,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Host {
    /// `corral-host spawn-command ARGS`, in the sandbox's `corral` leaf.
    fn spawn(sandbox: &Sandbox, args: &[&str]) -> Host {
        let mut cmd = Command::new(HOST);
        cmd.arg("spawn-command")
            .args(args)
            .env_remove("CORRAL_SUPERVISOR")
            .env_remove("CORRAL_CGROUP_PARENT")
            .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place_in_cgroup(&mut cmd, &sandbox.cgroup().corral_leaf());
        let mut process = Outside::spawn(&mut cmd);
        let stdin = process.child_mut().stdin.take();
        let stdout = process.child_mut().stdout.take().expect("piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Host {
            process,
            stdin,
            lines,
        }
    }

    /// The value of its next line, which must be `<key> <value>`.
    fn value(&self, key: &str) -> String {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no `{key}` line from corral-host: {e}"));
        match line.split_once(' ') {
            Some((k, v)) if k == key => v.to_string(),
            _ => panic!("corral-host said {line:?}, expected `{key} ...`"),
        }
    }
}

/// An in-process pgroup job (`Supervisor::InProcess`, in a host of its own): the same raw
/// spawn, the same result.
#[test]
fn in_process_pgroup_job_runs_as_nobody() {
    let test = "embed-cred-pgroup";
    if !privileged(test) {
        return;
    }
    let Some(sandbox) = Sandbox::with_cgroup(test) else {
        return;
    };
    let mut host = Host::spawn(
        &sandbox,
        &[
            "--in-process",
            "--credentials",
            "65534:65534:65534",
            "--",
            "sh",
            "-c",
            "read line; exit 3",
        ],
    );
    let pid: u32 = host.value("pid").parse().expect("a pid");
    assert_eq!(
        host.value("cgroup"),
        "",
        "an in-process pgroup job has no cgroup"
    );
    assert_runs_as(pid, &nobody(), "the main process");
    // EOF on its stdin ends the job.
    drop(host.stdin.take());
    assert_eq!(host.value("credentials"), "65534:65534:65534");
    assert_eq!(host.value("exit_status"), "3");
    let status = host
        .process
        .wait_within(DEADLINE)
        .expect("corral-host exits");
    assert!(status.success(), "corral-host: {status:?}");
    sandbox.assert_clean();
}

/// A host that ignores SIGCHLD would have its jobs' processes reaped by the kernel and
/// could never learn an exit status: the spawn is refused, saying why and how to fix it,
/// before anything is made.
#[test]
fn a_host_that_ignores_sigchld_is_refused() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-sigchld-ignored") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    let jobs = jobs.to_str().expect("a UTF-8 path");
    let mut host = Host::spawn(
        &sandbox,
        &["--ignore-sigchld", "--cgroup-parent", jobs, "--", "true"],
    );
    let error = host.value("error");
    assert!(
        error.contains("ignores SIGCHLD") && error.contains("default disposition"),
        "the refusal names the problem and the fix: {error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");
    let status = host
        .process
        .wait_within(DEADLINE)
        .expect("corral-host exits");
    assert!(!status.success(), "corral-host: {status:?}");
    assert!(
        CgroupTree::children(Path::new(jobs)).is_empty(),
        "a refused spawn left a job cgroup under {jobs}"
    );
    sandbox.assert_clean();
}

/// With a PID namespace (root: no user namespace), the ids change before the parent-death
/// signal is set, which such a change would clear: the job still dies with its host. The
/// watchdog is off, so nothing else could end it.
#[test]
fn pid_namespace_job_runs_as_nobody_and_dies_with_its_host() {
    let test = "embed-cred-pidns";
    if !privileged(test) {
        return;
    }
    let Some(sandbox) = Sandbox::with_cgroup(test) else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    let jobs_arg = jobs.to_str().expect("a UTF-8 cgroup path");
    let host = Host::spawn(
        &sandbox,
        &[
            "--cgroup-parent",
            jobs_arg,
            "--pid-namespace",
            "--no-watchdog",
            "--credentials",
            "65534:65534:65534",
            "--",
            "sleep",
            "1000",
        ],
    );
    let value = host.value("pid");
    let pid: u32 = value
        .parse()
        .unwrap_or_else(|_| panic!("corral-host said pid {value:?}"));
    let cgroup = PathBuf::from(host.value("cgroup"));
    // Listed in the job's cgroup, which only this test uses: the PID is the job's.
    assert!(cgroup.starts_with(&jobs), "{}", cgroup.display());
    assert_eq!(cgroup_of(Some(pid)), cgroup);
    let job_fd = pidfd(pid);
    assert_runs_as(pid, &nobody(), "PID 1 of the namespace");
    host.process.kill();
    assert!(
        util::wait_exited(job_fd.as_fd(), Instant::now() + GONE_DEADLINE),
        "the job ({pid}) outlived its host: no parent-death signal"
    );
    // No watchdog, no host: the empty leaf is the test's to remove.
    CgroupTree::wait_empty(&cgroup, DEADLINE, "the job's cgroup");
    fs::remove_dir(&cgroup).unwrap_or_else(|e| panic!("rmdir {}: {e}", cgroup.display()));
    sandbox.assert_clean();
}
