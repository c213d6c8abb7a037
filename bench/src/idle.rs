//! Figure 3: what a supervisor costs while it waits: `corral run -- sleep 5` against the
//! peers that also sit between a caller and its command: `timeout 10 sleep 5`,
//! `tini -s -- sleep 5` (as a subreaper, since it is not PID 1 here) and `bwrap` (with and
//! without `--unshare-pid`, sharing the whole file system: `--dev-bind / /`).
//!
//! Per run: the supervisor's peak RSS as its `VmHWM` (read from `/proc` at 4.5 s, so it
//! covers start-up and the wait), user + system CPU time from `wait4`'s resource usage (which
//! includes the `sleep` each supervisor reaps, the same for all), the CPU time it used while
//! idle-waiting (the change in its threads' on-CPU time from `/proc/<pid>/task/*/schedstat`,
//! in nanoseconds, between 0.5 s and 4.5 s), and its wake-ups while waiting: the change in
//! `voluntary_ctxt_switches + nonvoluntary_ctxt_switches`, summed over its threads, over the
//! same window. The supervisor measured is the process the bench starts: for `bwrap` that is
//! its monitor process outside the namespaces (with `--unshare-pid`, the init inside the new
//! PID namespace is a process of its own, not counted).
//!
//! A peer that is not installed is reported as such in the figure (and named by the run's
//! summary); the others are still measured.
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
    /// On-CPU time between 0.5 s and 4.5 s, seconds (`schedstat`).
    pub idle_cpu: f64,
    /// Threads at 4.5 s.
    pub threads: usize,
    /// Start to reaped, seconds.
    pub wall: f64,
}

/// One supervisor of the figure, and its runs.
pub struct Supervisor {
    /// How the table names it (the command line, shortened).
    pub label: &'static str,
    /// The program's name, to look for on `PATH`.
    program: &'static str,
    /// The runs; empty when the program is missing.
    pub runs: Vec<IdleRun>,
    /// Whether the program was found.
    pub installed: bool,
}

pub struct IdleFigures {
    pub rounds: usize,
    /// `corral run` first, then the peers; ratios are to `timeout` (the second).
    pub supervisors: Vec<Supervisor>,
}

impl IdleFigures {
    pub fn corral(&self) -> &[IdleRun] {
        &self.supervisors[0].runs
    }

    pub fn timeout(&self) -> &[IdleRun] {
        &self.supervisors[1].runs
    }
}

/// The supervisors, in the table's order, and their arguments before `sleep 5`.
const PEERS: [(&str, &str, &[&str]); 5] = [
    ("`corral run`", "corral", &[]),
    ("`timeout 10`", "timeout", &["10"]),
    ("`tini -s --`", "tini", &["-s", "--"]),
    (
        "`bwrap --dev-bind / /`",
        "bwrap",
        &["--dev-bind", "/", "/", "--"],
    ),
    (
        "`bwrap --unshare-pid --dev-bind / /`",
        "bwrap",
        &["--unshare-pid", "--dev-bind", "/", "/", "--"],
    ),
];

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<IdleFigures> {
    let corral_bin = super::corral_binary();
    let jobs = bench.root.jobs();
    let mut f = IdleFigures {
        rounds: plan.idle_rounds,
        supervisors: PEERS
            .iter()
            .map(|&(label, program, _)| Supervisor {
                label,
                program,
                runs: Vec::new(),
                installed: program == "corral" || on_path(program),
            })
            .collect(),
    };
    eprintln!(
        "bench: 3/5 idle supervisor: {} rounds of `corral run`, `timeout`, `tini` and `bwrap` around `sleep {SLEEP}`",
        plan.idle_rounds
    );
    for s in f.supervisors.iter().filter(|s| !s.installed) {
        eprintln!("bench: {} is not installed: its row says so", s.program);
    }
    for _ in 0..plan.idle_rounds {
        for (k, &(label, program, args)) in PEERS.iter().enumerate() {
            if !f.supervisors[k].installed {
                continue;
            }
            super::check_interrupted()?;
            let mut cmd = if program == "corral" {
                let mut c = Command::new(&corral_bin);
                c.arg("run").arg("--cgroup-parent").arg(&jobs).arg("--");
                c
            } else {
                Command::new(program)
            };
            cmd.args(args).args(["sleep", SLEEP]);
            f.supervisors[k].runs.push(measure(&mut cmd)?);
            bench.check_clean(label)?;
            eprint!(".");
        }
    }
    eprintln!(" done");
    Ok(f)
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn measure(cmd: &mut Command) -> Result<IdleRun> {
    cmd.stdin(Stdio::null());
    let what = format!("{:?}", cmd);
    let spawner_hwm_kib = status_field("/proc/self/status", "VmHWM:").unwrap_or(0);
    let t0 = Instant::now();
    let child = Child::spawn(cmd)?;
    let pid = child.pid();
    sleep_until(t0 + FIRST_READ);
    let (first, _, first_ns) =
        switches(pid).with_context(|| format!("{what}: first /proc read"))?;
    sleep_until(t0 + SECOND_READ);
    let (second, threads, second_ns) =
        switches(pid).with_context(|| format!("{what}: second /proc read"))?;
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
        idle_cpu: second_ns.saturating_sub(first_ns) as f64 / 1e9,
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

/// Voluntary + involuntary context switches of every thread of `pid`, the thread count, and
/// the threads' on-CPU time in nanoseconds (the first field of `schedstat`). `pid` is our
/// unreaped child, so it names no other process.
fn switches(pid: i32) -> Result<(u64, usize, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    let mut threads = 0;
    let mut on_cpu_ns = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("failed to list {dir}"))? {
        let task = entry?.path();
        let schedstat = task.join("schedstat");
        on_cpu_ns += fs::read_to_string(&schedstat)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no on-CPU time in {}", schedstat.display()))?;
        let status = task.join("status");
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            total += status_field(&status, key)
                .with_context(|| format!("no {key} in {}", status.display()))?;
        }
        threads += 1;
    }
    Ok((total, threads, on_cpu_ns))
}

/// The first number after `key` in a `/proc/.../status` file.
pub fn status_field(path: impl AsRef<Path>, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
