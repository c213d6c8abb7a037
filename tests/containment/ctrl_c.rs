//! Ctrl+C: SIGINT to corral's whole process group, as a terminal sends it. The test creates
//! that group (corral spawned with `process_group(0)`). COMMAND, a child in its group, a
//! `setpgid` escapee and a `setsid` escapee each count SIGINT deliveries in the marker and
//! die of SIGINT 300 ms after the first. Each must get SIGINT exactly once (in cgroup mode
//! COMMAND and its group get it from the "terminal", the escapees from corral), and all
//! must be gone.

use std::time::Duration;

use rustix::process::Signal;

use crate::util::{
    both_mechanisms, second_signal_cuts_the_grace, Finished, Mechanism, Procs, Sandbox,
};

both_mechanisms!(
    ctrl_c_reaches_every_process_exactly_once,
    second_ctrl_c_skips_the_rest_of_the_grace
);

pub const SIGINT_ROLES: [&str; 4] = ["top", "int-child", "int-setpgid", "int-setsid"];

fn ctrl_c_reaches_every_process_exactly_once(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("ctrl-c", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .process_group(0)
        .tree(&["sigint"])
        .spawn();
    let procs = job.wait_ready(&SIGINT_ROLES);
    job.signal_group(Signal::INT);
    let done = job.finish();
    procs.assert_all_gone("ctrl-c");
    sandbox.assert_clean();
    assert_sigint_once_each(&procs, &done);
    done.assert_code(128 + libc::SIGINT);
    done.assert_report_basics(mechanism);
}

/// Each process of the `sigint` tree recorded exactly one SIGINT.
pub fn assert_sigint_once_each(procs: &Procs, done: &Finished) {
    for role in SIGINT_ROLES {
        let pid = procs.pid(role);
        let got = done.signals_of(pid);
        assert_eq!(
            got,
            vec![libc::SIGINT],
            "{role} (pid {pid}) must receive SIGINT exactly once; it got signals {got:?}"
        );
    }
}

/// A grandchild that survives Ctrl+C (it records SIGINT and carries on): a second Ctrl+C
/// must end the 60 s grace at once.
fn second_ctrl_c_skips_the_rest_of_the_grace(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("second-ctrl-c", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .process_group(0)
        .grace("60s", Duration::from_secs(60))
        .tree(&["stubborn", "--cont"])
        .spawn();
    let procs = job.wait_ready(&["top", "stubborn"]);
    job.signal_group(Signal::INT);
    // Wait until corral has taken the first SIGINT in (its stop sequence sends SIGCONT to
    // every member): two SIGINTs that reach corral before it reads the first are one
    // pending signal to the kernel, as for any program.
    job.wait_signalled(procs.pid("stubborn"), &[libc::SIGINT, libc::SIGCONT]);
    second_signal_cuts_the_grace(
        &sandbox,
        mechanism,
        (job, &procs),
        (libc::SIGINT, "second Ctrl+C"),
        |job| job.signal_group(Signal::INT),
    );
}
