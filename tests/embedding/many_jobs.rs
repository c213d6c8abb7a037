//! 100 jobs in one process from 8 threads, each waited for or stopped at random: every
//! report is right for what its job did, and nothing is left behind (no cgroup, no
//! process, no unreaped main process).

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{cgroup_options, start_time};
use crate::util::Sandbox;

const JOBS: usize = 100;
const THREADS: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `sleep 0.1`: exits 0 by itself, nothing left.
    Short,
    /// `sh -c 'sleep 1000 & exit 0'`: one leftover to stop.
    Leftover,
}

#[derive(Clone, Copy, Debug)]
enum End {
    Wait,
    Stop,
}

#[test]
fn hundred_jobs_from_eight_threads() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-many") else {
        return;
    };
    let opts = corral::Options {
        grace: Duration::from_secs(5),
        ..cgroup_options(&sandbox)
    };
    let seed = std::env::var("CORRAL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("hundred_jobs_from_eight_threads: CORRAL_TEST_SEED={seed}");
    let rng = AtomicU64::new(seed);
    let next = AtomicUsize::new(0);
    // (pid, start time) of every main process, to check none is left unreaped.
    let mains = Mutex::new(Vec::new());
    let ids = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::SeqCst) < JOBS {
                    let r = random(&rng);
                    let shape = if r & 1 == 0 {
                        Shape::Short
                    } else {
                        Shape::Leftover
                    };
                    let end = if r & 2 == 0 { End::Wait } else { End::Stop };
                    let mut cmd = match shape {
                        Shape::Short => {
                            let mut c = Command::new("sleep");
                            c.arg("0.1");
                            c
                        }
                        Shape::Leftover => {
                            let mut c = Command::new("/bin/sh");
                            c.args(["-c", "sleep 1000 & exit 0"]);
                            c
                        }
                    };
                    let mut job = corral::Job::spawn(&mut cmd, &opts).expect("spawn");
                    // Our unreaped child until the job reaps it: the PID is its own.
                    let started = start_time(job.pid()).expect("the main process's stat");
                    mains.lock().unwrap().push((job.pid(), started));
                    assert!(ids.lock().unwrap().insert(job.id().to_string()));
                    let cgroup = job.cgroup().expect("cgroup").to_path_buf();
                    let report = match end {
                        End::Wait => job.wait(),
                        End::Stop => job.stop(),
                    }
                    .expect("wait/stop");
                    check(&report, shape, end);
                    assert!(!cgroup.exists(), "{} left", cgroup.display());
                }
            });
        }
    });
    assert_eq!(ids.lock().unwrap().len(), JOBS);
    for (pid, started) in mains.lock().unwrap().iter() {
        assert_ne!(
            start_time(*pid),
            Some(*started),
            "main process {pid} is still there (running or unreaped)"
        );
    }
    sandbox.assert_clean();
}

fn check(report: &corral::Report, shape: Shape, end: End) {
    let ctx = || format!("{shape:?} + {end:?}: {report:#?}");
    assert!(report.survivors.is_empty(), "{}", ctx());
    assert_eq!(report.cleanup.cgroup_removed, Some(true), "{}", ctx());
    assert!(report.cleanup.error.is_none(), "{}", ctx());
    let stop = report.stop.as_ref();
    match (shape, end) {
        (Shape::Short, End::Wait) => {
            assert_eq!(report.exit_status, 0, "{}", ctx());
            assert!(stop.is_none(), "{}", ctx());
            assert!(report.leftovers.is_empty(), "{}", ctx());
        }
        (Shape::Leftover, End::Wait) => {
            assert_eq!(report.exit_status, 0, "{}", ctx());
            assert_eq!(report.leftovers.len(), 1, "{}", ctx());
            let stop = stop.unwrap_or_else(|| panic!("no stop: {}", ctx()));
            assert_eq!(stop.reason, corral::StopReason::Leftovers, "{}", ctx());
            assert_eq!(stop.outcome, corral::StopOutcome::Exited, "{}", ctx());
        }
        (_, End::Stop) => {
            // The stop may come before or after the main process exits on its own.
            let stop = stop.unwrap_or_else(|| panic!("no stop: {}", ctx()));
            assert_eq!(stop.reason, corral::StopReason::Requested, "{}", ctx());
            // A stop that races `sh` forking its `sleep` may miss the sleep with SIGTERM,
            // which then gets SIGKILL after the grace: `stop_race` is the test for that.
            let outcomes: &[corral::StopOutcome] = match shape {
                Shape::Short => &[corral::StopOutcome::Exited],
                Shape::Leftover => &[corral::StopOutcome::Exited, corral::StopOutcome::Killed],
            };
            assert!(outcomes.contains(&stop.outcome), "{}", ctx());
            assert!(
                [0, 128 + libc::SIGTERM].contains(&report.exit_status),
                "{}",
                ctx()
            );
        }
    }
}

/// xorshift64: enough randomness to mix the cases, reproducible from the seed.
fn random(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::Relaxed);
    loop {
        let mut y = x;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        match state.compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return y,
            Err(now) => x = now,
        }
    }
}
