//! The job, once for every OS: the one public [`Job`], documented here, over the platform's
//! implementation (`imp`: `linux::job`, `macos` or `windows`), to which each method
//! delegates. Every OS offers the same core (spawn, wait, stop, kill, the report);
//! what only Linux offers (the lean spawn, members, signals, detach, piped stdio, ...) is
//! marked so, and exists only there.

use std::process::Command;
use std::time::Duration;

#[cfg(target_os = "linux")]
use crate::linux::job as imp;
#[cfg(target_os = "macos")]
use crate::macos as imp;
#[cfg(windows)]
use crate::windows as imp;
#[cfg(target_os = "linux")]
use crate::{Detached, JobCommand, Output, Signal, SignalSource};
use crate::{Mechanism, Options, Report, Result};

/// A running job: a main process and everything it starts. Obtain one with [`Job::spawn`]
/// (or, on Linux, `Job::spawn_command`); wait for it with [`Job::wait`],
/// [`Job::wait_timeout`] or [`Job::try_wait`]; end it early with [`Job::stop`] or
/// [`Job::kill`]. Each of these returns the [`Report`] once the job is over.
///
/// A `Job` is `Send` and `Sync`: jobs can be started, waited for and stopped from any
/// thread, and many at once; they share nothing but a counter.
///
/// How a job is contained depends on the OS ([`Job::mechanism`]): on Linux a cgroup v2
/// leaf, or a process group under a subreaper where no cgroup is writable; on macOS a
/// process group and `libproc` walks (`docs/macos.md`); on Windows a Job Object
/// (`docs/windows.md`).
///
/// # Caveats
/// - Dropping a `Job` that has not ended kills every process in it with SIGKILL (on
///   Windows, terminates its Job Object), reaps the main process and removes the cgroup,
///   blocking until that is done (normally milliseconds). On Linux, to leave a job
///   running, call `Job::detach`.
/// - The pgroup mechanism (Linux, no writable cgroup) runs each job under a small
///   supervisor process (the `corral` binary, see [`crate::Supervisor`]), which is the
///   job's child subreaper. It is weaker than a cgroup: see `docs/design.md`.
/// - [`crate::Supervisor::InProcess`] makes the calling process itself a child subreaper
///   and treats every child of the process as part of the job: only for a program that
///   has no other children (the `corral` CLI).
/// - [`Options::pid_namespace`] (Linux) makes the main process PID 1 of a new PID namespace
///   (with a user namespace mapping its own uid and gid where the caller lacks
///   `CAP_SYS_ADMIN`). Only `Job::spawn_command` offers it (in cgroup mode or with
///   [`crate::Supervisor::InProcess`]; [`Job::spawn`] returns an error): the child must be
///   made with `clone3`, which std's `Command` cannot be asked for. The main process gets
///   SIGKILL as its parent-death signal, and the kernel sends that when the *thread* that
///   spawned it exits, not the process; so the spawn is refused on any thread but the main
///   one, and a job cannot outlive the main thread (not even after `Job::detach`). When
///   the main process exits, the kernel kills every other process of the namespace at once,
///   without a grace, so [`crate::Leftovers::Wait`] is refused and `leftovers` stays empty.
///   As PID 1, the main process receives from outside only the signals it has a handler
///   for (SIGKILL and SIGSTOP aside): the polite signal of a stop, or a terminal's Ctrl+C,
///   may not reach it, and the stop then ends it with SIGKILL after the grace. `/proc` in
///   the job is still the host's (there is no new mount namespace): a program that reads
///   `/proc/<getpid()>` there reads another process.
pub struct Job {
    /// Declared first, so dropped first: a job dropped while running is ended before its
    /// pipes close.
    pub(crate) imp: imp::Job,
    /// The main process's stdin, if the `Command` asked for a pipe (Linux).
    #[cfg(target_os = "linux")]
    pub stdin: Option<std::process::ChildStdin>,
    /// The main process's stdout, if the `Command` asked for a pipe (Linux).
    #[cfg(target_os = "linux")]
    pub stdout: Option<std::process::ChildStdout>,
    /// The main process's stderr, if the `Command` asked for a pipe (Linux).
    #[cfg(target_os = "linux")]
    pub stderr: Option<std::process::ChildStderr>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id())
            .field("pid", &self.pid())
            .field("mechanism", &self.mechanism())
            .finish_non_exhaustive()
    }
}

impl Job {
    /// Starts `cmd` as a job under `opts`. Program, arguments, environment, working
    /// directory and stdio are whatever the caller set on `cmd`; on Linux, piped stdio
    /// shows up in `Job::stdin`, `Job::stdout` and `Job::stderr`.
    ///
    /// On Linux, `cmd` can be spawned again (corral's `pre_exec` hook does nothing outside
    /// this call). `pre_exec` hooks the caller installed on `cmd` run before corral's, so
    /// they run before the child is in the job: a process such a hook forks is not
    /// contained. In cgroup mode the child joins the job's fresh cgroup before it execs,
    /// and stays in the caller's process group (so a terminal's Ctrl+C reaches it as
    /// usual). In pgroup mode it gets a process group of its own under a supervisor process
    /// (see [`crate::Supervisor`]).
    ///
    /// On macOS the child starts in a process group of its own. On Windows corral sets the
    /// command's creation flags (`CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP`), replacing
    /// any set before.
    pub fn spawn(cmd: &mut Command, opts: &Options) -> Result<Job> {
        imp::Job::spawn(cmd, opts).map(Job::new)
    }

    /// Starts `cmd` as a job under `opts`, on the lean path the `corral` CLI takes: in
    /// cgroup mode the child is born in its cgroup (`clone3(CLONE_INTO_CGROUP)`, no copy
    /// of the caller's memory), and it inherits the caller's stdio. pgroup jobs go through
    /// [`Job::spawn`] unless [`crate::Supervisor::InProcess`] is asked for.
    ///
    /// This is the only way to [`Options::pid_namespace`]: in cgroup mode, or in pgroup
    /// mode with [`crate::Supervisor::InProcess`], called from the main thread.
    #[cfg(target_os = "linux")]
    pub fn spawn_command(cmd: &JobCommand, opts: &Options) -> Result<Job> {
        imp::Job::spawn_command(cmd, opts).map(Job::new)
    }

    #[cfg(target_os = "linux")]
    fn new((imp, (stdin, stdout, stderr)): (imp::Job, imp::Stdio)) -> Job {
        Job {
            imp,
            stdin,
            stdout,
            stderr,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn new(imp: imp::Job) -> Job {
        Job { imp }
    }

    /// The job's id (on Linux, the name of its cgroup leaf in cgroup mode).
    pub fn id(&self) -> &str {
        self.imp.id()
    }

    /// The mechanism actually in use.
    pub fn mechanism(&self) -> Mechanism {
        self.imp.mechanism()
    }

    /// The main process's PID (never a supervisor's).
    pub fn pid(&self) -> u32 {
        self.imp.pid()
    }

    /// Returns the report if the job is over, `None` if not; never blocks. Each call moves
    /// the job on as far as it can go without waiting: it notices the main process's exit,
    /// applies the timeout and the leftovers policy, and runs the stop ladder as far as its
    /// deadlines have passed (so a job stopping its leftovers needs calls until the grace
    /// is over). On Windows a stop that the timeout or the leftovers policy starts runs to
    /// its end within the call.
    pub fn try_wait(&mut self) -> Result<Option<Report>> {
        self.imp.try_wait()
    }

    /// Waits until the job is over (the main process exited and the leftovers policy has
    /// been applied, or the timeout stopped it), then cleans up and reports.
    pub fn wait(&mut self) -> Result<Report> {
        self.imp.wait()
    }

    /// Like [`Job::wait`], for at most `timeout`; `None` if the job is not over by then (it
    /// goes on, and a later call picks up where this one stopped).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Report>> {
        self.imp.wait_timeout(timeout)
    }

    /// Stops the job now with the full sequence (polite signal, SIGCONT, grace, SIGKILL; on
    /// Windows Ctrl+Break and `WM_CLOSE`, grace, `TerminateJobObject`) and waits until it
    /// is over.
    pub fn stop(&mut self) -> Result<Report> {
        self.imp.stop()
    }

    /// Kills every process of the job at once (SIGKILL; on Windows `TerminateJobObject`)
    /// and waits until it is over.
    pub fn kill(&mut self) -> Result<Report> {
        self.imp.kill()
    }
}

/// What only Linux offers.
#[cfg(target_os = "linux")]
impl Job {
    /// The job's name ([`Options::name`]).
    pub fn name(&self) -> Option<&str> {
        self.imp.name()
    }

    /// Why the job is not in the job registry, when [`Options::register`] asked for it and
    /// the record could not be written (the job runs all the same).
    pub fn not_registered(&self) -> Option<&str> {
        self.imp.not_registered()
    }

    /// The job's cgroup, in cgroup mode.
    pub fn cgroup(&self) -> Option<&std::path::Path> {
        self.imp.cgroup()
    }

    /// The PIDs of the job's live processes right now (empty once the job is over).
    pub fn members(&self) -> Result<Vec<u32>> {
        self.imp.members()
    }

    /// Sends `sig` to every process of the job now (through pidfds; a PID reused by a
    /// process outside the job is never signalled). Returns how many it reached.
    pub fn signal(&self, sig: Signal) -> Result<usize> {
        self.imp.signal(sig)
    }

    /// The report, once the job is over.
    pub fn report(&self) -> Option<&Report> {
        self.imp.report()
    }

    /// Like [`Job::wait`], also watching `signals`: a signal received starts the stop
    /// sequence with that signal as the polite one; a second SIGINT or SIGTERM, 100 ms or
    /// more after the first, cuts the grace short (one that comes sooner is the same stop
    /// delivered twice, as service managers do).
    pub fn run(&mut self, signals: Option<&mut dyn SignalSource>) -> Result<Report> {
        self.imp.run(signals)
    }

    /// Waits like [`Job::wait`] while collecting the piped stdout and stderr (closing stdin
    /// first). Returns once the job is over, with what was read by then: a process outside
    /// the job that still holds the pipe (one it was passed to, or a detached one) does not
    /// make it hang.
    pub fn wait_with_output(self) -> Result<Output> {
        let Job {
            imp,
            stdin,
            stdout,
            stderr,
        } = self;
        drop(stdin);
        imp.wait_with_output(stdout, stderr)
    }

    /// Leaves the job running and gives up control of it: nothing is stopped, the cgroup is
    /// not removed, and the main process is not reaped. The job leaves the job registry (its
    /// record and control socket are removed): it is no longer corral's to stop or sweep.
    ///
    /// # Caveats
    /// The main process is a child of the calling process: when it exits it stays a zombie
    /// until the caller reaps it (by PID) or exits, as with a dropped
    /// `std::process::Child`. Under a supervisor, the supervisor is told to let the job be;
    /// it reaps the job's processes and exits once the job is empty, and it is then the
    /// zombie child of the caller in the same way.
    pub fn detach(self) -> Detached {
        self.imp.detach()
    }
}

#[cfg(test)]
mod tests {
    /// Handles move between threads and can be shared (checked at compile time).
    #[test]
    fn handles_are_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<super::Job>();
        is::<crate::Report>();
        is::<crate::Error>();
        #[cfg(target_os = "linux")]
        {
            is::<crate::JobCommand>();
            is::<crate::Output>();
            is::<crate::Detached>();
        }
    }
}
