//! Booting the image under qemu: the accelerator, the command line, the overall timeout.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::image::Image;

/// What the user asked for (`--accel`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// What the boot uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation: slower, but works where `/dev/kvm` is missing or cannot run a
    /// stock kernel (some nested, paravirtual KVMs open and create VMs, then fail to boot).
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "qemu64"],
        }
    }
}

/// How long a KVM probe may take: under a working KVM the kernel reaches its init in a few
/// seconds.
const KVM_PROBE: Duration = Duration::from_secs(30);
/// What the kernel prints when `init=/bin/true` returns: the kernel booted, the initrd found
/// and mounted the root disk, and the init ran.
const PROBE_MARK: &str = "Attempted to kill init";

/// Picks the accelerator: KVM if asked, or under `auto` if a probe boot under it gets as
/// far as running an init from the image; TCG otherwise.
pub fn choose_accel(choice: AccelChoice, img: &Image, share: &Path) -> Result<Accel> {
    match choice {
        AccelChoice::Kvm => return Ok(Accel::Kvm),
        AccelChoice::Tcg => return Ok(Accel::Tcg),
        AccelChoice::Auto => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("vm-test: no usable /dev/kvm; using tcg");
        return Ok(Accel::Tcg);
    }
    let log = share.join("kvm-probe.log");
    let started = Instant::now();
    let mut child = qemu(img, Accel::Kvm, &log, "init=/bin/true", None)
        .stderr(fs::File::create(share.join("kvm-probe.stderr"))?)
        .spawn()
        .context("run qemu-system-x86_64 (kvm probe)")?;
    let (status, timed_out) = wait_or_kill(&mut child, KVM_PROBE, || false)?;
    let booted = fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(PROBE_MARK);
    let took = started.elapsed().as_secs_f64();
    if booted {
        println!("vm-test: kvm probe booted the kernel in {took:.1}s; using kvm");
        Ok(Accel::Kvm)
    } else {
        let why = if timed_out {
            format!("no init after {}s", KVM_PROBE.as_secs())
        } else {
            format!(
                "qemu exited ({}) after {took:.1}s without running init",
                status.map_or("?".into(), |s| s.to_string())
            )
        };
        let stderr = fs::read_to_string(share.join("kvm-probe.stderr")).unwrap_or_default();
        let first = stderr.lines().next().unwrap_or("no message");
        println!("vm-test: /dev/kvm exists but cannot boot the image ({why}: {first}); using tcg");
        Ok(Accel::Tcg)
    }
}

/// The qemu command: the image's kernel and initrd, its root disk with `snapshot=on` (writes
/// go to a temporary overlay, the cached image never changes), the serial console to `log`,
/// no network, no display; `-no-reboot` turns a reboot or a panic into an exit.
fn qemu(
    img: &Image,
    accel: Accel,
    log: &Path,
    extra_cmdline: &str,
    share: Option<&Path>,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(accel.args())
        .args(["-smp", &cpus().to_string(), "-m", "2048", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(img.kernel())
        .arg("-initrd")
        .arg(img.initrd())
        .arg("-append")
        .arg(format!(
            "root=/dev/vda rw console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1 {extra_cmdline}"
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,snapshot=on", img.root().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(share) = share {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            share.display()
        ));
    }
    cmd
}

/// The host's CPUs, at most 4: the tests run in parallel threads.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

/// What one boot did.
pub struct Boot {
    pub qemu_status: Option<ExitStatus>,
    pub timed_out: bool,
    /// From starting qemu to `results/started` appearing in the share.
    pub to_payload: Option<Duration>,
    /// From `results/started` to qemu's exit.
    pub payload: Option<Duration>,
}

/// Boots once and waits for the guest to power off, at most `timeout`.
pub fn boot(img: &Image, share: &Path, accel: Accel, timeout: Duration) -> Result<Boot> {
    let log = share.join("serial.log");
    let started_mark = share.join("results/started");
    let started = Instant::now();
    let mut payload_at = None;
    let mut child = qemu(img, accel, &log, "", Some(share))
        .stderr(fs::File::create(share.join("qemu.stderr"))?)
        .spawn()
        .context("run qemu-system-x86_64")?;
    let (status, timed_out) = wait_or_kill(&mut child, timeout, || {
        if payload_at.is_none() && started_mark.exists() {
            payload_at = Some(Instant::now());
            println!(
                "vm-test: payload started {:.1}s after qemu",
                started.elapsed().as_secs_f64()
            );
        }
        false
    })?;
    let end = Instant::now();
    let stderr = fs::read_to_string(share.join("qemu.stderr")).unwrap_or_default();
    if !stderr.trim().is_empty() {
        println!("qemu stderr:\n{}", stderr.trim_end());
    }
    if let (Some(s), None) = (status, payload_at) {
        if !s.success() && !log.exists() {
            bail!("qemu exited with {s} before the guest started");
        }
    }
    Ok(Boot {
        qemu_status: status,
        timed_out,
        to_payload: payload_at.map(|p| p - started),
        payload: payload_at.map(|p| end - p),
    })
}

/// Waits for our qemu child to exit, calling `tick` every 200 ms; past `timeout` it kills
/// the child (through its handle: our own unreaped child, so the PID is still ours) and
/// reaps it. Returns the exit status (None when killed) and whether it timed out.
fn wait_or_kill(
    child: &mut Child,
    timeout: Duration,
    mut tick: impl FnMut() -> bool,
) -> Result<(Option<ExitStatus>, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            tick();
            return Ok((Some(status), false));
        }
        if tick() || Instant::now() >= deadline {
            child.kill().context("kill qemu")?;
            child.wait()?;
            return Ok((None, true));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
