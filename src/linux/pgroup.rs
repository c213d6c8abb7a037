//! The fallback where no cgroup can be written: process group + child subreaper + a
//! `/proc` walk.
//!
//! The child leads a new process group. The supervising process makes itself a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`, Linux 3.4), so every descendant that is orphaned,
//! including ones that left the group with `setpgid`/`setsid` or double-forked, is
//! re-parented to it instead of to PID 1, and stays findable as one of its descendants.
//! The job is therefore "every descendant of the supervisor", found by walking `/proc`.
//!
//! Stopping freezes first: every descendant gets SIGSTOP through a pidfd, the walk repeats
//! until it finds nothing new (so nothing can fork behind our back), then the same ladder as
//! cgroups runs: polite signal, SIGCONT, grace, SIGKILL to everything still found, until
//! nothing is found. Direct children are reaped through their pidfds (`waitid(P_PIDFD)`);
//! there is no `waitpid(-1)`.
//!
//! Weaker than cgroups, and reported as such: a process that stops being a descendant
//! without being re-parented to us (a descendant that is itself a subreaper, or one moved by
//! ptrace games) is lost; and the subreaper attribute is process-wide, so the supervisor
//! must not have unrelated children (the CLI has none).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, Result};
use crate::linux::pidfd::{self, Pid};
use crate::linux::procs::{self, Stat};
use crate::options::Signal;

/// Makes this process a child subreaper (process-wide; idempotent).
pub(crate) fn become_subreaper() -> Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))
}

/// The job's processes: every descendant of the supervisor.
pub(crate) fn members(supervisor: Pid) -> Vec<Stat> {
    procs::descendants(supervisor)
        .into_iter()
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .collect()
}

/// Reaps every direct child of ours that has exited, except `main` (its status is taken by
/// the job itself). Returns how many were reaped.
pub(crate) fn reap_orphans(supervisor: Pid, main: Pid) -> usize {
    let mut reaped = 0;
    for s in procs::descendants(supervisor) {
        if s.ppid != supervisor.get() || s.pid == main || s.state != 'Z' {
            continue;
        }
        if let Some(fd) = procs::open_verified(&s) {
            if matches!(pidfd::reap(fd.as_fd(), false), Ok(Some(_))) {
                reaped += 1;
            }
        }
    }
    reaped
}

/// SIGSTOPs every descendant until a walk finds no new one. Returns what was stopped,
/// keyed by PID (with the start time that identifies each). No descriptors are held, so the
/// size of the tree is not limited by `RLIMIT_NOFILE`.
pub(crate) fn freeze(supervisor: Pid) -> HashMap<Pid, Stat> {
    let mut held: HashMap<Pid, Stat> = HashMap::new();
    // Bounded: a fork storm converges because every stopped process stops forking.
    for _ in 0..1000 {
        let mut new = 0;
        for s in members(supervisor) {
            if held.get(&s.pid).is_some_and(|h| h.starttime == s.starttime) {
                continue;
            }
            if let Some(fd) = procs::open_verified(&s) {
                let _ = pidfd::send_signal(fd.as_fd(), Signal::STOP);
                held.insert(s.pid, s);
                new += 1;
            }
        }
        if new == 0 {
            break;
        }
    }
    held
}

/// Sends `sig` to every held process (still the same process) for which `filter` holds.
/// Returns the PIDs reached.
pub(crate) fn signal_all(
    held: &HashMap<Pid, Stat>,
    sig: Signal,
    filter: &dyn Fn(Pid) -> bool,
) -> HashSet<Pid> {
    held.values()
        .filter(|s| filter(s.pid))
        .filter_map(|s| procs::open_verified(s).map(|fd| (s.pid, fd)))
        .filter(|(_, fd)| pidfd::send_signal(fd.as_fd(), sig).is_ok())
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGKILLs every descendant until none is found; reaps direct children as they die.
/// `killed` holds the processes already SIGKILLed by the caller. Returns how many were
/// signalled in all, how many orphans were reaped, and the survivors if
/// `deadline` passes (processes stuck in the kernel).
pub(crate) fn kill_all(
    supervisor: Pid,
    main: Pid,
    deadline: Instant,
    mut killed: HashSet<Pid>,
) -> (usize, usize, Vec<Stat>) {
    let mut reaped = 0;
    loop {
        let live = members(supervisor);
        for s in &live {
            if let Some(fd) = procs::open_verified(s) {
                if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                    killed.insert(s.pid);
                }
            }
        }
        reaped += reap_orphans(supervisor, main);
        if live.is_empty() {
            return (killed.len(), reaped, Vec::new());
        }
        if Instant::now() >= deadline {
            return (killed.len(), reaped, members(supervisor));
        }
        // Wait for one of the killed direct children to exit (an event), bounded because
        // deeper ones are not our children and give no event.
        let _ = wait_any_child_exit(
            supervisor,
            Some(Instant::now() + Duration::from_millis(20)),
            None,
        );
    }
}

/// Waits until one of the supervisor's direct children exits, `deadline` passes, or
/// `interrupt` is readable.
pub(crate) fn wait_any_child_exit(
    supervisor: Pid,
    deadline: Option<Instant>,
    interrupt: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<bool> {
    const MAX_POLLED: usize = 256;
    let kids: Vec<Stat> = procs::descendants(supervisor)
        .into_iter()
        .filter(|s| s.ppid == supervisor.get() && s.state != 'Z')
        .collect();
    let mut fds: Vec<OwnedFd> = kids
        .iter()
        .take(MAX_POLLED)
        .filter_map(procs::open_verified)
        .collect();
    let mut seen: HashSet<i32> = HashSet::new();
    fds.retain(|_| true);
    seen.extend(kids.iter().map(|k| k.pid.get()));
    let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if kids.len() > MAX_POLLED || (fds.is_empty() && !members(supervisor).is_empty()) {
        // More children than we poll, or descendants whose parent is still alive but not
        // ours: re-walk soon instead of sleeping forever.
        let cap = Duration::from_millis(50);
        timeout = Some(timeout.map_or(cap, |t| t.min(cap)));
    }
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    if let Some(i) = interrupt {
        pfds.push(PollFd::from_borrowed_fd(i, PollFlags::IN));
    }
    crate::linux::poll(&mut pfds, timeout)?;
    Ok(pfds.iter().any(|p| !p.revents().is_empty()))
}
