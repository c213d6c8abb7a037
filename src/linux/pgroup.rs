//! The fallback where no cgroup can be written: process group + child subreaper + a
//! `/proc` walk.
//!
//! The child leads a new process group. The supervising process makes itself a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`, Linux 3.4), so every descendant that is orphaned,
//! including ones that left the group with `setpgid`/`setsid` or double-forked, is
//! re-parented to it instead of to PID 1, and stays one of its descendants.
//!
//! Finding the job's processes is a `/proc` walk (every descendant of the supervisor) plus
//! a read of the supervisor's own `task/*/children` files, which is fast enough to catch a
//! short-lived link of a fork-and-exit chain that a whole walk misses. A walk can always
//! miss a process that moves while it reads; so *emptiness* is never decided by a walk.
//! It is decided by the kernel: because of the subreaper, every live descendant has an
//! ancestor chain that ends at the supervisor, so the job is empty exactly when the
//! supervisor has no children left at all (`waitid(P_ALL, WNOHANG | WNOWAIT)` answers
//! ECHILD). Exited children found that way are reaped one by one: the main process through
//! its pidfd (keeping its status), orphans by their PID, which cannot be reused while they
//! are our unreaped zombies.
//!
//! Stopping freezes first: SIGSTOP through a pidfd to everything found, repeated until a
//! pass finds nothing new, then the ladder: polite signal, SIGCONT, grace (until empty),
//! SIGKILL to everything found, repeated until empty.
//!
//! Weaker than cgroups, and reported as such: a process that stops being a descendant
//! without being re-parented to us (a descendant that is itself a subreaper) is lost; and
//! the subreaper attribute and the emptiness test are process-wide, so the supervisor must
//! not have unrelated children (the CLI has none).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, Result};
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::procs::{self, Stat};
use crate::options::Signal;

/// Holds the process's child-subreaper attribute for one pgroup job. The first guard sets
/// it (unless the process already was a subreaper); the last one to drop clears it again,
/// so a later cgroup job's orphans go to init as usual and are not left as our zombies.
#[derive(Debug)]
pub(crate) struct Subreaper(());

/// (live guards, whether we set the attribute)
static SUBREAPER: Mutex<(usize, bool)> = Mutex::new((0, false));

impl Subreaper {
    pub(crate) fn acquire() -> Result<Subreaper> {
        let mut state = SUBREAPER.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            let already = rustix::process::child_subreaper()
                .map_err(|e| Error::sys("prctl(PR_GET_CHILD_SUBREAPER)", e))?
                .is_some();
            if !already {
                rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                    .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
            }
            state.1 = !already;
        }
        state.0 += 1;
        Ok(Subreaper(()))
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        let mut state = SUBREAPER.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 && state.1 {
            let _ = rustix::process::set_child_subreaper(None);
            state.1 = false;
        }
    }
}

/// The job's live processes as far as `/proc` shows them now: every descendant of the
/// supervisor, plus its direct children read from `task/*/children`.
pub(crate) fn members(supervisor: Pid) -> Vec<Stat> {
    let mut out: Vec<Stat> = procs::descendants(supervisor);
    let known: HashSet<Pid> = out.iter().map(|s| s.pid).collect();
    out.extend(
        procs::children(supervisor)
            .into_iter()
            .filter(|p| !known.contains(p))
            .filter_map(procs::stat),
    );
    out.retain(Stat::alive);
    out
}

/// The state of the supervisor's children.
enum Children {
    /// None at all: the job is empty.
    None,
    /// Some, none of them exited and unreaped.
    Running,
    /// This one has exited and waits to be reaped.
    Exited(Pid),
}

/// Looks at the supervisor's children without reaping any.
fn peek_children() -> io::Result<Children> {
    // SAFETY: `info` is plain data the kernel fills in; waitid with WNOWAIT reaps nothing.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
        loop {
            if libc::waitid(libc::P_ALL, 0, &mut info, flags) == 0 {
                return Ok(match Pid::from_raw(info.si_pid()) {
                    Some(pid) => Children::Exited(pid),
                    None => Children::Running,
                });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(Children::None),
                _ => return Err(err),
            }
        }
    }
}

/// Reaps our exited child `pid`. Safe with a numeric PID: an unreaped child's PID cannot be
/// reused, and only we can reap it.
fn reap_child(pid: Pid) {
    // SAFETY: plain data out-parameter; P_PID of our own zombie child.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::__WALL;
        while libc::waitid(libc::P_PID, pid.get() as libc::id_t, &mut info, flags) != 0 {
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

/// What [`settle`] found.
pub(crate) struct Settled {
    /// No child is left: the job is empty.
    pub(crate) empty: bool,
    /// Orphans reaped by this call.
    pub(crate) reaped: usize,
}

/// Reaps every exited child (the main process through its pidfd, keeping its status in
/// `main_exit`) and says whether any child is left. This is the pgroup mechanism's only
/// test of emptiness.
pub(crate) fn settle(
    main: Pid,
    main_fd: BorrowedFd<'_>,
    main_exit: &mut Option<ExitKind>,
) -> Result<Settled> {
    let mut reaped = 0;
    loop {
        match peek_children().map_err(|e| Error::sys("waitid(P_ALL, WNOWAIT)", e))? {
            Children::None => {
                return Ok(Settled {
                    empty: true,
                    reaped,
                })
            }
            Children::Running => {
                return Ok(Settled {
                    empty: false,
                    reaped,
                })
            }
            Children::Exited(pid) if pid == main => {
                let status =
                    pidfd::reap(main_fd, false).map_err(|e| Error::sys("waitid(P_PIDFD)", e))?;
                if status.is_some() {
                    *main_exit = status;
                }
            }
            Children::Exited(pid) => {
                reap_child(pid);
                reaped += 1;
            }
        }
    }
}

/// A process stopped by [`freeze`]: what identifies it, and (for the first
/// [`Frozen::MAX_FDS`] of them) the pidfd that reaches it without another look at `/proc`.
pub(crate) struct Held {
    stat: Stat,
    fd: Option<OwnedFd>,
}

/// What [`freeze`] stopped, keyed by PID.
pub(crate) struct Frozen(HashMap<Pid, Held>);

impl Frozen {
    /// Pidfds kept open at most; beyond that, processes are re-opened and re-checked by
    /// their start time, so the size of a tree is not limited by `RLIMIT_NOFILE`.
    const MAX_FDS: usize = 512;

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the freeze held this very process (same PID and start time).
    pub(crate) fn holds(&self, seen: &Stat) -> bool {
        self.0
            .get(&seen.pid)
            .is_some_and(|h| h.stat.starttime == seen.starttime)
    }

    /// Sends `sig` to every held process (still the same process) for which `filter` holds.
    /// Returns the PIDs reached.
    pub(crate) fn signal_all(&self, sig: Signal, filter: &dyn Fn(Pid) -> bool) -> HashSet<Pid> {
        let mut reached = HashSet::new();
        for (pid, held) in &self.0 {
            if !filter(*pid) {
                continue;
            }
            let sent = match &held.fd {
                // The pidfd pins the very process we stopped.
                Some(fd) => pidfd::send_signal(fd.as_fd(), sig).is_ok(),
                None => procs::open_verified(&held.stat)
                    .is_some_and(|fd| pidfd::send_signal(fd.as_fd(), sig).is_ok()),
            };
            if sent {
                reached.insert(*pid);
            }
        }
        reached
    }
}

/// SIGSTOPs every process found until a pass finds nothing new, so nothing forks behind
/// our back while the ladder runs.
pub(crate) fn freeze(supervisor: Pid) -> Frozen {
    let mut held: HashMap<Pid, Held> = HashMap::new();
    let settle_by = Instant::now() + Duration::from_secs(1);
    let mut quiet = 0;
    // Bounded: a fork storm converges because every stopped process stops forking.
    for _ in 0..1000 {
        let mut new = 0;
        for s in members(supervisor) {
            if held
                .get(&s.pid)
                .is_some_and(|h| h.stat.starttime == s.starttime)
            {
                continue;
            }
            if let Some(fd) = procs::open_verified(&s) {
                let _ = pidfd::send_signal(fd.as_fd(), Signal::STOP);
                let fd = (held.len() < Frozen::MAX_FDS).then_some(fd);
                held.insert(s.pid, Held { stat: s, fd });
                new += 1;
            }
        }
        if new > 0 {
            quiet = 0;
            continue;
        }
        quiet += 1;
        // A SIGSTOP takes effect when its target next returns to user space: one caught in
        // the middle of a fork finishes it first, and its child can appear after this pass
        // read /proc. And one walk can miss a process being re-parented to the supervisor
        // while it reads (its old parent gone from /proc, its new parent not yet in its
        // stat). So the set is complete only when every held process shows as stopped (or
        // gone) and two passes in a row found nothing new.
        let all_stopped = held.values().all(|h| stopped_or_gone(&h.stat));
        if (all_stopped && quiet >= 2) || Instant::now() >= settle_by {
            break;
        }
        std::thread::yield_now();
    }
    Frozen(held)
}

/// Whether the process `seen` describes is in a stopped state, or no longer exists.
fn stopped_or_gone(seen: &Stat) -> bool {
    match procs::stat(seen.pid) {
        Some(now) if now.starttime == seen.starttime => {
            matches!(now.state, 'T' | 't') || !now.alive()
        }
        _ => true,
    }
}

/// SIGKILLs every process found, again and again, until `settle` reports the job empty or
/// `deadline` passes. `killed` holds the processes the caller already SIGKILLed. Returns how
/// many were signalled in all, and the processes left if the deadline passed (stuck in the
/// kernel, or lost).
pub(crate) fn kill_all(
    supervisor: Pid,
    deadline: Instant,
    mut killed: HashSet<Pid>,
    settle: &mut dyn FnMut() -> Result<bool>,
) -> Result<(usize, Vec<Stat>)> {
    loop {
        // Direct children first: one small read, then a pidfd each. They are our unreaped
        // children, so their PIDs cannot have been reused.
        for pid in procs::children(supervisor) {
            if let Ok(fd) = pidfd::open(pid) {
                if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                    killed.insert(pid);
                }
            }
        }
        for s in members(supervisor) {
            if let Some(fd) = procs::open_verified(&s) {
                if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                    killed.insert(s.pid);
                }
            }
        }
        if settle()? {
            return Ok((killed.len(), Vec::new()));
        }
        if Instant::now() >= deadline {
            return Ok((killed.len(), members(supervisor)));
        }
        // Wait for a killed child to exit (an event), briefly bounded: deeper descendants
        // are not our children and give no event.
        wait_any_child_exit(
            supervisor,
            Some(Instant::now() + Duration::from_millis(20)),
            &[],
        )?;
    }
}

/// Waits until one of the supervisor's live direct children exits, `deadline` passes, or
/// one of `interrupt` is readable. Returns whether a descriptor became ready.
pub(crate) fn wait_any_child_exit(
    supervisor: Pid,
    deadline: Option<Instant>,
    interrupt: &[BorrowedFd<'_>],
) -> Result<bool> {
    const MAX_POLLED: usize = 256;
    let mut kids: Vec<Pid> = Vec::new();
    let mut exited = false;
    for pid in procs::children(supervisor) {
        match procs::stat(pid) {
            Some(s) if s.alive() => kids.push(pid),
            // An exited child waiting to be reaped is itself the event (the caller's settle
            // reaps it): do not wait long.
            Some(_) => exited = true,
            None => {}
        }
    }
    // Our unreaped children: their PIDs cannot have been reused.
    let fds: Vec<OwnedFd> = kids
        .iter()
        .take(MAX_POLLED)
        .filter_map(|p| pidfd::open(*p).ok())
        .collect();
    let mut timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if exited {
        // 1 ms, not 0: should a zombie not be reapable by us (a tracer holds it), the caller
        // loops at a bounded rate until its deadline rather than spinning.
        timeout = Some(Duration::from_millis(1));
    } else if kids.len() > MAX_POLLED || fds.is_empty() {
        // More children than we poll, or descendants with no live child of ours above them
        // at this instant (a chain in motion): look again soon.
        let cap = Duration::from_millis(50);
        timeout = Some(timeout.map_or(cap, |t| t.min(cap)));
    }
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
    for i in interrupt {
        pfds.push(PollFd::from_borrowed_fd(*i, PollFlags::IN));
    }
    crate::linux::poll(&mut pfds, timeout)?;
    Ok(pfds.iter().any(|p| !p.revents().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subreaper_attribute_lasts_as_long_as_the_guards() {
        let was = rustix::process::child_subreaper().unwrap();
        assert!(was.is_none(), "the unit test binary starts as no subreaper");
        let a = Subreaper::acquire().unwrap();
        let b = Subreaper::acquire().unwrap();
        assert!(rustix::process::child_subreaper().unwrap().is_some());
        drop(a);
        assert!(
            rustix::process::child_subreaper().unwrap().is_some(),
            "b still holds it"
        );
        drop(b);
        assert!(
            rustix::process::child_subreaper().unwrap().is_none(),
            "released with the last guard"
        );
    }
}
