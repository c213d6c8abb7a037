//! `corral-helper`: installed setuid root, runs jobs for unprivileged callers under an
//! administrator's policy (`policy`), in cgroups beneath the directories that policy allows
//! (`beneath`). The main program is not written yet: this stub declares the modules so that
//! their unit tests run (`cargo test --all-features --bin corral-helper`).

#[cfg(target_os = "linux")]
#[allow(dead_code)]
mod beneath;
#[cfg(target_os = "linux")]
#[allow(dead_code)]
mod policy;

fn main() {}
