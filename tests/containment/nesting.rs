//! Jobs inside jobs: a `corral run` started inside another corral's job makes its job's
//! cgroup inside the cgroup it runs in (`cgroup_parent_source` `caller`, or `delegated`),
//! never beside it, so whatever stops the outer job stops the inner ones too.
//!
//! Three deep, `outer -> middle -> inner`, the inner job holding a `setsid` escapee and a
//! child that ignores SIGTERM, and the middle and inner corrals given a 30 s grace (longer
//! than the outer one's: the outer corral must not wait for them). While it runs, each
//! job's cgroup is inside the one above and `corral ps` shows each job under its outer job.
//! Then either the outer job is stopped and escalates to SIGKILL, or the outermost corral
//! itself is SIGKILLed (its watchdog acts). Within 2 s: no process of the tree, no job
//! cgroup, no record or socket in the registry, and no watchdog (they run inside the
//! test's cgroup subtree, whose emptiness `assert_clean` checks).
//!
//! Run as root with the outer job under each mechanism (a cgroup job inside a pgroup job
//! too: the middle corral then runs in the test's own cgroup and nests its job there), and
//! as a user in a delegated cgroup. The systemd VM runs the same tests as a user in a
//! delegated scope (`user-scope` in scripts/vm/payload.list).

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::Signal;

use crate::util::{
    both_mechanisms, delegate_to, executable_by_others, skip, CgroupTree, Job, Mechanism, Procs,
    Run, Sandbox, CORRAL, TESTTREE,
};

/// Roles of the inner tree: two testtree tops, the escapee and the TERM-ignorer.
const ROLES: &[&str] = &["top", "top", "setsid", "ignore-term"];
/// Everything gone and nothing left, from the kill (the issue's bound).
const BOUND: Duration = Duration::from_secs(2);
const NOBODY: u32 = 65534;

both_mechanisms!(
    an_outer_job_killed_at_once_takes_nested_jobs_along,
    an_outer_job_stopped_with_a_grace_takes_nested_jobs_along
);

/// `--grace 0`: the outer job goes straight to SIGKILL (`cgroup.kill` of its subtree, or
/// SIGKILL to every descendant), with the nested corrals given no time to clean up.
fn an_outer_job_killed_at_once_takes_nested_jobs_along(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("nesting-kill", mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.args(["--grace", "0"]);
    let (job, procs, registry) = start(run, &sandbox.runtime);
    check_nesting(&job, &registry, outer_home(&sandbox, mechanism));
    job.signal(Signal::TERM);
    let stopped = Instant::now();
    let done = job.finish();
    // The outer job's command (the middle corral) died of the SIGKILL.
    done.assert_code(137);
    done.assert_stop_outcome("killed");
    assert_nothing_left(&sandbox, &procs, &registry, stopped);
    // `cgroup.kill` kills the nested corrals and their watchdogs in one pass, so the outer
    // corral is the one to sweep their records. (Under pgroup a nested watchdog may act
    // before the walk's SIGKILL reaches it, and sweep them itself.)
    if mechanism == Mechanism::Cgroup {
        let swept = done.report()["cleanup"]["swept"].to_string();
        assert!(
            swept.contains("removed record"),
            "the outer corral removes the records of the jobs it killed: {swept}"
        );
    }
}

/// A grace shorter than the nested corrals' (30 s): the outer corral's SIGTERM reaches
/// them too (and a second SIGTERM, from the middle corral's own stop, makes the inner one
/// kill at once: the outcome is a race), and whatever way it goes nothing is left.
fn an_outer_job_stopped_with_a_grace_takes_nested_jobs_along(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("nesting-grace", mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.grace("300ms", Duration::from_millis(300));
    let (job, procs, registry) = start(run, &sandbox.runtime);
    check_nesting(&job, &registry, outer_home(&sandbox, mechanism));
    job.signal(Signal::TERM);
    let stopped = Instant::now();
    let done = job.finish();
    // 143: the middle corral stopped its job and exited as stopped by SIGTERM; 137: the
    // outer grace ran out first and the middle corral died of SIGKILL.
    done.assert_code_in(&[137, 143]);
    assert_nothing_left(&sandbox, &procs, &registry, stopped);
}

/// The outer job in a PID namespace of its own (`--pid-namespace`): the nested corrals see
/// namespace PIDs from `getpid()`, but `/proc` is the host's, so they must record
/// themselves by their host PIDs, or their records would name other processes and never go
/// stale. They do: the nesting is drawn, and nothing is left after a kill.
#[test]
fn nested_jobs_in_a_pid_namespace_are_recorded_by_host_pids() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-pidns") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.args(["--pid-namespace", "--grace", "0"]);
    let (job, procs, registry) = start(run, &sandbox.runtime);
    check_nesting(&job, &registry, outer_home(&sandbox, Mechanism::Cgroup));
    for record in records(&registry) {
        let pid = record["supervisor"]["pid"].as_u64().unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            cmdline.starts_with(CORRAL.as_bytes()),
            "{}'s supervisor {pid} is a corral in the host's /proc: {:?}",
            record["id"],
            String::from_utf8_lossy(&cmdline)
        );
    }
    job.signal(Signal::TERM);
    let stopped = Instant::now();
    let done = job.finish();
    done.assert_code(137);
    assert_nothing_left(&sandbox, &procs, &registry, stopped);
}

#[test]
fn the_outermost_corral_killed_takes_nested_jobs_along() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-sigkill") else {
        return;
    };
    let run = sandbox.corral(Mechanism::Cgroup);
    let (job, procs, registry) = start(run, &sandbox.runtime);
    check_nesting(&job, &registry, outer_home(&sandbox, Mechanism::Cgroup));
    job.signal(Signal::KILL);
    let killed = Instant::now();
    // The watchdog, not corral, cleans up: wait for the tree before corral's status.
    procs.assert_all_gone_by(killed + BOUND, "nested jobs after corral was SIGKILLed");
    assert_nothing_left(&sandbox, &procs, &registry, killed);
    let done = job.finish();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&done.status),
        Some(libc::SIGKILL)
    );
}

/// As a user, in a cgroup delegated to it: every level nests in the one above without
/// `--cgroup-parent`, and the outer job's stop, and the outermost corral's SIGKILL, each
/// leave nothing.
#[test]
fn a_delegated_user_nests_and_leaves_nothing() {
    for kill_outermost in [false, true] {
        let Some(sandbox) = Sandbox::with_cgroup("nesting-user") else {
            return;
        };
        if !rustix::process::geteuid().is_root() {
            skip("nesting-user: needs root to switch to nobody");
            return;
        }
        if !executable_by_others(Path::new(CORRAL)) {
            skip(format!("nesting-user: user nobody cannot execute {CORRAL}"));
            return;
        }
        let own = sandbox.cgroup().corral_leaf();
        delegate_to(&own, NOBODY);
        let mut run = sandbox.corral_bare();
        fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
        run.uid(NOBODY);
        run.args(["run", "--grace", "300ms"]);
        let registry = PathBuf::from(format!("{}-u{NOBODY}", sandbox.runtime.display()));
        let (job, procs, registry) = start(run, &registry);
        check_nesting(&job, &registry, own.clone());
        let at = Instant::now();
        if kill_outermost {
            job.signal(Signal::KILL);
            procs.assert_all_gone_by(at + BOUND, "nested user jobs after corral was SIGKILLed");
        } else {
            job.signal(Signal::TERM);
        }
        assert_nothing_left(&sandbox, &procs, &registry, at);
        let done = job.finish();
        if !kill_outermost {
            // As in the grace test above: which corral acts first is a race.
            done.assert_code_in(&[137, 143]);
        }
    }
}

/// Adds `-- corral run --grace 30s -- corral run --grace 30s -- sh -c '<tree>'` to the
/// outer `run`, starts it, and waits for the tree. Returns the job, the tree's processes
/// and the registry directory the corrals record their jobs in.
fn start(mut run: Run, registry: &Path) -> (Job, Procs, PathBuf) {
    let pids = run.pids_file();
    run.arg("--");
    for _ in 0..2 {
        run.args([CORRAL, "run", "--grace", "30s", "--"]);
    }
    run.args([
        "sh",
        "-c",
        r#""$0" --pids "$1" setsid & "$0" --pids "$1" ignore-term & wait"#,
        TESTTREE,
    ])
    .arg(&pids);
    let job = run.spawn();
    let procs = job.wait_ready(ROLES);
    (job, procs, registry.to_path_buf())
}

/// Where the outer job's corral makes the middle job's cgroup when the outer job has none
/// (pgroup): the cgroup it runs in, the test's `corral` leaf.
fn outer_home(sandbox: &Sandbox, mechanism: Mechanism) -> PathBuf {
    match mechanism {
        Mechanism::Cgroup => sandbox.cgroup().jobs(),
        Mechanism::Pgroup => sandbox.cgroup().corral_leaf(),
    }
}

/// The three records: each job's cgroup is inside the one above (the middle one inside
/// the outer job's cgroup, or `home` when the outer job has none), and `corral ps --json`
/// names each job's outer job.
fn check_nesting(job: &Job, registry: &Path, home: PathBuf) {
    let records = records(registry);
    assert_eq!(records.len(), 3, "three jobs are recorded: {records:#?}");
    let (outer, mut nested): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r["supervisor"]["pid"] == job.pid());
    assert_eq!(
        outer.len(),
        1,
        "one record is the outer job's: {records:#?}"
    );
    // The inner job's cgroup is the deeper one.
    nested.sort_by_key(|r| r["cgroup"].as_str().map_or(0, str::len));
    let ps = ps_json(registry);
    let levels = [outer[0], nested[0], nested[1]];
    for pair in levels.windows(2) {
        let (above, below) = (pair[0], pair[1]);
        let cgroup = PathBuf::from(below["cgroup"].as_str().unwrap_or_default());
        let expected_in = above["cgroup"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| home.clone());
        assert_eq!(
            cgroup.parent(),
            Some(expected_in.as_path()),
            "a nested job's cgroup is inside the cgroup its corral runs in: {records:#?}"
        );
        let id = below["id"].as_str().unwrap();
        let listed = ps
            .iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("corral ps lists {id}: {ps:#?}"));
        assert_eq!(
            listed["outer"], above["id"],
            "corral ps shows {id} under its outer job: {ps:#?}"
        );
    }
}

/// A job started inside another job says where its cgroup is and why: inside the cgroup
/// its corral runs in (`caller`; `delegated` below a cgroup systemd delegated). And the
/// nested corral leaves nothing in the outer job when it is done.
#[test]
fn a_nested_job_reports_its_cgroup_inside_its_caller() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-report") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    let inner = run.dir.join("inner.json");
    run.args(["--", CORRAL, "run", "--report"])
        .arg(&inner)
        .args(["--", "true"]);
    let done = run.run();
    done.assert_code(0);
    // The nested corral's watchdog, which runs in the outer job's cgroup, is gone before
    // the nested corral exits: no leftover for the outer job to stop.
    assert_eq!(
        done.report()["leftovers"],
        serde_json::json!([]),
        "{}",
        done.report_text()
    );
    let outer_cgroup = PathBuf::from(done.report()["cgroup"].as_str().unwrap());
    let text = fs::read_to_string(&inner).expect("the inner corral writes its report");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Inside a cgroup systemd delegated (the VM's scopes), the nesting is delegated too.
    let systemd = fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    let expected = if systemd { "delegated" } else { "caller" };
    assert_eq!(report["cgroup_parent_source"], expected, "{text}");
    assert_eq!(report["degraded"], false, "{text}");
    let cgroup = PathBuf::from(report["cgroup"].as_str().unwrap());
    assert_eq!(cgroup.parent(), Some(outer_cgroup.as_path()), "{text}");
    assert!(
        report["mechanism_reason"]
            .as_str()
            .unwrap_or_default()
            .contains(if systemd {
                "delegated"
            } else {
                "inside the cgroup corral runs in"
            }),
        "{text}"
    );
    sandbox.assert_clean();
}

/// By `from + BOUND`: every process of the tree gone, no job cgroup left anywhere in the
/// test's subtree (and nothing running in it: no corral, no watchdog), and no record,
/// socket or temporary file in the registry.
fn assert_nothing_left(sandbox: &Sandbox, procs: &Procs, registry: &Path, from: Instant) {
    let deadline = from + BOUND;
    procs.assert_all_gone_by(deadline, "the nested jobs' processes");
    let cgroup = sandbox.cgroup();
    poll_until("no job cgroup and no process left", deadline, || {
        let left: Vec<PathBuf> = [cgroup.jobs(), cgroup.corral_leaf()]
            .iter()
            .flat_map(|d| CgroupTree::children(d))
            .collect();
        let running = CgroupTree::procs_recursive(cgroup.root());
        // corral itself may still be on its way out (the SIGKILL case).
        if left.is_empty() && running.is_empty() {
            Ok(())
        } else {
            Err(format!("cgroups {left:?}, processes {running:?}"))
        }
    });
    poll_until("an empty registry", deadline, || {
        let files: Vec<String> = fs::read_dir(registry)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if files.is_empty() {
            Ok(())
        } else {
            Err(format!("{} holds {files:?}", registry.display()))
        }
    });
    sandbox.assert_clean();
}

/// The records in `registry`.
fn records(registry: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in fs::read_dir(registry)
        .unwrap_or_else(|e| panic!("read {}: {e}", registry.display()))
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            out.push(
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} ({e}): {text}", path.display())),
            );
        }
    }
    out
}

/// `corral ps --json` over `registry` (as root: it reads a user's registry too).
fn ps_json(registry: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(CORRAL)
        .args(["ps", "--json"])
        .env("CORRAL_RUNTIME_DIR", registry)
        .output()
        .expect("run corral ps");
    assert!(
        out.status.success(),
        "corral ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("corral ps --json prints JSON")
}

/// A nested job whose corral died with no watchdog to act (`--debug-no-watchdog`) while
/// the outer job lives on (`--leftovers wait`): its leaf, inside the outer job's, still
/// runs the escapee; `corral sweep` finds it through the record, kills it and removes the
/// leaf, and the outer job then ends by itself.
#[test]
fn sweep_finds_a_nested_jobs_leftovers() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-sweep") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    let pids = run.pids_file();
    run.args(["--leftovers", "wait", "--"])
        .args([CORRAL, "run", "--debug-no-watchdog", "--grace", "30s", "--"])
        .args([TESTTREE, "--pids"])
        .arg(&pids)
        .arg("setsid");
    let job = run.spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    let records = records(&sandbox.runtime);
    let inner = records
        .iter()
        .find(|r| r["supervisor"]["pid"] != job.pid())
        .unwrap_or_else(|| panic!("no record of the nested job: {records:#?}"));
    let leaf = PathBuf::from(inner["cgroup"].as_str().unwrap());
    let corral = verified_pidfd(&inner["supervisor"]).expect("the nested corral runs");
    rustix::process::pidfd_send_signal(&corral, Signal::KILL).expect("SIGKILL the nested corral");
    assert!(
        crate::util::wait_exited(corral.as_fd(), Instant::now() + BOUND),
        "the nested corral dies"
    );
    procs.assert_alive("setsid");
    assert!(leaf.exists(), "nothing has removed {} yet", leaf.display());
    let out = Command::new(CORRAL)
        .arg("sweep")
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .output()
        .expect("run corral sweep");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "corral sweep: {said}");
    assert!(
        said.contains(&format!("in {} and removed it", leaf.display())),
        "the sweep names the nested leaf it cleaned: {said}"
    );
    let swept = Instant::now();
    procs.assert_all_gone_by(swept + BOUND, "the nested job's escapee after the sweep");
    let done = job.finish();
    // The outer job's command, the nested corral, died of SIGKILL.
    done.assert_code(137);
    assert_nothing_left(&sandbox, &procs, &sandbox.runtime, swept);
}

/// A pidfd of the process a record names as its supervisor, if that very process (PID and
/// start time) still runs: opened first, then checked, so the pidfd cannot be a reused PID's.
fn verified_pidfd(supervisor: &serde_json::Value) -> Option<OwnedFd> {
    let pid = i32::try_from(supervisor["pid"].as_u64()?).ok()?;
    let start = supervisor["start_time"].as_u64()?;
    let fd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 1)?,
        rustix::process::PidfdFlags::empty(),
    )
    .ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    // Field 22 (starttime) is the 20th after `(comm) `.
    let started: u64 = after.split(' ').nth(19)?.parse().ok()?;
    (started == start).then_some(fd)
}

/// A parent whose `cgroup.max.depth` forbids another level (a nesting limit an
/// administrator set): with `--mechanism cgroup`, a one-line error that names the limit,
/// exit status 125, nothing started, nothing left.
#[test]
fn a_depth_limit_is_a_one_line_error() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-depth") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    fs::write(jobs.join("cgroup.max.depth"), "0").expect("set cgroup.max.depth");
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.tree(&["--exit", "0", "sleep"]);
    let done = run.run();
    // The limit and the way out.
    done.assert_refused(&["cgroup.max.depth", "--mechanism pgroup"]);
    sandbox.assert_clean();
}

/// The mark a corral re-run in a systemd scope sets on itself (`CORRAL_IN_SYSTEMD_SCOPE`)
/// stays with it: a corral nested in its job must see itself inside its caller, not in a
/// scope it obtained.
#[test]
fn the_scope_mark_does_not_reach_the_job() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-scope-mark") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.env("CORRAL_IN_SYSTEMD_SCOPE", "outer.service").args([
        "--",
        "sh",
        "-c",
        "echo ${CORRAL_IN_SYSTEMD_SCOPE-unset}",
    ]);
    let stdout_file = run.dir.join("stdout");
    let done = run.run();
    done.assert_code(0);
    let stdout = fs::read_to_string(stdout_file).unwrap_or_default();
    assert_eq!(stdout.trim(), "unset", "the job's environment: {stdout:?}");
    sandbox.assert_clean();
}

/// The same limit on the cgroup corral runs in, under `auto`: the job runs under pgroup
/// there (it still never leaves its caller's cgroup), degraded, and the report says why.
#[test]
fn a_depth_limit_under_auto_falls_back_in_place() {
    let Some(sandbox) = Sandbox::with_cgroup("nesting-depth-auto") else {
        return;
    };
    let own = sandbox.cgroup().corral_leaf();
    fs::write(own.join("cgroup.max.depth"), "0").expect("set cgroup.max.depth");
    let mut run = sandbox.corral_bare();
    let report = run.dir.join("report.json");
    run.args(["run", "--report"]).arg(&report);
    run.tree(&["--exit", "0", "setsid"]);
    let job = run.spawn_with_report(report);
    let procs = job.wait_ready(&["top", "setsid"]);
    job.go();
    let done = job.finish();
    procs.assert_all_gone("depth limit under auto");
    done.assert_code(0);
    let report = done.report();
    assert_eq!(report["mechanism"], "pgroup", "{}", done.report_text());
    assert_eq!(report["degraded"], true, "{}", done.report_text());
    assert!(
        report["mechanism_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cgroup.max.depth"),
        "{}",
        done.report_text()
    );
    sandbox.assert_clean();
}
