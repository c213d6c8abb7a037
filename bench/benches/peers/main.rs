//! `cargo bench -p corral-bench --bench peers`: corral side by side with what users already
//! have (bare `std::process::Command`, process-wrap, processkit, coreutils `timeout`), in
//! one run on one machine. `cargo xtask bench` runs it after its own figures.
//!
//! ```text
//! peers [--quick] [--only FIGURE]... --out DIR
//! ```
//!
//! Writes `DIR/peers.md` (the markdown sections that `docs/benchmarks.md` includes) and the
//! charts beside it (`DIR/stop-latency.svg`). Rounds are interleaved (A B C A B C ...);
//! ratios are of medians against a baseline measured in the same run.
//!
//! The figures (`--only NAME`):
//! 1. `spawn` ([`spawn`]): spawn + wait + cleanup of `/bin/true`, against bare std/tokio;
//! 2. `stop` ([`stop`]): stop latency against tree size (flat and chain, N up to 5000),
//!    against raw `cgroup.kill`; draws `stop-latency.svg`;
//! 3. `throughput` ([`throughput`]): short jobs per second with 2 workers;
//! 4. `containment` ([`containment`]): which escapes (`setsid`, daemon, `setpgid`) each
//!    peer's stop leaves alive.
//!
//! Each figure is a module with `pub fn run(ctx: &mut Ctx) -> Result<String>` returning its
//! markdown section; [`FIGURES`] lists them in report order, and `--only NAME` picks some.
//! Everything a figure starts lives under the bench's own cgroup ([`BenchRoot`]), which is
//! removed at the end even when a figure fails; what went wrong without stopping the run
//! (a survivor, a leaf left behind) is an anomaly, and any anomaly fails the run at the end.

mod chart;
mod containment;
mod spawn;
mod stop;
mod table;
mod throughput;
mod tree;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

use corral_bench::cgroup::{BenchRoot, Mount};
use corral_bench::machine::Machine;
use corral_bench::Bench;

const USAGE: &str = "usage: peers [--quick] [--only FIGURE]... --out DIR";

/// A figure: runs its rounds and returns its markdown section.
type Figure = fn(&mut Ctx) -> Result<String>;

/// The figures, in report order: the name `--only` takes, and the function that runs it.
const FIGURES: &[(&str, Figure)] = &[
    ("spawn", spawn::run),
    ("stop", stop::run),
    ("throughput", throughput::run),
    ("containment", containment::run),
    ("workloads", workloads::run),
];

/// What the command line asked for.
pub struct Args {
    pub quick: bool,
    /// Empty: every figure.
    pub only: Vec<String>,
    pub out: PathBuf,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut quick = false;
        let mut only = Vec::new();
        let mut out = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--only" => only.extend(args.next()),
                "--out" => out = args.next().map(PathBuf::from),
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                other => bail!("unknown argument `{other}`; {USAGE}"),
            }
        }
        let Some(out) = out else {
            bail!("--out is missing; {USAGE}")
        };
        for name in &only {
            if !FIGURES.iter().any(|(f, _)| f == name) {
                let names: Vec<&str> = FIGURES.iter().map(|(f, _)| *f).collect();
                bail!("unknown figure `{name}` (one of {})", names.join(", "));
            }
        }
        Ok(Args { quick, only, out })
    }

    /// Whether `figure` is to run.
    pub fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

/// What every figure gets: the command line, the bench's cgroup with its checks and
/// anomalies ([`Bench`], shared with `cargo xtask bench`), and the tree builder's path.
pub struct Ctx {
    pub args: Args,
    pub bench: Bench,
    /// `target/release/corral-testtree`, which builds the escaping trees.
    pub testtree: PathBuf,
}

impl Ctx {
    /// The bench's cgroup.
    pub fn root(&self) -> &BenchRoot {
        self.bench.root()
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // `cargo test --all-targets` runs bench targets without arguments: the peers bench is
    // no test (it needs root and minutes), so it says so and succeeds.
    if std::env::args().len() == 1 {
        eprintln!("peers: nothing to do without arguments; {USAGE}");
        return Ok(());
    }
    let args = Args::parse()?;
    let started = Instant::now();
    let date = SystemTime::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    corral_bench::install_interrupt_flag()?;
    corral_bench::build_cli()?;
    build_testtree()?;
    // The jobs go to a job registry of the bench's own, as in `cargo xtask bench` (set
    // before any thread starts).
    let registry_dir = std::env::temp_dir().join(format!("corral-peers-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&registry_dir)
            .with_context(|| format!("failed to create {}", registry_dir.display()))?;
    }
    std::env::set_var(corral::registry::RUNTIME_DIR_ENV, &registry_dir);
    let result = run_figures(args, started, date);
    let _ = std::fs::remove_dir_all(&registry_dir);
    result
}

fn run_figures(args: Args, started: Instant, date: SystemTime) -> Result<()> {
    let mount = Mount::find()?;
    let machine = Machine::describe(&mount);
    for (k, v) in &machine.facts {
        eprintln!("{k:>22}: {v}");
    }
    let root = BenchRoot::create(&mount)?;
    let root_path = root.path.clone();
    eprintln!("peers: working under {}", root_path.display());
    let mut ctx = Ctx {
        args,
        bench: Bench::new(root),
        testtree: corral_bench::workspace_root().join("target/release/corral-testtree"),
    };
    let mut sections = Vec::new();
    let mut failed = None;
    for (name, figure) in FIGURES {
        if !ctx.args.wants(name) {
            continue;
        }
        let t = Instant::now();
        match figure(&mut ctx) {
            Ok(section) => sections.push(section),
            Err(e) => {
                failed = Some(e.context(format!("figure `{name}` failed")));
                break;
            }
        }
        eprintln!(
            "peers: figure `{name}` took {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let Ctx { args, bench, .. } = ctx;
    let (root, anomalies, strays_reaped) = bench.finish();
    let closed = root.close();
    let mut anomalies: Vec<String> = anomalies
        .into_iter()
        .map(|(a, n)| if n > 1 { format!("{a} ({n} times)") } else { a })
        .collect();
    if root_path.exists() {
        anomalies.push(format!(
            "{} still exists after cleanup",
            root_path.display()
        ));
    }
    if let Some(e) = failed {
        return Err(e);
    }
    closed?;
    sections.push(footer(
        &args,
        &machine,
        &anomalies,
        strays_reaped,
        started,
        date,
    ));
    let out = args.out.join("peers.md");
    std::fs::write(&out, sections.join("\n"))
        .with_context(|| format!("failed to write {}", out.display()))?;
    eprintln!(
        "peers: wrote {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if !anomalies.is_empty() {
        bail!(
            "{} anomalies (listed in {}): {anomalies:?}",
            anomalies.len(),
            out.display()
        );
    }
    Ok(())
}

/// When, where and how long: the facts a reader needs to trust the tables above.
fn footer(
    args: &Args,
    machine: &Machine,
    anomalies: &[String],
    strays_reaped: usize,
    started: Instant,
    date: SystemTime,
) -> String {
    let mut s = String::from("### How the peer figures were measured\n\n");
    s += &format!(
        "Run {}{}, wall time {:.0} s, load average at the end {}.\n\n",
        corral_bench::report::utc(date),
        if args.quick { " with `--quick`" } else { "" },
        started.elapsed().as_secs_f64(),
        corral_bench::load_average()
    );
    for (k, v) in &machine.facts {
        s += &format!("- {k}: {v}\n");
    }
    s += &format!("- exited orphans reaped between rounds: {strays_reaped}\n");
    if anomalies.is_empty() {
        s += "- anomalies: none\n";
    } else {
        s += "- **anomalies**:\n";
        for a in anomalies {
            s += &format!("  - {a}\n");
        }
    }
    s
}

/// Builds `target/release/corral-testtree` (a no-op when it is up to date).
fn build_testtree() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "corral-testkit"])
        .args(["--bin", "corral-testtree"])
        .current_dir(corral_bench::workspace_root())
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("cargo build --bin corral-testtree failed: {status}");
    }
    Ok(())
}

/// Writes `text` to `dir/name`.
pub fn write_out(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))
}
