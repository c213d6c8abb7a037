//! The channels between corral and a process it starts. The control channel of a pgroup
//! job's supervisor and of a host's watchdog is a `SOCK_SEQPACKET` socketpair, one message
//! per packet, with no SIGPIPE and no blocking beyond a deadline the caller gives (the
//! messages are each protocol's own: `supervise/wire.rs`, `watchdog.rs`). A child that
//! has not exec'd yet reports through a pipe, read until it is closed.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::error::{Error, Result};

/// A connected pair, both ends close-on-exec: ours, and the one the other process gets.
/// `op` is the operation as the error names it.
pub(crate) fn pair(op: &str) -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys(op, e))
}

/// Sends one message. Without room in the socket, waits up to `wait` for some (`None`:
/// fails at once with `WouldBlock`; the end of the wait is `TimedOut`).
pub(crate) fn send(fd: BorrowedFd<'_>, msg: &[u8], wait: Option<Duration>) -> io::Result<()> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        match rustix::net::send(fd, msg, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) if deadline.is_some() => {
                wait_for(fd, PollFlags::OUT, deadline.expect("checked"))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// One message, now in the buffer.
    Message,
    /// End of file, or a reset connection (the same to us: the peer is gone).
    Closed,
}

/// How [`recv`] takes a message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Take {
    /// What is pending; `WouldBlock` when nothing is.
    Now,
    /// What is pending, left in the socket; `WouldBlock` when nothing is.
    Peek,
    /// Waiting until the deadline for one; `TimedOut` when none came.
    By(Instant),
}

/// Receives one message into `buf`'s spare capacity (cleared first: only what the message
/// fills is written, and made resident).
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, take: Take) -> io::Result<Received> {
    let flags = match take {
        Take::Peek => RecvFlags::DONTWAIT | RecvFlags::PEEK,
        Take::Now | Take::By(_) => RecvFlags::DONTWAIT,
    };
    loop {
        buf.clear();
        match rustix::net::recv(fd, rustix::buffer::spare_capacity(buf), flags) {
            Ok((0, _)) => return Ok(Received::Closed),
            Ok(_) => return Ok(Received::Message),
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Ok(Received::Closed),
            Err(Errno::AGAIN) => match take {
                Take::By(deadline) => wait_for(fd, PollFlags::IN, deadline)?,
                Take::Now | Take::Peek => return Err(Errno::AGAIN.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads a child's status pipe until `buf` is full or the pipe is closed (the child
/// exec'd or exited); returns how many bytes came.
pub(crate) fn read_until_closed(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Waits until `fd` is ready for `events` or `deadline` passes (`TimedOut`).
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let mut fds = [PollFd::from_borrowed_fd(fd, events)];
    crate::linux::poll(&mut fds, Some(left)).map_err(io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn messages_arrive_whole_and_the_end_is_seen() {
        let (a, b) = pair("a test").unwrap();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::Now).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        send(a.as_fd(), b"first", None).unwrap();
        send(a.as_fd(), b"second one", None).unwrap();
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::Peek).unwrap(),
            Received::Message
        );
        assert_eq!(buf, b"first");
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::Now).unwrap(),
            Received::Message
        );
        assert_eq!(buf, b"first");
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::By(soon)).unwrap(),
            Received::Message
        );
        assert_eq!(buf, b"second one");
        let past = Instant::now();
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::By(past))
                .unwrap_err()
                .kind(),
            io::ErrorKind::TimedOut
        );
        drop(a);
        assert_eq!(
            recv(b.as_fd(), &mut buf, Take::Now).unwrap(),
            Received::Closed
        );
    }

    #[test]
    fn a_full_socket_fails_at_once_or_by_the_deadline() {
        let (a, _b) = pair("a test").unwrap();
        let msg = [0u8; 4096];
        let full = (0..100_000)
            .map(|_| send(a.as_fd(), &msg, None))
            .find_map(Result::err)
            .expect("the socket fills up");
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock);
        let waited = send(a.as_fd(), &msg, Some(Duration::from_millis(20))).unwrap_err();
        assert_eq!(waited.kind(), io::ErrorKind::TimedOut);
    }
}
