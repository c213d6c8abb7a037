//! cgroup v2: finding the mount, choosing a parent, one leaf per job, and stopping it.
//!
//! A job's leaf is held by an open directory fd from the moment it is created, and every
//! file in it is reached relative to that fd (`openat`), so a rename or a path swapped in
//! after creation cannot redirect a write. The mount is found in `/proc/self/mountinfo`
//! (hybrid hosts mount cgroup2 at `/sys/fs/cgroup/unified`, pure v2 hosts at
//! `/sys/fs/cgroup`, containers elsewhere); no path is assumed.
//!
//! Emptiness is observed, never polled on a timer: `cgroup.events` raises `POLLPRI` whenever
//! its `populated` or `frozen` line changes, and we re-read it after each wake-up.
//!
//! Resource limits: the controllers a job's limits need are enabled in the parent's
//! `cgroup.subtree_control` ([`enable_controllers`]) before the leaf is made, and the limit
//! files are written in the leaf ([`Leaf::apply_limits`]) before the child is spawned into
//! it, so nothing of the job ever runs unlimited. cgroup v2's "no internal processes" rule
//! forbids controllers in the subtree of a cgroup that has processes: when the parent is
//! the cgroup we run in (a delegated cgroup), we first move ourselves into
//! `<parent>/supervisor` ([`move_self_to_leaf`]). What the cgroup accounted (`cpu.stat`,
//! `memory.peak`, `pids.peak`, `memory.events`) is read once the job is empty, just before
//! the leaf is removed ([`Leaf::usage`]).
//!
//! Killing uses `cgroup.kill` (Linux 5.14), which SIGKILLs every process of the subtree in
//! the kernel, race-free against forks. Older kernels get the freezer loop: freeze
//! (`cgroup.freeze`, 5.2), SIGKILL every member of the subtree through a pidfd, thaw,
//! repeat until empty.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::error::{Error, Result};
use crate::linux::pidfd::{self, Pid};
use crate::options::Signal;

/// `statfs.f_type` of a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

const PROCS: &str = "cgroup.procs";
const EVENTS: &str = "cgroup.events";
const KILL: &str = "cgroup.kill";
const FREEZE: &str = "cgroup.freeze";
const CONTROLLERS: &str = "cgroup.controllers";
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const CPU_STAT: &str = "cpu.stat";
/// Linux 5.19.
const MEMORY_PEAK: &str = "memory.peak";
const MEMORY_EVENTS: &str = "memory.events";
/// Linux 6.1.
const PIDS_PEAK: &str = "pids.peak";
/// The leaf the calling process moves itself into when the parent is its own cgroup.
pub(crate) const SUPERVISOR_LEAF: &str = "supervisor";
/// The default parent's name under the cgroup2 mount.
const DEFAULT_PARENT: &str = "corral";

/// Where the cgroup2 hierarchy is mounted, and which cgroup its root is.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// The mount point, e.g. `/sys/fs/cgroup/unified`.
    pub(crate) path: PathBuf,
    /// The cgroup at the mount point, as `/proc/<pid>/cgroup` names it (usually `/`).
    pub(crate) root: PathBuf,
}

/// Finds the first cgroup2 mount in `/proc/self/mountinfo`. A mount found is remembered
/// for the life of the process (each `corral run` asked for it several times, and the
/// kernel formats the whole table for every read); none found is looked for again.
pub(crate) fn find_mount() -> io::Result<Option<Mount>> {
    static FOUND: std::sync::OnceLock<Mount> = std::sync::OnceLock::new();
    if let Some(mount) = FOUND.get() {
        return Ok(Some(mount.clone()));
    }
    let text = crate::linux::read_proc_file("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text).map(|m| FOUND.get_or_init(|| m).clone()))
}

fn parse_mountinfo(text: &str) -> Option<Mount> {
    for line in text.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        return Some(Mount {
            root: PathBuf::from(unescape_mountinfo(fields[3])),
            path: PathBuf::from(unescape_mountinfo(fields[4])),
        });
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from(OsStr::from_bytes(&out))
}

/// True when `fd` is a directory on a cgroup2 filesystem.
fn is_cgroup2(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// How the parent directory for job cgroups was chosen (the report's, so a public type;
/// `Delegated`: see [`super::delegate`]).
pub(crate) use crate::report::CgroupParentSource as ParentSource;

/// An open directory under which job leaves are created.
#[derive(Debug)]
pub(crate) struct Parent {
    pub(crate) path: PathBuf,
    pub(crate) dir: OwnedFd,
    pub(crate) source: ParentSource,
    /// For a delegated parent: why it counts as delegated.
    pub(crate) how: Option<&'static str>,
    /// Set when the parent is outside the cgroup corral was started in (a scope the CLI
    /// obtained from systemd): the unit it is bound to. Reported as degraded.
    pub(crate) bound_to: Option<String>,
}

/// Why no cgroup parent could be had; `auto` falls back with this as the reason.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// The user named a parent and it is unusable: always an error, even under `auto`.
    Bad(Error),
    /// Nothing was named and the default cannot be had: a fallback reason.
    None { reason: String, fix: String },
}

/// Picks the parent: the explicit one, else `CORRAL_CGROUP_PARENT`, else the cgroup we run
/// in if it is delegated to us, else `<mount>/corral` where systemd does not manage the tree.
pub(crate) fn choose_parent(explicit: Option<&Path>) -> std::result::Result<Parent, Unavailable> {
    if let Some(p) = explicit {
        return open_named_parent(p, ParentSource::Option).map_err(Unavailable::Bad);
    }
    if let Some(p) = std::env::var_os("CORRAL_CGROUP_PARENT").filter(|p| !p.is_empty()) {
        return open_named_parent(Path::new(&p), ParentSource::Env).map_err(Unavailable::Bad);
    }
    default_parent()
}

fn open_named_parent(path: &Path, source: ParentSource) -> Result<Parent> {
    let origin = match source {
        ParentSource::Env => " (from CORRAL_CGROUP_PARENT)",
        _ => "",
    };
    let bad = |problem: String, fix: &str| Error::CgroupParent {
        path: path.to_owned(),
        problem: format!("{problem}{origin}"),
        fix: fix.to_string(),
    };
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(
            "contains `..`".into(),
            "give the directory without `..` components",
        ));
    }
    if !path.is_absolute() {
        return Err(bad(
            "is not an absolute path".into(),
            "give an absolute path on the cgroup2 mount",
        ));
    }
    let dir = match rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Named in the environment (a runner fleet's setting, for machines that may not have
        // it yet): made, as `<mount>/corral` is, if its parent is a cgroup. Kept afterwards.
        Err(e) if e == rustix::io::Errno::NOENT && source == ParentSource::Env => {
            create_named_parent(path).map_err(|(problem, fix)| bad(problem, &fix))?
        }
        Err(e) if e == rustix::io::Errno::NOENT => {
            return Err(bad(
                "does not exist".into(),
                "create it first (mkdir) or pick an existing cgroup",
            ))
        }
        Err(e) if e == rustix::io::Errno::NOTDIR => {
            return Err(bad("is not a directory".into(), "give a cgroup directory"))
        }
        Err(e) => {
            return Err(bad(
                format!("cannot be opened ({e})"),
                "check its permissions",
            ))
        }
    };
    match is_cgroup2(dir.as_fd()) {
        Ok(true) => {}
        Ok(false) => {
            let hint = match find_mount() {
                Ok(Some(m)) => format!(
                    "give a directory under the cgroup2 mount {}",
                    m.path.display()
                ),
                _ => "give a directory on a cgroup2 filesystem".into(),
            };
            return Err(bad("is not on a cgroup2 filesystem".into(), &hint));
        }
        Err(e) => return Err(bad(format!("cannot be examined ({e})"), "check the path")),
    }
    if rustix::fs::accessat(&dir, PROCS, rustix::fs::Access::WRITE_OK, AtFlags::empty()).is_err()
        || rustix::fs::accessat(&dir, ".", rustix::fs::Access::WRITE_OK, AtFlags::empty()).is_err()
    {
        return Err(bad(
            "is not writable".into(),
            "run as root or give a cgroup delegated to your user",
        ));
    }
    Ok(Parent {
        path: path.to_owned(),
        dir,
        source,
        how: None,
        bound_to: None,
    })
}

/// Makes the cgroup `path` (its last component; the parent must be a cgroup2 directory),
/// and opens it. `Err((problem, fix))`.
fn create_named_parent(path: &Path) -> std::result::Result<OwnedFd, (String, String)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(("does not exist".into(), "create it first (mkdir)".into()));
    };
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let parent_fd = rustix::fs::open(parent, flags, Mode::empty()).map_err(|e| {
        (
            format!(
                "does not exist, nor can it be made ({} : {e})",
                parent.display()
            ),
            "create it first (mkdir), or its parent".into(),
        )
    })?;
    if !is_cgroup2(parent_fd.as_fd()).unwrap_or(false) {
        return Err((
            "does not exist, and its parent is not on a cgroup2 filesystem".into(),
            "give a directory under the cgroup2 mount".into(),
        ));
    }
    match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => {
            return Err((
                format!("does not exist, and making it failed ({e})"),
                "create it first (mkdir) as a user who may".into(),
            ))
        }
    }
    rustix::fs::openat(&parent_fd, name, flags | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| {
        (
            format!("was made but cannot be opened ({e})"),
            "check its permissions".into(),
        )
    })
}

fn default_parent() -> std::result::Result<Parent, Unavailable> {
    let none = |reason: String, fix: &str| Unavailable::None {
        reason,
        fix: fix.to_string(),
    };
    let mount = match find_mount() {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(none(
                "no cgroup2 filesystem is mounted".into(),
                "mount cgroup2 or use --mechanism pgroup",
            ))
        }
        Err(e) => {
            return Err(none(
                format!("cannot read /proc/self/mountinfo ({e})"),
                "check that /proc is mounted",
            ))
        }
    };
    let own = super::delegate::own_cgroup_dir(&mount).map_err(|why| {
        none(
            why,
            "check that /proc is mounted, or pass --cgroup-parent with a writable cgroup",
        )
    })?;
    let not_delegated = match super::delegate::own_cgroup(&mount, own.as_deref()) {
        Ok(d) => {
            return open_named_parent(&d.path, ParentSource::Delegated)
                .map(|p| Parent {
                    how: Some(d.how),
                    bound_to: d.obtained.clone(),
                    ..p
                })
                .map_err(|e| {
                    none(
                        format!(
                            "the delegated cgroup {} cannot be used: {e}",
                            d.path.display()
                        ),
                        "check its permissions",
                    )
                })
        }
        Err(why) => why,
    };
    if systemd_manages(&mount) {
        let user = !rustix::process::geteuid().is_root();
        let stays = if own.is_some() {
            "; the job stays inside it"
        } else {
            ""
        };
        return Err(none(
            format!(
                "systemd manages the cgroup tree at {} and {not_delegated}{stays}",
                mount.path.display()
            ),
            &format!(
                "give the unit corral runs in Delegate=yes, or run corral in a delegated scope: \
                 `systemd-run{} --scope -p Delegate=yes -- corral run ...`, or pass \
                 --cgroup-parent with a delegated cgroup",
                if user { " --user" } else { "" }
            ),
        ));
    }
    if let Some(own) = own {
        // Something contains corral (another corral's job, a Slurm step, a container's
        // cgroup): its jobs go inside it, never beside it, or that container's stop, limits
        // and accounting would miss them.
        let home = super::delegate::jobs_home(&mount, &own);
        // Another user's cgroup (root's corral inside a cgroup delegated to a user) is not
        // ours to nest in: its owner could move the job's processes out of their cgroup.
        // Under pgroup they stay the job's, whatever cgroup they are in.
        let euid = rustix::process::geteuid().as_raw();
        if let Ok(st) = rustix::fs::stat(&home) {
            if st.st_uid != euid {
                return Err(none(
                    format!(
                        "{not_delegated}, and a job's cgroup must stay inside it (a cgroup of \
                         ours below one of uid {}'s could be emptied by that user)",
                        st.st_uid
                    ),
                    "give corral a cgroup delegated to its user (systemd's Delegate=yes, or \
                     the chown in docs/delegation.md), or pass --cgroup-parent",
                ));
            }
        }
        return open_named_parent(&home, ParentSource::Caller)
            .map(|p| Parent {
                how: Some("the cgroup corral runs in"),
                ..p
            })
            .map_err(|e| {
                let why = match &e {
                    Error::CgroupParent { problem, .. } => problem.clone(),
                    other => other.to_string(),
                };
                none(
                    format!(
                        "{not_delegated}, and as it {why}, a job's cgroup cannot be made \
                         inside it (it must not leave it)",
                    ),
                    "give corral a cgroup delegated to its user (systemd's Delegate=yes, or \
                     the chown in docs/delegation.md), or pass --cgroup-parent",
                )
            });
    }
    let path = mount.path.join(DEFAULT_PARENT);
    let mount_dir = rustix::fs::open(
        &mount.path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        none(
            format!("cannot open {} ({e})", mount.path.display()),
            "check permissions",
        )
    })?;
    // Another corral may remove the shared default parent between our mkdir and open when
    // its last job ends; make it again then.
    let mut attempts = 0;
    let dir = loop {
        attempts += 1;
        match rustix::fs::mkdirat(&mount_dir, DEFAULT_PARENT, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => {
                return Err(none(
                    format!(
                        "{not_delegated}, and {} cannot be created ({e})",
                        path.display()
                    ),
                    "run as root, or in a cgroup delegated to your user (e.g. under \
                     `systemd-run --user --scope -p Delegate=yes`), or pass --cgroup-parent \
                     with a writable cgroup",
                ))
            }
        }
        match rustix::fs::openat(
            &mount_dir,
            DEFAULT_PARENT,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => break fd,
            Err(e) if e == rustix::io::Errno::NOENT && attempts < 100 => continue,
            Err(e) => {
                return Err(none(
                    format!("cannot open {} ({e})", path.display()),
                    "check permissions",
                ))
            }
        }
    };
    if rustix::fs::accessat(&dir, PROCS, rustix::fs::Access::WRITE_OK, AtFlags::empty()).is_err() {
        return Err(none(
            format!("{} is not writable", path.display()),
            "run as root or pass --cgroup-parent",
        ));
    }
    Ok(Parent {
        path,
        dir,
        source: ParentSource::Default,
        how: None,
        bound_to: None,
    })
}

/// A host whose cgroup tree systemd owns: writing outside a delegated subtree would fight it.
pub(crate) fn systemd_manages(mount: &Mount) -> bool {
    let pid1_is_systemd = std::fs::read_to_string("/proc/1/comm")
        .map(|c| c.trim() == "systemd")
        .unwrap_or(false);
    pid1_is_systemd || mount.path.join("init.scope").exists()
}

/// What [`enable_controllers`] did.
#[derive(Debug, Default)]
pub(crate) struct Enabled {
    /// Controllers written to the parent's `cgroup.subtree_control`.
    pub(crate) controllers: Vec<String>,
    /// Where the calling process moved itself first, if it had to.
    pub(crate) moved_self_to: Option<PathBuf>,
}

/// Makes sure every controller in `needed` (`(controller, limit file)`, in order) is
/// enabled in `parent`'s `cgroup.subtree_control`, so a leaf made under it gets the limit
/// files. A controller the parent does not offer, or that cannot be enabled, is
/// [`Error::LimitUnavailable`] naming the first limit that needs it.
pub(crate) fn enable_controllers(
    parent: &Parent,
    needed: &[(&str, &str)],
    may_move_self: bool,
) -> Result<Enabled> {
    let mut done = Enabled::default();
    if needed.is_empty() {
        return Ok(done);
    }
    let offered = read_words(parent.dir.as_fd(), CONTROLLERS)
        .map_err(|e| Error::cgroup("read", parent.path.join(CONTROLLERS), e))?;
    for (controller, file) in needed {
        if !offered.iter().any(|c| c == controller) {
            return Err(not_offered(parent, controller, file));
        }
    }
    let enabled = read_words(parent.dir.as_fd(), SUBTREE_CONTROL)
        .map_err(|e| Error::cgroup("read", parent.path.join(SUBTREE_CONTROL), e))?;
    let mut missing: Vec<(&str, &str)> = Vec::new();
    for &(controller, file) in needed {
        if !enabled.iter().any(|c| c == controller)
            && !missing.iter().any(|(c, _)| *c == controller)
        {
            missing.push((controller, file));
        }
    }
    if missing.is_empty() {
        return Ok(done);
    }
    // No internal processes: the parent must be empty before it can hand controllers to
    // its children. If we are what is in it, we move; anyone else in it is an error below.
    if read_procs(parent.dir.as_fd())
        .map_err(|e| Error::cgroup("read", parent.path.join(PROCS), e))?
        .contains(&Pid::current())
    {
        if !may_move_self {
            let (controller, file) = missing[0];
            return Err(Error::LimitUnavailable {
                file: file.to_string(),
                controller: controller.to_string(),
                reason: format!(
                    "the cgroup parent {} is the cgroup this process runs in, and cgroup v2 \
                     enables controllers only in a cgroup with no process of its own",
                    parent.path.display()
                ),
                fix: "run the program in a leaf of its own below the delegated cgroup, or \
                      set Options::move_self_for_limits to let corral move it to \
                      <parent>/supervisor"
                    .into(),
            });
        }
        done.moved_self_to = Some(move_self_to_leaf(parent)?);
    }
    let text = missing
        .iter()
        .map(|(c, _)| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let unavailable =
        |(controller, file): (&str, &str), reason: String, fix: &str| Error::LimitUnavailable {
            file: file.to_string(),
            controller: controller.to_string(),
            reason,
            fix: fix.to_string(),
        };
    let fd = rustix::fs::openat(
        &parent.dir,
        SUBTREE_CONTROL,
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let written = fd.and_then(|fd| rustix::io::write(&fd, text.as_bytes()));
    match written {
        Ok(_) => {}
        Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
            return Err(unavailable(
                missing[0],
                format!(
                    "the {} controller cannot be enabled in {}: its cgroup.subtree_control \
                     is not writable ({e}), the cgroup is not delegated to this user",
                    missing[0].0,
                    parent.path.display()
                ),
                "run as root or give a cgroup delegated with its controllers \
                 (e.g. `systemd-run --user --scope -p Delegate=yes`), or drop the limit",
            ))
        }
        Err(e) if e == rustix::io::Errno::BUSY => {
            return Err(unavailable(
                missing[0],
                format!(
                    "the {} controller cannot be enabled in {}: it has processes of its own \
                     (cgroup v2 enables controllers only in a cgroup without processes)",
                    missing[0].0,
                    parent.path.display()
                ),
                "give a --cgroup-parent with no processes in it, or drop the limit",
            ))
        }
        Err(e) => {
            return Err(Error::cgroup(
                format!("write {text} to"),
                parent.path.join(SUBTREE_CONTROL),
                e.into(),
            ))
        }
    }
    done.controllers = missing.iter().map(|(c, _)| c.to_string()).collect();
    Ok(done)
}

/// The error for a controller `parent` does not offer, saying why where we can tell: on a
/// hybrid host a controller bound to a cgroup v1 hierarchy cannot be used by cgroup2 at all.
fn not_offered(parent: &Parent, controller: &str, file: &str) -> Error {
    let v1 = crate::linux::read_proc_file("/proc/self/cgroup")
        .map(|t| bound_to_v1(&t, controller))
        .unwrap_or(false);
    let (reason, fix) = if v1 {
        (
            format!(
                "the {controller} controller is bound to cgroup v1 on this host (a hybrid \
                 cgroup layout), so the cgroup2 parent {} cannot offer it",
                parent.path.display()
            ),
            "use a host booted with the unified hierarchy only \
             (systemd.unified_cgroup_hierarchy=1), or drop the limit"
                .to_string(),
        )
    } else {
        let above = parent
            .path
            .parent()
            .map(|p| p.join(SUBTREE_CONTROL).display().to_string())
            .unwrap_or_else(|| SUBTREE_CONTROL.to_string());
        (
            format!(
                "the {controller} controller is not available in the cgroup parent {} (not in \
                 its cgroup.controllers)",
                parent.path.display()
            ),
            format!("enable it above (`echo +{controller} > {above}`), or drop the limit"),
        )
    };
    Error::LimitUnavailable {
        file: file.to_string(),
        controller: controller.to_string(),
        reason,
        fix,
    }
}

/// Whether `/proc/self/cgroup` (`text`) lists a cgroup v1 hierarchy with `controller`:
/// lines `<id>:<controllers>:<path>`, with `0::<path>` for cgroup2.
fn bound_to_v1(text: &str, controller: &str) -> bool {
    text.lines().any(|line| {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers)) = (fields.next(), fields.next()) else {
            return false;
        };
        id != "0" && controllers.split(',').any(|c| c == controller)
    })
}

/// Moves the calling process (all its threads) into `<parent>/supervisor`, creating that
/// leaf if needed, and returns its path. For a parent that is the cgroup we run in: cgroup
/// v2 lets a cgroup enable controllers for its children only while it has no processes.
/// Call it only when the parent holds our own process: it changes the whole process's
/// cgroup.
pub(crate) fn move_self_to_leaf(parent: &Parent) -> Result<PathBuf> {
    let path = parent.path.join(SUPERVISOR_LEAF);
    match rustix::fs::mkdirat(&parent.dir, SUPERVISOR_LEAF, Mode::from_raw_mode(0o755)) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::EXIST => {}
        Err(e) => return Err(Error::cgroup("create", &path, e.into())),
    }
    let procs = rustix::fs::openat(
        &parent.dir,
        format!("{SUPERVISOR_LEAF}/{PROCS}").as_str(),
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::cgroup("open", path.join(PROCS), e.into()))?;
    // `0` is the writing process, with all its threads.
    rustix::io::write(&procs, b"0")
        .map_err(|e| Error::cgroup("write 0 (this process) to", path.join(PROCS), e.into()))?;
    Ok(path)
}

/// The whitespace-separated words of a small file under `dir`.
fn read_words(dir: BorrowedFd<'_>, file: &str) -> io::Result<Vec<String>> {
    Ok(read_small(dir, file)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// The PIDs in `cgroup.procs` under `dir`.
fn read_procs(dir: BorrowedFd<'_>) -> io::Result<Vec<Pid>> {
    Ok(read_small(dir, PROCS)?
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .collect())
}

/// A whole (small) file under `dir`, as text.
fn read_small(dir: BorrowedFd<'_>, file: &str) -> io::Result<String> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut text = String::new();
    io::Read::read_to_string(&mut File::from(fd), &mut text)?;
    Ok(text)
}

/// The value of `key` in a flat-keyed file (`key value` lines: `cpu.stat`, `memory.events`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads `populated` from a `cgroup.events` file.
fn read_populated(events: &File) -> io::Result<bool> {
    let mut buf = [0u8; 256];
    let n = match events.read_at(&mut buf, 0) {
        Ok(n) => n,
        // ENODEV: the cgroup was removed (by another cleaner: an outer job's cleanup and a
        // sweep may race for a nested job's leaf). Only an empty cgroup can be removed.
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(false),
        Err(e) => return Err(e),
    };
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    Ok(text.lines().any(|l| l == "populated 1"))
}

fn read_frozen(events: &File) -> io::Result<bool> {
    let mut buf = [0u8; 256];
    let n = events.read_at(&mut buf, 0)?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    Ok(text.lines().any(|l| l == "frozen 1"))
}

/// One job's cgroup.
#[derive(Debug)]
pub(crate) struct Leaf {
    /// Absolute path (for reports and messages; all access goes through `dir`).
    pub(crate) path: PathBuf,
    name: String,
    parent_dir: OwnedFd,
    parent_source: ParentSource,
    dir: OwnedFd,
    events: File,
    /// `cgroup.procs` opened for writing: the fork fallback moves the child through it.
    procs: OwnedFd,
    /// `cgroup.kill` (Linux 5.14) and `cgroup.freeze`, opened for writing when the leaf is
    /// made: a supervisor that gives up its privileges after the spawn (`corral-helper`)
    /// can still stop the job through them, as write access is checked at open.
    kill: Option<OwnedFd>,
    freeze: Option<OwnedFd>,
    removed: bool,
}

/// Opens `file` of a leaf for writing; `None` where the kernel lacks it.
fn open_control(dir: &OwnedFd, path: &Path, file: &str) -> Result<Option<OwnedFd>> {
    match rustix::fs::openat(dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(Error::cgroup("open", path.join(file), e.into())),
    }
}

impl Leaf {
    /// Creates a leaf named `base` under `parent` (or `base-2`, `base-3`, ... if a stale one
    /// of that name exists, e.g. from a crashed corral whose PID we now have).
    pub(crate) fn create(parent: Parent, base: &str) -> Result<Leaf> {
        let mut n = 1;
        let name = loop {
            let name = if n == 1 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            };
            match rustix::fs::mkdirat(&parent.dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => break name,
                Err(e) if e == rustix::io::Errno::EXIST && n < 100 => n += 1,
                // The default parent may be removed by another corral whose last job just
                // ended; make it again.
                Err(e)
                    if e == rustix::io::Errno::NOENT && parent.source == ParentSource::Default =>
                {
                    let again = default_parent().map_err(|u| match u {
                        Unavailable::Bad(e) => e,
                        Unavailable::None { reason, fix } => Error::NoCgroup { reason, fix },
                    })?;
                    return Leaf::create(again, base);
                }
                // Linux says EAGAIN when `cgroup.max.depth` or `cgroup.max.descendants` of
                // the parent or a cgroup above it is reached.
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    let err = Error::NoCgroup {
                        reason: format!(
                            "no cgroup can be made in {}: the cgroup.max.depth or \
                             cgroup.max.descendants of it or of a cgroup above it is reached",
                            parent.path.display()
                        ),
                        fix: "raise that limit, or use --mechanism pgroup (the job then stays \
                              in the cgroup corral runs in)"
                            .into(),
                    };
                    parent.release();
                    return Err(err);
                }
                Err(e) => {
                    let err = Error::cgroup("create", parent.path.join(&name), e.into());
                    parent.release();
                    return Err(err);
                }
            }
        };
        let name = name.as_str();
        let path = parent.path.join(name);
        let open = |dir: &OwnedFd, file: &str, flags: OFlags| {
            rustix::fs::openat(dir, file, flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Error::cgroup("open", path.join(file), e.into()))
        };
        let made = (|| {
            let dir = open(&parent.dir, name, OFlags::DIRECTORY | OFlags::RDONLY)?;
            let events = File::from(open(&dir, EVENTS, OFlags::RDONLY)?);
            let procs = open(&dir, PROCS, OFlags::WRONLY)?;
            let kill = open_control(&dir, &path, KILL)?;
            let freeze = open_control(&dir, &path, FREEZE)?;
            Ok::<_, Error>((dir, events, procs, kill, freeze))
        })();
        let (dir, events, procs, kill, freeze) = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&parent.dir, name, AtFlags::REMOVEDIR);
                return Err(e);
            }
        };
        Ok(Leaf {
            path,
            name: name.to_string(),
            parent_dir: parent.dir,
            parent_source: parent.source,
            dir,
            events,
            procs,
            kill,
            freeze,
            removed: false,
        })
    }

    /// Takes over an existing leaf at `path` (a stale job's, for the registry's sweep), to
    /// kill what is in it and remove it. The caller has checked that `path` is a cgroup it
    /// may act on.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    pub(crate) fn open_existing(path: &Path) -> Result<Leaf> {
        let (parent_dir, dir) = open_existing(path).map_err(|e| Error::cgroup("open", path, e))?;
        Leaf::adopt(path.to_path_buf(), parent_dir, dir)
    }

    /// The leaf's name (the job id).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The leaf directory (for `clone3`'s `CLONE_INTO_CGROUP`).
    pub(crate) fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// `cgroup.procs`, open for writing (for the fork fallback).
    pub(crate) fn procs_fd(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// `cgroup.events` (poll it for `POLLPRI`).
    pub(crate) fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Writes each limit file (`(file, value)`) in the leaf. Done before any process is in
    /// it.
    pub(crate) fn apply_limits(&self, files: &[(&str, String)]) -> Result<()> {
        for (file, value) in files {
            let path = self.path.join(file);
            let fd = rustix::fs::openat(
                &self.dir,
                *file,
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::cgroup("open", &path, e.into()))?;
            rustix::io::write(&fd, value.as_bytes())
                .map_err(|e| Error::cgroup(format!("write {value} to"), &path, e.into()))?;
        }
        Ok(())
    }

    /// What the leaf accounted, for the report: read once the job is empty. A file this
    /// kernel or this cgroup lacks (no controller) leaves its figures `None`.
    pub(crate) fn usage(&self) -> crate::report::Usage {
        let read = |file: &str| read_small(self.dir.as_fd(), file).ok();
        let cpu = read(CPU_STAT);
        let memory_events = read(MEMORY_EVENTS);
        let cpu_key = |k: &str| cpu.as_deref().and_then(|t| keyed(t, k));
        let single = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());
        let mut usage = crate::report::Usage {
            cpu_user_usec: cpu_key("user_usec"),
            cpu_system_usec: cpu_key("system_usec"),
            cpu_nr_throttled: cpu_key("nr_throttled"),
            cpu_throttled_usec: cpu_key("throttled_usec"),
            memory_peak_bytes: single(MEMORY_PEAK),
            pids_peak: single(PIDS_PEAK),
            oom_kills: memory_events.as_deref().and_then(|t| keyed(t, "oom_kill")),
            unavailable: Vec::new(),
        };
        usage.unavailable = usage
            .figures()
            .into_iter()
            .filter_map(|(field, value)| value.is_none().then_some(field))
            .collect();
        usage
    }

    /// Whether any process lives in the leaf or below it.
    pub(crate) fn populated(&self) -> Result<bool> {
        read_populated(&self.events).map_err(|e| Error::cgroup("read", self.path.join(EVENTS), e))
    }

    /// Every process in the leaf and its descendant cgroups.
    pub(crate) fn members(&self) -> Result<Vec<Pid>> {
        let mut out = Vec::new();
        let dup = reopen(&self.dir).map_err(|e| Error::cgroup("open", &self.path, e.into()))?;
        collect_members(dup, &self.path, &mut out)?;
        Ok(out)
    }

    /// Calls `each` with a pidfd for every member, in batches, keeping only members still
    /// listed in the subtree after their pidfd was opened, so a PID reused by a process
    /// outside the job is never signalled. Batches keep the number of open descriptors
    /// small whatever the job's size (the default soft limit is 1024).
    ///
    /// Why one re-read per batch suffices: the pidfd pins the process X that had PID P when
    /// it was opened. If P is listed in our subtree afterwards and X is alive, X is the one
    /// listed (a PID names one live process), so X is ours. If X had died, the pidfd
    /// signals nothing (ESRCH), whoever holds P now. If P is no longer listed, we skip it.
    pub(crate) fn for_each_member(&self, each: &mut dyn FnMut(Pid, BorrowedFd<'_>)) -> Result<()> {
        const BATCH: usize = 256;
        let pids = self.members()?;
        for chunk in pids.chunks(BATCH) {
            let opened: Vec<(Pid, OwnedFd)> = chunk
                .iter()
                .filter_map(|p| pidfd::open(*p).ok().map(|fd| (*p, fd)))
                .collect();
            let still: std::collections::HashSet<Pid> = self.members()?.into_iter().collect();
            for (pid, fd) in &opened {
                if still.contains(pid) {
                    each(*pid, fd.as_fd());
                }
            }
        }
        Ok(())
    }

    /// Sends a polite signal, then SIGCONT, to every member (SIGCONT to all of them, the
    /// polite signal to those `filter` accepts). Returns how many got each, and whether the
    /// freezer was needed.
    ///
    /// A process forked after `cgroup.procs` was read would miss the polite signal and meet
    /// only SIGKILL after the grace. So after a pass the list is read again; if anything
    /// joined meanwhile, the subtree is frozen (nothing forks), the newcomers are signalled,
    /// and it is thawed: the frozen members act on their signals once thawed. The freezer
    /// is used only then, because its `frozen` notifications use up `cgroup.events`' rate
    /// limit (one per ~10 ms) and would delay the `populated 0` that ends the grace.
    /// Passes repeat until one finds no newcomer: frozen, the second finds none; a freeze
    /// not complete within a second (a large tree on a slow machine), or no `cgroup.freeze`
    /// at all (Linux < 5.2), lets forks through that the next passes reach. Bounded: a
    /// member that ignores the signal and forks forever would never let it end.
    pub(crate) fn signal_then_continue(
        &self,
        sig: Signal,
        filter: &dyn Fn(Pid) -> bool,
    ) -> Result<(usize, usize, bool)> {
        let mut reached: HashSet<Pid> = HashSet::new();
        let (mut polite, mut cont) = (0, 0);
        let mut pass = |reached: &mut HashSet<Pid>| -> Result<usize> {
            let mut new = 0;
            self.for_each_member(&mut |pid, fd| {
                if !reached.insert(pid) {
                    return;
                }
                new += 1;
                if filter(pid) && pidfd::send_signal(fd, sig).is_ok() {
                    polite += 1;
                }
                if sig != Signal::CONT && pidfd::send_signal(fd, Signal::CONT).is_ok() {
                    cont += 1;
                }
            })?;
            Ok(new)
        };
        pass(&mut reached)?;
        let joined = self.members()?.iter().any(|p| !reached.contains(p));
        if !joined {
            return Ok((polite, cont, false));
        }
        let frozen = match self.set_frozen(true) {
            Ok(()) => true,
            Err(Error::Cgroup { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        // Passes until one finds nobody new. Frozen, the first finds every newcomer and
        // the second nobody. A freeze still under way when `wait_frozen` gives up (a large
        // tree on a slow machine) lets some forks through, which the next passes reach.
        let mut passes = || -> Result<()> {
            for _ in 0..100 {
                if pass(&mut reached)? == 0 {
                    break;
                }
            }
            Ok(())
        };
        let result = if frozen {
            self.wait_frozen(Instant::now() + Duration::from_secs(1))
                .and_then(|()| passes())
        } else {
            passes()
        };
        if frozen {
            self.set_frozen(false)?;
        }
        result?;
        Ok((polite, cont, frozen))
    }

    /// Waits until the subtree is empty or `deadline` passes; also returns early when
    /// `interrupt` becomes readable. Returns whether the subtree is empty.
    pub(crate) fn wait_empty(
        &self,
        deadline: Option<Instant>,
        interrupt: Option<BorrowedFd<'_>>,
    ) -> Result<WaitEmpty> {
        loop {
            if !self.populated()? {
                return Ok(WaitEmpty::Empty);
            }
            let timeout = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(WaitEmpty::TimedOut);
                    }
                    Some(d - now)
                }
                None => None,
            };
            let mut fds = vec![PollFd::from_borrowed_fd(self.events_fd(), PollFlags::PRI)];
            if let Some(i) = interrupt {
                fds.push(PollFd::from_borrowed_fd(i, PollFlags::IN));
            }
            crate::linux::poll(&mut fds, timeout)?;
            if fds.len() > 1 && !fds[1].revents().is_empty() {
                if !self.populated()? {
                    return Ok(WaitEmpty::Empty);
                }
                return Ok(WaitEmpty::Interrupted);
            }
        }
    }

    /// Kills every process in the subtree: `cgroup.kill`, or the freezer loop where the
    /// kernel lacks it (or `force_fallback`). Returns the method used, once the subtree is
    /// empty or `deadline` has passed.
    ///
    /// `cgroup.kill` alone is not enough: on Linux 6.x it misses a process whose main thread
    /// has exited while other threads run (it signals the exited leader, which no longer
    /// takes signals). So if the subtree is not empty shortly after, every member also gets
    /// SIGKILL through a pidfd (a process-directed signal reaches its live threads), until
    /// it is.
    pub(crate) fn kill_all(&self, force_fallback: bool, deadline: Instant) -> Result<KillMethod> {
        let mut method = self.kill_start(force_fallback, deadline)?;
        if method == KillMethod::FreezeAndSignal {
            return Ok(method);
        }
        loop {
            let soon = (Instant::now() + Duration::from_millis(100)).min(deadline);
            if self.wait_empty(Some(soon), None)? == WaitEmpty::Empty || Instant::now() >= deadline
            {
                return Ok(method);
            }
            method = KillMethod::CgroupKillThenSignal;
            self.for_each_member(&mut |_, fd| {
                let _ = pidfd::send_signal(fd, Signal::KILL);
            })?;
        }
    }

    /// Starts the kill without waiting for it: writes `cgroup.kill`. Where the kernel lacks
    /// it (Linux < 5.14, or `force_fallback`), runs the whole freezer loop instead, which does
    /// wait (until empty or `deadline`).
    pub(crate) fn kill_start(&self, force_fallback: bool, deadline: Instant) -> Result<KillMethod> {
        let mut method = KillMethod::FreezeAndSignal;
        if !force_fallback {
            // Linux < 5.14: no cgroup.kill.
            if let Some(fd) = &self.kill {
                match rustix::io::write(fd, b"1") {
                    // ENODEV: another cleaner removed the cgroup, so it was empty.
                    Ok(_) | Err(rustix::io::Errno::NODEV) => {}
                    Err(e) => {
                        return Err(Error::cgroup("write 1 to", self.path.join(KILL), e.into()))
                    }
                }
                method = KillMethod::CgroupKill;
            }
        }
        if method == KillMethod::FreezeAndSignal {
            self.kill_by_freezing(deadline)?;
        }
        Ok(method)
    }

    /// The pre-5.14 kill: freeze so nothing forks, SIGKILL each member, thaw, until empty.
    fn kill_by_freezing(&self, deadline: Instant) -> Result<()> {
        while self.populated()? {
            self.set_frozen(true)?;
            self.wait_frozen(Instant::now() + Duration::from_secs(1))?;
            self.for_each_member(&mut |_, fd| {
                let _ = pidfd::send_signal(fd, Signal::KILL);
            })?;
            self.set_frozen(false)?;
            // Let SIGKILLed tasks leave; new members that slipped in get the next round.
            if let WaitEmpty::Empty =
                self.wait_empty(Some(Instant::now() + Duration::from_millis(200)), None)?
            {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        Ok(())
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let fd = self.freeze.as_ref().ok_or_else(|| {
            Error::cgroup(
                "open",
                self.path.join(FREEZE),
                io::Error::from_raw_os_error(libc::ENOENT),
            )
        })?;
        let v: &[u8] = if frozen { b"1" } else { b"0" };
        rustix::io::write(fd, v).map_err(|e| {
            Error::cgroup(
                format!("write {} to", v[0] as char),
                self.path.join(FREEZE),
                e.into(),
            )
        })?;
        Ok(())
    }

    fn wait_frozen(&self, deadline: Instant) -> Result<()> {
        loop {
            let frozen = read_frozen(&self.events)
                .map_err(|e| Error::cgroup("read", self.path.join(EVENTS), e))?;
            if frozen || !self.populated()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let mut fds = [PollFd::from_borrowed_fd(self.events_fd(), PollFlags::PRI)];
            crate::linux::poll(&mut fds, Some(deadline - now))?;
        }
    }

    /// A leaf made by another process (the watchdog takes over the leaves of a host that
    /// died): `parent_dir` and `dir` as [`open_existing`] opened them. Removing it removes
    /// corral's default parent too when that was its parent and it is now unused; dropping
    /// it without [`Leaf::remove`] kills and removes it, as for any leaf.
    pub(crate) fn adopt(path: PathBuf, parent_dir: OwnedFd, dir: OwnedFd) -> Result<Leaf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::cgroup("adopt", &path, io::ErrorKind::InvalidInput.into()))?;
        let open = |file: &str, flags: OFlags| {
            rustix::fs::openat(&dir, file, flags | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Error::cgroup("open", path.join(file), e.into()))
        };
        let events = File::from(open(EVENTS, OFlags::RDONLY)?);
        let procs = open(PROCS, OFlags::WRONLY)?;
        let kill = open_control(&dir, &path, KILL)?;
        let freeze = open_control(&dir, &path, FREEZE)?;
        let default = find_mount()
            .ok()
            .flatten()
            .is_some_and(|m| path.parent() == Some(m.path.join(DEFAULT_PARENT).as_path()));
        Ok(Leaf {
            path,
            name,
            parent_dir,
            parent_source: if default {
                ParentSource::Default
            } else {
                ParentSource::Option
            },
            dir,
            events,
            procs,
            kill,
            freeze,
            removed: false,
        })
    }

    /// Gives the leaf up without removing it (a detached job keeps its cgroup). Returns its
    /// path.
    pub(crate) fn forget(mut self) -> PathBuf {
        self.removed = true;
        std::mem::take(&mut self.path)
    }

    /// Removes the leaf and any cgroups the job created below it, depth first, retrying
    /// EBUSY briefly (the kernel may still be tearing down exited tasks). The default parent
    /// is removed too when this was its last job.
    pub(crate) fn remove(mut self) -> Result<()> {
        self.removed = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        // Usually the job made no cgroups of its own: one rmdir does it. Otherwise
        // (ENOTEMPTY/EBUSY) remove its cgroups depth first, then retry.
        if rustix::fs::unlinkat(&self.parent_dir, self.name.as_str(), AtFlags::REMOVEDIR).is_err() {
            let dup = reopen(&self.dir).map_err(|e| Error::cgroup("open", &self.path, e.into()))?;
            remove_children(dup, &self.path, deadline)?;
            rmdir_retry(self.parent_dir.as_fd(), &self.name, &self.path, deadline)?;
        }
        self.remove_default_parent_if_unused();
        Ok(())
    }
}

impl Leaf {
    fn remove_default_parent_if_unused(&self) {
        remove_default_parent_if_unused(self.parent_source);
    }
}

impl Parent {
    /// Gives up a parent no leaf was made in (an error before the job started): the
    /// default parent corral may have just created goes again, so bad input leaves nothing.
    pub(crate) fn release(self) {
        remove_default_parent_if_unused(self.source);
    }
}

/// The default parent is corral's own; it goes when its last job does. Best effort: it
/// fails with EBUSY while other jobs use it.
fn remove_default_parent_if_unused(source: ParentSource) {
    if source != ParentSource::Default {
        return;
    }
    if let Ok(Some(m)) = find_mount() {
        if let Ok(mdir) = rustix::fs::open(
            &m.path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::fs::unlinkat(&mdir, DEFAULT_PARENT, AtFlags::REMOVEDIR);
        }
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        if !self.removed {
            // A leaf dropped without `remove` (an error path): kill what is in it and remove
            // it, so nothing is left behind.
            let _ = self.kill_all(false, Instant::now() + Duration::from_secs(5));
            if let Ok(dup) = reopen(&self.dir) {
                let _ = remove_children(dup, &self.path, Instant::now() + Duration::from_secs(2));
            }
            let _ = rmdir_retry(
                self.parent_dir.as_fd(),
                &self.name,
                &self.path,
                Instant::now() + Duration::from_secs(2),
            );
            self.remove_default_parent_if_unused();
        }
    }
}

/// Opens the existing cgroup at `path` (absolute, with a last component) and its parent
/// directory, refusing anything that is not a directory on a cgroup2 filesystem: the
/// parent first, then the cgroup through it. Returns `(parent, cgroup)`.
pub(crate) fn open_existing(path: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(invalid());
    };
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid());
    }
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let parent_dir = rustix::fs::open(parent, flags, Mode::empty())?;
    let dir = rustix::fs::openat(&parent_dir, name, flags, Mode::empty())?;
    if !is_cgroup2(dir.as_fd())? {
        return Err(invalid());
    }
    Ok((parent_dir, dir))
}

/// How the final kill was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillMethod {
    CgroupKill,
    /// `cgroup.kill` left something (an exited leader's live threads); pidfds finished it.
    CgroupKillThenSignal,
    FreezeAndSignal,
}

/// The outcome of waiting for a cgroup to empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEmpty {
    Empty,
    TimedOut,
    Interrupted,
}

/// A new descriptor for the directory `dir`, with its own read position. (A `dup` would share
/// the position, so a second listing through it would start at the end and see nothing.)
fn reopen(dir: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn child_dirs(dir: &OwnedFd) -> io::Result<Vec<std::ffi::CString>> {
    let mut names = Vec::new();
    let dup = reopen(dir)?;
    let mut rd = rustix::fs::Dir::new(dup)?;
    while let Some(entry) = rd.read() {
        let entry = entry?;
        if entry.file_type() == rustix::fs::FileType::Directory {
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

fn collect_members(dir: OwnedFd, path: &Path, out: &mut Vec<Pid>) -> Result<()> {
    let fd = match rustix::fs::openat(&dir, PROCS, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
    {
        Ok(fd) => fd,
        // A cgroup removed while we walk (ENODEV: removed by another cleaner after we
        // opened its directory) has no members.
        Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NODEV => return Ok(()),
        Err(e) => return Err(Error::cgroup("open", path.join(PROCS), e.into())),
    };
    // SAFETY: `fd` is a freshly opened, owned descriptor.
    let mut f = unsafe { File::from_raw_fd(fd.into_raw_fd()) };
    let mut text = String::new();
    match io::Read::read_to_string(&mut f, &mut text) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        Err(e) => return Err(Error::cgroup("read", path.join(PROCS), e)),
    }
    out.extend(
        text.lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(Pid::from_raw),
    );
    for name in child_dirs(&dir).map_err(|e| Error::cgroup("list", path, e))? {
        let sub = match rustix::fs::openat(
            &dir,
            name.as_c_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOENT => continue,
            Err(e) => {
                return Err(Error::cgroup(
                    "open",
                    path.join(OsStr::from_bytes(name.to_bytes())),
                    e.into(),
                ))
            }
        };
        collect_members(sub, &path.join(OsStr::from_bytes(name.to_bytes())), out)?;
    }
    Ok(())
}

fn remove_children(dir: OwnedFd, path: &Path, deadline: Instant) -> Result<()> {
    for name in child_dirs(&dir).map_err(|e| Error::cgroup("list", path, e))? {
        let sub_path = path.join(OsStr::from_bytes(name.to_bytes()));
        if let Ok(sub) = rustix::fs::openat(
            &dir,
            name.as_c_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            remove_children(sub, &sub_path, deadline)?;
        }
        rmdir_retry(
            dir.as_fd(),
            OsStr::from_bytes(name.to_bytes()),
            &sub_path,
            deadline,
        )?;
    }
    Ok(())
}

fn rmdir_retry<P: rustix::path::Arg + Copy>(
    parent: BorrowedFd<'_>,
    name: P,
    path: &Path,
    deadline: Instant,
) -> Result<()> {
    let mut pause = Duration::from_millis(1);
    loop {
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::NOENT => return Ok(()),
            // EBUSY: tasks are still leaving. This is the one place we back off on a timer:
            // the kernel gives no event for "rmdir would now succeed".
            Err(e) if e == rustix::io::Errno::BUSY && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(Error::cgroup("remove", path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_hybrid() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.path, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, Path::new("/"));
    }

    #[test]
    fn v1_controllers_from_proc_self_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n2:cpu,cpuacct:/\n0::/\n";
        assert!(bound_to_v1(hybrid, "memory"));
        assert!(bound_to_v1(hybrid, "cpu"));
        assert!(!bound_to_v1(hybrid, "pids"));
        assert!(!bound_to_v1(hybrid, "systemd"));
        assert!(!bound_to_v1("0::/user.slice\n", "memory"));
    }

    /// A directory that looks like a cgroup parent to [`enable_controllers`]: plain files
    /// stand in for the kernel's.
    fn fake_parent(name: &str, controllers: &str, subtree: &str, procs: &str) -> Parent {
        let path = std::env::temp_dir().join(format!("corral-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join(SUPERVISOR_LEAF)).unwrap();
        for (file, text) in [
            (CONTROLLERS, controllers),
            (SUBTREE_CONTROL, subtree),
            (PROCS, procs),
            ("supervisor/cgroup.procs", ""),
        ] {
            std::fs::write(path.join(file), text).unwrap();
        }
        let dir = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        Parent {
            path,
            dir,
            source: ParentSource::Option,
            how: None,
            bound_to: None,
        }
    }

    fn read(parent: &Parent, file: &str) -> String {
        std::fs::read_to_string(parent.path.join(file)).unwrap()
    }

    #[test]
    fn a_controller_the_parent_lacks_is_an_error_naming_it() {
        let p = fake_parent("lacks", "cpu io", "", "");
        let e = enable_controllers(&p, &[("cpu", "cpu.max"), ("memory", "memory.max")], true)
            .unwrap_err();
        assert!(
            matches!(&e, Error::LimitUnavailable { file, controller, .. }
                if file == "memory.max" && controller == "memory"),
            "{e:?}"
        );
        assert_eq!(read(&p, SUBTREE_CONTROL), "", "nothing enabled on failure");
        std::fs::remove_dir_all(&p.path).unwrap();
    }

    #[test]
    fn only_missing_controllers_are_enabled_and_we_move_only_out_of_our_own_cgroup() {
        // Already enabled: nothing is written.
        let p = fake_parent("enabled", "cpu memory pids", "memory", "1\n");
        let done = enable_controllers(&p, &[("memory", "memory.max")], true).unwrap();
        assert!(done.controllers.is_empty() && done.moved_self_to.is_none());
        std::fs::remove_dir_all(&p.path).unwrap();

        // Someone else's process in the parent: we do not move.
        let p = fake_parent("other", "cpu memory pids", "memory", "1\n");
        let needed = [
            ("memory", "memory.max"),
            ("pids", "pids.max"),
            ("cpu", "cpu.max"),
        ];
        let done = enable_controllers(&p, &needed, true).unwrap();
        assert_eq!(done.controllers, ["pids", "cpu"]);
        assert_eq!(done.moved_self_to, None);
        assert_eq!(read(&p, SUBTREE_CONTROL), "+pids +cpu");
        assert_eq!(read(&p, "supervisor/cgroup.procs"), "");
        std::fs::remove_dir_all(&p.path).unwrap();

        // Our own process in the parent: we move into <parent>/supervisor first.
        let me = format!("1\n{}\n", std::process::id());
        let p = fake_parent("own", "pids", "", &me);
        let done = enable_controllers(&p, &[("pids", "pids.max")], true).unwrap();
        assert_eq!(done.moved_self_to, Some(p.path.join(SUPERVISOR_LEAF)));
        assert_eq!(read(&p, "supervisor/cgroup.procs"), "0");
        assert_eq!(read(&p, SUBTREE_CONTROL), "+pids");
        std::fs::remove_dir_all(&p.path).unwrap();

        // The same, not allowed to move (the library's default): an error that says how,
        // and nothing moved or enabled.
        let p = fake_parent("own-refused", "pids", "", &me);
        let err = enable_controllers(&p, &[("pids", "pids.max")], false).unwrap_err();
        assert!(matches!(err, Error::LimitUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("move_self_for_limits"), "{err}");
        assert_eq!(read(&p, "supervisor/cgroup.procs"), "", "nothing moved");
        assert_eq!(read(&p, SUBTREE_CONTROL), "");
        std::fs::remove_dir_all(&p.path).unwrap();
    }

    #[test]
    fn keyed_files() {
        let stat = "usage_usec 250\nuser_usec 200\nsystem_usec 50\nnr_throttled 3\n";
        assert_eq!(keyed(stat, "user_usec"), Some(200));
        assert_eq!(keyed(stat, "nr_throttled"), Some(3));
        assert_eq!(keyed(stat, "throttled_usec"), None);
        assert_eq!(keyed("low 0\noom 1\noom_kill 2\n", "oom_kill"), Some(2));
    }

    #[test]
    fn mountinfo_escapes_and_optional_fields() {
        let text = "41 31 0:38 /sub /mnt/my\\040cg rw shared:9 master:2 - cgroup2 none rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.path, Path::new("/mnt/my cg"));
        assert_eq!(m.root, Path::new("/sub"));
        assert!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }
}
