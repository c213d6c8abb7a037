//! Ctrl+C: SIGINT to corral's whole process group, as a terminal sends it. The test creates
//! that group (corral spawned with `process_group(0)`). COMMAND, a child in its group, a
//! `setpgid` escapee and a `setsid` escapee each count SIGINT deliveries in the marker and
//! die of SIGINT 300 ms after the first. Each must get SIGINT exactly once (in cgroup mode
//! COMMAND and its group get it from the "terminal", the escapees from corral), and all
//! must be gone.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::util::{
    both_mechanisms, read_marker, Mechanism, Sandbox, READY_DEADLINE, SECOND_SIGNAL_AFTER,
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
    let stubborn = procs.pid("stubborn");
    let marker = job.dir.join("marker");
    let deadline = Instant::now() + READY_DEADLINE;
    // Wait until corral has taken the first SIGINT in (its stop sequence sends SIGCONT to
    // every member): two SIGINTs that reach corral before it reads the first are one
    // pending signal to the kernel, as for any program.
    let got = |signo: i32| {
        read_marker(&marker)
            .iter()
            .any(|(_, p, s)| *p == stubborn && *s == signo)
    };
    while !(got(libc::SIGINT) && got(libc::SIGCONT)) {
        assert!(
            Instant::now() < deadline,
            "the stubborn process never got SIGINT and then corral's SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A second signal counts from 100 ms after corral took the first in (a stop delivered
    // twice at once is one stop), which it had by the mark seen above: wait that long, with
    // a margin. A timing condition, not a proof of anything.
    std::thread::sleep(SECOND_SIGNAL_AFTER + Duration::from_millis(50));
    let second = Instant::now();
    job.signal_group(Signal::INT);
    let done = job.finish();
    let after_second = second.elapsed();
    procs.assert_all_gone("second ctrl-c");
    sandbox.assert_clean();
    assert!(
        after_second < Duration::from_secs(30),
        "corral took {after_second:?} after the second Ctrl+C; it must skip the 60s grace"
    );
    let grace = done.step("grace");
    assert_eq!(
        grace["detail"],
        "cut short by a second signal",
        "{}",
        done.report_text()
    );
    // The second signal sends SIGKILL at once: COMMAND dies of the first signal or of
    // SIGKILL, whichever the scheduler lets happen first.
    done.assert_code_in(&[128 + libc::SIGINT, 128 + libc::SIGKILL]);
    done.assert_report_basics(mechanism);
    assert!(
        done.stop_steps().iter().any(|s| s == "kill"),
        "{}",
        done.report_text()
    );
}
