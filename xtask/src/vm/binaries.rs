//! The binaries the guest runs: the library's unit tests, every integration test (targets
//! of `corral-testkit`) and the programs they call by the paths the kit compiled into them
//! (the CLI's `corral` and `corral-helper`, the kit's helpers).

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Built {
    /// The host's `target/debug`: the test executables have the helpers' paths in them, so
    /// the guest puts the binaries at the same path.
    pub target_dir: PathBuf,
}

/// The programs the tests run by path.
const HELPERS: [&str; 4] = ["corral", "corral-testtree", "corral-host", "corral-helper"];

/// Builds the tests on the host and copies them into `bin` (`bin/vm-tests/<name>` for the
/// test executables, named after their target: `containment`, `lib-corral`, ...).
pub fn build_into(repo: &Path, bin: &Path) -> Result<Built> {
    println!("vm-test: cargo test --workspace --all-features --no-run");
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "test",
            "--workspace",
            "--all-features",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(repo)
        .stdout(Stdio::piped())
        .spawn()
        .context("run cargo test --no-run")?;
    let manifest = repo.join("Cargo.toml");
    let testkit = repo.join("testkit/Cargo.toml");
    let mut tests = Vec::new();
    let mut helpers = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        // The library's unit tests (the root's manifest) and the integration tests
        // (corral-testkit's).
        let manifest_path = msg["manifest_path"].as_str();
        let of_root = manifest_path == manifest.to_str() || manifest_path == testkit.to_str();
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default();
        if msg["profile"]["test"] == true {
            if !of_root {
                continue;
            }
            let name = if kind == "test" {
                name.to_string()
            } else {
                format!("{kind}-{name}")
            };
            tests.push((name, PathBuf::from(exe)));
        } else if kind == "bin" && HELPERS.contains(&name) {
            helpers.push(PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test --no-run failed ({status})");
    }
    let Some(target_dir) = helpers
        .first()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
    else {
        bail!("cargo built none of {HELPERS:?}");
    };
    fs::create_dir_all(bin.join("vm-tests"))?;
    for h in &helpers {
        copy(h, &bin.join(h.file_name().unwrap()))?;
    }
    for (name, exe) in &tests {
        copy(exe, &bin.join("vm-tests").join(name))?;
    }
    let names: Vec<&str> = tests.iter().map(|(n, _)| n.as_str()).collect();
    println!("vm-test: test executables: {}", names.join(", "));
    Ok(Built { target_dir })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
