//! 100 jobs in one process from 8 threads, each waited for or stopped at random: every
//! report is right for what its job did, and nothing is left behind (no cgroup, no
//! process, no unreaped main process).

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{assert_cleaned_up, find_supervisor, options, start_time};
use crate::util::{both_mechanisms, Mechanism, Sandbox};

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

both_mechanisms!(hundred_jobs_from_eight_threads);

fn hundred_jobs_from_eight_threads(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("embed-many", mechanism) else {
        return;
    };
    let opts = corral::Options {
        grace: Duration::from_secs(5),
        ..options(&sandbox, mechanism)
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
    // (pid, start time) of every main process and (pgroup) of the supervisors found, to
    // check none is left running or unreaped.
    let mains = Mutex::new(Vec::new());
    let supervisors = Mutex::new(Vec::new());
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
                    // cgroup: our unreaped child, so the PID is its own. pgroup: the
                    // supervisor's, which may have reaped it already.
                    match start_time(job.pid()) {
                        Some(started) => mains.lock().unwrap().push((job.pid(), started)),
                        None => assert_eq!(mechanism, Mechanism::Pgroup, "main process gone"),
                    }
                    if let Some(sup) = find_supervisor(job.pid()) {
                        // Our unreaped child: the PID is its own.
                        let started = start_time(sup).expect("the supervisor's stat");
                        supervisors.lock().unwrap().push((sup, started));
                    }
                    assert!(ids.lock().unwrap().insert(job.id().to_string()));
                    let report = match end {
                        End::Wait => job.wait(),
                        End::Stop => job.stop(),
                    }
                    .expect("wait/stop");
                    assert_cleaned_up(&report, mechanism);
                    check(&report, shape, end);
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
    let supervisors = supervisors.into_inner().unwrap();
    if mechanism == Mechanism::Pgroup {
        // Most supervisors are found (those of jobs that emptied at once may be gone).
        assert!(supervisors.len() >= JOBS / 2, "{} found", supervisors.len());
    }
    for (pid, started) in supervisors {
        assert_ne!(
            start_time(pid),
            Some(started),
            "supervisor {pid} is still there (running or unreaped)"
        );
    }
    sandbox.assert_clean();
}

fn check(report: &corral::Report, shape: Shape, end: End) {
    let ctx = || format!("{shape:?} + {end:?}: {report:#?}");
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
            assert_eq!(stop.outcome, corral::StopOutcome::Exited, "{}", ctx());
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
