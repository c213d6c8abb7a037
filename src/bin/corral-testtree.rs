//! `corral-testtree`: the Linux test helper that builds adversarial process trees (see
//! `corral-testtree/linux.rs`). Elsewhere an empty `main`, so the package's binaries build
//! on every OS (cargo builds them all for any integration test).

#[cfg(target_os = "linux")]
#[path = "corral-testtree/linux.rs"]
mod linux;

#[cfg(target_os = "linux")]
fn main() {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {}
