//! Waiting for something to become true: a probe polled against a deadline.
//!
//! The tests wait on events where there is one to wait on (a pidfd, `cgroup.events`, a
//! pipe's EOF). Where there is none (a file a program writes, `/proc`, a listing), they poll
//! with [`poll_until`]: it never proves anything by sleeping, and a wait that times out
//! names what it waited for and what it saw last.

use std::fmt;
use std::time::{Duration, Instant};

/// How long a poll may take: a deadline ([`Instant`]) or a span from now ([`Duration`]).
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// Give up at this instant.
    At(Instant),
    /// Give up this long after the first probe.
    Within(Duration),
}

impl From<Instant> for Until {
    fn from(at: Instant) -> Until {
        Until::At(at)
    }
}

impl From<Duration> for Until {
    fn from(within: Duration) -> Until {
        Until::Within(within)
    }
}

/// What a probe returns: done (with a value), or not yet (with what it saw).
///
/// `bool` (true is done), `Option<T>` (`Some` is done) and `Result<T, E>` (`Ok` is done;
/// the last `Err` is shown if the wait fails).
pub trait Probe {
    /// What the wait returns once the probe is done.
    type Value;
    /// What the probe saw instead, shown when the wait times out.
    type Seen: fmt::Display;
    /// The value, or what was seen instead.
    fn into_result(self) -> Result<Self::Value, Self::Seen>;
}

/// A probe that saw nothing worth showing (a `false`, a `None`).
#[derive(Debug)]
pub struct NotYet;

impl fmt::Display for NotYet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("still not the case")
    }
}

impl Probe for bool {
    type Value = ();
    type Seen = NotYet;
    fn into_result(self) -> Result<(), NotYet> {
        if self {
            Ok(())
        } else {
            Err(NotYet)
        }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    type Seen = NotYet;
    fn into_result(self) -> Result<T, NotYet> {
        self.ok_or(NotYet)
    }
}

impl<T, E: fmt::Display> Probe for Result<T, E> {
    type Value = T;
    type Seen = E;
    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// What a probe saw, described only if the wait fails: `Err(Described(|| format!(..)))`
/// reads `/proc` or a file for the message once, not at every probe.
pub struct Described<F>(pub F);

impl<F: Fn() -> String> fmt::Display for Described<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// The first and the longest pause between two probes.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(20);

/// Calls `probe` until it is done and returns its value; panics once `until` has passed,
/// naming `what` it waited for and what the last probe saw. The probe runs at least once,
/// and once more at the deadline; the pauses between probes grow from 1 ms to 20 ms.
///
/// ```
/// # use std::time::Duration;
/// let mut n = 0;
/// let seen = corral_testkit::poll_until("the third probe", Duration::from_secs(5), || {
///     n += 1;
///     if n == 3 { Ok(n) } else { Err(format!("probe {n}")) }
/// });
/// assert_eq!(seen, 3);
/// ```
#[track_caller]
pub fn poll_until<P: Probe>(
    what: impl fmt::Display,
    until: impl Into<Until>,
    probe: impl FnMut() -> P,
) -> P::Value {
    poll_until_every(what, until, LONGEST_PAUSE, probe)
}

/// [`poll_until`] for a probe that costs something (it runs a program, or asks a daemon):
/// the pauses between probes grow to `longest_pause` instead of 20 ms.
#[track_caller]
pub fn poll_until_every<P: Probe>(
    what: impl fmt::Display,
    until: impl Into<Until>,
    longest_pause: Duration,
    mut probe: impl FnMut() -> P,
) -> P::Value {
    let start = Instant::now();
    let deadline = match until.into() {
        Until::At(at) => at,
        Until::Within(within) => start + within,
    };
    let mut pause = FIRST_PAUSE.min(longest_pause);
    loop {
        let seen = match probe().into_result() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "{what}: not after {:?} (last seen: {seen})",
                now.duration_since(start)
            );
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(longest_pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_is_done_at_once_returns_its_value() {
        assert_eq!(poll_until("now", Duration::ZERO, || Some(7)), 7);
        poll_until("true", Instant::now(), || true);
    }

    #[test]
    fn it_polls_until_the_probe_is_done() {
        let mut calls = 0;
        poll_until("the fifth call", Duration::from_secs(10), || {
            calls += 1;
            calls == 5
        });
        assert_eq!(calls, 5);
    }

    #[test]
    fn a_timeout_names_what_and_the_last_observation() {
        let mut calls = 0;
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until("the impossible", Duration::from_millis(30), || {
                calls += 1;
                Err::<(), _>(format!("seen {calls}"))
            })
        }))
        .expect_err("the wait must time out");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(
            message.starts_with("the impossible: not after "),
            "{message}"
        );
        assert!(
            message.ends_with(&format!("(last seen: seen {calls})")),
            "{message}"
        );
        assert!(
            calls >= 2,
            "probed once before and once at the deadline: {calls}"
        );
    }

    #[test]
    fn a_deadline_in_the_past_still_probes_once() {
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let panic = std::panic::catch_unwind(|| poll_until("late", past, || None::<()>))
            .expect_err("the wait must time out");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(message.contains("still not the case"), "{message}");
    }

    #[test]
    fn a_described_observation_is_described_once() {
        let described = std::cell::Cell::new(0);
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll_until("never", Duration::from_millis(10), || {
                Err::<(), _>(Described(|| {
                    described.set(described.get() + 1);
                    "the details".to_string()
                }))
            })
        }))
        .expect_err("the wait must time out");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(message.ends_with("(last seen: the details)"), "{message}");
        assert_eq!(described.get(), 1);
    }
}
