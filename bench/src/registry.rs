//! Figure 5: what the job registry costs.
//!
//! - Registration: spawn + wait of `/bin/true` on the CLI's lean path
//!   (`Job::spawn_command`), cgroup and in-process pgroup, with `Options::register` on
//!   (bind the control socket, write the record to a temporary file, rename it; at the end
//!   remove both) and off, interleaved; the ratio on / off.
//! - The start-up sweep `corral run` does before it spawns (`registry::sweep_own`): with an
//!   empty registry (one `readdir`), and with the records of [`LIVE`] running jobs in it
//!   (each read, parsed, and its supervisor's `/proc/<pid>/stat` checked), against a bare
//!   `Command::status()` of `/bin/true` for scale.
//!
//! The bench's jobs register in a registry of its own (`CORRAL_RUNTIME_DIR`, set by
//! [`super::run`]), so a host's real jobs neither slow it down nor are touched.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::stats::Samples;
use super::{Bench, Plan};

/// Running jobs whose records the second sweep figure reads.
pub const LIVE: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Bare,
    CgroupOn,
    CgroupOff,
    PgroupOn,
    PgroupOff,
    SweepEmpty,
    SweepLive,
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::Bare,
        Variant::CgroupOn,
        Variant::CgroupOff,
        Variant::PgroupOn,
        Variant::PgroupOff,
        Variant::SweepEmpty,
        Variant::SweepLive,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare `Command::status()` of `/bin/true` (scale)",
            Variant::CgroupOn => "cgroup job, registered",
            Variant::CgroupOff => "cgroup job, `register: false`",
            Variant::PgroupOn => "pgroup job (in-process), registered",
            Variant::PgroupOff => "pgroup job (in-process), `register: false`",
            Variant::SweepEmpty => "start-up sweep, empty registry",
            Variant::SweepLive => "start-up sweep, records of 10 running jobs",
        }
    }

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("in ALL")
    }
}

pub struct RegistryFigures {
    pub rounds: usize,
    pub samples: Vec<Samples>,
}

impl RegistryFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<RegistryFigures> {
    let mut f = RegistryFigures {
        rounds: plan.spawn_rounds,
        samples: vec![Samples::default(); Variant::ALL.len()],
    };
    let cmd = corral::JobCommand::new("/bin/true");
    let cgroup = bench.job_options(corral::MechanismRequest::Cgroup);
    let pgroup = bench.job_options(corral::MechanismRequest::Pgroup);
    let off = |o: &corral::Options| corral::Options {
        register: false,
        ..o.clone()
    };
    let (cgroup_off, pgroup_off) = (off(&cgroup), off(&pgroup));
    let sleeper = corral::JobCommand::new("sleep").arg("1000");
    eprintln!(
        "bench: 5/5 the job registry: {} rounds of {} variants",
        plan.spawn_rounds,
        Variant::ALL.len()
    );
    let total = plan.spawn_warmup + plan.spawn_rounds;
    let n = Variant::ALL.len();
    let mut live: Vec<corral::Job> = Vec::new();
    let result = (|| -> Result<()> {
        for round in 0..total {
            let keep = round >= plan.spawn_warmup;
            for k in 0..n {
                super::check_interrupted()?;
                let v = Variant::ALL[(round + k) % n];
                if v == Variant::SweepLive {
                    for _ in 0..LIVE {
                        live.push(corral::Job::spawn_command(&sleeper, &cgroup)?);
                    }
                }
                let t = Instant::now();
                let report = match v {
                    Variant::Bare => {
                        let status = Command::new("/bin/true")
                            .status()
                            .context("failed to run /bin/true")?;
                        ensure!(status.success(), "/bin/true failed: {status}");
                        None
                    }
                    Variant::CgroupOn => Some(corral::Job::spawn_command(&cmd, &cgroup)?.wait()?),
                    Variant::CgroupOff => {
                        Some(corral::Job::spawn_command(&cmd, &cgroup_off)?.wait()?)
                    }
                    Variant::PgroupOn => Some(corral::Job::spawn_command(&cmd, &pgroup)?.wait()?),
                    Variant::PgroupOff => {
                        Some(corral::Job::spawn_command(&cmd, &pgroup_off)?.wait()?)
                    }
                    Variant::SweepEmpty | Variant::SweepLive => {
                        let swept = corral::registry::sweep_own();
                        ensure!(swept.is_empty(), "the sweep found stale jobs: {swept:?}");
                        None
                    }
                };
                let d: Duration = t.elapsed();
                if let Some(r) = &report {
                    bench.expect(
                        r.not_registered.is_none(),
                        format!("{}: not registered: {:?}", v.label(), r.not_registered),
                    );
                    bench.check_alone(r, v.label());
                }
                for mut job in live.drain(..) {
                    let r = job.kill()?;
                    bench.expect(
                        r.survivors.is_empty(),
                        "a sweep figure's job left survivors",
                    );
                }
                if keep {
                    f.samples[v.index()].push(d);
                }
            }
            bench.check_clean("the job registry")?;
        }
        Ok(())
    })();
    for mut job in live {
        let _ = job.kill();
    }
    result?;
    Ok(f)
}
