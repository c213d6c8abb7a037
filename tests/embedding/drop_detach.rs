//! Dropping a running `Job` kills its whole tree (a process that left for a session of its
//! own included), reaps the main process and removes the cgroup; `detach` leaves all of
//! that running, for the caller to take over.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::{waitid, Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use crate::common::{cgroup_options, pidfd, wait_until, Held, DEADLINE};
use crate::util::{wait_exited, CgroupTree, Sandbox, TESTTREE};

/// `corral-testtree setsid`: the main process (`top`) and a child that called `setsid()`.
fn spawn_setsid_tree(sandbox: &Sandbox, name: &str) -> (corral::Job, Held, PathBuf) {
    let pids = sandbox.dir.join(format!("{name}.pids"));
    let mut cmd = Command::new(TESTTREE);
    cmd.arg("--pids").arg(&pids).arg("setsid");
    let job = corral::Job::spawn(&mut cmd, &cgroup_options(sandbox)).expect("spawn");
    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
    let held = Held::from_tree(&pids, &["top", "setsid"], &cgroup);
    assert_eq!(held.pid("top"), job.pid());
    let setsid = held.pid("setsid");
    assert_eq!(
        session_of(setsid),
        Some(setsid),
        "the child has a session of its own"
    );
    (job, held, cgroup)
}

#[test]
fn drop_kills_the_tree_and_removes_the_cgroup() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-drop") else {
        return;
    };
    let (job, held, cgroup) = spawn_setsid_tree(&sandbox, "drop");
    let main = pidfd(job.pid());
    let started = Instant::now();
    drop(job);
    let took = started.elapsed();
    held.assert_all_gone("after drop(job)");
    assert!(!cgroup.exists(), "drop left {}", cgroup.display());
    // Drop reaped the main process: there is nothing left to wait for.
    let reaped = waitid(
        WaitId::PidFd(main.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    );
    assert!(
        matches!(reaped, Err(rustix::io::Errno::CHILD)),
        "the main process was not reaped by drop: waitid gave {reaped:?}"
    );
    assert!(took < DEADLINE, "drop took {took:?}");
    sandbox.assert_clean();
}

#[test]
fn detach_leaves_the_tree_running() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-detach") else {
        return;
    };
    let (job, held, cgroup) = spawn_setsid_tree(&sandbox, "detach");
    let main_pid = job.pid();
    let detached = job.detach();
    // From here on this test owns the job: end it even if an assertion fails.
    let mut guard = DetachedGuard {
        cgroup: cgroup.clone(),
        main: Some(main_pid),
        main_fd: pidfd(main_pid),
    };
    assert_eq!(detached.pid, main_pid);
    assert_eq!(detached.cgroup.as_deref(), Some(cgroup.as_path()));
    assert!(cgroup.is_dir(), "detach removed {}", cgroup.display());
    assert!(CgroupTree::populated(&cgroup));
    assert!(held.alive().len() == 2, "detach ended: {:?}", held.alive());
    // Nothing left behind by the Job goes on to stop it.
    let (_, _, main_fd) = &held.procs[0];
    assert!(
        !wait_exited(main_fd.as_fd(), Instant::now() + Duration::from_millis(300)),
        "the detached main process exited"
    );
    assert_eq!(held.alive().len(), 2, "{:?}", held.alive());
    let mut pids = CgroupTree::procs_recursive(&cgroup);
    pids.sort();
    let mut expected = vec![held.pid("top") as i32, held.pid("setsid") as i32];
    expected.sort();
    assert_eq!(pids, expected, "the detached cgroup's members");

    // Take it over: kill, wait until empty, remove, reap.
    guard.end();
    held.assert_all_gone("after cgroup.kill of the detached job");
    assert!(!cgroup.exists());
    sandbox.assert_clean();
}

/// Ends a detached job: `cgroup.kill`, wait for `populated 0`, `rmdir`, reap the main
/// process (our child: its PID stays its own until we reap it).
struct DetachedGuard {
    cgroup: PathBuf,
    main: Option<u32>,
    main_fd: OwnedFd,
}

impl DetachedGuard {
    fn end(&mut self) {
        kill_cgroup(&self.cgroup);
        wait_until(DEADLINE, "the detached cgroup empties", || {
            !CgroupTree::populated(&self.cgroup)
        });
        fs::remove_dir(&self.cgroup)
            .unwrap_or_else(|e| panic!("rmdir {}: {e}", self.cgroup.display()));
        let pid = self.main.take().expect("not reaped yet");
        let raw = Pid::from_raw(pid as i32).expect("a positive pid");
        let (reaped, status) = rustix::process::waitpid(Some(raw), WaitOptions::empty())
            .expect("waitpid on the detached main process")
            .expect("a status");
        assert_eq!(reaped, raw);
        assert_eq!(
            status.terminating_signal(),
            Some(libc::SIGKILL),
            "{status:?}"
        );
    }
}

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        if self.cgroup.exists() {
            kill_cgroup(&self.cgroup);
            let deadline = Instant::now() + DEADLINE;
            while CgroupTree::populated(&self.cgroup) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = fs::remove_dir(&self.cgroup);
        }
        if let Some(pid) = self.main.take() {
            let _ = rustix::process::pidfd_send_signal(&self.main_fd, Signal::KILL);
            if let Some(raw) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(raw), WaitOptions::empty());
            }
        }
    }
}

fn kill_cgroup(cgroup: &Path) {
    let kill = cgroup.join("cgroup.kill");
    fs::write(&kill, "1").unwrap_or_else(|e| panic!("write 1 to {}: {e}", kill.display()));
}

/// The session of `pid` (field 6 of `/proc/<pid>/stat`).
fn session_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(3)?.parse().ok()
}
