//! The supervisor process of a pgroup job started from a `std::process::Command`.
//!
//! The pgroup mechanism needs a child subreaper above the job, so that orphans of the job
//! stay descendants of someone who watches them. A library must not make its host process
//! a subreaper (every orphan of every other child would then land on the host), so
//! [`Job::spawn`](crate::Job::spawn) runs each pgroup job under its own supervisor `S`:
//!
//! ```text
//! host --std fork--> C --raw fork--> M   (setpgid(0, 0), then std execs the user's program)
//!                    |
//!                    +-- execve("corral", ["corral", "__supervise", "<M>"], []) = S
//! ```
//!
//! `C` is std's forked child; our `pre_exec` hook ([`arm`]) runs in it. It makes itself a
//! child subreaper (the attribute survives `execve`, and is not inherited across `fork`),
//! forks the main process `M` with a bare `clone` system call (no `pthread_atfork`
//! handlers, which could deadlock in the child of a multi-threaded host), starts a session
//! of its own (so a SIGKILL to the host's process group does not reach it), sends
//! `main <pid>` to the host, puts `/dev/null` on its stdio (the supervisor never holds the
//! user's pipes), puts the control socket at descriptor 3, and execs `corral __supervise`.
//! `M` returns from the hook, so std goes on to exec the user's program with the user's
//! stdio, environment and directory, and reports an exec failure as usual.
//!
//! `S` ([`main`]) ignores the terminal's and the job's polite signals, reaps every child
//! (`waitid(P_ALL)` on each SIGCHLD from a signalfd), reports how `M` ended, and exits
//! when it has no child left: the job is empty. If the host closes the control socket
//! without saying `detach` first (it dropped the job, or died), `S` SIGKILLs every
//! descendant through pidfds until none is left.
//!
//! # Protocol
//! One message per `SOCK_SEQPACKET` packet, ASCII, on a socketpair created by the host:
//!
//! | from | message | meaning |
//! |---|---|---|
//! | C | `main <pid>` | the main process (always the first message) |
//! | C | `exec-failed <errno>` | `S` could not be set up or exec'd; `M` was killed, `C` exits 127 |
//! | S | `exit code <n>` / `exit signal <n>` | how the main process ended; ` last` appended when `S` had no other child left as it reaped it (a `done` follows) |
//! | S | `done <n>` | no child left, `n` orphans reaped; `S` exits 0 right after |
//! | host | `detach` | never kill: keep reaping until empty, then exit |
//!
//! End of file from the host without `detach`: kill everything, reap, exit. After
//! `detach`, end of file: `S` closes its end and goes on reaping until the job is empty.
//!
//! # Signals
//! `C` blocks every signal before the fork (`M` restores std's mask), so no handler of the
//! host runs in it and no Ctrl+C kills it; it sets the ignored ones to `SIG_IGN`, which
//! survives `execve`. `S` starts with everything blocked and unblocks all but SIGCHLD.
//!
//! # Limits
//! `S` is the host's child: after `detach` it is a zombie once it exits, until the host
//! reaps it or exits. Should the exec of `S` fail, `C` kills `M` at once, but a process
//! `M` forked meanwhile is orphaned to the host's own reaper.
//!
//! # Files
//! - `binary.rs`: finding the `corral` executable supervisors are run from;
//! - `host.rs`: the host's side: arming a `Command`, the supervised job's events;
//! - `hook.rs`: the `pre_exec` hook, between std's fork and exec (async-signal-safe only);
//! - `wire.rs`: the messages on the control socket;
//! - `process.rs`: the supervisor process, `corral __supervise`.

use std::os::fd::RawFd;
use std::time::Duration;

mod binary;
mod hook;
mod host;
mod process;
mod wire;

/// `argv[1]` that turns a `corral` executable into a supervisor.
pub(crate) const ARG: &str = "__supervise";
/// Names the `corral` executable supervisors are run from.
pub(crate) const ENV: &str = "CORRAL_SUPERVISOR";
/// The executable's name, looked for next to the current executable and in `PATH`.
const BINARY_NAME: &str = "corral";
/// The descriptor the supervisor finds its control socket at.
const CONTROL_FD: RawFd = 3;
/// Exit status of `C` when the supervisor could not be exec'd.
const EXIT_EXEC_FAILED: i32 = 127;
/// Exit status of `corral __supervise` run without its socket or a main PID.
const EXIT_USAGE: i32 = 2;
/// Exit status of a supervisor whose main process was never its child.
const EXIT_NO_MAIN: i32 = 3;
/// How long [`Armed::finish`] waits for `main <pid>`; it is normally there already.
const MAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Signals the supervisor ignores: the terminal's (Ctrl+C, Ctrl+\, Ctrl+Z, hang-up,
/// background I/O) and the polite signal a stop sends to the job.
const IGNORED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGPIPE,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

pub(crate) use binary::find_binary;
pub(crate) use host::{arm, Supervised, SupervisorEvent};
pub(crate) use process::main;

#[cfg(test)]
mod tests;
