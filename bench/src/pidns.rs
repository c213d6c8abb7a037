//! Figure 5: what `--pid-namespace` adds to `corral run -- true`, in both of the CLI's
//! mechanisms. The four variants run interleaved (rotated by one each round); a run's time
//! is from spawning `corral` to reaping it, so it includes corral's own exec and start-up,
//! which is the same on both sides of each ratio.

use std::process::{Command, Stdio};

use anyhow::Result;

use super::stats::Samples;
use super::{Bench, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cgroup,
    CgroupPidns,
    Pgroup,
    PgroupPidns,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Cgroup,
        Variant::CgroupPidns,
        Variant::Pgroup,
        Variant::PgroupPidns,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::Cgroup => "`corral run -- true`, cgroup",
            Variant::CgroupPidns => "`corral run --pid-namespace -- true`, cgroup",
            Variant::Pgroup => "`corral run --mechanism pgroup -- true`",
            Variant::PgroupPidns => "`corral run --mechanism pgroup --pid-namespace -- true`",
        }
    }

    /// The variant this one is compared with.
    pub fn baseline(self) -> Option<Variant> {
        match self {
            Variant::CgroupPidns => Some(Variant::Cgroup),
            Variant::PgroupPidns => Some(Variant::Pgroup),
            _ => None,
        }
    }

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("listed")
    }
}

pub struct PidnsFigures {
    pub rounds: usize,
    samples: [Samples; 4],
}

impl PidnsFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<PidnsFigures> {
    let corral = super::corral_binary();
    let jobs = bench.root.jobs();
    let mut f = PidnsFigures {
        rounds: plan.pidns_rounds,
        samples: Default::default(),
    };
    eprintln!(
        "bench: 5/5 --pid-namespace: {} rounds of `corral run [--pid-namespace] -- true`, cgroup and pgroup",
        plan.pidns_rounds
    );
    for round in 0..plan.pidns_warmup + plan.pidns_rounds {
        super::check_interrupted()?;
        for k in 0..Variant::ALL.len() {
            let v = Variant::ALL[(round + k) % Variant::ALL.len()];
            let mut cmd = Command::new(&corral);
            cmd.arg("run").stdin(Stdio::null());
            match v {
                Variant::Cgroup | Variant::CgroupPidns => {
                    cmd.arg("--cgroup-parent").arg(&jobs);
                }
                Variant::Pgroup | Variant::PgroupPidns => {
                    cmd.args(["--mechanism", "pgroup"]);
                }
            }
            if v.baseline().is_some() {
                cmd.arg("--pid-namespace");
            }
            cmd.args(["--", "true"]);
            let took = bench.timed_run(&mut cmd, v.label())?;
            if round >= plan.pidns_warmup {
                f.samples[v.index()].push(took);
            }
            bench.check_clean(v.label())?;
        }
        if round % 10 == 0 {
            eprint!(".");
        }
    }
    eprintln!(" done");
    Ok(f)
}
