//! corral on a systemd host, started where nothing is delegated to it: it must obtain a
//! delegated scope itself (`systemd-run [--user] --scope -p Delegate=yes`), say so in the
//! report, and contain the job there. Run in the systemd VM from a plain cgroup, as root
//! and as a user, by `CORRAL_VM=1 systemd_vm` (scripts/vm/payload.list).
//!
//! Without `CORRAL_VM=1` every test here returns at once and says so: on a host without
//! systemd there is nothing to obtain.
#![cfg(target_os = "linux")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

fn in_vm(name: &str) -> bool {
    let yes = std::env::var("CORRAL_VM").as_deref() == Ok("1");
    if !yes {
        eprintln!("{name}: not run: the systemd VM suite runs it (CORRAL_VM=1)");
    }
    yes
}

/// A scratch directory anyone can write (the report is written by whoever corral runs as).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// `corral run --report R ARGS -- sh -c 'sleep 1000 & exit 0'`; the report and the time.
fn run(dir: &std::path::Path, args: &[&str]) -> (serde_json::Value, Duration, String) {
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
    let text = fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("read {}: {e}; stderr: {stderr}", report.display()));
    (serde_json::from_str(&text).unwrap(), took, stderr)
}

#[test]
fn corral_obtains_a_delegated_scope_and_contains_the_job_there() {
    if !in_vm("corral_obtains_a_delegated_scope") {
        return;
    }
    let dir = scratch("systemd-scope");
    let (report, took, stderr) = run(&dir, &["--mechanism", "cgroup"]);
    let text = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report["mechanism"], "cgroup", "{text}\n{stderr}");
    assert_eq!(report["cgroup_parent_source"], "delegated", "{text}");
    let reason = report["mechanism_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("obtained from systemd"),
        "the report says the scope was obtained: {reason}"
    );
    let cgroup = report["cgroup"].as_str().unwrap_or_default();
    assert!(
        cgroup.contains(".scope/"),
        "the job is in a scope: {cgroup}"
    );
    assert_eq!(
        report["leftovers"].as_array().map(Vec::len),
        Some(1),
        "{text}"
    );
    assert_eq!(
        report["survivors"].as_array().map(Vec::len),
        Some(0),
        "{text}"
    );
    assert_eq!(report["cleanup"]["cgroup_removed"], true, "{text}");

    // What obtaining the scope costs: the same job without it (pgroup, no re-run).
    let (_, baseline, _) = run(&dir, &["--mechanism", "pgroup"]);
    eprintln!(
        "systemd scope: corral run took {took:?} with systemd-run, {baseline:?} without \
         (pgroup); the scope costs about {:?}",
        took.saturating_sub(baseline)
    );
    let _ = fs::remove_dir_all(&dir);
}
