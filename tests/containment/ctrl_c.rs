//! Ctrl+C: SIGINT to corral's whole process group, as a terminal sends it. The test creates
//! that group (corral spawned with `process_group(0)`). COMMAND, a child in its group, a
//! `setpgid` escapee and a `setsid` escapee each count SIGINT deliveries in the marker and
//! die of SIGINT 300 ms after the first. Each must get SIGINT exactly once (in cgroup mode
//! COMMAND and its group get it from the "terminal", the escapees from corral), and all
//! must be gone.

use rustix::process::Signal;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(ctrl_c_reaches_every_process_exactly_once);

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
    assert_sigint_once_each(&procs, &done.marker_lines());
    done.assert_code(128 + libc::SIGINT);
    done.assert_report_basics(mechanism);
}

/// Each process of the `sigint` tree recorded exactly one SIGINT.
pub fn assert_sigint_once_each(procs: &crate::util::Procs, marks: &[(String, i32, i32)]) {
    for role in SIGINT_ROLES {
        let pid = procs.pid(role);
        let got: Vec<i32> = marks
            .iter()
            .filter(|(_, p, _)| *p == pid)
            .map(|(_, _, s)| *s)
            .collect();
        assert_eq!(
            got,
            vec![libc::SIGINT],
            "{role} (pid {pid}) must receive SIGINT exactly once; it got signals {got:?}"
        );
    }
}
