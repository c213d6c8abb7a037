//! Figure 9: a fork storm, stopped while it is still forking.
//!
//! The storm is `corral-testtree storm --interval 0ms --max MAX`: every process ignores
//! SIGTERM and forks again at once, so the count doubles as fast as the machine can fork,
//! until MAX processes have been created (a bound, so a failing stop cannot take the
//! machine down). Each round runs the storm inside a fresh measuring cgroup of the bench
//! (every variant's processes live in it or in a leaf below it), and a watcher thread reads
//! the processes of that subtree over and over (`cgroup.procs` of the measuring cgroup and
//! of each cgroup below it). When the watcher first sees `STOP_AT` processes, the stop is
//! called; the clock runs from that call until the measuring cgroup reports `populated 0`
//! (no process of the storm exists any more, whichever mechanism stopped it). The peak is
//! the most processes the watcher saw: a sampled lower bound on the true peak (a process
//! created and killed between two reads is not seen).
//!
//! Variants, interleaved per round:
//! - raw `cgroup.kill` of the measuring cgroup (the floor);
//! - corral cgroup `kill()` (`cgroup.kill` on the job's leaf, below the measuring cgroup);
//! - corral cgroup `stop()` with a 100 ms grace: the storm ignores the SIGTERM, so this is
//!   the polite pass over a growing tree, the grace, then `cgroup.kill`;
//! - corral pgroup `kill()`: no kernel-side kill; the process group and `/proc` walks,
//!   repeated until nothing of the job is found (the measuring cgroup only observes).
//!
//! Without a pids limit the peak is how far the storm got before the stop took hold. With
//! one (`pids.max` on the job's cgroup) the kernel refuses the forks beyond it; this machine
//! has no pids controller in cgroup v2, so that part runs in the VM (`tests/limits_vm.rs`,
//! `a_fork_storm_stops_at_its_pids_limit`) and its figures are included from there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::cgroup::{read_procs, RawCgroup};
use super::procs::{self, Child};
use super::stats::Samples;
use super::{Bench, Plan};

/// The storm's bound: processes created in all.
pub const MAX: usize = 10_000;
/// How many processes the watcher must see before the stop is called.
pub const STOP_AT: usize = 1_000;
/// How long a storm may take to reach `STOP_AT`, or to go away.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Raw,
    CgroupKill,
    CgroupStop,
    PgroupKill,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Raw,
        Variant::CgroupKill,
        Variant::CgroupStop,
        Variant::PgroupKill,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Raw => "raw `cgroup.kill`",
            Variant::CgroupKill => "corral cgroup, `kill()`",
            Variant::CgroupStop => "corral cgroup, `stop()`, 100 ms grace",
            Variant::PgroupKill => "corral pgroup, `kill()`",
        }
    }
}

/// One round of one variant.
#[derive(Debug, Clone, Copy)]
pub struct StormRound {
    /// From the stop call until `populated 0`.
    pub stop: Duration,
    /// The most processes seen at once.
    pub peak: usize,
}

pub struct StormFigures {
    pub rounds: usize,
    /// Indexed like [`Variant::ALL`].
    pub variants: [Vec<StormRound>; 4],
}

impl StormFigures {
    pub fn stop_samples(&self, k: usize) -> Samples {
        let mut s = Samples::default();
        for r in &self.variants[k] {
            s.push(r.stop);
        }
        s
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<StormFigures> {
    let rounds = plan.storm_rounds;
    eprintln!("bench: 9 fork storm: {rounds} rounds, stop at {STOP_AT} processes (bound {MAX})");
    let mut f = StormFigures {
        rounds,
        variants: Default::default(),
    };
    for round in 0..rounds {
        for (k, v) in Variant::ALL.into_iter().enumerate() {
            super::check_interrupted()?;
            let r = storm_round(bench, v, round)?;
            f.variants[k].push(r);
            eprint!(".");
        }
    }
    eprintln!(" done");
    Ok(f)
}

/// Processes in `dir` and in each cgroup directly below it.
fn subtree_count(dir: &Path) -> usize {
    let count = |d: &Path| read_procs(&d.join("cgroup.procs")).map_or(0, |p| p.len());
    let mut n = count(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += count(&e.path());
            }
        }
    }
    n
}

/// Reads the subtree's process count until told to end; keeps the peak, and raises
/// `reached` once `STOP_AT` processes were seen.
struct Watcher {
    done: Arc<AtomicBool>,
    reached: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(dir: PathBuf) -> Watcher {
        let done = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (done, reached, peak) = (done.clone(), reached.clone(), peak.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let n = subtree_count(&dir);
                    peak.fetch_max(n, Ordering::Relaxed);
                    if n >= STOP_AT {
                        reached.store(true, Ordering::Release);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        Watcher {
            done,
            reached,
            peak,
            thread: Some(thread),
        }
    }

    /// Waits (polling the flag against a deadline) until the storm reached `STOP_AT`.
    fn wait_reached(&self) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        while !self.reached.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                bail!("the storm did not reach {STOP_AT} processes in {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn finish(mut self) -> usize {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn storm_args() -> [String; 5] {
    [
        "storm".into(),
        "--interval".into(),
        "0ms".into(),
        "--max".into(),
        MAX.to_string(),
    ]
}

fn storm_round(bench: &mut Bench, v: Variant, round: usize) -> Result<StormRound> {
    let cg = bench.root.leaf(&format!("storm-{round}-{v:?}"))?;
    let result = storm_in(bench, &cg, v);
    // Whatever happened, nothing of the storm may outlive the round.
    if cg.count().unwrap_or(0) > 0 || subtree_count(&cg.path) > 0 {
        let _ = cg.kill();
        let _ = cg.wait_empty(Instant::now() + DEADLINE);
    }
    let removed = cg.remove(Instant::now() + DEADLINE);
    let r = result?;
    removed?;
    bench.check_clean(v.label())?;
    Ok(r)
}

fn storm_in(bench: &mut Bench, cg: &RawCgroup, v: Variant) -> Result<StormRound> {
    let testtree = super::testtree_binary();
    let watcher = Watcher::start(cg.path.clone());
    let what = format!("fork storm, {}", v.label());
    let stop = match v {
        Variant::Raw => {
            let mut cmd = Command::new(&testtree);
            cmd.args(storm_args()).stdin(Stdio::null());
            procs::spawn_into_cgroup(&mut cmd, cg.procs_fd());
            let top = Child::spawn(&mut cmd)?;
            watcher.wait_reached()?;
            let t = Instant::now();
            cg.kill()?;
            cg.wait_empty(t + DEADLINE)?;
            let stop = t.elapsed();
            top.wait()?;
            stop
        }
        Variant::CgroupKill | Variant::CgroupStop => {
            let mut opts = bench.job_options(corral::MechanismRequest::Cgroup);
            opts.cgroup_parent = Some(cg.path.clone());
            opts.grace = Duration::from_millis(100);
            let cmd = corral::JobCommand::new(&testtree).args(storm_args());
            let mut job = corral::Job::spawn_command(&cmd, &opts)?;
            watcher.wait_reached()?;
            let t = Instant::now();
            let report = if v == Variant::CgroupStop {
                job.stop()?
            } else {
                job.kill()?
            };
            cg.wait_empty(t + DEADLINE)?;
            let stop = t.elapsed();
            bench.check_report(&report, corral::Mechanism::Cgroup, &what);
            stop
        }
        Variant::PgroupKill => {
            let opts = bench.job_options(corral::MechanismRequest::Pgroup);
            let mut cmd = Command::new(&testtree);
            cmd.args(storm_args()).stdin(Stdio::null());
            procs::spawn_into_cgroup(&mut cmd, cg.procs_fd());
            let mut job = corral::Job::spawn(&mut cmd, &opts)?;
            watcher.wait_reached()?;
            let t = Instant::now();
            let report = job.kill()?;
            let returned = t.elapsed();
            let emptied = cg.wait_empty(t + DEADLINE);
            let stop = t.elapsed();
            bench.check_report(&report, corral::Mechanism::Pgroup, &what);
            bench.after_pgroup_job()?;
            emptied?;
            // corral returns once nothing of the job is found; a process the cgroup still
            // held then would be a survivor it missed.
            bench.expect(
                stop <= returned + Duration::from_millis(50),
                format!("{what}: kill() returned after {returned:?}, the storm was gone only after {stop:?}"),
            );
            stop
        }
    };
    let peak = watcher.finish();
    Ok(StormRound { stop, peak })
}
