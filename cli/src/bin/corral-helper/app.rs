//! The helper's subcommands; the flow is in `main.rs`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::job_args::{self, exit_code_for, JobArgs, KillArgs, EXIT_FAILED};
use crate::policy::Account;
use crate::privilege::Identity;
use crate::{beneath, policy, privilege, signals};

/// How long a `corral-helper kill` waits, beyond the grace, for the job to be over.
const KILL_MARGIN: Duration = Duration::from_secs(15);

#[derive(Parser)]
#[command(
    name = "corral-helper",
    version,
    about = "Run a command as a contained job for an unprivileged caller, as an administrator's \
             policy allows (a setuid-root helper; see docs/security.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run COMMAND as a job, as you, in the cgroup the policy gives you.
    Run(Box<RunArgs>),
    /// List your running helper jobs.
    Ps(PsArgs),
    /// Stop one of your helper jobs, with its stop sequence.
    Kill(KillArgs),
    /// Show the policy file and the rule that applies to you.
    Check,
}

#[derive(Args)]
struct RunArgs {
    /// Limits are at most the policy's maxima, which also apply when a limit is omitted.
    #[command(flatten)]
    job: JobArgs,
    /// A cgroup under the one the policy gives you (relative to it, or absolute inside
    /// it); it must exist.
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Run COMMAND as this account instead of you, where the policy's `run_as` allows it.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// The command and its arguments.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    command: Vec<OsString>,
}

#[derive(Args)]
struct PsArgs {
    /// Print JSON (an array of jobs) instead of a table.
    #[arg(long)]
    json: bool,
}

type Env = Vec<(OsString, OsString)>;

pub fn main() -> ExitCode {
    // A caller who closed stdin, stdout or stderr would have the helper's first files
    // opened there, and its output written into them: /dev/null takes their place (glibc
    // does so too for a setuid program; not under sudo).
    if let Err(e) = open_standard_fds() {
        crate::job_args::stderr_line(&format!("corral-helper: error: {e}"));
        return ExitCode::from(EXIT_FAILED);
    }
    // A caller may start us with SIGCHLD ignored (that survives exec): the kernel would
    // then reap our children itself and every wait would fail with ECHILD, so the exit
    // status would be lost.
    // SAFETY: sets a signal's disposition to its default; no handler is involved.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    // First of all: nothing the caller put in the environment steers the privileged part
    // (the library reads CORRAL_*, XDG_RUNTIME_DIR; others read RUST_LOG and the like).
    let env = take_environment();
    match run(env) {
        Ok(code) => code,
        Err(e) => {
            // A caller's file-size limit too small for this line makes the write fail,
            // rather than the helper die of SIGXFSZ with its status lost.
            // SAFETY: sets a signal's disposition to "ignore"; no handler is involved.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            crate::job_args::stderr_line(&format!("corral-helper: error: {e:#}"));
            ExitCode::from(exit_code_for(&e))
        }
    }
}

/// Opens /dev/null on whichever of descriptors 0, 1 and 2 is closed.
fn open_standard_fds() -> std::io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD on a descriptor number only asks whether it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // The lowest free number: this one.
            let null = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty())?;
            std::mem::forget(null);
        }
    }
    Ok(())
}

/// Takes every variable out of the process's environment and returns them. Called first,
/// while the process has one thread.
fn take_environment() -> Env {
    let vars: Env = std::env::vars_os().collect();
    for (k, _) in &vars {
        std::env::remove_var(k);
    }
    vars
}

/// Variables that change how programs are loaded and linked: not passed to COMMAND.
fn alters_loading(name: &OsString) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("LD_")
        || [
            "GLIBC_TUNABLES",
            "GCONV_PATH",
            "GETCONF_DIR",
            "HOSTALIASES",
            "LOCPATH",
            "MALLOC_TRACE",
            "NLSPATH",
            "RESOLV_HOST_CONF",
            "RES_OPTIONS",
            "NIS_PATH",
        ]
        .contains(&name.as_ref())
}

fn run(env: Env) -> anyhow::Result<ExitCode> {
    let caller_uid = privilege::caller_uid(&env)?;
    // Usage first: `--help` works before the helper is installed.
    let cli = parse_cli()?;
    privilege::become_root()?;
    let caller_limits = privilege::raise_own_limits()?;
    let caller = policy::lookup_account_by_uid(caller_uid).map_err(anyhow::Error::msg)?;
    match cli.command {
        Cmd::Run(args) => run_job(*args, caller, env, caller_limits),
        Cmd::Ps(args) => ps(args, &caller),
        Cmd::Kill(args) => kill(args, &caller),
        Cmd::Check => check(&caller),
    }
}

fn parse_cli() -> anyhow::Result<Cli> {
    match Cli::try_parse() {
        Ok(c) => Ok(c),
        Err(e) => {
            let sub = std::env::args()
                .nth(1)
                .filter(|a| ["ps", "kill", "check"].contains(&a.as_str()))
                .unwrap_or_else(|| "run".into());
            match job_args::usage_error(e, "corral-helper", &sub) {
                Some(line) => bail!(line),
                None => std::process::exit(0),
            }
        }
    }
}

fn load_policy() -> anyhow::Result<policy::Policy> {
    let exe =
        std::fs::read_link("/proc/self/exe").context("cannot find the helper's own executable")?;
    let path = policy::policy_path_for(&exe).map_err(anyhow::Error::msg)?;
    policy::load(&path).map_err(anyhow::Error::msg)
}

fn describe(a: &Account) -> String {
    format!("{} (uid {})", a.name, a.uid)
}

fn run_job(
    args: RunArgs,
    caller: Account,
    env: Env,
    caller_limits: Vec<corral::ResourceLimit>,
) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("no COMMAND given; usage: corral-helper run [OPTIONS] -- COMMAND [ARGS...]");
    };
    let policy = load_policy()?;
    let rule = policy.rule_for(&caller).ok_or_else(|| {
        anyhow!(
            "{} may not use corral-helper: no rule of {} names them or their groups; an \
             administrator must add them",
            describe(&caller),
            policy.path.display()
        )
    })?;
    let target = match args.user.as_deref() {
        None => caller.clone(),
        Some(user) => match user.strip_prefix('#') {
            Some(uid) => {
                let uid = uid
                    .parse()
                    .map_err(|_| anyhow!("--user {user}: not a uid; give a name or #uid"))?;
                policy::lookup_account_by_uid(uid)
            }
            None => policy::lookup_account_by_name(user),
        }
        .map_err(|e| anyhow!("--user {user}: {e}"))?,
    };
    rule.may_run_as(&caller, &target)
        .map_err(anyhow::Error::msg)?;
    // Checked now, before anything is made; used by the supervisor.
    args.job.forward_signals().map_err(anyhow::Error::msg)?;
    let requested = args.job.limits();
    let limits = rule.apply_limits(&requested).map_err(anyhow::Error::msg)?;
    if let Some(name) = &args.job.name {
        corral::registry::validate_name(name)?;
    }
    let me = Identity::of(&caller);
    match &args.job.report_to() {
        // The caller's own descriptor: looked at (and kept from COMMAND) in this process;
        // `as_user` checks in a child of its own.
        Some(to @ job_args::ReportTo::Fd(_)) => {
            job_args::check_report(to).map_err(anyhow::Error::msg)?
        }
        Some(to) => {
            privilege::as_user(&me, || job_args::check_report(to))?.map_err(anyhow::Error::msg)?
        }
        None => {}
    }
    let place = Place::make(rule, args.cgroup_parent.as_deref(), &caller)?;

    // The job's environment: the caller's, less what alters dynamic loading.
    let (removed, mut kept): (Env, Env) = env.into_iter().partition(|(k, _)| alters_loading(k));
    // Who COMMAND runs as, where the environment says someone else (`--user`, or `sudo`
    // having set root's): USER, LOGNAME and HOME follow the account.
    let user_var = kept
        .iter()
        .find(|(k, _)| k == "USER")
        .map(|(_, v)| v.clone());
    if user_var.as_deref() != Some(std::ffi::OsStr::new(&target.name)) {
        kept.retain(|(k, _)| !["USER", "LOGNAME", "HOME"].iter().any(|n| k == n));
        kept.push(("USER".into(), target.name.clone().into()));
        kept.push(("LOGNAME".into(), target.name.clone().into()));
        kept.push(("HOME".into(), target.home.clone().into()));
    }
    let removed: Vec<String> = removed
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();

    // Signals that end the supervisor must not end the guardian before it cleans up: it
    // blocks them (a terminal's Ctrl+C reaches both; the supervisor stops the job).
    let old_mask = block_stop_signals()?;
    let (from_sup, to_guardian) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let guardian = std::process::id();
    // SAFETY: the process has a single thread, so the child is a complete copy of it.
    match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            place.remove();
            Err(e).context("fork")
        }
        0 => {
            drop(from_sup);
            restore_mask(&old_mask);
            let job = JobSpec {
                args: &args,
                program,
                rest,
                caller: &caller,
                target: &target,
                limits,
                caller_limits,
                env: kept,
                removed,
                policy: &policy.path,
                rule: rule.index,
                guardian,
            };
            // The supervisor keeps the place's directory (to hand it to the caller) and
            // nothing else of the guardian's.
            let Place { path, dir, .. } = place;
            let code = match supervise(job, &path, &dir, to_guardian) {
                Ok(code) => code,
                Err(e) => {
                    crate::job_args::stderr_line(&format!("corral-helper: error: {e:#}"));
                    exit_code_for(&e)
                }
            };
            let _ = std::io::stdout().flush();
            std::process::exit(i32::from(code));
        }
        pid => {
            drop(to_guardian);
            Ok(guard(pid, from_sup, place))
        }
    }
}

/// The job's place: `helper-<uid>-<pid>` under the parent the policy (and `--cgroup-parent`)
/// chose, made and held by the guardian.
struct Place {
    /// Absolute path (messages, and the supervisor's cgroup parent).
    path: PathBuf,
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    kill: Option<OwnedFd>,
    events: File,
}

impl Place {
    fn make(rule: &policy::Rule, given: Option<&Path>, caller: &Account) -> anyhow::Result<Place> {
        let mount = corral::__cgroup2_mount().ok_or_else(|| {
            anyhow!("no cgroup2 filesystem is mounted; corral-helper needs one (an administrator's job)")
        })?;
        let rule_rel = if rule.cgroup_parent.is_absolute() {
            beneath::relative_to(&mount, &rule.cgroup_parent)
                .map_err(|e| anyhow!("{}: cgroup_parent {e}", rule.location()))?
        } else {
            rule.cgroup_parent.clone()
        };
        let rule_path = mount.join(&rule_rel);
        let mount_fd = rustix::fs::open(
            &mount,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open {}", mount.display()))?;
        let rule_fd = open_beneath_or_self(&mount_fd, &rule_rel).with_context(|| {
            format!(
                "the policy's cgroup parent {} cannot be opened; an administrator must create it",
                rule_path.display()
            )
        })?;
        let (parent, parent_path) = match given {
            None => (rule_fd, rule_path),
            Some(given) => {
                let rel = beneath::relative_to(&rule_path, given)
                    .map_err(|e| anyhow!("--cgroup-parent {e}"))?;
                let fd = open_beneath_or_self(&rule_fd, &rel).map_err(|e| {
                    anyhow!(
                        "--cgroup-parent {}: cannot open {} beneath {} ({e}); give an existing \
                         cgroup under it, with no symlinks",
                        given.display(),
                        rel.display(),
                        rule_path.display()
                    )
                })?;
                (fd, rule_path.join(rel))
            }
        };
        let base = format!("helper-{}-{}", caller.uid, std::process::id());
        let mut n = 1;
        let name = loop {
            let name = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            match rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => break name,
                Err(rustix::io::Errno::EXIST) if n < 100 => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("create the job's cgroup in {}", parent_path.display())
                    })
                }
            }
        };
        let path = parent_path.join(&name);
        let opened = (|| -> anyhow::Result<(OwnedFd, Option<OwnedFd>, File)> {
            let dir = rustix::fs::openat(
                &parent,
                name.as_str(),
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            // Room for the job's leaf and nothing else: the supervisor owns this directory
            // later (to remove the leaf), and must not make cgroups of its own here.
            for file in ["cgroup.max.descendants", "cgroup.max.depth"] {
                let fd =
                    rustix::fs::openat(&dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                        .with_context(|| format!("open {}", path.join(file).display()))?;
                rustix::io::write(&fd, b"1")
                    .with_context(|| format!("write 1 to {}", path.join(file).display()))?;
            }
            let kill = match rustix::fs::openat(
                &dir,
                "cgroup.kill",
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(e).context("open cgroup.kill"),
            };
            let events = File::from(rustix::fs::openat(
                &dir,
                "cgroup.events",
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
            Ok((dir, kill, events))
        })();
        match opened {
            Ok((dir, kill, events)) => Ok(Place {
                path,
                parent,
                name,
                dir,
                kill,
                events,
            }),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR);
                Err(e)
            }
        }
    }

    fn populated(&self) -> bool {
        let mut text = String::new();
        let mut f = &self.events;
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(0));
        // Unreadable: take it as populated, so the guardian goes on killing.
        if f.read_to_string(&mut text).is_err() {
            return true;
        }
        text.lines().any(|l| l == "populated 1")
    }

    /// Kills everything in the place, waits until it is empty, and removes it.
    fn remove(self) -> Vec<String> {
        let mut problems = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.populated() {
            match &self.kill {
                Some(fd) => {
                    let _ = rustix::io::write(fd, b"1");
                }
                None => {
                    problems.push("no cgroup.kill on this kernel; processes may be left".into());
                    break;
                }
            }
            if Instant::now() >= deadline {
                problems.push(format!(
                    "{} still has processes after 10 s",
                    self.path.display()
                ));
                break;
            }
            let mut fds = [rustix::event::PollFd::new(
                &self.events,
                rustix::event::PollFlags::PRI,
            )];
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let ts = rustix::event::Timespec::try_from(left).unwrap_or_default();
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
        // The leaf, if the supervisor did not remove it, then the place.
        if let Ok(dir) = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            if let Ok(entries) = rustix::fs::Dir::read_from(&dir) {
                for e in entries.flatten() {
                    if e.file_type() == rustix::fs::FileType::Directory {
                        let n = e.file_name();
                        if n.to_bytes() != b"." && n.to_bytes() != b".." {
                            rmdir_retry(&self.dir, n, &mut problems, &self.path);
                        }
                    }
                }
            }
        }
        rmdir_retry(&self.parent, self.name.as_str(), &mut problems, &self.path);
        problems
    }
}

/// `rel` beneath `dir` ([`beneath::open_dir_beneath`]), or `dir` itself for an empty `rel`.
fn open_beneath_or_self(dir: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return Ok(rustix::fs::openat(
            dir,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    beneath::open_dir_beneath(dir.as_fd(), rel)
}

/// rmdir that retries EBUSY briefly (exited tasks may still be leaving the cgroup).
fn rmdir_retry<P: rustix::path::Arg + Copy>(
    dir: &OwnedFd,
    name: P,
    problems: &mut Vec<String>,
    place: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => return,
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                problems.push(format!(
                    "could not remove a cgroup in {}: {e}",
                    place.display()
                ));
                return;
            }
        }
    }
}

fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset manipulation on local sets.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            bail!("pthread_sigmask failed");
        }
        Ok(old)
    }
}

fn restore_mask(old: &libc::sigset_t) {
    // SAFETY: sets the mask to one obtained from pthread_sigmask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// The guardian: waits for the supervisor, then kills and removes what is left of the job.
/// Reads from the supervisor only what it sent while it was still root (the job's id), and
/// nothing after.
fn guard(supervisor: libc::pid_t, from_sup: OwnedFd, place: Place) -> ExitCode {
    // The supervisor closes its end before it gives up root.
    let mut id = Vec::new();
    let _ = File::from(from_sup).take(256).read_to_end(&mut id);
    let mut status = 0;
    let mut wait_error = None;
    loop {
        // SAFETY: waits for our own child.
        if unsafe { libc::waitpid(supervisor, &mut status, 0) } >= 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            wait_error = Some(e);
            break;
        }
    }
    let killed_by = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let mut problems = place.remove();
    let id = String::from_utf8_lossy(&id).into_owned();
    if !id.is_empty() && corral::registry::validate_name(&id).is_ok() {
        match corral::registry::own_dir() {
            Ok(dir) => {
                let tmp = format!(".{id}.json.tmp-{supervisor}");
                for file in [format!("{id}.json"), format!("{id}.sock"), tmp] {
                    match std::fs::remove_file(dir.join(&file)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            problems.push(format!("remove {}: {e}", dir.join(file).display()))
                        }
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for p in &problems {
        crate::job_args::stderr_line(&format!("corral-helper: warning: {p}"));
    }
    if let Some(e) = wait_error {
        crate::job_args::stderr_line(&format!(
            "corral-helper: error: cannot learn how the job's supervisor ended (waitpid: {e}); \
             the job was killed and its cgroup removed"
        ));
        return ExitCode::from(EXIT_FAILED);
    }
    match killed_by {
        Some(sig) => {
            crate::job_args::stderr_line(&format!(
                "corral-helper: the job's supervisor was killed by signal {sig}; the job was killed and its cgroup removed"
            ));
            ExitCode::from((128 + sig).clamp(0, 255) as u8)
        }
        None if libc::WIFEXITED(status) => ExitCode::from(libc::WEXITSTATUS(status) as u8),
        None => ExitCode::from(EXIT_FAILED),
    }
}

struct JobSpec<'a> {
    args: &'a RunArgs,
    program: &'a OsString,
    rest: &'a [OsString],
    caller: &'a Account,
    target: &'a Account,
    limits: corral::Limits,
    /// The caller's resource limits, COMMAND's (see `privilege::raise_own_limits`).
    caller_limits: Vec<corral::ResourceLimit>,
    env: Env,
    removed: Vec<String>,
    policy: &'a Path,
    rule: usize,
    guardian: u32,
}

/// The supervisor: spawns COMMAND while still root, gives root up, then runs the job.
fn supervise(
    job: JobSpec<'_>,
    place: &Path,
    place_dir: &OwnedFd,
    to_guardian: OwnedFd,
) -> anyhow::Result<u8> {
    let args = job.args;
    let forward = args.job.forward_signals().map_err(anyhow::Error::msg)?;
    let opts = corral::Options {
        grace: args.job.grace,
        signal: args.job.signal,
        leftovers: args.job.leftovers,
        mechanism: corral::MechanismRequest::Cgroup,
        cgroup_parent: Some(place.to_path_buf()),
        timeout: args.job.timeout(),
        preserve_status: args.job.preserve_status,
        supervisor: corral::Supervisor::InProcess,
        move_self_for_limits: false,
        limits: job.limits,
        pid_namespace: args.job.pid_namespace,
        name: args.job.name.clone(),
        register: true,
        helper: Some(corral::HelperJob {
            caller: job.caller.uid,
            guardian: job.guardian,
        }),
        debug: corral::DebugKnobs::default(),
        forward_signals: forward,
    };
    let mut signals = signals::Signals::install(&forward)
        .context("failed to set up signal handling (signalfd)")?;
    let cmd = corral::JobCommand::new(job.program)
        .args(job.rest)
        .env_replace(job.env.clone())
        .signal_mask(signals.original_mask())
        .resource_limits(job.caller_limits.iter().copied())
        .credentials(corral::Credentials {
            uid: job.target.uid,
            gid: job.target.gid,
            groups: job.target.groups.iter().map(|g| g.gid).collect(),
        });
    let mut spawned = corral::Job::spawn_command(&cmd, &opts)?;
    // The supervisor, unprivileged from here on, removes the leaf when the job is over: it
    // needs the place's directory (not its files) to be its own.
    rustix::fs::fchown(
        place_dir,
        Some(rustix::process::Uid::from_raw(job.caller.uid)),
        None,
    )
    .context("hand the job's cgroup directory to the caller")?;
    let _ = rustix::io::write(&to_guardian, spawned.id().as_bytes());
    drop(to_guardian);
    if let Err(e) = Identity::split(job.target, job.caller).assume() {
        // Still partly privileged: end the job rather than supervise it so.
        let _ = spawned.kill();
        return Err(e.context("could not give up root after the spawn; the job was killed"));
    }
    if args.job.verbose {
        crate::job_args::stderr_line(&format!(
            "corral-helper: job {} pid {} as {} in cgroup {}",
            spawned.id(),
            spawned.pid(),
            describe(job.target),
            spawned
                .cgroup()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    let report = spawned.run(Some(&mut signals))?;
    job_args::print_summary(&report, &args.job, "corral-helper");
    if let Some(to) = &args.job.report_to() {
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json())?;
        value["helper"] = serde_json::json!({
            "caller": { "uid": job.caller.uid, "name": job.caller.name },
            "user": { "uid": job.target.uid, "name": job.target.name },
            "policy": job.policy,
            "rule": job.rule,
            "environment_removed": job.removed,
        });
        // As the caller, under the caller's file-size limit: the supervisor has given up
        // root by now.
        privilege::restore_caller_file_size(&job.caller_limits);
        job_args::write_report_after_job(to, &value.to_string(), "corral-helper");
    }
    Ok(report.exit_status.clamp(0, 255) as u8)
}

/// The caller's own helper jobs: records written by root (the helper's supervisor) for
/// this caller. A record in a user's own registry directory never counts, whatever it says.
fn own_jobs(caller: &Account) -> Vec<corral::registry::Entry> {
    corral::registry::scan()
        .entries
        .into_iter()
        .filter(|e| e.record.uid == 0 && e.record.on_behalf_of == Some(caller.uid))
        .collect()
}

fn ps(args: PsArgs, caller: &Account) -> anyhow::Result<ExitCode> {
    let jobs = own_jobs(caller);
    if args.json {
        let list: Vec<serde_json::Value> = jobs
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.record.id,
                    "name": e.record.name,
                    "supervisor_pid": e.record.supervisor.pid,
                    "stale": !e.live,
                    "cgroup": e.record.cgroup,
                    "started": e.record.started,
                    "command": e.record.command,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ID\tNAME\tPID\tSTATE\tCOMMAND");
    for e in &jobs {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            e.record.id,
            e.record.name.as_deref().unwrap_or("-"),
            e.record.supervisor.pid,
            if e.live { "running" } else { "stale" },
            e.record.command.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn kill(args: KillArgs, caller: &Account) -> anyhow::Result<ExitCode> {
    let mut hits: Vec<_> = own_jobs(caller)
        .into_iter()
        .filter(|e| e.record.id == args.job || e.record.name.as_deref() == Some(&args.job))
        .collect();
    hits.sort_by_key(|e| !e.live);
    // Another user's job is not named: it is simply not one of the caller's.
    let entry = match hits.len() {
        0 => bail!(
            "no job `{}` of yours; `corral-helper ps` lists your jobs",
            args.job
        ),
        1 => hits.remove(0),
        _ if hits[0].live && !hits[1].live => hits.remove(0),
        n => bail!(
            "{n} of your jobs are named `{}`; give the id instead",
            args.job
        ),
    };
    let outcome = corral::registry::kill(&entry, args.signal, args.grace, KILL_MARGIN)?;
    let label = entry.record.id.clone();
    match outcome {
        corral::registry::KillOutcome::Stopped => {
            crate::job_args::stderr_line(&format!("corral-helper: job {label} stopped"))
        }
        corral::registry::KillOutcome::AlreadyOver => {
            crate::job_args::stderr_line(&format!("corral-helper: job {label} was already over"))
        }
        corral::registry::KillOutcome::StaleCleaned(lines) => {
            crate::job_args::stderr_line(&format!(
                "corral-helper: job {label}: its supervisor is gone; stopped here: {}",
                lines.join("; ")
            ))
        }
        corral::registry::KillOutcome::NotOverYet => bail!(
            "job {label} took the stop request but is not over after {:?}",
            args.grace + KILL_MARGIN
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(caller: &Account) -> anyhow::Result<ExitCode> {
    let policy = load_policy()?;
    println!("policy: {} (trusted: root's alone)", policy.path.display());
    match policy.rule_for(caller) {
        None => println!(
            "{}: no rule applies; corral-helper run is refused",
            describe(caller)
        ),
        Some(rule) => {
            println!("{}: rule {}", describe(caller), rule.index);
            println!("  cgroup parent: {}", rule.cgroup_parent.display());
            let run_as: Vec<String> = rule.run_as.iter().map(ToString::to_string).collect();
            println!(
                "  --user may name: {}",
                if run_as.is_empty() {
                    "(only yourself)".to_string()
                } else {
                    run_as.join(", ")
                }
            );
            for (_, file, value) in rule.max.files() {
                println!("  {file}: at most {value}, and {value} when not asked for");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
