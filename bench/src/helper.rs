//! Figure 8: what running a job through the privileged helper (`corral-helper`, installed
//! setuid root) costs an unprivileged caller, against `corral run` as root.
//!
//! Four runs, interleaved (the order rotated by one each round), each timed from spawning
//! it to reaping it:
//! - A: `corral run --cgroup-parent <jobs> -- true` as root, as figure 7 runs it (the
//!   bench's own registry, its environment);
//! - B: `setpriv --reuid 65534 --regid 65534 --clear-groups -- /bin/true`: what becoming
//!   the caller costs by itself;
//! - C: the same `setpriv` running `<prefix>/bin/corral-helper run -- true`;
//! - D: C with `--report <a directory of the caller's>/report.json` (checked in a forked
//!   child that becomes the caller, written by the supervisor once it is the caller).
//!
//! The calls through `setpriv` run as the helper's tests run them: in `/`, with no
//! environment but `PATH=/usr/bin:/bin`, stdin from `/dev/null`.
//!
//! The install ([`Install`]) is made when the figure starts and removed when it ends, on
//! error too: `/tmp/corral-bench-helper-<pid>-<nanos>/` with `bin/corral-helper` (root's,
//! 4755, a copy of the release build) and `etc/corral/helper.toml` (root's, 0644), which
//! lets uid 65534 run jobs under the bench's `jobs/` cgroup; every directory on the way is
//! root's, 0755, as the helper demands of its policy. After every run the bench checks,
//! besides [`Bench::check_clean`] (which finds a `helper-*` cgroup left under `jobs/`),
//! that the helper left no record of the caller's in root's registry (`/run/corral`, where
//! helper jobs register: the helper does not take `CORRAL_RUNTIME_DIR` from its caller),
//! and for D that the report is there, is the caller's file, and says the job ran for the
//! caller and succeeded.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::procs::Child;
use super::stats::Samples;
use super::{Bench, Plan};

/// The caller the helper runs jobs for: `nobody`, present on every Debian-like system.
pub const CALLER: u32 = 65534;

/// Where root's job registry is, and with it the helper's job records.
const ROOT_REGISTRY: &str = "/run/corral";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    CorralRun,
    Setpriv,
    Helper,
    HelperReport,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::CorralRun,
        Variant::Setpriv,
        Variant::Helper,
        Variant::HelperReport,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Variant::CorralRun => "A: `corral run --cgroup-parent <jobs> -- true`, as root",
            Variant::Setpriv => {
                "B: `setpriv --reuid 65534 --regid 65534 --clear-groups -- /bin/true`"
            }
            Variant::Helper => "C: `setpriv ... -- corral-helper run -- true`",
            Variant::HelperReport => {
                "D: `setpriv ... -- corral-helper run --report <dir of 65534's>/report.json \
                 -- true`"
            }
        }
    }

    fn index(self) -> usize {
        Variant::ALL
            .iter()
            .position(|v| *v == self)
            .expect("listed")
    }
}

pub struct HelperFigures {
    pub rounds: usize,
    pub warmup: usize,
    samples: [Samples; 4],
}

impl HelperFigures {
    pub fn get(&self, v: Variant) -> &Samples {
        &self.samples[v.index()]
    }
}

pub fn run(bench: &mut Bench, plan: &Plan) -> Result<HelperFigures> {
    let corral = super::corral_binary();
    let jobs = bench.root.jobs();
    let setpriv = find_setpriv()?;
    let install = Install::create(&jobs)?;
    let report = install.report_dir.join("report.json");
    let stderr_path = install.prefix.join("stderr");
    // Records of the caller's that were there before the figure (another user of the
    // helper on this host, or a crash of an earlier run) are not the figure's doing.
    let before = caller_records()?;
    check_policy(&setpriv, &install)?;
    let mut f = HelperFigures {
        rounds: plan.helper_rounds,
        warmup: plan.helper_warmup,
        samples: Default::default(),
    };
    eprintln!(
        "bench: 8/8 corral-helper: {} rounds (+{} warm-up) of `corral run`, `setpriv`, \
         `setpriv corral-helper run [--report]`",
        plan.helper_rounds, plan.helper_warmup
    );
    for round in 0..plan.helper_warmup + plan.helper_rounds {
        super::check_interrupted()?;
        for k in 0..Variant::ALL.len() {
            let v = Variant::ALL[(round + k) % Variant::ALL.len()];
            let mut cmd = match v {
                Variant::CorralRun => {
                    let mut cmd = Command::new(&corral);
                    cmd.arg("run").arg("--cgroup-parent").arg(&jobs);
                    cmd.args(["--", "true"]);
                    cmd
                }
                Variant::Setpriv => {
                    let mut cmd = as_caller(&setpriv);
                    cmd.arg("/bin/true");
                    cmd
                }
                Variant::Helper | Variant::HelperReport => {
                    let mut cmd = as_caller(&setpriv);
                    cmd.arg(&install.helper).arg("run");
                    if v == Variant::HelperReport {
                        cmd.arg("--report").arg(&report);
                    }
                    cmd.args(["--", "true"]);
                    cmd
                }
            };
            let stderr = File::create(&stderr_path)
                .with_context(|| format!("failed to create {}", stderr_path.display()))?;
            cmd.stdin(Stdio::null()).stderr(stderr);
            let t0 = Instant::now();
            let exit = Child::spawn(&mut cmd)?.wait()?;
            let took = t0.elapsed();
            if !exit.success() {
                let said = fs::read_to_string(&stderr_path).unwrap_or_default();
                bench.expect(
                    false,
                    format!(
                        "{} ended with {}: {}",
                        v.label(),
                        exit.describe(),
                        said.trim()
                    ),
                );
            }
            if v == Variant::HelperReport {
                check_report(bench, &report);
            }
            let left: Vec<PathBuf> = caller_records()?
                .into_iter()
                .filter(|r| !before.contains(r))
                .collect();
            bench.expect(
                left.is_empty(),
                format!(
                    "after {}: records of uid {CALLER} left in {ROOT_REGISTRY}: {left:?}",
                    v.label()
                ),
            );
            if round >= plan.helper_warmup {
                f.samples[v.index()].push(took);
            }
            bench.check_clean(v.label())?;
        }
        if round % 10 == 0 {
            eprint!(".");
        }
    }
    eprintln!(" done");
    install.remove()?;
    Ok(f)
}

/// `setpriv` (util-linux), by its absolute path, so no `PATH` search is timed.
fn find_setpriv() -> Result<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("setpriv not found in /usr/bin or /bin; figure 8 needs it (util-linux)")
}

/// `setpriv ... --` as [`CALLER`], as the helper's tests call it: in `/`, with no
/// environment but `PATH`; the program and its arguments follow.
fn as_caller(setpriv: &Path) -> Command {
    let id = CALLER.to_string();
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/");
    cmd
}

/// `corral-helper check` as the caller, once before the rounds: a setuid bit that does not
/// take (a `nosuid` mount), a policy the helper refuses or an unknown caller is one clear
/// error here rather than an anomaly per round.
fn check_policy(setpriv: &Path, install: &Install) -> Result<()> {
    let out = as_caller(setpriv)
        .arg(&install.helper)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .context("failed to run setpriv")?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.contains("rule 1") {
        bail!(
            "`corral-helper check` as uid {CALLER} in the bench's install did not find the \
             policy's rule 1 ({}); it said: {} {}",
            out.status,
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The records in root's registry made for [`CALLER`] (`on_behalf_of`).
fn caller_records() -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(ROOT_REGISTRY) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to list {ROOT_REGISTRY}")),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        // A record removed meanwhile, or not JSON: not one of the caller's.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let on_behalf_of = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["on_behalf_of"].as_u64());
        if on_behalf_of == Some(u64::from(CALLER)) {
            out.push(path);
        }
    }
    Ok(out)
}

/// D's report: there, the caller's file (written after the supervisor gave up root), for
/// the caller, the job's status 0. Removed afterwards, so every round writes a new file.
fn check_report(bench: &mut Bench, path: &Path) {
    let what = "D: the report";
    match fs::metadata(path) {
        Ok(m) => bench.expect(
            m.uid() == CALLER,
            format!(
                "{what} {} is uid {}'s, not the caller's",
                path.display(),
                m.uid()
            ),
        ),
        Err(e) => {
            bench.expect(false, format!("{what} {}: {e}", path.display()));
            return;
        }
    }
    let value = fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let (caller, status) = value
        .as_ref()
        .map(|v| {
            (
                v["helper"]["caller"]["uid"].as_u64(),
                v["exit_status"].as_i64(),
            )
        })
        .unwrap_or((None, None));
    bench.expect(
        caller == Some(u64::from(CALLER)) && status == Some(0),
        format!(
            "{what}: helper.caller.uid {caller:?} and exit_status {status:?}, expected \
             {CALLER} and 0"
        ),
    );
    if let Err(e) = fs::remove_file(path) {
        bench.expect(
            false,
            format!("{what}: cannot remove {}: {e}", path.display()),
        );
    }
}

/// The helper installed as an administrator would, under a prefix of the figure's own:
///
/// ```text
/// /tmp/corral-bench-helper-<pid>-<nanos>/   root's, 0755 (the prefix)
///     bin/corral-helper                     root's, 4755
///     etc/corral/helper.toml                root's, 0644
///     reports/                              the caller's, 0700 (D's report)
///     stderr                                the runs' stderr (read when one fails)
/// ```
///
/// Dropping it removes the prefix; [`Install::remove`] does so and reports a failure.
struct Install {
    prefix: PathBuf,
    helper: PathBuf,
    report_dir: PathBuf,
    removed: bool,
}

impl Install {
    fn create(jobs: &Path) -> Result<Install> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = PathBuf::from(format!(
            "/tmp/corral-bench-helper-{}-{nanos}",
            std::process::id()
        ));
        // `create`, not `create_all`: a directory already there (someone else's) is an
        // error, never reused.
        make_dir(&prefix, (0, 0), 0o755)?;
        // From here on, drop removes what exists.
        let install = Install {
            helper: prefix.join("bin/corral-helper"),
            report_dir: prefix.join("reports"),
            prefix,
            removed: false,
        };
        let p = &install.prefix;
        for dir in ["bin", "etc", "etc/corral"] {
            make_dir(&p.join(dir), (0, 0), 0o755)?;
        }
        make_dir(&install.report_dir, (CALLER, CALLER), 0o700)?;
        let built = super::helper_binary();
        fs::copy(&built, &install.helper).with_context(|| {
            format!(
                "failed to copy {} to {}",
                built.display(),
                install.helper.display()
            )
        })?;
        set_owner_mode(&install.helper, (0, 0), 0o4755)?;
        let policy = p.join("etc/corral/helper.toml");
        let jobs = jobs
            .to_str()
            .context("the bench's cgroup path is not UTF-8")?;
        let text = format!(
            "# corral's bench (figure 8): uid {CALLER} may run jobs under the bench's cgroup.\n\
             [[allow]]\nusers = [\"#{CALLER}\"]\ncgroup_parent = {}\n",
            // JSON's string escapes are TOML's for the characters a path can hold.
            serde_json::to_string(jobs)?
        );
        fs::write(&policy, text)
            .with_context(|| format!("failed to write {}", policy.display()))?;
        set_owner_mode(&policy, (0, 0), 0o644)?;
        Ok(install)
    }

    /// Removes the prefix and everything in it.
    fn remove(mut self) -> Result<()> {
        self.removed = true;
        fs::remove_dir_all(&self.prefix)
            .with_context(|| format!("failed to remove {}", self.prefix.display()))
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = fs::remove_dir_all(&self.prefix) {
                eprintln!("xtask: cleanup of {} failed: {e}", self.prefix.display());
            }
        }
    }
}

/// `mkdir` (not `-p`), then owner and mode set explicitly (the umask does not decide).
fn make_dir(path: &Path, owner: (u32, u32), mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    set_owner_mode(path, owner, mode)
}

/// `chown`, then `chmod` (a `chown` clears the setuid bit, so the mode comes after).
fn set_owner_mode(path: &Path, (uid, gid): (u32, u32), mode: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("failed to chown {uid}:{gid} {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {mode:o} {}", path.display()))
}
