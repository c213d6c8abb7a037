//! What `corral run` and `corral-helper run` share: the job's options, the one-line usage
//! error, and the report file (checked before the job, written atomically after it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Exit status when corral itself fails (bad usage, a refused request, a setup error), as
/// with `timeout`.
pub const EXIT_FAILED: u8 = 125;

/// The exit status for an error: 127 and 126 when COMMAND cannot be found or executed, as
/// a shell says; [`EXIT_FAILED`] otherwise.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<corral::Error>() {
        Some(corral::Error::NotFound { .. }) => 127,
        Some(corral::Error::NotExecutable { .. }) => 126,
        _ => EXIT_FAILED,
    }
}

/// `kill JOB`: stop a job from outside with its stop sequence.
#[derive(Args)]
pub struct KillArgs {
    /// The job: its id or its name (`ps` lists them).
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Time between the polite signal and SIGKILL; 0 kills at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = corral::parse_duration)]
    pub grace: Duration,
    /// The polite signal (name or number).
    #[arg(long, value_name = "SIG", default_value = "TERM")]
    pub signal: corral::Signal,
}

/// The options of a job that both `run` subcommands take.
#[derive(Args)]
pub struct JobArgs {
    /// Stop the job after DUR (e.g. 500ms, 10s, 1m30s); exit status 124.
    #[arg(long, value_name = "DUR", value_parser = corral::parse_duration)]
    pub timeout: Option<Duration>,
    /// On timeout, exit with COMMAND's own status instead of 124.
    #[arg(long)]
    pub preserve_status: bool,
    /// Time between the polite signal and SIGKILL; 0 kills at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = corral::parse_duration)]
    pub grace: Duration,
    /// The polite signal (name or number).
    #[arg(long, value_name = "SIG", default_value = "TERM")]
    pub signal: corral::Signal,
    /// What happens to processes still running when COMMAND exits: kill or wait.
    #[arg(long, value_name = "POLICY", default_value = "kill")]
    pub leftovers: corral::Leftovers,
    /// Limit the job's memory to BYTES (memory.max; K/M/G/T suffixes, or `max`); above it
    /// the OOM killer acts. Needs the cgroup mechanism and the memory controller.
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes)]
    pub memory_max: Option<corral::LimitValue>,
    /// Throttle the job's memory above BYTES (memory.high; K/M/G/T suffixes, or `max`).
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes)]
    pub memory_high: Option<corral::LimitValue>,
    /// At most N processes and threads in the job at once (pids.max, or `max`).
    #[arg(long, value_name = "N", value_parser = corral::LimitValue::parse_count)]
    pub pids_max: Option<corral::LimitValue>,
    /// CPU time per period for the whole job (cpu.max): QUOTA[/PERIOD] with units, e.g.
    /// 50ms/100ms (half a CPU), 2s/1s (two CPUs), or `max`; the period defaults to 100ms.
    #[arg(long, value_name = "QUOTA[/PERIOD]")]
    pub cpu_max: Option<corral::CpuMax>,
    /// The job's CPU share under contention, 1-10000 (cpu.weight; the default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub cpu_weight: Option<u16>,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Always print the summary line.
    #[arg(short, long)]
    pub verbose: bool,
    /// Run COMMAND as PID 1 of a new PID namespace: when it exits, or corral dies, the
    /// kernel kills every process left in it (needs root or unprivileged user namespaces).
    #[arg(long)]
    pub pid_namespace: bool,
    /// Name the job in the job registry (`ps`, `kill NAME`): 1-64 characters of
    /// A-Z a-z 0-9 . _ - not starting with `.`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

impl JobArgs {
    /// The limits asked for.
    pub fn limits(&self) -> corral::Limits {
        corral::Limits {
            memory_max: self.memory_max,
            memory_high: self.memory_high,
            pids_max: self.pids_max,
            cpu_max: self.cpu_max,
            cpu_weight: self.cpu_weight,
        }
    }
}

/// The summary line after the job, as `-q`/`-v` ask.
pub fn print_summary(report: &corral::Report, args: &JobArgs, program: &str) {
    if args.quiet {
        return;
    }
    match report.summary() {
        Some(line) => eprintln!("{line}"),
        None if args.verbose => eprintln!(
            "{program}: job {}: {} exited with status {}",
            report.id,
            report.command.first().map(String::as_str).unwrap_or(""),
            report.exit_status
        ),
        None => {}
    }
}

/// A clap error as one line, or `None` for `--help`/`--version` (printed here; exit 0).
/// `sub` names the subcommand whose `--help` the line points to.
pub fn usage_error(e: clap::Error, program: &str, sub: &str) -> Option<String> {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return None;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return Some(format!(
            "no subcommand given; usage: {program} run [OPTIONS] -- COMMAND [ARGS...] (see `{program} --help`)"
        ));
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
    Some(format!("{first}; see `{program} {sub} --help`"))
}

/// Fails early (before anything runs) when the report could not be written there, by
/// whoever runs this.
pub fn check_report_path(path: &Path) -> Result<(), String> {
    if path == Path::new("-") {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "report directory {} does not exist; create it or pick another --report path",
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!(
            "--report {} is a directory; give a file path",
            path.display()
        ));
    }
    if !writable(dir) {
        return Err(format!(
            "report directory {} is not writable; pick another --report path",
            dir.display()
        ));
    }
    if path.exists() && !writable(path) {
        return Err(format!(
            "--report {} is not writable; pick another --report path",
            path.display()
        ));
    }
    Ok(())
}

/// Whether whoever runs this may write `path` (`access(2)`: the real ids, which for the
/// setuid helper's check are the caller's). Elsewhere than Linux the write itself says.
fn writable(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    return rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok();
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        true
    }
}

/// Writes the report atomically: a temporary file beside it, then rename.
pub fn write_report(path: &Path, json: &str) -> anyhow::Result<()> {
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
