//! Resource limits and accounting on any host.
//!
//! - A limit whose controller the cgroup parent does not offer is an error before anything
//!   runs: exit 125, one line naming the controller and why (bound to cgroup v1 on a hybrid
//!   host, else not available in the parent), no job cgroup and no process left. The test
//!   subtree's `jobs` parent never has controllers of its own (the test does not enable
//!   them above it), so this holds on every host.
//! - Limits with the pgroup mechanism are an error too (never a silent no-op).
//! - Every cgroup job reports what its cgroup accounted: CPU time always, peaks only where
//!   the controller keeps them (`None`, listed in `unavailable`, otherwise).
//!
//! The behaviours that need the controllers (an OOM kill, pids.max against a fork storm,
//! cpu.max throttling) are in `tests/limits_vm.rs`, run in the systemd VM.

use std::fs;
use std::path::Path;

use crate::util::{skip, Mechanism, Sandbox};

/// Whether `/proc/self/cgroup` lists a cgroup v1 hierarchy with `controller`.
pub fn bound_to_v1(controller: &str) -> bool {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.splitn(3, ':');
            let id = fields.next().unwrap_or("0");
            let controllers = fields.next().unwrap_or("");
            id != "0" && controllers.split(',').any(|c| c == controller)
        })
}

/// Whether the cgroup `dir` offers `controller` to its children' limit files.
pub fn offers(dir: &Path, controller: &str) -> bool {
    fs::read_to_string(dir.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
        || fs::read_to_string(dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == controller)
}

fn unavailable_limit_is_an_error(flag: &str, value: &str, file: &str, controller: &str) {
    let name = format!("limit-unavailable-{controller}-{file}");
    let Some(sandbox) = Sandbox::with_cgroup(&name) else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    if offers(&jobs, controller) {
        skip(format!(
            "{name}: {} offers the {controller} controller, so the limit would apply",
            jobs.display()
        ));
        return;
    }
    let subtree_before = fs::read_to_string(jobs.join("cgroup.subtree_control")).unwrap();
    let done = sandbox
        .corral(Mechanism::Cgroup)
        .args([flag, value])
        .tree(&["sleep"])
        .run();
    done.assert_code(125);
    done.assert_one_line_error();
    let why = if bound_to_v1(controller) {
        format!("the {controller} controller is bound to cgroup v1")
    } else {
        format!("the {controller} controller is not available in the cgroup parent")
    };
    assert!(
        done.stderr.contains(&format!("cannot apply {file}: ")) && done.stderr.contains(&why),
        "{flag} {value}: expected an error naming {file} and saying `{why}`, got {:?}",
        done.stderr
    );
    assert!(!done.tree_started(), "COMMAND ran although {flag} failed");
    assert!(
        done.report.is_none(),
        "a report was written for a job that never ran"
    );
    sandbox.assert_clean();
    assert_eq!(
        fs::read_to_string(jobs.join("cgroup.subtree_control")).unwrap(),
        subtree_before,
        "the parent's cgroup.subtree_control changed"
    );
}

#[test]
fn memory_max_without_the_memory_controller_is_an_error() {
    unavailable_limit_is_an_error("--memory-max", "64M", "memory.max", "memory");
}

#[test]
fn memory_high_without_the_memory_controller_is_an_error() {
    unavailable_limit_is_an_error("--memory-high", "1G", "memory.high", "memory");
}

#[test]
fn pids_max_without_the_pids_controller_is_an_error() {
    unavailable_limit_is_an_error("--pids-max", "32", "pids.max", "pids");
}

#[test]
fn cpu_max_without_the_cpu_controller_is_an_error() {
    unavailable_limit_is_an_error("--cpu-max", "50ms/100ms", "cpu.max", "cpu");
}

#[test]
fn cpu_weight_without_the_cpu_controller_is_an_error() {
    unavailable_limit_is_an_error("--cpu-weight", "50", "cpu.weight", "cpu");
}

#[test]
fn limits_with_the_pgroup_mechanism_are_an_error() {
    let sandbox = Sandbox::new("limit-pgroup");
    let done = sandbox
        .corral(Mechanism::Pgroup)
        .args(["--pids-max", "32"])
        .tree(&["sleep"])
        .run();
    done.assert_refused(&["cannot apply pids.max: resource limits need the cgroup mechanism"]);
    sandbox.assert_clean();
}

#[test]
fn bad_limit_values_are_usage_errors() {
    let sandbox = Sandbox::new("limit-values");
    for (flag, value) in [
        ("--memory-max", "12X"),
        ("--memory-high", "-1"),
        ("--pids-max", "0"),
        ("--pids-max", "lots"),
        ("--cpu-max", "0.5"),
        ("--cpu-max", "50ms/5s"),
        ("--cpu-weight", "0"),
        ("--cpu-weight", "10001"),
    ] {
        let done = sandbox
            .corral(Mechanism::Pgroup)
            .args([flag, value])
            .tree(&["sleep"])
            .run();
        done.assert_code(125);
        done.assert_one_line_error();
        assert!(!done.tree_started(), "COMMAND ran with {flag} {value}");
    }
}

#[test]
fn a_cgroup_job_reports_its_cpu_time_and_which_figures_are_unavailable() {
    let Some(sandbox) = Sandbox::with_cgroup("usage-cpu") else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .tree(&["burn", "--cpu", "200ms"])
        .spawn();
    job.go();
    let done = job.finish();
    done.assert_code(0);
    done.assert_report_basics(Mechanism::Cgroup);
    sandbox.assert_clean();
    let report = done.report();
    let usage = &report["usage"];
    let user = usage["cpu_user_usec"].as_u64().unwrap_or(0);
    let system = usage["cpu_system_usec"].as_u64().unwrap_or(0);
    assert!(
        user > 50_000 && user + system < 60_000_000,
        "a 200 ms burn should show as user CPU time:\n{}",
        done.report_text()
    );
    assert_eq!(report["oom_killed"], false, "{}", done.report_text());
    assert!(report["limits"].is_null(), "{}", done.report_text());
    let jobs = sandbox.cgroup().jobs();
    let unavailable: Vec<&str> = usage["unavailable"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for (field, controller) in [
        ("memory_peak_bytes", "memory"),
        ("pids_peak", "pids"),
        ("oom_kills", "memory"),
    ] {
        if !offers(&jobs, controller) {
            assert!(
                usage[field].is_null() && unavailable.contains(&field),
                "{field} must be null and listed as unavailable without the {controller} \
                 controller:\n{}",
                done.report_text()
            );
        }
    }
}

#[test]
fn a_pgroup_job_has_no_usage() {
    let sandbox = Sandbox::new("usage-pgroup");
    let done = sandbox.corral(Mechanism::Pgroup).tree(&["exit", "0"]).run();
    done.assert_code(0);
    assert!(done.report()["usage"].is_null(), "{}", done.report_text());
    assert_eq!(done.report()["oom_killed"], false);
}

/// Without `--cgroup-parent`, corral may create its default parent `<mount>/corral` before
/// it finds that a limit cannot be had: the error must take it away again (bad input
/// leaves nothing behind).
#[test]
fn an_unavailable_limit_leaves_no_default_parent_behind() {
    let Some(sandbox) = Sandbox::with_cgroup("limit-default-parent") else {
        return;
    };
    let default = crate::util::cgroup2_mount()
        .expect("a cgroup2 mount")
        .join("corral");
    let existed = default.exists();
    let mut run = sandbox.corral_bare();
    // On a systemd host corral would otherwise re-run itself in a delegated scope, where
    // the limit can be had; this test is about the error path.
    run.env("CORRAL_IN_SYSTEMD_SCOPE", "1");
    run.args(["run", "--mechanism", "cgroup", "--memory-max", "64M"])
        .tree(&["--exit", "0", "sleep"]);
    let done = run.run();
    done.assert_refused(&[]);
    // Another corral's job may use the default parent meanwhile; one left empty, where
    // there was none before, is ours.
    let left_empty = default.exists()
        && fs::read_dir(&default)
            .map(|d| d.flatten().all(|e| !e.path().is_dir()))
            .unwrap_or(false);
    assert!(
        existed || !left_empty,
        "{} was left behind by a run that failed: {}",
        default.display(),
        done.stderr
    );
    sandbox.assert_clean();
}

/// `--limits-best-effort`: limits the host cannot enforce (here: any, under the pgroup
/// mechanism, on every host) are dropped with one line each and listed in the report's
/// `limits_skipped`, and the job runs; without it the same run is refused (above).
#[test]
fn best_effort_limits_run_without_what_cannot_be_enforced_and_say_so() {
    let sandbox = Sandbox::new("limit-best-effort");
    let mut run = sandbox.corral(Mechanism::Pgroup);
    run.args([
        "--limits-best-effort",
        "--pids-max",
        "32",
        "--memory-max",
        "64M",
    ])
    .tree(&["exit", "0"]);
    let done = run.run();
    done.assert_code(0);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per limit dropped: {:?}",
        done.stderr
    );
    for file in ["pids.max", "memory.max"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("corral: limit {file} not applied"))),
            "{file}: {:?}",
            done.stderr
        );
        assert!(
            done.report()["limits_skipped"][file]
                .as_str()
                .is_some_and(|why| why.contains("cgroup mechanism")),
            "{file}: {}",
            done.report_text()
        );
    }
    sandbox.assert_clean();
}
