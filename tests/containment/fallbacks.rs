//! The fallback paths of the cgroup mechanism, forced on a kernel that has the fast ones
//! (hidden `--debug-*` flags): spawning by fork + a write to `cgroup.procs` instead of
//! `clone3(CLONE_INTO_CGROUP)`, and killing by freeze / SIGKILL each member / thaw instead of
//! `cgroup.kill`. Containment must be the same, and the report must say which path ran.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{Mechanism, Sandbox};

const CLONE3: &str = "clone3(CLONE_INTO_CGROUP|CLONE_PIDFD)";
const FORK: &str = "fork + write to cgroup.procs before exec";

/// Kernel release as (major, minor).
fn kernel() -> (u32, u32) {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn default_spawn_is_born_in_the_cgroup_with_clone3() {
    let Some(sandbox) = Sandbox::with_cgroup("spawn-clone3") else {
        return;
    };
    let job = sandbox.corral(Mechanism::Cgroup).tree(&["setsid"]).spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone("spawn-clone3");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(Mechanism::Cgroup);
    let spawn = done.report()["spawn"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // CLONE_INTO_CGROUP is Linux 5.7; on an older kernel the probe must have fallen back.
    let expected = if kernel() >= (5, 7) { CLONE3 } else { FORK };
    assert_eq!(spawn, expected, "{}", done.report_text());
}

#[test]
fn fork_fallback_contains_setsid_escapee() {
    let Some(sandbox) = Sandbox::with_cgroup("spawn-fork") else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .arg("--debug-no-clone3")
        .tree(&["--exit", "0", "setsid"])
        .spawn();
    let (procs, done) = job.exit_leaving(
        &sandbox,
        Mechanism::Cgroup,
        &["top", "setsid"],
        "spawn-fork",
    );
    assert_eq!(done.report()["spawn"], FORK, "{}", done.report_text());
    let leftover = done.leftover(procs.pid("setsid"));
    assert_eq!(leftover["left_session"], true, "{}", done.report_text());
}

#[test]
fn fork_fallback_reports_exec_failures() {
    let Some(sandbox) = Sandbox::with_cgroup("spawn-fork-127") else {
        return;
    };
    let done = sandbox
        .corral(Mechanism::Cgroup)
        .args([
            "--debug-no-clone3",
            "--",
            "/nonexistent/corral-test-command",
        ])
        .run();
    done.assert_code(127);
    done.assert_one_line_error();
    sandbox.assert_clean();
}

#[test]
fn freezer_kill_fallback_escalates_and_empties() {
    let Some(sandbox) = Sandbox::with_cgroup("kill-freezer") else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .arg("--debug-no-cgroup-kill")
        .grace("300ms", Duration::from_millis(300))
        .tree(&["--exit", "0", "ignore-term"])
        .spawn();
    let (_procs, done) = job.exit_leaving(
        &sandbox,
        Mechanism::Cgroup,
        &["top", "ignore-term"],
        "kill-freezer",
    );
    let kill = done.step("kill");
    assert!(
        kill["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("freeze")),
        "the kill step must name the freezer fallback:\n{}",
        done.report_text()
    );
    done.assert_stop_outcome("killed");
}

#[test]
fn freezer_kill_fallback_stops_a_fork_storm() {
    let Some(sandbox) = Sandbox::with_cgroup("kill-freezer-storm") else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .arg("--debug-no-cgroup-kill")
        .grace("200ms", Duration::from_millis(200))
        .tree(&["storm", "--escape"])
        .spawn();
    let mut roles = vec!["storm"; 30];
    roles.push("top");
    let procs = job.wait_ready(&roles);
    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone("kill-freezer-storm");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGKILL);
    done.assert_report_basics(Mechanism::Cgroup);
}
