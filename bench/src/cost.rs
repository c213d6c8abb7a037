//! Figure 11: what a job costs against what a user would run without corral.
//!
//! - `corral run --cgroup-parent <jobs> -- /bin/true` against `timeout 100 /bin/true`
//!   (coreutils), timed from the spawn to the reaping, rounds interleaved; with the
//!   explanatory rows that give the floor: `/bin/true` alone, each program's own exec and
//!   start-up (`--version`), and `corral run --debug-no-watchdog`.
//! - Memory: `corral run -- sleep 1` and `timeout 100 sleep 1`; the peak resident memory
//!   (`VmHWM`) of each, plus the memory only corral's watchdog holds (its private pages: a
//!   forked watchdog shares the rest with corral).
//! - `Job::spawn(&mut Command)` with stdout piped and read to its end, against a bare
//!   `Command::output()` (std forks for the former, `posix_spawn`s the latter).
//! - 1000 jobs of `/bin/true` on 2 worker threads: a bare `Command::status()`,
//!   `Job::spawn_command`, `Job::spawn`; throughput from the wall time of the whole batch.
//! - `cargo nextest run` of a crate of 200 empty tests, with corral as the wrapper script of
//!   every test and without (needs `cargo nextest`; without it the rows say so).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::procs::Child;
use super::stats::Samples;
use super::{Bench, Plan};

/// Jobs in one batch of the throughput figure, and the worker threads that run them.
pub const BATCH: usize = 1000;
pub const WORKERS: usize = 2;
/// Tests in the nextest crate.
pub const TESTS: usize = 200;

/// One run of a program, timed from its spawn to its reaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cli {
    Timeout,
    Corral,
    CorralNoWatchdog,
    True,
    TimeoutVersion,
    CorralVersion,
}

impl Cli {
    pub const ALL: [Cli; 6] = [
        Cli::Timeout,
        Cli::Corral,
        Cli::CorralNoWatchdog,
        Cli::True,
        Cli::TimeoutVersion,
        Cli::CorralVersion,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cli::Timeout => "`timeout 100 /bin/true` (coreutils)",
            Cli::Corral => "`corral run -- /bin/true`",
            Cli::CorralNoWatchdog => "(explanatory) `corral run --debug-no-watchdog -- /bin/true`",
            Cli::True => "(explanatory) `/bin/true` alone",
            Cli::TimeoutVersion => "(explanatory) `timeout --version` (its exec and start-up)",
            Cli::CorralVersion => "(explanatory) `corral --version` (its exec and start-up)",
        }
    }

    fn command(self, corral: &Path, jobs: &Path) -> Command {
        let mut cmd = match self {
            Cli::Timeout | Cli::TimeoutVersion => Command::new("timeout"),
            Cli::True => Command::new("/bin/true"),
            _ => Command::new(corral),
        };
        match self {
            Cli::Timeout => {
                cmd.args(["100", "/bin/true"]);
            }
            Cli::Corral | Cli::CorralNoWatchdog => {
                cmd.arg("run").arg("--cgroup-parent").arg(jobs);
                if self == Cli::CorralNoWatchdog {
                    cmd.arg("--debug-no-watchdog");
                }
                cmd.args(["--", "/bin/true"]);
            }
            Cli::TimeoutVersion | Cli::CorralVersion => {
                cmd.arg("--version");
            }
            Cli::True => {}
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

/// The throughput figure's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Many {
    Bare,
    SpawnCommand,
    Spawn,
    SpawnCommandBare,
    BareLeaf,
}

impl Many {
    pub const ALL: [Many; 5] = [
        Many::Bare,
        Many::SpawnCommand,
        Many::Spawn,
        Many::SpawnCommandBare,
        Many::BareLeaf,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Many::Bare => "bare `Command::status()`",
            Many::SpawnCommand => "`Job::spawn_command(&JobCommand)` + `wait()`, cgroup",
            Many::Spawn => "`Job::spawn(&mut Command)` + `wait()`, cgroup",
            Many::SpawnCommandBare => {
                "(explanatory) the same `spawn_command`, with neither watchdog nor registry"
            }
            Many::BareLeaf => {
                "(explanatory) bare `Command::status()`, and `mkdir` + `rmdir` of an empty \
                 leaf around it (the floor of a fresh cgroup per job)"
            }
        }
    }
}

/// Peak resident memory of one run, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// The program's own `VmHWM`.
    pub main: u64,
    /// The memory only its watchdog holds (its private pages: a forked watchdog shares the
    /// rest with corral, copy-on-write), when it does not share corral's memory outright.
    pub watchdog_own: Option<u64>,
    /// Whether a watchdog was found, and shared the program's memory.
    pub watchdog_shares: Option<bool>,
}

impl Memory {
    pub fn total(&self) -> u64 {
        self.main + self.watchdog_own.unwrap_or(0)
    }
}

pub struct CostFigures {
    pub rounds: usize,
    pub cli: Vec<Samples>,
    pub corral_memory: Vec<Memory>,
    pub timeout_memory: Vec<Memory>,
    /// Bare `Command::output()`, `Job::spawn` with stdout piped, `Job::spawn_command` with
    /// stdout piped.
    pub piped: [Samples; 3],
    pub many_rounds: usize,
    pub many: Vec<Samples>,
    /// The nextest runs: plain, with corral, with `env` as the wrapper (the floor of any
    /// wrapper: one more exec per test); or why there are none.
    pub nextest: std::result::Result<[Samples; 3], String>,
}

impl CostFigures {
    pub fn cli(&self, v: Cli) -> &Samples {
        &self.cli[Cli::ALL.iter().position(|c| *c == v).expect("listed")]
    }

    pub fn many(&self, v: Many) -> &Samples {
        &self.many[Many::ALL.iter().position(|c| *c == v).expect("listed")]
    }
}

/// The median of a list of numbers.
pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n => v[n / 2],
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<CostFigures> {
    let corral = super::corral_binary();
    let jobs = bench.root.jobs();
    let rounds = plan.cost_rounds;
    eprintln!(
        "bench: per-job cost: {rounds} rounds of `corral run` vs `timeout`, memory, piped \
         spawns, {BATCH} jobs on {WORKERS} workers, nextest with {TESTS} tests"
    );
    let mut cli = vec![Samples::default(); Cli::ALL.len()];
    for round in 0..rounds + plan.cost_warmup {
        super::check_interrupted()?;
        for k in 0..Cli::ALL.len() {
            let v = Cli::ALL[(round + k) % Cli::ALL.len()];
            let took = bench.timed_run(&mut v.command(&corral, &jobs), v.label())?;
            if round >= plan.cost_warmup {
                cli[Cli::ALL.iter().position(|c| *c == v).expect("listed")].push(took);
            }
        }
        bench.check_clean("`corral run` and `timeout`")?;
    }

    let mut corral_memory = Vec::new();
    let mut timeout_memory = Vec::new();
    for _ in 0..plan.cost_memory_runs {
        super::check_interrupted()?;
        let mut cmd = Command::new(&corral);
        cmd.arg("run").arg("--cgroup-parent").arg(&jobs);
        cmd.args(["--", "sleep", "1"]).stdin(Stdio::null());
        corral_memory.push(memory_of(bench, &mut cmd, true)?);
        let mut cmd = Command::new("timeout");
        cmd.args(["100", "sleep", "1"]).stdin(Stdio::null());
        timeout_memory.push(memory_of(bench, &mut cmd, false)?);
        bench.check_clean("the memory runs")?;
    }

    let mut piped: [Samples; 3] = Default::default();
    let opts = bench.job_options(corral::MechanismRequest::Cgroup);
    let echo = corral::JobCommand::new("/bin/echo")
        .arg("x")
        .stdout(corral::JobStdio::Piped);
    for round in 0..rounds + plan.cost_warmup {
        super::check_interrupted()?;
        for k in 0..3 {
            let which = (round + k) % 3;
            let t0 = Instant::now();
            let out = if which == 0 {
                Command::new("/bin/echo").arg("x").output()?.stdout
            } else {
                let mut job = if which == 1 {
                    let mut cmd = Command::new("/bin/echo");
                    cmd.arg("x").stdout(Stdio::piped());
                    corral::Job::spawn(&mut cmd, &opts)?
                } else {
                    corral::Job::spawn_command(&echo, &opts)?
                };
                let mut out = Vec::new();
                if let Some(mut stdout) = job.stdout.take() {
                    std::io::Read::read_to_end(&mut stdout, &mut out)?;
                }
                let report = job.wait()?;
                bench.check_alone(&report, "a piped job");
                out
            };
            let took = t0.elapsed();
            bench.expect(out == b"x\n", format!("a piped run read {out:?}"));
            if round >= plan.cost_warmup {
                piped[which].push(took);
            }
        }
        bench.check_clean("the piped spawns")?;
    }

    let mut many = vec![Samples::default(); Many::ALL.len()];
    for round in 0..plan.cost_many_rounds + 1 {
        super::check_interrupted()?;
        for k in 0..Many::ALL.len() {
            let v = Many::ALL[(round + k) % Many::ALL.len()];
            let took = batch(bench, v, &opts)?;
            if round >= 1 {
                many[Many::ALL.iter().position(|c| *c == v).expect("listed")].push(took);
            }
            bench.check_clean("a batch of short jobs")?;
        }
    }

    let nextest = nextest(bench, plan, &corral, &jobs)?;
    Ok(CostFigures {
        rounds,
        cli,
        corral_memory,
        timeout_memory,
        piped,
        many_rounds: plan.cost_many_rounds,
        many,
        nextest,
    })
}

/// [`BATCH`] jobs of `/bin/true` on [`WORKERS`] threads; the wall time of the batch.
fn batch(bench: &mut Bench, v: Many, opts: &corral::Options) -> Result<Duration> {
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let cmd = corral::JobCommand::new("/bin/true");
    let lean = corral::Options {
        register: false,
        debug: corral::DebugKnobs {
            no_watchdog: true,
            ..Default::default()
        },
        ..opts.clone()
    };
    let jobs = opts.cgroup_parent.clone().expect("the bench's jobs/");
    let leaves = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < BATCH {
                    let ok = match v {
                        Many::Bare => Command::new("/bin/true")
                            .status()
                            .is_ok_and(|s| s.success()),
                        Many::SpawnCommand => corral::Job::spawn_command(&cmd, opts)
                            .and_then(|mut j| j.wait())
                            .is_ok_and(|r| r.exit_status == 0),
                        Many::Spawn => corral::Job::spawn(&mut Command::new("/bin/true"), opts)
                            .and_then(|mut j| j.wait())
                            .is_ok_and(|r| r.exit_status == 0),
                        Many::SpawnCommandBare => corral::Job::spawn_command(&cmd, &lean)
                            .and_then(|mut j| j.wait())
                            .is_ok_and(|r| r.exit_status == 0),
                        Many::BareLeaf => {
                            let leaf = jobs
                                .join(format!("floor-{}", leaves.fetch_add(1, Ordering::Relaxed)));
                            let made = fs::create_dir(&leaf).is_ok();
                            let ran = Command::new("/bin/true")
                                .status()
                                .is_ok_and(|s| s.success());
                            made && ran && fs::remove_dir(&leaf).is_ok()
                        }
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let took = t0.elapsed();
    let failed = failures.load(Ordering::Relaxed);
    bench.expect(failed == 0, format!("{}: {failed} jobs failed", v.label()));
    Ok(took)
}

/// Runs `cmd` (a supervisor of `sleep 1`) and reads its peak memory, and its watchdog's,
/// half a second in.
fn memory_of(bench: &mut Bench, cmd: &mut Command, watchdog: bool) -> Result<Memory> {
    let child = Child::spawn(cmd)?;
    let pid = child.pid();
    std::thread::sleep(Duration::from_millis(500));
    let main = hwm(pid).context("VmHWM of the supervisor")?;
    let mut m = Memory {
        main,
        ..Memory::default()
    };
    if watchdog {
        match find_watchdog(pid) {
            Some(w) => {
                let shares = super::procs::shares_memory(pid, w);
                m.watchdog_shares = Some(shares);
                if !shares {
                    m.watchdog_own = super::procs::private_kib(w);
                }
            }
            None => bench.expect(false, "no watchdog found for `corral run -- sleep 1`"),
        }
    }
    let exit = child.wait()?;
    bench.expect(
        exit.success(),
        format!("a memory run ended with {}", exit.describe()),
    );
    Ok(m)
}

fn hwm(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The watchdog of the `corral` process `host`: forked (named `corral-watchdog`, with the
/// host's command line) or exec'd (`corral __watchdog <host>`).
fn find_watchdog(host: i32) -> Option<i32> {
    let host_cmdline = fs::read(format!("/proc/{host}/cmdline")).ok()?;
    let exec_form = format!("__watchdog\0{host}\0");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        if pid == host {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let forked = comm.trim_end() == "corral-watchdog" && cmdline == host_cmdline;
        let execd = cmdline
            .windows(exec_form.len())
            .any(|w| w == exec_form.as_bytes());
        (forked || execd).then_some(pid)
    })
}

/// `cargo nextest run` of a generated crate of [`TESTS`] empty tests, plain and with corral
/// as the wrapper script, rounds interleaved.
fn nextest(
    bench: &mut Bench,
    plan: &Plan,
    corral: &Path,
    jobs: &Path,
) -> Result<std::result::Result<[Samples; 3], String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let have = Command::new(&cargo)
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        return Ok(Err(
            "`cargo nextest` is not installed (`cargo install --locked cargo-nextest`)".into(),
        ));
    }
    let dir = super::workspace_root().join("target/bench/nextest-trivial");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("src"))?;
    fs::create_dir_all(dir.join(".config"))?;
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"nextest-trivial\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         publish = false\n\n[workspace]\n",
    )?;
    let mut lib = String::new();
    for i in 0..TESTS {
        let _ = writeln!(lib, "#[test]\nfn t{i:03}() {{}}");
    }
    fs::write(dir.join("src/lib.rs"), lib)?;
    let quote = |p: &Path| format!("{:?}", p.display().to_string());
    fs::write(
        dir.join(".config/nextest.toml"),
        format!(
            "experimental = [\"wrapper-scripts\"]\n\n\
             [scripts.wrapper.corral]\n\
             command = [{}, \"run\", \"--cgroup-parent\", {}, \"--\"]\n\n\
             [scripts.wrapper.env]\n\
             command = [\"/usr/bin/env\"]\n\n\
             [profile.corral]\n\n\
             [[profile.corral.scripts]]\n\
             filter = \"all()\"\n\
             run-wrapper = \"corral\"\n\n\
             [profile.env]\n\n\
             [[profile.env.scripts]]\n\
             filter = \"all()\"\n\
             run-wrapper = \"env\"\n",
            quote(corral),
            quote(jobs)
        ),
    )?;
    let target = dir.join("target");
    let run = |profile: &str| -> Result<Duration> {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .args(["nextest", "run", "--offline", "--profile", profile])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let out = cmd.output().context("cargo nextest run")?;
        let took = t0.elapsed();
        ensure!(
            out.status.success(),
            "cargo nextest run --profile {profile} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(took)
    };
    // Builds the crate (not timed).
    run("default")?;
    let mut samples: [Samples; 3] = Default::default();
    let profiles = ["default", "corral", "env"];
    for round in 0..plan.cost_nextest_rounds + 1 {
        super::check_interrupted()?;
        for k in 0..profiles.len() {
            let which = (round + k) % profiles.len();
            let took = run(profiles[which])?;
            if round >= 1 {
                samples[which].push(took);
            }
            bench.check_clean("a nextest run")?;
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(Ok(samples))
}
