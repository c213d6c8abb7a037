//! Twenty jobs at once, each leaving a `setsid` escapee behind: every job is contained,
//! each report lists only its own leftover, and nothing is left.

use std::collections::HashSet;

use crate::util::{both_mechanisms, Finished, Job, Mechanism, Procs, Sandbox};

both_mechanisms!(twenty_jobs_in_parallel);

const JOBS: usize = 20;

fn twenty_jobs_in_parallel(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("parallel", mechanism) else {
        return;
    };
    let jobs: Vec<Job> = (0..JOBS)
        .map(|_| {
            sandbox
                .corral(mechanism)
                .tree(&["--exit", "0", "setsid"])
                .spawn()
        })
        .collect();
    let procs: Vec<Procs> = jobs
        .iter()
        .map(|job| job.wait_ready(&["top", "setsid"]))
        .collect();
    for job in &jobs {
        job.go();
    }
    let done: Vec<Finished> = jobs.into_iter().map(Job::finish).collect();
    for (i, (procs, done)) in procs.iter().zip(&done).enumerate() {
        procs.assert_all_gone(&format!("job {i}"));
        done.assert_code(0);
        done.assert_report_basics(mechanism);
        assert_eq!(
            done.leftover_pids(),
            vec![procs.pid("setsid")],
            "job {i} must list exactly its own setsid escapee as a leftover:\n{}",
            done.report_text()
        );
    }
    sandbox.assert_clean();
    if mechanism == Mechanism::Cgroup {
        let cgroups: HashSet<&str> = done
            .iter()
            .filter_map(|d| d.report()["cgroup"].as_str())
            .collect();
        assert_eq!(
            cgroups.len(),
            JOBS,
            "each job needs its own cgroup: {cgroups:?}"
        );
    }
}
