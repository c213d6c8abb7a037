//! `cargo xtask vm-test`: corral's tests on a machine like the ones it is built for, in one
//! qemu boot: Debian 12, systemd as PID 1, pure cgroup v2 (`/sys/fs/cgroup`, systemd's tree),
//! a user with a user manager.
//!
//! 1. [`image`]: the host tools (installed if missing, `scripts/vm/host-deps.sh`) and the
//!    image (`scripts/vm/build-image.sh`: debootstrap, a kernel with its initrd, an ext4 image
//!    made with `mkfs.ext4 -d`). It is cached outside the clone under a hash of the recipe
//!    (`/var/cache/corral-vm/<hash>/`), built in a temp directory and renamed into place, and
//!    booted with `snapshot=on`, so the cached image is never written.
//! 2. [`binaries`]: `cargo test --workspace --all-features --no-run` on the host; the test
//!    executables and `corral`, `corral-testtree`, `corral-host` go into the share directory
//!    (`target/vm-test/share`, a 9p mount in the guest).
//! 3. [`qemu`]: KVM when a tiny boot under it works, TCG otherwise; one boot whose unit runs
//!    `scripts/vm/guest-run.sh` from the share, which runs each line of the payload list
//!    (`scripts/vm/payload.list`, or `--payload`) as root or as the user, writes each
//!    command's output and exit status to `share/results/`, and powers off. The serial
//!    console goes to `share/serial.log`. qemu is our child: on the overall timeout it is
//!    killed through its `Child` handle.
//! 4. The results are printed; any non-zero status, a missing result or a timeout makes the
//!    task fail (and prints the tail of the serial log).

mod binaries;
mod image;
mod qemu;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask vm-test [--payload 'TAG: CMD']... [--accel auto|kvm|tcg]
                           [--timeout SECS] [--keep] [--rebuild-image]";

struct Args {
    /// Replaces scripts/vm/payload.list when given.
    payload: Vec<String>,
    accel: qemu::AccelChoice,
    timeout: Duration,
    /// Keep share/bin (the binaries) after a passing run.
    keep: bool,
    rebuild_image: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args {
        payload: Vec::new(),
        accel: qemu::AccelChoice::Auto,
        timeout: Duration::from_secs(20 * 60),
        keep: false,
        rebuild_image: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--payload" => out.payload.push(value()?.clone()),
            "--accel" => {
                out.accel = match value()?.as_str() {
                    "auto" => qemu::AccelChoice::Auto,
                    "kvm" => qemu::AccelChoice::Kvm,
                    "tcg" => qemu::AccelChoice::Tcg,
                    v => bail!("--accel {v}: expected auto, kvm or tcg"),
                }
            }
            "--timeout" => {
                let v = value()?;
                out.timeout =
                    Duration::from_secs(v.parse().with_context(|| format!("--timeout {v}"))?)
            }
            "--keep" => out.keep = true,
            "--rebuild-image" => out.rebuild_image = true,
            _ => bail!("unknown option `{a}`\n{USAGE}"),
        }
    }
    Ok(out)
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let args = parse(args)?;
    let wall = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let scripts = repo.join("scripts/vm");

    image::ensure_host_tools(&scripts)?;
    let img = image::ensure(&scripts, args.rebuild_image)?;

    let share = repo.join("target/vm-test/share");
    if share.exists() {
        fs::remove_dir_all(&share).with_context(|| format!("remove {}", share.display()))?;
    }
    fs::create_dir_all(share.join("results"))
        .with_context(|| format!("create {}", share.display()))?;
    let built = binaries::build_into(&repo, &share.join("bin"))?;
    fs::write(
        share.join("target-dir"),
        built.target_dir.as_os_str().as_encoded_bytes(),
    )?;
    fs::copy(scripts.join("guest-run.sh"), share.join("guest-run.sh"))?;
    let list = if args.payload.is_empty() {
        fs::read_to_string(scripts.join("payload.list"))?
    } else {
        args.payload.iter().map(|l| format!("{l}\n")).collect()
    };
    fs::write(share.join("payload.list"), &list)?;
    let expected: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();

    let accel = qemu::choose_accel(args.accel, &img, &share)?;
    println!(
        "vm-test: booting with {accel} ({} payload lines)",
        expected.len()
    );
    let remaining = args.timeout.saturating_sub(wall.elapsed());
    let boot = qemu::boot(&img, &share, accel, remaining)?;

    let results = read_summary(&share.join("results"))?;
    let failed = report(&share, &expected, &results, &boot);
    println!(
        "vm-test: {accel}; qemu start to payload {}; payload {}; whole vm-test {:.1}s",
        secs(boot.to_payload),
        secs(boot.payload),
        wall.elapsed().as_secs_f64()
    );
    if failed || boot.timed_out {
        print_tail(&share.join("serial.log"), 40);
        println!(
            "vm-test: FAILED; outputs in {}",
            share.join("results").display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !args.keep {
        let _ = fs::remove_dir_all(share.join("bin"));
    }
    println!("vm-test: ok");
    Ok(ExitCode::SUCCESS)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// One line of `results/summary.tsv`.
struct Ran {
    id: String,
    status: i32,
    seconds: String,
    line: String,
}

fn read_summary(results: &Path) -> Result<Vec<Ran>> {
    let path = results.join("summary.tsv");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            Some(Ran {
                id: f.next()?.into(),
                status: f.next()?.parse().ok()?,
                seconds: f.next()?.into(),
                line: f.next()?.into(),
            })
        })
        .collect())
}

/// Prints one line per payload line; returns whether anything failed or did not run.
fn report(share: &Path, expected: &[&str], ran: &[Ran], boot: &qemu::Boot) -> bool {
    let results = share.join("results");
    if let Ok(info) = fs::read_to_string(results.join("guest-info.txt")) {
        print!("{info}");
    }
    let mut failed = false;
    println!("== results ({})", results.display());
    for r in ran {
        let verdict = match r.status {
            0 => "ok",
            124 | 137 => "TIMEOUT",
            _ => "FAIL",
        };
        let counts = test_counts(&results.join(format!("{}.out", r.id)));
        println!(
            "{verdict:7} {:>7}s  exit {:<3} {:<40} {counts}",
            r.seconds, r.status, r.line
        );
        failed |= r.status != 0;
    }
    for line in expected.iter().skip(ran.len()) {
        println!("NOT RUN                     {line}");
        failed = true;
    }
    match fs::read_to_string(results.join("leftovers.txt")) {
        Ok(l) if !l.trim().is_empty() => {
            println!("leftovers in the guest after the payload:\n{l}");
            failed = true;
        }
        Ok(_) => println!("no leftover cgroups or processes in the guest"),
        Err(_) => {}
    }
    if boot.timed_out {
        println!("the VM did not power off before the timeout; qemu was killed");
    } else if let Some(status) = boot.qemu_status {
        if !status.success() {
            println!("qemu exited with {status}");
            failed = true;
        }
    }
    failed
}

/// The libtest summary line(s) of one output, e.g. `test result: FAILED. 40 passed; 2 failed`.
fn test_counts(out: &Path) -> String {
    let text = fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("test result:"))
        .map(|l| {
            l.trim_start_matches("test result: ")
                .split("; finished")
                .next()
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn print_tail(path: &PathBuf, n: usize) {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    println!("== last {n} lines of {}", path.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        println!("{l}");
    }
}
