//! `cargo xtask bench`: corral's costs, each as a ratio to a baseline measured in the same
//! run with interleaved rounds (A B C A B C ...), so drift and noise hit both sides alike.
//!
//! 1. [`spawn_wait`]: spawn + wait + cleanup of `/bin/true` as a job, through each spawn
//!    path of the library, vs a bare `Command::status()`.
//! 2. [`stop_tree`]: stopping trees of 10 / 100 / 1000 sleeping processes vs a raw
//!    `cgroup.kill`.
//! 3. [`idle`]: `corral run -- sleep 5` vs `timeout 10 sleep 5`: peak RSS, CPU, wake-ups.
//! 4. [`concurrent`]: 100 jobs of `sleep 0.1` at once, one thread each, vs 100 bare
//!    `Command::status()` threads: throughput.
//! 5. [`watchdog`]: the watchdog's cost: the first cgroup job of a fresh `corral run` (which
//!    starts it) and each further job of a long-lived host, with and without it; its
//!    memory and CPU while idle.
//! 6. [`registry`]: a job registered vs not (ratio), and the start-up sweep's cost.
//! 7. [`pidns`]: `corral run -- true` with `--pid-namespace` vs without.
//! 8. [`helper`]: a job through the setuid helper `corral-helper`, as an unprivileged
//!    caller, vs `corral run` as root (and vs `setpriv` alone).
//! 9. [`fork_storm`]: a fork storm stopped while it forks: time to zero processes and the
//!    peak, vs a raw `cgroup.kill`.
//!
//! Then the side-by-side figures against the peers (process-wrap, processkit, `timeout`,
//! tini, bwrap): the `peers` bench target (`bench/benches/peers/`), run as its own process
//! by [`run_peers`], whose sections follow these in `docs/benchmarks.md`.
//!
//! Safety: everything runs under one cgroup of the bench's own ([`cgroup::BenchRoot`]),
//! removed at the end and on any error; processes are signalled only through pidfds; rounds
//! run one at a time because a pgroup job claims every descendant of this process. Between
//! rounds [`Bench::check_clean`] verifies nothing was left behind.

pub mod cgroup;
mod concurrent;
mod cost;
mod fork_storm;
mod helper;
mod idle;
pub mod machine;
mod pidns;
pub mod procs;
mod registry;
pub mod report;
mod spawn_wait;
pub mod stats;
pub mod stop_tree;
mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use cgroup::{BenchRoot, Mount};

/// How many rounds of what.
pub struct Plan {
    pub spawn_warmup: usize,
    pub spawn_rounds: usize,
    /// (N, rounds) per tree size.
    pub trees: Vec<(usize, usize)>,
    pub idle_rounds: usize,
    /// Jobs started at once in figure 4, and how many rounds of that.
    pub concurrent_jobs: usize,
    pub concurrent_rounds: usize,
    /// Rounds of figure 5, and its warm-up rounds.
    pub watchdog_rounds: usize,
    pub watchdog_warmup: usize,
    /// Figure 7's warm-up rounds and rounds.
    pub pidns_warmup: usize,
    pub pidns_rounds: usize,
    /// Figure 8's warm-up rounds and rounds.
    pub helper_warmup: usize,
    pub helper_rounds: usize,
    /// Figure 9's rounds.
    pub storm_rounds: usize,
    /// Figure 11: rounds and warm-up rounds of the timed runs, memory runs, batches of
    /// short jobs, nextest runs (each side).
    pub cost_rounds: usize,
    pub cost_warmup: usize,
    pub cost_memory_runs: usize,
    pub cost_many_rounds: usize,
    pub cost_nextest_rounds: usize,
    pub quick: bool,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            spawn_warmup: 10,
            spawn_rounds: 200,
            trees: vec![(10, 15), (100, 15), (1000, 7)],
            idle_rounds: 3,
            concurrent_jobs: 100,
            concurrent_rounds: 15,
            watchdog_rounds: 200,
            watchdog_warmup: 5,
            pidns_warmup: 5,
            pidns_rounds: 100,
            helper_warmup: 5,
            helper_rounds: 100,
            storm_rounds: 5,
            cost_rounds: 200,
            cost_warmup: 10,
            cost_memory_runs: 3,
            cost_many_rounds: 5,
            cost_nextest_rounds: 5,
            quick: false,
        }
    }

    fn quick() -> Plan {
        Plan {
            spawn_warmup: 2,
            spawn_rounds: 20,
            trees: vec![(10, 3), (100, 3), (1000, 2)],
            idle_rounds: 1,
            concurrent_jobs: 100,
            concurrent_rounds: 2,
            watchdog_rounds: 20,
            watchdog_warmup: 2,
            pidns_warmup: 1,
            pidns_rounds: 10,
            helper_warmup: 1,
            helper_rounds: 10,
            storm_rounds: 1,
            cost_rounds: 10,
            cost_warmup: 2,
            cost_memory_runs: 1,
            cost_many_rounds: 1,
            cost_nextest_rounds: 1,
            quick: true,
        }
    }
}

/// The state shared by the figures: the bench's cgroup and what the checks found.
pub struct Bench {
    root: BenchRoot,
    /// Things that went wrong without stopping the bench (a report that says a job left
    /// survivors, a leaf not removed, ...): each is a possible corral bug. Each distinct
    /// message once, with how many times it came up.
    anomalies: Vec<(String, usize)>,
    /// Exited orphans of ours that nobody else reaped (see [`procs::reap_strays`]).
    strays_reaped: usize,
}

impl Bench {
    /// The state of a run that has just created `root` (the peers bench builds its own
    /// context around one).
    pub fn new(root: BenchRoot) -> Bench {
        Bench {
            root,
            anomalies: Vec::new(),
            strays_reaped: 0,
        }
    }

    /// The bench's cgroup.
    pub fn root(&self) -> &BenchRoot {
        &self.root
    }

    /// Ends the run: the root (to close), each distinct anomaly with how many times it
    /// came up, and how many strays were reaped.
    pub fn finish(self) -> (BenchRoot, Vec<(String, usize)>, usize) {
        (self.root, self.anomalies, self.strays_reaped)
    }

    /// Options for a job under the bench's `jobs/` cgroup.
    pub fn job_options(&self, mechanism: corral::MechanismRequest) -> corral::Options {
        corral::Options {
            mechanism,
            cgroup_parent: Some(self.root.jobs()),
            // The bench measures the engine as the CLI runs it (the CLI is its own
            // supervisor); the library's supervisor process is measured on its own. A
            // cgroup job's watchdog runs from the `corral` binary the bench built.
            supervisor: match mechanism {
                corral::MechanismRequest::Cgroup => corral::Supervisor::Binary(corral_binary()),
                _ => corral::Supervisor::InProcess,
            },
            ..corral::Options::default()
        }
    }

    /// Runs `cmd` to its end, timed from its spawn to its reaping; records an anomaly (named
    /// by `what`) unless it exits 0.
    pub fn timed_run(&mut self, cmd: &mut std::process::Command, what: &str) -> Result<Duration> {
        let t0 = Instant::now();
        let exit = procs::Child::spawn(cmd)?.wait()?;
        let took = t0.elapsed();
        self.expect(
            exit.success(),
            format!("{what} ended with {}", exit.describe()),
        );
        Ok(took)
    }

    /// Records an anomaly unless `ok` (printed the first time it comes up, counted after).
    pub fn expect(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            match self.anomalies.iter_mut().find(|(a, _)| *a == what) {
                Some((_, n)) => *n += 1,
                None => {
                    eprintln!("\nbench: ANOMALY: {what}");
                    self.anomalies.push((what, 1));
                }
            }
        }
    }

    /// The checks of a job whose main process starts nothing: no leftovers, so no stop.
    pub fn check_alone(&mut self, r: &corral::Report, what: &str) {
        let stop = match &r.stop {
            Some(s) => format!("a stop (reason {:?})", s.reason),
            None => "no stop".into(),
        };
        self.expect(
            r.leftovers.is_empty() && r.stop.is_none(),
            format!(
                "{what}: the program starts nothing, yet the report has {} leftovers and {stop}",
                r.leftovers.len(),
            ),
        );
    }

    /// The checks every job report must pass.
    pub fn check_report(&mut self, r: &corral::Report, mechanism: corral::Mechanism, what: &str) {
        self.expect(
            r.mechanism == mechanism,
            format!(
                "{what}: ran under {:?}, asked for {mechanism:?}",
                r.mechanism
            ),
        );
        self.expect(
            r.survivors.is_empty(),
            format!("{what}: survivors {:?}", r.survivors),
        );
        self.expect(
            r.cleanup.error.is_none(),
            format!("{what}: cleanup error {:?}", r.cleanup.error),
        );
        if mechanism == corral::Mechanism::Cgroup {
            self.expect(
                r.cleanup.cgroup_removed == Some(true),
                format!("{what}: cgroup_removed {:?}", r.cleanup.cgroup_removed),
            );
            if let Some(p) = &r.cgroup {
                self.expect(
                    !p.exists(),
                    format!("{what}: {} still exists after the job", p.display()),
                );
            }
        }
    }

    /// After a pgroup job: drop the subreaper role the library took (so the other variants
    /// run as in a process that never used pgroup) and reap anything re-parented meanwhile.
    pub fn after_pgroup_job(&mut self) -> Result<()> {
        rustix::process::set_child_subreaper(None)
            .context("prctl(PR_SET_CHILD_SUBREAPER, 0) failed")?;
        self.strays_reaped += procs::reap_strays();
        Ok(())
    }

    /// Between rounds: reaps exited orphans, kills (and records) any process left in the
    /// bench's own cgroup, and records job leaves left under `jobs/`.
    pub fn check_clean(&mut self, after: &str) -> Result<()> {
        self.strays_reaped += procs::reap_strays();
        let left = procs::kill_strays(
            self.root.self_dir(),
            self.root.self_cgroup(),
            Instant::now() + Duration::from_secs(10),
        )?;
        self.expect(
            left.is_empty(),
            format!("after {after}: processes left behind (killed now): {left:?}"),
        );
        let jobs = self.root.jobs();
        let leaves: Vec<String> = std::fs::read_dir(&jobs)
            .with_context(|| format!("failed to list {}", jobs.display()))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        self.expect(
            leaves.is_empty(),
            format!(
                "after {after}: job cgroups left under {}: {leaves:?}",
                jobs.display()
            ),
        );
        Ok(())
    }
}

/// The three load averages from `/proc/loadavg` (empty if it cannot be read).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The repository root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A figure `cargo xtask bench --only <name>` runs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// Figure 6.
    Registry,
    /// Figure 8.
    Helper,
    /// Figure 9.
    Storm,
    /// Figure 11.
    Cost,
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--only registry|helper|storm|cost]";

pub fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut only = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                only = Some(match args.next().map(String::as_str) {
                    Some("registry") => Only::Registry,
                    Some("helper") => Only::Helper,
                    Some("storm") => Only::Storm,
                    Some("cost") => Only::Cost,
                    _ => bail!(USAGE),
                })
            }
            _ => bail!(USAGE),
        }
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let started = Instant::now();
    let date = SystemTime::now();
    install_interrupt_flag()?;
    // The bench's jobs go to a job registry of their own (set before any thread starts).
    let registry_dir = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&registry_dir)
            .with_context(|| format!("failed to create {}", registry_dir.display()))?;
    }
    std::env::set_var(corral::registry::RUNTIME_DIR_ENV, &registry_dir);
    let result = match only {
        Some(only) => run_only(only, &plan, date),
        None => run_figures(plan, started, date),
    };
    let _ = std::fs::remove_dir_all(&registry_dir);
    result
}

/// `cargo xtask bench --only registry|helper`: figure 6 or 8 alone, printed as its markdown
/// section followed by a note of when, at which revision and under what load it was
/// measured (the machine table of `docs/benchmarks.md` describes the full run's).
fn run_only(only: Only, plan: &Plan, date: SystemTime) -> Result<()> {
    build_cli()?;
    let mount = Mount::find()?;
    let machine = machine::Machine::describe(&mount);
    for (k, v) in &machine.facts {
        eprintln!("{k:>22}: {v}");
    }
    let root = BenchRoot::create(&mount)?;
    let mut bench = Bench {
        root,
        anomalies: Vec::new(),
        strays_reaped: 0,
    };
    let (section, figure, name) = match only {
        Only::Registry => (
            registry::run(&mut bench, plan).map(|f| report::registry_section(&f)),
            6,
            "registry",
        ),
        Only::Helper => (
            helper::run(&mut bench, plan).map(|f| report::helper_section(&f)),
            8,
            "helper",
        ),
        Only::Storm => (
            fork_storm::run(&mut bench, plan).map(|f| report::storm_section(&f, None)),
            9,
            "storm",
        ),
        Only::Cost => (
            cost::run(&mut bench, plan).map(|f| report::cost_section(&f)),
            11,
            "cost",
        ),
    };
    let note = report::measured_alone(figure, name, &machine, &load_average(), date);
    let Bench {
        root, anomalies, ..
    } = bench;
    root.close()?;
    let section = section?;
    println!("{section}\n{note}");
    if !anomalies.is_empty() {
        bail!("anomalies: {anomalies:?}");
    }
    Ok(())
}

fn run_figures(plan: Plan, started: Instant, date: SystemTime) -> Result<()> {
    build_cli()?;
    let mount = Mount::find()?;
    let machine = machine::Machine::describe(&mount);
    for (k, v) in &machine.facts {
        eprintln!("{k:>22}: {v}");
    }
    let root = BenchRoot::create(&mount)?;
    let root_path = root.path.clone();
    eprintln!("bench: working under {}", root_path.display());
    let mut bench = Bench {
        root,
        anomalies: Vec::new(),
        strays_reaped: 0,
    };

    let spawn = spawn_wait::run(&mut bench, &plan)?;
    let trees = stop_tree::run(&mut bench, &plan)?;
    let idle = idle::run(&mut bench, &plan)?;
    let concurrent = concurrent::run(&mut bench, &plan)?;
    let watchdog = watchdog::run(&mut bench, &plan)?;
    let registry = registry::run(&mut bench, &plan)?;
    let pidns = pidns::run(&mut bench, &plan)?;
    let helper = helper::run(&mut bench, &plan)?;
    let storm = fork_storm::run(&mut bench, &plan)?;
    let cost = cost::run(&mut bench, &plan)?;

    let Bench {
        root,
        anomalies,
        strays_reaped,
    } = bench;
    let mut anomalies: Vec<String> = anomalies
        .into_iter()
        .map(|(a, n)| if n > 1 { format!("{a} ({n} times)") } else { a })
        .collect();
    root.close()?;
    if root_path.exists() {
        anomalies.push(format!(
            "{} still exists after cleanup",
            root_path.display()
        ));
    }
    let load_end = load_average();
    let wall_own = started.elapsed();
    let peers = match run_peers(plan.quick) {
        Ok(text) => Some(text),
        Err(e) => {
            anomalies.push(format!("the peers' figures failed: {e:#}"));
            None
        }
    };
    let storm_vm = std::fs::read_to_string(
        workspace_root().join("target/vm-test/share/results/fork-storm-limit.md"),
    )
    .ok();
    eprintln!(
        "bench: corral's own figures took {:.0} s, the peers' {:.0} s",
        wall_own.as_secs_f64(),
        (started.elapsed() - wall_own).as_secs_f64()
    );
    let results = report::Results {
        plan: &plan,
        machine: &machine,
        spawn: &spawn,
        trees: &trees,
        idle: &idle,
        concurrent: &concurrent,
        watchdog: &watchdog,
        registry: &registry,
        pidns: &pidns,
        helper: &helper,
        storm: &storm,
        cost: &cost,
        storm_vm: storm_vm.as_deref(),
        peers: peers.as_deref(),
        anomalies: &anomalies,
        strays_reaped,
        load_end,
        wall: started.elapsed(),
        date,
    };
    let body = report::render(&results);
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let out = out_dir.join("benchmarks.md");
    std::fs::write(&out, &body).with_context(|| format!("failed to write {}", out.display()))?;
    println!("{}", report::summary(&results));
    eprintln!("bench: wrote {}", out.display());
    if !plan.quick {
        let doc = workspace_root().join("docs/benchmarks.md");
        std::fs::create_dir_all(doc.parent().expect("docs/"))?;
        std::fs::write(&doc, report::with_doc_header(&results, &body))
            .with_context(|| format!("failed to write {}", doc.display()))?;
        eprintln!("bench: wrote {}", doc.display());
        let chart = out_dir.join("peers").join(PEERS_CHART);
        if chart.exists() {
            let to = workspace_root().join("docs").join(PEERS_CHART);
            std::fs::copy(&chart, &to).with_context(|| {
                format!("failed to copy {} to {}", chart.display(), to.display())
            })?;
            eprintln!("bench: wrote {}", to.display());
        }
    }
    if !anomalies.is_empty() {
        bail!(
            "{} anomalies (listed in the report); the figures may not mean what they say",
            anomalies.len()
        );
    }
    Ok(())
}

/// The runtime the tokio figures run on: multi-thread, one worker per CPU, IO and time
/// drivers on (what `#[tokio::main]` makes).
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start a tokio runtime")
}

/// The `corral` binary [`build_cli`] builds: figures 3, 5, 7 and 8 run it, figure 1's
/// supervised jobs use it as their supervisor, and cgroup jobs as their watchdog.
pub fn corral_binary() -> PathBuf {
    workspace_root().join("target/release/corral")
}

/// The `corral-testtree` binary [`build_cli`] builds: figure 9's fork storm.
pub fn testtree_binary() -> PathBuf {
    workspace_root().join("target/release/corral-testtree")
}

/// The `corral-helper` binary [`build_cli`] builds: figure 8 installs a setuid copy of it.
fn helper_binary() -> PathBuf {
    workspace_root().join("target/release/corral-helper")
}

/// Builds `target/release/corral` and `target/release/corral-helper`, which the figures
/// run (a no-op when they are up to date).
pub fn build_cli() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = [
        "build",
        "--release",
        "-p",
        "corral-cli",
        "-p",
        "corral-testkit",
        "--bin",
        "corral",
        "--bin",
        "corral-helper",
        "--bin",
        "corral-testtree",
    ];
    eprintln!("bench: cargo {}", args.join(" "));
    let status = std::process::Command::new(cargo)
        .args(args)
        .arg("--quiet")
        .current_dir(workspace_root())
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The chart the `peers` target draws, copied to `docs/` by a full run.
pub const PEERS_CHART: &str = "stop-latency.svg";

/// Runs the `peers` bench target (`bench/benches/peers/`) as a process of its own, after
/// corral's figures (its peers are dev-dependencies of this crate, so they can only be
/// reached from a bench target), and returns its markdown sections.
fn run_peers(quick: bool) -> Result<String> {
    check_interrupted()?;
    let out = workspace_root().join("target/bench/peers");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "bench",
        "--quiet",
        "-p",
        "corral-bench",
        "--bench",
        "peers",
        "--",
    ])
    .arg("--out")
    .arg(&out)
    .current_dir(workspace_root());
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("bench: the peers: {cmd:?}");
    let status = cmd.status().context("failed to run cargo bench")?;
    if !status.success() {
        bail!("the peers bench failed: {status}");
    }
    let md = out.join("peers.md");
    std::fs::read_to_string(&md).with_context(|| format!("failed to read {}", md.display()))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP set a flag that the rounds check, so an interrupted bench
/// still removes its cgroups and processes (the guard's drop) instead of dying mid-round.
pub fn install_interrupt_flag() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `sa` is fully initialised (zeroed, then the handler and an empty mask);
        // the handler only stores to an atomic, which is async-signal-safe. No SA_RESTART:
        // a blocking call returns EINTR and every wait here retries or re-checks.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sigaction({sig}) failed"));
        }
    }
    Ok(())
}

/// Fails once SIGINT/SIGTERM/SIGHUP arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}
