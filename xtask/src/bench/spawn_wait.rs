//! Figure 1: spawn + wait + cleanup of `/bin/true` as a job, against a bare
//! `std::process::Command::status()`.
//!
//! Explanatory figures run in the same interleaved rounds, to tell where the time goes:
//! - `fork`: the same `Command` with a no-op `pre_exec`, which makes std fork instead of
//!   `vfork` (corral's `clone3` is a full fork too);
//! - a cgroup job by hand: `mkdir` a leaf, fork a child that moves itself into it, wait,
//!   `rmdir`: the least a fresh cgroup per job can cost;
//! - `mkdir` + `rmdir` of an empty cgroup;
//! - one walk of `/proc` (what the pgroup mechanism does a few times per job).

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::procs;
use super::stats::Samples;
use super::{Bench, Plan};

pub struct SpawnFigures {
    pub rounds: usize,
    pub bare: Samples,
    pub cgroup: Samples,
    pub pgroup: Samples,
    pub fork: Samples,
    pub by_hand: Samples,
    pub mkdir_rmdir: Samples,
    pub proc_walk: Samples,
    /// Processes on the system during the rounds (what one `/proc` walk reads).
    pub processes: usize,
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<SpawnFigures> {
    let mut f = SpawnFigures {
        rounds: plan.spawn_rounds,
        bare: Samples::default(),
        cgroup: Samples::default(),
        pgroup: Samples::default(),
        fork: Samples::default(),
        by_hand: Samples::default(),
        mkdir_rmdir: Samples::default(),
        proc_walk: Samples::default(),
        processes: 0,
    };
    let cmd = corral::JobCommand::new("/bin/true");
    let cgroup_opts = bench.job_options(corral::MechanismRequest::Cgroup);
    let pgroup_opts = bench.job_options(corral::MechanismRequest::Pgroup);
    let scratch = bench.root.jobs().join("scratch");
    let total = plan.spawn_warmup + plan.spawn_rounds;
    eprintln!(
        "bench: 1/3 spawn + wait of /bin/true: {} rounds (+{} warm-up)",
        plan.spawn_rounds, plan.spawn_warmup
    );
    for round in 0..total {
        super::check_interrupted()?;
        let keep = round >= plan.spawn_warmup;

        let t = Instant::now();
        let status = Command::new("/bin/true")
            .status()
            .context("failed to run /bin/true")?;
        let d = t.elapsed();
        ensure!(status.success(), "/bin/true failed: {status}");
        if keep {
            f.bare.push(d);
        }

        let t = Instant::now();
        let report = corral::Job::spawn_command(&cmd, &cgroup_opts)?.wait()?;
        let d = t.elapsed();
        check_true(bench, &report, corral::Mechanism::Cgroup);
        if keep {
            f.cgroup.push(d);
        }

        let t = Instant::now();
        let report = corral::Job::spawn_command(&cmd, &pgroup_opts)?.wait()?;
        let d = t.elapsed();
        check_true(bench, &report, corral::Mechanism::Pgroup);
        if keep {
            f.pgroup.push(d);
        }
        bench.after_pgroup_job()?;

        let t = Instant::now();
        let mut forked = Command::new("/bin/true");
        // SAFETY: the closure does nothing; it only makes std fork instead of vfork.
        unsafe { forked.pre_exec(|| Ok(())) };
        let status = forked.status().context("failed to run /bin/true")?;
        let d = t.elapsed();
        ensure!(status.success(), "/bin/true failed: {status}");
        if keep {
            f.fork.push(d);
        }

        let t = Instant::now();
        let leaf = bench.root.leaf("by-hand")?;
        let mut placed = Command::new("/bin/true");
        procs::spawn_into_cgroup(&mut placed, leaf.procs_fd());
        let status = placed.status().context("failed to run /bin/true")?;
        leaf.remove(t + Duration::from_secs(10))?;
        let d = t.elapsed();
        ensure!(status.success(), "/bin/true failed: {status}");
        if keep {
            f.by_hand.push(d);
        }

        let t = Instant::now();
        fs::create_dir(&scratch)
            .with_context(|| format!("failed to create {}", scratch.display()))?;
        fs::remove_dir(&scratch)
            .with_context(|| format!("failed to remove {}", scratch.display()))?;
        let d = t.elapsed();
        if keep {
            f.mkdir_rmdir.push(d);
        }

        let t = Instant::now();
        let n = walk_proc();
        let d = t.elapsed();
        if n == 0 {
            bail!("found no process in /proc");
        }
        f.processes = f.processes.max(n);
        if keep {
            f.proc_walk.push(d);
        }

        bench.check_clean("spawn /bin/true")?;
    }
    Ok(f)
}

/// The checks of one `/bin/true` job's report.
fn check_true(bench: &mut Bench, report: &corral::Report, mechanism: corral::Mechanism) {
    let what = format!("spawn /bin/true ({})", mechanism.name());
    bench.check_report(report, mechanism, &what);
    bench.expect(
        report.exit_status == 0,
        format!("{what}: exit status {}", report.exit_status),
    );
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
