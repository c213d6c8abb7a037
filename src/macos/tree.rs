//! Finding a job's processes on macOS: its process group, plus a walk of libproc's child
//! lists from the main process and from every process of the job seen before.
//!
//! macOS has no subreaper: when a process exits, its children go to launchd (PID 1) and
//! their parent link to the job is gone. So every process found is remembered by its PID and
//! start time (its identity), and later walks start from each remembered process that is
//! still the same process. A process is a member when it is in the job's group, or a child
//! of a member, or remembered. What cannot be found: a process that left the group (setsid,
//! setpgid) and whose parent exited before any walk saw it.
//!
//! Signals go to the group with `killpg` (the group id is the unreaped main process's PID:
//! it cannot be reused), and to each member outside it by PID, right after its identity is
//! checked again with `proc_pidinfo`. There are no pidfds on macOS, so a process that exits
//! and whose PID is handed to a new process between that check and `kill` would be signalled
//! by mistake: a window of microseconds, and PIDs on macOS are handed out in increasing
//! order up to 99999 before they wrap, so reuse within it needs a wrap in that window.

use std::collections::{HashMap, HashSet};

use super::sys::{self, BsdInfo, Kqueue, Pid, ProcessGroup};

/// A process: its PID and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ident {
    pub(crate) pid: Pid,
    pub(crate) start: (u64, u64),
}

/// Whether `now` (a fresh read) is the live process `known` describes.
pub(crate) fn same_live_process(known: &Ident, now: &BsdInfo) -> bool {
    now.pid == known.pid && now.start == known.start && !now.zombie
}

/// The processes of one job found so far, and how to find the rest.
#[derive(Debug)]
pub(crate) struct Tree {
    main: Pid,
    group: ProcessGroup,
    /// Every live process seen, by PID, with its start time.
    known: HashMap<Pid, (u64, u64)>,
    /// PIDs whose fork and exit wake the job's kqueue.
    watched: HashSet<Ident>,
}

impl Tree {
    pub(crate) fn new(main: Pid) -> Tree {
        Tree {
            main,
            group: ProcessGroup::led_by(main),
            known: HashMap::new(),
            watched: HashSet::new(),
        }
    }

    pub(crate) fn group(&self) -> ProcessGroup {
        self.group
    }

    /// Walks now: the group, the main process's children, the remembered processes and the
    /// children of all of them, recursively. Returns the live members other than the main
    /// process, and remembers them (and watches each with `kq`, so that its forks wake the
    /// job).
    pub(crate) fn scan(&mut self, kq: Option<&Kqueue>) -> Vec<BsdInfo> {
        let mut found: HashMap<Pid, BsdInfo> = HashMap::new();
        let mut queue: Vec<Pid> = vec![self.main];
        for pid in sys::group_pids(self.group) {
            if let Some(info) = sys::bsd_info(pid) {
                // A PID read from the list is checked again: still in our group.
                if info.pgid == self.group.id() && !info.zombie && pid != self.main {
                    queue.push(pid);
                    found.insert(pid, info);
                }
            }
        }
        let known: Vec<(Pid, (u64, u64))> = self.known.iter().map(|(p, s)| (*p, *s)).collect();
        for (pid, start) in known {
            match sys::bsd_info(pid) {
                Some(info) if same_live_process(&Ident { pid, start }, &info) => {
                    queue.push(pid);
                    found.insert(pid, info);
                }
                _ => {
                    self.known.remove(&pid);
                }
            }
        }
        let mut walked: HashSet<Pid> = HashSet::new();
        while let Some(parent) = queue.pop() {
            if !walked.insert(parent) {
                continue;
            }
            for child in sys::child_pids(parent) {
                if found.contains_key(&child) || child == self.main {
                    continue;
                }
                let Some(info) = sys::bsd_info(child) else {
                    continue;
                };
                // Checked again: still a child of `parent` (else the PID was reused by an
                // unrelated process between the list and this read).
                if info.ppid == parent.get() && !info.zombie {
                    queue.push(child);
                    found.insert(child, info);
                }
            }
        }
        for info in found.values() {
            self.known.insert(info.pid, info.start);
            let ident = Ident {
                pid: info.pid,
                start: info.start,
            };
            if let Some(kq) = kq {
                // A watch on a PID reused meanwhile only costs a spurious wake-up; one that
                // fails (the process is gone) is no loss.
                if !self.watched.contains(&ident) && kq.watch(info.pid).is_ok() {
                    self.watched.insert(ident);
                }
            }
        }
        self.watched
            .retain(|i| self.known.get(&i.pid) == Some(&i.start));
        let mut out: Vec<BsdInfo> = found.into_values().collect();
        out.sort_by_key(|i| i.pid);
        out
    }

    /// Sends `sig` to the job: `killpg` to the group, then by PID to `main` (when given: it
    /// has not exited) if it left the group, and to each member of `members` outside the
    /// group, each checked again just before. Returns how many processes it reached (the
    /// group counts as its members in `members`, plus the main process).
    pub(crate) fn signal(
        &self,
        sig: libc::c_int,
        main_running: bool,
        members: &[BsdInfo],
        skip: &HashSet<Ident>,
    ) -> Signalled {
        let mut out = Signalled::default();
        let in_group = members.iter().filter(|m| m.pgid == self.group.id()).count();
        // ESRCH: nothing is left in the group; that is no failure.
        if sys::kill_process_group(self.group, sig).is_ok() {
            out.reached += in_group;
        }
        if main_running {
            // Our unreaped child: its PID cannot have been reused.
            let in_own_group = sys::bsd_info(self.main).is_some_and(|i| i.pgid == self.group.id());
            if in_own_group || sys::kill_process(self.main, sig).is_ok() {
                out.reached += 1;
            }
        }
        for m in members.iter().filter(|m| m.pgid != self.group.id()) {
            let ident = Ident {
                pid: m.pid,
                start: m.start,
            };
            if skip.contains(&ident) {
                continue;
            }
            let still = sys::bsd_info(m.pid).is_some_and(|now| same_live_process(&ident, &now));
            if still && sys::kill_process(m.pid, sig).is_ok() {
                out.reached += 1;
                out.outside.insert(ident);
            }
        }
        out
    }
}

/// What [`Tree::signal`] reached.
#[derive(Debug, Default)]
pub(crate) struct Signalled {
    /// Processes reached, in the group and outside it.
    pub(crate) reached: usize,
    /// The members outside the group that got the signal by PID.
    pub(crate) outside: HashSet<Ident>,
}
