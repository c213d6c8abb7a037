//! How a job's processes are held: the mechanism chosen at spawn, as one value whose methods
//! are the mechanism's part of every step (members, signals, emptiness, what to wait on,
//! the kill passes, cleanup, detach). The job and its state machine (`machine.rs`) ask;
//! they never match on the mechanism.
//!
//! The job's end is a state of its own ([`Backend::Ended`]): cleaned up or detached, the job
//! has nothing left to act on, and every method answers accordingly (no members, nothing
//! signalled, empty).

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::event::PollFlags;

use super::machine::Wants;
use crate::error::Result;
use crate::ladder::{Kill, KILL_WAIT};
use crate::linux::cgroup::{KillMethod, Leaf};
use crate::linux::pidfd::{self, ExitKind, Pid};
use crate::linux::supervise::{Supervised, SupervisorEvent};
use crate::linux::watchdog::Watch;
use crate::linux::{pgroup, procs};
use crate::options::{Options, Signal};
use crate::report::{Cleanup, OnSupervisorDeath, Uncovered, Usage};

/// The mechanism a job runs under, with what it needs to find, signal and wait for the
/// job's processes.
pub(super) enum Backend {
    /// A cgroup v2 leaf: the kernel knows the members.
    Cgroup {
        leaf: Leaf,
        /// The main process's pidfd (our unreaped child).
        main: OwnedFd,
        /// The leaf's registration with the watchdog (dropped, so forgotten, once the job
        /// is over or detached); `None` where no watchdog covers the job.
        watch: Option<Watch>,
    },
    /// pgroup, in-process: this process is the job's subreaper
    /// ([`crate::Supervisor::InProcess`]); its descendants are the job.
    InProcess {
        /// This process.
        root: Pid,
        /// The main process's pidfd (our unreaped child).
        main: OwnedFd,
        /// Orphans re-parented to us and reaped.
        reaped: usize,
        /// Keeps the process a subreaper while the job lasts.
        _subreaper: pgroup::Subreaper,
    },
    /// pgroup under a `corral __supervise` process of its own (the main process's parent).
    Supervised(Supervision),
    /// The job is over (cleaned up) or detached: nothing is left to act on.
    Ended,
}

/// A supervised job: the supervisor, and what it has said.
pub(super) struct Supervision {
    sup: Supervised,
    /// The main process was the supervisor's last child when it exited.
    last_child: bool,
    /// The supervisor said it is done (job empty, orphans counted).
    done: bool,
    /// Orphans the supervisor reaped (its count).
    reaped: usize,
    /// The supervisor has exited and been reaped.
    exit: Option<ExitKind>,
}

/// What a stop keeps for the mechanism between the ladder's steps.
#[derive(Default)]
pub(super) struct Kept {
    /// The stop began with a signal the terminal delivers to its whole process group.
    pub(super) group_delivered: bool,
    /// pgroup: the processes stopped with SIGSTOP before the polite signal.
    held: Option<pgroup::Frozen>,
    /// pgroup: members the freeze did not hold that got the polite signal since (by PID
    /// and start time).
    late: HashSet<(Pid, u64)>,
    /// pgroup: the processes the kill stage sent SIGKILL to.
    pub(super) killed: HashSet<Pid>,
    /// cgroup: how the kill stage kills.
    pub(super) method: Option<KillMethod>,
}

impl Kept {
    /// For a stop that began with a signal the terminal delivered to corral's whole
    /// process group (`group_delivered`), or not.
    pub(super) fn new(group_delivered: bool) -> Kept {
        Kept {
            group_delivered,
            ..Kept::default()
        }
    }
}

impl Backend {
    /// A job under `sup`, which has said nothing yet.
    pub(super) fn supervised(sup: Supervised) -> Backend {
        Backend::Supervised(Supervision {
            sup,
            last_child: false,
            done: false,
            reaped: 0,
            exit: None,
        })
    }

    /// Whether the job is over or detached.
    pub(super) fn is_ended(&self) -> bool {
        matches!(self, Backend::Ended)
    }

    /// Whether a supervisor process reports the main process's exit (and may die before
    /// it does).
    pub(super) fn is_supervised(&self) -> bool {
        matches!(self, Backend::Supervised(_))
    }

    /// The job's cgroup (cgroup mechanism, until the job is over).
    pub(super) fn cgroup(&self) -> Option<&Path> {
        match self {
            Backend::Cgroup { leaf, .. } => Some(&leaf.path),
            _ => None,
        }
    }

    /// The main process's pidfd; `None` under a supervisor (the supervisor is its parent)
    /// and once the job has ended.
    pub(super) fn main_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Backend::Cgroup { main, .. } | Backend::InProcess { main, .. } => Some(main.as_fd()),
            Backend::Supervised(_) | Backend::Ended => None,
        }
    }

    /// The process whose descendants make up a pgroup job (ourselves in-process, or the
    /// supervisor); `None` for a cgroup job (the kernel knows its members).
    pub(super) fn walk_root(&self) -> Option<Pid> {
        match self {
            Backend::InProcess { root, .. } => Some(*root),
            Backend::Supervised(s) => Some(s.sup.supervisor),
            Backend::Cgroup { .. } | Backend::Ended => None,
        }
    }

    /// The supervisor said the main process was its last child when it exited: its `done`
    /// is on its way, and a walk of `/proc` would find nothing.
    pub(super) fn main_was_last_child(&self) -> bool {
        matches!(self, Backend::Supervised(s) if s.last_child)
    }

    /// The PIDs of the job's live processes right now.
    pub(super) fn members(&self) -> Result<Vec<Pid>> {
        match (self, self.walk_root()) {
            (Backend::Cgroup { leaf, .. }, _) => leaf.members(),
            (_, Some(root)) => Ok(pgroup::members(root).into_iter().map(|s| s.pid).collect()),
            (_, None) => Ok(Vec::new()),
        }
    }

    /// The job's processes with their `/proc` facts (a cgroup's members that cannot be
    /// read are left out).
    pub(super) fn stats(&self) -> Vec<procs::Stat> {
        match (self, self.walk_root()) {
            (Backend::Cgroup { leaf, .. }, _) => leaf
                .members()
                .unwrap_or_default()
                .into_iter()
                .filter_map(procs::stat)
                .collect(),
            (_, Some(root)) => pgroup::members(root),
            (_, None) => Vec::new(),
        }
    }

    /// Sends `sig` to every process of the job now, through pidfds. How many it reached.
    pub(super) fn signal(&self, sig: Signal) -> Result<usize> {
        match (self, self.walk_root()) {
            (Backend::Cgroup { leaf, .. }, _) => {
                let mut n = 0;
                leaf.for_each_member(&mut |_, fd| {
                    if pidfd::send_signal(fd, sig).is_ok() {
                        n += 1;
                    }
                })?;
                Ok(n)
            }
            (_, Some(root)) => Ok(signal_walk(root, sig)),
            (_, None) => Ok(0),
        }
    }

    /// What happens to the job if this process dies (the report's `on_supervisor_death`),
    /// given the leaf's registration with the watchdog (`None`: not asked for); a cgroup
    /// job keeps the registration while it lasts.
    pub(super) fn cover(
        &mut self,
        registered: Option<std::result::Result<Watch, Uncovered>>,
        opts: &Options,
    ) -> OnSupervisorDeath {
        match self {
            Backend::Cgroup { watch, .. } => match registered {
                Some(Ok(w)) => {
                    let covered = OnSupervisorDeath::Watchdog {
                        pid: w.watchdog_pid(),
                        pid_namespace: opts.pid_namespace,
                    };
                    *watch = Some(w);
                    covered
                }
                Some(Err(_)) if opts.pid_namespace => OnSupervisorDeath::PidNamespace,
                Some(Err(why)) => OnSupervisorDeath::NotCovered(why),
                None => match &opts.helper {
                    Some(h) => OnSupervisorDeath::HelperGuardian { pid: h.guardian },
                    None => OnSupervisorDeath::NotCovered(Uncovered::NoWatchdog),
                },
            },
            Backend::Supervised(_) => OnSupervisorDeath::SupervisorProcess,
            Backend::InProcess { .. } if opts.pid_namespace => {
                OnSupervisorDeath::PidNamespaceParentDeathSignal
            }
            Backend::InProcess { .. } | Backend::Ended => {
                OnSupervisorDeath::NotCovered(Uncovered::InProcessPgroup)
            }
        }
    }

    /// Notices the main process's exit without blocking: through its pidfd, or from the
    /// supervisor's messages. Keeps its status in `main_exit`.
    pub(super) fn poll_main(
        &mut self,
        main_pid: Pid,
        main_exit: &mut Option<ExitKind>,
    ) -> Result<()> {
        match self {
            Backend::Cgroup { main, .. } | Backend::InProcess { main, .. } => {
                *main_exit = pidfd::reap(main.as_fd(), false)
                    .map_err(|e| crate::Error::process("waitid(P_PIDFD)", main_pid, e))?;
                Ok(())
            }
            Backend::Supervised(s) => s.pump(main_exit),
            Backend::Ended => Ok(()),
        }
    }

    /// Whether no process of the job is left. In-process: reaps exited children on the way
    /// (the kernel's answer is the test), the main process into `main_exit`. Supervised:
    /// the supervisor exits exactly when it has no child left.
    pub(super) fn is_empty(
        &mut self,
        main_pid: Pid,
        main_exit: &mut Option<ExitKind>,
    ) -> Result<bool> {
        match self {
            Backend::Cgroup { leaf, .. } => Ok(!leaf.populated()?),
            Backend::InProcess { main, reaped, .. } => {
                let settled = pgroup::settle(main_pid, main.as_fd(), main_exit)?;
                *reaped += settled.reaped;
                Ok(settled.empty)
            }
            Backend::Supervised(s) => {
                s.pump(main_exit)?;
                if s.exit.is_none() {
                    s.exit = s.sup.try_reap()?;
                    // Messages sent just before it exited.
                    s.pump(main_exit)?;
                }
                Ok(s.exit.is_some())
            }
            Backend::Ended => Ok(true),
        }
    }

    /// What to wait on while the main process runs: its pidfd, or the supervisor's socket
    /// and pidfd.
    pub(super) fn wants_main(&self, deadline: Option<Instant>) -> Wants {
        let fds = match self {
            Backend::Supervised(s) => s.fds(),
            _ => self
                .main_fd()
                .map(|fd| vec![(fd.as_raw_fd(), PollFlags::IN)])
                .unwrap_or_default(),
        };
        Wants {
            fds,
            children_of: None,
            deadline,
        }
    }

    /// What to wait on for the job to become empty: `cgroup.events` (POLLPRI), the
    /// supervisor's socket and pidfd, or (in-process) a child's exit, which no descriptor
    /// signals.
    pub(super) fn wants_empty(&self, deadline: Option<Instant>) -> Wants {
        let (fds, children_of) = match self {
            Backend::Cgroup { leaf, .. } => {
                (vec![(leaf.events_fd().as_raw_fd(), PollFlags::PRI)], None)
            }
            Backend::InProcess { root, .. } => (Vec::new(), Some(*root)),
            Backend::Supervised(s) => (s.fds(), None),
            Backend::Ended => (Vec::new(), None),
        };
        Wants {
            fds,
            children_of,
            deadline,
        }
    }

    /// The ladder's hold: pgroup stops everything found with SIGSTOP, until a walk finds
    /// nothing new, and says how many; a cgroup needs no hold (`None`).
    pub(super) fn hold(&self, kept: &mut Kept) -> Option<usize> {
        let held = pgroup::freeze(self.walk_root()?);
        let n = held.len();
        kept.held = Some(held);
        Some(n)
    }

    /// `sig`, then SIGCONT: to every member `filter` passes (cgroup), or to what the hold
    /// stopped (pgroup). How many got each, and whether the cgroup was frozen for members
    /// forked meanwhile.
    pub(super) fn signal_then_continue(
        &self,
        kept: &Kept,
        sig: Signal,
        filter: &dyn Fn(Pid) -> bool,
    ) -> Result<(usize, usize, bool)> {
        match self {
            Backend::Cgroup { leaf, .. } => leaf.signal_then_continue(sig, filter),
            Backend::InProcess { .. } | Backend::Supervised(_) => {
                let h = kept
                    .held
                    .as_ref()
                    .expect("the ladder holds a pgroup job before it signals it");
                Ok((
                    h.signal_all(sig, filter).len(),
                    h.signal_all(Signal::CONT, &|_| true).len(),
                    false,
                ))
            }
            Backend::Ended => Ok((0, 0, false)),
        }
    }

    /// pgroup: a member the hold did not stop (a walk can miss a process being re-parented
    /// while it reads) gets the polite signal too. How many did now.
    pub(super) fn signal_late(&self, kept: &mut Kept, polite: Signal) -> usize {
        let Some(root) = self.walk_root() else {
            return 0;
        };
        let before = kept.late.len();
        for st in pgroup::members(root) {
            if kept.held.as_ref().is_some_and(|h| h.holds(&st))
                || kept.late.contains(&(st.pid, st.starttime))
            {
                continue;
            }
            if let Some(fd) = procs::open_verified(&st) {
                let _ = pidfd::send_signal(fd.as_fd(), polite);
                let _ = pidfd::send_signal(fd.as_fd(), Signal::CONT);
                kept.late.insert((st.pid, st.starttime));
            }
        }
        kept.late.len() - before
    }

    /// The kill stage's first pass: `cgroup.kill` (or the freezer loop; the method goes in
    /// `kept`), or SIGKILL to what the hold stopped and to every process a walk finds
    /// (recorded in `kept.killed`).
    pub(super) fn kill(&self, kept: &mut Kept, no_cgroup_kill: bool) -> Result<Kill> {
        let (root, own_children) = match self {
            Backend::Cgroup { leaf, .. } => {
                let present = leaf.members()?.len();
                let deadline = Instant::now() + KILL_WAIT;
                kept.method = Some(leaf.kill_start(no_cgroup_kill, deadline)?);
                return Ok(Kill {
                    counted: Some(present),
                    live: Some(present),
                });
            }
            Backend::InProcess { root, .. } => (*root, true),
            Backend::Supervised(s) => (s.sup.supervisor, false),
            Backend::Ended => {
                return Ok(Kill {
                    counted: Some(0),
                    live: Some(0),
                })
            }
        };
        if let Some(h) = &kept.held {
            kept.killed = h.signal_all(Signal::KILL, &|_| true);
        }
        kill_pass(root, own_children, &mut kept.killed);
        // The progress checks compare with the processes the first pass signalled.
        Ok(Kill {
            counted: None,
            live: Some(kept.killed.len()),
        })
    }

    /// A later kill pass: SIGKILL through pidfds to every member of the cgroup
    /// (`cgroup.kill` misses a process whose main thread exited while other threads run; a
    /// process-directed SIGKILL does not), or another walk of the tree.
    pub(super) fn kill_again(&self, kept: &mut Kept) -> Result<()> {
        match self {
            Backend::Cgroup { leaf, .. } => {
                // After `cgroup.kill`, pidfds finish what it left; after the freezer's
                // pass (no `cgroup.kill`), this is the same method again.
                if kept.method == Some(KillMethod::CgroupKill) {
                    kept.method = Some(KillMethod::CgroupKillThenSignal);
                }
                leaf.for_each_member(&mut |_, fd| {
                    let _ = pidfd::send_signal(fd, Signal::KILL);
                })?;
            }
            Backend::InProcess { root, .. } => kill_pass(*root, true, &mut kept.killed),
            Backend::Supervised(s) => kill_pass(s.sup.supervisor, false, &mut kept.killed),
            Backend::Ended => {}
        }
        Ok(())
    }

    /// Cleans up once the job is empty, and ends: a cgroup's usage is read (final by now)
    /// and its leaf removed, and the watchdog forgets it; in-process, the last orphans are
    /// reaped; under a supervisor, its count is taken. Returns the cgroup's path and usage;
    /// what was done (or failed) goes in `cleanup`.
    pub(super) fn end(
        &mut self,
        main_pid: Pid,
        main_exit: &mut Option<ExitKind>,
        cleanup: &mut Cleanup,
    ) -> (Option<PathBuf>, Option<Usage>) {
        match std::mem::replace(self, Backend::Ended) {
            Backend::Cgroup { leaf, main, watch } => {
                let cgroup = Some(leaf.path.clone());
                let usage = Some(leaf.usage());
                match leaf.remove() {
                    Ok(()) => cleanup.cgroup_removed = Some(true),
                    Err(e) => {
                        cleanup.cgroup_removed = Some(false);
                        cleanup.error = Some(crate::error::error_chain(&e));
                    }
                }
                // The job is empty: nothing left for the watchdog to do.
                drop(watch);
                drop(main);
                (cgroup, usage)
            }
            Backend::InProcess { main, reaped, .. } => {
                let mut reaped = reaped;
                match pgroup::settle(main_pid, main.as_fd(), main_exit) {
                    Ok(settled) => reaped += settled.reaped,
                    Err(e) => cleanup.error = Some(crate::error::error_chain(&e)),
                }
                cleanup.reaped = Some(reaped);
                (None, None)
            }
            Backend::Supervised(s) => {
                let Supervision {
                    sup,
                    done,
                    reaped,
                    exit,
                    ..
                } = s;
                drop(sup);
                cleanup.reaped = Some(reaped);
                if !done {
                    cleanup.error = Some(format!(
                        "the supervisor exited ({}) before the job was empty; processes of \
                         the job may have escaped",
                        match exit {
                            Some(ExitKind::Code(c)) => format!("status {c}"),
                            Some(ExitKind::Signal(s)) => format!("signal {s}"),
                            None => "unknown status".into(),
                        }
                    ));
                }
                (None, None)
            }
            Backend::Ended => (None, None),
        }
    }

    /// Gives the job up ([`super::Job::detach`]), and ends: a cgroup's leaf stays (its path
    /// is returned) and the watchdog forgets it; a supervisor is told to let the job be.
    pub(super) fn detach(&mut self) -> Option<PathBuf> {
        match std::mem::replace(self, Backend::Ended) {
            Backend::Cgroup { leaf, main, watch } => {
                let path = leaf.forget();
                // A detached job is no longer ours to stop, not even when we die.
                drop(watch);
                drop(main);
                Some(path)
            }
            Backend::Supervised(s) => {
                let _ = s.sup.detach();
                None
            }
            Backend::InProcess { .. } | Backend::Ended => None,
        }
    }
}

impl Supervision {
    /// Takes the supervisor's pending messages.
    fn pump(&mut self, main_exit: &mut Option<ExitKind>) -> Result<()> {
        for event in self.sup.read_events()? {
            match event {
                SupervisorEvent::MainExited(kind) => *main_exit = Some(kind),
                SupervisorEvent::LastChild => self.last_child = true,
                SupervisorEvent::Done { reaped } => {
                    self.reaped = reaped;
                    self.done = true;
                }
            }
        }
        Ok(())
    }

    /// The supervisor's control socket and pidfd, readable.
    fn fds(&self) -> Vec<(RawFd, PollFlags)> {
        vec![
            (self.sup.control_fd().as_raw_fd(), PollFlags::IN),
            (self.sup.supervisor_fd.as_raw_fd(), PollFlags::IN),
        ]
    }
}

/// Sends `sig` to every descendant of `root` (verified through pidfds).
fn signal_walk(root: Pid, sig: Signal) -> usize {
    pgroup::members(root)
        .iter()
        .filter_map(procs::open_verified)
        .filter(|fd| pidfd::send_signal(fd.as_fd(), sig).is_ok())
        .count()
}

/// SIGKILL to every process found under `root`: its direct children first (one small read,
/// then a pidfd each), then a full walk. `own_children`: `root` is this process, so its
/// children are unreaped children of ours whose PIDs cannot have been reused; otherwise each
/// is checked by its start time.
fn kill_pass(root: Pid, own_children: bool, killed: &mut HashSet<Pid>) {
    for pid in procs::children(root) {
        let fd = if own_children {
            pidfd::open(pid).ok()
        } else {
            procs::stat(pid).and_then(|s| procs::open_verified(&s))
        };
        if let Some(fd) = fd {
            if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    for s in pgroup::members(root) {
        if let Some(fd) = procs::open_verified(&s) {
            if pidfd::send_signal(fd.as_fd(), Signal::KILL).is_ok() {
                killed.insert(s.pid);
            }
        }
    }
}
