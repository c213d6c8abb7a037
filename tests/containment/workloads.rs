//! Real programs from Debian as workloads (issue 8): each one daemonizes or spawns a helper
//! tree of its own, and must be contained, work while contained, and be fully stopped, with
//! the report naming what was left over.
//!
//! - nginx: `nginx` forks a master that detaches (`setsid`) and 2 workers, and the command
//!   exits 0. The job runs with `--leftovers wait`, as a service would, serves an HTTP GET
//!   on its port, and is stopped from outside with `corral kill` (exit status 143).
//! - PostgreSQL 15: `pg_ctl start -w` starts the postmaster in a session of its own, with
//!   its background processes (checkpointer, walwriter, ...), and returns. COMMAND answers
//!   `select 1` through `psql`, then exits 0: the default `--leftovers kill` stops the
//!   server (exit status 0, stop reason `leftovers`).
//! - `make -j8` of a generated C project: interrupted mid-build by SIGTERM to corral (a CI
//!   runner's cancel button), while make, its shells, `cc`, `cc1` and `as` come and go
//!   (exit status 143, stop reason `signal`).
//!
//! The programs are set up and started by the scripts in `scripts/workloads/`, which the
//! bench (`bench/benches/peers/workloads.rs`) runs too. Their processes are found in the
//! test's cgroup subtree (or, without one, among corral's descendants: in pgroup mode corral
//! is their subreaper) and held by pidfds while alive, so the test can check that each one
//! is gone; the subtree being empty afterwards catches anything that escaped both.
//!
//! The nginx and PostgreSQL tests need root (nginx's workers switch to `nobody`;
//! PostgreSQL runs as the user `postgres`); each test needs its program installed
//! (`.ci/run` installs them). Otherwise the test is skipped with the reason.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{
    both_mechanisms, corral_deadline, describe_pid, exited, skip, CgroupTree, Finished, Job,
    Mechanism, Sandbox, GONE_DEADLINE, READY_DEADLINE,
};

both_mechanisms!(
    nginx_daemon_serves_and_is_stopped_by_corral_kill,
    postgres_server_answers_and_its_leftovers_are_stopped,
    parallel_make_is_interrupted_mid_build
);

/// Where PostgreSQL 15's programs are on Debian (`postgresql-15`).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

// ---- the programs ------------------------------------------------------------------------

/// The script `scripts/workloads/<name>`.
fn script(name: &str) -> PathBuf {
    corral_testkit::workspace_root()
        .join("scripts/workloads")
        .join(name)
}

/// The first of `names` found as an executable in `PATH` (or as an absolute path).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // nginx is in /usr/sbin, which a user's PATH may lack.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    names.iter().find_map(|name| {
        let candidates: Vec<PathBuf> = if name.starts_with('/') {
            vec![PathBuf::from(name)]
        } else {
            dirs.iter().map(|d| d.join(name)).collect()
        };
        candidates
            .into_iter()
            .find(|c| crate::util::executable_by_others(c))
    })
}

/// Whether the test can run: root if `needs_root`, and every program in `needs` installed.
/// Skips (or fails under `CORRAL_REQUIRE_ALL=1`) with the reason otherwise.
fn can_run(test: &str, needs_root: bool, needs: &[(&str, &[&str])]) -> bool {
    if needs_root && !rustix::process::geteuid().is_root() {
        skip(format!(
            "{test}: needs root (the program drops privileges to a user of its own)"
        ));
        return false;
    }
    for (package, programs) in needs {
        if find_program(programs).is_none() {
            skip(format!(
                "{test}: {} not installed (Debian package {package}; .ci/run installs it)",
                programs.join(" or ")
            ));
            return false;
        }
    }
    true
}

/// A scratch directory `/tmp/corral-wl-<pid>-<n>` for one program (short: PostgreSQL's
/// socket path must fit in `sun_path`), mode 0755 so the program's own user can reach
/// it; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "corral-wl-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `GET /` on 127.0.0.1:`port`: the status code, or the error.
fn http_get(port: u16) -> Result<u16, String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    // HTTP/1.1 200 OK
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))
}

// ---- the processes of a program ----------------------------------------------------------

/// A process of the program, held by a pidfd opened while it was alive.
struct Held {
    pid: i32,
    comm: String,
    fd: OwnedFd,
}

/// The program's processes seen so far. `Drop` SIGKILLs, through their pidfds, any still
/// running, so a failing test leaves nothing behind even without a cgroup subtree.
#[derive(Default)]
struct Members(Vec<Held>);

impl Members {
    /// Opens a pidfd for each process of the job whose `comm` passes `wanted` and that is
    /// not held yet. The job's processes are those of the test's cgroup subtree (corral's
    /// job cgroup in cgroup mode; corral's own leaf in pgroup mode), else corral's
    /// descendants. A PID is kept only if, once its pidfd is open, it still belongs there,
    /// so a PID reused meanwhile is never held.
    fn add(&mut self, sandbox: &Sandbox, job: &Job, wanted: impl Fn(&str) -> bool) {
        let candidates = match &sandbox.cgroup {
            Some(tree) => CgroupTree::procs_recursive(tree.root()),
            None => descendants(job.pid()),
        };
        for pid in candidates {
            if self.0.iter().any(|h| h.pid == pid) {
                continue;
            }
            let Some(raw) = Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 1) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue; // gone already
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = comm.trim_end().to_string();
            let still_ours = match &sandbox.cgroup {
                Some(tree) => in_subtree(pid, tree.root()),
                None => descendants(job.pid()).contains(&pid),
            };
            if still_ours && !exited(fd.as_fd()) && wanted(&comm) {
                self.0.push(Held { pid, comm, fd });
            }
        }
    }

    /// The held processes that have not exited.
    fn alive_pids(&self) -> BTreeSet<i32> {
        self.0
            .iter()
            .filter(|h| !exited(h.fd.as_fd()))
            .map(|h| h.pid)
            .collect()
    }

    fn count(&self, comm: &str) -> usize {
        self.0.iter().filter(|h| h.comm == comm).count()
    }

    /// Asserts every held process has exited (its pidfd readable) within [`GONE_DEADLINE`]
    /// of now; waits on the pidfds.
    fn assert_all_gone(&self, context: &str) {
        let deadline = Instant::now() + GONE_DEADLINE;
        for held in &self.0 {
            if !crate::util::wait_exited(held.fd.as_fd(), deadline) {
                panic!(
                    "{context}: {} is still running: {}",
                    held.comm,
                    describe_pid(held.pid)
                );
            }
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for held in &self.0 {
            if !exited(held.fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(&held.fd, Signal::KILL);
            }
        }
    }
}

/// Whether `/proc/<pid>/cgroup` puts the process under the cgroup directory `root`.
fn in_subtree(pid: i32, root: &Path) -> bool {
    crate::util::cgroup_dir_of(pid).is_some_and(|dir| dir.starts_with(root))
}

/// Whether `parent` has a child (running or a zombie) other than `except` whose `comm` is
/// `comm`, from /proc.
fn has_child_named(parent: i32, comm: &str, except: i32) -> bool {
    crate::util::proc_pids().into_iter().any(|pid| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let name = head.split_once(" (").map(|(_, n)| n).unwrap_or_default();
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<i32>().ok());
        let pid = head
            .split_once(" (")
            .and_then(|(p, _)| p.parse::<i32>().ok());
        name == comm && ppid == Some(parent) && pid != Some(except)
    })
}

/// Every process whose chain of parents reaches `ancestor`, from /proc.
fn descendants(ancestor: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for pid in crate::util::proc_pids() {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![ancestor];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parent_of {
            if found.contains(ppid) && !found.contains(pid) {
                found.push(*pid);
                grew = true;
            }
        }
    }
    found.retain(|p| *p != ancestor);
    found
}

/// Polls `ready` until it returns `Some`, failing when corral exits first or `within`
/// passes (showing corral's stderr). Not a proof of death: it waits for a program to come up.
fn wait_for<T>(what: &str, job: &Job, within: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    poll_until(what, within, || {
        if let Some(value) = ready() {
            return Ok(value);
        }
        let stderr = || fs::read_to_string(job.dir.join("stderr")).unwrap_or_default();
        assert!(
            !job.has_exited(),
            "{what}: corral exited first; stderr:\n{}",
            stderr()
        );
        Err(format!("corral's stderr:\n{}", stderr()))
    })
}

/// The report's `leftovers` as (pid, cmdline).
fn leftovers(done: &Finished) -> Vec<(i32, String)> {
    done.report()["leftovers"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|l| {
                    (
                        l["pid"].as_i64().unwrap_or_default() as i32,
                        l["cmdline"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- the tests ---------------------------------------------------------------------------

/// nginx daemonizes: the command (`nginx`) exits 0 at once, leaving a master in a session
/// of its own and its 2 workers. With the default `--leftovers kill` corral would stop
/// them right away; `--leftovers wait` keeps the job (and nginx) alive as long as they
/// run, as a service supervisor would, so the test can see nginx serve. `corral kill` then
/// stops it from outside: the path a CI runner's cancel button takes, which must find the
/// detached master and its workers, stop them and name them in the report.
fn nginx_daemon_serves_and_is_stopped_by_corral_kill(mechanism: Mechanism) {
    let test = format!("workloads::nginx ({})", mechanism.name());
    if !can_run(&test, true, &[("nginx-light", &["nginx"])]) {
        return;
    }
    let Some(sandbox) = Sandbox::for_mechanism("wl-nginx", mechanism) else {
        return;
    };
    let scratch = Scratch::new();
    let port = free_port();
    let name = format!("nginx-{}", mechanism.name());
    let mut run = sandbox.corral(mechanism);
    run.args(["--leftovers", "wait", "--name", &name, "--"])
        .arg(script("nginx.sh"))
        .arg(&scratch.0)
        .arg(port.to_string());
    let job = run.spawn();

    let status = wait_for("nginx answering on its port", &job, READY_DEADLINE, || {
        http_get(port).ok()
    });
    assert_eq!(status, 200, "GET / on nginx's port");
    // nginx's command (the process that forked the master) exits at once; wait until
    // corral has reaped it too, which it does as it takes the leftovers' list: a stop that
    // came before would find a job whose command still ran, with no leftovers yet. In
    // pgroup mode corral, the subreaper, is the master's parent by then: the master is told
    // apart by the pid file it writes once it has detached.
    let master: i32 = wait_for("nginx's pid file", &job, READY_DEADLINE, || {
        fs::read_to_string(scratch.0.join("nginx.pid"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
    });
    wait_for(
        "corral reaping nginx's command",
        &job,
        READY_DEADLINE,
        || (!has_child_named(job.pid(), "nginx", master)).then_some(()),
    );
    // A worker is a copy of the master until it renames itself (its cmdline): wait until
    // both have, so that the names in the report are nginx's final ones.
    let mut nginx = Members::default();
    let alive = wait_for("nginx's master and 2 workers", &job, READY_DEADLINE, || {
        nginx.add(&sandbox, &job, |comm| comm == "nginx");
        let alive = nginx.alive_pids();
        let workers = alive
            .iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"nginx: worker process"))
            })
            .count();
        (alive.len() >= 3 && workers >= 2).then_some(alive)
    });
    assert!(
        alive.len() == 3 && alive.contains(&master),
        "nginx's master ({master}) and 2 workers, found {alive:?}"
    );

    let mut kill = sandbox.corral_bare();
    kill.args(["kill", &name]);
    let killed = kill.run();
    killed.assert_code(0);
    let done = job.finish();

    nginx.assert_all_gone("nginx after corral kill");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(mechanism);
    assert_eq!(
        done.report()["stop"]["reason"],
        "external",
        "{}",
        done.report_text()
    );
    assert_eq!(done.report()["exit"]["code"], 0, "{}", done.report_text());
    let left = leftovers(&done);
    let left_pids: BTreeSet<i32> = left.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(
        left_pids,
        alive,
        "the leftovers must be exactly nginx's master and workers:\n{}",
        done.report_text()
    );
    let masters = left
        .iter()
        .filter(|(_, cmd)| cmd.starts_with("nginx: master process"))
        .count();
    let workers = left
        .iter()
        .filter(|(_, cmd)| cmd.starts_with("nginx: worker process"))
        .count();
    assert_eq!(
        (masters, workers),
        (1, 2),
        "one master and 2 workers by name:\n{}",
        done.report_text()
    );
    for (pid, _) in &left {
        assert_eq!(
            done.leftover(*pid)["left_session"],
            true,
            "nginx's master detaches with setsid:\n{}",
            done.report_text()
        );
    }
    assert!(
        http_get(port).is_err(),
        "nothing may answer on nginx's port any more"
    );
}

/// PostgreSQL's control program starts the server and returns: `pg_ctl start -w` forks
/// the postmaster into a session of its own and exits once it accepts connections. The
/// command then checks the server answers (`psql -c 'select 1'` over the socket directory)
/// and exits 0 when the test says go. The postmaster and its background processes are
/// leftovers, which the default `--leftovers kill` stops with the polite SIGTERM (a "smart
/// shutdown" for PostgreSQL) and names in the report.
fn postgres_server_answers_and_its_leftovers_are_stopped(mechanism: Mechanism) {
    let test = format!("workloads::postgres ({})", mechanism.name());
    let pg = |program: &str| format!("{PG_BIN}/{program}");
    if !can_run(
        &test,
        true,
        &[
            (
                "postgresql-15",
                &[&pg("initdb"), &pg("pg_ctl"), &pg("postgres")],
            ),
            ("postgresql-client-15", &[&pg("psql")]),
            ("util-linux", &["setpriv"]),
        ],
    ) {
        return;
    }
    let Some(sandbox) = Sandbox::for_mechanism("wl-postgres", mechanism) else {
        return;
    };
    let scratch = Scratch::new();
    let dir = &scratch.0;
    // initdb is slow and not what is tested: it runs before the job, uncontained.
    let init = Command::new(script("postgres-init.sh"))
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run postgres-init.sh");
    assert!(
        init.status.success(),
        "postgres-init.sh failed ({}): {}\ninitdb.log:\n{}",
        init.status,
        String::from_utf8_lossy(&init.stderr),
        fs::read_to_string(dir.join("initdb.log")).unwrap_or_default()
    );
    let port = free_port();
    let (answer, go) = (dir.join("answer"), dir.join("go"));
    let command = format!(
        "{start} {dir} {port} && {psql} -h {dir}/run -p {port} -U postgres -tA -c 'select 1' \
         >{answer}.tmp && mv {answer}.tmp {answer} && \
         while [ ! -e {go} ]; do sleep 0.05; done",
        start = script("postgres-start.sh").display(),
        dir = dir.display(),
        psql = pg("psql"),
        answer = answer.display(),
        go = go.display(),
    );
    let mut run = sandbox.corral(mechanism);
    run.args(["--", "sh", "-c", &command]);
    let job = run.spawn();

    let answered = wait_for(
        "the server answering psql",
        &job,
        READY_DEADLINE * 4,
        || fs::read_to_string(&answer).ok(),
    );
    assert_eq!(
        answered.trim(),
        "1",
        "select 1 through psql; server log:\n{}",
        fs::read_to_string(dir.join("run/postgres.log")).unwrap_or_default()
    );
    let mut postgres = Members::default();
    // The postmaster and at least its checkpointer, background writer and walwriter.
    wait_for("the server's processes", &job, READY_DEADLINE, || {
        postgres.add(&sandbox, &job, |comm| comm == "postgres");
        (postgres.count("postgres") >= 4).then_some(())
    });
    fs::write(&go, "go\n").expect("write the go file");
    let done = job.finish();

    postgres.assert_all_gone("postgres after its leftovers were stopped");
    sandbox.assert_clean();
    done.assert_code(0);
    done.assert_report_basics(mechanism);
    assert_eq!(
        done.report()["stop"]["reason"],
        "leftovers",
        "{}",
        done.report_text()
    );
    let left = leftovers(&done);
    let postmaster = format!("{} -D {}", pg("postgres"), dir.join("data").display());
    let postmasters: Vec<i32> = left
        .iter()
        .filter(|(_, cmd)| cmd.starts_with(&postmaster))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(
        postmasters.len(),
        1,
        "the postmaster must be among the leftovers, by name:\n{}",
        done.report_text()
    );
    assert_eq!(
        done.leftover(postmasters[0])["left_session"],
        true,
        "pg_ctl starts the postmaster in a session of its own:\n{}",
        done.report_text()
    );
    for (pid, cmd) in &left {
        assert!(
            cmd.starts_with(&postmaster) || cmd.starts_with("postgres: "),
            "leftover {pid} is not a process of the server: {cmd:?}\n{}",
            done.report_text()
        );
    }
    // The server's background processes, which run as long as it does, are each named.
    // (Short-lived ones, such as the backend that answered psql, may or may not have been
    // running when COMMAND exited.)
    for process in ["checkpointer", "background writer", "walwriter"] {
        let named = left
            .iter()
            .filter(|(_, cmd)| cmd.starts_with(&format!("postgres: {process}")))
            .count();
        assert_eq!(
            named,
            1,
            "`postgres: {process}` among the leftovers:\n{}",
            done.report_text()
        );
    }
}

/// `make -j8` of 40 C files, interrupted by SIGTERM to corral once the first objects are
/// built: the tree (make, `cc`, `cc1`, `as`, ...) changes all the time, and every process
/// of it must go. make dies of the SIGTERM corral passes on, so corral exits 143. The test
/// stops the build when it sees objects rather than with `--timeout`, which would have to
/// be guessed: too short and nothing is built yet on a loaded machine, too long and the
/// build is over on a fast one.
fn parallel_make_is_interrupted_mid_build(mechanism: Mechanism) {
    let test = format!("workloads::make ({})", mechanism.name());
    if !can_run(&test, false, &[("make", &["make"]), ("gcc", &["cc"])]) {
        return;
    }
    let Some(sandbox) = Sandbox::for_mechanism("wl-make", mechanism) else {
        return;
    };
    let scratch = Scratch::new();
    let src = scratch.0.join("src");
    let mut run = sandbox.corral(mechanism);
    run.arg("--")
        .arg(script("make.sh"))
        .arg(&scratch.0)
        .args(["8", "40"]);
    let job = run.spawn();

    let objects = || {
        fs::read_dir(&src)
            .map(|l| {
                l.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".o"))
                    .count()
            })
            .unwrap_or(0)
    };
    // The first objects take a few seconds of CPU each on this machine; scaled like corral's
    // own deadline for slow (emulated) machines.
    wait_for("the first object files", &job, corral_deadline(), || {
        (objects() >= 2).then_some(())
    });
    let mut build = Members::default();
    build.add(&sandbox, &job, |comm| comm != "corral");
    assert!(
        build.count("make") >= 1 && build.count("cc1") >= 1,
        "make and some cc1 must be running mid-build: {:?}",
        build.0.iter().map(|h| &h.comm).collect::<Vec<_>>()
    );
    job.signal(Signal::TERM);
    let done = job.finish();

    build.assert_all_gone("the build after SIGTERM to corral");
    sandbox.assert_clean();
    done.assert_code(128 + libc::SIGTERM);
    done.assert_report_basics(mechanism);
    assert_eq!(
        done.report()["stop"]["reason"],
        "signal",
        "{}",
        done.report_text()
    );
    assert!(
        !src.join("prog").exists() && objects() < 41,
        "the build was to be interrupted, not finished"
    );
    // make was still running when the stop began, so whatever the report lists as left
    // over (children make did not wait for as it died) must be part of the build.
    for (pid, cmd) in leftovers(&done) {
        let program = cmd.split(' ').next().unwrap_or_default();
        let program = program.rsplit('/').next().unwrap_or_default();
        assert!(
            ["make", "sh", "cc", "gcc", "cc1", "as", "collect2", "ld"].contains(&program),
            "leftover {pid} is not part of the build: {cmd:?}\n{}",
            done.report_text()
        );
    }
}
