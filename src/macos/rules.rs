//! The pure decisions of the macOS backend, kept apart so unit tests reach them without a
//! process: which options it can honour, and what a signal is called on macOS. (The exit
//! status of a job is `crate::exit_status`'s, the same on every OS.)

use crate::error::{Error, Result};
use crate::options::{MechanismRequest, Options, Signal, Supervisor};

/// `corral::Signal` numbers are Linux's. The macOS number of the signal with the same name,
/// or why it has none (Linux-only signals: STKFLT, PWR, the real-time ones).
pub(crate) fn darwin_signal(sig: Signal) -> Result<libc::c_int, String> {
    let name = sig.name();
    DARWIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("signal SIG{name} does not exist on macOS; use TERM, INT or HUP"))
}

/// Signal names and their macOS numbers (`<sys/signal.h>`).
const DARWIN: &[(&str, libc::c_int)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("FPE", 8),
    ("KILL", 9),
    ("BUS", 10),
    ("SEGV", 11),
    ("SYS", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("URG", 16),
    ("STOP", 17),
    ("TSTP", 18),
    ("CONT", 19),
    ("CHLD", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("IO", 23),
    ("POLL", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("USR1", 30),
    ("USR2", 31),
];

/// Refuses, with a one-line error, every option the macOS backend cannot honour. Returns
/// the polite signal in macOS's numbering.
pub(crate) fn check_options(opts: &Options) -> Result<libc::c_int> {
    if opts.mechanism == MechanismRequest::Cgroup {
        return Err(Error::NoCgroup {
            reason: "macOS has no cgroups".into(),
            fix: "use mechanism auto or pgroup".into(),
        });
    }
    if let Some((controller, file, _)) = opts.limits.files().into_iter().next() {
        return Err(Error::LimitUnavailable {
            file: file.into(),
            controller: controller.into(),
            reason: "macOS has no cgroups, so no limit applies to a whole job".into(),
            fix: "remove the limit".into(),
        });
    }
    if opts.cgroup_parent.is_some() {
        return Err(Error::InvalidOptions(
            "a cgroup parent means nothing on macOS (no cgroups); leave it unset".into(),
        ));
    }
    if opts.pid_namespace {
        return Err(Error::InvalidOptions(
            "PID namespaces exist only on Linux; run without pid_namespace".into(),
        ));
    }
    if let Supervisor::Binary(path) = &opts.supervisor {
        return Err(Error::InvalidOptions(format!(
            "a supervisor binary ({}) is not used on macOS (no subreaper: corral watches the \
             job in-process); use Supervisor::Auto",
            path.display()
        )));
    }
    if opts.helper.is_some() {
        return Err(Error::InvalidOptions(
            "corral-helper jobs exist only on Linux".into(),
        ));
    }
    darwin_signal(opts.signal).map_err(Error::InvalidOptions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{LimitValue, Limits};

    #[test]
    fn signals_take_their_macos_numbers() {
        for (name, darwin) in [
            ("TERM", libc::SIGTERM),
            ("INT", libc::SIGINT),
            ("HUP", libc::SIGHUP),
            ("KILL", libc::SIGKILL),
            ("USR1", libc::SIGUSR1),
            ("USR2", libc::SIGUSR2),
            ("CONT", libc::SIGCONT),
            ("STOP", libc::SIGSTOP),
            ("CHLD", libc::SIGCHLD),
            ("BUS", libc::SIGBUS),
            ("SYS", libc::SIGSYS),
            ("URG", libc::SIGURG),
            ("IO", libc::SIGIO),
            ("TSTP", libc::SIGTSTP),
        ] {
            let sig: Signal = name.parse().unwrap();
            assert_eq!(darwin_signal(sig), Ok(darwin), "SIG{name}");
        }
        for linux_only in ["STKFLT", "PWR", "RTMIN+1"] {
            let sig: Signal = linux_only.parse().unwrap();
            let err = darwin_signal(sig).unwrap_err();
            assert!(err.contains("does not exist on macOS"), "{err}");
        }
    }

    #[test]
    fn options_it_cannot_honour_are_refused() {
        assert_eq!(check_options(&Options::default()).unwrap(), libc::SIGTERM);
        let cases = [
            Options {
                mechanism: MechanismRequest::Cgroup,
                ..Options::default()
            },
            Options {
                limits: Limits {
                    memory_max: Some(LimitValue::Value(1 << 20)),
                    ..Limits::default()
                },
                ..Options::default()
            },
            Options {
                cgroup_parent: Some("/sys/fs/cgroup/x".into()),
                ..Options::default()
            },
            Options {
                pid_namespace: true,
                ..Options::default()
            },
            Options {
                supervisor: Supervisor::Binary("/usr/local/bin/corral".into()),
                ..Options::default()
            },
            Options {
                signal: "PWR".parse().unwrap(),
                ..Options::default()
            },
        ];
        for opts in cases {
            let err = check_options(&opts).unwrap_err();
            assert!(err.is_usage(), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let limits = Options {
            limits: Limits {
                pids_max: Some(LimitValue::Value(10)),
                ..Limits::default()
            },
            ..Options::default()
        };
        assert!(matches!(
            check_options(&limits),
            Err(Error::LimitUnavailable { file, .. }) if file == "pids.max"
        ));
        let pgroup = Options {
            mechanism: MechanismRequest::Pgroup,
            supervisor: Supervisor::InProcess,
            ..Options::default()
        };
        assert!(check_options(&pgroup).is_ok());
    }
}
