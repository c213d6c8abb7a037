//! Peer figure 2, stop latency against tree size: N = 10, 100, 1000, 5000 sleeping
//! processes, as a flat fan-out (one `sh`, N `sleep` children) and as a deep chain (N `sh`
//! links, each the parent of the next, then one `sleep`): N + 1 processes either way.
//!
//! Every round builds a fresh tree through the peer, inside a fresh leaf of the bench's
//! cgroup ([`crate::tree`]), waits until all N + 1 processes exist (plus `timeout` itself
//! for that peer) and 50 ms more (see [`corral_bench::stop_tree::SETTLE`]), and only then
//! starts the clock. The clock runs from the peer's stop call until both that call returned
//! and `populated 0` was read from every watched `cgroup.events`: until no process of the
//! tree exists, observed by the kernel in the same way for every peer. So a peer whose stop
//! returns at once (processkit's `cgroup.kill`, a signal to `timeout`) is timed until its
//! tree is really gone, and a peer whose stop waits (corral: it also reaps the main process
//! and removes its cgroup; process-wrap: it reaps the group) is timed until it returns,
//! which includes that clean-up: a bias against those, not for them.
//!
//! Variants (interleaved, in an order rotated each round): raw `cgroup.kill` (the floor);
//! corral cgroup and pgroup (in-process subreaper), each `stop()` (SIGTERM first; `sleep`
//! and `sh` die of it) and `kill()`; process-wrap's group `kill()`; processkit's
//! `kill_all()` (async crate, but this call is synchronous: it is what its drop does);
//! `timeout`, stopped by SIGTERM to the `timeout` process, which forwards it to the program
//! and to its process group, as a service manager or a shell would stop it.
//!
//! A size that does not fit under `pid_max`/`threads-max` is skipped and says so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use corral_bench::stats::{fmt_ratio, fmt_secs, Samples};
use corral_bench::stop_tree::{wait_for_count, SETTLE};

use crate::chart::{Panel, Series};
use crate::table::Table;
use crate::tree::{Peer, Running, Shape};
use crate::Ctx;

/// How long a tree may take to go away once stopped.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

const PEERS: [Peer; 8] = [
    Peer::Raw,
    Peer::CgroupStop,
    Peer::CgroupKill,
    Peer::PgroupStop,
    Peer::PgroupKill,
    Peer::ProcessWrap,
    Peer::Processkit,
    Peer::Timeout,
];

const SHAPES: [Shape; 2] = [Shape::Flat, Shape::Chain];

/// (N, rounds): fewer rounds for the big trees, whose builds dominate the wall time (on a
/// 2-CPU VM a chain of 5000 takes ~12 s to build, a flat tree ~5 s; the full figure takes
/// about 4 minutes).
fn sizes(quick: bool) -> Vec<(usize, usize)> {
    if quick {
        vec![(10, 2), (100, 2)]
    } else {
        vec![(10, 7), (100, 5), (1000, 2), (5000, 1)]
    }
}

/// The samples of one (shape, N).
struct Cell {
    rounds: usize,
    /// Indexed like [`PEERS`].
    samples: Vec<Samples>,
    /// Time to build a tree (not part of any figure).
    build: Samples,
}

pub fn run(ctx: &mut Ctx) -> Result<String> {
    let rt = corral_bench::tokio_runtime()?;
    let pk_mechanism = crate::tree::processkit_mechanism()?;
    let sizes = sizes(ctx.args.quick);
    eprintln!(
        "peers: 2 stop latency: {} x 2 shapes x {} peers; processkit chose {pk_mechanism}",
        sizes
            .iter()
            .map(|(n, r)| format!("N={n} x {r}"))
            .collect::<Vec<_>>()
            .join(", "),
        PEERS.len()
    );
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    for (si, shape) in SHAPES.into_iter().enumerate() {
        for &(n, rounds) in &sizes {
            if let Err(e) = crate::tree::fits(n) {
                skipped.push(format!("{} N={n}: skipped, {e:#}", shape.name()));
                continue;
            }
            let t = Instant::now();
            let mut cell = Cell {
                rounds,
                samples: vec![Samples::default(); PEERS.len()],
                build: Samples::default(),
            };
            for round in 0..rounds {
                for k in 0..PEERS.len() {
                    corral_bench::check_interrupted()?;
                    let p = (round + k) % PEERS.len();
                    let (d, build) = once(ctx, &rt, PEERS[p], shape, n)?;
                    cell.samples[p].push(d);
                    cell.build.push(build);
                }
                eprint!(".");
            }
            eprintln!(
                " {} N={n}: {:.1} s (a tree builds in {})",
                shape.name(),
                t.elapsed().as_secs_f64(),
                fmt_secs(cell.build.median())
            );
            cells.insert((si, n), cell);
        }
    }

    let mut s = String::from("### Peers 2: stop latency against tree size\n\n");
    s += &format!(
        "From the peer's stop call until no process of the tree exists (`populated 0` in \
         the `cgroup.events` of the leaf the tree was born in, and of processkit's own \
         cgroup), or until the call returned if later. N sleeping processes plus their \
         `sh` (N + 1). processkit chose `{pk_mechanism}` on this host. Ratio: to raw \
         `cgroup.kill` of the same shape and N. Chart: `stop-latency.svg`.\n\n"
    );
    for note in &skipped {
        s += &format!("- **{note}**\n");
    }
    if !skipped.is_empty() {
        s += "\n";
    }
    let mut panels = Vec::new();
    for (si, shape) in SHAPES.into_iter().enumerate() {
        let mut t = Table::new(&["N", "variant", "median", "p90", "ratio"]);
        let mut series: Vec<Series> = PEERS
            .iter()
            .map(|p| Series {
                label: p.short().into(),
                points: Vec::new(),
            })
            .collect();
        let mut builds = Vec::new();
        for (&(_, n), cell) in cells.range((si, 0)..(si + 1, 0)) {
            let floor = cell.samples[0].median();
            for (p, peer) in PEERS.iter().enumerate() {
                let m = cell.samples[p].median();
                t.row(vec![
                    format!("{n} ({} rounds)", cell.rounds).replace("(1 rounds)", "(1 round)"),
                    peer.label().into(),
                    fmt_secs(m),
                    if cell.rounds > 1 {
                        fmt_secs(cell.samples[p].p90())
                    } else {
                        "— (1 round)".into()
                    },
                    fmt_ratio(m / floor),
                ]);
                series[p].points.push((n as f64, m * 1e3));
            }
            builds.push(format!("N={n}: {}", fmt_secs(cell.build.median())));
        }
        s += &format!("#### {}\n\n", shape.name());
        s += &t.render();
        s += &format!("Building one tree (not timed): {}.\n\n", builds.join(", "));
        panels.push(Panel {
            title: format!("{} (N + 1 processes)", shape.name()),
            series,
        });
    }
    let svg = crate::chart::svg(
        "Stop latency: stop call → no process of the tree left",
        "N (sleeping processes)",
        "ms (median)",
        &panels,
    );
    crate::write_out(&ctx.args.out, "stop-latency.svg", &svg)?;
    eprint!("{s}");
    Ok(s)
}

/// One round: builds the tree through `peer`, stops it, returns (stop time, build time).
fn once(
    ctx: &mut Ctx,
    rt: &tokio::runtime::Runtime,
    peer: Peer,
    shape: Shape,
    n: usize,
) -> Result<(Duration, Duration)> {
    let what = format!("{} {} N={n}", peer.label(), shape.name());
    let built = Instant::now();
    let name = format!("stop-{}-{n}", peer.short().replace(' ', "-"));
    let mut r = Running::start(&ctx.bench, rt, peer, &name, &shape.argv(n))?;
    let want = n + 1 + usize::from(peer == Peer::Timeout);
    wait_for_count(&what, want, || r.count())?;
    let build = built.elapsed();
    std::thread::sleep(SETTLE);

    let t = Instant::now();
    r.stop()?;
    r.wait_empty(t + STOP_DEADLINE)?;
    let d = t.elapsed();

    if let Some(report) = &r.report {
        let want = if matches!(peer, Peer::CgroupStop | Peer::PgroupStop) {
            corral::StopOutcome::Exited
        } else {
            corral::StopOutcome::Killed
        };
        let outcome = report.stop.as_ref().map(|s| s.outcome);
        ctx.bench.expect(
            outcome == Some(want),
            format!("{what}: stop outcome {outcome:?}, expected {want:?}"),
        );
    }
    let left = r.finish(&mut ctx.bench, rt)?;
    ctx.bench.expect(
        left == 0,
        format!("{what}: {left} processes left after the stop"),
    );
    ctx.bench.check_clean(&what)?;
    Ok((d, build))
}
