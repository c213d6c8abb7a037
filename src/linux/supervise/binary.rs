//! The `corral` executable supervisors are run from, and the check that it speaks this
//! version's protocol.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ARG, BINARY_NAME, ENV};
use crate::error::{Error, Result};

/// The `corral` executable to run supervisors from: `explicit`, else `CORRAL_SUPERVISOR`,
/// else `corral` next to the current executable, or in its parent directory (cargo puts
/// test binaries in `target/*/deps`, the `corral` binary in `target/*`), else in `PATH`.
/// An explicit path or the variable is used as given or refused, never skipped.
pub(crate) fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return usable(path).map_err(|why| no_supervisor(format!("{}: {why}", path.display())));
    }
    if let Some(path) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return usable(&path)
            .map_err(|why| no_supervisor(format!("{ENV}={}: {why}", path.display())));
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            searched.push(dir.join(BINARY_NAME));
            if let Some(up) = dir.parent() {
                searched.push(up.join(BINARY_NAME));
            }
        }
    }
    if let Some(found) = searched.iter().find_map(|c| usable(c).ok()) {
        return Ok(found);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(found) = usable(&dir.join(BINARY_NAME)) {
                return Ok(found);
            }
        }
    }
    let mut places: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    places.push("PATH".into());
    Err(no_supervisor(format!(
        "no executable `{BINARY_NAME}` found (searched {})",
        places.join(", ")
    )))
}

pub(super) fn no_supervisor(reason: String) -> Error {
    Error::NoSupervisor { reason }
}

/// What `corral __supervise --protocol` prints: the version of the message protocol.
/// 2: the binary also runs the watchdog (`corral __watchdog`, see `watchdog.rs`).
pub(super) const PROTOCOL: &str = "corral-supervise 2";
pub(super) const PROTOCOL_ARG: &str = "--protocol";

/// `path` made absolute, if it is a `corral` that speaks our protocol; else what is wrong.
/// A binary that would not understand `__supervise` would exit at once and leave the main
/// process uncontained, so each binary is asked once per process (`__supervise
/// --protocol`) before its first job; the answer is kept with the file's identity (device,
/// inode, modification time), so a binary replaced meanwhile is asked again.
fn usable(path: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    /// A file's identity: device, inode, modification time (seconds, nanoseconds).
    type Identity = (u64, u64, i64, i64);
    static CHECKED: Mutex<Vec<(PathBuf, Identity)>> = Mutex::new(Vec::new());
    let path = executable(path)?;
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    let identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
    let known =
        |list: &Vec<(PathBuf, Identity)>| list.iter().any(|(p, id)| *p == path && *id == identity);
    if known(&CHECKED.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(path);
    }
    // This very program (the `corral` CLI finds itself next to its own executable) speaks
    // the protocol of the library it was built with: no need to run it to ask.
    if std::fs::metadata("/proc/self/exe")
        .is_ok_and(|me| me.dev() == meta.dev() && me.ino() == meta.ino())
    {
        return Ok(path);
    }
    let out = Command::new(&path)
        .args([ARG, PROTOCOL_ARG])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run it ({e})"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || said.trim_end() != PROTOCOL {
        return Err(format!(
            "it does not speak `{PROTOCOL}` (a different corral version?); point \
             CORRAL_SUPERVISOR at the corral built with this library"
        ));
    }
    let mut list = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !known(&list) {
        list.push((path.clone(), identity));
    }
    Ok(path)
}

/// `path` made absolute (the hook runs after std's `chdir` to the command's directory), if
/// it is an executable regular file; else what is wrong with it.
pub(super) fn executable(path: &Path) -> Result<PathBuf, String> {
    let path = std::path::absolute(path).map_err(|e| e.to_string())?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err("not a regular file".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("not found".into()),
        Err(e) => return Err(e.to_string()),
    }
    rustix::fs::access(&path, rustix::fs::Access::EXEC_OK)
        .map_err(|e| format!("not executable ({})", io::Error::from(e)))?;
    Ok(path)
}
