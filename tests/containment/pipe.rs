//! The pipe case: COMMAND exits 0, but a daemon it left keeps corral's stdout and stderr
//! open. corral must kill the daemon, so a reader of corral's stdout sees EOF promptly.

use std::time::Duration;

use crate::util::{both_mechanisms, read_to_end_in_thread, Mechanism, Sandbox};

both_mechanisms!(daemon_holding_stdout_does_not_block_eof);

fn daemon_holding_stdout_does_not_block_eof(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("pipe", mechanism) else {
        return;
    };
    let mut job = sandbox
        .corral(mechanism)
        .stdout_piped()
        .tree(&["pipe-daemon"])
        .spawn();
    let stdout = read_to_end_in_thread(job.take_stdout());
    let procs = job.wait_ready(&["top", "daemon"]);
    job.go();
    let done = job.finish();
    let output = match stdout.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => result.expect("read corral's stdout"),
        Err(_) => panic!(
            "corral's stdout did not reach EOF within 5s of corral returning: the daemon \
             still holds it; report:\n{}",
            done.report_text()
        ),
    };
    assert!(
        String::from_utf8_lossy(&output).contains("daemon ready"),
        "the daemon wrote to corral's stdout: {:?}",
        String::from_utf8_lossy(&output)
    );
    procs.assert_all_gone("pipe");
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    done.leftover(procs.pid("daemon"));
}
