//! `corral-wintree`: the Windows test helper (`tests/windows.rs`). Elsewhere an empty
//! `main`, so the workspace builds on every OS.
//!
//! ```text
//! corral-wintree tree [--on-break exit|ignore] [--exit CODE] [--depth N]
//! ```
//!
//! builds a chain top → child → grandchild (`--depth`, default 3 processes). Each process
//! starts the next with its stdout piped, relays the lines it prints, then prints
//! `<role> <pid>` and `ready`: once the top prints `ready` the whole tree runs. Then the
//! top exits with `--exit CODE` if given; every other process sleeps forever.
//! `--on-break exit` makes every process exit with 42 on Ctrl+Break (a console control
//! handler); `ignore` makes them ignore it; without it Windows' default applies.
//!
//! ```text
//! corral-wintree spawn N         start N sleeping children; print `spawned K` (K started)
//! corral-wintree alloc MB        commit MB megabytes; exit 0, or 3 if refused
//! corral-wintree host GO [TREE ARGS...]
//! ```
//!
//! `host` runs `corral-wintree tree TREE ARGS` as a corral job (its output goes to the
//! host's stdout), prints `host <pid>` and `in_job <true|false>` (whether the host itself
//! runs in a job), then waits: with `GO` = `-` until the job ends (a test kills the host);
//! otherwise until the file `GO` exists, then kills the job and prints
//! `killed <mechanism reason>` and `survivors <n>`.

#[cfg(not(windows))]
fn main() {}

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    win::main()
}

#[cfg(windows)]
mod win {
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Command, ExitCode, Stdio};
    use std::thread;
    use std::time::Duration;

    use windows_sys::core::BOOL;
    use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_BREAK_EVENT};
    use windows_sys::Win32::System::JobObjects::IsProcessInJob;
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let rest = args.get(1..).unwrap_or_default();
        match args.first().map(String::as_str) {
            Some("tree") => tree(rest, "top"),
            Some("node") => match rest.split_first() {
                Some((role, rest)) => tree(rest, role),
                None => usage(),
            },
            Some("spawn") => spawn(rest),
            Some("alloc") => alloc(rest),
            Some("host") => host(rest),
            Some("sleep") => sleep_forever(),
            _ => usage(),
        }
    }

    fn usage() -> ExitCode {
        eprintln!("usage: corral-wintree tree|spawn|alloc|host ... (see the source)");
        ExitCode::from(2)
    }

    fn sleep_forever() -> ! {
        loop {
            thread::sleep(Duration::from_secs(1000));
        }
    }

    unsafe extern "system" fn exit_on_break(ctrl: u32) -> BOOL {
        if ctrl == CTRL_BREAK_EVENT {
            std::process::exit(42);
        }
        0
    }

    unsafe extern "system" fn ignore_break(ctrl: u32) -> BOOL {
        BOOL::from(ctrl == CTRL_BREAK_EVENT)
    }

    fn tree(args: &[String], role: &str) -> ExitCode {
        let mut on_break = None;
        let mut exit = None;
        let mut depth = 3u32;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().unwrap_or_default();
            match a.as_str() {
                "--on-break" => on_break = Some(value()),
                "--exit" => exit = value().parse::<u8>().ok(),
                "--depth" => depth = value().parse().unwrap_or(3),
                _ => return usage(),
            }
        }
        let handler: Option<unsafe extern "system" fn(u32) -> BOOL> = match on_break.as_deref() {
            None => None,
            Some("exit") => Some(exit_on_break),
            Some("ignore") => Some(ignore_break),
            Some(_) => return usage(),
        };
        if let Some(h) = handler {
            // SAFETY: `h` is a valid handler routine for the life of the process.
            if unsafe { SetConsoleCtrlHandler(Some(h), 1) } == 0 {
                eprintln!("SetConsoleCtrlHandler: {}", std::io::Error::last_os_error());
                return ExitCode::from(2);
            }
        }
        let mut out = std::io::stdout().lock();
        if depth > 1 {
            let next = if role == "top" { "child" } else { "grandchild" };
            let mut cmd = Command::new(std::env::current_exe().expect("own path"));
            cmd.arg("node")
                .arg(next)
                .arg("--depth")
                .arg((depth - 1).to_string());
            if let Some(b) = &on_break {
                cmd.arg("--on-break").arg(b);
            }
            let mut child = match cmd.stdout(Stdio::piped()).spawn() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("spawning {next}: {e}");
                    return ExitCode::from(2);
                }
            };
            let Some(pipe) = child.stdout.take() else {
                return ExitCode::from(2);
            };
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    break;
                }
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out, "{role} {}\nready", std::process::id());
        let _ = out.flush();
        drop(out);
        match exit {
            Some(code) => ExitCode::from(code),
            None => sleep_forever(),
        }
    }

    fn spawn(args: &[String]) -> ExitCode {
        let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
        let exe = std::env::current_exe().expect("own path");
        let started = (0..n)
            .filter(|_| Command::new(&exe).arg("sleep").spawn().is_ok())
            .count();
        println!("spawned {started}");
        ExitCode::SUCCESS
    }

    fn alloc(args: &[String]) -> ExitCode {
        let mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(mb << 20).is_err() {
            return ExitCode::from(3);
        }
        v.resize(mb << 20, 1);
        println!("allocated {}", v.len() >> 20);
        ExitCode::SUCCESS
    }

    fn host(args: &[String]) -> ExitCode {
        let Some((go, tree_args)) = args.split_first() else {
            return usage();
        };
        let mut in_job = 0;
        // SAFETY: a pseudo handle, a null job (any job) and a writable BOOL.
        unsafe { IsProcessInJob(GetCurrentProcess(), std::ptr::null_mut(), &mut in_job) };
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.arg("tree").args(tree_args);
        let opts = corral::Options::default();
        let mut job = match corral::Job::spawn(&mut cmd, &opts) {
            Ok(j) => j,
            Err(e) => {
                println!("error {e}");
                return ExitCode::from(2);
            }
        };
        println!("host {}\nin_job {}", std::process::id(), in_job != 0);
        if go == "-" {
            let _ = job.wait();
            return ExitCode::SUCCESS;
        }
        while !Path::new(go).exists() {
            thread::sleep(Duration::from_millis(10));
        }
        match job.kill() {
            Ok(r) => {
                println!(
                    "killed {}\nsurvivors {}",
                    r.mechanism_reason,
                    r.survivors.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error {e}");
                ExitCode::from(2)
            }
        }
    }
}
