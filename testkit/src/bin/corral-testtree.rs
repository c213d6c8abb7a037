//! `corral-testtree`: builds adversarial process trees for corral's integration tests
//! (`tests/containment/`) and benchmarks.
//!
//! ```text
//! corral-testtree [--pids FILE] [--marker FILE] [--go FILE] [--exit CODE] MODE [MODE ARGS]
//! ```
//!
//! Every process the tool creates appends one line `<role> <pid>\n` to the `--pids` file,
//! in a single `write(2)` on an `O_APPEND` descriptor, once it is *ready*: its signal
//! dispositions are in place and it has made its escape (`setpgid`, `setsid`, double fork).
//! A test waits until the roles it expects are listed, opens a pidfd for each PID while the
//! process is known to be alive, and after corral returns checks that every pidfd became
//! readable (the process exited). Roles are listed per mode in [`Mode`]. The PID is the one
//! `/proc` shows (the host's, also inside a PID namespace corral made).
//!
//! Signal handlers that must leave evidence append `<role> <pid> <signo>\n` to the
//! `--marker` file, once per delivery, so a test can count deliveries.
//!
//! Once its tree is ready, the top process (the one corral started) records itself as
//! `top`, waits for the `--go` file to exist (if given; this lets a test open its pidfds
//! before anything is stopped), then exits with `--exit CODE` if given, leaving its
//! descendants behind as leftovers. Without `--exit` it does what its mode says; for most
//! modes that is waiting forever.
//!
//! The tool never signals any process but itself. It is single-threaded, so `fork` without
//! `exec` is sound: the child's only thread is the one that called `fork`, no lock can be
//! held by a thread that no longer exists, and the child may allocate.

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::{CString, OsString};
    use std::os::unix::ffi::OsStringExt;
    use std::path::{Path, PathBuf};
    use std::ptr;
    use std::sync::atomic::{
        AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    use std::time::{Duration, Instant};

    use clap::{Parser, Subcommand};
    use rustix::process::{Pid, WaitOptions};

    #[derive(Parser, Debug)]
    #[command(
        name = "corral-testtree",
        about = "Build adversarial process trees for corral's tests"
    )]
    struct Cli {
        /// Append `<role> <pid>` here when each process is ready.
        #[arg(long, global = true)]
        pids: Option<PathBuf>,
        /// Signal handlers append `<role> <pid> <signo>` here, once per delivery.
        #[arg(long, global = true)]
        marker: Option<PathBuf>,
        /// Once the tree is ready, the top process waits until this file exists.
        #[arg(long, global = true)]
        go: Option<PathBuf>,
        /// Once the tree is ready (and after `--go`), the top process exits with this code.
        #[arg(long, global = true)]
        exit: Option<i32>,
        #[command(subcommand)]
        mode: Mode,
    }

    /// What tree to build. Roles recorded in the pids file are given for each.
    #[derive(Subcommand, Debug)]
    enum Mode {
        /// No children; wait forever. Roles: `top`.
        Sleep,
        /// A child that sleeps forever; the top waits for it. Roles: `top`, `grandchild`.
        Grandchild,
        /// A child that calls `setpgid(0, 0)`. Roles: `top`, `setpgid`.
        Setpgid,
        /// A child that calls `setsid()`. Roles: `top`, `setsid`.
        Setsid,
        /// Classic double-fork daemon (`setsid`, fork, middle exits, stdio on /dev/null, cwd /);
        /// then the top exits 0 (after `--go`). Roles: `top`, `daemon`.
        Daemon,
        /// Like `daemon`, but the daemon keeps stdout and stderr open and writes
        /// `daemon ready` to stdout. Roles: `top`, `daemon`.
        PipeDaemon,
        /// A child whose main thread exits (`SYS_exit`, not `exit_group`) while a second
        /// thread sleeps on: the process lives on with a zombie thread-group leader (`Z` in
        /// `/proc/<pid>/stat`). (The only multi-threaded process here; it forks nothing.)
        /// With `--ignore-term` it ignores SIGTERM. Roles: `top`, `zombie-leader`.
        ZombieLeader {
            #[arg(long)]
            ignore_term: bool,
        },
        /// A child that exits 0 by itself after DELAY, appending `late-exit <pid> 0` to the
        /// marker just before. Roles: `top`, `late-exit`.
        LateExit {
            #[arg(long, default_value = "300ms", value_parser = parse_duration)]
            delay: Duration,
        },
        /// A child that ignores SIGTERM. Roles: `top`, `ignore-term`.
        IgnoreTerm,
        /// A child whose SIGTERM handler sleeps DELAY, then appends to the marker and exits 0.
        /// Roles: `top`, `slow-term`.
        SlowTerm {
            #[arg(long, default_value = "300ms", value_parser = parse_duration)]
            delay: Duration,
        },
        /// A child with a SIGTERM handler (append to marker, exit 0) that stops itself with
        /// SIGSTOP; the top records itself only once it has seen the child stopped
        /// (`waitpid(WUNTRACED)`). The child ignores SIGHUP, so the kernel's orphaned-group
        /// SIGHUP cannot pre-empt the handler. Roles: `top`, `stopped`.
        Stopped,
        /// A child that handles SIGTERM, SIGINT, SIGHUP and SIGQUIT by appending to the marker
        /// and carrying on; only SIGKILL ends it. With `--cont` it records SIGCONT too (corral
        /// sends it to every member when its stop sequence starts, so a test can tell that
        /// corral has taken a signal in). Roles: `top`, `stubborn`.
        Stubborn {
            #[arg(long)]
            cont: bool,
        },
        /// A bounded fork storm: every process ignores SIGTERM and forks a new one every
        /// INTERVAL until MAX processes (the top included) have been created in total; then
        /// each sleeps. With `--escape` each new process first calls `setsid()`. Roles: `top`,
        /// `storm` (many).
        Storm {
            #[arg(long, default_value_t = 2000)]
            max: u32,
            #[arg(long, default_value = "50ms", value_parser = parse_duration)]
            interval: Duration,
            #[arg(long)]
            escape: bool,
        },
        /// A fork-and-exit chain: the top starts a link and waits; each link ignores SIGTERM,
        /// sleeps INTERVAL, forks the next link and exits at once, so the live process keeps
        /// changing PID (and parent: each orphan is re-parented). The MAX-th link sleeps
        /// forever. With `--escape` each link first calls `setsid()`. Roles: `top`, `link`
        /// (many, mostly gone by the time they are read).
        Chain {
            #[arg(long, default_value_t = 2000)]
            max: u32,
            #[arg(long, default_value = "1ms", value_parser = parse_duration)]
            interval: Duration,
            #[arg(long)]
            escape: bool,
        },
        /// Ctrl+C target. The top, a child in the same process group (`int-child`), a child
        /// that called `setpgid(0, 0)` (`int-setpgid`) and one that called `setsid()`
        /// (`int-setsid`) each append to the marker on every SIGINT; LINGER after the first
        /// one each dies of SIGINT (default disposition restored, then `raise`). Roles: `top`,
        /// `int-child`, `int-setpgid`, `int-setsid`.
        Sigint {
            #[arg(long, default_value = "300ms", value_parser = parse_duration)]
            linger: Duration,
        },
        /// A process that ignores SIGINT and sleeps forever (no tree). Roles: `bystander`.
        Bystander,
        /// Exit at once with CODE. No roles.
        Exit { code: i32 },
        /// Kill itself with signal SIGNAL (default disposition). No roles.
        Kill { signal: i32 },
        /// On SIGTERM exit with CODE; sleep forever until then. Roles: `top`.
        TermExit { code: i32 },
        /// Burn CPU (a busy loop) until the process has used CPU time CPU, then exit 0 (after
        /// `--go`). Roles: `top`.
        Burn {
            #[arg(long, value_parser = parse_duration)]
            cpu: Duration,
        },
        /// Allocate MIB mebibytes and touch every page, one MiB at a time, then exit 0 (after
        /// `--go`); under a lower memory.max the OOM killer ends it. Roles: `top`.
        Alloc {
            #[arg(long)]
            mib: usize,
        },
    }

    fn parse_duration(text: &str) -> Result<Duration, String> {
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        let (number, unit) = text
            .find(|c: char| !c.is_ascii_digit())
            .map(|at| text.split_at(at))
            .ok_or_else(|| format!("duration {text:?} has no unit"))?;
        let number: u64 = number
            .parse()
            .map_err(|e| format!("duration {text:?}: {e}"))?;
        match unit {
            "ms" => Ok(Duration::from_millis(number)),
            "s" => Ok(Duration::from_secs(number)),
            _ => Err(format!("duration {text:?}: unit must be ms or s")),
        }
    }

    pub fn main() {
        let cli = Cli::parse();
        // A tree models an ordinary program: whoever started the tests may have left these
        // ignored (`nohup`, a shell's background job), and an ignored disposition survives exec.
        for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
            set_disposition(signal, libc::SIG_DFL);
        }
        let files = Files::new(&cli);
        set_identity("top");
        match cli.mode {
            Mode::Sleep => {
                files.record("top");
                finish(&cli, None)
            }
            Mode::Grandchild => {
                fork_child(|| {
                    set_identity("grandchild");
                    files.record("grandchild");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::Setpgid => {
                fork_child(|| {
                    rustix::process::setpgid(None, None).unwrap_or_else(|e| die("setpgid", e));
                    set_identity("setpgid");
                    files.record("setpgid");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::Setsid => {
                fork_child(|| {
                    rustix::process::setsid().unwrap_or_else(|e| die("setsid", e));
                    set_identity("setsid");
                    files.record("setsid");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::Daemon => daemon(&files, &cli, false),
            Mode::PipeDaemon => daemon(&files, &cli, true),
            Mode::ZombieLeader { ignore_term } => {
                fork_child(|| {
                    set_identity("zombie-leader");
                    if ignore_term {
                        set_disposition(libc::SIGTERM, libc::SIG_IGN);
                    }
                    std::thread::spawn(|| sleep_forever());
                    files.record("zombie-leader");
                    // SAFETY: SYS_exit ends only the calling thread; nothing of it is used after.
                    unsafe { libc::syscall(libc::SYS_exit, 0) };
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::LateExit { delay } => {
                fork_child(|| {
                    set_identity("late-exit");
                    files.record("late-exit");
                    std::thread::sleep(delay);
                    append_marker(0);
                    // SAFETY: _exit ends this forked process without running exit hooks.
                    unsafe { libc::_exit(0) }
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::IgnoreTerm => {
                fork_child(|| {
                    set_identity("ignore-term");
                    set_disposition(libc::SIGTERM, libc::SIG_IGN);
                    files.record("ignore-term");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::SlowTerm { delay } => {
                fork_child(|| {
                    set_identity("slow-term");
                    HANDLER_DELAY_MS.store(delay.as_millis() as u64, Ordering::SeqCst);
                    install_handler(libc::SIGTERM, on_signal_delay_mark_exit);
                    files.record("slow-term");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::Stopped => stopped(&files, &cli),
            Mode::Stubborn { cont } => {
                fork_child(|| {
                    set_identity("stubborn");
                    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
                        install_handler(signal, on_signal_mark);
                    }
                    if cont {
                        install_handler(libc::SIGCONT, on_signal_mark);
                    }
                    files.record("stubborn");
                    sleep_forever()
                });
                files.record("top");
                finish(&cli, None)
            }
            Mode::Storm {
                max,
                interval,
                escape,
            } => storm(&files, &cli, max, interval, escape),
            Mode::Chain {
                max,
                interval,
                escape,
            } => chain(&files, &cli, max, interval, escape),
            Mode::Sigint { linger } => sigint(&files, linger),
            Mode::Bystander => {
                set_identity("bystander");
                set_disposition(libc::SIGINT, libc::SIG_IGN);
                files.record("bystander");
                sleep_forever()
            }
            Mode::Exit { code } => std::process::exit(code),
            Mode::Kill { signal } => {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    set_disposition(signal, libc::SIG_DFL);
                }
                unblock(signal);
                // SAFETY: raise only sends `signal` to this very thread.
                unsafe { libc::raise(signal) };
                eprintln!("corral-testtree: still alive after raise({signal})");
                std::process::exit(1)
            }
            Mode::TermExit { code } => {
                EXIT_CODE.store(code, Ordering::SeqCst);
                install_handler(libc::SIGTERM, on_signal_exit_code);
                files.record("top");
                sleep_forever()
            }
            Mode::Burn { cpu } => {
                files.record("top");
                let mut spins = 0u64;
                while cpu_time() < cpu {
                    for _ in 0..10_000 {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                }
                finish(&cli, Some(0))
            }
            Mode::Alloc { mib } => {
                files.record("top");
                let mut held: Vec<Vec<u8>> = Vec::with_capacity(mib);
                for _ in 0..mib {
                    // Non-zero bytes: every page is written, so every page is charged.
                    held.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
                finish(&cli, Some(0))
            }
        }
    }

    /// The CPU time this process has used (`CLOCK_PROCESS_CPUTIME_ID`).
    fn cpu_time() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid, writable timespec; the clock id is a constant the kernel knows.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
            die("clock_gettime", std::io::Error::last_os_error());
        }
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// Double fork: the middle process calls `setsid`, forks the daemon and exits at once.
    /// The daemon reports readiness through a pipe, so the top only exits once it is ready.
    fn daemon(files: &Files, cli: &Cli, keep_stdio: bool) -> ! {
        let (ready_read, ready_write) = rustix::pipe::pipe().unwrap_or_else(|e| die("pipe", e));
        // The forked processes only borrow the pipe: the daemon keeps its write end open (it
        // has written its byte by then), the middle exits at once.
        let middle = fork_child(|| {
            rustix::process::setsid().unwrap_or_else(|e| die("setsid", e));
            fork_child(|| {
                set_identity("daemon");
                if !keep_stdio {
                    redirect_stdio_to_dev_null();
                }
                std::env::set_current_dir("/").unwrap_or_else(|e| die("chdir /", e));
                files.record("daemon");
                if keep_stdio {
                    write_all_raw(libc::STDOUT_FILENO, b"daemon ready\n");
                }
                rustix::io::write(&ready_write, b"r")
                    .unwrap_or_else(|e| die("write ready pipe", e));
                sleep_forever()
            });
            // SAFETY: _exit ends this forked process without running the parent's exit hooks.
            unsafe { libc::_exit(0) }
        });
        drop(ready_write);
        rustix::process::waitpid(Some(middle), WaitOptions::empty())
            .unwrap_or_else(|e| die("waitpid middle", e));
        let mut byte = [0u8; 1];
        match rustix::io::read(&ready_read, &mut byte) {
            Ok(1) => {}
            Ok(_) => die_msg("daemon exited before it was ready"),
            Err(e) => die("read ready pipe", e),
        }
        drop(ready_read);
        files.record("top");
        finish(cli, Some(0))
    }

    fn stopped(files: &Files, cli: &Cli) -> ! {
        let child = fork_child(|| {
            set_identity("stopped");
            set_disposition(libc::SIGHUP, libc::SIG_IGN);
            install_handler(libc::SIGTERM, on_signal_mark_exit);
            files.record("stopped");
            // SAFETY: raise only sends SIGSTOP to this very thread.
            unsafe { libc::raise(libc::SIGSTOP) };
            sleep_forever()
        });
        loop {
            match rustix::process::waitpid(Some(child), WaitOptions::UNTRACED) {
                Ok(Some((_, status))) if status.stopped() => break,
                Ok(Some((_, status))) => die_msg(&format!("stopped child ended: {status:?}")),
                Ok(None) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => die("waitpid stopped child", e),
            }
        }
        files.record("top");
        finish(cli, None)
    }

    fn storm(files: &Files, cli: &Cli, max: u32, interval: Duration, escape: bool) -> ! {
        let created = shared_counter();
        created.store(1, Ordering::SeqCst); // the top
        set_disposition(libc::SIGTERM, libc::SIG_IGN);
        files.record("top");
        let top = rustix::process::getpid();
        loop {
            std::thread::sleep(interval);
            if created.fetch_add(1, Ordering::SeqCst) >= max {
                break;
            }
            // SAFETY: single-threaded process; see the module comment.
            match unsafe { libc::fork() } {
                -1 => break, // out of processes: the storm is over
                0 => {
                    if escape {
                        rustix::process::setsid().unwrap_or_else(|e| die("setsid", e));
                    }
                    set_identity("storm");
                    files.record("storm");
                }
                _ => {}
            }
        }
        if rustix::process::getpid() == top {
            finish(cli, None)
        }
        sleep_forever()
    }

    fn chain(files: &Files, cli: &Cli, max: u32, interval: Duration, escape: bool) -> ! {
        let created = shared_counter();
        created.store(1, Ordering::SeqCst); // the top
        fork_child(|| {
            set_disposition(libc::SIGTERM, libc::SIG_IGN);
            loop {
                if escape {
                    // Fails only for a process group leader, which a fresh child never is.
                    rustix::process::setsid().unwrap_or_else(|e| die("setsid", e));
                }
                set_identity("link");
                files.record("link");
                std::thread::sleep(interval);
                if created.fetch_add(1, Ordering::SeqCst) >= max {
                    sleep_forever()
                }
                // SAFETY: single-threaded process; see the module comment.
                match unsafe { libc::fork() } {
                    -1 => sleep_forever(), // out of processes: the chain ends here
                    0 => {}                // the next link
                    // SAFETY: _exit ends this forked link without running exit hooks.
                    _ => unsafe { libc::_exit(0) },
                }
            }
        });
        files.record("top");
        finish(cli, None)
    }

    /// A counter shared by every process forked after it was created.
    fn shared_counter() -> &'static AtomicU32 {
        // SAFETY: a fresh anonymous shared mapping; the arguments are valid for mmap.
        let page = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            die("mmap", std::io::Error::last_os_error());
        }
        // SAFETY: the mapping is page-aligned, zeroed, writable and never unmapped; an
        // AtomicU32 has the same layout as u32.
        unsafe { &*page.cast::<AtomicU32>() }
    }

    fn sigint(files: &Files, linger: Duration) -> ! {
        install_handler(libc::SIGINT, on_signal_mark);
        fork_child(|| {
            set_identity("int-child");
            files.record("int-child");
            linger_then_die_of_sigint(linger)
        });
        fork_child(|| {
            rustix::process::setpgid(None, None).unwrap_or_else(|e| die("setpgid", e));
            set_identity("int-setpgid");
            files.record("int-setpgid");
            linger_then_die_of_sigint(linger)
        });
        fork_child(|| {
            rustix::process::setsid().unwrap_or_else(|e| die("setsid", e));
            set_identity("int-setsid");
            files.record("int-setsid");
            linger_then_die_of_sigint(linger)
        });
        files.record("top");
        linger_then_die_of_sigint(linger)
    }

    /// Waits for the first SIGINT, stays around for `linger` (so a duplicate delivery would
    /// still be counted), then dies of SIGINT.
    fn linger_then_die_of_sigint(linger: Duration) -> ! {
        while !GOT_SIGNAL.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let first = Instant::now();
        while first.elapsed() < linger {
            std::thread::sleep(Duration::from_millis(10));
        }
        set_disposition(libc::SIGINT, libc::SIG_DFL);
        // SAFETY: raise only sends SIGINT to this very thread.
        unsafe { libc::raise(libc::SIGINT) };
        die_msg("still alive after raise(SIGINT)")
    }

    /// The top's last act: wait for `--go`, then exit with `--exit` (or `default_exit`), or
    /// wait forever.
    fn finish(cli: &Cli, default_exit: Option<i32>) -> ! {
        if let Some(go) = &cli.go {
            while !go.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        match cli.exit.or(default_exit) {
            Some(code) => std::process::exit(code),
            None => wait_forever(),
        }
    }

    /// Reaps children as they exit, and then sleeps forever.
    fn wait_forever() -> ! {
        loop {
            match rustix::process::wait(WaitOptions::empty()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::CHILD) => sleep_forever(),
                Err(e) => die("wait", e),
            }
        }
    }

    fn sleep_forever() -> ! {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }

    /// Forks; the child runs `child` (which ends the process), the parent gets the child's PID.
    fn fork_child(child: impl FnOnce()) -> Pid {
        // SAFETY: this program is single-threaded (see the module comment), so the child may
        // run arbitrary code, and `child` never returns into the parent's logic.
        match unsafe { libc::fork() } {
            -1 => die("fork", std::io::Error::last_os_error()),
            0 => {
                child();
                die_msg("forked child returned")
            }
            pid => Pid::from_raw(pid).expect("fork returned a positive PID"),
        }
    }

    /// This process's PID as the tests see it: `/proc/self` resolves in the PID namespace of
    /// the `/proc` mount, which is the host's when corral runs the tree in a PID namespace of its
    /// own (`--pid-namespace` makes no mount namespace), where `getpid()` would say 1.
    fn host_pid() -> i32 {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse().ok())
            .unwrap_or_else(|| rustix::process::getpid().as_raw_nonzero().get())
    }

    /// Absolute paths of the files given on the command line (the daemon changes directory).
    struct Files {
        pids: Option<PathBuf>,
    }

    impl Files {
        fn new(cli: &Cli) -> Files {
            let absolute =
                |p: &Path| std::path::absolute(p).unwrap_or_else(|e| die("absolute path", e));
            let files = Files {
                pids: cli.pids.as_deref().map(absolute),
            };
            if let Some(marker) = cli.marker.as_deref().map(absolute) {
                let marker = CString::new(OsString::from(marker).into_vec())
                    .unwrap_or_else(|_| die_msg("--marker contains a NUL byte"));
                MARKER_PATH.store(marker.into_raw(), Ordering::SeqCst);
            }
            files
        }

        /// Appends `<role> <pid>\n` to the pids file in a single write.
        fn record(&self, role: &str) {
            let Some(path) = &self.pids else { return };
            let line = format!("{role} {}\n", host_pid());
            let file = rustix::fs::open(
                path,
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::APPEND
                    | rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o644),
            )
            .unwrap_or_else(|e| die(&format!("open {}", path.display()), e));
            match rustix::io::write(&file, line.as_bytes()) {
                Ok(n) if n == line.len() => {}
                Ok(n) => die_msg(&format!("short write ({n} bytes) to {}", path.display())),
                Err(e) => die(&format!("write {}", path.display()), e),
            }
        }
    }

    // ---- signal handling -------------------------------------------------------------------
    //
    // Handlers only call async-signal-safe functions (open, write, close, nanosleep, _exit) and
    // read atomics that were set before the handler was installed in this process.

    /// `--marker` path, a leaked `CString`, or null.
    static MARKER_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(ptr::null_mut());
    /// `"<role> <pid> "`, a leaked buffer set by [`set_identity`] in each process.
    static MARKER_PREFIX: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
    static MARKER_PREFIX_LEN: AtomicUsize = AtomicUsize::new(0);
    /// Set by [`on_signal_mark`].
    static GOT_SIGNAL: AtomicBool = AtomicBool::new(false);
    /// Used by [`on_signal_exit_code`].
    static EXIT_CODE: AtomicI32 = AtomicI32::new(0);
    /// Used by [`on_signal_delay_mark_exit`].
    static HANDLER_DELAY_MS: AtomicU64 = AtomicU64::new(0);

    /// Sets the role and PID that this process's handlers write to the marker.
    fn set_identity(role: &str) {
        let prefix = format!("{role} {} ", host_pid());
        let prefix: &'static mut [u8] = prefix.into_bytes().leak();
        MARKER_PREFIX_LEN.store(0, Ordering::SeqCst);
        MARKER_PREFIX.store(prefix.as_mut_ptr(), Ordering::SeqCst);
        MARKER_PREFIX_LEN.store(prefix.len(), Ordering::SeqCst);
        GOT_SIGNAL.store(false, Ordering::SeqCst);
    }

    /// Appends `<role> <pid> <signo>\n` to the marker file. Async-signal-safe.
    fn append_marker(signal: libc::c_int) {
        let path = MARKER_PATH.load(Ordering::SeqCst);
        let prefix = MARKER_PREFIX.load(Ordering::SeqCst);
        let prefix_len = MARKER_PREFIX_LEN.load(Ordering::SeqCst);
        if path.is_null() || prefix.is_null() {
            return;
        }
        let mut line = [0u8; 128];
        let prefix_len = prefix_len.min(line.len() - 8);
        // SAFETY: `prefix` points to a leaked buffer of at least `prefix_len` bytes.
        line[..prefix_len]
            .copy_from_slice(unsafe { std::slice::from_raw_parts(prefix, prefix_len) });
        let mut len = prefix_len;
        let mut digits = [0u8; 4];
        let mut n = signal.clamp(0, 9999) as u32;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for digit in digits[..count].iter().rev() {
            line[len] = *digit;
            len += 1;
        }
        line[len] = b'\n';
        len += 1;
        // SAFETY: errno is thread-local; saving and restoring it keeps the handler transparent.
        let saved_errno = unsafe { *libc::__errno_location() };
        // SAFETY: `path` is a NUL-terminated leaked CString; open/write/close are
        // async-signal-safe.
        unsafe {
            let fd = libc::open(
                path,
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            );
            if fd >= 0 {
                libc::write(fd, line.as_ptr().cast(), len);
                libc::close(fd);
            }
            *libc::__errno_location() = saved_errno;
        }
    }

    extern "C" fn on_signal_mark(signal: libc::c_int) {
        append_marker(signal);
        GOT_SIGNAL.store(true, Ordering::SeqCst);
    }

    extern "C" fn on_signal_mark_exit(signal: libc::c_int) {
        append_marker(signal);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }

    extern "C" fn on_signal_delay_mark_exit(signal: libc::c_int) {
        let ms = HANDLER_DELAY_MS.load(Ordering::SeqCst);
        let mut request = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        let mut remaining = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: nanosleep is async-signal-safe; both pointers are to live locals.
        while unsafe { libc::nanosleep(&request, &mut remaining) } == -1 {
            request = remaining;
        }
        append_marker(signal);
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }

    extern "C" fn on_signal_exit_code(_signal: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_CODE.load(Ordering::SeqCst)) }
    }

    fn install_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
        set_disposition(signal, handler as libc::sighandler_t);
    }

    /// `sigaction(signal, {handler, mask: empty, flags: 0})`.
    fn set_disposition(signal: libc::c_int, handler: libc::sighandler_t) {
        // SAFETY: a zeroed sigaction is a valid value; `handler` is SIG_DFL, SIG_IGN or an
        // `extern "C" fn(c_int)` that only does async-signal-safe work.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, ptr::null_mut())
        };
        if result != 0 {
            die(
                &format!("sigaction({signal})"),
                std::io::Error::last_os_error(),
            );
        }
    }

    fn unblock(signal: libc::c_int) {
        // SAFETY: the set is initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, ptr::null_mut());
        }
    }

    fn redirect_stdio_to_dev_null() {
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR,
            rustix::fs::Mode::empty(),
        )
        .unwrap_or_else(|e| die("open /dev/null", e));
        for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } == -1 {
                die("dup2 /dev/null", std::io::Error::last_os_error());
            }
        }
    }

    fn write_all_raw(fd: libc::c_int, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a live slice; `fd` is a standard descriptor.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n <= 0 {
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }

    fn die(what: &str, error: impl std::fmt::Display) -> ! {
        die_msg(&format!("{what}: {error}"))
    }

    fn die_msg(message: &str) -> ! {
        let line = format!("corral-testtree[{}]: {message}\n", std::process::id());
        write_all_raw(libc::STDERR_FILENO, line.as_bytes());
        // SAFETY: _exit ends the process without running exit hooks, which is right in both
        // the top process and forked children.
        unsafe { libc::_exit(70) }
    }
}

#[cfg(target_os = "linux")]
fn main() {
    imp::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("corral-testtree: a test helper for Linux only");
    std::process::exit(2);
}
