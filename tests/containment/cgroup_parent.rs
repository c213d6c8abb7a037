//! Where job cgroups go: under `--cgroup-parent`, else under `CORRAL_CGROUP_PARENT`; the
//! option wins over the environment. Each job cgroup is removed when the job ends.

use std::path::Path;

use crate::util::{Finished, Run, Sandbox};

/// Runs a job that leaves a grandchild behind, with the cgroup parent given as
/// `configure` says, and returns its result after the usual checks.
fn job_with_parent(sandbox: &Sandbox, configure: impl FnOnce(&mut Run)) -> Finished {
    let mut run = sandbox.corral_bare();
    let report = run.dir.join("report.json");
    run.args(["run", "--mechanism", "cgroup", "--report"])
        .arg(&report);
    configure(&mut run);
    run.tree(&["--exit", "0", "grandchild"]);
    let job = run.spawn_with_report(report);
    let (_procs, done) = job.exit_leaving(
        sandbox,
        crate::util::Mechanism::Cgroup,
        &["top", "grandchild"],
        "cgroup parent",
    );
    done
}

fn assert_under(done: &Finished, parent: &Path) {
    let cgroup = done.report()["cgroup"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        Path::new(&cgroup).parent(),
        Some(parent),
        "the job cgroup must be a child of {}:\n{}",
        parent.display(),
        done.report_text()
    );
}

#[test]
fn cgroup_parent_from_the_environment() {
    let Some(sandbox) = Sandbox::with_cgroup("parent-env") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    let done = job_with_parent(&sandbox, |run| {
        run.env("CORRAL_CGROUP_PARENT", &jobs);
    });
    assert_under(&done, &jobs);
}

#[test]
fn cgroup_parent_option_wins_over_the_environment() {
    let Some(sandbox) = Sandbox::with_cgroup("parent-option-env") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    let elsewhere = sandbox.dir.join("not-a-cgroup");
    std::fs::create_dir(&elsewhere).unwrap();
    let done = job_with_parent(&sandbox, |run| {
        run.env("CORRAL_CGROUP_PARENT", &elsewhere);
        run.arg("--cgroup-parent").arg(&jobs);
    });
    assert_under(&done, &jobs);
}
