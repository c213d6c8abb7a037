//! A CI-runner-like loop: run build steps one after another, each as a job with a timeout,
//! and report how each ended, whatever it left running.
//!
//! ```text
//! cargo run --example ci_runner
//! ```
//! Needs a writable cgroup (root on a host without systemd) for the cgroup mechanism;
//! elsewhere corral falls back to the pgroup mechanism and says so.

use std::time::Duration;

fn main() -> Result<(), corral::Error> {
    let steps: [(&str, &str, u64); 3] = [
        ("build", "echo building; sleep 0.2; echo built", 10),
        // Leaves a daemon behind: corral stops it when the step ends.
        (
            "start-db",
            "setsid sleep 1000 & echo started a daemon; exit 0",
            10,
        ),
        // Takes longer than its timeout: stopped with SIGTERM, then SIGKILL.
        ("flaky-test", "trap '' TERM; sleep 1000", 1),
    ];
    for (name, script, timeout) in steps {
        let cmd = corral::JobCommand::new("sh").arg("-c").arg(script);
        let opts = corral::Options {
            timeout: Some(Duration::from_secs(timeout)),
            grace: Duration::from_millis(500),
            ..Default::default()
        };
        let report = corral::Job::spawn_command(&cmd, &opts)?.wait()?;
        println!(
            "{name:>10}: exit {:>3}  mechanism {}  timed out {}  leftovers stopped {}  survivors {}",
            report.exit_status,
            report.mechanism.name(),
            report.timed_out,
            report.leftovers.len(),
            report.survivors.len(),
        );
        if let Some(line) = report.summary() {
            println!("{:>10}  {line}", "");
        }
    }
    Ok(())
}
