//! `cargo xtask wine-test`: the Windows backend's tests (`tests/windows.rs`) built for
//! `x86_64-pc-windows-gnu` and run under Wine (see `docs/windows.md`).
//!
//! `scripts/wine/setup.sh` makes the prefix (`target/wine-prefix`, with the
//! `bcryptprimitives.dll` stand-in Rust's std needs under Wine 8); `scripts/wine/run.sh` is
//! the cargo runner. The test is a `corral-testkit` target, so cargo builds the kit's
//! programs (`corral-wintree` among them) for it.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

const TARGET: &str = "x86_64-pc-windows-gnu";

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask's parent directory")?;
    let setup = root.join("scripts/wine/setup.sh");
    let status = Command::new(&setup)
        .status()
        .with_context(|| format!("running {}", setup.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", setup.display());
    }
    let runner = root.join("scripts/wine/run.sh");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .env(
            "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER",
            runner.as_os_str(),
        )
        .args([
            "test",
            "--target",
            TARGET,
            "-p",
            "corral-testkit",
            "--test",
            "windows",
        ])
        .args(["--", "--test-threads=2"])
        .args(args)
        .status()
        .context("running cargo test")?;
    // The prefix's wineserver lingers a few seconds after the last program: wait for it, so
    // nothing of the tests outlives this command.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for server in [
        "/usr/lib/wine/wineserver64",
        "/usr/lib/wine/wineserver",
        "wineserver",
    ] {
        let waited = Command::new(server)
            .arg("-w")
            .env("WINEPREFIX", target.join("wine-prefix"))
            .status();
        if waited.is_ok() {
            break;
        }
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
