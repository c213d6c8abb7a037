//! The bench's own children: started, signalled only through pidfds, reaped with their
//! resource usage, and checked for strays between rounds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use super::cgroup;

/// A child the bench started and has not reaped yet. Its PID cannot name another process
/// until it is reaped, which only [`Child::wait`] (or drop) does.
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    reaped: bool,
}

/// How a child ended, with its `wait4` resource usage (which includes the children it
/// reaped itself).
pub struct Exit {
    pub status: i32,
    pub rusage: libc::rusage,
}

impl Exit {
    /// True for `exit(0)`.
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    /// `exit N` or `signal N`, for messages.
    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

impl Child {
    /// Spawns `cmd` and opens a pidfd for the child (race-free: it is not reaped yet).
    pub fn spawn(cmd: &mut Command) -> Result<Child> {
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {:?}", cmd.get_program()))?;
        // std's `Child` neither kills nor waits on drop; from here on we own the PID.
        let pid = Pid::from_child(&child);
        drop(child);
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                // Cannot happen for an unreaped child; reap it so it is not left behind.
                let _ = rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED);
                return Err(io::Error::from(e)).context("pidfd_open on a fresh child failed");
            }
        };
        Ok(Child {
            pid,
            pidfd,
            reaped: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Sends `sig` through the pidfd (so never to another process, even once it exited).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        rustix::process::pidfd_send_signal(&self.pidfd, sig)
            .map_err(io::Error::from)
            .with_context(|| format!("pidfd_send_signal({}, {sig:?}) failed", self.pid()))
    }

    /// Waits for the child to exit and reaps it with `wait4`, returning its status and usage.
    pub fn wait(mut self) -> Result<Exit> {
        let mut status = 0;
        // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `status` and `rusage` are valid for writes; the PID is our unreaped
            // child, so it names no other process.
            let r = unsafe { libc::wait4(self.pid(), &mut status, 0, &mut rusage) };
            if r == self.pid() {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e).with_context(|| format!("wait4({}) failed", self.pid()));
            }
        }
        self.reaped = true;
        Ok(Exit { status, rusage })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // An error path: kill it (through the pidfd, so never another process) and reap.
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
            let _ =
                rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED);
        }
    }
}

/// Makes `cmd`'s child move itself into the cgroup whose `cgroup.procs` is open as
/// `procs_fd`, between fork and exec, so it and everything it starts are born inside.
pub fn spawn_into_cgroup(cmd: &mut Command, procs_fd: RawFd) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes one `write(2)` from a static buffer and builds an
    // `io::Error` from errno, neither of which allocates or takes a lock. `procs_fd` stays
    // open in the parent until `spawn` returns (the caller's `RawCgroup` owns it).
    unsafe {
        cmd.pre_exec(move || {
            let zero = b"0";
            if libc::write(procs_fd, zero.as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Reaps every exited child of ours without waiting (orphans re-parented to us while we were
/// a subreaper). Call only between rounds, when no `Job` or `Child` is alive: it would take
/// their status. Returns how many it reaped.
pub fn reap_strays() -> usize {
    let mut n = 0;
    while let Ok(Some(_)) =
        rustix::process::waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
    {
        n += 1;
    }
    n
}

/// The host PID of a `corral __watchdog <host>` process (from its command line), if `pid`
/// is one.
pub fn watchdog_host(pid: i32) -> Option<i32> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
    match argv.as_slice() {
        [_, arg, host, ..] if *arg == b"__watchdog" => std::str::from_utf8(host).ok()?.parse().ok(),
        _ => None,
    }
}

/// Whether `pid` is a watchdog the library started from this process without an exec (lazy,
/// sharing our memory, or forked): named `corral-watchdog`, with our command line.
fn our_forked_watchdog(pid: i32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end() == "corral-watchdog"
        && fs::read(format!("/proc/{pid}/cmdline")).ok() == fs::read("/proc/self/cmdline").ok()
}

/// Whether `pid` belongs in the bench's `self/` cgroup besides the bench: the bench's own
/// watchdog (the library starts one at the bench's first cgroup job, exec'd or forked; it
/// lives as long as the bench).
fn expected(pid: i32, me: i32) -> bool {
    pid == me || is_our_watchdog(pid)
}

/// Whether `pid` is the bench's own watchdog, exec'd, forked or lazy.
pub fn is_our_watchdog(pid: i32) -> bool {
    watchdog_host(pid) == Some(std::process::id() as i32) || our_forked_watchdog(pid)
}

/// Waits (up to 2 s) until no watchdog of a host that has exited (a `corral run` the bench
/// ran) is left in `self/`: each exits by itself once its host is gone, within
/// milliseconds. One that does not is left for [`kill_strays`] to find. A process that is
/// exiting has an empty command line but is still listed for a moment: it is waited for
/// too.
pub fn settle_watchdogs(self_dir: &Path) -> Result<()> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(2);
    let procs_path = self_dir.join(cgroup::PROCS);
    loop {
        let lingering = cgroup::read_procs(&procs_path)?.into_iter().any(|p| {
            if expected(p, me) {
                return false;
            }
            match watchdog_host(p) {
                Some(host) => !Path::new(&format!("/proc/{host}")).exists(),
                None => fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.is_empty()),
            }
        });
        if !lingering || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills every process in the bench's `self/` cgroup other than the bench itself and its
/// watchdog (through pidfds, after checking each is still in that cgroup), and waits until
/// only those are left. Returns the PIDs it found. Call only between rounds.
pub fn kill_strays(self_dir: &Path, self_cgroup: &Path, deadline: Instant) -> Result<Vec<i32>> {
    let me = std::process::id() as i32;
    reap_strays();
    settle_watchdogs(self_dir)?;
    let procs_path = self_dir.join(cgroup::PROCS);
    let found: Vec<i32> = cgroup::read_procs(&procs_path)?
        .into_iter()
        .filter(|&p| !expected(p, me))
        .collect();
    let mut pause = Duration::from_millis(1);
    loop {
        let left: Vec<i32> = cgroup::read_procs(&procs_path)?
            .into_iter()
            .filter(|&p| !expected(p, me))
            .collect();
        if left.is_empty() {
            return Ok(found);
        }
        for &pid in &left {
            let Some(pid) = Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 1) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) else {
                continue; // already gone
            };
            // The pidfd pins whatever has this PID now; it is ours only if it is in `self/`.
            let path = format!("/proc/{}/cgroup", pid.as_raw_nonzero().get());
            let ours = fs::read_to_string(path)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("0::"))
                        .map(|c| Path::new(c) == self_cgroup)
                })
                .unwrap_or(false);
            if ours {
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
            }
        }
        reap_strays();
        if Instant::now() >= deadline {
            bail!(
                "processes still in {} at the deadline: {left:?}",
                self_dir.display()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether two processes share one address space (`kcmp(KCMP_VM)`).
pub fn shares_memory(a: i32, b: i32) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp compares kernel objects; nothing of ours is touched.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) == 0 }
}

/// The memory only `pid` holds (its unique set size): `Private_Clean` + `Private_Dirty` of
/// `/proc/<pid>/smaps_rollup`, KiB. For a fork that shares most of its pages with its
/// parent (copy-on-write), `VmRSS` counts those too; this does not.
pub fn private_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(field("Private_Clean:")? + field("Private_Dirty:")?)
}
