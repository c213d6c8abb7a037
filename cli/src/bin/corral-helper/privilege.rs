//! Who the caller is, and the changes of identity of the helper's processes.
//!
//! The helper starts with the caller's real uid and an effective uid of 0 (setuid root), or
//! as root through `sudo`. It first becomes root through and through (real, effective and
//! saved ids 0), so the caller can no longer signal it while it sets the job up (a terminal's
//! Ctrl+C still reaches it: the kernel sends those). The supervisor later gives that up for
//! good with [`Identity::assume`]. These calls change the whole process: they are made while
//! it has a single thread.

use std::io;

use anyhow::{bail, Context};
use caps::CapSet;

use crate::policy::Account;

/// The caller's uid: the real uid; under `sudo` (real uid 0), the user sudo ran us for.
/// Taken before [`become_root`] makes the real uid 0.
pub fn caller_uid(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> anyhow::Result<u32> {
    let ruid = rustix::process::getuid().as_raw();
    let mut uid = ruid;
    if ruid == 0 {
        // Set by sudo itself, never passed through from its caller; root setting it by hand
        // gains nothing root did not have.
        if let Some((_, v)) = env.iter().find(|(k, _)| k == "SUDO_UID") {
            uid = v
                .to_str()
                .and_then(|s| s.parse().ok())
                .context("SUDO_UID is not a number")?;
        }
    }
    Ok(uid)
}

/// Makes every uid and gid of the process 0, and the process not dumpable.
pub fn become_root() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "corral-helper is not running as root; an administrator installs it setuid root \
             (chown root:root, chmod 4755) or lets you run it through sudo"
        );
    }
    // SAFETY: plain system calls on integers; the process has one thread.
    unsafe {
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(io::Error::last_os_error()).context("setresgid(0, 0, 0)");
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(io::Error::last_os_error()).context("setresuid(0, 0, 0)");
        }
    }
    not_dumpable()
}

/// `PR_SET_DUMPABLE 0`: no core dumps, no ptrace by the caller, `/proc/<pid>` owned by root.
pub fn not_dumpable() -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
    }
    Ok(())
}

/// The identity a process of the helper takes when it gives up root.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Real and saved ids: whom the process may signal (the job's user).
    pub ruid: u32,
    pub rgid: u32,
    /// Effective ids and groups: whose permissions its file accesses have (the caller's).
    pub euid: u32,
    pub egid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// The caller's own identity.
    pub fn of(account: &Account) -> Identity {
        Identity::split(account, account)
    }

    /// Signals as `job` (so the supervisor can stop the job's processes), files as
    /// `caller` (so the report is written with the caller's permissions).
    pub fn split(job: &Account, caller: &Account) -> Identity {
        Identity {
            ruid: job.uid,
            rgid: job.gid,
            euid: caller.uid,
            egid: caller.gid,
            groups: caller.groups.iter().map(|g| g.gid).collect(),
        }
    }

    /// Gives up root for good: no capability in any set (bounding included), the ids of
    /// `self`, no new privileges, not dumpable. Checked afterwards from `/proc/self/status`;
    /// any capability left is an error.
    pub fn assume(&self) -> anyhow::Result<()> {
        caps::clear(None, CapSet::Bounding).map_err(|e| anyhow::anyhow!("{e}"))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| anyhow::anyhow!("{e}"))?;
        caps::clear(None, CapSet::Inheritable).map_err(|e| anyhow::anyhow!("{e}"))?;
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // SAFETY: plain system calls on integers and a live buffer; one thread.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                return Err(io::Error::last_os_error()).context("setgroups");
            }
            if libc::setresgid(self.rgid, self.egid, self.rgid) != 0 {
                return Err(io::Error::last_os_error()).context("setresgid");
            }
            if libc::setresuid(self.ruid, self.euid, self.ruid) != 0 {
                return Err(io::Error::last_os_error()).context("setresuid");
            }
        }
        // Leaving uid 0 cleared the permitted and effective sets; for a root caller (all
        // ids 0) they are cleared here.
        caps::clear(None, CapSet::Effective).map_err(|e| anyhow::anyhow!("{e}"))?;
        caps::clear(None, CapSet::Permitted).map_err(|e| anyhow::anyhow!("{e}"))?;
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error()).context("prctl(PR_SET_NO_NEW_PRIVS)");
        }
        // Changing the effective uid reset it to the `fs.suid_dumpable` sysctl; make sure.
        not_dumpable()?;
        check_no_capabilities()
    }
}

/// Every capability set of this thread is empty, as the kernel shows it.
fn check_no_capabilities() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .context("read /proc/thread-self/status")?;
    for line in status.lines() {
        if let Some(rest) = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
            .iter()
            .find_map(|k| line.strip_prefix(k))
        {
            if u64::from_str_radix(rest.trim(), 16).unwrap_or(u64::MAX) != 0 {
                bail!("could not give up every capability ({line}); refusing to go on");
            }
        }
    }
    Ok(())
}

/// Runs `check` in a child process that has taken `who`'s identity, and returns its
/// verdict: what the caller may do is decided with the caller's own permissions. The child
/// prints nothing; an `Err` carries its message.
pub fn as_user(
    who: &Identity,
    check: impl FnOnce() -> Result<(), String>,
) -> anyhow::Result<Result<(), String>> {
    let (read, write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    // SAFETY: the process has a single thread, so the child is a complete copy of it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read);
            let verdict = match who.assume() {
                Ok(()) => check(),
                Err(e) => Err(format!("{e:#}")),
            };
            let code = match verdict {
                Ok(()) => 0,
                Err(msg) => {
                    let _ = rustix::io::write(&write, msg.as_bytes());
                    1
                }
            };
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(write);
            let mut msg = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                match rustix::io::read(&read, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => msg.extend_from_slice(&buf[..n]),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e).context("read from the check's child"),
                }
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).context("waitpid");
                }
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(Ok(()))
            } else if msg.is_empty() {
                bail!("the check as the caller failed (status {status:#x})")
            } else {
                Ok(Err(String::from_utf8_lossy(&msg).into_owned()))
            }
        }
    }
}

/// The limits the helper's own work needs, whatever the caller set before calling it
/// (`ulimit -f 0` would stop it mid-write of a record, `ulimit -n 3` mid-set-up, `ulimit -t`
/// or `-v` at any moment, leaving root's files and cgroups behind). Each limit is lifted to
/// unlimited where the helper may (`CAP_SYS_RESOURCE`), else to the caller's hard limit;
/// a hard limit below what the helper needs is refused here, before anything is made, with
/// the `ulimit` option that raises it. Returns the caller's limits of these resources, which
/// COMMAND gets back (`JobCommand::resource_limits`). Called right after [`become_root`].
pub fn raise_own_limits() -> anyhow::Result<Vec<corral::ResourceLimit>> {
    use rustix::process::{getrlimit, setrlimit, Rlimit};
    let mut caller = Vec::new();
    for need in OWN_NEEDS {
        let raw = rustix_resource(need.resource).expect("every need has a raw resource");
        let theirs = getrlimit(raw);
        caller.push(corral::ResourceLimit {
            resource: need.resource,
            soft: theirs.current,
            hard: theirs.maximum,
        });
        let wanted = need.wanted.map(|w| theirs.maximum.map_or(w, |h| h.max(w)));
        let lifted = setrlimit(
            raw,
            Rlimit {
                current: wanted,
                maximum: wanted,
            },
        );
        if lifted.is_ok() {
            continue;
        }
        // Without CAP_SYS_RESOURCE (a container's root, say): up to the hard limit.
        if let Some(hard) = theirs.maximum {
            if hard < need.least {
                anyhow::bail!(
                    "your {} hard limit ({hard} {}) is below the {} {} corral-helper needs for                      its own work, and it may not lift it here; call it from a shell whose                      `ulimit -H {}` is at least that",
                    need.resource.name(),
                    need.unit,
                    need.least,
                    need.unit,
                    need.option,
                );
            }
        }
        setrlimit(
            raw,
            Rlimit {
                current: theirs.maximum,
                maximum: theirs.maximum,
            },
        )
        .with_context(|| {
            format!(
                "raise {} to its hard limit (setrlimit)",
                need.resource.name()
            )
        })?;
    }
    Ok(caller)
}

/// What the helper needs of one resource for its own work.
struct Need {
    resource: corral::Resource,
    /// What it sets where it may (`None`: unlimited).
    wanted: Option<u64>,
    /// Below this hard limit it refuses (in the kernel's unit).
    least: u64,
    unit: &'static str,
    /// The `ulimit` option of the resource.
    option: &'static str,
}

/// The helper's needs: a record and a report are far below 1 MiB; its peak address space
/// is well below 64 MiB; it keeps a few dozen descriptors open; its CPU time is
/// milliseconds (1 s is the kernel's smallest limit but 0).
const OWN_NEEDS: [Need; 5] = [
    Need {
        resource: corral::Resource::Cpu,
        wanted: None,
        least: 1,
        unit: "s",
        option: "-t",
    },
    Need {
        resource: corral::Resource::FileSize,
        wanted: None,
        least: 1 << 20,
        unit: "bytes",
        option: "-f",
    },
    Need {
        resource: corral::Resource::Data,
        wanted: None,
        least: 64 << 20,
        unit: "bytes",
        option: "-d",
    },
    Need {
        resource: corral::Resource::AddressSpace,
        wanted: None,
        least: 64 << 20,
        unit: "bytes",
        option: "-v",
    },
    Need {
        resource: corral::Resource::OpenFiles,
        wanted: Some(1024),
        least: 64,
        unit: "descriptors",
        option: "-n",
    },
];

fn rustix_resource(r: corral::Resource) -> Option<rustix::process::Resource> {
    use rustix::process::Resource as R;
    Some(match r {
        corral::Resource::Cpu => R::Cpu,
        corral::Resource::FileSize => R::Fsize,
        corral::Resource::Data => R::Data,
        corral::Resource::AddressSpace => R::As,
        corral::Resource::OpenFiles => R::Nofile,
        _ => return None,
    })
}

/// Gives the calling process the caller's file-size limit back (lowering only), for the
/// report it writes as the caller: a report too large for the caller is then an error
/// (`EFBIG`, one line) rather than a `SIGXFSZ`. The other limits stay the helper's: the
/// supervisor holds more descriptors than a caller's `ulimit -n 8` allows, and those are
/// not the report's business.
pub fn restore_caller_file_size(limits: &[corral::ResourceLimit]) {
    // SAFETY: sets a signal's disposition to "ignore"; no handler is involved.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    for l in limits
        .iter()
        .filter(|l| l.resource == corral::Resource::FileSize)
    {
        let Some(raw) = rustix_resource(l.resource) else {
            continue;
        };
        let _ = rustix::process::setrlimit(
            raw,
            rustix::process::Rlimit {
                current: l.soft,
                maximum: l.hard,
            },
        );
    }
}
