//! Dropping a running `Job` kills its whole tree (a process that left for a session of its
//! own included), reaps what it must (the main process, or the supervisor) and removes the
//! cgroup; `detach` leaves all of that running, for the caller to take over.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use crate::common::{stat_field, Held, OwnChild, DEADLINE};
use crate::util::{both_mechanisms, wait_exited, CgroupTree, Mechanism, Sandbox, TESTTREE};

both_mechanisms!(
    drop_kills_the_tree_and_cleans_up,
    detach_leaves_the_tree_running
);

/// `corral-testtree setsid`: the main process (`top`) and a child that called `setsid()`.
fn spawn_setsid_tree(
    sandbox: &Sandbox,
    mechanism: Mechanism,
    name: &str,
) -> (corral::Job, Held, OwnChild) {
    let pids = sandbox.dir.join(format!("{name}.pids"));
    let mut cmd = Command::new(TESTTREE);
    cmd.arg("--pids").arg(&pids).arg("setsid");
    let opts = crate::common::options(sandbox, mechanism);
    let job = corral::Job::spawn(&mut cmd, &opts).expect("spawn");
    let own_child = OwnChild::of(&job);
    let held = Held::from_tree(&pids, &["top", "setsid"], &job);
    assert_eq!(held.pid("top"), job.pid());
    let setsid = held.pid("setsid");
    assert_eq!(
        stat_field(setsid, 6),
        Some(setsid.into()),
        "the child has a session of its own"
    );
    (job, held, own_child)
}

fn drop_kills_the_tree_and_cleans_up(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-drop", mechanism) else {
        return;
    };
    let (job, held, own_child) = spawn_setsid_tree(&sandbox, mechanism, "drop");
    let cgroup = job.cgroup().map(Path::to_path_buf);
    let started = Instant::now();
    drop(job);
    let took = started.elapsed();
    held.assert_all_gone("after drop(job)");
    if let Some(cgroup) = cgroup {
        assert!(!cgroup.exists(), "drop left {}", cgroup.display());
    }
    // Drop reaped its own child (the main process, or the supervisor).
    own_child.assert_reaped();
    assert!(took < DEADLINE, "drop took {took:?}");
    sandbox.assert_clean();
}

fn detach_leaves_the_tree_running(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-detach", mechanism) else {
        return;
    };
    let (job, held, own_child) = spawn_setsid_tree(&sandbox, mechanism, "detach");
    let main_pid = job.pid();
    let cgroup = job.cgroup().map(Path::to_path_buf);
    let detached = job.detach();
    // From here on this test owns the job: end it even if an assertion fails.
    let mut takeover = Takeover {
        cgroup: cgroup.clone(),
        held,
        own_child: Some(own_child),
    };
    assert_eq!(detached.pid, main_pid);
    assert_eq!(detached.cgroup, cgroup);
    let held = &takeover.held;
    assert_eq!(held.alive().len(), 2, "detach ended: {:?}", held.alive());
    // Nothing left behind by the Job goes on to stop it.
    let (_, _, main_fd) = &held.procs[0];
    assert!(
        !wait_exited(main_fd.as_fd(), Instant::now() + Duration::from_millis(300)),
        "the detached main process exited"
    );
    assert_eq!(held.alive().len(), 2, "{:?}", held.alive());
    if let Some(cgroup) = &cgroup {
        assert!(cgroup.is_dir(), "detach removed {}", cgroup.display());
        assert!(CgroupTree::populated(cgroup));
        let mut pids = CgroupTree::procs_recursive(cgroup);
        pids.sort();
        let mut expected = vec![held.pid("top") as i32, held.pid("setsid") as i32];
        expected.sort();
        assert_eq!(pids, expected, "the detached cgroup's members");
    }

    // Take it over: kill, wait until empty, clean up, reap.
    let status = takeover.end();
    match mechanism {
        // Our child was the main process, killed.
        Mechanism::Cgroup => assert_eq!(
            status.terminating_signal(),
            Some(libc::SIGKILL),
            "{status:?}"
        ),
        // Our child was the supervisor, which exits by itself once the job is empty.
        Mechanism::Pgroup => assert!(status.exit_status().is_some(), "{status:?}"),
    }
    takeover.held.assert_all_gone("after the takeover");
    if let Some(cgroup) = &cgroup {
        assert!(!cgroup.exists());
    }
    sandbox.assert_clean();
}

/// Ends a detached job, as its new owner would: kill its processes (`cgroup.kill`, or
/// through the pidfds held for them), wait until the job is empty, remove the cgroup, and
/// reap the job's process that is our child (the main process, or the supervisor, which
/// exits once the job is empty). Our unreaped child: its PID stays its own until reaped.
struct Takeover {
    cgroup: Option<PathBuf>,
    held: Held,
    own_child: Option<OwnChild>,
}

impl Takeover {
    fn end(&mut self) -> WaitStatus {
        if let Some(cgroup) = &self.cgroup {
            kill_cgroup(cgroup);
            CgroupTree::wait_empty(cgroup, DEADLINE, "the detached cgroup");
            fs::remove_dir(cgroup).unwrap_or_else(|e| panic!("rmdir {}: {e}", cgroup.display()));
        } else {
            self.held.kill_all();
        }
        let child = self.own_child.take().expect("not reaped yet");
        assert!(
            wait_exited(child.fd(), Instant::now() + DEADLINE),
            "the job's {} ({}) did not exit once the job was empty",
            child.what,
            child.pid
        );
        reap(child.pid)
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        self.held.kill_all();
        if let Some(cgroup) = &self.cgroup {
            if cgroup.exists() {
                kill_cgroup(cgroup);
                let deadline = Instant::now() + DEADLINE;
                while CgroupTree::populated(cgroup) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = fs::remove_dir(cgroup);
            }
        }
        if let Some(child) = self.own_child.take() {
            if !wait_exited(child.fd(), Instant::now() + DEADLINE) {
                let _ = rustix::process::pidfd_send_signal(child.fd(), Signal::KILL);
            }
            if let Some(raw) = Pid::from_raw(child.pid as i32) {
                let _ = rustix::process::waitpid(Some(raw), WaitOptions::empty());
            }
        }
    }
}

/// `waitpid` on a child of ours that has exited.
fn reap(pid: u32) -> WaitStatus {
    let raw = Pid::from_raw(pid as i32).expect("a positive pid");
    let (reaped, status) = rustix::process::waitpid(Some(raw), WaitOptions::empty())
        .unwrap_or_else(|e| panic!("waitpid({pid}): {e}"))
        .expect("a status");
    assert_eq!(reaped, raw);
    status
}

fn kill_cgroup(cgroup: &Path) {
    let kill = cgroup.join("cgroup.kill");
    fs::write(&kill, "1").unwrap_or_else(|e| panic!("write 1 to {}: {e}", kill.display()));
}
