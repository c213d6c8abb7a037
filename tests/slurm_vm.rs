//! Slurm's own cgroup tracking, in the systemd VM (`cargo xtask vm-test`,
//! scripts/vm/payload.list): `ProctrackType=proctrack/cgroup`, `CgroupPlugin=cgroup/v2`,
//! `TaskPlugin=task/cgroup` with `ConstrainRAMSpace=yes` (issue 15, the last Slurm bullet).
//!
//! Each test starts a one-node cluster (`scripts/slurm/start.sh`, its text compiled in: the
//! guest has no checkout) with `SLURMD_UNIT`: slurmd runs as a transient service with
//! `Delegate=yes`, as the cgroup/v2 plugin needs where systemd manages the tree. The plugin
//! then puts every step in the scope `system.slice/localhost_slurmstepd.scope` (made over
//! D-Bus, with `Delegate=yes`; Debian's slurmd prefixes the node's name), at
//! `job_<id>/step_<step>/user/task_<n>`, and keeps a `slurmstepd infinity` process in the
//! scope. corral, run as the step's task, finds that cgroup delegated to it (systemd's
//! `trusted.delegate` on the scope) and makes the job's leaf inside `task_<n>`.
//!
//! - [`scancel_leaves_nothing_with_or_without_corral`]: `scancel` of a job whose tree has a
//!   `setsid` escapee and a TERM-ignorer, run by Slurm alone (the control: proctrack/cgroup
//!   kills the step's whole cgroup) and as `exec corral run ...`: the job's leaf is inside
//!   the step's cgroup, and nothing survives.
//! - [`a_mem_limit_applies_under_corral`]: `sbatch --mem=64M` of `exec corral run -- <a
//!   process allocating 256 MiB>`: Slurm's memory limit on the step covers corral's leaf,
//!   and the OOM killer ends the process (with `--mem=512M` the job completes).
//!
//! Both check that nothing is left afterwards: no process of the job, no leaf, no record in
//! the test's registry. The exception to "tests create cgroups only under their own
//! uniquely named directory": Slurm itself makes its step scope in `system.slice` and never
//! removes it, so the cluster's `Drop` stops that scope (through `stop.sh`, which stops the
//! units start.sh lists in `DIR/units`), and slurmd's service, pass or fail. Only one such
//! cluster can run on a machine at a time (the scope's name is fixed): the VM runs these
//! tests with `--test-threads=1`.
//!
//! Every test is `#[ignore]`d: the VM runs them with `--include-ignored`. Asked for elsewhere
//! without `CORRAL_VM=1`, a test says `SKIPPED` (and fails under `CORRAL_REQUIRE_ALL=1`).
#![cfg(target_os = "linux")]

#[path = "containment/util.rs"]
#[allow(unused_macros, unused_imports)] // the per-mechanism macro serves tests/containment
mod util;

#[path = "containment/slurm_cluster.rs"]
mod slurm_cluster;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slurm_cluster::{describe_census, output_text, write_epilog, JobInfo, Slurm};
use util::{
    cgroup2_mount, cgroup_dir_of, hold_listed, read_pids, runtime_dir, skip, CgroupTree, Procs,
    CORRAL, READY_DEADLINE, TESTTREE,
};

/// The cluster scripts, written into the cluster's directory at run time.
const START_SH: &str = include_str!("../scripts/slurm/start.sh");
const STOP_SH: &str = include_str!("../scripts/slurm/stop.sh");

/// The scope Slurm's cgroup/v2 plugin puts every step in: a fixed name, prefixed by the
/// node's by Debian's slurmd (built for several slurmd per node).
const STEPD_SCOPE: &str = "localhost_slurmstepd.scope";
/// KillWait: slurmstepd's SIGKILL follows its SIGTERM by this much.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a job may take to be over once cancelled or finished (KillWait, the Epilog,
/// Slurm's messages; under TCG).
const JOB_END_DEADLINE: Duration = Duration::from_secs(60);
/// How long what a job left may take to settle once Slurm says the job is over.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);
/// The job's memory limit (`sbatch --mem`), and what the process under it allocates.
const MEM_LIMIT_MIB: u64 = 64;
const ALLOC_MIB: u64 = 256;

/// Whether the VM suite asked for this test (`CORRAL_VM=1`, as root); else [`skip`].
fn in_vm(name: &str) -> bool {
    let yes = std::env::var("CORRAL_VM").as_deref() == Ok("1");
    if !yes {
        skip(format!(
            "{name}: the systemd VM suite runs it (CORRAL_VM=1, cargo xtask vm-test)"
        ));
        return false;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root (scripts/vm/payload.list)"
    );
    true
}

/// A one-node cluster with proctrack/cgroup and cgroup/v2, started by start.sh in
/// `/tmp/corral-slurmcg-<pid>-<n>` (short: munge's socket path must fit in `sun_path`).
/// `Drop` stops it (`stop.sh`: the daemons, slurmd's service and Slurm's step scope), then
/// SIGKILLs through the pidfds any daemon left and stops the units again if they are still
/// there, prints the logs if the test failed, and removes the directory and the registry.
struct Cluster {
    slurm: Slurm,
    /// slurmd's service: `corral-test-slurmd-<pid>-<n>.service`.
    unit: String,
    /// `<mount>/system.slice/slurmstepd.scope`.
    scope: PathBuf,
}

slurm_cluster::deref_to_slurm!(Cluster);

impl Cluster {
    fn start(name: &str) -> Cluster {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("corral-slurmcg-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("create {}: {e}", bin.display()));
        for (script, text) in [("start.sh", START_SH), ("stop.sh", STOP_SH)] {
            let path = bin.join(script);
            fs::write(&path, text)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let runtime = runtime_dir("slurmcg-rt");
        let epilog = bin.join("epilog");
        let epilog_log = dir.join("epilog.log");
        write_epilog(&epilog, &runtime, &epilog_log);
        let unit = format!("corral-test-slurmd-{}-{n}", std::process::id());
        let mut cluster = Cluster {
            slurm: Slurm {
                conf: dir.join("slurm.conf"),
                stop_sh: bin.join("stop.sh"),
                dir,
                runtime,
                epilog_log,
                daemons: Vec::new(),
                stopped: false,
            },
            unit: format!("{unit}.service"),
            scope: cgroup2_mount()
                .expect("the cgroup2 mount")
                .join("system.slice")
                .join(STEPD_SCOPE),
        };
        let started = Instant::now();
        let output = Command::new(bin.join("start.sh"))
            .arg(&cluster.dir)
            .env("SLURMD_UNIT", &unit)
            .env("SLURM_PROCTRACK", "proctrack/cgroup")
            .env("SLURM_TASK_PLUGIN", "task/cgroup")
            .env("SLURM_SELECT_PARAMS", "CR_CPU_Memory")
            .env(
                "SLURM_CGROUP_CONF",
                "CgroupPlugin=cgroup/v2\nConstrainRAMSpace=yes",
            )
            .env("SLURM_KILL_WAIT", KILL_WAIT.as_secs().to_string())
            .env("SLURM_EPILOG", &epilog)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/slurm/start.sh");
        cluster.hold_started(&output);
        eprintln!(
            "slurm: {name}: cluster (proctrack/cgroup, cgroup/v2) up in {:.1} s in {}",
            started.elapsed().as_secs_f64(),
            cluster.dir.display()
        );
        cluster
    }

    /// Writes `<dir>/<name>/job.sh` (`#!/bin/sh` and `body`) and submits it with `sbatch
    /// ARGS`; the job's directory (for its pids, report and output) and id.
    fn submit(&self, name: &str, args: &[&str], body: &str) -> (PathBuf, u32) {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let script = dir.join("job.sh");
        fs::write(&script, format!("#!/bin/sh\n{body}\n"))
            .and_then(|()| fs::set_permissions(&script, fs::Permissions::from_mode(0o755)))
            .unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
        let id = self.sbatch(name, (&dir, &dir.join("slurm.out")), args, &script);
        (dir, id)
    }

    /// Waits until Slurm considers the job over (slurmstepd has finished, the Epilog has
    /// run).
    fn wait_ended(&self, id: u32) -> JobInfo {
        let every = Duration::from_millis(100);
        self.slurm
            .wait_ended(id, (JOB_END_DEADLINE, every), || self.describe_census())
    }

    /// `scancel` of the `scancel` test's job `id`: waits until the job is over and its
    /// processes settled, and prints the figure (`how`: with or without corral). Returns
    /// the survivors and the job's state.
    fn scancel(&self, id: u32, procs: &Procs, how: &str) -> (Vec<i32>, JobInfo) {
        let cancelled = Instant::now();
        self.run("scancel", &[&id.to_string()]);
        let info = self.wait_ended(id);
        let survivors = self.survivors(procs, id);
        let scenario = "scancel, setsid escapee + TERM-ignorer";
        figure(scenario, how, &survivors, cancelled, &info);
        (survivors, info)
    }

    /// The job's cgroup: `<scope>/job_<id>`.
    fn job_cgroup(&self, id: u32) -> PathBuf {
        self.scope.join(format!("job_{id}"))
    }

    /// The jobs' cgroups in Slurm's step scope (`job_<id>`).
    fn job_cgroups(&self) -> Vec<PathBuf> {
        CgroupTree::children(&self.scope)
            .into_iter()
            .filter(|c| {
                c.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("job_"))
            })
            .collect()
    }

    /// The processes in the jobs' cgroups: slurmstepds, jobs, and whatever the jobs left
    /// (not Slurm's own `slurmstepd infinity`, elsewhere in the scope).
    fn census(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .job_cgroups()
            .iter()
            .flat_map(|c| CgroupTree::procs_recursive(c))
            .collect();
        pids.sort_unstable();
        pids
    }

    fn describe_census(&self) -> String {
        describe_census(self.census())
    }

    /// Waits until the job's cgroup is gone and no other job's holds a process, then counts
    /// the listed processes still running: the survivors.
    fn survivors(&self, procs: &Procs, id: u32) -> Vec<i32> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let job = self.job_cgroup(id);
        loop {
            let alive: Vec<i32> = procs
                .procs
                .iter()
                .filter(|p| !procs.gone(p.pid))
                .map(|p| p.pid)
                .collect();
            let census = self.census();
            // A survivor inside the job's cgroup keeps it; one outside it (which Slurm's
            // tracking would have lost) is counted through its pidfd.
            if census.is_empty() && !job.exists() || Instant::now() >= deadline {
                let unlisted: Vec<i32> =
                    census.into_iter().filter(|p| !alive.contains(p)).collect();
                return alive.into_iter().chain(unlisted).collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that nothing of the jobs is left: no job cgroup (so no process in one, and
    /// no corral leaf), no record in the registry.
    fn assert_nothing_left(&self) {
        assert_eq!(
            self.job_cgroups(),
            Vec::<PathBuf>::new(),
            "job cgroups left in the scope: {}",
            self.describe_census()
        );
        let records: Vec<PathBuf> = fs::read_dir(&self.runtime)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(
            records,
            Vec::<PathBuf>::new(),
            "records left in the registry"
        );
    }

    /// Stops the cluster with `stop.sh`, and asserts every daemon, slurmd's service and
    /// Slurm's step scope are gone.
    fn shutdown(mut self) {
        let started = Instant::now();
        let output = self.stop();
        assert!(output.status.success(), "stop.sh: {}", output_text(&output));
        self.assert_daemons_gone(Instant::now() + SETTLE_DEADLINE);
        for unit in [self.unit.as_str(), STEPD_SCOPE] {
            let state = systemctl(&["show", "-p", "LoadState", "--value", unit]);
            assert_eq!(state.trim(), "not-found", "{unit} is gone");
        }
        assert!(!self.scope.exists(), "{} removed", self.scope.display());
        eprintln!(
            "slurm: cluster stopped in {:.1} s (slurmd's service and {STEPD_SCOPE} with it)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// `systemctl ARGS`: its stdout (the caller checks what it needs).
fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run systemctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_and_kill();
        // What Slurm leaves and stop.sh should have stopped: its step scope (never removed
        // by Slurm) and slurmd's service. systemd kills what is left in them.
        for unit in [self.unit.as_str(), STEPD_SCOPE] {
            if systemctl(&["show", "-p", "LoadState", "--value", unit]).trim() != "not-found" {
                eprintln!("cleanup: {unit} still there; systemctl stop");
                systemctl(&["stop", unit]);
                systemctl(&["reset-failed", unit]);
            }
        }
        self.print_logs_and_remove(&[
            "log/slurmctld.log",
            "log/slurmd.log",
            "log/slurmd.out",
            "munge/munged.log",
            "epilog.log",
        ]);
        let _ = fs::remove_dir_all(&self.runtime);
    }
}

/// Waits until the tree in `dir` lists `roles`, and holds each listed process by a pidfd.
fn wait_ready(cluster: &Cluster, id: u32, dir: &Path, roles: &[&str]) -> Procs {
    hold_listed(&dir.join("pids"), roles, READY_DEADLINE * 2, || {
        format!(
            "job {id}: {:?}; output:\n{}",
            cluster.job(id),
            fs::read_to_string(dir.join("slurm.out")).unwrap_or_default()
        )
    })
}

fn read_report(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"))
}

/// Prints one figure for docs/slurm.md.
fn figure(scenario: &str, how: &str, survivors: &[i32], from: Instant, info: &JobInfo) {
    eprintln!(
        "slurm figure: proctrack/cgroup | {scenario} | {how} | {} survivor(s) | job {} {} | \
         {:.1} s after the cancel/exit",
        survivors.len(),
        info.state,
        info.exit_code,
        from.elapsed().as_secs_f64()
    );
}

/// The tree of the `scancel` test: a `setsid` escapee and a TERM-ignorer under a shell.
const TREE: &str = r#""$0" --pids "$1" setsid & "$0" --pids "$1" ignore-term & wait"#;
const ROLES: [&str; 4] = ["top", "top", "setsid", "ignore-term"];

/// `scancel` of a job whose tree has a `setsid` escapee and a TERM-ignorer, without corral
/// and as `exec corral run --grace 2s ...`.
#[test]
#[ignore = "needs the systemd VM: cargo xtask vm-test"]
fn scancel_leaves_nothing_with_or_without_corral() {
    if !in_vm("scancel_leaves_nothing_with_or_without_corral") {
        return;
    }
    let cluster = Cluster::start("scancel");

    // Slurm alone: proctrack/cgroup signals every process of the step's cgroup.
    let body = format!("exec sh -c '{TREE}' '{TESTTREE}' \"$PWD/pids\"");
    let (dir, id) = cluster.submit("control", &[], &body);
    let procs = wait_ready(&cluster, id, &dir, &ROLES);
    // The escapee left its session, not the step's cgroup.
    let step = cluster.job_cgroup(id).join("step_batch");
    let escapee = cgroup_dir_of(procs.pid("setsid")).expect("the escapee's cgroup");
    assert!(escapee.starts_with(&step), "{escapee:?} is in {step:?}");
    let (survivors, info) = cluster.scancel(id, &procs, "without corral");
    assert_eq!(
        survivors,
        Vec::<i32>::new(),
        "proctrack/cgroup leaves no process of the job: {}",
        cluster.describe_census()
    );
    assert_eq!(info.state, "CANCELLED");
    drop(procs);

    // Under corral, whose grace ends before slurmstepd's SIGKILL.
    let body = format!(
        "exec '{CORRAL}' run --grace 2s --report \"$PWD/report.json\" -- sh -c '{TREE}' \
         '{TESTTREE}' \"$PWD/pids\""
    );
    let (dir, id) = cluster.submit("corral", &[], &body);
    let procs = wait_ready(&cluster, id, &dir, &ROLES);
    // While it runs: every process of the tree is in corral's leaf, inside the step's
    // cgroup (job_<id>/step_batch).
    let step = cluster.job_cgroup(id).join("step_batch");
    let leaf = cgroup_dir_of(procs.pid("setsid")).expect("the escapee's cgroup");
    assert!(
        leaf.starts_with(&step) && leaf != step,
        "the job's leaf {} is inside the step's cgroup {}",
        leaf.display(),
        step.display()
    );
    let (survivors, info) = cluster.scancel(id, &procs, "with corral");
    assert_eq!(
        survivors,
        Vec::<i32>::new(),
        "{}",
        cluster.describe_census()
    );
    let report = read_report(&dir.join("report.json"));
    eprintln!("slurm: the report under proctrack/cgroup:\n{report:#}");
    assert_eq!(report["mechanism"], "cgroup", "{report:#}");
    assert_eq!(report["cgroup"].as_str(), leaf.to_str(), "{report:#}");
    assert_eq!(report["degraded"], false, "{report:#}");
    assert_eq!(report["cgroup_parent_source"], "delegated", "{report:#}");
    assert_eq!(report["survivors"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["cleanup"]["cgroup_removed"], true, "{report:#}");
    info.assert_exit_code_of(&report);
    assert_eq!(info.state, "CANCELLED");
    assert!(!leaf.exists(), "{} removed", leaf.display());
    cluster.assert_epilog_swept(id);
    cluster.assert_nothing_left();
    cluster.shutdown();
}

/// `sbatch --mem=64M` of `exec corral run -- corral-testtree alloc --mib 256`: Slurm's
/// memory limit on the step covers corral's leaf, and the OOM killer ends the process;
/// with `--mem=512M` the same job completes.
#[test]
#[ignore = "needs the systemd VM: cargo xtask vm-test"]
fn a_mem_limit_applies_under_corral() {
    if !in_vm("a_mem_limit_applies_under_corral") {
        return;
    }
    let cluster = Cluster::start("mem");
    let body = format!(
        "exec '{CORRAL}' run --report \"$PWD/report.json\" -- '{TESTTREE}' --pids \"$PWD/pids\" \
         alloc --mib {ALLOC_MIB}"
    );

    // Room enough: the allocation succeeds.
    let (dir, id) = cluster.submit("roomy", &["--mem=512M"], &body);
    let info = cluster.wait_ended(id);
    let report = read_report(&dir.join("report.json"));
    assert_eq!(
        (info.state.as_str(), info.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{report:#}"
    );
    assert_eq!(report["exit_status"], 0, "{report:#}");

    // The limit: the OOM killer ends the process, and Slurm says so.
    let mem = format!("--mem={MEM_LIMIT_MIB}M");
    let (dir, id) = cluster.submit("alloc", &[&mem], &body);
    let started = Instant::now();
    let info = cluster.wait_ended(id);
    let report = read_report(&dir.join("report.json"));
    let output = fs::read_to_string(dir.join("slurm.out")).unwrap_or_default();
    eprintln!(
        "slurm: --mem={MEM_LIMIT_MIB}M, {ALLOC_MIB} MiB allocated under corral: job {} {} \
         {:.1} s after the submission; the job's output:\n{output}the report:\n{report:#}",
        info.state,
        info.exit_code,
        started.elapsed().as_secs_f64()
    );
    // The limit slurmstepd set on the job's and the step's cgroups, from its log.
    let log = fs::read_to_string(cluster.dir.join("log/slurmd.log")).unwrap_or_default();
    let limit = format!(
        "[{id}.batch] task/cgroup: _memcg_initialize: step: alloc={MEM_LIMIT_MIB}MB \
         mem.limit={MEM_LIMIT_MIB}MB"
    );
    assert!(log.contains(&limit), "slurmd's log says {limit:?}:\n{log}");
    // corral's leaf is below that step's cgroup, so the limit covers it.
    let leaf = report["cgroup"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_default();
    let step = cluster.job_cgroup(id).join("step_batch");
    assert!(
        leaf.starts_with(&step) && leaf != step,
        "the job's leaf is inside the step's cgroup {}:\n{report:#}",
        step.display()
    );
    assert_eq!(report["cgroup_parent_source"], "delegated", "{report:#}");
    // The process died of a SIGKILL corral did not send: the OOM killer's, which Slurm
    // counted in the step's memory.events.
    assert_eq!(report["exit"]["signal"], 9, "{report:#}");
    assert_eq!(report["exit_status"], 137, "{report:#}");
    assert!(
        report["stop"].is_null(),
        "corral stopped nothing: {report:#}"
    );
    assert_eq!(info.state, "OUT_OF_MEMORY", "{output}");
    assert!(
        output.contains(&format!("oom-kill event(s) in StepId={id}.batch")),
        "slurmstepd reports the OOM kill:\n{output}"
    );
    assert_eq!(report["survivors"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["cleanup"]["cgroup_removed"], true, "{report:#}");
    let listed = read_pids(&dir.join("pids"));
    assert_eq!(listed.len(), 1, "the allocating process ran: {listed:?}");
    cluster.assert_epilog_swept(id);
    cluster.assert_nothing_left();
    cluster.shutdown();
}
