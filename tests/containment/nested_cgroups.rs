//! A job that makes cgroups of its own below its leaf and moves processes into them (it can,
//! as root): those processes are still the job's. They get the polite signal, are killed
//! with the rest, and corral removes the job's cgroups depth first.

use std::time::Duration;

use crate::util::{cgroup2_mount, Mechanism, Sandbox};

/// Makes `inner/deeper` below the job's own cgroup, moves a subshell into each, and leaves
/// them running when COMMAND exits. The deeper one ignores SIGTERM when `stubborn` (set
/// before it moves, so it is in place once the move is seen).
fn script(stubborn: bool) -> String {
    let mount = cgroup2_mount()
        .expect("cgroup2 mount")
        .display()
        .to_string();
    let trap = if stubborn { "trap \"\" TERM; " } else { "" };
    format!(
        "cg={mount}$(grep '^0::' /proc/self/cgroup | cut -d: -f3); \
         mkdir -p $cg/inner/deeper || exit 90; \
         sh -c 'echo $$ > '$cg/inner/cgroup.procs' && exec sleep 1000' & \
         sh -c '{trap}echo $$ > '$cg/inner/deeper/cgroup.procs' && sleep 1000; sleep 1000' & \
         while [ $(cat $cg/inner/cgroup.procs $cg/inner/deeper/cgroup.procs | wc -l) -lt 2 ]; do sleep 0.01; done; \
         exit 0"
    )
}

fn run(name: &str, stubborn: bool) {
    let Some(sandbox) = Sandbox::with_cgroup(name) else {
        return;
    };
    let done = sandbox
        .corral(Mechanism::Cgroup)
        .grace("300ms", Duration::from_millis(300))
        .args(["--", "sh", "-c", &script(stubborn)])
        .run();
    done.assert_code(0);
    sandbox.assert_clean();
    let report = done.report();
    assert_eq!(
        report["cleanup"]["cgroup_removed"],
        true,
        "{}",
        done.report_text()
    );
    assert!(
        done.leftover_pids().len() >= 2,
        "both processes in the job's own cgroups are leftovers:\n{}",
        done.report_text()
    );
    let signalled = done.step("signal")["processes"].as_u64().unwrap_or(0);
    assert!(
        signalled >= 2,
        "the polite signal must reach the nested cgroups:\n{}",
        done.report_text()
    );
    let expected = if stubborn { "killed" } else { "exited" };
    done.assert_stop_outcome(expected);
}

#[test]
fn processes_in_cgroups_the_job_made_get_the_polite_signal() {
    run("nested-polite", false);
}

#[test]
fn processes_in_cgroups_the_job_made_are_killed_and_removed() {
    run("nested-kill", true);
}
