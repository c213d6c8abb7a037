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
    bench [--quick] [--only registry|helper|storm]
                      Measure corral against same-run baselines (bench/, the corral-bench
                      crate): spawn + wait of /bin/true through each library path, std and
                      tokio; stopping trees; the supervisor's footprint vs timeout, tini and
                      bwrap; concurrent jobs; the watchdog; the registry; --pid-namespace;
                      the helper; a fork storm. Then the peers side by side (the `peers`
                      bench target: process-wrap, processkit, timeout; spawn, stop latency
                      vs tree size with a chart, throughput, containment, real programs).
                      Needs root, a cgroup2 mount, tini and bwrap. Writes target/bench/ and
                      copies the report to docs/benchmarks.md (and the chart to docs/).
                      --quick: few rounds, a smoke test; writes only target/bench/.
                      --only: one of corral's figures alone, printed.
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
