//! `corral-host`: the Linux embedding-test program (see `corral-host/linux.rs`). Elsewhere
//! an empty `main`, so the package's binaries build on every OS (cargo builds them all for
//! any integration test).

#[cfg(target_os = "linux")]
#[path = "corral-host/linux.rs"]
mod linux;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {}
