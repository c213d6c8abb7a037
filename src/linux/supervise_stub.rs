//! TEMPORARY stub until the real supervise.rs lands.
#![allow(dead_code, unused_variables)]
use crate::error::Result;
use crate::linux::pidfd::{ExitKind, Pid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout};
pub(crate) fn find_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    todo!()
}
pub(crate) struct Armed;
pub(crate) fn arm(cmd: &mut std::process::Command, binary: &Path) -> Result<Armed> {
    todo!()
}
impl Armed {
    pub(crate) fn finish(self, child: std::process::Child) -> Result<Supervised> {
        todo!()
    }
}
pub(crate) struct Supervised {
    pub(crate) supervisor: Pid,
    pub(crate) supervisor_fd: OwnedFd,
    pub(crate) main: Pid,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
    control: OwnedFd,
}
impl Supervised {
    pub(crate) fn control_fd(&self) -> BorrowedFd<'_> {
        self.control.as_fd()
    }
    pub(crate) fn read_events(&mut self) -> Result<Vec<SupervisorEvent>> {
        todo!()
    }
    pub(crate) fn detach(&self) -> Result<()> {
        todo!()
    }
    pub(crate) fn try_reap(&mut self) -> Result<Option<ExitKind>> {
        todo!()
    }
}
pub(crate) enum SupervisorEvent {
    MainExited(ExitKind),
    Done { reaped: usize },
}
