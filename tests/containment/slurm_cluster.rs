//! What the two Slurm suites share of a one-node test cluster (`scripts/slurm/start.sh`):
//! the daemons held by pidfds, client commands with the test's registry, a job's state,
//! and the teardown. `tests/containment/slurm.rs` runs the cluster in the test's cgroup
//! subtree; `tests/slurm_vm.rs` runs slurmd as a systemd service with proctrack/cgroup.
//! Each suite's `Cluster` starts the cluster its way and derefs to this [`Slurm`].

#![allow(dead_code)] // each suite uses a different subset

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::{poll_until_every, Described};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::util::{describe_pid, exited, wait_exited, CORRAL};

/// A daemon of the cluster, held by a pidfd opened while it was the process start.sh
/// recorded.
pub struct Daemon {
    pub name: String,
    pub pid: i32,
    pub fd: OwnedFd,
}

/// A started cluster: its directory (start.sh's `DIR`), configuration, registry and
/// daemons. Stopping it is its `Cluster`'s `Drop`, through [`Slurm::stop_and_kill`].
pub struct Slurm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// The test's registry (`CORRAL_RUNTIME_DIR`), for the jobs, the Epilog and the test.
    pub runtime: PathBuf,
    pub epilog_log: PathBuf,
    pub daemons: Vec<Daemon>,
    /// The `stop.sh` to stop the cluster with.
    pub stop_sh: PathBuf,
    pub stopped: bool,
}

/// Makes a suite's `Cluster` (a struct with a field `slurm: Slurm`) deref to its [`Slurm`].
macro_rules! deref_to_slurm {
    ($cluster:ty) => {
        impl std::ops::Deref for $cluster {
            type Target = $crate::slurm_cluster::Slurm;
            fn deref(&self) -> &Self::Target {
                &self.slurm
            }
        }

        impl std::ops::DerefMut for $cluster {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.slurm
            }
        }
    };
}
pub(crate) use deref_to_slurm;

/// `JobState` and `ExitCode` of a job, from `scontrol show job`.
#[derive(Debug)]
pub struct JobInfo {
    pub state: String,
    pub exit_code: String,
}

impl JobInfo {
    pub fn outcome(&self) -> String {
        format!("job {} {}", self.state, self.exit_code)
    }

    /// Asserts Slurm's `ExitCode` is corral's exit status (its JSON `report`): corral
    /// re-raises COMMAND's death by a signal, and Slurm then shows that signal.
    #[track_caller]
    pub fn assert_exit_code_of(&self, report: &serde_json::Value) {
        let status = report["exit_status"].as_i64().unwrap_or(-1);
        let expected = match report["exit"]["signal"].as_i64() {
            Some(sig) if status == 128 + sig => format!("0:{sig}"),
            _ => format!("{status}:0"),
        };
        assert_eq!(
            self.exit_code, expected,
            "Slurm's ExitCode is corral's exit status"
        );
    }

    /// Whether Slurm still considers the job running (or about to run, or completing).
    fn running(&self) -> bool {
        [
            "PENDING",
            "CONFIGURING",
            "RUNNING",
            "COMPLETING",
            "SUSPENDED",
        ]
        .contains(&self.state.as_str())
    }
}

impl Slurm {
    /// Opens a pidfd for each daemon `<dir>/pids` records (`NAME PID STARTTIME`), keeping
    /// it only if the process then has the recorded start time (so it is the recorded one).
    pub fn hold_daemons(&mut self) {
        let text = fs::read_to_string(self.dir.join("pids")).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [name, pid, start] = fields.as_slice() else {
                continue;
            };
            let Some(pid) = pid.parse::<i32>().ok().filter(|&p| p > 1) else {
                continue;
            };
            let Ok(fd) =
                rustix::process::pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty())
            else {
                continue;
            };
            if start_time(pid).as_deref() == Some(*start) && !exited(fd.as_fd()) {
                self.daemons.push(Daemon {
                    name: name.to_string(),
                    pid,
                    fd,
                });
            }
        }
    }

    /// After `start.sh`, whose `output` this is: holds the daemons it recorded (before its
    /// status is checked, so that a failing start is stopped in `Drop`), then asserts it
    /// succeeded and recorded every daemon.
    pub fn hold_started(&mut self, output: &Output) {
        self.hold_daemons();
        assert!(
            output.status.success(),
            "start.sh failed: {}",
            output_text(output)
        );
        let names: Vec<&str> = self.daemons.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["munged", "slurmctld", "slurmd"],
            "start.sh recorded every daemon"
        );
    }

    /// A client command of this cluster, with the test's registry and nothing of a Slurm
    /// job or corral parent the test itself may run in.
    pub fn client(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLURM_") {
                command.env_remove(&key);
            }
        }
        command
            .env("SLURM_CONF", &self.conf)
            .env("CORRAL_RUNTIME_DIR", &self.runtime)
            .env_remove("CORRAL_CGROUP_PARENT")
            .env_remove("CORRAL_IN_SYSTEMD_SCOPE")
            .stdin(Stdio::null());
        command
    }

    /// `program ARGS` as a client, which must succeed.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self
            .client(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            output_text(&output)
        );
        output
    }

    /// `sbatch --job-name NAME --chdir DIR --output OUTPUT ARGS SCRIPT`: the job's id.
    pub fn sbatch(
        &self,
        name: &str,
        (dir, output): (&Path, &Path),
        args: &[&str],
        script: &Path,
    ) -> u32 {
        let (dir, output) = (dir.display().to_string(), output.display().to_string());
        let mut all = vec!["--parsable", "--job-name", name, "--chdir", &dir];
        all.extend(["--output", &output]);
        all.extend(args);
        let script = script.display().to_string();
        all.push(&script);
        let out = self.run("sbatch", &all);
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("sbatch printed no job id: {text:?}"))
    }

    /// `JobState` and `ExitCode` from `scontrol show job` (MinJobAge keeps a job known for
    /// an hour after it ended; there is no accounting database).
    pub fn job(&self, id: u32) -> JobInfo {
        let output = self.run("scontrol", &["show", "job", "--oneliner", &id.to_string()]);
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in scontrol show job: {text}"))
                .to_string()
        };
        JobInfo {
            state: field("JobState"),
            exit_code: field("ExitCode"),
        }
    }

    /// Waits until Slurm considers the job over (no longer pending, running or completing:
    /// slurmstepd has finished, the Epilog has run), asking `scontrol` every `every` at
    /// most. `census` describes the processes left where the jobs run, should it time out.
    pub fn wait_ended(
        &self,
        id: u32,
        (within, every): (Duration, Duration),
        census: impl Fn() -> String,
    ) -> JobInfo {
        let census = &census;
        poll_until_every(format_args!("job {id} over"), within, every, || {
            let info = self.job(id);
            match info.running() {
                false => Ok(info),
                true => Err(Described(move || {
                    format!("still {}; the jobs' processes: {}", info.state, census())
                })),
            }
        })
    }

    /// Asserts the Epilog ran `corral sweep` after job `id`, successfully.
    pub fn assert_epilog_swept(&self, id: u32) {
        let log = fs::read_to_string(&self.epilog_log).unwrap_or_default();
        assert!(
            log.contains(&format!("job {id}: corral sweep exited 0")),
            "the Epilog's corral sweep after job {id}:\n{log}"
        );
    }

    /// Runs `stop.sh DIR`.
    pub fn stop(&mut self) -> Output {
        self.stopped = true;
        Command::new(&self.stop_sh)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.stop_sh.display()))
    }

    /// Asserts every daemon exits by `deadline` (after [`Slurm::stop`]).
    pub fn assert_daemons_gone(&self, deadline: Instant) {
        for daemon in &self.daemons {
            assert!(
                wait_exited(daemon.fd.as_fd(), deadline),
                "stop.sh left {}: {}",
                daemon.name,
                describe_pid(daemon.pid)
            );
        }
    }

    /// For `Drop`: `stop.sh` if the test did not stop the cluster, then SIGKILL through its
    /// pidfd to each daemon that is still there 2 s later.
    pub fn stop_and_kill(&mut self) {
        if !self.stopped {
            let output = self.stop();
            if !output.status.success() {
                eprintln!("cleanup: stop.sh: {}", output_text(&output));
            }
        }
        for daemon in &self.daemons {
            if !wait_exited(daemon.fd.as_fd(), Instant::now() + Duration::from_secs(2)) {
                eprintln!("cleanup: {} survived stop.sh; SIGKILL", daemon.name);
                let _ = rustix::process::pidfd_send_signal(&daemon.fd, Signal::KILL);
            }
        }
    }

    /// For `Drop`: the last lines of each of `logs` (paths in the cluster's directory) if
    /// the test failed, then the directory removed.
    pub fn print_logs_and_remove(&self, logs: &[&str]) {
        if std::thread::panicking() {
            for log in logs {
                let text = fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {log} (last lines)");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes the Epilog of docs/slurm.md at `path`: `corral sweep` of the registry `runtime`
/// after every job, logged to `log`. It exits 0: a failing Epilog drains the node.
pub fn write_epilog(path: &Path, runtime: &Path, log: &Path) {
    fs::write(
        path,
        format!(
            "#!/bin/sh\n\
             CORRAL_RUNTIME_DIR='{runtime}' '{CORRAL}' sweep >>'{log}' 2>&1\n\
             echo \"job $SLURM_JOB_ID: corral sweep exited $?\" >>'{log}'\n\
             exit 0\n",
            runtime = runtime.display(),
            log = log.display(),
        ),
    )
    .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Each of `pids` described (state, parents, cgroup, command line), or `(none)`.
pub fn describe_census(pids: Vec<i32>) -> String {
    let described: Vec<String> = pids.into_iter().map(describe_pid).collect();
    if described.is_empty() {
        "(none)".into()
    } else {
        described.join("; ")
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time, which tells a process from a later one
/// given the same PID.
pub fn start_time(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(19).map(str::to_string)
}

/// A program's status and output, for messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
