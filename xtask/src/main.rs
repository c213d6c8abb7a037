//! `cargo xtask`: project tasks that are programs rather than shell one-liners.
//! Run `cargo xtask help` for the list.

mod vm;
mod wine;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask: corral's project tasks

USAGE:
    cargo xtask <TASK> [OPTIONS]

TASKS:
    bench [--quick]   Measure corral against same-run baselines (spawn + wait of /bin/true
                      through each library path, std and tokio; stopping trees of
                      10/100/1000 processes; `corral run` idle cost vs `timeout`; 100
                      concurrent jobs; the watchdog's cost). Needs root and a cgroup2
                      mount. Writes
                      target/bench/benchmarks.md and copies it to docs/benchmarks.md.
                      --quick: few rounds, a smoke test; writes only target/bench/.
    vm-test [--payload 'TAG: CMD']... [--accel auto|kvm|tcg] [--timeout SECS] [--keep]
            [--rebuild-image]
                      Boot a Debian 12 VM (systemd as PID 1, pure cgroup v2) under qemu and
                      run the test binaries in it, as root and as a user with a user manager
                      (scripts/vm/payload.list, or the --payload lines). Needs root. The
                      image is cached in /var/cache/corral-vm/. See docs/vm.md.
    wine-test [TEST ARGS...]
                      Build tests/windows.rs for x86_64-pc-windows-gnu and run it under
                      Wine (prefix in target/wine-prefix, made by scripts/wine/setup.sh).
                      Needs wine64 and gcc-mingw-w64-x86-64. See docs/windows.md.
    help              Print this list.
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => corral_bench::run(&args[1..]).map(|()| ExitCode::SUCCESS),
        Some("vm-test") => vm::run(&args[1..]),
        Some("wine-test") => wine::run(&args[1..]),
        None | Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => {
            eprint!("{HELP}");
            anyhow::bail!("unknown task `{other}`; see the list above")
        }
    }
}
