//! Figure 3: what `corral run -- sleep 5` costs while it waits, against `timeout 10 sleep 5`.
//!
//! Per run: the supervisor's peak RSS as its `VmHWM` (read from `/proc` at 4.5 s, so it
//! covers start-up and the wait), user + system CPU time from `wait4`'s resource usage (which
//! includes the `sleep` each supervisor reaps, the same for both), and its wake-ups while
//! waiting: the change in `voluntary_ctxt_switches + nonvoluntary_ctxt_switches`, summed over
//! its threads, between 0.5 s and 4.5 s after start.
//!
//! `wait4`'s `ru_maxrss` is recorded too but is not the peak RSS of the supervisor: Linux
//! keeps the high-water mark of the memory a process had *before* `exec` (`signal->maxrss`,
//! updated in `exec_mmap`), and a child of the bench runs on (`vfork`) or as a copy of
//! (`fork`) the bench's memory until it execs. So it reports about the bench's own peak,
//! which is recorded next to it (a spawner that had touched 50 MiB more raised it by 50 MiB).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::procs::Child;
use super::{Bench, Plan};

const SLEEP: &str = "5";
const FIRST_READ: Duration = Duration::from_millis(500);
const SECOND_READ: Duration = Duration::from_millis(4500);

/// One run of one supervisor.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleRun {
    /// `ru_maxrss`, KiB (see the module docs: includes the bench's own RSS).
    pub maxrss_kib: u64,
    /// The bench's own `VmHWM` when it spawned the supervisor, KiB.
    pub spawner_hwm_kib: u64,
    /// The supervisor's own `VmHWM` at 4.5 s, KiB.
    pub hwm_kib: u64,
    /// `ru_utime + ru_stime`, seconds.
    pub cpu: f64,
    /// Context switches between 0.5 s and 4.5 s.
    pub wakeups: u64,
    /// Threads at 4.5 s.
    pub threads: usize,
    /// Start to reaped, seconds.
    pub wall: f64,
}

pub struct IdleFigures {
    pub rounds: usize,
    pub corral: Vec<IdleRun>,
    pub timeout: Vec<IdleRun>,
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<IdleFigures> {
    let corral_bin = super::corral_binary();
    let jobs = bench.root.jobs();
    let mut f = IdleFigures {
        rounds: plan.idle_rounds,
        corral: Vec::new(),
        timeout: Vec::new(),
    };
    eprintln!(
        "bench: 3/5 idle supervisor: {} rounds of `corral run -- sleep {SLEEP}` and `timeout 10 sleep {SLEEP}`",
        plan.idle_rounds
    );
    for _ in 0..plan.idle_rounds {
        super::check_interrupted()?;
        let mut corral = Command::new(&corral_bin);
        corral
            .arg("run")
            .arg("--cgroup-parent")
            .arg(&jobs)
            .args(["--", "sleep", SLEEP]);
        f.corral.push(measure(&mut corral)?);
        bench.check_clean("corral run -- sleep")?;
        eprint!(".");

        super::check_interrupted()?;
        let mut timeout = Command::new("timeout");
        timeout.args(["10", "sleep", SLEEP]);
        f.timeout.push(measure(&mut timeout)?);
        bench.check_clean("timeout 10 sleep")?;
        eprint!(".");
    }
    eprintln!(" done");
    Ok(f)
}

fn measure(cmd: &mut Command) -> Result<IdleRun> {
    cmd.stdin(Stdio::null());
    let what = format!("{:?}", cmd);
    let spawner_hwm_kib = status_field("/proc/self/status", "VmHWM:").unwrap_or(0);
    let t0 = Instant::now();
    let child = Child::spawn(cmd)?;
    let pid = child.pid();
    sleep_until(t0 + FIRST_READ);
    let (first, _) = switches(pid).with_context(|| format!("{what}: first /proc read"))?;
    sleep_until(t0 + SECOND_READ);
    let (second, threads) = switches(pid).with_context(|| format!("{what}: second /proc read"))?;
    let hwm_kib = status_field(format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0);
    let exit = child.wait()?;
    let wall = t0.elapsed().as_secs_f64();
    anyhow::ensure!(exit.success(), "{what} ended with {}", exit.describe());
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(IdleRun {
        maxrss_kib: exit.rusage.ru_maxrss as u64,
        spawner_hwm_kib,
        hwm_kib,
        cpu: tv(exit.rusage.ru_utime) + tv(exit.rusage.ru_stime),
        wakeups: second.saturating_sub(first),
        threads,
        wall,
    })
}

/// Sleeps until `at` (a measurement schedule, not a wait for an event).
fn sleep_until(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        std::thread::sleep(at - now);
    }
}

/// Voluntary + involuntary context switches of every thread of `pid`, and the thread count.
/// `pid` is our unreaped child, so it names no other process.
fn switches(pid: i32) -> Result<(u64, usize)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    let mut threads = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("failed to list {dir}"))? {
        let status = entry?.path().join("status");
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            total += status_field(&status, key)
                .with_context(|| format!("no {key} in {}", status.display()))?;
        }
        threads += 1;
    }
    Ok((total, threads))
}

/// The first number after `key` in a `/proc/.../status` file.
pub fn status_field(path: impl AsRef<Path>, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
