//! macos backend: the same `Job` API as on Linux (the subset below). To be filled in.

use std::process::Command;
use std::time::Duration;

use crate::{Error, Mechanism, Options, Report, Result};

/// A running job: a main process and everything it starts.
#[derive(Debug)]
pub struct Job {
    _private: (),
}

impl Job {
    /// Starts `cmd` as a job under `opts`.
    pub fn spawn(_cmd: &mut Command, _opts: &Options) -> Result<Job> {
        Err(Error::InvalidOptions(
            "corral's macos backend is not built yet".into(),
        ))
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        ""
    }

    /// The mechanism the job runs under.
    pub fn mechanism(&self) -> Mechanism {
        Mechanism::Pgroup
    }

    /// The main process's PID.
    pub fn pid(&self) -> u32 {
        0
    }

    /// The report if the job is over; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<Report>> {
        Ok(None)
    }

    /// Waits until the job is over.
    pub fn wait(&mut self) -> Result<Report> {
        Err(Error::InvalidOptions("not built yet".into()))
    }

    /// Waits at most `timeout`.
    pub fn wait_timeout(&mut self, _timeout: Duration) -> Result<Option<Report>> {
        Ok(None)
    }

    /// Stops the job with its stop sequence and waits until it is over.
    pub fn stop(&mut self) -> Result<Report> {
        self.wait()
    }

    /// Kills every process of the job at once and waits until it is over.
    pub fn kill(&mut self) -> Result<Report> {
        self.wait()
    }
}
