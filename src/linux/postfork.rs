//! Helpers for the moments right after a fork, in a child that has not exec'd yet (std's
//! `pre_exec` child, corral's own `clone3` children): a fork without `pthread_atfork`
//! handlers, allocation-free number formatting for the messages such a child sends, and
//! the descriptor clean-up of a process corral starts. Everything here but
//! [`close_descriptors_from`] is async-signal-safe.

use std::os::fd::RawFd;

/// `fork` as a bare system call: unlike libc's `fork`, it runs no `pthread_atfork`
/// handlers, which may take locks that another thread of the host held when std forked.
/// (rustix has this as `kernel_fork`, in a module whose name it rotates on purpose.)
///
/// # Safety
/// The child must keep to async-signal-safe calls until it execs or exits. libc's cached
/// thread ID is stale in the child: nothing here may use it (`raise`, `pthread_kill`).
pub(crate) unsafe fn raw_fork() -> libc::pid_t {
    // clone(flags, stack = 0: the child continues on a copy of our stack, ...): argument
    // order differs on s390x, where the stack comes first.
    #[cfg(target_arch = "s390x")]
    let ret = libc::syscall(
        libc::SYS_clone,
        0 as libc::c_long,
        libc::SIGCHLD as libc::c_long,
        0,
        0,
        0,
    );
    #[cfg(not(target_arch = "s390x"))]
    let ret = libc::syscall(
        libc::SYS_clone,
        libc::SIGCHLD as libc::c_long,
        0 as libc::c_long,
        0,
        0,
        0,
    );
    ret as libc::pid_t
}

/// The decimal digits of `n` at the start of `out` (followed by a NUL if there is room);
/// returns how many digits. Allocation-free.
pub(crate) fn put_decimal(out: &mut [u8], n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    if let Some(nul) = out.get_mut(len) {
        *nul = 0;
    }
    len
}

/// Closes every descriptor from `first` up: the host's descriptors that were not
/// close-on-exec (they are the user's command's business, not ours).
pub(crate) fn close_descriptors_from(first: RawFd) {
    // SAFETY: close_range(2) (Linux 5.9) on descriptors nothing in this process uses yet.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if ret == 0 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory's own descriptor is closed already (EBADF).
        unsafe { libc::close(fd) };
    }
}
