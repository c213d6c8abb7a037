//! `corral-helper` installed as an administrator would (docs/security.md, "Abuse tests"): a
//! setuid-root copy in a root-owned prefix with its own policy, called by test users made
//! with `useradd`, through `setpriv`, with an environment of the test's choosing. Each
//! refusal must be one line on stderr, exit status 125 and nothing left behind; each run
//! must give COMMAND the caller's identity and nothing of root's, and the helper's own
//! processes must be out of the caller's reach.
//!
//! Every test owns its install (`/tmp/corral-helper-test-<pid>-<n>/`: `bin/`, `etc/corral/`
//! and a scratch `work/`), its users and its cgroup subtree (`allowed`, the policy's parent,
//! and `other` beside it), all removed in `Drop` even when the test fails. Helper jobs are
//! recorded in root's registry (`/run/corral`); "nothing left behind" includes the records
//! made for the test's users there, and every process running as one of them.
//!
//! Needs root, a writable cgroup2, `useradd`, `userdel`, `groupadd`, `groupdel`, `setpriv`,
//! and a `/tmp` mounted without `nosuid`; each test prints `SKIPPED:` without them.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{
    cgroup2_mount, describe_status, exited, pidfd_of_child, skip, wait_exited, CgroupTree,
};

const HELPER: &str = corral_testkit::CORRAL_HELPER;
/// The helper's exit status for a refusal.
const REFUSED: i32 = 125;
/// Root's job registry, where helper jobs are recorded.
const REGISTRY: &str = "/run/corral";
/// How long a helper call may take to return, the job's own time aside.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);
/// How long processes, cgroups and records may take to be seen gone.
const GONE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a job may take to be seen running.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// How long `useradd` and friends may keep failing to lock `/etc/passwd` (parallel tests).
const LOCK_DEADLINE: Duration = Duration::from_secs(10);

/// A number no other call in this test process gets (names of users, groups, installs).
fn next() -> usize {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ---- prerequisites ---------------------------------------------------------------------

/// An administrator's tool, from the usual directories.
fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// Why these tests cannot run here, if they cannot (the cgroup is checked on its own).
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (test users, a setuid install of corral-helper)".into());
    }
    for name in ["useradd", "userdel", "groupadd", "groupdel", "setpriv"] {
        if tool(name).is_none() {
            return Some(format!("no `{name}` in /usr/sbin, /usr/bin, /sbin or /bin"));
        }
    }
    match rustix::fs::statvfs("/tmp") {
        Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::NOSUID) => {
            Some("/tmp is mounted nosuid: a setuid helper installed there runs unprivileged".into())
        }
        Ok(_) => None,
        Err(e) => Some(format!("statvfs /tmp: {e}")),
    }
}

/// Runs an administrator's tool, again while it cannot lock the account files (another test
/// is changing them), until [`LOCK_DEADLINE`].
fn admin(name: &str, args: &[&str]) -> Result<(), String> {
    let path = tool(name).ok_or_else(|| format!("no {name}"))?;
    let deadline = Instant::now() + LOCK_DEADLINE;
    loop {
        let out = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {name}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let busy = stderr.contains("lock") || stderr.contains("currently used by process");
        if !busy || Instant::now() >= deadline {
            return Err(format!(
                "{name} {args:?}: {}: {}",
                describe_status(out.status),
                stderr.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields of `name`'s line in `/etc/group` or `/etc/passwd`, if it has one.
fn database_entry(file: &str, name: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields.first().is_some_and(|n| n == name))
}

// ---- test users and groups ---------------------------------------------------------------

/// A system account made for one test (`crlh<pid>u<n>`, with its own user group), removed
/// in `Drop` with every process still running as it.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    /// A new account, also a member of `groups`.
    fn create(groups: &[&TestGroup]) -> TestUser {
        let name = format!("crlh{}u{}", std::process::id(), next());
        let members: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let members = members.join(",");
        let mut args = vec![
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ];
        if !members.is_empty() {
            args.extend(["--groups", members.as_str()]);
        }
        args.push(&name);
        admin("useradd", &args).unwrap_or_else(|e| panic!("create a test user: {e}"));
        let entry = database_entry("/etc/passwd", &name);
        let id = |i: usize| entry.as_ref()?.get(i)?.parse().ok();
        let (uid, gid) = match (id(2), id(3)) {
            (Some(uid), Some(gid)) => (uid, gid),
            _ => {
                let _ = admin("userdel", &[&name]);
                panic!("useradd made {name}, but /etc/passwd has no uid and gid for it");
            }
        };
        TestUser { name, uid, gid }
    }

    /// Every group the account is in, as the group database says (`id -G`).
    fn groups(&self) -> Vec<u32> {
        let out = Command::new("id")
            .arg("-G")
            .arg(&self.name)
            .output()
            .expect("run id -G");
        assert!(out.status.success(), "id -G {}: {out:?}", self.name);
        let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|g| g.parse().expect("id -G prints numbers"))
            .collect();
        groups.sort_unstable();
        groups
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // After a failed test something may still run as this user; userdel refuses then.
        kill_processes_of(self.uid);
        // Records of jobs whose processes are all gone by now (stale; a passing test has
        // checked there were none).
        for record in records_of(self.uid) {
            let _ = fs::remove_file(record.with_extension("sock"));
            let _ = fs::remove_file(&record);
        }
        if let Err(e) = admin("userdel", &[&self.name]) {
            eprintln!("cleanup: {e}");
        }
        if database_entry("/etc/group", &self.name).is_some() {
            if let Err(e) = admin("groupdel", &[&self.name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A system group made for one test (`crlh<pid>g<n>`), removed in `Drop`.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn create() -> TestGroup {
        let name = format!("crlh{}g{}", std::process::id(), next());
        admin("groupadd", &["--system", &name]).unwrap_or_else(|e| panic!("{e}"));
        let gid = database_entry("/etc/group", &name).and_then(|f| f.get(2)?.parse().ok());
        let Some(gid) = gid else {
            let _ = admin("groupdel", &[&name]);
            panic!("groupadd made {name}, but /etc/group has no gid for it");
        };
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        if let Err(e) = admin("groupdel", &[&self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

// ---- /proc and the registry ------------------------------------------------------------

/// Every process one of whose uids (real, effective, saved, filesystem) is `uid`, with a
/// description for messages.
fn processes_of(uid: u32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for pid in crate::util::proc_pids() {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if status_ids(&status, "Uid").is_some_and(|ids| ids.contains(&uid)) {
            let field = |key| status_field(&status, key).unwrap_or_default();
            found.push((
                pid,
                format!(
                    "pid {pid} {} (state {}, ppid {}, Uid {})",
                    field("Name"),
                    field("State"),
                    field("PPid"),
                    field("Uid")
                ),
            ));
        }
    }
    found
}

/// SIGKILLs, through pidfds, every process running as `uid`, until none is left (or 5 s).
/// A PID is signalled only if its status, read after its pidfd was opened, shows `uid`
/// while the pidfd shows it alive, so a reused PID is never hit.
fn kill_processes_of(uid: u32) {
    let deadline = Instant::now() + GONE_DEADLINE;
    loop {
        let left = processes_of(uid);
        if left.is_empty() || Instant::now() >= deadline {
            return;
        }
        for (pid, _) in left {
            let Some(raw) = Pid::from_raw(pid).filter(|_| pid > 1) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue;
            };
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let theirs = status_ids(&status, "Uid").is_some_and(|ids| ids.contains(&uid));
            if theirs && !exited(fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text after `key:` on a `/proc/<pid>/status` line.
fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// The numbers on a status line (`Uid`, `Gid`, `Groups`).
fn status_ids(status: &str, key: &str) -> Option<Vec<u32>> {
    status_field(status, key)?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

/// A hexadecimal status field (`CapEff`...).
fn status_hex(status: &str, key: &str) -> Option<u64> {
    u64::from_str_radix(&status_field(status, key)?, 16).ok()
}

/// The parent PID from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(") ")?;
    after.split(' ').nth(1)?.parse().ok()
}

/// The records in root's registry of jobs run on behalf of `uid`.
fn records_of(uid: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(REGISTRY).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let record = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if record.is_some_and(|r| r["on_behalf_of"] == uid) {
            found.push(path);
        }
    }
    found
}

fn json(text: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{text}"))
}

// ---- the installed helper ----------------------------------------------------------------

/// One test's install of the helper and its cgroups:
///
/// ```text
/// /tmp/corral-helper-test-<pid>-<n>/     root's, 0755 (the helper's prefix)
///     bin/corral-helper                  root's, 4755
///     etc/corral/helper.toml             root's, 0644 (write_policy)
///     work/                              scratch: io/ (stdout, stderr), the test's files
/// <cgroup base>/corral-test-<pid>-helper-<tag>-<n>/
///     allowed/                           the policy's cgroup_parent
///     other/                             beside it: must stay empty
/// ```
struct Installed {
    prefix: PathBuf,
    helper: PathBuf,
    policy: PathBuf,
    work: PathBuf,
    io: PathBuf,
    allowed: PathBuf,
    /// Cgroups the test made under `allowed` itself (not left behind by the helper).
    made: Mutex<Vec<PathBuf>>,
    mount: PathBuf,
    /// Dropped after the prefix is removed: kills and removes the whole subtree.
    cgroup: CgroupTree,
}

impl Installed {
    /// The install for test `tag`, or `None` after [`skip`] when it cannot be made here.
    fn new(tag: &str) -> Option<Installed> {
        if let Some(why) = missing_prerequisite() {
            skip(format!("helper::{tag}: {why}"));
            return None;
        }
        let cgroup = match CgroupTree::create(&format!("helper-{tag}")) {
            Ok(tree) => tree,
            Err(e) => {
                skip(format!("helper::{tag}: no writable cgroup2 ({e})"));
                return None;
            }
        };
        let mount = cgroup2_mount().expect("a cgroup tree was made, so cgroup2 is mounted");
        let allowed = cgroup.root().join("allowed");
        fs::create_dir(&allowed).unwrap_or_else(|e| panic!("mkdir {}: {e}", allowed.display()));
        let prefix = PathBuf::from(format!(
            "/tmp/corral-helper-test-{}-{}",
            std::process::id(),
            next()
        ));
        let _ = fs::remove_dir_all(&prefix);
        let work = prefix.join("work");
        let installed = Installed {
            helper: prefix.join("bin/corral-helper"),
            policy: prefix.join("etc/corral/helper.toml"),
            io: work.join("io"),
            work,
            prefix,
            allowed,
            made: Mutex::new(Vec::new()),
            mount,
            cgroup,
        };
        for dir in ["", "bin", "etc", "etc/corral", "work"] {
            installed.make_dir(&installed.prefix.join(dir), None, 0o755);
        }
        installed.make_dir(&installed.io, None, 0o700);
        fs::copy(HELPER, &installed.helper).expect("copy corral-helper into the prefix");
        std::os::unix::fs::chown(&installed.helper, Some(0), Some(0)).expect("chown helper");
        // After the chown, which clears the setuid bit.
        fs::set_permissions(&installed.helper, fs::Permissions::from_mode(0o4755))
            .expect("chmod 4755 helper");
        // A process another test thread forked while the copy was open for writing holds
        // that descriptor until it execs, and until then executing the copy fails with
        // ETXTBSY ("Text file busy"). The copy is closed now, so no new holder can appear:
        // wait until it runs.
        poll_until(
            "the installed helper runs (no ETXTBSY)",
            Duration::from_secs(10),
            || match Command::new(&installed.helper).arg("--version").output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => None,
                _ => Some(()),
            },
        );
        Some(installed)
    }

    /// The cgroup beside `allowed`, which no job may reach.
    fn other(&self) -> PathBuf {
        self.cgroup.other_leaf()
    }

    /// Makes `path`, owned by `owner` (root if `None`), with `mode`.
    fn make_dir(&self, path: &Path, owner: Option<&TestUser>, mode: u32) -> PathBuf {
        fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let (uid, gid) = owner.map_or((0, 0), |u| (u.uid, u.gid));
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// `work/<name>`, made as [`Installed::make_dir`] does.
    fn work_dir(&self, name: &str, owner: Option<&TestUser>, mode: u32) -> PathBuf {
        self.make_dir(&self.work.join(name), owner, mode)
    }

    /// [`Installed::new`], and one user the policy lets run anything.
    fn with_user(tag: &str) -> Option<(Installed, TestUser)> {
        let fx = Installed::new(tag)?;
        let user = TestUser::create(&[]);
        fx.write_policy(&fx.rule(&[&user], ""));
        Some((fx, user))
    }

    /// A cgroup under `allowed` made by the test (not counted as left behind).
    fn make_cgroup(&self, rel: &str) -> PathBuf {
        let path = self.allowed.join(rel);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        self.made.lock().unwrap().push(path.clone());
        path
    }

    /// Writes the policy (root's, 0644).
    fn write_policy(&self, text: &str) {
        fs::write(&self.policy, text).expect("write the policy");
        std::os::unix::fs::chown(&self.policy, Some(0), Some(0)).expect("chown the policy");
        fs::set_permissions(&self.policy, fs::Permissions::from_mode(0o644))
            .expect("chmod the policy");
    }

    /// An `[[allow]]` rule for `users`, with the `allowed` cgroup as parent and `extra`
    /// lines.
    fn rule(&self, users: &[&TestUser], extra: &str) -> String {
        let names: Vec<String> = users.iter().map(|u| toml_string(&u.name)).collect();
        format!(
            "[[allow]]\nusers = [{}]\ncgroup_parent = {}\n{extra}\n",
            names.join(", "),
            toml_string(&self.allowed.to_string_lossy())
        )
    }

    /// `corral-helper ARGS...` as `user`.
    fn helper<'a>(&'a self, user: &'a TestUser) -> Call<'a> {
        self.as_user(user, &self.helper.clone())
    }

    /// `PROGRAM ARGS...` as `user` (not through the helper).
    fn as_user<'a>(&'a self, user: &'a TestUser, program: &Path) -> Call<'a> {
        Call {
            installed: self,
            user,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            clear_groups: false,
            ignore_sigchld: false,
            fd5: None,
        }
    }

    /// `corral-helper ps --json` as `user`.
    fn ps(&self, user: &TestUser) -> Vec<serde_json::Value> {
        let out = self.helper(user).args(["ps", "--json"]).run();
        out.assert_code(0);
        json(&out.stdout, "corral-helper ps --json")
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("ps --json prints an array:\n{}", out.stdout))
    }

    /// `/<path of the allowed cgroup from the mount>/helper-<uid>-<guardian>/`, the start
    /// of a job's `0::` line in `/proc/<pid>/cgroup`.
    fn place_of(&self, under: &Path, user: &TestUser, guardian: i32) -> String {
        let rel = under
            .strip_prefix(&self.mount)
            .expect("test cgroups are under the mount");
        format!("/{}/helper-{}-{guardian}/", rel.display(), user.uid)
    }

    /// The PIDs in the `allowed` subtree (the jobs' processes).
    fn job_processes(&self) -> Vec<i32> {
        CgroupTree::procs_recursive(&self.allowed)
    }

    /// Asserts, against a deadline, that nothing of the helper's is left: no cgroup under
    /// `allowed` or `other` but those the test made, no process running as one of
    /// `users`, no record of theirs in the registry, none of `files`.
    fn assert_nothing_left(&self, users: &[&TestUser], files: &[&Path], context: &str) {
        let deadline = Instant::now() + GONE_DEADLINE;
        loop {
            let mut left = Vec::new();
            let made = self.made.lock().unwrap().clone();
            for top in [self.allowed.clone(), self.other()] {
                let top = top.as_path();
                let mut cgroups = Vec::new();
                descendants(top, &mut cgroups);
                for cgroup in cgroups.into_iter().filter(|c| !made.contains(c)) {
                    left.push(format!("cgroup {}", cgroup.display()));
                }
                if CgroupTree::populated(top) {
                    left.push(format!(
                        "processes under {}: {:?}",
                        top.display(),
                        CgroupTree::procs_recursive(top)
                    ));
                }
            }
            for user in users {
                for (_, process) in processes_of(user.uid) {
                    left.push(format!("a process of {}: {process}", user.name));
                }
                for record in records_of(user.uid) {
                    left.push(format!("a record of {}: {}", user.name, record.display()));
                }
            }
            for file in files {
                if fs::symlink_metadata(file).is_ok() {
                    left.push(format!("file {}", file.display()));
                }
            }
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: left behind after {GONE_DEADLINE:?}:\n  {}",
                left.join("\n  ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.prefix) {
            eprintln!("cleanup: remove {}: {e}", self.prefix.display());
        }
        // `cgroup` (a field) kills and removes the subtree after this.
    }
}

/// Every cgroup below `path`, at any depth.
fn descendants(path: &Path, out: &mut Vec<PathBuf>) {
    for child in CgroupTree::children(path) {
        descendants(&child, out);
        out.push(child);
    }
}

/// `text` as a TOML basic string (JSON's escapes are TOML's for these characters).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

// ---- calls as a test user -----------------------------------------------------------------

/// `setpriv --reuid U --regid G --init-groups -- PROGRAM ARGS` (or `--clear-groups`), with
/// no environment but `PATH=/usr/bin:/bin` and what the test adds, in `/`, stdin from
/// `/dev/null`, stdout and stderr to files, and no descriptor but stdio (and fd 5 when the
/// test passes one): what the test process inherited is closed on exec.
struct Call<'a> {
    installed: &'a Installed,
    user: &'a TestUser,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    clear_groups: bool,
    ignore_sigchld: bool,
    fd5: Option<fs::File>,
}

impl Call<'_> {
    fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start with no supplementary group at all (`setpriv --clear-groups`).
    fn clear_groups(mut self) -> Self {
        self.clear_groups = true;
        self
    }

    /// Start with SIGCHLD ignored (a disposition that survives exec).
    fn ignore_sigchld(mut self) -> Self {
        self.ignore_sigchld = true;
        self
    }

    /// Pass `file` as descriptor 5.
    fn fd5(mut self, file: fs::File) -> Self {
        self.fd5 = Some(file);
        self
    }

    fn spawn(self) -> Running {
        let n = next();
        let out = self.installed.io.join(format!("{n}.out"));
        let err = self.installed.io.join(format!("{n}.err"));
        let setpriv = tool("setpriv").expect("checked before the test");
        let mut command = Command::new(setpriv);
        command
            .arg("--reuid")
            .arg(self.user.uid.to_string())
            .arg("--regid")
            .arg(self.user.gid.to_string())
            .arg(if self.clear_groups {
                "--clear-groups"
            } else {
                "--init-groups"
            })
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("create the stdout file"))
            .stderr(fs::File::create(&err).expect("create the stderr file"));
        let fd5 = self.fd5.as_ref().map(AsRawFd::as_raw_fd);
        let ignore_sigchld = self.ignore_sigchld;
        // SAFETY: the closure runs in the forked child before exec and makes only the
        // async-signal-safe calls close_range, dup2, fcntl and signal, on descriptors (the
        // file stays open in the parent until the spawn returns) and a signal number.
        unsafe {
            command.pre_exec(move || {
                if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = fd5 {
                    // dup2 onto itself would leave FD_CLOEXEC set.
                    let ok = if fd == 5 {
                        libc::fcntl(5, libc::F_SETFD, 0) == 0
                    } else {
                        libc::dup2(fd, 5) == 5
                    };
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if ignore_sigchld && libc::signal(libc::SIGCHLD, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = format!(
            "{} {:?} as {} (uid {})",
            self.program.display(),
            self.args,
            self.user.name,
            self.user.uid
        );
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        // Our own unreaped child: its PID is its own.
        let pidfd = pidfd_of_child(&child);
        Running {
            pid: child.id() as i32,
            child: Some(child),
            pidfd,
            out,
            err,
            what,
        }
    }

    /// Spawns and waits until it returns (within [`HELPER_DEADLINE`]).
    fn run(self) -> Outcome {
        self.spawn().finish(HELPER_DEADLINE)
    }
}

/// A running call. Through the helper, the process is the guardian (setpriv execs the
/// helper, which stays root); its only child, once forked, is the supervisor.
struct Running {
    /// Taken when it is reaped.
    child: Option<Child>,
    pid: i32,
    pidfd: OwnedFd,
    out: PathBuf,
    err: PathBuf,
    what: String,
}

impl Running {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn alive(&self) -> bool {
        !exited(self.pidfd.as_fd())
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The guardian's only child, held by a pidfd: the supervisor, once the job runs (the
    /// child a `--report` run forks to check the path as the caller is reaped before the
    /// supervisor is forked). The pidfd is opened after the PID is read from the guardian's
    /// `children`; it is that child's if the process behind it is then still the
    /// guardian's child and alive (the guardian, which we have not reaped, reaps the
    /// supervisor only after it died, and forks nothing after it).
    fn supervisor(&self) -> Option<(i32, OwnedFd)> {
        let guardian = self.pid();
        let children =
            fs::read_to_string(format!("/proc/{guardian}/task/{guardian}/children")).ok()?;
        let pids: Vec<i32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let [pid] = pids[..] else {
            return None;
        };
        let raw = Pid::from_raw(pid).filter(|_| pid > 1)?;
        let fd = rustix::process::pidfd_open(raw, PidfdFlags::empty()).ok()?;
        (parent_of(pid) == Some(guardian) && !exited(fd.as_fd())).then_some((pid, fd))
    }

    /// Waits until it returns (panics after `within`; `Drop` then ends it).
    fn finish(mut self, within: Duration) -> Outcome {
        if !wait_exited(self.pidfd.as_fd(), Instant::now() + within) {
            panic!(
                "{} did not return within {within:?}\nstdout:\n{}\nstderr:\n{}",
                self.what,
                fs::read_to_string(&self.out).unwrap_or_default(),
                self.stderr()
            );
        }
        let pid = self.pid();
        let status = self
            .child
            .take()
            .expect("not finished twice")
            .wait()
            .expect("wait for our own child");
        Outcome {
            pid,
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: self.stderr(),
            what: self.what.clone(),
        }
    }
}

impl Drop for Running {
    /// After a failed test: SIGKILL to the supervisor makes the guardian end the job and
    /// clean up; the guardian itself is killed only if it does not return after that.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.alive() {
            if let Some((_, supervisor)) = self.supervisor() {
                let _ = rustix::process::pidfd_send_signal(&supervisor, Signal::KILL);
            }
            if !wait_exited(self.pidfd.as_fd(), Instant::now() + Duration::from_secs(15)) {
                let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
            }
        }
        let _ = child.wait();
    }
}

/// How a call ended.
struct Outcome {
    /// Its PID (the guardian's, for a helper call).
    pid: i32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    what: String,
}

impl Outcome {
    fn show(&self) -> String {
        format!(
            "{}: {}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            describe_status(self.status),
            self.stdout,
            self.stderr
        )
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit status {code}; {}",
            self.show()
        );
    }

    /// A refusal: exit status 125, nothing on stdout, and one line on stderr, the
    /// helper's error, that contains `needle`.
    fn assert_refused(&self, needle: &str) {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let one_line = match lines[..] {
            [line] => line.starts_with("corral-helper: error: ") && line.contains(needle),
            _ => false,
        };
        assert!(
            self.status.code() == Some(REFUSED) && one_line && self.stdout.is_empty(),
            "expected a refusal (exit status {REFUSED}, one `corral-helper: error:` line naming \
             `{needle}`); {}",
            self.show()
        );
    }
}

// ---- refusals -----------------------------------------------------------------------------

/// Runs `corral-helper run ARGS -- touch <marker>` as `user` and asserts it is refused
/// naming `needle`, that COMMAND never ran and that nothing is left.
fn assert_run_refused(
    installed: &Installed,
    user: &TestUser,
    args: &[&str],
    needle: &str,
    also_absent: &[&Path],
) {
    static MARKERS: AtomicUsize = AtomicUsize::new(0);
    let markers = installed.work.join("markers");
    if !markers.exists() {
        // World-writable (sticky), so a COMMAND that wrongly ran could leave its marker.
        installed.make_dir(&markers, None, 0o1777);
    }
    let marker = markers.join(format!("ran-{}", MARKERS.fetch_add(1, Ordering::SeqCst)));
    let out = installed
        .helper(user)
        .arg("run")
        .args(args)
        .args(["--", "/bin/touch"])
        .arg(&marker)
        .run();
    out.assert_refused(needle);
    let mut files = vec![marker.as_path()];
    files.extend_from_slice(also_absent);
    installed.assert_nothing_left(&[user], &files, &format!("refused run {args:?}"));
}

/// 1. `--cgroup-parent` may only name an existing cgroup under the policy's parent: `..`
///    (relative, or inside an absolute path), an absolute path outside it, a symlink to it
///    from elsewhere, and a cgroup that does not exist are refused. The same option with a
///    cgroup that is under it works (so the refusals are the checks, not a broken option).
#[test]
fn refuses_a_cgroup_parent_outside_the_policy() {
    let Some((fx, user)) = Installed::with_user("cgroup-parent") else {
        return;
    };
    let link = fx.work.join("link");
    std::os::unix::fs::symlink(&fx.allowed, &link).expect("symlink to the allowed cgroup");
    let other = fx.other().to_string_lossy().into_owned();
    let dotdot = format!("{}/../other", fx.allowed.display());
    let link = link.to_string_lossy().into_owned();
    for (given, needle) in [
        ("../other", "'..'"),
        (other.as_str(), "outside the allowed parent"),
        (dotdot.as_str(), "'..'"),
        (link.as_str(), "outside the allowed parent"),
        ("sub", "cannot open sub beneath"),
    ] {
        assert_run_refused(&fx, &user, &["--cgroup-parent", given], needle, &[]);
    }

    let sub = fx.make_cgroup("sub");
    let out = fx
        .helper(&user)
        .args([
            "run",
            "--cgroup-parent",
            "sub",
            "--",
            "/bin/cat",
            "/proc/self/cgroup",
        ])
        .run();
    out.assert_code(0);
    let place = fx.place_of(&sub, &user, out.pid);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.strip_prefix("0::").is_some_and(|p| p.starts_with(&place))),
        "--cgroup-parent sub: COMMAND is not in {place}; {}",
        out.show()
    );
    fx.assert_nothing_left(&[&user], &[], "--cgroup-parent sub");
}

/// 2. A job name is a file name in root's registry: one with `/` or `..` is refused.
#[test]
fn refuses_a_job_name_with_a_slash_or_dotdot() {
    let Some((fx, user)) = Installed::with_user("name") else {
        return;
    };
    for name in ["../x", "a/b"] {
        let escaped = Path::new(REGISTRY).join(format!("{name}.json"));
        assert_run_refused(
            &fx,
            &user,
            &["--name", name],
            "invalid job name",
            &[&escaped],
        );
    }
}

/// 3. `--report` is checked as the caller before anything runs: a directory only root may
///    enter, and a root-owned file in a world-writable directory, are refused; COMMAND
///    never runs and the file is neither made nor changed.
#[test]
fn refuses_a_report_the_caller_could_not_write() {
    let Some((fx, user)) = Installed::with_user("report-refused") else {
        return;
    };
    let root_only = fx.work_dir("rootonly", None, 0o700);
    let report = root_only.join("r.json");
    let report_arg = report.to_string_lossy().into_owned();
    assert_run_refused(
        &fx,
        &user,
        &["--report", &report_arg],
        "report directory",
        &[&report],
    );

    let public = fx.work_dir("public", None, 0o1777);
    let roots = public.join("roots.json");
    fs::write(&roots, "root's own\n").expect("write a root-owned file");
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
    let roots_arg = roots.to_string_lossy().into_owned();
    assert_run_refused(&fx, &user, &["--report", &roots_arg], "not writable", &[]);
    let meta = fs::metadata(&roots).expect("the root-owned file is still there");
    assert_eq!(
        (fs::read_to_string(&roots).unwrap(), meta.uid()),
        ("root's own\n".to_owned(), 0),
        "the refused --report changed {}",
        roots.display()
    );
    let strays: Vec<_> = fs::read_dir(&public)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "roots.json")
        .collect();
    assert!(strays.is_empty(), "files left in {public:?}: {strays:?}");
}

/// 4. A limit above the policy's maximum (`pids_max = 100`: 1000, or `max`) and a limit
///    the policy does not name (`--memory-max`) are refused before anything is made.
#[test]
fn refuses_a_limit_the_policy_does_not_allow() {
    let Some(fx) = Installed::new("limits") else {
        return;
    };
    let user = TestUser::create(&[]);
    fx.write_policy(&fx.rule(&[&user], "pids_max = 100"));
    for (args, needle) in [
        (["--pids-max", "1000"], "above the policy's maximum 100"),
        (["--pids-max", "max"], "above the policy's maximum 100"),
        (["--memory-max", "1G"], "allows no --memory-max"),
    ] {
        assert_run_refused(&fx, &user, &args, needle, &[]);
    }
}

/// 5. `--user root` (by name or `#0`) from a caller who is not root, and `--user` naming
///    an account the rule's `run_as` does not, are refused.
#[test]
fn refuses_user_root_and_accounts_not_in_run_as() {
    let Some(fx) = Installed::new("user-refused") else {
        return;
    };
    let caller = TestUser::create(&[]);
    let stranger = TestUser::create(&[]);
    fx.write_policy(&fx.rule(&[&caller], ""));
    assert_run_refused(
        &fx,
        &caller,
        &["--user", "root"],
        "never runs a job as root",
        &[],
    );
    assert_run_refused(
        &fx,
        &caller,
        &["--user", "#0"],
        "never runs a job as root",
        &[],
    );
    assert_run_refused(
        &fx,
        &caller,
        &["--user", &stranger.name],
        "is not allowed",
        &[],
    );
    fx.assert_nothing_left(&[&caller, &stranger], &[], "--user refusals");
}

/// 6. A caller no rule names is refused; a policy writable by others is refused for
///    everyone, rule or not, with a message that says so (and `check` refuses it too).
#[test]
fn refuses_callers_not_in_the_policy_and_a_writable_policy() {
    let Some(fx) = Installed::new("policy-refused") else {
        return;
    };
    let member = TestUser::create(&[]);
    let outsider = TestUser::create(&[]);
    fx.write_policy(&fx.rule(&[&member], ""));
    assert_run_refused(&fx, &outsider, &[], "may not use corral-helper", &[]);

    fs::set_permissions(&fx.policy, fs::Permissions::from_mode(0o666)).expect("chmod 0666");
    for user in [&member, &outsider] {
        assert_run_refused(&fx, user, &[], "is writable by group or others", &[]);
    }
    fx.helper(&member)
        .arg("check")
        .run()
        .assert_refused("is writable by group or others");
    fx.assert_nothing_left(&[&member, &outsider], &[], "writable policy");
}

/// 7. Another user's job is invisible: B's `ps` does not list A's job, and B's `kill` of
///    its id or its name gets "no job", like a job that does not exist; A's job runs on.
///    A's own `kill` then stops it, and A's `run` returns 143 with everything cleaned up.
#[test]
fn ps_and_kill_do_not_reach_another_users_job() {
    let Some(fx) = Installed::new("other-users-job") else {
        return;
    };
    let a = TestUser::create(&[]);
    let b = TestUser::create(&[]);
    fx.write_policy(&fx.rule(&[&a, &b], ""));
    let job = fx
        .helper(&a)
        .args(["run", "--name", "a-job", "--", "/bin/sleep", "30"])
        .spawn();
    let id = poll_until("A's ps --json lists a-job", READY_DEADLINE, || {
        assert!(job.alive(), "A's run returned early:\n{}", job.stderr());
        let jobs = fx.ps(&a);
        let listed = jobs.iter().find(|j| j["name"] == "a-job")?;
        listed["id"].as_str().map(str::to_owned)
    });

    let theirs = fx.ps(&b);
    assert!(
        theirs.is_empty(),
        "B's ps lists jobs it does not own: {theirs:#?}"
    );
    for target in [id.as_str(), "a-job"] {
        fx.helper(&b)
            .args(["kill", "--grace", "0", target])
            .run()
            .assert_refused("no job");
    }
    assert!(
        job.alive(),
        "A's run returned after B's kill:\n{}",
        job.stderr()
    );
    assert!(
        processes_of(a.uid)
            .iter()
            .any(|(_, p)| p.contains(" sleep ")),
        "A's job is not running after B's kill: {:?}",
        processes_of(a.uid)
    );
    assert!(
        fx.ps(&a).iter().any(|j| j["id"] == id.as_str()),
        "A's ps no longer lists its job after B's kill"
    );

    fx.helper(&a).args(["kill", "a-job"]).run().assert_code(0);
    let done = job.finish(HELPER_DEADLINE);
    done.assert_code(128 + libc::SIGTERM);
    fx.assert_nothing_left(&[&a, &b], &[], "A's job, stopped by A");
}

// ---- what a job gets ----------------------------------------------------------------------

/// 8. The caller's environment steers nothing privileged: with `CORRAL_RUNTIME_DIR`,
///    `XDG_RUNTIME_DIR`, `CORRAL_CGROUP_PARENT` (the `other` cgroup), `RUST_LOG` and
///    loader variables set, the job runs in the policy's cgroup, is recorded in root's
///    registry, nothing appears at the given paths or under `other`, and COMMAND gets the
///    environment less the loader's variables (`LD_BIND_NOW`, which glibc leaves to the
///    helper, is removed by the helper and named in the report).
#[test]
fn the_callers_environment_steers_nothing() {
    let Some((fx, user)) = Installed::with_user("environment") else {
        return;
    };
    let evil_rt = fx.work.join("evil-rt");
    let evil_xdg = fx.work.join("evil-xdg");
    let reports = fx.work_dir("reports", Some(&user), 0o700);
    let report = reports.join("r.json");
    let out = fx
        .helper(&user)
        .env("LD_PRELOAD", "/nonexistent.so")
        .env("LD_BIND_NOW", "1")
        .env("RUST_LOG", "trace")
        .env("CORRAL_RUNTIME_DIR", &evil_rt)
        .env("XDG_RUNTIME_DIR", &evil_xdg)
        .env("CORRAL_CGROUP_PARENT", fx.other())
        .env("CRLH_KEPT", "yes")
        .arg("run")
        .arg("--report")
        .arg(&report)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/cgroup; echo ---; env",
        ])
        .run();
    out.assert_code(0);
    let (cgroup, env) = out
        .stdout
        .split_once("---\n")
        .unwrap_or_else(|| panic!("COMMAND's output: {}", out.show()));
    let place = fx.place_of(&fx.allowed, &user, out.pid);
    assert!(
        cgroup
            .lines()
            .any(|l| l.strip_prefix("0::").is_some_and(|p| p.starts_with(&place))),
        "COMMAND is not in {place}; {}",
        out.show()
    );
    let vars: Vec<&str> = env.lines().collect();
    for loader in ["LD_PRELOAD=", "LD_BIND_NOW="] {
        assert!(
            !vars.iter().any(|v| v.starts_with(loader)),
            "COMMAND's environment has {loader}; {}",
            out.show()
        );
    }
    assert!(
        vars.contains(&"CRLH_KEPT=yes"),
        "COMMAND did not get the caller's environment; {}",
        out.show()
    );
    assert!(
        !out.stderr.to_lowercase().contains("trace"),
        "RUST_LOG=trace made the helper log; {}",
        out.show()
    );
    let report = json(
        &fs::read_to_string(&report).expect("the report was written"),
        "the report",
    );
    assert_eq!(
        report["not_registered"],
        serde_json::Value::Null,
        "the job was not recorded (in root's registry): {report:#}"
    );
    let removed = report["helper"]["environment_removed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        removed.iter().any(|v| v == "LD_BIND_NOW"),
        "helper.environment_removed does not name LD_BIND_NOW: {report:#}"
    );
    fx.assert_nothing_left(
        &[&user],
        &[&evil_rt, &evil_xdg],
        "a run with a hostile environment",
    );
}

/// 9. COMMAND runs as the caller: uid and gid (real, effective, saved, filesystem), the
///    groups the group database gives the caller (even though the caller starts the helper
///    with none, and is let in by a rule for one of those groups), every capability set
///    empty and `NoNewPrivs: 1`.
#[test]
fn the_job_has_the_callers_identity_and_no_privilege() {
    let Some(fx) = Installed::new("identity") else {
        return;
    };
    let extra = TestGroup::create();
    let user = TestUser::create(&[&extra]);
    fx.write_policy(&format!(
        "[[allow]]\ngroups = [{}]\ncgroup_parent = {}\n",
        toml_string(&extra.name),
        toml_string(&fx.allowed.to_string_lossy())
    ));
    let expected_groups = user.groups();
    assert!(
        expected_groups.contains(&extra.gid) && expected_groups.contains(&user.gid),
        "id -G {} does not list {} and {}: {expected_groups:?}",
        user.name,
        user.gid,
        extra.gid
    );

    // setpriv --clear-groups does start the caller with no group.
    let bare = fx
        .as_user(&user, Path::new("/bin/cat"))
        .arg("/proc/self/status")
        .clear_groups()
        .run();
    bare.assert_code(0);
    assert_eq!(
        status_ids(&bare.stdout, "Groups"),
        Some(vec![]),
        "setpriv --clear-groups left groups; {}",
        bare.show()
    );

    let out = fx
        .helper(&user)
        .clear_groups()
        .args(["run", "--", "/bin/cat", "/proc/self/status"])
        .run();
    out.assert_code(0);
    let status = &out.stdout;
    assert_eq!(
        status_ids(status, "Uid"),
        Some(vec![user.uid; 4]),
        "COMMAND's uids; {}",
        out.show()
    );
    assert_eq!(
        status_ids(status, "Gid"),
        Some(vec![user.gid; 4]),
        "COMMAND's gids; {}",
        out.show()
    );
    let mut groups = status_ids(status, "Groups").unwrap_or_default();
    groups.sort_unstable();
    assert_eq!(
        groups,
        expected_groups,
        "COMMAND's groups are not the caller's from the database (extra group {} is {}); {}",
        extra.name,
        extra.gid,
        out.show()
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_hex(status, set), Some(0), "{set}; {}", out.show());
    }
    assert_eq!(
        status_field(status, "NoNewPrivs").as_deref(),
        Some("1"),
        "NoNewPrivs; {}",
        out.show()
    );
    fx.assert_nothing_left(&[&user], &[], "identity");
}

/// 10. COMMAND's descriptors are stdio and what the caller passed (fd 5, a file of the
///     caller's), none of the helper's: not the policy, no cgroup file, nothing of the
///     registry, no socket, pipe or anonymous inode (pidfd, signalfd).
#[test]
fn the_job_gets_the_callers_descriptors_and_none_of_the_helpers() {
    let Some((fx, user)) = Installed::with_user("descriptors") else {
        return;
    };
    let mine = fx.work.join("mine");
    fs::write(&mine, "the caller's\n").expect("write the caller's file");
    std::os::unix::fs::chown(&mine, Some(user.uid), Some(user.gid)).expect("chown");
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = fs::File::open(&mine).expect("open the caller's file");
    // `sh` lists its own descriptors (`readlink` runs in a child, with nothing extra
    // open in the shell); the directory descriptor of the glob is closed by then.
    let list =
        r#"for f in /proc/$$/fd/*; do printf '%s ' "${f##*/}"; readlink "$f" || echo '?'; done"#;
    let out = fx
        .helper(&user)
        .fd5(file)
        .args(["run", "--", "/bin/sh", "-c", list])
        .run();
    out.assert_code(0);
    let fds: Vec<(i32, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (fd, target) = l.split_once(' ')?;
            let fd = fd.parse().ok()?;
            (target != "?").then(|| (fd, target.to_owned()))
        })
        .collect();
    let policy = fx.policy.to_string_lossy().into_owned();
    for (fd, target) in &fds {
        let helpers = target.contains(&policy)
            || target.starts_with("/sys/fs/cgroup")
            || target.starts_with(&*fx.mount.to_string_lossy())
            || target.starts_with(REGISTRY)
            || target.starts_with("anon_inode:")
            || (*fd > 2 && (target.starts_with("socket:") || target.starts_with("pipe:")));
        assert!(
            !helpers,
            "COMMAND has the helper's descriptor {fd} -> {target}; {}",
            out.show()
        );
    }
    let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(
        numbers,
        vec![0, 1, 2, 5],
        "COMMAND's descriptors are not stdio and the caller's fd 5; {}",
        out.show()
    );
    assert_eq!(
        fds[3].1,
        mine.to_string_lossy(),
        "fd 5 is not the caller's file; {}",
        out.show()
    );
    fx.assert_nothing_left(&[&user], &[], "descriptors");
}

/// The line `corral-helper run --verbose` prints once the supervisor has given up root.
const GAVE_UP_ROOT: &str = "corral-helper: job ";

/// Waits until the job of `job` (a `run --verbose`) has `processes` processes in `allowed`
/// and its supervisor has given up root (it says so on stderr when it is done); returns
/// the supervisor's PID and pidfd.
fn running_supervisor(fx: &Installed, job: &Running, processes: usize) -> (i32, OwnedFd) {
    poll_until(
        format!("{processes} job processes and a supervisor that gave up root"),
        READY_DEADLINE,
        || {
            assert!(job.alive(), "the run returned early:\n{}", job.stderr());
            if fx.job_processes().len() < processes || !job.stderr().contains(GAVE_UP_ROOT) {
                return None;
            }
            job.supervisor()
        },
    )
}

/// 11. The supervisor runs as the caller (every uid and gid), with no capability and
///     `NoNewPrivs: 1`, and is not dumpable: the caller cannot read its environment,
///     though the caller may signal it. The guardian stays root: the caller cannot signal
///     it.
#[test]
fn the_supervisor_is_the_callers_and_the_guardian_is_out_of_reach() {
    let Some((fx, user)) = Installed::with_user("supervisor") else {
        return;
    };
    let job = fx
        .helper(&user)
        .args([
            "run",
            "--verbose",
            "--name",
            "sup-job",
            "--",
            "/bin/sleep",
            "30",
        ])
        .spawn();
    let (supervisor, _pidfd) = running_supervisor(&fx, &job, 1);
    let status = fs::read_to_string(format!("/proc/{supervisor}/status")).expect("status");
    let show = || format!("supervisor {supervisor}:\n{status}");
    assert_eq!(
        status_ids(&status, "Uid"),
        Some(vec![user.uid; 4]),
        "{}",
        show()
    );
    assert_eq!(
        status_ids(&status, "Gid"),
        Some(vec![user.gid; 4]),
        "{}",
        show()
    );
    for set in ["CapPrm", "CapEff", "CapInh", "CapAmb", "CapBnd"] {
        assert_eq!(status_hex(&status, set), Some(0), "{set}; {}", show());
    }
    assert_eq!(
        status_field(&status, "NoNewPrivs").as_deref(),
        Some("1"),
        "{}",
        show()
    );
    let guardian = job.pid();
    let guardian_status =
        fs::read_to_string(format!("/proc/{guardian}/status")).expect("guardian status");
    assert_eq!(
        status_ids(&guardian_status, "Uid"),
        Some(vec![0; 4]),
        "the guardian is not root through and through:\n{guardian_status}"
    );

    let environ = fx
        .as_user(&user, Path::new("/bin/cat"))
        .arg(format!("/proc/{supervisor}/environ"))
        .run();
    assert!(
        !environ.status.success() && environ.stderr.contains("Permission denied"),
        "the caller could read the supervisor's environment (it is dumpable); {}",
        environ.show()
    );
    let kill_0 = |pid: i32| {
        fx.as_user(&user, Path::new("/bin/sh"))
            .args(["-c", r#"kill -0 "$1""#, "sh"])
            .arg(pid.to_string())
            .run()
    };
    let own = kill_0(supervisor);
    own.assert_code(0);
    let guard = kill_0(guardian);
    assert!(
        !guard.status.success() && guard.stderr.contains("Operation not permitted"),
        "the caller could signal the guardian; {}",
        guard.show()
    );
    assert!(job.alive(), "the guardian returned:\n{}", job.stderr());

    fx.helper(&user)
        .args(["kill", "sup-job"])
        .run()
        .assert_code(0);
    job.finish(HELPER_DEADLINE).assert_code(128 + libc::SIGTERM);
    fx.assert_nothing_left(&[&user], &[], "a job stopped with corral-helper kill");
}

/// 12. Killing the supervisor (SIGKILL, as its caller may) kills the whole job, a process
///     in a session of its own included: the guardian returns 137 and nothing is left (no
///     process, no cgroup, no record).
#[test]
fn killing_the_supervisor_kills_the_job() {
    let Some((fx, user)) = Installed::with_user("supervisor-killed") else {
        return;
    };
    let job = fx
        .helper(&user)
        .args([
            "run",
            "--verbose",
            "--",
            "/bin/sh",
            "-c",
            "sleep 300 & setsid sleep 300 & wait",
        ])
        .spawn();
    let (supervisor, pidfd) = running_supervisor(&fx, &job, 3);
    // `setsid` execs `sleep` in its own time.
    poll_until("the job's two sleeps", READY_DEADLINE, || {
        let sleeps = processes_of(user.uid)
            .into_iter()
            .filter(|(_, p)| p.contains(" sleep "))
            .count();
        (sleeps == 2).then_some(())
    });
    rustix::process::pidfd_send_signal(&pidfd, Signal::KILL)
        .unwrap_or_else(|e| panic!("SIGKILL supervisor {supervisor}: {e}"));
    let done = job.finish(Duration::from_secs(20));
    done.assert_code(128 + libc::SIGKILL);
    assert!(
        done.stderr.contains("supervisor was killed by signal 9"),
        "the guardian does not say its supervisor was killed; {}",
        done.show()
    );
    fx.assert_nothing_left(&[&user], &[], "a job whose supervisor was killed");
}

/// 13. `--report` in the caller's own directory: written by the caller (owned by their uid
///     and gid), with a `helper` object naming the caller, and `credentials` the caller's
///     uid; no temporary file is left beside it.
#[test]
fn the_report_is_written_as_the_caller() {
    let Some((fx, user)) = Installed::with_user("report") else {
        return;
    };
    let dir = fx.work_dir("userdir", Some(&user), 0o700);
    let path = dir.join("r.json");
    let out = fx
        .helper(&user)
        .arg("run")
        .arg("--report")
        .arg(&path)
        .args(["--", "/bin/true"])
        .run();
    out.assert_code(0);
    let meta =
        fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}; {}", path.display(), out.show()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "the report's owner"
    );
    let report = json(&fs::read_to_string(&path).unwrap(), "the report");
    assert_eq!(report["helper"]["caller"]["uid"], user.uid, "{report:#}");
    assert_eq!(
        report["helper"]["caller"]["name"],
        user.name.as_str(),
        "{report:#}"
    );
    assert_eq!(report["credentials"]["uid"], user.uid, "{report:#}");
    assert_eq!(
        report["helper"]["policy"],
        fx.policy.to_string_lossy().as_ref(),
        "{report:#}"
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["r.json"], "files beside the report");
    fx.assert_nothing_left(&[&user], &[], "a run with a report");
}

/// 14. `--user B`, allowed by the rule's `run_as`: COMMAND runs as B (every uid and gid),
///     and the timeout's polite signal reaches B's processes (the supervisor signals as B,
///     though it writes files as A): COMMAND's trap exits 7, the run returns 124, and the
///     stop sequence ends with everything exited, no SIGKILL.
#[test]
fn run_as_another_allowed_account_and_stop_it_politely() {
    let Some(fx) = Installed::new("run-as") else {
        return;
    };
    let a = TestUser::create(&[]);
    let b = TestUser::create(&[]);
    fx.write_policy(&fx.rule(&[&a], &format!("run_as = [{}]", toml_string(&b.name))));
    let dir = fx.work_dir("userdir", Some(&a), 0o700);
    let path = dir.join("r.json");
    let script = r#"grep -E '^(Uid|Gid):' /proc/self/status; trap 'exit 7' TERM; sleep 30 & wait"#;
    let out = fx
        .helper(&a)
        .args(["run", "--user", &b.name, "--timeout", "1s", "--grace", "5s"])
        .arg("--report")
        .arg(&path)
        .args(["--", "/bin/sh", "-c", script])
        .run();
    out.assert_code(124);
    assert_eq!(
        status_ids(&out.stdout, "Uid"),
        Some(vec![b.uid; 4]),
        "COMMAND's uids; {}",
        out.show()
    );
    assert_eq!(
        status_ids(&out.stdout, "Gid"),
        Some(vec![b.gid; 4]),
        "COMMAND's gids; {}",
        out.show()
    );
    let meta =
        fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}; {}", path.display(), out.show()));
    assert_eq!(meta.uid(), a.uid, "the report is written as the caller");
    let report = json(&fs::read_to_string(&path).unwrap(), "the report");
    assert_eq!(report["helper"]["caller"]["uid"], a.uid, "{report:#}");
    assert_eq!(report["helper"]["user"]["uid"], b.uid, "{report:#}");
    assert_eq!(report["credentials"]["uid"], b.uid, "{report:#}");
    assert_eq!(report["timed_out"], true, "{report:#}");
    assert_eq!(
        report["exit"]["code"], 7,
        "COMMAND's TERM trap did not run: the polite signal did not reach B's process: {report:#}"
    );
    let stop = &report["stop"];
    assert_eq!(stop["reason"], "timeout", "{report:#}");
    let steps = stop["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps
            .iter()
            .any(|s| s["step"] == "signal" && s["signal"] == "SIGTERM"),
        "no polite SIGTERM in the stop sequence: {report:#}"
    );
    assert!(
        stop["outcome"] == "exited" && !steps.iter().any(|s| s["step"] == "kill"),
        "the polite signal was not enough (the supervisor could not signal B's processes?): \
         {report:#}"
    );
    fx.assert_nothing_left(&[&a, &b], &[], "a run as another account");
}

/// 15. Signal dispositions are the caller's to set, and SIG_IGN survives exec: a caller
///     who ignores SIGCHLD (so the kernel reaps children on its own) changes nothing.
///     COMMAND's exit status comes through, with or without `--report` (which must not be
///     refused), and when the supervisor is killed the guardian still returns 137. Each
///     case is run and cleaned up before the differences are reported together.
#[test]
fn a_caller_ignoring_sigchld_changes_nothing() {
    let Some((fx, user)) = Installed::with_user("sigchld") else {
        return;
    };
    let dir = fx.work_dir("userdir", Some(&user), 0o700);
    let path = dir.join("r.json");
    let mut wrong = Vec::new();

    let plain = fx
        .helper(&user)
        .ignore_sigchld()
        .args(["run", "--", "/bin/sh", "-c", "exit 3"])
        .run();
    if plain.status.code() != Some(3) {
        wrong.push(format!(
            "`exit 3`: expected exit status 3; {}",
            plain.show()
        ));
    }
    fx.assert_nothing_left(&[&user], &[], "a run with SIGCHLD ignored");

    let reported = fx
        .helper(&user)
        .ignore_sigchld()
        .arg("run")
        .arg("--report")
        .arg(&path)
        .args(["--", "/bin/sh", "-c", "exit 3"])
        .run();
    let report = fs::read_to_string(&path).map(|t| json(&t, "the report"));
    match (reported.status.code(), report) {
        (Some(3), Ok(r)) if r["exit"]["code"] == 3 => {}
        (_, report) => wrong.push(format!(
            "`exit 3` with --report: expected exit status 3 and a report of it ({report:?}); {}",
            reported.show()
        )),
    }
    fx.assert_nothing_left(&[&user], &[], "a run with --report, SIGCHLD ignored");

    let job = fx
        .helper(&user)
        .ignore_sigchld()
        .args(["run", "--verbose", "--", "/bin/sleep", "300"])
        .spawn();
    let (supervisor, pidfd) = running_supervisor(&fx, &job, 1);
    rustix::process::pidfd_send_signal(&pidfd, Signal::KILL)
        .unwrap_or_else(|e| panic!("SIGKILL supervisor {supervisor}: {e}"));
    let killed = job.finish(Duration::from_secs(20));
    if killed.status.code() != Some(128 + libc::SIGKILL) {
        wrong.push(format!(
            "supervisor killed: expected exit status 137; {}",
            killed.show()
        ));
    }
    fx.assert_nothing_left(&[&user], &[], "a killed supervisor, SIGCHLD ignored");

    assert!(
        wrong.is_empty(),
        "with SIGCHLD ignored by the caller:\n{}",
        wrong.join("\n")
    );
}

// ---- the caller's resource limits ----------------------------------------------------------

/// Files in root's registry made since `since` whose maker (the PID in the job id) is gone:
/// what a helper call killed mid-way would leave (records, sockets, temporary records).
fn registry_litter_since(since: std::time::SystemTime) -> Vec<String> {
    let mut left = Vec::new();
    for entry in fs::read_dir(REGISTRY).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .trim_start_matches('.')
            .strip_prefix("corral-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let recent = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= since);
        if recent && !Path::new(&format!("/proc/{pid}")).exists() {
            left.push(name);
        }
    }
    left
}

/// Whether this process's bounding set holds `CAP_SYS_RESOURCE` (a container's root may
/// lack it): then the helper can lift any limit the caller set.
fn may_lift_hard_limits() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status_hex(&status, "CapBnd").is_some_and(|b| b & (1 << 24) /* CAP_SYS_RESOURCE */ != 0)
}

/// 13. Whatever resource limits the caller set (`ulimit -f`, `-n`, `-t`, `-v`, `-p`), the
///     helper's own work is not cut short by them: every call returns, nothing of root's
///     is left in the registry or the cgroup tree, and COMMAND runs under exactly the
///     caller's limits (it checks them itself: exit status 0). A hard limit below what the
///     helper needs, where it may not lift it (no `CAP_SYS_RESOURCE`), is refused up front
///     in one line naming it; a report the caller's file-size limit forbids is one line of
///     error with COMMAND's status kept.
#[test]
fn the_callers_rlimits_bind_command_and_leave_nothing_of_roots() {
    let Some((fx, user)) = Installed::with_user("rlimits") else {
        return;
    };
    let reports = fx.work_dir("reports", Some(&user), 0o700);
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let lift = may_lift_hard_limits();
    // (how the caller limits itself, what COMMAND's `ulimit` shows, the helper needs to lift
    // a hard limit, the report cannot be written, the resource named if refused)
    let cases = [
        // (512 bytes: room for the refusal's line on stderr, a file here, but not the report)
        ("ulimit -f 1", "-f", "1", true, true, "RLIMIT_FSIZE"),
        ("ulimit -S -f 0", "-f", "0", false, true, ""),
        ("ulimit -f 2048", "-f", "2048", false, false, ""),
        ("ulimit -n 8", "-n", "8", true, false, "RLIMIT_NOFILE"),
        ("ulimit -n 100", "-n", "100", false, false, ""),
        ("ulimit -t 1", "-t", "1", false, false, ""),
        ("ulimit -v 400000", "-v", "400000", false, false, ""),
        ("ulimit -v 20000", "-v", "20000", true, false, "RLIMIT_AS"),
    ];
    for (i, (set, option, shown, needs_lift, no_report, resource)) in cases.into_iter().enumerate()
    {
        let report = reports.join(format!("r{i}.json"));
        let check = format!("[ \"$(ulimit {option})\" = {shown} ]");
        let out = fx
            .as_user(&user, Path::new("/bin/sh"))
            .arg("-c")
            .arg(format!("{set} && exec \"$0\" \"$@\""))
            .arg(&fx.helper)
            .args(["run", "--report"])
            .arg(&report)
            .args(["--", "/bin/sh", "-c", &check])
            .run();
        let context = format!("{set} (CAP_SYS_RESOURCE: {lift})");
        if needs_lift && !lift {
            out.assert_refused(resource);
            assert!(
                out.stderr.contains(&format!("ulimit -H {option}")),
                "{context}: the refusal names the option; {}",
                out.show()
            );
            assert!(
                fs::symlink_metadata(&report).is_err(),
                "{context}: a report"
            );
        } else if no_report {
            // The report is the caller's file, written under the caller's limit; so is the
            // line that says it could not be (stderr is a file here: at 0 bytes, not even
            // that line is written).
            out.assert_code(0);
            let lines: Vec<&str> = out.stderr.lines().collect();
            assert!(
                matches!(lines[..], [line] if line.contains("report") && line.contains("too large"))
                    || (lines.is_empty() && shown == "0"),
                "{context}: one line saying the report could not be written; {}",
                out.show()
            );
            assert!(
                fs::symlink_metadata(&report).is_err(),
                "{context}: a report"
            );
        } else {
            out.assert_code(0);
            assert!(
                out.stderr.is_empty(),
                "{context}: nothing to say; {}",
                out.show()
            );
            json(
                &fs::read_to_string(&report).expect("the report"),
                "the report",
            );
        }
        let strays: Vec<_> = fs::read_dir(&reports)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            strays.is_empty(),
            "{context}: temporary report files: {strays:?}"
        );
        fx.assert_nothing_left(&[&user], &[], &context);
        let litter = registry_litter_since(since);
        assert!(
            litter.is_empty(),
            "{context}: left in {REGISTRY}: {litter:?}"
        );
    }
    // A process limit: the kernel lets COMMAND itself start (it is created by a process
    // with capabilities, which set_user() exempts), but COMMAND runs under the caller's
    // limit (checked without a fork, which that limit forbids).
    let out = fx
        .as_user(&user, Path::new("/bin/sh"))
        .arg("-c")
        .arg("ulimit -p 0 && exec \"$0\" \"$@\"")
        .arg(&fx.helper)
        .args([
            "run",
            "--",
            "/bin/grep",
            "-q",
            "^Max processes  *0  *0 ",
            "/proc/self/limits",
        ])
        .run();
    out.assert_code(0);
    fx.assert_nothing_left(&[&user], &[], "ulimit -p 0");
    let litter = registry_litter_since(since);
    assert!(
        litter.is_empty(),
        "ulimit -p 0: left in {REGISTRY}: {litter:?}"
    );
}
