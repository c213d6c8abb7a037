//! Finding a cgroup that has been handed to us: the one this process runs in, when it is
//! delegated (systemd's `Delegate=yes`, or a directory an administrator chowned to the
//! user, which is what `Delegate=yes` does).
//!
//! Delegation, per the kernel's cgroup-v2 documentation, is ownership: the delegatee may
//! write the directory (to create cgroups), its `cgroup.procs` (to move processes between
//! cgroups below it) and its `cgroup.subtree_control` (to hand controllers down). systemd
//! also marks the cgroups it delegates with the extended attribute `trusted.delegate`
//! (system manager) or `user.delegate` (user manager), value `1`.

use std::path::{Path, PathBuf};

use rustix::fs::{Access, AtFlags};

use super::cgroup::Mount;

/// A cgroup delegated to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delegated {
    /// Its absolute path.
    pub(crate) path: PathBuf,
    /// Why it counts as delegated (for the report).
    pub(crate) how: &'static str,
}

/// The cgroup this process runs in, if it is delegated to us; else why not.
pub(crate) fn own_cgroup(mount: &Mount) -> Result<Delegated, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup ({e})"))?;
    let rel = cgroup2_path(&text).ok_or("corral is in no cgroup2 cgroup")?;
    let path = resolve(mount, rel).ok_or_else(|| {
        format!(
            "the cgroup corral runs in ({}) is not below the cgroup2 mount {}",
            rel,
            mount.path.display()
        )
    })?;
    if path == mount.path {
        return Err("corral runs in the root cgroup".into());
    }
    let euid = rustix::process::geteuid().as_raw();
    // To enable controllers, corral moves itself into `<delegated>/supervisor`
    // (`cgroup::move_self_to_leaf`): the delegated cgroup is then the one above, and jobs
    // go beside the supervisor leaf, not inside it.
    if path.file_name() == Some(std::ffi::OsStr::new(super::cgroup::SUPERVISOR_LEAF)) {
        if let Some(parent) = path.parent().filter(|p| *p != mount.path) {
            if let Ok(delegated) = judge(parent, euid) {
                return Ok(delegated);
            }
        }
    }
    let mut delegated = judge(&path, euid)?;
    if std::env::var_os(SCOPE_ENV).is_some() {
        // The CLI re-ran itself under systemd-run (systemd 252's user manager marks its
        // scopes with no xattr, so ownership is what shows the delegation there).
        delegated.how =
            "a scope corral obtained from systemd (systemd-run --scope -p Delegate=yes)";
    }
    Ok(delegated)
}

/// Set by the `corral` CLI on itself when it re-runs under `systemd-run --scope`, so that
/// the delegated scope is reported as obtained, and so that it never re-runs twice.
pub(crate) const SCOPE_ENV: &str = "CORRAL_IN_SYSTEMD_SCOPE";

/// `systemd-run [--user] --scope -p Delegate=yes --quiet --collect --`, when this process
/// needs a delegated scope and can get one: systemd manages the tree, our cgroup is not
/// delegated, the manager of our user is reachable, `systemd-run` exists, and we have not
/// re-run already.
pub(crate) fn scope_command() -> Option<Vec<std::ffi::OsString>> {
    if std::env::var_os(SCOPE_ENV).is_some() {
        return None;
    }
    let mount = super::cgroup::find_mount().ok()??;
    if !super::cgroup::systemd_manages(&mount) || own_cgroup(&mount).is_ok() {
        return None;
    }
    let root = rustix::process::geteuid().is_root();
    let manager = if root {
        PathBuf::from("/run/systemd/private")
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("systemd/private")
    };
    if !manager.exists() {
        return None;
    }
    let systemd_run = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("systemd-run"))
        .find(|p| rustix::fs::access(p.as_path(), Access::EXEC_OK).is_ok())?;
    let mut cmd: Vec<std::ffi::OsString> = vec![systemd_run.into()];
    if !root {
        cmd.push("--user".into());
    }
    for arg in [
        "--scope",
        "-p",
        "Delegate=yes",
        "--quiet",
        "--collect",
        "--",
    ] {
        cmd.push(arg.into());
    }
    Some(cmd)
}

/// Whether `path` is delegated to the user `euid`.
fn judge(path: &Path, euid: u32) -> Result<Delegated, String> {
    let writable = |name: &str| {
        rustix::fs::accessat(
            rustix::fs::CWD,
            path.join(name),
            Access::WRITE_OK,
            AtFlags::empty(),
        )
        .is_ok()
    };
    let all_writable =
        writable(".") && writable("cgroup.procs") && writable("cgroup.subtree_control");
    let marked = ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| xattr_is_one(path, name));
    if marked && all_writable {
        return Ok(Delegated {
            path: path.to_owned(),
            how: "the cgroup corral runs in, marked delegated by systemd",
        });
    }
    let owner = rustix::fs::stat(path)
        .map(|st| st.st_uid)
        .map_err(|e| format!("cannot examine {} ({e})", path.display()))?;
    // Root owns every cgroup systemd did not delegate: ownership alone proves nothing then.
    if euid != 0 && owner == euid && all_writable {
        return Ok(Delegated {
            path: path.to_owned(),
            how: "the cgroup corral runs in, owned by our user and writable",
        });
    }
    Err(format!(
        "the cgroup corral runs in ({}) is not delegated to us ({})",
        path.display(),
        if marked {
            "marked delegated, but not writable by us".to_string()
        } else if euid == 0 {
            "no delegate mark from systemd".to_string()
        } else if owner != euid {
            format!("owned by uid {owner}, we are uid {euid}")
        } else {
            "its cgroup.procs or cgroup.subtree_control is not writable".to_string()
        }
    ))
}

/// The cgroup2 line of `/proc/self/cgroup` (`0::<path>`).
fn cgroup2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The directory of cgroup `rel` (as `/proc/self/cgroup` names it) under `mount`, whose own
/// cgroup is `mount.root`.
fn resolve(mount: &Mount, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let below = rel.strip_prefix(&mount.root).ok()?;
    Some(mount.path.join(below))
}

fn xattr_is_one(path: &Path, name: &str) -> bool {
    let mut buf = [0u8; 8];
    matches!(rustix::fs::getxattr(path, name, &mut buf), Ok(n) if &buf[..n] == b"1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_line_is_found_among_v1_lines() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/user.slice/user-1000.slice/a.scope\n";
        assert_eq!(
            cgroup2_path(text),
            Some("/user.slice/user-1000.slice/a.scope")
        );
        assert_eq!(cgroup2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn paths_resolve_below_the_mount_root() {
        let mount = Mount {
            path: PathBuf::from("/sys/fs/cgroup"),
            root: PathBuf::from("/"),
        };
        assert_eq!(
            resolve(&mount, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/a/b"))
        );
        let bind = Mount {
            path: PathBuf::from("/mnt/cg"),
            root: PathBuf::from("/a"),
        };
        assert_eq!(resolve(&bind, "/a/b"), Some(PathBuf::from("/mnt/cg/b")));
        assert_eq!(resolve(&bind, "/other"), None);
    }
}
