//! Real programs as workloads (issue 8): how long stopping each takes, through corral's
//! library and through a raw `cgroup.kill` of a cgroup holding the same workload (the floor).
//!
//! The programs are set up and started by `scripts/workloads/`, as in the integration tests
//! (`tests/containment/workloads.rs`):
//! - nginx: `nginx.sh` starts a daemonizing nginx (master in a session of its own, 2
//!   workers); ready once `GET /` answers 200 and the 3 processes exist.
//! - PostgreSQL 15: `pg_ctl start -w` (`postgres-start.sh`) on a copy of a cluster made once
//!   by `initdb` (outside anything timed); ready once `pg_ctl` returned and the postmaster
//!   and its 5 background processes exist.
//! - `make -j8` of 40 generated C files (`make.sh`); ready once 2 objects are built, so the
//!   stop lands mid-build, with make, `cc`, `cc1` and `as` running.
//!
//! Each round starts every program under each variant in turn (programs and variants
//! interleaved), waits until it is ready, lets it settle for 50 ms (see `stop_tree`'s
//! `SETTLE`), and only then starts the clock. What is timed, per variant:
//! - corral `stop()`: a cgroup job (`Job::spawn` with `cgroup_parent` under the bench's
//!   root, `Leftovers::Wait` so the daemons stay up), from the call until it returns: the
//!   polite SIGTERM to every member, the program's own shutdown (nginx's master reaping its
//!   workers; PostgreSQL's smart shutdown with its shutdown checkpoint; make removing the
//!   targets it was building), the job empty, the main process reaped, the cgroup removed;
//! - corral `kill()`: the same with SIGKILL at once (`cgroup.kill`);
//! - raw: write `1` to `cgroup.kill` of a leaf the bench made and started the same workload
//!   in, until `populated 0` in its `cgroup.events`: no process of it exists.
//!
//! Ratios are of medians, against the raw floor. A program that is not installed (or a
//! bench not run as root, which nginx and PostgreSQL need) is listed as skipped, with why.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use corral_bench::cgroup::{BenchRoot, RawCgroup};
use corral_bench::procs::{self, Child};
use corral_bench::stats::{fmt_ratio, fmt_secs, Samples};

/// PostgreSQL 15's control program, on Debian.
const PG_CTL: &str = "/usr/lib/postgresql/15/bin/pg_ctl";
/// How long a workload may take to come up, or to go away.
const DEADLINE: Duration = Duration::from_secs(120);
/// Pause between "ready" and the clock (see the module docs).
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Nginx,
    Postgres,
    Make,
}

impl Program {
    const ALL: [Program; 3] = [Program::Nginx, Program::Postgres, Program::Make];

    fn label(self) -> &'static str {
        match self {
            Program::Nginx => "nginx (daemon: master + 2 workers)",
            Program::Postgres => "PostgreSQL 15 (`pg_ctl start`: postmaster + 5)",
            Program::Make => "`make -j8` mid-build (40 C files)",
        }
    }

    /// Why it cannot run here, if it cannot.
    fn missing(self) -> Option<String> {
        let needs: &[&str] = match self {
            Program::Nginx => &["/usr/sbin/nginx"],
            Program::Postgres => &[PG_CTL, "/usr/bin/setpriv"],
            Program::Make => &["/usr/bin/make", "/usr/bin/cc"],
        };
        if self != Program::Make && !rustix::process::geteuid().is_root() {
            return Some("needs root".into());
        }
        needs
            .iter()
            .find(|p| !Path::new(p).exists())
            .map(|p| format!("{p} not installed"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Stop,
    Kill,
    Raw,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Stop, Variant::Kill, Variant::Raw];
}

/// The programs that cannot run here, and why.
type Skipped = Vec<(Program, String)>;

/// The samples of one program, per variant (indexed like [`Variant::ALL`]).
struct Figures {
    program: Program,
    samples: [Samples; 3],
}

pub fn run(ctx: &mut super::Ctx) -> Result<String> {
    let rounds = if ctx.args.quick { 1 } else { 5 };
    let scratch = Scratch::new()?;
    let (figures, skipped) = measure(ctx.bench.root(), &scratch, rounds)?;
    Ok(render(&figures, &skipped, rounds))
}

fn measure(root: &BenchRoot, scratch: &Scratch, rounds: usize) -> Result<(Vec<Figures>, Skipped)> {
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    for program in Program::ALL {
        match program.missing() {
            Some(why) => skipped.push((program, why)),
            None => figures.push(Figures {
                program,
                samples: Default::default(),
            }),
        }
    }
    // PostgreSQL's cluster is made once; each round starts a copy of it.
    let template = scratch.0.join("pg-template");
    if figures.iter().any(|f| f.program == Program::Postgres) {
        fs::create_dir(&template)?;
        run_script("postgres-init.sh", &[template.as_os_str()])?;
    }
    eprintln!("peers: workloads: {rounds} rounds");
    let mut n = 0;
    for _ in 0..rounds {
        for f in &mut figures {
            for (k, variant) in Variant::ALL.into_iter().enumerate() {
                corral_bench::check_interrupted()?;
                n += 1;
                let dir = scratch.0.join(format!("w{n}"));
                fs::create_dir(&dir)?;
                let d = one_round(root, f.program, variant, &dir, &template, n)
                    .with_context(|| format!("{} {variant:?}", f.program.label()))?;
                f.samples[k].push(d);
                fs::remove_dir_all(&dir).ok();
                eprint!(".");
            }
        }
    }
    eprintln!(" done");
    Ok((figures, skipped))
}

/// Starts `program` under `variant` in `dir`, waits until it is ready, and returns the
/// time its stop took.
fn one_round(
    root: &BenchRoot,
    program: Program,
    variant: Variant,
    dir: &Path,
    template: &Path,
    n: usize,
) -> Result<Duration> {
    let port = free_port()?;
    let mut cmd = match program {
        Program::Nginx => {
            let mut c = Command::new(script("nginx.sh"));
            c.arg(dir).arg(port.to_string());
            c
        }
        Program::Postgres => {
            // `cp -a` keeps the owner (postgres) and the modes initdb set.
            let status = Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(dir.join("pg"))
                .status()
                .context("failed to run cp")?;
            ensure!(
                status.success(),
                "cp -a of the PostgreSQL cluster: {status}"
            );
            let mut c = Command::new(script("postgres-start.sh"));
            c.arg(dir.join("pg")).arg(port.to_string());
            c
        }
        Program::Make => {
            let mut c = Command::new(script("make.sh"));
            c.arg(dir).args(["8", "40"]);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match variant {
        Variant::Stop | Variant::Kill => corral_round(root, program, variant, &mut cmd, dir, port),
        Variant::Raw => raw_round(root, program, &mut cmd, dir, port, n),
    }
}

fn corral_round(
    root: &BenchRoot,
    program: Program,
    variant: Variant,
    cmd: &mut Command,
    dir: &Path,
    port: u16,
) -> Result<Duration> {
    let opts = corral::Options {
        mechanism: corral::MechanismRequest::Cgroup,
        cgroup_parent: Some(root.jobs()),
        supervisor: corral::Supervisor::Binary(corral_bench::corral_binary()),
        // The daemons' commands exit at once: the job lasts as long as they run.
        leftovers: corral::Leftovers::Wait,
        register: false,
        ..corral::Options::default()
    };
    let mut job = corral::Job::spawn(cmd, &opts).context("Job::spawn failed")?;
    let ready = wait_ready(program, dir, port, || {
        Ok(job.members().context("job.members() failed")?.len())
    });
    if let Err(e) = ready {
        let _ = job.kill();
        return Err(e);
    }
    std::thread::sleep(SETTLE);
    let t = Instant::now();
    let report = if variant == Variant::Stop {
        job.stop()?
    } else {
        job.kill()?
    };
    let d = t.elapsed();
    ensure!(
        report.survivors.is_empty(),
        "survivors: {:?}",
        report.survivors
    );
    ensure!(
        report.cleanup.cgroup_removed == Some(true),
        "the job's cgroup was not removed: {:?}",
        report.cleanup
    );
    let left = fs::read_dir(root.jobs())?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .count();
    ensure!(
        left == 0,
        "{left} job cgroups left under {}",
        root.jobs().display()
    );
    Ok(d)
}

fn raw_round(
    root: &BenchRoot,
    program: Program,
    cmd: &mut Command,
    dir: &Path,
    port: u16,
    n: usize,
) -> Result<Duration> {
    let cg: RawCgroup = root.leaf(&format!("raw-workload-{n}"))?;
    procs::spawn_into_cgroup(cmd, cg.procs_fd());
    let child = Child::spawn(cmd)?;
    // A daemon's command exits at once: reap it when it does. make is the command itself
    // and runs on; it is reaped after the kill.
    let ready = wait_ready(program, dir, port, || cg.count());
    let result = ready.and_then(|()| {
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        cg.kill()?;
        cg.wait_empty(t + DEADLINE)?;
        Ok(t.elapsed())
    });
    if result.is_err() {
        let _ = cg.kill();
        let _ = cg.wait_empty(Instant::now() + DEADLINE);
    }
    child.wait()?;
    cg.remove(Instant::now() + DEADLINE)?;
    result
}

/// Waits until `program` is ready (see the module docs); `count` is how many processes the
/// workload has now.
fn wait_ready(
    program: Program,
    dir: &Path,
    port: u16,
    mut count: impl FnMut() -> Result<usize>,
) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    loop {
        let ready = match program {
            Program::Nginx => count()? >= 3 && http_get(port) == Some(200),
            Program::Postgres => {
                // The server's socket exists once it listens; pg_ctl has returned once
                // only the postmaster and its 5 background processes are left.
                dir.join(format!("pg/run/.s.PGSQL.{port}")).exists() && count()? >= 6
            }
            Program::Make => objects(&dir.join("src")) >= 2,
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready after {DEADLINE:?} ({} processes)",
                program.label(),
                count()?
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn objects(src: &Path) -> usize {
    fs::read_dir(src)
        .map(|l| {
            l.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".o"))
                .count()
        })
        .unwrap_or(0)
}

fn render(figures: &[Figures], skipped: &[(Program, String)], rounds: usize) -> String {
    let mut out = String::new();
    out.push_str("## Real programs: stop time\n\n");
    out.push_str(&format!(
        "{rounds} round(s), programs and variants interleaved. From the stop request until no \
         process of the program exists (corral: until `stop()` / `kill()` returns, which \
         includes reaping the main process and removing the job's cgroup; raw: \
         `cgroup.kill` until `populated 0`). Ratios are of medians, to the raw floor.\n\n"
    ));
    out.push_str(
        "| program | corral `stop()` median | p90 | ratio | corral `kill()` median | p90 | \
         ratio | raw `cgroup.kill` median | p90 |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for f in figures {
        let [stop, kill, raw] = &f.samples;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.program.label(),
            fmt_secs(stop.median()),
            fmt_secs(stop.p90()),
            fmt_ratio(stop.median() / raw.median()),
            fmt_secs(kill.median()),
            fmt_secs(kill.p90()),
            fmt_ratio(kill.median() / raw.median()),
            fmt_secs(raw.median()),
            fmt_secs(raw.p90()),
        ));
    }
    for (program, why) in skipped {
        out.push_str(&format!(
            "| {} | skipped: {why} |||||||| \n",
            program.label()
        ));
    }
    out.push_str(
        "\n`stop()` includes each program's own shutdown on SIGTERM (nginx's master waits for \
         its workers; PostgreSQL's smart shutdown writes a shutdown checkpoint; make deletes \
         the targets it was building); `kill()` and the raw floor do not wait for any.\n",
    );
    out
}

// ---- set-up ------------------------------------------------------------------------------

/// The script `scripts/workloads/<name>`.
fn script(name: &str) -> PathBuf {
    corral_bench::workspace_root()
        .join("scripts/workloads")
        .join(name)
}

fn run_script(name: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(script(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {name}"))?;
    ensure!(
        out.status.success(),
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `/tmp/corral-bench-wl-<pid>` (short: PostgreSQL's socket path must fit in `sun_path`),
/// mode 0755 so the programs' own users can reach it; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("corral-bench-wl-{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET /` on 127.0.0.1:`port`: the status code, if an HTTP response came.
fn http_get(port: u16) -> Option<u16> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).ok()?;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
