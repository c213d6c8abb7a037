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
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = corral::parse_duration, allow_hyphen_values = true)]
    pub grace: Duration,
    /// The polite signal (name or number).
    #[arg(
        long,
        value_name = "SIG",
        default_value = "TERM",
        allow_hyphen_values = true
    )]
    pub signal: corral::Signal,
}

/// The options of a job that both `run` subcommands take.
#[derive(Args)]
pub struct JobArgs {
    /// Stop the job after DUR (e.g. 500ms, 10s, 1m30s, 1.5e2); exit status 124 (137 if
    /// COMMAND had to be killed). 0 means no timeout, as with coreutils `timeout`.
    #[arg(long, value_name = "DUR", value_parser = corral::parse_duration, allow_hyphen_values = true)]
    timeout: Option<Duration>,
    /// On timeout, exit with COMMAND's own status instead of 124.
    #[arg(long)]
    pub preserve_status: bool,
    /// Time between the polite signal and SIGKILL; 0 kills at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = corral::parse_duration, allow_hyphen_values = true)]
    pub grace: Duration,
    /// The polite signal (name or number).
    #[arg(
        long,
        value_name = "SIG",
        default_value = "TERM",
        allow_hyphen_values = true
    )]
    pub signal: corral::Signal,
    /// What happens to processes still running when COMMAND exits: kill, wait, or fail
    /// (kill them, and exit 120 if COMMAND itself exited 0).
    #[arg(long, value_name = "POLICY", default_value = "kill")]
    pub leftovers: corral::Leftovers,
    /// Limit the job's memory to BYTES (memory.max; K/M/G/T suffixes, or `max`); above it
    /// the OOM killer acts. Needs the cgroup mechanism and the memory controller.
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes, allow_hyphen_values = true)]
    pub memory_max: Option<corral::LimitValue>,
    /// Throttle the job's memory above BYTES (memory.high; K/M/G/T suffixes, or `max`).
    #[arg(long, value_name = "BYTES", value_parser = corral::LimitValue::parse_bytes, allow_hyphen_values = true)]
    pub memory_high: Option<corral::LimitValue>,
    /// At most N processes and threads in the job at once (pids.max, or `max`).
    #[arg(long, value_name = "N", value_parser = corral::LimitValue::parse_count, allow_hyphen_values = true)]
    pub pids_max: Option<corral::LimitValue>,
    /// CPU time per period for the whole job (cpu.max): QUOTA[/PERIOD] with units, e.g.
    /// 50ms/100ms (half a CPU), 2s/1s (two CPUs), or `max`; the period defaults to 100ms.
    #[arg(long, value_name = "QUOTA[/PERIOD]", allow_hyphen_values = true)]
    pub cpu_max: Option<corral::CpuMax>,
    /// The job's CPU share under contention, 1-10000 (cpu.weight; the default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000), allow_hyphen_values = true)]
    pub cpu_weight: Option<u16>,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the JSON report to descriptor N, opened for writing by the caller (`3>FILE`,
    /// a pipe; 2 for stderr), once, after the job; COMMAND does not inherit N (above 2).
    #[arg(long, value_name = "N", conflicts_with = "report", value_parser = parse_fd, allow_hyphen_values = true)]
    pub report_fd: Option<i32>,
    /// Print nothing but errors (`--summary never`).
    #[arg(short, long, conflicts_with_all = ["verbose", "summary"])]
    pub quiet: bool,
    /// Always print the summary line (`--summary always`), and what the start-up sweep
    /// cleaned up.
    #[arg(short, long, conflicts_with = "summary")]
    pub verbose: bool,
    /// When to print the summary line: `notable` (a timeout, a signal, leftovers, a
    /// fallback; the default), `leftovers` (only when COMMAND left processes behind or some
    /// survived: for a test runner's output), `always`, `never`.
    #[arg(long, value_name = "WHEN")]
    pub summary: Option<Summary>,
    /// Pass these signals (comma-separated names or numbers, e.g. HUP,USR1,WINCH) on to
    /// COMMAND instead of stopping the job when corral receives them.
    #[arg(
        long,
        value_name = "SIG,...",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub forward: Vec<corral::Signal>,
    /// Exit with 128+N when COMMAND is killed by signal N, instead of dying of the same
    /// signal (which corral does by default, after the report, as coreutils `timeout` does:
    /// so a shell loop stops on Ctrl+C and make says "Segmentation fault").
    #[arg(long)]
    pub no_reraise: bool,
    /// Run COMMAND as PID 1 of a new PID namespace: when it exits, or corral dies, the
    /// kernel kills every process left in it (needs root or unprivileged user namespaces).
    #[arg(long)]
    pub pid_namespace: bool,
    /// Name the job in the job registry (`ps`, `kill NAME`): 1-64 characters of
    /// A-Z a-z 0-9 . _ - not starting with `.`.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// `--report-fd N`: a descriptor number.
fn parse_fd(text: &str) -> Result<i32, String> {
    text.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        format!(
            "`{}` is not a descriptor number (0, 1, 2, ...)",
            text.escape_debug()
        )
    })
}

/// When the summary line is printed (`--summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Summary {
    /// When something notable happened.
    Notable,
    /// Only when COMMAND left processes behind, or some survived.
    Leftovers,
    /// Always.
    Always,
    /// Never (errors only).
    Never,
}

/// Where the report goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportTo {
    /// `--report FILE` (see [`corral::safe_file::write`]).
    File(PathBuf),
    /// `--report -`.
    Stdout,
    /// `--report-fd N`.
    Fd(i32),
}

impl JobArgs {
    /// The signals to pass on (`--forward`); those no process can catch are refused.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn forward_signals(&self) -> Result<corral::SignalSet, String> {
        use corral::Signal;
        for sig in &self.forward {
            if [Signal::KILL, Signal::STOP].contains(sig) || sig.as_raw() == 17 {
                return Err(format!(
                    "--forward {sig}: corral cannot catch it to pass it on (KILL and STOP \
                     reach no handler, and CHLD is corral's own); drop it"
                ));
            }
        }
        Ok(self.forward.iter().copied().collect())
    }

    /// When the summary line is printed, from `--summary`, `-q` and `-v`.
    pub fn summary(&self) -> Summary {
        match (self.summary, self.quiet, self.verbose) {
            (Some(s), _, _) => s,
            (None, true, _) => Summary::Never,
            (None, _, true) => Summary::Always,
            (None, false, false) => Summary::Notable,
        }
    }

    /// The timeout asked for; `--timeout 0` is none.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.filter(|t| !t.is_zero())
    }

    /// Where the report goes, if anywhere.
    pub fn report_to(&self) -> Option<ReportTo> {
        match (&self.report, self.report_fd) {
            (_, Some(fd)) => Some(ReportTo::Fd(fd)),
            (Some(p), None) if p == Path::new("-") => Some(ReportTo::Stdout),
            (Some(p), None) => Some(ReportTo::File(p.clone())),
            (None, None) => None,
        }
    }

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
    let when = args.summary();
    let left = !report.leftovers.is_empty() || !report.survivors.is_empty();
    if when == Summary::Never || (when == Summary::Leftovers && !left) {
        return;
    }
    match report.summary() {
        Some(line) => stderr_line(&line),
        None if when == Summary::Always => stderr_line(&format!(
            "{program}: job {}: {} exited with status {}",
            report.id,
            report.command.first().map(String::as_str).unwrap_or(""),
            report.exit_status
        )),
        None => {}
    }
}

/// One line on stderr in a single `write`, so that jobs sharing a stderr never interleave
/// within a line; a stderr that is closed or a pipe nobody reads (EPIPE, EBADF) costs the
/// line, never a panic (`eprintln!` panics) nor the job's exit status.
pub fn stderr_line(line: &str) {
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The status corral ends with: COMMAND's death by signal N re-raised (corral dies of N,
/// with core dumps off), unless `--no-reraise`, a timeout, or a status that is not the
/// signal's (`corral kill`'s, an OOM kill's are); else the report's exit status. The
/// report and the summary line are out before this. (`corral` only: `corral-helper`'s
/// guardian could not tell a re-raise from its supervisor being killed, so it exits 128+N.)
#[allow(dead_code)]
pub fn finish(report: &corral::Report, args: &JobArgs) -> std::process::ExitCode {
    let signal = report.exit.as_ref().and_then(|e| e.signal);
    // A SIGKILL of corral's own stop ladder is not re-raised: corral dying of SIGKILL would
    // read as corral itself killed (to systemd, a shell); it exits 137, as `timeout` does
    // after its own kill.
    let own_kill = report.stop.as_ref().is_some_and(|s| {
        s.steps
            .iter()
            .any(|step| step.step == corral::StepKind::Kill)
    });
    #[cfg(unix)]
    let ours = |s: i32| s == libc::SIGKILL && own_kill;
    #[cfg(unix)]
    if let Some(sig) = signal.filter(|s| {
        !args.no_reraise && !report.timed_out && report.exit_status == 128 + s && !ours(*s)
    }) {
        die_of(sig);
    }
    let _ = (signal, args, own_kill);
    std::process::ExitCode::from(report.exit_status.clamp(0, 255) as u8)
}

/// Dies of `sig` if it kills: its default action, unblocked, raised; core dumps off first
/// (a SIGSEGV of COMMAND's is not corral's to dump). Returns if it did not kill (a signal
/// whose default is to be ignored, or one that stops).
#[cfg(unix)]
#[allow(dead_code)]
fn die_of(sig: i32) {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: setrlimit lowers this process's own core limit; signal, sigprocmask and raise
    // act on this process alone (raise is kill(getpid(), sig), never another process).
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
            return;
        }
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Writes the report after the job ran: whatever goes wrong, COMMAND's status stands, and
/// the failure is one line on stderr (`program: error: ...`).
pub fn write_report_after_job(to: &ReportTo, json: &str, program: &str) {
    let written = match to {
        ReportTo::File(path) => write_report(path, json),
        ReportTo::Stdout => write_report(Path::new("-"), json),
        ReportTo::Fd(fd) => write_report_fd(*fd, json),
    };
    if let Err(e) = written {
        stderr_line(&format!("{program}: error: {e:#}"));
    }
}

/// Fails early (before anything runs) when the report could not go to `to`; for a
/// descriptor above 2, also keeps COMMAND from inheriting it (close-on-exec), so nothing
/// of the job's mixes with the report and a reader of a pipe sees its end when corral ends.
pub fn check_report(to: &ReportTo) -> Result<(), String> {
    match to {
        ReportTo::File(path) => check_report_path(path),
        ReportTo::Stdout => Ok(()),
        ReportTo::Fd(fd) => check_report_fd(*fd),
    }
}

#[cfg(unix)]
fn check_report_fd(fd: i32) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor number only asks about it (or sets its close-on-exec
    // flag); nothing is closed or taken over.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(format!(
            "--report-fd {fd} is not an open descriptor; open it for writing ({fd}>FILE) or \
             pick another"
        ));
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(format!(
            "--report-fd {fd} is open for reading only; open it for writing ({fd}>FILE)"
        ));
    }
    // SAFETY: as above.
    if fd > 2 && unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(format!(
            "--report-fd {fd}: cannot keep it from COMMAND ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_report_fd(fd: i32) -> Result<(), String> {
    Err(format!(
        "--report-fd {fd}: descriptors are for Unix; give --report FILE on this system"
    ))
}

/// Writes the report to descriptor `fd` in one `write` where the kernel takes it whole (a
/// pipe up to its buffer, a file), the rest after.
#[cfg(unix)]
fn write_report_fd(fd: i32, json: &str) -> anyhow::Result<()> {
    use std::os::fd::FromRawFd;
    let text = format!("{json}\n");
    // SAFETY: checked open before the job; borrowed for the write, never closed here
    // (ManuallyDrop).
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    (&*file)
        .write_all(text.as_bytes())
        .with_context(|| format!("failed to write the report to descriptor {fd}"))
}

#[cfg(not(unix))]
fn write_report_fd(fd: i32, _json: &str) -> anyhow::Result<()> {
    anyhow::bail!("--report-fd {fd}: descriptors are for Unix")
}

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
    // An invalid value names the ones that would do ("  [possible values: a, b]").
    let possible = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("[possible values:"))
        .map(|l| format!(" {l}"))
        .unwrap_or_default();
    Some(format!("{first}{possible}; see `{program} {sub} --help`"))
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
    // A pipe or terminal is written in place: its directory (`/dev`) need not be writable.
    #[cfg(target_os = "linux")]
    if let Ok(corral::safe_file::Target::InPlace { .. }) = corral::safe_file::classify(path) {
        if !writable(path) {
            return Err(format!(
                "--report {} is not writable; pick another --report path",
                path.display()
            ));
        }
        return refuse_special_dir(path, dir);
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
    #[cfg(target_os = "linux")]
    {
        classify_report(path)?;
        refuse_special_dir(path, dir)?;
    }
    Ok(())
}

/// A report is never written into a cgroup filesystem (a file there is a kernel
/// interface: writing it could change a cgroup) nor into the job registry (a file there
/// could be taken for a record or a socket): refused before the job runs.
#[cfg(target_os = "linux")]
fn refuse_special_dir(path: &Path, dir: &Path) -> Result<(), String> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
    if let Ok(st) = rustix::fs::statfs(dir) {
        #[allow(clippy::unnecessary_cast)]
        let kind = st.f_type as i64;
        if kind == CGROUP2_SUPER_MAGIC || kind == CGROUP_SUPER_MAGIC {
            return Err(format!(
                "--report {} is on a cgroup filesystem; give a path elsewhere",
                path.display()
            ));
        }
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(dir) = canonical(dir) else {
        return Ok(());
    };
    let mut registries: Vec<PathBuf> = vec![PathBuf::from("/run/corral")];
    if let Some(d) = std::env::var_os("CORRAL_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        registries.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        registries.push(Path::new(&d).join("corral"));
    }
    registries.push(PathBuf::from(format!(
        "/tmp/corral-{}",
        rustix::process::geteuid().as_raw()
    )));
    let in_user_registry = dir.file_name().is_some_and(|n| n == "corral")
        && dir
            .parent()
            .and_then(Path::parent)
            .is_some_and(|p| p == Path::new("/run/user"));
    if in_user_registry
        || registries
            .iter()
            .filter_map(|r| canonical(r))
            .any(|r| dir.starts_with(&r))
    {
        return Err(format!(
            "--report {} is in corral's job registry; give a path elsewhere",
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

/// Writes the report: to stdout for `-`; else as [`corral::safe_file::write`] says (Linux), or
/// through a temporary file beside it and a rename (elsewhere).
pub fn write_report(path: &Path, json: &str) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}").context("failed to write the report to stdout")?;
        return Ok(());
    }
    let text = format!("{json}\n");
    #[cfg(target_os = "linux")]
    let result = corral::safe_file::write(path, text.as_bytes());
    #[cfg(not(target_os = "linux"))]
    let result = {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    };
    result.with_context(|| format!("failed to write the report to {}", path.display()))
}

/// What is at the report path (Linux, [`corral::safe_file::classify`]), or the one-line
/// message for why no report can go there.
#[cfg(target_os = "linux")]
fn classify_report(path: &Path) -> Result<corral::safe_file::Target, String> {
    use corral::safe_file::Refused;
    let shown = path.display();
    corral::safe_file::classify(path).map_err(|e| match e {
        Refused::Link => format!(
            "--report {shown} is a symbolic link, and corral writes no report through a link \
             (what it points to may not be yours); give the file's own path"
        ),
        Refused::NotRegular(what) => {
            format!("--report {shown} is {what}; give a regular file, a pipe or a terminal")
        }
        e => format!("--report {shown} cannot be examined ({e})"),
    })
}
