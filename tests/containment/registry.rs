//! The job registry: `corral ps`, `corral kill`, `corral sweep`, the start-up sweep, and
//! what a user may see and do. Each test has its own registry (`CORRAL_RUNTIME_DIR`, a
//! fresh directory per sandbox), so tests running in parallel do not see each other's jobs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_testkit::poll_until;
use rustix::process::Signal;

use crate::util::{
    both_mechanisms, runtime_dir, skip, Finished, Mechanism, Sandbox, CORRAL, GONE_DEADLINE,
};

const NOBODY: u32 = 65534;

/// `corral ARGS` against the registry `rt` (as `uid`, if given); returns how it ended and
/// its stdout.
fn cli(sandbox: &Sandbox, rt: &Path, uid: Option<u32>, args: &[&str]) -> (Finished, String) {
    let mut run = sandbox.corral_bare();
    if let Some(uid) = uid {
        fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
        run.uid(uid);
    }
    run.env("CORRAL_RUNTIME_DIR", rt).args(args);
    let done = run.run();
    let out = fs::read_to_string(run.dir.join("stdout")).unwrap_or_default();
    (done, out)
}

fn ps_json(sandbox: &Sandbox, rt: &Path, uid: Option<u32>) -> Vec<serde_json::Value> {
    let (done, out) = cli(sandbox, rt, uid, &["ps", "--json"]);
    done.assert_code(0);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("ps --json is not JSON ({e}):\n{out}"))
        .as_array()
        .cloned()
        .expect("ps --json prints an array")
}

/// The files in the registry directory `rt`.
fn files(rt: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(rt)
        .map(|l| {
            l.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The job whose name is `name` in a `ps --json` listing.
fn job_named<'a>(jobs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    jobs.iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job named {name} in {jobs:#?}"))
}

both_mechanisms!(ps_lists_a_named_job, kill_stops_a_job_from_outside);

/// 1. `corral ps` lists a running named job (id, name, pid, processes, mechanism), as a
///    table and as JSON; once the job is over its record and socket are gone.
fn ps_lists_a_named_job(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("registry-ps", mechanism) else {
        return;
    };
    let rt = sandbox.runtime.clone();
    let job = sandbox
        .corral(mechanism)
        .args(["--name", "web"])
        .tree(&["setsid"])
        .spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    let jobs = ps_json(&sandbox, &rt, None);
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    let j = job_named(&jobs, "web");
    assert_eq!(j["supervisor_pid"], job.pid(), "{j:#}");
    assert_eq!(j["mechanism"], mechanism.name(), "{j:#}");
    assert_eq!(j["stale"], false, "{j:#}");
    let euid = rustix::process::geteuid().as_raw();
    assert_eq!(j["uid"], euid, "{j:#}");
    assert!(
        j["processes"].as_u64().is_some_and(|n| n >= 2),
        "top and setsid at least: {j:#}"
    );
    if mechanism == Mechanism::Cgroup {
        assert!(j["cpu_usec"].is_u64(), "{j:#}");
        // memory.current exists only with the memory controller: a number or null, never
        // a made-up 0 for a file that is not there.
        let has_memory = Path::new(j["cgroup"].as_str().unwrap())
            .join("memory.current")
            .exists();
        assert_eq!(j["memory_bytes"].is_u64(), has_memory, "{j:#}");
    }
    let id = j["id"].as_str().unwrap().to_string();
    assert_eq!(files(&rt), [format!("{id}.json"), format!("{id}.sock")]);

    let (done, out) = cli(&sandbox, &rt, None, &["ps"]);
    done.assert_code(0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "header and one job:\n{out}");
    assert!(lines[0].starts_with("ID "), "{out}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            id.as_str(),
            "web",
            &euid.to_string(),
            &job.pid().to_string(),
            "running",
            mechanism.name()
        ],
        "{out}"
    );

    job.signal(Signal::TERM);
    let done = job.finish();
    procs.assert_all_gone("ps");
    done.assert_code(143);
    assert_eq!(done.report()["name"], "web");
    assert!(done.report()["not_registered"].is_null());
    assert!(
        files(&rt).is_empty(),
        "left in the registry: {:?}",
        files(&rt)
    );
    assert!(ps_json(&sandbox, &rt, None).is_empty());
    sandbox.assert_clean();
}

/// 2. `corral kill NAME --grace 1s` from another process stops a job with an escapee: the
///    supervisor reports an external stop with the requester, exits 143 (128 + SIGTERM),
///    the job is empty and its cgroup gone.
fn kill_stops_a_job_from_outside(mechanism: Mechanism) {
    let Some(sandbox) = Sandbox::for_mechanism("registry-kill", mechanism) else {
        return;
    };
    let rt = sandbox.runtime.clone();
    let job = sandbox
        .corral(mechanism)
        .args(["--name", "ci-42"])
        .grace("30s", Duration::from_secs(30))
        .tree(&["setsid"])
        .spawn();
    let procs = job.wait_ready(&["top", "setsid"]);
    let (killed, _) = cli(&sandbox, &rt, None, &["kill", "ci-42", "--grace", "1s"]);
    killed.assert_code(0);
    assert!(
        killed.stderr.contains("stopped"),
        "kill says what happened: {}",
        killed.stderr
    );
    // `corral kill` returns once the job is over.
    let done = job.finish();
    procs.assert_all_gone("kill");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    let stop = &done.report()["stop"];
    assert_eq!(stop["reason"], "external", "{}", done.report_text());
    assert_eq!(
        stop["requested_by"]["uid"],
        rustix::process::geteuid().as_raw(),
        "{}",
        done.report_text()
    );
    assert!(
        stop["requested_by"]["pid"].as_u64().is_some_and(|p| p > 1),
        "{}",
        done.report_text()
    );
    assert!(
        stop["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "signal" && s["signal"] == "SIGTERM"),
        "the polite signal asked for: {}",
        done.report_text()
    );
    assert_eq!(done.report()["exit_status"], 143);
    assert!(
        done.stderr.contains("stopped from outside by pid"),
        "the summary says so: {}",
        done.stderr
    );
    assert!(
        files(&rt).is_empty(),
        "left in the registry: {:?}",
        files(&rt)
    );
}

/// A cgroup job whose supervisor was SIGKILLed mid-job, with its processes still running.
struct Orphan {
    procs: crate::util::Procs,
    /// Its record in the registry.
    record: PathBuf,
    cgroup: PathBuf,
}

impl Orphan {
    /// Nothing of the job is left once cleaned up (`context`): no process, no cgroup, no
    /// record nor anything else in the registry.
    fn assert_cleaned_up(&self, sandbox: &Sandbox, context: &str) {
        self.procs.assert_all_gone(context); // within GONE_DEADLINE
        poll_until("the stale job's cgroup removed", GONE_DEADLINE, || {
            !self.cgroup.exists()
        });
        assert!(
            !self.record.exists(),
            "record left: {}",
            self.record.display()
        );
        let rt = &sandbox.runtime;
        assert!(
            files(rt).is_empty(),
            "left in the registry: {:?}",
            files(rt)
        );
        sandbox.assert_clean();
    }
}

/// A cgroup job whose supervisor was SIGKILLed mid-job, with a setsid escapee and a
/// double-fork daemon still running.
fn orphaned_job(sandbox: &Sandbox, name: &str) -> Orphan {
    let rt = sandbox.runtime.clone();
    let job = sandbox
        .corral(Mechanism::Cgroup)
        .args(["--name", name, "--debug-no-watchdog"])
        .tree(&["daemon"])
        .spawn();
    let procs = job.wait_ready(&["top", "daemon"]);
    let jobs = ps_json(sandbox, &rt, None);
    let j = job_named(&jobs, name);
    let cgroup = PathBuf::from(j["cgroup"].as_str().expect("a cgroup job"));
    let record = rt.join(format!("{}.json", j["id"].as_str().unwrap()));
    job.signal(Signal::KILL);
    let done = job.finish();
    assert_eq!(done.status.code(), None, "corral was SIGKILLed");
    procs.assert_alive("daemon");
    procs.assert_alive("top");
    Orphan {
        procs,
        record,
        cgroup,
    }
}

/// 3. `corral sweep` after a supervisor was SIGKILLed mid-job: `--dry-run` lists the job and
///    changes nothing; the sweep kills every process, removes the cgroup and the record.
#[test]
fn sweep_cleans_up_after_a_killed_supervisor() {
    let Some(sandbox) = Sandbox::with_cgroup("registry-sweep") else {
        return;
    };
    let rt = sandbox.runtime.clone();
    let orphan = orphaned_job(&sandbox, "orphan");
    let (procs, record, cgroup) = (&orphan.procs, &orphan.record, &orphan.cgroup);

    let jobs = ps_json(&sandbox, &rt, None);
    assert_eq!(job_named(&jobs, "orphan")["stale"], true, "{jobs:#?}");

    let (dry, out) = cli(&sandbox, &rt, None, &["sweep", "--dry-run"]);
    dry.assert_code(0);
    assert!(
        out.contains("would kill") && out.contains(&cgroup.display().to_string()),
        "the dry run names what it would do:\n{out}"
    );
    procs.assert_alive("daemon");
    procs.assert_alive("top");
    assert!(
        record.exists() && cgroup.exists(),
        "the dry run changed nothing"
    );

    let (swept, out) = cli(&sandbox, &rt, None, &["sweep"]);
    swept.assert_code(0);
    assert!(out.contains("killed"), "the sweep says what it did:\n{out}");
    orphan.assert_cleaned_up(&sandbox, "sweep");
    let (again, out) = cli(&sandbox, &rt, None, &["sweep"]);
    again.assert_code(0);
    assert_eq!(out.trim(), "nothing to sweep");
}

/// 4. The next `corral run` of the same user cleans up a stale job before it starts. It
///    says so in its report, and on stderr only with `-v` (the next job's stderr may be a
///    test's or a recipe's, and the stale job is not its news).
#[test]
fn start_up_sweep_cleans_a_stale_job() {
    let Some(sandbox) = Sandbox::with_cgroup("registry-startup") else {
        return;
    };
    let orphan = orphaned_job(&sandbox, "left");
    let done = sandbox.corral(Mechanism::Cgroup).args(["--", "true"]).run();
    done.assert_code(0);
    assert_eq!(done.stderr, "", "the start-up sweep is silent without -v");
    let swept = done.report()["startup_sweep"].clone();
    assert!(
        swept.as_array().is_some_and(|l| l
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("left")))),
        "the report says what the start-up sweep did: {swept}"
    );
    orphan.assert_cleaned_up(&sandbox, "start-up sweep");
}

/// `corral kill` of a job whose supervisor is gone stops what is left itself, and says so.
#[test]
fn kill_of_a_stale_job_cleans_up() {
    let Some(sandbox) = Sandbox::with_cgroup("registry-kill-stale") else {
        return;
    };
    let rt = sandbox.runtime.clone();
    let orphan = orphaned_job(&sandbox, "gone");
    let (kill, _) = cli(&sandbox, &rt, None, &["kill", "gone"]);
    kill.assert_code(0);
    assert!(
        kill.stderr.contains("is gone; stopped here") && kill.stderr.lines().count() == 1,
        "one line saying what happened: {}",
        kill.stderr
    );
    orphan.assert_cleaned_up(&sandbox, "kill of a stale job");
}

/// 5. Corrupt, half-written and forged records are reported (one warning each) and skipped
///    by ps, sweep and kill; none of them is fatal, and none is acted on.
#[test]
fn corrupt_records_are_reported_and_skipped() {
    let sandbox = Sandbox::new("registry-corrupt");
    let rt = sandbox.runtime.clone();
    let full = serde_json::json!({
        "version": 1, "id": "corral-1-1", "name": "forged", "uid": 4242,
        "supervisor": {"pid": 1, "start_time": 0}, "mechanism": "cgroup",
        "cgroup": "/sys/fs/cgroup", "command": ["x"], "started": 0, "limits": {},
        "socket": rt.join("corral-1-1.sock"),
    })
    .to_string();
    fs::write(rt.join("corral-9-9.json"), "garbage\0\x01").unwrap();
    fs::write(rt.join("corral-9-8.json"), &full[..full.len() / 2]).unwrap();
    // A record claiming another uid, in root's directory: forged.
    fs::write(rt.join("corral-1-1.json"), &full).unwrap();
    // A temporary file of a write in progress (its writer, this process, is alive) is not
    // a record at all, nor litter to sweep.
    let me = std::process::id();
    fs::write(rt.join(format!(".corral-{me}-7.json.tmp-{me}")), "{").unwrap();

    let (ps, out) = cli(&sandbox, &rt, None, &["ps"]);
    ps.assert_code(0);
    assert_eq!(out.lines().count(), 1, "just the header:\n{out}");
    let warnings: Vec<&str> = ps.stderr.lines().collect();
    assert_eq!(
        warnings.len(),
        3,
        "one warning per bad record:\n{}",
        ps.stderr
    );
    for (w, file) in [
        ("corral-9-9.json", "garbage"),
        ("corral-9-8.json", "truncated"),
        ("corral-1-1.json", "forged"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|l| l.contains(w) && l.starts_with("corral: warning: ")),
            "{file}: no warning naming {w}:\n{}",
            ps.stderr
        );
    }
    let (sweep, out) = cli(&sandbox, &rt, None, &["sweep"]);
    sweep.assert_code(0);
    assert_eq!(out.trim(), "nothing to sweep", "{}", sweep.stderr);
    assert!(sweep.stderr.contains("corral-1-1.json"), "{}", sweep.stderr);
    let (kill, _) = cli(&sandbox, &rt, None, &["kill", "forged"]);
    kill.assert_code(125);
    assert!(kill.stderr.contains("no such job"), "{}", kill.stderr);
    assert_eq!(
        files(&rt).len(),
        4,
        "bad records are left for a human: {:?}",
        files(&rt)
    );
}

/// 6. An unprivileged user (nobody, pgroup) has a registry of its own: it lists, kills and
///    sweeps its own jobs, and cannot see or stop root's, by id or name; root can list and
///    stop nobody's job.
#[test]
fn users_act_on_their_own_jobs_only() {
    if !rustix::process::geteuid().is_root() {
        skip("users_act_on_their_own_jobs_only: needs root to switch to nobody");
        return;
    }
    if !crate::util::executable_by_others(Path::new(CORRAL)) {
        skip(format!(
            "users_act_on_their_own_jobs_only: user nobody cannot execute {CORRAL}"
        ));
        return;
    }
    let sandbox = Sandbox::new("registry-users");
    let root_rt = sandbox.runtime.clone();
    let nobody_rt = runtime_dir("nobody");
    let _cleanup = RemoveDir(nobody_rt.clone());
    std::os::unix::fs::chown(&nobody_rt, Some(NOBODY), Some(NOBODY)).unwrap();

    let root_job = sandbox
        .corral(Mechanism::Pgroup)
        .args(["--name", "rootjob"])
        .tree(&["sleep"])
        .spawn();
    let root_procs = root_job.wait_ready(&["top"]);
    let root_id = job_named(&ps_json(&sandbox, &root_rt, None), "rootjob")["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut run = sandbox.corral(Mechanism::Pgroup);
    fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
    run.uid(NOBODY)
        .env("CORRAL_RUNTIME_DIR", &nobody_rt)
        .args(["--name", "nb"])
        .tree(&["setsid"]);
    let nobody_job = run.spawn();
    let nobody_procs = nobody_job.wait_ready(&["top", "setsid"]);

    // nobody sees its own job only.
    let jobs = ps_json(&sandbox, &nobody_rt, Some(NOBODY));
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(job_named(&jobs, "nb")["uid"], NOBODY);
    // Neither by name nor by id, from its own registry or from root's.
    for rt in [&nobody_rt, &root_rt] {
        for target in ["rootjob", root_id.as_str()] {
            let (kill, _) = cli(&sandbox, rt, Some(NOBODY), &["kill", target]);
            kill.assert_code(125);
            if *rt == nobody_rt {
                // (In root's registry, a warning that it cannot be read comes first.)
                kill.assert_one_line_error();
            }
            assert!(kill.stderr.contains("no such job"), "{}", kill.stderr);
        }
    }
    let (ps, out) = cli(&sandbox, &root_rt, Some(NOBODY), &["ps"]);
    ps.assert_code(0);
    assert!(!out.contains("rootjob"), "nobody listed root's job:\n{out}");
    let (sweep, out) = cli(&sandbox, &nobody_rt, Some(NOBODY), &["sweep"]);
    sweep.assert_code(0);
    assert_eq!(out.trim(), "nothing to sweep", "{}", sweep.stderr);
    assert!(!root_job.has_exited(), "root's job must still run");
    root_procs.assert_alive("top");

    // Root lists and stops nobody's job.
    let jobs = ps_json(&sandbox, &nobody_rt, None);
    assert_eq!(job_named(&jobs, "nb")["uid"], NOBODY);
    let (kill, _) = cli(&sandbox, &nobody_rt, None, &["kill", "nb", "--grace", "1s"]);
    kill.assert_code(0);
    let done = nobody_job.finish();
    nobody_procs.assert_all_gone("root's kill of nobody's job");
    done.assert_code(143);
    assert_eq!(done.report()["stop"]["reason"], "external");
    assert_eq!(done.report()["stop"]["requested_by"]["uid"], 0);
    assert!(files(&nobody_rt).is_empty(), "{:?}", files(&nobody_rt));

    // And nobody stops a job of its own.
    let mut run = sandbox.corral(Mechanism::Pgroup);
    fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
    run.uid(NOBODY)
        .env("CORRAL_RUNTIME_DIR", &nobody_rt)
        .args(["--name", "nb2"])
        .tree(&["sleep"]);
    let nobody_job = run.spawn();
    let nobody_procs = nobody_job.wait_ready(&["top"]);
    let (kill, _) = cli(&sandbox, &nobody_rt, Some(NOBODY), &["kill", "nb2"]);
    kill.assert_code(0);
    nobody_job.finish().assert_code(143);
    nobody_procs.assert_all_gone("nobody's kill of its own job");

    let (kill, _) = cli(
        &sandbox,
        &root_rt,
        None,
        &["kill", "rootjob", "--grace", "0"],
    );
    kill.assert_code(0);
    root_job.finish().assert_code(128 + libc::SIGKILL);
    root_procs.assert_all_gone("root's job");
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// 7. Bad input: an unknown job, a name with `/` or `..`, a name a running job has: one
///    line, exit 125, nothing left behind.
#[test]
fn bad_input_is_one_line_and_125() {
    let sandbox = Sandbox::new("registry-bad");
    let rt = sandbox.runtime.clone();
    let (kill, _) = cli(&sandbox, &rt, None, &["kill", "no-such-job"]);
    kill.assert_code(125);
    kill.assert_one_line_error();
    for name in ["a/b", "..", ".hidden", ""] {
        let mut run = sandbox.corral(Mechanism::Pgroup);
        run.args(["--name", name]).tree(&["sleep"]);
        let job = run.spawn();
        let done = job.finish();
        done.assert_code(125);
        done.assert_one_line_error();
        assert!(!done.tree_started(), "--name {name:?}: the command ran");
        assert!(files(&rt).is_empty(), "{name:?}: {:?}", files(&rt));
    }
    // A name already taken by a running job of the same user.
    let first = sandbox
        .corral(Mechanism::Pgroup)
        .args(["--name", "dup"])
        .tree(&["sleep"])
        .spawn();
    let procs = first.wait_ready(&["top"]);
    let mut run = sandbox.corral(Mechanism::Pgroup);
    run.args(["--name", "dup"]).tree(&["sleep"]);
    let second = run.spawn().finish();
    second.assert_refused(&["already named"]);
    first.signal(Signal::TERM);
    first.finish().assert_code(143);
    procs.assert_all_gone("dup");
    assert!(files(&rt).is_empty(), "{:?}", files(&rt));
}
