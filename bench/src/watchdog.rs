//! Figure 5: what the watchdog costs (`corral __watchdog`, one per host process that runs
//! cgroup jobs; see `src/linux/watchdog.rs`).
//!
//! - The first cgroup job of a fresh host, which starts the watchdog: `corral run
//!   --cgroup-parent <jobs> -- /bin/true` against the same with `--debug-no-watchdog`,
//!   rounds interleaved. Timed from spawning `corral` to reaping it. Between rounds (not
//!   timed) the bench waits for that `corral`'s watchdog to exit, which it does by itself
//!   once its host is gone.
//! - Each further job of a long-lived host (the bench itself, whose watchdog runs from its
//!   first cgroup job on): `Job::spawn_command` and `Job::spawn` of `/bin/true` + `wait()`,
//!   with and without the watchdog (`DebugKnobs::no_watchdog`): two small messages per job.
//! - The bench's own watchdog: its `VmRSS` and `VmHWM`, the CPU time it used per job over
//!   the rounds above (`/proc/<pid>/schedstat`, nanoseconds), and its context switches and
//!   CPU time over an idle second.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::idle::status_field;
use super::procs::{self, Child};
use super::stats::Samples;
use super::{Bench, Plan};

/// How long the idle watchdog is watched.
pub const IDLE: Duration = Duration::from_secs(1);

/// One row of the figure's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `corral run -- /bin/true`, a fresh `corral` with its watchdog.
    CliWith,
    /// The same with `--debug-no-watchdog` (the baseline of `CliWith`).
    CliWithout,
    /// `Job::spawn_command(&JobCommand)` + `wait()`, cgroup, the watchdog running.
    CommandWith,
    /// The same with `DebugKnobs::no_watchdog` (the baseline of `CommandWith`).
    CommandWithout,
    /// `Job::spawn(&mut Command)` + `wait()`, cgroup, the watchdog running.
    SpawnWith,
    /// The same with `DebugKnobs::no_watchdog` (the baseline of `SpawnWith`).
    SpawnWithout,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::CliWith,
        Variant::CliWithout,
        Variant::CommandWith,
        Variant::CommandWithout,
        Variant::SpawnWith,
        Variant::SpawnWithout,
    ];

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("listed")
    }

    /// The variant this one is compared with; `None` for a baseline.
    pub fn baseline(self) -> Option<Variant> {
        match self {
            Variant::CliWith => Some(Variant::CliWithout),
            Variant::CommandWith => Some(Variant::CommandWithout),
            Variant::SpawnWith => Some(Variant::SpawnWithout),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::CliWith => "first job of a fresh host: `corral run -- /bin/true` (starts its watchdog)",
            Variant::CliWithout => "the same with `--debug-no-watchdog`",
            Variant::CommandWith => "a further job of a long-lived host: `Job::spawn_command(&JobCommand)` + `wait()`, cgroup, watchdog running",
            Variant::CommandWithout => "the same with `DebugKnobs::no_watchdog`",
            Variant::SpawnWith => "a further job of a long-lived host: `Job::spawn(&mut Command)` + `wait()`, cgroup, watchdog running",
            Variant::SpawnWithout => "the same with `DebugKnobs::no_watchdog`",
        }
    }
}

pub struct WatchdogFigures {
    pub rounds: usize,
    samples: Vec<Samples>,
    /// The bench's own watchdog.
    pub pid: i32,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Whether it shares the bench's memory outright: its `VmRSS` is then the bench's.
    pub shares_memory: bool,
    /// The memory only it holds (its private pages), KiB.
    pub private_kib: Option<u64>,
    /// CPU time the watchdog used per job it watched, seconds.
    pub cpu_per_job: f64,
    /// Context switches of the watchdog over [`IDLE`] with no job running.
    pub idle_wakeups: u64,
    /// CPU time of the watchdog over [`IDLE`], seconds.
    pub idle_cpu: f64,
}

impl WatchdogFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<WatchdogFigures> {
    let corral_bin = super::corral_binary();
    let jobs = bench.root.jobs();
    let with = bench.job_options(corral::MechanismRequest::Cgroup);
    let mut without = with.clone();
    without.debug.no_watchdog = true;
    let cmd = corral::JobCommand::new("/bin/true");
    // The bench's watchdog: started by its first cgroup job (figure 1's, or this one).
    let first = corral::Job::spawn_command(&cmd, &with)?.wait()?;
    let pid = watchdog_pid(&first.on_supervisor_death.to_string())?;
    let total = plan.watchdog_warmup + plan.watchdog_rounds;
    eprintln!(
        "bench: 5/5 watchdog: {} rounds (+{} warm-up) of {} variants; then its idle cost",
        plan.watchdog_rounds,
        plan.watchdog_warmup,
        Variant::ALL.len()
    );
    let mut samples = vec![Samples::default(); Variant::ALL.len()];
    let cpu_before = schedstat_ns(pid)?;
    let mut watched_jobs = 0u64;
    let n = Variant::ALL.len();
    for round in 0..total {
        for k in 0..n {
            super::check_interrupted()?;
            let v = Variant::ALL[(round + k) % n];
            let t = Instant::now();
            let report = match v {
                Variant::CliWith | Variant::CliWithout => {
                    let mut c = Command::new(&corral_bin);
                    c.arg("run").arg("--cgroup-parent").arg(&jobs);
                    if v == Variant::CliWithout {
                        c.arg("--debug-no-watchdog");
                    }
                    c.args(["--quiet", "--", "/bin/true"]).stdin(Stdio::null());
                    let exit = Child::spawn(&mut c)?.wait()?;
                    let d = t.elapsed();
                    ensure!(exit.success(), "{c:?} ended with {}", exit.describe());
                    if round >= plan.watchdog_warmup {
                        samples[v.index()].push(d);
                    }
                    // Not timed: its watchdog leaves once its host is gone.
                    procs::settle_watchdogs(bench.root.self_dir())?;
                    continue;
                }
                Variant::CommandWith | Variant::CommandWithout => {
                    let opts = if v == Variant::CommandWith {
                        &with
                    } else {
                        &without
                    };
                    corral::Job::spawn_command(&cmd, opts)?.wait()?
                }
                Variant::SpawnWith | Variant::SpawnWithout => {
                    let opts = if v == Variant::SpawnWith {
                        &with
                    } else {
                        &without
                    };
                    corral::Job::spawn(&mut Command::new("/bin/true"), opts)?.wait()?
                }
            };
            let d = t.elapsed();
            if round >= plan.watchdog_warmup {
                samples[v.index()].push(d);
            }
            let watched = matches!(v, Variant::CommandWith | Variant::SpawnWith);
            watched_jobs += u64::from(watched);
            bench.check_report(&report, corral::Mechanism::Cgroup, v.label());
            bench.check_alone(&report, v.label());
            let expect = if watched {
                format!("killed by the watchdog (pid {pid})")
            } else {
                "not covered: the watchdog is turned off (--debug-no-watchdog)".to_string()
            };
            bench.expect(
                report.on_supervisor_death.to_string() == expect,
                format!(
                    "{}: on_supervisor_death {:?}, expected {expect:?}",
                    v.label(),
                    report.on_supervisor_death
                ),
            );
        }
        bench.check_clean("watchdog rounds")?;
    }
    let cpu_after = schedstat_ns(pid)?;
    let cpu_per_job = (cpu_after.saturating_sub(cpu_before)) as f64 / 1e9 / watched_jobs as f64;

    let (switches_before, cpu_before) = (switches(pid)?, schedstat_ns(pid)?);
    std::thread::sleep(IDLE);
    let (switches_after, cpu_after) = (switches(pid)?, schedstat_ns(pid)?);
    let status = format!("/proc/{pid}/status");
    let rss_kib = status_field(&status, "VmRSS:").context("no VmRSS for the watchdog")?;
    let hwm_kib = status_field(&status, "VmHWM:").context("no VmHWM for the watchdog")?;
    eprintln!(" done");
    Ok(WatchdogFigures {
        rounds: plan.watchdog_rounds,
        samples,
        pid,
        rss_kib,
        hwm_kib,
        shares_memory: procs::shares_memory(pid, std::process::id() as i32),
        private_kib: procs::private_kib(pid),
        cpu_per_job,
        idle_wakeups: switches_after.saturating_sub(switches_before),
        idle_cpu: cpu_after.saturating_sub(cpu_before) as f64 / 1e9,
    })
}

/// The PID in `killed by the watchdog (pid N)`.
fn watchdog_pid(said: &str) -> Result<i32> {
    said.strip_prefix("killed by the watchdog (pid ")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the report names no watchdog: {said:?}"))
}

/// The CPU time `pid` has used, in nanoseconds (the first field of `/proc/<pid>/schedstat`).
/// Checked to still be the bench's watchdog, so the PID names the right process.
fn schedstat_ns(pid: i32) -> Result<u64> {
    if !procs::is_our_watchdog(pid) {
        bail!("process {pid} is no longer the bench's watchdog");
    }
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no CPU time in {path}: {text:?}"))
}

/// Voluntary + involuntary context switches of `pid` (single-threaded).
fn switches(pid: i32) -> Result<u64> {
    let status = format!("/proc/{pid}/status");
    let mut total = 0;
    for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
        total += status_field(&status, key).with_context(|| format!("no {key} in {status}"))?;
    }
    Ok(total)
}
