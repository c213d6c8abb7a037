//! Figure 2: stopping a tree of N sleeping processes until nothing of it is left, against a
//! raw `cgroup.kill` of a cgroup the bench made itself.
//!
//! Every round builds a fresh tree (`sh` starting N `sleep 1000 &`), waits until all N + 1
//! processes exist, and only then starts the clock. Variants, interleaved per round:
//! - raw: write `1` to `cgroup.kill`, wait for `populated 0` (POLLPRI on `cgroup.events`),
//!   then reap `sh` and `rmdir` (reported both up to "empty" and up to "removed");
//! - corral `stop()` (SIGTERM to every member, SIGCONT, wait for empty; `sleep` dies on TERM)
//!   and `kill()` (SIGKILL via `cgroup.kill`), each up to its return, which includes reaping
//!   the main process and removing the job's cgroup; with the cgroup and pgroup mechanisms.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::procs::{self, Child};
use super::stats::Samples;
use super::{Bench, Plan};

/// How long a tree may take to appear, or to go away.
const TREE_DEADLINE: Duration = Duration::from_secs(60);

/// Pause between "all N + 1 processes exist" and the clock. The kernel sends at most one
/// `cgroup.events` notification per `DIV_ROUND_UP(HZ, 100)` jiffies per file
/// (`cgroup_file_notify`; 12 ms at HZ=250) and defers the rest to a timer: a cgroup killed
/// right after it became populated reports `populated 0` up to ~20 ms late, which on a small
/// tree would measure that delay instead of the stop. It also lets the last children finish
/// `exec`ing `sleep`.
pub const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    CgroupStop,
    CgroupKill,
    PgroupStop,
    PgroupKill,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::CgroupStop,
        Variant::CgroupKill,
        Variant::PgroupStop,
        Variant::PgroupKill,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::CgroupStop => "corral cgroup, `stop()` (SIGTERM)",
            Variant::CgroupKill => "corral cgroup, `kill()` (SIGKILL)",
            Variant::PgroupStop => "corral pgroup, `stop()` (SIGTERM)",
            Variant::PgroupKill => "corral pgroup, `kill()` (SIGKILL)",
        }
    }

    fn mechanism(self) -> corral::Mechanism {
        match self {
            Variant::CgroupStop | Variant::CgroupKill => corral::Mechanism::Cgroup,
            Variant::PgroupStop | Variant::PgroupKill => corral::Mechanism::Pgroup,
        }
    }

    fn is_stop(self) -> bool {
        matches!(self, Variant::CgroupStop | Variant::PgroupStop)
    }
}

/// The figures for one tree size.
pub struct TreeFigures {
    pub n: usize,
    pub rounds: usize,
    /// Raw `cgroup.kill` until `populated 0`.
    pub raw_empty: Samples,
    /// Raw `cgroup.kill` until `populated 0`, `sh` reaped and the cgroup removed.
    pub raw_removed: Samples,
    /// corral, indexed like [`Variant::ALL`].
    pub corral: [Samples; 4],
    /// Median time to build one tree (not part of any figure).
    pub build: Samples,
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<Vec<TreeFigures>> {
    let mut out = Vec::new();
    eprintln!(
        "bench: 2/5 stopping process trees: {}",
        plan.trees
            .iter()
            .map(|(n, r)| format!("N={n} x {r} rounds"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, &(n, rounds)) in plan.trees.iter().enumerate() {
        let mut f = TreeFigures {
            n,
            rounds,
            raw_empty: Samples::default(),
            raw_removed: Samples::default(),
            corral: Default::default(),
            build: Samples::default(),
        };
        // One unrecorded round of everything first, on the smallest tree.
        let warmup = usize::from(i == 0);
        for round in 0..warmup + rounds {
            let keep = round >= warmup;
            super::check_interrupted()?;
            let (empty, removed, build) = raw_round(bench, n, round)?;
            if keep {
                f.raw_empty.push(empty);
                f.raw_removed.push(removed);
                f.build.push(build);
            }
            for (k, v) in Variant::ALL.into_iter().enumerate() {
                super::check_interrupted()?;
                let d = corral_round(bench, n, v)?;
                if keep {
                    f.corral[k].push(d);
                }
            }
            eprint!(".");
        }
        eprintln!(" N={n} done");
        out.push(f);
    }
    Ok(out)
}

fn tree_script(n: usize) -> String {
    format!("i=0; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; wait")
}

/// Polls `count` until it reaches `want` (a measurement set-up, bounded by a deadline).
pub fn wait_for_count(
    what: &str,
    want: usize,
    mut count: impl FnMut() -> Result<usize>,
) -> Result<()> {
    let deadline = Instant::now() + TREE_DEADLINE;
    let mut pause = Duration::from_micros(500);
    loop {
        let have = count()?;
        if have >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: only {have} of {want} processes after {TREE_DEADLINE:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// One raw round: returns (kill -> empty, kill -> removed, tree build time).
fn raw_round(bench: &mut Bench, n: usize, round: usize) -> Result<(Duration, Duration, Duration)> {
    let cg = bench.root.leaf(&format!("raw-{n}-{round}"))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(tree_script(n)).stdin(Stdio::null());
    procs::spawn_into_cgroup(&mut cmd, cg.procs_fd());
    let built = Instant::now();
    let sh = Child::spawn(&mut cmd)?;
    wait_for_count(&format!("raw tree of {n}"), n + 1, || cg.count())?;
    let build = built.elapsed();
    std::thread::sleep(SETTLE);

    let t = Instant::now();
    cg.kill()?;
    cg.wait_empty(t + TREE_DEADLINE)?;
    let empty = t.elapsed();
    let exit = sh.wait()?;
    cg.remove(t + TREE_DEADLINE)?;
    let removed = t.elapsed();

    ensure!(
        libc::WIFSIGNALED(exit.status) && libc::WTERMSIG(exit.status) == libc::SIGKILL,
        "raw tree's sh ended with {} instead of SIGKILL",
        exit.describe()
    );
    bench.check_clean("raw cgroup.kill")?;
    Ok((empty, removed, build))
}

/// One corral round: returns the time `stop()` or `kill()` took.
fn corral_round(bench: &mut Bench, n: usize, v: Variant) -> Result<Duration> {
    let mech = match v.mechanism() {
        corral::Mechanism::Cgroup => corral::MechanismRequest::Cgroup,
        corral::Mechanism::Pgroup => corral::MechanismRequest::Pgroup,
    };
    let opts = bench.job_options(mech);
    let cmd = corral::JobCommand::new("sh").arg("-c").arg(tree_script(n));
    let mut job = corral::Job::spawn_command(&cmd, &opts)?;
    wait_for_count(&format!("{} tree of {n}", v.label()), n + 1, || {
        Ok(job.members().context("job.members() failed")?.len())
    })?;
    std::thread::sleep(SETTLE);

    let t = Instant::now();
    let report = if v.is_stop() {
        job.stop()?
    } else {
        job.kill()?
    };
    let d = t.elapsed();

    let what = format!("{} N={n}", v.label());
    bench.check_report(&report, v.mechanism(), &what);
    let want = if v.is_stop() {
        corral::StopOutcome::Exited
    } else {
        corral::StopOutcome::Killed
    };
    let outcome = report.stop.as_ref().map(|s| s.outcome);
    bench.expect(
        outcome == Some(want),
        format!("{what}: stop outcome {outcome:?}, expected {want:?}"),
    );
    if v.mechanism() == corral::Mechanism::Pgroup {
        bench.after_pgroup_job()?;
    }
    bench.check_clean(&what)?;
    Ok(d)
}
