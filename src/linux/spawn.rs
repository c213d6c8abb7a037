//! Starting the job's first process, born where it belongs.
//!
//! In cgroup mode the child must never run outside the job's cgroup. The fast path is
//! `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` (Linux 5.7): the kernel creates the child
//! directly in the leaf and hands back a pidfd in the same call, so there is neither a
//! moment outside the cgroup nor a window in which the PID could be reused. Where `clone3`
//! or `CLONE_INTO_CGROUP` is missing (older kernels, seccomp filters that answer ENOSYS or
//! EPERM), the fallback is `fork`: the child writes `0` to the leaf's `cgroup.procs` (an fd
//! it inherited) before anything else, then `exec`s; the parent opens a pidfd for its
//! unreaped child, which cannot be reused until we reap it. Which path works is probed once,
//! by trying, and remembered in an atomic; transient errors (EAGAIN, ENOMEM) are not
//! remembered.
//!
//! # Between fork and exec
//! The child of `fork`/`clone3` in a multi-threaded program is a copy of the whole address
//! space with only the calling thread. Any lock another thread held at that instant (the
//! allocator's, stdio's, the environment's) stays locked forever in the child. So the child
//! may only make raw system calls on data prepared beforehand: every C string, the argv and
//! envp arrays and the candidate paths for the program are built in the parent, and the
//! child reports failure as two integers over a close-on-exec pipe, then `_exit`s.
//! Nothing in `child_after_fork` may allocate, lock or unwind.
//!
//! # A new PID namespace
//! With `pid_namespace`, the same `clone3` also carries `CLONE_NEWPID` (and `CLONE_NEWUSER`
//! where we lack `CAP_SYS_ADMIN`): the child is PID 1 of a namespace of its own, and when
//! it exits the kernel SIGKILLs every other process in it. For the job to end with corral
//! as well, the child sets `PR_SET_PDEATHSIG` to SIGKILL before it execs, then checks that
//! corral did not die before that (a pidfd of corral opened before the clone becomes
//! readable when it has exited; `getppid()` is 0 in a new PID namespace and cannot say).
//! The kernel re-parents the child before it reads the child's parent-death signal, and marks
//! corral exited (the pidfd readable) a few instructions later; so the child also compares
//! its parent in `/proc/self/stat` with corral's PID, which closes that window.
//! The kernel sends the parent-death signal when the *thread* that created the child exits,
//! so such a spawn is refused on any thread but the main one. In a user namespace the child
//! maps its own uid and gid 1:1 before anything else (it holds every capability in the new
//! namespace, and an unprivileged process may map exactly its own ids, once `setgroups` is
//! denied), so the job keeps its identity. There is no fork fallback: without `clone3` the
//! spawn fails and says so.
//!
//! # Another user
//! With [`crate::Credentials`] the child gives up every privilege after its placement (the
//! write to `cgroup.procs` still needs ours) and before anything else: the capability
//! bounding set, the ambient set, the supplementary groups, gid, uid, the remaining sets
//! (`capset`), then `no_new_privs`. Each is a raw `syscall`, not a libc wrapper: glibc's
//! `setuid` family applies the change to every thread it knows of, by signalling each and
//! waiting for them, and in a child of our `clone3` the threads it knows of are ours.
//! This comes before `PR_SET_PDEATHSIG`, which the kernel clears when the euid or egid
//! changes. Such a child is never vfork-style: the kernel marks the memory of a process
//! whose ids change not dumpable, and a child sharing ours would mark ours.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::Error;
use crate::linux::pidfd::{self, Pid};
use crate::report::Spawn;
use crate::{Credentials, Resource, ResourceLimit};

/// Where the child goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Placement<'a> {
    /// Born in this cgroup: `dir` is the leaf directory, `procs` its `cgroup.procs`.
    Cgroup {
        dir: BorrowedFd<'a>,
        procs: BorrowedFd<'a>,
        forbid_clone3: bool,
    },
    /// A new process group led by the child (`setpgid(0, 0)` in the child).
    NewProcessGroup,
    /// A daemon of ours (the watchdog): the child calls `setsid()` first, so it is in no
    /// process group or session of ours before it could run anything, then forks again and
    /// exits, so the program runs in a grandchild that is no child of ours (re-parented to
    /// the nearest subreaper, normally init). Each `(fd, number)` of `keep` is passed to
    /// the program at that descriptor number (at most [`KEEP_MAX`], numbers above 2).
    /// [`Spawned::daemon`] is the grandchild's PID; [`Spawned::pidfd`] the middle process's,
    /// already exited (reap it).
    Detached { keep: &'a [(BorrowedFd<'a>, RawFd)] },
}

/// How many descriptors [`Placement::Detached`] can pass.
pub(crate) const KEEP_MAX: usize = 4;
/// The numbers [`Placement::Detached`] passes descriptors at are below this; the child's
/// own descriptors (the exec status pipe, the sources) are moved above it first.
const KEEP_ABOVE: RawFd = 16;

/// Everything the child needs, prepared by the parent.
pub(crate) struct SpawnSpec<'a> {
    pub(crate) program: &'a OsStr,
    pub(crate) args: &'a [OsString],
    /// `None`: the parent's environment.
    pub(crate) env: Option<&'a [(OsString, OsString)]>,
    pub(crate) cwd: Option<&'a Path>,
    /// `None` keeps the parent's descriptor 0, 1 or 2.
    pub(crate) stdio: [Option<BorrowedFd<'a>>; 3],
    /// The signal mask the child starts with (`None`: the spawning thread's).
    pub(crate) sigmask: Option<crate::options::SignalSet>,
    pub(crate) placement: Placement<'a>,
    /// Make the child PID 1 of a new PID namespace (see the module docs).
    pub(crate) pid_namespace: bool,
    /// Run the program as this user, with no privilege (see the module docs).
    pub(crate) credentials: Option<&'a Credentials>,
    /// Resource limits set in the child before anything else (empty: inherited).
    pub(crate) resource_limits: &'a [ResourceLimit],
}

/// How the child was created (reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpawnMethod {
    /// `clone3` with `CLONE_INTO_CGROUP | CLONE_PIDFD`.
    Clone3IntoCgroup,
    /// `clone3` with `CLONE_PIDFD` (no cgroup placement needed).
    Clone3,
    /// `fork`, the child moved itself through `cgroup.procs` before `exec`.
    ForkThenMove,
    /// `fork` + `pidfd_open` (no cgroup).
    Fork,
}

pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    pub(crate) pidfd: OwnedFd,
    pub(crate) method: SpawnMethod,
    /// [`Placement::Detached`]: the grandchild that runs the program.
    pub(crate) daemon: Option<Pid>,
    /// The child is PID 1 of a new PID namespace (`Some(true)`: inside a new user
    /// namespace too, its uid and gid mapped 1:1).
    pub(crate) pid_namespace: Option<bool>,
}

impl Spawned {
    /// How the child was created, for the report.
    pub(crate) fn spawn(&self) -> Spawn {
        let clone3 = |into_cgroup| Spawn::Clone3 {
            into_cgroup,
            new_pid_namespace: self.pid_namespace.is_some(),
            new_user_namespace: self.pid_namespace == Some(true),
        };
        match self.method {
            SpawnMethod::Clone3IntoCgroup => clone3(true),
            SpawnMethod::Clone3 => clone3(false),
            SpawnMethod::ForkThenMove => Spawn::ForkThenJoinCgroup,
            SpawnMethod::Fork => Spawn::ForkThenPidfd,
        }
    }
}

const CLONE3_UNKNOWN: u8 = 0;
const CLONE3_WORKS: u8 = 1;
const CLONE3_MISSING: u8 = 2;
/// Whether `clone3` with `CLONE_INTO_CGROUP | CLONE_PIDFD` works on this kernel.
static CLONE3_STATE: AtomicU8 = AtomicU8::new(CLONE3_UNKNOWN);

// Linux uapi values; `clone_args` is laid out per include/uapi/linux/sched.h (version 2,
// 88 bytes, with `cgroup`).
pub(crate) const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;

#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub(crate) flags: u64,
    pub(crate) pidfd: u64,
    pub(crate) child_tid: u64,
    pub(crate) parent_tid: u64,
    pub(crate) exit_signal: u64,
    pub(crate) stack: u64,
    pub(crate) stack_size: u64,
    pub(crate) tls: u64,
    pub(crate) set_tid: u64,
    pub(crate) set_tid_size: u64,
    pub(crate) cgroup: u64,
}

/// Failure stages the child reports (with errno) over the pipe.
const STAGE_CGROUP: u32 = 1;
const STAGE_SETPGID: u32 = 2;
const STAGE_STDIO: u32 = 3;
const STAGE_SIGNALS: u32 = 4;
const STAGE_CHDIR: u32 = 5;
const STAGE_EXEC: u32 = 6;
const STAGE_SETSID: u32 = 7;
const STAGE_FORK: u32 = 8;
const STAGE_KEEP: u32 = 9;
/// Not a failure: the middle process of a [`Placement::Detached`] spawn names the
/// grandchild (the "errno" is its PID).
const RECORD_DAEMON: u32 = 100;
const STAGE_PDEATHSIG: u32 = 10;
const STAGE_ID_MAPS: u32 = 11;
const STAGE_PARENT_GONE: u32 = 12;
const STAGE_CAP_BOUNDING: u32 = 13;
const STAGE_CAP_AMBIENT: u32 = 14;
const STAGE_SETGROUPS: u32 = 15;
const STAGE_SETGID: u32 = 16;
const STAGE_SETUID: u32 = 17;
const STAGE_CAPSET: u32 = 18;
const STAGE_NO_NEW_PRIVS: u32 = 19;
/// `STAGE_RLIMIT + i`: the `i`th resource limit could not be set.
const STAGE_RLIMIT: u32 = 100;

/// Data the child reads; pointers into buffers owned by `Prepared`.
struct ChildCtx {
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    stdio: [RawFd; 3],
    /// The mask the child execs with.
    sigmask: libc::sigset_t,
    move_via_procs: RawFd,
    new_pgroup: bool,
    /// [`Placement::Detached`]: `setsid`, fork again, the middle process exits.
    detach: bool,
    /// Descriptors to pass at fixed numbers: `(ours, theirs)`; -1 for an unused slot.
    keep: [(RawFd, RawFd); KEEP_MAX],
    err_pipe: RawFd,
    /// New PID namespace: a pidfd of the spawning process (checked after
    /// `PR_SET_PDEATHSIG`); -1 otherwise.
    parent_pidfd: RawFd,
    /// New PID namespace: our PID as `/proc` shows it (0: unknown), which the child
    /// compares with the parent in its `/proc/self/stat`.
    parent_proc_pid: i32,
    /// New user namespace: the lines for `uid_map` and `gid_map`.
    id_maps: Option<[CString; 2]>,
    /// The user to become before anything but the placement.
    credentials: Option<ChildCredentials>,
    /// `(resource, [soft, hard])` for `prlimit64`, set right after the placement.
    rlimits: Vec<(libc::c_long, [u64; 2])>,
}

/// The `prlimit64` form of `limits`: the kernel's resource number and `[soft, hard]`, with
/// `RLIM64_INFINITY` (all ones) for unlimited.
pub(crate) fn raw_rlimits(limits: &[ResourceLimit]) -> Vec<(libc::c_long, [u64; 2])> {
    limits
        .iter()
        .map(|l| {
            let resource = match l.resource {
                Resource::Cpu => libc::RLIMIT_CPU,
                Resource::FileSize => libc::RLIMIT_FSIZE,
                Resource::Data => libc::RLIMIT_DATA,
                Resource::Stack => libc::RLIMIT_STACK,
                Resource::Core => libc::RLIMIT_CORE,
                Resource::OpenFiles => libc::RLIMIT_NOFILE,
                Resource::Processes => libc::RLIMIT_NPROC,
                Resource::AddressSpace => libc::RLIMIT_AS,
                Resource::LockedMemory => libc::RLIMIT_MEMLOCK,
            };
            (
                resource as libc::c_long,
                [l.soft.unwrap_or(u64::MAX), l.hard.unwrap_or(u64::MAX)],
            )
        })
        .collect()
}

/// Sets the limits of [`raw_rlimits`] on the calling process: one raw `prlimit64` each, so
/// a forked child may call it. `Err((index, errno))` names the limit that failed.
///
/// # Safety
/// Async-signal-safe; nothing but system calls on the given values.
pub(crate) unsafe fn set_rlimits(limits: &[(libc::c_long, [u64; 2])]) -> Result<(), (usize, i32)> {
    for (i, (resource, value)) in limits.iter().enumerate() {
        // SAFETY: prlimit64(0 = this process, resource, new, NULL); `value` outlives the call.
        if libc::syscall(
            libc::SYS_prlimit64,
            0 as libc::c_long,
            *resource,
            value.as_ptr(),
            std::ptr::null_mut::<u64>(),
        ) != 0
        {
            return Err((i, *libc::__errno_location()));
        }
    }
    Ok(())
}

/// [`Credentials`] as the child uses them, prepared by the parent.
struct ChildCredentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// The highest capability number to drop from the bounding set.
    last_cap: libc::c_ulong,
}

/// Where the kernel says which capability number is its last (Linux 3.2).
const CAP_LAST_CAP: &str = "/proc/sys/kernel/cap_last_cap";
/// The guess when [`CAP_LAST_CAP`] cannot be read: as many as `capset` has bits for.
/// Harmless when too high: the drop loop ends at the first number the kernel does not know.
const CAP_LAST_CAP_GUESS: libc::c_ulong = 63;
/// `_LINUX_CAPABILITY_VERSION_3` (include/uapi/linux/capability.h): 64-bit sets, given as
/// two [`CapData`].
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: 32 bits of each set.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

// The 32-bit ids' calls: on i386 and 32-bit arm the plain ones take 16-bit ids.
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{
    SYS_setgroups as SYS_SETGROUPS, SYS_setresgid as SYS_SETRESGID, SYS_setresuid as SYS_SETRESUID,
};
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{
    SYS_setgroups32 as SYS_SETGROUPS, SYS_setresgid32 as SYS_SETRESGID,
    SYS_setresuid32 as SYS_SETRESUID,
};

impl ChildCredentials {
    fn prepare(creds: &Credentials) -> Result<ChildCredentials, Error> {
        // NGROUPS_MAX (include/uapi/linux/limits.h); the kernel answers EINVAL above it.
        const NGROUPS_MAX: usize = 65536;
        if creds.groups.len() > NGROUPS_MAX {
            return Err(Error::InvalidOptions(format!(
                "{} supplementary groups given; the kernel takes at most {NGROUPS_MAX}, pass \
                 fewer",
                creds.groups.len()
            )));
        }
        let last_cap = std::fs::read_to_string(CAP_LAST_CAP)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_LAST_CAP_GUESS);
        Ok(ChildCredentials {
            uid: creds.uid,
            gid: creds.gid,
            groups: creds.groups.clone(),
            last_cap,
        })
    }

    /// Becomes the user, with no capability left in any set and `no_new_privs` set.
    /// Returns the stage that failed and its errno.
    ///
    /// # Safety
    /// Only in the child between fork and exec (raw system calls on data prepared by the
    /// parent, nothing allocates).
    unsafe fn switch(&self) -> Result<(), (u32, i32)> {
        let errno = || *libc::__errno_location();
        for cap in 0..=self.last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                match errno() {
                    // A number this kernel does not know: past its last capability.
                    libc::EINVAL if cap > 0 => break,
                    e => return Err((STAGE_CAP_BOUNDING, e)),
                }
            }
        }
        let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        if libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) != 0 {
            match errno() {
                // Linux < 4.3 has no ambient set: nothing to clear.
                libc::EINVAL => {}
                e => return Err((STAGE_CAP_AMBIENT, e)),
            }
        }
        let (n, list) = (self.groups.len(), self.groups.as_ptr());
        if libc::syscall(SYS_SETGROUPS, n, list) != 0 {
            return Err((STAGE_SETGROUPS, errno()));
        }
        let gid = self.gid;
        if libc::syscall(SYS_SETRESGID, gid, gid, gid) != 0 {
            return Err((STAGE_SETGID, errno()));
        }
        let uid = self.uid;
        if libc::syscall(SYS_SETRESUID, uid, uid, uid) != 0 {
            return Err((STAGE_SETUID, errno()));
        }
        // Leaving uid 0 emptied the permitted and effective sets, but not the inheritable
        // one; and staying uid 0 kept them all.
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let empty = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header, empty.as_ptr()) != 0 {
            return Err((STAGE_CAPSET, errno()));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err((STAGE_NO_NEW_PRIVS, errno()));
        }
        Ok(())
    }
}

/// What a spawn into a new PID namespace needs, prepared before the clone.
struct PidNamespace {
    /// `CLONE_NEWPID`, with `CLONE_NEWUSER` where we lack `CAP_SYS_ADMIN`.
    flags: u64,
    /// Our own pidfd, inherited by the child (close-on-exec).
    own_pidfd: OwnedFd,
    /// Our PID in the PID namespace of the `/proc` mount (`readlink /proc/self`); 0 if
    /// that cannot be read.
    proc_pid: i32,
    /// `<euid> <euid> 1` and `<egid> <egid> 1`, for a new user namespace.
    id_maps: Option<[CString; 2]>,
}

impl PidNamespace {
    /// `credentials`: the child will switch to another user ([`ChildCredentials`]).
    fn prepare(credentials: bool) -> Result<PidNamespace, Error> {
        let privileged = rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::SYS_ADMIN)
        });
        if credentials && !privileged {
            return Err(Error::InvalidOptions(
                "credentials cannot be combined with pid_namespace without CAP_SYS_ADMIN (the \
                 job would get a user namespace of its own, mapping only this process's ids); \
                 spawn it as root or drop one of them"
                    .into(),
            ));
        }
        let pid = rustix::process::getpid();
        if rustix::thread::gettid() != pid {
            return Err(Error::InvalidOptions(
                "a PID namespace job must be spawned from the main thread (the kernel's \
                 parent-death signal follows the spawning thread, not the process); spawn it \
                 from the main thread or drop pid_namespace"
                    .into(),
            ));
        }
        let own_pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| {
                Error::sys(
                    "pidfd_open of this process (for the job's parent-death check)",
                    e,
                )
            })?;
        let proc_pid = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse().ok())
            .unwrap_or(0);
        if privileged {
            return Ok(PidNamespace {
                flags: CLONE_NEWPID,
                own_pidfd,
                proc_pid,
                id_maps: None,
            });
        }
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let line = |id: u32| CString::new(format!("{id} {id} 1\n")).expect("digits have no NUL");
        Ok(PidNamespace {
            flags: CLONE_NEWPID | CLONE_NEWUSER,
            own_pidfd,
            proc_pid,
            id_maps: Some([line(uid), line(gid)]),
        })
    }

    fn user_namespace(&self) -> bool {
        self.flags & CLONE_NEWUSER != 0
    }

    /// The error for a `clone3` with our flags that failed with `e`.
    fn refused(&self, e: io::Error) -> Error {
        let user = self.user_namespace();
        let flags = if user {
            "CLONE_NEWPID|CLONE_NEWUSER"
        } else {
            "CLONE_NEWPID"
        };
        let (reason, fix) = match e.raw_os_error() {
            Some(libc::ENOSYS | libc::E2BIG) | None => (
                "it needs clone3 (Linux 5.3; 5.7 with a cgroup), which this kernel (or a \
                 seccomp filter) does not offer"
                    .to_string(),
                "drop --pid-namespace",
            ),
            Some(libc::ENOSPC | libc::EUSERS) if user => (
                format!("clone3({flags}) hit a namespace limit"),
                "raise sysctl user.max_user_namespaces and user.max_pid_namespaces, or drop \
                 --pid-namespace",
            ),
            Some(libc::ENOSPC | libc::EUSERS) => (
                format!("clone3({flags}) hit a namespace limit"),
                "raise sysctl user.max_pid_namespaces (namespaces nest at most 32 deep), or \
                 drop --pid-namespace",
            ),
            _ if user => (
                format!(
                    "the kernel refused clone3({flags}) to this unprivileged user (user \
                     namespaces disabled, or a seccomp filter)"
                ),
                "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0; \
                 kernel.unprivileged_userns_clone=1 where it exists), run corral as root, or \
                 drop --pid-namespace",
            ),
            _ => (
                format!(
                    "the kernel refused clone3({flags}) (a seccomp filter or a container policy)"
                ),
                "run corral where new namespaces are allowed, or drop --pid-namespace",
            ),
        };
        Error::PidNamespace {
            reason,
            fix: fix.to_string(),
            source: e,
        }
    }
}

/// Spawns the job's main process.
pub(crate) fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, Error> {
    let program_str = spec.program.to_string_lossy().into_owned();
    let fail = |stage: &str, e: io::Error| Error::Spawn {
        program: program_str.clone(),
        stage: stage.to_string(),
        source: e,
    };
    let credentials = spec
        .credentials
        .map(ChildCredentials::prepare)
        .transpose()?;
    if credentials.is_some() && matches!(spec.placement, Placement::Detached { .. }) {
        return Err(Error::InvalidOptions(
            "credentials are not for a detached spawn".into(),
        ));
    }
    let pidns = spec
        .pid_namespace
        .then(|| PidNamespace::prepare(credentials.is_some()))
        .transpose()?;

    // Everything the child touches is built here, before the fork.
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes())
            .map_err(|_| Error::InvalidOptions(format!("{:?} contains a NUL byte; remove it", s)))
    };
    let mut argv_store = vec![cstr(spec.program)?];
    for a in spec.args {
        argv_store.push(cstr(a)?);
    }
    let env_pairs: Vec<(OsString, OsString)> = match spec.env {
        Some(e) => e.to_vec(),
        None => std::env::vars_os().collect(),
    };
    let mut env_store = Vec::with_capacity(env_pairs.len());
    for (k, v) in &env_pairs {
        let mut b = k.as_bytes().to_vec();
        b.push(b'=');
        b.extend_from_slice(v.as_bytes());
        env_store.push(CString::new(b).map_err(|_| {
            Error::InvalidOptions(format!(
                "environment variable {k:?} contains a NUL byte; remove it"
            ))
        })?);
    }
    if spec.program.is_empty() {
        return Err(Error::NotFound {
            program: program_str,
        });
    }
    let candidates = candidates(spec.program, &env_pairs)?;
    let cwd = spec.cwd.map(|p| cstr(p.as_os_str())).transpose()?;

    let (err_read, mut err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fail("create the exec status pipe", e.into()))?;
    if matches!(spec.placement, Placement::Detached { .. }) {
        // Out of the way of the numbers descriptors are passed at, which the child's dup2
        // would otherwise close under it.
        err_write = rustix::io::fcntl_dupfd_cloexec(&err_write, KEEP_ABOVE)
            .map_err(|e| fail("create the exec status pipe", e.into()))?;
    }

    let mut ctx = ChildCtx {
        candidates,
        argv: argv_store
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        envp: env_store
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        cwd,
        stdio: [-1; 3],
        // Filled in below, once every signal is blocked around the clone.
        // SAFETY: sigset_t is plain data; an all-zero set is the empty set.
        sigmask: unsafe { std::mem::zeroed() },
        move_via_procs: -1,
        new_pgroup: false,
        detach: false,
        keep: [(-1, -1); KEEP_MAX],
        err_pipe: err_write.as_raw_fd(),
        parent_pidfd: pidns.as_ref().map_or(-1, |n| n.own_pidfd.as_raw_fd()),
        parent_proc_pid: pidns.as_ref().map_or(0, |n| n.proc_pid),
        id_maps: pidns.as_ref().and_then(|n| n.id_maps.clone()),
        credentials,
        rlimits: raw_rlimits(spec.resource_limits),
    };
    let ns_flags = pidns.as_ref().map_or(0, |n| n.flags);
    for (i, fd) in spec.stdio.iter().enumerate() {
        ctx.stdio[i] = fd.map(|f| f.as_raw_fd()).unwrap_or(-1);
    }

    // No signal handler of the host may run in the child before exec (with CLONE_VM it
    // would run on our memory): block everything around the clone; the child resets the
    // handlers, then sets the mask it should exec with.
    let blocked = BlockedSignals::all().map_err(|e| fail("block signals", e))?;
    ctx.sigmask = match spec.sigmask {
        Some(set) => to_sigset(set),
        None => blocked.previous,
    };
    let (pid, pidfd, method) = match spec.placement {
        Placement::Cgroup {
            dir,
            procs,
            forbid_clone3,
        } => {
            let mut result = None;
            if let Some(ns) = &pidns {
                if forbid_clone3 {
                    return Err(Error::InvalidOptions(
                        "--pid-namespace needs clone3, which --debug-no-clone3 turns off; drop \
                         one of them"
                            .into(),
                    ));
                }
                if CLONE3_STATE.load(Ordering::Relaxed) == CLONE3_MISSING {
                    return Err(ns.refused(clone3_missing()));
                }
                // No fork fallback: any failure is the answer.
                let v =
                    clone3(CLONE_INTO_CGROUP | ns_flags, Some(dir), &ctx).map_err(|e| {
                        match e.raw_os_error() {
                            Some(libc::EAGAIN | libc::ENOMEM) => fail("clone3", e),
                            _ => ns.refused(e),
                        }
                    })?;
                result = Some((v.0, v.1, SpawnMethod::Clone3IntoCgroup));
            } else if !forbid_clone3 && CLONE3_STATE.load(Ordering::Relaxed) != CLONE3_MISSING {
                match clone3(CLONE_INTO_CGROUP, Some(dir), &ctx) {
                    Ok(v) => {
                        CLONE3_STATE.store(CLONE3_WORKS, Ordering::Relaxed);
                        result = Some((v.0, v.1, SpawnMethod::Clone3IntoCgroup));
                    }
                    // ENOSYS: no clone3 (< 5.3). E2BIG: clone3 without the `cgroup` field
                    // (< 5.7). EPERM/ENOSYS also come from seccomp filters that block clone3.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOSYS | libc::E2BIG | libc::EPERM)
                        ) =>
                    {
                        CLONE3_STATE.store(CLONE3_MISSING, Ordering::Relaxed);
                    }
                    // EINVAL/EOPNOTSUPP/EBUSY here are about this cgroup, not the kernel:
                    // try the fallback for this spawn only, which reports its own error.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                        return Err(fail("clone3", e));
                    }
                    Err(_) => {}
                }
            }
            match result {
                Some(r) => r,
                None => {
                    ctx.move_via_procs = procs.as_raw_fd();
                    let (pid, fd) = fork_with_pidfd(&ctx).map_err(|e| fail("fork", e))?;
                    (pid, fd, SpawnMethod::ForkThenMove)
                }
            }
        }
        Placement::NewProcessGroup | Placement::Detached { .. } => {
            if let Placement::Detached { keep } = spec.placement {
                if keep.len() > KEEP_MAX || keep.iter().any(|(_, n)| !(3..KEEP_ABOVE).contains(n)) {
                    return Err(fail(
                        "pass descriptors",
                        io::Error::from_raw_os_error(libc::EINVAL),
                    ));
                }
                ctx.detach = true;
                for (slot, (fd, n)) in ctx.keep.iter_mut().zip(keep) {
                    *slot = (fd.as_raw_fd(), *n);
                }
            } else {
                ctx.new_pgroup = true;
            }
            let mut result = None;
            if let Some(ns) = &pidns {
                if CLONE3_STATE.load(Ordering::Relaxed) == CLONE3_MISSING {
                    return Err(ns.refused(clone3_missing()));
                }
                let v = clone3(ns_flags, None, &ctx).map_err(|e| match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::ENOMEM) => fail("clone3", e),
                    _ => ns.refused(e),
                })?;
                result = Some((v.0, v.1, SpawnMethod::Clone3));
            } else if CLONE3_STATE.load(Ordering::Relaxed) != CLONE3_MISSING {
                match clone3(0, None, &ctx) {
                    Ok(v) => result = Some((v.0, v.1, SpawnMethod::Clone3)),
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {}
                    Err(e) => return Err(fail("clone3", e)),
                }
            }
            match result {
                Some(r) => r,
                None => {
                    let (pid, fd) = fork_with_pidfd(&ctx).map_err(|e| fail("fork", e))?;
                    (pid, fd, SpawnMethod::Fork)
                }
            }
        }
    };
    if ctx.new_pgroup {
        // Also from the parent, so the group exists before we return whichever runs first
        // (the usual shell idiom). EACCES after the child exec'd is fine: it did it itself.
        let _ = rustix::process::setpgid(Some(pid.rustix()), Some(pid.rustix()));
    }
    drop(blocked);
    drop(err_write);
    // Wait for exec: EOF means it succeeded (the pipe is close-on-exec); 8 bytes mean a
    // step failed. A detached spawn's middle process first sends the grandchild's PID.
    let mut buf = [0u8; 16];
    let got = crate::linux::channel::read_until_closed(err_read.as_fd(), &mut buf)
        .map_err(|e| fail("read the exec status pipe", e))?;
    drop(argv_store);
    drop(env_store);
    let record = |at: usize| {
        (at + 8 <= got).then(|| {
            (
                u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()),
                i32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap()),
            )
        })
    };
    // The grandchild's failure (if any) comes before the middle process's record when the
    // middle process waited for it (vfork-style), after it otherwise.
    let mut daemon = None;
    let mut failure = None;
    for (stage, value) in [record(0), record(8)].into_iter().flatten() {
        match stage {
            RECORD_DAEMON => daemon = Pid::from_raw(value),
            _ => failure = Some((stage, value)),
        }
    }
    let Some((stage, errno)) = failure else {
        return Ok(Spawned {
            pid,
            pidfd,
            method,
            daemon,
            pid_namespace: pidns.as_ref().map(PidNamespace::user_namespace),
        });
    };
    // The child failed before exec and has _exit'ed: reap it so nothing is left behind.
    // (A detached grandchild that failed is init's to reap.)
    let _ = pidfd::reap(pidfd.as_fd(), true);
    let err = io::Error::from_raw_os_error(errno);
    Err(match stage {
        STAGE_EXEC => match errno {
            libc::ENOENT | libc::ENOTDIR => Error::NotFound {
                program: program_str,
            },
            _ => Error::NotExecutable {
                program: program_str,
                source: err,
            },
        },
        STAGE_CGROUP => fail("move into the job cgroup through cgroup.procs", err),
        STAGE_SETPGID => fail("create a process group (setpgid)", err),
        STAGE_STDIO => fail("set up stdin/stdout/stderr", err),
        STAGE_SIGNALS => fail("restore the signal mask", err),
        STAGE_SETSID => fail("start a new session (setsid)", err),
        STAGE_FORK => fail("fork the daemon", err),
        STAGE_KEEP => fail("pass descriptors", err),
        STAGE_PDEATHSIG => fail("set the parent-death signal (prctl)", err),
        STAGE_PARENT_GONE => fail("check that its parent (this process) is still there", err),
        STAGE_CAP_BOUNDING => fail(
            "drop the capability bounding set (prctl PR_CAPBSET_DROP; needs CAP_SETPCAP)",
            err,
        ),
        STAGE_CAP_AMBIENT => fail(
            "clear the ambient capabilities (prctl PR_CAP_AMBIENT_CLEAR_ALL)",
            err,
        ),
        STAGE_SETGROUPS => fail(
            "set the supplementary groups (setgroups; needs CAP_SETGID)",
            err,
        ),
        STAGE_SETGID => fail("set the group id (setresgid; needs CAP_SETGID)", err),
        STAGE_SETUID => fail("set the user id (setresuid; needs CAP_SETUID)", err),
        STAGE_CAPSET => fail("empty the capability sets (capset)", err),
        STAGE_NO_NEW_PRIVS => fail("set no_new_privs (prctl PR_SET_NO_NEW_PRIVS)", err),
        STAGE_ID_MAPS => fail(
            "map its uid and gid in the new user namespace (/proc/self/uid_map, gid_map)",
            err,
        ),
        STAGE_CHDIR => fail(
            &format!(
                "change directory to {:?}",
                spec.cwd.unwrap_or(Path::new(""))
            ),
            err,
        ),
        s if (STAGE_RLIMIT..STAGE_RLIMIT + spec.resource_limits.len() as u32).contains(&s) => {
            let l = spec.resource_limits[(s - STAGE_RLIMIT) as usize];
            let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
            fail(
                &format!(
                    "set {} to {} (soft) and {} (hard) (prlimit64; above the hard limit needs \
                     CAP_SYS_RESOURCE)",
                    l.resource.name(),
                    show(l.soft),
                    show(l.hard)
                ),
                err,
            )
        }
        _ => fail("prepare the child", err),
    })
}

/// The cause given when an earlier spawn found `clone3` missing (the probe is cached).
fn clone3_missing() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "an earlier spawn found clone3 missing (ENOSYS, E2BIG or EPERM)",
    )
}

/// The paths `execve` will try, in order, as `execvp` would: the program itself if it
/// contains a slash, else each `PATH` entry (the child's `PATH`).
fn candidates(program: &OsStr, env: &[(OsString, OsString)]) -> Result<Vec<CString>, Error> {
    let nul = || Error::InvalidOptions(format!("{program:?} contains a NUL byte; remove it"));
    if program.as_bytes().contains(&b'/') {
        return Ok(vec![CString::new(program.as_bytes()).map_err(|_| nul())?]);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut out = Vec::new();
    for dir in path.as_bytes().split(|b| *b == b':') {
        let mut p = if dir.is_empty() {
            b".".to_vec()
        } else {
            dir.to_vec()
        };
        p.push(b'/');
        p.extend_from_slice(program.as_bytes());
        out.push(CString::new(p).map_err(|_| nul())?);
    }
    Ok(out)
}

fn clone3(
    extra_flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    ctx: &ChildCtx,
) -> io::Result<(Pid, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | extra_flags,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.cgroup = fd.as_raw_fd() as u64;
    }
    let ret = clone3_raw(&mut args, ctx)?;
    let pid = Pid::from_raw(ret as i32).expect("clone3 returned a positive pid");
    // SAFETY: the kernel stored a new, owned, close-on-exec pidfd there (CLONE_PIDFD).
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid, fd))
}

/// `clone3` the way `posix_spawn` uses `vfork`: `CLONE_VM | CLONE_VFORK`, the child on a
/// stack of its own, the parent suspended until the child has exec'd or exited. Nothing of
/// our address space is copied, so the cost does not grow with the embedding program's
/// memory (a full fork copies its page tables). Returns the child's PID in the parent.
///
/// Not for a child that changes its ids ([`ChildCtx::credentials`]): the kernel would mark
/// the memory it shares with us not dumpable (`commit_creds` calls `set_dumpable` on the
/// process's `mm`), so that one gets a copy, as with `fork`.
#[cfg(target_arch = "x86_64")]
fn clone3_raw(args: &mut CloneArgs, ctx: &ChildCtx) -> io::Result<i64> {
    if ctx.credentials.is_some() {
        return clone3_fork(args, ctx);
    }
    clone3_vfork(args, ctx, child_entry)
}

/// Elsewhere: `clone3` with fork semantics.
#[cfg(not(target_arch = "x86_64"))]
fn clone3_raw(args: &mut CloneArgs, ctx: &ChildCtx) -> io::Result<i64> {
    clone3_fork(args, ctx)
}

/// The vfork-style `clone3` of [`clone3_raw`], the child starting in `entry(ctx)`.
#[cfg(target_arch = "x86_64")]
fn clone3_vfork(
    args: &mut CloneArgs,
    ctx: &ChildCtx,
    entry: extern "C" fn(*const std::ffi::c_void) -> !,
) -> io::Result<i64> {
    const STACK: usize = 256 * 1024;
    let stack = Stack::new(STACK)?;
    args.flags |= CLONE_VM | CLONE_VFORK;
    // SAFETY: `ctx` lives in the caller's frame, which stays valid because the parent is
    // suspended until the child execs or exits (CLONE_VFORK); so is `stack`, unmapped only
    // when it drops, after this returns.
    let ret = unsafe { clone3_on_stack(args, &stack, ctx as *const ChildCtx as *const _, entry) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret)
}

#[cfg(target_arch = "x86_64")]
pub(crate) const CLONE_VM: u64 = 0x100;
#[cfg(target_arch = "x86_64")]
pub(crate) const CLONE_FILES: u64 = 0x400;
#[cfg(target_arch = "x86_64")]
pub(crate) const CLONE_VFORK: u64 = 0x4000;

#[cfg(target_arch = "x86_64")]
/// A stack for a child that shares our memory: a private anonymous mapping, unmapped when
/// dropped (only once no child runs on it any more).
pub(crate) struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

#[cfg(target_arch = "x86_64")]
impl Stack {
    pub(crate) fn new(len: usize) -> io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping, ours alone.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Stack { base, len })
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the owner drops it only once no child uses it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

// SAFETY: a mapping, usable from any thread; who may run on it is the owner's rule.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for Stack {}

/// `clone3(args)` with the child on `stack`, starting in `entry(arg)`; returns what the
/// system call returned in the parent (the child's PID, or -errno). `args.flags` says how
/// much the child shares (a child without `CLONE_VM` gets a copy of the stack too).
///
/// # Safety
/// `arg` and `stack` must stay valid for as long as the child may use them, and `entry`
/// must never return; a child sharing our memory may only make raw system calls and touch
/// memory no thread of ours changes meanwhile (no allocation, no thread-local state, no
/// panics).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn clone3_on_stack(
    args: &mut CloneArgs,
    stack: &Stack,
    arg: *const std::ffi::c_void,
    entry: extern "C" fn(*const std::ffi::c_void) -> !,
) -> i64 {
    args.stack = stack.base as u64;
    args.stack_size = stack.len as u64;
    let ret: i64;
    // SAFETY (the caller's, above): `args` is a valid clone_args of the size passed. In the
    // child the kernel returns 0 with the stack pointer at the top of `stack` (16-byte
    // aligned) and every other register as in the parent, so r12/r13 still hold `arg` and
    // `entry`; it calls `entry(arg)`, which never returns. In the parent, the asm touches no
    // stack and clobbers only rax, rcx and r11.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") args as *mut CloneArgs,
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

/// `clone3` with fork semantics (the child gets a copy of our address space).
fn clone3_fork(args: &mut CloneArgs, ctx: &ChildCtx) -> io::Result<i64> {
    // SAFETY: `args` is a valid clone_args of the size we pass; no CLONE_VM, so the child
    // gets a copy of our address space and runs only `child_after_fork`, which never
    // returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        child_after_fork(ctx);
    }
    Ok(ret as i64)
}

/// The child's first Rust frame on its own stack (vfork-style clone3).
#[cfg(target_arch = "x86_64")]
extern "C" fn child_entry(ctx: *const std::ffi::c_void) -> ! {
    // SAFETY: `ctx` points to a `ChildCtx` in the suspended parent's frame (see `clone3_raw`).
    child_after_fork(unsafe { &*(ctx as *const ChildCtx) })
}

/// The same for the grandchild of a [`Placement::Detached`] spawn: it is detached already.
#[cfg(target_arch = "x86_64")]
extern "C" fn grandchild_entry(ctx: *const std::ffi::c_void) -> ! {
    // SAFETY: as for `child_entry`: the parent and the middle process are both suspended
    // until the grandchild has exec'd or exited.
    child_setup_and_exec(unsafe { &*(ctx as *const ChildCtx) })
}

/// The middle process of a [`Placement::Detached`] spawn creates the grandchild that will
/// run the program. On x86_64 vfork-style, like the first child: nothing of the host's
/// memory is copied (a plain fork would copy its page tables, which costs in proportion to
/// the host's size), and the middle process is suspended until the grandchild has exec'd
/// or exited. Elsewhere a bare `fork` (no `pthread_atfork` handlers). Returns the
/// grandchild's PID, or -errno.
///
/// # Safety
/// Only from `child_after_fork` (async-signal-safe calls, nothing allocates).
unsafe fn spawn_grandchild(ctx: &ChildCtx) -> i64 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        match clone3_vfork(&mut args, ctx, grandchild_entry) {
            Ok(pid) => pid,
            Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let pid = crate::linux::postfork::raw_fork();
        if pid == 0 {
            child_setup_and_exec(ctx);
        }
        if pid < 0 {
            -(*libc::__errno_location() as i64)
        } else {
            pid as i64
        }
    }
}

fn to_sigset(set: crate::options::SignalSet) -> libc::sigset_t {
    // SAFETY: plain data, initialised by sigemptyset before use.
    unsafe {
        let mut out: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut out);
        for sig in set.iter() {
            libc::sigaddset(&mut out, sig.as_raw());
        }
        out
    }
}

/// Every signal blocked on this thread until dropped, which restores the previous mask.
pub(crate) struct BlockedSignals {
    previous: libc::sigset_t,
}

impl BlockedSignals {
    pub(crate) fn all() -> io::Result<BlockedSignals> {
        // SAFETY: plain data in and out of pthread_sigmask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut previous: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(BlockedSignals { previous })
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

fn fork_with_pidfd(ctx: &ChildCtx) -> io::Result<(Pid, OwnedFd)> {
    // SAFETY: as for clone3: the child runs only `child_after_fork`.
    let ret = unsafe { libc::fork() };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        child_after_fork(ctx);
    }
    let pid = Pid::from_raw(ret).expect("fork returned a positive pid");
    // Race-free: the child is ours and unreaped, so its PID cannot be reused yet.
    match pidfd::open(pid) {
        Ok(fd) => Ok((pid, fd)),
        Err(e) => {
            // Without a pidfd we cannot supervise it; do not leave it running.
            // SAFETY: plain syscalls on our own unreaped child's PID, which cannot be reused
            // before the waitpid below.
            unsafe {
                libc::kill(ret, libc::SIGKILL);
                libc::waitpid(ret, std::ptr::null_mut(), 0);
            }
            Err(e)
        }
    }
}

/// The parent's PID from `/proc/self/stat` (field 4, after the command name in
/// parentheses), in the PID namespace of the `/proc` mount; 0 if it cannot be read. For
/// the child between fork and exec: raw syscalls, a buffer on the stack.
fn proc_parent() -> i32 {
    let mut buf = [0u8; 1024];
    // SAFETY: open/read/close of a constant path into a stack buffer of the size given.
    let len = unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let stat = &buf[..len];
    // "<pid> (<comm>) <state> <ppid> ...": the command name may hold ") ", so the last ")".
    let Some(close) = stat.iter().rposition(|b| *b == b')') else {
        return 0;
    };
    let mut fields = stat[close + 1..]
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty());
    let _state = fields.next();
    let mut ppid: i32 = 0;
    for digit in fields.next().unwrap_or(b"") {
        if !digit.is_ascii_digit() {
            return 0;
        }
        ppid = ppid
            .saturating_mul(10)
            .saturating_add(i32::from(digit - b'0'));
    }
    ppid
}

/// The child between fork and exec. Only raw syscalls; see the module docs.
fn child_after_fork(ctx: &ChildCtx) -> ! {
    // SAFETY (whole function): every call is an async-signal-safe system call on
    // descriptors and buffers that were prepared by the parent and stay valid in this copy
    // of its address space; nothing allocates, locks or unwinds.
    unsafe {
        let report = |stage: u32, errno: i32| -> ! { report_and_exit(ctx, stage, errno) };
        let errno = || *libc::__errno_location();

        if ctx.detach {
            // A session of its own before anything else, so no signal meant for our
            // process group or session (a killpg, the terminal's) can reach what runs here.
            if libc::setsid() < 0 {
                report(STAGE_SETSID, errno());
            }
            let pid = spawn_grandchild(ctx);
            if pid < 0 {
                report(STAGE_FORK, -pid as i32);
            }
            // The middle process: name the grandchild, and go. The grandchild is
            // re-parented (to init, or the nearest subreaper), never our child.
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&RECORD_DAEMON.to_ne_bytes());
            buf[4..].copy_from_slice(&(pid as i32).to_ne_bytes());
            libc::write(ctx.err_pipe, buf.as_ptr().cast(), buf.len());
            libc::_exit(0);
        }
        child_setup_and_exec(ctx)
    }
}

/// Tells the parent which step failed with which errno, and exits 127.
///
/// # Safety
/// Only in the child (async-signal-safe: one `write`, then `_exit`).
unsafe fn report_and_exit(ctx: &ChildCtx, stage: u32, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&stage.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(ctx.err_pipe, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

/// The child's (or a detached spawn's grandchild's) set-up, then `exec`. Only raw
/// syscalls; see the module docs.
fn child_setup_and_exec(ctx: &ChildCtx) -> ! {
    // SAFETY (whole function): as for `child_after_fork`.
    unsafe {
        let report = |stage: u32, errno: i32| -> ! { report_and_exit(ctx, stage, errno) };
        let errno = || *libc::__errno_location();

        if ctx.move_via_procs >= 0 {
            // "0" moves the writing process itself. (Never with a new PID namespace, which
            // has no fork fallback.)
            if libc::write(ctx.move_via_procs, b"0".as_ptr().cast(), 1) != 1 {
                report(STAGE_CGROUP, errno());
            }
        }
        if let Err((i, e)) = set_rlimits(&ctx.rlimits) {
            report(STAGE_RLIMIT + i as u32, e);
        }
        if let Some(creds) = &ctx.credentials {
            // Placed with our privileges; from here on the job's user, with none. Before
            // PR_SET_PDEATHSIG, which a change of euid or egid clears.
            if let Err((stage, e)) = creds.switch() {
                report(stage, e);
            }
        }
        if ctx.parent_pidfd >= 0 {
            // PID 1 of a new namespace: die with the spawning thread. If corral died before
            // the prctl took effect, no signal will come: its pidfd says so.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                report(STAGE_PDEATHSIG, errno());
            }
            let mut pfd = libc::pollfd {
                fd: ctx.parent_pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            match libc::poll(&mut pfd, 1, 0) {
                0 => {}
                // Readable: corral has exited, nobody is there to read this.
                1 => report(STAGE_PARENT_GONE, libc::ESRCH),
                _ => report(STAGE_PARENT_GONE, errno()),
            }
            // The pidfd turns readable a few instructions after the kernel has re-parented
            // us and read our (maybe not yet set) parent-death signal: in that window only
            // our parent as /proc shows it tells. (`getppid()` says 0 in a new namespace.)
            let parent = proc_parent();
            if ctx.parent_proc_pid > 0 && parent > 0 && parent != ctx.parent_proc_pid {
                report(STAGE_PARENT_GONE, libc::ESRCH);
            }
        }
        if let Some([uid_map, gid_map]) = &ctx.id_maps {
            // Our own ids, 1:1 (the only mapping an unprivileged process may write, and for
            // gid_map only once setgroups is denied).
            for (path, line) in [
                (c"/proc/self/setgroups", c"deny"),
                (c"/proc/self/uid_map", uid_map.as_c_str()),
                (c"/proc/self/gid_map", gid_map.as_c_str()),
            ] {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    report(STAGE_ID_MAPS, errno());
                }
                let len = line.to_bytes().len();
                if libc::write(fd, line.as_ptr().cast(), len) != len as isize {
                    report(STAGE_ID_MAPS, errno());
                }
                libc::close(fd);
            }
        }
        if ctx.new_pgroup && libc::setpgid(0, 0) != 0 {
            report(STAGE_SETPGID, errno());
        }
        // Move the caller's descriptors above 2 first, so one dup2 cannot clobber the source
        // of the next.
        let mut moved = [-1; 3];
        for (slot, src) in moved.iter_mut().zip(ctx.stdio) {
            if src >= 0 {
                let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 3);
                if fd < 0 {
                    report(STAGE_STDIO, errno());
                }
                *slot = fd;
            }
        }
        for (i, fd) in moved.iter().enumerate() {
            if *fd >= 0 && libc::dup2(*fd, i as i32) < 0 {
                report(STAGE_STDIO, errno());
            }
        }
        // Descriptors passed at fixed numbers: first above every target (so one dup2
        // cannot clobber the source of the next), then into place, without close-on-exec.
        let mut kept = [-1; KEEP_MAX];
        for (slot, (src, _)) in kept.iter_mut().zip(ctx.keep) {
            if src >= 0 {
                let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, KEEP_ABOVE);
                if fd < 0 {
                    report(STAGE_KEEP, errno());
                }
                *slot = fd;
            }
        }
        for (fd, (_, target)) in kept.iter().zip(ctx.keep) {
            if *fd >= 0 && libc::dup2(*fd, target) < 0 {
                report(STAGE_KEEP, errno());
            }
        }
        // Signals: the mask corral found (not the one it uses for itself), and SIGPIPE back
        // to its default (the Rust runtime ignores it in corral; COMMAND should not inherit
        // that).
        if let Some(cwd) = &ctx.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                report(STAGE_CHDIR, errno());
            }
        }
        // Handlers the host installed go back to their default while every signal is still
        // blocked (exec would reset them anyway; this closes the window before it), ignored
        // signals stay ignored, and SIGPIPE goes back to its default: the Rust runtime
        // ignores it in corral, and COMMAND should not inherit that.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) == 0
                && (sig == libc::SIGPIPE
                    || (cur.sa_sigaction != libc::SIG_DFL && cur.sa_sigaction != libc::SIG_IGN))
            {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::pthread_sigmask(libc::SIG_SETMASK, &ctx.sigmask, std::ptr::null_mut()) != 0 {
            report(STAGE_SIGNALS, errno());
        }
        // execvp's rules: ENOENT/ENOTDIR move on to the next PATH entry; EACCES is
        // remembered (a later entry may still work) and reported if nothing does.
        let mut last = libc::ENOENT;
        let mut saw_eacces = false;
        for c in &ctx.candidates {
            libc::execve(c.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr());
            let e = errno();
            match e {
                libc::ENOENT
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ENAMETOOLONG
                | libc::ESTALE
                | libc::ENODEV
                | libc::ETIMEDOUT => last = e,
                libc::EACCES => saw_eacces = true,
                _ => report(STAGE_EXEC, e),
            }
        }
        report(STAGE_EXEC, if saw_eacces { libc::EACCES } else { last })
    }
}
