//! A stop that races a fork: every process of the job gets the polite signal, also one
//! forked while the stop was listing the job's members, so a job whose processes all exit
//! on SIGTERM ends within its grace (outcome `exited`), without SIGKILL.

use std::process::Command;
use std::time::Duration;

use corral_testkit::poll_until;

use crate::common::{options, DEADLINE};
use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(stop_while_forking_reaches_every_process);

/// Four shells fork `sleep`s back to back (at most 150 each) and the job is stopped while
/// they do: the stop's member list is out of date as soon as it is read.
fn stop_while_forking_reaches_every_process(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-stop-race", mechanism) else {
        return;
    };
    let opts = corral::Options {
        grace: Duration::from_secs(2),
        ..options(&sandbox, mechanism)
    };
    let mut missed = Vec::new();
    for round in 0..12 {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "for j in 1 2 3 4; do \
               (i=0; while [ $i -lt 150 ]; do sleep 1000 & i=$((i+1)); done; wait) & \
             done; wait",
        ]);
        let mut job = corral::Job::spawn(&mut cmd, &opts).expect("spawn");
        poll_until("the job forks", DEADLINE, || {
            job.members().is_ok_and(|m| m.len() >= 100)
        });
        let report = job.stop().expect("stop");
        assert!(report.survivors.is_empty(), "{report:#?}");
        let stop = report.stop.as_ref().expect("a stop report");
        if stop.outcome != corral::StopOutcome::Exited {
            let steps: Vec<String> = stop
                .steps
                .iter()
                .map(|s| {
                    format!(
                        "{} {} processes={:?} at {} ms {}",
                        s.step,
                        s.signal.map(|s| s.to_string()).unwrap_or_default(),
                        s.processes,
                        s.at_ms,
                        s.detail.as_deref().unwrap_or("")
                    )
                })
                .collect();
            missed.push(format!(
                "round {round}: outcome {:?}\n    {}",
                stop.outcome,
                steps.join("\n    ")
            ));
        }
    }
    assert!(
        missed.is_empty(),
        "processes forked while the stop listed the job got no SIGTERM and were killed \
         after the grace:\n{}",
        missed.join("\n")
    );
    sandbox.assert_clean();
}
