//! Figure 4: throughput of many jobs at once: N jobs of `sleep 0.1` started together, as
//! jobs (`Job::spawn(&mut Command)` + `wait()`, cgroup) against bare `Command::status()`,
//! one thread per job; and the tokio flavour, one task per job on one multi-thread runtime
//! (`Job::spawn` + `wait_async()` against `tokio::process::Command::status()`).
//!
//! A thread variant starts N threads that wait at a gate; the clock runs from the gate's
//! opening to the last thread's end, and throughput is N over that. The threads exist
//! before the clock starts, so thread creation is not timed; their wake-up is, for every
//! variant alike. A task variant starts the clock, then spawns the N tasks (microseconds
//! each) and awaits them all. Variants run in an order rotated by one each round.
//!
//! With N far above the CPU count, the spawns queue for the CPUs: the figure is the cost of
//! N spawns, waits and clean-ups squeezed into 0.1 s on this machine, not a per-job latency.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::cgroup::BenchRoot;
use super::procs;
use super::stats::Samples;
use super::{Bench, Plan};

/// What each job runs.
pub const SLEEP: &str = "0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The baseline: one thread per job, `Command::new("sleep").arg("0.1").status()`.
    BareThreads,
    /// One thread per job, `Job::spawn(&mut Command)` + `wait()`, cgroup.
    JobThreads,
    /// One task per job on one runtime, `tokio::process::Command::status().await`.
    BareTasks,
    /// One task per job on one runtime, `Job::spawn(&mut Command)` + `wait_async()`, cgroup.
    JobTasks,
    /// Explanatory: the baseline with a no-op `pre_exec` (std forks instead of vfork).
    ForkThreads,
    /// Explanatory: a cgroup job by hand on each thread: `mkdir` a leaf, fork a child that
    /// moves itself in, wait, `rmdir` (what `Job::spawn` does, without corral).
    ByHandThreads,
    /// Comparison: one thread per job, `Job::spawn_command(&JobCommand)` + `wait()`.
    LeanThreads,
    /// Comparison: one task per job, `Job::spawn_command(&JobCommand)` + `wait_async()`.
    LeanTasks,
}

impl Variant {
    pub const ALL: [Variant; 8] = [
        Variant::BareThreads,
        Variant::JobThreads,
        Variant::BareTasks,
        Variant::JobTasks,
        Variant::ForkThreads,
        Variant::ByHandThreads,
        Variant::LeanThreads,
        Variant::LeanTasks,
    ];

    /// The variants held to the throughput target.
    pub const TARGETS: [Variant; 2] = [Variant::JobThreads, Variant::JobTasks];

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("every variant is in ALL")
    }

    /// True for one task per job on the tokio runtime.
    pub fn on_tokio(self) -> bool {
        matches!(
            self,
            Variant::BareTasks | Variant::JobTasks | Variant::LeanTasks
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::BareThreads => "bare: a thread each, `Command::status()`",
            Variant::JobThreads => {
                "corral: a thread each, `Job::spawn(&mut Command)` + `wait()`, cgroup"
            }
            Variant::BareTasks => "tokio, bare: a task each, `tokio::process::Command::status()`",
            Variant::JobTasks => {
                "tokio, corral: a task each, `Job::spawn(&mut Command)` + `wait_async()`, cgroup"
            }
            Variant::ForkThreads => {
                "(explanatory) bare threads, with `fork` instead of `vfork` (a no-op `pre_exec`)"
            }
            Variant::ByHandThreads => {
                "(explanatory) by hand on each thread: `mkdir` a leaf, fork into it, wait, `rmdir`"
            }
            Variant::LeanThreads => {
                "(comparison) corral: a thread each, `Job::spawn_command(&JobCommand)` + `wait()`, cgroup"
            }
            Variant::LeanTasks => {
                "(comparison) tokio, corral: a task each, `Job::spawn_command(&JobCommand)` + `wait_async()`, cgroup"
            }
        }
    }
}

pub struct ConcurrentFigures {
    /// Jobs per run.
    pub jobs: usize,
    pub rounds: usize,
    /// Wall time of one run (N jobs), indexed like [`Variant::ALL`].
    samples: Vec<Samples>,
}

impl ConcurrentFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<ConcurrentFigures> {
    let jobs = plan.concurrent_jobs;
    let mut f = ConcurrentFigures {
        jobs,
        rounds: plan.concurrent_rounds,
        samples: vec![Samples::default(); Variant::ALL.len()],
    };
    eprintln!(
        "bench: 4/5 {jobs} concurrent jobs of `sleep {SLEEP}`: {} rounds (+1 warm-up) of {} variants",
        plan.concurrent_rounds,
        Variant::ALL.len()
    );
    let opts = bench.job_options(corral::MechanismRequest::Cgroup);
    let rt = super::tokio_runtime()?;
    let n = Variant::ALL.len();
    for round in 0..=plan.concurrent_rounds {
        let keep = round > 0;
        for k in 0..n {
            super::check_interrupted()?;
            let v = Variant::ALL[(round + k) % n];
            let (d, reports) = if v.on_tokio() {
                on_tasks(&rt, jobs, || one_async(v, opts.clone()))?
            } else {
                let root = &bench.root;
                on_threads(jobs, |i| one(v, &opts, root, i))?
            };
            for r in reports.iter().flatten() {
                check_sleep(bench, r, v);
            }
            if keep {
                f.samples[v.index()].push(d);
            }
            bench.check_clean(v.label())?;
        }
        eprint!(".");
    }
    eprintln!(" done");
    Ok(f)
}

/// Job `i` of a thread variant; the report for corral's.
fn one(
    v: Variant,
    opts: &corral::Options,
    root: &BenchRoot,
    i: usize,
) -> Result<Option<corral::Report>> {
    let mut cmd = Command::new("sleep");
    cmd.arg(SLEEP);
    let bare = |cmd: &mut Command| {
        let status = cmd.status().context("failed to run sleep")?;
        ensure!(status.success(), "sleep {SLEEP} failed: {status}");
        Ok(None)
    };
    match v {
        Variant::BareThreads => bare(&mut cmd),
        Variant::ForkThreads => {
            // SAFETY: the closure does nothing; it only makes std fork instead of vfork.
            unsafe { cmd.pre_exec(|| Ok(())) };
            bare(&mut cmd)
        }
        Variant::ByHandThreads => {
            let leaf = root.leaf(&format!("by-hand-{i}"))?;
            procs::spawn_into_cgroup(&mut cmd, leaf.procs_fd());
            let done = bare(&mut cmd);
            leaf.remove(Instant::now() + Duration::from_secs(10))?;
            done
        }
        Variant::JobThreads => Ok(Some(corral::Job::spawn(&mut cmd, opts)?.wait()?)),
        Variant::LeanThreads => {
            let lean = corral::JobCommand::new("sleep").arg(SLEEP);
            Ok(Some(corral::Job::spawn_command(&lean, opts)?.wait()?))
        }
        _ => unreachable!("{v:?} runs on tokio"),
    }
}

/// One job of a task variant; the report for corral's.
async fn one_async(v: Variant, opts: corral::Options) -> Result<Option<corral::Report>> {
    match v {
        Variant::BareTasks => {
            let status = tokio::process::Command::new("sleep")
                .arg(SLEEP)
                .status()
                .await
                .context("failed to run sleep on tokio")?;
            ensure!(status.success(), "sleep {SLEEP} failed: {status}");
            Ok(None)
        }
        Variant::JobTasks => {
            let mut cmd = Command::new("sleep");
            cmd.arg(SLEEP);
            let mut job = corral::Job::spawn(&mut cmd, &opts)?;
            Ok(Some(job.wait_async().await?))
        }
        Variant::LeanTasks => {
            let lean = corral::JobCommand::new("sleep").arg(SLEEP);
            let mut job = corral::Job::spawn_command(&lean, &opts)?;
            Ok(Some(job.wait_async().await?))
        }
        _ => unreachable!("{v:?} runs on threads"),
    }
}

/// Where the threads of a run wait until all of them are there. Unlike a `Barrier`, it can
/// also be opened to send them home (when one of them could not be started).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    arrived: usize,
    /// `Some(true)`: go; `Some(false)`: give up.
    open: Option<bool>,
}

impl Gate {
    /// Called by each thread: waits for the gate to open; true to go.
    fn arrive(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.arrived += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = st.open {
                return go;
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until `n` threads have arrived.
    fn wait_for(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.arrived < n {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn open(&self, go: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open = Some(go);
        self.changed.notify_all();
    }
}

/// Runs `job` on `n` threads released together; returns the time from the release to the
/// last thread's end, and what they returned. Fails if any failed (after all have ended).
fn on_threads<T: Send>(
    n: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<(Duration, Vec<T>)> {
    let gate = Gate::default();
    let (gate, job) = (&gate, &job);
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let spawned = std::thread::Builder::new()
                .name(format!("bench-job-{i}"))
                .spawn_scoped(s, move || gate.arrive().then(|| job(i)).transpose());
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Send the threads started so far home before the scope joins them.
                    gate.open(false);
                    bail!("failed to start thread {i} of {n}: {e}");
                }
            }
        }
        gate.wait_for(n);
        let t = Instant::now();
        gate.open(true);
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        let d = t.elapsed();
        let mut out = Vec::with_capacity(n);
        for r in results {
            let one = r.map_err(|_| anyhow!("a bench thread panicked"))??;
            out.push(one.expect("the gate opened to go"));
        }
        Ok((d, out))
    })
}

/// Runs `n` tasks made by `job` on `rt`; returns the time from the first spawn to the last
/// task's end, and what they returned. Fails if any failed (after all have ended).
fn on_tasks<T, F>(
    rt: &tokio::runtime::Runtime,
    n: usize,
    job: impl Fn() -> F,
) -> Result<(Duration, Vec<T>)>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    rt.block_on(async {
        let t = Instant::now();
        let handles: Vec<_> = (0..n).map(|_| tokio::spawn(job())).collect();
        let mut results = Vec::with_capacity(n);
        for h in handles {
            results.push(h.await);
        }
        let d = t.elapsed();
        let mut out = Vec::with_capacity(n);
        for r in results {
            out.push(r.context("a bench task failed")??);
        }
        Ok((d, out))
    })
}

/// The checks of one `sleep` job's report.
fn check_sleep(bench: &mut Bench, report: &corral::Report, v: Variant) {
    let what = format!("{} concurrent: {}", v.label(), report.command.join(" "));
    bench.check_report(report, corral::Mechanism::Cgroup, &what);
    bench.check_alone(report, &what);
    bench.expect(
        report.exit_status == 0,
        format!("{what}: exit status {}", report.exit_status),
    );
}
