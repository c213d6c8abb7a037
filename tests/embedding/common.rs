//! Helpers for the embedding tests: job options inside a test's cgroup sandbox, reading a
//! process's facts from `/proc`, and guards that end what a test started even when it
//! fails.

#![allow(dead_code)] // each behaviour module uses a different subset

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{self, Mechanism, Sandbox};

/// How long anything the tests wait for may take (a loaded CI machine included).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// cgroup jobs under the sandbox's `jobs` cgroup, with a grace short enough for tests.
pub fn cgroup_options(sandbox: &Sandbox) -> corral::Options {
    corral::Options {
        mechanism: corral::MechanismRequest::Cgroup,
        cgroup_parent: Some(sandbox.cgroup().jobs()),
        grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Options for `mechanism`: cgroup jobs as [`cgroup_options`]; pgroup jobs under the
/// default supervisor (`Supervisor::Auto` finds `target/<profile>/corral` one directory up
/// from this test binary).
pub fn options(sandbox: &Sandbox, mechanism: Mechanism) -> corral::Options {
    match mechanism {
        Mechanism::Cgroup => cgroup_options(sandbox),
        Mechanism::Pgroup => corral::Options {
            mechanism: corral::MechanismRequest::Pgroup,
            grace: Duration::from_secs(5),
            supervisor: corral::Supervisor::Auto,
            ..Default::default()
        },
    }
}

/// Asserts `pid` is a process of `job`: in its cgroup, or (pgroup) a descendant of its
/// supervisor that the job lists.
pub fn assert_in_job(job: &corral::Job, pid: u32, what: &str) {
    match job.cgroup() {
        Some(cgroup) => assert_eq!(cgroup_of(Some(pid)), cgroup, "{what} ({pid}): cgroup"),
        None => assert!(
            job.members().expect("members").contains(&pid),
            "{what} ({pid}) is not among the job's members {:?}",
            job.members()
        ),
    }
}

/// The field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`, for n >= 3.
pub fn stat_field(pid: u32, n: usize) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split(' ')
        .nth(n - 3)?
        .parse()
        .ok()
}

/// The parent of `pid`.
pub fn ppid_of(pid: u32) -> Option<u32> {
    stat_field(pid, 4).map(|p| p as u32)
}

/// The supervisor of the pgroup job whose main process is `main`: the child of ours that
/// runs `corral __supervise <main>`. `None` once it has exited (a zombie has no cmdline).
pub fn find_supervisor(main: u32) -> Option<u32> {
    let want = format!("corral\0__supervise\0{main}\0");
    let tasks = fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    tasks
        .flatten()
        .flat_map(|task| {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
}

/// The process of the job that is this process's own child, held by a pidfd: the main
/// process (cgroup mechanism) or the supervisor (pgroup). The job reaps it when it ends;
/// [`OwnChild::assert_reaped`] checks that it did.
pub struct OwnChild {
    pub pid: u32,
    pub what: &'static str,
    fd: OwnedFd,
}

impl OwnChild {
    /// Call right after the spawn, while the job runs (so the child is unreaped and its
    /// PID its own).
    pub fn of(job: &corral::Job) -> OwnChild {
        let (pid, what) = match job.mechanism() {
            corral::Mechanism::Cgroup => (job.pid(), "main process"),
            corral::Mechanism::Pgroup => {
                let sup = ppid_of(job.pid()).expect("the main process's parent");
                (sup, "supervisor")
            }
        };
        assert_eq!(
            ppid_of(pid),
            Some(std::process::id()),
            "the job's {what} ({pid}) is not our child"
        );
        OwnChild {
            pid,
            what,
            fd: pidfd(pid),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Asserts that it was reaped: nothing is left to wait for.
    pub fn assert_reaped(&self) {
        let reaped = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.fd.as_fd()),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
        );
        assert!(
            matches!(reaped, Err(rustix::io::Errno::CHILD)),
            "the job's {} ({}) was not reaped: waitid gave {reaped:?}",
            self.what,
            self.pid
        );
    }
}

/// Report checks shared by every job that ended normally: no survivors, cleanup done.
pub fn assert_cleaned_up(report: &corral::Report, mechanism: Mechanism) {
    assert!(report.survivors.is_empty(), "survivors: {report:#?}");
    assert!(report.cleanup.error.is_none(), "cleanup error: {report:#?}");
    match mechanism {
        Mechanism::Cgroup => {
            assert_eq!(report.mechanism, corral::Mechanism::Cgroup);
            assert_eq!(report.cleanup.cgroup_removed, Some(true), "{report:#?}");
            let cgroup = report.cgroup.as_ref().expect("a cgroup in the report");
            assert!(!cgroup.exists(), "{} not removed", cgroup.display());
        }
        Mechanism::Pgroup => {
            assert_eq!(report.mechanism, corral::Mechanism::Pgroup);
            assert!(report.cgroup.is_none(), "{report:#?}");
        }
    }
}

/// The cgroup2 directory of `pid` (from `/proc/<pid>/cgroup`), as a path under the mount.
/// Reads `/proc/self/cgroup` for `None`.
pub fn cgroup_of(pid: Option<u32>) -> PathBuf {
    let who = pid.map_or("self".to_string(), |pid| pid.to_string());
    util::cgroup_dir_of(&who)
        .unwrap_or_else(|| panic!("no cgroup2 directory for /proc/{who}/cgroup"))
}

/// `starttime` (field 22 of `/proc/<pid>/stat`), which tells a process from a later one
/// with the same PID; `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after `(comm) `: state is field 3, so starttime is the 20th of these.
    let after = stat.rsplit_once(") ")?.1;
    after.split(' ').nth(19)?.parse().ok()
}

/// Opens a pidfd for `pid`, which the caller knows to be alive and to be the process it
/// means (its own unreaped child, or a process it has just seen listed in a cgroup that
/// only its test uses). Refuses PID 1 and below.
pub fn pidfd(pid: u32) -> OwnedFd {
    let raw = Pid::from_raw(pid as i32)
        .filter(|p| p.as_raw_nonzero().get() > 1)
        .unwrap_or_else(|| panic!("refusing to open a pidfd for pid {pid}"));
    rustix::process::pidfd_open(raw, PidfdFlags::empty())
        .unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"))
}

/// Waits for a reader thread's bytes (see [`util::read_to_end_in_thread`]) against a deadline.
pub fn recv_bytes(rx: &Receiver<io::Result<Vec<u8>>>, what: &str) -> Vec<u8> {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("{what}: no EOF within {DEADLINE:?} ({e})"))
        .unwrap_or_else(|e| panic!("{what}: read failed: {e}"))
}

/// Reads `r` to the end on a thread; see [`recv_bytes`].
pub fn read_in_thread(r: impl Read + Send + 'static) -> Receiver<io::Result<Vec<u8>>> {
    util::read_to_end_in_thread(r)
}

/// A child this test spawned outside any job. `Drop` SIGKILLs it through its pidfd and reaps
/// it, so a failing test leaves nothing behind.
pub struct Outside {
    child: Option<Child>,
    pidfd: OwnedFd,
}

impl Outside {
    pub fn spawn(cmd: &mut Command) -> Outside {
        let child = cmd.spawn().expect("spawn a process outside the job");
        // Our unreaped child: its PID is its own.
        let pidfd = pidfd(child.id());
        Outside {
            child: Some(child),
            pidfd,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not reaped yet").id()
    }

    pub fn has_exited(&self) -> bool {
        util::exited(self.pidfd.as_fd())
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("not reaped yet")
    }

    /// Waits up to `within` for it to exit, and reaps it; `None` if it is still running
    /// (it is killed when the `Outside` drops).
    pub fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        if !util::wait_exited(self.pidfd.as_fd(), Instant::now() + within) {
            return None;
        }
        let mut child = self.child.take().expect("not reaped yet");
        Some(child.wait().expect("reap a child of ours"))
    }

    /// SIGKILL through the pidfd, then reap.
    pub fn kill(mut self) -> ExitStatus {
        self.kill_and_reap().expect("a child to reap")
    }

    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if !util::exited(self.pidfd.as_fd()) {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        }
        Some(child.wait().expect("reap a child of ours"))
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Processes the test holds by pidfds opened while they were alive and in the test's own
/// job cgroup. `Drop` SIGKILLs any still running.
#[derive(Default)]
pub struct Held {
    pub procs: Vec<(String, u32, OwnedFd)>,
}

impl Held {
    /// Waits until the `corral-testtree` pids file lists every role in `roles`, then opens a
    /// pidfd for each listed process, checking it is a process of `job` (so it is the
    /// process the tree listed, not a later one with the same PID).
    pub fn from_tree(pids_file: &Path, roles: &[&str], job: &corral::Job) -> Held {
        let what = format!("the tree ready: {roles:?} listed");
        let listed = poll_until(what, util::READY_DEADLINE, || {
            let listed = util::read_pids(pids_file);
            match roles.iter().all(|r| listed.iter().any(|(l, _)| l == r)) {
                true => Ok(listed),
                false => Err(format!("listed {listed:?}")),
            }
        });
        let mut held = Held::default();
        for (role, pid) in listed {
            let pid = pid as u32;
            let fd = pidfd(pid);
            assert!(!util::exited(fd.as_fd()), "{role} ({pid}) already gone");
            assert_in_job(job, pid, &role);
            held.procs.push((role, pid, fd));
        }
        held
    }

    pub fn pid(&self, role: &str) -> u32 {
        self.procs
            .iter()
            .find(|(r, _, _)| r == role)
            .unwrap_or_else(|| panic!("no {role}"))
            .1
    }

    /// SIGKILLs, through their pidfds, those still running.
    pub fn kill_all(&self) {
        for (_, _, fd) in &self.procs {
            if !util::exited(fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
        }
    }

    /// The processes still running now.
    pub fn alive(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter(|(_, _, fd)| !util::exited(fd.as_fd()))
            .map(|(role, pid, _)| format!("{role} {}", util::describe_pid(*pid as i32)))
            .collect()
    }

    /// Asserts every process has exited, waiting up to [`util::GONE_DEADLINE`] for the
    /// kernel to say so.
    pub fn assert_all_gone(&self, context: &str) {
        let deadline = Instant::now() + util::GONE_DEADLINE;
        for (role, pid, fd) in &self.procs {
            assert!(
                util::wait_exited(fd.as_fd(), deadline),
                "{context}: {role} ({pid}) still running"
            );
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.kill_all();
    }
}
