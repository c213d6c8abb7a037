//! Shared helpers: a per-test [`Sandbox`] (temp dir + cgroup subtree), a [`Run`] builder for
//! `corral run`, the running [`Job`], the processes a tree reported ([`Procs`], held as
//! pidfds) and the [`Finished`] result with its JSON report.
//!
//! Rules these helpers keep, so the tests can run in parallel and never harm the host:
//! - A process is only ever signalled through a pidfd opened while it was known to be alive
//!   (or, for corral itself, while it is our unreaped child). No numeric PID is killed.
//! - A process group is only signalled when this test created it (`process_group(0)`) and
//!   its leader is our unreaped child, so the group id cannot have been reused.
//! - Every wait is an event wait or a poll against a deadline; no fixed sleep proves death.
//! - Each test gets its own cgroup subtree, killed and removed in `Drop` even on panic.

#![allow(dead_code)] // each behaviour module uses a different subset

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_testkit::mountinfo::Cgroup2Mount;
use corral_testkit::{poll_until, Described, Until};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

pub const CORRAL: &str = corral_testkit::CORRAL;
pub const TESTTREE: &str = corral_testkit::TESTTREE;

/// How long a tree may take to report itself ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(15);
/// How long after the first SIGINT/SIGTERM of a stop a second one counts as a second one
/// (corral's `SECOND_SIGNAL_AFTER`, src/ladder.rs).
pub const SECOND_SIGNAL_AFTER: Duration = Duration::from_millis(100);
/// How long a process may take to be seen gone once corral has returned.
pub const GONE_DEADLINE: Duration = Duration::from_secs(2);
/// How long corral may take to return, on top of the grace a test asks for: a hang
/// detector, not a performance bound. `CORRAL_TEST_SLOW=N` multiplies it by N, for an
/// emulated machine (the VM suite under TCG, where stopping a 2000-process fork storm alone
/// takes over 20 s).
pub fn corral_deadline() -> Duration {
    let scale = std::env::var("CORRAL_TEST_SLOW")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1);
    Duration::from_secs(30) * scale
}

/// The containment mechanism a test forces with `--mechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Cgroup,
    Pgroup,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Cgroup => "cgroup",
            Mechanism::Pgroup => "pgroup",
        }
    }
}

/// For each `fn name(mechanism: Mechanism)` given, generates `mod name { fn cgroup(); fn
/// pgroup(); }` test functions, so each behaviour runs (and is reported) once per mechanism.
macro_rules! both_mechanisms {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn cgroup() {
                    super::$name($crate::util::Mechanism::Cgroup)
                }
                #[test]
                fn pgroup() {
                    super::$name($crate::util::Mechanism::Pgroup)
                }
            }
        )+
    };
}
pub(crate) use both_mechanisms;

/// Reports that a test cannot run here: prints `SKIPPED: <reason>` to stderr, or panics
/// when `CORRAL_REQUIRE_ALL=1` (CI, where every test must run).
pub fn skip(reason: impl std::fmt::Display) {
    if std::env::var_os("CORRAL_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("test cannot run and CORRAL_REQUIRE_ALL=1: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

// ---- cgroups ---------------------------------------------------------------------------

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    Some(Cgroup2Mount::find().ok()??.path)
}

/// The cgroup directory of process `pid` (`"self"` for this one), from its
/// `/proc/<pid>/cgroup`; `None` if it is gone (or cgroup2 is not mounted).
pub fn cgroup_dir_of(pid: impl std::fmt::Display) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

/// Where test cgroups go.
///
/// - `CORRAL_TEST_CGROUP_BASE`, if set.
/// - Else the cgroup this test process runs in, when it is delegated to us: marked by
///   systemd (`trusted.delegate` / `user.delegate`), or, for a user, owned by us. This is
///   the case under `systemd-run [--user] --scope -p Delegate=yes`, where nothing else is
///   writable. The processes in it (this test process, and whoever started it in the
///   scope) first move into a leaf `corral-tests` of it, so that it holds no process and
///   can hand its controllers down (cgroup v2's no-internal-processes rule); every
///   controller it offers is then enabled for its children.
/// - Else the cgroup2 mount (root on a host without systemd).
pub fn test_cgroup_base() -> Result<PathBuf, String> {
    static BASE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BASE.get_or_init(find_test_cgroup_base).clone()
}

fn find_test_cgroup_base() -> Result<PathBuf, String> {
    if let Some(base) = std::env::var_os("CORRAL_TEST_CGROUP_BASE").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(base));
    }
    let mount = cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let Some(rel) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(mount);
    };
    let own = mount.join(rel.trim_start_matches('/'));
    if own == mount {
        return Ok(mount);
    }
    let marked = ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut buf = [0u8; 8];
        matches!(rustix::fs::getxattr(&own, *name, &mut buf), Ok(n) if &buf[..n] == b"1")
    });
    let euid = rustix::process::geteuid();
    let owned = !euid.is_root()
        && fs::metadata(&own).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == euid.as_raw()
        });
    if !marked && !owned {
        return Ok(mount);
    }
    let leaf = own.join("corral-tests");
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    let procs = fs::read_to_string(own.join("cgroup.procs")).map_err(|e| e.to_string())?;
    for pid in procs.split_whitespace() {
        // A process that exited meanwhile is no matter.
        let _ = fs::write(leaf.join("cgroup.procs"), pid);
    }
    let offered = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    for controller in offered.split_whitespace() {
        // Best effort: a controller that cannot be handed down shows up in the tests that
        // need it, which say so.
        let _ = fs::write(own.join("cgroup.subtree_control"), format!("+{controller}"));
    }
    Ok(own)
}

/// A cgroup subtree owned by one test:
///
/// ```text
/// <cgroup2 mount>/corral-test-<pid>-<name>-<n>/
///     corral/   corral runs here (and, in pgroup mode, its whole job)
///     jobs/     passed as --cgroup-parent; corral's job cgroups appear here
///     other/    bystanders
/// ```
///
/// `Drop` writes `1` to `cgroup.kill` of every cgroup in the subtree, waits until it is
/// unpopulated and removes the directories depth-first, even when the test panicked.
pub struct CgroupTree {
    mount: PathBuf,
    root: PathBuf,
}

impl CgroupTree {
    /// Creates the subtree. `CORRAL_TEST_NO_CGROUP=1` makes this fail, to run the suite as
    /// on a host without a writable cgroup2 (cgroup tests skip, pgroup tests rely on pidfds).
    pub fn create(name: &str) -> Result<CgroupTree, String> {
        if std::env::var_os("CORRAL_TEST_NO_CGROUP").is_some_and(|v| v == "1") {
            return Err("CORRAL_TEST_NO_CGROUP=1".into());
        }
        let base = test_cgroup_base()?;
        let mount = cgroup2_mount().ok_or("no cgroup2 mount in /proc/self/mountinfo")?;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = base.join(format!(
            "corral-test-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&root)
            .map_err(|e| format!("cannot create a cgroup at {}: {e}", root.display()))?;
        let tree = CgroupTree { mount, root };
        for leaf in ["corral", "jobs", "other"] {
            let path = tree.root.join(leaf);
            fs::create_dir(&path)
                .map_err(|e| format!("cannot create a cgroup at {}: {e}", path.display()))?;
        }
        Ok(tree)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Where corral (and, in pgroup mode, its job) runs.
    pub fn corral_leaf(&self) -> PathBuf {
        self.root.join("corral")
    }
    /// The `--cgroup-parent` for corral.
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }
    /// Where bystanders run.
    pub fn other_leaf(&self) -> PathBuf {
        self.root.join("other")
    }

    /// The cgroups directly under `path`.
    pub fn children(path: &Path) -> Vec<PathBuf> {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        children.sort();
        children
    }

    /// `populated` from `cgroup.events` (covers the whole subtree below `path`).
    pub fn populated(path: &Path) -> bool {
        let events = path.join("cgroup.events");
        let text = fs::read_to_string(&events)
            .unwrap_or_else(|e| panic!("read {}: {e}", events.display()));
        text.lines().any(|l| l == "populated 1")
    }

    /// The PIDs in `cgroup.procs` of `path` and every cgroup below it.
    pub fn procs_recursive(path: &Path) -> Vec<i32> {
        let mut pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for child in Self::children(path) {
            pids.extend(Self::procs_recursive(&child));
        }
        pids
    }

    /// Polls until no process is left in `path`'s subtree; panics naming `what` and the
    /// processes left once `until` has passed.
    pub fn wait_empty(path: &Path, until: impl Into<Until>, what: impl std::fmt::Display) {
        poll_until(
            format_args!("{what}: {} empty", path.display()),
            until,
            || match Self::populated(path) {
                false => Ok(()),
                true => Err(Described(|| {
                    format!("left: {}", describe_pids(&Self::procs_recursive(path)))
                })),
            },
        );
    }

    /// All cgroups of the subtree, children before their parent.
    fn post_order(path: &Path, out: &mut Vec<PathBuf>) {
        for child in Self::children(path) {
            Self::post_order(&child, out);
        }
        out.push(path.to_path_buf());
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A subtree can grow while being killed (a fork racing cgroup.kill): list it
            // again each round.
            let mut all = Vec::new();
            Self::post_order(&self.root, &mut all);
            for cgroup in &all {
                let kill = cgroup.join("cgroup.kill");
                if let Err(e) = fs::write(&kill, "1") {
                    eprintln!("cleanup: failed to write 1 to {}: {e}", kill.display());
                }
            }
            self.kill_listed();
            let round = Instant::now() + Duration::from_millis(200);
            while Self::populated_quiet(&self.root) && Instant::now() < round {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut failed = None;
            for cgroup in &all {
                if let Err(e) = fs::remove_dir(cgroup) {
                    if e.kind() != io::ErrorKind::NotFound {
                        failed = Some((cgroup.clone(), e));
                    }
                }
            }
            match failed {
                None if !self.root.exists() => return,
                Some((cgroup, e)) if Instant::now() >= deadline => {
                    eprintln!("cleanup: failed to remove cgroup {}: {e}", cgroup.display());
                    return;
                }
                _ => {}
            }
        }
    }
}

impl CgroupTree {
    /// SIGKILLs, through a pidfd, every process that `cgroup.procs` lists in the subtree.
    /// `cgroup.kill` alone misses a process whose thread-group leader has exited (the
    /// kernel sends its SIGKILL to the exited leader thread only). A PID is signalled only
    /// if its `/proc/<pid>/cgroup` was read, in this subtree, while its pidfd showed it
    /// alive, so a reused PID is never hit.
    fn kill_listed(&self) {
        for pid in Self::procs_recursive(&self.root) {
            let Some(raw) = Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 1) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue;
            };
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
                continue;
            };
            let inside = self
                .mount
                .join(path.trim_start_matches('/'))
                .starts_with(&self.root);
            if inside && !exited(fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
            }
        }
    }

    fn populated_quiet(path: &Path) -> bool {
        fs::read_to_string(path.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }
}

/// Makes the command's child write itself into `leaf` before it execs, so corral and
/// everything it starts is born in the test's cgroup subtree.
pub fn place_in_cgroup(command: &mut Command, leaf: &Path) {
    let procs = CString::new(leaf.join("cgroup.procs").into_os_string().into_vec())
        .expect("cgroup path has no NUL byte");
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // async-signal-safe functions (open, write, close) on memory allocated before the fork,
    // and `io::Error::last_os_error` only reads errno.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
}

/// Makes the command's child drop root for `uid` (as user and group id, no supplementary
/// groups) before it execs; registered after [`place_in_cgroup`], which needs root.
fn drop_root(command: &mut Command, uid: u32) {
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls setgroups, setgid and setuid (the child has one thread, so
    // glibc's set*id broadcast to other threads does not arise).
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// ---- sandbox ---------------------------------------------------------------------------

/// Everything one test owns: a temp directory and (when available) a cgroup subtree.
pub struct Sandbox {
    pub name: String,
    pub dir: PathBuf,
    pub cgroup: Option<CgroupTree>,
    /// The job registry of this test's corral runs (`CORRAL_RUNTIME_DIR`): a short path
    /// (control sockets need one), mode 0700, so parallel tests do not see each other's jobs.
    pub runtime: PathBuf,
    runs: AtomicUsize,
}

impl Sandbox {
    /// A sandbox for a test of `mechanism`: the cgroup mechanism needs a writable cgroup2
    /// (`None` after [`skip`] when there is none); the pgroup one uses it when it can, to
    /// catch survivors that never reported themselves, and otherwise relies on pidfds.
    pub fn for_mechanism(name: &str, mechanism: Mechanism) -> Option<Sandbox> {
        let name = format!("{name}-{}", mechanism.name());
        match mechanism {
            Mechanism::Cgroup => Sandbox::with_cgroup(&name),
            Mechanism::Pgroup => Some(Sandbox::new(&name)),
        }
    }

    /// A sandbox that must have a cgroup subtree; `None` after [`skip`] otherwise.
    pub fn with_cgroup(name: &str) -> Option<Sandbox> {
        let sandbox = Sandbox::new(name);
        if sandbox.cgroup.is_none() {
            skip(format!(
                "{name}: no writable cgroup2 ({})",
                CgroupTree::create("probe").err().unwrap_or_default()
            ));
            return None;
        }
        Some(sandbox)
    }

    /// A sandbox with a cgroup subtree if one can be made.
    pub fn new(name: &str) -> Sandbox {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "containment-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let cgroup = CgroupTree::create(name).ok();
        let runtime = runtime_dir("rt");
        Sandbox {
            name: name.to_string(),
            dir,
            cgroup,
            runtime,
            runs: AtomicUsize::new(0),
        }
    }

    /// The cgroup subtree; panics if there is none (use in cgroup-only tests).
    pub fn cgroup(&self) -> &CgroupTree {
        self.cgroup
            .as_ref()
            .expect("this test needs a cgroup sandbox")
    }

    /// `corral run --mechanism <m> [--cgroup-parent <jobs>] --report <file>`; add options,
    /// then a command with [`Run::tree`] or [`Run::command`].
    pub fn corral(&self, mechanism: Mechanism) -> Run {
        let mut run = self.corral_bare();
        run.args(["run", "--mechanism", mechanism.name()]);
        if mechanism == Mechanism::Cgroup {
            run.arg("--cgroup-parent").arg(self.cgroup().jobs());
        }
        let report = run.dir.join("report.json");
        run.arg("--report").arg(&report);
        run.report = Some(report);
        run
    }

    /// `corral` with no arguments at all (for usage errors).
    pub fn corral_bare(&self) -> Run {
        let dir = self
            .dir
            .join(format!("run{}", self.runs.fetch_add(1, Ordering::SeqCst)));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Run {
            dir,
            args: Vec::new(),
            env: vec![("CORRAL_RUNTIME_DIR".into(), self.runtime.clone().into())],
            leaf: self.cgroup.as_ref().map(CgroupTree::corral_leaf),
            process_group: None,
            stdout_piped: false,
            uid: None,
            report: None,
            grace: Duration::ZERO,
            ignore_sigchld: false,
        }
    }

    /// Starts `corral-testtree ARGS` directly (not under corral), e.g. a bystander, in the
    /// `other` leaf when there is a cgroup subtree.
    pub fn spawn_direct(&self, args: &[&str], process_group: Option<i32>) -> Direct {
        let dir = self.dir.join(format!(
            "direct{}",
            self.runs.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut command = Command::new(TESTTREE);
        command.arg("--pids").arg(dir.join("pids")).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(pgid) = process_group {
            command.process_group(pgid);
        }
        if let Some(cgroup) = &self.cgroup {
            place_in_cgroup(&mut command, &cgroup.other_leaf());
        }
        let child = command.spawn().expect("spawn corral-testtree");
        let pidfd = pidfd_of_child(&child);
        Direct {
            dir,
            child,
            pidfd,
            leads_group: process_group == Some(0),
        }
    }

    /// After corral returned: its leaf is empty (no process of the job, nor corral, is
    /// left) and no job cgroup is left under the `--cgroup-parent`.
    pub fn assert_clean(&self) {
        let Some(cgroup) = &self.cgroup else { return };
        let leaf = cgroup.corral_leaf();
        CgroupTree::wait_empty(
            &leaf,
            GONE_DEADLINE,
            "after corral returned, corral's cgroup",
        );
        let jobs = cgroup.jobs();
        let left = CgroupTree::children(&jobs);
        assert!(
            left.is_empty(),
            "corral left job cgroups under {}: {left:?} (processes: {})",
            jobs.display(),
            describe_pids(&CgroupTree::procs_recursive(&jobs))
        );
        assert!(
            !CgroupTree::populated(&jobs),
            "processes left under {}",
            jobs.display()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The cgroup subtree is killed and removed by CgroupTree's Drop (a field).
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = fs::remove_dir_all(&self.runtime);
        // Other users' registries beside it (see `Run::spawn`).
        if let (Some(parent), Some(name)) = (self.runtime.parent(), self.runtime.file_name()) {
            let mut prefix = name.to_os_string();
            prefix.push("-u");
            for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
                if entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// A fresh directory `/tmp/corral-<tag>-<pid>-<n>`, mode 0700, for a job registry.
pub fn runtime_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "corral-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

// ---- running corral --------------------------------------------------------------------

/// A `corral` command line being built.
pub struct Run {
    /// This run's own directory: pids, marker, go, report, stdout, stderr.
    pub dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    leaf: Option<PathBuf>,
    process_group: Option<i32>,
    stdout_piped: bool,
    uid: Option<u32>,
    report: Option<PathBuf>,
    grace: Duration,
    ignore_sigchld: bool,
}

impl Run {
    /// Starts corral with SIGCHLD ignored (a disposition that survives exec), as a careless
    /// parent might.
    pub fn ignore_sigchld(&mut self) -> &mut Run {
        self.ignore_sigchld = true;
        self
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Run {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.arg(arg);
        }
        self
    }

    /// `--grace DUR`; also extends the deadline for corral to return.
    pub fn grace(&mut self, text: &str, duration: Duration) -> &mut Run {
        self.args(["--grace", text]);
        self.grace = duration;
        self
    }

    /// `-- corral-testtree --pids F --marker F --go F ARGS...`.
    pub fn tree(&mut self, args: &[&str]) -> &mut Run {
        let (pids, marker, go) = (self.pids_file(), self.marker_file(), self.go_file());
        self.arg("--").arg(TESTTREE);
        self.arg("--pids")
            .arg(pids)
            .arg("--marker")
            .arg(marker)
            .arg("--go")
            .arg(go);
        self.args(args)
    }

    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Run {
        self.env.push((key.into(), value.as_ref().to_os_string()));
        self
    }

    /// Spawn corral into this process group (`0`: a new one led by corral).
    pub fn process_group(&mut self, pgid: i32) -> &mut Run {
        self.process_group = Some(pgid);
        self
    }

    /// Give corral a pipe as stdout (take it with [`Job::take_stdout`]).
    pub fn stdout_piped(&mut self) -> &mut Run {
        self.stdout_piped = true;
        self
    }

    /// Run corral as this user (and group id), with no supplementary groups.
    pub fn uid(&mut self, uid: u32) -> &mut Run {
        self.uid = Some(uid);
        self
    }

    pub fn pids_file(&self) -> PathBuf {
        self.dir.join("pids")
    }
    pub fn marker_file(&self) -> PathBuf {
        self.dir.join("marker")
    }
    pub fn go_file(&self) -> PathBuf {
        self.dir.join("go")
    }

    /// Like [`Run::spawn`], for a bare run whose `--report FILE` the caller added.
    pub fn spawn_with_report(&mut self, report: PathBuf) -> Job {
        self.report = Some(report);
        self.spawn()
    }

    pub fn spawn(&self) -> Job {
        let mut command = Command::new(CORRAL);
        command.args(&self.args);
        command.env_remove("CORRAL_CGROUP_PARENT");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.stdin(Stdio::null());
        let stderr_path = self.dir.join("stderr");
        let stderr = fs::File::create(&stderr_path).expect("create stderr file");
        command.stderr(stderr);
        if self.stdout_piped {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(fs::File::create(self.dir.join("stdout")).expect("create stdout"));
        }
        if let Some(pgid) = self.process_group {
            command.process_group(pgid);
        }
        if let Some(leaf) = &self.leaf {
            place_in_cgroup(&mut command, leaf);
        }
        if self.ignore_sigchld {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal(2) is async-signal-safe and touches nothing of the parent's.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        if let Some(uid) = self.uid {
            // After the move into the cgroup, which needs root.
            drop_root(&mut command, uid);
            // The sandbox's registry is root's: another user gets one of its own beside it,
            // `<registry>-u<uid>`, removed with the sandbox (a test that wants another
            // passes CORRAL_RUNTIME_DIR again, last).
            let given: Vec<&OsString> = self
                .env
                .iter()
                .filter(|(k, _)| k == "CORRAL_RUNTIME_DIR")
                .map(|(_, v)| v)
                .collect();
            if let [own] = given.as_slice() {
                let mut dir = (*own).clone();
                dir.push(format!("-u{uid}"));
                let dir = PathBuf::from(dir);
                if !dir.exists() {
                    use std::os::unix::fs::PermissionsExt;
                    fs::create_dir(&dir)
                        .and_then(|()| std::os::unix::fs::chown(&dir, Some(uid), Some(uid)))
                        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                        .unwrap_or_else(|e| panic!("make {}: {e}", dir.display()));
                }
                command.env("CORRAL_RUNTIME_DIR", &dir);
            }
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn corral");
        let pidfd = pidfd_of_child(&child);
        let stdout = child.stdout.take();
        Job {
            dir: self.dir.clone(),
            args: self.args.clone(),
            child: Some(child),
            pidfd,
            started,
            stdout,
            report: self.report.clone(),
            leads_group: self.process_group == Some(0),
            deadline: corral_deadline() + self.grace,
        }
    }

    /// Spawns corral and waits for it to return (for runs where it should not start
    /// anything).
    pub fn run(&self) -> Finished {
        self.spawn().finish()
    }
}

/// A pidfd for our own child, which cannot have been reaped yet, so its PID is its own.
pub fn pidfd_of_child(child: &Child) -> OwnedFd {
    rustix::process::pidfd_open(Pid::from_child(child), PidfdFlags::empty())
        .expect("pidfd_open on our own unreaped child")
}

/// A running `corral`.
pub struct Job {
    pub dir: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    pidfd: OwnedFd,
    started: Instant,
    stdout: Option<ChildStdout>,
    report: Option<PathBuf>,
    leads_group: bool,
    deadline: Duration,
}

impl Job {
    /// Waits until the tree's pids file lists every role in `roles` (a role may be listed
    /// more than once, meaning that many processes of the role), and returns pidfds for all
    /// processes listed so far. Panics if corral exits first or the deadline passes.
    pub fn wait_ready(&self, roles: &[&str]) -> Procs {
        poll_until("the tree ready", READY_DEADLINE, || {
            let listed = read_pids(&self.dir.join("pids"));
            let missing: Vec<&str> = missing_roles(&listed, roles);
            if missing.is_empty() {
                // Every listed process was alive when listed; the job is not being stopped
                // yet (nothing asked for it), so each pidfd refers to the listed process.
                let mut procs = Procs::default();
                procs.open(&listed);
                return Ok(procs);
            }
            if exited(self.pidfd.as_fd()) {
                panic!(
                    "corral exited before the tree was ready (missing {missing:?}); {}",
                    self.diagnostics()
                );
            }
            Err(Described(move || {
                format!(
                    "missing {missing:?}, listed {listed:?}; {}",
                    self.diagnostics()
                )
            }))
        })
    }

    /// The end of a job whose COMMAND exits 0 once told to go, leaving processes behind:
    /// waits until the tree lists `roles`, lets it go, and asserts that corral stopped
    /// every listed process (`context`), left the sandbox clean, and returned 0 with a
    /// sound report. The processes and the result, for the caller's own checks.
    pub fn exit_leaving(
        self,
        sandbox: &Sandbox,
        mechanism: Mechanism,
        roles: &[&str],
        context: &str,
    ) -> (Procs, Finished) {
        let procs = self.wait_ready(roles);
        self.go();
        let done = self.finish();
        procs.assert_all_gone(context);
        sandbox.assert_clean();
        done.assert_code(0);
        done.assert_report_basics(mechanism);
        (procs, done)
    }

    /// Like [`Job::wait_ready`], for jobs that may already be stopping (a short
    /// `--timeout`): stops waiting when corral exits, and a listed process that is already
    /// gone is recorded as gone.
    pub fn wait_listed(&self, roles: &[&str]) -> Procs {
        poll_until("the tree listed", READY_DEADLINE, || {
            let listed = read_pids(&self.dir.join("pids"));
            let missing = missing_roles(&listed, roles);
            if missing.is_empty() || exited(self.pidfd.as_fd()) {
                let mut procs = Procs::default();
                procs.open_late(&listed);
                return Ok(procs);
            }
            Err(Described(move || {
                format!("never listed {missing:?}; {}", self.diagnostics())
            }))
        })
    }

    /// Everything the pids file lists now.
    pub fn listed(&self) -> Vec<(String, i32)> {
        read_pids(&self.dir.join("pids"))
    }

    /// Lets the tree's top process proceed past `--go` (usually: exit, leaving leftovers).
    pub fn go(&self) {
        fs::write(self.dir.join("go"), "go\n").expect("create go file");
    }

    /// Waits until the tree's marker file records each of `signals` for `pid` (its handler
    /// ran).
    pub fn wait_signalled(&self, pid: i32, signals: &[i32]) {
        let marker = self.dir.join("marker");
        poll_until(
            format_args!("pid {pid} to record signals {signals:?}"),
            READY_DEADLINE,
            || {
                let got = signals_of(&read_marker(&marker), pid);
                match signals.iter().all(|s| got.contains(s)) {
                    true => Ok(()),
                    false => Err(format!("recorded {got:?}")),
                }
            },
        );
    }

    /// Sends `signal` to corral alone, through its pidfd.
    pub fn signal(&self, signal: Signal) {
        rustix::process::pidfd_send_signal(&self.pidfd, signal)
            .unwrap_or_else(|e| panic!("pidfd_send_signal({signal:?}) to corral: {e}"));
    }

    /// Sends `signal` to the process group corral leads, as a terminal's Ctrl+C does.
    /// Only for jobs spawned with `process_group(0)`: this test created that group, and
    /// corral, its leader, is our unreaped child, so the group id is still this group's.
    pub fn signal_group(&self, signal: Signal) {
        assert!(
            self.leads_group,
            "corral was not spawned as a process group leader"
        );
        let leader = Pid::from_child(self.child.as_ref().expect("corral not yet waited for"));
        rustix::process::kill_process_group(leader, signal)
            .unwrap_or_else(|e| panic!("kill_process_group({signal:?}): {e}"));
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.stdout
            .take()
            .expect("stdout was piped and not taken yet")
    }

    pub fn pid(&self) -> i32 {
        Pid::from_child(self.child.as_ref().expect("not waited for"))
            .as_raw_nonzero()
            .get()
    }

    /// Whether corral has exited (without reaping it).
    pub fn has_exited(&self) -> bool {
        exited(self.pidfd.as_fd())
    }

    /// Waits for corral to return (panics, after killing it, past the deadline) and
    /// collects its status, stderr and report.
    pub fn finish(mut self) -> Finished {
        let waited_from = Instant::now();
        if !wait_exited(self.pidfd.as_fd(), waited_from + self.deadline) {
            let diagnostics = self.diagnostics();
            panic!(
                "corral did not return within {:?}; {diagnostics}",
                self.deadline
            );
        }
        let returned_after = waited_from.elapsed();
        let status = self.child.take().unwrap().wait().expect("wait for corral");
        let elapsed = self.started.elapsed();
        let stderr = fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        let report =
            self.report.as_ref().and_then(|path| {
                let text = fs::read_to_string(path).ok()?;
                Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("report {} is not JSON ({e}):\n{text}", path.display())
                }))
            });
        Finished {
            status,
            stderr,
            report,
            elapsed,
            returned_after,
            args: self.args.clone(),
            dir: self.dir.clone(),
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "corral {:?}\nstderr:\n{}\npids file:\n{}",
            self.args,
            fs::read_to_string(self.dir.join("stderr")).unwrap_or_default(),
            fs::read_to_string(self.dir.join("pids")).unwrap_or_default()
        )
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Only when the test failed before `finish`: kill corral and reap it. Its job is
        // killed with the sandbox's cgroup subtree, or through the tree's pidfds.
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
            let _ = child.wait();
        }
    }
}

/// A process started directly by the test (a bystander).
pub struct Direct {
    pub dir: PathBuf,
    child: Child,
    pidfd: OwnedFd,
    leads_group: bool,
}

impl Direct {
    pub fn pid(&self) -> i32 {
        Pid::from_child(&self.child).as_raw_nonzero().get()
    }

    /// Waits until it lists `role` in its pids file.
    pub fn wait_ready(&self, role: &str) {
        poll_until(format_args!("{role} ready"), READY_DEADLINE, || {
            let listed = read_pids(&self.dir.join("pids"));
            if missing_roles(&listed, &[role]).is_empty() {
                return Ok(());
            }
            assert!(
                !exited(self.pidfd.as_fd()),
                "{role} exited before it was ready"
            );
            Err(format!("listed {listed:?}"))
        });
    }

    /// Asserts it stays alive for `window`: fails as soon as it exits.
    pub fn assert_alive_for(&self, window: Duration, context: &str) {
        if wait_exited(self.pidfd.as_fd(), Instant::now() + window) {
            panic!("{context}: the bystander (pid {}) was killed", self.pid());
        }
    }

    /// Sends `signal` to the process group it leads (see [`Job::signal_group`]).
    pub fn signal_group(&self, signal: Signal) {
        assert!(self.leads_group, "not spawned as a process group leader");
        rustix::process::kill_process_group(Pid::from_child(&self.child), signal)
            .unwrap_or_else(|e| panic!("kill_process_group({signal:?}): {e}"));
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = self.child.wait();
    }
}

// ---- results ---------------------------------------------------------------------------

/// What corral did.
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
    /// From spawn to return.
    pub elapsed: Duration,
    /// From the call to `finish` to return.
    pub returned_after: Duration,
    args: Vec<OsString>,
    dir: PathBuf,
}

impl Finished {
    /// Asserts corral exited with one of `codes` (where a race decides between them).
    pub fn assert_code_in(&self, codes: &[i32]) {
        use std::os::unix::process::ExitStatusExt;
        let seen = self.status.code().or(self.status.signal().map(|s| 128 + s));
        assert!(
            seen.is_some_and(|c| codes.contains(&c)),
            "corral {:?}: expected an exit status in {codes:?}, got {}\nstderr:\n{}report:\n{}",
            self.args,
            describe_status(self.status),
            self.stderr,
            self.report_text()
        );
    }

    /// corral's status as a shell shows it: its exit code, or 128 + N when it died of
    /// signal N.
    pub fn shell_status(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.code().or(self.status.signal().map(|s| 128 + s))
    }

    /// Asserts corral exited with `code`, or, for 128 + N, died of signal N: corral
    /// re-raises COMMAND's death by a signal, and a shell sees 128 + N either way (the
    /// re-raise itself is `exit_status::*_is_reraised`'s to check).
    pub fn assert_code(&self, code: i32) {
        use std::os::unix::process::ExitStatusExt;
        let seen = match (self.status.code(), self.status.signal()) {
            (None, Some(sig)) if code > 128 && sig == code - 128 => Some(code),
            (c, _) => c,
        };
        assert_eq!(
            seen,
            Some(code),
            "corral {:?}: expected exit status {code}, got {}\nstderr:\n{}report:\n{}",
            self.args,
            describe_status(self.status),
            self.stderr,
            self.report_text()
        );
    }

    /// The JSON report (panics if corral wrote none).
    pub fn report(&self) -> &serde_json::Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "corral {:?} wrote no report; stderr:\n{}",
                self.args, self.stderr
            )
        })
    }

    pub fn report_text(&self) -> String {
        self.report
            .as_ref()
            .map(|r| serde_json::to_string_pretty(r).unwrap())
            .unwrap_or_else(|| "(none)\n".into())
    }

    /// Report sanity shared by every successful run: version, mechanism, exit status, no
    /// survivors, cgroup removed.
    pub fn assert_report_basics(&self, mechanism: Mechanism) {
        let report = self.report();
        let context = || format!("report:\n{}\nstderr:\n{}", self.report_text(), self.stderr);
        assert_eq!(report["version"], 1, "{}", context());
        assert_eq!(report["mechanism"], mechanism.name(), "{}", context());
        assert_eq!(
            report["exit_status"].as_i64(),
            self.shell_status().map(i64::from),
            "report's exit_status differs from corral's; {}",
            context()
        );
        assert_eq!(
            report["survivors"].as_array().map(Vec::len),
            Some(0),
            "survivors; {}",
            context()
        );
        assert!(
            report["mechanism_reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "no mechanism_reason; {}",
            context()
        );
        assert!(
            report["cleanup"]["error"].is_null(),
            "cleanup error; {}",
            context()
        );
        match mechanism {
            Mechanism::Cgroup => {
                assert_eq!(
                    report["cleanup"]["cgroup_removed"],
                    true,
                    "cleanup.cgroup_removed; {}",
                    context()
                );
                let cgroup = report["cgroup"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no cgroup in the report; {}", context()));
                assert!(
                    !Path::new(cgroup).exists(),
                    "job cgroup {cgroup} still exists; {}",
                    context()
                );
            }
            Mechanism::Pgroup => {
                assert!(
                    report["cgroup"].is_null(),
                    "pgroup job has a cgroup; {}",
                    context()
                )
            }
        }
    }

    /// The `step` names of `stop.steps` (empty when no stop sequence ran).
    /// The stop step named `name` (`Value::Null` if there is none, so field lookups on it
    /// fail the assertion that uses them).
    pub fn step(&self, name: &str) -> serde_json::Value {
        self.report()["stop"]["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["step"] == name))
            .cloned()
            .unwrap_or_default()
    }

    pub fn stop_steps(&self) -> Vec<String> {
        self.report()["stop"]["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| s["step"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `stop.outcome`, if a stop sequence ran.
    pub fn stop_outcome(&self) -> Option<String> {
        self.report()["stop"]["outcome"]
            .as_str()
            .map(str::to_string)
    }

    /// Asserts the stop sequence ended with `outcome` (`exited`, `killed`, ...).
    #[track_caller]
    pub fn assert_stop_outcome(&self, outcome: &str) {
        assert_eq!(
            self.stop_outcome().as_deref(),
            Some(outcome),
            "{}",
            self.report_text()
        );
    }

    /// Asserts the stop sequence has a `name` step (`signal`, `kill`, ...).
    #[track_caller]
    pub fn assert_has_step(&self, name: &str) {
        assert!(
            self.stop_steps().iter().any(|s| s == name),
            "no `{name}` step:\n{}",
            self.report_text()
        );
    }

    /// The `leftovers` entry for `pid`.
    pub fn leftover(&self, pid: i32) -> &serde_json::Value {
        self.report()["leftovers"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["pid"].as_i64() == Some(pid.into())))
            .unwrap_or_else(|| {
                panic!(
                    "pid {pid} not among the report's leftovers:\n{}",
                    self.report_text()
                )
            })
    }

    /// Every PID listed in `leftovers`.
    pub fn leftover_pids(&self) -> Vec<i32> {
        self.report()["leftovers"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|l| l["pid"].as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts stderr is exactly one line starting with `corral: error: `.
    pub fn assert_one_line_error(&self) {
        let body = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            self.stderr.ends_with('\n')
                && !body.contains('\n')
                && body.starts_with("corral: error: "),
            "corral {:?}: expected one line `corral: error: ...` on stderr, got {:?}",
            self.args,
            self.stderr
        );
    }

    /// Asserts corral refused before it started COMMAND: status 125, one line on stderr
    /// that says each of `says`, and nothing of the tree ran.
    #[track_caller]
    pub fn assert_refused(&self, says: &[&str]) {
        self.assert_code(125);
        self.assert_one_line_error();
        assert!(
            says.iter().all(|s| self.stderr.contains(s)),
            "the error must say {says:?}: {:?}",
            self.stderr
        );
        assert!(
            !self.tree_started(),
            "COMMAND was started: {:?}",
            self.listed()
        );
    }

    /// Lines of the marker file the tree's handlers wrote: `(role, pid, signo)`.
    pub fn marker_lines(&self) -> Vec<(String, i32, i32)> {
        read_marker(&self.dir.join("marker"))
    }

    /// The signals the marker file records for `pid`, in order.
    pub fn signals_of(&self, pid: i32) -> Vec<i32> {
        signals_of(&self.marker_lines(), pid)
    }

    /// Everything the tree's pids file lists.
    pub fn listed(&self) -> Vec<(String, i32)> {
        read_pids(&self.dir.join("pids"))
    }

    /// Whether the tree's pids file lists anything (i.e. COMMAND ran).
    pub fn tree_started(&self) -> bool {
        !read_pids(&self.dir.join("pids")).is_empty()
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status:?}"),
    }
}

// ---- the processes of a tree -----------------------------------------------------------

/// A process a tree reported, held by a pidfd opened while it was alive.
pub struct Proc {
    pub role: String,
    pub pid: i32,
    /// `None` when the process was already gone when we tried to open it (only for
    /// processes listed after the job began stopping; see [`Procs::open_late`]).
    fd: Option<OwnedFd>,
}

/// The processes of a tree. `Drop` SIGKILLs, through their pidfds, any still running, so a
/// failing pgroup-mode test leaves nothing behind.
#[derive(Default)]
pub struct Procs {
    pub procs: Vec<Proc>,
}

impl Procs {
    fn open(&mut self, listed: &[(String, i32)]) {
        for (role, pid) in listed {
            if self.procs.iter().any(|p| p.pid == *pid) {
                continue;
            }
            let raw = Pid::from_raw(*pid).filter(|p| p.as_raw_nonzero().get() > 1);
            let raw = raw.unwrap_or_else(|| panic!("tree listed a bogus pid {pid}"));
            let fd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
                .unwrap_or_else(|e| panic!("pidfd_open({pid}) for {role}, listed as alive: {e}"));
            self.procs.push(Proc {
                role: role.clone(),
                pid: *pid,
                fd: Some(fd),
            });
        }
    }

    /// Adds processes listed after the job began stopping (a fork storm keeps listing
    /// while being killed). Such a process may already be gone and its PID reused: if
    /// `pidfd_open` fails it is gone (`fd: None`); if it succeeds on a process that is not
    /// a corral-testtree, it was gone and the PID reused, so it is skipped.
    pub fn open_late(&mut self, listed: &[(String, i32)]) {
        for (role, pid) in listed {
            if self.procs.iter().any(|p| p.pid == *pid) {
                continue;
            }
            let Some(raw) = Pid::from_raw(*pid).filter(|p| p.as_raw_nonzero().get() > 1) else {
                continue;
            };
            match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
                Ok(fd) => {
                    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim_end() == "corral-testtree" || exited(fd.as_fd()) {
                        self.procs.push(Proc {
                            role: role.clone(),
                            pid: *pid,
                            fd: Some(fd),
                        });
                    }
                }
                Err(_) => self.procs.push(Proc {
                    role: role.clone(),
                    pid: *pid,
                    fd: None,
                }),
            }
        }
    }

    /// The PID of the (first) process of `role`.
    pub fn pid(&self, role: &str) -> i32 {
        self.procs
            .iter()
            .find(|p| p.role == role)
            .unwrap_or_else(|| panic!("no process with role {role}"))
            .pid
    }

    pub fn count(&self, role: &str) -> usize {
        self.procs.iter().filter(|p| p.role == role).count()
    }

    /// Asserts every process has exited (its pidfd readable), waiting up to
    /// [`GONE_DEADLINE`].
    pub fn assert_all_gone(&self, context: &str) {
        self.assert_all_gone_by(Instant::now() + GONE_DEADLINE, context);
    }

    /// Asserts every process has exited (its pidfd readable) by `deadline`.
    pub fn assert_all_gone_by(&self, deadline: Instant, context: &str) {
        loop {
            let alive: Vec<&Proc> = self
                .procs
                .iter()
                .filter(|p| p.fd.as_ref().is_some_and(|fd| !exited(fd.as_fd())))
                .collect();
            if alive.is_empty() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                let described: Vec<String> = alive
                    .iter()
                    .map(|p| format!("{} {}", p.role, describe_pid(p.pid)))
                    .collect();
                panic!(
                    "{context}: {} process(es) still running at the deadline:\n  {}",
                    alive.len(),
                    described.join("\n  ")
                );
            }
            let mut fds: Vec<PollFd> = alive
                .iter()
                .map(|p| PollFd::new(p.fd.as_ref().unwrap(), PollFlags::IN))
                .collect();
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = rustix::event::poll(&mut fds, Some(&timespec(wait)));
        }
    }

    /// Whether the process `pid` has exited (its pidfd is readable, or it was gone when
    /// listed).
    pub fn gone(&self, pid: i32) -> bool {
        self.procs
            .iter()
            .find(|p| p.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} not listed"))
            .fd
            .as_ref()
            .map_or(true, |fd| exited(fd.as_fd()))
    }

    /// Asserts the process of `role` is still running.
    pub fn assert_alive(&self, role: &str) {
        let proc = self
            .procs
            .iter()
            .find(|p| p.role == role)
            .expect("role listed");
        assert!(
            proc.fd.as_ref().is_some_and(|fd| !exited(fd.as_fd())),
            "{role} (pid {}) is not running",
            proc.pid
        );
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for proc in &self.procs {
            if let Some(fd) = &proc.fd {
                if !exited(fd.as_fd()) {
                    let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
                }
            }
        }
    }
}

/// `(role, pid)` for each complete line of a pids file (none if it does not exist).
pub fn read_pids(path: &Path) -> Vec<(String, i32)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    complete_lines(&text)
        .filter_map(|line| {
            let (role, pid) = line.split_once(' ')?;
            Some((role.to_string(), pid.parse().ok()?))
        })
        .collect()
}

/// The signals `marks` (a marker file's lines) record for `pid`, in order.
pub fn signals_of(marks: &[(String, i32, i32)], pid: i32) -> Vec<i32> {
    marks
        .iter()
        .filter(|(_, p, _)| *p == pid)
        .map(|(_, _, signo)| *signo)
        .collect()
}

/// `(role, pid, signo)` for each complete line of a marker file.
pub fn read_marker(path: &Path) -> Vec<(String, i32, i32)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    complete_lines(&text)
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let role = fields.next()?.to_string();
            let pid = fields.next()?.parse().ok()?;
            let signo = fields.next()?.parse().ok()?;
            Some((role, pid, signo))
        })
        .collect()
}

/// Lines terminated by `\n` (a line being appended right now is ignored).
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().filter(|l| !l.is_empty())
}

/// Waits until the pids file `pids` lists each of `roles` (as many times as it is named),
/// then holds each listed process by a pidfd: for a tree nothing stops before the test
/// acts, so each is alive when opened. `context` says what else is known (the job's state,
/// its output) if the tree never lists them.
pub fn hold_listed(
    pids: &Path,
    roles: &[&str],
    within: Duration,
    context: impl Fn() -> String,
) -> Procs {
    let context = &context;
    let listed = poll_until(format_args!("the tree listing {roles:?}"), within, || {
        let listed = read_pids(pids);
        match missing_roles(&listed, roles).is_empty() {
            true => Ok(listed),
            false => Err(Described(move || {
                format!("listed {listed:?}; {}", context())
            })),
        }
    });
    let mut procs = Procs::default();
    procs.open_late(&listed);
    assert_eq!(procs.procs.len(), listed.len(), "a listed process is gone");
    procs
}

fn missing_roles<'a>(listed: &[(String, i32)], roles: &[&'a str]) -> Vec<&'a str> {
    let mut missing = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let wanted = roles[..=i].iter().filter(|r| *r == role).count();
        let have = listed.iter().filter(|(r, _)| r == role).count();
        if have < wanted {
            missing.push(*role);
        }
    }
    missing
}

// ---- pidfds and /proc ------------------------------------------------------------------

/// Whether the process behind `pidfd` has exited (the pidfd is readable).
pub fn exited(pidfd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(pidfd, PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO))) {
        Ok(_) => fds[0].revents().contains(PollFlags::IN),
        Err(e) => panic!("poll on a pidfd: {e}"),
    }
}

/// Waits until the process behind `pidfd` exits; false if `deadline` passes first.
pub fn wait_exited(pidfd: std::os::fd::BorrowedFd<'_>, deadline: Instant) -> bool {
    loop {
        if exited(pidfd) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let mut fds = [PollFd::from_borrowed_fd(pidfd, PollFlags::IN)];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&timespec((deadline - now).min(Duration::from_secs(1)))),
        );
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: d.subsec_nanos().into(),
    }
}

/// `pid <n> (<state>, pgid, sid, cmdline)` from /proc, for failure messages.
pub fn describe_pid(pid: i32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state ppid pgrp session ...
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split(' ').collect();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| OsStr::from_bytes(a).to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?");
    format!(
        "pid {pid} (state {}, ppid {}, pgid {}, sid {}, cgroup {cgroup2}): {cmdline}",
        fields.first().unwrap_or(&"?"),
        fields.get(1).unwrap_or(&"?"),
        fields.get(2).unwrap_or(&"?"),
        fields.get(3).unwrap_or(&"?"),
    )
}

fn describe_pids(pids: &[i32]) -> String {
    if pids.is_empty() {
        return "(none listed in cgroup.procs)".into();
    }
    pids.iter()
        .map(|p| describe_pid(*p))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads `reader` to EOF on a thread; the receiver gets the bytes (or the error).
pub fn read_to_end_in_thread(
    mut reader: impl Read + Send + 'static,
) -> std::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let result = reader.read_to_end(&mut bytes).map(|_| bytes);
        let _ = sender.send(result);
    });
    receiver
}

// ---- scenarios shared by several behaviours ---------------------------------------------

/// COMMAND (`corral-testtree --exit 0 MODE`) exits 0 once the test says go, leaving the
/// process of `role` running: corral must stop it, return 0, and list it in `leftovers`
/// with the given `left_process_group` / `left_session`.
pub fn leftover_is_stopped(
    mechanism: Mechanism,
    name: &str,
    mode: &str,
    role: &str,
    left_process_group: bool,
    left_session: bool,
) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .tree(&["--exit", "0", mode])
        .spawn();
    let (procs, done) = job.exit_leaving(&sandbox, mechanism, &["top", role], name);
    let leftover = done.leftover(procs.pid(role));
    assert_eq!(
        (
            leftover["left_process_group"].as_bool(),
            leftover["left_session"].as_bool()
        ),
        (Some(left_process_group), Some(left_session)),
        "{role}: left_process_group / left_session in the report:\n{}",
        done.report_text()
    );
    assert!(
        done.stop_steps().iter().any(|s| s == "signal"),
        "no stop sequence ran for the leftovers:\n{}",
        done.report_text()
    );
}

/// SIGTERM to corral alone while COMMAND (`corral-testtree MODE`) and its tree run: every
/// listed process must be gone, and corral returns 143 (COMMAND died of the polite TERM).
pub fn sigterm_stops_tree(mechanism: Mechanism, name: &str, mode: &str, roles: &[&str]) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let job = sandbox.corral(mechanism).tree(&[mode]).spawn();
    let procs = job.wait_ready(roles);
    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone(name);
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(mechanism);
    let steps = done.report()["stop"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let polite = steps.iter().position(|s| s["step"] == "signal");
    assert!(
        polite.is_some_and(|at| steps[..at].iter().all(|s| s["step"] == "freeze"))
            && polite.is_some_and(|at| steps[at]["signal"] == "SIGTERM"),
        "the stop sequence must begin with the polite SIGTERM (after a freeze at most):\n{}",
        done.report_text()
    );
}

/// The end of a "second signal" test: `job`'s stubborn process has recorded the first stop
/// signal (`first`), so corral has taken it in and is in its 60 s grace. `send` sends the
/// second one: corral must cut the grace short and kill at once, and everything must be
/// gone. The result, for the caller's own checks.
pub fn second_signal_cuts_the_grace(
    sandbox: &Sandbox,
    mechanism: Mechanism,
    (job, procs): (Job, &Procs),
    (first, what): (i32, &str),
    send: impl FnOnce(&Job),
) -> Finished {
    // A second signal counts from 100 ms after corral took the first in (a stop delivered
    // twice at once is one stop), which it had by the mark seen: wait that long, with a
    // margin. A timing condition, not a proof of anything.
    std::thread::sleep(SECOND_SIGNAL_AFTER + Duration::from_millis(50));
    let second = Instant::now();
    send(&job);
    let done = job.finish();
    let after_second = second.elapsed();
    procs.assert_all_gone(what);
    sandbox.assert_clean();
    assert!(
        after_second < Duration::from_secs(30),
        "corral took {after_second:?} after the {what}; it must skip the 60s grace"
    );
    let grace = done.step("grace");
    assert_eq!(
        grace["detail"],
        "cut short by a second signal",
        "{}",
        done.report_text()
    );
    // The second signal sends SIGKILL at once: COMMAND dies of the first signal or of
    // SIGKILL, whichever the scheduler lets happen first.
    done.assert_code_in(&[128 + first, 128 + libc::SIGKILL]);
    done.assert_report_basics(mechanism);
    done.assert_has_step("kill");
    done
}

/// Delegates the cgroup `dir` to `uid` as systemd's `Delegate=yes` does: the directory and
/// its `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads` chowned to the user.
pub fn delegate_to(dir: &Path, uid: u32) {
    for name in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        let path = if name.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(name)
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(uid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Whether every directory on the way to `path` is searchable, and `path` executable, by
/// "others".
pub fn executable_by_others(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mut ok = fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    for dir in path.ancestors().skip(1) {
        ok &= fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    }
    ok
}

/// The PIDs `/proc` lists now: a snapshot, in which any process may exit (and its PID be
/// reused) at once. Never a target for a signal; open a pidfd and check it first.
pub fn proc_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose `argv[0]` is `marker` (a name a test gave its own process with
/// `exec -a`). For failure messages and to clean up after a failed test: see
/// [`kill_by_arg0`].
pub fn processes_with_arg0(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for pid in proc_pids() {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let arg0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if arg0 == marker.as_bytes() && !zombie {
            found.push(pid);
        }
    }
    found
}

/// SIGKILL to each live process whose `argv[0]` is `marker`, each through a pidfd opened
/// and then checked to still be that process (a reused PID would no longer carry it).
pub fn kill_by_arg0(marker: &str) {
    for pid in processes_with_arg0(marker) {
        let Some(raw) = rustix::process::Pid::from_raw(pid).filter(|_| pid > 1) else {
            continue;
        };
        let Ok(fd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) else {
            continue;
        };
        if processes_with_arg0(marker).contains(&pid) {
            let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
        }
    }
}
