//! Peer figure 4, the containment matrix: what each peer's own stop leaves alive.
//!
//! Each cell runs one tree of `corral-testtree` through the peer, born in a fresh leaf of
//! the bench's cgroup ([`crate::tree`]): a plain grandchild (the control), a child that
//! calls `setsid()`, a classic double-forked daemon (`setsid`, fork, the middle exits), and
//! a child that calls `setpgid(0, 0)`. The top process stays alive (it waits for a `--go`
//! file that never comes), so every peer stops a running job. Once the tree has written
//! that every process is ready (its `--pids` file), the peer's own stop runs: std
//! `Child::kill()` (the reference: it was never meant to contain anything), corral's
//! `kill()` with the cgroup and the pgroup (in-process subreaper) mechanisms, process-wrap's
//! group `kill()`, processkit's `kill_all()`, and SIGTERM to `timeout`.
//!
//! Then the bench waits up to [`GRACE`] for the leaf (and processkit's own cgroup) to
//! report `populated 0`; a process still there after that is a survivor, counted from
//! `cgroup.procs` and then killed with `cgroup.kill`, so nothing leaks. The cgroup sees
//! every process of the tree whatever it did to its session or process group, which is
//! what makes the count fair to every peer.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::table::Table;
use crate::tree::{Peer, Running};
use crate::Ctx;

/// How long the tree may take to die after the peer's stop returned, before what is left
/// counts as survivors.
const GRACE: Duration = Duration::from_secs(1);

/// How long a tree may take to be ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);

const PEERS: [Peer; 6] = [
    Peer::Bare,
    Peer::CgroupKill,
    Peer::PgroupKill,
    Peer::ProcessWrap,
    Peer::Processkit,
    Peer::Timeout,
];

/// (label, `corral-testtree` mode, the role of the process that escapes).
const SCENARIOS: [(&str, &str, &str); 4] = [
    (
        "grandchild (no escape; control)",
        "grandchild",
        "grandchild",
    ),
    ("child calls `setsid()`", "setsid", "setsid"),
    ("double-forked daemon", "daemon", "daemon"),
    ("child calls `setpgid(0, 0)`", "setpgid", "setpgid"),
];

pub fn run(ctx: &mut Ctx) -> Result<String> {
    let rt = corral_bench::tokio_runtime()?;
    let pk_mechanism = crate::tree::processkit_mechanism()?;
    eprintln!(
        "peers: 4 containment: {} scenarios x {} peers",
        SCENARIOS.len(),
        PEERS.len()
    );
    let dir = std::env::temp_dir().join(format!("corral-peers-tt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = matrix(ctx, &rt, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let cells = result?;

    let mut header = vec!["scenario"];
    header.extend(PEERS.iter().map(|p| p.label()));
    let mut t = Table::new(&header);
    for ((label, _, _), row) in SCENARIOS.iter().zip(&cells) {
        let mut cells = vec![label.to_string()];
        cells.extend(row.iter().map(|&n| match n {
            0 => "contained".to_string(),
            1 => "**1 survivor**".to_string(),
            n => format!("**{n} survivors**"),
        }));
        t.row(cells);
    }
    let mut s = String::from("### Peers 4: containment (what each peer's stop leaves alive)\n\n");
    s += &format!(
        "`corral-testtree` trees, each stopped through the peer's own call while its top \
         process runs; survivors: processes still in the tree's cgroup {} after the call \
         returned (then killed with `cgroup.kill`). processkit chose `{pk_mechanism}` on \
         this host. Bare `Child::kill()` is the reference: it signals one process.\n\n",
        corral_bench::stats::fmt_secs(GRACE.as_secs_f64())
    );
    s += &t.render();
    eprint!("{s}");
    Ok(s)
}

/// Survivors, indexed [scenario][peer].
fn matrix(ctx: &mut Ctx, rt: &tokio::runtime::Runtime, dir: &Path) -> Result<Vec<Vec<usize>>> {
    let mut cells = Vec::new();
    for (si, (label, mode, role)) in SCENARIOS.iter().enumerate() {
        let mut row = Vec::new();
        for (pi, peer) in PEERS.iter().enumerate() {
            corral_bench::check_interrupted()?;
            let pids = dir.join(format!("{si}-{pi}.pids"));
            let argv: Vec<OsString> = vec![
                ctx.testtree.clone().into(),
                "--pids".into(),
                pids.clone().into(),
                "--go".into(),
                dir.join("never").into(),
                (*mode).into(),
            ];
            let what = format!("containment: {label}, {}", peer.label());
            let name = format!("contain-{mode}-{}", peer.short().replace(' ', "-"));
            let mut r = Running::start(&ctx.bench, rt, *peer, &name, &argv)?;
            wait_ready(&pids, &["top", role], &what)?;
            r.stop()?;
            // Survivors are what is left at the deadline; an error here is only that.
            let _ = r.wait_empty(Instant::now() + GRACE);
            let survivors = r.finish(&mut ctx.bench, rt)?;
            eprintln!("peers: {what}: {survivors} survivors");
            row.push(survivors);
            ctx.bench.check_clean(&what)?;
        }
        cells.push(row);
    }
    Ok(cells)
}

/// Waits until the `--pids` file lists every role in `roles` (each process writes its line
/// once it is ready: its escape made).
fn wait_ready(pids: &Path, roles: &[&str], what: &str) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut pause = Duration::from_micros(500);
    loop {
        let text = std::fs::read_to_string(pids).unwrap_or_default();
        let listed: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
        if roles.iter().all(|r| listed.contains(r)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: the tree did not get ready in {READY_DEADLINE:?}: {text:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
