//! `corral ps`, `corral kill` and `corral sweep`: the job registry from the outside (see
//! `docs/registry.md` and the library's `corral::registry`).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use corral::registry::{self, Entry, KillOutcome};

/// How long `corral kill` waits, beyond the grace, for the job to be over (the kill stage
/// itself may take up to 10 s for a job that resists SIGKILL).
const KILL_MARGIN: Duration = Duration::from_secs(15);

#[derive(Args)]
pub struct PsArgs {
    /// Print JSON (an array of jobs) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SweepArgs {
    /// Say what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// One job as `corral ps --json` prints it.
#[derive(serde::Serialize)]
struct PsJob<'a> {
    id: &'a str,
    name: Option<&'a str>,
    uid: u32,
    /// The caller a privileged helper (`corral-helper`) runs the job for; `uid` is root's.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_behalf_of: Option<u32>,
    supervisor_pid: u32,
    /// The job this one is nested in (its corral runs inside that job), if any.
    outer: Option<&'a str>,
    stale: bool,
    mechanism: &'a str,
    cgroup: Option<&'a std::path::Path>,
    processes: Option<usize>,
    cpu_usec: Option<u64>,
    memory_bytes: Option<u64>,
    age_ms: u64,
    command: &'a [String],
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let scan = registry::scan();
    for p in &scan.problems {
        crate::job_args::stderr_line(&format!("corral: warning: {p}"));
    }
    let now = now_ms();
    let stats: Vec<registry::Stats> = scan.entries.iter().map(registry::stats).collect();
    let outer = registry::outer_jobs(&scan.entries);
    let jobs: Vec<PsJob<'_>> = scan
        .entries
        .iter()
        .zip(&stats)
        .zip(&outer)
        .map(|((e, s), o): ((&Entry, _), &Option<usize>)| PsJob {
            id: &e.record.id,
            name: e.record.name.as_deref(),
            uid: e.record.uid,
            on_behalf_of: e.record.on_behalf_of,
            supervisor_pid: e.record.supervisor.pid,
            outer: o.map(|i| scan.entries[i].record.id.as_str()),
            stale: !e.live,
            mechanism: &e.record.mechanism,
            cgroup: e.record.cgroup.as_deref(),
            processes: s.processes,
            cpu_usec: s.cpu_usec,
            memory_bytes: s.memory_bytes,
            age_ms: now.saturating_sub(e.record.started),
            command: &e.record.command,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let dash = || "-".to_string();
    let mut rows = vec![[
        "ID", "NAME", "UID", "PID", "STATE", "MECH", "PROCS", "CPU", "MEM", "AGE",
    ]
    .map(str::to_string)
    .to_vec()];
    let mut commands = vec!["COMMAND".to_string()];
    for (j, depth) in tree_order(&outer).into_iter().map(|(i, d)| (&jobs[i], d)) {
        rows.push(vec![
            format!("{}{}", "  ".repeat(depth), j.id),
            j.name.map(str::to_string).unwrap_or_else(dash),
            match j.on_behalf_of {
                Some(caller) => format!("{}>{caller}", j.uid),
                None => j.uid.to_string(),
            },
            j.supervisor_pid.to_string(),
            if j.stale { "stale" } else { "running" }.to_string(),
            j.mechanism.to_string(),
            j.processes.map(|n| n.to_string()).unwrap_or_else(dash),
            j.cpu_usec
                .map(|u| format!("{:.2}s", u as f64 / 1e6))
                .unwrap_or_else(dash),
            j.memory_bytes.map(human_bytes).unwrap_or_else(dash),
            human_age(j.age_ms),
        ]);
        commands.push(j.command.join(" "));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for (row, command) in rows.iter().zip(&commands) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(command);
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The jobs in the order `corral ps` lists them, each with its depth: every job right
/// after the job it is nested in, in registry order otherwise. `outer[i]` is the index of
/// the job that job `i` is nested in.
fn tree_order(outer: &[Option<usize>]) -> Vec<(usize, usize)> {
    fn visit(i: usize, depth: usize, outer: &[Option<usize>], out: &mut Vec<(usize, usize)>) {
        // A cycle (records naming each other through reused PIDs) cannot recurse forever.
        if out.iter().any(|(j, _)| *j == i) {
            return;
        }
        out.push((i, depth));
        for child in (0..outer.len()).filter(|c| outer[*c] == Some(i)) {
            visit(child, depth + 1, outer, out);
        }
    }
    let mut out = Vec::new();
    for top in (0..outer.len()).filter(|i| outer[*i].is_none()) {
        visit(top, 0, outer, &mut out);
    }
    // Jobs only reachable through a cycle are listed at the top.
    for i in 0..outer.len() {
        visit(i, 0, outer, &mut out);
    }
    out
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn kill(args: crate::job_args::KillArgs) -> anyhow::Result<ExitCode> {
    let entry = registry::find(&args.job)?;
    let label = match &entry.record.name {
        Some(n) => format!("{} ({n})", entry.record.id),
        None => entry.record.id.clone(),
    };
    let outcome = registry::kill(&entry, args.signal, args.grace, KILL_MARGIN)?;
    match outcome {
        KillOutcome::Stopped => {
            crate::job_args::stderr_line(&format!(
                "corral: job {label} stopped (supervisor pid {})",
                entry.record.supervisor.pid
            ));
            Ok(ExitCode::SUCCESS)
        }
        KillOutcome::AlreadyOver => {
            crate::job_args::stderr_line(&format!("corral: job {label} was already over"));
            Ok(ExitCode::SUCCESS)
        }
        KillOutcome::StaleCleaned(lines) => {
            crate::job_args::stderr_line(&format!(
                "corral: job {label}: its supervisor (pid {}) is gone; stopped here: {}",
                entry.record.supervisor.pid,
                lines.join("; ")
            ));
            Ok(ExitCode::SUCCESS)
        }
        KillOutcome::NotOverYet => anyhow::bail!(
            "job {label} took the stop request but is not over after {:?}; see `corral ps`",
            args.grace + KILL_MARGIN
        ),
    }
}

pub fn sweep(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let report = registry::sweep(args.dry_run);
    for p in &report.problems {
        crate::job_args::stderr_line(&format!("corral: warning: {p}"));
    }
    if report.actions.is_empty() {
        println!("nothing to sweep");
    }
    for a in &report.actions {
        println!("{a}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::tree_order;

    #[test]
    fn nested_jobs_follow_their_outer_job() {
        // 0 <- 2 <- 3, 1 alone.
        let outer = [None, None, Some(0), Some(2)];
        assert_eq!(tree_order(&outer), vec![(0, 0), (2, 1), (3, 2), (1, 0)]);
    }

    #[test]
    fn a_cycle_is_listed_once() {
        let outer = [Some(1), Some(0)];
        let order = tree_order(&outer);
        assert_eq!(order.len(), 2);
    }
}
