//! `--pid-namespace`: COMMAND runs as PID 1 of a new PID namespace, so the kernel itself ends
//! the job: every process left in the namespace when COMMAND exits, and the whole job when
//! corral dies (COMMAND's parent-death signal is SIGKILL). The trees list their PIDs as the
//! host's `/proc` shows them; the tests hold each process by a pidfd opened while it was
//! alive, so a survivor cannot be confused with a reused PID.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::util::{both_mechanisms, skip, CgroupTree, Mechanism, Sandbox, CORRAL};

/// The bound: nothing of the job survives corral's death by more than this.
const WITHIN: Duration = Duration::from_secs(1);

both_mechanisms!(
    command_is_pid_1,
    sigkill_to_corral_leaves_nothing,
    sigkill_to_corral_group_leaves_nothing,
    leftovers_wait_is_refused,
    leftover_ends_with_command,
    polite_stop_notes_pid_1
);

/// The `NSpid:` numbers of `/proc/<pid>/status`: the PID in each namespace, outermost first.
fn nspid(pid: i32) -> Vec<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_pid_1(pid: i32) {
    assert_eq!(
        nspid(pid),
        [pid, 1],
        "NSpid of COMMAND (pid {pid}) must be its host PID, then 1"
    );
}

/// `sh -c 'echo $$'` prints 1; a tree's top shows `NSpid: <host pid> 1`.
fn command_is_pid_1(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("pidns-pid1", mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.args(["--pid-namespace", "--", "sh", "-c", "echo $$"]);
    let done = run.run();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    let stdout = fs::read_to_string(run.dir.join("stdout")).unwrap();
    assert_eq!(stdout, "1\n", "$$ inside the job; stderr:\n{}", done.stderr);
    assert_eq!(
        done.report()["pid_namespace"],
        true,
        "{}",
        done.report_text()
    );
    assert!(
        done.report()["spawn"]
            .as_str()
            .is_some_and(|s| s.contains("CLONE_NEWPID")),
        "spawn must name CLONE_NEWPID:\n{}",
        done.report_text()
    );

    let job = sandbox
        .corral(mechanism)
        .arg("--pid-namespace")
        .tree(&["--exit", "0", "sleep"])
        .spawn();
    let procs = job.wait_ready(&["top"]);
    assert_pid_1(procs.pid("top"));
    job.go();
    let done = job.finish();
    procs.assert_all_gone("pidns-pid1");
    sandbox.assert_clean();
    done.assert_code(0);
}

/// The trees whose escapees the kernel must end: a `setsid` child, and a double-fork
/// daemon (its middle process exits, so it is re-parented to the namespace's PID 1).
const ESCAPEES: [(&str, [&str; 2]); 2] =
    [("setsid", ["top", "setsid"]), ("daemon", ["top", "daemon"])];

/// SIGKILL to corral alone (it can do nothing about it): every process of the tree is gone
/// within 1 s. `--debug-no-watchdog`, so nothing but the namespace can have ended them.
fn sigkill_to_corral_leaves_nothing(mechanism: Mechanism) {
    sigkill_leaves_nothing(mechanism, "pidns-kill", false);
}

/// SIGKILL to corral's whole process group (the test makes corral lead a new one), as a
/// terminal's hang-up or a CI runner's cleanup would.
fn sigkill_to_corral_group_leaves_nothing(mechanism: Mechanism) {
    sigkill_leaves_nothing(mechanism, "pidns-kill-group", true);
}

fn sigkill_leaves_nothing(mechanism: Mechanism, name: &str, whole_group: bool) {
    for (mode, roles) in ESCAPEES {
        let name = format!("{name}-{mode}");
        let Some(sandbox) = Sandbox::for_mechanism(&name, mechanism) else {
            return;
        };
        let mut run = sandbox.corral(mechanism);
        run.args(["--pid-namespace", "--debug-no-watchdog"]);
        if whole_group {
            run.process_group(0);
        }
        let job = run.tree(&[mode]).spawn();
        let procs = job.wait_ready(&roles);
        assert_pid_1(procs.pid("top"));
        let killed_at = Instant::now();
        if whole_group {
            job.signal_group(Signal::KILL);
        } else {
            job.signal(Signal::KILL);
        }
        procs.assert_all_gone_by(killed_at + WITHIN, &name);
        if let Some(cgroup) = &sandbox.cgroup {
            // Nothing else of the job either (corral's leaf holds a pgroup job; the job
            // cgroup, left behind by the dead corral, a cgroup job).
            CgroupTree::wait_empty(cgroup.root(), killed_at + WITHIN, &name);
        }
        let done = job.finish();
        assert_eq!(
            done.status.signal(),
            Some(libc::SIGKILL),
            "{name}: corral should have died of SIGKILL; stderr:\n{}",
            done.stderr
        );
    }
}

/// `--leftovers wait` cannot be had (the kernel kills leftovers when COMMAND exits): 125,
/// one line, nothing started, nothing left.
fn leftovers_wait_is_refused(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("pidns-wait", mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.args(["--pid-namespace", "--leftovers", "wait"])
        .tree(&["sleep"]);
    let done = run.run();
    done.assert_refused(&["--leftovers wait"]);
    sandbox.assert_clean();
}

/// `sh -c 'sleep 100 & exit 3'`: corral returns 3, the sleep is gone (corral's cgroup,
/// which holds everything corral starts, is empty), and the report says the kernel ends what
/// is left in the namespace.
fn leftover_ends_with_command(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("pidns-leftover", mechanism) else {
        return;
    };
    let mut run = sandbox.corral(mechanism);
    run.args(["--pid-namespace", "--", "sh", "-c", "sleep 100 & exit 3"]);
    let done = run.run();
    done.assert_code(3);
    done.assert_report_basics(mechanism);
    sandbox.assert_clean();
    let report = done.report();
    assert_eq!(report["pid_namespace"], true, "{}", done.report_text());
    assert!(
        report["mechanism_reason"]
            .as_str()
            .is_some_and(|r| r.contains("the kernel kills every process left in the namespace")),
        "the report must say how leftovers end:\n{}",
        done.report_text()
    );
    assert!(
        report["stop"].is_null(),
        "no stop sequence is needed:\n{}",
        done.report_text()
    );
}

/// SIGTERM to corral with a grace: COMMAND, PID 1 without a handler, does not get it; the
/// ladder goes on to SIGKILL after the grace and the signal step says why.
fn polite_stop_notes_pid_1(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("pidns-polite", mechanism) else {
        return;
    };
    let job = sandbox
        .corral(mechanism)
        .arg("--pid-namespace")
        .grace("300ms", Duration::from_millis(300))
        .tree(&["grandchild"])
        .spawn();
    let procs = job.wait_ready(&["top", "grandchild"]);
    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone("pidns-polite");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGKILL);
    done.assert_report_basics(mechanism);
    assert_eq!(done.stop_outcome().as_deref(), Some("killed"));
    assert!(
        done.step("signal")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("PID 1 of its PID namespace")),
        "the signal step must note that PID 1 ignores it:\n{}",
        done.report_text()
    );
}

/// As user nobody, pgroup: the job gets a user namespace too (uid and gid mapped to
/// themselves), COMMAND is PID 1 with uid 65534 as the host sees it, and SIGKILL to corral
/// leaves nothing.
#[test]
fn unprivileged_through_a_user_namespace() {
    const NOBODY: u32 = 65534;
    let name = "pidns-nobody";
    if !rustix::process::geteuid().is_root() {
        skip(format!("{name}: needs root to switch to nobody"));
        return;
    }
    if !crate::util::executable_by_others(Path::new(CORRAL)) {
        skip(format!("{name}: user nobody cannot execute {CORRAL}"));
        return;
    }
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        skip(format!(
            "{name}: user namespaces are disabled (user.max_user_namespaces 0)"
        ));
        return;
    }
    let mechanism = Mechanism::Pgroup;
    let sandbox = Sandbox::new(name);
    let mut run = sandbox.corral(mechanism);
    // So the tree (as nobody) can list itself and corral can write its report.
    fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
    run.uid(NOBODY).args(["--pid-namespace"]).tree(&["setsid"]);
    let job = run.spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    let top = procs.pid("top");
    assert_pid_1(top);
    let status = fs::read_to_string(format!("/proc/{top}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "COMMAND's uids as the host sees them: {uids}"
    );
    for map in ["uid_map", "gid_map"] {
        let text = fs::read_to_string(format!("/proc/{top}/{map}")).unwrap();
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>(),
            ["65534", "65534", "1"],
            "{map} of COMMAND: {text:?}"
        );
    }
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(
        ns(&top.to_string()),
        ns("self"),
        "COMMAND must be in a user namespace of its own"
    );
    let killed_at = Instant::now();
    job.signal(Signal::KILL);
    procs.assert_all_gone_by(killed_at + WITHIN, name);
    let done = job.finish();
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGKILL),
        "stderr:\n{}",
        done.stderr
    );
}

/// No `clone3` (forced off with the testing knob, as on an old kernel): there is no fork
/// fallback into a new PID namespace, so 125 with one line, nothing started, and the job's
/// cgroup, made before the spawn, removed again.
#[test]
fn without_clone3_is_refused() {
    let Some(sandbox) = Sandbox::with_cgroup("pidns-no-clone3") else {
        return;
    };
    let mut run = sandbox.corral(Mechanism::Cgroup);
    run.args(["--pid-namespace", "--debug-no-clone3"])
        .tree(&["sleep"]);
    let done = run.run();
    done.assert_refused(&["needs clone3"]);
    sandbox.assert_clean();
}
