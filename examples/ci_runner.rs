//! A CI-runner-like loop: run build steps one after another, each as a job with a timeout,
//! capture each step's output, and report how each ended, whatever it left running.
//!
//! ```text
//! cargo run --example ci_runner
//! ```
//! With a writable cgroup (root on a host without systemd, or a delegated one) each step
//! gets a cgroup; elsewhere corral uses the pgroup mechanism under its supervisor process
//! (the `corral` binary: `cargo build` first) and the report says so.

#[cfg(target_os = "linux")]
mod imp {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    pub fn main() -> Result<(), corral::Error> {
        let steps: [(&str, &str, u64); 3] = [
            ("build", "echo building; sleep 0.2; echo built", 10),
            // Leaves a daemon behind that keeps stdout open: corral stops it when the step
            // ends, and output collection does not wait for it.
            (
                "start-db",
                "setsid sleep 1000 & echo started a daemon; exit 0",
                10,
            ),
            // Takes longer than its timeout: stopped with SIGTERM, then SIGKILL.
            ("flaky-test", "trap '' TERM; echo testing; sleep 1000", 1),
        ];
        for (name, script, timeout) in steps {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let opts = corral::Options {
                timeout: Some(Duration::from_secs(timeout)),
                grace: Duration::from_millis(500),
                ..Default::default()
            };
            let output = corral::Job::spawn(&mut cmd, &opts)?.wait_with_output()?;
            let report = &output.report;
            println!(
            "{name:>10}: exit {:>3}  mechanism {}  timed out {}  leftovers stopped {}  survivors {}",
            report.exit_status,
            report.mechanism.name(),
            report.timed_out,
            report.leftovers.len(),
            report.survivors.len(),
        );
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                println!("{:>10}  | {line}", "");
            }
            if let Some(line) = report.summary() {
                println!("{:>10}  {line}", "");
            }
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn main() -> Result<(), corral::Error> {
    imp::main()
}

/// The example uses Linux-only parts of the API (`members`, `wait_with_output`).
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("ci_runner: this example runs on Linux");
}
