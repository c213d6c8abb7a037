//! The Job Object a job runs in: created without a security descriptor (so its handle is
//! never inheritable), with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` and, when asked for, a
//! memory and a process-count limit. Only this module touches the job handle.
//!
//! Docs: <https://learn.microsoft.com/en-us/windows/win32/procthread/job-objects>.

use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::ptr;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, IsProcessInJob,
    JobObjectBasicAccountingInformation, JobObjectBasicProcessIdList,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
    JOB_OBJECT_LIMIT_JOB_MEMORY, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::GetCurrentProcess;

/// The limits a job object gets, already checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JobLimits {
    /// `JobMemoryLimit`, in bytes.
    pub memory: Option<usize>,
    /// `ActiveProcessLimit`.
    pub processes: Option<u32>,
}

/// An owned Job Object handle.
#[derive(Debug)]
pub(crate) struct JobObject {
    handle: OwnedHandle,
}

impl JobObject {
    /// `CreateJobObjectW` (anonymous, default security: the handle is not inheritable) then
    /// `SetInformationJobObject(JobObjectExtendedLimitInformation)` with kill-on-close and
    /// `limits`. No `JOB_OBJECT_LIMIT_BREAKAWAY_OK`: no process of the job can leave it.
    pub(crate) fn create(limits: JobLimits) -> io::Result<JobObject> {
        // SAFETY: both pointers may be null (default security, no name); the returned
        // handle is checked before it is owned.
        let raw = unsafe { CreateJobObjectW(ptr::null(), ptr::null()) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid handle nobody else owns.
        let job = JobObject {
            handle: unsafe { OwnedHandle::from_raw_handle(raw as RawHandle) },
        };
        // SAFETY: the all-zero bit pattern is a valid value of this plain C struct.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        if let Some(bytes) = limits.memory {
            info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
            info.JobMemoryLimit = bytes;
        }
        if let Some(n) = limits.processes {
            info.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
            info.BasicLimitInformation.ActiveProcessLimit = n;
        }
        // SAFETY: `info` is a live JOBOBJECT_EXTENDED_LIMIT_INFORMATION and the size passed
        // is its size; the handle is valid.
        let ok = unsafe {
            SetInformationJobObject(
                job.raw(),
                JobObjectExtendedLimitInformation,
                (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(job)
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    /// `AssignProcessToJobObject`. `process` needs `PROCESS_SET_QUOTA | PROCESS_TERMINATE`
    /// (std's child handle has all access).
    pub(crate) fn assign(&self, process: &impl AsRawHandle) -> io::Result<()> {
        // SAFETY: both handles are valid for the duration of the call.
        let ok = unsafe { AssignProcessToJobObject(self.raw(), process.as_raw_handle() as HANDLE) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `TerminateJobObject`: every process of the job (and of jobs nested in it) ends with
    /// `exit_code`.
    pub(crate) fn terminate(&self, exit_code: u32) -> io::Result<()> {
        // SAFETY: the handle is valid.
        if unsafe { TerminateJobObject(self.raw(), exit_code) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many processes of the job are running
    /// (`JobObjectBasicAccountingInformation.ActiveProcesses`).
    pub(crate) fn active_processes(&self) -> io::Result<u32> {
        let mut info = JOBOBJECT_BASIC_ACCOUNTING_INFORMATION::default();
        // SAFETY: `info` is writable and the size passed is its size.
        let ok = unsafe {
            QueryInformationJobObject(
                self.raw(),
                JobObjectBasicAccountingInformation,
                (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast(),
                size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.ActiveProcesses)
    }

    /// The PIDs of the job's running processes (`JobObjectBasicProcessIdList`), up to 1024.
    pub(crate) fn pids(&self) -> io::Result<Vec<u32>> {
        const MAX: usize = 1024;
        /// `JOBOBJECT_BASIC_PROCESS_ID_LIST` with room for `MAX` PIDs.
        #[repr(C)]
        struct PidList {
            assigned: u32,
            listed: u32,
            pids: [usize; MAX],
        }
        let mut list = Box::new(PidList {
            assigned: 0,
            listed: 0,
            pids: [0; MAX],
        });
        // SAFETY: `list` is writable for the size passed, and laid out as the call expects.
        let ok = unsafe {
            QueryInformationJobObject(
                self.raw(),
                JobObjectBasicProcessIdList,
                (&mut *list as *mut PidList).cast(),
                size_of::<PidList>() as u32,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = list.assigned;
        Ok(list.pids[..(list.listed as usize).min(MAX)]
            .iter()
            .map(|&p| p as u32)
            .collect())
    }
}

/// Whether this process already runs in a job (`IsProcessInJob` for any job). A job
/// created then is nested in it (Windows 8 and later).
pub(crate) fn current_process_in_job() -> io::Result<bool> {
    let mut result = 0;
    // SAFETY: GetCurrentProcess returns a pseudo handle that needs no closing; a null job
    // handle asks about any job; `result` is writable.
    let ok = unsafe { IsProcessInJob(GetCurrentProcess(), ptr::null_mut(), &mut result) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(result != 0)
}
