//! Slurm, a real workload manager (issue 15): what a job leaves behind when Slurm alone
//! tracks its processes, and nothing when the job is `exec corral run ...`.
//!
//! Each test starts a one-node cluster of its own on loopback (`scripts/slurm/start.sh`:
//! munged, slurmctld and `slurmd -N localhost`, `KillWait=5`, the proctrack plugin under
//! test, and an Epilog that runs `corral sweep`, the recipe of docs/slurm.md), runs one job
//! (`sbatch`, or `srun`) as Slurm alone runs it (the control), then the same job under
//! corral, and stops the cluster with `scripts/slurm/stop.sh`:
//!
//! - `scancel` of a job whose tree has a `setsid` escapee and a TERM-ignorer. Slurm signals
//!   the job's process group (pgid: the escapee outlives the job), or the processes
//!   descending from slurmstepd (linuxproc: the TERM-ignorer, orphaned by the SIGTERM round,
//!   outlives it). Under corral (`--grace 2s`, below KillWait) nothing survives, the report
//!   is written, and Slurm's ExitCode is corral's status.
//! - a job that exits leaving a double-fork daemon: the daemon outlives the job; under corral
//!   it is a leftover, stopped before the job ends.
//! - `scancel` with `--grace 30s`, longer than KillWait, of a tree with a TERM-ignoring
//!   `setsid` escapee: slurmstepd SIGKILLs corral after KillWait, and corral's watchdog (in a
//!   session of its own, so out of reach of Slurm's kill) kills the job and removes its
//!   cgroup; nothing survives, and `corral sweep` then finds nothing to do.
//! - an `srun` step whose command exits leaving a `setsid` escapee that holds the step's
//!   stdout: srun (and the step's slurmstepd) wait for it; under corral srun returns at once.
//!
//! Each scenario runs with `proctrack/pgid` and `proctrack/linuxproc` (`::pgid`,
//! `::linuxproc`).
//!
//! Where things run: the daemons in leaves of the test's cgroup subtree
//! (`<tree>/slurm/{munged,slurmctld,slurmd}`). slurmd's job steps (slurmstepd, the job, and
//! so corral) are in `slurm/slurmd`, and corral makes its job's cgroup inside it (the report
//! says `cgroup_parent_source: caller`). What a job leaves behind is what stays in slurmd's
//! subtree besides slurmd once Slurm says the job has ended: a census of `cgroup.procs`,
//! which also finds processes no pids file lists, and each listed process is checked
//! through a pidfd. The control's survivors are then killed through their pidfds; the
//! cluster is stopped by PID (`stop.sh`, then pidfds); and the test's cgroup subtree is
//! killed and removed when the test ends, whatever happened.
//!
//! Each run prints a `slurm figure:` line (survivors, time) for docs/slurm.md. The tests need
//! root and Debian's `slurmctld slurmd slurm-client munge` (`.ci/run` installs them); they
//! are skipped otherwise.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_testkit::{poll_until, Described};
use rustix::process::Signal;

use crate::slurm_cluster::{describe_census, output_text, write_epilog, JobInfo, Slurm};
use crate::util::{
    describe_pid, hold_listed, pidfd_of_child, place_in_cgroup, skip, wait_exited, CgroupTree,
    Procs, Sandbox, CORRAL, READY_DEADLINE, TESTTREE,
};

/// For each `fn name(proctrack: Proctrack)` given, generates `mod name { fn pgid();
/// fn linuxproc(); }` test functions.
macro_rules! each_proctrack {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn pgid() {
                    super::$name(super::Proctrack::Pgid)
                }
                #[test]
                fn linuxproc() {
                    super::$name(super::Proctrack::Linuxproc)
                }
            }
        )+
    };
}

each_proctrack!(
    scancel_leaves_the_escapee_without_corral_and_nothing_with_it,
    a_daemon_outlives_its_job_without_corral_and_not_with_it,
    a_grace_beyond_killwait_ends_in_the_watchdog_and_a_clean_sweep,
    srun_waits_for_an_escapee_holding_its_output_without_corral_and_not_with_it,
);

/// How long the control's srun must keep waiting, once the step's command has exited, for
/// the test to call it stuck (it waits as long as the escapee lives).
const STUCK_WINDOW: Duration = Duration::from_secs(3);

/// Slurm's process tracking plugin of the cluster (`ProctrackType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proctrack {
    /// `proctrack/pgid`: a step's processes are its process group.
    Pgid,
    /// `proctrack/linuxproc`: a step's processes are slurmstepd's descendants in `/proc`.
    Linuxproc,
}

impl Proctrack {
    fn plugin(self) -> &'static str {
        match self {
            Proctrack::Pgid => "proctrack/pgid",
            Proctrack::Linuxproc => "proctrack/linuxproc",
        }
    }
}

/// The clusters' KillWait (start.sh's default): slurmstepd's SIGKILL follows its SIGTERM
/// by this much.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a job may take to be over once cancelled or finished: KillWait, the Epilog and
/// Slurm's own messages.
const JOB_END_DEADLINE: Duration = Duration::from_secs(20);
/// How long what a job left may take to settle once Slurm says the job is over (slurmstepd
/// exiting, corral's watchdog killing a job whose corral was killed).
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);

// ---- the scenarios -----------------------------------------------------------------------

/// `scancel` of a job whose tree holds a `setsid` escapee and a TERM-ignorer.
fn scancel_leaves_the_escapee_without_corral_and_nothing_with_it(proctrack: Proctrack) {
    let Some((sandbox, cluster)) = setup("slurm-scancel", proctrack) else {
        return;
    };
    let tree = r#""$0" --pids "$1" setsid & "$0" --pids "$1" ignore-term & wait"#;
    let roles = ["top", "top", "setsid", "ignore-term"];

    // Slurm alone: SIGTERM to the job, SIGKILL after KillWait; the escapee is not reached.
    let control = cluster.submit(&sandbox, "control", None, tree);
    let procs = control.wait_ready(&cluster, &roles);
    let cancelled = Instant::now();
    cluster.scancel(control.id.unwrap());
    let info = cluster.wait_ended(control.id.unwrap());
    // pgid: the escapee is in another process group. linuxproc: the SIGTERM round kills
    // the escapee (a descendant of slurmstepd) and the TERM-ignorer's parent; the
    // TERM-ignorer, re-parented to PID 1, is no descendant when the SIGKILL round comes.
    let left = match proctrack {
        Proctrack::Pgid => "setsid",
        Proctrack::Linuxproc => "ignore-term",
    };
    let survivors = cluster.assert_survivors(&procs, &[left], "scancel without corral");
    figure(
        proctrack,
        "scancel, setsid escapee + TERM-ignorer",
        "without corral",
        &survivors,
        cancelled,
        &info.outcome(),
    );
    cluster.kill_survivors(procs);

    // Under corral, whose grace ends before slurmstepd's SIGKILL.
    let job = cluster.submit(&sandbox, "corral", Some("2s"), tree);
    let procs = job.wait_ready(&cluster, &roles);
    let cancelled = Instant::now();
    cluster.scancel(job.id.unwrap());
    let info = cluster.wait_ended(job.id.unwrap());
    let survivors = cluster.assert_survivors(&procs, &[], "scancel under corral");
    figure(
        proctrack,
        "scancel, setsid escapee + TERM-ignorer",
        "with corral",
        &survivors,
        cancelled,
        &info.outcome(),
    );
    let report = job.report();
    cluster.assert_report_inside(&report);
    // pgid: killpg reaches corral and COMMAND (the shell) at once, and the shell dies of it.
    // linuxproc signals one process at a time: the shell dies of the SIGTERM, or of
    // corral's cgroup.kill, or exits 0 once its children died of it (both seen). Either
    // way Slurm's ExitCode is corral's status (below).
    if proctrack == Proctrack::Pgid {
        assert_eq!(
            report["exit_status"], 143,
            "corral ends with the polite SIGTERM:\n{report:#}"
        );
    }
    // corral takes Slurm's SIGTERM in (`signal`), or sees COMMAND end first and stops what
    // is left (`leftovers`).
    assert!(
        ["signal", "leftovers"].contains(&report["stop"]["reason"].as_str().unwrap_or("")),
        "{report:#}"
    );
    // Slurm's one SIGTERM is never a second signal, whichever came first: the TERM-ignorer
    // gets its grace.
    let grace = report["stop"]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == "grace"))
        .map(|s| s["detail"].clone());
    assert_eq!(
        grace,
        Some(serde_json::json!("2000 ms passed")),
        "the grace runs its course:\n{report:#}"
    );
    assert_eq!(
        report["survivors"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    info.assert_exit_code_of(&report);
    assert_eq!(info.state, "CANCELLED");
    cluster.assert_epilog_swept(job.id.unwrap());
    cluster.shutdown();
}

/// A job that exits leaving a double-fork daemon.
fn a_daemon_outlives_its_job_without_corral_and_not_with_it(proctrack: Proctrack) {
    let Some((sandbox, cluster)) = setup("slurm-daemon", proctrack) else {
        return;
    };
    let tree = r#"exec "$0" --pids "$1" --go "$2" --exit 0 daemon"#;
    let roles = ["top", "daemon"];

    let control = cluster.submit(&sandbox, "control", None, tree);
    let procs = control.wait_ready(&cluster, &roles);
    let went = Instant::now();
    control.go();
    let info = cluster.wait_ended(control.id.unwrap());
    let survivors = cluster.assert_survivors(&procs, &["daemon"], "daemon without corral");
    figure(
        proctrack,
        "job exits leaving a daemon",
        "without corral",
        &survivors,
        went,
        &info.outcome(),
    );
    assert_eq!(info.state, "COMPLETED");
    cluster.kill_survivors(procs);

    let job = cluster.submit(&sandbox, "corral", Some("2s"), tree);
    let procs = job.wait_ready(&cluster, &roles);
    let went = Instant::now();
    job.go();
    let info = cluster.wait_ended(job.id.unwrap());
    let survivors = cluster.assert_survivors(&procs, &[], "daemon under corral");
    figure(
        proctrack,
        "job exits leaving a daemon",
        "with corral",
        &survivors,
        went,
        &info.outcome(),
    );
    let report = job.report();
    cluster.assert_report_inside(&report);
    assert_eq!(report["exit_status"], 0, "{report:#}");
    assert_eq!(report["stop"]["reason"], "leftovers", "{report:#}");
    let daemon = procs.pid("daemon");
    assert!(
        report["leftovers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["pid"] == daemon)),
        "the daemon (pid {daemon}) is a leftover in the report:\n{report:#}"
    );
    assert_eq!(
        (info.state.as_str(), info.exit_code.as_str()),
        ("COMPLETED", "0:0")
    );
    cluster.assert_epilog_swept(job.id.unwrap());
    cluster.shutdown();
}

/// `scancel` of a job under `corral run --grace 30s`: slurmstepd's SIGKILL (after KillWait)
/// ends corral mid-grace; a TERM-ignoring `setsid` escapee is then the watchdog's to kill.
fn a_grace_beyond_killwait_ends_in_the_watchdog_and_a_clean_sweep(proctrack: Proctrack) {
    let Some((sandbox, cluster)) = setup("slurm-grace", proctrack) else {
        return;
    };
    // COMMAND ignores SIGTERM (it ends as a `sleep` that inherits the ignored disposition;
    // the trees do not: corral-testtree resets it), so that corral alone takes Slurm's
    // SIGTERM in and starts its grace. When Slurm's SIGTERM ends COMMAND before corral has
    // read its own, corral stops the leftovers and counts its SIGTERM as a second one, which
    // ends the grace at once (seen with linuxproc, which signals one process at a time).
    let tree = concat!(
        r#"trap "" TERM; setsid "$0" --pids "$1" ignore-term & "#,
        r#""$0" --pids "$1" stubborn & exec sleep 1000"#
    );
    let roles = ["top", "top", "ignore-term", "stubborn"];

    let control = cluster.submit(&sandbox, "control", None, tree);
    let procs = control.wait_ready(&cluster, &roles);
    // The escapee's `top` is in the escapee's session too (setsid(1) ran it).
    let escapee_top = procs
        .procs
        .iter()
        .find(|p| p.role == "top" && in_session_of(p.pid, procs.pid("ignore-term")))
        .map(|p| p.pid)
        .expect("the escapee's top is in its session");
    let cancelled = Instant::now();
    cluster.scancel(control.id.unwrap());
    let info = cluster.wait_ended(control.id.unwrap());
    // pgid: the escapee's session, top and TERM-ignorer, is never signalled. linuxproc: the
    // SIGTERM round kills both tops; their TERM-proof children, re-parented to PID 1, are
    // no descendants of slurmstepd when the SIGKILL round comes.
    let expected: Vec<i32> = match proctrack {
        Proctrack::Pgid => vec![escapee_top, procs.pid("ignore-term")],
        Proctrack::Linuxproc => vec![procs.pid("ignore-term"), procs.pid("stubborn")],
    };
    let survivors = cluster.assert_survivor_pids(&procs, &expected, "grace without corral");
    figure(
        proctrack,
        "scancel, TERM-ignoring setsid escapee",
        "without corral",
        &survivors,
        cancelled,
        &info.outcome(),
    );
    cluster.kill_survivors(procs);

    let job = cluster.submit(&sandbox, "corral", Some("30s"), tree);
    let procs = job.wait_ready(&cluster, &roles);
    let running = cluster.corral_ps();
    let [record] = running.as_slice() else {
        panic!("corral ps lists one job, not {running:?}");
    };
    let cgroup = PathBuf::from(record["cgroup"].as_str().expect("a cgroup job"));
    assert!(
        cgroup.starts_with(&cluster.slurmd_leaf),
        "the job's cgroup {} is inside slurmd's {}",
        cgroup.display(),
        cluster.slurmd_leaf.display()
    );
    let cancelled = Instant::now();
    cluster.scancel(job.id.unwrap());
    let info = cluster.wait_ended(job.id.unwrap());
    let survivors = cluster.assert_survivors(&procs, &[], "grace beyond KillWait under corral");
    figure(
        proctrack,
        "scancel, TERM-ignoring setsid escapee, grace 30s > KillWait",
        "with corral",
        &survivors,
        cancelled,
        &info.outcome(),
    );
    assert!(
        cancelled.elapsed() < Duration::from_secs(30),
        "the job ended within the grace: slurmstepd's SIGKILL ended corral"
    );
    assert_eq!(
        (info.state.as_str(), info.exit_code.as_str()),
        ("CANCELLED", "0:9"),
        "corral died of slurmstepd's SIGKILL"
    );
    assert!(
        !job.report_path().exists(),
        "corral, killed, wrote no report"
    );
    assert!(
        !cgroup.exists(),
        "the watchdog removed {}",
        cgroup.display()
    );
    cluster.assert_epilog_swept(job.id.unwrap());
    // The next sweep finds nothing: no record, no cgroup.
    let swept = cluster.corral(&["sweep"]);
    assert!(
        swept.status.success(),
        "corral sweep: {}",
        output_text(&swept)
    );
    assert!(
        cluster.corral_ps().is_empty(),
        "no job is registered after the sweep"
    );
    assert_eq!(
        fs::read_dir(&sandbox.runtime)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "the registry {} is empty",
        sandbox.runtime.display()
    );
    assert_eq!(
        CgroupTree::children(&cluster.slurmd_leaf),
        Vec::<PathBuf>::new()
    );
    cluster.shutdown();
}

/// `srun` of a step whose command exits leaving a `setsid` escapee that keeps the step's
/// stdout open: srun relays the step's output, so it waits for the escapee, and so does the
/// step's slurmstepd. Under corral the escapee is a leftover, stopped when the command exits,
/// and srun returns corral's status.
fn srun_waits_for_an_escapee_holding_its_output_without_corral_and_not_with_it(
    proctrack: Proctrack,
) {
    let Some((sandbox, cluster)) = setup("slurm-srun", proctrack) else {
        return;
    };
    let tree = r#"exec "$0" --pids "$1" --go "$2" --exit 0 setsid"#;
    let roles = ["top", "setsid"];

    let mut control = cluster.srun(&sandbox, "control", None, tree);
    let procs = control.job.wait_ready(&cluster, &roles);
    let went = Instant::now();
    control.job.go();
    poll_until("the step's command's exit", SETTLE_DEADLINE, || {
        procs.gone(procs.pid("top"))
    });
    assert!(
        !wait_exited(control.pidfd.as_fd(), Instant::now() + STUCK_WINDOW),
        "srun returned while the escapee held the step's output:\n{}",
        fs::read_to_string(&control.job.output).unwrap_or_default()
    );
    // Left of the job: the escapee, and the step's slurmstepd waiting for it.
    let escapee = procs.pid("setsid");
    let census = cluster.census();
    let stepds: Vec<i32> = census
        .iter()
        .copied()
        .filter(|&p| comm(p) == "slurmstepd")
        .collect();
    let survivors: Vec<i32> = census
        .iter()
        .copied()
        .filter(|p| !stepds.contains(p))
        .collect();
    assert_eq!(
        survivors,
        [escapee],
        "the escapee is what is left of the job; slurmd's cgroup holds {}",
        cluster.describe_census()
    );
    figure(
        proctrack,
        "srun step exits leaving a setsid escapee holding its output",
        "without corral",
        &survivors,
        went,
        &format!(
            "srun still waiting {} s later, with {} slurmstepd",
            STUCK_WINDOW.as_secs(),
            stepds.len()
        ),
    );
    // Once the escapee is gone, srun and its slurmstepd finish too.
    cluster.kill_survivors(procs);
    control.wait(Instant::now() + SETTLE_DEADLINE);

    let mut job = cluster.srun(&sandbox, "corral", Some("2s"), tree);
    let procs = job.job.wait_ready(&cluster, &roles);
    let went = Instant::now();
    job.job.go();
    let status = job.wait(Instant::now() + JOB_END_DEADLINE);
    let survivors = cluster.assert_survivors(&procs, &[], "srun under corral");
    figure(
        proctrack,
        "srun step exits leaving a setsid escapee holding its output",
        "with corral",
        &survivors,
        went,
        &format!("srun returned {status}"),
    );
    let report = job.job.report();
    cluster.assert_report_inside(&report);
    assert_eq!(report["exit_status"], 0, "{report:#}");
    assert_eq!(report["stop"]["reason"], "leftovers", "{report:#}");
    assert!(
        report["leftovers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["pid"] == procs.pid("setsid"))),
        "the escapee is a leftover in the report:\n{report:#}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "srun returns the step's status, corral's"
    );
    cluster.shutdown();
}

/// `/proc/<pid>/comm`, without the newline ("" if the process is gone).
fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

// ---- the cluster -------------------------------------------------------------------------

/// Writes `<sandbox>/<name>/job.sh`: `sh -c TREE corral-testtree PIDS GO` (TREE holds no
/// single quote), run directly (`corral_grace` `None`: the control) or as `exec corral run
/// --grace G --report <dir>/report-$SLURM_JOB_ID.json -- sh -c ...`. Returns the directory
/// and the script.
fn job_script(
    sandbox: &Sandbox,
    name: &str,
    corral_grace: Option<&str>,
    tree: &str,
) -> (PathBuf, PathBuf) {
    let dir = sandbox.dir.join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let prefix = match corral_grace {
        None => String::new(),
        Some(grace) => format!(
            "'{CORRAL}' run --grace {grace} --report \"{}/report-$SLURM_JOB_ID.json\" -- ",
            dir.display()
        ),
    };
    let body = format!(
        "#!/bin/sh\nexec {prefix}sh -c '{tree}' '{TESTTREE}' '{}' '{}'\n",
        dir.join("pids").display(),
        dir.join("go").display()
    );
    let script = dir.join("job.sh");
    fs::write(&script, body)
        .and_then(|()| fs::set_permissions(&script, fs::Permissions::from_mode(0o755)))
        .unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
    (dir, script)
}

/// The sandbox and a running cluster, or `None` after [`skip`].
fn setup(name: &str, proctrack: Proctrack) -> Option<(Sandbox, Cluster)> {
    let name = format!(
        "{name}-{}",
        proctrack.plugin().trim_start_matches("proctrack/")
    );
    if !rustix::process::geteuid().is_root() {
        skip(format!(
            "{name}: needs root (Slurm's daemons and jobs run as root)"
        ));
        return None;
    }
    let missing: Vec<&str> = [
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "srun",
        "scancel",
        "scontrol",
    ]
    .into_iter()
    .filter(|p| !installed(p))
    .collect();
    if !missing.is_empty() {
        skip(format!(
            "{name}: {} not installed (Debian: slurmctld slurmd slurm-client munge; .ci/run \
             installs them)",
            missing.join(", ")
        ));
        return None;
    }
    let sandbox = Sandbox::with_cgroup(&name)?;
    let cluster = Cluster::start(&sandbox, proctrack);
    Some((sandbox, cluster))
}

/// Whether `program` is in PATH, `/usr/sbin` or `/sbin`.
fn installed(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The script `scripts/slurm/<name>`.
fn script(name: &str) -> PathBuf {
    corral_testkit::workspace_root()
        .join("scripts/slurm")
        .join(name)
}

/// A one-node cluster started by `scripts/slurm/start.sh` in a scratch directory
/// `/tmp/corral-slurm-<pid>-<n>` (short: munge's socket path must fit in `sun_path`).
/// `Drop` stops it (`stop.sh`, then SIGKILL through the pidfds to any daemon left), prints
/// the daemons' logs if the test failed, and removes the directory.
struct Cluster {
    slurm: Slurm,
    proctrack: Proctrack,
    /// `<tree>/slurm/slurmd`: slurmd, its slurmstepds and their jobs.
    slurmd_leaf: PathBuf,
    /// When start.sh was run: the test's time is measured from here to the stop.
    started: Instant,
}

crate::slurm_cluster::deref_to_slurm!(Cluster);

impl Cluster {
    fn start(sandbox: &Sandbox, proctrack: Proctrack) -> Cluster {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "corral-slurm-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let slurm_cgroup = sandbox.cgroup().root().join("slurm");
        let epilog = dir.join("epilog");
        let epilog_log = dir.join("epilog.log");
        write_epilog(&epilog, &sandbox.runtime, &epilog_log);
        let mut cluster = Cluster {
            slurm: Slurm {
                conf: dir.join("slurm.conf"),
                dir,
                runtime: sandbox.runtime.clone(),
                epilog_log,
                daemons: Vec::new(),
                stop_sh: script("stop.sh"),
                stopped: false,
            },
            proctrack,
            slurmd_leaf: slurm_cgroup.join("slurmd"),
            started: Instant::now(),
        };
        let mut command = Command::new(script("start.sh"));
        command
            .arg(&cluster.dir)
            .env("SLURM_CGROUP", &slurm_cgroup)
            .env("SLURM_PROCTRACK", proctrack.plugin())
            .env("SLURM_KILL_WAIT", KILL_WAIT.as_secs().to_string())
            .env("SLURM_EPILOG", &epilog)
            .stdin(Stdio::null());
        // start.sh itself (and the clients it runs) in `other`; each daemon moves to its leaf.
        place_in_cgroup(&mut command, &sandbox.cgroup().other_leaf());
        let output = command.output().expect("run scripts/slurm/start.sh");
        cluster.hold_started(&output);
        eprintln!(
            "slurm: cluster ({}) up in {:.1} s in {}",
            proctrack.plugin(),
            cluster.started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        cluster
    }

    /// `corral ARGS` with the test's registry (its status is the caller's to check).
    fn corral(&self, args: &[&str]) -> Output {
        self.client(CORRAL).args(args).output().expect("run corral")
    }

    /// `corral ps --json`: the registered jobs.
    fn corral_ps(&self) -> Vec<serde_json::Value> {
        let output = self.corral(&["ps", "--json"]);
        assert!(
            output.status.success(),
            "corral ps: {}",
            output_text(&output)
        );
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("corral ps --json ({e}): {}", output_text(&output)));
        listed.as_array().cloned().unwrap_or_default()
    }

    /// Submits the script [`job_script`] writes as a batch job.
    fn submit(
        &self,
        sandbox: &Sandbox,
        name: &str,
        corral_grace: Option<&str>,
        tree: &str,
    ) -> Submitted {
        let (dir, batch) = job_script(sandbox, name, corral_grace, tree);
        let id = self.sbatch(name, (&dir, &dir.join("slurm-%j.out")), &[], &batch);
        Submitted {
            id: Some(id),
            output: dir.join(format!("slurm-{id}.out")),
            dir,
        }
    }

    /// Starts `srun SCRIPT` (a job of one step, whose output srun relays), the script being
    /// what [`Cluster::submit`] would submit.
    fn srun(&self, sandbox: &Sandbox, name: &str, corral_grace: Option<&str>, tree: &str) -> Srun {
        let (dir, script) = job_script(sandbox, name, corral_grace, tree);
        let output = dir.join("srun.out");
        let file = fs::File::create(&output).expect("create srun's output file");
        let mut command = self.client("srun");
        command
            .args(["--job-name", name, "--chdir"])
            .arg(&dir)
            .arg(&script)
            .stdout(file.try_clone().expect("dup srun's output file"))
            .stderr(file);
        place_in_cgroup(&mut command, &sandbox.cgroup().other_leaf());
        let child = command.spawn().expect("spawn srun");
        let pidfd = pidfd_of_child(&child);
        Srun {
            job: Submitted {
                id: None,
                dir,
                output,
            },
            child: Some(child),
            pidfd,
        }
    }

    fn scancel(&self, id: u32) {
        self.run("scancel", &[&id.to_string()]);
    }

    /// Waits until Slurm considers the job over (slurmstepd has finished, the Epilog has
    /// run).
    fn wait_ended(&self, id: u32) -> JobInfo {
        let every = Duration::from_millis(50);
        self.slurm
            .wait_ended(id, (JOB_END_DEADLINE, every), || self.describe_census())
    }

    /// The processes in slurmd's subtree besides slurmd: slurmstepds, jobs, and whatever the
    /// jobs left.
    fn census(&self) -> Vec<i32> {
        let slurmd = self
            .daemons
            .iter()
            .find(|d| d.name == "slurmd")
            .map(|d| d.pid);
        let mut pids: Vec<i32> = CgroupTree::procs_recursive(&self.slurmd_leaf)
            .into_iter()
            .filter(|&p| Some(p) != slurmd)
            .collect();
        pids.sort_unstable();
        pids
    }

    fn describe_census(&self) -> String {
        describe_census(self.census())
    }

    /// Asserts that, once slurmstepd is gone, exactly the processes of `roles` are left of
    /// the job (each alive through its pidfd, every other listed process gone, and nothing
    /// else in slurmd's subtree). Returns the survivors.
    fn assert_survivors(&self, procs: &Procs, roles: &[&str], context: &str) -> Vec<i32> {
        let pids: Vec<i32> = procs
            .procs
            .iter()
            .filter(|p| roles.contains(&p.role.as_str()))
            .map(|p| p.pid)
            .collect();
        self.assert_survivor_pids(procs, &pids, context)
    }

    fn assert_survivor_pids(&self, procs: &Procs, expected: &[i32], context: &str) -> Vec<i32> {
        let mut expected = expected.to_vec();
        expected.sort_unstable();
        // slurmstepd may still be exiting, and a watchdog removing a job's cgroup.
        let what = format!(
            "{context} ({}): {} survivor(s) {expected:?} and no job cgroup in slurmd's cgroup",
            self.proctrack.plugin(),
            expected.len(),
        );
        poll_until(what, SETTLE_DEADLINE, || {
            let cgroups = CgroupTree::children(&self.slurmd_leaf);
            match self.census() == expected && cgroups.is_empty() {
                true => Ok(()),
                false => Err(Described(move || {
                    format!("{cgroups:?}, processes {}", self.describe_census())
                })),
            }
        });
        for proc in &procs.procs {
            if expected.contains(&proc.pid) {
                assert!(
                    !procs.gone(proc.pid),
                    "{context}: {} (pid {}) does not run",
                    proc.role,
                    proc.pid
                );
            } else {
                assert!(
                    procs.gone(proc.pid),
                    "{context}: {} still runs: {}",
                    proc.role,
                    describe_pid(proc.pid)
                );
            }
        }
        expected
    }

    /// Kills the control's survivors through their pidfds (`Procs`' Drop) and waits until
    /// slurmd's subtree holds nothing else.
    fn kill_survivors(&self, procs: Procs) {
        drop(procs);
        poll_until(
            "the control's survivors' death",
            SETTLE_DEADLINE,
            || match self.census().is_empty() {
                true => Ok(()),
                false => Err(Described(|| self.describe_census())),
            },
        );
    }

    /// Asserts the report's job cgroup was made inside slurmd's cgroup, where corral ran.
    fn assert_report_inside(&self, report: &serde_json::Value) {
        let cgroup = report["cgroup"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_default();
        assert!(
            cgroup.starts_with(&self.slurmd_leaf) && cgroup != self.slurmd_leaf,
            "the job's cgroup is inside slurmd's {}:\n{report:#}",
            self.slurmd_leaf.display()
        );
        assert_eq!(report["cgroup_parent_source"], "caller", "{report:#}");
        assert_eq!(report["mechanism"], "cgroup", "{report:#}");
        assert_eq!(report["cleanup"]["cgroup_removed"], true, "{report:#}");
    }

    /// Stops the cluster with `stop.sh` and asserts every daemon is gone.
    fn shutdown(mut self) {
        let started = Instant::now();
        let output = self.stop();
        assert!(output.status.success(), "stop.sh: {}", output_text(&output));
        if !output.stderr.is_empty() {
            eprintln!(
                "slurm: stop.sh: {}",
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        self.assert_daemons_gone(Instant::now() + Duration::from_secs(2));
        eprintln!(
            "slurm: cluster ({}) stopped in {:.1} s; {:.1} s from its start",
            self.proctrack.plugin(),
            started.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_and_kill();
        self.print_logs_and_remove(&[
            "log/slurmctld.log",
            "log/slurmd.log",
            "munge/munged.log",
            "epilog.log",
        ]);
    }
}

/// A submitted batch job and its directory (pids, go, report, Slurm's output).
struct Submitted {
    /// The job id (`None` for srun's job, which the test does not learn).
    id: Option<u32>,
    dir: PathBuf,
    /// Slurm's output of the job (sbatch's `--output`, srun's stdout).
    output: PathBuf,
}

impl Submitted {
    /// Waits until the tree lists `roles`, and holds each listed process by a pidfd.
    /// Nothing stops the tree before the test acts, so each process is alive when opened.
    fn wait_ready(&self, cluster: &Cluster, roles: &[&str]) -> Procs {
        hold_listed(&self.dir.join("pids"), roles, READY_DEADLINE, || {
            format!(
                "job {:?}: {:?}; output:\n{}",
                self.id,
                self.id.map(|id| cluster.job(id)),
                fs::read_to_string(&self.output).unwrap_or_default()
            )
        })
    }

    /// Lets the tree's top process go on past `--go`.
    fn go(&self) {
        fs::write(self.dir.join("go"), "go\n").expect("create the go file");
    }

    /// `report-<job id>.json` (for srun's job, the one such file there is).
    fn report_path(&self) -> PathBuf {
        match self.id {
            Some(id) => self.dir.join(format!("report-{id}.json")),
            None => fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("report-"))
                })
                .unwrap_or_else(|| self.dir.join("report-(none).json")),
        }
    }

    fn report(&self) -> serde_json::Value {
        let path = self.report_path();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "corral wrote no report {} ({e}); the job's output:\n{}",
                path.display(),
                fs::read_to_string(&self.output).unwrap_or_default()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} ({e}):\n{text}", path.display()))
    }
}

/// `srun` running a one-step job, started by the test (its unreaped child, so its pidfd is
/// its own). `Drop` kills and reaps it if the test did not wait for it.
struct Srun {
    job: Submitted,
    child: Option<std::process::Child>,
    pidfd: OwnedFd,
}

impl Srun {
    /// Waits until srun returns (panics past `deadline`); its exit status.
    fn wait(&mut self, deadline: Instant) -> std::process::ExitStatus {
        assert!(
            wait_exited(self.pidfd.as_fd(), deadline),
            "srun did not return; its output:\n{}",
            fs::read_to_string(&self.job.output).unwrap_or_default()
        );
        self.child
            .take()
            .expect("srun not yet waited for")
            .wait()
            .expect("wait for srun")
    }
}

impl Drop for Srun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
            let _ = child.wait();
        }
    }
}

/// Prints one figure for docs/slurm.md.
fn figure(
    proctrack: Proctrack,
    scenario: &str,
    how: &str,
    survivors: &[i32],
    from: Instant,
    outcome: &str,
) {
    eprintln!(
        "slurm figure: {} | {scenario} | {how} | {} survivor(s) | {outcome} | {:.1} s after \
         the cancel/exit",
        proctrack.plugin(),
        survivors.len(),
        from.elapsed().as_secs_f64()
    );
}

/// Whether `pid` is in the session of `leader`'s process (`/proc/<pid>/stat`'s session).
fn in_session_of(pid: i32, other: i32) -> bool {
    let session = |pid: i32| -> Option<String> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        rest.split(' ').nth(3).map(str::to_string)
    };
    session(pid).is_some_and(|s| Some(s) == session(other))
}
