//! `corral-host`: a program embedding the corral library, for the embedding tests
//! (`tests/embedding/host.rs`). It checks that running jobs changes nothing about the
//! process that runs them.
//!
//! ```text
//! corral-host pgroup|cgroup [--cgroup-parent DIR] [--in-process]
//! ```
//!
//! `--in-process` asks for `Supervisor::InProcess`, which does have process-wide effects:
//! the tests use it to see that the checks catch them.
//!
//! ```text
//! corral-host wait-job [--pgroup] [--jobs-before N] --cgroup-parent DIR -- COMMAND [ARGS...]
//! ```
//!
//! runs COMMAND as one cgroup job (with `--pgroup`: a pgroup job under a supervisor
//! process), prints `cgroup <path>` (empty for pgroup) once it is spawned, and waits for
//! it; the watchdog tests (`tests/containment/watchdog.rs`) kill the host meanwhile. With
//! `--jobs-before N`, N cgroup jobs of `true` run and end first (from other threads), so
//! the watchdog has seen many jobs come and go.
//!
//! ```text
//! corral-host spawn-command [--cgroup-parent DIR | --in-process] [--pid-namespace]
//!     [--no-watchdog] [--ignore-sigchld] [--credentials UID:GID:GROUP,...] -- COMMAND [ARGS...]
//! ```
//!
//! runs COMMAND through `Job::spawn_command` from the main thread: a cgroup job under DIR,
//! or an in-process pgroup one (`Supervisor::InProcess`, which claims every child of the
//! host: a fresh process is the point). It prints `pid <pid>` and `cgroup <path>` once
//! spawned, then `credentials <uid>:<gid>:<groups>` (or `none`) and `exit_status <n>` from
//! the report; `error <message>` if the spawn fails. The credentials tests
//! (`tests/embedding/credentials.rs`) use it.
//!
//! It installs a SIGINT handler and starts a child of its own (`sh -c 'exit 42'`), records
//! its process-wide state (child subreaper flag, signal dispositions 1..=31, blocked
//! signals, thread count), runs a handful of jobs that end every way the API offers (wait
//! with leftovers, stop after a timed wait, kill, wait_with_output, try_wait, drop), and
//! then checks that the state is as before, that its own child's exit status is still its
//! to collect, and that no child is left. Each check prints `check <name>: ok` or
//! `FAIL <name>: <what>` on stdout; the exit status is 0 only if all passed.
//!
//! A fresh process is the point: in a test binary, other tests' children and threads would
//! blur every one of these checks.

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeSet;
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, ExitCode, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use corral::{Job, MechanismRequest, Options, Supervisor};

    /// How many times the host's SIGINT handler ran.
    static SIGINTS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_sigint(_: libc::c_int) {
        // An atomic add is async-signal-safe.
        SIGINTS.fetch_add(1, Ordering::SeqCst);
    }

    const DEADLINE: Duration = Duration::from_secs(30);

    pub fn main() -> ExitCode {
        let mut args = std::env::args().skip(1);
        let (mechanism, expected) = match args.next().as_deref() {
            Some("pgroup") => (MechanismRequest::Pgroup, corral::Mechanism::Pgroup),
            Some("cgroup") => (MechanismRequest::Cgroup, corral::Mechanism::Cgroup),
            Some("wait-job") => return wait_job(args.collect()),
            Some("spawn-command") => return spawn_command(args.collect()),
            _ => return usage(),
        };
        let mut cgroup_parent = None;
        let mut supervisor = Supervisor::Auto;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--cgroup-parent" => match args.next() {
                    Some(dir) => cgroup_parent = Some(PathBuf::from(dir)),
                    None => return usage(),
                },
                "--in-process" => supervisor = Supervisor::InProcess,
                _ => return usage(),
            }
        }
        let opts = Options {
            mechanism,
            cgroup_parent,
            grace: Duration::from_secs(5),
            supervisor,
            ..Default::default()
        };
        let mut host = Host::default();

        install_sigint_handler();
        // The host's own child, exited (a zombie) before any job starts: its status is the
        // host's to collect afterwards.
        let mut own_child = Command::new("/bin/sh")
            .args(["-c", "exit 42"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh -c 'exit 42'");
        let own_pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&own_child),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open on our own unreaped child");
        host.check(
            "own child exits before the jobs",
            wait_readable(&own_pidfd, Instant::now() + DEADLINE),
            "sh -c 'exit 42' did not exit",
        );
        let before = State::capture();

        run_jobs(&opts, expected, &mut host, &before);

        let after = State::capture();
        host.compare(
            "(a) no child subreaper after the jobs",
            &before.subreaper,
            &after.subreaper,
        );
        host.check(
            "(a) no child subreaper before the jobs",
            before.subreaper.is_none(),
            &format!("{:?}", before.subreaper),
        );
        let status = own_child.wait();
        host.check(
            "(b) the host's own child still gives its status 42 to the host",
            matches!(&status, Ok(s) if s.code() == Some(42)),
            &format!("{status:?}"),
        );
        let n = SIGINTS.load(Ordering::SeqCst);
        raise_sigint();
        host.check(
            "(c) the host's SIGINT handler runs after the jobs",
            wait_for(|| SIGINTS.load(Ordering::SeqCst) > n),
            "the handler did not run",
        );
        host.compare("(d) thread count", &before.threads, &after.threads);
        host.compare(
            "(e) signal dispositions 1..=31",
            &before.actions,
            &after.actions,
        );
        host.compare("(f) blocked signals", &before.blocked, &after.blocked);
        let children = children();
        host.check(
            "(g) no child of the host left",
            children.is_empty(),
            &format!("children: {children:?}"),
        );
        host.finish()
    }

    fn usage() -> ExitCode {
        eprintln!(
            "usage: corral-host pgroup|cgroup [--cgroup-parent DIR] [--in-process]\n       \
         corral-host wait-job [--pgroup] [--jobs-before N] --cgroup-parent DIR -- COMMAND [ARGS...]\n       \
         corral-host spawn-command [--cgroup-parent DIR | --in-process] [--pid-namespace] \
         [--no-watchdog] [--ignore-sigchld] [--credentials UID:GID:GROUP,...] -- COMMAND [ARGS...]"
        );
        ExitCode::from(2)
    }

    /// `wait-job --cgroup-parent DIR -- COMMAND...`: one cgroup job, waited for.
    fn wait_job(args: Vec<String>) -> ExitCode {
        let (mechanism, args) = match args.split_first() {
            Some((first, rest)) if first == "--pgroup" => (MechanismRequest::Pgroup, rest),
            _ => (MechanismRequest::Cgroup, args.as_slice()),
        };
        let (before, args) = match args {
            [flag, n, rest @ ..] if flag == "--jobs-before" => match n.parse::<usize>() {
                Ok(n) => (n, rest),
                Err(_) => return usage(),
            },
            _ => (0, args),
        };
        let [flag, parent, dashes, command @ ..] = args else {
            return usage();
        };
        if flag != "--cgroup-parent" || dashes != "--" || command.is_empty() {
            return usage();
        }
        let opts = Options {
            mechanism,
            cgroup_parent: Some(PathBuf::from(parent)),
            ..Default::default()
        };
        // From a thread of their own each: the host has more than one thread meanwhile.
        for _ in 0..before {
            let opts = opts.clone();
            let done = std::thread::spawn(move || {
                Job::spawn(&mut Command::new("true"), &opts).and_then(|mut j| j.wait())
            })
            .join();
            if !matches!(done, Ok(Ok(ref r)) if r.exit_status == 0) {
                eprintln!("corral-host: a job before failed: {done:?}");
                return ExitCode::FAILURE;
            }
        }
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..]).stdin(Stdio::null());
        let mut job = match Job::spawn(&mut cmd, &opts) {
            Ok(job) => job,
            Err(e) => {
                eprintln!("corral-host: spawn {command:?}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let cgroup = job.cgroup().map(|p| p.display().to_string());
        println!("cgroup {}", cgroup.unwrap_or_default());
        let _ = std::io::stdout().flush();
        match job.wait() {
            Ok(report) => {
                println!("on_supervisor_death {}", report.on_supervisor_death);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corral-host: wait: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// `spawn-command ... -- COMMAND...`: one job through `Job::spawn_command`, waited for.
    fn spawn_command(args: Vec<String>) -> ExitCode {
        let Some(dashes) = args.iter().position(|a| a == "--") else {
            return usage();
        };
        let (flags, command) = (&args[..dashes], &args[dashes + 1..]);
        if command.is_empty() {
            return usage();
        }
        let mut opts = Options {
            mechanism: MechanismRequest::Cgroup,
            grace: Duration::from_secs(5),
            ..Default::default()
        };
        let mut cmd = corral::JobCommand::new(&command[0]).args(&command[1..]);
        let mut flags = flags.iter();
        while let Some(flag) = flags.next() {
            match flag.as_str() {
                "--cgroup-parent" => match flags.next() {
                    Some(dir) => opts.cgroup_parent = Some(PathBuf::from(dir)),
                    None => return usage(),
                },
                "--in-process" => {
                    opts.mechanism = MechanismRequest::Pgroup;
                    opts.supervisor = Supervisor::InProcess;
                }
                "--pid-namespace" => opts.pid_namespace = true,
                "--no-watchdog" => opts.debug.no_watchdog = true,
                // SAFETY: sets a disposition; no handler. This process is the test's.
                "--ignore-sigchld" => unsafe {
                    libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                },
                "--credentials" => match flags.next().and_then(|c| parse_credentials(c)) {
                    Some(creds) => cmd = cmd.credentials(creds),
                    None => return usage(),
                },
                _ => return usage(),
            }
        }
        let mut job = match Job::spawn_command(&cmd, &opts) {
            Ok(job) => job,
            Err(e) => {
                println!("error {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("pid {}", job.pid());
        let cgroup = job.cgroup().map(|p| p.display().to_string());
        println!("cgroup {}", cgroup.unwrap_or_default());
        let _ = std::io::stdout().flush();
        match job.wait() {
            Ok(report) => {
                let creds = match &report.credentials {
                    Some(c) => {
                        let groups: Vec<String> = c.groups.iter().map(u32::to_string).collect();
                        format!("{}:{}:{}", c.uid, c.gid, groups.join(","))
                    }
                    None => "none".to_string(),
                };
                println!("credentials {creds}");
                println!("exit_status {}", report.exit_status);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corral-host: wait: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// `UID:GID:GROUP,...` (the groups may be empty).
    fn parse_credentials(text: &str) -> Option<corral::Credentials> {
        let mut parts = text.split(':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let groups = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|g| g.parse().ok())
                .collect::<Option<_>>()?,
        };
        parts
            .next()
            .is_none()
            .then_some(corral::Credentials { uid, gid, groups })
    }

    /// Runs jobs that end in each way the API offers, checking their reports, and checks the
    /// host's state while a job runs.
    fn run_jobs(opts: &Options, expected: corral::Mechanism, host: &mut Host, before: &State) {
        // wait: the main process exits, a leftover is stopped.
        let mut job = spawn(opts, &["sh", "-c", "sleep 1000 & exit 3"]);
        host.compare("job mechanism", &expected, &job.mechanism());
        let report = job.wait().expect("wait");
        host.check(
            "wait: status 3, one leftover stopped",
            report.exit_status == 3 && report.leftovers.len() == 1 && report.survivors.is_empty(),
            &format!("{report:#?}"),
        );

        // wait_timeout on a running job, the host's state while it runs, then stop.
        let mut job = spawn(opts, &["sleep", "1000"]);
        let waited = job
            .wait_timeout(Duration::from_millis(50))
            .expect("wait_timeout");
        host.check(
            "wait_timeout: still running",
            waited.is_none() && !job.members().expect("members").is_empty(),
            &format!("{waited:#?}"),
        );
        let during = State::capture();
        host.compare(
            "(a) no child subreaper while a job runs",
            &before.subreaper,
            &during.subreaper,
        );
        host.compare(
            "(e) signal dispositions while a job runs",
            &before.actions,
            &during.actions,
        );
        let n = SIGINTS.load(Ordering::SeqCst);
        raise_sigint();
        host.check(
            "(c) the host's SIGINT handler runs while a job runs",
            wait_for(|| SIGINTS.load(Ordering::SeqCst) > n),
            "the handler did not run",
        );
        let report = job.stop().expect("stop");
        host.check(
            "stop: the main process died of SIGTERM",
            report.exit_status == 128 + libc::SIGTERM && report.survivors.is_empty(),
            &format!("{report:#?}"),
        );

        // kill.
        let mut job = spawn(opts, &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
        let report = job.kill().expect("kill");
        host.check(
            "kill: everything killed",
            report.exit.and_then(|e| e.signal) == Some(libc::SIGKILL)
                && report.survivors.is_empty(),
            &format!("{report:#?}"),
        );

        // wait_with_output.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = Job::spawn(&mut cmd, opts)
            .expect("spawn")
            .wait_with_output()
            .expect("wait_with_output");
        host.check(
            "wait_with_output: stdout and stderr",
            output.stdout == b"out\n"
                && output.stderr == b"err\n"
                && output.report.exit_status == 0,
            &format!("{output:#?}"),
        );

        // try_wait until over.
        let mut job = spawn(opts, &["sh", "-c", "exit 5"]);
        let mut report = None;
        let polled = wait_for(|| {
            report = job.try_wait().expect("try_wait");
            report.is_some()
        });
        host.check(
            "try_wait: the report once over",
            polled && report.as_ref().is_some_and(|r| r.exit_status == 5),
            &format!("{report:#?}"),
        );

        // drop a running job.
        let job = spawn(opts, &["sh", "-c", "sleep 1000 & wait"]);
        let grown = wait_for(|| job.members().is_ok_and(|m| m.len() >= 2));
        host.check(
            "drop: the job's tree started",
            grown,
            "fewer than 2 members",
        );
        drop(job);
    }

    fn spawn(opts: &Options, argv: &[&str]) -> Job {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null());
        Job::spawn(&mut cmd, opts).unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"))
    }

    /// The outcome of the checks so far.
    #[derive(Default)]
    struct Host {
        failed: usize,
    }

    impl Host {
        fn check(&mut self, name: &str, ok: bool, detail: &str) {
            let mut out = std::io::stdout().lock();
            if ok {
                let _ = writeln!(out, "check {name}: ok");
            } else {
                self.failed += 1;
                let _ = writeln!(out, "FAIL {name}: {detail}");
            }
        }

        fn compare<T: PartialEq + std::fmt::Debug>(&mut self, name: &str, before: &T, after: &T) {
            self.check(
                name,
                before == after,
                &format!("before {before:?}, after {after:?}"),
            );
        }

        fn finish(self) -> ExitCode {
            if self.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }

    /// The process-wide state a library must leave alone.
    struct State {
        subreaper: Option<i32>,
        /// Per signal 1..=31: handler, flags, and the signals its mask blocks.
        actions: Vec<(i32, usize, i32, Vec<i32>)>,
        /// Signals blocked in this (the main) thread.
        blocked: Vec<i32>,
        threads: Option<u32>,
    }

    impl State {
        fn capture() -> State {
            let subreaper = rustix::process::child_subreaper()
                .expect("prctl(PR_GET_CHILD_SUBREAPER)")
                .map(|p| p.as_raw_nonzero().get());
            let actions = (1..=31)
                .map(|sig| {
                    // SAFETY: a zeroed sigaction is a valid out-parameter; a null `act` only
                    // queries the disposition.
                    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
                    let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
                    assert_eq!(rc, 0, "sigaction({sig}) query");
                    (sig, old.sa_sigaction, old.sa_flags, members(&old.sa_mask))
                })
                .collect();
            // SAFETY: as above; a null `set` only queries the mask.
            let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
            assert_eq!(rc, 0, "pthread_sigmask query");
            State {
                subreaper,
                actions,
                blocked: members(&mask),
                threads: threads(),
            }
        }
    }

    fn members(set: &libc::sigset_t) -> Vec<i32> {
        // SAFETY: `set` is an initialised sigset_t; sigismember only reads it.
        (1..=64)
            .filter(|&s| unsafe { libc::sigismember(set, s) } == 1)
            .collect()
    }

    fn install_sigint_handler() {
        // SAFETY: the handler only does an atomic add; the struct is fully initialised (zeroed,
        // then the fields set) before the call.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            let rc = libc::sigaction(libc::SIGINT, &act, std::ptr::null_mut());
            assert_eq!(rc, 0, "install the SIGINT handler");
        }
    }

    /// SIGINT to this process alone.
    fn raise_sigint() {
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::INT)
            .expect("kill(getpid(), SIGINT)");
    }

    /// `Threads:` from `/proc/self/status`.
    fn threads() -> Option<u32> {
        fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))?
            .trim()
            .parse()
            .ok()
    }

    /// This process's children (zombies included), from every thread's `children` file.
    fn children() -> BTreeSet<u32> {
        let mut all = BTreeSet::new();
        for task in fs::read_dir("/proc/self/task")
            .expect("read /proc/self/task")
            .flatten()
        {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        all
    }

    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn wait_readable(fd: &std::os::fd::OwnedFd, deadline: Instant) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            let ts = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos().into(),
            };
            match poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Ok(_) if now >= deadline => return false,
                _ => {}
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("corral-host: a test helper for Linux only");
    std::process::exit(2);
}
