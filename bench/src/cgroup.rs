//! The bench's own cgroups, and the raw `cgroup.kill` baseline.
//!
//! Everything the bench starts lives under one directory, `<cgroup2 mount>/corral-bench-<pid>`
//! ([`BenchRoot`]):
//! - `self/`: the bench process itself moves here at start, so every child it starts without
//!   other placement (pgroup jobs, `/bin/true`, `timeout`, `corral run`) is born inside;
//! - `jobs/`: the `cgroup_parent` given to corral, which creates one leaf per job below;
//! - `raw-*`: one leaf per raw-baseline tree ([`RawCgroup`]).
//!
//! On close (or drop, on any error or panic) the bench process moves back to the cgroup it
//! came from, then every cgroup below the root is emptied with `cgroup.kill`, waited for
//! (`populated 0` in `cgroup.events`, woken by `POLLPRI`) and removed, depth first.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use corral_testkit::mountinfo;
use rustix::event::{PollFd, PollFlags, Timespec};

pub const PROCS: &str = "cgroup.procs";
pub const EVENTS: &str = "cgroup.events";
pub const KILL: &str = "cgroup.kill";

/// How long teardown waits for a cgroup to empty and be removable.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// The cgroup2 mount: where it is, and which cgroup its root is.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The mount point (`/sys/fs/cgroup/unified` on hybrid hosts).
    pub path: PathBuf,
    /// The cgroup at the mount point, as `/proc/<pid>/cgroup` names it (usually `/`).
    pub root: PathBuf,
}

impl Mount {
    /// Finds the first cgroup2 mount in `/proc/self/mountinfo` (read by the test kit's
    /// parser, which the tests share).
    pub fn find() -> Result<Mount> {
        let mount = mountinfo::Cgroup2Mount::find()
            .context("failed to read /proc/self/mountinfo")?
            .context("no cgroup2 filesystem in /proc/self/mountinfo")?;
        Ok(Mount {
            path: mount.path,
            root: mount.root,
        })
    }

    /// The directory of the cgroup `/proc/<pid>/cgroup` calls `cgroup`.
    pub fn dir_of(&self, cgroup: &Path) -> Result<PathBuf> {
        let rel = cgroup.strip_prefix(&self.root).with_context(|| {
            format!(
                "cgroup {} is outside the cgroup2 mount's root {}",
                cgroup.display(),
                self.root.display()
            )
        })?;
        Ok(self.path.join(rel))
    }
}

/// The cgroup v2 path of the calling process (`0::<path>` in `/proc/self/cgroup`).
pub fn own_cgroup() -> Result<PathBuf> {
    let text =
        fs::read_to_string("/proc/self/cgroup").context("failed to read /proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
        .context("no cgroup v2 line (`0::`) in /proc/self/cgroup")
}

/// Writes `data` to a cgroup control file, with the path and data in the error.
fn write_control(path: &Path, data: &str) -> Result<()> {
    let mut f = File::options()
        .write(true)
        .open(path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("failed to write {data} to {}", path.display()))
}

/// The PIDs listed in a `cgroup.procs` file.
pub fn read_procs(path: &Path) -> Result<Vec<i32>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// `populated` from a `cgroup.events` file, read at offset 0.
fn read_populated(events: &File, path: &Path) -> Result<bool> {
    let mut buf = [0u8; 256];
    let n = events
        .read_at(&mut buf, 0)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    match text.lines().find_map(|l| l.strip_prefix("populated ")) {
        Some(v) => Ok(v.trim() == "1"),
        None => bail!("no `populated` line in {}: {text:?}", path.display()),
    }
}

/// Waits until `populated 0` in `events` (re-read after each `POLLPRI`), or fails at `deadline`.
fn wait_unpopulated(events: &File, path: &Path, deadline: Instant) -> Result<()> {
    loop {
        if !read_populated(events, path)? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("{} still populated at the deadline", path.display());
        }
        let left = deadline - now;
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(events, PollFlags::PRI)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => {}
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("failed to poll {}", path.display()))
            }
        }
    }
}

/// `rmdir`, retrying `EBUSY` until `deadline`: the kernel gives no event for "removable now".
fn rmdir_retry(path: &Path, deadline: Instant) -> Result<()> {
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to remove {}", path.display()))
            }
        }
    }
}

/// The bench's cgroup directory; see the module docs. Close it with [`BenchRoot::close`];
/// dropping it does the same, printing errors instead of returning them.
pub struct BenchRoot {
    pub path: PathBuf,
    /// The directory of the cgroup the bench process came from.
    home: PathBuf,
    /// `self/`: where the bench process lives meanwhile.
    self_dir: PathBuf,
    /// The cgroup path of `self/` as `/proc/<pid>/cgroup` shows it.
    self_cgroup: PathBuf,
    moved_in: bool,
    closed: bool,
}

impl BenchRoot {
    /// Creates `<mount>/corral-bench-<pid>` with `self/` and `jobs/`, and moves the calling
    /// process into `self/`.
    pub fn create(mount: &Mount) -> Result<BenchRoot> {
        let home = mount.dir_of(&own_cgroup()?)?;
        let name = format!("corral-bench-{}", std::process::id());
        let path = mount.path.join(&name);
        fs::create_dir(&path).with_context(|| format!("failed to create {}", path.display()))?;
        // From here on, drop removes what exists.
        let mut root = BenchRoot {
            self_dir: path.join("self"),
            self_cgroup: mount.root.join(&name).join("self"),
            path,
            home,
            moved_in: false,
            closed: false,
        };
        for dir in [root.self_dir.clone(), root.jobs()] {
            fs::create_dir(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        if !root.self_dir.join(KILL).exists() {
            bail!(
                "{} has no {KILL} (Linux >= 5.14 needed): the raw baseline and the cleanup use it",
                root.self_dir.display()
            );
        }
        write_control(&root.self_dir.join(PROCS), "0")?;
        root.moved_in = true;
        Ok(root)
    }

    /// The `cgroup_parent` for corral's job leaves.
    pub fn jobs(&self) -> PathBuf {
        self.path.join("jobs")
    }

    /// Where the bench process and its plain children live.
    pub fn self_dir(&self) -> &Path {
        &self.self_dir
    }

    /// The cgroup path of `self/` (the `0::` line of `/proc/<pid>/cgroup`).
    pub fn self_cgroup(&self) -> &Path {
        &self.self_cgroup
    }

    /// A new leaf directly under the root.
    pub fn leaf(&self, name: &str) -> Result<RawCgroup> {
        RawCgroup::create(self.path.join(name))
    }

    /// Moves the bench process home, then kills, waits for and removes every cgroup below
    /// the root, depth first, and the root itself.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.moved_in {
            write_control(&self.home.join(PROCS), "0").with_context(|| {
                format!(
                    "failed to move the bench process back to {}; {} is left in place",
                    self.home.display(),
                    self.path.display()
                )
            })?;
            self.moved_in = false;
        }
        remove_tree(&self.path, Instant::now() + TEARDOWN_DEADLINE)
    }
}

impl Drop for BenchRoot {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = self.teardown() {
                eprintln!("xtask: cleanup of {} failed: {e:#}", self.path.display());
            }
        }
    }
}

/// Empties and removes `dir` and every cgroup below it, children first. Never kills a cgroup
/// that holds the calling process.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
    };
    let mut first_err = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Err(e) = remove_tree(&entry.path(), deadline) {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let me = std::process::id() as i32;
    if read_procs(&dir.join(PROCS))?.contains(&me) {
        bail!(
            "{} holds the bench process itself; not killing it",
            dir.display()
        );
    }
    let kill = dir.join(KILL);
    if kill.exists() {
        write_control(&kill, "1")?;
    }
    let events_path = dir.join(EVENTS);
    let events = File::open(&events_path)
        .with_context(|| format!("failed to open {}", events_path.display()))?;
    wait_unpopulated(&events, &events_path, deadline)?;
    rmdir_retry(dir, deadline)
}

/// The `cgroup.events` of a cgroup the bench did not make (a peer's own leaf, such as
/// processkit's under `self/`), open so that the bench can wait for it to empty exactly as
/// it waits for its own leaves.
pub struct Events {
    path: PathBuf,
    file: File,
}

impl Events {
    /// Opens `<dir>/cgroup.events`.
    pub fn open(dir: &Path) -> Result<Events> {
        let path = dir.join(EVENTS);
        let file =
            File::open(&path).with_context(|| format!("failed to open {}", path.display()))?;
        Ok(Events { path, file })
    }

    /// Whether any process is in the cgroup or below it.
    pub fn populated(&self) -> Result<bool> {
        read_populated(&self.file, &self.path)
    }

    /// Waits for `populated 0`, or fails at `deadline`.
    pub fn wait_empty(&self, deadline: Instant) -> Result<()> {
        wait_unpopulated(&self.file, &self.path, deadline)
    }
}

/// A cgroup leaf of the bench, with its control files open: the raw `cgroup.kill` baseline.
pub struct RawCgroup {
    pub path: PathBuf,
    events: File,
    procs: File,
    kill: File,
}

impl RawCgroup {
    fn create(path: PathBuf) -> Result<RawCgroup> {
        fs::create_dir(&path).with_context(|| format!("failed to create {}", path.display()))?;
        let open = |name: &str, write: bool| {
            let p = path.join(name);
            File::options()
                .read(!write)
                .write(write)
                .open(&p)
                .with_context(|| format!("failed to open {}", p.display()))
        };
        let opened = (|| {
            Ok::<_, anyhow::Error>((open(EVENTS, false)?, open(PROCS, true)?, open(KILL, true)?))
        })();
        match opened {
            Ok((events, procs, kill)) => Ok(RawCgroup {
                path,
                events,
                procs,
                kill,
            }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// `cgroup.procs`, open for writing: a child writes `0` to it between fork and exec to
    /// move itself in.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_fd().as_raw_fd()
    }

    /// How many processes are in the leaf now.
    pub fn count(&self) -> Result<usize> {
        Ok(read_procs(&self.path.join(PROCS))?.len())
    }

    /// Writes `1` to `cgroup.kill`.
    pub fn kill(&self) -> Result<()> {
        (&self.kill)
            .write_all(b"1")
            .with_context(|| format!("failed to write 1 to {}", self.path.join(KILL).display()))
    }

    /// Waits for `populated 0`, or fails at `deadline`.
    pub fn wait_empty(&self, deadline: Instant) -> Result<()> {
        wait_unpopulated(&self.events, &self.path.join(EVENTS), deadline)
    }

    /// Removes the (empty) leaf.
    pub fn remove(self, deadline: Instant) -> Result<()> {
        rmdir_retry(&self.path, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_found_below_the_mounts_root() {
        let mount = Mount {
            path: "/sys/fs/cgroup/unified".into(),
            root: "/sub".into(),
        };
        let dir = mount.dir_of(Path::new("/sub/a/b")).unwrap();
        assert_eq!(dir, Path::new("/sys/fs/cgroup/unified/a/b"));
        assert!(mount.dir_of(Path::new("/elsewhere")).is_err());
    }
}
