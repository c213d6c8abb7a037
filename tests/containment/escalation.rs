//! A grandchild that ignores SIGTERM: after the grace, corral must escalate to SIGKILL, and
//! the report must show the kill step.

use std::time::Duration;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(
    ignored_sigterm_escalates_to_kill_after_the_grace,
    zero_grace_kills_at_once
);

fn ignored_sigterm_escalates_to_kill_after_the_grace(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("escalation", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .grace("300ms", Duration::from_millis(300))
        .tree(&["--exit", "0", "ignore-term"])
        .spawn();
    let (procs, done) =
        job.exit_leaving(&sandbox, mechanism, &["top", "ignore-term"], "escalation");
    done.leftover(procs.pid("ignore-term"));

    let at = |name: &str| {
        done.step(name)["at_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{name}` step:\n{}", done.report_text()))
    };
    let (signal_at, kill_at) = (at("signal"), at("kill"));
    assert!(
        kill_at >= signal_at + 250,
        "SIGKILL came {}ms after the polite signal; the grace is 300ms:\n{}",
        kill_at.saturating_sub(signal_at),
        done.report_text()
    );
    done.assert_stop_outcome("killed");
}

fn zero_grace_kills_at_once(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("zero-grace", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .args(["--grace", "0"])
        .tree(&["--exit", "0", "ignore-term"])
        .spawn();
    let (_procs, done) =
        job.exit_leaving(&sandbox, mechanism, &["top", "ignore-term"], "zero grace");
    done.assert_has_step("kill");
    assert_eq!(
        done.stop_steps().first().map(String::as_str),
        Some("kill"),
        "--grace 0 must kill at once, with no polite signal or grace (took {:?}):\n{}",
        done.returned_after,
        done.report_text()
    );
}
