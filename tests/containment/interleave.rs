//! 2000 `corral run -v` jobs, 32 at a time, share one stderr pipe. Each corral writes two
//! lines there, its start (`corral: job ID pid N mechanism pgroup`) and its summary
//! (`corral: job ID: sh exited with status 3`), each in one `write(2)` shorter than
//! PIPE_BUF (`stderr_line`, cli/src/bin/shared/job_args.rs), which a pipe never splits nor
//! mixes with another writer's. So the reader sees only whole corral lines: one start and
//! one summary per job, each naming that job's own id; every job returns COMMAND's 3, and
//! the registry is empty afterwards.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Pid, PidfdFlags};

use crate::util::{
    corral_deadline, describe_status, place_in_cgroup, read_to_end_in_thread, wait_exited, Sandbox,
    CORRAL, GONE_DEADLINE,
};

const JOBS: usize = 2000;
/// How many corrals run at once.
const AT_ONCE: usize = 32;
/// COMMAND's exit status, which each corral returns and names in its summary.
const STATUS: i32 = 3;

#[test]
fn no_summary_line_is_interleaved_in_2000_parallel_jobs() {
    let sandbox = Sandbox::new("interleave");
    let (reader, writer) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
    let output = read_to_end_in_thread(std::fs::File::from(reader));
    let started = Instant::now();
    // A hang detector for the whole run: no job starts after it (each running job still
    // has its own deadline).
    let launch_until = started + corral_deadline() * 4;
    let next = AtomicUsize::new(0);
    // Set on the first failure, so that a broken build fails in seconds, not minutes.
    let failed = AtomicBool::new(false);
    let ran: Vec<Result<(u32, ExitStatus), String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                scope.spawn(|| {
                    let mut ran = Vec::new();
                    while !failed.load(Ordering::Relaxed)
                        && Instant::now() < launch_until
                        && next.fetch_add(1, Ordering::Relaxed) < JOBS
                    {
                        let outcome = corral_command(&sandbox, &writer)
                            .and_then(|mut command| Corral::spawn(&mut command))
                            .map_err(|e| format!("cannot start corral: {e}"))
                            .and_then(Corral::wait);
                        failed.fetch_or(outcome.is_err(), Ordering::Relaxed);
                        ran.push(outcome);
                    }
                    ran
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a worker panicked"))
            .collect()
    });
    // The pipe's last writers are gone with our end: every corral, and every `sh`, has
    // exited.
    drop(writer);
    let output = output.recv_timeout(GONE_DEADLINE);
    let elapsed = started.elapsed();

    let errors: Vec<&String> = ran.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {} jobs failed:\n  {}",
        errors.len(),
        ran.len(),
        errors
            .iter()
            .take(20)
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert_eq!(
        ran.len(),
        JOBS,
        "only {} of {JOBS} jobs ran in {elapsed:?}",
        ran.len()
    );
    let wrong: Vec<String> = ran
        .iter()
        .flatten()
        .filter(|(_, status)| status.code() != Some(STATUS))
        .map(|(pid, status)| format!("corral {pid}: {}", describe_status(*status)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {JOBS} corrals did not return COMMAND's {STATUS}:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );

    let output = output
        .expect("the stderr pipe is still open after every corral returned")
        .expect("read the stderr pipe");
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.is_empty() || output.ends_with('\n'),
        "the output ends in a torn line: {:?}",
        output.lines().last()
    );
    let mut starts = Vec::new();
    let mut summaries = Vec::new();
    let mut sweeps = Vec::new();
    let mut malformed = Vec::new();
    for (n, text) in output.lines().enumerate() {
        match Line::parse(text) {
            Some(Line::Start { id }) => starts.push(id),
            Some(Line::Summary { id, status }) if status == STATUS => summaries.push(id),
            Some(Line::Sweep) => sweeps.push(format!("line {}: {text:?}", n + 1)),
            _ => malformed.push(format!("line {}: {text:?}", n + 1)),
        }
    }
    assert!(
        malformed.is_empty(),
        "{} of {} lines are not whole corral lines (start, summary of a COMMAND that \
         exited {STATUS}, start-up sweep): torn or interleaved?\n  {}",
        malformed.len(),
        output.lines().count(),
        malformed
            .iter()
            .take(40)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    // Each corral's one job is its first: `corral-<its pid>-0`. A PID may have been reused
    // over the run, so the ids are compared as multisets.
    let expected: Vec<String> = ran
        .iter()
        .flatten()
        .map(|(pid, _)| format!("corral-{pid}-0"))
        .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    for (what, ids) in [("start", &starts), ("summary", &summaries)] {
        let missing = multiset_difference(&expected, ids);
        let unexpected = multiset_difference(ids, &expected);
        assert!(
            ids.len() == JOBS && missing.is_empty() && unexpected.is_empty(),
            "{} {what} lines for {JOBS} jobs: one per job expected\n  no {what} line \
             for: {missing:?}\n  {what} lines for no job (or a second one): {unexpected:?}",
            ids.len()
        );
    }

    // Every job ended cleanly and removed its own record before its corral exited, so no
    // corral's start-up sweep had anything stale to clean up or report.
    assert!(
        sweeps.is_empty(),
        "{} start-up sweep lines, though every job ended cleanly and removed its own record \
         (a sweep that took a record read just before its corral ended for a stale one?):\n  {}",
        sweeps.len(),
        sweeps
            .iter()
            .take(20)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n  ")
    );

    let left: Vec<String> = std::fs::read_dir(&sandbox.runtime)
        .unwrap_or_else(|e| panic!("read {}: {e}", sandbox.runtime.display()))
        .flatten()
        .map(|entry| entry.path().display().to_string())
        .collect();
    assert!(
        left.is_empty(),
        "left in the registry after every corral returned:\n  {}",
        left.join("\n  ")
    );
    sandbox.assert_clean();
    eprintln!(
        "interleave: {JOBS} jobs, {AT_ONCE} at a time, {} lines on one pipe in {elapsed:?}",
        output.lines().count()
    );
}

/// `corral run -v --mechanism pgroup -- sh -c 'exit 3'`, its stderr a copy of `stderr`,
/// in the sandbox's registry (and, when there is one, its cgroup for corral).
fn corral_command(sandbox: &Sandbox, stderr: &OwnedFd) -> io::Result<Command> {
    let mut command = Command::new(CORRAL);
    command
        .args(["run", "-v", "--mechanism", "pgroup", "--", "sh", "-c"])
        .arg(format!("exit {STATUS}"))
        .env_remove("CORRAL_CGROUP_PARENT")
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone()?);
    if let Some(cgroup) = &sandbox.cgroup {
        place_in_cgroup(&mut command, &cgroup.corral_leaf());
    }
    Ok(command)
}

/// A corral we started. Dropped before it was reaped (past its deadline, or on a panic),
/// it is killed with `Child::kill`, which is safe then because an unreaped child's PID is
/// still its own, and reaped.
struct Corral {
    child: Option<Child>,
    pidfd: OwnedFd,
}

impl Corral {
    fn spawn(command: &mut Command) -> io::Result<Corral> {
        let mut child = command.spawn()?;
        match rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty()) {
            Ok(pidfd) => Ok(Corral {
                child: Some(child),
                pidfd,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "pidfd_open on our own child: {e}"
                )))
            }
        }
    }

    /// Waits for corral to return within [`corral_deadline`], and reaps it; `(pid,
    /// status)`.
    fn wait(mut self) -> Result<(u32, ExitStatus), String> {
        let child = self.child.as_ref().expect("not reaped yet");
        let pid = child.id();
        if !wait_exited(self.pidfd.as_fd(), Instant::now() + corral_deadline()) {
            // Killed and reaped by Drop.
            return Err(format!(
                "corral {pid} did not return within {:?}",
                corral_deadline()
            ));
        }
        let mut child = self.child.take().expect("not reaped yet");
        match child.wait() {
            Ok(status) => Ok((pid, status)),
            Err(e) => Err(format!("wait for corral {pid}: {e}")),
        }
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A line `corral run -v` writes on stderr (here, where COMMAND is `sh` and the mechanism
/// pgroup).
#[derive(Debug, PartialEq)]
enum Line<'a> {
    /// `corral: job ID pid N mechanism pgroup`
    Start { id: &'a str },
    /// `corral: job ID: sh exited with status N`
    Summary { id: &'a str, status: i32 },
    /// `corral: start-up sweep: job ID: ...` (what it found stale and cleaned up)
    Sweep,
}

impl<'a> Line<'a> {
    /// The line, if it is one whole start, summary or sweep line and nothing else.
    fn parse(text: &'a str) -> Option<Line<'a>> {
        if let Some(rest) = text.strip_prefix("corral: start-up sweep: job ") {
            let (id, what) = rest.split_once(": ")?;
            return (is_job_id(id) && !what.contains("corral: ")).then_some(Line::Sweep);
        }
        let rest = text.strip_prefix("corral: job ")?;
        if let Some((id, status)) = rest.split_once(": sh exited with status ") {
            let status = status.parse().ok().filter(|_| is_number(status))?;
            return is_job_id(id).then_some(Line::Summary { id, status });
        }
        let (id, rest) = rest.split_once(" pid ")?;
        let (pid, mechanism) = rest.split_once(" mechanism ")?;
        (is_job_id(id) && is_number(pid) && mechanism == "pgroup").then_some(Line::Start { id })
    }
}

/// `corral-<pid>-<seq>`.
fn is_job_id(id: &str) -> bool {
    id.strip_prefix("corral-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, seq)| is_number(pid) && is_number(seq))
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The items of `a` not matched, one for one, by an item of `b`.
fn multiset_difference<'a>(a: &[&'a str], b: &[&str]) -> Vec<&'a str> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for item in b {
        *left.entry(item).or_default() += 1;
    }
    let mut difference = Vec::new();
    for item in a {
        match left.get_mut(item) {
            Some(n) if *n > 0 => *n -= 1,
            _ => difference.push(*item),
        }
    }
    difference
}

#[test]
fn torn_or_mixed_lines_are_not_whole_lines() {
    assert_eq!(
        Line::parse("corral: job corral-12-0 pid 13 mechanism pgroup"),
        Some(Line::Start { id: "corral-12-0" })
    );
    assert_eq!(
        Line::parse("corral: job corral-12-0: sh exited with status 3"),
        Some(Line::Summary {
            id: "corral-12-0",
            status: 3
        })
    );
    assert_eq!(
        Line::parse(
            "corral: start-up sweep: job corral-12-0: pgroup job whose supervisor (pid 12) \
             is gone; its processes cannot be found without a cgroup"
        ),
        Some(Line::Sweep)
    );
    for torn in [
        "corral: job corral-12-0 pid 13 mechanism",
        "corral: job corral-12-0: sh exited with status ",
        "corral: job corral-12-0 pid corral: job corral-14-0 pid 15 mechanism pgroup",
        "corral: job corral-12-0: sh exited with status 3corral: job corral-14-0 pid 15 \
         mechanism pgroup",
        "corral: job corral-12-corral: job corral-14-0: sh exited with status 3",
        "corral: start-up sweep: job corral-12-0: pgroup jobcorral: job corral-14-0 pid 15 \
         mechanism pgroup",
        "3",
    ] {
        assert_eq!(Line::parse(torn), None, "{torn:?}");
    }
}
