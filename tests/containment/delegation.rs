//! A cgroup delegated to the user corral runs as (what systemd's `Delegate=yes` does: the
//! directory and its `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads` chowned
//! to the user) is found and used without `--cgroup-parent`; one that is not is reported.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::{delegate_to, executable_by_others, skip, CgroupTree, Run, Sandbox, CORRAL};

const NOBODY: u32 = 65534;

/// The sandbox, when corral can be run as `nobody` from this checkout.
fn unprivileged_sandbox(name: &str) -> Option<Sandbox> {
    let sandbox = Sandbox::with_cgroup(name)?;
    if !rustix::process::geteuid().is_root() {
        skip(format!("{name}: needs root to switch to nobody"));
        return None;
    }
    if !executable_by_others(Path::new(CORRAL)) {
        skip(format!("{name}: user nobody cannot execute {CORRAL}"));
        return None;
    }
    Some(sandbox)
}

/// `corral run --report <dir>/report.json` as nobody, in the sandbox's corral leaf.
fn run_as_nobody(sandbox: &Sandbox, mechanism: &str) -> (Run, PathBuf) {
    let mut run = sandbox.corral_bare();
    fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
    let report = run.dir.join("report.json");
    run.uid(NOBODY);
    run.args(["run", "--mechanism", mechanism, "--report"])
        .arg(&report);
    (run, report)
}

#[test]
fn the_delegated_cgroup_corral_runs_in_is_used() {
    let Some(sandbox) = unprivileged_sandbox("delegated-own") else {
        return;
    };
    let own = sandbox.cgroup().corral_leaf();
    delegate_to(&own, NOBODY);
    let (mut run, report) = run_as_nobody(&sandbox, "cgroup");
    run.tree(&["--exit", "0", "setsid"]);
    let job = run.spawn_with_report(report);
    let procs = job.wait_ready(&["top", "setsid"]);
    job.go();
    let done = job.finish();
    procs.assert_all_gone("delegated cgroup");
    done.assert_code(0);
    let report = done.report();
    assert_eq!(
        report["cgroup_parent_source"],
        "delegated",
        "{}",
        done.report_text()
    );
    let cgroup = report["cgroup"].as_str().unwrap_or_default();
    assert_eq!(
        Path::new(cgroup).parent(),
        Some(own.as_path()),
        "the job cgroup goes beside corral, in the delegated cgroup:\n{}",
        done.report_text()
    );
    assert!(
        report["mechanism_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("delegated"),
        "{}",
        done.report_text()
    );
    assert!(!Path::new(cgroup).exists(), "the job cgroup is removed");
    sandbox.assert_clean();
}

#[test]
fn a_cgroup_not_delegated_falls_back_and_says_why() {
    let Some(sandbox) = unprivileged_sandbox("delegated-not") else {
        return;
    };
    let (mut run, report) = run_as_nobody(&sandbox, "auto");
    run.tree(&["--exit", "0", "grandchild"]);
    let job = run.spawn_with_report(report);
    let procs = job.wait_ready(&["top", "grandchild"]);
    job.go();
    let done = job.finish();
    procs.assert_all_gone("fallback");
    done.assert_code(0);
    let report = done.report();
    assert_eq!(report["mechanism"], "pgroup", "{}", done.report_text());
    assert_eq!(report["degraded"], true, "{}", done.report_text());
    let reason = report["mechanism_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not delegated to us") && reason.contains("owned by uid 0"),
        "the reason names the delegation check: {reason}"
    );
    sandbox.assert_clean();
}

#[test]
fn mechanism_cgroup_without_delegation_is_a_one_line_error() {
    let Some(sandbox) = unprivileged_sandbox("delegated-error") else {
        return;
    };
    let (mut run, _) = run_as_nobody(&sandbox, "cgroup");
    run.tree(&["--exit", "0", "sleep"]);
    let done = run.run();
    // The problem and the fix.
    done.assert_refused(&["not delegated", "Delegate=yes"]);
    sandbox.assert_clean();
}

/// Root's corral in a cgroup owned by another user, below a cgroup systemd marked delegated
/// (as `user@1000.service/...` is: marked, and chowned to the user): the mark is not root's,
/// and a job's cgroup there could be emptied by that user, so root's job does not nest there
/// but stays in it under pgroup, and says why.
#[test]
fn root_never_nests_in_a_cgroup_another_user_owns() {
    let Some(sandbox) = unprivileged_sandbox("delegated-other") else {
        return;
    };
    let tree = sandbox.cgroup();
    if let Err(e) = rustix::fs::setxattr(
        tree.root(),
        "trusted.delegate",
        b"1",
        rustix::fs::XattrFlags::empty(),
    ) {
        skip(format!(
            "delegated-other: cannot mark the test's cgroup delegated ({e})"
        ));
        return;
    }
    let own = tree.corral_leaf();
    delegate_to(&own, 65534);
    let mut run = sandbox.corral_bare();
    let report = run.dir.join("report.json");
    run.args(["run", "--report"]).arg(&report);
    run.tree(&["--exit", "0", "grandchild"]);
    let job = run.spawn_with_report(report);
    let procs = job.wait_ready(&["top", "grandchild"]);
    job.go();
    let done = job.finish();
    procs.assert_all_gone("root in another user's cgroup");
    done.assert_code(0);
    let report = done.report();
    assert_eq!(report["degraded"], true, "{}", done.report_text());
    let reason = report["mechanism_reason"].as_str().unwrap_or_default();
    if fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd") {
        // On a systemd host the CLI takes a scope of root's own, bound to the unit it runs
        // in (the test's scope), rather than nest in the user's cgroup.
        assert!(
            reason.contains("obtained from systemd") && reason.contains("bound to it"),
            "the reason says where the job went: {reason}"
        );
    } else {
        assert_eq!(report["mechanism"], "pgroup", "{}", done.report_text());
        assert!(
            reason.contains("owned by uid 65534"),
            "the reason names the owner: {reason}"
        );
    }
    assert!(
        CgroupTree::children(&own).is_empty(),
        "no cgroup of root's below the user's"
    );
    sandbox.assert_clean();
}
