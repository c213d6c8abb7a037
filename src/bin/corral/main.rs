//! The `corral` command line: clap -> Options -> Job -> exit status.

mod registry;
mod signals;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Exit status when corral itself fails (bad usage, setup error), as with `timeout`.
const EXIT_CORRAL_FAILED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Run a command as a job: when it ends, every process it started is gone."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run COMMAND as a job and return when it and every process it started is gone.
    Run(RunArgs),
    /// List running jobs (yours; root: everyone's) from the job registry.
    Ps(registry::PsArgs),
    /// Stop a running job from outside, with its stop sequence.
    Kill(registry::KillArgs),
    /// Clean up after jobs whose supervisor is gone.
    Sweep(registry::SweepArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Stop the job after DUR (e.g. 500ms, 10s, 1m30s); exit status 124.
    #[arg(long, value_name = "DUR", value_parser = corral::parse_duration)]
    timeout: Option<Duration>,
    /// On timeout, exit with COMMAND's own status instead of 124.
    #[arg(long)]
    preserve_status: bool,
    /// Time between the polite signal and SIGKILL; 0 kills at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = corral::parse_duration)]
    grace: Duration,
    /// The polite signal (name or number).
    #[arg(long, value_name = "SIG", default_value = "TERM")]
    signal: corral::Signal,
    /// What happens to processes still running when COMMAND exits: kill or wait.
    #[arg(long, value_name = "POLICY", default_value = "kill")]
    leftovers: corral::Leftovers,
    /// Containment mechanism: auto, cgroup or pgroup.
    #[arg(long, value_name = "MECH", default_value = "auto")]
    mechanism: corral::MechanismRequest,
    /// Directory on the cgroup2 mount under which job cgroups are created
    /// [env: CORRAL_CGROUP_PARENT].
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Limit the job's memory to BYTES (memory.max; K/M/G/T suffixes, or `max`); above it
    /// the OOM killer acts. Needs the cgroup mechanism and the memory controller.
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes)]
    memory_max: Option<corral::LimitValue>,
    /// Throttle the job's memory above BYTES (memory.high; K/M/G/T suffixes, or `max`).
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes)]
    memory_high: Option<corral::LimitValue>,
    /// At most N processes and threads in the job at once (pids.max, or `max`).
    #[arg(long, value_name = "N", value_parser = corral::LimitValue::parse_count)]
    pids_max: Option<corral::LimitValue>,
    /// CPU time per period for the whole job (cpu.max): QUOTA[/PERIOD] with units, e.g.
    /// 50ms/100ms (half a CPU), 2s/1s (two CPUs), or `max`; the period defaults to 100ms.
    #[arg(long, value_name = "QUOTA[/PERIOD]")]
    cpu_max: Option<corral::CpuMax>,
    /// The job's CPU share under contention, 1-10000 (cpu.weight; the default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000))]
    cpu_weight: Option<u16>,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Always print the summary line.
    #[arg(short, long)]
    verbose: bool,
    /// Run COMMAND as PID 1 of a new PID namespace: when it exits, or corral dies, the
    /// kernel kills every process left in it (needs root or unprivileged user namespaces).
    #[arg(long)]
    pid_namespace: bool,
    /// Testing knob: spawn with fork + cgroup.procs instead of clone3.
    #[arg(long, hide = true)]
    debug_no_clone3: bool,
    /// Testing knob: kill with the freezer loop instead of cgroup.kill.
    #[arg(long, hide = true)]
    debug_no_cgroup_kill: bool,
    /// Testing knob: no watchdog (the job outlives corral if corral is killed).
    #[arg(long, hide = true)]
    debug_no_watchdog: bool,
    /// Name the job in the job registry (`corral ps`, `corral kill NAME`): 1-64 characters
    /// of A-Z a-z 0-9 . _ - not starting with `.`.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The command and its arguments.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    // A pgroup job's supervisor (started by the library, never by hand): before clap, so
    // no option parsing, no output.
    #[cfg(target_os = "linux")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__supervise")
    {
        corral::__supervise();
    }
    // The watchdog of a host's cgroup jobs (started by the library), likewise.
    #[cfg(target_os = "linux")]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__watchdog")
    {
        corral::__watchdog();
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corral: error: {e:#}");
            ExitCode::from(exit_code_for(&e))
        }
    }
}

fn exit_code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<corral::Error>() {
        Some(corral::Error::NotFound { .. }) => 127,
        Some(corral::Error::NotExecutable { .. }) => 126,
        _ => EXIT_CORRAL_FAILED,
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Ok(ExitCode::SUCCESS);
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                anyhow::bail!(
                    "no subcommand given; usage: corral run [OPTIONS] -- COMMAND [ARGS...] (see `corral --help`)"
                );
            }
            // One line: clap's first line, without its own "error: " prefix.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid usage")
                .trim_start_matches("error: ");
            // "...not provided:" names what is missing on the next line.
            let missing = text.lines().nth(1).map(str::trim).unwrap_or("");
            let first = match first.strip_suffix(':') {
                Some(head) if !missing.is_empty() => format!("{head}: {missing}"),
                _ => first.to_string(),
            };
            let sub = std::env::args()
                .nth(1)
                .filter(|a| ["ps", "kill", "sweep"].contains(&a.as_str()))
                .unwrap_or_else(|| "run".into());
            anyhow::bail!("{first}; see `corral {sub} --help`");
        }
    };
    match cli.command {
        Cmd::Run(args) => run_job(args),
        Cmd::Ps(args) => registry::ps(args),
        Cmd::Kill(args) => registry::kill(args),
        Cmd::Sweep(args) => registry::sweep(args),
    }
}

fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("no COMMAND given; usage: corral run [OPTIONS] -- COMMAND [ARGS...]");
    };
    if let Some(path) = &args.report {
        check_report_path(path)?;
    }
    if let Some(name) = &args.name {
        corral::registry::validate_name(name).map_err(anyhow::Error::msg)?;
    }
    #[cfg(target_os = "linux")]
    reexec_in_systemd_scope(&args)?;
    // This user's stale jobs (a supervisor that was killed) are cleaned up first.
    for line in corral::registry::sweep_own() {
        if !args.quiet {
            eprintln!("corral: start-up sweep: {line}");
        }
    }
    let opts = corral::Options {
        grace: args.grace,
        signal: args.signal,
        leftovers: args.leftovers,
        mechanism: args.mechanism,
        cgroup_parent: args.cgroup_parent.clone(),
        timeout: args.timeout,
        preserve_status: args.preserve_status,
        // The CLI is the job's supervisor: its only children are the job's.
        supervisor: corral::Supervisor::InProcess,
        // The CLI is a process of its own: moving it for the job's limits disturbs no one.
        move_self_for_limits: true,
        limits: corral::Limits {
            memory_max: args.memory_max,
            memory_high: args.memory_high,
            pids_max: args.pids_max,
            cpu_max: args.cpu_max,
            cpu_weight: args.cpu_weight,
        },
        pid_namespace: args.pid_namespace,
        debug: corral::DebugKnobs {
            no_clone_into_cgroup: args.debug_no_clone3,
            no_cgroup_kill: args.debug_no_cgroup_kill,
            no_watchdog: args.debug_no_watchdog,
        },
        name: args.name.clone(),
        register: true,
        helper: None,
    };
    let mut signals =
        signals::Signals::install().context("failed to set up signal handling (signalfd)")?;
    let cmd = corral::JobCommand::new(program)
        .args(rest)
        .signal_mask(signals.original_mask());
    let mut job = corral::Job::spawn_command(&cmd, &opts)?;
    if args.verbose {
        eprintln!(
            "corral: job {} pid {} mechanism {}{}",
            job.id(),
            job.pid(),
            job.mechanism().name(),
            job.cgroup()
                .map(|p| format!(" cgroup {}", p.display()))
                .unwrap_or_default()
        );
    }
    let report = job.run(Some(&mut signals))?;
    if !args.quiet {
        match report.summary() {
            Some(line) => eprintln!("{line}"),
            None if args.verbose => eprintln!(
                "corral: job {}: {} exited with status {}",
                report.id,
                report.command.first().map(String::as_str).unwrap_or(""),
                report.exit_status
            ),
            None => {}
        }
    }
    if let Some(path) = &args.report {
        write_report(path, &report.to_json())?;
    }
    Ok(ExitCode::from(report.exit_status.clamp(0, 255) as u8))
}

/// On a systemd host where the cgroup corral runs in is not delegated to it, a cgroup job
/// needs a delegated scope: corral re-runs this very command line under `systemd-run
/// [--user] --scope -p Delegate=yes` (same process: `systemd-run --scope` execs it), and
/// the report then names the scope as obtained from systemd. Only when nothing else was
/// asked for: an explicit parent, `--mechanism pgroup`, or a second round skip it. If
/// `systemd-run` cannot be executed, corral goes on without a scope.
#[cfg(target_os = "linux")]
fn reexec_in_systemd_scope(args: &RunArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    if args.mechanism == corral::MechanismRequest::Pgroup
        || args.cgroup_parent.is_some()
        || std::env::var_os("CORRAL_CGROUP_PARENT").is_some_and(|v| !v.is_empty())
    {
        return Ok(());
    }
    let Some(scope) = corral::__systemd_scope_command() else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("cannot find corral's own executable")?;
    let mut cmd = std::process::Command::new(&scope[0]);
    cmd.args(&scope[1..])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(corral::__SCOPE_ENV, "1");
    let err = cmd.exec();
    if args.verbose {
        eprintln!(
            "corral: could not run {} ({err}); going on without a delegated scope",
            scope[0].to_string_lossy()
        );
    }
    Ok(())
}

/// Fails early (before anything runs) when the report could not be written.
fn check_report_path(path: &Path) -> anyhow::Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "report directory {} does not exist; create it or pick another --report path",
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!(
            "--report {} is a directory; give a file path",
            path.display()
        );
    }
    if rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_err() {
        anyhow::bail!(
            "report directory {} is not writable; pick another --report path",
            dir.display()
        );
    }
    Ok(())
}

/// Writes the report atomically: a temporary file beside it, then rename.
fn write_report(path: &Path, json: &str) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}").context("failed to write the report to stdout")?;
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result =
        std::fs::write(&tmp, format!("{json}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("failed to write the report to {}", path.display()));
    }
    Ok(())
}
