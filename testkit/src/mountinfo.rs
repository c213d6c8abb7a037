//! The cgroup2 mount, from `/proc/self/mountinfo` (proc(5)), for the tests and the bench.
//! The library finds it on its own (`src/linux/cgroup.rs`).

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted, and which cgroup its root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// The mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
    pub path: PathBuf,
    /// The cgroup at the mount point, as `/proc/<pid>/cgroup` names it (usually `/`; a
    /// cgroup namespace or a bind mount shows another).
    pub root: PathBuf,
}

impl Cgroup2Mount {
    /// The first cgroup2 mount of this process: `Ok(None)` if there is none.
    pub fn find() -> io::Result<Option<Cgroup2Mount>> {
        Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
    }

    /// The directory of the cgroup `/proc/<pid>/cgroup` calls `cgroup`, if it is below
    /// this mount's root.
    pub fn dir_of(&self, cgroup: &Path) -> Option<PathBuf> {
        let rel = cgroup.strip_prefix(&self.root).ok()?;
        Some(self.path.join(rel))
    }
}

/// The first cgroup2 mount in the text of a mountinfo file.
pub fn parse(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ...
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            return None;
        }
        let mut fields = left.split(' ').skip(3);
        let root = unescape(fields.next()?);
        let path = unescape(fields.next()?);
        Some(Cgroup2Mount {
            path: path.into(),
            root: root.into(),
        })
    })
}

/// Undoes mountinfo's escapes: the kernel writes space, tab, newline and backslash as
/// `\ooo` (three octal digits). Anything else stands as it is.
pub fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(byte) = octal_escape(&bytes[i..]) {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// The byte `\ooo` at the start of `s` stands for, if it starts with one (at most `\377`).
fn octal_escape(s: &[u8]) -> Option<u8> {
    let [b'\\', digits @ ..] = s.get(..4)? else {
        return None;
    };
    digits.iter().try_fold(0u8, |value, &d| {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value.checked_mul(8)?.checked_add(d - b'0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_line_is_found_among_others() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mount = parse(text).unwrap();
        assert_eq!(mount.path, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mount.root, Path::new("/"));
        assert_eq!(
            mount.dir_of(Path::new("/a/b")).unwrap(),
            Path::new("/sys/fs/cgroup/unified/a/b")
        );
    }

    #[test]
    fn optional_fields_and_escapes_are_read() {
        let text = "41 31 0:38 /sub /mnt/my\\040cg rw shared:9 master:2 - cgroup2 none rw\n";
        let mount = parse(text).unwrap();
        assert_eq!(mount.path, Path::new("/mnt/my cg"));
        assert_eq!(mount.root, Path::new("/sub"));
        assert_eq!(
            mount.dir_of(Path::new("/sub/job")).unwrap(),
            Path::new("/mnt/my cg/job")
        );
        assert_eq!(mount.dir_of(Path::new("/other")), None);
    }

    #[test]
    fn no_cgroup2_line_is_none() {
        assert_eq!(parse("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
        assert_eq!(parse("1 2 0:1 / / rw - cgroup cgroup rw,cpu\n"), None);
        assert_eq!(parse("41 31 0:38 / - cgroup2 cgroup2 rw\n"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn unescape_reads_octal_and_leaves_the_rest() {
        assert_eq!(unescape(r"a\040b\011c\012d\134e"), "a b\tc\nd\\e");
        // Not an escape: too short, not octal, above \377.
        assert_eq!(unescape(r"x\04"), r"x\04");
        assert_eq!(unescape(r"x\089"), r"x\089");
        assert_eq!(unescape(r"x\400"), r"x\400");
        assert_eq!(unescape(r"\\040"), r"\ ");
        assert_eq!(unescape(r"\377"), OsString::from_vec(vec![0xff]));
    }
}
