//! The job registry without the `serde` feature: records are JSON, so jobs are not
//! registered; the report says so (see `src/registry.rs` for the real one).
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::Path;

pub(crate) fn check_name(name: &str, _on_behalf_of: Option<u32>) -> crate::Result<()> {
    validate(name)
}

pub(crate) fn validate(name: &str) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(crate::Error::InvalidOptions(format!(
            "invalid job name `{}`; use 1-64 characters of A-Z a-z 0-9 . _ - not starting with `.`",
            name.escape_debug()
        )))
    }
}

/// Why a job is not registered: without the registry, always this.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("corral was built without the `serde` feature (records are JSON)")]
    NoSerde,
}

pub(crate) struct NewRecord<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: Option<&'a str>,
    pub(crate) mechanism: &'a str,
    pub(crate) cgroup: Option<&'a Path>,
    pub(crate) command: &'a [String],
    pub(crate) limits: std::collections::BTreeMap<String, String>,
    pub(crate) on_behalf_of: Option<u32>,
}

pub(crate) struct Registration(OwnedFd);

pub(crate) struct Request {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) request: crate::control::Request,
}

pub(crate) fn register(_: &NewRecord<'_>) -> Result<Registration, Error> {
    Err(Error::NoSerde)
}

/// What a killed job held (see `registry.rs`).
pub(crate) enum Outer<'a> {
    Cgroup(&'a Path),
    Killed(&'a [u32]),
}

/// Without the registry there are no records to sweep.
pub(crate) fn sweep_nested(_: &Path, _: Outer<'_>) -> Vec<String> {
    Vec::new()
}

impl Registration {
    pub(crate) fn dir(&self) -> Option<&std::path::Path> {
        None
    }

    pub(crate) fn files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    pub(crate) fn listener(&self) -> &OwnedFd {
        &self.0
    }
    pub(crate) fn accept(&mut self) -> Vec<Request> {
        Vec::new()
    }
    pub(crate) fn accepted(&mut self, _: Request) {}
}
