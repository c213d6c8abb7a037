//! Resource limits that need the cgroup controllers: run in the systemd VM (pure cgroup v2,
//! controllers available), by
//! `CORRAL_VM=1 cargo test --all-features --test limits_vm -- --include-ignored`.
//!
//! Every test is `#[ignore]`d with its reason, so a host's `cargo test` lists them as
//! ignored: on a host whose controllers are bound to cgroup v1 (a hybrid layout) none of
//! them can run, and that is what `tests/containment/limits.rs` covers. The VM runs them
//! with `--include-ignored` and `CORRAL_VM=1`. Asked for without `CORRAL_VM=1`, or unable
//! to enable the controllers it needs under its test cgroup, a test prints
//! `SKIPPED: <reason>`, and fails under `CORRAL_REQUIRE_ALL=1`.
//!
//! Each test enables the controllers in its own subtree's root (`<mount>/corral-test-...`),
//! so the `jobs` parent offers them and corral enables them in `jobs` itself.
#![cfg(target_os = "linux")]

#[path = "containment/util.rs"]
#[allow(unused_macros, unused_imports)] // the per-mechanism macro serves tests/containment
mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use util::{executable_by_others, skip, Mechanism, Sandbox};

/// The sandbox, with `controllers` enabled in its root; `None` (after [`skip`]) when the VM
/// suite did not ask for the test or the controllers cannot be had.
fn vm_sandbox(name: &str, controllers: &[&str]) -> Option<Sandbox> {
    if std::env::var("CORRAL_VM").as_deref() != Ok("1") {
        skip(format!(
            "{name}: the systemd VM suite runs it (CORRAL_VM=1, cargo xtask vm-test)"
        ));
        return None;
    }
    let sandbox = Sandbox::with_cgroup(name)?;
    let root = sandbox.cgroup().root().to_path_buf();
    let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let text: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    if let Err(e) = fs::write(root.join("cgroup.subtree_control"), text.join(" ")) {
        let v1 = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let v1: Vec<&str> = v1.lines().filter(|l| !l.starts_with("0::")).collect();
        skip(format!(
            "{name}: cannot enable {controllers:?} in {} ({e}); it offers {:?}; cgroup v1 \
             hierarchies: {v1:?}",
            root.display(),
            offered.trim()
        ));
        return None;
    }
    Some(sandbox)
}

fn applied<'a>(report: &'a serde_json::Value, file: &str) -> &'a serde_json::Value {
    &report["limits"]["applied"][file]
}

/// Kernel `major.minor`, for files newer kernels have.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn an_oom_killed_command_is_reported_and_exits_137() {
    let Some(sandbox) = vm_sandbox("vm-oom", &["memory"]) else {
        return;
    };
    // Swap would let the job page out instead of being killed.
    let swap = sandbox.cgroup().jobs().join("memory.swap.max");
    if swap.exists() {
        fs::write(&swap, "0").expect("write 0 to jobs/memory.swap.max");
    }
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .args(["--memory-max", "32M"])
        .tree(&["alloc", "--mib", "512"])
        .spawn();
    job.go();
    let done = job.finish();
    sandbox.assert_clean();
    done.assert_code(137);
    done.assert_report_basics(Mechanism::Cgroup);
    let report = done.report();
    assert_eq!(report["oom_killed"], true, "{}", done.report_text());
    assert!(
        report["usage"]["oom_kills"].as_u64().unwrap_or(0) >= 1,
        "{}",
        done.report_text()
    );
    assert_eq!(applied(report, "memory.max"), "33554432");
    assert!(
        report["limits"]["controllers_enabled"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "memory")),
        "{}",
        done.report_text()
    );
    if kernel_at_least(5, 19) {
        let peak = report["usage"]["memory_peak_bytes"].as_u64();
        assert!(
            peak.is_some_and(|p| p > 0 && p <= 33554432),
            "memory.peak must be within memory.max:\n{}",
            done.report_text()
        );
    }
    assert!(
        done.stderr
            .contains("killed by the OOM killer (memory.max 33554432)"),
        "the summary line must name the OOM kill: {:?}",
        done.stderr
    );
}

#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn pids_max_stops_a_fork_storm() {
    let Some(sandbox) = vm_sandbox("vm-pids", &["pids"]) else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.args(["--pids-max", "16", "--timeout", "2s"])
        .grace("100ms", Duration::from_millis(100))
        .tree(&["storm", "--max", "500", "--interval", "1ms"]);
    let job = run.spawn();
    let procs = job.wait_listed(&["top"]);
    job.go();
    let done = job.finish();
    procs.assert_all_gone("pids.max storm");
    sandbox.assert_clean();
    // 124, or 137 when the storm's main process had to be killed after the grace (as
    // coreutils `timeout -k`).
    done.assert_code_in(&[124, 137]);
    done.assert_report_basics(Mechanism::Cgroup);
    let listed = done.listed().len();
    assert!(
        (2..=16).contains(&listed),
        "pids.max 16 must stop the storm at 16 processes; the tree listed {listed}"
    );
    let report = done.report();
    assert_eq!(applied(report, "pids.max"), "16");
    if kernel_at_least(6, 1) {
        let peak = report["usage"]["pids_peak"].as_u64();
        assert!(
            peak.is_some_and(|p| (2..=16).contains(&p)),
            "pids.peak must be within pids.max:\n{}",
            done.report_text()
        );
    }
}

#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn cpu_max_throttles_the_job() {
    let Some(sandbox) = vm_sandbox("vm-cpu-max", &["cpu"]) else {
        return;
    };
    // 100 ms of CPU at 10 ms per 100 ms: about a second, throttled in every period.
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .args(["--cpu-max", "10ms/100ms"])
        .tree(&["burn", "--cpu", "100ms"])
        .spawn();
    job.go();
    let done = job.finish();
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(Mechanism::Cgroup);
    let report = done.report();
    assert_eq!(applied(report, "cpu.max"), "10000 100000");
    let usage = &report["usage"];
    assert!(
        usage["cpu_nr_throttled"].as_u64().unwrap_or(0) > 0
            && usage["cpu_throttled_usec"].as_u64().unwrap_or(0) > 0,
        "cpu.max 10ms/100ms must throttle a 100 ms burn:\n{}",
        done.report_text()
    );
    assert!(
        done.elapsed >= Duration::from_millis(500),
        "a 100 ms burn at 10% of a CPU took only {:?}",
        done.elapsed
    );
}

#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn every_limit_is_written_and_the_peaks_are_reported() {
    let Some(sandbox) = vm_sandbox("vm-all", &["memory", "pids", "cpu"]) else {
        return;
    };
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .args([
            "--memory-max",
            "1G",
            "--memory-high",
            "512M",
            "--pids-max",
            "max",
            "--cpu-max",
            "2s/1s",
            "--cpu-weight",
            "50",
        ])
        .tree(&["grandchild", "--exit", "0"])
        .spawn();
    job.go();
    let done = job.finish();
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(Mechanism::Cgroup);
    let report = done.report();
    for (file, value) in [
        ("memory.max", "1073741824"),
        ("memory.high", "536870912"),
        ("pids.max", "max"),
        ("cpu.max", "2000000 1000000"),
        ("cpu.weight", "50"),
    ] {
        assert_eq!(applied(report, file), value, "{}", done.report_text());
    }
    let usage = &report["usage"];
    assert_eq!(usage["oom_kills"], 0, "{}", done.report_text());
    assert_eq!(report["oom_killed"], false);
    if kernel_at_least(6, 1) {
        assert!(
            usage["memory_peak_bytes"].as_u64().is_some_and(|p| p > 0)
                && usage["pids_peak"].as_u64().is_some_and(|p| p >= 2),
            "{}",
            done.report_text()
        );
    }
}

/// The parent is the cgroup corral runs in: corral moves itself into
/// `<parent>/supervisor` first (cgroup v2's no-internal-processes rule).
#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn corral_leaves_its_own_cgroup_to_enable_controllers_there() {
    let Some(sandbox) = vm_sandbox("vm-move-self", &["pids"]) else {
        return;
    };
    let own = sandbox.cgroup().corral_leaf();
    let mut run = sandbox.corral_bare();
    let report = run.dir.join("report.json");
    run.args([
        "run",
        "--mechanism",
        "cgroup",
        "--pids-max",
        "64",
        "--cgroup-parent",
    ])
    .arg(&own)
    .arg("--report")
    .arg(&report);
    run.tree(&["exit", "0"]);
    let done = run.spawn_with_report(report).finish();
    done.assert_code(0);
    done.assert_report_basics(Mechanism::Cgroup);
    let report = done.report();
    let supervisor = own.join("supervisor");
    assert_eq!(
        report["limits"]["moved_self_to"].as_str().map(Path::new),
        Some(supervisor.as_path()),
        "{}",
        done.report_text()
    );
    assert_eq!(report["limits"]["controllers_enabled"][0], "pids");
    let left: Vec<_> = util::CgroupTree::children(&own)
        .into_iter()
        .filter(|c| *c != supervisor)
        .collect();
    assert!(
        left.is_empty(),
        "job cgroups left in {}: {left:?}",
        own.display()
    );
}

/// A parent whose `cgroup.subtree_control` the user may not write is not delegated.
#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn a_parent_not_delegated_for_controllers_is_an_error() {
    let Some(sandbox) = vm_sandbox("vm-not-delegated", &["pids"]) else {
        return;
    };
    if !executable_by_others(Path::new(util::CORRAL)) {
        skip(format!("user nobody cannot execute {}", util::CORRAL));
        return;
    }
    const NOBODY: u32 = 65534;
    let jobs = sandbox.cgroup().jobs();
    // Writable for job leaves, but not for controllers.
    for path in [jobs.clone(), jobs.join("cgroup.procs")] {
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut run = sandbox.corral_bare();
    fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
    run.uid(NOBODY);
    run.args([
        "run",
        "--mechanism",
        "cgroup",
        "--pids-max",
        "8",
        "--cgroup-parent",
    ])
    .arg(&jobs);
    run.tree(&["exit", "0"]);
    let done = run.run();
    done.assert_refused(&["cannot apply pids.max", "not delegated"]);
    sandbox.assert_clean();
}

/// `corral-helper` (docs/security.md) applies the policy's maxima: a limit not asked for
/// gets the maximum, a lower one is kept, a higher one is refused before anything runs.
#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn the_helper_applies_the_policys_maxima() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    let Some(sandbox) = vm_sandbox("vm-helper", &["pids"]) else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    // The helper's place for the job (`helper-<uid>-<pid>`) sits in `jobs`, and corral
    // enables the controller in that place: `jobs` must offer it.
    fs::write(jobs.join("cgroup.subtree_control"), "+pids").expect("enable pids in jobs");
    // The installed shape: a root-owned prefix with the setuid helper and its policy.
    let prefix = std::env::temp_dir().join(format!("corral-helper-test-vm-{}", std::process::id()));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _remove = Remove(prefix.clone());
    fs::create_dir_all(prefix.join("bin")).unwrap();
    fs::create_dir_all(prefix.join("etc/corral")).unwrap();
    for d in [
        &prefix,
        &prefix.join("bin"),
        &prefix.join("etc"),
        &prefix.join("etc/corral"),
    ] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let helper = prefix.join("bin/corral-helper");
    fs::copy(corral_testkit::CORRAL_HELPER, &helper).unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(
        fs::metadata(&helper).unwrap().uid(),
        0,
        "the test runs as root"
    );
    let policy = prefix.join("etc/corral/helper.toml");
    fs::write(
        &policy,
        format!(
            "[[allow]]\nusers = [\"#65534\"]\ncgroup_parent = \"{}\"\npids_max = 100\n",
            jobs.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
    let mount = util::cgroup2_mount().expect("a cgroup2 mount");
    let show = format!(
        "cat \"{}$(sed -n 's/^0:://p' /proc/self/cgroup)/pids.max\"",
        mount.display()
    );
    let run = |extra: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(&helper)
            .arg("run")
            .args(extra)
            .args(["--", "sh", "-c", &show])
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let (code, out, err) = run(&[]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "100"),
        "no --pids-max: the maximum applies; stderr: {err}"
    );
    let (code, out, err) = run(&["--pids-max", "50"]);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "50"),
        "--pids-max 50 is kept; stderr: {err}"
    );
    let (code, out, err) = run(&["--pids-max", "500"]);
    assert_eq!(
        code,
        Some(125),
        "--pids-max 500 is above the maximum; stdout {out}, stderr {err}"
    );
    assert!(err.contains("above"), "the refusal says why: {err}");
    assert!(out.is_empty(), "nothing ran: {out}");
    let places: Vec<_> = fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(places.is_empty(), "the helper left cgroups: {places:?}");
    sandbox.assert_clean();
}

/// The fork storm of the bench's figure 9 (`corral-testtree storm --interval 0ms --max
/// 10000`: every process forks again at once), with and without `pids.max`, measured where
/// the pids controller exists. The test asserts containment (the limit holds: `pids.peak`
/// never exceeds it; nothing is left after `kill()`); the times are figures, not
/// assertions, written to `$CORRAL_VM_RESULTS/fork-storm-limit.md` for `cargo xtask bench`
/// (docs/benchmarks.md, figure 9b).
#[test]
#[ignore = "needs the systemd VM (cgroup controllers): cargo xtask vm-test"]
fn a_fork_storm_stops_at_its_pids_limit() {
    use std::time::Instant;

    const LIMIT: u64 = 500;
    let Some(sandbox) = vm_sandbox("vm-storm", &["pids"]) else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    let storm = || {
        corral::JobCommand::new(util::TESTTREE).args([
            "storm",
            "--interval",
            "0ms",
            "--max",
            "10000",
        ])
    };
    // The job's processes (`cgroup.procs`: the unlimited job has no pids controller, so no
    // `pids.current`).
    let processes = |job: &corral::Job| -> u64 {
        let path = job.cgroup().expect("a cgroup job").join("cgroup.procs");
        fs::read_to_string(path).map_or(0, |t| t.lines().count() as u64)
    };
    let deadline = util::corral_deadline();
    // Waits until the storm has `want` processes: the storm is still forking when the
    // unlimited one is stopped; the limited one stays at its limit.
    let wait_for = |job: &corral::Job, want: u64| {
        let started = Instant::now();
        loop {
            let have = processes(job);
            if have >= want {
                eprintln!("storm: {have} processes after {:?}", started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "the storm never reached {want} processes: {have} after {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut rows = Vec::new();
    for limited in [false, true] {
        let mut options = corral::Options {
            mechanism: corral::MechanismRequest::Cgroup,
            cgroup_parent: Some(jobs.clone()),
            ..corral::Options::default()
        };
        if limited {
            options.limits.pids_max = Some(corral::LimitValue::Value(LIMIT));
        }
        let mut job = corral::Job::spawn_command(&storm(), &options).expect("spawn the storm");
        wait_for(&job, LIMIT);
        if limited {
            // Give the storm time to try to go past its limit (a set-up pause, not a proof:
            // the proof is pids.peak below).
            std::thread::sleep(Duration::from_millis(500));
        }
        let at_stop = processes(&job);
        let t = Instant::now();
        let report = job.kill().expect("kill the storm");
        let took = t.elapsed();
        assert!(
            report.survivors.is_empty(),
            "survivors: {:?}",
            report.survivors
        );
        let peak = report.usage.as_ref().and_then(|u| u.pids_peak);
        if limited {
            assert!(
                peak.is_some_and(|p| p <= LIMIT),
                "pids.peak {peak:?} must not exceed pids.max {LIMIT}"
            );
            assert!(
                at_stop <= LIMIT,
                "pids.current {at_stop} above pids.max {LIMIT}"
            );
        }
        rows.push(format!(
            "| {} | {at_stop} | {} | {:.1} ms |",
            if limited {
                format!("`pids.max` {LIMIT}")
            } else {
                "no limit".into()
            },
            peak.map_or("–".into(), |p| p.to_string()),
            took.as_secs_f64() * 1e3,
        ));
    }
    sandbox.assert_clean();
    if let Some(dir) = std::env::var_os("CORRAL_VM_RESULTS") {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let text = format!(
            "Measured in the systemd VM (`cargo xtask vm-test`: Debian 12, kernel {}, a qemu guest; \
             under TCG every figure is many times slower than on the host, so compare the \
             rows with each other, not with figure 9). The same storm, stopped with \
             corral's `kill()` once the job had {LIMIT} processes; the limited job also \
             had 0.5 s to try to grow past its limit. `pids.peak` is the kernel's high-water \
             mark of the job's cgroup.\n\n\
             | Job | processes at the stop | `pids.peak` | `kill()` until the job is gone |\n\
             |---|---|---|---|\n{}\n",
            release.trim(),
            rows.join("\n")
        );
        fs::write(Path::new(&dir).join("fork-storm-limit.md"), text).expect("write the figures");
    }
}
