//! What travels over a job's control socket (the job registry's, `docs/registry.md`): the
//! request `corral kill` sends, and the job's answer. Both ends are corral on one machine,
//! maybe of two versions, so the words on the wire stay the ones they have always been:
//! requests `stop <signal number> <grace in ms>` and `kill`; answers `ok`, `denied`, `over`
//! and `bad request`. Encoding and decoding live here only; both ends use them.
#![cfg_attr(not(feature = "serde"), allow(dead_code))]

use std::time::Duration;

use crate::options::Signal;

/// What a requester asks of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Run the stop ladder: `signal` to every member, up to `grace` for the job to empty,
    /// then the kill. [`Request::new`] makes none with SIGKILL or a zero grace (that is a
    /// [`Request::Kill`]); the ladder kills at once on such a one all the same.
    Stop {
        /// The polite signal.
        signal: Signal,
        /// How long the job has to end after it.
        grace: Duration,
    },
    /// Kill at once; during a stop's grace, cuts it short.
    Kill,
}

impl Request {
    /// A stop with `signal` and `grace`: with SIGKILL or no grace, a kill.
    pub(crate) fn new(signal: Signal, grace: Duration) -> Request {
        if signal == Signal::KILL || grace.is_zero() {
            Request::Kill
        } else {
            Request::Stop { signal, grace }
        }
    }

    /// The polite signal and grace the stop ladder runs with (a kill: SIGKILL, no grace).
    pub(crate) fn ladder(self) -> (Signal, Duration) {
        match self {
            Request::Stop { signal, grace } => (signal, grace),
            Request::Kill => (Signal::KILL, Duration::ZERO),
        }
    }

    /// The request's text on the wire.
    pub(crate) fn encode(self) -> String {
        match self {
            Request::Stop { signal, grace } => {
                format!("stop {} {}", signal.as_raw(), grace.as_millis())
            }
            Request::Kill => "kill".to_string(),
        }
    }

    /// The request in `text`; `None` for anything [`Request::encode`] does not make.
    pub(crate) fn decode(text: &str) -> Option<Request> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words[..] {
            ["kill"] => Some(Request::Kill),
            ["stop", signal, grace] => {
                let signal = Signal::from_raw(signal.parse().ok()?)?;
                let grace = Duration::from_millis(grace.parse().ok()?);
                Some(Request::Stop { signal, grace })
            }
            _ => None,
        }
    }
}

/// What the job answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The stop runs (or ran); the connection stays open until the job is over.
    Ok,
    /// The requester is neither the job's owner nor root.
    Denied,
    /// The job was over already. No job sends it now (a job that is over no longer
    /// listens); a requester still takes it, as it always has.
    #[allow(dead_code)]
    Over,
    /// The request could not be decoded.
    BadRequest,
}

impl Answer {
    /// The answer's text on the wire.
    pub(crate) fn encode(self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::Denied => "denied",
            Answer::Over => "over",
            Answer::BadRequest => "bad request",
        }
    }

    /// The answer in `text` (surrounding blanks aside); `None` for an unknown one.
    pub(crate) fn decode(text: &str) -> Option<Answer> {
        [Answer::Ok, Answer::Denied, Answer::Over, Answer::BadRequest]
            .into_iter()
            .find(|a| a.encode() == text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_survive_the_wire() {
        for request in [
            Request::Kill,
            Request::Stop {
                signal: Signal::TERM,
                grace: Duration::from_millis(1500),
            },
            Request::Stop {
                signal: Signal::from_raw(64).unwrap(),
                grace: Duration::from_millis(1),
            },
        ] {
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
    }

    #[test]
    fn the_wire_format_is_the_one_older_corrals_speak() {
        assert_eq!(Request::Kill.encode(), "kill");
        let stop = Request::new(Signal::TERM, Duration::from_millis(1500));
        assert_eq!(stop.encode(), "stop 15 1500");
        assert_eq!(Request::decode("stop 15 1500\n"), Some(stop));
        assert_eq!(stop.ladder(), (Signal::TERM, Duration::from_millis(1500)));
    }

    #[test]
    fn a_kill_signal_or_no_grace_is_a_kill() {
        let grace = Duration::from_secs(5);
        assert_eq!(Request::new(Signal::KILL, grace), Request::Kill);
        assert_eq!(Request::new(Signal::TERM, Duration::ZERO), Request::Kill);
        assert_eq!(Request::Kill.ladder(), (Signal::KILL, Duration::ZERO));
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            "",
            "reboot",
            "KILL",
            "kill now",
            "stop",
            "stop 15",
            "stop 0 1",
            "stop 65 1",
            "stop -15 1",
            "stop TERM 1500",
            "stop 15 -1",
            "stop 15 1.5",
            "stop 15 99999999999999999999999",
            "stop 15 1500 more",
        ] {
            assert_eq!(Request::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_survive_the_wire() {
        for answer in [Answer::Ok, Answer::Denied, Answer::Over, Answer::BadRequest] {
            assert_eq!(Answer::decode(answer.encode()), Some(answer));
        }
        assert_eq!(Answer::decode(" ok\n"), Some(Answer::Ok));
        assert_eq!(Answer::decode("okay"), None);
        assert_eq!(Answer::decode(""), None);
    }
}
