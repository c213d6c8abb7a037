//! COMMAND starts with the signal state corral found, not corral's own: corral blocks
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT for its signalfd, and the Rust runtime ignores
//! SIGPIPE; none of that may reach COMMAND (a blocked SIGTERM would silently turn every
//! polite stop into SIGKILL). What corral's parent blocked or ignored stays so.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::util::{both_mechanisms, Mechanism, Sandbox, CORRAL};

both_mechanisms!(command_starts_with_the_signal_state_corral_found);

/// The hex mask of a `Sig*:` line of /proc/<pid>/status.
fn mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"));
    u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex mask")
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

fn command_starts_with_the_signal_state_corral_found(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("clean-start", mechanism) else {
        return;
    };
    let mut cmd = Command::new(CORRAL);
    cmd.args(["run", "--mechanism", mechanism.name()]);
    if mechanism == Mechanism::Cgroup {
        cmd.arg("--cgroup-parent").arg(sandbox.cgroup().jobs());
    }
    cmd.args(["--", "cat", "/proc/self/status"]);
    cmd.env_remove("CORRAL_CGROUP_PARENT")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // corral's parent blocks SIGUSR1 and ignores SIGUSR2: COMMAND must find both so.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().expect("run corral");
    assert!(out.status.success(), "corral failed: {:?}", out.status);
    let status = String::from_utf8_lossy(&out.stdout);
    let blocked = mask(&status, "SigBlk:");
    let ignored = mask(&status, "SigIgn:");
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        assert_eq!(
            blocked & bit(sig),
            0,
            "signal {sig} is blocked in COMMAND:\n{status}"
        );
    }
    assert_eq!(
        blocked,
        bit(libc::SIGUSR1),
        "COMMAND's mask must be the one corral found:\n{status}"
    );
    assert_eq!(
        ignored & bit(libc::SIGPIPE),
        0,
        "SIGPIPE is ignored in COMMAND:\n{status}"
    );
    assert_ne!(
        ignored & bit(libc::SIGUSR2),
        0,
        "SIGUSR2 was ignored by corral's parent:\n{status}"
    );
    sandbox.assert_clean();
}
