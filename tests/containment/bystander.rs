//! A bystander: a process in corral's own process group and session that is not part of
//! the job (think of the interactive shell that ran corral; it ignores SIGINT). It must
//! survive Ctrl+C to that group and every stop sequence: corral must never signal its own
//! process group.
//!
//! The test starts the bystander as leader of a new process group and spawns corral into
//! that group.

use std::time::Duration;

use rustix::process::Signal;

use crate::ctrl_c::{assert_sigint_once_each, SIGINT_ROLES};
use crate::util::{both_mechanisms, Direct, Mechanism, Sandbox};

both_mechanisms!(
    bystander_survives_ctrl_c_to_corrals_group,
    bystander_survives_sigterm_to_corral,
    bystander_survives_escalation_to_kill,
);

/// How long the bystander must stay alive after corral returned: any signal corral sent it
/// has been delivered by then; a default-action death takes microseconds.
const SURVIVAL_WINDOW: Duration = Duration::from_millis(300);

fn start_bystander(sandbox: &Sandbox) -> Direct {
    let bystander = sandbox.spawn_direct(&["bystander"], Some(0));
    bystander.wait_ready("bystander");
    bystander
}

fn bystander_survives_ctrl_c_to_corrals_group(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("bystander-ctrl-c", mechanism) else {
        return;
    };
    let bystander = start_bystander(&sandbox);
    let job = sandbox
        .corral(mechanism)
        .process_group(bystander.pid())
        .tree(&["sigint"])
        .spawn();
    let procs = job.wait_ready(&SIGINT_ROLES);
    bystander.signal_group(Signal::INT);
    let done = job.finish();
    bystander.assert_alive_for(SURVIVAL_WINDOW, "Ctrl+C to corral's process group");
    procs.assert_all_gone("bystander ctrl-c");
    sandbox.assert_clean();
    assert_sigint_once_each(&procs, &done);
    done.assert_code(128 + libc::SIGINT);
    done.assert_report_basics(mechanism);
}

fn bystander_survives_sigterm_to_corral(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("bystander-sigterm", mechanism) else {
        return;
    };
    let bystander = start_bystander(&sandbox);
    let job = sandbox
        .corral(mechanism)
        .process_group(bystander.pid())
        .tree(&["setsid"])
        .spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    job.signal(Signal::TERM);
    let done = job.finish();
    bystander.assert_alive_for(SURVIVAL_WINDOW, "SIGTERM to corral");
    procs.assert_all_gone("bystander sigterm");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(mechanism);
}

fn bystander_survives_escalation_to_kill(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("bystander-kill", mechanism) else {
        return;
    };
    let bystander = start_bystander(&sandbox);
    let job = sandbox
        .corral(mechanism)
        .process_group(bystander.pid())
        .grace("200ms", Duration::from_millis(200))
        .tree(&["--exit", "0", "ignore-term"])
        .spawn();
    let procs = job.wait_ready(&["top", "ignore-term"]);
    job.go();
    let done = job.finish();
    bystander.assert_alive_for(SURVIVAL_WINDOW, "a stop sequence that escalated to SIGKILL");
    procs.assert_all_gone("bystander kill");
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    done.assert_has_step("kill");
}
