//! `corral-helper`: runs jobs for unprivileged callers, with full containment and the
//! limits an administrator's policy allows, and gives them nothing else (see
//! `docs/security.md`).
//!
//! Installed setuid root (or run through `sudo`). The flow of `corral-helper run`:
//! 1. Before anything else the environment is taken out of the process (the privileged
//!    part reads no variable the caller set) and every uid and gid becomes 0.
//! 2. The policy (`policy.rs`) must be root's alone; its first rule that names the caller
//!    decides where the job's cgroup goes, which limits apply and whom `--user` may name.
//! 3. The job's place is made: `<parent>/helper-<uid>-<pid>`, a cgroup of root's that may
//!    hold one cgroup (the job's leaf), under a parent opened strictly beneath the
//!    policy's (`beneath.rs`).
//! 4. The process forks. The child becomes the job's supervisor: it spawns COMMAND (born in
//!    the leaf, as the caller, with no capability and no new privileges), then gives up
//!    root for good and supervises the job like `corral run`; it writes the report with the
//!    caller's permissions. The parent stays root, holds only the cgroup's descriptors,
//!    reads nothing from the caller, and when the supervisor exits (or is killed) kills
//!    whatever is left and removes the cgroup and the job's registry record.

#[cfg(target_os = "linux")]
mod app;
#[cfg(target_os = "linux")]
mod beneath;
#[cfg(target_os = "linux")]
#[path = "../shared/job_args.rs"]
mod job_args;
#[cfg(target_os = "linux")]
mod policy;
#[cfg(target_os = "linux")]
mod privilege;
#[cfg(target_os = "linux")]
#[path = "../corral/signals.rs"]
mod signals;

/// A directory under /tmp for unit tests, removed with everything in it when dropped.
#[cfg(all(test, target_os = "linux"))]
mod test_dir {
    use std::path::PathBuf;

    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let p = PathBuf::from(format!("/tmp/corral-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    app::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("corral-helper: error: the privileged helper runs on Linux only (cgroup v2)");
    std::process::ExitCode::from(125)
}
