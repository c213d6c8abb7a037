//! `--signal SIG` chooses the polite signal of the stop sequence, by name with or without
//! `SIG`, or by number. The stubborn grandchild records each signal it gets.

use std::time::Duration;

use crate::util::{both_mechanisms, Mechanism, Sandbox};

both_mechanisms!(signal_by_name, signal_by_sig_name, signal_by_number);

fn signal_by_name(mechanism: Mechanism) {
    polite_signal(mechanism, "signal-int", "INT", libc::SIGINT);
}

fn signal_by_sig_name(mechanism: Mechanism) {
    polite_signal(mechanism, "signal-sighup", "SIGHUP", libc::SIGHUP);
}

fn signal_by_number(mechanism: Mechanism) {
    polite_signal(mechanism, "signal-3", "3", libc::SIGQUIT);
}

fn polite_signal(mechanism: Mechanism, name: &str, arg: &str, signo: i32) {
    let Some(sandbox) = Sandbox::for_mechanism(name, mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .args(["--signal", arg])
        .grace("200ms", Duration::from_millis(200))
        .tree(&["--exit", "0", "stubborn"])
        .spawn();
    let procs = job.wait_ready(&["top", "stubborn"]);
    job.go();
    let done = job.finish();
    let stubborn = procs.pid("stubborn");
    let got = done.signals_of(stubborn);
    assert_eq!(
        got,
        vec![signo],
        "--signal {arg}: signals the job got\n{}",
        done.report_text()
    );
    procs.assert_all_gone(name);
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
}
