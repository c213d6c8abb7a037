//! Reading `/proc`: process facts for reports, and the descendant walk of the pgroup
//! mechanism.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

use crate::linux::pidfd::{self, Pid};

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) pid: Pid,
    pub(crate) ppid: i32,
    pub(crate) pgid: i32,
    pub(crate) sid: i32,
    pub(crate) starttime: u64,
    pub(crate) state: char,
    /// Live threads, plus one for an unreaped leader.
    pub(crate) threads: i64,
    /// In `do_exit` (`PF_EXITING`): it runs no more code of its own, and is gone in moments.
    pub(crate) exiting: bool,
}

impl Stat {
    /// False for a process that has fully exited (a zombie with no thread left). A zombie
    /// *leader* whose other threads still run is alive: it shows `Z`, but it runs, holds
    /// descriptors and can be signalled.
    pub(crate) fn alive(&self) -> bool {
        !(matches!(self.state, 'Z' | 'X') && self.threads <= 1)
    }
}

/// `PF_EXITING` of `/proc/<pid>/stat`'s flags (include/linux/sched.h).
const PF_EXITING: u32 = 0x0000_0004;

fn from_procfs(pid: Pid, s: &procfs::process::Stat) -> Stat {
    Stat {
        pid,
        ppid: s.ppid,
        pgid: s.pgrp,
        sid: s.session,
        starttime: s.starttime,
        state: s.state,
        threads: s.num_threads,
        exiting: s.flags & PF_EXITING != 0,
    }
}

pub(crate) fn stat(pid: Pid) -> Option<Stat> {
    let p = procfs::process::Process::new(pid.get()).ok()?;
    let s = p.stat().ok()?;
    Some(from_procfs(pid, &s))
}

/// The command line, NUL-separated arguments joined with spaces (`[comm]` for kernel-ish
/// processes with an empty one).
pub(crate) fn cmdline(pid: Pid) -> String {
    let p = match procfs::process::Process::new(pid.get()) {
        Ok(p) => p,
        Err(_) => return String::new(),
    };
    match p.cmdline() {
        Ok(args) if !args.is_empty() => args.join(" "),
        _ => p
            .stat()
            .map(|s| format!("[{}]", s.comm))
            .unwrap_or_default(),
    }
}

/// Every process on the system whose chain of parents reaches `root` (not `root` itself).
pub(crate) fn descendants(root: Pid) -> Vec<Stat> {
    let mut by_parent: HashMap<i32, Vec<Stat>> = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(s) = p.stat() {
                if let Some(pid) = Pid::from_raw(s.pid) {
                    by_parent
                        .entry(s.ppid)
                        .or_default()
                        .push(from_procfs(pid, &s));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![root.get()];
    while let Some(parent) = queue.pop() {
        if let Some(kids) = by_parent.get(&parent) {
            for k in kids {
                if seen.insert(k.pid) {
                    out.push(*k);
                    queue.push(k.pid.get());
                }
            }
        }
    }
    out
}

/// Opens a pidfd for the process `seen` describes, and checks it is still that process (same
/// start time, after the pidfd pinned whatever now has the PID). `None` if it is gone.
pub(crate) fn open_verified(seen: &Stat) -> Option<OwnedFd> {
    let fd = pidfd::open(seen.pid).ok()?;
    let now = stat(seen.pid)?;
    (now.starttime == seen.starttime).then_some(fd)
}

/// The children of `parent`, from `/proc/<parent>/task/<tid>/children` (one small read per
/// thread: much faster than a walk, so it catches short-lived processes a walk misses).
/// Kernels built without `CONFIG_PROC_CHILDREN` lack those files; then a walk answers.
pub(crate) fn children(parent: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", parent.get())) else {
        return out;
    };
    for t in tasks.flatten() {
        match std::fs::read_to_string(t.path().join("children")) {
            Ok(text) => out.extend(
                text.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .filter_map(Pid::from_raw),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && t.path().exists() => {
                return descendants(parent)
                    .into_iter()
                    .filter(|s| s.ppid == parent.get())
                    .map(|s| s.pid)
                    .collect();
            }
            // The thread exited meanwhile.
            Err(_) => {}
        }
    }
    out
}

/// This process's PID as `/proc` names it. Inside a PID namespace (a job of
/// `--pid-namespace`, which mounts no `/proc` of its own) `getpid()` says 1, 2, ..., while
/// `/proc` is still the host's: job ids, records and the sweep go by `/proc`, so a corral
/// nested there must name itself by the host's PID, or its records would name some host
/// process, never go stale, and collide with another namespace's.
pub(crate) fn own_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}
