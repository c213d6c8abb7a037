//! corral under systemd, in the systemd VM (`cargo xtask vm-test`, scripts/vm/payload.list).
//!
//! - [`in_a_unit`]: `corral run` started in a system unit that delegates nothing (the VM's
//!   payload unit). As root it re-runs itself in a scope bound to that unit
//!   (`systemd-run --scope -p Delegate=yes -p BindsTo=<unit>`), reported as degraded: outside
//!   the unit's limits and accounting. As a user no such binding exists (a user manager
//!   cannot bind to a system unit), so the job stays in the unit: the pgroup fallback, or an
//!   error when `--mechanism cgroup` is forced.
//! - [`service`]: a service whose `ExecStart` is `corral run -- <escaping tree>`, as root and
//!   as a user service, with `Delegate=yes` (the job's cgroup is inside the service's) and
//!   without (root: the job runs in a scope bound to the service; a user: its service cgroup
//!   is its own, so the job stays inside it). Then `systemctl stop`, with SIGTERM and with
//!   `KillSignal=SIGKILL`, and `systemctl kill -s KILL`: every process of the tree gone, no
//!   job cgroup, scope or record left. With SIGTERM (`TimeoutStopSec` above corral's grace)
//!   corral cleans up itself; the units killed at once run `ExecStopPost=corral sweep`.
//!
//! Every test is `#[ignore]`d: the VM runs them with `--include-ignored`. Asked for elsewhere
//! without `CORRAL_VM=1`, a test says `SKIPPED` (and fails under `CORRAL_REQUIRE_ALL=1`).
#![cfg(target_os = "linux")]

#[path = "containment/util.rs"]
#[allow(unused_macros, unused_imports)] // the per-mechanism macro serves tests/containment
mod util;

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use util::{
    cgroup2_mount, cgroup_dir_of, describe_pid, exited, read_pids, skip, wait_exited, CgroupTree,
    Procs, CORRAL, READY_DEADLINE, TESTTREE,
};

/// The VM's user with a lingering user manager.
const USER: &str = "corral";
const USER_UID: u32 = 1000;
/// Everything gone and nothing left, from the stop (the bound).
const BOUND: Duration = Duration::from_secs(2);

/// Whether the VM suite asked for this test (`CORRAL_VM=1`); else [`skip`].
fn in_vm(name: &str) -> bool {
    let yes = std::env::var("CORRAL_VM").as_deref() == Ok("1");
    if !yes {
        skip(format!(
            "{name}: the systemd VM suite runs it (CORRAL_VM=1, cargo xtask vm-test)"
        ));
    }
    yes
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scratch directory anyone can write (the report and the tree's pids file are written by
/// whoever corral runs as).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The deepest `.scope` directory on `path`'s way down from the mount.
fn scope_of(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|p| p.extension().is_some_and(|e| e == "scope"))
        .map(Path::to_path_buf)
}

fn read_report(path: &Path) -> serde_json::Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}): {text}"))
}

/// A systemd manager, driven through `systemctl` and `systemd-run`: root's, or the user
/// corral's (through `runuser`, pointed at its lingering manager).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Manager {
    System,
    User,
}

impl Manager {
    fn command(self, program: &str) -> Command {
        match self {
            Manager::System => Command::new(program),
            Manager::User => {
                let mut command = Command::new("runuser");
                command.args(["-u", USER, "--", "env"]);
                command.arg(format!("XDG_RUNTIME_DIR=/run/user/{USER_UID}"));
                command.arg(format!(
                    "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{USER_UID}/bus"
                ));
                command.args([program, "--user"]);
                command
            }
        }
    }

    fn systemctl(self, args: &[&str]) -> Output {
        self.command("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run systemctl")
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    fn show(self, unit: &str, property: &str) -> String {
        let out = self.systemctl(&["show", "-p", property, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `systemctl status` and the unit's journal, for failure messages.
    fn describe(self, unit: &str) -> String {
        let status = self.systemctl(&["status", "--no-pager", "--full", unit]);
        let journal = Command::new("journalctl")
            .args(["--no-pager", "-n", "40", "-o", "cat"])
            .arg(match self {
                Manager::System => format!("_SYSTEMD_UNIT={unit}"),
                Manager::User => format!("_SYSTEMD_USER_UNIT={unit}"),
            })
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "systemctl status {unit}:\n{}\njournal:\n{journal}",
            String::from_utf8_lossy(&status.stdout)
        )
    }
}

/// The processes in a cgroup subtree, each held by a pidfd opened while `/proc` showed it
/// in the subtree. `Drop` SIGKILLs, through its pidfd, any still running (a failed test).
#[derive(Default)]
struct Members {
    procs: Vec<(i32, String, OwnedFd)>,
}

impl Members {
    fn add_subtree(&mut self, root: &Path) {
        for pid in CgroupTree::procs_recursive(root) {
            if pid <= 1 || self.procs.iter().any(|(p, _, _)| *p == pid) {
                continue;
            }
            let Some(raw) = Pid::from_raw(pid) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue;
            };
            // Opened first, checked second: a PID reused in between is not in the subtree.
            if cgroup_dir_of(pid).is_some_and(|c| c.starts_with(root)) && !exited(fd.as_fd()) {
                self.procs.push((pid, describe_pid(pid), fd));
            }
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|(p, _, _)| *p).collect()
    }

    /// Waits until every member has exited, up to `deadline`.
    fn assert_all_gone_by(&self, deadline: Instant, context: &str) {
        for (pid, description, fd) in &self.procs {
            assert!(
                wait_exited(fd.as_fd(), deadline),
                "{context}: pid {pid} still running at the deadline: {} (was {description})",
                describe_pid(*pid)
            );
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, _, fd) in &self.procs {
            if !exited(fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
        }
    }
}

/// A unit this test started: stopped and its failed state reset in `Drop`, pass or fail;
/// then the test's directories are removed.
struct UnitGuard {
    manager: Manager,
    unit: String,
    dirs: Vec<PathBuf>,
}

impl Drop for UnitGuard {
    fn drop(&mut self) {
        let _ = self.manager.systemctl(&["stop", &self.unit]);
        let _ = self.manager.systemctl(&["reset-failed", &self.unit]);
        for dir in &self.dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `corral run` started in a system unit that is not delegated: the VM's payload unit
/// (`root-plain` and `user-plain` in scripts/vm/payload.list).
mod in_a_unit {
    use super::*;

    /// The system unit this test runs in, which must not be delegated.
    fn own_unit() -> String {
        let own = cgroup_dir_of(std::process::id() as i32).expect("our own cgroup");
        let unit = own
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".service"))
            .unwrap_or_else(|| panic!("run this in a system service's cgroup, not {own:?}"));
        let system = cgroup2_mount().unwrap().join("system.slice");
        assert!(
            own.starts_with(system),
            "run this in a system unit, not {own:?}"
        );
        unit.to_string()
    }

    /// `corral run ARGS --report R -- sh -c 'sleep 1000 & exit 0'`: the report, the time,
    /// stderr.
    fn run(dir: &Path, args: &[&str]) -> (serde_json::Value, Duration, String) {
        let report = dir.join(format!("report-{}.json", args.join("-")));
        let t0 = Instant::now();
        let out = Command::new(CORRAL)
            .arg("run")
            .args(args)
            .arg("--report")
            .arg(&report)
            .args(["--", "sh", "-c", "sleep 1000 & exit 0"])
            .env_remove("CORRAL_CGROUP_PARENT")
            .env_remove("CORRAL_IN_SYSTEMD_SCOPE")
            .stdin(Stdio::null())
            .output()
            .expect("run corral");
        let took = t0.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "corral {args:?}: {stderr}");
        (read_report(&report), took, stderr)
    }

    /// A running `corral run ARGS --report R -- corral-testtree --go G --exit 0 setsid`,
    /// once its tree is ready; then `go` lets the top exit, and corral stops the escapee.
    struct Escapee {
        dir: PathBuf,
        child: Option<std::process::Child>,
        procs: Procs,
    }

    impl Drop for Escapee {
        /// Only when the test failed before `finish`: corral is SIGKILLed (its watchdog
        /// ends the job; `procs` SIGKILLs the tree too) and reaped.
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                if let Ok(fd) =
                    rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty())
                {
                    let _ = rustix::process::pidfd_send_signal(&fd, Signal::KILL);
                }
                let _ = child.wait();
            }
        }
    }

    impl Escapee {
        fn start(dir: &Path, args: &[&str]) -> Escapee {
            let (pids, go) = (dir.join("pids"), dir.join("go"));
            let child = Command::new(CORRAL)
                .arg("run")
                .args(args)
                .arg("--report")
                .arg(dir.join("report.json"))
                .arg("--")
                .arg(TESTTREE)
                .arg("--pids")
                .arg(&pids)
                .arg("--go")
                .arg(&go)
                .args(["--exit", "0", "setsid"])
                .env_remove("CORRAL_CGROUP_PARENT")
                .env_remove("CORRAL_IN_SYSTEMD_SCOPE")
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn corral");
            let mut procs = Procs::default();
            poll_until("the tree is ready", Instant::now() + READY_DEADLINE, || {
                let listed = read_pids(&pids);
                procs.open_late(&listed);
                if procs.procs.len() == 2 {
                    Ok(())
                } else {
                    Err(format!("listed {listed:?}"))
                }
            });
            Escapee {
                dir: dir.to_owned(),
                child: Some(child),
                procs,
            }
        }

        /// Lets the top exit; corral stops the escapee. The report and stderr.
        fn finish(mut self) -> (serde_json::Value, String) {
            fs::write(self.dir.join("go"), "go\n").unwrap();
            let child = self.child.take().unwrap();
            let out = child.wait_with_output().expect("wait for corral");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(0), "corral: {stderr}");
            self.procs
                .assert_all_gone_by(Instant::now() + BOUND, "the tree after corral returned");
            (read_report(&self.dir.join("report.json")), stderr)
        }
    }

    /// As root in a system unit without `Delegate=`: corral re-runs itself under
    /// `systemd-run --scope -p Delegate=yes -p BindsTo=<unit>`; the job runs in that scope,
    /// which systemd binds to the unit, and the report says so (degraded: the unit's limits
    /// and accounting do not cover the job). Prints what the re-run costs.
    #[test]
    #[ignore = "needs the systemd VM: cargo xtask vm-test"]
    fn as_root_corral_runs_the_job_in_a_scope_bound_to_its_unit() {
        if !in_vm("as_root_corral_runs_the_job_in_a_scope_bound_to_its_unit") {
            return;
        }
        assert!(
            is_root(),
            "run as root (root-plain in scripts/vm/payload.list)"
        );
        let unit = own_unit();
        let dir = scratch("systemd-bound");
        let job = Escapee::start(&dir, &["--mechanism", "cgroup"]);
        // While it runs: the job is in a scope bound to our unit, outside our unit.
        let leaf = cgroup_dir_of(job.procs.pid("setsid")).expect("the escapee's cgroup");
        let scope = scope_of(&leaf).unwrap_or_else(|| panic!("the job is in no scope: {leaf:?}"));
        let scope_name = scope.file_name().unwrap().to_str().unwrap().to_string();
        let binds_to = Manager::System.show(&scope_name, "BindsTo");
        assert!(
            binds_to.split(' ').any(|u| u == unit),
            "{scope_name} is bound to {unit}: BindsTo={binds_to}"
        );
        let own = cgroup_dir_of(std::process::id() as i32).unwrap();
        assert!(!leaf.starts_with(&own), "the job left {own:?}: {leaf:?}");
        let (report, stderr) = job.finish();
        let text = serde_json::to_string_pretty(&report).unwrap();
        assert_eq!(report["mechanism"], "cgroup", "{text}\n{stderr}");
        assert_eq!(report["degraded"], true, "{text}");
        assert_eq!(report["cgroup_parent_source"], "delegated", "{text}");
        let reason = report["mechanism_reason"].as_str().unwrap_or_default();
        for says in ["obtained from systemd", "bound to it", unit.as_str()] {
            assert!(reason.contains(says), "the reason says {says:?}: {reason}");
        }
        assert_eq!(report["cgroup"].as_str(), leaf.to_str(), "{text}");
        assert_eq!(report["leftovers"].as_array().map(Vec::len), Some(1));
        assert_eq!(report["survivors"].as_array().map(Vec::len), Some(0));
        assert_eq!(report["cleanup"]["cgroup_removed"], true, "{text}");
        // The scope goes with corral (`--collect`).
        poll_until(
            "the scope is gone",
            Instant::now() + BOUND,
            || match scope.exists() {
                false => Ok(()),
                true => Err(format!("{} still exists", scope.display())),
            },
        );

        // What the re-run costs: the same job without it (pgroup, no re-run); the best of 3.
        let best = |args: &[&str]| {
            (0..3)
                .map(|_| run(&dir, args))
                .inspect(|(report, _, stderr)| {
                    assert_eq!(
                        report["survivors"].as_array().map(Vec::len),
                        Some(0),
                        "{stderr}"
                    )
                })
                .map(|(_, took, _)| took)
                .min()
                .unwrap()
        };
        let scoped = best(&["--mechanism", "cgroup"]);
        let baseline = best(&["--mechanism", "pgroup"]);
        eprintln!(
            "systemd scope: corral run took {scoped:?} with systemd-run, {baseline:?} without \
             (pgroup); the scope costs about {:?} (best of 3 each)",
            scoped.saturating_sub(baseline)
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// As a user in a system unit: no scope can be bound to it (a user manager cannot bind
    /// to a system unit), so with `--mechanism auto` the job stays inside the unit under
    /// the pgroup mechanism, reported as degraded.
    #[test]
    #[ignore = "needs the systemd VM: cargo xtask vm-test"]
    fn as_a_user_the_job_stays_in_the_unit_under_pgroup() {
        if !in_vm("as_a_user_the_job_stays_in_the_unit_under_pgroup") {
            return;
        }
        assert!(
            !is_root(),
            "run as a user (user-plain in scripts/vm/payload.list)"
        );
        own_unit();
        let dir = scratch("systemd-user-plain");
        let job = Escapee::start(&dir, &[]);
        let own = cgroup_dir_of(std::process::id() as i32).unwrap();
        for proc in &job.procs.procs {
            assert_eq!(
                cgroup_dir_of(proc.pid).as_ref(),
                Some(&own),
                "{} stays in our unit's cgroup",
                describe_pid(proc.pid)
            );
        }
        let (report, stderr) = job.finish();
        let text = serde_json::to_string_pretty(&report).unwrap();
        assert_eq!(report["mechanism"], "pgroup", "{text}\n{stderr}");
        assert_eq!(report["degraded"], true, "{text}");
        assert!(report["cgroup"].is_null(), "{text}");
        let reason = report["mechanism_reason"].as_str().unwrap_or_default();
        for says in [
            "systemd manages the cgroup tree",
            "is not delegated to us",
            "the job stays inside it",
        ] {
            assert!(reason.contains(says), "the reason says {says:?}: {reason}");
        }
        assert_eq!(report["leftovers"].as_array().map(Vec::len), Some(1));
        assert_eq!(report["survivors"].as_array().map(Vec::len), Some(0));
        let _ = fs::remove_dir_all(&dir);
    }

    /// As a user in a system unit, `--mechanism cgroup` cannot be had: a one-line error
    /// (exit 125) whose fix names `Delegate=yes`.
    #[test]
    #[ignore = "needs the systemd VM: cargo xtask vm-test"]
    fn as_a_user_forcing_cgroup_is_an_error_that_names_delegate() {
        if !in_vm("as_a_user_forcing_cgroup_is_an_error_that_names_delegate") {
            return;
        }
        assert!(
            !is_root(),
            "run as a user (user-plain in scripts/vm/payload.list)"
        );
        own_unit();
        let out = Command::new(CORRAL)
            .args(["run", "--mechanism", "cgroup", "--", "true"])
            .env_remove("CORRAL_CGROUP_PARENT")
            .env_remove("CORRAL_IN_SYSTEMD_SCOPE")
            .stdin(Stdio::null())
            .output()
            .expect("run corral");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("corral: error: "), "{stderr}");
        assert!(stderr.contains("Delegate=yes"), "the fix: {stderr}");
    }
}

/// A service whose `ExecStart` is `corral run -- <escaping tree>`, stopped by systemd.
/// Run as root: the user's services are started through `runuser` (`root-plain`).
mod service {
    use super::*;

    /// How a test stops the service.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum End {
        /// `systemctl stop`: SIGTERM to every process of the unit's cgroup (and the main
        /// process), SIGKILL after `TimeoutStopSec`; corral's grace is shorter.
        Stop,
        /// `systemctl stop` of a unit with `KillSignal=SIGKILL`: everything at once.
        StopWithSigkill,
        /// `systemctl kill -s KILL`: the main process and the unit's cgroup.
        Kill,
    }

    /// The tree: a double-fork daemon whose top exits, then a child that ignores SIGTERM
    /// and a `setsid` escapee under a top that waits forever (the shell's own process).
    const ROLES: &[&str] = &["top", "top", "top", "daemon", "ignore-term", "setsid"];
    const TIMEOUT_STOP: &str = "2s";
    const GRACE: &str = "1s";

    /// Starts the service, checks where its job runs, stops it as `end` says and checks
    /// that nothing is left.
    fn case(manager: Manager, delegate: bool, end: End, tag: &str) {
        if !in_vm(tag) {
            return;
        }
        assert!(
            is_root(),
            "run as root (root-plain in scripts/vm/payload.list)"
        );
        let name = format!("corral-test-svc-{}-{tag}", std::process::id());
        let unit = format!("{name}.service");
        let dir = scratch(&name);
        let (pids, report) = (dir.join("pids"), dir.join("report.json"));
        // The job registry: the test's own, owned by whoever corral runs as.
        let registry = util::runtime_dir("svc");
        if manager == Manager::User {
            std::os::unix::fs::chown(&registry, Some(USER_UID), Some(USER_UID)).unwrap();
        }
        let tree = format!(
            "{t} --pids {p} daemon && {{ {t} --pids {p} ignore-term & exec {t} --pids {p} setsid; }}",
            t = TESTTREE,
            p = pids.display()
        );
        let mut members = Members::default();
        let mut procs = Procs::default();

        let mut start = manager.command("systemd-run");
        start
            .args(["--quiet", "--service-type=exec", "--unit", &name])
            .args(["-p", &format!("TimeoutStopSec={TIMEOUT_STOP}")])
            .arg(format!(
                "--setenv=CORRAL_RUNTIME_DIR={}",
                registry.display()
            ));
        if delegate {
            start.args(["-p", "Delegate=yes"]);
        }
        if end == End::StopWithSigkill {
            start.args(["-p", "KillSignal=SIGKILL"]);
        }
        if end != End::Stop {
            // Everything killed at once: corral cannot remove its record; and in a bound
            // scope, whose own stop sends SIGTERM (which ends the watchdog too), a process
            // that ignores SIGTERM would live on until the scope's TimeoutStopSec (90 s).
            // The unit's own `corral sweep` after the stop ends both (as a Slurm Epilog).
            start.arg(format!("--property=ExecStopPost={CORRAL} sweep"));
        }
        start
            .args(["--", CORRAL, "run", "--grace", GRACE, "--report"])
            .arg(&report)
            .args(["--", "sh", "-c", &tree]);
        let guard = UnitGuard {
            manager,
            unit: unit.clone(),
            dirs: vec![dir.clone(), registry.clone()],
        };
        let out = start
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-run");
        assert!(
            out.status.success(),
            "systemd-run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let describe = || manager.describe(&unit);

        // Ready: the tree listed itself.
        poll_until("the tree is ready", Instant::now() + READY_DEADLINE, || {
            let listed = read_pids(&pids);
            procs.open_late(&listed);
            let mut missing = ROLES.to_vec();
            for (role, _) in &listed {
                if let Some(at) = missing.iter().position(|r| r == role) {
                    missing.remove(at);
                }
            }
            match missing.is_empty() {
                true => Ok(()),
                false => Err(format!("missing {missing:?}; {}", describe())),
            }
        });
        let mount = cgroup2_mount().expect("the cgroup2 mount");
        let service_cgroup =
            mount.join(manager.show(&unit, "ControlGroup").trim_start_matches('/'));
        let main_pid: i32 = manager.show(&unit, "MainPID").parse().unwrap_or(0);
        assert!(main_pid > 1, "the service's main process; {}", describe());
        let corral_cgroup = cgroup_dir_of(main_pid).expect("corral's cgroup");
        let leaf = cgroup_dir_of(procs.pid("setsid")).expect("the job's cgroup");
        for proc in &procs.procs {
            if let Some(cgroup) = cgroup_dir_of(proc.pid) {
                assert_eq!(
                    cgroup,
                    leaf,
                    "{} in the job's cgroup",
                    describe_pid(proc.pid)
                );
            }
        }
        assert!(
            leaf.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("corral-")),
            "the job runs in a leaf of corral's: {leaf:?}"
        );
        // Where the job runs: inside the service (delegated, or a user's own service
        // cgroup), or in a scope bound to it (root without Delegate=).
        let bound_scope = !delegate && manager == Manager::System;
        let scope = if bound_scope {
            let scope = scope_of(&leaf).unwrap_or_else(|| panic!("no scope: {leaf:?}"));
            let scope_name = scope.file_name().unwrap().to_str().unwrap().to_string();
            let binds_to = manager.show(&scope_name, "BindsTo");
            assert!(
                binds_to.split(' ').any(|u| u == unit),
                "{scope_name} is bound to {unit}: BindsTo={binds_to}"
            );
            assert_eq!(corral_cgroup, scope, "corral runs in the scope");
            assert!(!leaf.starts_with(&service_cgroup), "{leaf:?}");
            assert!(
                CgroupTree::procs_recursive(&service_cgroup).is_empty(),
                "the service's cgroup is empty: {}",
                describe()
            );
            members.add_subtree(&scope);
            Some(scope)
        } else {
            assert_eq!(leaf.parent(), Some(service_cgroup.as_path()), "{leaf:?}");
            assert_eq!(corral_cgroup, service_cgroup, "corral runs in the service");
            let inside = CgroupTree::procs_recursive(&service_cgroup);
            for proc in procs.procs.iter().filter(|p| !procs.gone(p.pid)) {
                assert!(inside.contains(&proc.pid), "{}", describe_pid(proc.pid));
            }
            None
        };
        members.add_subtree(&service_cgroup);
        assert!(
            members.pids().contains(&main_pid),
            "corral among the members: {:?}",
            members.pids()
        );
        assert_eq!(
            fs::read_dir(&registry).unwrap().count(),
            2,
            "the job's record and socket in {}",
            registry.display()
        );

        // The stop.
        let t0 = Instant::now();
        let args: &[&str] = match end {
            End::Stop | End::StopWithSigkill => &["stop", &unit],
            End::Kill => &["kill", "-s", "KILL", &unit],
        };
        let out = manager.systemctl(args);
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + BOUND;
        procs.assert_all_gone_by(deadline, &format!("the tree after systemctl {args:?}"));
        members.assert_all_gone_by(deadline, &format!("the unit after systemctl {args:?}"));
        let gone_after = t0.elapsed();
        let mut cgroups = vec![leaf.clone(), service_cgroup.clone()];
        cgroups.extend(scope.clone());
        poll_until("no cgroup left", deadline, || {
            match cgroups.iter().find(|c| c.exists()) {
                None => Ok(()),
                Some(c) => Err(format!("{} still exists", c.display())),
            }
        });
        let clean_after = t0.elapsed();
        let left: Vec<PathBuf> = fs::read_dir(&registry)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let written = report.exists().then(|| read_report(&report));
        eprintln!(
            "{tag}: systemctl {} took {took:?}; the tree and the unit's processes gone \
             {gone_after:?}, the cgroups {clean_after:?} after it began; report written: {}; \
             registry left: {left:?}; unit result {:?}, main exit {}/{}; stop steps: {}",
            args[0],
            written.is_some(),
            manager.show(&unit, "Result"),
            manager.show(&unit, "ExecMainCode"),
            manager.show(&unit, "ExecMainStatus"),
            written
                .as_ref()
                .map(|r| r["stop"]["steps"].to_string())
                .unwrap_or_default(),
        );
        assert!(left.is_empty(), "records left in the registry: {left:?}");

        // With SIGTERM first and a grace shorter than TimeoutStopSec, corral has the time to
        // clean up itself: it ends before systemd's SIGKILL, and its report says so. It ends
        // as COMMAND did: killed by SIGTERM (re-raised: CLD_KILLED 15, which systemd counts
        // as a clean stop and may then unload the transient unit, its ExecMain* reading 0),
        // or exiting 143 (COMMAND did), or 137 (corral's grace ran out and it killed
        // COMMAND).
        if end == End::Stop {
            let ended = (
                manager.show(&unit, "ExecMainCode"),
                manager.show(&unit, "ExecMainStatus"),
            );
            let unloaded = manager.show(&unit, "LoadState") == "not-found";
            assert!(
                [("2", "15"), ("1", "143"), ("1", "137")]
                    .iter()
                    .any(|(c, s)| ended == (c.to_string(), s.to_string()))
                    || (unloaded && ended == ("0".to_string(), "0".to_string())),
                "corral was killed by SIGTERM (CLD_KILLED 15), or exited 143 or 137, or the \
                 unit was unloaded after a clean stop; not {ended:?} (unloaded: {unloaded}); {}",
                describe()
            );
            let report = written.unwrap_or_else(|| panic!("no report; {}", describe()));
            let text = serde_json::to_string_pretty(&report).unwrap();
            assert_eq!(report["mechanism"], "cgroup", "{text}");
            assert_eq!(report["cgroup"].as_str(), leaf.to_str(), "{text}");
            assert_eq!(report["cgroup_parent_source"], "delegated", "{text}");
            assert_eq!(report["degraded"], bound_scope, "{text}");
            if bound_scope {
                let reason = report["mechanism_reason"].as_str().unwrap_or_default();
                assert!(reason.contains(&unit), "the reason names {unit}: {reason}");
            }
            assert_eq!(report["stop"]["reason"], "signal", "{text}");
            // The TERM-ignorer outlived the grace.
            assert_eq!(report["stop"]["outcome"], "killed", "{text}");
            assert_eq!(report["survivors"].as_array().map(Vec::len), Some(0));
            assert_eq!(report["cleanup"]["cgroup_removed"], true, "{text}");
        }
        drop(guard);
    }

    /// `fn <name>() { case(manager, delegate, end) }` for each line, `#[ignore]`d.
    macro_rules! cases {
        ($($name:ident: $manager:ident, $delegate:expr, $end:ident;)+) => {
            $(
                #[test]
                #[ignore = "needs the systemd VM: cargo xtask vm-test"]
                fn $name() {
                    case(Manager::$manager, $delegate, End::$end, stringify!($name));
                }
            )+
        };
    }

    cases! {
        root_delegated_stop: System, true, Stop;
        root_delegated_stop_with_sigkill: System, true, StopWithSigkill;
        root_delegated_kill: System, true, Kill;
        root_bound_scope_stop: System, false, Stop;
        root_bound_scope_stop_with_sigkill: System, false, StopWithSigkill;
        root_bound_scope_kill: System, false, Kill;
        user_delegated_stop: User, true, Stop;
        user_delegated_stop_with_sigkill: User, true, StopWithSigkill;
        user_delegated_kill: User, true, Kill;
        user_undelegated_stop: User, false, Stop;
        user_undelegated_stop_with_sigkill: User, false, StopWithSigkill;
        user_undelegated_kill: User, false, Kill;
    }
}
