//! corral inside the tools that run tests and builds (docs/integrations.md), each tool the
//! real one, run once without corral (the leak is real) and once with it:
//!
//! - `cargo nextest run` on the fixture crate `tests/fixtures/nextest-leaky`, with corral as
//!   its wrapper script (`[scripts.wrapper]`, experimental in nextest) or its target runner
//!   (`.cargo/config.toml`). A test that leaves `setsid sleep` behind passes and leaks
//!   without corral (nextest sees the leak only if the sleep kept the test's output), passes
//!   and leaks nothing under it, and fails under `--leftovers fail`;
//!   a test that aborts is reported as SIGABRT either way (corral re-raises the signal); a
//!   test that ignores SIGTERM and outlives nextest's `slow-timeout` is killed within
//!   corral's grace, shorter than nextest's, and leaves nothing.
//! - GNU make with `SHELL := corral` and `.SHELLFLAGS := run ... -- /bin/sh -c`: a recipe
//!   line's background process is stopped with the line; `.ONESHELL` makes the recipe one
//!   job; a recursive `+$(MAKE)` still gets the jobserver (`-j4` runs in parallel); Ctrl+C
//!   ends make and every recipe process at once.
//!
//! Every process a fixture leaves behind is `sleep <marker>`, the marker a number no other
//! test uses (`300.<pid><n>`): it is found in /proc by that argument and held by a pidfd
//! ([`Marked`]), and what a run without corral leaked is killed through that pidfd. The
//! tools run in the sandbox's cgroup subtree when there is one (corral's jobs under its
//! `jobs`), so whatever else they left is killed with it.
//!
//! The nextest tests need `cargo nextest`; the make tests GNU make. Without them a test is
//! skipped. The fixture builds offline into one build directory under
//! `CARGO_TARGET_TMPDIR`, shared by every test and every run.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use corral_testkit::poll_until;
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{
    describe_pid, describe_status, exited, pidfd_of_child, place_in_cgroup, skip, wait_exited,
    Sandbox, CORRAL, GONE_DEADLINE, READY_DEADLINE,
};

/// How long one run of a tool may take, a build of the fixture included: a hang detector.
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

// ---- what the fixtures leave behind ------------------------------------------------------

/// A `sleep` argument no other test uses: `300.<our pid><n>`, 300 s as GNU sleep reads it.
fn unique_sleep() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "300.{}{:03}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether `arg` is one of the arguments in `/proc/<pid>/cmdline` (a zombie has none).
fn has_arg(pid: i32, arg: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|bytes| bytes.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
}

/// The running processes with the marker as an argument, each held by a pidfd opened while
/// its command line still had it, so a PID reused meanwhile is never held. `Drop` SIGKILLs,
/// through the pidfds, any still running.
struct Marked {
    marker: String,
    held: Vec<(i32, OwnedFd)>,
}

impl Marked {
    fn find(marker: &str) -> Marked {
        let mut held = Vec::new();
        for pid in crate::util::proc_pids() {
            if !has_arg(pid, marker) {
                continue;
            }
            let Some(raw) = Pid::from_raw(pid) else {
                continue;
            };
            let Ok(fd) = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
                continue; // gone already
            };
            if has_arg(pid, marker) && !exited(fd.as_fd()) {
                held.push((pid, fd));
            }
        }
        Marked {
            marker: marker.to_string(),
            held,
        }
    }

    /// Waits until `count` processes carry the marker (a leak being started by `setsid`
    /// may not have reached `exec` yet).
    fn wait_for(marker: &str, count: usize, context: &str) -> Marked {
        let what = format!("{context}: {count} processes with `{marker}`");
        let found = poll_until(what, READY_DEADLINE, || {
            let found = Marked::find(marker);
            match found.held.len() >= count {
                true => Ok(found),
                false => Err(found.describe()),
            }
        });
        assert_eq!(
            found.held.len(),
            count,
            "{context}: processes with `{marker}` left running: {}",
            found.describe()
        );
        found
    }

    /// Asserts nothing carries the marker. Called once the tool has returned: corral has
    /// returned by then, and it returns only once its job is empty.
    fn assert_none(marker: &str, context: &str) {
        let found = Marked::find(marker);
        assert!(
            found.held.is_empty(),
            "{context}: processes with `{marker}` left running: {}",
            found.describe()
        );
    }

    fn describe(&self) -> String {
        let all: Vec<String> = self
            .held
            .iter()
            .map(|(pid, _)| describe_pid(*pid))
            .collect();
        format!("[{}]", all.join("; "))
    }

    /// SIGKILLs each process through its pidfd and waits until it is gone.
    fn kill(self) {
        let deadline = Instant::now() + GONE_DEADLINE;
        for (_, fd) in &self.held {
            rustix::process::pidfd_send_signal(fd, Signal::KILL).expect("SIGKILL via pidfd");
        }
        for (pid, fd) in &self.held {
            assert!(
                wait_exited(fd.as_fd(), deadline),
                "`{}` survived SIGKILL: {}",
                self.marker,
                describe_pid(*pid)
            );
        }
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        for (_, fd) in &self.held {
            if !exited(fd.as_fd()) {
                let _ = rustix::process::pidfd_send_signal(fd, Signal::KILL);
            }
        }
    }
}

// ---- running a tool ----------------------------------------------------------------------

/// What a tool printed (stdout and stderr in one file, in order) and how it ended.
struct Ran {
    status: ExitStatus,
    output: String,
}

/// Makes `command` a tool run of the sandbox: stdout and stderr to the file `log` (a leaked
/// process that keeps them cannot hold the test up), stdin from /dev/null, in a process
/// group of its own and, when the sandbox has one, in its cgroup subtree, with corral's
/// registry and cgroup parent those of the sandbox. Nothing of a nextest or make that runs
/// this test reaches it.
fn prepare_tool(sandbox: &Sandbox, command: &mut Command, log: &Path) {
    let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("dup the log's descriptor");
    for (key, _) in std::env::vars_os() {
        let bytes = key.as_bytes();
        if bytes.starts_with(b"NEXTEST")
            || [&b"MAKEFLAGS"[..], b"MFLAGS", b"MAKELEVEL", b"MAKEFILES"].contains(&bytes)
        {
            command.env_remove(&key);
        }
    }
    command
        .env("CORRAL_RUNTIME_DIR", &sandbox.runtime)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    match &sandbox.cgroup {
        Some(tree) => {
            command.env("CORRAL_CGROUP_PARENT", tree.jobs());
            place_in_cgroup(command, &tree.corral_leaf());
        }
        None => {
            command.env_remove("CORRAL_CGROUP_PARENT");
        }
    }
}

/// A tool started by [`prepare_tool`]'s command, held by a pidfd.
/// `Drop` SIGKILLs its process group and reaps it if the test did not.
struct Tool {
    child: Child,
    pidfd: OwnedFd,
    log: PathBuf,
    reaped: bool,
}

impl Tool {
    fn spawn(sandbox: &Sandbox, mut command: Command, log: PathBuf) -> Tool {
        prepare_tool(sandbox, &mut command, &log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let pidfd = pidfd_of_child(&child);
        Tool {
            child,
            pidfd,
            log,
            reaped: false,
        }
    }

    /// The process group the tool leads (this test made it; the tool is our unreaped
    /// child, so the id is still its).
    fn group(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    /// Waits until the tool ends, by `deadline`; after that SIGKILLs its process group.
    /// Fails if it had to.
    fn finish(mut self, deadline: Instant) -> Ran {
        let ended = wait_exited(self.pidfd.as_fd(), deadline);
        if !ended {
            let _ = rustix::process::kill_process_group(self.group(), Signal::KILL);
        }
        let status = self.child.wait().expect("reap the tool");
        self.reaped = true;
        let output = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(ended, "the tool did not end by its deadline:\n{output}");
        Ran { status, output }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = rustix::process::kill_process_group(self.group(), Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` as a [`Tool`] to the end, within [`TOOL_DEADLINE`].
fn run_tool(sandbox: &Sandbox, command: Command, log: PathBuf) -> Ran {
    Tool::spawn(sandbox, command, log).finish(Instant::now() + TOOL_DEADLINE)
}

/// Copies the directory `from` to `to`, each file with its modification time, so that a
/// copy of the fixture is as fresh as the build of another copy.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in fs::read_dir(from).expect("read the fixture").flatten() {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() && entry.file_name() != "target" {
            copy_tree(&source, &target);
        } else if kind.is_file() {
            fs::copy(&source, &target).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
            let modified = entry.metadata().and_then(|m| m.modified()).expect("mtime");
            File::options()
                .write(true)
                .open(&target)
                .and_then(|f| f.set_modified(modified))
                .unwrap_or_else(|e| panic!("set the mtime of {}: {e}", target.display()));
        }
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `corral run ARGS --` as a TOML array.
fn corral_command(args: &[&str]) -> String {
    let words: Vec<String> = [CORRAL, "run"]
        .iter()
        .chain(args)
        .chain(&["--"])
        .map(|w| toml_string(w))
        .collect();
    format!("[{}]", words.join(", "))
}

// ---- cargo nextest -----------------------------------------------------------------------

/// The fixture crate, and where it is built (shared, so it is built once).
fn fixture() -> PathBuf {
    corral_testkit::workspace_root().join("tests/fixtures/nextest-leaky")
}

fn fixture_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("nextest-leaky-target")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Whether `cargo nextest` runs here; skips (or fails under `CORRAL_REQUIRE_ALL=1`) if not.
fn have_nextest(test: &str) -> bool {
    let found = cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(format!(
            "{test}: `cargo nextest` not installed (`cargo install --locked cargo-nextest`)"
        ));
    }
    found
}

/// How corral wraps each test of a nextest run.
enum Wrapper<'a> {
    /// No corral: the leak, as nextest alone sees it.
    Without,
    /// `corral run ARGS --` as the wrapper script of every test (`run-wrapper`): nextest
    /// runs `corral run ARGS -- <test binary> <its arguments>`. Listing runs without it.
    Script(&'a [&'a str]),
    /// `corral run ARGS --` as the target runner, in `.cargo/config.toml`: nextest runs
    /// each test, and each binary's listing, under it.
    TargetRunner(&'a [&'a str]),
}

/// A nextest run's result.
struct NextestRun {
    ran: Ran,
}

impl NextestRun {
    /// The status nextest gave `test` (`PASS`, `LEAK`, `FAIL`, `SIGABRT`, `TIMEOUT`, ...) and
    /// the time it reported, from the status lines before the summary, e.g.
    /// `        PASS [   0.004s] (1/2) nextest-leaky passes`. A line whose time is a
    /// lower bound (`SLOW [> 1.000s]`) is not a final status.
    fn result(&self, test: &str) -> (String, Duration) {
        let mut result = None;
        for line in self.ran.output.lines() {
            let line = line.trim_start();
            if line.starts_with("Summary ") {
                break;
            }
            let Some((status, rest)) = line.split_once(" [") else {
                continue;
            };
            let Some((time, rest)) = rest.split_once("] ") else {
                continue;
            };
            let Ok(secs) = time.trim().trim_end_matches('s').parse::<f64>() else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.ends_with(&["nextest-leaky", test]) {
                result = Some((status.to_string(), Duration::from_secs_f64(secs)));
            }
        }
        result.unwrap_or_else(|| panic!("no status for `{test}` in:\n{}", self.ran.output))
    }

    fn status(&self, test: &str) -> String {
        self.result(test).0
    }

    /// nextest's exit status: 0 all passed, 100 a test failed.
    fn code(&self) -> Option<i32> {
        self.ran.status.code()
    }

    fn output(&self) -> &str {
        &self.ran.output
    }
}

/// Runs `cargo nextest run ARGS` on a fresh copy of the fixture, with `profile` added to
/// `[profile.default]` of its `.config/nextest.toml`, every sleep the fixture leaves being
/// `sleep <marker>`.
fn nextest(
    sandbox: &Sandbox,
    wrapper: Wrapper<'_>,
    profile: &str,
    args: &[&str],
    marker: &str,
) -> NextestRun {
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    let copy = sandbox.dir.join(format!(
        "nextest-leaky-{}",
        COPIES.fetch_add(1, Ordering::SeqCst)
    ));
    copy_tree(&fixture(), &copy);
    let mut config = format!("[profile.default]\n{profile}\n");
    match wrapper {
        Wrapper::Without => {}
        Wrapper::Script(corral) => {
            config = format!(
                "experimental = [\"wrapper-scripts\"]\n\n{config}\n\
                 [scripts.wrapper.corral]\ncommand = {}\n\n\
                 [[profile.default.scripts]]\nfilter = \"all()\"\nrun-wrapper = \"corral\"\n",
                corral_command(corral)
            );
        }
        Wrapper::TargetRunner(corral) => {
            fs::create_dir_all(copy.join(".cargo")).expect("create .cargo");
            let runner = format!(
                "[target.'cfg(target_os = \"linux\")']\nrunner = {}\n",
                corral_command(corral)
            );
            fs::write(copy.join(".cargo/config.toml"), runner).expect("write .cargo/config.toml");
        }
    }
    fs::create_dir_all(copy.join(".config")).expect("create .config");
    fs::write(copy.join(".config/nextest.toml"), config).expect("write .config/nextest.toml");

    let mut command = cargo();
    command
        .args(["nextest", "run", "--offline", "--locked", "--no-fail-fast"])
        .args(["--color", "never", "--user-config-file", "none"])
        .args(args)
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", fixture_target_dir())
        .env("CARGO_TERM_COLOR", "never")
        .env("FIXTURE_SLEEP", marker);
    NextestRun {
        ran: run_tool(sandbox, command, copy.with_extension("log")),
    }
}

/// The statuses nextest gave the fixture's default tests: `passes`, `leaky`, `leaky_quiet`.
fn default_statuses(run: &NextestRun) -> [String; 3] {
    ["passes", "leaky", "leaky_quiet"].map(|test| run.status(test))
}

/// Without corral, the `leaky` test passes and nextest marks it `LEAK` (its `setsid sleep`
/// kept the test's output open); `leaky_quiet`, whose sleep keeps none of the test's
/// descriptors, passes unmarked; both sleeps are still running when nextest returns. Under
/// corral as the wrapper script, the three tests pass, no sleep is left, and corral's
/// summary line (in each leaky test's output) says it stopped one.
#[test]
fn a_test_leaking_a_setsid_process_leaks_without_corral_and_not_under_it() {
    if !have_nextest("integrations::nextest leak") {
        return;
    }
    let sandbox = Sandbox::new("int-nextest-leak");

    let marker = unique_sleep();
    let plain = nextest(&sandbox, Wrapper::Without, "", &[], &marker);
    Marked::wait_for(&marker, 2, "nextest without corral").kill();
    assert_eq!(plain.code(), Some(0), "{}", plain.output());
    assert_eq!(
        default_statuses(&plain),
        ["PASS", "LEAK", "PASS"],
        "{}",
        plain.output()
    );

    let marker = unique_sleep();
    let wrapped = nextest(
        &sandbox,
        Wrapper::Script(&["--grace", "1s"]),
        "",
        &["--success-output", "immediate"],
        &marker,
    );
    Marked::assert_none(&marker, "nextest with corral as the wrapper script");
    assert_eq!(wrapped.code(), Some(0), "{}", wrapped.output());
    assert_eq!(
        default_statuses(&wrapped),
        ["PASS", "PASS", "PASS"],
        "{}",
        wrapped.output()
    );
    assert_eq!(
        wrapped
            .output()
            .matches("stopped 1 leftover process")
            .count(),
        2,
        "corral's summary line names each test's leftover:\n{}",
        wrapped.output()
    );
    sandbox.assert_clean();
}

/// `--leftovers fail`: both leaky tests fail (corral's 120) and the other still passes, with
/// corral as the wrapper script and as the target runner alike; nothing is left running.
/// nextest's own `leak-timeout = { result = "fail" }` fails `leaky` only (`LEAK-FAIL`):
/// `leaky_quiet`'s sleep passes unseen, and both sleeps outlive the run.
#[test]
fn leftovers_fail_fails_every_leaky_test_as_wrapper_and_as_target_runner() {
    if !have_nextest("integrations::nextest --leftovers fail") {
        return;
    }
    let sandbox = Sandbox::new("int-nextest-fail");
    let corral = ["--leftovers", "fail", "--grace", "1s"];
    for (how, wrapper) in [
        ("wrapper script", Wrapper::Script(&corral)),
        ("target runner", Wrapper::TargetRunner(&corral)),
    ] {
        let marker = unique_sleep();
        let run = nextest(&sandbox, wrapper, "", &[], &marker);
        Marked::assert_none(&marker, how);
        assert_eq!(run.code(), Some(100), "{how}: {}", run.output());
        assert_eq!(
            default_statuses(&run),
            ["PASS", "FAIL", "FAIL"],
            "{how}: {}",
            run.output()
        );
        assert_eq!(
            run.output()
                .matches("test failed with exit code 120")
                .count(),
            2,
            "{how}: each failure is corral's 120:\n{}",
            run.output()
        );
    }

    let marker = unique_sleep();
    let own = nextest(
        &sandbox,
        Wrapper::Without,
        r#"leak-timeout = { period = "100ms", result = "fail" }"#,
        &[],
        &marker,
    );
    Marked::wait_for(&marker, 2, "nextest's own leak-timeout").kill();
    assert_eq!(own.code(), Some(100), "{}", own.output());
    assert_eq!(
        default_statuses(&own),
        ["PASS", "LEAK-FAIL", "PASS"],
        "{}",
        own.output()
    );
    sandbox.assert_clean();
}

/// A test that aborts is `SIGABRT` to nextest under corral as without it: corral dies of
/// the signal its COMMAND died of. With `--no-reraise` nextest sees exit code 134 instead.
#[test]
fn an_aborting_test_is_reported_as_sigabrt_under_corral_as_without_it() {
    if !have_nextest("integrations::nextest abort") {
        return;
    }
    let sandbox = Sandbox::new("int-nextest-abort");
    let only_aborts = ["--run-ignored", "only", "-E", "test(=aborts)"];
    for (how, wrapper, status) in [
        ("without corral", Wrapper::Without, "SIGABRT"),
        (
            "under corral",
            Wrapper::Script(&["--grace", "1s"]),
            "SIGABRT",
        ),
        (
            "under corral --no-reraise",
            Wrapper::Script(&["--no-reraise", "--grace", "1s"]),
            "FAIL",
        ),
    ] {
        let run = nextest(&sandbox, wrapper, "", &only_aborts, &unique_sleep());
        assert_eq!(run.code(), Some(100), "{how}: {}", run.output());
        assert_eq!(run.status("aborts"), status, "{how}: {}", run.output());
        let told = match status {
            "SIGABRT" => "test aborted with signal 6: SIGABRT",
            _ => "test failed with exit code 134",
        };
        assert!(run.output().contains(told), "{how}: {}", run.output());
    }
    sandbox.assert_clean();
}

/// A test that ignores SIGTERM, and has started a `setsid sleep` that ignores it too,
/// outlives nextest's `slow-timeout` (`terminate-after = 2` periods of 1 s). Without corral,
/// nextest's SIGKILL after its grace period reaches the test's process group only: the
/// sleep survives. Under corral with `--grace 1s`, shorter than nextest's grace period of
/// 30 s, nextest's SIGTERM reaches corral (in the test's process group), and corral kills
/// the whole job after its own grace: nextest reports `TIMEOUT` well before its grace
/// period would have ended, and nothing is left.
#[test]
fn a_sigterm_ignoring_test_is_killed_within_corrals_grace_and_leaves_nothing() {
    if !have_nextest("integrations::nextest timeout") {
        return;
    }
    let sandbox = Sandbox::new("int-nextest-timeout");
    let only_stubborn = ["--run-ignored", "only", "-E", "test(=ignores_sigterm)"];

    let marker = unique_sleep();
    let plain = nextest(
        &sandbox,
        Wrapper::Without,
        r#"slow-timeout = { period = "1s", terminate-after = 2, grace-period = "1s" }"#,
        &only_stubborn,
        &marker,
    );
    let leaked = Marked::wait_for(&marker, 1, "a timeout without corral");
    leaked.kill();
    assert_eq!(plain.code(), Some(100), "{}", plain.output());
    assert_eq!(
        plain.status("ignores_sigterm"),
        "TIMEOUT",
        "{}",
        plain.output()
    );

    let marker = unique_sleep();
    let nextest_grace = Duration::from_secs(30);
    let wrapped = nextest(
        &sandbox,
        Wrapper::Script(&["--grace", "1s"]),
        r#"slow-timeout = { period = "1s", terminate-after = 2, grace-period = "30s" }"#,
        &only_stubborn,
        &marker,
    );
    Marked::assert_none(&marker, "a timeout under corral");
    assert_eq!(wrapped.code(), Some(100), "{}", wrapped.output());
    let (status, took) = wrapped.result("ignores_sigterm");
    assert_eq!(status, "TIMEOUT", "{}", wrapped.output());
    assert!(
        took < nextest_grace / 2,
        "the test took {took:?}: corral (--grace 1s), not nextest ({nextest_grace:?}), \
         must have killed it:\n{}",
        wrapped.output()
    );
    assert!(
        wrapped.output().contains("escalated to SIGKILL"),
        "corral's summary line says it killed:\n{}",
        wrapped.output()
    );
    sandbox.assert_clean();
}

// ---- GNU make ----------------------------------------------------------------------------

/// Whether GNU make runs here; skips (or fails under `CORRAL_REQUIRE_ALL=1`) if not.
fn have_make(test: &str) -> bool {
    let found = Command::new("make")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"GNU Make"));
    if !found {
        skip(format!(
            "{test}: GNU make not installed (Debian package make)"
        ));
    }
    found
}

/// The lines that make corral the shell of every recipe line: `SHELL := <corral>`,
/// `.SHELLFLAGS := run ARGS -- /bin/sh -c`.
fn corral_shell(args: &str) -> String {
    format!("SHELL := {CORRAL}\n.SHELLFLAGS := run {args} -- /bin/sh -c\n")
}

/// A directory in the sandbox with `files` (name, text) written in it.
fn make_dir(sandbox: &Sandbox, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = sandbox.dir.join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for (file, text) in files {
        fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
    }
    dir
}

/// `make ARGS` in `dir`.
fn make(sandbox: &Sandbox, dir: &Path, args: &[&str]) -> Ran {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let mut command = Command::new("make");
    command.args(args).current_dir(dir);
    let log = dir.with_extension(format!("{}.log", RUNS.fetch_add(1, Ordering::SeqCst)));
    run_tool(sandbox, command, log)
}

/// A recipe line that starts `sleep <marker> &` and ends: with /bin/sh as make's shell the
/// sleep outlives make; with corral as the shell it is stopped when its line ends, make
/// goes on to the next line and succeeds; `--leftovers fail` in `.SHELLFLAGS` makes the
/// line, and make, fail.
#[test]
fn a_recipe_lines_background_process_is_stopped_with_the_line_under_corral() {
    if !have_make("integrations::make leak") {
        return;
    }
    let sandbox = Sandbox::new("int-make-leak");
    let recipe = |marker: &str| {
        format!("all:\n\tsleep {marker} >/dev/null 2>&1 &\n\t@echo the next line runs\n")
    };

    let marker = unique_sleep();
    let dir = make_dir(&sandbox, "plain", &[("Makefile", &recipe(&marker))]);
    let plain = make(&sandbox, &dir, &[]);
    let leaked = Marked::wait_for(&marker, 1, "make with /bin/sh");
    leaked.kill();
    assert!(plain.status.success(), "{}", plain.output);

    let marker = unique_sleep();
    let makefile = format!("{}{}", corral_shell("--grace 1s"), recipe(&marker));
    let dir = make_dir(&sandbox, "corral", &[("Makefile", &makefile)]);
    let wrapped = make(&sandbox, &dir, &[]);
    Marked::assert_none(&marker, "make with corral as SHELL");
    assert!(wrapped.status.success(), "{}", wrapped.output);
    assert!(
        wrapped.output.contains("the next line runs"),
        "{}",
        wrapped.output
    );

    let marker = unique_sleep();
    let makefile = format!(
        "{}{}",
        corral_shell("--leftovers fail --grace 1s"),
        recipe(&marker)
    );
    let dir = make_dir(&sandbox, "corral-fail", &[("Makefile", &makefile)]);
    let failed = make(&sandbox, &dir, &[]);
    Marked::assert_none(&marker, "make with corral --leftovers fail as SHELL");
    assert_eq!(failed.status.code(), Some(2), "{}", failed.output);
    assert!(
        failed.output.contains("Error 120") && !failed.output.contains("the next line runs"),
        "the line fails with corral's 120 and make stops:\n{}",
        failed.output
    );
    sandbox.assert_clean();
}

/// `.ONESHELL`: the whole recipe is one `corral run`, so a process started on one line
/// still runs on the next, and is stopped when the recipe ends. make strips `@`, `-` and
/// `+` from the first line only then (it strips later lines' only for a shell it takes for
/// a POSIX one): a later line's `@echo` reaches /bin/sh as a command named `@echo`.
#[test]
fn oneshell_makes_the_whole_recipe_one_job() {
    if !have_make("integrations::make .ONESHELL") {
        return;
    }
    let sandbox = Sandbox::new("int-make-oneshell");
    let marker = unique_sleep();
    let makefile = format!(
        "SHELL := {CORRAL}\n.SHELLFLAGS := run --grace 1s -- /bin/sh -ec\n.ONESHELL:\n\
         all:\n\
         \t@sleep {marker} >/dev/null 2>&1 &\n\
         \techo $$! > sleep.pid\n\
         \tkill -0 $$(cat sleep.pid)\n\
         \techo the sleep of the first line still runs\n\
         prefixed:\n\
         \t@echo first\n\
         \t@echo second\n"
    );
    let dir = make_dir(&sandbox, "oneshell", &[("Makefile", &makefile)]);
    let ran = make(&sandbox, &dir, &["all"]);
    Marked::assert_none(&marker, "make .ONESHELL with corral as SHELL");
    assert!(ran.status.success(), "{}", ran.output);
    assert!(
        ran.output
            .lines()
            .any(|l| l == "the sleep of the first line still runs"),
        "{}",
        ran.output
    );

    let prefixed = make(&sandbox, &dir, &["prefixed"]);
    assert!(
        !prefixed.status.success() && prefixed.output.contains("@echo: not found"),
        "a later line's @ reaches the shell under .ONESHELL:\n{}",
        prefixed.output
    );
    sandbox.assert_clean();
}

/// `make -j4` with a recursive `+$(MAKE)`, both makes with corral as their shell: the
/// jobserver's descriptors pass through corral to the sub-make (its `MAKEFLAGS` carries
/// `--jobserver-auth=`, and it does not fall back to `-j1`), whose two targets run at the
/// same time: each waits (up to 20 s) until the other has started.
#[test]
fn a_recursive_make_keeps_the_jobserver_through_corral() {
    if !have_make("integrations::make jobserver") {
        return;
    }
    let sandbox = Sandbox::new("int-make-jobserver");
    let shell = corral_shell("--grace 1s");
    let top = format!("{shell}all:\n\t+$(MAKE) -f sub.mk\n");
    let wait_for = |other: &str| {
        format!(
            "\t@echo \"$$MAKEFLAGS\" > $@.flags; touch $@.started; i=0; \
             while [ ! -e {other}.started ]; do [ $$i -lt 400 ] || exit 1; \
             sleep 0.05; i=$$((i+1)); done; echo $@ saw {other} start\n"
        )
    };
    let sub = format!(
        "{shell}all: a b\na:\n{}b:\n{}",
        wait_for("b"),
        wait_for("a")
    );
    let dir = make_dir(
        &sandbox,
        "jobserver",
        &[("Makefile", &top), ("sub.mk", &sub)],
    );
    let ran = make(&sandbox, &dir, &["-j4"]);
    assert!(ran.status.success(), "{}", ran.output);
    assert!(
        ran.output.contains("a saw b start") && ran.output.contains("b saw a start"),
        "{}",
        ran.output
    );
    assert!(
        !ran.output.contains("jobserver unavailable"),
        "{}",
        ran.output
    );
    let flags = fs::read_to_string(dir.join("a.flags")).unwrap_or_default();
    assert!(
        flags.contains("--jobserver-auth="),
        "the sub-make's MAKEFLAGS: {flags}"
    );
    sandbox.assert_clean();
}

/// Ctrl+C (SIGINT to the foreground process group: make, corral and the recipe's shell)
/// during a recipe line under corral with `--grace 10s`: make ends, dying of SIGINT as
/// without corral, within 5 s, though the line's `sleep &` ignores SIGINT (a shell starts
/// its `&` commands so): corral sends it SIGTERM 500 ms after SIGINT. Nothing is left.
#[test]
fn ctrl_c_ends_make_and_every_recipe_process_under_corral() {
    if !have_make("integrations::make Ctrl+C") {
        return;
    }
    let sandbox = Sandbox::new("int-make-ctrl-c");
    let marker = unique_sleep();
    let makefile = format!(
        "{}out:\n\tsleep {marker} >/dev/null 2>&1 & sleep {marker}\n",
        corral_shell("--grace 10s"),
    );
    let dir = make_dir(&sandbox, "ctrl-c", &[("Makefile", &makefile)]);
    let mut command = Command::new("make");
    command.current_dir(&dir);
    let make = Tool::spawn(&sandbox, command, sandbox.dir.join("ctrl-c.log"));
    let deadline = Instant::now() + READY_DEADLINE;
    let both = loop {
        let found = Marked::find(&marker);
        if found.held.len() == 2 || Instant::now() >= deadline {
            break found;
        }
        drop(found);
        std::thread::sleep(Duration::from_millis(10));
    };
    // As a terminal's Ctrl+C: to the group make leads.
    let sent = Instant::now();
    let signalled = rustix::process::kill_process_group(make.group(), Signal::INT);
    let Ran { status, output } = make.finish(sent + Duration::from_secs(20));
    let took = sent.elapsed();
    assert_eq!(both.held.len(), 2, "the recipe did not start:\n{output}");
    signalled.expect("SIGINT to make's group");
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "make {}:\n{output}",
        describe_status(status)
    );
    assert!(
        took < Duration::from_secs(5),
        "Ctrl+C took {took:?}:\n{output}"
    );
    Marked::assert_none(&marker, "make after Ctrl+C");
    drop(both);
    sandbox.assert_clean();
}
