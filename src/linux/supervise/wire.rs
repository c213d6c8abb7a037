//! The messages on the control socket (see the table in `supervise`).

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::MAIN_DEADLINE;
use crate::linux::channel::{self, Received, Take};
use crate::linux::pidfd::{ExitKind, Pid};

/// One packet of the protocol (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Message {
    Main(Pid),
    ExecFailed(i32),
    /// How the main process ended, and whether it was the supervisor's last child.
    Exit(ExitKind, bool),
    Done(usize),
    Detach,
    /// Anything else, as received.
    Unknown(String),
}

impl Message {
    fn parse(bytes: &[u8]) -> Message {
        let text = String::from_utf8_lossy(bytes);
        let words: Vec<&str> = text.split(' ').collect();
        let parsed = match words.as_slice() {
            ["main", pid] => parse_pid(pid).map(Message::Main),
            ["exec-failed", errno] => errno.parse().ok().map(Message::ExecFailed),
            ["exit", "code", n, rest @ ..] if last(rest).is_some() => n
                .parse()
                .ok()
                .map(|n| Message::Exit(ExitKind::Code(n), last(rest) == Some(true))),
            ["exit", "signal", n, rest @ ..] if last(rest).is_some() => n
                .parse()
                .ok()
                .map(|n| Message::Exit(ExitKind::Signal(n), last(rest) == Some(true))),
            ["done", n] => n.parse().ok().map(Message::Done),
            ["detach"] => Some(Message::Detach),
            _ => None,
        };
        parsed.unwrap_or_else(|| Message::Unknown(text.into_owned()))
    }
}

/// The optional `last` word of an `exit` message: `Some(flag)`, or `None` when the words
/// are something else.
fn last(rest: &[&str]) -> Option<bool> {
    match rest {
        [] => Some(false),
        ["last"] => Some(true),
        _ => None,
    }
}

/// A PID in decimal (`Pid::from_raw` asserts on negative numbers).
pub(super) fn parse_pid(text: &str) -> Option<Pid> {
    text.parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .and_then(Pid::from_raw)
}

/// Sends one packet without blocking.
pub(super) fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    channel::send(fd, msg, None)
}

/// Receives one packet: `None` at end of file (or a reset connection, which is the same
/// to us: the peer is gone). Without a deadline, `WouldBlock` when nothing is pending.
pub(super) fn recv_message(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> io::Result<Option<Message>> {
    let take = deadline.map_or(Take::Now, Take::By);
    recv_with(fd, take).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no message within {MAIN_DEADLINE:?}"),
            )
        } else {
            e
        }
    })
}

/// The next packet, left in the socket; `Ok(None)` if none is pending or at end of file.
pub(super) fn peek_message(fd: BorrowedFd<'_>) -> io::Result<Option<Message>> {
    match recv_with(fd, Take::Peek) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        other => other,
    }
}

fn recv_with(fd: BorrowedFd<'_>, take: Take) -> io::Result<Option<Message>> {
    let mut buf = Vec::with_capacity(64);
    Ok(match channel::recv(fd, &mut buf, take)? {
        Received::Message => Some(Message::parse(&buf)),
        Received::Closed => None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::hook::put_message;
    use super::*;
    use crate::linux::postfork::put_decimal;

    #[test]
    fn messages_round_trip() {
        let mut buf = [0u8; 32];
        let n = put_message(&mut buf, b"main ", 4_000_000);
        assert_eq!(&buf[..n], b"main 4000000");
        assert_eq!(
            Message::parse(&buf[..n]),
            Message::Main(Pid::from_raw(4_000_000).unwrap())
        );
        let n = put_message(&mut buf, b"exec-failed ", 0);
        assert_eq!(Message::parse(&buf[..n]), Message::ExecFailed(0));
        assert_eq!(
            Message::parse(b"exit code 3"),
            Message::Exit(ExitKind::Code(3), false)
        );
        assert_eq!(
            Message::parse(b"exit signal 9"),
            Message::Exit(ExitKind::Signal(9), false)
        );
        assert_eq!(
            Message::parse(b"exit code 0 last"),
            Message::Exit(ExitKind::Code(0), true)
        );
        assert!(matches!(
            Message::parse(b"exit code 0 later"),
            Message::Unknown(_)
        ));
        assert_eq!(Message::parse(b"done 12"), Message::Done(12));
        assert_eq!(Message::parse(b"detach"), Message::Detach);
        assert!(matches!(Message::parse(b"main -1"), Message::Unknown(_)));
        let mut pid = [0xffu8; 12];
        assert_eq!(put_decimal(&mut pid, u32::MAX), 10);
        assert_eq!(&pid[..11], b"4294967295\0");
    }
}
