//! `corral::tokio` (feature `tokio`): waiting, stopping and collecting output on a tokio
//! runtime. Each behaviour runs on a current_thread runtime and, handed to `tokio::spawn`
//! (so its future must be `Send`), on a multi-thread one.
//!
//! Jobs use the cgroup mechanism under a cgroup subtree each test creates and removes (even
//! when it fails). Processes are checked through pidfds opened while they were known
//! members of the job; every wait is bounded by a deadline. Without a writable cgroup2 the
//! tests print `SKIPPED: <reason>`, or fail when `CORRAL_REQUIRE_ALL=1`.
#![cfg(target_os = "linux")]

use std::fs;
use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::{Job, MechanismRequest, Options, StopOutcome, StopReason};

#[path = "containment/util.rs"]
#[allow(unused_macros, unused_imports)] // the per-mechanism macro serves tests/containment
mod util;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// How long a job may take to show its processes, or to be over once asked.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopped process may take to be seen gone.
const GONE_DEADLINE: Duration = Duration::from_secs(2);
/// A grace longer than [`DEADLINE`]: a job stopped with it that still returns in time was
/// woken by `cgroup.events` (`POLLPRI` through the reactor), not by the end of the grace.
const LONG_GRACE: Duration = Duration::from_secs(60);

// ---- a cgroup subtree per test ---------------------------------------------------------
// util::CgroupTree: `<base>/corral-test-<pid>-<name>-<n>/{corral,jobs,other}`, whose `jobs`
// is the jobs' cgroup parent; `Drop` kills everything in it and removes it, even after a
// panic.

/// The test's cgroup, or `None` after printing `SKIPPED` (a panic under
/// `CORRAL_REQUIRE_ALL=1`).
fn test_cgroup(name: &str) -> Option<util::CgroupTree> {
    match util::CgroupTree::create(&format!("tokio-{name}")) {
        Ok(cgroup) => Some(cgroup),
        Err(reason) => {
            let reason = format!("{name}: no writable cgroup2 ({reason})");
            if std::env::var_os("CORRAL_REQUIRE_ALL").is_some_and(|v| v == "1") {
                panic!("test cannot run and CORRAL_REQUIRE_ALL=1: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

fn options(jobs: &Path, grace: Duration) -> Options {
    Options {
        mechanism: MechanismRequest::Cgroup,
        cgroup_parent: Some(jobs.to_path_buf()),
        grace,
        ..Default::default()
    }
}

// ---- runtimes --------------------------------------------------------------------------

/// Runs `scenario` on a current_thread runtime, then through `tokio::spawn` on a
/// multi-thread one.
fn on_both_runtimes<F, Fut>(name: &str, scenario: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(cgroup) = test_cgroup(name) else {
        return;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current_thread runtime")
        .block_on(scenario(cgroup.jobs()));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
        .block_on(async {
            if let Err(e) = tokio::spawn(scenario(cgroup.jobs())).await {
                match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(e) => panic!("scenario task: {e}"),
                }
            }
        });
}

// ---- processes -------------------------------------------------------------------------

/// Polls `job.members()` until it lists at least `n` processes.
async fn members_at_least(job: &Job, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let members = job.members().expect("members");
        if members.len() >= n {
            return members;
        }
        assert!(
            Instant::now() < deadline,
            "only {members:?} of {n} members appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A pidfd for `pid`, checked to be the job's process: it is still listed as a member after
/// the pidfd was opened (so the pidfd is not a reused PID's).
fn member_pidfd(job: &Job, pid: u32) -> OwnedFd {
    let fd = pidfd_open(
        Pid::from_raw(pid as i32).expect("a member's PID"),
        PidfdFlags::empty(),
    )
    .unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
    assert!(
        job.members().expect("members").contains(&pid),
        "{pid} left the job before its pidfd was checked"
    );
    fd
}

/// Whether the process behind `pidfd` has exited (the pidfd is readable).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).expect("poll on a pidfd");
    fds[0].revents().contains(PollFlags::IN)
}

/// Polls until the process behind `pidfd` has exited, against [`GONE_DEADLINE`].
async fn assert_gone(pidfd: &OwnedFd, what: &str) {
    let deadline = Instant::now() + GONE_DEADLINE;
    while !exited(pidfd.as_fd()) {
        assert!(Instant::now() < deadline, "{what} is still alive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `f` must finish within [`DEADLINE`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {DEADLINE:?}"))
}

/// The `Threads:` line of `/proc/self/status`.
fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .expect("read /proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// A process outside any job, our child, killed through its pidfd and reaped on drop.
struct Outsider {
    child: Child,
    pidfd: OwnedFd,
}

impl Outsider {
    fn spawn(cmd: &mut Command) -> Outsider {
        let child = cmd.spawn().expect("spawn the outside process");
        // Our unreaped child: its PID cannot have been reused.
        let pidfd = pidfd_open(
            Pid::from_raw(child.id() as i32).expect("child PID"),
            PidfdFlags::empty(),
        )
        .expect("pidfd_open of our child");
        Outsider { child, pidfd }
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = self.child.wait();
    }
}

// ---- behaviours ------------------------------------------------------------------------

/// The main process exits 3 leaving a `sleep` behind: `wait_async` stops it as a leftover
/// and reports 3.
#[test]
fn wait_async_stops_leftovers() {
    on_both_runtimes("wait", |jobs| async move {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000 & read x; exit 3"])
            .stdin(Stdio::piped());
        let mut job = Job::spawn(&mut cmd, &options(&jobs, LONG_GRACE)).expect("spawn");
        let members = members_at_least(&job, 2).await;
        let sleep_pid = *members
            .iter()
            .find(|p| **p != job.pid())
            .expect("the sleep");
        let sleep_fd = member_pidfd(&job, sleep_pid);
        drop(job.stdin.take()); // `read` sees EOF: the shell exits 3
        let report = bounded("wait_async", job.wait_async())
            .await
            .expect("wait_async");
        assert_eq!(report.exit_status, 3, "{report:#?}");
        assert!(
            report.leftovers.iter().any(|l| l.pid == sleep_pid),
            "the sleep must be a leftover: {report:#?}"
        );
        assert!(report.survivors.is_empty(), "{report:#?}");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, StopReason::Leftovers, "{report:#?}");
        assert_eq!(report.cleanup.cgroup_removed, Some(true), "{report:#?}");
        assert_gone(&sleep_fd, "the leftover sleep").await;
        // Over: the same report again.
        let again = job.wait_async().await.expect("wait_async again");
        assert_eq!(again.exit_status, 3);
    });
}

/// A tree that ignores SIGTERM: `stop_async` waits out the grace and kills.
#[test]
fn stop_async_escalates_to_kill() {
    on_both_runtimes("stop", |jobs| async move {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 1000 & wait"]);
        let mut job =
            Job::spawn(&mut cmd, &options(&jobs, Duration::from_millis(200))).expect("spawn");
        let members = members_at_least(&job, 2).await;
        let fds: Vec<OwnedFd> = members.iter().map(|p| member_pidfd(&job, *p)).collect();
        let report = bounded("stop_async", job.stop_async())
            .await
            .expect("stop_async");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, StopReason::Requested, "{report:#?}");
        assert_eq!(stop.outcome, StopOutcome::Killed, "{report:#?}");
        let steps: Vec<&str> = stop.steps.iter().map(|s| s.step.name()).collect();
        let signal = steps.iter().position(|s| *s == "signal");
        let kill = steps.iter().position(|s| *s == "kill");
        assert!(
            signal.is_some() && kill.is_some() && signal < kill,
            "polite signal, then kill: {steps:?}"
        );
        assert!(report.survivors.is_empty(), "{report:#?}");
        assert_eq!(report.exit_status, 128 + 9, "{report:#?}");
        for fd in &fds {
            assert_gone(fd, "a process that ignored SIGTERM").await;
        }
    });
}

/// `corral kill NAME` from another process stops a job while `wait_async` waits: the
/// reactor serves the job's control socket (the job registry).
#[test]
fn outside_kill_ends_wait_async() {
    static N: AtomicUsize = AtomicUsize::new(0);
    on_both_runtimes("outside-kill", |jobs| async move {
        let name = format!(
            "tokio-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut opts = options(&jobs, LONG_GRACE);
        opts.name = Some(name.clone());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000 & wait"]);
        let mut job = Job::spawn(&mut cmd, &opts).expect("spawn");
        assert_eq!(job.not_registered(), None);
        let members = members_at_least(&job, 2).await;
        let fds: Vec<OwnedFd> = members.iter().map(|p| member_pidfd(&job, *p)).collect();
        let killer = std::thread::spawn(move || {
            Command::new(util::CORRAL)
                .args(["kill", &name, "--grace", "1s"])
                .output()
        });
        let report = bounded("wait_async", job.wait_async())
            .await
            .expect("wait_async");
        let out = killer.join().unwrap().expect("run corral kill");
        assert!(out.status.success(), "corral kill: {out:?}");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, StopReason::External, "{report:#?}");
        assert!(stop.requested_by.is_some(), "{report:#?}");
        assert_eq!(report.exit_status, 128 + 15, "{report:#?}");
        for fd in &fds {
            assert_gone(fd, "a process of the job").await;
        }
    });
}

/// `Options::timeout` stops the job: exit status 124.
#[test]
fn timeout_exits_124() {
    on_both_runtimes("timeout", |jobs| async move {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000; exit 0"]);
        let opts = Options {
            timeout: Some(Duration::from_millis(300)),
            ..options(&jobs, LONG_GRACE)
        };
        let mut job = Job::spawn(&mut cmd, &opts).expect("spawn");
        let report = bounded("wait_async", job.wait_async())
            .await
            .expect("wait_async");
        assert_eq!(report.exit_status, 124, "{report:#?}");
        assert!(report.timed_out, "{report:#?}");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, StopReason::Timeout, "{report:#?}");
        assert!(report.survivors.is_empty(), "{report:#?}");
    });
}

/// A `wait_async` cancelled by a timeout leaves the job running and consistent;
/// `kill_async` then ends it at once.
#[test]
fn cancelled_wait_resumes_and_kill_async_ends_it() {
    on_both_runtimes("cancel", |jobs| async move {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 1000 & wait"]);
        let mut job = Job::spawn(&mut cmd, &options(&jobs, Duration::from_secs(5))).expect("spawn");
        let members = members_at_least(&job, 2).await;
        let fds: Vec<OwnedFd> = members.iter().map(|p| member_pidfd(&job, *p)).collect();
        let cancelled = tokio::time::timeout(Duration::from_millis(100), job.wait_async()).await;
        assert!(cancelled.is_err(), "the job cannot be over: {cancelled:?}");
        assert!(job.try_wait().expect("try_wait").is_none());
        assert!(fds.iter().all(|fd| !exited(fd.as_fd())));
        let report = bounded("kill_async", job.kill_async())
            .await
            .expect("kill_async");
        let stop = report.stop.as_ref().expect("a stop report");
        assert_eq!(stop.reason, StopReason::Requested, "{report:#?}");
        assert_eq!(stop.outcome, StopOutcome::Killed, "{report:#?}");
        assert_eq!(
            stop.steps.first().map(|s| s.step.name()),
            Some("kill"),
            "{report:#?}"
        );
        for fd in &fds {
            assert_gone(fd, "a killed member").await;
        }
    });
}

/// Output is collected, and the call returns once the job is over although a process
/// outside the job still holds the write end of the pipe.
#[test]
fn wait_with_output_async_does_not_wait_for_outside_writers() {
    on_both_runtimes("output", |jobs| async move {
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let outsider = Outsider::spawn(
            Command::new("sleep")
                .arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::from(write.try_clone().expect("dup"))),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hi; echo err >&2; exit 0"])
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped());
        let mut job = Job::spawn(&mut cmd, &options(&jobs, Duration::from_secs(5))).expect("spawn");
        drop(cmd); // our own copy of the write end
        job.stdout = Some(ChildStdout::from(read));
        let output = bounded(
            "wait_with_output_async (the pipe is held outside the job)",
            job.wait_with_output_async(),
        )
        .await
        .expect("wait_with_output_async");
        assert_eq!(output.stdout, b"hi\n");
        assert_eq!(output.stderr, b"err\n");
        assert_eq!(output.report.exit_status, 0, "{:#?}", output.report);
        assert!(
            !exited(outsider.pidfd.as_fd()),
            "the process outside the job must be left alone"
        );
        drop(outsider);
    });
}

/// 50 jobs waited for at once on one current_thread runtime all finish, and the process
/// does not grow a thread per job.
#[test]
fn fifty_jobs_on_one_thread() {
    const JOBS: usize = 50;
    let Some(cgroup) = test_cgroup("fifty") else {
        return;
    };
    let opts = options(&cgroup.jobs(), LONG_GRACE);
    let before = thread_count();
    let peak = Arc::new(AtomicUsize::new(before));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current_thread runtime");
    rt.block_on(async {
        let mut stdins = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..JOBS {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "read x; sleep 1000 & exit 0"])
                .stdin(Stdio::piped());
            let mut job = Job::spawn(&mut cmd, &opts).expect("spawn");
            stdins.push(job.stdin.take());
            tasks.push(tokio::spawn(async move { job.wait_async().await }));
        }
        let done = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (peak, done) = (peak.clone(), done.clone());
            async move {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(thread_count(), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        // Every task polls once (registering its pidfd) before the jobs are let go.
        tokio::task::yield_now().await;
        peak.fetch_max(thread_count(), Ordering::SeqCst);
        drop(stdins);
        for task in tasks {
            let report = bounded("wait_async", task)
                .await
                .expect("task")
                .expect("wait_async");
            assert_eq!(report.exit_status, 0, "{report:#?}");
            assert_eq!(report.leftovers.len(), 1, "{report:#?}");
            assert!(report.survivors.is_empty(), "{report:#?}");
        }
        done.store(true, Ordering::SeqCst);
        sampler.await.expect("sampler");
    });
    // Other tests of this binary run threads (and multi-thread runtimes) meanwhile: allow
    // for them, but a thread per job would add 50.
    let grown = peak.load(Ordering::SeqCst).saturating_sub(before);
    eprintln!("threads: {before} before, {grown} more at the peak");
    assert!(
        grown < JOBS / 2,
        "the thread count grew by {grown} while {JOBS} jobs ran ({before} before)"
    );
}
