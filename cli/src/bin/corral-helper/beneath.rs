//! Opening a directory a caller named, strictly beneath a directory the helper trusts.
//!
//! The helper runs as root, on behalf of a caller who may own part of the tree it works in
//! (a delegated cgroup, say). A path the caller gives must not lead it anywhere else: not
//! up with `..`, not sideways through a symlink (or a `/proc` magic link) the caller
//! planted, not onto another mount. So a caller's path is never resolved from `/`: the
//! helper opens the directory the policy allows, once, and resolves the caller's path
//! below that descriptor with [`open_dir_beneath`].
//!
//! `..`, an absolute path and an empty one are refused before the kernel is asked, with
//! [`io::ErrorKind::InvalidInput`]. The rest is the kernel's: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`
//! (Linux 5.6) resolves the whole path in one call and fails with `ELOOP` at a symlink and
//! `EXDEV` at a mount point. On an older kernel (`ENOSYS`, remembered after the first try)
//! the path is walked one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`,
//! which fails at a symlink too (`ELOOP`, or `ENOTDIR` for an `O_PATH` open); a mount
//! point is recognised there by a change of device, so a bind mount of the same file
//! system is not noticed by the walk. Either way each step starts from a descriptor, so a
//! directory renamed or replaced by a symlink after it was opened cannot redirect what is
//! opened below it.
//!
//! [`relative_to`] turns what a caller typed (relative, or absolute under the allowed
//! directory) into the relative path to open.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Whether the kernel has `openat2` (Linux 5.6), learnt by the first call.
static OPENAT2: AtomicU8 = AtomicU8::new(OPENAT2_UNKNOWN);
const OPENAT2_UNKNOWN: u8 = 0;
const OPENAT2_YES: u8 = 1;
const OPENAT2_NO: u8 = 2;

/// How often `openat2` is retried when it answers `EAGAIN` (a rename raced with the
/// lookup) before that answer is returned.
const EAGAIN_RETRIES: usize = 8;

/// Opens the existing directory `rel` below `dir` without leaving it: no `..`, no symlink,
/// no magic link, no mount point on the way (see the module documentation). The descriptor
/// is opened `O_RDONLY | O_DIRECTORY | O_CLOEXEC`.
///
/// An absolute, empty or `..`-containing `rel` is an [`io::ErrorKind::InvalidInput`] error
/// with a message; the kernel's refusals keep their errno (`ELOOP` for a symlink, `EXDEV`
/// for a mount point, `ENOTDIR`, `ENOENT`).
pub fn open_dir_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let rel = plain_relative(rel)?;
    if OPENAT2.load(Ordering::Relaxed) != OPENAT2_NO {
        match openat2_beneath(dir, &rel) {
            Err(Errno::NOSYS) => OPENAT2.store(OPENAT2_NO, Ordering::Relaxed),
            result => {
                OPENAT2.store(OPENAT2_YES, Ordering::Relaxed);
                return Ok(result?);
            }
        }
    }
    walk_beneath(dir, &rel)
}

/// Where `given` (relative to `base`, or absolute) lies below `base`, as a relative path;
/// empty when it is `base` itself. An absolute `given` must lie under `base` component by
/// component (both are compared as written: neither is resolved), and `..` is refused
/// anywhere. Errors are one line that starts with `given`, so that a caller can prefix the
/// option it came from: `--cgroup-parent a/../b names a parent with '..'; ...`.
pub fn relative_to(base: &Path, given: &Path) -> Result<PathBuf, String> {
    if given.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{} names a parent with '..'; give a path under the allowed parent",
            given.display()
        ));
    }
    let under = if given.is_absolute() {
        let outside = || {
            format!(
                "{} is outside the allowed parent {}; give a path under it",
                given.display(),
                base.display()
            )
        };
        if base.components().any(|c| c == Component::ParentDir) {
            return Err(outside());
        }
        given.strip_prefix(base).map_err(|_| outside())?
    } else {
        given
    };
    Ok(under
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

/// `rel` with its `.` components dropped, or the refusal of an absolute, empty or
/// `..`-containing path.
fn plain_relative(rel: &Path) -> io::Result<PathBuf> {
    let refuse = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} {why}; give a path below the directory", rel.display()),
        )
    };
    let mut plain = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => plain.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("names a parent with '..'")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    if plain.as_os_str().is_empty() {
        return Err(refuse("names no directory"));
    }
    Ok(plain)
}

/// One `openat2` call that resolves `rel` strictly beneath `dir`.
fn openat2_beneath(dir: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            result => return result,
        }
    }
}

/// The fallback for kernels without `openat2`: `rel` (already plain) opened one component
/// at a time, each with `O_NOFOLLOW`, each on the same device as `dir`.
fn walk_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let names: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect::<io::Result<_>>()?;
    let Some((last, parents)) = names.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty path names no directory",
        ));
    };
    let device = rustix::fs::fstat(dir)?.st_dev;
    let step = |from: BorrowedFd<'_>, name: &OsStr, flags: OFlags| -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat(
            from,
            name,
            flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if rustix::fs::fstat(&fd)?.st_dev != device {
            return Err(Errno::XDEV.into());
        }
        Ok(fd)
    };
    let mut at: Option<OwnedFd> = None;
    for name in parents {
        let from = at.as_ref().map_or(dir, |fd| fd.as_fd());
        at = Some(step(from, name, OFlags::PATH)?);
    }
    let from = at.as_ref().map_or(dir, |fd| fd.as_fd());
    step(from, last, OFlags::RDONLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    use crate::test_dir::TempDir;

    impl TempDir {
        fn open(&self) -> OwnedFd {
            rustix::fs::open(
                &self.0,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        }
    }

    type Open = fn(BorrowedFd<'_>, &Path) -> io::Result<OwnedFd>;

    /// The public entry point (openat2 on this kernel) and the walk, checked alike.
    const BOTH: [(&str, Open); 2] = [
        ("open_dir_beneath", open_dir_beneath),
        ("walk_beneath", walk_plain),
    ];

    /// The walk after the same up-front refusals as the public entry point.
    fn walk_plain(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
        walk_beneath(dir, &plain_relative(rel)?)
    }

    fn ino(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    fn ino_of(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    /// The errno of a refusal that must come from following nothing.
    fn refused_at_symlink(what: &str, r: io::Result<OwnedFd>) {
        let e = r.expect_err(what);
        assert!(
            [Some(libc::ELOOP), Some(libc::ENOTDIR)].contains(&e.raw_os_error()),
            "{what}: {e}"
        );
    }

    #[test]
    fn opens_plain_directories() {
        let tmp = TempDir::new("beneath-plain");
        std::fs::create_dir_all(tmp.0.join("a/b/c")).unwrap();
        let root = tmp.open();
        for (name, open) in BOTH {
            for rel in ["a", "a/b/c", "./a/b/", "a//b"] {
                let fd = open(root.as_fd(), Path::new(rel))
                    .unwrap_or_else(|e| panic!("{name} {rel}: {e}"));
                let want = tmp.0.join(rel);
                assert_eq!(ino(&fd), ino_of(&want), "{name} {rel}");
            }
            let e = open(root.as_fd(), Path::new("a/missing")).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name}");
            std::fs::write(tmp.0.join("a/file"), "").unwrap();
            let e = open(root.as_fd(), Path::new("a/file")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR), "{name}");
        }
    }

    #[test]
    fn refuses_symlinks_anywhere() {
        let tmp = TempDir::new("beneath-symlink");
        std::fs::create_dir_all(tmp.0.join("b/c")).unwrap();
        symlink("b", tmp.0.join("a")).unwrap();
        symlink(tmp.0.join("b"), tmp.0.join("abs")).unwrap();
        symlink("c", tmp.0.join("b/l")).unwrap();
        let root = tmp.open();
        for (name, open) in BOTH {
            for rel in ["a", "a/c", "abs/c", "b/l", "b/l/"] {
                refused_at_symlink(&format!("{name} {rel}"), open(root.as_fd(), Path::new(rel)));
            }
        }
    }

    #[test]
    fn refuses_dotdot_absolute_and_empty_up_front() {
        let tmp = TempDir::new("beneath-refuse");
        std::fs::create_dir_all(tmp.0.join("a/b")).unwrap();
        let root = tmp.open();
        for (name, open) in BOTH {
            for (rel, says) in [
                ("..", "names a parent with '..'"),
                ("a/../a/b", "names a parent with '..'"),
                ("a/b/..", "names a parent with '..'"),
                ("/tmp", "is absolute"),
                ("", "names no directory"),
                (".", "names no directory"),
            ] {
                let e = open(root.as_fd(), Path::new(rel)).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name} {rel}");
                assert!(e.to_string().contains(says), "{name} {rel}: {e}");
            }
        }
    }

    #[test]
    fn refuses_crossing_a_mount() {
        // /proc is a mount of its own below /, wherever the tests run.
        let slash = rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for (name, open) in BOTH {
            let e = open(slash.as_fd(), Path::new("proc/self")).unwrap_err();
            assert!(
                [Some(libc::EXDEV), Some(libc::ELOOP), Some(libc::ENOTDIR)]
                    .contains(&e.raw_os_error()),
                "{name}: {e}"
            );
            let e = open(slash.as_fd(), Path::new("proc")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{name}: {e}");
        }
    }

    #[test]
    fn a_swapped_in_symlink_cannot_redirect() {
        let tmp = TempDir::new("beneath-swap");
        let outside = TempDir::new("beneath-swap-outside");
        std::fs::create_dir_all(tmp.0.join("a/b")).unwrap();
        std::fs::create_dir_all(outside.0.join("b")).unwrap();
        let root = tmp.open();
        for (name, open) in BOTH {
            let parent = open(root.as_fd(), Path::new("a")).unwrap();
            let b = open(parent.as_fd(), Path::new("b")).unwrap();
            assert_eq!(ino(&b), ino_of(&tmp.0.join("a/b")), "{name}");

            // b replaced by a symlink out of the tree: refused, not followed.
            std::fs::rename(tmp.0.join("a/b"), tmp.0.join("a/b.old")).unwrap();
            symlink(outside.0.join("b"), tmp.0.join("a/b")).unwrap();
            refused_at_symlink(name, open(parent.as_fd(), Path::new("b")));

            // a itself moved away and replaced by a symlink: the open parent still is the
            // real directory, wherever it went.
            std::fs::remove_file(tmp.0.join("a/b")).unwrap();
            std::fs::rename(tmp.0.join("a/b.old"), tmp.0.join("a/b")).unwrap();
            std::fs::rename(tmp.0.join("a"), tmp.0.join("a.moved")).unwrap();
            symlink(&outside.0, tmp.0.join("a")).unwrap();
            let b = open(parent.as_fd(), Path::new("b")).unwrap();
            assert_eq!(ino(&b), ino_of(&tmp.0.join("a.moved/b")), "{name}");
            refused_at_symlink(name, open(root.as_fd(), Path::new("a/b")));

            std::fs::remove_file(tmp.0.join("a")).unwrap();
            std::fs::rename(tmp.0.join("a.moved"), tmp.0.join("a")).unwrap();
        }
    }

    #[test]
    fn relative_to_keeps_a_path_under_its_base() {
        let base = Path::new("/sys/fs/cgroup/unified/corral-helper/ci");
        let rel = |given: &str| relative_to(base, Path::new(given));
        assert_eq!(rel("build/1"), Ok(PathBuf::from("build/1")));
        assert_eq!(rel("./build/"), Ok(PathBuf::from("build")));
        assert_eq!(
            rel("/sys/fs/cgroup/unified/corral-helper/ci/build"),
            Ok(PathBuf::from("build"))
        );
        assert_eq!(
            rel("/sys/fs/cgroup//unified/corral-helper/ci/./build"),
            Ok(PathBuf::from("build"))
        );
        assert_eq!(
            rel("/sys/fs/cgroup/unified/corral-helper/ci"),
            Ok(PathBuf::new())
        );
        assert_eq!(rel(""), Ok(PathBuf::new()));
        assert_eq!(
            rel("/sys/fs/cgroup/unified/other"),
            Err(
                "/sys/fs/cgroup/unified/other is outside the allowed parent \
                 /sys/fs/cgroup/unified/corral-helper/ci; give a path under it"
                    .into()
            )
        );
        // Component-wise: `ci2` is not under `ci`.
        assert!(rel("/sys/fs/cgroup/unified/corral-helper/ci2").is_err());
        assert_eq!(
            rel("a/../b"),
            Err("a/../b names a parent with '..'; give a path under the allowed parent".into())
        );
        assert!(rel("/sys/fs/cgroup/unified/corral-helper/ci/../other").is_err());
        assert!(rel("/sys/fs/cgroup/unified/corral-helper/ci/a/..").is_err());
    }
}
