//! Peer figure 3, throughput: 1,000 short jobs (`/bin/true`; 100 with `--quick`) run by 2
//! workers, each taking the next job as soon as its last one is done (spawn, wait, clean
//! up). The clock runs from the moment both workers exist and are released together until
//! the last job is done; the figure is jobs per second.
//!
//! - std, 2 threads, against bare `Command::status()` on 2 threads: corral cgroup
//!   (`Job::spawn` and `Job::spawn_command`), corral pgroup and process-wrap
//!   (`ProcessGroup::leader()`). corral's pgroup runs here under a supervisor process per
//!   job (`Supervisor::Binary`): the in-process subreaper decides a job is empty when the
//!   calling process has no children left, so it cannot run two jobs of one process at
//!   once; a supervisor is what an embedder running jobs in parallel would use.
//! - tokio, 2 tasks on a runtime of 2 workers, against bare `tokio::process` the same way:
//!   processkit (async only; its `ProcessGroup` per job, default mechanism).
//!
//! Variants are interleaved round by round (each round runs every variant once, in an
//! order rotated by one). Ratios are of jobs per second to the baseline of the same side:
//! below 1 is slower.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use corral_bench::stats::{fmt_ratio, fmt_secs, Samples};

use crate::table::Table;
use crate::Ctx;

const WORKERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    SpawnCgroup,
    CommandCgroup,
    Pgroup,
    ProcessWrap,
    TokioBare,
    Processkit,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::Bare,
        Variant::SpawnCgroup,
        Variant::CommandCgroup,
        Variant::Pgroup,
        Variant::ProcessWrap,
        Variant::TokioBare,
        Variant::Processkit,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare `Command::status()`, 2 threads",
            Variant::SpawnCgroup => "corral cgroup, `Job::spawn`, 2 threads",
            Variant::CommandCgroup => "corral cgroup, `Job::spawn_command`, 2 threads",
            Variant::Pgroup => "corral pgroup (supervisor process), `spawn_command`, 2 threads",
            Variant::ProcessWrap => "process-wrap, `ProcessGroup::leader()`, 2 threads",
            Variant::TokioBare => "tokio: bare `tokio::process`, 2 tasks / 2 workers",
            Variant::Processkit => "tokio: processkit `ProcessGroup`, 2 tasks / 2 workers",
        }
    }

    fn baseline(self) -> Option<Variant> {
        match self {
            Variant::Bare | Variant::TokioBare => None,
            Variant::Processkit => Some(Variant::TokioBare),
            _ => Some(Variant::Bare),
        }
    }

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("in ALL")
    }
}

pub fn run(ctx: &mut Ctx) -> Result<String> {
    let (jobs, rounds) = if ctx.args.quick { (100, 2) } else { (1000, 3) };
    let cgroup = ctx.bench.job_options(corral::MechanismRequest::Cgroup);
    let pgroup = corral::Options {
        supervisor: corral::Supervisor::Binary(corral_bench::corral_binary()),
        ..ctx.bench.job_options(corral::MechanismRequest::Pgroup)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("failed to start a tokio runtime")?;
    eprintln!(
        "peers: 3 throughput: {rounds} rounds of {jobs} jobs x {} variants",
        Variant::ALL.len()
    );
    let mut samples = vec![Samples::default(); Variant::ALL.len()];
    let n = Variant::ALL.len();
    for round in 0..rounds {
        for k in 0..n {
            corral_bench::check_interrupted()?;
            let v = Variant::ALL[(round + k) % n];
            let d = match v {
                Variant::Bare => on_threads(jobs, || {
                    let st = Command::new("/bin/true").status()?;
                    ensure!(st.success(), "/bin/true: {st}");
                    Ok(())
                })?,
                Variant::SpawnCgroup => on_threads(jobs, || {
                    let r = corral::Job::spawn(&mut Command::new("/bin/true"), &cgroup)?.wait()?;
                    check(&r, corral::Mechanism::Cgroup)
                })?,
                Variant::CommandCgroup => on_threads(jobs, || {
                    let cmd = corral::JobCommand::new("/bin/true");
                    let r = corral::Job::spawn_command(&cmd, &cgroup)?.wait()?;
                    check(&r, corral::Mechanism::Cgroup)
                })?,
                Variant::Pgroup => on_threads(jobs, || {
                    let cmd = corral::JobCommand::new("/bin/true");
                    let r = corral::Job::spawn_command(&cmd, &pgroup)?.wait()?;
                    check(&r, corral::Mechanism::Pgroup)
                })?,
                Variant::ProcessWrap => on_threads(jobs, || {
                    let mut cmd = process_wrap::std::CommandWrap::with_new("/bin/true", |_| {});
                    cmd.wrap(process_wrap::std::ProcessGroup::leader());
                    let st = cmd.spawn()?.wait()?;
                    ensure!(st.success(), "/bin/true: {st}");
                    Ok(())
                })?,
                Variant::TokioBare => on_tasks(&rt, jobs, || async {
                    let st = tokio::process::Command::new("/bin/true").status().await?;
                    ensure!(st.success(), "/bin/true: {st}");
                    Ok(())
                })?,
                Variant::Processkit => on_tasks(&rt, jobs, || async {
                    let group = processkit::ProcessGroup::new()?;
                    let mut child = group.spawn(tokio::process::Command::new("/bin/true"))?;
                    let st = child.wait().await?;
                    drop(group);
                    ensure!(st.success(), "/bin/true: {st}");
                    Ok(())
                })?,
            };
            samples[v.index()].push(d);
            ctx.bench
                .check_clean(&format!("throughput: {}", v.label()))?;
        }
        eprint!(".");
    }
    eprintln!();

    let rate = |v: Variant| jobs as f64 / samples[v.index()].median();
    let mut t = Table::new(&["variant", "median", "p90", "jobs/s", "ratio"]);
    for v in Variant::ALL {
        let s = &samples[v.index()];
        t.row(vec![
            v.label().into(),
            fmt_secs(s.median()),
            fmt_secs(s.p90()),
            format!("{:.0}", rate(v)),
            match v.baseline() {
                Some(b) => fmt_ratio(rate(v) / rate(b)),
                None => "baseline".into(),
            },
        ]);
    }
    let mut s = String::from("### Peers 3: throughput (short jobs, 2 workers)\n\n");
    s += &format!(
        "{jobs} jobs of `/bin/true` per round, {rounds} rounds, variants interleaved. \
         Median and p90: the time for all {jobs}; jobs/s from the median. Ratio: jobs/s to \
         the baseline of the same side (std or tokio); below 1 is slower.\n\n"
    );
    s += &t.render();
    eprint!("{s}");
    Ok(s)
}

/// The checks of one `/bin/true` job; a failure ends the figure (it is a corral bug).
fn check(r: &corral::Report, mechanism: corral::Mechanism) -> Result<()> {
    ensure!(
        r.exit_status == 0
            && r.mechanism == mechanism
            && r.survivors.is_empty()
            && r.leftovers.is_empty()
            && r.cleanup.error.is_none(),
        "a /bin/true job's report: exit {}, {:?} (asked {mechanism:?}), survivors {:?}, \
         leftovers {}, cleanup error {:?}",
        r.exit_status,
        r.mechanism,
        r.survivors,
        r.leftovers.len(),
        r.cleanup.error
    );
    Ok(())
}

/// Runs `jobs` calls of `job` on [`WORKERS`] threads; returns the time from their release
/// to the last one's end.
fn on_threads(jobs: usize, job: impl Fn() -> Result<()> + Sync) -> Result<Duration> {
    let next = AtomicUsize::new(0);
    let gate = Barrier::new(WORKERS + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    gate.wait();
                    while next.fetch_add(1, Ordering::Relaxed) < jobs {
                        job()?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        gate.wait();
        let t = Instant::now();
        let mut first_err = None;
        for w in workers {
            let r = w.join().map_err(|_| anyhow!("a worker panicked"))?;
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let d = t.elapsed();
        match first_err {
            Some(e) => Err(e),
            None => Ok(d),
        }
    })
}

/// Runs `jobs` futures of `job` as [`WORKERS`] tasks on `rt`, each awaiting one job at a
/// time; returns the time from the start to the last one's end.
fn on_tasks<F, Fut>(rt: &tokio::runtime::Runtime, jobs: usize, job: F) -> Result<Duration>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    rt.block_on(async move {
        let t = Instant::now();
        let tasks: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (next, job) = (next.clone(), job.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < jobs {
                        job().await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await.context("a task failed")??;
        }
        Ok(t.elapsed())
    })
}
