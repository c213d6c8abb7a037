//! Calls about single processes: resuming a suspended main process, the polite stop
//! (console control events, `WM_CLOSE`), and Toolhelp snapshots that name processes and
//! follow parent links.
//!
//! Docs: <https://learn.microsoft.com/en-us/windows/win32/toolhelp/tool-help-library>,
//! <https://learn.microsoft.com/en-us/windows/console/generateconsolectrlevent>.

use std::collections::BTreeMap;
use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{HANDLE, HWND, INVALID_HANDLE_VALUE, LPARAM, WAIT_OBJECT_0};
use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, Thread32First, Thread32Next,
    PROCESSENTRY32W, TH32CS_SNAPPROCESS, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, OpenThread, ResumeThread, WaitForSingleObject, PROCESS_SYNCHRONIZE,
    THREAD_SUSPEND_RESUME,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    EnumWindows, GetWindowThreadProcessId, PostMessageW, WM_CLOSE,
};

/// A Toolhelp snapshot handle (`CreateToolhelp32Snapshot`), closed on drop.
fn snapshot(flags: u32) -> io::Result<OwnedHandle> {
    // SAFETY: no pointer arguments; the result is checked before it is owned.
    let raw = unsafe { CreateToolhelp32Snapshot(flags, 0) };
    if raw == INVALID_HANDLE_VALUE || raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh valid handle nobody else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) })
}

/// Resumes the threads of `pid`, a process created with `CREATE_SUSPENDED` (std closes the
/// main thread's handle, so the thread is found in a `TH32CS_SNAPTHREAD` snapshot; a
/// suspended new process has that one thread). Returns how many threads were resumed.
pub(crate) fn resume_threads(pid: u32) -> io::Result<usize> {
    let snap = snapshot(TH32CS_SNAPTHREAD)?;
    let handle = snap.as_raw_handle() as HANDLE;
    let mut entry = THREADENTRY32 {
        dwSize: size_of::<THREADENTRY32>() as u32,
        ..Default::default()
    };
    let mut resumed = 0;
    // SAFETY: `entry` is writable and its dwSize is set, as Thread32First requires.
    let mut more = unsafe { Thread32First(handle, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: no pointer arguments; the result is checked before it is owned.
            let raw = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if raw.is_null() {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh valid handle nobody else owns.
            let thread = unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) };
            // SAFETY: the handle is valid and has THREAD_SUSPEND_RESUME.
            if unsafe { ResumeThread(thread.as_raw_handle() as HANDLE) } == u32::MAX {
                return Err(io::Error::last_os_error());
            }
            resumed += 1;
        }
        // SAFETY: as for Thread32First.
        more = unsafe { Thread32Next(handle, &mut entry) } != 0;
    }
    if resumed == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no thread of process {pid} in the thread snapshot"),
        ));
    }
    Ok(resumed)
}

/// One process as a `TH32CS_SNAPPROCESS` snapshot lists it.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub parent: u32,
    pub exe: String,
}

/// Every process of the system, by PID.
pub(crate) fn list_processes() -> io::Result<BTreeMap<u32, Listed>> {
    let snap = snapshot(TH32CS_SNAPPROCESS)?;
    let handle = snap.as_raw_handle() as HANDLE;
    // SAFETY: the all-zero bit pattern is a valid value of this plain C struct.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = size_of::<PROCESSENTRY32W>() as u32;
    let mut out = BTreeMap::new();
    // SAFETY: `entry` is writable and its dwSize is set, as Process32FirstW requires.
    let mut more = unsafe { Process32FirstW(handle, &mut entry) } != 0;
    while more {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        out.insert(
            entry.th32ProcessID,
            Listed {
                parent: entry.th32ParentProcessID,
                exe: String::from_utf16_lossy(&entry.szExeFile[..len]),
            },
        );
        // SAFETY: as for Process32FirstW.
        more = unsafe { Process32NextW(handle, &mut entry) } != 0;
    }
    Ok(out)
}

/// The PIDs whose chain of parent links leads to `root` (not `root` itself). A process
/// whose parent exited before the snapshot still names it, but one whose parent's PID was
/// reused, or whose link passes through a PID no longer listed, may be missed or wrongly
/// included: this is what `taskkill /T` relies on too, and why it is the weaker mechanism.
pub(crate) fn descendants(all: &BTreeMap<u32, Listed>, root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (&pid, p) in all {
            if p.parent == parent && pid != parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// `GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, group)`: every process of the console
/// process group `group` (the main process's PID: corral starts it with
/// `CREATE_NEW_PROCESS_GROUP`) that shares corral's console gets Ctrl+Break.
pub(crate) fn ctrl_break(group: u32) -> io::Result<()> {
    // SAFETY: no pointer arguments.
    if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, group) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Posts `WM_CLOSE` to every top-level window owned by one of `pids`; returns how many.
pub(crate) fn close_windows(pids: &[u32]) -> usize {
    struct State<'a> {
        pids: &'a [u32],
        posted: usize,
    }
    unsafe extern "system" fn each(hwnd: HWND, lparam: LPARAM) -> BOOL {
        // SAFETY: `lparam` is the `&mut State` passed to EnumWindows below, alive for the
        // whole enumeration, and EnumWindows calls back on this thread only.
        let state = unsafe { &mut *(lparam as *mut State) };
        let mut pid = 0;
        // SAFETY: `hwnd` comes from EnumWindows; `pid` is writable.
        unsafe { GetWindowThreadProcessId(hwnd, &mut pid) };
        // SAFETY: posting a message has no memory-safety contract beyond a window handle.
        if state.pids.contains(&pid) && unsafe { PostMessageW(hwnd, WM_CLOSE, 0, 0) } != 0 {
            state.posted += 1;
        }
        1
    }
    let mut state = State { pids, posted: 0 };
    // SAFETY: `each` matches WNDENUMPROC; the pointer in `lparam` outlives the call.
    unsafe { EnumWindows(Some(each), &mut state as *mut State as LPARAM) };
    state.posted
}

/// Whether `pid` is still running: `OpenProcess(SYNCHRONIZE)` and a zero-timeout wait.
/// A PID that cannot be opened is taken as gone.
pub(crate) fn is_running(pid: u32) -> bool {
    // SAFETY: no pointer arguments; the result is checked before it is owned.
    let raw = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if raw.is_null() {
        return false;
    }
    // SAFETY: `raw` is a fresh valid handle nobody else owns.
    let h = unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) };
    // SAFETY: the handle is valid and has SYNCHRONIZE.
    unsafe { WaitForSingleObject(h.as_raw_handle() as HANDLE, 0) != WAIT_OBJECT_0 }
}
