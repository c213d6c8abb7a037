//! `cargo bench -p corral-bench --bench peers`: corral side by side with what users already
//! have (bare `std::process::Command`, process-wrap, processkit, coreutils `timeout`, tini,
//! bwrap), in one run on one machine. `cargo xtask bench` runs it after its own figures.
//!
//! ```text
//! peers [--quick] [--only FIGURE]... --out DIR
//! ```
//!
//! Writes `DIR/peers.md` (the markdown sections that `docs/benchmarks.md` includes) and the
//! charts beside it. Rounds are interleaved (A B C A B C ...); ratios are of medians against
//! a baseline measured in the same run.

use std::path::PathBuf;

use anyhow::{bail, Result};

mod workloads;

const USAGE: &str = "usage: peers [--quick] [--only FIGURE]... --out DIR";

/// What the command line asked for.
pub struct Args {
    pub quick: bool,
    /// Empty: every figure.
    pub only: Vec<String>,
    pub out: PathBuf,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut quick = false;
        let mut only = Vec::new();
        let mut out = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--only" => only.extend(args.next()),
                "--out" => out = args.next().map(PathBuf::from),
                // `cargo bench` passes `--bench` to every bench target.
                "--bench" => {}
                other => bail!("unknown argument `{other}`; {USAGE}"),
            }
        }
        let Some(out) = out else {
            bail!("--out is missing; {USAGE}")
        };
        Ok(Args { quick, only, out })
    }

    /// Whether `figure` is to run.
    pub fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse()?;
    std::fs::create_dir_all(&args.out)?;
    let mut sections: Vec<String> = Vec::new();
    if args.wants("workloads") {
        sections.push(workloads::run(args.quick)?);
    }
    std::fs::write(args.out.join("peers.md"), sections.join("\n"))?;
    Ok(())
}
