//! The job registry: every running job has a record, so other processes can list
//! (`corral ps`), stop (`corral kill`) and clean up after (`corral sweep`) jobs whose
//! supervisor they are not.
//!
//! **Where.** One directory per user: `CORRAL_RUNTIME_DIR` when set (tests isolate
//! themselves with it), else `/run/corral` for root, else `$XDG_RUNTIME_DIR/corral`, else
//! `/tmp/corral-<uid>`. corral creates it with mode 0700 and refuses one that is not a real
//! directory (a symlink is refused), not owned by the effective user, or open to group or
//! others: a directory another user can write to could feed us records.
//!
//! **What.** `<dir>/<id>.json`, written to a temporary file in the same directory and
//! renamed into place (never replacing an existing record), so a reader sees a whole record
//! or none: version, id, name, owner uid, the supervisor (PID and start time, field 22 of
//! `/proc/<pid>/stat`, so a reused PID is never taken for it), mechanism, cgroup, command,
//! start time, limits and the control socket. The supervisor is the process that holds the
//! [`crate::Job`]: the `corral run` process, or a program embedding the library. It removes
//! the record and the socket when the job is over (or dropped, or detached: a detached job is
//! no longer corral's to stop, so it leaves the registry).
//!
//! **Outside stop.** Each job listens on `<dir>/<id>.sock` (`SOCK_SEQPACKET`). Both drivers
//! of the job (blocking and tokio) poll the listening socket with the job's other
//! descriptors, so a request is served while the job runs, without a thread. The job checks
//! the caller with `SO_PEERCRED` (the job's owner or root), reads one request (`stop <signal>
//! <grace_ms>` or `kill`), answers `ok`, `denied` or `bad request`, starts the stop ladder
//! with reason `external`, and keeps the connection open until the job is over: the
//! requester learns that the job ended when the socket closes. Both ends encode and decode
//! the words in one place, `src/control.rs`.
//!
//! **Stale jobs.** A record whose supervisor is not alive (no process with that PID and
//! start time) is stale: [`sweep`] kills what is left in its cgroup, removes the cgroup, the
//! record and the socket. It trusts a record's cgroup only if the directory lies under the
//! cgroup2 mount (no `..`) and is owned by the record's owner: otherwise a user could write
//! a record naming someone else's cgroup and have root's sweep kill it. A pgroup job whose
//! supervisor died has no cgroup to find its processes by; its record is removed and the
//! sweep says so.
//!
//! Records another user could not have written are refused: a record's `uid` must match its
//! file's owner and its directory's owner. A corrupt or half-written record is reported and
//! skipped, never fatal.
//!
//! The registry needs the `serde` feature (records are JSON); without it jobs are not
//! registered, and their reports say so. The layout and the reasoning are in
//! `docs/registry.md`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

use crate::control::{self, Answer};
use crate::linux::cgroup;
use crate::linux::pidfd::Pid;
use crate::linux::procs;
use crate::options::Signal;

/// The environment variable that names the registry directory (tests, and hosts that want
/// their jobs apart).
pub const RUNTIME_DIR_ENV: &str = "CORRAL_RUNTIME_DIR";
/// Version of the record format.
pub const RECORD_VERSION: u32 = 1;

/// What went wrong in the job registry. Each message is one whole line for the user, the
/// cause within it (`corral ps`, `corral kill` and `corral sweep` print it as it is; a
/// report's `not_registered` holds it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job name that is not 1-64 characters of `[A-Za-z0-9._-]` not starting with `.`.
    #[error(
        "invalid job name `{}`; use 1-64 characters of A-Z a-z 0-9 . _ - not starting with `.`",
        .name.escape_debug()
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },

    /// The registry directory is missing and cannot be created.
    #[error(
        "cannot create the job registry {} ({error}); set {} to a directory of yours",
        .dir.display(),
        RUNTIME_DIR_ENV
    )]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why `mkdir` failed.
        error: io::Error,
    },

    /// The registry directory cannot be looked at.
    #[error(
        "cannot use the job registry {} ({error}); create it (mode 0700) or set {}",
        .dir.display(),
        RUNTIME_DIR_ENV
    )]
    StatDir {
        /// The directory.
        dir: PathBuf,
        /// Why `lstat` failed.
        error: io::Error,
    },

    /// The registry directory is one others could feed records through.
    #[error(
        "the job registry {} {problem}; remove it, or chmod 0700 it, or set {}",
        .dir.display(),
        RUNTIME_DIR_ENV
    )]
    UnsafeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: DirProblem,
    },

    /// No job of this user has that id or name (another user's job is not told about).
    #[error("no such job `{job}`; `corral ps` lists your jobs")]
    NoSuchJob {
        /// The id or name as given.
        job: String,
    },

    /// More than one job has that name.
    #[error("{count} jobs are named `{job}`; give the id instead (`corral ps` lists them)")]
    AmbiguousName {
        /// The name as given.
        job: String,
        /// How many jobs have it.
        count: usize,
    },

    /// The socket to reach a job with could not be made.
    #[error("socket(AF_UNIX, SOCK_SEQPACKET) failed: {0}")]
    Socket(io::Error),

    /// A job's control socket path cannot be connected to.
    #[error("bad socket path {}: {error}", .socket.display())]
    SocketPath {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: io::Error,
    },

    /// A job's supervisor is alive but does not take connections on its control socket.
    #[error(
        "cannot reach job {id} at {}: {error}; is its supervisor (pid {supervisor}) still \
         serving it?",
        .socket.display()
    )]
    Unreachable {
        /// The job's id.
        id: String,
        /// Its control socket.
        socket: PathBuf,
        /// Its supervisor's PID.
        supervisor: u32,
        /// Why `connect` failed.
        error: io::Error,
    },

    /// The request could not be sent to a job.
    #[error("cannot send the request to job {id}: {error}")]
    Send {
        /// The job's id.
        id: String,
        /// Why.
        error: io::Error,
    },

    /// A job did not answer a request in time (or its socket failed).
    #[error("no answer from job {id}: {error}")]
    NoAnswer {
        /// The job's id.
        id: String,
        /// Why.
        error: io::Error,
    },

    /// A job refused the request: it is another user's (and its existence is not told).
    #[error("no such job `{id}`")]
    Denied {
        /// The job's id.
        id: String,
    },

    /// A job answered something else than a request's answers.
    #[error("job {id} answered `{answer}`")]
    Answer {
        /// The job's id.
        id: String,
        /// The answer.
        answer: String,
    },

    /// Waiting for a job to be over failed.
    #[error("{0}")]
    Wait(crate::Error),

    /// This process's own start time cannot be read (`/proc/<pid>/stat`), so it cannot be
    /// recorded as a job's supervisor.
    #[error("cannot read /proc/{pid}/stat ({error})")]
    OwnStat {
        /// This process's PID.
        pid: u32,
        /// Why.
        error: io::Error,
    },

    /// This process's `/proc/<pid>/stat` has no start time where it should.
    #[error("cannot parse /proc/{pid}/stat")]
    OwnStatFormat {
        /// This process's PID.
        pid: u32,
    },

    /// A running job already has the record a new job's id needs.
    #[error(
        "a running job (supervisor pid {supervisor}) already has the record {}",
        .record.display()
    )]
    IdTaken {
        /// That job's supervisor.
        supervisor: u32,
        /// The record.
        record: PathBuf,
    },

    /// Something that is not a record lies where a new job's record goes.
    #[error("{} is in the way: {why}", .record.display())]
    InTheWay {
        /// The record's path.
        record: PathBuf,
        /// What is wrong with what lies there.
        why: String,
    },

    /// A stale control socket under a new job's id cannot be removed.
    #[error("cannot remove the stale {} ({error})", .socket.display())]
    StaleSocket {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: io::Error,
    },

    /// A job's control socket cannot be made.
    #[error("socket(AF_UNIX, SOCK_SEQPACKET): {0}")]
    ListenSocket(io::Error),

    /// A job's control socket path cannot be bound to (too long, say).
    #[error("socket path {} unusable ({error})", .socket.display())]
    ListenPath {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: io::Error,
    },

    /// A job's control socket cannot be bound.
    #[error("bind {}: {error}", .socket.display())]
    Bind {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: io::Error,
    },

    /// A job's control socket cannot listen.
    #[error("listen on {}: {error}", .socket.display())]
    Listen {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: io::Error,
    },

    /// A job's record cannot be written.
    #[error("cannot write {} ({error})", .record.display())]
    WriteRecord {
        /// The record.
        record: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// What makes a registry directory unsafe to use ([`Error::UnsafeDir`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirProblem {
    /// It is not a directory, or it is a symbolic link.
    NotADirectory,
    /// Another user owns it.
    Owner {
        /// Its owner.
        owner: u32,
        /// This user.
        expected: u32,
    },
    /// Group or others can write to it.
    OpenToOthers {
        /// Its permission bits.
        mode: u32,
    },
}

impl std::fmt::Display for DirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirProblem::NotADirectory => f.write_str("is not a directory (or is a symlink)"),
            DirProblem::Owner { owner, expected } => {
                write!(f, "is owned by uid {owner}, not {expected}")
            }
            DirProblem::OpenToOthers { mode } => {
                write!(f, "is writable by group or others (mode {mode:o})")
            }
        }
    }
}

/// One job's record, as stored in `<dir>/<id>.json` (see `docs/registry.md`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The job's id.
    pub id: String,
    /// The name given with `--name` / [`crate::Options::name`].
    pub name: Option<String>,
    /// The job's owner (the supervisor's effective uid).
    pub uid: u32,
    /// The process serving the job.
    pub supervisor: SupervisorId,
    /// `cgroup` or `pgroup`.
    pub mechanism: String,
    /// The job's cgroup (cgroup mechanism).
    pub cgroup: Option<PathBuf>,
    /// The command line.
    pub command: Vec<String>,
    /// When the job started, in milliseconds since the Unix epoch.
    pub started: u64,
    /// The limit files written in the job's cgroup, with their values.
    pub limits: BTreeMap<String, String>,
    /// The job's control socket.
    pub socket: PathBuf,
    /// The unprivileged user a privileged helper (`corral-helper`) runs the job for; `uid`
    /// is then the helper's (root). Absent for other jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<u32>,
    /// The cgroup the supervisor ran in when it started the job, as `/proc/<pid>/cgroup`
    /// names it (`/` is the root): a job whose supervisor ran inside another job's cgroup
    /// is nested in that job ([`outer_jobs`]). Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
}

/// A process named so that a reused PID is not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SupervisorId {
    /// Its PID.
    pub pid: u32,
    /// Its start time: field 22 of `/proc/<pid>/stat`, clock ticks since boot.
    pub start_time: u64,
}

impl SupervisorId {
    /// Whether that very process is alive now (its PID holds a process with its start
    /// time, not a zombie). One small read, parsed by hand: the start-up sweep does this
    /// for every record.
    pub fn alive(&self) -> bool {
        if self.pid <= 1 {
            return false;
        }
        let Ok(text) = crate::linux::read_proc_file(&format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let state = text
            .rfind(')')
            .and_then(|i| text[i + 1..].split_whitespace().next());
        start_time_field(&text) == Some(self.start_time) && !matches!(state, Some("Z" | "X"))
    }

    fn stat(&self) -> Option<procs::Stat> {
        let pid = Pid::from_raw(i32::try_from(self.pid).ok()?)?;
        procs::stat(pid).filter(|s| s.starttime == self.start_time && s.alive())
    }

    /// A pidfd for that very process, `None` if it is gone.
    fn open(&self) -> Option<OwnedFd> {
        procs::open_verified(&self.stat()?)
    }
}

/// A record found in the registry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record.
    pub record: Record,
    /// Its file.
    pub path: PathBuf,
    /// Whether its supervisor is alive.
    pub live: bool,
    /// The registry directory it was read from, opened without following a link: what is
    /// removed is removed there, whatever the path names by then.
    dir: Option<Arc<OwnedFd>>,
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The readable records.
    pub entries: Vec<Entry>,
    /// One line per record that could not be used (corrupt, half-written, wrong owner),
    /// or directory that could not be read.
    pub problems: Vec<String>,
    /// Files a corral killed while it registered a job left behind (see [`Litter`]).
    pub litter: Vec<Litter>,
}

/// A file a corral killed while it registered a job left in a registry directory: a
/// control socket without its record, or a record's temporary file. Only when the corral
/// that made it (the PID in the job id) is gone, and the file is its directory owner's.
#[derive(Debug, Clone)]
pub struct Litter {
    /// The file.
    pub path: PathBuf,
    /// The job id it was made for.
    pub id: String,
    dir: Option<Arc<OwnedFd>>,
}

/// Removes `path` in `dir` (by its file name) when the directory was opened, else by path.
fn remove_in(dir: Option<&OwnedFd>, path: &Path) -> io::Result<()> {
    match (dir, path.file_name()) {
        (Some(dir), Some(name)) => {
            rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()).map_err(io::Error::from)
        }
        _ => std::fs::remove_file(path),
    }
}

/// Checks a job name: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(Error::InvalidName {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// This user's registry directory, created if missing and checked (see the module docs).
pub fn own_dir() -> Result<PathBuf, Error> {
    let uid = euid();
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        // Made if missing (mode 0700, this user's), as the default directories are: a
        // runner fleet sets it for machines that may not have it yet.
        let dir = PathBuf::from(dir);
        return ensure_dir(&dir, uid, true).map(|()| dir);
    }
    let dir = if uid == 0 {
        PathBuf::from("/run/corral")
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Path::new(&x).join("corral")
    } else {
        PathBuf::from(format!("/tmp/corral-{uid}"))
    };
    ensure_dir(&dir, uid, true).map(|()| dir)
}

/// The directories a scan looks at: with `CORRAL_RUNTIME_DIR`, just that one; a user, their
/// own; root, `/run/corral` and every `/run/user/*/corral`.
fn scope_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    if euid() != 0 {
        return own_dir().ok().into_iter().collect();
    }
    let mut dirs = vec![PathBuf::from("/run/corral")];
    if let Ok(users) = std::fs::read_dir("/run/user") {
        for u in users.flatten() {
            let d = u.path().join("corral");
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Makes `dir` (mode 0700) if `create` and it is missing; checks it is a real directory
/// owned by `uid` and closed to others.
fn ensure_dir(dir: &Path, uid: u32, create: bool) -> Result<(), Error> {
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(Error::CreateDir {
                    dir: dir.to_path_buf(),
                    error,
                })
            }
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|error| Error::StatDir {
        dir: dir.to_path_buf(),
        error,
    })?;
    let problem = if !meta.file_type().is_dir() {
        Some(DirProblem::NotADirectory)
    } else if meta.uid() != uid {
        Some(DirProblem::Owner {
            owner: meta.uid(),
            expected: uid,
        })
    } else if meta.mode() & 0o022 != 0 {
        Some(DirProblem::OpenToOthers {
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::UnsafeDir {
            dir: dir.to_path_buf(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Reads every record in `dirs`.
fn scan_dirs(dirs: &[PathBuf]) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        // Opened once, without following a link (a user can replace their directory with
        // one at any moment); everything below is read and removed through it.
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        let dir_fd = match rustix::fs::open(dir, flags, rustix::fs::Mode::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(rustix::io::Errno::NOENT) => continue,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                scan.problems.push(format!(
                    "the job registry {} is not a directory (or is a symbolic link); skipped",
                    dir.display()
                ));
                continue;
            }
            Err(e) => {
                scan.problems.push(format!(
                    "cannot read the job registry {}: {e}",
                    dir.display()
                ));
                continue;
            }
        };
        let listed = rustix::fs::fstat(&*dir_fd)
            .and_then(|st| Ok((st.st_uid, rustix::fs::Dir::read_from(&*dir_fd)?)));
        let (owner, list) = match listed {
            Ok(l) => l,
            Err(e) => {
                scan.problems.push(format!(
                    "cannot read the job registry {}: {e}",
                    dir.display()
                ));
                continue;
            }
        };
        let mut names = Vec::new();
        for item in list.flatten() {
            let Ok(name) = item.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            names.push(name.to_string());
            // Temporary files (`.<id>.json.tmp-<pid>`) and sockets are not records.
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = dir.join(name);
            match read_record_at(&*dir_fd, &path, owner) {
                Ok(record) => {
                    let live = record.supervisor.alive();
                    scan.entries.push(Entry {
                        record,
                        path,
                        live,
                        dir: Some(dir_fd.clone()),
                    });
                }
                Err(why) => scan
                    .problems
                    .push(format!("skipping the job record {}: {why}", path.display())),
            }
        }
        scan.litter.extend(find_litter(dir, &dir_fd, owner, &names));
    }
    scan.entries.sort_by_key(|e| e.record.started);
    scan
}

/// The [`Litter`] among `names`, the files of registry directory `dir` (owned by `owner`).
/// A corral registers in this order: the socket, the temporary record, the rename; killed
/// in between, it leaves `<id>.sock` without `<id>.json`, or `.<id>.json.tmp-<pid>`.
fn find_litter(dir: &Path, dir_fd: &Arc<OwnedFd>, owner: u32, names: &[String]) -> Vec<Litter> {
    let candidates: Vec<(&String, &str)> = names
        .iter()
        .filter_map(|name| {
            let id = match name.strip_prefix('.') {
                Some(tmp) => tmp.split_once(".json.tmp-").and_then(|(id, pid)| {
                    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(id)
                })?,
                None => name
                    .strip_suffix(".sock")
                    .filter(|id| !names.iter().any(|n| n == &format!("{id}.json")))?,
            };
            valid_id(id).then_some((name, id))
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let (boot, tick) = (boot_time(), procfs::ticks_per_second());
    candidates
        .into_iter()
        .filter_map(|(name, id)| {
            let path = dir.join(name);
            let st = rustix::fs::statat(
                &**dir_fd,
                name.as_str(),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .ok()?;
            let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
            let kind_ok = if name.starts_with('.') {
                ft == rustix::fs::FileType::RegularFile
            } else {
                ft == rustix::fs::FileType::Socket
            };
            let pid = id
                .strip_prefix("corral-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            (kind_ok
                && st.st_uid == owner
                && !creator_alive(pid, st.st_ctime.max(0) as u64, boot, tick))
            .then(|| Litter {
                path,
                id: id.to_string(),
                dir: Some(dir_fd.clone()),
            })
        })
        .collect()
}

/// Removes `litter` (`dry_run`: says it would); one line per file.
fn clean_litter(litter: &[Litter], dry_run: bool, lines: &mut Vec<String>) {
    for l in litter {
        if dry_run {
            lines.push(format!(
                "job {}: would remove {}, left by a corral killed while it registered the job",
                l.id,
                l.path.display()
            ));
            continue;
        }
        match remove_in(l.dir.as_deref(), &l.path) {
            Ok(()) => lines.push(format!(
                "job {}: removed {}, left by a corral killed while it registered the job",
                l.id,
                l.path.display()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => lines.push(format!(
                "job {}: cannot remove {} ({e})",
                l.id,
                l.path.display()
            )),
        }
    }
}

/// The largest record read (a record is a few hundred bytes; its command line makes it
/// longer).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Reads and checks one record; `dir_owner` is its directory's owner.
fn read_record(path: &Path, dir_owner: u32) -> Result<Record, String> {
    read_record_at(rustix::fs::CWD, path, dir_owner)
}

/// [`read_record`] of the file named like `path` in the directory `dir`.
fn read_record_at(dir: impl AsFd, path: &Path, dir_owner: u32) -> Result<Record, String> {
    let name = Path::new(path.file_name().unwrap_or_default());
    // Whoever can write the directory could have planted anything under a record's name:
    // a link is not followed, and a FIFO or device never blocks the open and is refused
    // before anything is read from it (`safe_file`).
    let (bytes, meta) =
        crate::safe_file::read_regular_at(dir, name, MAX_RECORD_BYTES).map_err(|e| match e {
            crate::safe_file::Refused::Link => "a symbolic link, not a record".to_string(),
            crate::safe_file::Refused::NotRegular(_) => "not a regular file".to_string(),
            crate::safe_file::Refused::TooLarge { .. } => "too large to be a record".to_string(),
            crate::safe_file::Refused::Io(e) => e.to_string(),
        })?;
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a record ({e})"))?;
    if record.version != RECORD_VERSION {
        return Err(format!(
            "record version {} (expected {RECORD_VERSION})",
            record.version
        ));
    }
    if record.uid != meta.uid() || record.uid != dir_owner {
        return Err(format!(
            "it says uid {} but the file belongs to uid {} in a directory of uid {dir_owner}",
            record.uid,
            meta.uid()
        ));
    }
    let stem = path.file_stem().and_then(OsStr::to_str).unwrap_or("");
    if stem != record.id || !valid_id(&record.id) {
        return Err(format!(
            "its id {:?} is not a job id or does not match its file name",
            record.id
        ));
    }
    // The socket is always `<dir>/<id>.sock`: a record must not send `corral kill` (run by
    // root, say) to some other socket.
    if Some(record.socket.as_path())
        != path
            .parent()
            .map(|d| d.join(format!("{stem}.sock")))
            .as_deref()
    {
        return Err(format!(
            "its socket {} is not beside it",
            record.socket.display()
        ));
    }
    Ok(record)
}

/// Job ids are `corral-<pid>-<seq>`, or `corral-<pid>-<seq>-<n>` (see `Leaf::create`).
fn valid_id(id: &str) -> bool {
    id.strip_prefix("corral-").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('-')
                .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The records this user may see: their own (root: all in its scope; see the module docs).
pub fn scan() -> Scan {
    let mut scan = scan_dirs(&scope_dirs());
    let uid = euid();
    if uid != 0 {
        scan.entries.retain(|e| e.record.uid == uid);
    }
    scan
}

/// The records of this user's own directory only (cheap: one `readdir`).
fn scan_own() -> Scan {
    match own_dir() {
        Ok(dir) => scan_dirs(&[dir]),
        Err(e) => Scan {
            problems: vec![e.to_string()],
            ..Scan::default()
        },
    }
}

/// What a job uses right now, for `corral ps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Processes in the job (`None`: cannot be told, e.g. a stale pgroup job).
    pub processes: Option<usize>,
    /// CPU time so far, in microseconds (`cpu.stat` `usage_usec`; cgroup only).
    pub cpu_usec: Option<u64>,
    /// Memory in use, in bytes (`memory.current`; `None` where the file is absent, e.g. on
    /// hybrid hosts whose memory controller is bound to cgroup v1).
    pub memory_bytes: Option<u64>,
}

/// What the job of `entry` uses right now.
pub fn stats(entry: &Entry) -> Stats {
    let r = &entry.record;
    if let Some(cg) = &r.cgroup {
        // A record is only as trustworthy as its writer: root's `corral ps` reads no cgroup
        // a user's record names unless that user owns it.
        if !matches!(trusted_cgroup(cg, r.uid), Ok(Some(()))) {
            return Stats::default();
        }
        let procs = read_procs_recursive(cg);
        let cpu = std::fs::read_to_string(cg.join("cpu.stat"))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == "usage_usec").then(|| v.trim().parse().ok()).flatten()
                })
            });
        let mem = std::fs::read_to_string(cg.join("memory.current"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        return Stats {
            processes: procs.map(|p| p.len()),
            cpu_usec: cpu,
            memory_bytes: mem,
        };
    }
    // pgroup: the supervisor's descendants (the CLI supervises in-process). A library host's
    // other children would count too, so only the CLI's figure is exact.
    let processes = entry.live.then(|| r.supervisor.stat()).flatten().map(|s| {
        procs::descendants(s.pid)
            .iter()
            .filter(|s| s.alive())
            .count()
    });
    Stats {
        processes,
        ..Stats::default()
    }
}

fn read_procs_recursive(dir: &Path) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    if let Ok(list) = std::fs::read_dir(dir) {
        for d in list.flatten() {
            if d.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(read_procs_recursive(&d.path()).unwrap_or_default());
            }
        }
    }
    Some(out)
}

/// Finds a job by id or name among the records this user may act on. `Err` is the
/// one-line message for the user: "no such job" (also for another user's job, whose
/// existence is not told).
pub fn find(job: &str) -> Result<Entry, Error> {
    let scan = scan();
    for p in &scan.problems {
        eprintln!("corral: warning: {p}");
    }
    let mut hits: Vec<Entry> = scan
        .entries
        .into_iter()
        .filter(|e| e.record.id == job || e.record.name.as_deref() == Some(job))
        .collect();
    // A live job wins over stale records of the same name.
    hits.sort_by_key(|e| !e.live);
    match hits.len() {
        0 => Err(Error::NoSuchJob {
            job: job.to_string(),
        }),
        1 => Ok(hits.remove(0)),
        _ if hits[0].live && !hits[1].live => Ok(hits.remove(0)),
        count => Err(Error::AmbiguousName {
            job: job.to_string(),
            count,
        }),
    }
}

/// How a [`kill`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillOutcome {
    /// The supervisor ran the stop sequence and the job is over.
    Stopped,
    /// The job was already over when asked.
    AlreadyOver,
    /// The supervisor was gone: corral stopped the job itself (see the text).
    StaleCleaned(Vec<String>),
    /// The supervisor took the request but the job was not over by the deadline.
    NotOverYet,
}

/// Stops the job of `entry` from outside: asks its supervisor over the control socket to
/// run the stop sequence with `signal` and `grace` (`signal` KILL: at once), and waits until
/// the job is over (at most the grace plus `margin`). If the supervisor is gone, stops what
/// is left itself, as [`sweep`] does.
pub fn kill(
    entry: &Entry,
    signal: Signal,
    grace: Duration,
    margin: Duration,
) -> Result<KillOutcome, Error> {
    let r = &entry.record;
    let sup_fd = r.supervisor.open();
    if sup_fd.is_none() {
        let mut lines = Vec::new();
        clean_stale(entry, false, &mut lines);
        return Ok(KillOutcome::StaleCleaned(lines));
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::Socket(e.into()))?;
    // Through the directory the record was read from (`/proc/self/fd/N/<id>.sock`): a
    // user who swapped their registry for a link since cannot send root's request to
    // another socket.
    let through_dir = match (&entry.dir, r.socket.file_name()) {
        (Some(dir), Some(name)) => {
            Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
        }
        _ => r.socket.clone(),
    };
    let addr = SocketAddrUnix::new(&through_dir).map_err(|e| Error::SocketPath {
        socket: r.socket.clone(),
        error: e.into(),
    })?;
    if let Err(e) = rustix::net::connect(&sock, &addr) {
        if !r.supervisor.alive() {
            let mut lines = Vec::new();
            clean_stale(entry, false, &mut lines);
            return Ok(KillOutcome::StaleCleaned(lines));
        }
        // The job may have ended between the scan and now.
        if !entry.path.exists() {
            return Ok(KillOutcome::AlreadyOver);
        }
        return Err(Error::Unreachable {
            id: r.id.clone(),
            socket: r.socket.clone(),
            supervisor: r.supervisor.pid,
            error: e.into(),
        });
    }
    let request = control::Request::new(signal, grace).encode();
    rustix::net::send(&sock, request.as_bytes(), SendFlags::NOSIGNAL).map_err(|e| Error::Send {
        id: r.id.clone(),
        error: e.into(),
    })?;
    let deadline = Instant::now() + grace + margin;
    let answer = recv_until(&sock, deadline).map_err(|error| Error::NoAnswer {
        id: r.id.clone(),
        error,
    })?;
    match answer.as_deref().map(|a| (a, Answer::decode(a))) {
        Some((_, Some(Answer::Ok))) => {}
        Some((_, Some(Answer::Over))) | None => return Ok(KillOutcome::AlreadyOver),
        Some((_, Some(Answer::Denied))) => return Err(Error::Denied { id: r.id.clone() }),
        Some((other, Some(Answer::BadRequest) | None)) => {
            return Err(Error::Answer {
                id: r.id.clone(),
                answer: other.to_string(),
            })
        }
    }
    // The job keeps the connection open until it is over.
    let sup_fd = sup_fd.expect("checked above");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(KillOutcome::NotOverYet);
        }
        let mut fds = [
            PollFd::from_borrowed_fd(sock.as_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(sup_fd.as_fd(), PollFlags::IN),
        ];
        crate::linux::poll(&mut fds, Some(deadline - now)).map_err(Error::Wait)?;
        if !fds[0].revents().is_empty() {
            match recv_until(&sock, Instant::now()) {
                Ok(None) | Err(_) => return Ok(KillOutcome::Stopped),
                Ok(Some(_)) => {}
            }
        }
        if !fds[1].revents().is_empty() {
            // The supervisor exited (it was killed, or the CLI finished and exited).
            return Ok(KillOutcome::Stopped);
        }
    }
}

/// One packet, or `None` at end of file; waits until `deadline`.
fn recv_until(fd: &OwnedFd, deadline: Instant) -> io::Result<Option<String>> {
    let mut buf = [0u8; 128];
    loop {
        match rustix::net::recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(None),
            Ok((n, _)) => return Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::CONNRESET) => return Ok(None),
            Err(rustix::io::Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                }
                let mut fds = [PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN)];
                crate::linux::poll(&mut fds, Some(left)).map_err(io::Error::other)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stops what is left of a stale job and removes its record; appends one line per action
/// to `lines`. `dry_run`: says what it would do and changes nothing.
fn clean_stale(entry: &Entry, dry_run: bool, lines: &mut Vec<String>) {
    let r = &entry.record;
    let would = if dry_run { "would " } else { "" };
    let label = match &r.name {
        Some(n) => format!("{} ({n})", r.id),
        None => r.id.clone(),
    };
    // The record is claimed first (renamed to a name of this process's): a job's corral
    // that removed it between our reading it and finding the corral gone ended normally,
    // and there is nothing to clean or say. Another sweep that claimed it does the work.
    let mut record_path = entry.path.clone();
    if !dry_run {
        let claimed =
            entry
                .path
                .with_file_name(format!(".{}.json.tmp-{}", r.id, std::process::id()));
        let renamed = match (&entry.dir, entry.path.file_name(), claimed.file_name()) {
            (Some(dir), Some(from), Some(to)) => {
                rustix::fs::renameat(&**dir, from, &**dir, to).map_err(io::Error::from)
            }
            _ => std::fs::rename(&entry.path, &claimed),
        };
        match renamed {
            Ok(()) => record_path = claimed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => {}
        }
    }
    if let Some(cg) = &r.cgroup {
        match trusted_cgroup(cg, r.uid) {
            Err(why) => lines.push(format!(
                "job {label}: not touching its cgroup {}: {why}",
                cg.display()
            )),
            Ok(None) => lines.push(format!("job {label}: its cgroup {} is gone", cg.display())),
            Ok(Some(())) if dry_run => {
                let n = read_procs_recursive(cg).map(|p| p.len()).unwrap_or(0);
                lines.push(format!(
                    "job {label}: would kill {n} process(es) in {} and remove it",
                    cg.display()
                ));
            }
            Ok(Some(())) => match cgroup::Leaf::open_existing(cg) {
                Ok(leaf) => {
                    let n = leaf.members().map(|m| m.len()).unwrap_or(0);
                    let killed = leaf.kill_all(false, Instant::now() + Duration::from_secs(5));
                    let removed = leaf.remove();
                    match (killed, removed) {
                        (Ok(_), Ok(())) => lines.push(format!(
                            "job {label}: killed {n} process(es) in {} and removed it",
                            cg.display()
                        )),
                        (Err(e), _) | (_, Err(e)) => lines.push(format!(
                            "job {label}: cleaning {} failed: {}",
                            cg.display(),
                            crate::error::error_chain(&e)
                        )),
                    }
                }
                Err(e) => lines.push(format!(
                    "job {label}: cannot open its cgroup {}: {}",
                    cg.display(),
                    crate::error::error_chain(&e)
                )),
            },
        }
    } else {
        lines.push(format!(
            "job {label}: pgroup job whose supervisor (pid {}) is gone; its processes cannot \
             be found without a cgroup",
            r.supervisor.pid
        ));
    }
    if !dry_run {
        let _ = remove_in(entry.dir.as_deref(), &r.socket);
        match remove_in(entry.dir.as_deref(), &record_path) {
            Ok(()) => lines.push(format!(
                "job {label}: removed record {}",
                entry.path.display()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => lines.push(format!(
                "job {label}: cannot remove record {}: {e}",
                entry.path.display()
            )),
        }
    } else {
        lines.push(format!(
            "job {label}: {would}remove record {}",
            entry.path.display()
        ));
    }
}

/// May a sweep act on the cgroup `path` named by a record of `uid`? It must lie under the
/// cgroup2 mount with no `..`, and be owned by `uid` (root's own records aside): a record is
/// only as trustworthy as its writer. `Ok(None)`: it does not exist.
fn trusted_cgroup(path: &Path, uid: u32) -> Result<Option<()>, String> {
    let mount = match cgroup::find_mount() {
        Ok(Some(m)) => m.path,
        _ => return Err("no cgroup2 mount".into()),
    };
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::RootDir))
        || !path.starts_with(&mount)
        || path == mount
    {
        return Err(format!("not a cgroup under {}", mount.display()));
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != uid {
        return Err(format!(
            "it belongs to uid {}, not to the record's owner {uid}",
            meta.uid()
        ));
    }
    Ok(Some(()))
}

/// What [`sweep`] did (or, dry, would do).
#[derive(Debug, Default)]
pub struct SweepReport {
    /// One line per action.
    pub actions: Vec<String>,
    /// One line per record that could not be used.
    pub problems: Vec<String>,
}

/// Cleans up after jobs whose supervisor is gone: for each stale record this user may act
/// on, kills what still runs in its cgroup, removes the cgroup, the record and the socket.
/// Unless `CORRAL_RUNTIME_DIR` narrows the scope, also removes leftover cgroups under
/// corral's default parent (`<cgroup2 mount>/corral/corral-<pid>-<seq>`) whose creator is no
/// longer alive and that no record names. `dry_run`: says what it would do, changes nothing.
pub fn sweep(dry_run: bool) -> SweepReport {
    let scan = scan();
    let mut out = SweepReport {
        problems: scan.problems,
        ..Default::default()
    };
    let live_cgroups: Vec<&Path> = scan
        .entries
        .iter()
        .filter(|e| e.live)
        .filter_map(|e| e.record.cgroup.as_deref())
        .collect();
    for e in scan.entries.iter().filter(|e| !e.live) {
        if e.record
            .cgroup
            .as_deref()
            .is_some_and(|c| live_cgroups.contains(&c))
        {
            out.actions.push(format!(
                "job {}: its cgroup is a running job's now; removing the record only",
                e.record.id
            ));
            if !dry_run {
                let _ = remove_in(e.dir.as_deref(), &e.record.socket);
                let _ = remove_in(e.dir.as_deref(), &e.path);
            }
            continue;
        }
        clean_stale(e, dry_run, &mut out.actions);
    }
    clean_litter(&scan.litter, dry_run, &mut out.actions);
    let named: Vec<&Path> = scan
        .entries
        .iter()
        .filter_map(|e| e.record.cgroup.as_deref())
        .collect();
    sweep_parents(dry_run, &named, &mut out.actions);
    out
}

/// The start-up sweep of `corral run`: this user's own stale records only. One `readdir`;
/// nothing more when the directory holds no record. Returns the lines of what it did.
pub fn sweep_own() -> Vec<String> {
    let scan = scan_own();
    let mut lines = Vec::new();
    for e in scan.entries.iter().filter(|e| !e.live) {
        clean_stale(e, false, &mut lines);
    }
    clean_litter(&scan.litter, false, &mut lines);
    lines
}

/// Leftover cgroups where a `corral run` from here makes its leaves: `CORRAL_CGROUP_PARENT`,
/// and unless `CORRAL_RUNTIME_DIR` narrows the scope, `<mount>/corral` and the cgroup this
/// process runs in. A leaf `corral-<pid>-<seq>` is left over when its creator is gone or
/// its PID now belongs to a process started after the leaf was made, and no record names
/// it; inside the leaves of live jobs, leftover leaves of jobs nested in them (a corral
/// that ran inside a job and died with its watchdog) are looked for too.
fn sweep_parents(dry_run: bool, named: &[&Path], lines: &mut Vec<String>) {
    let Ok(Some(mount)) = cgroup::find_mount() else {
        return;
    };
    let mut parents = Vec::new();
    if let Some(p) = std::env::var_os("CORRAL_CGROUP_PARENT").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_absolute() && p.starts_with(&mount.path) && p != mount.path {
            parents.push(p);
        }
    }
    if !std::env::var_os(RUNTIME_DIR_ENV).is_some_and(|d| !d.is_empty()) {
        parents.push(mount.path.join("corral"));
        let own = own_cgroup().and_then(|c| {
            Some(
                mount
                    .path
                    .join(Path::new(&c).strip_prefix(&mount.root).ok()?),
            )
        });
        parents.extend(own.filter(|p| *p != mount.path));
    }
    parents.sort();
    parents.dedup();
    let ctx = LeafSweep {
        uid: euid(),
        boot: boot_time(),
        tick: procfs::ticks_per_second(),
        named,
        dry_run,
    };
    for parent in &parents {
        ctx.sweep(parent, 0, lines);
    }
}

/// How deep [`LeafSweep`] looks for nested leaves (the kernel's own limit,
/// `cgroup.max.depth`, is unlimited by default).
const NESTED_SWEEP_DEPTH: usize = 16;

struct LeafSweep<'a> {
    uid: u32,
    boot: Option<u64>,
    tick: u64,
    named: &'a [&'a Path],
    dry_run: bool,
}

impl LeafSweep<'_> {
    fn sweep(&self, parent: &Path, depth: usize, lines: &mut Vec<String>) {
        let Ok(list) = std::fs::read_dir(parent) else {
            return;
        };
        for d in list.flatten() {
            let path = d.path();
            let Some(pid) = d
                .file_name()
                .to_str()
                .filter(|n| valid_id(n))
                .and_then(|n| n.strip_prefix("corral-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_dir() || (self.uid != 0 && meta.uid() != self.uid) {
                continue;
            }
            if self.named.contains(&path.as_path())
                || creator_alive(pid, meta.ctime().max(0) as u64, self.boot, self.tick)
            {
                // A live job: look inside it for leaves of nested jobs that are gone.
                if depth < NESTED_SWEEP_DEPTH {
                    self.sweep(&path, depth + 1, lines);
                }
                continue;
            }
            if depth > 0 && read_procs_recursive(&path).is_some_and(|p| !p.is_empty()) {
                // Inside a running job, its processes are that job's to stop: a guess from
                // a leaf's name is no reason to kill part of a live job.
                lines.push(format!(
                    "leftover cgroup {} is inside a running job: left to that job",
                    path.display()
                ));
                continue;
            }
            self.clean(&path, lines);
        }
    }

    fn clean(&self, path: &Path, lines: &mut Vec<String>) {
        if self.dry_run {
            let n = read_procs_recursive(path).map(|p| p.len()).unwrap_or(0);
            lines.push(format!(
                "leftover cgroup {}: would kill {n} process(es) and remove it",
                path.display()
            ));
            return;
        }
        match cgroup::Leaf::open_existing(path) {
            Ok(leaf) => {
                let n = leaf.members().map(|m| m.len()).unwrap_or(0);
                let killed = leaf.kill_all(false, Instant::now() + Duration::from_secs(5));
                match killed.and_then(|_| leaf.remove()) {
                    Ok(()) => lines.push(format!(
                        "leftover cgroup {}: killed {n} process(es) and removed it",
                        path.display()
                    )),
                    Err(e) => lines.push(format!(
                        "leftover cgroup {}: cleaning failed: {}",
                        path.display(),
                        crate::error::error_chain(&e)
                    )),
                }
            }
            Err(e) => lines.push(format!(
                "leftover cgroup {}: cannot open it: {}",
                path.display(),
                crate::error::error_chain(&e)
            )),
        }
    }
}

/// The cgroup2 line of `/proc/self/cgroup` (`0::<path>`): the cgroup this process runs in.
fn own_cgroup() -> Option<String> {
    let text = crate::linux::read_proc_file("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// For each entry, the index of the job it is nested in, if any: the job whose cgroup
/// holds the cgroup the entry's supervisor ran in (the deepest such cgroup), else the job
/// whose supervisor is the nearest live ancestor of the entry's supervisor (a job inside a
/// pgroup job). `corral ps` draws the jobs as a tree with it.
pub fn outer_jobs(entries: &[Entry]) -> Vec<Option<usize>> {
    let mount = cgroup::find_mount().ok().flatten();
    let within: Vec<Option<PathBuf>> = entries
        .iter()
        .map(|e| {
            let rel = Path::new(e.record.within.as_deref()?);
            let m = mount.as_ref()?;
            Some(m.path.join(rel.strip_prefix(&m.root).ok()?))
        })
        .collect();
    let by_cgroup = |i: usize| -> Option<usize> {
        let inner = within[i].as_deref()?;
        entries
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(j, e)| Some((j, e.record.cgroup.as_deref()?)))
            .filter(|(_, cg)| inner.starts_with(cg))
            .max_by_key(|(_, cg)| cg.components().count())
            .map(|(j, _)| j)
    };
    let by_ancestry = |i: usize| -> Option<usize> {
        let me = &entries[i].record.supervisor;
        let mut pid = Pid::from_raw(i32::try_from(me.pid).ok()?)?;
        let stat = procs::stat(pid).filter(|s| s.starttime == me.start_time)?;
        let mut ppid = stat.ppid;
        // A chain of parents, bounded: PIDs can form no cycle, but a racing reuse could.
        for _ in 0..64 {
            pid = Pid::from_raw(ppid)?;
            if pid.get() <= 1 {
                return None;
            }
            let s = procs::stat(pid)?;
            if let Some(j) = entries.iter().position(|e| {
                e.record.supervisor.pid == pid.get() as u32
                    && e.record.supervisor.start_time == s.starttime
                    && e.record.supervisor != *me
            }) {
                return Some(j);
            }
            ppid = s.ppid;
        }
        None
    };
    (0..entries.len())
        .map(|i| by_cgroup(i).or_else(|| by_ancestry(i)))
        .collect()
}

/// What a killed job held, to tell its nested jobs' records from everyone else's.
pub(crate) enum Outer<'a> {
    /// A cgroup job's cgroup: nested jobs' corrals ran inside it (`within`), or their
    /// cgroups were below it (records without `within`).
    Cgroup(&'a Path),
    /// A pgroup job: the PIDs its kill stage signalled, among them the nested corrals.
    Killed(&'a [u32]),
}

impl Outer<'_> {
    fn holds(&self, record: &Record, mount: Option<&cgroup::Mount>) -> bool {
        match self {
            Outer::Cgroup(leaf) => inside(record, leaf, mount),
            Outer::Killed(pids) => pids.contains(&record.supervisor.pid),
        }
    }
}

/// Whether the job of `record` was inside the cgroup `outer`: its corral ran there
/// (`within`), or its own cgroup is there (records without `within`).
fn inside(record: &Record, outer: &Path, mount: Option<&cgroup::Mount>) -> bool {
    let within = record.within.as_deref().and_then(|w| {
        let m = mount?;
        Some(m.path.join(Path::new(w).strip_prefix(&m.root).ok()?))
    });
    within.is_some_and(|w| w.starts_with(outer))
        || record
            .cgroup
            .as_deref()
            .is_some_and(|c| c.starts_with(outer))
}

/// After a job that was killed: its processes may have included corrals of nested jobs,
/// killed before they could remove their records. Cleans up the stale records of registry
/// directory `dir` that were nested in `outer` (and, for a pgroup job, their cgroups, which
/// were made outside the job's processes' reach: empty now, as every process of theirs was
/// the job's). Nothing else: other stale records are the next sweep's. Returns what it did.
pub(crate) fn sweep_nested(dir: &Path, outer: Outer<'_>) -> Vec<String> {
    let scan = scan_dirs(&[dir.to_path_buf()]);
    let uid = euid();
    let mount = cgroup::find_mount().ok().flatten();
    let stale: Vec<&Entry> = scan
        .entries
        .iter()
        .filter(|e| !e.live && (uid == 0 || e.record.uid == uid))
        .collect();
    // The jobs `outer` held, and the jobs nested in those (a nested corral's job may have
    // been killed by that corral's watchdog rather than by `outer`'s kill), to any depth.
    let mut nested: Vec<&Entry> = stale
        .iter()
        .copied()
        .filter(|e| outer.holds(&e.record, mount.as_ref()))
        .collect();
    let mut i = 0;
    while i < nested.len() {
        if let Some(cg) = nested[i].record.cgroup.clone() {
            for e in &stale {
                if !nested.iter().any(|n| n.path == e.path)
                    && inside(&e.record, &cg, mount.as_ref())
                {
                    nested.push(e);
                }
            }
        }
        i += 1;
    }
    let mut lines = Vec::new();
    for e in nested {
        clean_stale(e, false, &mut lines);
    }
    lines
}

/// Whether the process that made a leaf at `made` (Unix seconds) may still be alive: a
/// process has PID `pid` and started no later than the leaf was made (one second's slack
/// for the rounding of the two clocks). A process that started later is a reused PID.
fn creator_alive(pid: i32, made: u64, boot: Option<u64>, tick: u64) -> bool {
    Pid::from_raw(pid).and_then(procs::stat).is_some_and(|s| {
        s.alive()
            && boot
                .map(|b| b + s.starttime / tick.max(1))
                .map_or(true, |started| started <= made + 1)
    })
}

/// Boot time in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

// ---- the job's side ------------------------------------------------------------------

/// A job name's check as a library error.
pub(crate) fn validate(name: &str) -> crate::Result<()> {
    validate_name(name).map_err(|e| crate::Error::InvalidOptions(e.to_string()))
}

/// Before a job with `name` is spawned: the name is valid and no live job of this user
/// (or of the same caller, for a privileged helper's job) has it.
pub(crate) fn check_name(name: &str, on_behalf_of: Option<u32>) -> crate::Result<()> {
    validate(name)?;
    let scan = scan_own();
    if let Some(e) = scan.entries.iter().find(|e| {
        e.live && e.record.name.as_deref() == Some(name) && e.record.on_behalf_of == on_behalf_of
    }) {
        return Err(crate::Error::InvalidOptions(format!(
            "a running job is already named `{name}` (id {}); pick another --name or stop it",
            e.record.id
        )));
    }
    Ok(())
}

/// What a job needs to register.
pub(crate) struct NewRecord<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: Option<&'a str>,
    pub(crate) mechanism: &'a str,
    pub(crate) cgroup: Option<&'a Path>,
    pub(crate) command: &'a [String],
    pub(crate) limits: BTreeMap<String, String>,
    pub(crate) on_behalf_of: Option<u32>,
}

/// A registered job's record and control socket; dropping it removes both and closes the
/// connections of requesters waiting for the job to end.
pub(crate) struct Registration {
    record: PathBuf,
    socket: PathBuf,
    listener: OwnedFd,
    uid: u32,
    waiters: Vec<OwnedFd>,
}

/// A request read from the control socket.
pub(crate) struct Request {
    /// The requester's PID and uid.
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    /// What it asks.
    pub(crate) request: control::Request,
    conn: OwnedFd,
}

/// This process as a supervisor: its PID and start time. Read once per process (neither
/// changes; a host that forks is another process, with another PID), and by hand: the
/// general `/proc` parser costs more than the rest of the registration.
fn own_identity() -> Result<SupervisorId, Error> {
    // Keyed by getpid(): a forked child reads its own. The PID recorded is the one `/proc`
    // shows (`procs::own_pid`), the host's also inside a PID namespace.
    static ME: std::sync::Mutex<Option<(u32, SupervisorId)>> = std::sync::Mutex::new(None);
    let getpid = std::process::id();
    let mut me = ME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, id)) = *me {
        if at == getpid {
            return Ok(id);
        }
    }
    let pid = procs::own_pid();
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|error| Error::OwnStat { pid, error })?;
    let id = SupervisorId {
        pid,
        start_time: start_time_field(&text).ok_or(Error::OwnStatFormat { pid })?,
    };
    *me = Some((getpid, id));
    Ok(id)
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: count from the last `)`.
fn start_time_field(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first word, so field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Files left under this job's id by a dead process (ids embed the creator's PID, so only a
/// process that had our PID before can have left them: its supervisor died between making
/// its job and removing the record). Its record is removed without acting on its cgroup:
/// ids are leaf names, and ours was free when our leaf was made, so that cgroup was gone
/// then (and the path may now be our own job's).
fn clear_stale_id(record: &Path, socket: &Path, uid: u32) -> Result<(), Error> {
    if record.exists() {
        match read_record(record, uid) {
            Ok(r) if r.supervisor.alive() => {
                return Err(Error::IdTaken {
                    supervisor: r.supervisor.pid,
                    record: record.to_path_buf(),
                })
            }
            Ok(_) => {
                let _ = std::fs::remove_file(record);
            }
            Err(why) => {
                return Err(Error::InTheWay {
                    record: record.to_path_buf(),
                    why,
                })
            }
        }
    }
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::StaleSocket {
            socket: socket.to_path_buf(),
            error,
        }),
    }
}

/// Registers a job: binds its control socket, then writes its record atomically.
pub(crate) fn register(new: &NewRecord<'_>) -> Result<Registration, Error> {
    let dir = own_dir()?;
    let uid = euid();
    let me = own_identity()?;
    let socket = dir.join(format!("{}.sock", new.id));
    let record_path = dir.join(format!("{}.json", new.id));
    clear_stale_id(&record_path, &socket, uid)?;
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::ListenSocket(e.into()))?;
    let addr = SocketAddrUnix::new(&socket).map_err(|e| Error::ListenPath {
        socket: socket.clone(),
        error: e.into(),
    })?;
    rustix::net::bind(&listener, &addr).map_err(|e| Error::Bind {
        socket: socket.clone(),
        error: e.into(),
    })?;
    let reg = Registration {
        record: record_path.clone(),
        socket: socket.clone(),
        listener,
        uid,
        waiters: Vec::new(),
    };
    rustix::net::listen(&reg.listener, 16).map_err(|e| Error::Listen {
        socket: socket.clone(),
        error: e.into(),
    })?;
    let record = Record {
        version: RECORD_VERSION,
        id: new.id.to_string(),
        name: new.name.map(str::to_string),
        uid,
        supervisor: me,
        mechanism: new.mechanism.to_string(),
        cgroup: new.cgroup.map(Path::to_path_buf),
        command: new.command.to_vec(),
        started: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        limits: new.limits.clone(),
        socket,
        on_behalf_of: new.on_behalf_of,
        within: own_cgroup(),
    };
    let json = serde_json::to_string(&record).expect("a record serializes");
    let tmp = dir.join(format!(".{}.json.tmp-{}", new.id, std::process::id()));
    let written = crate::safe_file::create_exclusive(&tmp, 0o600)
        .and_then(|mut f| io::Write::write_all(&mut f, (json + "\n").as_bytes()))
        // Never over another job's record (a stale one of a reused PID, say).
        .and_then(|()| crate::safe_file::rename_noreplace(&tmp, &record_path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        // `reg` drops: the socket goes; the record path is not ours to remove.
        let mut reg = reg;
        reg.record = PathBuf::new();
        return Err(Error::WriteRecord {
            record: record_path,
            error: e,
        });
    }
    Ok(reg)
}

impl Registration {
    /// The registry directory the job is recorded in.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.socket.parent()
    }

    /// The job's record and control socket (for the watchdog to remove, should this
    /// process die with the job running).
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        vec![self.record.clone(), self.socket.clone()]
    }

    /// The listening socket (poll it for readability).
    pub(crate) fn listener(&self) -> &OwnedFd {
        &self.listener
    }

    /// Takes the pending requests (never blocks for long: a connected requester has sent
    /// its request already; one that has not within 100 ms is dropped). Requests from other
    /// users (not root) are answered `denied` here and not returned.
    pub(crate) fn accept(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        loop {
            let conn = match rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC) {
                Ok(c) => c,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            };
            let Ok(cred) = rustix::net::sockopt::socket_peercred(&conn) else {
                continue;
            };
            let uid = cred.uid.as_raw();
            if uid != self.uid && uid != 0 {
                answer(&conn, Answer::Denied);
                continue;
            }
            let text = match recv_until(&conn, Instant::now() + Duration::from_millis(100)) {
                Ok(Some(t)) => t,
                _ => continue,
            };
            let Some(request) = control::Request::decode(&text) else {
                answer(&conn, Answer::BadRequest);
                continue;
            };
            out.push(Request {
                pid: cred.pid.as_raw_nonzero().get() as u32,
                uid,
                request,
                conn,
            });
        }
        out
    }

    /// Answers `ok` to `req` and keeps its connection open until the job is over.
    pub(crate) fn accepted(&mut self, req: Request) {
        answer(&req.conn, Answer::Ok);
        self.waiters.push(req.conn);
    }
}

/// Sends `answer` on a requester's connection, never blocking (a requester that does not
/// read it loses it).
fn answer(conn: &OwnedFd, answer: Answer) {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let _ = rustix::net::send(conn, answer.encode().as_bytes(), flags);
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        if !self.record.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.record);
        }
        // The waiters' connections close after the files are gone.
        self.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("build-42.x_y").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_are_the_one_line_messages_users_read() {
        assert_eq!(
            validate_name("a b").unwrap_err().to_string(),
            "invalid job name `a b`; use 1-64 characters of A-Z a-z 0-9 . _ - not starting with \
             `.`"
        );
        let dir = std::env::temp_dir().join(format!("corral-open-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let chmod = |mode| {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
        };
        chmod(0o777).unwrap();
        let open = ensure_dir(&dir, euid(), false);
        let other = ensure_dir(&dir, euid() + 1, false);
        chmod(0o700).unwrap();
        let fine = ensure_dir(&dir, euid(), false);
        let _ = std::fs::remove_dir_all(&dir);
        let open = open.unwrap_err();
        assert!(
            matches!(
                open,
                Error::UnsafeDir {
                    problem: DirProblem::OpenToOthers { mode: 0o777 },
                    ..
                }
            ),
            "{open:?}"
        );
        assert_eq!(
            open.to_string(),
            format!(
                "the job registry {} is writable by group or others (mode 777); remove it, or \
                 chmod 0700 it, or set CORRAL_RUNTIME_DIR",
                dir.display()
            )
        );
        assert!(other.unwrap_err().to_string().contains(&format!(
            "is owned by uid {}, not {}",
            euid(),
            euid() + 1
        )));
        assert!(fine.is_ok());
        assert_eq!(
            Error::NoSuchJob { job: "x".into() }.to_string(),
            "no such job `x`; `corral ps` lists your jobs"
        );
        assert_eq!(
            Error::AmbiguousName {
                job: "x".into(),
                count: 2
            }
            .to_string(),
            "2 jobs are named `x`; give the id instead (`corral ps` lists them)"
        );
        let unreachable = Error::Unreachable {
            id: "corral-1-0".into(),
            socket: "/r/corral-1-0.sock".into(),
            supervisor: 1,
            error: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach job corral-1-0 at /r/corral-1-0.sock: Connection refused (os error \
             111); is its supervisor (pid 1) still serving it?"
        );
    }

    #[test]
    fn litter_is_what_a_gone_corral_left_half_registered() {
        let dir = std::env::temp_dir().join(format!("corral-litter-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let me = std::process::id();
        // No process has this PID (above the kernel's PID_MAX_LIMIT).
        let gone = 1 << 23;
        let sock = |name: &str| {
            let l = std::os::unix::net::UnixListener::bind(dir.join(name)).unwrap();
            std::mem::forget(l);
        };
        sock(&format!("corral-{gone}-0.sock")); // litter: no record
        sock(&format!("corral-{gone}-1.sock")); // its record is there
        std::fs::write(dir.join(format!("corral-{gone}-1.json")), "{}").unwrap();
        sock(&format!("corral-{me}-0.sock")); // its corral is alive
        std::fs::write(dir.join(format!(".corral-{gone}-2.json.tmp-{gone}")), "{").unwrap();
        std::fs::write(dir.join(format!(".corral-{me}-3.json.tmp-{me}")), "{").unwrap();
        std::fs::write(dir.join(format!("corral-{gone}-4.sock")), "").unwrap(); // not a socket
        std::fs::write(dir.join(format!(".x-{gone}.json.tmp-1")), "").unwrap(); // not an id
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let dir_fd = Arc::new(
            rustix::fs::open(&dir, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap(),
        );
        let mut found: Vec<String> = find_litter(&dir, &dir_fd, euid(), &names)
            .into_iter()
            .map(|l| l.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        found.sort();
        let others = find_litter(&dir, &dir_fd, euid() + 1, &names);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            [
                format!(".corral-{gone}-2.json.tmp-{gone}"),
                format!("corral-{gone}-0.sock")
            ]
        );
        assert!(
            others.is_empty(),
            "another owner's files are not litter: {others:?}"
        );
    }

    #[test]
    fn own_start_time_matches_procfs() {
        let me = own_identity().unwrap();
        let st = procs::stat(Pid::current()).unwrap();
        assert_eq!((me.pid, me.start_time), (st.pid.get() as u32, st.starttime));
        assert_eq!(
            start_time_field("7 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99 1"),
            Some(99)
        );
    }

    #[test]
    fn a_leaf_creator_is_judged_by_pid_and_start_time() {
        let me = std::process::id() as i32;
        let boot = boot_time();
        let tick = procfs::ticks_per_second();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(creator_alive(me, now, boot, tick), "we made it just now");
        // A leaf made long before this process started: our PID is a reused one.
        assert!(!creator_alive(me, 1, boot, tick));
        assert!(!creator_alive(i32::MAX, now, boot, tick), "no such PID");
    }

    #[test]
    fn ids() {
        assert!(valid_id("corral-12-0") && valid_id("corral-12-0-2"));
        for bad in [
            "corral-",
            "passwd",
            "corral-1--2",
            "corral-1-x",
            "corral-../x",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn cgroup_paths_from_records_are_checked() {
        let Ok(Some(m)) = cgroup::find_mount() else {
            return;
        };
        assert!(trusted_cgroup(&m.path.join("a/../../etc"), 0).is_err());
        assert!(trusted_cgroup(Path::new("/etc"), 0).is_err());
        assert!(trusted_cgroup(&m.path, 0).is_err());
    }
}
