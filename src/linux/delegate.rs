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
    /// A scope the CLI obtained from systemd, outside the cgroup it was started in: the
    /// unit it is bound to (it stops with that unit), or `None` when it is bound to none.
    pub(crate) obtained: Option<String>,
}

/// The cgroup this process runs in: its directory under `mount`. `Ok(None)`: the root
/// cgroup of the mount (nothing contains us, or a cgroup namespace's root).
pub(crate) fn own_cgroup_dir(mount: &Mount) -> Result<Option<PathBuf>, String> {
    let text = super::read_proc_file("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup ({e})"))?;
    let rel = cgroup2_path(&text).ok_or("corral is in no cgroup2 cgroup")?;
    let path = resolve(mount, rel).ok_or_else(|| {
        format!(
            "the cgroup corral runs in ({}) is not below the cgroup2 mount {}",
            rel,
            mount.path.display()
        )
    })?;
    Ok((path != mount.path).then_some(path))
}

/// Where job cgroups go when they go inside the cgroup we run in: that cgroup, or the one
/// above when we are in the `supervisor` leaf we moved ourselves into to enable controllers
/// (`cgroup::move_self_to_leaf`): jobs then go beside the supervisor leaf, not inside it.
pub(crate) fn jobs_home(mount: &Mount, own: &Path) -> PathBuf {
    if own.file_name() == Some(std::ffi::OsStr::new(super::cgroup::SUPERVISOR_LEAF)) {
        if let Some(parent) = own.parent().filter(|p| *p != mount.path) {
            return parent.to_owned();
        }
    }
    own.to_owned()
}

/// The cgroup this process runs in, `own` as [`own_cgroup_dir`] found it, if it is
/// delegated to us; else why not.
pub(crate) fn own_cgroup(mount: &Mount, own: Option<&Path>) -> Result<Delegated, String> {
    let path = own.ok_or("corral runs in the root cgroup")?;
    let euid = rustix::process::geteuid().as_raw();
    let home = jobs_home(mount, path);
    if home != path {
        if let Ok(delegated) = judge(mount, &home, euid) {
            return Ok(delegated);
        }
    }
    let mut delegated = judge(mount, path, euid)?;
    if let Some(bound) = std::env::var_os(SCOPE_ENV) {
        // The CLI re-ran itself under systemd-run (systemd 252's user manager marks its
        // scopes with no xattr, so ownership is what shows the delegation there).
        delegated.obtained = Some(bound.to_string_lossy().into_owned()).filter(|u| u != "1");
        delegated.how =
            "a scope corral obtained from systemd (systemd-run --scope -p Delegate=yes)";
    }
    Ok(delegated)
}

/// Set by the `corral` CLI on itself when it re-runs under `systemd-run --scope`, to the
/// unit the scope is bound to, so that the delegated scope is reported as obtained (and as
/// outside the caller's cgroup), and so that it never re-runs twice.
pub(crate) const SCOPE_ENV: &str = "CORRAL_IN_SYSTEMD_SCOPE";

/// The systemd unit whose cgroup `path` is in (the deepest `.service` or `.scope` component
/// below `mount`), and whether it is a unit of a user manager (below `user@UID.service`).
pub(crate) fn unit_of(mount: &Path, path: &Path) -> Option<(String, bool)> {
    let below = path.strip_prefix(mount).ok()?;
    let mut unit = None;
    let mut in_user_manager = false;
    for c in below.components() {
        let name = c.as_os_str().to_str()?;
        if unit.as_deref().is_some_and(is_user_manager) {
            in_user_manager = true;
        }
        if name.ends_with(".service") || name.ends_with(".scope") {
            unit = Some(name.to_string());
        }
    }
    let unit = unit.filter(|u| !is_user_manager(u))?;
    Some((unit, in_user_manager))
}

fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|r| r.strip_suffix(".service"))
        .is_some_and(|uid| uid.bytes().all(|b| b.is_ascii_digit()))
}

/// `systemd-run [--user] --scope -p Delegate=yes -p BindsTo=UNIT --quiet --collect --`, and
/// UNIT, when this process needs a delegated scope and can get one that stops with the unit
/// it runs in: systemd manages the tree, our cgroup is not delegated, it belongs to a unit
/// of the manager of our user (a user manager cannot bind a scope to a system unit, nor the
/// system manager to a user's), that manager is reachable, `systemd-run` exists, and we have
/// not re-run already. A job that could only leave its caller's unit unbound stays inside
/// it (the pgroup fallback) instead.
pub(crate) fn scope_command() -> Option<(Vec<std::ffi::OsString>, String)> {
    if std::env::var_os(SCOPE_ENV).is_some() {
        return None;
    }
    let mount = super::cgroup::find_mount().ok()??;
    let own = own_cgroup_dir(&mount).ok()??;
    if !super::cgroup::systemd_manages(&mount) || own_cgroup(&mount, Some(&own)).is_ok() {
        return None;
    }
    let root = rustix::process::geteuid().is_root();
    let (unit, user_unit) = unit_of(&mount.path, &own)?;
    if user_unit == root {
        return None;
    }
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
    for arg in ["--scope", "-p", "Delegate=yes", "-p"] {
        cmd.push(arg.into());
    }
    cmd.push(format!("BindsTo={unit}").into());
    for arg in ["--quiet", "--collect", "--"] {
        cmd.push(arg.into());
    }
    Some((cmd, unit))
}

/// Whether `path`, or a cgroup above it below the mount, carries systemd's delegate mark,
/// with every cgroup from the marked one down to `path` owned by `euid`.
fn marked_and_ours(mount: &Mount, path: &Path, euid: u32) -> bool {
    for p in path
        .ancestors()
        .take_while(|p| p.starts_with(&mount.path) && *p != mount.path)
    {
        if rustix::fs::stat(p).map_or(true, |st| st.st_uid != euid) {
            return false;
        }
        if ["trusted.delegate", "user.delegate"]
            .iter()
            .any(|name| xattr_is_one(p, name))
        {
            return true;
        }
    }
    false
}

/// Whether `path` is delegated to the user `euid`.
fn judge(mount: &Mount, path: &Path, euid: u32) -> Result<Delegated, String> {
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
    // systemd marks the top of what it delegates; a cgroup below it (a job's leaf, where a
    // nested corral runs) is just as much ours, but only while every cgroup from the mark
    // down is owned by us: a mark far above says nothing of a subtree that belongs to
    // someone else (root in `user@1000.service/...`, which systemd marks and chowns to the
    // user: a job of root's there could be moved out of its cgroup by that user).
    let marked = marked_and_ours(mount, path, euid);
    if marked && all_writable {
        return Ok(Delegated {
            path: path.to_owned(),
            how: "the cgroup corral runs in, marked delegated by systemd",
            obtained: None,
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
            obtained: None,
        });
    }
    Err(format!(
        "the cgroup corral runs in ({}) is not delegated to us ({})",
        path.display(),
        if owner != euid {
            // Below a cgroup systemd delegated to someone else, say whose it is.
            format!("owned by uid {owner}, we are uid {euid}")
        } else if marked {
            "marked delegated, but not writable by us".to_string()
        } else if euid == 0 {
            "no delegate mark from systemd".to_string()
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

    #[test]
    fn the_unit_a_cgroup_belongs_to_is_its_deepest_service_or_scope() {
        let mount = Path::new("/sys/fs/cgroup");
        let unit = |rel: &str| unit_of(mount, &mount.join(rel));
        assert_eq!(
            unit("system.slice/ci.service"),
            Some(("ci.service".into(), false))
        );
        // A job's leaf inside a unit belongs to that unit.
        assert_eq!(
            unit("system.slice/ci.service/corral-1-0"),
            Some(("ci.service".into(), false))
        );
        assert_eq!(
            unit("user.slice/user-1000.slice/session-3.scope"),
            Some(("session-3.scope".into(), false))
        );
        assert_eq!(
            unit("user.slice/user-1000.slice/user@1000.service/app.slice/build.service"),
            Some(("build.service".into(), true))
        );
        // The user manager itself is no unit to bind a scope to.
        assert_eq!(unit("user.slice/user-1000.slice/user@1000.service"), None);
        assert_eq!(unit("user.slice"), None);
        assert_eq!(unit_of(mount, Path::new("/elsewhere/x.service")), None);
    }

    #[test]
    fn jobs_go_beside_the_supervisor_leaf() {
        let mount = Mount {
            path: PathBuf::from("/sys/fs/cgroup"),
            root: PathBuf::from("/"),
        };
        assert_eq!(
            jobs_home(&mount, Path::new("/sys/fs/cgroup/ci/supervisor")),
            PathBuf::from("/sys/fs/cgroup/ci")
        );
        assert_eq!(
            jobs_home(&mount, Path::new("/sys/fs/cgroup/ci")),
            PathBuf::from("/sys/fs/cgroup/ci")
        );
        // Nothing above the mount.
        assert_eq!(
            jobs_home(&mount, Path::new("/sys/fs/cgroup/supervisor")),
            PathBuf::from("/sys/fs/cgroup/supervisor")
        );
    }
}
