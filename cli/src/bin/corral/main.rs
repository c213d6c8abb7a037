//! The `corral` command line: clap -> Options -> Job -> exit status.

#[path = "../shared/job_args.rs"]
mod job_args;
#[cfg(target_os = "linux")]
mod registry;
#[cfg(target_os = "linux")]
mod signals;
mod timeout;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use job_args::JobArgs;

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
    Run(Box<RunArgs>),
    /// List running jobs (yours; root: everyone's) from the job registry.
    #[cfg(target_os = "linux")]
    Ps(registry::PsArgs),
    /// Stop a running job from outside, with its stop sequence.
    #[cfg(target_os = "linux")]
    Kill(job_args::KillArgs),
    /// Clean up after jobs whose supervisor is gone.
    #[cfg(target_os = "linux")]
    Sweep(registry::SweepArgs),
    /// coreutils `timeout`, option for option, as a corral job: `corral timeout [OPTION]
    /// DURATION COMMAND [ARG]...` (see `corral timeout --help`). Also how corral behaves
    /// when called as `timeout`.
    #[command(disable_help_flag = true)]
    Timeout {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Print a completion script for SHELL: `corral completions bash >
    /// /usr/share/bash-completion/completions/corral`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page of corral, or of one of its commands, in roff: `corral man |
    /// man -l -`, `corral man run > corral-run.1`.
    Man {
        /// The command whose page to print (run, ps, kill, sweep, timeout, completions).
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

/// The shells `corral completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Containment mechanism: auto, cgroup or pgroup.
    #[arg(long, value_name = "MECH", default_value = "auto")]
    mechanism: corral::MechanismRequest,
    /// Directory on the cgroup2 mount under which job cgroups are created
    /// [env: CORRAL_CGROUP_PARENT].
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Apply each limit where the host can, and run without (saying so on stderr and in the
    /// report's `limits_skipped`) where it cannot, instead of failing: for a fleet of mixed
    /// machines.
    #[arg(long)]
    limits_best_effort: bool,
    /// `corral timeout -v`: say each signal sent upon timeout, as `timeout -v` does.
    #[arg(long, hide = true)]
    diagnose_timeout_signals: bool,
    /// Testing knob: spawn with fork + cgroup.procs instead of clone3.
    #[arg(long, hide = true)]
    debug_no_clone3: bool,
    /// Testing knob: kill with the freezer loop instead of cgroup.kill.
    #[arg(long, hide = true)]
    debug_no_cgroup_kill: bool,
    /// Testing knob: no watchdog (the job outlives corral if corral is killed).
    #[arg(long, hide = true)]
    debug_no_watchdog: bool,
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
    // SIGCHLD ignored by whoever started us survives exec; the kernel would reap the job's
    // processes itself and its exit status would be lost.
    // SAFETY: sets a signal's disposition to its default; no handler is involved.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    match run() {
        Ok(code) => code,
        Err(e) => {
            crate::job_args::stderr_line(&format!("corral: error: {e:#}"));
            ExitCode::from(job_args::exit_code_for(&e))
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    // `corral timeout ...`, or corral called as `timeout`: translated to `corral run ...`.
    let as_timeout = argv.first().is_some_and(|a| timeout::called_as_timeout(a));
    if as_timeout || argv.get(1).is_some_and(|a| a == "timeout") {
        let rest = argv[if as_timeout { 1 } else { 2 }..].to_vec();
        match timeout::parse(&rest) {
            Ok(timeout::Timeout::Help) => {
                print!("{}", timeout::help());
                return Ok(ExitCode::SUCCESS);
            }
            Ok(timeout::Timeout::Version) => {
                println!("timeout (corral) {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            Ok(timeout::Timeout::Run(run)) => {
                argv.truncate(1);
                argv.extend(run);
            }
            Err(line) => anyhow::bail!("{line}; see `corral timeout --help`"),
        }
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let sub = argv
                .get(1)
                .map(|a| a.to_string_lossy().into_owned())
                .filter(|a| ["ps", "kill", "sweep", "completions", "man"].contains(&a.as_str()))
                .unwrap_or_else(|| "run".into());
            match job_args::usage_error(e, "corral", &sub) {
                Some(line) => anyhow::bail!(line),
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    };
    match cli.command {
        Cmd::Run(args) => run_job(*args),
        #[cfg(target_os = "linux")]
        Cmd::Ps(args) => registry::ps(args),
        #[cfg(target_os = "linux")]
        Cmd::Kill(args) => registry::kill(args),
        #[cfg(target_os = "linux")]
        Cmd::Sweep(args) => registry::sweep(args),
        Cmd::Timeout { .. } => unreachable!("translated to `run` above"),
        Cmd::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut script);
            print_generated(&script).context("write the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { command } => man(command.as_deref()),
    }
}

/// `corral man [COMMAND]`: the page clap_mangen renders from the clap definition, for
/// corral itself (corral(1)) or one command (corral-run(1), ...).
fn man(command: Option<&str>) -> anyhow::Result<ExitCode> {
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!(
                    "no command `{name}` to print a page for; choose one of {}",
                    names.join(", ")
                );
            };
            // clap takes `'static` names without its `string` feature, which would cost
            // every run memory; this process prints one page and exits.
            let title: &'static str = format!("corral-{name}").leak();
            let bin_name: &'static str = format!("corral {name}").leak();
            sub.clone()
                .name(title)
                .bin_name(bin_name)
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .context("render the manual page")?;
    print_generated(&text).context("write the manual page")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a generated page or script to stdout. A reader that went away (`corral man |
/// head`) ends the output quietly, as it would end `cat`'s.
fn print_generated(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `corral timeout -v`: each signal the timeout's stop sent, as `timeout -v` says it.
fn diagnose_timeout_signals(report: &corral::Report) {
    let Some(stop) = report.stop.as_ref().filter(|_| report.timed_out) else {
        return;
    };
    let command = report.command.first().map(String::as_str).unwrap_or("");
    for step in &stop.steps {
        if let (true, Some(sig)) = (
            matches!(step.step, corral::StepKind::Signal | corral::StepKind::Kill),
            step.signal,
        ) {
            crate::job_args::stderr_line(&format!(
                "corral timeout: sending signal {} to command '{command}'",
                sig.signal().name()
            ));
        }
    }
}

/// `corral run` on Windows and macOS: the same options where the OS has them (no
/// registry, no PID namespace, no cgroup parent), the OS's own mechanism (a Job Object; a
/// process group), and the same report and exit status.
#[cfg(not(target_os = "linux"))]
fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("no COMMAND given; usage: corral run [OPTIONS] -- COMMAND [ARGS...]");
    };
    if let Some(to) = &args.job.report_to() {
        job_args::check_report(to).map_err(anyhow::Error::msg)?;
    }
    if args.cgroup_parent.is_some()
        || args.job.pid_namespace
        || args.job.name.is_some()
        || !args.job.forward.is_empty()
    {
        anyhow::bail!(
            "--cgroup-parent, --pid-namespace, --name and --forward exist on Linux only; drop them"
        );
    }
    let opts = corral::Options {
        grace: args.job.grace,
        signal: args.job.signal,
        leftovers: args.job.leftovers,
        mechanism: args.mechanism,
        timeout: args.job.timeout(),
        preserve_status: args.job.preserve_status,
        limits: args.job.limits(),
        register: false,
        ..Default::default()
    };
    let (mut job, skipped) = spawn_best_effort(&args, opts, |o| {
        let mut cmd = std::process::Command::new(program);
        cmd.args(rest);
        corral::Job::spawn(&mut cmd, o)
    })?;
    if args.job.verbose {
        crate::job_args::stderr_line(&format!(
            "corral: job {} pid {} mechanism {}",
            job.id(),
            job.pid(),
            job.mechanism().name()
        ));
    }
    let report = job.wait()?;
    job_args::print_summary(&report, &args.job, "corral");
    if args.diagnose_timeout_signals {
        diagnose_timeout_signals(&report);
    }
    if let Some(to) = &args.job.report_to() {
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json())?;
        value["limits_skipped"] = serde_json::Value::Object(skipped);
        job_args::write_report_after_job(to, &value.to_string(), "corral");
    }
    Ok(job_args::finish(&report, &args.job))
}

#[cfg(target_os = "linux")]
fn run_job(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("no COMMAND given; usage: corral run [OPTIONS] -- COMMAND [ARGS...]");
    };
    if let Some(to) = &args.job.report_to() {
        job_args::check_report(to).map_err(anyhow::Error::msg)?;
    }
    if let Some(name) = &args.job.name {
        corral::registry::validate_name(name)?;
    }
    let forward = args.job.forward_signals().map_err(anyhow::Error::msg)?;
    #[cfg(target_os = "linux")]
    reexec_in_systemd_scope(&args)?;
    // This user's stale jobs (a supervisor that was killed) are cleaned up first: said on
    // stderr only with -v (it is not this job's news), and always in the report.
    let swept = corral::registry::sweep_own();
    if args.job.verbose {
        for line in &swept {
            crate::job_args::stderr_line(&format!("corral: start-up sweep: {line}"));
        }
    }
    let opts = corral::Options {
        grace: args.job.grace,
        signal: args.job.signal,
        leftovers: args.job.leftovers,
        mechanism: args.mechanism,
        cgroup_parent: args.cgroup_parent.clone(),
        timeout: args.job.timeout(),
        preserve_status: args.job.preserve_status,
        // The CLI is the job's supervisor: its only children are the job's.
        supervisor: corral::Supervisor::InProcess,
        // The CLI is a process of its own: moving it for the job's limits disturbs no one.
        move_self_for_limits: true,
        limits: args.job.limits(),
        pid_namespace: args.job.pid_namespace,
        debug: corral::DebugKnobs {
            no_clone_into_cgroup: args.debug_no_clone3,
            no_cgroup_kill: args.debug_no_cgroup_kill,
            no_watchdog: args.debug_no_watchdog,
        },
        name: args.job.name.clone(),
        register: true,
        helper: None,
        forward_signals: forward,
    };
    let mut signals = signals::Signals::install(&forward)
        .context("failed to set up signal handling (signalfd)")?;
    let mut cmd = corral::JobCommand::new(program)
        .args(rest)
        .signal_mask(signals.original_mask());
    if std::env::var_os(corral::__SCOPE_ENV).is_some() {
        // The scope was this corral's: a corral nested in the job runs inside its caller's
        // cgroup, and must not take the scope as one it obtained (or re-run in another).
        cmd = cmd.env_replace(
            std::env::vars_os()
                .filter(|(k, _)| k != corral::__SCOPE_ENV)
                .collect(),
        );
    }
    let (mut job, skipped) =
        spawn_best_effort(&args, opts, |o| corral::Job::spawn_command(&cmd, o))?;
    if args.job.verbose {
        crate::job_args::stderr_line(&format!(
            "corral: job {} pid {} mechanism {}{}",
            job.id(),
            job.pid(),
            job.mechanism().name(),
            job.cgroup()
                .map(|p| format!(" cgroup {}", p.display()))
                .unwrap_or_default()
        ));
    }
    let report = job.run(Some(&mut signals))?;
    drop(job);
    // The job is over: so is the watchdog's work. It exits while we write the summary and
    // the report, and before we do, so a corral nested in another corral's job leaves
    // nothing behind in that job.
    let watchdog = corral::__release_watchdog();
    job_args::print_summary(&report, &args.job, "corral");
    if args.diagnose_timeout_signals {
        diagnose_timeout_signals(&report);
    }
    if let Some(to) = &args.job.report_to() {
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json())?;
        value["startup_sweep"] = serde_json::json!(swept);
        value["limits_skipped"] = serde_json::Value::Object(skipped);
        job_args::write_report_after_job(to, &value.to_string(), "corral");
    }
    watchdog.wait(std::time::Duration::from_secs(2));
    Ok(job_args::finish(&report, &args.job))
}

/// Spawns with `opts`; under `--limits-best-effort`, a limit the host cannot enforce is
/// dropped, said on stderr, and the spawn tried again (a failed spawn leaves nothing
/// behind). Returns the job and the limits skipped, with why (the report's
/// `limits_skipped`).
fn spawn_best_effort(
    args: &RunArgs,
    mut opts: corral::Options,
    spawn: impl Fn(&corral::Options) -> corral::Result<corral::Job>,
) -> corral::Result<(corral::Job, serde_json::Map<String, serde_json::Value>)> {
    let mut skipped = serde_json::Map::new();
    loop {
        match spawn(&opts) {
            Err(corral::Error::LimitUnavailable { file, reason, .. })
                if args.limits_best_effort && opts.limits.drop_file(&file) =>
            {
                if args.job.summary() != job_args::Summary::Never {
                    crate::job_args::stderr_line(&format!(
                        "corral: limit {file} not applied (--limits-best-effort): {reason}"
                    ));
                }
                skipped.insert(file, serde_json::Value::String(reason));
            }
            other => return other.map(|job| (job, skipped)),
        }
    }
}

/// On a systemd host where the cgroup corral runs in is not delegated to it, a cgroup job
/// needs a delegated scope: corral re-runs this very command line under `systemd-run
/// [--user] --scope -p Delegate=yes -p BindsTo=<the unit it runs in>` (same process:
/// `systemd-run --scope` execs it), so the job still stops with that unit, and the report
/// names the scope as obtained from systemd and the job as degraded (outside the unit's
/// limits and accounting). Where no such binding is possible the job stays in the unit. Only when nothing else was
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
    let Some((scope, bound_to)) = corral::__systemd_scope_command() else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("cannot find corral's own executable")?;
    let mut cmd = std::process::Command::new(&scope[0]);
    cmd.args(&scope[1..])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(corral::__SCOPE_ENV, bound_to);
    let err = cmd.exec();
    if args.job.verbose {
        crate::job_args::stderr_line(&format!(
            "corral: could not run {} ({err}); going on without a delegated scope",
            scope[0].to_string_lossy()
        ));
    }
    Ok(())
}
