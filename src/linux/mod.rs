//! The Linux engine: which mechanism a job gets, and the shared helpers.
//!
//! Two mechanisms, chosen once per job at spawn and reported:
//! - [`cgroup`]: a fresh cgroup v2 leaf per job, the child born inside it
//!   ([`spawn`]: `clone3(CLONE_INTO_CGROUP)`), stopped with signals to every member and
//!   `cgroup.kill`. Nothing can escape: cgroup membership is inherited by every fork and
//!   cannot be left without write access to another cgroup.
//! - [`pgroup`]: where no cgroup is writable. Process group + child subreaper + a `/proc`
//!   walk. Weaker (see that module), and reported as degraded when `auto` had to pick it.
//!
//! The job itself ([`job`]: spawn, the state machine, the backend that holds the mechanism)
//! is the Linux one; `corral::Job` is it on Linux.
//!
//! Single processes are only ever signalled through pidfds ([`pidfd`]).

pub(crate) mod cgroup;
pub(crate) mod channel;
pub(crate) mod delegate;
pub(crate) mod job;
pub(crate) mod pgroup;
pub(crate) mod pidfd;
pub(crate) mod postfork;
pub(crate) mod procs;
pub(crate) mod spawn;
pub(crate) mod supervise;
pub(crate) mod watchdog;

use std::io;
use std::time::Duration;

use rustix::event::PollFd;

use crate::error::{Error, Result};
use crate::options::{MechanismRequest, Options};

/// `poll(2)` with a `Duration` timeout (`None` = forever), retrying EINTR.
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> Result<usize> {
    let ts = timeout.map(|d| rustix::event::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    });
    loop {
        match rustix::event::poll(fds, ts.as_ref()) {
            Ok(n) => return Ok(n),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(Error::sys("poll", io::Error::from(e))),
        }
    }
}

/// The mechanism picked for a job, with what it needs.
pub(crate) enum Choice {
    Cgroup {
        parent: cgroup::Parent,
        reason: String,
        /// The controllers the limits need, enabled in the parent (`None`: no limits).
        limits: Option<cgroup::Enabled>,
    },
    Pgroup {
        reason: String,
        degraded: bool,
    },
}

/// Picks the mechanism for `opts`. A forced mechanism that cannot be had is an error; `auto`
/// falls back to pgroup and says why. When limits are asked for, only the cgroup mechanism
/// will do, and the controllers they need are enabled in the parent here, before any leaf
/// exists.
pub(crate) fn choose(opts: &Options) -> Result<Choice> {
    opts.limits.validate().map_err(Error::InvalidOptions)?;
    let choice = choose_mechanism(opts)?;
    if opts.limits.is_empty() {
        return Ok(choice);
    }
    let files = opts.limits.files();
    let needed: Vec<(&str, &str)> = files.iter().map(|(c, f, _)| (*c, *f)).collect();
    match choice {
        Choice::Pgroup { reason, .. } => {
            let (controller, file) = needed[0];
            let (why, fix) = if opts.mechanism == MechanismRequest::Pgroup {
                (
                    "--mechanism pgroup was asked for".to_string(),
                    "use --mechanism cgroup or auto",
                )
            } else {
                (
                    format!("the job would run under pgroup ({reason})"),
                    "give corral a writable cgroup (--cgroup-parent, or on a systemd host a \
                     delegated one: Delegate=yes, or `systemd-run [--user] --scope -p \
                     Delegate=yes -- corral run ...`)",
                )
            };
            Err(Error::LimitUnavailable {
                file: file.to_string(),
                controller: controller.to_string(),
                reason: format!("resource limits need the cgroup mechanism, and {why}"),
                fix: format!("{fix}, or drop the limit"),
            })
        }
        Choice::Cgroup { parent, reason, .. } => {
            let enabled =
                match cgroup::enable_controllers(&parent, &needed, opts.move_self_for_limits) {
                    Ok(enabled) => enabled,
                    Err(e) => {
                        parent.release();
                        return Err(e);
                    }
                };
            Ok(Choice::Cgroup {
                parent,
                reason,
                limits: Some(enabled),
            })
        }
    }
}

fn choose_mechanism(opts: &Options) -> Result<Choice> {
    match opts.mechanism {
        MechanismRequest::Pgroup => Ok(Choice::Pgroup {
            reason: "requested (--mechanism pgroup)".into(),
            degraded: false,
        }),
        MechanismRequest::Cgroup | MechanismRequest::Auto => {
            match cgroup::choose_parent(opts.cgroup_parent.as_deref()) {
                Ok(parent) => {
                    let reason = match parent.source {
                        cgroup::ParentSource::Option => {
                            format!("cgroup parent {} (given)", parent.path.display())
                        }
                        cgroup::ParentSource::Env => format!(
                            "cgroup parent {} (CORRAL_CGROUP_PARENT)",
                            parent.path.display()
                        ),
                        cgroup::ParentSource::Default => {
                            format!("cgroup parent {} (default)", parent.path.display())
                        }
                        cgroup::ParentSource::Delegated => match &parent.bound_to {
                            None => format!(
                                "cgroup parent {} (delegated: {})",
                                parent.path.display(),
                                parent.how.unwrap_or("the cgroup corral runs in")
                            ),
                            Some(unit) => format!(
                                "cgroup parent {} (delegated: {}); outside the unit corral \
                                 was started in, {unit}, which is not delegated: the scope \
                                 is bound to it and stops with it, but {unit}'s limits and \
                                 accounting do not cover the job (give {unit} Delegate=yes \
                                 to keep jobs inside it)",
                                parent.path.display(),
                                parent.how.unwrap_or("a scope corral obtained from systemd")
                            ),
                        },
                        cgroup::ParentSource::Caller => format!(
                            "cgroup parent {} (inside the cgroup corral runs in)",
                            parent.path.display()
                        ),
                    };
                    Ok(Choice::Cgroup {
                        parent,
                        reason,
                        limits: None,
                    })
                }
                Err(cgroup::Unavailable::Bad(e)) => Err(e),
                Err(cgroup::Unavailable::None { reason, fix }) => {
                    if opts.mechanism == MechanismRequest::Cgroup {
                        Err(Error::NoCgroup { reason, fix })
                    } else {
                        Ok(Choice::Pgroup {
                            reason: format!("fallback: no writable cgroup ({reason})"),
                            degraded: true,
                        })
                    }
                }
            }
        }
    }
}

/// Our process group and session IDs.
///
/// Either may be 0: a process descended from PID 1 or a kernel thread without anyone
/// calling `setsid`/`setpgid` on the way lives in session 0 and group 0 (CI runners started
/// by a minimal init do). rustix's `getsid`/`getpgrp` return a `Pid`, which cannot be 0 and
/// panics, so this asks libc, which returns the number as it is.
pub(crate) fn own_group_and_session() -> (i32, i32) {
    // SAFETY: getpgrp() and getsid(0) take no pointers and cannot fail for the caller.
    unsafe { (libc::getpgrp(), libc::getsid(0)) }
}

/// The whole of a small `/proc` file, in as few system calls as its size allows: one
/// `read` into a page-sized buffer, then one more that finds the end (`std::fs::read`
/// starts at 32 bytes and doubles, a `read` each time).
pub(crate) fn read_proc_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let len = buf.len();
        if buf.capacity() == len {
            buf.reserve(4096);
        }
        let spare = buf.capacity() - len;
        buf.resize(len + spare, 0);
        match file.read(&mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                break;
            }
            Ok(n) => buf.truncate(len + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(len),
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
