//! The job's exit status (the report's `exit_status`, the CLI's), once for every OS.
//!
//! The main process's own status (its code, or 128 + the signal that ended it, 125 when its
//! end was not seen), except: the OOM killer's SIGKILL is 137; a timeout is 124, or 137 when
//! the main process had to be killed (as coreutils `timeout`: scripts test for 137 after
//! `timeout -k`); a stop from outside (`corral kill`) is 128 + the signal asked for. The
//! last two only without `preserve_status`. Last, [`Leftovers::Fail`] turns a success that
//! left processes behind into [`crate::LEFTOVERS_FAILED`].

use crate::options::{leftovers_fail, Leftovers, Signal};
use crate::report::ExitInfo;

/// The status of a job that timed out (as coreutils `timeout`).
const TIMED_OUT: i32 = 124;
/// The status when the main process's end was not seen.
const UNSEEN: i32 = 125;

/// How the main process ended, as the OS said (signal numbers are the OS's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl ExitKind {
    /// The report's `exit`.
    pub(crate) fn info(self) -> ExitInfo {
        match self {
            ExitKind::Code(c) => ExitInfo {
                code: Some(c),
                signal: None,
            },
            ExitKind::Signal(s) => ExitInfo {
                code: None,
                signal: Some(s),
            },
        }
    }

    /// Whether SIGKILL ended it (9 on every Unix corral runs on).
    pub(crate) fn killed(self) -> bool {
        self == ExitKind::Signal(Signal::KILL.as_raw())
    }
}

/// What a job's exit status is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ending {
    /// How the main process ended; `None`: not seen.
    pub(crate) main: Option<ExitKind>,
    /// The OOM killer ended the main process.
    pub(crate) oom_killed: bool,
    /// The job's timeout ran out.
    pub(crate) timed_out: bool,
    /// Stopped from outside (`corral kill`) with this polite signal.
    pub(crate) external: Option<Signal>,
    /// `Options::preserve_status`: the main process's own status, whatever stopped it.
    pub(crate) preserve_status: bool,
    /// The leftovers policy, and whether leftovers were found.
    pub(crate) leftovers: Leftovers,
    pub(crate) left: bool,
}

impl Ending {
    /// The job's exit status.
    pub(crate) fn status(&self) -> i32 {
        let killed = 128 + Signal::KILL.as_raw();
        let status = if self.oom_killed {
            killed
        } else if self.timed_out && !self.preserve_status {
            if self.main.is_some_and(ExitKind::killed) {
                killed
            } else {
                TIMED_OUT
            }
        } else if let (Some(sig), false) = (self.external, self.preserve_status) {
            // The status of a process killed by the signal asked for, whatever the main
            // process made of it.
            128 + sig.as_raw()
        } else {
            match self.main {
                Some(ExitKind::Code(c)) => c,
                Some(ExitKind::Signal(s)) => 128 + s,
                None => UNSEEN,
            }
        };
        leftovers_fail(self.leftovers, status, self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(main: Option<ExitKind>) -> Ending {
        Ending {
            main,
            oom_killed: false,
            timed_out: false,
            external: None,
            preserve_status: false,
            leftovers: Leftovers::Kill,
            left: false,
        }
    }

    #[test]
    fn the_main_process_s_own_status_by_default() {
        assert_eq!(ending(Some(ExitKind::Code(3))).status(), 3);
        assert_eq!(ending(Some(ExitKind::Signal(15))).status(), 143);
        assert_eq!(ending(None).status(), 125);
    }

    #[test]
    fn a_timeout_is_124_or_137_when_the_main_process_was_killed() {
        let timed_out = |main, preserve_status| Ending {
            timed_out: true,
            preserve_status,
            ..ending(main)
        };
        assert_eq!(timed_out(Some(ExitKind::Signal(15)), false).status(), 124);
        assert_eq!(timed_out(Some(ExitKind::Code(0)), false).status(), 124);
        assert_eq!(timed_out(Some(ExitKind::Signal(9)), false).status(), 137);
        assert_eq!(timed_out(Some(ExitKind::Signal(9)), true).status(), 137);
        assert_eq!(timed_out(Some(ExitKind::Code(2)), true).status(), 2);
    }

    #[test]
    fn an_outside_stop_is_the_status_of_its_signal() {
        let external = |preserve_status| Ending {
            external: Some(Signal::TERM),
            preserve_status,
            ..ending(Some(ExitKind::Code(0)))
        };
        assert_eq!(external(false).status(), 143);
        assert_eq!(external(true).status(), 0);
    }

    #[test]
    fn the_oom_killer_s_kill_is_137_whatever_else() {
        let oom = Ending {
            oom_killed: true,
            timed_out: true,
            preserve_status: true,
            ..ending(Some(ExitKind::Signal(9)))
        };
        assert_eq!(oom.status(), 137);
    }

    #[test]
    fn leftovers_fail_turns_only_a_success_into_a_failure() {
        let fail = |main, left| Ending {
            leftovers: Leftovers::Fail,
            left,
            ..ending(Some(main))
        };
        assert_eq!(
            fail(ExitKind::Code(0), true).status(),
            crate::LEFTOVERS_FAILED
        );
        assert_eq!(fail(ExitKind::Code(0), false).status(), 0);
        assert_eq!(fail(ExitKind::Code(1), true).status(), 1);
    }
}
