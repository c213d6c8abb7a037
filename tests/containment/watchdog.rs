//! The job dies with its supervisor (cgroup mode): when the process running a cgroup job is
//! killed (SIGKILL, by itself or with its whole process group), the host's watchdog
//! (a fork of `corral`, see `src/linux/watchdog.rs`) kills every process of the job, even
//! those that left the job's session (`setsid`, a double-fork daemon), and removes the
//! job's cgroup, within 1 s. A job that ended normally is forgotten, and the watchdog exits
//! with its host.
//!
//! The tree: `sh -c 'testtree setsid & testtree --go G daemon & wait'`, so the job holds a
//! `setsid` escapee and a daemon (both out of corral's process group and session), besides
//! `sh` and the two `top`s. Every process is held by a pidfd opened while it was alive, and
//! the watchdog is found in `/proc` (the CLI forks it: its name is `corral-watchdog` and its
//! command line the host's; an exec'd one is `corral __watchdog <host pid>`) and held by a
//! pidfd too. Everything runs in the test's cgroup subtree (corral, its watchdog and the
//! host in `corral/`, jobs under `jobs/`), which is killed and removed in `Drop` whatever
//! happens.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{
    describe_pid, exited, pidfd_of_child, place_in_cgroup, read_pids, CgroupTree, Mechanism, Procs,
    Run, Sandbox, READY_DEADLINE, TESTTREE,
};

const HOST: &str = corral_testkit::HOST;

/// The issue's bound: every process of the job gone, and its cgroup, within this.
const BOUND: Duration = Duration::from_secs(1);

/// The roles the escapee tree lists (`top` twice: one per `corral-testtree`).
const ROLES: &[&str] = &["top", "top", "setsid", "daemon"];

/// `sh -c '...'` starting a `setsid` escapee and a double-fork daemon, waiting forever.
fn escapees(pids: &Path, go: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#""$0" --pids "$1" setsid & "$0" --pids "$1" --go "$2" daemon & wait"#.into(),
        TESTTREE.into(),
        pids.display().to_string(),
        go.display().to_string(),
    ]
}

/// `corral run` (cgroup) `OPTIONS` of the escapee tree.
fn corral_with_escapees(sandbox: &Sandbox, options: &[&str]) -> Run {
    let mut run = sandbox.corral(Mechanism::Cgroup);
    let command = escapees(&run.pids_file(), &run.go_file());
    run.args(options).arg("--").args(command);
    run
}

/// Waits until the pids file lists `ROLES`, then holds each listed process by a pidfd.
fn wait_listed(pids: &Path, host: &OwnedFd) -> Procs {
    poll_until("the tree ready", READY_DEADLINE, || {
        let listed = read_pids(pids);
        let count = |role: &str| listed.iter().filter(|(r, _)| r == role).count();
        if ROLES
            .iter()
            .all(|r| count(r) >= ROLES.iter().filter(|x| *x == r).count())
        {
            // Nothing stops this tree before the test kills the host: every listed process
            // is alive and its pidfd is the right one.
            let mut procs = Procs::default();
            procs.open_late(&listed);
            assert_eq!(procs.procs.len(), listed.len(), "a listed process is gone");
            return Ok(procs);
        }
        assert!(
            !exited(host.as_fd()),
            "the host exited before the tree was ready"
        );
        Err(format!("listed {listed:?}"))
    })
}

/// The one job cgroup under the sandbox's `jobs/`.
fn job_cgroup(sandbox: &Sandbox) -> PathBuf {
    let jobs = CgroupTree::children(&sandbox.cgroup().jobs());
    assert_eq!(jobs.len(), 1, "expected one job cgroup: {jobs:?}");
    jobs[0].clone()
}

fn cgroup_procs(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The host's watchdog process, held by a pidfd.
struct Watchdog {
    pid: i32,
    fd: OwnedFd,
}

/// The command line of `pid`, split at NULs.
fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `corral __watchdog <host>` (exec'd by a multi-threaded host), or the fork of a
/// single-threaded host such as the CLI: named `corral-watchdog`, with the host's command
/// line (read while the host runs).
fn is_watchdog_of(pid: i32, host: i32) -> bool {
    let argv = cmdline(pid);
    let execd = argv.len() == 3
        && argv[0].ends_with("corral")
        && argv[1] == "__watchdog"
        && argv[2] == host.to_string();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let forked = pid != host && comm.trim_end() == "corral-watchdog" && argv == cmdline(host);
    execd || forked
}

impl Watchdog {
    /// The watchdog of `host`, if one runs: found in `/proc` by its command line, and
    /// confirmed by it after its pidfd was opened (so the pidfd is the watchdog's).
    fn of(host: i32) -> Option<Watchdog> {
        for pid in crate::util::proc_pids() {
            if pid <= 1 || !is_watchdog_of(pid, host) {
                continue;
            }
            let raw = Pid::from_raw(pid).expect("positive");
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue;
            };
            if is_watchdog_of(pid, host) && !exited(fd.as_fd()) {
                return Some(Watchdog { pid, fd });
            }
        }
        None
    }

    /// Asserts it has exited by `deadline`.
    fn assert_exits_by(&self, deadline: Instant, context: &str) {
        if !wait_readable(&[&self.fd], deadline) {
            panic!(
                "{context}: the watchdog {} still runs",
                describe_pid(self.pid)
            );
        }
    }
}

/// The process group and session of `pid`, from `/proc/<pid>/stat`.
fn group_and_session(pid: i32) -> (i32, i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state ppid pgrp session ...
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<i32> = after
        .split(' ')
        .skip(2)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(fields.len(), 2, "no /proc/{pid}/stat: {stat:?}");
    (fields[0], fields[1])
}

/// Polls until every fd is readable (each process exited); false if `deadline` passes.
fn wait_readable(fds: &[&OwnedFd], deadline: Instant) -> bool {
    loop {
        if fds.iter().all(|fd| exited(fd.as_fd())) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
    }
}

/// The job before its supervisor is killed: every escapee is in the job's cgroup, out of
/// the supervisor's process group and session, and the watchdog is in neither.
fn check_before(procs: &Procs, cgroup: &Path, watchdog: &Watchdog, host: i32) {
    let members = cgroup_procs(cgroup);
    for role in ["setsid", "daemon"] {
        let pid = procs.pid(role);
        assert!(
            members.contains(&pid),
            "{role} ({}) is not in the job cgroup {}: {members:?}",
            describe_pid(pid),
            cgroup.display()
        );
    }
    let (group, session) = group_and_session(watchdog.pid);
    let (host_group, host_session) = group_and_session(host);
    assert!(
        group != host_group && session != host_session && session != 0,
        "the watchdog {} shares the host's process group {host_group} or session \
         {host_session}",
        describe_pid(watchdog.pid)
    );
}

/// The processes of `procs` still alive, described.
fn alive(procs: &Procs) -> Vec<String> {
    procs
        .procs
        .iter()
        .filter(|p| !procs.gone(p.pid))
        .map(|p| format!("{} {}", p.role, describe_pid(p.pid)))
        .collect()
}

/// Within [`BOUND`] of `killed`: every process of the tree is gone, the job's cgroup is
/// empty and removed, and then the watchdog has exited.
fn assert_job_gone(procs: &Procs, cgroup: &Path, watchdog: &Watchdog, killed: Instant) {
    let deadline = killed + BOUND;
    poll_until(
        format_args!("{BOUND:?} after the supervisor was killed, the job gone"),
        deadline,
        || {
            let alive = alive(procs);
            let present = cgroup.exists();
            if alive.is_empty() && !present {
                return Ok(());
            }
            Err(format!(
                "still running: {alive:?}; job cgroup {} {}",
                cgroup.display(),
                if present {
                    format!("still exists, cgroup.procs {:?}", cgroup_procs(cgroup))
                } else {
                    "removed".into()
                }
            ))
        },
    );
    watchdog.assert_exits_by(deadline, "after it killed the job");
}

/// (1) SIGKILL to `corral` alone: the watchdog kills the job, escapees included.
#[test]
fn corral_killed_takes_its_job_along() {
    let Some(sandbox) = Sandbox::with_cgroup("watchdog-kill") else {
        return;
    };
    let job = corral_with_escapees(&sandbox, &[]).spawn();
    let procs = job.wait_ready(ROLES);
    let cgroup = job_cgroup(&sandbox);
    let watchdog = Watchdog::of(job.pid()).expect("corral runs a watchdog");
    check_before(&procs, &cgroup, &watchdog, job.pid());
    job.signal(Signal::KILL);
    let killed = Instant::now();
    assert_job_gone(&procs, &cgroup, &watchdog, killed);
    let done = job.finish();
    assert_eq!(done.status.signal(), Some(libc::SIGKILL));
    sandbox.assert_clean();
}

/// (2) SIGKILL to corral's whole process group (one this test created, led by corral): the
/// watchdog is not in it, and kills what left it.
#[test]
fn corral_killed_with_its_process_group_takes_its_job_along() {
    let Some(sandbox) = Sandbox::with_cgroup("watchdog-killpg") else {
        return;
    };
    let mut run = corral_with_escapees(&sandbox, &[]);
    run.process_group(0);
    let job = run.spawn();
    let procs = job.wait_ready(ROLES);
    let cgroup = job_cgroup(&sandbox);
    let watchdog = Watchdog::of(job.pid()).expect("corral runs a watchdog");
    check_before(&procs, &cgroup, &watchdog, job.pid());
    job.signal_group(Signal::KILL);
    let killed = Instant::now();
    assert_job_gone(&procs, &cgroup, &watchdog, killed);
    let done = job.finish();
    assert_eq!(done.status.signal(), Some(libc::SIGKILL));
    sandbox.assert_clean();
}

/// A `corral-host wait-job` (the library in a program of its own), killed by the test.
struct Host {
    child: Child,
    fd: OwnedFd,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Host {
    /// `pgroup`: a pgroup job under a supervisor process, the host leading a process group
    /// of its own (created here, so the test may signal it). `before`: cgroup jobs the host
    /// runs to their end first.
    fn spawn_with(sandbox: &Sandbox, dir: &Path, pgroup: bool, before: usize) -> Host {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(HOST);
        cmd.arg("wait-job");
        if pgroup {
            cmd.arg("--pgroup").process_group(0);
        }
        if before > 0 {
            cmd.args(["--jobs-before", &before.to_string()]);
        }
        cmd.arg("--cgroup-parent")
            .arg(sandbox.cgroup().jobs())
            .arg("--")
            .args(escapees(&dir.join("pids"), &dir.join("go")))
            .env_remove("CORRAL_SUPERVISOR")
            .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        place_in_cgroup(&mut cmd, &sandbox.cgroup().corral_leaf());
        let mut child = cmd.spawn().expect("spawn corral-host");
        let fd = pidfd_of_child(&child);
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Host { child, fd, lines }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(READY_DEADLINE)
            .expect("a line from corral-host")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Our unreaped child: its PID is its own until this wait.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (3) The program embedding the library, SIGKILLed while its cgroup job runs.
#[test]
fn embedding_host_killed_takes_its_job_along() {
    host_killed_takes_its_job_along("watchdog-host", 0);
}

/// (3b) The same after 40 jobs of the host came and went: the watchdog acts on what is
/// registered at the end (a lazy one, on the plan the host last published).
#[test]
fn embedding_host_killed_after_many_jobs_takes_its_job_along() {
    host_killed_takes_its_job_along("watchdog-host-many", 40);
}

fn host_killed_takes_its_job_along(name: &str, before: usize) {
    let Some(sandbox) = Sandbox::with_cgroup(name) else {
        return;
    };
    let dir = sandbox.dir.join("host");
    fs::create_dir_all(&dir).expect("create the host's directory");
    let mut host = Host::spawn_with(&sandbox, &dir, false, before);
    let first = host.line();
    let cgroup = PathBuf::from(
        first
            .strip_prefix("cgroup ")
            .unwrap_or_else(|| panic!("corral-host said {first:?}")),
    );
    let procs = wait_listed(&dir.join("pids"), &host.fd);
    assert_eq!(job_cgroup(&sandbox), cgroup);
    let watchdog = Watchdog::of(host.pid()).expect("the host runs a watchdog");
    check_before(&procs, &cgroup, &watchdog, host.pid());
    assert_eq!(
        registry_files(&sandbox).len(),
        2,
        "the job's record and socket: {:?}",
        registry_files(&sandbox)
    );
    host.child.kill().expect("SIGKILL corral-host");
    let killed = Instant::now();
    assert_job_gone(&procs, &cgroup, &watchdog, killed);
    // The watchdog removed the dead host's registry record and socket too.
    assert!(
        registry_files(&sandbox).is_empty(),
        "{:?}",
        registry_files(&sandbox)
    );
    let status = host.child.wait().expect("reap corral-host");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    sandbox.assert_clean();
}

/// (4) A job that ends normally: the report names the watchdog; the watchdog forgets the
/// job and exits with corral.
#[test]
fn the_watchdog_exits_with_its_host() {
    let Some(sandbox) = Sandbox::with_cgroup("watchdog-normal") else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .tree(&["--exit", "0", "setsid"])
        .spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    let watchdog = Watchdog::of(job.pid()).expect("corral runs a watchdog");
    job.go();
    let done = job.finish();
    let returned = Instant::now();
    done.assert_code(0);
    done.assert_report_basics(Mechanism::Cgroup);
    assert_eq!(
        done.report()["on_supervisor_death"],
        format!("killed by the watchdog (pid {})", watchdog.pid),
        "{}",
        done.report_text()
    );
    watchdog.assert_exits_by(returned + BOUND, "after corral returned");
    procs.assert_all_gone("after corral returned");
    sandbox.assert_clean();
}

/// (5) `--debug-no-watchdog`: no watchdog runs, the report and the summary say the job is
/// not covered, and a job whose corral is killed keeps running (the test kills it
/// through its cgroup).
#[test]
fn without_the_watchdog_the_job_is_not_covered() {
    let Some(sandbox) = Sandbox::with_cgroup("watchdog-off") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.arg("--debug-no-watchdog").args(["--", "true"]);
    let done = run.run();
    done.assert_code(0);
    let said = done.report()["on_supervisor_death"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.starts_with("not covered: ") && said.contains("--debug-no-watchdog"),
        "{}",
        done.report_text()
    );
    assert!(
        done.stderr.contains(&said),
        "the summary line says it: {:?}",
        done.stderr
    );

    let run = corral_with_escapees(&sandbox, &["--debug-no-watchdog"]);
    let job = run.spawn();
    let procs = job.wait_ready(ROLES);
    let cgroup = job_cgroup(&sandbox);
    assert!(
        Watchdog::of(job.pid()).is_none(),
        "a watchdog runs despite --debug-no-watchdog"
    );
    job.signal(Signal::KILL);
    let done = job.finish();
    assert_eq!(done.status.signal(), Some(libc::SIGKILL));
    for role in ["setsid", "daemon"] {
        assert!(
            !procs.gone(procs.pid(role)),
            "{role} died with corral, though nothing watched the job"
        );
    }
    // Clean up through the cgroup, as the watchdog would have.
    fs::write(cgroup.join("cgroup.kill"), "1").expect("write cgroup.kill");
    CgroupTree::wait_empty(&cgroup, BOUND * 5, "after cgroup.kill, the job cgroup");
    fs::remove_dir(&cgroup).expect("remove the job cgroup");
    procs.assert_all_gone("after cgroup.kill");
    sandbox.assert_clean();
}

/// (6) pgroup under a supervisor process: the host SIGKILLed alone, or with its whole
/// process group. The supervisor has a session of its own, so it outlives both, sees its
/// host go, and kills the job; then it exits. Everything (host, supervisor, job) runs in the
/// test's `corral/` cgroup, which must be empty within the bound.
fn pgroup_host_killed(name: &str, whole_group: bool) {
    let Some(sandbox) = Sandbox::with_cgroup(name) else {
        return;
    };
    let dir = sandbox.dir.join("host");
    fs::create_dir_all(&dir).expect("create the host's directory");
    let mut host = Host::spawn_with(&sandbox, &dir, true, 0);
    let first = host.line();
    assert_eq!(first, "cgroup ", "corral-host said {first:?}");
    let procs = wait_listed(&dir.join("pids"), &host.fd);
    let (host_group, host_session) = group_and_session(host.pid());
    for role in ["setsid", "daemon"] {
        let (group, session) = group_and_session(procs.pid(role));
        assert!(
            group != host_group && session != host_session,
            "{role} did not leave the host's group and session"
        );
    }
    if whole_group {
        // The group this test created for the host (it leads it).
        let group = Pid::from_raw(host.pid()).expect("a child's pid is positive");
        rustix::process::kill_process_group(group, Signal::KILL).expect("SIGKILL the host's group");
    } else {
        host.child.kill().expect("SIGKILL corral-host");
    }
    let killed = Instant::now();
    let status = host.child.wait().expect("reap corral-host");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let leaf = sandbox.cgroup().corral_leaf();
    let what = format!("{BOUND:?} after the host was killed, the job gone");
    poll_until(what, killed + BOUND, || {
        let alive = alive(&procs);
        let members = cgroup_procs(&leaf);
        if alive.is_empty() && members.is_empty() {
            return Ok(());
        }
        Err(format!(
            "still running: {alive:?}; in {}: {:?}",
            leaf.display(),
            members.iter().map(|&p| describe_pid(p)).collect::<Vec<_>>()
        ))
    });
    // Without a cgroup nothing removes the dead host's record: it is stale, and
    // `corral sweep` removes it.
    assert_eq!(
        registry_files(&sandbox).len(),
        2,
        "{:?}",
        registry_files(&sandbox)
    );
    let mut sweep = sandbox.corral_bare();
    sweep.arg("sweep");
    let swept = sweep.run();
    swept.assert_code(0);
    assert!(
        registry_files(&sandbox).is_empty(),
        "after corral sweep: {:?}\n{}",
        registry_files(&sandbox),
        swept.stderr
    );
    sandbox.assert_clean();
}

/// The files in the sandbox's job registry.
fn registry_files(sandbox: &Sandbox) -> Vec<String> {
    fs::read_dir(&sandbox.runtime)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pgroup_host_killed_takes_its_job_along() {
    pgroup_host_killed("supervisor-host-kill", false);
}

#[test]
fn pgroup_host_killed_with_its_process_group_takes_its_job_along() {
    pgroup_host_killed("supervisor-host-killpg", true);
}
