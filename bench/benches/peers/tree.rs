//! Starting a program through each peer, stopping it through the peer's own call, and
//! watching from outside whether anything of it is left.
//!
//! The watching is the same for every peer, so that no peer's own idea of "done" is
//! trusted: the program is born in a fresh leaf of the bench's cgroup (a `pre_exec` hook
//! writes `0` to the leaf's `cgroup.procs` before exec), and a peer that makes a cgroup of
//! its own makes it below that leaf (corral's `cgroup_parent`) or moves the child into it
//! (processkit: a leaf `processkit-*` under the bench's own `self/`, found by name, whose
//! `cgroup.events` is watched too). "Nothing left" is `populated 0` in every watched
//! `cgroup.events` (the kernel's count of live processes; zombies are not counted), woken by
//! `POLLPRI`, never a sleep.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rustix::process::Signal;

use corral_bench::cgroup::{self, Events, RawCgroup};
use corral_bench::procs::{self, Child};
use corral_bench::Bench;

/// How a program is started and stopped. Each peer's stop is its own documented call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// No library: the program in a leaf; stop = `cgroup.kill` of the leaf (the floor).
    Raw,
    /// Bare `std::process::Command`; stop = `Child::kill()` (SIGKILL to the one process).
    Bare,
    /// corral, cgroup mechanism (`Job::spawn_command`, leaf below the bench's leaf);
    /// stop = `job.stop()` (SIGTERM, SIGCONT, wait for empty, SIGKILL after the grace).
    CgroupStop,
    /// The same; stop = `job.kill()` (`cgroup.kill`).
    CgroupKill,
    /// corral, pgroup mechanism with the calling process as the subreaper
    /// (`Job::spawn`, `Supervisor::InProcess`); stop = `job.stop()`.
    PgroupStop,
    /// The same; stop = `job.kill()`.
    PgroupKill,
    /// process-wrap (std), `ProcessGroup::leader()`; stop = `child.kill()`, which is
    /// `killpg(SIGKILL)` then a wait that reaps the group.
    ProcessWrap,
    /// processkit, its default mechanism (`ProcessGroup::new()`); stop =
    /// `group.kill_all()` (what dropping the group does first).
    Processkit,
    /// coreutils `timeout 1000 PROGRAM`; stop = SIGTERM to `timeout` (through a pidfd),
    /// which forwards it to the program and to its own process group.
    Timeout,
}

impl Peer {
    pub fn label(self) -> &'static str {
        match self {
            Peer::Raw => "raw `cgroup.kill` (floor)",
            Peer::Bare => "bare std `Child::kill()`",
            Peer::CgroupStop => "corral cgroup, `stop()` (SIGTERM)",
            Peer::CgroupKill => "corral cgroup, `kill()`",
            Peer::PgroupStop => "corral pgroup, `stop()` (SIGTERM)",
            Peer::PgroupKill => "corral pgroup, `kill()`",
            Peer::ProcessWrap => "process-wrap, group `kill()`",
            Peer::Processkit => "processkit, `kill_all()`",
            Peer::Timeout => "`timeout`, SIGTERM to it",
        }
    }

    /// A short name for charts and file names.
    pub fn short(self) -> &'static str {
        match self {
            Peer::Raw => "raw cgroup.kill",
            Peer::Bare => "bare kill",
            Peer::CgroupStop => "corral cgroup stop",
            Peer::CgroupKill => "corral cgroup kill",
            Peer::PgroupStop => "corral pgroup stop",
            Peer::PgroupKill => "corral pgroup kill",
            Peer::ProcessWrap => "process-wrap",
            Peer::Processkit => "processkit",
            Peer::Timeout => "timeout",
        }
    }

    fn corral_mechanism(self) -> Option<corral::Mechanism> {
        match self {
            Peer::CgroupStop | Peer::CgroupKill => Some(corral::Mechanism::Cgroup),
            Peer::PgroupStop | Peer::PgroupKill => Some(corral::Mechanism::Pgroup),
            _ => None,
        }
    }
}

/// The peer's handle on the running program.
enum Handle {
    Plain(Child),
    Bare(std::process::Child),
    // Boxed where large, so that the enum stays small.
    Corral(Box<corral::Job>),
    ProcessWrap(Box<dyn process_wrap::std::ChildWrapper>),
    Processkit {
        group: Box<processkit::ProcessGroup>,
        child: Box<tokio::process::Child>,
    },
}

/// A program started through a peer, with the leaf it was born in.
pub struct Running {
    pub peer: Peer,
    pub leaf: RawCgroup,
    /// processkit's own leaf, when it made one.
    own: Option<(PathBuf, Events)>,
    handle: Handle,
    /// corral's report, once stopped.
    pub report: Option<corral::Report>,
}

/// The mechanism processkit chose for a fresh group on this host (its `Debug` name).
pub fn processkit_mechanism() -> Result<String> {
    let group = processkit::ProcessGroup::new().context("processkit: ProcessGroup::new failed")?;
    Ok(format!("{:?}", group.mechanism()))
}

impl Running {
    /// Starts `argv` through `peer`, born in a new leaf `name` of the bench's cgroup. A
    /// processkit program is spawned in `rt`'s context (its `Child` is tokio's).
    pub fn start(
        bench: &Bench,
        rt: &tokio::runtime::Runtime,
        peer: Peer,
        name: &str,
        argv: &[OsString],
    ) -> Result<Running> {
        let leaf = bench.root().leaf(name)?;
        let placed = || {
            let (program, args) = match peer {
                Peer::Timeout => (OsString::from("timeout"), {
                    let mut a = vec![OsString::from("1000")];
                    a.extend_from_slice(argv);
                    a
                }),
                _ => (argv[0].clone(), argv[1..].to_vec()),
            };
            let mut cmd = Command::new(program);
            cmd.args(args).stdin(Stdio::null());
            procs::spawn_into_cgroup(&mut cmd, leaf.procs_fd());
            cmd
        };
        let mut own = None;
        let handle = match peer {
            Peer::Raw | Peer::Timeout => Handle::Plain(Child::spawn(&mut placed())?),
            Peer::Bare => Handle::Bare(placed().spawn().context("failed to spawn")?),
            Peer::CgroupStop | Peer::CgroupKill => {
                let opts = corral::Options {
                    cgroup_parent: Some(leaf.path.clone()),
                    ..bench.job_options(corral::MechanismRequest::Cgroup)
                };
                let cmd = corral::JobCommand::new(&argv[0]).args(&argv[1..]);
                Handle::Corral(Box::new(corral::Job::spawn_command(&cmd, &opts)?))
            }
            Peer::PgroupStop | Peer::PgroupKill => {
                let opts = bench.job_options(corral::MechanismRequest::Pgroup);
                Handle::Corral(Box::new(corral::Job::spawn(&mut placed(), &opts)?))
            }
            Peer::ProcessWrap => {
                let mut cmd = process_wrap::std::CommandWrap::from(placed());
                cmd.wrap(process_wrap::std::ProcessGroup::leader());
                Handle::ProcessWrap(cmd.spawn().context("process-wrap: spawn failed")?)
            }
            Peer::Processkit => {
                let before = processkit_leaves(bench.root().self_dir())?;
                let group =
                    processkit::ProcessGroup::new().context("processkit: ProcessGroup::new")?;
                let made: Vec<PathBuf> = processkit_leaves(bench.root().self_dir())?
                    .into_iter()
                    .filter(|p| !before.contains(p))
                    .collect();
                // On the cgroup mechanism the tree lives in the one leaf the group just
                // made; on its process-group fallback it stays in our leaf.
                match (group.mechanism(), made.as_slice()) {
                    (processkit::Mechanism::CgroupV2, [dir]) => {
                        own = Some((dir.clone(), Events::open(dir)?));
                    }
                    (processkit::Mechanism::CgroupV2, _) => bail!(
                        "processkit: a new group made {made:?} under {}, not one leaf",
                        bench.root().self_dir().display()
                    ),
                    _ => {}
                }
                let _in_rt = rt.enter();
                let child = group
                    .spawn(tokio::process::Command::from(placed()))
                    .context("processkit: spawn failed")?;
                Handle::Processkit {
                    group: Box::new(group),
                    child: Box::new(child),
                }
            }
        };
        Ok(Running {
            peer,
            leaf,
            own,
            handle,
            report: None,
        })
    }

    /// Live processes in the leaf and in the peer's own cgroup, counted through
    /// `cgroup.procs` of every cgroup below them.
    pub fn count(&self) -> Result<usize> {
        let mut n = count_tree(&self.leaf.path)?;
        if let Some((dir, _)) = &self.own {
            n += count_tree(dir)?;
        }
        Ok(n)
    }

    /// The peer's own stop call (the one that is timed).
    pub fn stop(&mut self) -> Result<()> {
        match (&mut self.handle, self.peer) {
            (Handle::Plain(_), Peer::Raw) => self.leaf.kill(),
            (Handle::Plain(c), _) => c.signal(Signal::TERM),
            (Handle::Bare(c), _) => c.kill().context("Child::kill failed"),
            (Handle::Corral(job), p) => {
                let r = if matches!(p, Peer::CgroupStop | Peer::PgroupStop) {
                    job.stop()?
                } else {
                    job.kill()?
                };
                self.report = Some(r);
                Ok(())
            }
            (Handle::ProcessWrap(c), _) => c.kill().context("process-wrap: kill failed"),
            (Handle::Processkit { group, .. }, _) => {
                group.kill_all().context("processkit: kill_all failed")
            }
        }
    }

    /// Waits until nothing is left in any watched cgroup, or fails at `deadline`.
    pub fn wait_empty(&self, deadline: Instant) -> Result<()> {
        self.leaf.wait_empty(deadline)?;
        if let Some((_, events)) = &self.own {
            events.wait_empty(deadline)?;
        }
        Ok(())
    }

    /// After the stop (untimed): kills whatever survived it (with `cgroup.kill`, so
    /// nothing leaks), reaps what the peer did not, lets the peer clean up, checks corral's
    /// report, and removes the leaf. Returns how many processes had to be killed here.
    pub fn finish(self, bench: &mut Bench, rt: &tokio::runtime::Runtime) -> Result<usize> {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let survivors = self.count()?;
        self.leaf.kill()?;
        if let Some((dir, _)) = &self.own {
            let kill = dir.join(cgroup::KILL);
            std::fs::write(&kill, "1")
                .with_context(|| format!("failed to write 1 to {}", kill.display()))?;
        }
        self.wait_empty(deadline)?;
        let what = self.peer.label().to_string();
        match self.handle {
            Handle::Plain(c) => {
                c.wait()?;
            }
            Handle::Bare(mut c) => {
                c.wait().context("Child::wait failed")?;
            }
            Handle::Corral(_job) => {
                let report = self.report.as_ref().context("corral job not stopped")?;
                let mech = self.peer.corral_mechanism().expect("a corral peer");
                bench.check_report(report, mech, &what);
                if mech == corral::Mechanism::Pgroup {
                    bench.after_pgroup_job()?;
                }
            }
            Handle::ProcessWrap(_) => {}
            Handle::Processkit { group, mut child } => {
                rt.block_on(child.wait())
                    .context("processkit: child.wait failed")?;
                drop(group);
            }
        }
        if let Some((dir, _)) = &self.own {
            bench.expect(
                !dir.exists(),
                format!("{what}: processkit left its cgroup {}", dir.display()),
            );
        }
        self.leaf.remove(deadline)?;
        Ok(survivors)
    }
}

/// processkit's cgroups under the bench's `self/`.
fn processkit_leaves(self_dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(self_dir)
        .with_context(|| format!("failed to list {}", self_dir.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("processkit-"))
        .map(|e| e.path())
        .collect())
}

/// Processes in `dir` and every cgroup below it.
pub fn count_tree(dir: &Path) -> Result<usize> {
    let mut n = match cgroup::read_procs(&dir.join(cgroup::PROCS)) {
        Ok(p) => p.len(),
        // Removed meanwhile (a peer's own leaf after its cleanup): nothing in it.
        Err(_) if !dir.exists() => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("failed to list {}", dir.display()))?
        .flatten()
    {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            n += count_tree(&entry.path())?;
        }
    }
    Ok(n)
}

/// A tree of sleeping processes, in the two shapes figure 2 stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One `sh` with N `sleep 1000` children.
    Flat,
    /// N `sh` links, each the parent of the next (`sh -c '...' & wait`), the last one
    /// the parent of one `sleep 1000`.
    Chain,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Flat => "flat fan-out",
            Shape::Chain => "deep chain",
        }
    }

    /// The command line: both shapes have N + 1 processes.
    pub fn argv(self, n: usize) -> Vec<OsString> {
        let script = match self {
            Shape::Flat => {
                format!("i=0; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; wait")
            }
            // `$0` is the script itself, `$1` how many links are still to come.
            Shape::Chain => {
                r#"if [ "$1" -gt 1 ]; then sh -c "$0" "$0" $(($1-1)) & wait; else sleep 1000 & wait; fi"#
                    .to_string()
            }
        };
        let mut argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.clone().into()];
        if self == Shape::Chain {
            argv.push(script.into());
            argv.push(n.to_string().into());
        }
        argv
    }
}

/// The number of processes on the system now (entries of `/proc` that are PIDs).
pub fn processes_now() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

/// Fails unless a tree of `n` more processes fits under `pid_max` and `threads-max` with
/// room to spare (the reason is printed in the figure instead of the row).
pub fn fits(n: usize) -> Result<()> {
    let read = |p: &str| -> usize {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(usize::MAX)
    };
    let now = processes_now();
    let pid_max = read("/proc/sys/kernel/pid_max");
    let threads_max = read("/proc/sys/kernel/threads-max");
    // Headroom for the bench's threads, the supervisors and whatever else runs.
    let need = now + n + 512;
    if need > pid_max {
        bail!("{n} processes do not fit: {now} exist and pid_max is {pid_max}");
    }
    if need > threads_max {
        bail!("{n} processes do not fit: {now} exist and threads-max is {threads_max}");
    }
    Ok(())
}
