//! Figure 1: spawn + wait + cleanup of `/bin/true` as a job, through each of the library's
//! spawn paths, against a bare `std::process::Command::status()`:
//! - `Job::spawn(&mut Command)` (the embedder's path): cgroup (std forks, the child joins
//!   the leaf in a `pre_exec` hook), pgroup under a `corral __supervise` process, and pgroup
//!   with the calling process as the subreaper;
//! - `Job::spawn_command(&JobCommand)` (the CLI's lean path: `clone3`, vfork-style, born in
//!   the leaf): cgroup and in-process pgroup;
//! - on tokio: `Job::spawn(&mut Command)` + `Job::wait_async`, cgroup, against a bare
//!   `tokio::process::Command::status()`. Both run as a task on a multi-thread runtime
//!   (one worker per CPU, as `#[tokio::main]` makes) and are timed inside the task.
//!
//! Explanatory figures run in the same rounds, to tell where the time goes:
//! - `fork`: the same `Command` with a no-op `pre_exec`, which makes std fork instead of
//!   `vfork` (as corral's std path must, to run its hook);
//! - the `corral` binary run bare (`corral --version`): the exec and start-up that a
//!   supervised job adds;
//! - a cgroup job by hand: `mkdir` a leaf, fork a child that moves itself into it, wait,
//!   `rmdir`: the least a fresh cgroup per job can cost;
//! - `mkdir` + `rmdir` of an empty cgroup;
//! - one walk of `/proc` (what the pgroup mechanism does a few times per job).
//!
//! The variants of a round run in an order rotated by one each round, so none always runs
//! first (after the checks of the previous round) or right after a given other one.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::procs;
use super::stats::Samples;
use super::{Bench, Plan};

/// One row of figure 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The baseline: `Command::new("/bin/true").status()`.
    Bare,
    /// `Job::spawn(&mut Command)`, cgroup.
    SpawnCgroup,
    /// `Job::spawn_command(&JobCommand)`, cgroup.
    CommandCgroup,
    /// `Job::spawn(&mut Command)`, pgroup, `Supervisor::Binary(target/release/corral)`.
    SpawnSupervised,
    /// `Job::spawn(&mut Command)`, pgroup, `Supervisor::InProcess`.
    SpawnInProcess,
    /// `Job::spawn_command(&JobCommand)`, pgroup, `Supervisor::InProcess` (the CLI).
    CommandInProcess,
    /// The tokio baseline: `tokio::process::Command::new("/bin/true").status().await`.
    TokioBare,
    /// `Job::spawn(&mut Command)` + `wait_async().await`, cgroup, in a tokio task.
    TokioJob,
    /// Explanatory: the same job waited for with the blocking `wait()`, in a tokio task.
    TokioBlockingWait,
    /// Explanatory: `Command::status()` with a no-op `pre_exec` (fork instead of vfork).
    Fork,
    /// Explanatory: `corral --version`, the supervisor binary's exec and start-up alone.
    CorralBinary,
    /// Explanatory: mkdir a leaf, fork into it, wait, rmdir.
    ByHand,
    /// Explanatory: mkdir + rmdir of an empty cgroup.
    MkdirRmdir,
    /// Explanatory: one `/proc/*/stat` walk.
    ProcWalk,
}

impl Variant {
    pub const ALL: [Variant; 14] = [
        Variant::Bare,
        Variant::SpawnCgroup,
        Variant::CommandCgroup,
        Variant::SpawnSupervised,
        Variant::SpawnInProcess,
        Variant::CommandInProcess,
        Variant::TokioBare,
        Variant::TokioJob,
        Variant::TokioBlockingWait,
        Variant::Fork,
        Variant::CorralBinary,
        Variant::ByHand,
        Variant::MkdirRmdir,
        Variant::ProcWalk,
    ];

    /// The std jobs, each held to the spawn target against [`Variant::Bare`].
    pub const STD_JOBS: [Variant; 5] = [
        Variant::SpawnCgroup,
        Variant::CommandCgroup,
        Variant::SpawnSupervised,
        Variant::SpawnInProcess,
        Variant::CommandInProcess,
    ];

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("every variant is in ALL")
    }

    /// The baseline a variant's ratio is taken against (`None` for the baselines' own
    /// baseline, [`Variant::Bare`]).
    pub fn baseline(self) -> Option<Variant> {
        match self {
            Variant::Bare => None,
            Variant::TokioJob | Variant::TokioBlockingWait => Some(Variant::TokioBare),
            _ => Some(Variant::Bare),
        }
    }

    /// The mechanism of a job variant.
    pub fn mechanism(self) -> Option<corral::Mechanism> {
        match self {
            Variant::SpawnCgroup
            | Variant::CommandCgroup
            | Variant::TokioJob
            | Variant::TokioBlockingWait => Some(corral::Mechanism::Cgroup),
            Variant::SpawnSupervised | Variant::SpawnInProcess | Variant::CommandInProcess => {
                Some(corral::Mechanism::Pgroup)
            }
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare `Command::new(\"/bin/true\").status()`",
            Variant::SpawnCgroup => "`Job::spawn(&mut Command)`, cgroup (fork, join in `pre_exec`)",
            Variant::CommandCgroup => "`Job::spawn_command(&JobCommand)`, cgroup (`clone3`)",
            Variant::SpawnSupervised => "`Job::spawn(&mut Command)`, pgroup, supervisor process",
            Variant::SpawnInProcess => "`Job::spawn(&mut Command)`, pgroup, in-process subreaper",
            Variant::CommandInProcess => {
                "`Job::spawn_command(&JobCommand)`, pgroup, in-process subreaper (the CLI)"
            }
            Variant::TokioBare => {
                "tokio: bare `tokio::process::Command::new(\"/bin/true\").status().await`"
            }
            Variant::TokioJob => "tokio: `Job::spawn(&mut Command)` + `wait_async().await`, cgroup",
            Variant::TokioBlockingWait => {
                "(explanatory) tokio: the same job with the blocking `wait()` in the task"
            }
            Variant::Fork => "(explanatory) bare, with `fork` instead of `vfork`",
            Variant::CorralBinary => {
                "(explanatory) bare `target/release/corral --version` (its exec and start-up)"
            }
            Variant::ByHand => "(explanatory) by hand: `mkdir` a leaf, fork into it, wait, `rmdir`",
            Variant::MkdirRmdir => "(explanatory) `mkdir` + `rmdir` of an empty cgroup",
            Variant::ProcWalk => "(explanatory) one `/proc/*/stat` walk",
        }
    }
}

pub struct SpawnFigures {
    pub rounds: usize,
    /// Indexed like [`Variant::ALL`].
    samples: Vec<Samples>,
    /// Processes on the system during the rounds (what one `/proc` walk reads).
    pub processes: usize,
    /// The bench's own resident memory after the rounds (`VmRSS`), KiB: what a `fork`
    /// copies the page tables of.
    pub rss_kib: u64,
}

impl SpawnFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

/// What the variants need, made once.
struct Setup {
    cmd: corral::JobCommand,
    cgroup: corral::Options,
    in_process: corral::Options,
    supervised: corral::Options,
    corral_bin: PathBuf,
    scratch: PathBuf,
    rt: tokio::runtime::Runtime,
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<SpawnFigures> {
    let mut f = SpawnFigures {
        rounds: plan.spawn_rounds,
        samples: vec![Samples::default(); Variant::ALL.len()],
        processes: 0,
        rss_kib: 0,
    };
    let corral_bin = super::corral_binary();
    let setup = Setup {
        cmd: corral::JobCommand::new("/bin/true"),
        cgroup: bench.job_options(corral::MechanismRequest::Cgroup),
        in_process: bench.job_options(corral::MechanismRequest::Pgroup),
        supervised: corral::Options {
            supervisor: corral::Supervisor::Binary(corral_bin.clone()),
            ..bench.job_options(corral::MechanismRequest::Pgroup)
        },
        corral_bin,
        scratch: bench.root.jobs().join("scratch"),
        rt: super::tokio_runtime()?,
    };
    let total = plan.spawn_warmup + plan.spawn_rounds;
    eprintln!(
        "bench: 1/5 spawn + wait of /bin/true: {} rounds (+{} warm-up) of {} variants",
        plan.spawn_rounds,
        plan.spawn_warmup,
        Variant::ALL.len()
    );
    let n = Variant::ALL.len();
    for round in 0..total {
        let keep = round >= plan.spawn_warmup;
        for k in 0..n {
            super::check_interrupted()?;
            let v = Variant::ALL[(round + k) % n];
            let d = once(bench, &setup, v, &mut f.processes)?;
            if keep {
                f.samples[v.index()].push(d);
            }
        }
        bench.check_clean("spawn /bin/true")?;
    }
    f.rss_kib = super::idle::status_field("/proc/self/status", "VmRSS:").unwrap_or(0);
    Ok(f)
}

/// One run of `v`; returns its time.
fn once(bench: &mut Bench, s: &Setup, v: Variant, processes: &mut usize) -> Result<Duration> {
    let t = Instant::now();
    match v {
        Variant::Bare => {
            let status = Command::new("/bin/true")
                .status()
                .context("failed to run /bin/true")?;
            let d = t.elapsed();
            ensure!(status.success(), "/bin/true failed: {status}");
            Ok(d)
        }
        Variant::SpawnCgroup | Variant::SpawnSupervised | Variant::SpawnInProcess => {
            let opts = match v {
                Variant::SpawnCgroup => &s.cgroup,
                Variant::SpawnSupervised => &s.supervised,
                _ => &s.in_process,
            };
            let report = corral::Job::spawn(&mut Command::new("/bin/true"), opts)?.wait()?;
            let d = t.elapsed();
            check_true(bench, &report, v)?;
            Ok(d)
        }
        Variant::CommandCgroup | Variant::CommandInProcess => {
            let opts = match v {
                Variant::CommandCgroup => &s.cgroup,
                _ => &s.in_process,
            };
            let report = corral::Job::spawn_command(&s.cmd, opts)?.wait()?;
            let d = t.elapsed();
            check_true(bench, &report, v)?;
            Ok(d)
        }
        Variant::TokioBare => {
            let (d, status) = in_task(&s.rt, async {
                let t = Instant::now();
                let status = tokio::process::Command::new("/bin/true").status().await;
                (t.elapsed(), status)
            })?;
            let status = status.context("failed to run /bin/true on tokio")?;
            ensure!(status.success(), "/bin/true failed: {status}");
            Ok(d)
        }
        Variant::TokioJob | Variant::TokioBlockingWait => {
            let opts = s.cgroup.clone();
            let blocking = v == Variant::TokioBlockingWait;
            let (d, report) = in_task(&s.rt, async move {
                let t = Instant::now();
                let report = match corral::Job::spawn(&mut Command::new("/bin/true"), &opts) {
                    Ok(mut job) if blocking => job.wait(),
                    Ok(mut job) => job.wait_async().await,
                    Err(e) => Err(e),
                };
                (t.elapsed(), report)
            })?;
            check_true(bench, &report?, v)?;
            Ok(d)
        }
        Variant::Fork => {
            let mut forked = Command::new("/bin/true");
            // SAFETY: the closure does nothing; it only makes std fork instead of vfork.
            unsafe { forked.pre_exec(|| Ok(())) };
            let status = forked.status().context("failed to run /bin/true")?;
            let d = t.elapsed();
            ensure!(status.success(), "/bin/true failed: {status}");
            Ok(d)
        }
        Variant::CorralBinary => {
            let status = Command::new(&s.corral_bin)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("failed to run {}", s.corral_bin.display()))?;
            let d = t.elapsed();
            ensure!(status.success(), "corral --version failed: {status}");
            Ok(d)
        }
        Variant::ByHand => {
            let leaf = bench.root.leaf("by-hand")?;
            let mut placed = Command::new("/bin/true");
            procs::spawn_into_cgroup(&mut placed, leaf.procs_fd());
            let status = placed.status().context("failed to run /bin/true")?;
            leaf.remove(t + Duration::from_secs(10))?;
            let d = t.elapsed();
            ensure!(status.success(), "/bin/true failed: {status}");
            Ok(d)
        }
        Variant::MkdirRmdir => {
            fs::create_dir(&s.scratch)
                .with_context(|| format!("failed to create {}", s.scratch.display()))?;
            fs::remove_dir(&s.scratch)
                .with_context(|| format!("failed to remove {}", s.scratch.display()))?;
            Ok(t.elapsed())
        }
        Variant::ProcWalk => {
            let n = walk_proc();
            let d = t.elapsed();
            if n == 0 {
                bail!("found no process in /proc");
            }
            *processes = (*processes).max(n);
            Ok(d)
        }
    }
}

/// Runs `fut` as a task on `rt` and returns its output.
fn in_task<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    rt.block_on(rt.spawn(fut)).context("a bench task failed")
}

/// The checks of one `/bin/true` job's report, and the clean-up after an in-process pgroup
/// job.
fn check_true(bench: &mut Bench, report: &corral::Report, v: Variant) -> Result<()> {
    let mechanism = v.mechanism().expect("a job variant");
    let what = format!("spawn /bin/true ({})", v.label());
    bench.check_report(report, mechanism, &what);
    bench.check_alone(report, &what);
    bench.expect(
        report.exit_status == 0,
        format!("{what}: exit status {}", report.exit_status),
    );
    if matches!(v, Variant::SpawnInProcess | Variant::CommandInProcess) {
        bench.after_pgroup_job()?;
    }
    Ok(())
}

/// Reads `/proc/<pid>/stat` of every process, as a descendant walk does. Returns how many.
fn walk_proc() -> usize {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| fs::read(e.path().join("stat")).is_ok())
        .count()
}
