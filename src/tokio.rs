//! Waiting for, stopping and collecting the output of a [`Job`] on a tokio runtime
//! (feature `tokio`): [`Job::wait_async`], [`Job::stop_async`], [`Job::kill_async`] and
//! [`Job::wait_with_output_async`].
//!
//! The async driver is the blocking one (`Job::drive`) with `poll(2)` swapped for the
//! reactor. Each turn calls the state machine (`Job::advance`), which does all that can be
//! done without waiting and names what to wait for: descriptors the job owns (pidfds and
//! the supervisor's socket, readable; `cgroup.events`, which the kernel signals with
//! `POLLPRI`, so registered with [`Interest::PRIORITY`]) and a deadline. The turn registers
//! those descriptors with the runtime's reactor ([`AsyncFd`] over a [`BorrowedFd`]), waits
//! until one is ready or `tokio::time::sleep_until` the deadline, and drops the
//! registrations before the next `advance`. So no thread is started per job and no call
//! blocks on a pipe, a process or a timer; the stop ladder exists once, in the state machine.
//!
//! Registrations live for one turn only. The [`BorrowedFd`]s borrow the job, so the borrow
//! checker will not let `advance` (which closes descriptors when the job ends) or the job's
//! `Drop` run while any is registered. A fresh registration (`epoll_ctl(ADD)`) reports the
//! state the descriptor is in, so an event between `advance` and the registration is not
//! lost: an exited process's pidfd stays readable, and `cgroup.events` keeps signalling
//! `POLLPRI` until it is read again.
//!
//! In-process pgroup jobs ([`crate::Supervisor::InProcess`]) wait for a child of this
//! process to exit, and no descriptor says that (`SIGCHLD` would need a signal handler, which
//! the library never installs): the driver looks again every 10 ms.
//!
//! # Why methods on [`Job`], not a wrapper type
//! The job is the state, and the sync and async methods are two drivers of one state
//! machine: a wrapper would have to repeat every accessor ([`Job::members`],
//! [`Job::signal`], [`Job::report`], ...) and hand the job back for the sync ones. Since the
//! futures are cancel-safe, the usual shape just works:
//! `select! { r = job.wait_async() => r, _ = ctrl_c() => job.stop_async().await }`.
//!
//! # Cancellation
//! Dropping one of these futures before it completes leaves the job consistent: the job
//! only changes inside `advance`, never across an await, and the registrations go with the
//! future. The next call resumes where it stopped, so `tokio::time::timeout(d,
//! job.wait_async())` is the async [`Job::wait_timeout`]. A [`Job::stop_async`] or
//! [`Job::kill_async`] dropped after its first poll has started the stop; a later call
//! finishes it. [`Job::wait_with_output_async`] owns the job: dropping it drops the job, which
//! kills everything in it.
//!
//! # Runtime requirements
//! Any runtime flavour, with the IO and time drivers enabled (`Builder::enable_all`);
//! without them these futures panic, as tokio's own types do.
//!
//! # What still blocks
//! A turn makes only system calls that do not wait (reading `/proc` and cgroup files,
//! `waitid(WNOHANG)`, signals). Three things outside the common path do wait: dropping a job
//! that has not ended (SIGKILL, then a blocking wait until it is gone: milliseconds), the
//! kill on kernels without `cgroup.kill` (Linux < 5.14: a freezer loop), and removing a
//! cgroup the kernel still reports busy (a retry of at most two seconds, normally none).
//! Serving an outside stop request (the job registry's control socket) reads the request
//! the requester sent with its connection; one that connected and sent nothing holds the
//! turn for at most 100 ms. [`Job::spawn`] forks and execs synchronously, as `tokio::process::Command::spawn` does.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use rustix::event::PollFlags;

use crate::error::{Error, Result};
use crate::linux::job::{self as imp, earliest, Pipe, Progress, Wants};
use crate::{Job, Output, Report, Signal};

/// In-process pgroup: how often to look for exited children (no descriptor signals it).
const CHILD_TICK: Duration = Duration::from_millis(10);

impl Job {
    /// Waits until the job is over, like [`Job::wait`], without blocking the runtime: the
    /// timeout and the leftovers policy apply, then the job is cleaned up and reported.
    ///
    /// Cancel-safe: dropped before it completes, the job goes on, and the next call resumes
    /// (see [the module docs](crate::tokio#cancellation)).
    ///
    /// # Panics
    /// Outside a tokio runtime, or on one without the IO and time drivers.
    pub async fn wait_async(&mut self) -> Result<Report> {
        drive(&mut self.imp, &mut []).await?;
        Ok(finished(&self.imp))
    }

    /// Stops the job now with the full sequence (polite signal, SIGCONT, grace, SIGKILL),
    /// like [`Job::stop`], and waits until it is over without blocking the runtime.
    ///
    /// The stop starts at the first poll; dropped after that, the stop goes on and a later
    /// call finishes it.
    ///
    /// # Panics
    /// As [`Job::wait_async`].
    pub async fn stop_async(&mut self) -> Result<Report> {
        self.imp.request_stop(self.imp.stop_signal(), false)?;
        self.wait_async().await
    }

    /// Kills every process of the job at once (SIGKILL), like [`Job::kill`], and waits
    /// until it is over without blocking the runtime.
    ///
    /// # Panics
    /// As [`Job::wait_async`].
    pub async fn kill_async(&mut self) -> Result<Report> {
        self.imp.request_stop(Signal::KILL, true)?;
        self.wait_async().await
    }

    /// Waits like [`Job::wait_async`] while collecting the piped stdout and stderr through
    /// the reactor (closing stdin first), like [`Job::wait_with_output`]. Returns once the
    /// job is over with what was readable by then: a process outside the job that still
    /// holds the pipe does not make it wait for end-of-file.
    ///
    /// Dropping the future drops the job, which kills everything in it.
    ///
    /// # Panics
    /// As [`Job::wait_async`].
    pub async fn wait_with_output_async(self) -> Result<Output> {
        let Job {
            mut imp,
            stdin,
            stdout,
            stderr,
        } = self;
        drop(stdin);
        let mut pipes = [
            stdout.map(|p| Pipe::new(p.into())),
            stderr.map(|p| Pipe::new(p.into())),
        ];
        for p in pipes.iter().flatten() {
            p.set_nonblocking()?;
        }
        drive(&mut imp, &mut pipes).await?;
        let [out, err] = pipes;
        Ok(Output {
            report: finished(&imp),
            stdout: out.map(|p| p.buf).unwrap_or_default(),
            stderr: err.map(|p| p.buf).unwrap_or_default(),
        })
    }
}

/// The async `Job::drive`: turns of the state machine until the job is over, reading
/// `pipes` whenever anything happens.
async fn drive(job: &mut imp::Job, pipes: &mut [Option<Pipe>]) -> Result<()> {
    loop {
        let wants = match job.advance(Vec::new())? {
            Progress::Done => {
                for p in pipes.iter_mut().flatten() {
                    p.drain();
                }
                return Ok(());
            }
            Progress::Pending(wants) => wants,
        };
        let deadline = match wants.children_of {
            Some(_) => earliest(wants.deadline, Some(Instant::now() + CHILD_TICK)),
            None => wants.deadline,
        };
        ready_or_deadline(job, &wants, pipes, deadline).await?;
        for p in pipes.iter_mut().flatten() {
            p.drain();
        }
    }
}

/// Waits until one of the descriptors `wants` names, or a pipe still open, is ready, or
/// `deadline` passes. The descriptors are registered with the reactor for this call only.
async fn ready_or_deadline<'j>(
    _job: &'j imp::Job,
    wants: &Wants,
    pipes: &'j [Option<Pipe>],
    deadline: Option<Instant>,
) -> Result<()> {
    let mut regs: Vec<(AsyncFd<BorrowedFd<'j>>, Interest)> = Vec::new();
    for &(raw, flags) in &wants.fds {
        // SAFETY: `wants` names descriptors the job owns and keeps open, with the same
        // numbers, while it is pending. The borrow lasts as long as `_job` is borrowed, and
        // only `advance` (which needs `&mut Job`) or dropping the job closes them.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let interest = if flags.contains(PollFlags::PRI) {
            Interest::PRIORITY
        } else {
            Interest::READABLE
        };
        regs.push((register(fd, interest)?, interest));
    }
    for p in pipes.iter().flatten().filter(|p| !p.eof) {
        regs.push((
            register(p.fd.as_fd(), Interest::READABLE)?,
            Interest::READABLE,
        ));
    }
    let mut waits: Vec<Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>> = regs
        .iter()
        .map(|(fd, interest)| {
            let interest = *interest;
            Box::pin(async move { fd.ready(interest).await.map(drop) }) as Pin<Box<_>>
        })
        .collect();
    let mut sleep = pin!(deadline.map(|d| ::tokio::time::sleep_until(d.into())));
    poll_fn(|cx| {
        for wait in waits.iter_mut() {
            if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
        }
        if let Some(s) = sleep.as_mut().as_pin_mut() {
            if s.poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    })
    .await
    .map_err(|e| Error::sys("waiting for a job's descriptors on the tokio reactor", e))
}

/// Registers `fd` with the current runtime's reactor for `interest`.
fn register(fd: BorrowedFd<'_>, interest: Interest) -> Result<AsyncFd<BorrowedFd<'_>>> {
    // SAFETY: a `BorrowedFd` is open, and keeps its number, for as long as it lives; the
    // `AsyncFd` owns it and cannot outlive the borrow.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| {
        Error::sys(
            "epoll_ctl(EPOLL_CTL_ADD) of a job's descriptor on the tokio reactor",
            io::Error::from(e),
        )
    })
}

fn finished(job: &imp::Job) -> Report {
    job.report().cloned().expect("a finished job has a report")
}

#[cfg(test)]
mod tests {
    /// The futures can be handed to `tokio::spawn` on a multi-thread runtime.
    #[test]
    fn futures_are_send() {
        fn is_send<T: Send>(_: &T) {}
        fn check(job: &mut crate::Job, owned: crate::Job) {
            is_send(&job.wait_async());
            is_send(&job.stop_async());
            is_send(&job.kill_async());
            is_send(&owned.wait_with_output_async());
        }
        let _ = check;
    }
}
