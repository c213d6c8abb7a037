//! Opening a path that a user named, or that lives in a directory others can write (a
//! registry, `/tmp`, a report's directory), without being steered by what someone planted
//! there: a link is not followed, a FIFO or device never blocks the open and is not read,
//! a file is looked at through the descriptor that was opened (`fstat`), never by its name
//! again, and a file is replaced only when it is a regular one.
//!
//! Used by the job registry (records), the `corral` CLI and `corral-helper` (the report
//! file) and the helper's policy file.

use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a path was not used.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A symbolic link where a file was expected.
    #[error("a symbolic link")]
    Link,
    /// Something else than a regular file: what it is.
    #[error("not a regular file but {0}")]
    NotRegular(&'static str),
    /// A regular file above the size allowed.
    #[error("larger than {max} bytes")]
    TooLarge {
        /// The size allowed.
        max: u64,
    },
    /// The system said no.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a file type is, in words.
fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "a regular file"
    }
}

/// Opens `name` in `dir` for reading if it is a regular file of at most `max` bytes:
/// `O_NOFOLLOW` (a link is [`Refused::Link`]), `O_NONBLOCK` (a FIFO does not block the
/// open), `O_NOCTTY`, then `fstat` on what was opened. Returns the file and its metadata.
pub fn open_regular_at(dir: impl AsFd, name: &Path, max: u64) -> Result<(File, Metadata), Refused> {
    use rustix::fs::{Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => Refused::Link,
        e => Refused::Io(e.into()),
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Refused::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > max {
        return Err(Refused::TooLarge { max });
    }
    Ok((file, meta))
}

/// Reads `name` in `dir` whole as [`open_regular_at`] allows (at most `max` bytes, even
/// if it grows meanwhile).
pub fn read_regular_at(
    dir: impl AsFd,
    name: &Path,
    max: u64,
) -> Result<(Vec<u8>, Metadata), Refused> {
    let (file, meta) = open_regular_at(dir, name, max)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Refused::TooLarge { max });
    }
    Ok((bytes, meta))
}

/// [`read_regular_at`] of a path (relative ones from the working directory).
pub fn read_regular(path: &Path, max: u64) -> Result<(Vec<u8>, Metadata), Refused> {
    read_regular_at(rustix::fs::CWD, path, max)
}

/// Creates `path` for writing, failing if anything (a link included) is there already:
/// `O_CREAT | O_EXCL | O_NOFOLLOW`.
pub fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Renames `from` to `to` unless something is at `to` (`RENAME_NOREPLACE`: `EEXIST`).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// What is at a path to be written (see [`write()`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Nothing yet.
    Absent,
    /// A regular file, replaced by the new content.
    Regular,
    /// A pipe, a terminal, or `/dev/null`, `/dev/zero`, `/dev/full`, written in place
    /// (`follow`: through a link, as `/dev/stderr` is one).
    InPlace {
        /// Reached through a symbolic link.
        follow: bool,
    },
}

/// What is at `path`, or why nothing can be written there: a link to anything but an
/// in-place target ([`Refused::Link`]; what it points to may not be the writer's), a
/// directory, a socket, any other device ([`Refused::NotRegular`]).
pub fn classify(path: &Path) -> Result<Target, Refused> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Target::Absent),
        Err(e) => return Err(e.into()),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(Target::Regular);
    }
    if ft.is_symlink() {
        return match std::fs::metadata(path) {
            Ok(target) if in_place(&target) => Ok(Target::InPlace { follow: true }),
            _ => Err(Refused::Link),
        };
    }
    if in_place(&meta) {
        return Ok(Target::InPlace { follow: false });
    }
    Err(Refused::NotRegular(if ft.is_char_device() {
        "a device that is not a terminal"
    } else {
        kind(ft)
    }))
}

/// Written in place: a pipe, a terminal (the tty, console, serial and pseudo-terminal
/// majors), or `/dev/null`, `/dev/zero`, `/dev/full`. Never a disk or `/dev/mem`.
fn in_place(meta: &Metadata) -> bool {
    let ft = meta.file_type();
    if ft.is_fifo() {
        return true;
    }
    if !ft.is_char_device() {
        return false;
    }
    let (major, minor) = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    matches!(major, 4 | 5 | 136..=143) || (major == 1 && matches!(minor, 3 | 5 | 7))
}

/// Writes `data` as the whole content of `path`, as [`classify`] allows:
/// - nothing there: written to `.<name>.tmp-<pid>` beside it ([`create_exclusive`]) and
///   renamed into place without replacing anything that appeared meanwhile;
/// - a regular file: the same, and the rename replaces it (still a regular file just
///   before);
/// - in place: opened without blocking (a pipe no one reads is an error, not a hang),
///   checked to be what was looked at, then written.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    // A file that appears between the look and the rename is looked at again.
    for _ in 0..3 {
        let target = classify(path).map_err(|e| match e {
            Refused::Io(e) => e,
            other => io::Error::other(other),
        })?;
        match target {
            Target::Absent => match write_new(path, data, false) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            },
            Target::Regular => return write_new(path, data, true),
            Target::InPlace { follow } => return write_in_place(path, data, follow),
        }
    }
    Err(io::Error::other("something kept appearing at the path"))
}

fn write_in_place(path: &Path, data: &[u8], follow: bool) -> io::Result<()> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(io::Error::other("it is a pipe that no one reads"))
        }
        Err(e) => return Err(e),
    };
    // What was opened is what was looked at (nothing swapped in meanwhile).
    if !in_place(&file.metadata()?) {
        return Err(io::Error::other(
            "it changed into something else while it was written",
        ));
    }
    // Blocking again: a reader that is slow is waited for, as by any writer.
    let fl = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, fl - rustix::fs::OFlags::NONBLOCK)?;
    (&file).write_all(data)
}

fn write_new(path: &Path, data: &[u8], replace: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = create_exclusive(&tmp, 0o666).and_then(|mut f| f.write_all(data));
    if let Err(e) = written {
        // Not ours to remove when it was there before (the exclusive create failed on it).
        if e.kind() != io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e);
    }
    let renamed = if replace {
        // Only over a regular file, looked at just before.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => std::fs::rename(&tmp, path),
            Ok(_) => Err(io::Error::other(
                "it changed into something else while it was written",
            )),
            Err(e) => Err(e),
        }
    } else {
        rename_noreplace(&tmp, path)
    };
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_small_regular_files_and_never_follows_a_link() {
        let dir = std::env::temp_dir().join(format!("corral-safe-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, "12345").unwrap();
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.join("fifo"),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let ok = read_regular(&file, 5).map(|(b, _)| b);
        let big = read_regular(&file, 4);
        let link = read_regular(&dir.join("link"), 5);
        let fifo = read_regular(&dir.join("fifo"), 5);
        let exists = create_exclusive(&dir.join("link"), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ok.unwrap(), b"12345");
        assert!(matches!(big, Err(Refused::TooLarge { max: 4 })), "{big:?}");
        assert!(matches!(link, Err(Refused::Link)), "{link:?}");
        assert!(
            matches!(fifo, Err(Refused::NotRegular("a pipe"))),
            "{fifo:?}"
        );
        assert_eq!(exists.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }
}
